"""One benchmark training run: a model built from the registry, trained with Adam on in-memory data, evaluated.

Held-out accuracy is measured twice: in plain eval mode, and with BatchNorm statistics first refitted on fixed
training batches ("precise BN", see `evaluate_precise`). The refits a method may apply before training
(`recalibrate`, `probe_head`) and the cached teachers (`get_teacher`) live here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from filelock import FileLock
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from kaggle_tli.models import create_model
from kaggle_tli.tli import recalibrate_norms, refit_head
from kaggle_tli.train.distill import distill_loss

from .arrays import ArrayData

PRECISE_BATCHES = 8  # 512 training images refit BatchNorm before each "precise" evaluation
PRECISE_SEED = 12_345  # the same images for every method, step and seed


def memory_format(model: nn.Module) -> torch.memory_format:
    """channels_last when the model's convolutions were converted to it (`train(channels_last=True)`)."""
    convs = (p for p in model.parameters() if p.dim() == 4)
    first = next(convs, None)
    if first is not None and first.is_contiguous(memory_format=torch.channels_last) and not first.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


@torch.no_grad()
def evaluate(model: nn.Module, data: ArrayData, batch_size: int = 500) -> float:
    """Held-out accuracy in eval mode, with the BatchNorm running statistics the model carries."""
    was = model.training
    model.eval()
    correct = 0
    fmt = memory_format(model)
    for i in range(0, len(data.x_valid), batch_size):
        logits = model(data.x_valid[i:i + batch_size].contiguous(memory_format=fmt))
        correct += (logits.argmax(1) == data.y_valid[i:i + batch_size]).sum().item()
    model.train(was)
    return correct / len(data.x_valid)


@torch.no_grad()
def evaluate_precise(model: nn.Module, data: ArrayData, *, batches: int = PRECISE_BATCHES,
                     batch_size: int = 64) -> float:
    """Held-out accuracy after refitting BatchNorm statistics on fixed training batches ("precise BN"); the model's
    own statistics are put back afterwards, so training is not affected.

    Under Adam at lr 1e-3 without warmup the running statistics lag the weights so far that eval-mode accuracy of
    one and the same run jumps widely from one evaluation to the next, while accuracy with refitted statistics moves
    by a few points (figures: docs/benchmarks.md): this measures the weights, eval mode measures the weights and the
    lag.
    """
    saved = {name: buf.clone() for name, buf in model.named_buffers()}
    try:
        with torch.random.fork_rng(devices=[]):  # a train-mode forward may draw (dropout): leave training's stream be
            recalibrate(model, data, batches=batches, batch_size=batch_size, seed=PRECISE_SEED)
        return evaluate(model, data)
    finally:
        for name, buf in model.named_buffers():
            buf.copy_(saved[name])


METRICS = {  # column -> how it is described in tables and plots
    "accuracy_precise": "held-out accuracy, BatchNorm refitted on 512 training images",
    "accuracy": "held-out accuracy, eval mode (running statistics)",
}


def accuracies(model: nn.Module, data: ArrayData) -> dict[str, float]:
    """Both METRICS of `model` now."""
    return {"accuracy": evaluate(model, data), "accuracy_precise": evaluate_precise(model, data)}


def measure(model: nn.Module, data: ArrayData, step: int) -> dict:
    return {"step": step, **accuracies(model, data)}


