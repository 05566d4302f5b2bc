"""The command-line options every training benchmark shares, and the output folder and data they choose."""

from __future__ import annotations

import argparse
from pathlib import Path

from .arrays import ArrayData, load_fashion_mnist, load_folder


def bench_parser(name: str, doc: str | None, out: str) -> argparse.ArgumentParser:
    """The options every training benchmark shares: --data, --out, --workers, --threads."""
    parser = argparse.ArgumentParser(prog=f"kaggle-tli bench {name}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a Kaggle-shaped competition folder instead of Fashion-MNIST")
    parser.add_argument("--out", default=out, help="output folder (default: %(default)s)")
    parser.add_argument("--workers", type=int, help="processes running independent training runs side by side "
                        "(default: one per core, divided by --threads)")
    parser.add_argument("--threads", type=int, help="torch CPU threads per worker (default: cores / workers)")
    return parser


def prepare(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Path, ArrayData]:
    """The output folder (created) and the data; a missing dataset ends the command with the fix."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        data = load_folder(args.data) if args.data else load_fashion_mnist()
    except FileNotFoundError as e:
        parser.exit(2, f"error: {e}\n")
    return out, data

