"""ComboInjection: reshape a teacher tensor into a student's shape (paper, section 3.2).

    W = lam * center_crop(T) + (1 - lam) * resize(T)

Both parts work on tensors of any rank, one dimension at a time.

center_crop
    Where the teacher is larger, its central slice is kept. Where the student is larger, the teacher sits in the
    centre and the margin keeps the student's own initial values, with one exception: along a convolution kernel's
    spatial dimensions the margin is zero, so a 3x3 kernel pasted into a 5x5 one (with "same" padding) computes
    exactly what it computed before. Crop offsets depend only on the two sizes, so a layer's output channels and the
    next layer's input channels are cut at the same place.

resize
    Separable linear interpolation (corners aligned) to grow a dimension, area averaging to shrink it. Along the
    fan-in dimensions (a conv's input channels and kernel taps, a linear's input features) the result is scaled by
    teacher size / student size, as in Net2Net's wider transform (twice the inputs, half the weight each): a unit's
    response to a constant input is kept for weights that vary smoothly along those dimensions (exactly when they
    vary linearly).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import pairwise, product

import torch
import torch.nn.functional as F
from torch import Tensor

from . import rowstep
from .windows import kernel_to_one, mean_and_centre, shrink_whole_windows


def _center_slices(src: int, dst: int) -> tuple[slice, slice]:
    """(slice of the source, slice of the destination) that overlap when both are centred."""
    if src >= dst:
        start = (src - dst) // 2
        return slice(start, start + dst), slice(0, dst)
    start = (dst - src) // 2
    return slice(0, src), slice(start, start + src)


def center_crop(teacher: Tensor, like: Tensor, *, spatial_dims: Sequence[int] = ()) -> Tensor:
    """`teacher` cut or pasted into the centre of a tensor shaped like `like` (see the module docstring)."""
    pairs = [_center_slices(a, b) for a, b in zip(teacher.shape, like.shape, strict=True)]
    src = tuple(p[0] for p in pairs)
    dst = tuple(p[1] for p in pairs)
    out = like.detach().clone()
    if spatial_dims:
        slab = tuple(dst[d] if d not in spatial_dims else slice(None) for d in range(like.dim()))
        out[slab] = 0  # zero margin around the kernel: same function as the smaller kernel
    out[dst] = teacher[src].to(out.dtype)
    return out


def crop_fraction(teacher_shape: Sequence[int], student_shape: Sequence[int]) -> float:
    """Fraction of the student's elements that the crop part takes from the teacher."""
    overlap = total = 1
    for a, b in zip(teacher_shape, student_shape, strict=True):
        overlap *= min(a, b)
        total *= b
    return overlap / total if total else 0.0


def determined_fraction(teacher_shapes: Sequence[Sequence[int]], student_shape: Sequence[int], lam: float,
                        spatial_dims: Sequence[int] = ()) -> float:
    """Share of a ComboInjected (and mixed) tensor's elements that the teacher alone determines, whatever the
    student's init: everywhere when lam = 0 (pure resize); otherwise where every source's centre crop reaches, along
    kernel dimensions too (their margin is zero, not init). The rest blends the init in (0 < lam < 1) or keeps it
    (lam = 1)."""
    if lam == 0.0:
        return 1.0
    share = 1.0
    for d, s in enumerate(student_shape):
        if d not in spatial_dims and s:
            share *= min(min(t[d] for t in teacher_shapes), s) / s
    return share


def _resize_axis(x: Tensor, dim: int, size: int) -> Tensor:
    """Resize one axis: linear interpolation with aligned corners to grow, area averaging (adaptive average
    pooling's windows) to shrink. The tensor is seen as (1, axes before, this axis, axes after), a view of a
    contiguous tensor, so torch's 2-d kernel does it in one pass with the axes after left as they are (a window of
    one element, an interpolation weight of exactly 1): no copy to move the axis, no temporary per step. Where no
    axis follows (a linear's fan-in, a 1x1 kernel's), the 1-d kernel does the same at about half the cost."""
    shape = x.shape
    before, after = math.prod(shape[:dim]), math.prod(shape[dim + 1:])
    grow = size > shape[dim]
    if before == 1 and rowstep.fits(x):  # in effect the first axis: a sparse matrix product (rowstep.py)
        return rowstep.resize_rows(x, dim, size)
    if not grow and after == 1 and rowstep.fits(x):  # the last axis: a product with a sparse matrix (rowstep.py)
        return rowstep.shrink_last(x, dim, size)
    if not grow and x.numel() >= _TAPS_FROM and shape[dim] <= 6 * size:  # windows of a few elements
        return _area_taps(x, dim, size)
    if after == 1:
        line = x.reshape(1, before, shape[dim])
        out = (F.interpolate(line, size=size, mode="linear", align_corners=True) if grow
               else F.adaptive_avg_pool1d(line, size))
    else:
        grid = x.reshape(1, before, shape[dim], after)
        out = (F.interpolate(grid, size=(size, after), mode="bilinear", align_corners=True) if grow
               else F.adaptive_avg_pool2d(grid, (size, after)))
    return out.reshape(*shape[:dim], size, *shape[dim + 1:])


