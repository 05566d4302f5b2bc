"""The one training loop that stage 1 (`finetune`) and stage 4 (`resume`) share, plus `predict`.

Shape of a run (one process, or one of N data-parallel processes launched through Accelerate):

    for each fold to train:            primary fold first; its weights are the TLI teacher
        build model from the arch spec, load step-0 weights (or the saved state when continuing)
        [evaluate at step 0]           eval_at_start=True: the step-0 metric of an injected student
        for each epoch:
            micro-batches -> forward / backward (fp16 autocast + GradScaler on CUDA)
            every grad_accum micro-batches: clip, optimizer step, cosine LR per step, EMA update,
                                            a log.csv row, [evaluate], [checkpoint], stop checks
            evaluate, keep the best weights, early stopping, checkpoint (state.pt)
        write fold weights and its out-of-fold predictions
    oof.csv / oof_last.csv, metrics (cv, best_cv), run.json status

Exact resume: the data order is a function of (seed, epoch) and the augmentation is reseeded per
batch (see `data.EpochBatchSampler`), the loaders never touch the global RNG, and `state.pt`
holds weights, optimizer, scheduler, scaler, EMA, RNG states and the position inside the epoch. A
CPU run continued from step k ends with bit-identical weights to one that never stopped.

Metric semantics: the metric is computed on the evaluated weights (the EMA weights when ema=True).
`cv` is the score of the final evaluated weights over all trained folds' out-of-fold rows
(`oof_last.csv`), `best_cv` the score of each fold's best evaluation (`oof.csv`, the weights
`predict` uses by default).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import difflib
import hashlib
import inspect
import io
import json
import math
import os
import random
import shutil
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from kaggle_tli.checkpoint import (
    INIT_WEIGHTS,
    STATE_FILE,
    Run,
    atomic_write_bytes,
    atomic_write_text,
    load_run,
    load_state,
    load_weights,
    make_run_dir,
    save_state,
    save_weights,
    utc_now,
    weights_name,
    write_run_info,
)
from kaggle_tli.data import DataError, EpochBatchSampler, KaggleData, rebuild_data

LOG_COLUMNS = ("fold", "step", "epoch", "loss", "lr", "metric", "elapsed")
_LOG_FLUSH_EVERY = 50  # steps between log.csv writes: one .item() sync per flush, not per step


# --------------------------------------------------------------------------------------------------
# configuration


_BOOL_FIELDS = ("ema", "eval_at_start", "pretrained", "progress")  # TrainConfig's on/off switches


class RunBusyError(RuntimeError):
    """Another process holds the run's lock: it is training that run right now."""


@dataclass(frozen=True)
class TrainConfig:
    """Every training option; saved as run.json["config"]. Unknown keys are a TypeError.

    Steps are optimizer steps (one per `grad_accum` micro-batches). `batch_size` is per process.
    """

    epochs: int = 3
    batch_size: int = 32
    eval_batch_size: int | None = None  # default: 2 x batch_size
    lr: float = 1e-3
    optimizer: str = "adamw"  # "adamw" | "adam" (the paper: Adam at 3e-3) | "sgd"
    weight_decay: float = 0.01
    scheduler: str = "cosine"  # "cosine" (timm, warmup, stepped per optimizer step) | "constant"
    warmup_steps: int | None = None  # default: 5% of the planned steps, at most 500
    min_lr: float = 0.0
    grad_accum: int = 1
    clip_grad: float | None = None
    label_smoothing: float = 0.0
    amp: str | bool = "auto"  # "auto": fp16 + GradScaler on CUDA, off on CPU; True/"fp16"; False
    ema: bool = False  # timm ModelEmaV3 (with decay warm-up); the EMA weights are the ones evaluated
    ema_decay: float = 0.999
    early_stopping: int | None = None  # patience, in evaluations without improvement
    time_budget_s: float | None = None  # stop cleanly (evaluate, checkpoint) before this many seconds
    seed: int = 42
    num_workers: int = 0
    fold: int = 0  # the primary fold: its last weights are model.safetensors, the teacher for TLI
    train_folds: tuple[int, ...] | str | None = None  # None: only `fold`; "all"; or a list of folds
    metric: str | Callable = "accuracy"  # "accuracy", an sklearn metric or scorer name, or a callable
    max_steps: int | None = None  # cap on optimizer steps per fold (tests, benchmarks, quick looks)
    eval_every_steps: int | None = None  # evaluate every N steps as well as at each epoch end
    eval_at_start: bool = False  # evaluate before the first step (the step-0 metric of a TLI student)
    checkpoint_every_steps: int | None = None  # state.pt every N steps as well as at each epoch end
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    num_processes: int = 1  # > 1: data parallel through accelerate.notebook_launcher (gloo on CPU)
    pretrained: bool = False  # stage 1 only: start from the registry's pretrained weights
    progress: bool = True  # tqdm progress bars

    def __post_init__(self) -> None:
        if isinstance(self.train_folds, list):
            object.__setattr__(self, "train_folds", tuple(self.train_folds))
        positive = ("epochs", "batch_size", "grad_accum", "num_processes")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r}: must be a positive integer")
        for name in ("max_steps", "eval_every_steps", "checkpoint_every_steps", "early_stopping", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r}: must be a positive integer or None")
        for name in _BOOL_FIELDS:  # a string "False" is truthy: it would switch the option on
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(
                    f"{name}={value!r}: must be True or False, not a {type(value).__name__} (a string such as "
                    f"'False' counts as true); pass {name}=False, or on the command line --set {name}=false"
                )
            object.__setattr__(self, name, bool(value))
        choices = {"optimizer": ("adamw", "adam", "sgd"), "scheduler": ("cosine", "constant"),
                   "device": ("auto", "cpu", "cuda")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: choose one of {allowed}")
        if self.amp not in ("auto", "fp16", True, False, "no", "off"):
            raise ValueError(f"amp={self.amp!r}: use 'auto', True / 'fp16', or False")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r}: must be > 0")
        if self.train_folds is not None and self.train_folds != "all" and not isinstance(self.train_folds, tuple):
            raise ValueError(f"train_folds={self.train_folds!r}: use None, 'all' or a list of fold numbers")
        resolve_metric(self.metric)  # an unknown metric name fails here, before any run exists

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> TrainConfig:
        """`TrainConfig(**kwargs)` with a helpful TypeError for a misspelt option."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in kwargs if k not in valid]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, valid, n=1, cutoff=0.6)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise TypeError(f"unknown training option(s) {', '.join(hints)}; valid options: {', '.join(valid)}")
        return cls(**kwargs)

    @classmethod
    def from_dict(cls, saved: dict) -> TrainConfig:
        """Rebuild a config saved in run.json; keys this version does not know are dropped."""
        valid = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in saved.items() if k in valid}
        for name in _BOOL_FIELDS:
            if isinstance(kwargs.get(name), str):  # `--set ema=False` of older versions, which trained as true
                warnings.warn(
                    f"the saved config has {name}={kwargs[name]!r}, a string, which trained as {name}="
                    f"{bool(kwargs[name])}; read as {bool(kwargs[name])} (what the run did). Pass {name}=... to "
                    "change it in a new run", UserWarning, stacklevel=2,
                )
                kwargs[name] = bool(kwargs[name])
        if isinstance(kwargs.get("metric"), str) and kwargs["metric"].startswith("callable:"):
            raise ValueError(
                f"the saved config used a custom metric function ({kwargs['metric']}); pass metric=<function> again"
            )
        return cls(**kwargs)

    def replace(self, **kwargs: Any) -> TrainConfig:
        """A copy with some options changed (unknown keys are a TypeError)."""
        return TrainConfig.from_kwargs(**{**self._fields(), **kwargs})

    def _fields(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict:
        """JSON-ready: a callable metric is recorded by name."""
        out = self._fields()
        if callable(out["metric"]):
            out["metric"] = f"callable:{getattr(out['metric'], '__module__', '?')}.{_name_of(out['metric'])}"
        if isinstance(out["train_folds"], tuple):
            out["train_folds"] = list(out["train_folds"])
        return out

    def config_hash(self) -> str:
        """sha1 of the canonical JSON of the config (sorted keys): equal configs, equal hash."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha1(canonical.encode()).hexdigest()