def train(model: nn.Module, data: ArrayData, *, steps: int, seed: int, lr: float = 1e-3, batch_size: int = 64,
          eval_every: int = 25, stop_at: float | None = None, channels_last: bool = False, warmup: int = 0,
          progress: bool = False, desc: str = "", after: AfterInjection | None = None) -> list[dict]:
    """Adam on cross-entropy; returns one `measure` per evaluation (step, accuracy, accuracy_precise) from step 0, or
    none with `eval_every=0` (evaluations never change the training itself).

    stop_at: end early at the first evaluation whose precise accuracy reaches this (`steps` is then a maximum).
    channels_last: convert the model (in place) and its inputs to NHWC first; on CPU, depthwise convolutions run
    faster that way, plain resnets no faster (timings: docs/benchmarks.md).
    warmup: the learning rate grows linearly to `lr` over this many steps (kaggle-tli's trainer warms up 5% of a run).
    after: the trainer's options after an injection (learning-rate groups, freeze, distillation), as
    `kaggle_tli.train` applies them.
    """
    torch.manual_seed(seed)
    after = after or AfterInjection()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    opt = torch.optim.Adam(after.groups(model, lr), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda done: min(1.0, (done + 1) / (warmup + 1)))
    curve = [measure(model, data, 0)] if eval_every else []
    model.train()
    batches = data.batches(steps, batch_size, seed)
    for step, (x, y) in enumerate(tqdm(batches, total=steps, desc=desc, disable=not progress, leave=False), 1):
        after.apply_freeze(opt, step - 1)
        logits = model(x.contiguous(memory_format=fmt))
        loss = after.loss(logits, F.cross_entropy(logits, y), x, step - 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        if eval_every and (step % eval_every == 0 or step == steps):
            curve.append(measure(model, data, step))
            if stop_at is not None and curve[-1]["accuracy_precise"] >= stop_at:
                break
    return curve


@dataclass
class AfterInjection:
    """The trainer's options after an injection, for the benchmark's own loop: learning-rate multipliers for the
    tensors the teacher set (`transferred`, from the transfer report) and for fresh ones, a freeze of the transferred
    ones for the first steps, and distillation from `teacher` (`distill` weight, `temperature`)."""

    transferred: set = field(default_factory=set)
    lr_transferred: float = 1.0
    lr_fresh: float = 1.0
    freeze_steps: int = 0
    teacher: nn.Module | None = None
    distill: float = 0.0
    temperature: float = 2.0

    def groups(self, model: nn.Module, lr: float) -> list[dict]:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        out = []
        for flag, scale in ((True, self.lr_transferred), (False, self.lr_fresh)):
            params = [p for n, p in named if (n in self.transferred) == flag]
            if params:
                out.append({"params": params, "lr": lr * scale, "transferred": flag})
        return out

    def apply_freeze(self, optimizer: torch.optim.Optimizer, done: int) -> None:
        """Transferred groups at learning rate 0 for the first `freeze_steps` (LambdaLR resets them next step)."""
        if done < self.freeze_steps:
            for group in optimizer.param_groups:
                if group["transferred"]:
                    group["lr"] = 0.0

    def loss(self, logits: torch.Tensor, task_loss: torch.Tensor, x: torch.Tensor, done: int) -> torch.Tensor:
        if not self.distill or self.teacher is None:
            return task_loss
        with torch.no_grad():
            teacher_logits = self.teacher(x.contiguous())
        kd = distill_loss(logits, teacher_logits, "single_label", self.temperature)
        return (1.0 - self.distill) * task_loss + self.distill * kd


def _refit_batches(data: ArrayData, batches: int, batch_size: int, seed: int):
    """The few training batches both refits use, the same ones for every method of a seed."""
    return data.batches(batches, batch_size, seed + 10_000)


def recalibrate(model: nn.Module, data: ArrayData, *, batches: int = 8, batch_size: int = 64, seed: int = 0) -> None:
    recalibrate_norms(model, _refit_batches(data, batches, batch_size, seed), max_batches=batches)


def probe_head(model: nn.Module, data: ArrayData, *, batches: int = 8, batch_size: int = 64, seed: int = 0) -> dict:
    """`refit_head` on the batches `recalibrate` used (what `iterate` does); returns its verdict as row fields."""
    result = refit_head(model, _refit_batches(data, batches, batch_size, seed), max_batches=batches)
    return {"head_refitted": result.refitted, "head_acc_before": result.accuracy_before,
            "head_acc_probe": result.accuracy_probe}


def build(arch: str, num_classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(arch, num_classes=num_classes)


def get_teacher(arch: str, data: ArrayData, *, steps: int, seed: int, cache: Path, target: float | None = None,
                check_every: int = 10, channels_last: bool = False, progress: bool = True) -> tuple[nn.Module, dict]:
    """Train (or load from the cache folder) the teacher; returns it with its held-out accuracies, measured as the
    students' are, and the steps it trained ({"accuracy": ..., "accuracy_precise": ..., "steps": ...}).

    target: train until the precise held-out accuracy reaches this, checked every `check_every` steps, for at most
    `steps` (teachers of equal accuracy, so that what a student gets from them is not just how good they are).

    The first process to need a teacher trains it while holding a lock on its cache file; others needing the same
    one wait and load it, so parallel workers never train a teacher twice. Its BatchNorm statistics are then refitted
    on training batches (precise BN, as a training run that ends well does): the teacher is judged, and copied, by
    its weights rather than by statistics that lag them.
    """
    teacher = build(arch, data.num_classes, seed)
    # "-refit": the file holds the refitted statistics and, as metadata, the accuracies (measured once, not per job)
    tags = (f"-to{target:g}by{check_every}" if target is not None else "") + ("-cl" if channels_last else "")
    path = cache / f"teacher-{arch}-{data.name}-{steps}-s{seed}{tags}-refit.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_suffix(".lock"))):
        if not path.exists():
            curve = train(teacher, data, steps=steps, seed=seed, eval_every=check_every if target is not None else 0,
                          stop_at=target, channels_last=channels_last, progress=progress, desc=f"teacher {arch} s{seed}")
            recalibrate(teacher, data, seed=seed)
            tmp = path.with_suffix(".tmp")
            measured = {**accuracies(teacher, data), "steps": curve[-1]["step"] if curve else steps}
            save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(tmp),
                      metadata={k: repr(v) for k, v in measured.items()})
            tmp.replace(path)  # a process killed mid-write leaves no half file for the next run to load
    teacher.load_state_dict(load_file(path))
    with safe_open(str(path), framework="pt") as f:
        measured = {k: float(v) for k, v in f.metadata().items()}
    measured.setdefault("steps", float(steps))
    return teacher.to(memory_format=torch.contiguous_format).eval(), measured
