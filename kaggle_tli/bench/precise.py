"""Benchmark: how the precise-validation score depends on the refit's image count (`precise_images`).

A setting like the demo's: the 1,797 scikit-learn digits at 32 px (fold 0 of 5: 1,437 training and 360 validation
images), a resnet18 teacher trained 5 epochs, its SiLU edit trained at the full learning rate for a few steps with
running statistics, so they lag. The student's saved weights are scored after BatchNorm refits on N training
images, each N drawn with several row seeds, against a refit on the whole training fold.

    kaggle-tli bench precise --steps 10 40 --counts 64 128 256 512 --draws 5
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from kaggle_tli.bench._report import markdown_table, write_table
from kaggle_tli.bench.convergence import register_edits
from kaggle_tli.bench.overhead import digits_competition
from kaggle_tli.data import KaggleData, PixelCsvData
from kaggle_tli.stages import finetune, iterate
from kaggle_tli.tli import recalibrate_norms

__all__ = ["main", "refit_scores"]


def _accuracy(model: torch.nn.Module, valid: DataLoader, targets: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(x).argmax(1) for x, _ in valid]).numpy()
    return float((predicted == targets).mean())


def refit_scores(model: torch.nn.Module, data: KaggleData, counts: list[int], draws: int) -> list[dict]:
    """Validation accuracy of `model` after refits on each count of fold 0's training images, `draws` row draws
    each (one for the whole fold)."""
    train_idx, valid_idx = data.fold_indices(0)
    valid = DataLoader(data.dataset(valid_idx, train=False), batch_size=128)
    targets = data.targets[valid_idx]
    rows = [{"refit_images": "running", "draw": 0, "accuracy": _accuracy(model, valid, targets)}]
    for n in [*counts, len(train_idx)]:
        for seed in range(draws if n < len(train_idx) else 1):
            pick = np.sort(np.random.default_rng(seed).permutation(len(train_idx))[:n])
            loader = DataLoader(data.dataset(train_idx[pick], train=False), batch_size=64)
            recalibrate_norms(model, loader, max_batches=len(loader))
            rows.append({"refit_images": str(n), "draw": seed, "accuracy": _accuracy(model, valid, targets)})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command line: mean, lowest and highest accuracy per student and count; precise.csv / precise.md in --out."""
    parser = argparse.ArgumentParser(prog="kaggle-tli bench precise", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 40], help="student steps before scoring")
    parser.add_argument("--counts", type=int, nargs="+", default=[64, 128, 256, 512], help="refit image counts")
    parser.add_argument("--draws", type=int, default=5, help="row draws per count")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench_out/precise")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="kaggle_tli_precise_") as tmp:
        data = PixelCsvData(digits_competition(Path(tmp)), image_shape=(8, 8), image_size=32, folds=5)
        common = dict(batch_size=64, progress=False, num_workers=0, eval_norms="running")
        teacher = finetune("resnet18", data, runs=Path(tmp) / "runs", epochs=5, lr=2e-3, **common)
        register_edits()  # resnet18_silu, as the convergence benchmark has it
        arch = "resnet18_silu"
        for steps in args.steps:
            student = iterate(teacher, arch, data, max_steps=steps, epochs=10, lr=1e-3, lr_transferred=1.0, **common)
            rows += [{"student_steps": steps, **r} for r in refit_scores(student.build_model(), data, args.counts,
                                                                        args.draws)]
    frame = pd.DataFrame(rows)
    summary = (frame.groupby(["student_steps", "refit_images"], sort=False)["accuracy"]
               .agg(["mean", "min", "max"]).reset_index())
    formats = {"mean": ".4f", "min": ".4f", "max": ".4f"}
    write_table(frame, args.out, "precise", title="Precise validation: accuracy by refit image count",
                view=summary, formats=formats)
    print(markdown_table(summary, formats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
