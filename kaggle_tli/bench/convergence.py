"""Convergence benchmark (paper, Fig. 4): how fast does a student trained from each initialisation learn?

Protocol (defaults, issue 6): Fashion-MNIST, 12,000 training / 2,000 held-out images at 32x32x3; a resnet18 teacher
trained 600 steps; each student trained 200 steps with Adam (lr 1e-3, batch 64), held-out accuracy measured every 25
steps from step 0, twice: in plain eval mode, and with BatchNorm statistics first refitted on 512 fixed training
images ("precise BN", the tables' headline; see `evaluate_precise` for why). Every method sees the same batches in
the same order for a given seed, so the methods differ only in how the student starts; runs are spread over worker
processes (`--workers`) and do not depend on how many there are.

Methods, all side by side in one run: see `kaggle_tli.bench.methods` (listed under `--help`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import timm
from torch import nn

from kaggle_tli import models

from . import methods
from ._pool import run_jobs, split_cores
from .arrays import FASHION_DIR, ArrayData, load_fashion_mnist, load_folder
from .curves import paired_differences, plot, steps_to_reach, summarise, write_results
from .methods import AFTER_INJECTION, METHODS, QUICK_METHODS, Method, all_methods, baseline_methods
from .options import bench_parser, prepare
from .training import (
    METRICS,
    PRECISE_BATCHES,
    PRECISE_SEED,
    AfterInjection,
    accuracies,
    build,
    evaluate,
    evaluate_precise,
    get_teacher,
    measure,
    probe_head,
    recalibrate,
    train,
)

# the old private name, which tests/test_bench_training.py still reaches as cv._memory_format
from .training import memory_format as _memory_format  # noqa: F401

__all__ = [  # the benchmark's names from before the split, still reachable as `convergence.<name>`
    "DEFAULT_STUDENTS", "FASHION_DIR", "METHODS", "METRICS", "PRECISE_BATCHES", "PRECISE_SEED", "QUICK_METHODS",
    "ArrayData", "Config", "Method", "Student", "accuracies", "all_methods", "baseline_methods", "bench_parser",
    "build", "evaluate", "evaluate_precise", "get_teacher", "load_fashion_mnist", "load_folder", "main", "measure",
    "paired_differences", "plot", "prepare", "probe_head", "recalibrate", "register_edits", "run", "steps_to_reach",
    "summarise", "train", "write_results",
]


@dataclass
class Student:
    """One row of the benchmark: a student architecture, the teacher it learns from, and the methods compared on
    it (None: all). The ablations run where they matter (another family); the same-family rows compare the
    baselines each target names, which keeps a full run short (its time: docs/benchmarks.md)."""

    name: str  # label in the tables
    arch: str  # registry / timm name
    teacher: str = "resnet18"
    methods: tuple[str, ...] | None = None


DEFAULT_STUDENTS = (
    Student("other family: mobilenetv3_small_100", "mobilenetv3_small_100"),
    Student("same family, deeper: resnet34", "resnet34",
            methods=("kaiming", "same_name", "tli", "tli extra_blocks=copy", "iatransfer", "iatransfer+recal",
                     *AFTER_INJECTION)),
    Student("edit: resnet18 with SiLU", "resnet18_silu", methods=("kaiming", "same_name", "tli", *AFTER_INJECTION)),
    Student("edit: resnet18 with 5x5 kernels", "resnet18_k5",
            methods=("kaiming", "same_name", "tli", *AFTER_INJECTION)),
)
# `--students growth`: students that are their teacher grown, where growth keeps the function (engine issue); the
# previous engine is `tli combo`
_GROWTH_METHODS = ("kaiming", "same_name", "tli", "tli combo", "iatransfer",
                   "tli lr_transferred=0.3")  # the last: the rate `iterate` gives transferred tensors
GROWTH_STUDENTS = (
    Student("wider: resnet18 widened 1.5", "resnet18_w15", methods=_GROWTH_METHODS),
    # a ViT pair the protocol can afford on a CPU (vit_tiny -> vit_small at patch 4 costs several s per step): the
    # same 2x growth (embedding and heads doubled, head width kept), 6 blocks, 16 patches of 8 px
    Student("bigger sibling: vit 96 -> 192 wide (32 px, patch 8, 6 blocks)", "vit_w192_p8_32",
            teacher="vit_w96_p8_32", methods=(*_GROWTH_METHODS, "tli growth_jitter=0")),
    Student("bigger sibling: efficientnet_b0 -> b2", "efficientnet_b2", teacher="efficientnet_b0",
            methods=_GROWTH_METHODS),
)
# `--students head`: across families, may the teacher's classifier seed body layers (TransferOptions.head_as_source)?
_HEAD_METHODS = ("tli", "tli head_as_source=False")
HEAD_STUDENTS = (
    Student("other family: efficientnet_b0", "efficientnet_b0", methods=_HEAD_METHODS),
    Student("other family: mobilenetv3_small_100", "mobilenetv3_small_100", methods=_HEAD_METHODS),
)
STUDENT_SETS = {"default": DEFAULT_STUDENTS, "growth": GROWTH_STUDENTS, "head": HEAD_STUDENTS}


def register_edits() -> None:
    """The same-family edits the benchmark uses, made with the registry like a user would."""
    if not models.is_arch("resnet18_silu"):
        models.register_edit("resnet18_silu", base="resnet18", edits=[models.swap_activation("silu")],
                               description="resnet18, ReLU swapped for SiLU")
    if not models.is_arch("resnet18_k5"):
        models.register_edit("resnet18_k5", base="resnet18",
                               edits=[models.change_kernel_size(5, pattern="layer*.conv*")],
                               description="resnet18, 5x5 kernels in every residual block")
    if not models.is_arch("resnet18_w15"):
        models.register_edit("resnet18_w15", base="resnet18", edits=[models.widen(1.5)],
                               description="resnet18, channels 1.5x")
    for size, base in (("tiny", "vit_tiny_patch16_224"), ("small", "vit_small_patch16_224")):
        if not models.is_arch(f"vit_{size}_p4_32"):
            models.register_arch(f"vit_{size}_p4_32", parent=base, description=f"{base} for 32 px, patch 4",
                                   kwargs={"base": base})(_vit_32)
    for width, heads in ((96, 3), (192, 6)):
        if not models.is_arch(f"vit_w{width}_p8_32"):
            models.register_arch(f"vit_w{width}_p8_32", parent="vit_tiny_patch16_224",
                                 description=f"a 6-block ViT of width {width} ({heads} heads of 32) for 32 px, patch 8",
                                 kwargs={"width": width, "heads": heads})(_vit_small_grid)


def _vit_32(num_classes: int, base: str, **kw) -> nn.Module:
    """A ViT for the protocol's 32 px images: 8x8 patches of 4 px."""
    return timm.create_model(base, pretrained=False, num_classes=num_classes, img_size=32, patch_size=4, **kw)


