"""DataLoader defaults: workers from the cores (tests pin 0), shared among data-parallel processes, one OpenCV
thread in each worker."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

from kaggle_tli.data import ArrayDataset, default_num_workers, loader_options
from kaggle_tli.data.loading import one_opencv_thread


def test_the_test_suite_loads_in_process():
    assert default_num_workers() == 0 and loader_options(None, cuda=False)["num_workers"] == 0


def test_workers_default_to_the_cores_and_are_shared_among_processes(monkeypatch):
    monkeypatch.delenv("KAGGLE_TLI_NUM_WORKERS")
    cores = len(os.sched_getaffinity(0))
    assert default_num_workers() == min(cores, 8)
    monkeypatch.setenv("KAGGLE_TLI_NUM_WORKERS", "4")
    options = loader_options(None, cuda=True, persistent=True, processes=2)
    assert options["num_workers"] == 2 and options["pin_memory"] and options["persistent_workers"]
    assert options["worker_init_fn"] is one_opencv_thread
    assert loader_options(3, cuda=False)["num_workers"] == 3, "an explicit count wins"
    monkeypatch.setenv("KAGGLE_TLI_NUM_WORKERS", "many")
    with pytest.raises(ValueError, match="whole number"):
        default_num_workers()


def test_a_worker_runs_opencv_on_one_thread():
    from torch.utils.data import DataLoader

    class Threads(ArrayDataset):
        def load(self, index: int) -> np.ndarray:
            return np.full((2, 2, 1), cv2.getNumThreads(), np.uint8)

    dataset = Threads(np.zeros((2, 2, 2, 1), np.uint8), np.zeros(2), transform=None)
    (x, _), = DataLoader(dataset, batch_size=2, **loader_options(1, cuda=False))
    assert (x * 255).round().eq(1).all(), "cv2.getNumThreads() inside the worker"


def test_workers_forked_after_opencv_has_worked_in_the_parent_do_not_hang(tmp_path):
    """OpenCV's thread pool does not survive fork: once the parent has resized a large image, a forked worker
    calling OpenCV used to wait forever. Importing the data package keeps OpenCV sequential in the parent."""
    script = tmp_path / "fork.py"
    script.write_text(textwrap.dedent("""
        import cv2, numpy as np, torch
        from torch.utils.data import DataLoader, Dataset
        from kaggle_tli.data import loader_options
        big = np.random.default_rng(0).random((2000, 2000), dtype=np.float32)
        for _ in range(3):
            cv2.resize(big, (700, 700)); cv2.GaussianBlur(big, (9, 9), 3)
        class Resize(Dataset):
            def __len__(self):
                return 4
            def __getitem__(self, i):
                return torch.tensor(float(cv2.resize(big, (300, 300)).mean()))
        batches = list(DataLoader(Resize(), batch_size=2, timeout=60, **loader_options(2, cuda=False)))
        print("batches", len(batches))
    """))
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and "batches 2" in proc.stdout, proc.stderr[-2000:]
