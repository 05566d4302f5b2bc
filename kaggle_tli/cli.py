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

# albumentations phones home on import and timm may try the hub: a CLI run is offline unless told otherwise
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# --------------------------------------------------------------------------------------------------- shared options


def _add_data_options(p: argparse.ArgumentParser, *, required: bool) -> None:
    g = p.add_argument_group("data (a Kaggle-shaped competition folder)")
    g.add_argument("--data", required=required, help="competition folder with train.csv" + (
        "" if required else "; unset options keep what the run recorded"))
    g.add_argument("--csv", default=None, help="training CSV inside --data (default: train.csv)")
    g.add_argument("--id-col", default=None, help="id column of an image competition (default: id)")
    g.add_argument("--label-col", default=None, help="label column (default: label)")
    g.add_argument("--image-size", type=int, default=None, help="training image size in pixels (default: 224 "
                   "for image folders, 32 for pixel CSVs)")
    g.add_argument("--folds", type=int, default=None, help="number of CV folds (default: 5)")
    g.add_argument("--format", choices=("auto", "images", "pixels"), default=None,
                   help="images: train.csv + image folder; pixels: one column per pixel (Digit Recognizer)")


_DATA_OPTIONS = ("csv", "id_col", "label_col", "image_size", "folds", "format")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (any TrainConfig field; unset ones keep their default or the parent's)")
    for flag, kind, text in (
        ("--epochs", int, "epochs"),
        ("--batch-size", int, "batch size per process"),
        ("--lr", float, "peak learning rate"),
        ("--max-steps", int, "cap on optimizer steps (quick looks)"),
        ("--fold", int, "validation fold"),
        ("--seed", int, "random seed"),
        ("--time-budget-s", float, "stop cleanly and checkpoint after this many seconds"),
        ("--num-processes", int, "data-parallel processes (2 for Kaggle's T4 x2)"),
    ):
        g.add_argument(flag, type=kind, default=None, help=text)
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other TrainConfig field, e.g. --set ema=true --set optimizer=adam")
    p.add_argument("--runs", default=None, help="runs folder (default: runs/, or beside the parent run)")


def _train_config(args: argparse.Namespace) -> dict[str, Any]:
    cfg = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "max_steps", "fold", "seed",
                                         "time_budget_s", "num_processes") if getattr(args, k, None) is not None}
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: write KEY=VALUE, e.g. --set ema=true")
        cfg[key.replace("-", "_")] = _parse_value(raw)
    return cfg


_BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _parse_value(raw: str) -> Any:
    """A --set value: a boolean word (any case: a string "False" would switch an option on), JSON (numbers,
    lists, null), or else the bare string (optimizer=adam)."""
    if raw.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[raw.strip().lower()]
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _load_data(args: argparse.Namespace, run: str | None = None):
    """The data from the command line; for an existing run, its recorded data options on the new --data root
    unless options are given (so a 32-px run is not silently predicted at 224 px)."""
    from kaggle_tli.data import open_competition, rebuild_data
    from kaggle_tli.runs import load_run

    explicit = any(getattr(args, k) is not None for k in _DATA_OPTIONS)
    if run is not None and not explicit:
        spec = load_run(run, runs=getattr(args, "runs", None)).info.get("data")
        if spec:
            return rebuild_data(spec, root=args.data)
    options = {"id_col": args.id_col, "label_col": args.label_col, "image_size": args.image_size, "folds": args.folds}
    return open_competition(args.data, args.csv or "train.csv", format=args.format or "auto",
                            **{k: v for k, v in options.items() if v is not None})


# --------------------------------------------------------------------------------------------------- handlers


def cmd_finetune(args: argparse.Namespace) -> int:
    from kaggle_tli.stages.finetune import finetune

    run = finetune(args.arch, _load_data(args), runs=args.runs or "runs", **_train_config(args))
    print(f"{run.id}: cv {run.metrics.get('cv')} -> {run.path}")
    return 0


