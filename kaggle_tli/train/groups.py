"""Learning-rate groups from the transfer report: one multiplier for what the teacher set, one for what is fresh.

The report (the run's transfer.csv, written by iterate) says per student tensor how it was set. Tensors that carry the
teacher's values (`copy`, `grow`, `combo`, `mix`) get `lr_transferred`; tensors left at init, and those zeroed on
purpose (the last norm of an extra block, which decides how fast the new block opens), get `lr_fresh`. A run without a
report (finetune, a Kaiming student) has only fresh tensors. Weight decay stays off norms and biases (1-d tensors), as
timm's `param_groups_weight_decay` does.

`freeze_transferred_steps` holds the transferred tensors fixed for the first k steps: their groups' learning rate is
0 (AdamW still tracks their moments, so they start moving from informed estimates), which leaves every parameter in
the optimizer and in DDP's buckets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from kaggle_tli.train.config import TrainConfig

TRANSFERRED_METHODS = ("copy", "grow", "combo", "mix")  # report methods that put teacher values into a tensor
REPORT_FILE = "transfer.csv"


def transferred_names(run_dir: Path) -> set[str]:
    """State-dict keys of the tensors the teacher set, from the run's transfer.csv (empty without one)."""
    path = Path(run_dir) / REPORT_FILE
    if not path.is_file():
        return set()
    frame = pd.read_csv(path, keep_default_na=False)
    if not {"student", "method"} <= set(frame.columns):  # a file of the caller's under that name, not a report
        return set()
    return set(frame.loc[frame["method"].isin(TRANSFERRED_METHODS), "student"])


def param_groups(model: nn.Module, cfg: TrainConfig, transferred: set[str]) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: (transferred, fresh) x (decay, no decay), empty ones left out.

    Each group carries `lr_scale` (timm's schedulers multiply the scheduled rate by it), `initial_lr` = `cfg.lr` (the
    rate the schedule scales) and `lr` = the scaled rate (what a constant schedule keeps), plus `transferred`.
    """
    buckets: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            buckets.setdefault((name in transferred, p.ndim > 1), []).append(p)
    groups = []
    for (is_transferred, decay), params in sorted(buckets.items(), reverse=True):
        scale = float(cfg.lr_transferred if is_transferred else cfg.lr_fresh)
        groups.append({
            "params": params, "weight_decay": cfg.weight_decay if decay else 0.0, "lr": cfg.lr * scale,
            "initial_lr": cfg.lr, "lr_scale": scale, "transferred": is_transferred,
        })
    return groups


def apply_freeze(optimizer: Any, cfg: TrainConfig, step: int) -> None:
    """Before optimizer step `step + 1`: learning rate 0 for the transferred groups while `step` is below
    `freeze_transferred_steps` (called after the scheduler set this step's rates)."""
    if step >= cfg.freeze_transferred_steps:
        return
    for group in getattr(optimizer, "optimizer", optimizer).param_groups:
        if group.get("transferred"):
            group["lr"] = 0.0


def base_lr(optimizer: Any) -> float:
    """The scheduled learning rate before group multipliers (what log.csv records); 0 while every group is frozen."""
    for group in getattr(optimizer, "optimizer", optimizer).param_groups:
        scale = group.get("lr_scale", 1.0)
        if scale and group["lr"]:
            return float(group["lr"] / scale)
    return 0.0
