"""The four task shapes and what each one means for training: its loss, its activation, its default metric.

    single_label   one label per image          cross-entropy         softmax   accuracy
    binary         one label, two classes       cross-entropy (2)     softmax   roc_auc when scores are asked
    multilabel     several 0/1 labels per image BCE                   sigmoid   roc_auc (mean over labels)
    regression     one or more numbers          MSE (huber, l1)       identity  root_mean_squared_error

Every shape has one model output per class, label or target, so the TLI engine and the model builder see the
same thing whatever the task; only the loss, the activation and the submission differ. Regression targets are
trained standardised (mean 0, std 1 per target) and turned back into values by `activate`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError

TASKS = ("single_label", "binary", "multilabel", "regression")
LOSSES = ("auto", "cross_entropy", "bce", "mse", "huber", "l1")
_REGRESSION_LOSSES = ("mse", "huber", "l1")


def check_task(task: str | None) -> str | None:
    """`task` itself (None: infer it from the data), or a DataError naming the four shapes."""
    if task is None or task in TASKS:
        return task
    spelled = {"single": "single_label", "multiclass": "single_label", "classification": "single_label",
               "multi_label": "multilabel", "multi-label": "multilabel", "tags": "multilabel",
               "regress": "regression"}.get(str(task).lower().replace(" ", "_"))
    hint = f" (did you mean {spelled!r}?)" if spelled else ""
    raise DataError(f"task={task!r}{hint}: use one of {', '.join(TASKS)}, or leave it out to infer it from the data")


def loss_name(task: str, loss: str = "auto") -> str:
    """The loss a task trains with: "auto" picks the shape's own; a regression may choose huber or l1."""
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r}: use one of {', '.join(LOSSES)}")
    own = {"single_label": "cross_entropy", "binary": "cross_entropy", "multilabel": "bce", "regression": "mse"}[task]
    if loss == "auto" or loss == own:
        return own
    if task == "regression" and loss in _REGRESSION_LOSSES:
        return loss
    allowed = ", ".join(_REGRESSION_LOSSES) if task == "regression" else own
    raise ValueError(f"loss={loss!r} does not fit a {task} task: use 'auto' or {allowed}")


def task_loss(task: str, logits: torch.Tensor, targets: torch.Tensor, *, loss: str = "auto",
              label_smoothing: float = 0.0) -> torch.Tensor:
    """The training loss of one batch. Class targets are indices or (Mixup/CutMix) per-class weights."""
    name = loss_name(task, loss)
    logits = logits.float()
    if name == "cross_entropy":
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    targets = targets.float().reshape(logits.shape)
    if name == "bce":
        if label_smoothing:
            targets = targets * (1 - label_smoothing) + 0.5 * label_smoothing
        return F.binary_cross_entropy_with_logits(logits, targets)
    return {"mse": F.mse_loss, "huber": F.smooth_l1_loss, "l1": F.l1_loss}[name](logits, targets)


def activate(task: str, logits: torch.Tensor, scale: dict | None = None) -> torch.Tensor:
    """Model outputs -> what is scored and submitted: class probabilities, label probabilities, or values."""
    logits = logits.float()
    if task in ("single_label", "binary"):
        return logits.softmax(dim=1)
    if task == "multilabel":
        return logits.sigmoid()
    if scale is None:
        return logits
    mean = torch.as_tensor(scale["mean"], dtype=logits.dtype, device=logits.device)
    std = torch.as_tensor(scale["std"], dtype=logits.dtype, device=logits.device)
    return logits * std + mean


def default_metric(task: str, *, scores: bool) -> str:
    """The metric a shape is scored with unless the user names one (`scores`: the submission asks for scores)."""
    if task == "binary" and scores:
        return "roc_auc"
    return {"single_label": "accuracy", "binary": "accuracy", "multilabel": "roc_auc",
            "regression": "root_mean_squared_error"}[task]


def standardise(values: np.ndarray) -> dict:
    """Per-target mean and std of regression targets (std 1 for a constant target)."""
    mean = values.mean(axis=0)
    std = values.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return {"mean": [float(v) for v in np.atleast_1d(mean)], "std": [float(v) for v in np.atleast_1d(std)]}


def tags_at(probs: np.ndarray, names: Sequence, threshold: float) -> list[str]:
    """Space-separated tags of every row at `threshold` (the most likely one when none reaches it: a row
    of a tags competition always has one)."""
    out = []
    for row in probs:
        picked = [str(names[j]) for j in np.flatnonzero(row >= threshold)]
        out.append(" ".join(picked) if picked else str(names[int(row.argmax())]))
    return out


def tune_threshold(y: np.ndarray, probs: np.ndarray) -> float:
    """The probability threshold that maximises the micro F1 of multi-label OOF predictions (0.5 without any)."""
    if len(y) == 0:
        return 0.5
    best, best_f1 = 0.5, -1.0
    for t in np.round(np.arange(0.05, 0.96, 0.05), 2):
        pred = probs >= t
        tp = float((pred & (y > 0.5)).sum())
        f1 = 2 * tp / max(1.0, float(pred.sum()) + float((y > 0.5).sum()))
        if f1 > best_f1 + 1e-12:
            best, best_f1 = float(t), f1
    return best