def cmd_iterate(args: argparse.Namespace) -> int:
    from kaggle_tli.stages.iterate import iterate

    data = _load_data(args, run=args.prev_run) if args.data else None
    run = iterate(args.prev_run, args.arch, data, init=args.init, which=args.which,
                  recalibrate=not args.no_recalibrate, refit_head=not args.no_refit_head, runs=args.runs,
                  notes=args.notes, **_transfer_options(args), **_train_config(args))
    if run.report is not None:
        print(run.report.summary())
    print(f"{run.id} (parent {run.parent_id}): cv {run.metrics.get('cv')} -> {run.path}")
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
        print(" <- ".join(f"{r['run_id']} ({r['arch']}, cv {r['cv']})" for r in rows))
    else:
        frame = ledger.to_frame()
        cols = ["run_id", "parent_run_id", "stage", "arch", "init", "tli_score", "coverage", "cv", "status"]
        print(frame[cols].to_string(index=False) if len(frame) else f"{ledger.path}: no runs yet")
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

    test = _load_data(args, run=args.run) if args.data else None
    submission = predict(args.run, test, tta=not args.no_tta, out=args.output)
    print(submission.head().to_string(index=False))
    print(f"{len(submission)} rows")
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


def cmd_bundle(args: argparse.Namespace) -> int:
    from kaggle_tli.kaggle import bundle

    path = bundle(args.run, args.output, dataset=args.dataset, runs=args.runs)
    print(f"bundle -> {path}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from kaggle_tli.kaggle import publish

    result = publish(args.run, args.dataset, public=args.public, notes=args.message, dry_run=args.dry_run,
                     runs=args.runs)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_kernel_init(args: argparse.Namespace) -> int:
    from kaggle_tli.kaggle import render_kernel

    folder = render_kernel(args.template, competition=args.competition, weights=args.weights, gpu=args.gpu,
                           out_dir=args.output, title=args.title, private=not args.public)
    print(f"kernel -> {folder} (push with: kaggle kernels push -p {folder})")
    return 0


BENCHES = ("transfer", "convergence", "norm", "teachers", "overhead", "sweep", "quick")


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
    _add_kaggle_commands(sub)
    return parser


def _add_pipeline_commands(sub: argparse._SubParsersAction) -> None:
    """finetune, iterate, inject, predict: the paper's stages."""
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

    p = sub.add_parser("predict", help="test predictions (hflip TTA, fold average) and submission.csv")
    p.add_argument("run")
    p.add_argument("--no-tta", action="store_true")
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


def _add_kaggle_commands(sub: argparse._SubParsersAction) -> None:
    """bundle, publish, kernel: getting runs onto Kaggle."""
    p = sub.add_parser("bundle", help="a run as a Kaggle weights dataset folder (weights, lineage, wheel)")
    p.add_argument("run")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--dataset", help="OWNER/SLUG for dataset-metadata.json")
    p.add_argument("--runs", default=None)
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser("publish", help="create or version a Kaggle dataset from a run or bundle")
    p.add_argument("run", help="run id, run directory or bundle folder")
    p.add_argument("--dataset", required=True, help="OWNER/SLUG")
    p.add_argument("--public", action="store_true")
    p.add_argument("-m", "--message", default="", help="version notes")
    p.add_argument("--dry-run", action="store_true", help="build and validate only")
    p.add_argument("--runs", default=None)
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("kernel", help="Kaggle kernels from the templates")
    ksub = p.add_subparsers(dest="kernel_command", required=True, metavar="ACTION")
    k = ksub.add_parser("init", help="render a ready-to-push kernel folder")
    k.add_argument("template", help="teacher, iterate or inference")
    k.add_argument("--competition", required=True, help="competition slug")
    k.add_argument("--weights", required=True, help="OWNER/SLUG of the weights dataset")
    k.add_argument("--gpu", action="store_true")
    k.add_argument("--public", action="store_true")
    k.add_argument("--title", default=None)
    k.add_argument("-o", "--output", required=True)
    k.set_defaults(func=cmd_kernel_init)


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
