"""The `transfer` benchmark: TLI's time and coverage per model pair, and the paper's score matrix (Fig. 7).

Each pair is measured next to `iatransfer` 1.0.3 (the paper authors' follow-up toolkit); the TLI-score matrix of the
paper's small models is drawn as a heatmap.

    python -m kaggle_tli.bench.transfer [--quick] [--out DIR] [--pairs TEACHER:STUDENT ...] [--models NAME ...]

writes `transfer.csv`, `transfer.md`, `transfer.png`, `similarity.csv`, `similarity.md` and `similarity.png` into
`--out` (default `bench_out/`) and prints the markdown table.

Protocol: every model is built once, `pretrained=False` (weights do not change what TLI does, and nothing is ever
downloaded); model creation is not timed. A pair's time is the median over `repeats` calls of `transfer()`, each
on a fresh student (its initial weights restored from a snapshot: `transfer` writes in place), after one untimed
warm-up call, so first-call costs (lazy imports, kernel lookups) are left out. `torch.set_num_threads(threads)`
for the run, restored afterwards. Wall time on a shared machine is noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
from matplotlib.figure import Figure
from scipy.cluster.hierarchy import leaves_list, linkage
from scipy.spatial.distance import squareform
from torch import nn
from tqdm.auto import tqdm

from ..models import arch_info, create_model
from ..tli import similarity_matrix, transfer
from ..tli.options import DEFAULTS
from ._report import markdown_table, save_figure, write_table

# The engine issue's pairs: same family deeper/wider, across NAS families, across families, and a ViT.
DEFAULT_PAIRS: tuple[tuple[str, str], ...] = (
    ("resnet50", "resnet101"),
    ("convnext_tiny", "convnext_small"),
    ("spnasnet_100", "mnasnet_100"),
    ("resnet18", "efficientnet_b0"),
    ("vit_tiny_patch16_224", "vit_small_patch16_224"),
    ("resnet18", "resnet34"),
    ("tf_efficientnet_b0", "mnasnet_100"),
    ("efficientnet_b0", "efficientnet_b2"),
    ("mobilenetv3_large_100", "mobilenetv3_small_100"),
    ("regnety_004", "mobilenetv2_100"),
)

# Reference figures, not recomputed here (iatransfer is not a dependency): (seconds, coverage) per pair, 2 threads.
IATRANSFER_LABEL = "iatransfer 1.0.3, measured 2026-11-27 on the 2-core dev machine"
IATRANSFER_1_0_3: dict[tuple[str, str], tuple[float, float]] = {
    ("resnet50", "resnet101"): (0.54, 0.994),
    ("convnext_tiny", "convnext_small"): (0.44, 0.999),
    ("spnasnet_100", "mnasnet_100"): (0.19, 0.957),
    ("resnet18", "efficientnet_b0"): (0.10, 0.342),
    ("vit_tiny_patch16_224", "vit_small_patch16_224"): (0.42, 0.253),
    ("resnet18", "resnet34"): (0.07, 1.000),
    ("tf_efficientnet_b0", "mnasnet_100"): (0.19, 0.993),
    ("efficientnet_b0", "efficientnet_b2"): (0.36, 0.736),
    ("mobilenetv3_large_100", "mobilenetv3_small_100"): (0.14, 0.930),
    ("regnety_004", "mobilenetv2_100"): (0.22, 0.423),
}

# Paper Fig. 7: small timm models (<= ~5.5 M parameters), the paper's ten first, then a few cheap extras.
FIG7_MODELS: tuple[str, ...] = (
    "mnasnet_100", "spnasnet_100", "mobilenetv2_100", "mobilenetv3_large_100", "mobilenetv3_small_100",
    "efficientnet_lite0", "tf_efficientnet_b0", "mixnet_s", "regnetx_002", "ghostnet_100",
    "efficientnet_b0", "semnasnet_100", "mnasnet_small", "mobilenetv2_050", "lcnet_100", "regnety_002",
)
QUICK_FIG7_MODELS: tuple[str, ...] = (
    "mnasnet_100", "spnasnet_100", "tf_efficientnet_b0", "mobilenetv2_100", "mobilenetv3_small_100", "regnetx_002",
)

METHODS = ("copy", "combo", "mix", "zeroed", "init")  # TransferReport's method names
PAIR_COLUMNS = (
    "teacher", "student", "teacher_params_m", "student_params_m",
    "seconds", "seconds_min", "seconds_max", "coverage", "tli_score",
    *(f"n_{m}" for m in METHODS), "n_tensors",
    "iat_seconds", "iat_coverage", "speedup", "coverage_gain", "load_1m",
)


# --------------------------------------------------------------------------------------------------- checks


def _check_positive(**values: int) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


def _check_names(names: Sequence[str]) -> None:
    """Fail before building anything: an unknown name raises UnknownArchError with the closest known names."""
    for name in names:
        arch_info(name)


def _check_pairs(pairs: Sequence[Sequence[str]]) -> list[tuple[str, str]]:
    out = []
    for p in pairs:
        if isinstance(p, str) or len(p) != 2:
            raise ValueError(f"each pair must be (teacher, student), got {p!r}; e.g. ('resnet18', 'resnet34')")
        out.append((str(p[0]), str(p[1])))
    if not out:
        raise ValueError("no model pairs given: pass at least one (teacher, student)")
    _check_names([n for p in out for n in p])
    return out


def _check_models(models: Sequence[str]) -> list[str]:
    names = [models] if isinstance(models, str) else list(models)
    if len(names) < 2:
        raise ValueError(f"a similarity matrix needs at least 2 models, got {names}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"models listed twice: {dupes}; list each model once")
    _check_names(names)
    return names


@contextmanager
def _threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _load_1m() -> float:
    """The 1-minute load average (NaN where the OS has none): wall times mean little when it exceeds the cores."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _params_m(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


