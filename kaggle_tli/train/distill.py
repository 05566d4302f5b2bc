"""Distillation from the teacher: its outputs on the same batches as a second target, `(1 - a) task + a KD`.

A Kaggle pipeline has the teacher (the previous run) and the data at hand. The teacher runs in eval mode, without
gradients, under the same autocast as the student, in every training process; the term is dropped after
`distill_steps`. Its weights are the run's own copy (teacher.safetensors, written by iterate), so a run continued
later does not depend on its parent's folder.

The KD term per task (`task`: the data's `task` attribute, "single_label" when it has none):

    single_label, binary   KL(softmax(t / T) || softmax(s / T)) T^2 (one logit: the Bernoulli KL of the sigmoids)
    multilabel             BCE of sigmoid(s / T) against sigmoid(t / T), T^2
    regression             MSE of the student's values against the teacher's (no temperature)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kaggle_tli.checkpoint import load_weights
from kaggle_tli.models import create_model_from_spec
from kaggle_tli.train.state import Ctx, Fold

TASKS = ("single_label", "binary", "multilabel", "regression")
TEACHER_FILE = "teacher.safetensors"


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, task: str,
                 temperature: float) -> torch.Tensor:
    """The KD term of one batch (mean over the batch), in float32 whatever the autocast dtype."""
    s, t = student_logits.float(), teacher_logits.float().detach()
    if task not in TASKS:
        raise ValueError(f"task={task!r}: distillation knows the tasks {TASKS}")
    if task == "regression":
        return F.mse_loss(s, t)
    s_T, t_T = s / temperature, t / temperature
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(s_T, torch.sigmoid(t_T)) * temperature**2
    if s.shape[-1] == 1:  # a binary head with one logit: KL between the two Bernoulli distributions
        p_t = torch.sigmoid(t_T)
        kl = F.binary_cross_entropy_with_logits(s_T, p_t) - F.binary_cross_entropy_with_logits(t_T, p_t)
        return kl * temperature**2
    kl = F.kl_div(F.log_softmax(s_T, dim=-1), F.log_softmax(t_T, dim=-1), reduction="batchmean", log_target=True)
    return kl * temperature**2


def task_of(data: Any) -> str:
    """The data's task, "single_label" for data types that do not say (all of them before task shapes)."""
    return str(getattr(data, "task", "single_label"))


def load_teacher(run_dir: Path, info: dict, device: torch.device) -> nn.Module:
    """The run's distillation teacher (its own copy), on `device`, in eval mode, frozen."""
    teacher_info = info.get("extra", {}).get("teacher")
    path = Path(run_dir) / TEACHER_FILE
    if not teacher_info or not path.is_file():
        raise ValueError(
            f"distill > 0 but run {info.get('id')!r} holds no teacher ({TEACHER_FILE} and run.json's extra.teacher): "
            "distillation runs come from iterate(prev_run, arch, distill=...), which copies the teacher in"
        )
    model = create_model_from_spec(teacher_info["arch"])
    model.load_state_dict(load_weights(path), strict=True)
    model.to(device).eval()
    model.requires_grad_(False)
    return model


def with_distill(ctx: Ctx, fr: Fold, x: torch.Tensor, logits: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    """The micro-batch's loss with the KD term mixed in while distillation is on (before `distill_steps`)."""
    cfg = ctx.cfg
    if not cfg.distill or (cfg.distill_steps is not None and fr.step >= cfg.distill_steps):
        return loss
    if ctx.teacher is None:
        ctx.teacher = load_teacher(ctx.job.run_dir, ctx.info, ctx.device)
    with torch.no_grad(), ctx.acc.autocast():
        teacher_logits = ctx.teacher(x)
    kd = distill_loss(logits, teacher_logits, task_of(ctx.job.data), cfg.distill_temperature)
    return (1.0 - cfg.distill) * loss + cfg.distill * kd
