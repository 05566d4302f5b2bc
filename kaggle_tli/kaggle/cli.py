"""The Kaggle subcommands of `kaggle-tli` (bundle, publish, kernel): their parsers and thin handlers.

The face (kaggle_tli/cli.py) adds them with `add_kaggle_commands(sub)`. Importing this module stays cheap (no
torch, no pandas, no `kaggle` client), so `kaggle-tli --help` answers at once.
"""

from __future__ import annotations

import argparse
import json

from .bundle import bundle
from .kernels import render_kernel
from .metadata import DEFAULT_DATASET_LICENSE, DEFAULT_MODEL_LICENSE
from .publish import publish

PUBLISH_TARGETS = (
    "--dataset: a Kaggle dataset, its files versioned as a whole; attach it with `kernel init --weights`.\n"
    "--model: a Kaggle Model (model/pytorch/variation/version), each variation naming its parent run's as its "
    "base; attach it with `kernel init --model`."
)


def cmd_bundle(args: argparse.Namespace) -> int:
    options = {"model_license": args.license} if args.license and args.model else (
        {"license": args.license} if args.license else {})
    path = bundle(args.run, args.output, dataset=args.dataset, runs=args.runs, model=args.model,
                  variation=args.variation, **options)
    print(f"bundle -> {path}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    result = publish(args.run, args.dataset, model=args.model, variation=args.variation, public=args.public,
                     notes=args.message, dry_run=args.dry_run, runs=args.runs, license=args.license)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_kernel_init(args: argparse.Namespace) -> int:
    if not args.weights and not args.model:
        raise ValueError("kernel init needs the weights to attach: --weights OWNER/SLUG (a dataset) and/or "
                         "--model OWNER/MODEL/pytorch/VARIATION/VERSION (a Kaggle Model version)")
    folder = render_kernel(args.template, competition=args.competition, weights=args.weights, gpu=args.gpu,
                           out_dir=args.output, title=args.title, private=not args.public,
                           model_sources=args.model, pin_image=args.pin_image)
    print(f"kernel -> {folder} (push with: kaggle kernels push -p {folder})")
    return 0


def add_kaggle_commands(sub: argparse._SubParsersAction) -> None:
    """bundle, publish, kernel: getting runs onto Kaggle."""
    p = sub.add_parser("bundle", help="a run as a Kaggle weights dataset folder (weights, lineage, wheel)")
    p.add_argument("run")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--dataset", help="OWNER/SLUG for dataset-metadata.json")
    p.add_argument("--model", help="OWNER/MODEL: also write model-metadata.json and model-instance-metadata.json")
    _add_model_options(p)
    p.add_argument("--runs", default=None)
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser("publish", help="create or version a Kaggle dataset or Kaggle Model from a run or bundle",
                       description=PUBLISH_TARGETS, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run id, run directory or bundle folder")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--dataset", help="OWNER/SLUG (default for a bundle: the one it was built for)")
    target.add_argument("--model", help="OWNER/MODEL (default for a bundle built with --model: that model)")
    _add_model_options(p)
    p.add_argument("--public", action="store_true", help="visibility when the dataset or model is created")
    p.add_argument("-m", "--message", default="", help="version notes")
    p.add_argument("--dry-run", action="store_true", help="build and validate only (no credentials, no network)")
    p.add_argument("--runs", default=None)
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("kernel", help="Kaggle kernels from the templates")
    ksub = p.add_subparsers(dest="kernel_command", required=True, metavar="ACTION")
    k = ksub.add_parser("init", help="render a ready-to-push kernel folder")
    k.add_argument("template", help="teacher, iterate or inference")
    k.add_argument("--competition", required=True, help="competition slug")
    k.add_argument("--weights", help="OWNER/SLUG of the weights dataset")
    k.add_argument("--model", action="append", default=[], metavar="OWNER/MODEL/pytorch/VARIATION/VERSION",
                   help="a Kaggle Model version to attach (repeatable); instead of or beside --weights")
    k.add_argument("--pin-image", action="store_true",
                   help="rerun on the image the notebook first ran on (docker_image_pinning_type: original), not "
                   "the newest: for submissions that must not change under you")
    k.add_argument("--gpu", action="store_true")
    k.add_argument("--public", action="store_true")
    k.add_argument("--title", default=None)
    k.add_argument("-o", "--output", required=True)
    k.set_defaults(func=cmd_kernel_init)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variation", help="Kaggle Model variation (default: the run's architecture name, as a slug)")
    p.add_argument("--license", help=f"license of a new dataset (default {DEFAULT_DATASET_LICENSE!r}) or of a new "
                   f"model variation (default {DEFAULT_MODEL_LICENSE!r})")
