"""The command line: help everywhere, thin handlers over the API, user errors as one line and exit code 2."""

import subprocess
import sys

import pytest

from kaggle_tli.cli import build_parser, main

COMMANDS = ["finetune", "iterate", "inject", "score", "ledger", "predict", "archs", "demo", "bench", "bundle",
            "publish", "kernel"]


def test_help_everywhere(capsys):
    for command in [[], *([c] for c in COMMANDS), ["kernel", "init"]]:
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0, command
        assert "usage: kaggle-tli" in capsys.readouterr().out


def test_help_does_not_import_torch():
    code = "import sys, kaggle_tli.cli as c; c.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False", "kaggle-tli --help must answer without importing torch"


def test_score_two_architectures_and_heatmap(tmp_path, capsys):
    assert main(["score", "resnet10t", "resnet14t", "--num-classes", "10", "-o", str(tmp_path / "h.png")]) == 0
    out = capsys.readouterr().out
    assert "resnet10t" in out and "resnet14t" in out
    assert (tmp_path / "h.png").stat().st_size > 5000


def test_unknown_architecture_is_one_line_and_exit_code_2(capsys):
    assert main(["score", "resnet10t", "resnett18"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "resnet18" in err and "Traceback" not in err


def test_ledger_on_an_empty_folder_and_archs(tmp_path, capsys):
    assert main(["ledger", "--runs", str(tmp_path)]) == 0
    assert "no runs yet" in capsys.readouterr().out
    assert main(["archs", "resnet1*", "--timm"]) == 0
    assert "resnet18" in capsys.readouterr().out.split()


def test_train_options_and_set_parse_into_a_config():
    from kaggle_tli.cli import _train_config

    args = build_parser().parse_args(["finetune", "resnet18", "--data", "d", "--epochs", "2", "--set", "ema=true",
                                      "--set", "optimizer=adam", "--set", "train_folds=[0,1]"])
    assert _train_config(args) == {"epochs": 2, "ema": True, "optimizer": "adam", "train_folds": [0, 1]}
    args = build_parser().parse_args(["finetune", "resnet18", "--data", "d", "--set", "oops"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        _train_config(args)


@pytest.mark.parametrize("word, value", [("False", False), ("false", False), ("no", False), ("OFF", False),
                                         ("True", True), ("yes", True), ("On", True)])
def test_set_boolean_words_become_booleans(word, value):
    """--set ema=False stored the string "False", which switched EMA on."""
    from kaggle_tli.cli import _train_config
    from kaggle_tli.train import TrainConfig

    args = build_parser().parse_args(["finetune", "resnet18", "--data", "d", "--set", f"ema={word}"])
    cfg = _train_config(args)
    assert cfg == {"ema": value} and TrainConfig.from_kwargs(**cfg).ema is value, cfg


def _fake_run(folder):
    from kaggle_tli.files import atomic_write_json

    folder.mkdir(parents=True)
    atomic_write_json(folder / "run.json", {"schema": 1, "id": folder.name, "arch": {"name": "resnet10t"},
                                            "num_classes": 2, "status": "done", "folds": {"0": {"status": "done"}}})
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def test_user_errors_on_files_and_the_ledger_are_one_line(tmp_path, capsys):
    run = _fake_run(tmp_path / "runs" / "r1")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(["bundle", str(run), "-o", str(busy)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not empty" in err and "Traceback" not in err, err
    assert (busy / "notes.txt").read_text() == "mine" and len(list(busy.iterdir())) == 1

    assert main(["ledger", "--runs", str(tmp_path / "runs"), "--lineage", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run 'nope' is not in") and "Traceback" not in err, err


def test_iterate_and_predict_reuse_the_runs_recorded_data_options(tmp_path, make_image_competition):
    """`--data` alone means: the run's own data options on that folder (a 32-px run stays at 32 px)."""
    from kaggle_tli.cli import _load_data
    from kaggle_tli.data import ImageCsvData
    from kaggle_tli.stages import finetune

    root = make_image_competition(tmp_path / "comp", digits=(0, 1), per_class=10)
    run = finetune("resnet10t", ImageCsvData(root, image_size=32, folds=2), runs=tmp_path / "runs", epochs=1,
                   max_steps=1, batch_size=8, progress=False)
    args = build_parser().parse_args(["predict", str(run.path), "--data", str(root)])
    data = _load_data(args, run=args.run[0])
    assert data.image_size in (32, (32, 32)) and data.folds == 2, "the run's options, not the CLI defaults"
    args = build_parser().parse_args(["predict", str(run.path), "--data", str(root), "--image-size", "48"])
    assert _load_data(args, run=args.run[0]).image_size in (48, (48, 48)), "an explicit option wins"


def test_iterate_passes_the_refit_switches_through(monkeypatch, capsys):
    import importlib

    it = importlib.import_module("kaggle_tli.stages.iterate")  # the package's `iterate` attribute is the function
    seen = {}

    class FakeRun:
        id, parent_id, metrics, path, report = "child", "parent", {"cv": 0.5}, "runs/child", None

    def fake_iterate(prev_run, arch, data, **kw):
        seen.update(kw, prev_run=prev_run, arch=arch)
        return FakeRun()

    monkeypatch.setattr(it, "iterate", fake_iterate)
    assert main(["iterate", "parent", "resnet18", "--no-refit-head"]) == 0
    assert seen["refit_head"] is False and seen["recalibrate"] is True and seen["arch"] == "resnet18"
    assert main(["iterate", "parent", "resnet18", "--no-recalibrate"]) == 0
    assert seen["refit_head"] is True and seen["recalibrate"] is False
    assert "child (parent parent)" in capsys.readouterr().out
