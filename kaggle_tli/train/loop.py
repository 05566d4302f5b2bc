"""The one training loop: build a fold, micro-batches and optimizer steps, evaluation, stop rules.

Shape of one fold in one process (one of N data-parallel processes when launched through Accelerate):

    build model from the arch spec, load step-0 weights (or the saved state when continuing)
    [evaluate at step 0]           eval_at_start=True: the step-0 metric of an injected student
    for each epoch:
        micro-batches -> forward / backward (fp16 autocast + GradScaler on CUDA)
        every grad_accum micro-batches: clip, optimizer step, cosine LR per step, EMA update,
                                        a log.csv row, [evaluate], [checkpoint], stop checks
        evaluate, keep the best weights, early stopping, checkpoint (state.pt)
    write fold weights and its out-of-fold predictions

`_micro_step` is looked up in this module at call time (tests replace it to interrupt a run).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from timm.data import Mixup
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from kaggle_tli.checkpoint import load_weights, save_weights
from kaggle_tli.data import EpochBatchSampler, activate, loader_options, task_loss
from kaggle_tli.models import create_model_from_spec, memory_format
from kaggle_tli.runs import INIT_WEIGHTS
from kaggle_tli.train.config import TrainConfig, seed_everything
from kaggle_tli.train.distill import load_teacher, with_distill
from kaggle_tli.train.groups import apply_freeze, param_groups, transferred_names
from kaggle_tli.train.norms import has_batchnorm, precise_loader, refit_norms
from kaggle_tli.train.records import (
    LOG_FLUSH_EVERY,
    add_log_row,
    checkpoint,
    finish_fold,
    flush_log,
    mark_fold,
    restore,
    update_progress,
    weights_meta,
    weights_path,
)
from kaggle_tli.train.state import Ctx, Fold

PROGRESS_EVERY = 10  # steps between progress-bar updates of the loss

# --------------------------------------------------------------------------------------------------
# building the pieces of a fold


def _make_optimizer(model: nn.Module, cfg: TrainConfig, transferred: set[str]) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg, transferred)  # per-group lr_scale from the transfer report (groups.py)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)


def _make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> Any:
    if cfg.scheduler == "constant":
        return None
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(500, total_steps // 20)
    return CosineLRScheduler(
        optimizer, t_initial=max(1, total_steps - warmup), lr_min=cfg.min_lr, warmup_t=warmup,
        warmup_lr_init=cfg.lr * 0.01 if warmup else 0.0, warmup_prefix=True, t_in_epochs=False,
    )


def _build_fold(ctx: Ctx, fold: int) -> Fold:
    """Model (step-0 weights), optimizer, scheduler, EMA and loaders of `fold`, prepared by Accelerate."""
    job, cfg = ctx.job, ctx.cfg
    raw = create_model_from_spec(job.spec)
    raw.load_state_dict(load_weights(job.run_dir / job.init_files.get(fold, INIT_WEIGHTS)), strict=True)
    ctx.input_format = memory_format(raw, cfg.channels_last, ctx.device)
    ema = None
    if cfg.ema:
        ema = ModelEmaV3(raw, decay=cfg.ema_decay, use_warmup=True)
    optimizer = _make_optimizer(raw, cfg, transferred_names(job.run_dir))
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
    scheduler = _make_scheduler(inner, cfg, total)
    apply_freeze(inner, cfg, 0)
    precise = None
    if cfg.eval_norms == "precise" and has_batchnorm(raw):
        precise = precise_loader(cfg, job.data, train_idx, pin_memory=ctx.device.type == "cuda")
    if cfg.distill and ctx.teacher is None:
        ctx.teacher = load_teacher(job.run_dir, ctx.info, ctx.device)
        memory_format(ctx.teacher, cfg.channels_last, ctx.device)
    return Fold(
        fold=fold, model=model, raw=raw, optimizer=optimizer, scheduler=scheduler,
        ema=ema, train_set=train_set, valid_set=job.data.dataset(valid_idx, train=False),
        valid_targets=job.data.targets[valid_idx], sampler=sampler, loader=loader,
        batches_per_epoch=batches, total_steps=total, mixup=make_mixup(cfg, job.data.task, job.data.num_classes),
        precise=precise,
    )


def make_mixup(cfg: TrainConfig, task: str, num_classes: int) -> Mixup | None:
    """timm's Mixup/CutMix for the shapes with soft targets (single-label, binary, multi-label), else None."""
    if not (cfg.mixup or cfg.cutmix):
        return None
    if task == "regression":
        raise ValueError("mixup / cutmix mix class targets: a regression task has none; set mixup=0 and cutmix=0")
    # multi-label targets are mixed by `_mix` with the weights timm used (its multi_label option is recent)
    dense = task == "multilabel"
    return Mixup(mixup_alpha=float(cfg.mixup), cutmix_alpha=float(cfg.cutmix),
                 label_smoothing=0.0 if dense else cfg.label_smoothing, num_classes=2 if dense else num_classes)


