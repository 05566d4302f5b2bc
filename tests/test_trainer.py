"""The training loop, stages 1 and 4, exact resume (SIGKILL and Ctrl-C), predict, bad input.

Budget: < 60 s on 2 cores (about 30 s measured). Models are `resnet10t` at 32 px on the 60-image digits competition,
a handful of steps each; torch runs on one thread here (tiny models gain nothing from two, and
two threads on a busy 2-core machine stall) and every run, in-process or subprocess, uses the same
thread count, which bit-exact comparisons need.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from filelock import FileLock

import kaggle_tli
from kaggle_tli.checkpoint import CorruptCheckpointError, load_state, load_weights
from kaggle_tli.data import DataError, ImageCsvData, PixelCsvData
from kaggle_tli.ledger import Ledger, LedgerSchemaError
from kaggle_tli.models import arch_spec
from kaggle_tli.runs import load_run
from kaggle_tli.stages import check_submission, finetune, predict, resume
from kaggle_tli.train import Metric, TrainConfig, resolve_metric

FAST = dict(batch_size=16, lr=3e-3, progress=False)
REPO = Path(kaggle_tli.__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: torch on one thread for this module


@pytest.fixture(scope="module")
def data(image_competition):
    return ImageCsvData(image_competition, image_size=32)


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def stage1(data, image_competition, tmp_path_factory):
    """A finished stage-1 run (2 epochs), and a snapshot proving the competition folder was not touched."""
    before = _snapshot(image_competition)
    runs = tmp_path_factory.mktemp("runs")
    run = finetune("resnet10t", data, runs=runs, epochs=2, **FAST)
    return run, runs, before


# ---------------------------------------------------------------------------------------- config


def test_unknown_option_is_a_type_error_naming_valid_ones():
    with pytest.raises(TypeError) as err:
        TrainConfig.from_kwargs(epochs=1, lrr=0.1)
    message = str(err.value)
    assert "'lrr'" in message and "did you mean 'lr'" in message and "batch_size" in message, message


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(epochs=0), "epochs=0"), (dict(optimizer="lion"), "optimizer='lion'"), (dict(metric="acuracy"), "accuracy")],
)
def test_bad_option_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("name", ["ema", "eval_at_start", "pretrained", "progress"])
def test_boolean_options_refuse_strings_that_would_read_as_true(name):
    with pytest.raises(ValueError, match=rf"{name}='false': must be True or False.*--set {name}=false"):
        TrainConfig(**{name: "false"})
    assert getattr(TrainConfig(**{name: np.bool_(True)}), name) is True, "a numpy bool is a bool"
    with pytest.warns(UserWarning, match=f"{name}='False', a string, which trained as {name}=True"):
        saved = TrainConfig.from_dict({name: "False"})  # run.json of an older `--set ema=False`: what it did
    assert getattr(saved, name) is True


def test_config_hash_is_canonical():
    assert TrainConfig(lr=0.1, epochs=2).config_hash() == TrainConfig(epochs=2, lr=0.1).config_hash()
    assert TrainConfig(lr=0.1).config_hash() != TrainConfig(lr=0.2).config_hash()


def test_metrics_by_name_and_callable():
    y = np.array([0, 1, 2, 1])
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.6, 0.2, 0.2], [0.2, 0.7, 0.1]])
    assert resolve_metric("accuracy")(y, probs) == 0.75
    assert resolve_metric("f1_macro")(y, probs) == pytest.approx((2 / 3 + 1 + 0) / 3), "f1 of argmax labels"
    log_loss = resolve_metric("log_loss")
    assert not log_loss.greater_is_better and log_loss.better(0.1, 0.2), "a loss improves downwards"
    assert resolve_metric("neg_log_loss")(y, probs) == pytest.approx(-log_loss(y, probs))
    assert 0 <= resolve_metric("roc_auc_ovr")(y, probs) <= 1
    custom = resolve_metric(lambda t, p: float((t == p).sum()))
    assert isinstance(custom, Metric) and custom(y, probs) == 3.0


# ------------------------------------------------------------------------------- stages 1 and 4


def test_stage1_then_stage4_produce_runs_oof_and_a_valid_submission(stage1, data, image_competition):
    run, runs, before = stage1
    for name in ("run.json", "model.safetensors", "model_best.safetensors", "state.pt", "log.csv", "oof.csv",
                 "folds.csv", "init.safetensors"):
        assert (run.path / name).is_file(), f"stage 1 run lacks {name}"
    assert run.status == "done" and run.info["arch"]["name"] == "resnet10t"
    assert run.class_names == ["one", "two", "zero"] and run.metrics["metric"] == "accuracy"
    oof = pd.read_csv(run.path / "oof.csv")
    _, valid = data.fold_indices(0)
    assert len(oof) == len(valid) and set(oof["fold"]) == {0}
    assert {"id", "label", "fold", "prediction", "prob_one", "prob_two", "prob_zero"} <= set(oof.columns)
    assert np.allclose(oof[["prob_one", "prob_two", "prob_zero"]].sum(axis=1), 1, atol=1e-5)
    assert run.metrics["best_cv"] == pytest.approx((oof["prediction"] == oof["label"]).mean())
    log = pd.read_csv(run.path / "log.csv")
    assert list(log.columns) == ["fold", "step", "epoch", "loss", "lr", "metric", "elapsed", "metric_running"]
    assert log["step"].tolist() == list(range(1, 7)) and np.isfinite(log["loss"]).all()
    assert log["metric"].notna().sum() == 2, "one evaluation per epoch"

    child = resume(run, data, epochs=1)  # a finished run: a new child run from its weights
    assert child.parent_id == run.id and child.id != run.id and child.status == "done"
    assert child.config["lr"] == FAST["lr"], "the child inherits its parent's config"

    submission = predict(child)
    sample = pd.read_csv(image_competition / "sample_submission.csv")
    check_submission(submission, sample)
    assert (child.path / "submission.csv").is_file()
    assert set(submission["label"]) <= set(run.class_names), "labels must map back to the original names"

    rows = {r["run_id"]: r for r in Ledger(runs).rows()}
    assert rows[run.id]["status"] == rows[child.id]["status"] == "done"
    assert rows[run.id]["stage"] == "finetune" and rows[run.id]["init"] == "kaiming"
    assert rows[child.id]["parent_run_id"] == run.id and rows[child.id]["stage"] == "resume"
    assert rows[run.id]["steps"] == 6 and rows[run.id]["cv"] == pytest.approx(run.metrics["cv"])
    assert rows[run.id]["checkpoint"] == str(run.path) and len(rows[run.id]["config_hash"]) == 40
    assert _snapshot(image_competition) == before, "nothing may be written into the competition folder"


def test_injected_student_hook_for_iterate(stage1, data):
    """What iterate calls after TLI: a module, its arch, the parent, ledger extras, transfer.csv, step-0 eval."""
    run, runs, _ = stage1
    student = run.build_model("last")  # stands in for an injected student: the teacher's exact weights
    child = resume(
        student, data, arch="resnet10t", parent=run, stage="inject", init="tli",
        extra={"tli_score": 0.93, "coverage": 1.0, "notes": "test"}, files={"transfer.csv": "student,teacher\n"},
        eval_at_start=True, max_steps=1,
    )
    assert (child.path / "transfer.csv").read_text() == "student,teacher\n"
    assert child.info["extra"]["tli_score"] == 0.93
    start = child.metrics["start_metric"]["0"]
    assert start == pytest.approx(run.metrics["folds"]["0"]["last"]), (
        "step-0 metric of a student holding the teacher's weights must equal the teacher's final metric"
    )
    first = pd.read_csv(child.path / "log.csv").iloc[0]
    assert first["step"] == 0 and first["metric"] == pytest.approx(start) and np.isnan(first["loss"])
    row = Ledger(runs).get(child.id)
    assert (row["stage"], row["init"], row["tli_score"], row["coverage"]) == ("inject", "tli", 0.93, 1.0)
    assert row["parent_arch"] == "resnet10t" and row["parent_run_id"] == run.id
    loader = data.train_loader(0, batch_size=8)  # the BatchNorm re-estimation helper
    x, y = next(iter(loader))
    assert x.shape == (8, 3, 32, 32) and y.dtype == torch.int64


def _count_flips(monkeypatch) -> list:
    """Record every torch.flip call (the horizontal-flip TTA is the only user in predict)."""
    calls, real_flip = [], torch.flip

    def counting_flip(*args, **kwargs):
        calls.append(1)
        return real_flip(*args, **kwargs)

    monkeypatch.setattr(torch, "flip", counting_flip)
    return calls


def test_pixel_competition_to_submission(pixel_competition, tmp_path, monkeypatch, capsys):
    data = PixelCsvData(pixel_competition, image_size=32)
    run = finetune("resnet10t", data, runs=tmp_path, epochs=1, max_steps=2, **FAST)
    flips = _count_flips(monkeypatch)
    submission = predict(run, out=tmp_path / "out.csv")  # tta=True by default
    assert not flips, "mirrored digits change meaning: PixelCsvData's hflip=False must turn the flip TTA off"
    assert list(submission.columns) == ["ImageId", "Label"]
    assert submission["ImageId"].tolist() == [str(i) for i in range(1, 21)], "ids as the sample writes them"
    assert set(submission["Label"]) <= set(range(10))
    assert (tmp_path / "out.csv").is_file() and not (run.path / "submission.csv").exists(), "out= is the only file"

    # the run attached as a Kaggle dataset (read-only) and no out=: ./submission.csv, and say so
    real_access = os.access

    def read_only(path, mode, *args, **kwargs):
        return False if Path(path) == run.path and mode & os.W_OK else real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", read_only)
    working = tmp_path / "working"
    working.mkdir()
    monkeypatch.chdir(working)
    capsys.readouterr()
    predict(run)
    assert (working / "submission.csv").read_text() == (tmp_path / "out.csv").read_text()
    assert str(working / "submission.csv") in capsys.readouterr().out, "predict must say where the file went"
    assert not (run.path / "submission.csv").exists()


def test_ids_and_classes_that_look_like_numbers_reach_the_submission_as_written(numeric_competition, tmp_path):
    data = ImageCsvData(numeric_competition, image_size=32)
    run = finetune("resnet10t", data, runs=tmp_path, epochs=1, max_steps=1, **FAST)
    assert run.status == "done" and run.class_names == ["01", "10", "2"]
    assert run.metrics["cv"] is not None, "the CV score reads oof.csv back with the classes '01', '10'"
    oof = pd.read_csv(run.path / "oof.csv", dtype=str)
    assert set(oof["label"]) <= {"01", "10", "2"} and (oof["id"].str.len() == 4).all(), oof.head()
    submission = predict(run, tta=False)
    lines = (run.path / "submission.csv").read_text().splitlines()
    assert lines[0] == "id,label" and lines[1].split(",")[0] == "0000", f"ids as the sample writes them: {lines[:2]}"
    assert set(submission["label"]) <= {"01", "10", "2"}


def test_two_folds_write_fold_files_and_full_oof(data, tmp_path, monkeypatch):
    run = finetune("resnet10t", data, runs=tmp_path, epochs=1, max_steps=2, train_folds=[0, 1], **FAST)
    assert (run.path / "fold1.safetensors").is_file() and (run.path / "fold1_best.safetensors").is_file()
    oof = pd.read_csv(run.path / "oof.csv", dtype={"id": str})
    assert sorted(set(oof["fold"])) == [0, 1] and oof["id"].is_unique and len(oof) == 24
    assert run.trained_folds == [0, 1] and run.info["steps"] == 4
    flips = _count_flips(monkeypatch)
    assert len(predict(run, which="last")) == 15
    assert flips, "images that may be mirrored (hflip=True) get the flip TTA"


def test_early_stopping_on_a_metric_that_never_improves(data, tmp_path):
    run = finetune("resnet10t", data, runs=tmp_path, epochs=5, eval_every_steps=1, early_stopping=1,
                   metric=lambda y, p: 0.5, **FAST)
    fold = run.info["folds"]["0"]
    assert fold["stop_reason"] == "early_stopping" and fold["steps"] == 2, fold
    assert run.status == "done"


def test_time_budget_stops_cleanly_then_resume_finishes(data, tmp_path):
    # any budget below the stop reserve (a few seconds) stops right after the first step
    run = finetune("resnet10t", data, runs=tmp_path, epochs=2, time_budget_s=0.5, **FAST)
    assert run.status == "interrupted" and run.info["stop_reason"] == "time_budget" and run.info["steps"] == 1
    assert (run.path / "state.pt").is_file() and (run.path / "oof.csv").is_file()
    assert Ledger(tmp_path).get(run.id)["status"] == "interrupted"
    with pytest.raises(ValueError, match="cannot change \\['lr'\\]"):
        resume(run, data, lr=0.1)
    with pytest.raises(ValueError, match="num_processes=1.*skip or repeat samples"):
        resume(run, data, num_processes=2)
    good = (run.path / "state.pt").read_bytes()
    (run.path / "state.pt").write_bytes(good[: len(good) // 2])  # a copy cut short
    with pytest.raises(CorruptCheckpointError, match="Delete it"):
        resume(run, data)
    assert load_run(run.path).status == "interrupted", "a refused continue must leave the run as it was"
    (run.path / "state.pt").write_bytes(good)
    done = resume(run, data, time_budget_s=None)
    assert done.id == run.id and done.status == "done" and done.info["steps"] == 6, "the same run continues"
    assert Ledger(tmp_path).get(run.id)["status"] == "done"


# -------------------------------------------------------------------------------------- bad input


def test_bad_input_fails_before_any_run_directory(stage1, data, tmp_path):
    runs = tmp_path / "runs"
    cases = [
        (lambda: finetune("resnet_10t", data, runs=runs), KeyError, "resnet"),
        (lambda: finetune("resnet10t", data, runs=runs, epoch=1), TypeError, "did you mean 'epochs'"),
        (lambda: finetune("resnet10t", data, runs=runs, fold=7), ValueError, "folds 0..4"),
        (lambda: finetune("resnet10t", "/kaggle/input/x", runs=runs), TypeError, "ImageCsvData"),
        (lambda: resume(torch.nn.Linear(2, 2), data, arch="resnet10t", runs=runs), ValueError, "does not match"),
        (lambda: resume(torch.nn.Linear(2, 2), data, runs=runs), TypeError, "needs arch="),
        (lambda: finetune("resnet10t", data, runs=runs, pretrained=True), ValueError, "Kaggle dataset.*pretrained_file="),
        # a ViT made for 160 px given 32-px images: timm's assertion, before the run exists
        (lambda: finetune("test_vit3", data, runs=runs), DataError,
         r"'test_vit3' cannot take the data's 32x32 images.*doesn't match model.*image_size=.*'img_size': 32"),
    ]
    for call, kind, match in cases:
        with pytest.raises(kind, match=match):
            call()
    assert not runs.exists(), "a failed check must leave no run directory and no ledger"


@pytest.fixture
def scratch_registry(monkeypatch):
    """Architectures registered by a test are gone after it."""
    from kaggle_tli import models as registry
    from kaggle_tli.models import registry as names

    monkeypatch.setattr(names, "_REGISTRY", dict(names._REGISTRY))
    return registry


def test_an_architecture_registered_for_other_channels_is_refused_not_rebuilt(scratch_registry, data,
                                                                              image_competition, tmp_path):
    """change_in_chans(1) must not be undone by the data's 3 channels: refused before the run exists, and kept
    when the data has 1 channel."""
    scratch_registry.register_edit("test_r10_grey", base="resnet10t", edits=[scratch_registry.change_in_chans(1)])
    runs = tmp_path / "runs"
    match = r"'test_r10_grey' is registered for 1-channel images.*the data has 3-channel.*in_chans=1"
    with pytest.raises(DataError, match=match):
        finetune("test_r10_grey", data, runs=runs, max_steps=1, **FAST)
    with pytest.raises(DataError, match=match):
        resume(scratch_registry.create_model("test_r10_grey", 3), data, arch="test_r10_grey", runs=runs)
    assert not runs.exists(), "a refused architecture leaves no run directory and no ledger"

    grey = ImageCsvData(image_competition, image_size=32, in_chans=1)
    run = finetune("test_r10_grey", grey, runs=runs, max_steps=1, **FAST)
    assert run.arch["in_chans"] == 1 and run.build_model().conv1[0].in_channels == 1


def test_a_model_without_one_logit_per_class_is_refused_before_any_run(scratch_registry, data, tmp_path):
    """A factory that ignores num_classes: more logits would train silently, fewer would fail mid-run."""
    import timm

    for width in (1000, 2):
        scratch_registry.register_arch(f"test_fixed{width}")(
            lambda num_classes, width=width, **kw: timm.create_model("resnet10t", num_classes=width, **kw))
    runs = tmp_path / "runs"
    for width in (1000, 2):
        match = rf"'test_fixed{width}' outputs {width} values per image, but the data has 3 classes.*num_classes=3"
        with pytest.raises(DataError, match=match):
            finetune(f"test_fixed{width}", data, runs=runs, max_steps=1, **FAST)
        model = scratch_registry.create_model(f"test_fixed{width}", 3)
        with pytest.raises(DataError, match=match):
            resume(model, data, arch=f"test_fixed{width}", runs=runs, max_steps=1)
    assert not runs.exists(), "a refused model leaves no run directory and no ledger"


def test_ledger_checkpoint_is_absolute_and_a_deleted_run_says_so(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = finetune("resnet10t", data, max_steps=1, **FAST)  # runs="runs": relative to the working directory
    row = Ledger("runs").get(run.id)
    assert Path(row["checkpoint"]).is_absolute() and row["checkpoint"] == str(run.path), row["checkpoint"]

    import shutil

    shutil.rmtree(run.path)
    with pytest.raises(FileNotFoundError, match=r"directory .* no longer exists.*the ledger may still list it"):
        predict(run)


def test_a_newer_ledger_is_refused_before_any_run_directory(data, tmp_path):
    runs = tmp_path / "runs"
    Ledger(runs).append({"run_id": "old"})
    header, row = (runs / "ledger.csv").read_text().splitlines()
    assert header.endswith(",schema")
    (runs / "ledger.csv").write_text(f"{header}\n{row.rsplit(',', 1)[0]},99\n")  # written by a future version
    with pytest.raises(LedgerSchemaError):
        finetune("resnet10t", data, runs=runs, epochs=1, **FAST)
    assert not [p.name for p in runs.iterdir() if p.is_dir()], "no run directory may be left behind"


def test_a_failure_while_setting_up_leaves_no_running_run(stage1, data, tmp_path):
    run, _, _ = stage1
    runs = tmp_path / "runs"
    with pytest.raises(TypeError):  # an extra file whose content is neither text nor bytes
        resume(run.build_model(), data, arch="resnet10t", runs=runs, files={"transfer.csv": 12345}, max_steps=1)
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    assert load_run(run_dir).status == "failed", "a run nobody trains must not stay 'running'"
    with FileLock(str(run_dir / ".lock"), timeout=0):
        pass  # the lock was released: taking it at once succeeds


def test_finetune_from_a_local_timm_weights_file(data, tmp_path):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnet10t", pretrained=False)  # ImageNet-shaped: a 1000-class head
    save_file(source.state_dict(), tmp_path / "resnet10t.safetensors")
    run = finetune("resnet10t", data, runs=tmp_path / "runs", pretrained=True,
                   pretrained_file=tmp_path / "resnet10t.safetensors", epochs=1, max_steps=1, **FAST)
    init, expected = load_weights(run.path / "init.safetensors"), source.state_dict()
    body = [k for k in init if not k.startswith("fc.")]
    differ = [k for k in body if not torch.equal(init[k], expected[k])]
    assert body and not differ, f"step-0 weights must be the file's (differ: {differ[:3]})"
    assert init["fc.weight"].shape == (3, 512), "the 1000-class head is replaced by one for the 3 classes"
    assert run.info["init"] == "pretrained" and Ledger(tmp_path / "runs").get(run.id)["init"] == "pretrained"
    assert run.arch["kwargs"] == {} and "pretrained_cfg_overlay" not in str(run.arch), "weights are not architecture"


# ---------------------------------------------------------------------------------- exact resume

# dropout (global RNG), EMA, gradient accumulation with a short last group, checkpoints mid-epoch
# and precise validation: the BatchNorm refit before each evaluation replaces the live statistics, which state.pt saves
EXACT = dict(epochs=3, batch_size=8, grad_accum=2, ema=True, checkpoint_every_steps=2, lr=3e-3, progress=False,
             eval_norms="precise")


def _exact_spec() -> dict:
    return arch_spec("resnet10t", 3, in_chans=3, drop_rate=0.3)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run every interrupted one must match bit for bit."""
    return finetune(_exact_spec(), data, runs=tmp_path_factory.mktemp("ref"), **EXACT)


