"""The TLI options live in one record: kt.transfer, iterate and the CLI take every one of them with its default."""

import inspect

import pytest
import timm

import kaggle_tli as kt
from kaggle_tli import cli
from kaggle_tli.stages.iterate import split_options
from kaggle_tli.tli.options import DEFAULTS


def test_every_engine_option_reaches_the_engine_through_kt_transfer():
    teacher = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    student = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    report = kt.transfer(teacher, student, input_size=(3, 32, 32), teacher_input_size=(3, 48, 48),
                         lam=0.5, top_k=2, method="combo", growth_jitter=0.0, seed=3)
    assert report.settings["lam"] == 0.5 and report.settings["top_k"] == 2 and report.settings["method"] == "combo"
    assert "teacher_input_size" in inspect.signature(kt.transfer).parameters
    with pytest.raises(TypeError, match="unknown TLI option.*lamda.*the options are lam"):
        kt.transfer(teacher, student, lamda=0.5)


def test_bad_values_are_refused_with_the_fix():
    for bad, match in [(dict(lam=2), "lam must be in"), (dict(top_k=0), "top_k"), (dict(method="x"), "method="),
                       (dict(extra_blocks="x"), "extra_blocks="), (dict(growth_jitter=1.5), "growth_jitter"),
                       (dict(transfer_norm="no"), "transfer_norm"), (dict(head_as_source="no"), "head_as_source")]:
        with pytest.raises(ValueError, match=match):
            kt.TransferOptions(**bad)


def test_iterate_splits_tli_from_training_options_and_refuses_the_rest():
    tli, train = split_options({"lam": 0.5, "method": "combo", "epochs": 2, "lr": 1e-3})
    assert tli.lam == 0.5 and tli.method == "combo" and tli.top_k == DEFAULTS.top_k
    assert train == {"epochs": 2, "lr": 1e-3}
    with pytest.raises(TypeError, match="unknown option.*epoch_count"):
        split_options({"epoch_count": 2})


def test_the_cli_passes_only_what_was_given_so_the_records_defaults_apply():
    parser = cli.build_parser()
    assert cli._transfer_options(parser.parse_args(["inject", "RUN", "resnet18", "-o", "x.safetensors"])) == {}
    given = parser.parse_args(["inject", "RUN", "resnet18", "-o", "x", "--lam", "0.5", "--no-norm", "--method", "combo"])
    assert cli._transfer_options(given) == {"lam": 0.5, "transfer_norm": False, "method": "combo"}
    given = parser.parse_args(["inject", "RUN", "resnet18", "-o", "x", "--no-head-as-source"])
    assert cli._transfer_options(given) == {"head_as_source": False}