def _mix(mixup: Mixup, task: str, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixed images and soft targets. For 0/1 label rows timm mixes a probe target (0, 1, 0, 1, ...) instead: each
    row's weight on its own image comes back as the probe's weight on the row's own class (row i is mixed with
    row n-1-i, whose class always differs in an even batch)."""
    if task != "multilabel":
        return mixup(x, y)
    probe = torch.arange(len(x), device=x.device) % 2
    x, mixed = mixup(x, probe)
    lam = mixed.gather(1, probe[:, None]).to(y.dtype)
    return x, lam * y + (1 - lam) * y.flip(0)


def _loader(dataset: Any, sampler: Any, cfg: TrainConfig, ctx: Ctx, *, persistent: bool = False) -> DataLoader:
    # a private generator: creating a loader iterator must not consume the global torch RNG, or a
    # resumed run would draw different dropout masks than one that never stopped
    options = loader_options(cfg.num_workers, cuda=ctx.device.type == "cuda", persistent=persistent,
                             processes=ctx.world)
    return DataLoader(dataset, batch_sampler=sampler, generator=torch.Generator(), **options)


# --------------------------------------------------------------------------------------------------
# one optimizer step


def _micro_step(ctx: Ctx, fr: Fold, x: torch.Tensor, y: torch.Tensor, scale: float, sync: bool) -> torch.Tensor:
    """Forward and backward of one micro-batch; gradients are all-reduced only on the last of a group."""
    x = x.to(ctx.device, non_blocking=True, memory_format=ctx.input_format)
    y = y.to(ctx.device, non_blocking=True)
    smoothing = ctx.cfg.label_smoothing
    if fr.mixup is not None and len(x) % 2 == 0:  # timm mixes a batch with its reverse: it needs an even batch
        x, y = _mix(fr.mixup, ctx.job.data.task, x, y)
        if ctx.job.data.task != "multilabel":
            smoothing = 0.0  # timm put it in the mixed class targets
    sync_ctx = ctx.acc.no_sync(fr.model) if not sync and ctx.world > 1 else _nullcontext()
    with sync_ctx:
        with ctx.acc.autocast():
            logits = fr.model(x)
        loss = task_loss(ctx.job.data.task, logits, y, loss=ctx.cfg.loss, label_smoothing=smoothing)
        loss = with_distill(ctx, fr, x, logits, loss)  # the KD term while distillation is on (distill.py)
        ctx.acc.backward(loss * scale)
    return loss.detach()


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _optimizer_step(ctx: Ctx, fr: Fold) -> None:
    cfg = ctx.cfg
    if cfg.clip_grad:
        ctx.acc.clip_grad_norm_(fr.model.parameters(), cfg.clip_grad)
    fr.optimizer.step()
    fr.optimizer.zero_grad(set_to_none=True)
    fr.step += 1
    if fr.scheduler is not None:
        fr.scheduler.step_update(num_updates=fr.step)
    apply_freeze(fr.optimizer, cfg, fr.step)  # transferred tensors fixed for the first steps (groups.py)
    if fr.ema is not None:
        fr.ema.update(fr.raw, step=fr.step)


# --------------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def _valid_probs(ctx: Ctx, model: nn.Module, dataset: Any) -> torch.Tensor:
    """Probabilities (or regression values) for every sample of `dataset`, in order; each process scores its share
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
                logits = model(x.to(ctx.device, non_blocking=True, memory_format=ctx.input_format))
            outs.append(activate(ctx.job.data.task, logits, ctx.job.data.target_info.scale).cpu())
    finally:
        model.train(was_training)
    local = torch.cat(outs) if outs else torch.zeros(0, ctx.job.data.num_classes)
    if ctx.world == 1:
        return local
    return _gather_rows(ctx, local, torch.tensor(mine, dtype=torch.long), n)


