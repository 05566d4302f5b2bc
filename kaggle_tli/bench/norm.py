"""Norm benchmark (paper, Fig. 5): is transferring BatchNorm worth it along a chain of growing models?

efficientnet_b0 is trained from scratch; its weights are injected into efficientnet_b1, which is trained; b1's go into
b2, which is trained. The chain runs once with normalisation layers transferred and once with them left at init,
each both in the paper's setting (no data touched after injection) and with kaggle-tli's default BatchNorm
re-estimation on a few training batches. Same data, same order, same seeds everywhere.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from safetensors.torch import load_file, save_file

from kaggle_tli.tli import transfer

from . import arrays, options, training
from ._pool import run_jobs, split_cores
from ._report import float_formats, write_table

CHAIN = ("efficientnet_b0", "efficientnet_b1", "efficientnet_b2")
VARIANTS = {  # label -> (transfer_norm, recalibrate)
    "norm": (True, False),
    "no norm": (False, False),
    "norm+recal": (True, True),
    "no norm+recal": (False, True),
}


def run_chain(data: arrays.ArrayData, *, steps: int, seeds: Sequence[int], eval_every: int, workers: int = 1,
              threads: int = 1, chain: Sequence[str] = CHAIN, variants: Sequence[str] = tuple(VARIANTS)) -> pd.DataFrame:
    """Accuracy curves of every model in the chain, for every variant and seed (long format). The first model is
    trained once per seed; each (seed, variant) chain after it is a job of its own."""
    progress = workers <= 1
    pool = dict(workers=workers, threads=threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        firsts = run_jobs([(_first_job, (chain[0], steps, seed, eval_every, folder, progress)) for seed in seeds],
                          data, desc=chain[0], **pool)
        rows = [dict(variant=v, model=chain[0], stage=0, seed=seed, **point)
                for seed, curve in zip(seeds, firsts, strict=True) for v in variants for point in curve]
        jobs = [(_chain_job, (tuple(chain), variant, steps, seed, eval_every, folder, progress))
                for seed in seeds for variant in variants]
        rows += [row for rows in run_jobs(jobs, data, desc="chains", **pool) for row in rows]
    return pd.DataFrame(rows)


def _first_job(data: arrays.ArrayData, arch: str, steps: int, seed: int, eval_every: int, folder: Path,
               progress: bool) -> list[dict]:
    model = training.build(arch, data.num_classes, seed)
    curve = training.train(model, data, steps=steps, seed=seed, eval_every=eval_every, progress=progress, desc=arch)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / f"{arch}-s{seed}.safetensors"))
    return curve


def _chain_job(data: arrays.ArrayData, chain: tuple[str, ...], variant: str, steps: int, seed: int, eval_every: int,
               folder: Path, progress: bool) -> list[dict]:
    transfer_norm, recal = VARIANTS[variant]
    teacher = training.build(chain[0], data.num_classes, seed)
    teacher.load_state_dict(load_file(folder / f"{chain[0]}-s{seed}.safetensors"))
    rows = []
    for stage, arch in enumerate(chain[1:], 1):
        student = training.build(arch, data.num_classes, seed + stage)
        transfer(teacher, student, transfer_norm=transfer_norm, input_size=(3, 32, 32))
        if recal:
            training.recalibrate(student, data, seed=seed)
        curve = training.train(student, data, steps=steps, seed=seed + stage, eval_every=eval_every, progress=progress,
                         desc=f"{arch} {variant} s{seed}")
        rows += [dict(variant=variant, model=arch, stage=stage, seed=seed, **point) for point in curve]
        teacher = student
    return rows


def summarise(curves: pd.DataFrame) -> pd.DataFrame:
    """Per model and variant: mean accuracy at the first, middle and last evaluation in eval mode (the paper's
    setting, where transferred BatchNorm statistics count), and at the last with BatchNorm refitted first."""
    out = []
    for (model, variant), g in curves.groupby(["model", "variant"], sort=False):
        mean = g.groupby("step")["accuracy"].mean()
        steps = list(mean.index)
        out.append({"model": model, "variant": variant, "acc_step0": mean.iloc[0],
                    "acc_mid": mean.loc[steps[len(steps) // 2]], "acc_final": mean.iloc[-1],
                    "precise_final": g.groupby("step")["accuracy_precise"].mean().iloc[-1]})
    return pd.DataFrame(out)


def plot(curves: pd.DataFrame, path: Path) -> Path:
    """The chain laid end to end, one line per variant (the paper's Fig. 5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.2))
    span = curves["step"].max()
    for variant, g in curves.groupby("variant", sort=False):
        mean = g.assign(x=g["stage"] * span + g["step"]).groupby("x")["accuracy"].mean()
        ax.plot(mean.index, mean.values, label=variant, lw=2 if "recal" in variant else 1.2,
                ls="-" if variant.startswith("norm") else "--")
    for stage, model in enumerate(dict.fromkeys(curves.sort_values("stage")["model"])):
        ax.axvline(stage * span, color="grey", lw=0.6)
        ax.text(stage * span + span * 0.02, 0.03, model, fontsize=8)
    ax.set(xlabel="training step along the chain", ylabel="held-out accuracy", ylim=(0, 1),
           title="TLI along efficientnet_b0 -> b1 -> b2, with and without BatchNorm transfer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = options.bench_parser("norm", __doc__, "bench_out/norm")
    parser.add_argument("--steps", type=int, default=200, help="training steps per model (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="60 steps, 1 seed, 4 evaluations, the two +recal variants")
    args = parser.parse_args(argv)
    out, data = options.prepare(parser, args)
    steps, seeds = (60, (0,)) if args.quick else (args.steps, tuple(range(args.seeds)))
    start = time.perf_counter()
    workers, threads = split_cores(args.workers, args.threads)
    # quick: fewer evaluations (each one evaluates twice, the main cost) and the two variants kaggle-tli would run
    evaluations, variants = (4, ("norm+recal", "no norm+recal")) if args.quick else (8, tuple(VARIANTS))
    curves = run_chain(data, steps=steps, seeds=seeds, eval_every=max(steps // evaluations, 1), workers=workers,
                       threads=threads, variants=variants)
    curves.to_csv(out / "norm_curves.csv", index=False)
    table = summarise(curves)
    _, md = write_table(table, out, "norm", formats=float_formats(table))
    plot(curves, out / "norm.png")
    print(md.read_text())
    print(f"\n{time.perf_counter() - start:.0f} s; results in {out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
