"""Teachers benchmark (paper, Fig. 4 and 7): does a higher TLI score mean faster convergence?

One student (mnasnet_100, the paper's) learns from several teachers, each trained on the same data first until its
held-out accuracy reaches the same target (`--target`): a better teacher gives a better student whatever the score, so
teachers trained for a fixed number of steps (their accuracies far apart: docs/benchmarks.md) would rank by their
own accuracy. For every teacher: its TLI score against the student, its own accuracy and training steps, and the
student's accuracy curve after injection (kaggle-tli's defaults: BatchNorm and, where a probe helps, the classifier
refitted on 8 batches). The Spearman rank correlation between TLI score and the student's mean accuracy over the curve
says whether the score is worth ranking teachers by; the one between the student's accuracy at step 0 and its mean
after step 0 says whether ranking by the injected student's start (`kaggle_tli.rank_teachers` given batches) is.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from scipy.stats import spearmanr

from kaggle_tli.tli import tli_score

from ..models import arch_info
from . import arrays, methods, options, training
from ._pool import run_jobs, split_cores
from ._report import float_formats, prepare_dir, write_table

STUDENT = "mnasnet_100"
TEACHERS = ("spnasnet_100", "mobilenetv2_100", "tf_efficientnet_b0", "mobilenetv3_large_100", "regnetx_002",
            "resnet18", "semnasnet_100", "efficientnet_lite0", "fbnetc_100", "ghostnet_100",
            # the rest of the Fig. 7 models (bench/transfer.py), added together before any of them had been run
            "mobilenetv3_small_100", "mixnet_s", "efficientnet_b0", "mnasnet_small", "mobilenetv2_050", "lcnet_100",
            "regnety_002")
TARGET = 0.70  # every teacher trains until its held-out accuracy reaches this
CHECK_EVERY = 10  # steps between checks: resnet18 passes 0.70 within its first 50 steps


def run(data: arrays.ArrayData, *, student: str = STUDENT, teachers: Sequence[str] = TEACHERS, teacher_steps: int,
        target: float | None = TARGET, steps: int, seeds: Sequence[int], eval_every: int, workers: int = 1,
        threads: int = 1, cache: Path | None) -> pd.DataFrame:
    """Curves of the student from each teacher and from Kaiming init (long format, one row per evaluation). A job
    per teacher and seed; the first job of a teacher trains it (seed 0 for every teacher) to `target` accuracy in at
    most `teacher_steps` (None: exactly `teacher_steps`). Everything trains channels_last (mobile nets run
    faster on CPU: docs/benchmarks.md)."""
    progress = workers <= 1
    pool = dict(workers=workers, threads=threads)
    with tempfile.TemporaryDirectory() as tmp:
        cache = cache or Path(tmp)
        jobs = [(_student_job, (student, name, teacher_steps, target, seed, steps, eval_every, cache, progress))
                for seed in seeds for name in (*teachers, None)]
        return pd.DataFrame([row for rows in run_jobs(jobs, data, desc="students", **pool) for row in rows])


def _student_job(data: arrays.ArrayData, student: str, teacher_name: str | None, teacher_steps: int,
                 target: float | None, seed: int, steps: int, eval_every: int, cache: Path, progress: bool) -> list[dict]:
    """The student's curve after injection from `teacher_name` with kaggle-tli's defaults (None: Kaiming init)."""
    model = training.build(student, data.num_classes, seed + 1000)
    t_acc = score = t_steps = float("nan")
    if teacher_name is not None:
        teacher, t_accs = training.get_teacher(teacher_name, data, steps=teacher_steps, seed=0, cache=cache,
                                               target=target, check_every=CHECK_EVERY, channels_last=True,
                                               progress=progress)
        t_acc, t_steps = t_accs["accuracy_precise"], t_accs["steps"]
        score = tli_score(teacher, training.build(student, data.num_classes, 0), input_size=(3, 32, 32))
        methods.METHODS["tli"].init(model, teacher)
        training.recalibrate(model, data, seed=seed)
        training.probe_head(model, data, seed=seed)  # as iterate does: the classifier refitted where a probe helps
    curve = training.train(model, data, steps=steps, seed=seed, eval_every=eval_every, channels_last=True,
                     progress=progress, desc=f"{student} <- {teacher_name or 'Kaiming init'} s{seed}")
    return [dict(teacher=teacher_name or "(none)", method="tli" if teacher_name else "kaiming", tli_score=score,
                 teacher_acc=t_acc, teacher_steps=t_steps, seed=seed, **point) for point in curve]


def summarise(curves: pd.DataFrame) -> pd.DataFrame:
    """Per teacher: score, teacher accuracy and training steps, the student's accuracy at 0, N/4 and N, its mean
    over the curve and over the evaluations after step 0 (BatchNorm refitted before each evaluation; the mean in plain
    eval mode too). Sorted by TLI score, the Kaiming row last."""
    last = curves["step"].max()
    table = []
    for teacher, g in curves.groupby("teacher", sort=False):
        mean = g.groupby("step")["accuracy_precise"].mean()
        quarter = mean.index[abs(mean.index - last / 4).argmin()]
        table.append({"teacher": teacher, "tli_score": g["tli_score"].iloc[0], "teacher_acc": g["teacher_acc"].iloc[0],
                      "teacher_steps": g["teacher_steps"].iloc[0],
                      "acc_start": mean.iloc[0], "acc_quarter": mean.loc[quarter], "acc_final": mean.loc[last],
                      "acc_mean": mean.mean(), "acc_later": mean.iloc[1:].mean(),
                      "acc_mean_evalmode": g.groupby("step")["accuracy"].mean().mean()})
    frame = pd.DataFrame(table).sort_values("tli_score", ascending=False, na_position="last")
    return frame.reset_index(drop=True)


def rank_correlation(frame: pd.DataFrame, x: str, y: str) -> tuple[float, float]:
    """Spearman's rho between columns `x` and `y` over the teachers, with its p-value (nan below 3 teachers)."""
    scored = frame.dropna(subset=["tli_score"])
    if len(scored) < 3:
        return float("nan"), float("nan")
    rho, p = spearmanr(scored[x], scored[y])
    return float(rho), float(p)