def _gather_rows(ctx: Ctx, local: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    rows = -(-n // ctx.world)
    pad = rows - len(index)
    values = torch.cat([local, local.new_zeros(pad, local.shape[1])]).to(ctx.device)
    idx = torch.cat([index, index.new_full((pad,), -1)]).to(ctx.device)
    all_values, all_idx = ctx.acc.gather(values).cpu(), ctx.acc.gather(idx).cpu()
    keep = all_idx >= 0
    out = torch.empty(n, local.shape[1])
    out[all_idx[keep]] = all_values[keep]
    return out


def _evaluate(ctx: Ctx, fr: Fold, *, at_start: bool = False) -> float:
    """Score the evaluated weights on the fold's validation rows; track best / patience; log it.

    With precise validation the running-statistics score is taken first (log.csv's metric_running), then the
    statistics are refitted in place, so the weights saved below carry the statistics this score used.
    """
    t0 = time.perf_counter()
    model = fr.ema.module if fr.ema is not None else fr.raw
    running = None
    if fr.precise is not None:
        if _scores_running_statistics(ctx.cfg, fr):
            running = ctx.metric(fr.valid_targets, _valid_probs(ctx, model, fr.valid_set).numpy(),
                                 ctx.job.data.task)
        refit_norms(model, fr.precise)
    probs = _valid_probs(ctx, model, fr.valid_set)
    score = ctx.metric(fr.valid_targets, probs.numpy(), ctx.job.data.task)
    add_log_row(ctx, fr, metric=score, metric_running=running)
    if at_start:
        fr.start_metric = score
    else:
        fr.last_metric, fr.last_probs, fr.last_eval_step = score, probs, fr.step
        if ctx.metric.better(score, fr.best_metric):
            fr.best_metric, fr.best_step, fr.best_probs, fr.bad_evals = score, fr.step, probs, 0
            if ctx.is_main:
                save_weights(model.state_dict(), weights_path(ctx, fr.fold, "best"), weights_meta(ctx, fr))
        else:
            fr.bad_evals += 1
    ctx.eval_seconds = time.perf_counter() - t0
    return score


def _scores_running_statistics(cfg: TrainConfig, fr: Fold) -> bool:
    """Whether this evaluation also scores the running statistics for log.csv (`running_metric_epochs`): a second
    validation pass, worth its cost while the statistics may lag, in the first epochs after an injection."""
    if cfg.running_metric_epochs is None:
        return True
    steps_per_epoch = -(-fr.batches_per_epoch // cfg.grad_accum)
    return fr.step <= cfg.running_metric_epochs * steps_per_epoch


# --------------------------------------------------------------------------------------------------
# the loop


def train_fold(ctx: Ctx, fold: int, state: dict | None) -> None:
    """Train one fold to its end (or its stop rule), from step 0 or from `state`; then its records."""
    fr = _build_fold(ctx, fold)
    ctx.fold_start, ctx.elapsed_offset = time.perf_counter(), 0.0
    if state is not None:
        restore(ctx, fr, state)
    else:
        seed_everything(ctx.cfg.seed + ctx.rank)
    mark_fold(ctx, fr, "running")
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
    scored = fr.last_eval_step != fr.step or fr.last_probs is None
    if scored:
        _evaluate(ctx, fr)  # stopped mid-epoch (max_steps, time budget): score what we have
    if fr.checkpoint_step != fr.step or (scored and fr.precise is not None):
        checkpoint(ctx, fr)  # the last weights carry the statistics their score used
    finish_fold(ctx, fr)


def _train_epoch(ctx: Ctx, fr: Fold, bar: Any) -> None:
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
        add_log_row(ctx, fr, loss=group_loss)
        _show_progress(ctx, fr, bar, group_loss)
        group_loss = None
        bar.update(1)
        if fr.step == 1:
            update_progress(ctx, fr)  # run.json knows a step was taken: a failure now keeps the step-0 weights
        now = time.perf_counter()
        ctx.step_seconds = 0.9 * ctx.step_seconds + 0.1 * (now - t_step) if ctx.step_seconds else now - t_step
        t_step = now
        if _after_step(ctx, fr):
            return
    fr.epoch, fr.batch_in_epoch = fr.epoch + 1, 0
    _evaluate(ctx, fr)
    if cfg.early_stopping and fr.bad_evals >= cfg.early_stopping:
        fr.stop_reason = "early_stopping"
    checkpoint(ctx, fr)
    update_progress(ctx, fr)


def _show_progress(ctx: Ctx, fr: Fold, bar: Any, loss: torch.Tensor) -> None:
    """The loss and the last metric on the progress bar. `.item()` waits for the GPU, so only every
    PROGRESS_EVERY steps and at the end of an epoch."""
    if bar.disable or (fr.step % PROGRESS_EVERY and fr.batch_in_epoch < fr.batches_per_epoch):
        return
    shown = {"loss": f"{float(loss.item()):.4f}"}
    if fr.last_metric is not None:
        shown[ctx.metric.name] = f"{fr.last_metric:.4f}"
    # drawn now at an epoch's end: tqdm skips redraws closer than its minimum interval, and the metric must show
    bar.set_postfix(shown, refresh=fr.batch_in_epoch >= fr.batches_per_epoch)


def _after_step(ctx: Ctx, fr: Fold) -> bool:
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
        checkpoint(ctx, fr)
    elif len(fr.pending) >= LOG_FLUSH_EVERY:
        flush_log(ctx, fr)
    return False


def _over_budget(ctx: Ctx) -> bool:
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
