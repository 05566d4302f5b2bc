"""Convergence curves into results: steps to a target, per-method summaries, paired differences, tables, a figure.

`write_results` writes everything `kaggle-tli bench convergence` leaves in its output folder.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ._report import float_formats, prepare_dir, write_table
from .training import METRICS


def steps_to_reach(curve: pd.DataFrame, target: float, metric: str = "accuracy_precise") -> float:
    """First measured step whose mean accuracy (over seeds) reaches `target`; inf when never."""
    mean = curve.groupby("step")[metric].mean()
    hit = mean[mean >= target - 1e-9]  # means of equal accuracies, summed in another order, may differ in the last bit
    return float(hit.index.min()) if len(hit) else math.inf


def summarise(curves: pd.DataFrame, metric: str = "accuracy_precise") -> pd.DataFrame:
    """Per student and method: accuracy at step 0, N/4, N/2 and N (mean over seeds), the largest std over seeds
    along the curve, and the steps needed to reach the Kaiming student's final accuracy and the teacher's."""
    out = []
    for student, group in curves.groupby("student", sort=False):
        last = group["step"].max()
        kaiming = group[group.method == "kaiming"]
        target = kaiming[kaiming.step == last][metric].mean() if len(kaiming) else math.nan
        teacher_acc = group[f"teacher_{metric}"].mean()
        for method, g in group.groupby("method", sort=False):
            stats = g.groupby("step")[metric].agg(["mean", "std"])
            row = {"student": student, "method": method}
            for frac, name in ((0, "step0"), (0.25, "quarter"), (0.5, "half"), (1, "final")):
                s = stats.index[np.abs(stats.index - frac * last).argmin()]
                row[f"acc_{name}"] = stats.loc[s, "mean"]
            row["max_std"] = stats["std"].max()
            row["steps_to_kaiming_final"] = steps_to_reach(g, target, metric)
            row["steps_to_teacher"] = steps_to_reach(g, teacher_acc, metric)
            row["coverage"] = g["coverage"].mean() if "coverage" in g else math.nan
            out.append(row)
    return pd.DataFrame(out)


def paired_differences(curves: pd.DataFrame, metric: str = "accuracy_precise", method: str = "tli") -> pd.DataFrame:
    """`method` minus every other method at each measured step, seed by seed (same seed, same batches), as the mean,
    smallest and largest difference over seeds: a comparison that the spread between seeds does not drown."""
    out = []
    for student, group in curves.groupby("student", sort=False):
        wide = group.pivot_table(index=["seed", "step"], columns="method", values=metric)
        if method not in wide:
            continue
        for other in (m for m in dict.fromkeys(group["method"]) if m != method):
            diff = (wide[method] - wide[other]).dropna().groupby("step")
            for stat, values in (("mean", diff.mean()), ("min", diff.min()), ("max", diff.max())):
                out.append({"student": student, "versus": other, "over seeds": stat,
                            **{f"step {s}": v for s, v in values.items()}})
    return pd.DataFrame(out)


def plot(curves: pd.DataFrame, path: Path) -> Path:
    """One panel per student and metric: mean accuracy per method with a band of +-1 std over seeds (paper Fig. 4
    style); top row with BatchNorm refitted before each evaluation, bottom row in plain eval mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    students = list(dict.fromkeys(curves["student"]))
    metrics = [m for m in METRICS if m in curves]
    palette = plt.get_cmap("tab20").colors
    colors = {m: palette[i % len(palette)] for i, m in enumerate(dict.fromkeys(curves["method"]))}
    colors["tli"] = "black"  # the default method stands out from its ablations
    fig, axes = plt.subplots(len(metrics), len(students), figsize=(5.2 * len(students), 4.4 * len(metrics)),
                             squeeze=False)
    for row, metric in zip(axes, metrics, strict=True):
        for ax, student in zip(row, students, strict=True):
            group = curves[curves.student == student]
            for method, g in group.groupby("method", sort=False):
                stats = g.groupby("step")[metric].agg(["mean", "std"]).fillna(0)
                style = "-" if method.startswith("tli") else "--"
                width = 2.6 if method == "tli" else 1.2
                ax.plot(stats.index, stats["mean"], style, lw=width, color=colors[method], label=method)
                ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                                color=colors[method], alpha=0.08)
            ax.axhline(group[f"teacher_{metric}"].mean(), color="grey", lw=1.0, ls=":", label="teacher")
            ax.set(title=student, xlabel="training step", ylabel=METRICS[metric].split(",")[0], ylim=(0, 1))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6.5, loc="lower right", ncol=2)
        row[0].annotate(METRICS[metric], (0, 1.08), xycoords="axes fraction", fontsize=10, weight="bold")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path



def write_results(curves: pd.DataFrame, out: Path) -> Path:
    """curves.csv, two tables per metric (convergence.md/.csv: BatchNorm refitted, convergence_evalmode.*: plain
    eval mode; each with a `_paired` table of tli minus every other method) and the plot; returns the main table's
    markdown file."""
    out = prepare_dir(out)
    curves.to_csv(out / "curves.csv", index=False)
    paths = {}
    last = int(curves["step"].max())
    for metric, stem in (("accuracy_precise", "convergence"), ("accuracy", "convergence_evalmode")):
        table = summarise(curves, metric)
        steps = [c for c in table if c.startswith("steps_to")]
        view = table.assign(**{c: table[c].map(lambda v: f">{last}" if math.isinf(v) else f"{v:.0f}") for c in steps})
        paths[metric] = write_table(table, out, stem, title=METRICS[metric], view=view,
                                    formats=float_formats(table.drop(columns=steps)))[1]
        diffs = paired_differences(curves, metric)
        write_table(diffs, out, f"{stem}_paired", title=f"tli minus each method, seed by seed: {METRICS[metric]}",
                    formats=float_formats(diffs, "+.3f"))
    plot(curves, out / "convergence.png")
    return paths["accuracy_precise"]

