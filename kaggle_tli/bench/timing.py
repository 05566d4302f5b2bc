"""Timing on a shared machine: the thread count, the load, where figures were made, and the arguments' checks.

torch's thread count is held for a run and restored; the 1-minute load average says how much other work competed;
`environment` is the line that says where figures were made; the checks run before the first model is built.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import timm
import torch
from torch import nn

from ..models import arch_info


def check_positive(**values: int) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


def check_names(names: Sequence[str]) -> None:
    """Fail before building anything: an unknown name raises UnknownArchError with the closest known names."""
    for name in names:
        arch_info(name)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """`torch.set_num_threads(n)` for the block, the previous count restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def load_1m() -> float:
    """The 1-minute load average (NaN where the OS has none): wall times mean little when it exceeds the cores."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def params_m(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def environment(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    return (f"{dt.date.today().isoformat()}, torch {torch.__version__}, timm {timm.__version__}, "
            f"{threads} threads, {cpu} with {os.cpu_count()} CPUs")
