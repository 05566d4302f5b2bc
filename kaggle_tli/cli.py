"""`kaggle-tli`: the pipeline from a terminal (or a `!kaggle-tli ...` notebook cell).

Every subcommand is a thin layer over the public API: parse, call, print. Heavy imports happen inside the handlers,
so `kaggle-tli --help` answers at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kaggle_tli.kaggle.cli import add_kaggle_commands

# albumentations phones home on import and timm may try the hub: a CLI run is offline unless told otherwise
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# --------------------------------------------------------------------------------------------------- shared options


def _add_data_options(p: argparse.ArgumentParser, *, required: bool) -> None:
    g = p.add_argument_group("data (a Kaggle-shaped competition folder)")
    g.add_argument("--data", required=required, help="competition folder with train.csv" + (
        "" if required else "; unset options keep what the run recorded"))
    for flag, kind, text in (
        ("--csv", str, "training CSV inside --data (default: train.csv)"),
        ("--id-col", str, "id column of an image competition (default: id)"),
        ("--label-col", str, "label column (default: label)"),
        ("--label-cols", str, "comma-separated target columns of train.csv (multi-label 0/1 columns or regression "
                              "targets; default: what sample_submission.csv asks for)"),
        ("--image-size", int, "training image size in pixels (default: 224 for image folders, 32 for pixel CSVs)"),
        ("--folds", int, "number of CV folds (default: 5)"),
        ("--image-dir", str, "training image folder inside --data (default: train/, images/, ... whichever exists)"),
        ("--test-dir", str, "test image folder inside --data (default: test/ or test_images/)"),
        ("--sample-submission", str, "sample submission CSV inside --data (default: sample_submission.csv)"),
        ("--cache", str, "'resized': decode and downscale each image once, reused by later epochs and runs"),
    ):
        g.add_argument(flag, type=kind, default=None, help=text)
    g.add_argument("--task", choices=("single_label", "binary", "multilabel", "regression"), default=None,
                   help="the task shape (default: inferred from train.csv and sample_submission.csv)")
    g.add_argument("--format", choices=("auto", "images", "pixels", "folders"), help="images: train.csv + image "
                   "folder; pixels: one column per pixel (Digit Recognizer); folders: train/<class>/, no train.csv")
    g.add_argument("--hflip", action=argparse.BooleanOptionalAction, help="mirror in training and TTA (default: "
                   "on for image folders, off for pixel CSVs)")


_DATA_OPTIONS = ("csv", "id_col", "label_col", "label_cols", "task", "image_size", "folds", "format", "image_dir",
                 "test_dir", "sample_submission", "hflip", "cache")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (any TrainConfig field; unset ones keep their default or the parent's)")
    for flag, kind, text in _TRAIN_FLAGS:
        g.add_argument(flag, type=kind, default=None, help=text)
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other TrainConfig field, e.g. --set ema=true --set optimizer=adam")
    p.add_argument("--runs", default=None, help="runs folder (default: runs/, or beside the parent run)")


_TRAIN_FLAGS = (
    ("--epochs", int, "epochs"),
    ("--batch-size", int, "batch size per process"),
    ("--lr", float, "peak learning rate"),
    ("--max-steps", int, "cap on optimizer steps (quick looks)"),
    ("--fold", int, "validation fold"),
    ("--seed", int, "random seed"),
    ("--time-budget-s", float, "stop cleanly and checkpoint after this many seconds"),
    ("--num-processes", int, "data-parallel processes (2 for Kaggle's T4 x2)"),
    ("--num-workers", int, "data loader processes (default: from the machine's cores)"),
)


def _train_config(args: argparse.Namespace) -> dict[str, Any]:
    from kaggle_tli.train.config import parse_config_value

    names = [flag[2:].replace("-", "_") for flag, _, _ in _TRAIN_FLAGS]
    cfg = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: write KEY=VALUE, e.g. --set ema=true")
        cfg[key.replace("-", "_")] = parse_config_value(raw)
    return cfg


def _load_data(args: argparse.Namespace, run: str | None = None):
    """The data from the command line; for a run, its recorded data options on --data unless options are given."""
    from kaggle_tli.data import open_competition, rebuild_data
    from kaggle_tli.runs import load_run

    explicit = any(getattr(args, k) is not None for k in _DATA_OPTIONS)
    if run is not None and not explicit:
        spec = load_run(run, runs=getattr(args, "runs", None)).info.get("data")
        if spec:
            return rebuild_data(spec, root=args.data)
    options = {k: getattr(args, k) for k in _DATA_OPTIONS if k not in ("csv", "format")}
    if args.label_cols:
        options["label_cols"] = [c.strip() for c in args.label_cols.split(",") if c.strip()]
    return open_competition(args.data, args.csv or "train.csv", format=args.format or "auto",
                            **{k: v for k, v in options.items() if v is not None})


# --------------------------------------------------------------------------------------------------- handlers


def cmd_finetune(args: argparse.Namespace) -> int:
    from kaggle_tli.stages.finetune import finetune

    run = finetune(args.arch, _load_data(args), runs=args.runs or "runs", **_train_config(args))
    print(f"{run.id}: cv {_cv(run)} -> {run.path}")
    return 0


def _cv(run: Any) -> Any:
    cv = run.metrics.get("cv")
    return round(cv, 4) if isinstance(cv, float) else cv  # a summary line: 17 digits are noise


def cmd_iterate(args: argparse.Namespace) -> int:
    from kaggle_tli.stages.iterate import iterate

    data = _load_data(args, run=args.prev_run) if args.data else None
    run = iterate(args.prev_run, args.arch, data, init=args.init, which=args.which,
                  recalibrate=not args.no_recalibrate, refit_head=not args.no_refit_head, runs=args.runs,
                  notes=args.notes, **_transfer_options(args), **_train_config(args))
    if run.report is not None:
        print(run.report.summary())
    print(f"{run.id} (parent {run.parent_id}): cv {_cv(run)} -> {run.path}")
    return 0


def cmd_inject(args: argparse.Namespace) -> int:
    from kaggle_tli.checkpoint import save_weights
    from kaggle_tli.stages.inject import inject

    student, report, spec = inject(args.prev_run, args.arch, which=args.which, **_transfer_options(args))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(student.state_dict(), out, {"arch": spec["name"], "num_classes": spec["num_classes"],
                                             "arch_spec": json.dumps(spec)})
    report.to_csv(out.with_suffix(".transfer.csv"))
    print(report.summary())
    print(f"student weights -> {out}; report -> {out.with_suffix('.transfer.csv')}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from kaggle_tli.models import create_model
    from kaggle_tli.tli import similarity_matrix

    models = {name: create_model(name, num_classes=args.num_classes) for name in args.archs}
    frame = similarity_matrix(models)
    print(frame.round(3).to_string())
    if args.output:
        from kaggle_tli.bench._report import save_figure
        from kaggle_tli.bench.similarity import heatmap

        print(f"heatmap -> {save_figure(heatmap(frame, title='TLI score'), args.output)}")
    return 0


def cmd_ledger(args: argparse.Namespace) -> int:
    from kaggle_tli.ledger import Ledger

    ledger = Ledger(args.runs)
    if args.import_from:
        print(f"imported {ledger.import_rows(args.import_from)} rows from {args.import_from}")
    if args.lineage:
        rows = _lineage(ledger, args.lineage)
        print(" <- ".join(f"{r['run_id']} ({r['arch']}, cv {r['cv'] and round(r['cv'], 4)})" for r in rows))
    else:
        frame = ledger.to_frame()
        cols = ["run_id", "parent_run_id", "stage", "arch", "init", "tli_score", "coverage", "cv", "status"]
        print(frame[cols].round(4).to_string(index=False) if len(frame) else f"{ledger.path}: no runs yet")
    for problem in ledger.problems:
        print(f"warning: {problem}", file=sys.stderr)
    if args.plot:
        print(f"lineage plot -> {ledger.plot_lineage(args.plot, run_id=args.lineage)}")
    return 0


def _lineage(ledger: Any, run_id: str) -> list[dict]:
    try:
        return ledger.lineage(run_id)
    except KeyError as e:  # the ledger's "no such run": the user's to fix, not a traceback
        known = [row["run_id"] for row in ledger.rows()][-5:]
        raise ValueError(f"{e.args[0]}; the last runs there: {known or 'none'} (kaggle-tli ledger --runs "
                         f"{ledger.path.parent} lists them all)") from e


def cmd_predict(args: argparse.Namespace) -> int:
    from kaggle_tli.stages.predict import predict

    test = _load_data(args, run=args.run[0]) if args.data else None
    runs = args.run if len(args.run) > 1 else args.run[0]
    tta = False if args.no_tta else (args.tta.split(",") if args.tta and args.tta != "all" else args.tta or True)
    submission = predict(runs, test, tta=tta, out=args.output, weights=args.weights)
    print(submission.head().round(4).to_string(index=False))
    print(f"{len(submission)} rows")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from kaggle_tli.stages.resume import resume

    run = resume(args.run, _load_data(args, run=args.run), runs=args.runs, **_train_config(args))
    print(f"{run.id}: {run.status}, cv {_cv(run)} -> {run.path}")
    return 0


def cmd_archs(args: argparse.Namespace) -> int:
    from kaggle_tli.models import list_archs

    print("\n".join(list_archs(args.pattern, include_timm=args.timm)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from kaggle_tli.demo import run_demo

    run_demo(Path(args.out), quick=args.quick)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    module = importlib.import_module(f"kaggle_tli.bench.{args.which}")
    return int(module.main(args.rest) or 0)


BENCHES = ("transfer", "convergence", "norm", "teachers", "overhead", "sweep", "quick", "data", "layout", "precise")


# --------------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kaggle-tli", description="Transfer Learning by Injection for Kaggle.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE_OR_FILE",
                        help="import a module or .py file that registers architectures (@register_arch, "
                        "register_edit) before the command runs; repeatable")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_pipeline_commands(sub)
    _add_tool_commands(sub)
    add_kaggle_commands(sub)
    return parser


def _add_pipeline_commands(sub: argparse._SubParsersAction) -> None:
    """finetune, iterate, inject, resume, predict: the paper's stages."""
    p = sub.add_parser("finetune", help="stage 1: train a baseline teacher")
    p.add_argument("arch", help="registered or timm architecture name")
    _add_data_options(p, required=True)
    _add_train_options(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("iterate", help="stages 3+4: inject a run into a new architecture and train it")
    p.add_argument("prev_run", help="run id, run directory or bundle")
    p.add_argument("arch", help="the new architecture (registered or timm name)")
    _add_transfer_options(p)
    p.add_argument("--init", choices=("tli", "kaiming"), default="tli")
    p.add_argument("--no-recalibrate", action="store_true", help="keep the injected BatchNorm statistics")
    p.add_argument("--no-refit-head", action="store_true",
                   help="keep the injected classifier even where a linear probe on a few batches predicts better")
    p.add_argument("--notes", default="", help="free text for the ledger")
    _add_data_options(p, required=False)
    _add_train_options(p)
    p.set_defaults(func=cmd_iterate)

    p = sub.add_parser("inject", help="stage 3 only: write the injected student's weights and the TLI report")
    p.add_argument("prev_run")
    p.add_argument("arch")
    p.add_argument("-o", "--output", default="student.safetensors")
    _add_transfer_options(p)
    p.set_defaults(func=cmd_inject)

    p = sub.add_parser("resume", help="continue an interrupted run in place (a finished one: a child run)")
    p.add_argument("run", help="run id or run directory")
    _add_data_options(p, required=False)
    _add_train_options(p)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("predict", help="test predictions (TTA, fold mean), submission.csv; several runs: a blend")
    p.add_argument("run", nargs="+", metavar="RUN", help="a run, or several to blend")
    p.add_argument("--weights", help="blend weights: 'fit' (on the runs' common OOF rows), or 0.7,0.3 (default: equal)")
    p.add_argument("--no-tta", action="store_true")
    p.add_argument("--tta", default=None, metavar="VIEWS",
                   help="flips averaged with the image: comma-separated hflip, vflip, hvflip, or all (default: hflip "
                   "where the data allows mirroring)")
    p.add_argument("-o", "--output", default=None, help="submission path (default: <run>/submission.csv)")
    _add_data_options(p, required=False)
    p.set_defaults(func=cmd_predict)


def _add_tool_commands(sub: argparse._SubParsersAction) -> None:
    """score, ledger, archs, demo, bench: looking at architectures and runs."""
    p = sub.add_parser("score", help="TLI scores between architectures (a heatmap with -o)")
    p.add_argument("archs", nargs="+", help="two or more architecture names")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("-o", "--output", help="heatmap PNG")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("ledger", help="the runs table, a run's lineage, the lineage plot")
    p.add_argument("--runs", default="runs", help="runs folder or ledger.csv (default: %(default)s)")
    p.add_argument("--lineage", metavar="RUN_ID", help="walk this run's parents to the root")
    p.add_argument("--plot", metavar="PNG", help="save the lineage plot")
    p.add_argument("--import", dest="import_from", metavar="LEDGER", help="import rows from another ledger")
    p.set_defaults(func=cmd_ledger)

    p = sub.add_parser("archs", help="list registered architectures")
    p.add_argument("pattern", nargs="?", default="*")
    p.add_argument("--timm", action="store_true", help="include timm's models")
    p.set_defaults(func=cmd_archs)

    p = sub.add_parser("demo", help="the whole pipeline on scikit-learn's digits, offline, in a few minutes")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--quick", action="store_true", help="fewer steps (a smoke test)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="benchmarks: " + ", ".join(BENCHES),
                       description="Run `kaggle-tli bench NAME --help` for a benchmark's own options.")
    p.add_argument("which", choices=BENCHES)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the benchmark")
    p.set_defaults(func=cmd_bench)