_TAPS_FROM = 4096  # elements: below this, the few calls of _area_taps cost more than torch's pooling kernel


def _area_taps(x: Tensor, dim: int, size: int) -> Tensor:
    """Area averaging along `dim` as adaptive average pooling does it (window j covers floor(j*n/size) to
    ceil((j+1)*n/size), summed in order, then divided by its length), bit for bit, as a few whole-tensor gathers
    and adds: torch's pooling kernel walks each short window element by element, several times slower on
    large tensors."""
    n = x.shape[dim]
    j = torch.arange(size, device=x.device)
    start, end = (j * n) // size, ((j + 1) * n + size - 1) // size
    view = [1] * x.dim()
    view[dim] = size
    out = x.index_select(dim, start)
    for i in range(1, int((end - start).max())):
        taps = x.index_select(dim, (start + i).clamp(max=n - 1))
        inside = start + i < end
        if bool(inside.all()):
            out.add_(taps)
        else:  # a shorter window adds 0 (its tap lies beyond it)
            out.addcmul_(taps, inside.to(x.dtype).view(view))
    return out.div_((end - start).to(x.dtype).view(view))


def fan_in_scale(teacher_shape: Sequence[int], shape: Sequence[int], fan_in_dims: Sequence[int]) -> float:
    """Teacher size / student size along the fan-in dimensions (module docstring)."""
    scale = 1.0
    for d in fan_in_dims:
        scale *= teacher_shape[d] / shape[d]
    return scale


def resize(teacher: Tensor, shape: Sequence[int], *, fan_in_dims: Sequence[int] = (),
           windows: Callable[[Tensor, Sequence[int]], Tensor] | None = None) -> Tensor:
    """`teacher` interpolated to `shape`, one axis at a time; fan-in dimensions rescaled (module docstring).
    `windows`: where the caller keeps the first step's results (ResizeCache), its stand-in for that step."""
    x = teacher.detach().float()
    scale = fan_in_scale(x.shape, shape, fan_in_dims)
    # the cheapest steps and the ones that shrink most (a 3x3 kernel to 1x1): first
    x = (windows or shrink_whole_windows)(x, shape)
    # then the most shrinking axes first: every later step then works on a smaller tensor
    steps = sorted((d for d in range(len(shape)) if shape[d] != x.shape[d]), key=lambda d: shape[d] / x.shape[d])
    for dim in steps:
        x = _resize_axis(x, dim, shape[dim])
    if scale == 1.0:
        return x
    # in place only on a tensor a step here wrote: never into the teacher or a cached first step
    return x.mul_(scale) if steps else x * scale