def _name_of(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


# --------------------------------------------------------------------------------------------------
# metrics

# sklearn functions that score probabilities rather than labels
_PROBA_FUNCS = {"log_loss", "roc_auc_score", "average_precision_score", "top_k_accuracy_score", "brier_score_loss"}


@dataclass(frozen=True)
class Metric:
    """A validation metric. `fn(y_true, y_pred)` gets class indices, or probabilities (N, C) when
    `needs_proba` (binary problems get the positive-class column, except for log_loss/top-k)."""

    name: str
    fn: Callable
    needs_proba: bool = False
    greater_is_better: bool = True
    sign: float = 1.0
    kwargs: dict = field(default_factory=dict)

    def __call__(self, y_true: np.ndarray, probs: np.ndarray) -> float:
        kwargs = dict(self.kwargs)
        if not self.needs_proba:
            return self.sign * float(self.fn(y_true, probs.argmax(axis=1), **kwargs))
        fn_name = getattr(self.fn, "__name__", "")
        y_score = probs
        if probs.shape[1] == 2 and fn_name not in ("log_loss", "top_k_accuracy_score"):
            y_score = probs[:, 1]
        elif "labels" in _parameters(self.fn):
            kwargs.setdefault("labels", list(range(probs.shape[1])))
        return self.sign * float(self.fn(y_true, y_score, **kwargs))

    def better(self, new: float, old: float | None) -> bool:
        if old is None or (isinstance(old, float) and math.isnan(old)):
            return not math.isnan(new)
        return new > old if self.greater_is_better else new < old


def _parameters(fn: Callable) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def resolve_metric(metric: str | Callable | Metric) -> Metric:
    """"accuracy", an sklearn.metrics function name ("f1_score", "log_loss"), an sklearn scorer name
    ("f1_macro", "roc_auc_ovr", "neg_log_loss"), a `Metric`, or a callable fn(y_true, y_pred_labels)."""
    if isinstance(metric, Metric):
        return metric
    if callable(metric):
        return Metric(name=_name_of(metric), fn=metric)
    import sklearn.metrics as skm

    name = str(metric)
    if name == "accuracy":
        return Metric("accuracy", skm.accuracy_score)
    fn = getattr(skm, name, None)
    if callable(fn) and not name.startswith("_") and name not in ("get_scorer", "make_scorer", "check_scoring"):
        lower_better = name.endswith(("_loss", "_error", "_deviance"))
        return Metric(name, fn, needs_proba=name in _PROBA_FUNCS, greater_is_better=not lower_better)
    try:
        scorer = skm.get_scorer(name)
    except ValueError as e:
        known = ["accuracy", *skm.get_scorer_names()]
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        raise ValueError(
            f"unknown metric {name!r}{f'; did you mean {close}?' if close else ''} Use 'accuracy', an sklearn "
            "scorer name (sklearn.metrics.get_scorer_names()), an sklearn.metrics function name, or a callable"
        ) from e
    response = getattr(scorer, "_response_method", "predict")
    return Metric(
        name, scorer._score_func, needs_proba=response != "predict", sign=float(scorer._sign),
        kwargs=dict(scorer._kwargs),
    )


# --------------------------------------------------------------------------------------------------
# helpers


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices). Data order and augmentation have their own seeds."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def git_sha(cwd: str | Path | None = None) -> str:
    """Commit of the working directory's git checkout, or "" (not a checkout, no git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def fold_plan(cfg: TrainConfig, n_folds: int) -> list[int]:
    """The folds to train, primary (`cfg.fold`, or the first listed) first."""
    if cfg.train_folds is None:
        folds = [cfg.fold]
    elif cfg.train_folds == "all":
        folds = list(range(n_folds))
    else:
        folds = [int(k) for k in cfg.train_folds]
    bad = [k for k in folds if not 0 <= k < n_folds]
    if bad or not folds:
        raise ValueError(f"fold(s) {bad or folds} out of range: the data has folds 0..{n_folds - 1}")
    primary = cfg.fold if cfg.fold in folds else folds[0]
    return [primary] + [k for k in dict.fromkeys(folds) if k != primary]


# --------------------------------------------------------------------------------------------------
# the per-process training context


@dataclass
class _Job:
    """What every training process needs; fork hands it to Accelerate's workers without pickling."""

    run_dir: Path
    data: KaggleData
    cfg: TrainConfig
    spec: dict
    folds: list[int]
    init_files: dict[int, str]  # fold -> step-0 weights file in the run dir (default: init.safetensors)


@dataclass
class _Fold:
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
    pending: list = field(default_factory=list)  # log rows not yet written: [fold, step, epoch, loss, lr, metric, elapsed]


class _Ctx:
    """Process-wide things: Accelerate, the metric, the log file, the clock."""

    def __init__(self, job: _Job, acc: Any):
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

    @property
    def elapsed(self) -> float:
        return self.elapsed_offset + time.perf_counter() - self.fold_start

    def save_info(self) -> None:
        if self.is_main:
            write_run_info(self.job.run_dir, self.info)


# --------------------------------------------------------------------------------------------------
# building the pieces of a fold


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # no weight decay on norms and biases (1-d tensors), as timm's param_groups_weight_decay does
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)