# --------------------------------------------------------------------------------------------------- pairs


def run_pairs(pairs: Sequence[Sequence[str]] = DEFAULT_PAIRS, *, repeats: int = 3, threads: int = 2,
              out_dir: str | Path | None = None, num_classes: int = 1000, warmup: int = 1,
              progress: bool = True) -> pd.DataFrame:
    """Time `transfer()` and record its coverage, TLI score and per-method tensor counts for each (teacher, student).

    One row per pair (columns: PAIR_COLUMNS), with iatransfer 1.0.3's reference figures where the pair has them
    (`speedup` = iatransfer seconds / ours, `coverage_gain` = ours - iatransfer's). With `out_dir`, also writes
    `transfer.csv`, `transfer.md` and `transfer.png` there.
    """
    pairs = _check_pairs(pairs)
    _check_positive(repeats=repeats, threads=threads, num_classes=num_classes)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")
    rows = []
    with _threads(threads):
        bar = tqdm(pairs, desc="transfer", unit="pair", disable=not progress)
        for teacher, student in bar:
            bar.set_postfix_str(f"{teacher} -> {student}")
            rows.append(_time_pair(teacher, student, repeats, warmup, num_classes))
    frame = pd.DataFrame(rows, columns=list(PAIR_COLUMNS))
    if out_dir is not None:
        write_pairs(frame, out_dir, repeats=repeats, threads=threads, warmup=warmup)
    return frame


def _time_pair(teacher_name: str, student_name: str, repeats: int, warmup: int, num_classes: int) -> dict:
    teacher = create_model(teacher_name, num_classes)
    student = create_model(student_name, num_classes)
    load = _load_1m()
    initial = {k: v.detach().clone() for k, v in student.state_dict().items()}
    times, report = [], None
    for i in range(warmup + repeats):
        student.load_state_dict(initial)  # a fresh student each call: transfer() writes in place
        start = time.perf_counter()
        report = transfer(teacher, student)
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
    methods = report.methods()
    iat_s, iat_cov = IATRANSFER_1_0_3.get((teacher_name, student_name), (float("nan"), float("nan")))
    seconds = statistics.median(times)
    return dict(
        teacher=teacher_name, student=student_name,
        teacher_params_m=_params_m(teacher), student_params_m=_params_m(student),
        seconds=seconds, seconds_min=min(times), seconds_max=max(times),
        coverage=report.coverage, tli_score=report.score,
        **{f"n_{m}": methods.get(m, 0) for m in METHODS}, n_tensors=len(report.rows),
        iat_seconds=iat_s, iat_coverage=iat_cov,
        speedup=iat_s / seconds if seconds > 0 else float("nan"), coverage_gain=report.coverage - iat_cov,
        load_1m=load,
    )


def pairs_view(frame: pd.DataFrame) -> pd.DataFrame:
    """The human table: one line per pair, ours next to iatransfer's reference figures."""
    return pd.DataFrame({
        "teacher -> student": frame["teacher"] + " -> " + frame["student"],
        "seconds": frame["seconds"],
        "iatransfer s": frame["iat_seconds"],
        "speedup": frame["speedup"],
        "coverage": frame["coverage"],
        "iatransfer cov.": frame["iat_coverage"],
        "TLI score": frame["tli_score"],
        **{m: frame[f"n_{m}"] for m in METHODS},
    })


_VIEW_FORMATS = {"seconds": ".3f", "iatransfer s": ".2f", "speedup": ".1f", "coverage": ".3f",
                 "iatransfer cov.": ".3f", "TLI score": ".3f"}


def pairs_markdown(frame: pd.DataFrame) -> str:
    """`pairs_view(frame)` as a markdown table (what `main` prints)."""
    return markdown_table(pairs_view(frame), _VIEW_FORMATS)