def _vit_small_grid(num_classes: int, width: int, heads: int, **kw) -> nn.Module:
    """A ViT for the protocol's 32 px images that a CPU trains in a fraction of a second per step: 4x4 patches of
    8 px, 6 blocks."""
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, img_size=32,
                             patch_size=8, embed_dim=width, depth=6, num_heads=heads, **kw)



@dataclass
class Config:
    steps: int = 200
    teacher_steps: int = 600
    seeds: Sequence[int] = (0, 1, 2)
    methods: Sequence[str] = tuple(METHODS)
    students: Sequence[Student] = DEFAULT_STUDENTS
    eval_every: int = 25
    lr: float = 1e-3
    batch_size: int = 64
    recal_batches: int = 8
    warmup: int = 0  # steps of linear learning-rate warmup (the protocol has none)
    channels_last: bool = True  # students train NHWC (faster for depthwise convs); teachers stay NCHW, as cached
    workers: int = 1  # processes; each runs `threads` torch threads (see _pool)
    threads: int = 2
    cache: Path | None = Path("bench_out/cache")  # trained teachers; None: a temporary folder
    baselines: bool = True  # add iatransfer when it is importable


def run(data: ArrayData, cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All students x methods x seeds; returns (curves, teachers) as long-format frames.

    Every student run is a job; the first job of a seed trains that seed's teacher. Seeds alternate in the job list,
    so while one worker trains a teacher the others train other seeds' teachers or students. Results do not depend
    on how many workers run the jobs.
    """
    register_edits()
    names = list(cfg.methods) + (list(baseline_methods()) if cfg.baselines else [])
    progress = cfg.workers <= 1  # per-step bars from parallel workers would garble each other
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(_student_job, (cfg, st, name, seed, cfg.cache or Path(tmp), progress))
                for st in cfg.students for name in names if st.methods is None or name in st.methods
                for seed in cfg.seeds]
        results = run_jobs(jobs, data, workers=cfg.workers, threads=cfg.threads, setup=register_edits,
                           desc="training runs")
    curves = pd.DataFrame([row for rows in results for row in rows])
    teachers = (curves.groupby(["teacher", "seed"], sort=False)[[f"teacher_{m}" for m in METRICS]].first()
                .reset_index())
    return curves, teachers


def _student_job(data: ArrayData, cfg: Config, st: Student, name: str, seed: int, cache: Path,
                 progress: bool) -> list[dict]:
    teacher, t_accs = get_teacher(st.teacher, data, steps=cfg.teacher_steps, seed=seed, cache=cache,
                                 progress=progress)
    method = all_methods()[name]
    student = build(st.arch, data.num_classes, seed + 1000)
    start = time.perf_counter()
    info = method.init(student, teacher)
    if method.recal:
        recalibrate(student, data, batches=cfg.recal_batches, batch_size=cfg.batch_size, seed=seed)
    if method.probe:
        info |= probe_head(student, data, batches=cfg.recal_batches, batch_size=cfg.batch_size, seed=seed)
    init_s = time.perf_counter() - start
    options = dict(method.train)
    warmup = options.pop("warmup", cfg.warmup)
    after = AfterInjection(transferred=info.pop(methods.TRANSFERRED, set()), teacher=teacher, **options)
    curve = train(student, data, steps=cfg.steps, seed=seed, lr=cfg.lr, batch_size=cfg.batch_size,
                  eval_every=cfg.eval_every, channels_last=cfg.channels_last, warmup=warmup, progress=progress,
                  desc=f"{st.arch} {name} s{seed}", after=after)
    return [dict(student=st.name, arch=st.arch, teacher=st.teacher, **{f"teacher_{m}": a for m, a in t_accs.items()},
                 method=name, seed=seed, init_s=init_s, **point, **info) for point in curve]



def _chosen_students(parser, students: Sequence[Student], only: Sequence[str] | None) -> tuple[Student, ...]:
    """The students whose architecture `--only` names (all of them without it); an unknown name is an error."""
    if not only:
        return tuple(students)
    unknown = sorted(set(only) - {st.arch for st in students})
    if unknown:
        parser.error(f"--only {' '.join(unknown)}: not a student of this set; its students are "
                     f"{', '.join(st.arch for st in students)}")
    return tuple(st for st in students if st.arch in only)


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench_parser("convergence", f"{__doc__}\n{methods.__doc__}", "bench_out/convergence")
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 methods, 2 students, shorter runs")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--teacher-steps", type=int, default=600)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--students", choices=list(STUDENT_SETS), default="default",
                        help="default: the paper's students; growth: students that are their teacher grown; head: "
                             "two students of another family, with and without the classifier as a source")
    parser.add_argument("--only", nargs="+", metavar="ARCH", default=None,
                        help="run only the students with these architectures (e.g. efficientnet_b2)")
    parser.add_argument("--warmup", type=int, default=0, help="steps of linear learning-rate warmup for the students "
                        "(default: 0, the protocol's; kaggle-tli's trainer warms up 5%% of a run)")
    args = parser.parse_args(argv)
    out, data = prepare(parser, args)
    workers, threads = split_cores(args.workers, args.threads)
    students = _chosen_students(parser, STUDENT_SETS[args.students], args.only)
    cfg = Config(steps=args.steps, teacher_steps=args.teacher_steps, seeds=tuple(range(args.seeds)),
                 methods=args.methods, students=students, warmup=args.warmup, workers=workers, threads=threads,
                 cache=out.parent / "cache")
    if args.quick:
        cfg = Config(steps=100, teacher_steps=300, seeds=(0,), methods=QUICK_METHODS, students=DEFAULT_STUDENTS[:2],
                     workers=workers, threads=threads, cache=out.parent / "cache", baselines=False)
    start = time.perf_counter()
    curves, teachers = run(data, cfg)
    md = write_results(curves, out)
    print(teachers.to_string(index=False))
    print(md.read_text())
    print(f"\n{time.perf_counter() - start:.0f} s on {workers} worker(s) x {threads} thread(s); results in {out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
