"""Benchmark: time per optimizer step of kaggle-tli's training loop against a bare PyTorch loop.

Same model (built through the registry from the same seed), same dataset object (same augmentation
pipeline), same batch size, optimizer and learning rate, in the same process. Beside it, what the options after an
injection cost: precise validation per evaluation (the BatchNorm refit, and in the first epoch the running-statistics pass, also
spread over an epoch's steps as the default once-per-epoch evaluation does) and distillation per step (a teacher forward pass). The bare loop is the
one everybody writes (DataLoader with shuffle, forward, cross-entropy, backward, AdamW step). A step
is timed from the end of the previous step to the end of this one, so data loading counts in both;
for our loop those intervals come from log.csv's `elapsed` column. The two loops alternate
`repeats` times and the first `warmup` steps of each repetition are dropped; the figure is the ratio
of the medians.

    python -m kaggle_tli.bench.overhead --arch resnet10t --image-size 32 --batch-size 32
    kaggle-tli bench overhead ...            (the same, through the CLI)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader

from kaggle_tli.data import PixelCsvData
from kaggle_tli.models import create_model
from kaggle_tli.stages import finetune, iterate
from kaggle_tli.train import TrainConfig
from kaggle_tli.train.norms import precise_loader, refit_norms

__all__ = ["digits_competition", "run_overhead", "main"]


def digits_competition(folder: Path) -> Path:
    """All 1797 scikit-learn digits as a pixel-CSV competition (8x8 grey, upscaled by the transforms)."""
    digits = load_digits()
    pixels = (digits.images.reshape(len(digits.images), -1) * (255.0 / 16.0)).round().astype(np.uint8)
    table = pd.DataFrame(pixels, columns=[f"pixel{i}" for i in range(pixels.shape[1])])
    table.insert(0, "label", digits.target)
    table.to_csv(folder / "train.csv", index=False)
    return folder


def _bare_steps(arch: str, data: Any, batch_size: int, lr: float, steps: int, seed: int, device: str) -> list[float]:
    """The loop a competitor writes by hand; returns seconds per step."""
    torch.manual_seed(seed)
    dev = torch.device(device)
    model = create_model(arch, data.num_classes, in_chans=data.in_chans).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    train_idx, _ = data.fold_indices(0)
    loader = DataLoader(data.dataset(train_idx, train=True), batch_size=batch_size, shuffle=True, drop_last=True)
    times: list[float] = []
    last = time.perf_counter()
    while len(times) < steps:
        for x, y in loader:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            times.append(now - last)
            last = now
            if len(times) >= steps:
                break
    return times


def _our_steps(arch: str, data: Any, batch_size: int, lr: float, steps: int, seed: int, device: str, runs: Path) -> list[float]:
    """kaggle-tli's loop (finetune, one fold, no evaluation inside the timed steps)."""
    train_idx, _ = data.fold_indices(0)
    epochs = -(-steps // max(1, len(train_idx) // batch_size)) + 1
    run = finetune(
        arch, data, runs=runs, epochs=epochs, max_steps=steps, batch_size=batch_size, lr=lr, seed=seed,
        device="cpu" if device == "cpu" else "auto", progress=False, warmup_steps=0,
        num_workers=0,  # the bare loop loads in-process too: the loops are compared, not the loaders
    )
    log = pd.read_csv(run.path / "log.csv")
    elapsed = log[log["loss"].notna()]["elapsed"].to_numpy()
    return list(np.diff(elapsed))  # the first step has no predecessor: dropped


def _distill_steps(arch: str, data: Any, batch_size: int, lr: float, steps: int, seed: int, device: str,
                   runs: Path) -> list[float]:
    """kaggle-tli's loop distilling from a teacher of the same architecture (iterate with distill=0.5): the same
    steps plus one teacher forward pass each."""
    dev = "cpu" if device == "cpu" else "auto"
    teacher = finetune(arch, data, runs=runs, epochs=1, max_steps=1, batch_size=batch_size, lr=lr, seed=seed,
                       device=dev, progress=False, eval_norms="running")
    train_idx, _ = data.fold_indices(0)
    epochs = -(-steps // max(1, len(train_idx) // batch_size)) + 1
    run = iterate(teacher, arch, data, runs=runs, recalibrate=False, refit_head=False, epochs=epochs, max_steps=steps,
                  warmup_steps=0, distill=0.5)
    log = pd.read_csv(run.path / "log.csv")
    return list(np.diff(log[log["loss"].notna()]["elapsed"].to_numpy()))


def _precise_cost(arch: str, data: Any, batch_size: int, seed: int, device: str) -> dict:
    """What precise validation adds to one evaluation with the trainer's defaults: the BatchNorm refit on the
    default image count (the first refit also loads its images, later ones reuse them from memory), and (in the
    first epoch only, `running_metric_epochs=1`) the second validation pass that scores the running statistics for
    log.csv. Data loads in this process, as in the loops measured."""
    torch.manual_seed(seed)
    dev = torch.device(device)
    model = create_model(arch, data.num_classes, in_chans=data.in_chans).to(dev)
    train_idx, valid_idx = data.fold_indices(0)
    batches = precise_loader(TrainConfig(batch_size=batch_size, num_workers=0), data, train_idx, pin_memory=False)
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        refit_norms(model, batches)
        seconds.append(time.perf_counter() - start)
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for x, _ in DataLoader(data.dataset(valid_idx, train=False), batch_size=2 * batch_size):
            model(x.to(dev))
    return {"first_refit_s": seconds[0], "refit_s": seconds[1], "valid_pass_s": time.perf_counter() - start,
            "precise_images": len(batches.loader.dataset), "steps_per_epoch": len(train_idx) // batch_size}


def run_overhead(
    arch: str = "resnet10t",
    *,
    image_size: int = 32,
    batch_size: int = 32,
    steps: int = 30,
    warmup: int = 5,
    repeats: int = 3,
    lr: float = 1e-3,
    device: str = "auto",
    seed: int = 0,
    threads: int | None = None,
    data: Any = None,
) -> dict:
    """Median seconds per step of both loops and the overhead of ours (`overhead` = ours / bare - 1).

    With `data=None` the benchmark uses the 1797 scikit-learn digits; pass a data object to measure
    on your own competition. Every step of our loop inside an epoch is timed (the evaluation at an
    epoch end is not a step and is excluded by keeping `steps` below one epoch when possible).
    `threads` sets torch's CPU threads for the measurement: on a shared machine, 1 avoids the
    oversubscription stalls that otherwise dominate the noise.
    """

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _measure(arch, image_size, batch_size, steps, warmup, repeats, lr, device, seed, data)
    finally:
        torch.set_num_threads(previous_threads)


def _measure(
    arch: str, image_size: int, batch_size: int, steps: int, warmup: int, repeats: int, lr: float, device: str,
    seed: int, data: Any,
) -> dict:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="kaggle_tli_overhead_") as tmp:
        tmp_path = Path(tmp)
        if data is None:
            data = PixelCsvData(digits_competition(tmp_path), image_shape=(8, 8), image_size=image_size)
        ours_all: list[float] = []
        bare_all: list[float] = []
        distill_all: list[float] = []
        for r in range(repeats):
            bare_all += _bare_steps(arch, data, batch_size, lr, steps + warmup, seed, device)[warmup:]
            ours_all += _our_steps(arch, data, batch_size, lr, steps + warmup, seed, device, tmp_path / f"runs{r}")[warmup:]
            distill_all += _distill_steps(arch, data, batch_size, lr, steps + warmup, seed, device,
                                          tmp_path / f"distill{r}")[warmup:]
        precise = _precise_cost(arch, data, batch_size, seed, device)
    bare, ours, distill = (statistics.median(v) for v in (bare_all, ours_all, distill_all))
    # with the defaults an evaluation comes once per epoch: precise validation's cost spread over the epoch's steps.
    # Every evaluation refits; the running-statistics pass (log.csv's metric_running) comes only in the first epoch
    epoch = max(1, precise["steps_per_epoch"])
    refit, first = precise["refit_s"], precise["first_refit_s"] + precise["valid_pass_s"]
    return {
        "arch": arch, "image_size": image_size, "batch_size": batch_size, "device": device,
        "steps_measured": {"ours": len(ours_all), "bare": len(bare_all), "distill": len(distill_all)},
        "repeats": repeats, "bare_s_per_step": bare, "ours_s_per_step": ours, "overhead": ours / bare - 1.0,
        "precise": precise, "precise_s_per_eval": refit, "precise_s_first_epoch": first,
        "overhead_with_precise": (epoch * ours + refit) / (epoch * bare) - 1.0,
        "overhead_first_epoch": (epoch * ours + first) / (epoch * bare) - 1.0,
        "distill_s_per_step": distill, "distill_cost": distill / ours - 1.0,
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: print the result as a line of text (and JSON with --json)."""
    parser = argparse.ArgumentParser(prog="kaggle-tli bench overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet10t")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per repetition")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per repetition")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the result to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    result = run_overhead(
        args.arch, image_size=args.image_size, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
        repeats=args.repeats, device=args.device, threads=args.threads,
    )
    print(
        f"{result['arch']} @ {result['image_size']}px, batch {result['batch_size']}, {result['device']}: "
        f"bare {result['bare_s_per_step'] * 1000:.2f} ms/step, kaggle-tli {result['ours_s_per_step'] * 1000:.2f} "
        f"ms/step, overhead {result['overhead'] * 100:+.1f}% without precise validation, "
        f"{result['overhead_with_precise'] * 100:+.1f}% with it (one evaluation per epoch of "
        f"{result['precise']['steps_per_epoch']} steps: +{result['precise_s_per_eval'] * 1000:.0f} ms per evaluation "
        f"for the refit on {result['precise']['precise_images']} images; the first epoch's evaluation also scores "
        f"the running statistics: +{result['precise_s_first_epoch'] * 1000:.0f} ms, "
        f"{result['overhead_first_epoch'] * 100:+.1f}%); "
        f"distillation {result['distill_s_per_step'] * 1000:.2f} ms/step ({result['distill_cost'] * 100:+.1f}%)"
    )
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
