"""Data-parallel training with 2 CPU processes (gloo) through Accelerate's notebook_launcher.

Budget: < 30 s on 2 cores (one short run; most of the time is forking and the gloo rendezvous).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from kaggle_tli.data import ImageCsvData
from kaggle_tli.ledger import Ledger
from kaggle_tli.stages.finetune import finetune


@pytest.fixture
def writes(tmp_path, monkeypatch):
    """Record (pid, RANK) of every atomic file write (they all end in os.replace), in every process.

    The patch is made before the launcher forks, so the workers inherit it; O_APPEND keeps the short
    lines of concurrent writers whole.
    """
    record = tmp_path / "writes.txt"
    real_replace = os.replace

    def recording_replace(src, dst, *args, **kwargs):
        fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            os.write(fd, f"{os.getpid()}\t{os.environ.get('RANK', '-')}\t{dst}\n".encode())
        finally:
            os.close(fd)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", recording_replace)
    return record


def test_two_cpu_processes_train_once_and_only_rank0_writes(image_competition, tmp_path, writes):
    data = ImageCsvData(image_competition, image_size=32)
    runs = tmp_path / "runs"
    run = finetune("resnet10t", data, runs=runs, epochs=2, batch_size=8, lr=3e-3, progress=False, num_processes=2)

    assert run.status == "done" and run.info["env"]["world_size"] == 2 and run.info["env"]["device"] == "cpu"
    lines = [line.split("\t") for line in writes.read_text().splitlines()]
    in_run = [(pid, rank) for pid, rank, dst in lines if str(run.path) in dst]
    ranks = {rank for _, rank in in_run}
    assert "0" in ranks, "the training itself must run in the launched workers (RANK=0 wrote checkpoints)"
    assert ranks <= {"0", "-"}, f"only the main process may write run files, saw ranks {ranks}"
    assert [p.name for p in runs.iterdir() if p.is_dir()] == [run.id], "one run directory"
    assert [r["run_id"] for r in Ledger(runs).rows()] == [run.id], "one ledger row"

    # 48 training images, 8 per process per step, 2 processes: 3 steps per epoch, not 6
    log = pd.read_csv(run.path / "log.csv")
    assert log["step"].tolist() == list(range(1, 7)), "one log row per step, written once"
    assert np.isfinite(log["loss"]).all()

    oof = pd.read_csv(run.path / "oof.csv")
    _, valid = data.fold_indices(0)
    assert len(oof) == len(valid) == 12, "the metric must cover the full validation set, not one shard"
    assert sorted(oof["id"].astype(str)) == sorted(data.frame["id"].iloc[valid]), "each row exactly once"
    assert run.metrics["best_cv"] == pytest.approx((oof["prediction"] == oof["label"]).mean())
