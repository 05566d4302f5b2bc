"""The pipeline from the command line: resume after Ctrl-C (and the progress bar), a run failing before its first step.

Budget: about 15 s on 2 cores (resnet10t at 32 px on the 60-image digits competition, a dozen steps per run).
"""

from __future__ import annotations

import os

import pytest
import torch

from kaggle_tli.checkpoint import load_weights
from kaggle_tli.cli import main
from kaggle_tli.data import ImageCsvData
from kaggle_tli.runs import load_run
from kaggle_tli.stages import finetune, resume

pytestmark = pytest.mark.usefixtures("one_thread")


def _finetune_args(comp, runs, progress: bool = False) -> list[str]:
    # 12 training rows / 4 = 3 steps an epoch, a checkpoint every 2 steps: an interrupt lands between checkpoints
    return ["finetune", "resnet10t", "--data", str(comp), "--image-size", "32", "--epochs", "2", "--batch-size", "4",
            "--folds", "2",
            "--runs", str(runs), "--set", "checkpoint_every_steps=2", "--set", f"progress={progress}",
            "--set", "ema=true"]


def test_cli_resume_after_ctrl_c_ends_with_the_weights_of_an_uninterrupted_run(make_image_competition, tmp_path,
                                                                                 monkeypatch, capsys):
    import kaggle_tli.train.loop as trainer

    comp = make_image_competition(tmp_path / "comp", digits=(0, 1), per_class=12, n_test_per_class=2)
    assert main(_finetune_args(comp, tmp_path / "ref", progress=True)) == 0
    err = capsys.readouterr().err
    assert "loss=" in err and "accuracy=" in err, f"the bar shows the loss and the last metric: {err[-300:]}"
    (reference,) = [p for p in (tmp_path / "ref").iterdir() if p.is_dir()]
    original, calls = trainer._micro_step, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # step 6, the last; the last checkpoint is step 4 (every 2 steps)
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer, "_micro_step", interrupted)
    assert main(_finetune_args(comp, tmp_path / "runs")) == 130
    monkeypatch.setattr(trainer, "_micro_step", original)
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert load_run(run_dir).status == "interrupted" and "interrupted" in capsys.readouterr().err
    assert main(["resume", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"{run_dir.name}: done" in out, out
    for name in ("model.safetensors", "model_ema.safetensors"):
        a, b = load_weights(reference / name), load_weights(run_dir / name)
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        assert not differ, f"{name}: {len(differ)} tensors differ from the uninterrupted run ({differ[:3]})"
    cv = load_run(run_dir).metrics["cv"]
    assert cv == load_run(reference).metrics["cv"] and f"cv {round(cv, 4)} " in out, "the summary's cv is rounded"


def test_a_run_that_fails_before_its_first_step_keeps_no_step0_weights(image_competition, tmp_path, monkeypatch):
    import kaggle_tli.train.loop as trainer

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(trainer, "_micro_step", broken)
    data = ImageCsvData(image_competition, image_size=32)
    with pytest.raises(RuntimeError, match="out of memory"):
        finetune("resnet10t", data, runs=tmp_path, epochs=1, batch_size=16, progress=False)
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    run = load_run(run_dir)
    assert run.status == "failed" and not list(run_dir.glob("init*.safetensors")), sorted(os.listdir(run_dir))
    assert (run_dir / "folds.csv").is_file(), "what was written besides the weights stays"
    with pytest.raises(FileNotFoundError, match="failed before its first step.*Start a new run"):
        resume(run, data)


def test_the_data_flags_the_errors_advise_reach_the_data(make_image_competition, tmp_path):
    from kaggle_tli.cli import _load_data, build_parser

    root = make_image_competition(tmp_path / "comp", digits=(0, 1), per_class=6, image_dir="imgs", test_dir="tst")
    (root / "sample_submission.csv").rename(root / "sub.csv")
    args = build_parser().parse_args([
        "finetune", "resnet10t", "--data", str(root), "--image-size", "32", "--folds", "2", "--image-dir", "imgs",
        "--test-dir", "tst", "--sample-submission", "sub.csv", "--no-hflip", "--cache", "resized",
    ])
    data = _load_data(args)
    assert data.hflip is False and data.sample_submission is not None and len(data.test_ids) == 10
    assert data.cache is not None and data.spec()["kwargs"]["cache"] == "resized", "recorded for iterate/predict"
    assert data.spec()["kwargs"]["image_dir"] == "imgs" and data.spec()["kwargs"]["test_dir"] == "tst"
