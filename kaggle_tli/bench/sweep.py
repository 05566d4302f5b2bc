"""The integrity sweep: one architecture of every timm family transferred onto itself, checked exactly.

For each family (a timm model module) the smallest of its first architectures (sized on the meta device) that
builds with `pretrained=False` under `--max-params` and runs at `--size` px (ViT-like models are built for that
size) is taken. Teacher (seed 0)
and student (seed 1) are the same architecture, so a correct transfer leaves the student computing exactly the
teacher's logits, the teacher bit-identical, and no tensor on the meta device. Each family ends as one of:

    exact      logits equal (relative error <= 1e-5), teacher unchanged
    inexact    the transfer ran, but the student computes something else (the row gives the error)
    refused    the transfer raised with a message (TraceError, TransferIntegrityError, ...): the row quotes it
    skipped    no architecture of the family builds or runs at that size here

Writes sweep.csv and sweep.md into --out. This is a benchmark, not a test: a full sweep builds about 300 models
(minutes); `make test` runs the same checks on a pinned list of families chosen for their traps
(tests/test_tli_guard.py).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import timm
import torch
from tqdm.auto import tqdm

from ..tli import transfer
from ._report import prepare_dir, write_table

_SIZED_PER_FAMILY = 40  # architectures of a family sized on the meta device, in timm's order
_TRIES_PER_FAMILY = 4  # the smallest of them tried for real before a family counts as skipped


def _build(name: str, size: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=10, img_size=size)
    except TypeError:  # no img_size argument: a convolutional model takes any size
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, num_classes=10)
    return model.eval()


def _meta_params(name: str, size: int) -> float:
    """Parameter count from a build on the meta device (no memory, no init): inf where it does not build."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(sum(p.numel() for p in _build(name, size, 0).parameters()))
    except Exception:  # noqa: BLE001 - a model that does not build is simply not a candidate
        return float("inf")


def _candidate(family: str, size: int, max_params: float) -> tuple[str, str]:
    """(architecture, "") for the smallest of the family's first architectures that runs, or ("", why none did)."""
    names = timm.list_models(module=family)[:_SIZED_PER_FAMILY]
    sized = sorted((n, name) for name in names if (n := _meta_params(name, size)) <= max_params)
    why = f"none of {len(names)} builds under {max_params / 1e6:.0f} M parameters" if names else "no architecture"
    x = torch.randn(1, 3, size, size)
    for _, name in sized[:_TRIES_PER_FAMILY]:
        try:
            with torch.no_grad():
                _build(name, size, 0)(x)
            return name, ""
        except Exception as e:  # noqa: BLE001 - a model that cannot run here is skipped, with the reason kept
            why = f"{name}: {type(e).__name__}: {str(e)[:120]}"
    return "", why


def check_family(family: str, size: int, max_params: float) -> dict:
    """One row: the family, its architecture, the outcome and what was measured."""
    name, why = _candidate(family, size, max_params)
    if not name:
        return dict(family=family, arch="", outcome="skipped", error=None, seconds=None, detail=why)
    teacher, student = _build(name, size, 0), _build(name, size, 1)
    before = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    start = time.perf_counter()
    try:
        transfer(teacher, student, input_size=(3, size, size))
    except Exception as e:  # noqa: BLE001 - the sweep records every refusal, with its message
        return dict(family=family, arch=name, outcome="refused", error=None, seconds=None,
                    detail=f"{type(e).__name__}: {str(e)[:300]}")
    seconds = time.perf_counter() - start
    changed = [k for k, v in teacher.state_dict().items() if not torch.equal(v, before[k])]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = teacher(x), student(x)
    if isinstance(want, (tuple, list)):
        want, got = want[0], got[0]
    error = float((got - want).norm() / want.norm().clamp_min(1e-12))
    exact = error <= 1e-5 and not changed
    detail = f"teacher changed: {changed[:3]}" if changed else ""
    return dict(family=family, arch=name, outcome="exact" if exact else "inexact", error=error, seconds=seconds,
                detail=detail)


def run_sweep(families: Sequence[str], *, size: int, max_params: float, out_dir: str | Path) -> pd.DataFrame:
    """Check every family, writing the table after each one (an interrupted sweep keeps what it found)."""
    out = prepare_dir(out_dir)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for family in tqdm(families, desc="families"):
            rows.append(check_family(family, size, max_params))
            frame = pd.DataFrame(rows)
            write_table(frame, out, "sweep", formats={"error": ".1e", "seconds": ".2f"})
    return frame


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kaggle-tli bench sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--families", nargs="*", help="timm model modules to check (default: every one)")
    p.add_argument("--size", type=int, default=64, help="input size in px (default 64)")
    p.add_argument("--max-params", type=float, default=60e6, help="largest model to build (default 60e6)")
    p.add_argument("--out", default="bench_out/sweep", help="output folder")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep, print the outcome counts and the rows that are not exact."""
    parser = build_parser()
    args = parser.parse_args(argv)
    known = timm.list_modules()
    families = args.families or known
    unknown = [f for f in families if f not in known]
    if unknown:
        parser.error(f"unknown timm families {unknown}; see timm.list_modules()")
    if args.size < 16 or args.max_params <= 0:
        parser.error("--size must be at least 16 and --max-params positive")
    frame = run_sweep(families, size=args.size, max_params=args.max_params, out_dir=args.out)
    print(frame["outcome"].value_counts().to_string())
    print(frame[frame["outcome"].isin(["inexact", "refused"])].to_string(index=False))
    print(f"written to {Path(args.out).resolve()}: sweep.csv, sweep.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