def _make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> Any:
    from timm.scheduler import CosineLRScheduler

    if cfg.scheduler == "constant":
        return None
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(500, total_steps // 20)
    return CosineLRScheduler(
        optimizer, t_initial=max(1, total_steps - warmup), lr_min=cfg.min_lr, warmup_t=warmup,
        warmup_lr_init=cfg.lr * 0.01 if warmup else 0.0, warmup_prefix=True, t_in_epochs=False,
    )


def _build_fold(ctx: _Ctx, fold: int) -> _Fold:
    """Model (step-0 weights), optimizer, scheduler, EMA and loaders of `fold`, prepared by Accelerate."""
    from kaggle_tli.registry import create_model_from_spec

    job, cfg = ctx.job, ctx.cfg
    raw = create_model_from_spec(job.spec)
    raw.load_state_dict(load_weights(job.run_dir / job.init_files.get(fold, INIT_WEIGHTS)), strict=True)
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(raw, decay=cfg.ema_decay, use_warmup=True)
    optimizer = _make_optimizer(raw, cfg)
    model, optimizer = ctx.acc.prepare(raw, optimizer)
    raw = ctx.acc.unwrap_model(model)
    if ema is not None:
        ema.module.to(ctx.device)
    train_idx, valid_idx = job.data.fold_indices(fold)
    n_train = len(train_idx)
    drop_last = n_train >= cfg.batch_size * ctx.world  # a batch of 1 breaks BatchNorm; keep short sets whole
    sampler = EpochBatchSampler(
        np.arange(n_train), cfg.batch_size, seed=cfg.seed, drop_last=drop_last, rank=ctx.rank, world=ctx.world
    )
    train_set = job.data.dataset(train_idx, train=True)
    loader = _loader(train_set, sampler, cfg, ctx, persistent=True)
    batches = len(sampler)
    planned = cfg.epochs * -(-batches // cfg.grad_accum)
    total = min(planned, cfg.max_steps) if cfg.max_steps else planned
    inner = getattr(optimizer, "optimizer", optimizer)
    return _Fold(
        fold=fold, model=model, raw=raw, optimizer=optimizer, scheduler=_make_scheduler(inner, cfg, total),
        ema=ema, train_set=train_set, valid_set=job.data.dataset(valid_idx, train=False),
        valid_targets=job.data.frame["target"].to_numpy()[valid_idx], sampler=sampler, loader=loader,
        batches_per_epoch=batches, total_steps=total,
    )


def _loader(dataset: Any, sampler: Any, cfg: TrainConfig, ctx: _Ctx, *, persistent: bool = False) -> DataLoader:
    # a private generator: creating a loader iterator must not consume the global torch RNG, or a
    # resumed run would draw different dropout masks than one that never stopped
    return DataLoader(
        dataset, batch_sampler=sampler, num_workers=cfg.num_workers, pin_memory=ctx.device.type == "cuda",
        persistent_workers=persistent and cfg.num_workers > 0, generator=torch.Generator(),
    )


# --------------------------------------------------------------------------------------------------
# one optimizer step


def _micro_step(ctx: _Ctx, fr: _Fold, x: torch.Tensor, y: torch.Tensor, scale: float, sync: bool) -> torch.Tensor:
    """Forward and backward of one micro-batch; gradients are all-reduced only on the last of a group."""
    x = x.to(ctx.device, non_blocking=True)
    y = y.to(ctx.device, non_blocking=True)
    sync_ctx = ctx.acc.no_sync(fr.model) if not sync and ctx.world > 1 else _nullcontext()
    with sync_ctx:
        with ctx.acc.autocast():
            logits = fr.model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=ctx.cfg.label_smoothing)
        ctx.acc.backward(loss * scale)
    return loss.detach()


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _optimizer_step(ctx: _Ctx, fr: _Fold) -> None:
    cfg = ctx.cfg
    if cfg.clip_grad:
        ctx.acc.clip_grad_norm_(fr.model.parameters(), cfg.clip_grad)
    fr.optimizer.step()
    fr.optimizer.zero_grad(set_to_none=True)
    fr.step += 1
    if fr.scheduler is not None:
        fr.scheduler.step_update(num_updates=fr.step)
    if fr.ema is not None:
        fr.ema.update(fr.raw, step=fr.step)


def _current_lr(fr: _Fold) -> float:
    return float(fr.optimizer.param_groups[0]["lr"])


# --------------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def _valid_probs(ctx: _Ctx, model: nn.Module, dataset: Any) -> torch.Tensor:
    """Softmax probabilities for every sample of `dataset`, in order; each process scores its share
    and the shares are gathered, so every process sees the full validation set."""
    n = len(dataset)
    bs = ctx.cfg.eval_batch_size or 2 * ctx.cfg.batch_size
    mine = list(range(ctx.rank, n, ctx.world))
    batches = [mine[i : i + bs] for i in range(0, len(mine), bs)]
    loader = _loader(dataset, batches, ctx.cfg, ctx)
    was_training = model.training
    model.eval()
    outs = []
    try:
        for x, _ in loader:
            with ctx.acc.autocast():
                logits = model(x.to(ctx.device, non_blocking=True))
            outs.append(logits.float().softmax(dim=1).cpu())
    finally:
        model.train(was_training)
    local = torch.cat(outs) if outs else torch.zeros(0, ctx.job.data.num_classes)
    if ctx.world == 1:
        return local
    return _gather_rows(ctx, local, torch.tensor(mine, dtype=torch.long), n)


def _gather_rows(ctx: _Ctx, local: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    rows = -(-n // ctx.world)
    pad = rows - len(index)
    values = torch.cat([local, local.new_zeros(pad, local.shape[1])]).to(ctx.device)
    idx = torch.cat([index, index.new_full((pad,), -1)]).to(ctx.device)
    all_values, all_idx = ctx.acc.gather(values).cpu(), ctx.acc.gather(idx).cpu()
    keep = all_idx >= 0
    out = torch.empty(n, local.shape[1])
    out[all_idx[keep]] = all_values[keep]
    return out


def _evaluate(ctx: _Ctx, fr: _Fold, *, at_start: bool = False) -> float:
    """Score the evaluated weights on the fold's validation rows; track best / patience; log it."""
    t0 = time.perf_counter()
    model = fr.ema.module if fr.ema is not None else fr.raw
    probs = _valid_probs(ctx, model, fr.valid_set)
    score = ctx.metric(fr.valid_targets, probs.numpy())
    _add_log_row(ctx, fr, metric=score)
    if at_start:
        fr.start_metric = score
    else:
        fr.last_metric, fr.last_probs, fr.last_eval_step = score, probs, fr.step
        if ctx.metric.better(score, fr.best_metric):
            fr.best_metric, fr.best_step, fr.best_probs, fr.bad_evals = score, fr.step, probs, 0
            if ctx.is_main:
                save_weights(model.state_dict(), _weights_path(ctx, fr.fold, "best"), _meta(ctx, fr))
        else:
            fr.bad_evals += 1
    ctx.eval_seconds = time.perf_counter() - t0
    return score


def _weights_path(ctx: _Ctx, fold: int, which: str) -> Path:
    return ctx.job.run_dir / weights_name(which, fold, ctx.job.folds[0])


def _meta(ctx: _Ctx, fr: _Fold) -> dict:
    return {
        "arch": ctx.job.spec.get("name", ""), "run_id": ctx.info["id"], "num_classes": ctx.job.data.num_classes,
        "fold": fr.fold, "step": fr.step,
    }


# --------------------------------------------------------------------------------------------------
# log.csv


def _add_log_row(ctx: _Ctx, fr: _Fold, *, loss: torch.Tensor | None = None, metric: float | None = None) -> None:
    if not ctx.is_main:
        return
    if metric is not None and fr.pending and fr.pending[-1][1] == fr.step and fr.pending[-1][5] is None:
        fr.pending[-1][5] = metric  # the evaluation belongs to the step just logged
        return
    lr = _current_lr(fr)
    fr.pending.append([fr.fold, fr.step, fr.epoch, loss, lr, metric, round(ctx.elapsed, 5)])


def _flush_log(ctx: _Ctx, fr: _Fold) -> None:
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
            writer.writerow([row[0], row[1], row[2], loss, f"{row[4]:.6g}", "" if row[5] is None else row[5], row[6]])
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
    kept = [rows[0]]
    for row in rows[1:]:
        if len(row) != len(LOG_COLUMNS) or not row[0].isdigit() or not row[1].isdigit():
            continue
        k, s = int(row[0]), int(row[1])
        if k in done_folds or (k == fold and step is not None and s <= step):
            kept.append(row)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(kept)
    atomic_write_text(path, buffer.getvalue())


# --------------------------------------------------------------------------------------------------
# checkpoints


def _checkpoint(ctx: _Ctx, fr: _Fold) -> None:
    """state.pt (exact resume) plus the current last/EMA weights. Only the main process writes."""
    _flush_log(ctx, fr)
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


def _save_fold_weights(ctx: _Ctx, fr: _Fold) -> None:
    save_weights(fr.raw.state_dict(), _weights_path(ctx, fr.fold, "last"), _meta(ctx, fr))
    if fr.ema is not None:
        save_weights(fr.ema.module.state_dict(), _weights_path(ctx, fr.fold, "ema"), _meta(ctx, fr))


def _restore(ctx: _Ctx, fr: _Fold, state: dict) -> None:
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


# --------------------------------------------------------------------------------------------------
# the loop


def _train_fold(ctx: _Ctx, fold: int, state: dict | None) -> None:
    fr = _build_fold(ctx, fold)
    ctx.fold_start, ctx.elapsed_offset = time.perf_counter(), 0.0
    if state is not None:
        _restore(ctx, fr, state)
    else:
        seed_everything(ctx.cfg.seed + ctx.rank)
    _mark_fold(ctx, fr, "running")
    if ctx.cfg.eval_at_start and fr.step == 0 and fr.start_metric is None:
        _evaluate(ctx, fr, at_start=True)
    bar = tqdm(
        total=fr.total_steps, initial=fr.step, desc=f"fold {fold}", unit="step", dynamic_ncols=True,
        disable=not (ctx.is_main and ctx.cfg.progress), leave=False,
    )
    try:
        while fr.epoch < ctx.cfg.epochs and fr.stop_reason is None:
            _train_epoch(ctx, fr, bar)
    finally:
        bar.close()
    if fr.last_eval_step != fr.step or fr.last_probs is None:
        _evaluate(ctx, fr)  # stopped mid-epoch (max_steps, time budget): score what we have
    if fr.checkpoint_step != fr.step:
        _checkpoint(ctx, fr)
    _finish_fold(ctx, fr)


def _train_epoch(ctx: _Ctx, fr: _Fold, bar: Any) -> None:
    """Micro-batches from the current position of the epoch; evaluate + checkpoint at its end."""
    cfg = ctx.cfg
    fr.sampler.epoch, fr.sampler.start_batch = fr.epoch, fr.batch_in_epoch
    n, accum = fr.batches_per_epoch, cfg.grad_accum
    fr.model.train()
    group_loss = None
    t_step = time.perf_counter()
    for x, y in fr.loader:
        b = fr.batch_in_epoch
        group = min(accum, n - (b // accum) * accum)  # the last group of an epoch may be short
        last_of_group = (b + 1) % accum == 0 or b + 1 == n
        loss = _micro_step(ctx, fr, x, y, 1.0 / group, last_of_group)
        group_loss = loss / group if group_loss is None else group_loss + loss / group
        fr.batch_in_epoch += 1
        if not last_of_group:
            continue
        _optimizer_step(ctx, fr)
        _add_log_row(ctx, fr, loss=group_loss)
        group_loss = None
        bar.update(1)
        now = time.perf_counter()
        ctx.step_seconds = 0.9 * ctx.step_seconds + 0.1 * (now - t_step) if ctx.step_seconds else now - t_step
        t_step = now
        if _after_step(ctx, fr):
            return
    fr.epoch, fr.batch_in_epoch = fr.epoch + 1, 0
    _evaluate(ctx, fr)
    if cfg.early_stopping and fr.bad_evals >= cfg.early_stopping:
        fr.stop_reason = "early_stopping"
    _checkpoint(ctx, fr)
    _update_progress(ctx, fr)


def _after_step(ctx: _Ctx, fr: _Fold) -> bool:
    """Periodic work after an optimizer step; True when the fold must stop before the epoch ends.

    At the last step of an epoch the epoch-end evaluation and checkpoint do that work instead.
    """
    cfg = ctx.cfg
    epoch_end = fr.batch_in_epoch >= fr.batches_per_epoch
    if cfg.eval_every_steps and fr.step % cfg.eval_every_steps == 0 and not epoch_end:
        _evaluate(ctx, fr)
        if cfg.early_stopping and fr.bad_evals >= cfg.early_stopping:
            fr.stop_reason = "early_stopping"
    if cfg.max_steps and fr.step >= cfg.max_steps:
        fr.stop_reason = "max_steps"
    elif fr.stop_reason is None and _over_budget(ctx):
        fr.stop_reason = "time_budget"
    if epoch_end:
        return False
    if fr.stop_reason is not None:
        return True
    if cfg.checkpoint_every_steps and fr.step % cfg.checkpoint_every_steps == 0:
        _checkpoint(ctx, fr)
    elif len(fr.pending) >= _LOG_FLUSH_EVERY:
        _flush_log(ctx, fr)
    return False


def _over_budget(ctx: _Ctx) -> bool:
    budget = ctx.cfg.time_budget_s
    if budget is None:
        return False
    # keep room for what stopping costs: a last evaluation, a checkpoint, and a couple of steps
    reserve = 1.5 * ctx.eval_seconds + 3 * ctx.step_seconds + 2.0
    over = time.perf_counter() - ctx.budget_start + reserve >= budget
    if ctx.world > 1:  # every process must stop at the same step
        flag = torch.tensor([1.0 if over else 0.0], device=ctx.device)
        over = bool(ctx.acc.reduce(flag, reduction="sum").item() > 0)
    return over


# --------------------------------------------------------------------------------------------------
# fold and run bookkeeping (main process writes)


def _mark_fold(ctx: _Ctx, fr: _Fold, status: str) -> None:
    record = ctx.info.setdefault("folds", {}).setdefault(str(fr.fold), {})
    record["status"] = status
    ctx.info["progress"] = {"fold": fr.fold, "step": fr.step, "epoch": fr.epoch}
    ctx.save_info()


def _update_progress(ctx: _Ctx, fr: _Fold) -> None:
    ctx.info["progress"] = {"fold": fr.fold, "step": fr.step, "epoch": fr.epoch}
    record = ctx.info.setdefault("folds", {}).setdefault(str(fr.fold), {})
    record.update(_fold_record(fr))
    ctx.save_info()


def _fold_record(fr: _Fold) -> dict:
    return {
        "steps": fr.step, "epochs": fr.epoch, "best_metric": fr.best_metric, "best_step": fr.best_step,
        "last_metric": fr.last_metric, "start_metric": fr.start_metric, "stop_reason": fr.stop_reason,
    }


def _finish_fold(ctx: _Ctx, fr: _Fold) -> None:
    """Weights and out-of-fold rows of a finished fold; run.json fold record."""
    if ctx.is_main:  # the fold's last weights were written by its final checkpoint
        _write_oof(ctx, fr, fr.best_probs, "oof.csv")
        _write_oof(ctx, fr, fr.last_probs, "oof_last.csv")
    record = ctx.info.setdefault("folds", {}).setdefault(str(fr.fold), {})
    record.update(_fold_record(fr))
    record["status"] = "interrupted" if fr.stop_reason == "time_budget" else "done"
    ctx.info["steps"] = sum(int(r.get("steps") or 0) for r in ctx.info["folds"].values())
    ctx.save_info()


def _write_oof(ctx: _Ctx, fr: _Fold, probs: torch.Tensor | None, name: str) -> None:
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
    table["prediction"] = [str(data.class_names[i]) for i in p.argmax(axis=1)]
    for j, name_j in enumerate(data.class_names):
        table[f"prob_{name_j}"] = p[:, j]
    path = ctx.job.run_dir / name
    if path.exists():
        old = _read_oof(path)
        table = pd.concat([old[old["fold"] != fr.fold], table], ignore_index=True)
    atomic_write_text(path, table.to_csv(index=False))


def _read_oof(path: Path) -> pd.DataFrame:
    """oof.csv with id, label and prediction read as the text written (no "01" -> 1, no "NA" -> NaN)."""
    return pd.read_csv(path, dtype={"id": str, "label": str, "prediction": str}, keep_default_na=False)


def _oof_score(ctx: _Ctx, name: str) -> float | None:
    path = ctx.job.run_dir / name
    if not path.exists():
        return None
    table = _read_oof(path)
    data = ctx.job.data
    lookup = {str(c): i for i, c in enumerate(data.class_names)}
    y = np.array([lookup[str(v)] for v in table["label"]])
    probs = table[[f"prob_{c}" for c in data.class_names]].to_numpy()
    return float(ctx.metric(y, probs))


def _finish_run(ctx: _Ctx, stopped_by_budget: bool) -> None:
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


def _train_process(job: _Job) -> None:
    """Entry point of every training process (called directly, or by Accelerate's launcher)."""
    acc = _accelerator(job.cfg)
    ctx = _Ctx(job, acc)
    if ctx.device.type == "cpu" and ctx.world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.world))
    ctx.info["env"] = {
        "device": ctx.device.type, "world_size": ctx.world, "mixed_precision": str(acc.mixed_precision),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    state = load_state(job.run_dir / STATE_FILE) if (job.run_dir / STATE_FILE).exists() else None
    done = {int(k) for k, r in ctx.info.get("folds", {}).items() if r.get("status") == "done"}
    for fold in job.folds:
        if fold in done:
            continue
        resume_state = state if state is not None and state["fold"] == fold else None
        _train_fold(ctx, fold, resume_state)
        if ctx.info["folds"][str(fold)]["status"] == "interrupted":
            _finish_run(ctx, stopped_by_budget=True)
            return
    _finish_run(ctx, stopped_by_budget=False)


def _accelerator(cfg: TrainConfig) -> Any:
    from accelerate import Accelerator

    cuda = torch.cuda.is_available() if cfg.device == "auto" else cfg.device == "cuda"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA device is available; use device='auto' or 'cpu'")
    amp = cfg.amp in (True, "fp16") or (cfg.amp == "auto" and cuda)
    if amp and not cuda:
        raise ValueError("amp=fp16 needs a CUDA device; use amp='auto' or False on CPU")
    return Accelerator(cpu=not cuda, mixed_precision="fp16" if amp else "no")


def _reset_accelerate() -> None:
    """Forget Accelerate's process-wide state, so a later multi-process launch in the same notebook
    (which refuses to start when an Accelerator exists) and a later run with other settings work."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def launch(job: _Job) -> None:
    """Train in this process, or in `num_processes` data-parallel processes via Accelerate's
    `notebook_launcher` (fork; NCCL on GPUs, gloo on CPU), which is how Kaggle's T4 x2 is used from
    a notebook. Only the main process writes files."""
    n = job.cfg.num_processes
    if n == 1:
        try:
            _train_process(job)
        finally:
            _reset_accelerate()
        return
    from accelerate import notebook_launcher

    _reset_accelerate()
    cpu = job.cfg.device == "cpu" or (job.cfg.device == "auto" and not _cuda_visible())
    if cpu:  # the workers must not probe CUDA either: tell them
        job = dataclasses.replace(job, cfg=dataclasses.replace(job.cfg, device="cpu"))
    amp = "fp16" if not cpu and job.cfg.amp in ("auto", True, "fp16") else "no"
    print(f"kaggle-tli: training with {n} processes on {'CPU (gloo)' if cpu else 'GPUs (NCCL)'}")
    with contextlib.redirect_stdout(io.StringIO()):  # accelerate announces "CUDAs" even on CPU
        notebook_launcher(_train_process, args=(job,), num_processes=n, mixed_precision=amp, use_port=_free_port())


def check_devices(cfg: TrainConfig) -> None:
    """Refuse device settings that cannot work, before a run directory exists. Never initialises
    CUDA in this process (a later multi-process launch forks it)."""
    if cfg.num_processes > 1:
        gpus = torch.cuda.device_count() if _cuda_visible() else 0  # NVML count: no CUDA context
        use_gpu = cfg.device == "cuda" or (cfg.device == "auto" and gpus > 0)
        if use_gpu and gpus < cfg.num_processes:
            raise ValueError(
                f"num_processes={cfg.num_processes} but {gpus} GPU(s) are visible; use num_processes={max(gpus, 1)} "
                "or device='cpu' (gloo)"
            )
        cuda = use_gpu
    else:
        cuda = torch.cuda.is_available() if cfg.device != "cpu" else False
        if cfg.device == "cuda" and not cuda:
            raise ValueError("device='cuda' but no CUDA device is available; use device='auto' or 'cpu'")
    if cfg.amp in (True, "fp16") and not cuda:
        raise ValueError(f"amp={cfg.amp!r} needs a CUDA device (fp16 with a gradient scaler); use amp='auto' on CPU")


def _cuda_visible() -> bool:
    # decided without initialising CUDA in this process: forked workers could not use it otherwise
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return False
    return shutil.which("nvidia-smi") is not None and torch.cuda.device_count() > 0


# --------------------------------------------------------------------------------------------------
# predict


def predict(
    run: Run | str | Path,
    test: KaggleData | str | Path | None = None,
    *,
    tta: bool = True,
    which: str = "best",
    batch_size: int = 64,
    device: str = "auto",
    out: str | Path | None = None,
) -> pd.DataFrame:
    """Predict the test set with every trained fold of `run` (averaging probabilities, with a
    horizontal-flip TTA), and return the submission, checked against `sample_submission.csv`.

    `test`: None rebuilds the run's data from run.json; a data object is used as is; a folder is
    the same competition mounted elsewhere. `which`: "best" | "last" | "ema" weights of each fold.
    `tta`: average with the mirrored image, only where the data allows mirroring (`data.hflip`;
    `PixelCsvData` sets it False because mirrored digits and letters change meaning).
    The submission is written to `out` when given (and only there); otherwise into the run
    directory, or to `./submission.csv` (the notebook's working directory, /kaggle/working on
    Kaggle) when the run directory is read-only (a run attached as a Kaggle dataset). The path
    written is printed.
    """
    run = load_run(run)
    data = _test_data(run, test)
    if list(data.class_names) != list(run.class_names):
        raise DataError(
            f"the data's classes {data.class_names[:10]} differ from the run's {run.class_names[:10]}; "
            "predict with the competition the run was trained on"
        )
    folds = [k for k in run.trained_folds if _has_weights(run, which, k)]
    if not folds:
        raise FileNotFoundError(f"run {run.id!r} has no {which!r} weights for any fold; train it first")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    probs = None
    for k in folds:
        model = run.build_model(which, k).to(dev).eval()
        p = _test_probs(model, data.test_dataset(), batch_size, dev, tta and data.hflip)
        probs = p if probs is None else probs + p
    probs = probs / len(folds)
    submission = make_submission(data, probs)
    _write_submission(run, submission, out)
    return submission


def _has_weights(run: Run, which: str, fold: int) -> bool:
    return (run.path / weights_name(which, fold, run.primary_fold)).is_file()


def _test_data(run: Run, test: KaggleData | str | Path | None) -> KaggleData:
    if isinstance(test, KaggleData):
        data = test
    else:
        spec = run.info.get("data")
        if not spec:
            raise ValueError(f"run {run.id!r} does not record its data; pass test=<data object>")
        data = rebuild_data(spec, root=test)
    if not data.has_test:
        raise DataError(
            f"no test images or rows found in {str(data.root)!r} (looked for test/, test_images/ and "
            "test.csv); pass test=<folder> or a data object with test_dir= / test_csv="
        )
    return data


@torch.no_grad()
def _test_probs(model: nn.Module, dataset: Any, batch_size: int, device: torch.device, tta: bool) -> np.ndarray:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator())
    outs = []
    amp = device.type == "cuda"
    for x, _ in tqdm(loader, desc="predict", leave=False, disable=len(loader) < 10):
        x = x.to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            p = model(x).float().softmax(1)
            if tta:
                p = (p + model(torch.flip(x, dims=[3])).float().softmax(1)) / 2
        outs.append(p.cpu())
    return torch.cat(outs).numpy()


def make_submission(data: KaggleData, probs: np.ndarray) -> pd.DataFrame:
    """The submission table in the shape of `sample_submission.csv`: one label column with class
    names, or one probability column per class when the sample's columns are the class names."""
    sample = data.sample_submission
    labels = [data.class_names[i] for i in probs.argmax(axis=1)]
    if sample is None:
        return pd.DataFrame({"id": data.test_ids, data.label_col: labels})
    id_col, targets = sample.columns[0], list(sample.columns[1:])
    table = pd.DataFrame({id_col: data.test_ids})
    names = [str(c) for c in data.class_names]
    if len(targets) == 1:
        table[targets[0]] = labels
    elif sorted(map(str, targets)) == sorted(names):
        for col in targets:
            table[col] = probs[:, names.index(str(col))]
    else:
        raise DataError(
            f"cannot fill sample submission columns {targets}: expected one label column or one column per "
            f"class ({names[:10]})"
        )
    check_submission(table, sample)
    return table


def check_submission(submission: pd.DataFrame, sample: pd.DataFrame) -> None:
    """Same columns, same ids in the same order, no empty cell: what Kaggle's scorer requires."""
    if list(submission.columns) != list(sample.columns):
        raise DataError(f"submission columns {list(submission.columns)} differ from the sample's {list(sample.columns)}")
    if len(submission) != len(sample):
        raise DataError(f"submission has {len(submission)} rows, the sample submission {len(sample)}")
    ids, expected = submission.iloc[:, 0].astype(str).tolist(), sample.iloc[:, 0].astype(str).tolist()
    if ids != expected:
        where = next(i for i, (a, b) in enumerate(zip(ids, expected, strict=True)) if a != b)
        raise DataError(f"submission ids differ from the sample's at row {where}: {ids[where]!r} vs {expected[where]!r}")
    if submission.isna().any().any():
        raise DataError("the submission has empty cells")


def _write_submission(run: Run, submission: pd.DataFrame, out: str | Path | None) -> Path:
    """Write the submission where `predict` says, print the path, and return it."""
    if out is not None:
        path = Path(out).expanduser()
    elif os.access(run.path, os.W_OK):
        path = run.path / "submission.csv"
    else:  # a run in /kaggle/input: the working directory is where Kaggle picks up submission.csv
        path = Path.cwd() / "submission.csv"
    atomic_write_text(path, submission.to_csv(index=False))
    print(f"kaggle-tli: submission ({len(submission)} rows) written to {path}")
    return path


# --------------------------------------------------------------------------------------------------
# stages: create a run, or continue an interrupted one


@dataclass
class StageRequest:
    """A new run, as `finetune` and `resume` describe it (everything already validated)."""

    stage: str
    init: str
    spec: dict
    data: KaggleData
    cfg: TrainConfig
    runs: Path
    init_state: dict[str, torch.Tensor]  # step-0 weights
    parent: Run | None = None
    init_files: dict[int, str] = field(default_factory=dict)  # per-fold step-0 weights (from the parent)
    extra: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    model: nn.Module | None = None  # the model the caller already built, for the input-size check


_LEDGER_EXTRA = ("tli_score", "coverage", "notes")


def start_run(req: StageRequest) -> Run:
    """Create the run directory and ledger row, train, and close both (done / interrupted / failed).

    Everything that can be checked is checked before the run directory exists: folds, devices, that
    the model takes the data's images, and that the ledger is readable by this version. A failure
    while the run is being set up marks it failed (or removes a directory that holds no run.json
    yet) and releases its lock, so no run is left "running" with nobody training it.
    """
    from filelock import FileLock

    from kaggle_tli.registry import create_model_from_spec

    folds = fold_plan(req.cfg, req.data.folds)
    check_devices(req.cfg)
    model = req.model if req.model is not None else create_model_from_spec(req.spec)
    check_input_size(model, req.data, req.spec.get("name", "model"))
    ledger = _ledger(req.runs)
    ledger.rows()  # a newer-schema or unreadable ledger fails here, before any run directory exists
    run_dir = make_run_dir(req.runs, req.spec.get("name", "model"))
    lock = FileLock(str(run_dir / ".lock"))
    lock.acquire(timeout=0)
    try:
        init_files = _setup_run(req, run_dir, folds, ledger)
    except BaseException as e:
        _abandon_setup(run_dir, ledger, e, remove_bare=True)
        lock.release()
        raise
    job = _Job(run_dir, req.data, req.cfg, req.spec, folds, init_files)
    return _execute(job, ledger, lock, session_start=time.time())


def _setup_run(req: StageRequest, run_dir: Path, folds: list[int], ledger: Any) -> dict[int, str]:
    """Fill a fresh run directory (run.json, step-0 weights, folds.csv, extra files) and start its
    ledger row; returns the per-fold step-0 weight files."""
    # per-fold step-0 weights are copied in: the run must not depend on its parent's folder later
    init_files = {}
    for k in folds[1:]:
        if k in req.init_files:
            init_files[k] = f"init_fold{k}.safetensors"
            atomic_write_bytes(run_dir / init_files[k], Path(req.init_files[k]).read_bytes())
    info = _initial_info(req, run_dir, folds, init_files)
    write_run_info(run_dir, info)
    save_weights(req.init_state, run_dir / INIT_WEIGHTS, {"arch": req.spec.get("name", ""), "run_id": info["id"]})
    atomic_write_text(run_dir / "folds.csv", req.data.folds_frame().to_csv(index=False))
    for name, content in req.files.items():
        atomic_write_bytes(run_dir / Path(name).name, content.encode() if isinstance(content, str) else content)
    ledger.start(info["id"], **_ledger_start_fields(req, info, run_dir, folds))
    return init_files


def _abandon_setup(run_dir: Path, ledger: Any, error: BaseException, *, remove_bare: bool) -> None:
    """Setup failed before training: a run marked "running" becomes "failed" (run.json and ledger), a
    new directory without run.json is removed. Never masks `error` (the caller re-raises it)."""
    if not (run_dir / "run.json").is_file():
        if remove_bare:
            shutil.rmtree(run_dir, ignore_errors=True)
        return
    reason = f"setup failed: {type(error).__name__}: {error}"
    with contextlib.suppress(OSError, ValueError):
        info = json.loads((run_dir / "run.json").read_text())
        if info.get("status") == "running":
            info.update(status="failed", finished_at=utc_now(), error=reason[:2000])
            write_run_info(run_dir, info)
    with contextlib.suppress(OSError, ValueError):  # LedgerError is a ValueError
        row = ledger.get(run_dir.name)
        if row is not None and row.get("status") == "running":
            ledger.finish(run_dir.name, "failed", notes=reason[:200])


def check_input_size(model: nn.Module, data: KaggleData, arch: str) -> None:
    """One dummy forward pass of a (2, C, H, W) zero batch the size of the data's images (eval mode,
    no grad), so that a model that cannot take them (a 224-px ViT given 32-px images), or that does not
    output one logit per class of the data, fails here, before a run directory or ledger row exists,
    rather than inside the training loop (or, for a wrong class count, not at all)."""
    shape = tuple(data.dataset(np.arange(1), train=False)[0][0].shape)  # what the valid pipeline makes
    device = next(model.parameters(), torch.empty(0)).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((2, *shape), device=device))
    except (AssertionError, RuntimeError, ValueError, IndexError, TypeError) as e:
        raise DataError(_input_size_message(arch, shape, e)) from e
    finally:
        model.train(was_training)
    _check_output_width(out, data.num_classes, arch)


def _input_size_message(arch: str, shape: tuple[int, ...], error: Exception) -> str:
    c, h, w = shape
    size = h if h == w else (h, w)
    return (
        f"{arch!r} cannot take the data's {h}x{w} images with {c} channel(s): {type(error).__name__}: "
        f"{str(error).strip().rstrip('.') or '(no message)'}. Make the data the size the model expects (image_size= of "
        f"ImageCsvData / PixelCsvData, e.g. the model's pretrained_cfg input_size), or build the model for this "
        f"size: ViT-like models take img_size=, so register a variant and use its name, e.g. "
        f"kt.register_edit('{arch}_{h}px', base={arch!r}, edits=[], kwargs={{'img_size': {size}}})"
    )


def _check_output_width(out: Any, num_classes: int, arch: str) -> None:
    """The training loss indexes the logits by class: a model with fewer outputs than the data has classes
    fails mid-run, one with more trains silently on logits that mean nothing."""
    logits = out[0] if isinstance(out, (tuple, list)) else out  # multi-output models: logits first
    width = logits.shape[-1] if isinstance(logits, torch.Tensor) and logits.ndim == 2 else None
    if width == num_classes:
        return
    got = f"{width} values per image" if width is not None else (
        f"a {type(logits).__name__} of shape {tuple(getattr(logits, 'shape', ()))}")
    raise DataError(
        f"{arch!r} outputs {got}, but the data has {num_classes} classes: the model needs one logit per class. "
        f"Build it with num_classes={num_classes} (a registered factory must pass its num_classes argument to "
        "its classifier, e.g. timm.create_model(..., num_classes=num_classes))"
    )


def continue_run(run: Run, data: KaggleData, overrides: dict) -> Run:
    """Continue an interrupted (or killed, or failed) run in place, from its last state.pt."""
    from filelock import FileLock, Timeout

    from kaggle_tli.registry import create_model_from_spec

    allowed = {"time_budget_s", "num_workers", "checkpoint_every_steps", "device", "num_processes", "progress"}
    refused = sorted(set(overrides) - allowed)
    if refused:
        raise ValueError(
            f"cannot change {refused} while continuing interrupted run {run.id!r} (the resume would not be "
            f"exact); allowed: {sorted(allowed)}. To train on with other settings, let the run finish or start "
            "a child run from its weights with resume(run.build_model(), data, arch=run.arch, parent=run, ...)"
        )
    saved = TrainConfig.from_dict(run.config)
    has_state = (run.path / STATE_FILE).exists()
    _check_same_world(run, saved, overrides, has_state)
    cfg = saved.replace(**overrides)
    check_devices(cfg)
    data = data.with_folds(run.path / "folds.csv")
    _check_same_classes(run, data)
    check_input_size(create_model_from_spec(run.arch), data, run.arch.get("name", "model"))
    # read before taking the lock: a corrupt state.pt or ledger fails with the run left as it was
    state = load_state(run.path / STATE_FILE) if has_state else None
    ledger = _ledger(run.path.parent)
    ledger.rows()
    lock = FileLock(str(run.path / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout as e:
        raise RunBusyError(f"run {run.id!r} is being trained by another process right now (its lock is held): wait "
                           "for that process to finish or stop it, then continue the run") from e
    try:
        folds = fold_plan(cfg, data.folds)
        _reopen(run, cfg, state, ledger)
    except BaseException as e:
        _abandon_setup(run.path, ledger, e, remove_bare=False)
        lock.release()
        raise
    job = _Job(run.path, data, cfg, run.arch, folds, {int(k): v for k, v in run.info.get("init_files", {}).items()})
    return _execute(job, ledger, lock, session_start=time.time())


def _check_same_world(run: Run, saved: TrainConfig, overrides: dict, has_state: bool) -> None:
    """The position inside an epoch (state.pt's batch_in_epoch) counts batches per process, and the
    schedule's length depends on the process count: continuing with another count would skip or
    repeat samples, so it is refused once a checkpoint exists."""
    n = overrides.get("num_processes", saved.num_processes)
    if n != saved.num_processes and has_state:
        raise ValueError(
            f"run {run.id!r} was trained with num_processes={saved.num_processes}, and its state.pt counts the "
            f"position inside the epoch per process: continuing with num_processes={n} would skip or repeat "
            f"samples. Continue with num_processes={saved.num_processes} (as many devices as before), or start "
            "a child run from its weights: resume(run.build_model(), data, arch=run.arch, parent=run, "
            f"num_processes={n}, ...)"
        )


def _reopen(run: Run, cfg: TrainConfig, state: dict | None, ledger: Any) -> None:
    """Mark a run being continued as running again (run.json, log.csv, ledger)."""
    done = [int(k) for k, r in run.info.get("folds", {}).items() if r.get("status") == "done"]
    truncate_log(run.path, state["fold"] if state else None, state["step"] if state else None, done)
    run.info.update(status="running", config=cfg.to_dict(), sessions=int(run.info.get("sessions", 1)) + 1)
    write_run_info(run.path, run.info)
    resumed_at = f"continued at fold {state['fold']} step {state['step']}" if state else "restarted from step 0"
    if ledger.get(run.id) is None:
        ledger.start(run.id, **{**_ledger_row_from_info(run), "notes": resumed_at})
    else:
        ledger.update(run.id, status="running", notes=resumed_at, finished_at=None)


def _check_same_classes(run: Run, data: KaggleData) -> None:
    if list(data.class_names) != list(run.class_names):
        raise DataError(
            f"the data's classes {data.class_names[:10]} differ from run {run.id!r}'s {run.class_names[:10]}"
        )


def _execute(job: _Job, ledger: Any, lock: Any, session_start: float) -> Run:
    status = "failed"
    try:
        launch(job)
        status = json.loads((job.run_dir / "run.json").read_text()).get("status", "failed")
        return load_run(job.run_dir)
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        try:
            _close(job, ledger, status, time.time() - session_start)
        finally:
            lock.release()


def _close(job: _Job, ledger: Any, status: str, seconds: float) -> None:
    """Final run.json status and ledger row, whatever happened."""
    run = load_run(job.run_dir)
    info = run.info
    info["status"] = status if status != "running" else "failed"
    info["finished_at"] = utc_now()
    info["duration_s"] = round(float(info.get("duration_s") or 0.0) + seconds, 3)
    write_run_info(job.run_dir, info)
    metrics = info.get("metrics", {})
    ledger.finish(
        run.id, info["status"], steps=info.get("steps"), cv=metrics.get("cv"), best_cv=metrics.get("best_cv"),
        duration_s=info["duration_s"],
    )


def _ledger(runs: Path) -> Any:
    from kaggle_tli.ledger import Ledger

    return Ledger(runs)


def _initial_info(req: StageRequest, run_dir: Path, folds: list[int], init_files: dict[int, str]) -> dict:
    return {
        "schema": 1, "id": run_dir.name, "parent_id": req.parent.id if req.parent else None,
        "stage": req.stage, "init": req.init, "arch": req.spec, "num_classes": req.data.num_classes,
        "class_names": list(req.data.class_names), "config": req.cfg.to_dict(),
        "config_hash": req.cfg.config_hash(), "primary_fold": folds[0], "fold_plan": folds,
        "folds": {str(k): {"status": "pending"} for k in folds}, "metrics": {}, "status": "running",
        "created_at": utc_now(), "finished_at": None, "extra": dict(req.extra), "data": req.data.spec(),
        "init_files": {str(k): v for k, v in init_files.items()}, "sessions": 1,
        "parent_arch": req.parent.arch.get("name") if req.parent else None,
    }


def _ledger_start_fields(req: StageRequest, info: dict, run_dir: Path, folds: list[int]) -> dict:
    fields = {
        "parent_run_id": info["parent_id"], "stage": req.stage, "arch": req.spec.get("name"),
        "parent_arch": info["parent_arch"], "init": req.init, "fold": _fold_label(folds),
        "epochs": req.cfg.epochs, "metric": resolve_metric(req.cfg.metric).name, "seed": req.cfg.seed,
        "config_hash": info["config_hash"], "git_sha": git_sha(), "checkpoint": str(run_dir.resolve()),
    }
    fields.update({k: req.extra[k] for k in _LEDGER_EXTRA if k in req.extra})
    return fields


def _ledger_row_from_info(run: Run) -> dict:
    info = run.info
    cfg = info.get("config", {})
    return {
        "parent_run_id": info.get("parent_id"), "stage": info.get("stage"), "arch": run.arch.get("name"),
        "parent_arch": info.get("parent_arch"), "init": info.get("init"), "fold": _fold_label(info.get("fold_plan", [0])),
        "epochs": cfg.get("epochs"), "metric": str(cfg.get("metric")), "seed": cfg.get("seed"),
        "config_hash": info.get("config_hash"), "git_sha": git_sha(), "checkpoint": str(run.path.resolve()),
        **{k: info.get("extra", {})[k] for k in _LEDGER_EXTRA if k in info.get("extra", {})},
    }


def _fold_label(folds: Sequence[int]) -> int | str:
    return folds[0] if len(folds) == 1 else ",".join(str(k) for k in folds)
