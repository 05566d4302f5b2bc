"""Function-preserving growth: a wider student tensor from a narrower teacher tensor, so the student starts as the teacher.

Two ways, chosen per transfer by what normalises the grown channels (`growth_mode`):

silent (Net2Net's wider transform, with zeros in place of copies)
    The teacher sits in the first channels of every grown axis; the new units keep the student's own random init,
    and every weight that *reads* a new channel (a conv's or a linear's fan-in) is zero. The new units compute
    something, but nothing downstream listens yet, so the function is exactly the teacher's, at any ratio, through
    BatchNorm (per channel), depthwise and grouped convolutions, squeeze-excite gates and residual streams. The new
    units are random, so they are not clones of old ones: training has no symmetry to break.

duplicate (Net2Net / bert2BERT / LEMON)
    A norm over the channel axis (LayerNorm, GroupNorm) sees every channel, so silent channels would change its mean
    and variance. Each new channel is then a copy of teacher channel `c mod n`, and a fan-in that reads k copies of a
    channel splits the teacher's weight between them. Exact at integer ratios (vit_tiny -> vit_small is 2x: every
    channel twice, so a LayerNorm sees the same mean and variance); at other ratios some channels appear once more
    than others and a LayerNorm's statistics shift slightly, which the report says. The split is asymmetric (seeded
    jitter around 1/k, still summing to 1), so the copies receive different gradients and can drift apart.

Both place the teacher chunk by chunk along a fused axis (a ViT's qkv output holds q, k and v one after another), so
attention heads grow as whole heads: q, k and v of a new head all come from one teacher head (duplicate) or all stay
new (silent). A larger kernel gets the teacher's kernel in its centre and zeros around it (same output with "same"
padding). A student dimension smaller than the teacher's is not growth: the caller uses ComboInjection instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

GROWTH_MODES = ("silent", "duplicate")
_NEW = -1  # index map value: a channel the teacher does not have
_PAD = -2  # index map value: a kernel tap outside the teacher's kernel (zero)
_EMPTY = torch.zeros(0, dtype=torch.long)


@dataclass
class Grown:
    """A grown tensor and where its elements came from."""

    values: Tensor
    from_teacher: int  # elements the teacher alone determines (copies, splits, zeros)
    at_init: int  # elements left as the student had them (silent mode's new units)
    exact: bool  # False where the function cannot be kept exactly (a reason says why)
    reason: str = ""


def can_grow(t_shape: tuple[int, ...], s_shape: tuple[int, ...], chunks: int = 1) -> bool:
    """Is `s_shape` the teacher's shape with no dimension smaller (and, for a fused axis, whole chunks)?"""
    if len(t_shape) != len(s_shape) or tuple(t_shape) == tuple(s_shape):
        return False
    if chunks > 1 and (t_shape[0] % chunks or s_shape[0] % chunks):
        return False
    return all(s >= t for s, t in zip(s_shape, t_shape, strict=True))


def _index_map(t: int, s: int, *, mode: str, chunks: int = 1, spatial: bool = False) -> Tensor:
    """For each student position along one axis: the teacher position it copies, `_NEW` or `_PAD`."""
    pos = torch.arange(s)
    if spatial:  # the teacher kernel in the centre, zeros around
        off = (s - t) // 2
        inside = (pos >= off) & (pos < off + t)
        return torch.where(inside, pos - off, torch.full_like(pos, _PAD))
    s_c, t_c = s // chunks, t // chunks
    chunk, within = pos // s_c, pos % s_c
    if mode == "duplicate":
        return chunk * t_c + within % t_c
    return torch.where(within < t_c, chunk * t_c + within, torch.full_like(pos, _NEW))


def _split_factors(index: Tensor, t: int, jitter: float, generator: torch.Generator) -> Tensor:
    """Per student input: its share of the teacher weight it copies; the shares of one teacher channel's copies sum
    to 1. With jitter, the shares are 1/k * (1 + jitter * u), u uniform in [-1, 1], renormalised."""
    counts = torch.bincount(index, minlength=t).to(torch.float64)
    share = 1.0 / counts[index]
    if jitter > 0:
        share = share * (1 + jitter * (2 * torch.rand(len(index), generator=generator, dtype=torch.float64) - 1))
        total = torch.zeros(t, dtype=torch.float64).index_add_(0, index, share)
        share = share / total[index]
    return share


