"""What a training process writes down, and how a checkpoint is restored exactly.

log.csv rows, state.pt checkpoints and their exact restore, fold weights, out-of-fold predictions (oof.csv), and the
fold and run records of run.json.

Only the main process writes files; every process keeps the same records in memory.
"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from kaggle_tli.checkpoint import save_state, save_weights
from kaggle_tli.files import atomic_write_text
from kaggle_tli.runs import STATE_FILE, weights_name
from kaggle_tli.train.groups import base_lr
from kaggle_tli.train.state import Ctx, Fold

# metric_running: the same evaluation with the running BatchNorm statistics, beside the precise `metric`, so the
# difference stays visible (empty with eval_norms="running" or a model without BatchNorm)
LOG_COLUMNS = ("fold", "step", "epoch", "loss", "lr", "metric", "elapsed", "metric_running")
LOG_FLUSH_EVERY = 50  # steps between log.csv writes: one .item() sync per flush, not per step


def weights_path(ctx: Ctx, fold: int, which: str) -> Path:
    """Where the `which` weights of `fold` go in this run's directory."""
    return ctx.job.run_dir / weights_name(which, fold, ctx.job.folds[0])


def weights_meta(ctx: Ctx, fr: Fold) -> dict:
    """The safetensors metadata of a fold's weights (arch, run, classes, fold, step)."""
    return {
        "arch": ctx.job.spec.get("name", ""), "run_id": ctx.info["id"], "num_classes": ctx.job.data.num_classes,
        "fold": fr.fold, "step": fr.step,
    }


# --------------------------------------------------------------------------------------------------
# log.csv


def add_log_row(ctx: Ctx, fr: Fold, *, loss: torch.Tensor | None = None, metric: float | None = None,
                metric_running: float | None = None) -> None:
    """Queue a log.csv row for the current step (an evaluation joins the row of its step)."""
    if not ctx.is_main:
        return
    if metric is not None and fr.pending and fr.pending[-1][1] == fr.step and fr.pending[-1][5] is None:
        fr.pending[-1][5] = metric  # the evaluation belongs to the step just logged
        fr.pending[-1][7] = metric_running
        return
    lr = base_lr(fr.optimizer)
    fr.pending.append([fr.fold, fr.step, fr.epoch, loss, lr, metric, round(ctx.elapsed, 5), metric_running])


def flush_log(ctx: Ctx, fr: Fold) -> None:
    """Append the queued rows to log.csv (one loss sync for all of them)."""
    if not ctx.is_main or not fr.pending:
        return
    losses = [row[3] for row in fr.pending if row[3] is not None]
    values = iter(torch.stack(losses).float().cpu().tolist()) if losses else iter(())
    path = ctx.job.run_dir / "log.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(LOG_COLUMNS)
        for row in fr.pending:
            loss = next(values) if row[3] is not None else ""
            writer.writerow([row[0], row[1], row[2], loss, f"{row[4]:.6g}", "" if row[5] is None else row[5], row[6],
                             "" if row[7] is None else row[7]])
    fr.pending.clear()


def truncate_log(run_dir: Path, fold: int | None, step: int | None, done_folds: Sequence[int]) -> None:
    """Keep the log rows an exact resume will not write again: finished folds, and the resumed fold
    up to its checkpoint step. A torn last line (SIGKILL mid-write) is dropped too."""
    path = run_dir / "log.csv"
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [list(LOG_COLUMNS)]  # a log written before metric_running existed gets the column, empty in old rows
    width = len(rows[0])
    for row in rows[1:]:
        if len(row) != width or not row or not row[0].isdigit() or not row[1].isdigit():
            continue
        row = row + [""] * (len(LOG_COLUMNS) - width)
        k, s = int(row[0]), int(row[1])
        if k in done_folds or (k == fold and step is not None and s <= step):
            kept.append(row)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(kept)
    atomic_write_text(path, buffer.getvalue())


# --------------------------------------------------------------------------------------------------
# checkpoints