def _environment(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    return (f"{dt.date.today().isoformat()}, torch {torch.__version__}, timm {timm.__version__}, "
            f"{threads} threads, {cpu} with {os.cpu_count()} CPUs")


def _defaults() -> str:
    return ", ".join(f"{k}={v}" for k, v in DEFAULTS.as_dict().items())


def write_pairs(frame: pd.DataFrame, out_dir: str | Path, *, repeats: int, threads: int, warmup: int = 1) -> None:
    """`transfer.csv` (every column), `transfer.md` (the human table and how it was made), `transfer.png`."""
    notes = [
        f"Ours: median of {repeats} `transfer()` calls per pair, each on a fresh student, after {warmup} untimed "
        f"warm-up call(s); model creation excluded; default settings ({_defaults()}). "
        f"{_environment(threads)}; 1-minute load average {frame['load_1m'].min():.1f}-{frame['load_1m'].max():.1f} "
        f"at each pair's start (this run adds up to {threads}; more means other processes competed for the cores "
        "and the times are inflated).",
        f"Reference columns (iatransfer s, iatransfer cov.): {IATRANSFER_LABEL}, 2 threads; not rerun here. "
        "speedup = iatransfer seconds / ours. Coverage = fraction of the student's parameter elements written "
        "from the teacher.",
        "Method columns count student tensors (parameters and buffers): copy = same shape, combo = ComboInjection "
        "(crop + resize), mix = top-k mix, zeroed = extra residual block seeded and zeroed to an identity, "
        "init = left at init.",
    ]
    write_table(frame, out_dir, "transfer", title="transfer: time and coverage per model pair", notes=notes,
                formats=_VIEW_FORMATS, view=pairs_view(frame))
    save_figure(_pairs_figure(frame, threads), Path(out_dir) / "transfer.png")


def _pairs_figure(frame: pd.DataFrame, threads: int) -> Figure:
    labels = (frame["teacher"] + " -> " + frame["student"]).tolist()
    y = np.arange(len(labels))
    h = 0.38
    fig = Figure(figsize=(12, 1.6 + 0.5 * len(labels)), layout="constrained")
    ax_t, ax_c = fig.subplots(1, 2, sharey=True)
    panels = ((ax_t, "seconds", "iat_seconds", f"seconds per transfer ({threads} threads)", "{:.2f}"),
              (ax_c, "coverage", "iat_coverage", "coverage (share of student elements written)", "{:.3f}"))
    for ax, ours, ref, title, fmt in panels:
        ref_values = frame[ref].to_numpy(float)
        mine = ax.barh(y - h / 2, frame[ours].to_numpy(float), h, label="kaggle-tli (ours)", color="tab:blue")
        theirs = ax.barh(y + h / 2, np.nan_to_num(ref_values), h, label=IATRANSFER_LABEL, color="tab:gray")
        ax.bar_label(mine, [fmt.format(v) for v in frame[ours]], padding=2, fontsize="x-small")
        ax.bar_label(theirs, ["n/a" if np.isnan(v) else fmt.format(v) for v in ref_values], padding=2,
                     fontsize="x-small")
        ax.set_title(title, fontsize="medium")
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.12)  # room for the value labels
    ax_t.set_yticks(y, labels)
    ax_t.invert_yaxis()  # first pair on top, as in the table
    handles, names = ax_t.get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=2, fontsize="small")
    return fig


# --------------------------------------------------------------------------------------------------- Fig. 7


def run_similarity(models: Sequence[str] = FIG7_MODELS, *, out_dir: str | Path | None = None,
                   num_classes: int = 1000, threads: int = 2, progress: bool = True) -> pd.DataFrame:
    """The paper's Fig. 7: pairwise TLI scores of `models`, rows and columns in hierarchical-clustering order.

    `frame.attrs` holds `seconds` (tracing + scoring, the timed part), `build_seconds` (model creation) and
    `params_m`. With `out_dir`, also writes `similarity.csv`, `similarity.md` and the heatmap `similarity.png`.
    """
    names = _check_models(models)
    _check_positive(num_classes=num_classes, threads=threads)
    with _threads(threads):
        start = time.perf_counter()
        built = {n: create_model(n, num_classes) for n in tqdm(names, desc="build", disable=not progress)}
        build_seconds = time.perf_counter() - start
        start = time.perf_counter()
        matrix = similarity_matrix(built, progress=progress)
        seconds = time.perf_counter() - start
    order = cluster_order(matrix)
    matrix = matrix.iloc[order, order].copy()
    matrix.attrs.update(seconds=seconds, build_seconds=build_seconds, threads=threads,
                        params_m={n: _params_m(m) for n, m in built.items()})
    if out_dir is not None:
        write_similarity(matrix, out_dir)
    return matrix