class ResizeCache:
    """Resized teacher tensors, kept for the rest of one transfer: across families one teacher tensor is mixed into
    many student tensors (every block of a stage), and the resize is the costly part of a mix. Kept: the results,
    and each whole-window averaging stage's (a 3x3 kernel averaged to 1x1 serves every 1x1 student layer, whatever
    its channels). The caller names each teacher tensor (its key); the oldest entries go first once `limit` entries
    or `max_bytes` are held (a stage's blocks come one after another, so the latest entries serve best)."""

    def __init__(self, limit: int = 4096, max_bytes: int = 256 * 2**20):
        self.limit, self.max_bytes = limit, max_bytes
        self.entries: dict[tuple, Tensor] = {}
        self.bytes = 0

    def _get(self, key: tuple, make: Callable[[], Tensor]) -> Tensor:
        hit = self.entries.pop(key, None)
        if hit is None:
            hit = make()
            self.bytes += _nbytes(hit)
            while self.entries and (len(self.entries) >= self.limit or self.bytes > self.max_bytes):
                self.bytes -= _nbytes(self.entries.pop(next(iter(self.entries))))
        self.entries[key] = hit  # (re)inserted last: the oldest entry goes first
        return hit

    def unscaled(self, name, teacher: Tensor, shape: Sequence[int]) -> Tensor:
        """`resize(teacher, shape)` without the fan-in scale (which combo_mix folds into its weights), computed once
        per (name, shape): never to be written into."""
        def keep(stage: tuple, make: Callable[[], Tensor], x: Tensor) -> Tensor:
            # each stage's result depends only on the shape it ends at
            key = ("windows", name, stage)
            if key not in self.entries and kernel_to_one(tuple(x.shape), stage):
                # the kernel's centre tap (the crop part's) in the same pass over the teacher as its average
                mean, centre = mean_and_centre(x)
                self._get(("centre", name, tuple(x.shape), (1,) * (x.dim() - 2)), lambda: centre)
                return self._get(key, lambda: mean)
            return self._get(key, make)

        def windows(x: Tensor, target: Sequence[int]) -> Tensor:
            return shrink_whole_windows(x, target, lambda stage, make: keep(stage, make, x))

        key = ("resized", name, tuple(teacher.shape), tuple(shape))
        return self._get(key, lambda: resize(teacher, shape, windows=windows))

    def centre(self, name, teacher: Tensor, shape: Sequence[int], spatial_dims: Sequence[int]) -> Tensor:
        """kernel_centre(teacher, shape, spatial_dims), computed once per (name, kernel size): never to be written
        into. Across families one teacher kernel seeds many student layers, and reading its centre taps in place
        reads the whole kernel from memory each time."""
        sizes = tuple(shape[d] for d in spatial_dims)
        return self._get(("centre", name, tuple(teacher.shape), sizes),
                         lambda: kernel_centre(teacher, shape, spatial_dims))

    def resize(self, name, teacher: Tensor, shape: Sequence[int], fan_in_dims: Sequence[int]) -> Tensor:
        """What `resize` returns, from what this cache keeps."""
        scale = fan_in_scale(teacher.shape, shape, fan_in_dims)
        unscaled = self.unscaled(name, teacher, shape)
        return unscaled * scale if scale != 1.0 else unscaled


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def combo_injection(
    teacher: Tensor,
    like: Tensor,
    lam: float = 0.75,  # the paper's value; transfer() passes TransferOptions.lam
    *,
    fan_in_dims: Sequence[int] = (),
    spatial_dims: Sequence[int] = (),
    resized: Tensor | None = None,
) -> tuple[Tensor, float]:
    """ComboInjection of `teacher` into the shape of `like`; returns (tensor, fraction of its elements computed from
    the teacher).

    Same shape: an exact copy, whatever `lam` is. `lam=1` is a pure centre crop (the fraction is the overlap; the
    margin keeps the student's init), `lam=0` a pure resize. With 0 < lam < 1 the resize reaches every element, so
    the fraction is 1, although a margin element carries only `1 - lam` of teacher signal. `resized`: the resize
    part, where the caller has it already (ResizeCache).
    """
    if teacher.dim() != like.dim():
        raise ValueError(f"ranks differ: teacher {tuple(teacher.shape)} vs student {tuple(like.shape)}")
    # a resize part given here has its fan-in scale already
    values = combo_mix([teacher], like, [1.0], lam, fan_in_dims=() if resized is not None else fan_in_dims,
                       spatial_dims=spatial_dims, resized=[resized])
    fraction = crop_fraction(teacher.shape, like.shape) if lam == 1.0 and teacher.shape != like.shape else 1.0
    return values.to(like.dtype), fraction


def combo_mix(teachers: Sequence[Tensor], like: Tensor, weights: Sequence[float], lam: float = 0.75, *,
              fan_in_dims: Sequence[int] = (), spatial_dims: Sequence[int] = (),
              resized: Sequence[Tensor | None] | None = None, out: Tensor | None = None,
              centres: Sequence[Tensor | None] | None = None) -> Tensor:
    """The weighted sum (paper eq. 2) of each teacher tensor ComboInjected into the shape of `like` (all of its
    rank), computed as one sum instead of one injected tensor per source:

        sum_k w_k * (lam * crop_k + (1 - lam) * resize_k)
          = like * M  +  (1 - lam) * sum_k w_k resize_k  +  lam * sum_k w_k teacher_k (on its centre)

    where M, the weight of the student's init, is the sum of lam * w_k over the sources whose crop does not reach
    an element (the margin; a kernel's spatial margin is zero instead). M is constant on each cell of the grid the
    crops' edges cut, so `like` is scaled cell by cell; a cell every crop reaches is zeroed, so what the teacher
    alone determines stays independent of the student's init (the coverage probe).
    A source of the student's shape is copied (weight w_k). `resized`: each resize part the caller has already,
    without the fan-in scale (ResizeCache.unscaled): the scale goes into the source's weight, one pass fewer. It may
    stop short of the first axis (partial_shape): that step then happens as it is added (rowstep.py).
    `out`: a float32 tensor holding the values of `like` (`like` itself may be), written in place and returned;
    by default a float32 copy of `like`. `centres`: each source's kernel_centre, where the caller keeps it
    (ResizeCache.centre): the crop part reads those contiguous taps instead of the teacher's strided ones.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    shape = tuple(like.shape)
    teachers = [t.detach().to(like.device) for t in teachers]  # teacher and student may live on different devices
    resized = list(resized) if resized is not None else [None] * len(teachers)
    centres = list(centres) if centres is not None else [None] * len(teachers)
    crops = {k: _crop_regions(t.shape, shape, spatial_dims) for k, t in enumerate(teachers)
             if lam > 0.0 and tuple(t.shape) != shape}
    out = like.detach().to(torch.float32, copy=True) if out is None else out
    _scale_init(out, [(crops[k][2], lam * weights[k]) for k in crops])
    for k, (t, w, r) in enumerate(zip(teachers, weights, resized, strict=True)):
        if tuple(t.shape) == shape:  # a same-shaped source is its own resize: copied whole
            out.add_(t, alpha=w)
        elif lam < 1.0:
            _add_resized(out, t, r, (1.0 - lam) * w * fan_in_scale(t.shape, shape, fan_in_dims))
        if k in crops:
            src, dst, _ = crops[k]
            if centres[k] is None:
                out[dst].add_(t[src], alpha=lam * w)
            else:  # the centre is already cut along the kernel's dimensions
                out[dst].add_(centres[k][tuple(slice(None) if d in spatial_dims else c for d, c in enumerate(src))],
                              alpha=lam * w)
    return out


def kernel_centre(teacher: Tensor, shape: Sequence[int], spatial_dims: Sequence[int]) -> Tensor:
    """The taps of `teacher` that ComboInjection's crop puts into a tensor of `shape`, along the kernel's dimensions
    only, as a contiguous tensor: a 3x3 kernel's centre tap for a 1x1 student layer."""
    cut = tuple(_center_slices(teacher.shape[d], shape[d])[0] if d in spatial_dims else slice(None)
                for d in range(teacher.dim()))
    return teacher.detach()[cut].contiguous()


