"""The per-process training state: the job every process gets, one fold's mutable state, the process context.

These are shared by the loop (which advances them) and the records (which write and restore them), so they live
below both.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from kaggle_tli.data import EpochBatchSampler, KaggleData
from kaggle_tli.runs import write_run_info
from kaggle_tli.train.config import TrainConfig, resolve_metric
from kaggle_tli.train.norms import PreciseBatches


@dataclass
class Job:
    """What every training process needs; fork hands it to Accelerate's workers without pickling."""

    run_dir: Path
    data: KaggleData
    cfg: TrainConfig
    spec: dict
    folds: list[int]
    init_files: dict[int, str]  # fold -> step-0 weights file in the run dir (default: init.safetensors)


@dataclass
class Fold:
    """Mutable training state of one fold in one process."""

    fold: int
    model: nn.Module  # as prepared by Accelerate (DDP-wrapped when world > 1)
    raw: nn.Module
    optimizer: Any
    scheduler: Any
    ema: Any
    train_set: Any
    valid_set: Any
    valid_targets: np.ndarray
    sampler: EpochBatchSampler
    loader: DataLoader
    batches_per_epoch: int
    total_steps: int
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    last_metric: float | None = None
    last_eval_step: int | None = None
    start_metric: float | None = None
    best_probs: torch.Tensor | None = None
    last_probs: torch.Tensor | None = None
    stop_reason: str | None = None
    checkpoint_step: int | None = None
    mixup: Any = None  # timm Mixup/CutMix, when the config asks for it
    precise: PreciseBatches | None = None  # the fixed training batches of precise validation (eval_norms="precise")
    pending: list = field(default_factory=list)  # log rows not yet written: [fold, step, epoch, loss, lr, metric, elapsed]


class Ctx:
    """Process-wide things: Accelerate, the metric, the log file, the clock."""

    def __init__(self, job: Job, acc: Any):
        self.job, self.cfg, self.acc = job, job.cfg, acc
        self.rank, self.world = acc.process_index, acc.num_processes
        self.is_main = acc.is_main_process
        self.device = acc.device
        self.metric = resolve_metric(job.cfg.metric)
        self.info = json.loads((job.run_dir / "run.json").read_text())
        self.budget_start = time.perf_counter()  # time_budget_s counts from this process's start
        self.fold_start = self.budget_start
        self.elapsed_offset = 0.0
        self.eval_seconds = 0.0
        self.step_seconds = 0.0
        self.teacher: nn.Module | None = None  # the distillation teacher (distill > 0), loaded once per process
        self.input_format = torch.preserve_format  # channels_last when the model was converted (models.layout)

    @property
    def elapsed(self) -> float:
        return self.elapsed_offset + time.perf_counter() - self.fold_start

    def save_info(self) -> None:
        if self.is_main:
            write_run_info(self.job.run_dir, self.info)
