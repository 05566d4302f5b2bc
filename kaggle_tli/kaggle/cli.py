"""The Kaggle subcommands of `kaggle-tli` (bundle, publish, kernel): their parsers and thin handlers.

The face (kaggle_tli/cli.py) adds them with `add_kaggle_commands(sub)`. Importing this module stays cheap (no
torch, no pandas, no `kaggle` client), so `kaggle-tli --help` answers at once.
"""

from __future__ import annotations

import argparse
import json

from .bundle import bundle
from .kernels import render_kernel
from .publish import publish


def cmd_bundle(args: argparse.Namespace) -> int:
    path = bundle(args.run, args.output, dataset=args.dataset, runs=args.runs)
    print(f"bundle -> {path}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    result = publish(args.run, args.dataset, public=args.public, notes=args.message, dry_run=args.dry_run,
                     runs=args.runs)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_kernel_init(args: argparse.Namespace) -> int:
    folder = render_kernel(args.template, competition=args.competition, weights=args.weights, gpu=args.gpu,
                           out_dir=args.output, title=args.title, private=not args.public)
    print(f"kernel -> {folder} (push with: kaggle kernels push -p {folder})")
    return 0


def add_kaggle_commands(sub: argparse._SubParsersAction) -> None:
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
