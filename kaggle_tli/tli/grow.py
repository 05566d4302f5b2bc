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

from dataclasses import dataclass

import torch
from torch import Tensor

GROWTH_MODES = ("silent", "duplicate")
_NEW = -1  # index map value: a channel the teacher does not have
_PAD = -2  # index map value: a kernel tap outside the teacher's kernel (zero)


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
    src = teacher.detach().to(device="cpu", dtype=torch.float64)
    for d, index in enumerate(maps):  # gather along each axis; _NEW / _PAD positions read index 0, masked below
        src = src.index_select(d, index.clamp_min(0))
    keep = torch.ones(s_shape, dtype=torch.bool)  # the teacher alone determines the element
    zero = torch.zeros(s_shape, dtype=torch.bool)
    for d, index in enumerate(maps):
        view = [1] * len(s_shape)
        view[d] = -1
        zero |= (index == _PAD).view(view)
        if d == fan_in_dim:
            zero |= (index == _NEW).view(view)  # silent: nothing reads a new channel
            if mode == "duplicate" and s_shape[d] > t_shape[d]:
                src = src * _split_factors(index, t_shape[d], jitter, generator).view(view)
        else:
            keep &= (index != _NEW).view(view)
    out = torch.where(zero, torch.zeros((), dtype=src.dtype), src)
    init = ~(keep | zero)
    values = torch.where(init.to(like.device), like.detach(), out.to(device=like.device, dtype=like.dtype))
    n_init = int(init.sum())
    return Grown(values, like.numel() - n_init, n_init, exact=True)


def layer_norm_exact(t_width: int, s_width: int) -> tuple[bool, str]:
    """Is duplicating channels exact for a norm over them? Only when every channel appears equally often."""
    if s_width % t_width == 0:
        return True, ""
    return False, (f"a norm over the channels, widened {t_width} -> {s_width} (not a whole multiple): the duplicated "
                   "channels shift its mean and variance slightly, so the function is kept only approximately")