def _add_transfer_options(p: argparse.ArgumentParser) -> None:
    """The TLI flags. They default to None, meaning "the engine's default" (kaggle_tli.TransferOptions, the one
    record of them): `--help` stays fast (no torch), and no default is written twice."""
    g = p.add_argument_group("TLI (defaults: kaggle_tli.TransferOptions)")
    g.add_argument("--which", choices=("last", "best", "ema"), default="last", help="which weights of the run")
    g.add_argument("--method", choices=("auto", "combo"),
                   help="auto: a student that is the teacher grown wider/deeper keeps its function, ComboInjection "
                        "elsewhere (default); combo: ComboInjection everywhere")
    g.add_argument("--lam", type=float, help="ComboInjection: crop share")
    g.add_argument("--top-k", type=int, help="mix the k best teacher tensors where no block matches for sure")
    g.add_argument("--no-norm", action="store_true", help="leave normalisation layers at init")
    g.add_argument("--no-head-as-source", action="store_true",
                   help="across families, keep the teacher's classifier for the student's classifier alone")
    g.add_argument("--extra-blocks", choices=("identity", "copy"),
                   help="a deeper student's extra blocks: identity (keeps the function, default) or whole copies")
    g.add_argument("--activation-scale", type=float,
                   help="a student with SiLU/GELU where the teacher had ReLU: scale norms by this so the activations "
                        "act like the teacher's ReLU (1 = off)")
    g.add_argument("--growth-jitter", type=float, help="how unevenly duplicated channels split their fan-out")