def checkpoint(ctx: Ctx, fr: Fold) -> None:
    """state.pt (exact resume) plus the current last/EMA weights. Only the main process writes."""
    flush_log(ctx, fr)
    fr.checkpoint_step = fr.step
    if not ctx.is_main:
        return
    inner = getattr(fr.optimizer, "optimizer", fr.optimizer)
    state = {
        "schema": 1, "fold": fr.fold, "step": fr.step, "epoch": fr.epoch, "batch_in_epoch": fr.batch_in_epoch,
        "model": fr.raw.state_dict(), "optimizer": inner.state_dict(),
        "scheduler": fr.scheduler.state_dict() if fr.scheduler is not None else None,
        "scaler": ctx.acc.scaler.state_dict() if ctx.acc.scaler is not None else None,
        "ema": fr.ema.module.state_dict() if fr.ema is not None else None,
        "best_metric": fr.best_metric, "best_step": fr.best_step, "bad_evals": fr.bad_evals,
        "last_metric": fr.last_metric, "last_eval_step": fr.last_eval_step, "start_metric": fr.start_metric,
        "best_probs": fr.best_probs, "last_probs": fr.last_probs, "elapsed": ctx.elapsed,
        "rng": _rng_state(),
    }
    _save_fold_weights(ctx, fr)
    save_state(state, ctx.job.run_dir / STATE_FILE)


def _save_fold_weights(ctx: Ctx, fr: Fold) -> None:
    save_weights(fr.raw.state_dict(), weights_path(ctx, fr.fold, "last"), weights_meta(ctx, fr))
    if fr.ema is not None:
        save_weights(fr.ema.module.state_dict(), weights_path(ctx, fr.fold, "ema"), weights_meta(ctx, fr))


def restore(ctx: Ctx, fr: Fold, state: dict) -> None:
    """Put a fold back exactly where `state` left it."""
    fr.raw.load_state_dict(state["model"], strict=True)
    fr.optimizer.load_state_dict(state["optimizer"])
    if fr.scheduler is not None and state["scheduler"] is not None:
        fr.scheduler.load_state_dict(state["scheduler"])
    if ctx.acc.scaler is not None and state["scaler"] is not None:
        ctx.acc.scaler.load_state_dict(state["scaler"])
    if fr.ema is not None and state["ema"] is not None:
        fr.ema.module.load_state_dict(state["ema"], strict=True)
    for key in ("step", "epoch", "batch_in_epoch", "best_metric", "best_step", "bad_evals", "last_metric",
                "last_eval_step", "start_metric", "best_probs", "last_probs"):
        setattr(fr, key, state[key])
    ctx.elapsed_offset = float(state.get("elapsed", 0.0))
    fr.checkpoint_step = fr.step
    _set_rng_state(state["rng"])


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# --------------------------------------------------------------------------------------------------
# fold and run bookkeeping (main process writes)


def mark_fold(ctx: Ctx, fr: Fold, status: str) -> None:
    """Set a fold's status and the run's progress in run.json."""
    record = ctx.info.setdefault("folds", {}).setdefault(str(fr.fold), {})
    record["status"] = status
    ctx.info["progress"] = {"fold": fr.fold, "step": fr.step, "epoch": fr.epoch}
    ctx.save_info()


def update_progress(ctx: Ctx, fr: Fold) -> None:
    """The run's progress and the fold's record in run.json, after an epoch."""
    ctx.info["progress"] = {"fold": fr.fold, "step": fr.step, "epoch": fr.epoch}
    record = ctx.info.setdefault("folds", {}).setdefault(str(fr.fold), {})
    record.update(_fold_record(fr))
    ctx.save_info()


def _fold_record(fr: Fold) -> dict:
    return {
        "steps": fr.step, "epochs": fr.epoch, "best_metric": fr.best_metric, "best_step": fr.best_step,
        "last_metric": fr.last_metric, "start_metric": fr.start_metric, "stop_reason": fr.stop_reason,
    }


