"""The `transfer` benchmark: TLI's time and coverage per model pair, and the paper's score matrix (Fig. 7).

Each pair is measured next to `iatransfer` 1.0.3 (the paper authors' follow-up toolkit) where it is importable,
and next to an earlier kaggle_tli engine with `--previous-engine DIR` (bench/rivals.py); the TLI-score matrix of the
paper's small models is drawn as a heatmap.

    python -m kaggle_tli.bench.transfer [--quick] [--out DIR] [--pairs TEACHER:STUDENT ...] [--models NAME ...]
                                        [--previous-engine DIR] [--no-matrix]

writes `transfer.csv`, `transfer.md`, `transfer.png`, `similarity.csv`, `similarity.md` and `similarity.png` into
`--out` (default `bench_out/`) and prints the markdown table.

Protocol: every model is built once, `pretrained=False` (weights do not change what TLI does, and nothing is ever
downloaded); model creation is not timed. A pair's time is the median over `repeats` calls of `transfer()`, each
on a fresh student (its initial weights restored from a snapshot: `transfer` writes in place), after one untimed
warm-up call, so first-call costs (lazy imports, kernel lookups) are left out. The rivals' calls alternate with
ours, pair by pair and call by call, so all of them see the same load. `torch.set_num_threads(threads)` for the run,
restored afterwards. Wall time on a shared machine is noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from ..models import create_model
from ..tli import transfer
from ..tli.options import DEFAULTS
from ._report import markdown_table, save_figure, write_table
from .rivals import EngineProcess, Init, determined_share, iatransfer_init
from .similarity import FIG7_MODELS, QUICK_FIG7_MODELS, check_models, run_similarity
from .timing import check_names, check_positive, environment, load_1m, params_m, torch_threads

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

METHODS = ("copy", "grow", "combo", "mix", "zeroed", "identity", "init")  # TransferReport's method names
PAIR_COLUMNS = (
    "teacher", "student", "teacher_params_m", "student_params_m",
    "seconds", "seconds_min", "seconds_max", "coverage", "blended", "tli_score",
    *(f"n_{m}" for m in METHODS), "n_tensors",
    "iat_seconds", "iat_coverage", "speedup", "coverage_gain", "prev_seconds", "prev_ratio", "load_1m",
)
IATRANSFER_LABEL = "iatransfer 1.0.3"


# --------------------------------------------------------------------------------------------------- pairs


def _check_pairs(pairs: Sequence[Sequence[str]]) -> list[tuple[str, str]]:
    out = []
    for p in pairs:
        if isinstance(p, str) or len(p) != 2:
            raise ValueError(f"each pair must be (teacher, student), got {p!r}; e.g. ('resnet18', 'resnet34')")
        out.append((str(p[0]), str(p[1])))
    if not out:
        raise ValueError("no model pairs given: pass at least one (teacher, student)")
    check_names([n for p in out for n in p])
    return out


def run_pairs(pairs: Sequence[Sequence[str]] = DEFAULT_PAIRS, *, repeats: int = 3, threads: int = 2,
              out_dir: str | Path | None = None, num_classes: int = 1000, warmup: int = 1,
              progress: bool = True, baseline: Init | None | str = "iatransfer",
              previous_engine: str | Path | None = None) -> pd.DataFrame:
    """Time `transfer()` and record its coverage, TLI score and per-method tensor counts for each (teacher, student),
    next to its rivals, called in turn on the same pairs so that they share the machine's load.

    baseline: "iatransfer" (where importable; its columns stay NaN where not), None, or any init function
    (student, teacher): its median seconds, and the share of student elements it sets from the teacher alone
    (`rivals.determined_share`). `speedup` = baseline seconds / ours, `coverage_gain` = ours - the baseline's.
    previous_engine: a folder holding an earlier kaggle_tli package, timed in its own process (`prev_seconds`,
    `prev_ratio` = ours / its). One row per pair (columns: PAIR_COLUMNS); with `out_dir`, also writes
    `transfer.csv`, `transfer.md` and `transfer.png` there.
    """
    pairs = _check_pairs(pairs)
    check_positive(repeats=repeats, threads=threads, num_classes=num_classes)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")
    rival = iatransfer_init() if baseline == "iatransfer" else baseline
    rows = []
    with torch_threads(threads), _engine(previous_engine, threads) as previous:
        bar = tqdm(pairs, desc="transfer", unit="pair", disable=not progress)
        for teacher, student in bar:
            bar.set_postfix_str(f"{teacher} -> {student}")
            rows.append(_time_pair(teacher, student, repeats, warmup, num_classes, rival, previous))
    frame = pd.DataFrame(rows, columns=list(PAIR_COLUMNS))
    frame.attrs["baseline"] = _baseline_name(baseline, rival)
    if out_dir is not None:
        write_pairs(frame, out_dir, repeats=repeats, threads=threads, warmup=warmup)
    return frame


def _baseline_name(baseline, rival) -> str:
    if rival is None:
        return "" if baseline is None else f"{IATRANSFER_LABEL} not importable here: its columns are empty"
    return IATRANSFER_LABEL if baseline == "iatransfer" else getattr(rival, "__name__", "baseline")


@contextmanager
def _engine(folder: str | Path | None, threads: int) -> Iterator[EngineProcess | None]:
    if folder is None:
        yield None
        return
    with EngineProcess(folder, threads) as process:
        yield process


def _time_pair(teacher_name: str, student_name: str, repeats: int, warmup: int, num_classes: int,
               rival: Init | None, previous: EngineProcess | None) -> dict:
    teacher = create_model(teacher_name, num_classes)
    student = create_model(student_name, num_classes)
    load = load_1m()
    initial = {k: v.detach().clone() for k, v in student.state_dict().items()}
    times, rival_times, previous_times, report = [], [], [], None
    for i in range(warmup + repeats):  # ours, the baseline and the earlier engine in turn: the same load for each
        student.load_state_dict(initial)  # a fresh student each call: a transfer writes in place
        start = time.perf_counter()
        report = transfer(teacher, student)
        elapsed = time.perf_counter() - start
        if rival is not None:
            student.load_state_dict(initial)
            start = time.perf_counter()
            rival(student, teacher)
            rival_elapsed = time.perf_counter() - start
        prev = previous.seconds(teacher_name, student_name, num_classes) if previous is not None else None
        if i >= warmup:
            times.append(elapsed)
            rival_times += [rival_elapsed] if rival is not None else []
            previous_times += [prev] if prev is not None else []
    student.load_state_dict(initial)
    methods = report.methods()
    nan = float("nan")
    iat_s = statistics.median(rival_times) if rival_times else nan
    iat_cov = determined_share(rival, teacher, student) if rival is not None else nan
    prev_s = statistics.median(previous_times) if previous_times else nan
    seconds = statistics.median(times)
    return dict(
        teacher=teacher_name, student=student_name,
        teacher_params_m=params_m(teacher), student_params_m=params_m(student),
        seconds=seconds, seconds_min=min(times), seconds_max=max(times),
        coverage=report.coverage, blended=report.blended, tli_score=report.score,
        **{f"n_{m}": methods.get(m, 0) for m in METHODS}, n_tensors=len(report.rows),
        iat_seconds=iat_s, iat_coverage=iat_cov,
        speedup=iat_s / seconds if seconds > 0 else nan, coverage_gain=report.coverage - iat_cov,
        prev_seconds=prev_s, prev_ratio=seconds / prev_s, load_1m=load,
    )


def pairs_view(frame: pd.DataFrame) -> pd.DataFrame:
    """The human table: one line per pair, ours next to the baseline's and the earlier engine's (where run)."""
    previous = {} if frame["prev_seconds"].isna().all() else {
        "previous engine s": frame["prev_seconds"], "ours / previous": frame["prev_ratio"]}
    return pd.DataFrame({
        "teacher -> student": frame["teacher"] + " -> " + frame["student"],
        "seconds": frame["seconds"],
        "iatransfer s": frame["iat_seconds"],
        "speedup": frame["speedup"],
        **previous,
        "coverage": frame["coverage"],
        "blended": frame["blended"],
        "iatransfer cov.": frame["iat_coverage"],
        "TLI score": frame["tli_score"],
        **{m: frame[f"n_{m}"] for m in METHODS},
    })


_VIEW_FORMATS = {"seconds": ".3f", "iatransfer s": ".3f", "speedup": ".1f", "previous engine s": ".3f",
                 "ours / previous": ".2f", "coverage": ".3f", "blended": ".3f", "iatransfer cov.": ".3f",
                 "TLI score": ".3f"}


def pairs_markdown(frame: pd.DataFrame) -> str:
    """`pairs_view(frame)` as a markdown table (what `main` prints)."""
    return markdown_table(pairs_view(frame), _VIEW_FORMATS)


def _defaults() -> str:
    return ", ".join(f"{k}={v}" for k, v in DEFAULTS.as_dict().items())


def write_pairs(frame: pd.DataFrame, out_dir: str | Path, *, repeats: int, threads: int, warmup: int = 1) -> None:
    """`transfer.csv` (every column), `transfer.md` (the human table and how it was made), `transfer.png`."""
    notes = [
        f"Ours: median of {repeats} `transfer()` calls per pair, each on a fresh student, after {warmup} untimed "
        f"warm-up call(s); model creation excluded; default settings ({_defaults()}). "
        f"{environment(threads)}; 1-minute load average {frame['load_1m'].min():.1f}-{frame['load_1m'].max():.1f} "
        f"at each pair's start (this run adds up to {threads}; more means other processes competed for the cores "
        "and the times are inflated).",
        f"Baseline columns (iatransfer s, iatransfer cov.): {frame.attrs.get('baseline') or 'none run'}, timed "
        "the same way in the same run, each call right after ours on the same pair; speedup = its seconds / ours. "
        "previous engine s: an earlier kaggle_tli engine in its own process, called right after (where run).",
        "coverage = share of the student's parameter elements the teacher alone determines (the same whatever the "
        "student's init); blended = share that mixes teacher values with the student's init (ComboInjection's crop "
        "margin); the rest is left at init. iatransfer cov. = the same 'teacher alone' share, measured by running "
        "it on two students shifted apart and counting the elements that agree (the probe that checks ours).",
        "Method columns count student tensors (parameters and buffers): copy = same shape, grow = widened so the "
        "function is kept, combo = ComboInjection (crop + resize), mix = top-k mix, zeroed = extra residual block "
        "zeroed to an identity, identity = shortcut set to the identity, init = left at init.",
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
              (ax_c, "coverage", "iat_coverage", "coverage (share the teacher alone determines)", "{:.3f}"))
    for ax, ours, ref, title, fmt in panels:
        ref_values = frame[ref].to_numpy(float)
        mine = ax.barh(y - h / 2, frame[ours].to_numpy(float), h, label="kaggle-tli (ours)", color="tab:blue")
        theirs = ax.barh(y + h / 2, np.nan_to_num(ref_values), h, label=frame.attrs.get("baseline") or "baseline",
                         color="tab:gray")
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
    p.add_argument("--previous-engine", metavar="DIR",
                   help="also time an earlier engine: a folder holding its kaggle_tli package "
                        "(git archive <commit> kaggle_tli | tar -x -C DIR)")
    p.add_argument("--no-matrix", action="store_true", help="time the pairs only, without the similarity matrix")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run both parts (the pairs only with --no-matrix), write their files into --out and print the pair table."""
    parser = build_parser()
    args = parser.parse_args(argv)
    pairs = args.pairs or DEFAULT_PAIRS
    models = args.models or (QUICK_FIG7_MODELS if args.quick else FIG7_MODELS)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    try:  # every name and number checked before the first model is built
        _check_pairs(pairs)
        check_models(models)
        check_positive(repeats=repeats, threads=args.threads)
    except (KeyError, ValueError) as e:
        parser.error(str(e.args[0]) if e.args else str(e))
    if args.previous_engine is not None and not (Path(args.previous_engine) / "kaggle_tli" / "tli").is_dir():
        parser.error(f"--previous-engine {args.previous_engine}: no kaggle_tli/tli/ there; make one with "
                     f"git archive <commit> kaggle_tli | tar -x -C {args.previous_engine}")
    frame = run_pairs(pairs, repeats=repeats, threads=args.threads, out_dir=args.out,
                      previous_engine=args.previous_engine)
    print(pairs_markdown(frame))
    written = "transfer.csv/.md/.png"
    if not args.no_matrix:
        matrix = run_similarity(models, out_dir=args.out, threads=args.threads)
        print(f"similarity matrix: {len(matrix)} models, {matrix.attrs['seconds']:.1f} s (tracing + scoring, "
              f"{args.threads} threads; model creation {matrix.attrs['build_seconds']:.1f} s more)")
        written += ", similarity.csv/.md/.png"
    print(f"written to {Path(args.out).resolve()}: {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