def cluster_order(matrix: pd.DataFrame) -> list[int]:
    """Row order that puts similar architectures next to each other: average-linkage clustering on 1 - score,
    leaves in optimal order (so the heatmap shows families as blocks on the diagonal)."""
    dist = 1.0 - matrix.to_numpy(float)
    dist = np.clip((dist + dist.T) / 2, 0.0, None)
    np.fill_diagonal(dist, 0.0)
    if len(dist) < 3:
        return list(range(len(dist)))
    return leaves_list(linkage(squareform(dist, checks=False), method="average", optimal_ordering=True)).tolist()


def write_similarity(matrix: pd.DataFrame, out_dir: str | Path) -> None:
    """`similarity.csv` (the matrix, model names in the first column), `similarity.md`, `similarity.png`."""
    seconds, threads = matrix.attrs.get("seconds", float("nan")), matrix.attrs.get("threads", "?")
    notes = [f"{len(matrix)} timm models (pretrained=False), rows in clustering order; tracing + scoring took "
             f"{seconds:.1f} s on {threads} threads (model creation {matrix.attrs.get('build_seconds', 0):.1f} s "
             f"more). {_environment(threads) + '.' if isinstance(threads, int) else ''}"]
    write_table(matrix.rename_axis("model").reset_index(), out_dir, "similarity",
                title="TLI score matrix (paper Fig. 7)", notes=notes,
                formats={c: ".2f" for c in matrix.columns})
    save_figure(heatmap(matrix), Path(out_dir) / "similarity.png")


def heatmap(matrix: pd.DataFrame, title: str = "TLI score between small timm models (paper Fig. 7)") -> Figure:
    n = len(matrix)
    values = matrix.to_numpy(float)
    params = matrix.attrs.get("params_m", {})
    labels = [f"{m} ({params[m]:.1f}M)" if m in params else m for m in matrix.index]
    fig = Figure(figsize=(2.5 + 0.6 * n, 1.5 + 0.55 * n))
    ax = fig.subplots()
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis")
    size = max(5.0, min(9.0, 110 / n))
    for i in range(n):
        for j in range(n):
            # viridis is dark below ~0.6: white text there, black above
            ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=size,
                    color="white" if values[i, j] < 0.6 else "black")
    ax.set_xticks(range(n), list(matrix.columns), rotation=60, ha="right")
    ax.set_yticks(range(n), labels)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="TLI score")
    seconds = matrix.attrs.get("seconds")
    timing = f", {seconds:.1f} s on {matrix.attrs.get('threads')} threads" if seconds is not None else ""
    ax.set_title(f"{title}{timing}", fontsize="medium")
    return fig


# --------------------------------------------------------------------------------------------------- command


def _pair_arg(text: str) -> tuple[str, str]:
    teacher, sep, student = text.partition(":")
    if not sep or not teacher or not student or ":" in student:
        raise argparse.ArgumentTypeError(f"expected TEACHER:STUDENT such as resnet18:resnet34, got {text!r}")
    return teacher, student


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kaggle_tli.bench.transfer", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 timed call per pair and a 6-model matrix")
    p.add_argument("--out", default="bench_out", help="output folder (default: bench_out)")
    p.add_argument("--pairs", nargs="+", type=_pair_arg, metavar="TEACHER:STUDENT",
                   help="model pairs to time (default: the engine issue's ten pairs)")
    p.add_argument("--models", nargs="+", metavar="NAME", help="models of the similarity matrix (default: Fig. 7's)")
    p.add_argument("--repeats", type=int, help="timed calls per pair, median reported (default 3; 1 with --quick)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2, as the reference figures)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run both parts, write the six files into --out and print the pair table."""
    parser = build_parser()
    args = parser.parse_args(argv)
    pairs = args.pairs or DEFAULT_PAIRS
    models = args.models or (QUICK_FIG7_MODELS if args.quick else FIG7_MODELS)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    try:  # every name and number checked before the first model is built
        _check_pairs(pairs)
        _check_models(models)
        _check_positive(repeats=repeats, threads=args.threads)
    except (KeyError, ValueError) as e:
        parser.error(str(e.args[0]) if e.args else str(e))
    frame = run_pairs(pairs, repeats=repeats, threads=args.threads, out_dir=args.out)
    matrix = run_similarity(models, out_dir=args.out, threads=args.threads)
    print(pairs_markdown(frame))
    print(f"similarity matrix: {len(matrix)} models, {matrix.attrs['seconds']:.1f} s (tracing + scoring, "
          f"{args.threads} threads; model creation {matrix.attrs['build_seconds']:.1f} s more)")
    print(f"written to {Path(args.out).resolve()}: transfer.csv/.md/.png, similarity.csv/.md/.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
