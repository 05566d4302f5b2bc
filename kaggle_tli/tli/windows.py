"""Whole-window averaging: the axes of a resize that shrink by a whole factor, in stages many layers share.

A 3x3 kernel to 1x1, 1280 channels to 320: each such axis is averaged over its windows, in stages that many student
layers share (inject.ResizeCache keeps each stage's result).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def shrink_whole_windows(x: Tensor, shape: Sequence[int],
                          keep: Callable[[tuple, Callable[[], Tensor]], Tensor] | None = None) -> Tensor:
    """Every axis that shrinks by a whole factor (a 3x3 kernel to 1x1, 1280 channels to 320), averaged over its
    windows, in stages (_window_stages). `keep(shape after the stage, make)`: where the caller keeps each stage's
    result (ResizeCache), so that a teacher kernel averaged over its input channels serves every depthwise student
    layer, whatever its channels."""
    after = tuple(t if t < n and n % t == 0 else n for n, t in zip(x.shape, shape, strict=True))
    for stage in _window_stages(tuple(x.shape), after):
        def make(x=x, stage=stage) -> Tensor:
            return _average_windows(x, stage)
        x = keep(stage, make) if keep is not None else make()
    return x


def _window_stages(shape: tuple[int, ...], after: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The shapes after each averaging stage, the ones most student layers share first: the trailing axes that go to
    1 together (a kernel to 1x1), then each other axis that goes to 1, then each remaining whole-factor axis."""
    stages, current = [], list(shape)
    whole = len(shape)
    while whole > 0 and after[whole - 1] == 1:
        whole -= 1
    if any(n != 1 for n in shape[whole:]):
        current[whole:] = [1] * (len(shape) - whole)
        stages.append(tuple(current))
    for to_one in (True, False):
        for d in range(whole):
            if after[d] < current[d] and (after[d] == 1) == to_one:
                current[d] = after[d]
                stages.append(tuple(current))
    return stages


def _average_windows(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    """`x` averaged over whole windows to `shape` along the axes that differ: trailing axes that all go to 1 as a
    matrix product (torch's mean over a short last axis is a few times slower), else one axis's windows by a mean."""
    dims = [d for d in range(x.dim()) if shape[d] != x.shape[d]]
    if all(shape[d] == 1 for d in range(dims[0], x.dim())):
        n = math.prod(x.shape[dims[0]:])
        ones = torch.full((n, 1), 1.0 / n, dtype=x.dtype, device=x.device)
        return (x.reshape(-1, n) @ ones).reshape(shape)
    (d,) = dims
    return x.reshape(*x.shape[:d], shape[d], x.shape[d] // shape[d], *x.shape[d + 1:]).mean(d + 1)


def kernel_to_one(shape: tuple[int, ...], stage: tuple[int, ...]) -> bool:
    """Is `stage` a conv weight's kernel averaged to 1x1 (the first whole-window stage of `shape`)?"""
    return len(shape) == 4 and stage == (*shape[:2], 1, 1) and shape[2:] != (1, 1)


def mean_and_centre(x: Tensor) -> tuple[Tensor, Tensor]:
    """A conv weight's kernels averaged to 1x1 and their centre taps (kernel_centre's), from one matrix product:
    weights 1/taps and 1 at the centre (exact: the other taps are multiplied by 0)."""
    kh, kw = x.shape[2:]
    weights = torch.zeros(2, kh * kw, dtype=x.dtype, device=x.device)
    weights[0] = 1.0 / (kh * kw)
    weights[1, (kh - 1) // 2 * kw + (kw - 1) // 2] = 1.0
    # as (2, kernels): each result a contiguous row (the columns of an (kernels, 2) product would need copies)
    both = weights @ x.reshape(-1, kh * kw).t()
    shape = (*x.shape[:2], 1, 1)
    return both[0].reshape(shape), both[1].reshape(shape)