def finish_fold(ctx: Ctx, fr: Fold) -> None:
    """Weights and out-of-fold rows of a finished fold; run.json fold record."""
    if ctx.is_main:  # the fold's last weights were written by its final checkpoint
        _write_oof(ctx, fr, fr.best_probs, "oof.csv")
        _write_oof(ctx, fr, fr.last_probs, "oof_last.csv")
    record = ctx.info.setdefault("folds", {}).setdefault(str(fr.fold), {})
    record.update(_fold_record(fr))
    record["status"] = "interrupted" if fr.stop_reason == "time_budget" else "done"
    ctx.info["steps"] = sum(int(r.get("steps") or 0) for r in ctx.info["folds"].values())
    ctx.save_info()


def _write_oof(ctx: Ctx, fr: Fold, probs: torch.Tensor | None, name: str) -> None:
    if probs is None:
        return
    data = ctx.job.data
    _, valid_idx = data.fold_indices(fr.fold)
    rows = data.frame.iloc[valid_idx]
    # ids, labels and predictions as text: a class "01" must not come back as the number 1
    table = pd.DataFrame({
        "id": rows["id"].astype(str).to_numpy(), "label": [str(v) for v in rows["label"]], "fold": fr.fold,
    })
    p = probs.numpy()
    table["prediction"] = _predicted_text(data, p)
    prefix = "pred" if data.task == "regression" else "prob"
    for j, name_j in enumerate(data.class_names):
        table[f"{prefix}_{name_j}"] = p[:, j]
    path = ctx.job.run_dir / name
    if path.exists():
        old = read_oof_table(path)
        table = pd.concat([old[old["fold"] != fr.fold], table], ignore_index=True)
    atomic_write_text(path, table.to_csv(index=False))


def _predicted_text(data: Any, p: np.ndarray) -> list[str]:
    """The prediction column of oof.csv: the class, the tags at 0.5, or the values."""
    if data.task == "regression":
        return [" ".join(f"{v:.6g}" for v in row) for row in p]
    if data.task == "multilabel":
        return [" ".join(str(n) for n, v in zip(data.class_names, row, strict=True) if v >= 0.5) for row in p]
    return [str(data.class_names[i]) for i in p.argmax(axis=1)]


def read_oof_table(path: Path) -> pd.DataFrame:
    """oof.csv with id, label and prediction read as the text written (no "01" -> 1, no "NA" -> NaN)."""
    return pd.read_csv(path, dtype={"id": str, "label": str, "prediction": str}, keep_default_na=False)


def _oof_score(ctx: Ctx, name: str) -> float | None:
    path = ctx.job.run_dir / name
    if not path.exists():
        return None
    table = read_oof_table(path)
    data = ctx.job.data
    position = {str(i): k for k, i in enumerate(data.frame["id"].astype(str))}
    y = data.targets[np.array([position[str(i)] for i in table["id"]], dtype=np.int64)]
    prefix = "pred" if data.task == "regression" else "prob"
    outputs = table[[f"{prefix}_{c}" for c in data.class_names]].to_numpy(dtype=np.float64)
    return float(ctx.metric(y, outputs, data.task))


def finish_run(ctx: Ctx, stopped_by_budget: bool) -> None:
    """The run's metrics (cv, best_cv, per fold) and final status in run.json."""
    metrics = ctx.info.setdefault("metrics", {})
    metrics["metric"] = ctx.metric.name
    metrics["cv"] = _oof_score(ctx, "oof_last.csv")
    metrics["best_cv"] = _oof_score(ctx, "oof.csv")
    metrics["folds"] = {
        k: {"last": r.get("last_metric"), "best": r.get("best_metric"), "best_step": r.get("best_step")}
        for k, r in ctx.info.get("folds", {}).items()
    }
    starts = {k: r["start_metric"] for k, r in ctx.info.get("folds", {}).items() if r.get("start_metric") is not None}
    if starts:
        metrics["start_metric"] = starts
    ctx.info["status"] = "interrupted" if stopped_by_budget else "done"
    if stopped_by_budget:
        ctx.info["stop_reason"] = "time_budget"
    ctx.save_info()