def grow(teacher: Tensor, like: Tensor, *, mode: str, fan_in_dim: int | None = None, spatial_dims: tuple = (),
         chunks: int = 1, jitter: float = 0.0, generator: torch.Generator | None = None) -> Grown:
    """`teacher` grown into the shape of `like` (the student's own tensor) so the function is kept (module docstring).

    fan_in_dim: the axis a conv's or a linear's weight reads its inputs along (1), None for tensors that only carry
        channels (biases, norms, tokens, running statistics).
    chunks: how many equal parts the first axis fuses (3 for a qkv projection).
    """
    if mode not in GROWTH_MODES:
        raise ValueError(f"mode={mode!r}: use one of {GROWTH_MODES}")
    t_shape, s_shape = tuple(teacher.shape), tuple(like.shape)
    if not can_grow(t_shape, s_shape, chunks):
        raise ValueError(f"cannot grow {t_shape} into {s_shape}")
    generator = generator or torch.Generator().manual_seed(0)
    maps = [_index_map(t, s, mode=mode, chunks=chunks if d == 0 else 1, spatial=d in spatial_dims)
            for d, (t, s) in enumerate(zip(t_shape, s_shape, strict=True))]
    # float32 is exact for the copies; only the split shares round (their sum to 1 within float32's precision)
    work = torch.promote_types(teacher.dtype, torch.float32) if teacher.is_floating_point() else teacher.dtype
    out = teacher.detach().to(device=like.device, dtype=work)
    for d, index in enumerate(maps):  # gather along each grown axis; _NEW / _PAD positions read 0, overwritten below
        if s_shape[d] != t_shape[d]:  # an axis that keeps its size maps every position onto itself
            out = out.index_select(d, index.clamp_min(0).to(like.device))
    if mode == "duplicate" and fan_in_dim is not None and s_shape[fan_in_dim] > t_shape[fan_in_dim]:
        view = [1] * len(s_shape)
        view[fan_in_dim] = -1
        share = _split_factors(maps[fan_in_dim], t_shape[fan_in_dim], jitter, generator)
        out.mul_(share.to(device=like.device, dtype=work).view(view))  # `out` is index_select's fresh tensor
    out = out.to(like.dtype)
    # whole slabs, never a full-size mask: a new unit keeps the student's init, unless a zero below covers it
    new = [(maps[d] == _NEW).nonzero().flatten() if d != fan_in_dim else _EMPTY for d in range(len(maps))]
    zero = [((maps[d] == _PAD) | ((maps[d] == _NEW) & (d == fan_in_dim))).nonzero().flatten() for d in range(len(maps))]
    for d, pos in enumerate(new):
        if len(pos):
            pos = pos.to(like.device)
            out.index_copy_(d, pos, like.detach().index_select(d, pos))
    for d, pos in enumerate(zero):  # padded kernel taps, and (silent) the fan-in that reads a new channel
        if len(pos):
            out.index_fill_(d, pos.to(like.device), 0)
    # elements in a new unit's slab and in no zeroed slab: all not zeroed, less those outside every new slab
    not_zeroed = math.prod(s - len(z) for s, z in zip(s_shape, zero, strict=True))
    outside_new = math.prod(s - len(z) - len(n) for s, z, n in zip(s_shape, zero, new, strict=True))
    n_init = not_zeroed - outside_new
    return Grown(out, like.numel() - n_init, n_init, exact=True)


def layer_norm_exact(t_width: int, s_width: int) -> tuple[bool, str]:
    """Is duplicating channels exact for a norm over them? Only when every channel appears equally often."""
    if s_width % t_width == 0:
        return True, ""
    return False, (f"a norm over the channels, widened {t_width} -> {s_width} (not a whole multiple): the duplicated "
                   "channels shift its mean and variance slightly, so the function is kept only approximately")