def _assert_same_run(a, b) -> None:
    for name in ("model.safetensors", "model_ema.safetensors", "model_best.safetensors"):
        wa, wb = load_weights(a.path / name), load_weights(b.path / name)
        diff = [k for k in wa if not torch.equal(wa[k], wb[k])]
        assert not diff, f"{name}: {len(diff)} tensors differ after resume (first: {diff[:3]})"
    la, lb = pd.read_csv(a.path / "log.csv"), pd.read_csv(b.path / "log.csv")
    cols = ["fold", "step", "epoch", "loss", "lr", "metric", "metric_running"]
    pd.testing.assert_frame_equal(la[cols], lb[cols], check_exact=True, obj="log.csv")
    assert a.metrics["cv"] == b.metrics["cv"] and a.info["steps"] == b.info["steps"] == 9


_KILLER = """
import os, signal, sys
import torch
torch.set_num_threads(1)
import kaggle_tli.train.loop as trainer
from kaggle_tli.data import ImageCsvData
from kaggle_tli.stages.finetune import finetune
from kaggle_tli.models import arch_spec

calls = 0
original = trainer._micro_step

def dying_micro_step(*args, **kwargs):
    global calls
    calls += 1
    if calls == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)  # no finally, no atexit: a killed notebook
    return original(*args, **kwargs)

trainer._micro_step = dying_micro_step
data = ImageCsvData({root!r}, image_size=32)
finetune(arch_spec("resnet10t", 3, in_chans=3, drop_rate=0.3), data, runs={runs!r}, **{cfg!r})
"""