CORRELATIONS = (  # (x, y) pairs, a Spearman rho each under the table and a scatter each in the plot
    ("tli_score", "acc_mean"),  # the question: does a more similar architecture make a faster student?
    ("tli_score", "teacher_acc"),  # a confound: a better teacher gives a better student whatever the score
    ("acc_start", "acc_later"),  # rank_teachers with data: does the injected student's start predict the rest?
)
LABELS = {
    "tli_score": "TLI score (teacher vs student)",
    "acc_mean": "the student's mean accuracy",
    "teacher_acc": "the teacher's own accuracy",
    "acc_start": "the student's accuracy at step 0 (after both refits)",
    "acc_later": "the student's mean accuracy after step 0",
}


def plot(curves: pd.DataFrame, frame: pd.DataFrame, path: Path, student: str = STUDENT) -> Path:
    """Left: the student's curve from each teacher; then one scatter per pair in CORRELATIONS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(CORRELATIONS), figsize=(5.5 * (1 + len(CORRELATIONS)), 4.2))
    left = axes[0]
    for teacher, g in curves.groupby("teacher", sort=False):
        mean = g.groupby("step")["accuracy_precise"].mean()
        score = g["tli_score"].iloc[0]
        label = f"{teacher} (TLI {score:.2f})" if score == score else "Kaiming init"
        left.plot(mean.index, mean.values, ls="--" if score != score else "-", label=label)
    left.set(xlabel="training step", ylabel="held-out accuracy", ylim=(0, 1), title=f"{student} from each teacher")
    left.legend(fontsize=7, loc="lower right")
    left.grid(alpha=0.3)
    scored = frame.dropna(subset=["tli_score"])
    for ax, (x, y) in zip(axes[1:], CORRELATIONS, strict=True):
        rho, _ = rank_correlation(frame, x, y)
        ax.scatter(scored[x], scored[y])
        for _, r in scored.iterrows():
            ax.annotate(r["teacher"], (r[x], r[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel=LABELS[x], ylabel=LABELS[y], title=f"Spearman rho = {rho:.2f}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(curves: pd.DataFrame, out: Path) -> Path:
    """teachers_curves.csv, teachers.md/.csv (the table, then one Spearman rho per pair in CORRELATIONS) and
    teachers.png; returns the markdown file."""
    out = prepare_dir(out)
    curves.to_csv(out / "teachers_curves.csv", index=False)
    frame = summarise(curves)
    notes = [f"Spearman rho, {LABELS[x]} vs {LABELS[y]}: {rho:.2f} (p = {p:.2f})"
             for x, y in CORRELATIONS for rho, p in [rank_correlation(frame, x, y)]]
    plot(curves, frame, out / "teachers.png")
    formats = {**float_formats(frame), "teacher_steps": ".0f"}  # a count (a float column: blank for Kaiming init)
    return write_table(frame, out, "teachers", formats=formats, notes=notes)[1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = options.bench_parser("teachers", __doc__, "bench_out/teachers")
    parser.add_argument("--teacher-steps", type=int, default=2000, help="most steps a teacher trains (default: "
                        "%(default)s)")
    parser.add_argument("--target", type=float, default=TARGET, help="held-out accuracy every teacher trains to "
                        "(default: %(default)s; 0: train exactly --teacher-steps)")
    parser.add_argument("--teachers", nargs="+", default=list(TEACHERS), metavar="ARCH",
                        help="timm names of the teachers (default: resnet18 and every Fig. 7 model but the "
                        "student, 17)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="3 teachers, 150 teacher steps, 50 student steps")
    args = parser.parse_args(argv)
    try:  # a misspelt teacher fails now, with the closest names, not after the others trained
        for name in (*args.teachers, STUDENT):
            arch_info(name)
    except KeyError as e:
        parser.exit(2, f"error: {e}\n")
    out, data = options.prepare(parser, args)
    teachers, t_steps, steps, seeds = tuple(args.teachers), args.teacher_steps, args.steps, tuple(range(args.seeds))
    target = args.target or None
    if args.quick:
        teachers, t_steps, target, steps, seeds = teachers[:3], 150, None, 50, (0,)
    workers, threads = split_cores(args.workers, args.threads)
    start = time.perf_counter()
    curves = run(data, teachers=teachers, teacher_steps=t_steps, target=target, steps=steps, seeds=seeds,
                 eval_every=max(steps // 4, 1), workers=workers, threads=threads, cache=out.parent / "cache")
    md = write_results(curves, out)
    print(md.read_text())
    print(f"{time.perf_counter() - start:.0f} s; results in {out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
