"""`kaggle-tli demo`: the paper's pipeline (Fig. 6) end to end, offline, on scikit-learn's bundled digits.

1. write a Kaggle-shaped competition: PNG images, train.csv, a test folder, sample_submission.csv
2. stage 1: fine-tune a resnet18 teacher
3. stage 2: register an edited architecture (SiLU activations, 5x5 kernels in the first stage)
4. stages 3+4: iterate from the teacher with TLI, and with Kaiming init for comparison, side by side
5. print the ledger and the comparison, plot the learning curves, write submission.csv
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from sklearn.datasets import load_digits

from .data import ImageCsvData
from .ledger import Ledger
from .models import change_kernel_size, is_arch, register_edit, swap_activation
from .runs import Run
from .stages import check_submission, finetune, iterate, predict

EDITED_ARCH = "resnet18_silu_k5"


def write_digits_competition(root: str | Path, *, size: int = 32, test_fraction: float = 0.2, seed: int = 0) -> Path:
    """scikit-learn's 1,797 8x8 digits as a Kaggle competition folder of size x size RGB PNGs."""
    root = Path(root)
    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.target))
    n_test = int(len(order) * test_fraction)
    splits = {"test": order[:n_test], "train": order[n_test:]}
    for split, indices in splits.items():
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        for i in indices:
            grey = cv2.resize((digits.images[i] * (255 / 16)).astype(np.float32), (size, size))
            rgb = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
            cv2.imwrite(str(folder / f"{split}_{i:04d}.png"), rgb)
    ids = {k: [f"{k}_{i:04d}" for i in v] for k, v in splits.items()}
    pd.DataFrame({"id": ids["train"], "label": digits.target[splits["train"]]}).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"id": ids["test"], "label": 0}).to_csv(root / "sample_submission.csv", index=False)
    pd.DataFrame({"id": ids["test"], "label": digits.target[splits["test"]]}).to_csv(root / "solution.csv",
                                                                                    index=False)
    return root


def register_demo_arch() -> str:
    """Stage 2: the edit a competitor might try next: SiLU everywhere, bigger kernels early."""
    if not is_arch(EDITED_ARCH):
        register_edit(
            EDITED_ARCH, base="resnet18",
            edits=[swap_activation("silu"), change_kernel_size(5, pattern="layer1.*")],
            description="resnet18 with SiLU and 5x5 kernels in layer1",
        )
    return EDITED_ARCH


def learning_curve(run: Run) -> pd.DataFrame:
    """(step, metric, metric_running) of a run's evaluations, step 0 included: the trainer's score (precise
    validation by default) and the same evaluation with the running BatchNorm statistics."""
    log = pd.read_csv(run.path / "log.csv")
    columns = ["step", "metric"] + (["metric_running"] if "metric_running" in log else [])
    return log.loc[log["metric"].notna(), columns].reset_index(drop=True)


def worst_drop(curve: pd.DataFrame) -> float:
    """How far the score ever fell below its step-0 value (0 when it never did)."""
    return float(max(0.0, curve["metric"].iloc[0] - curve["metric"].min()))


def plot_curves(curves: dict[str, pd.DataFrame], teacher_cv: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, curve in curves.items():
        ax.plot(curve["step"], curve["metric"], marker="o", ms=3, label=label)
    ax.axhline(teacher_cv, color="k", ls=":", lw=1, label=f"teacher (resnet18) {teacher_cv:.3f}")
    ax.set(xlabel="training step", ylabel="validation accuracy", ylim=(0, 1.02),
           title=f"{EDITED_ARCH}: TLI vs Kaiming init")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_demo(out: str | Path = "demo_out", *, quick: bool = False) -> dict:
    """The whole pipeline; returns the runs and the comparison table."""
    start = time.perf_counter()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    out = Path(out)
    competition = write_digits_competition(out / "competition")
    print(f"[1/5] competition folder: {competition} (train.csv, train/, test/, sample_submission.csv)")
    data = ImageCsvData(competition, image_size=32, folds=5)
    runs = out / "runs"
    common = dict(batch_size=64, lr=2e-3, progress=True)

    teacher = finetune("resnet18", data, runs=runs, epochs=1 if quick else 5, **common)
    print(f"[2/5] stage 1, teacher {teacher.id}: validation accuracy {teacher.metrics['cv']:.3f}")

    arch = register_demo_arch()
    print(f"[3/5] stage 2, registered {arch!r}: SiLU activations, 5x5 kernels in layer1")

    steps = 6 if quick else 40
    # a gentle start: a fresh optimizer's first full-size steps would shake the injected weights
    # running_metric_epochs=None: the running-statistics score at every evaluation, for the table's comparison
    side = dict(max_steps=steps, eval_every_steps=max(steps // 8, 1), eval_at_start=True, epochs=10,
                warmup_steps=steps // 4, running_metric_epochs=None, **{**common, "lr": 1e-3})
    tli = iterate(teacher, arch, data, notes="demo: TLI", **side)
    scratch = iterate(teacher, arch, data, init="kaiming", notes="demo: Kaiming baseline", **side)
    print(f"[4/5] stages 3+4: {tli.report.summary().splitlines()[0]}")

    curves = {"TLI": learning_curve(tli), "Kaiming": learning_curve(scratch)}
    table = pd.DataFrame({
        "step": curves["TLI"]["step"],
        "TLI": curves["TLI"]["metric"].round(3),
        "Kaiming": curves["Kaiming"]["metric"].round(3),
    })
    if "metric_running" in curves["TLI"]:  # what eval mode with lagging statistics would have reported
        table["TLI, running BN stats"] = curves["TLI"]["metric_running"].round(3)
    plot = plot_curves(curves, teacher.metrics["cv"], out / "learning_curves.png")
    submission = predict(tli, out=out / "submission.csv")
    check_submission(submission, pd.read_csv(competition / "sample_submission.csv", dtype=str))
    solution = pd.read_csv(competition / "solution.csv", dtype=str)
    test_acc = float((submission["label"].astype(str).values == solution["label"].astype(str).values).mean())

    ledger = Ledger(runs).to_frame()
    print("\nledger:")
    print(ledger[["run_id", "parent_run_id", "stage", "arch", "init", "tli_score", "coverage", "cv"]]
          .to_string(index=False))
    print(f"\nvalidation accuracy by step, {arch} (the teacher reached {teacher.metrics['cv']:.3f}):")
    print(table.to_string(index=False))
    drop = worst_drop(curves["TLI"])
    print(f"TLI student: never more than {drop:.3f} below its step-0 accuracy "
          f"({'within' if drop <= 0.02 else 'NOT within'} the 0.02 a same-family edit must keep)")
    print(f"\n[5/5] submission.csv ({len(submission)} rows, test accuracy {test_acc:.3f}) -> {out / 'submission.csv'}")
    print(f"learning curves -> {plot}")
    print(f"done in {time.perf_counter() - start:.0f} s")
    return {"teacher": teacher, "tli": tli, "kaiming": scratch, "table": table, "test_accuracy": test_acc,
            "tli_worst_drop": drop}
