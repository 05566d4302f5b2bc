"""Resize steps as products with sparse matrices, the first axis's added straight into the tensor being written.

Resizing an axis of n elements to m is a product with a sparse (m x n) matrix: two weights a row to grow (linear,
corners aligned), a window of 1/length weights to shrink (area averaging). On the CPU torch hands such products to
MKL's sparse kernels, which beat the interpolation and pooling kernels (and gathers of window taps):

- along the first axis (nothing before it), `matrix @ rest`; where ComboInjection adds the result into a student
  tensor, `out.addmm_(matrix, rest)` does the step and the add in one pass over `out` (done as "resize, then add",
  the step writes a fresh tensor of the student's size and the add reads it again: two passes over memory not yet
  in cache, and pages the allocator has to fault in);
- along a last axis (nothing after it) to shrink, `rows @ matrix.T`.

Results go into uninitialised tensors with beta=0 (torch.sparse.mm fills its result before the product, a few
times slower). Only the rounding differs from the kernels they replace (the same weighted sums, summed in another
order, and 1/length weights instead of a division).
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import torch
from torch import Tensor


def fits(*tensors: Tensor) -> bool:
    """Can this module's products do the step? On the CPU (where torch's sparse CSR product is MKL's), on float32;
    elsewhere the caller interpolates as before."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() >= 1 for t in tensors)


def resize_rows(x: Tensor, dim: int, size: int) -> Tensor:
    """`x` resized along `dim` to `size`, where every axis before `dim` has size 1 (a CPU float32 tensor): the sparse
    product into a fresh tensor, a few times faster than torch's pooling or interpolation kernel, or gathers."""
    n = x.shape[dim]
    rest = x.reshape(n, -1)
    # into an uninitialised tensor with beta=0 (its contents ignored, NaN included): torch.sparse.mm costs a few
    # times more, filling its result before the product
    out = torch.empty(size, rest.shape[1], dtype=x.dtype).addmm_(_row_matrix(n, size), rest, beta=0.0)
    return out.reshape(*x.shape[:dim], size, *x.shape[dim + 1:])


def shrink_last(x: Tensor, dim: int, size: int) -> Tensor:
    """`x` (CPU float32) area-averaged along `dim` to `size`, where every axis after `dim` has size 1: its rows times
    the transposed window matrix, into an uninitialised tensor with beta=0, a few times faster than gathering each
    window's taps. (Growing, torch's interpolation kernel is the faster.)"""
    n = x.shape[dim]
    rows = x.reshape(-1, n)
    out = torch.empty(rows.shape[0], size, dtype=x.dtype).addmm_(rows, _row_matrix(n, size).t(), beta=0.0)
    return out.reshape(*x.shape[:dim], size, *x.shape[dim + 1:])


def add_rows(out: Tensor, rest: Tensor, alpha: float) -> None:
    """out += alpha * (rest resized along its first axis to out's), where `rest` already has out's other sizes."""
    m, n = out.shape[0], rest.shape[0]
    out.view(m, -1).addmm_(_row_matrix(n, m), rest.reshape(n, -1), alpha=alpha)


@lru_cache(maxsize=1024)  # a transfer asks for the same few (teacher size, student size) pairs many times
def _row_matrix(n: int, m: int) -> Tensor:
    """The (m, n) CSR matrix of resizing an axis of n elements to m: what inject._resize_axis computes along it."""
    rows, cols, weights = _growth(n, m) if m > n else _windows(n, m)
    counts = torch.bincount(rows, minlength=m)
    crow = torch.zeros(m + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=crow[1:])
    with warnings.catch_warnings():  # torch calls its sparse CSR support "beta" once per process
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, weights.to(torch.float32), (m, n))


def _growth(n: int, m: int) -> tuple[Tensor, Tensor, Tensor]:
    """(row, column, weight) of linear interpolation with aligned corners, rows in order: output j sits at
    j (n - 1) / (m - 1) and takes its two neighbours. The position and weights are float32 arithmetic, as in torch's
    interpolation kernel, so the weights are the same floats."""
    if n == 1:  # one source element: every output is a copy of it
        return torch.arange(m), torch.zeros(m, dtype=torch.int64), torch.ones(m)
    scale = torch.tensor((n - 1) / (m - 1), dtype=torch.float32)
    pos = torch.arange(m, dtype=torch.float32) * scale
    lo = pos.floor().to(torch.int64).clamp(max=n - 2)
    frac = (pos - lo).clamp(0.0, 1.0)
    rows = torch.arange(m).repeat_interleave(2)
    cols = torch.stack([lo, lo + 1], 1).flatten()
    return rows, cols, torch.stack([1.0 - frac, frac], 1).flatten()


def _windows(n: int, m: int) -> tuple[Tensor, Tensor, Tensor]:
    """(row, column, weight) of area averaging, adaptive average pooling's windows: output j averages elements
    floor(j n / m) to ceil((j + 1) n / m) - 1."""
    j = torch.arange(m)
    start, end = (j * n) // m, ((j + 1) * n + m - 1) // m
    lengths = end - start
    rows = torch.arange(m).repeat_interleave(lengths)
    first = torch.cumsum(lengths, 0) - lengths  # each row's first position among the nonzeros
    cols = start[rows] + torch.arange(len(rows)) - first[rows]
    return rows, cols, (1.0 / lengths.to(torch.float64))[rows]