def partial_shape(t_shape: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    """The shape a teacher tensor is resized to before combo_mix adds it into a tensor of `shape`: every size of
    `shape` but the first where the first axis grows, its step then fused into the add (rowstep.py), else `shape`
    itself. Not fused where the first axis shrinks: resizing the other axes first would then work on more rows than
    shrinking it first (measured: fusing those too costs more than it saves)."""
    if t_shape[0] < shape[0]:
        return (t_shape[0], *shape[1:])
    return tuple(shape)


def _add_resized(out: Tensor, teacher: Tensor, partial: Tensor | None, alpha: float) -> None:
    """out += alpha * resize(teacher, out.shape); `partial`: the teacher already resized to partial_shape, where the
    caller has it (ResizeCache)."""
    if partial is None:
        target = partial_shape(teacher.shape, out.shape)
        partial = teacher.float() if target == tuple(teacher.shape) else resize(teacher, target)
    if partial.shape[0] == out.shape[0]:
        out.add_(partial, alpha=alpha)
    elif rowstep.fits(out, partial) and out.is_contiguous():
        rowstep.add_rows(out, partial, alpha)
    else:
        out.add_(_resize_axis(partial.float(), 0, out.shape[0]), alpha=alpha)


def _scale_init(out: Tensor, slabs: list[tuple[tuple[slice, ...], float]]) -> None:
    """`out` (the student's init) times the weight it keeps: on each cell of the grid the slabs' edges cut, the sum
    of the weights of the slabs (crops) that do not cover the cell; zero where every crop covers it."""
    edges = [sorted({0, n, *(slab[d].start for slab, _ in slabs), *(slab[d].stop for slab, _ in slabs)})
             for d, n in enumerate(out.shape)]
    for cell in product(*(list(pairwise(e)) for e in edges)):
        box = tuple(slice(a, b) for a, b in cell)
        keep = sum(w for slab, w in slabs
                   if not all(c.start <= a and b <= c.stop for c, (a, b) in zip(slab, cell, strict=True)))
        if keep == 0:  # every crop reaches the cell (or no source crops): nothing of the init stays
            out[box].zero_()
        else:
            out[box].mul_(keep)


def _crop_regions(t_shape: Sequence[int], shape: Sequence[int], spatial_dims: Sequence[int]) -> tuple:
    """(teacher slices, student slices) of the centred overlap, and the student slab the crop replaces: the overlap,
    widened to whole kernels along `spatial_dims` (center_crop zeroes the margin there)."""
    pairs = [_center_slices(a, b) for a, b in zip(t_shape, shape, strict=True)]
    src = tuple(p[0] for p in pairs)
    dst = tuple(p[1] for p in pairs)
    slab = tuple(slice(0, n) if d in spatial_dims else dst[d] for d, n in enumerate(shape))
    return src, dst, slab


def mix(tensors: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """Weighted sum of already-injected candidates (paper eq. 2); weights come from a softmax and sum to 1."""
    if len(tensors) == 1:
        return tensors[0]
    out = tensors[0] * weights[0]
    for t, w in zip(tensors[1:], weights[1:], strict=True):
        out.add_(t, alpha=w)
    return out