def test_sigkill_mid_epoch_then_resume_is_bit_identical(reference, data, image_competition, tmp_path):
    runs = tmp_path / "runs"
    # micro-batch 10 is the second half of step 5, in the middle of epoch 1; the last checkpoint is step 4
    script = _KILLER.format(kill_at=10, root=str(image_competition), runs=str(runs), cfg=EXACT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    killed = load_run(run_dir)
    assert killed.status == "running" and Ledger(runs).get(killed.id)["status"] == "running", "nothing ran on kill"
    state = load_state(run_dir / "state.pt")
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (4, 1, 2), "last checkpoint: mid-epoch"
    resumed = resume(run_dir, data)
    assert resumed.id == killed.id and resumed.status == "done"
    assert Ledger(runs).get(killed.id)["status"] == "done"
    _assert_same_run(reference, resumed)


def test_ctrl_c_marks_the_run_interrupted_and_resume_is_bit_identical(reference, data, tmp_path, monkeypatch):
    import kaggle_tli.train.loop as trainer
    from kaggle_tli.train import RunBusyError

    calls = {"n": 0}
    original = trainer._micro_step

    def interrupted_micro_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 14:  # step 7, the second step of the last epoch; last checkpoint: step 6
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer, "_micro_step", interrupted_micro_step)
    runs = tmp_path / "runs"
    with pytest.raises(KeyboardInterrupt):
        finetune(_exact_spec(), data, runs=runs, **EXACT)
    monkeypatch.setattr(trainer, "_micro_step", original)
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    run = load_run(run_dir)
    assert run.status == "interrupted" and Ledger(runs).get(run.id)["status"] == "interrupted"
    with FileLock(str(run_dir / ".lock")):  # another process still training it: refused
        with pytest.raises(RunBusyError, match="being trained by another process"):
            resume(run, data)
    _assert_same_run(reference, resume(run, data))


def test_resume_rejects_bad_data(stage1, pixel_competition):
    run, _, _ = stage1
    with pytest.raises((DataError, ValueError), match="classes|num_classes"):
        resume(run, PixelCsvData(pixel_competition), epochs=1)