def _transfer_options(args: argparse.Namespace) -> dict:
    """The TLI options given on the command line (the engine checks them and fills in the rest)."""
    given = dict(method=args.method, lam=args.lam, top_k=args.top_k, extra_blocks=args.extra_blocks,
                 activation_scale=args.activation_scale, growth_jitter=args.growth_jitter)
    if args.no_norm:
        given["transfer_norm"] = False
    if args.no_head_as_source:
        given["head_as_source"] = False
    return {k: v for k, v in given.items() if v is not None}


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix: printed as one message, not a traceback. (TypeError: an unknown
    training option; the rest are kaggle-tli's own errors or missing/unreadable files.)"""
    from kaggle_tli.checkpoint import UnsafeCheckpointError
    from kaggle_tli.models import ArchBuildError, UnknownArchError
    from kaggle_tli.tli import TraceError
    from kaggle_tli.train import RunBusyError

    # FileExistsError: an output folder that is not empty; Not/IsADirectoryError: a file where a folder goes
    errors: list[type[BaseException]] = [FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
                                         PermissionError, ValueError, TypeError, UnknownArchError, ArchBuildError,
                                         TraceError, UnsafeCheckpointError, RunBusyError]
    try:
        from kaggle_tli.kaggle import KaggleError

        errors.append(KaggleError)
    except ImportError:
        pass
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.imports:
            from kaggle_tli.models import import_archs

            for source in args.imports:
                print(f"registered from {source}: {', '.join(import_archs(source)) or 'nothing'}", file=sys.stderr)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _user_errors() as e:
        if args.debug or os.environ.get("KAGGLE_TLI_DEBUG"):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e  # KeyError's str() adds quotes
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
