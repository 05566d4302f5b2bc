"""Write one student tensor from its teacher source(s), by copy, growth, ComboInjection or a mix, and report how.

Each row says which share of the tensor's elements the teacher alone determines (`fraction`: copied, grown,
cropped, or zeroed on purpose), which share blends teacher values with the student's own init (`blended`:
ComboInjection's crop margin when 0 < lam < 1), and so which share is left at init. The categories do not depend on
what the student's init happened to be, so they can be checked by running the transfer on two students whose
parameters differ and counting the elements that come out equal (tests/test_tli_coverage.py does).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .grow import can_grow, grow, layer_norm_exact
from .inject import ResizeCache, combo_mix, determined_fraction, partial_shape
from .match import Match
from .units import Unit

# a fused projection whose output axis holds equal parts one after another: q, k, v (or k, v) of attention
_FUSED = {"qkv": 3, "kv": 2}


@dataclass
class Growth:
    """How a transfer grows same-structure layers: the mode (grow.py), the seeded split jitter, and the student's
    layer types by unit name (to tell BatchNorm from a norm over channels, and a grouped conv)."""

    mode: str
    jitter: float
    generator: torch.Generator
    groups: dict[str, int]
    channel_norms: set[str]  # units that normalise over the channel axis (LayerNorm, GroupNorm, ...)
    group_norms: set[str] = field(default_factory=set)  # GroupNorms of more than one group


def report_row(key: str, tensor: Tensor, kind: str, method: str, *, source="", source_shape="", teacher="",
               score=None, weights="", fraction=0.0, blended=0.0, reason="") -> dict:
    """One row of the transfer report (report.COLUMNS)."""
    return dict(student=key, shape=tuple(tensor.shape), kind=kind, method=method, source=source,
                source_shape=source_shape, teacher=teacher, score=score, weights=weights, fraction=fraction,
                blended=blended, numel=tensor.numel(), reason=reason)


def _geometry(unit: Unit, local: str, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(fan-in dims, kernel spatial dims) of a unit's tensor."""
    if local != "weight" or unit.kind not in ("conv", "dwconv", "linear") or rank < 2:
        return (), ()
    return tuple(range(1, rank)), tuple(range(2, rank))


def _as_rank(t: Tensor, rank: int) -> Tensor:
    """A linear's (O, I) weight seen as an (O, I, 1, 1) conv, and back."""
    if t.dim() < rank:
        return t.reshape(*t.shape, *([1] * (rank - t.dim())))
    if t.dim() > rank:
        return t.reshape(*t.shape[:rank - 1], -1) if all(s == 1 for s in t.shape[rank:]) else t
    return t


def place_tensor(unit: Unit, local: str, key: str, target: Tensor, sources: list[tuple[str, Tensor, float]],
                 match: Match, t_idx: int, lam: float, growth: Growth | None, cache: ResizeCache | None = None) -> dict:
    """Write `target` from `sources` (teacher key, tensor, weight); returns its report row. `cache` keeps resized
    teacher tensors for the next tensors of the same transfer."""
    if not sources:
        return report_row(key, target, unit.kind, "init", reason=f"teacher layer has no '{local}'")
    keys = [k for k, _, _ in sources]
    tensors = [t for _, t, _ in sources]
    total = sum(w for _, _, w in sources)
    weights = [w / total for _, _, w in sources]
    common = dict(source="+".join(keys), source_shape="+".join(str(tuple(t.shape)) for t in tensors),
                  teacher=t_idx, score=round(match.scores[0], 4))
    if not target.is_floating_point():  # num_batches_tracked: a counter, taken from the best source
        if tensors[0].numel() == target.numel():
            target.copy_(tensors[0].reshape(target.shape))
        return report_row(key, target, unit.kind, "copy", fraction=1.0, **common)
    if len(tensors) == 1 and tuple(tensors[0].shape) == tuple(target.shape):
        target.copy_(tensors[0].detach().to(device=target.device, dtype=target.dtype))
        return report_row(key, target, unit.kind, "copy", fraction=1.0, **common)
    if growth is not None and match.sure and len(tensors) == 1:
        row = _grown(unit, local, key, target, tensors[0], growth, common)
        if row is not None:
            return row
    fraction = _combined(unit, local, target, tensors, weights, lam,
                         [(t_idx, k) for k in keys] if cache is not None else None, cache)
    return _combo_row(key, target, unit, len(tensors), weights, fraction, lam, growth, match, common)


def _combo_row(key: str, target: Tensor, unit: Unit, n_sources: int, weights: list[float], fraction: float,
               lam: float, growth: Growth | None, match: Match, common: dict) -> dict:
    method = "mix" if n_sources > 1 else "combo"
    blended = 1.0 - fraction if 0.0 < lam < 1.0 else 0.0
    reason = _SEEDED_COMBO if growth is not None and match.repeat else ""
    return report_row(key, target, unit.kind, method, weights="+".join(f"{w:.4f}" for w in weights),
                      fraction=fraction, blended=blended, reason=reason, **common)


Item = tuple[str, str, Tensor, list[tuple[str, Tensor, float]]]  # (local name, key, target, sources)


def place_unit(unit: Unit, items: list[Item], match: Match, t_idx: int, lam: float, growth: Growth | None,
               cache: ResizeCache | None = None) -> list[dict]:
    """place_tensor for each of a unit's tensors; returns their rows in order. A norm's vectors (weight, bias and
    running statistics) mixed from the same teacher layers are mixed as one stacked tensor: the same arithmetic
    row by row, a quarter of the calls (across families most student tensors are such vectors)."""
    rows: dict[str, dict] = {}
    group = _stackable(items)
    if len(group) > 1:
        rows.update(_place_stacked(unit, group, match, t_idx, lam, growth, cache))
    for local, key, target, sources in items:
        if key not in rows:
            rows[key] = place_tensor(unit, local, key, target, sources, match, t_idx, lam, growth, cache)
    return [rows[key] for _, key, _, _ in items]


def _stackable(items: list[Item]) -> list[Item]:
    """The items that are floating-point vectors mixed from several sources of the same shapes and weights as the
    first such item's."""
    def signature(item: Item) -> tuple:
        _, _, target, sources = item
        return (tuple(target.shape), target.dtype, target.device,
                tuple((tuple(t.shape), t.dtype, t.device, w) for _, t, w in sources))

    vectors = [it for it in items if it[2].dim() == 1 and it[2].is_floating_point() and len(it[3]) > 1
               and all(t.dim() == 1 for _, t, _ in it[3])]
    return [it for it in vectors if signature(it) == signature(vectors[0])] if vectors else []


def _place_stacked(unit: Unit, group: list[Item], match: Match, t_idx: int, lam: float, growth: Growth | None,
                   cache: ResizeCache | None) -> dict[str, dict]:
    sources = group[0][3]
    total = sum(w for _, _, w in sources)
    weights = [w / total for _, _, w in sources]
    like = torch.stack([target for _, _, target, _ in group])
    stacked = [torch.stack([item[3][k][1] for item in group]).to(like.device) for k in range(len(sources))]
    resized = [None] * len(stacked)
    if cache is not None and lam < 1.0:
        resized = [cache.unscaled((t_idx, *(item[3][k][0] for item in group)), t, partial_shape(t.shape, like.shape))
                   if t.shape != like.shape else None for k, t in enumerate(stacked)]
    values = combo_mix(stacked, like, weights, lam, resized=resized, out=like if like.dtype == torch.float32 else None)
    fraction = determined_fraction([tuple(t.shape) for t in stacked], tuple(like.shape), lam)
    rows = {}
    for (_, key, target, item_sources), row_values in zip(group, values, strict=True):
        target.copy_(row_values)
        common = dict(source="+".join(k for k, _, _ in item_sources),
                      source_shape="+".join(str(tuple(t.shape)) for _, t, _ in item_sources),
                      teacher=t_idx, score=round(match.scores[0], 4))
        rows[key] = _combo_row(key, target, unit, len(item_sources), weights, fraction, lam, growth, match, common)
    return rows


_SEEDED_COMBO = ("an inserted block seeded from a teacher layer of another shape (ComboInjection); the block starts "
                 "silent all the same")


def _combined(unit: Unit, local: str, target: Tensor, tensors: list[Tensor], weights: list[float],
              lam: float, names: list | None = None, cache: ResizeCache | None = None) -> float:
    """Write the teacher tensor(s) ComboInjected into `target`'s shape and mixed; returns the share of elements the
    teacher alone determines (where every source's centre crop reaches, or lam = 0)."""
    rank = max(target.dim(), *(t.dim() for t in tensors))
    like = _as_rank(target, rank)
    fan_in, spatial = _geometry(unit, local, rank)
    ranked = [_as_rank(t, rank) for t in tensors]
    resized = [None] * len(ranked)
    if cache is not None and names is not None and lam < 1.0:  # the resize part, shared with later tensors
        resized = [cache.unscaled(name, t.to(like.device), partial_shape(t.shape, like.shape))
                   if _reshaped(t, like) else None
                   for name, t in zip(names, ranked, strict=True)]
    centres = [None] * len(ranked)
    if cache is not None and names is not None and lam > 0.0:  # a larger kernel's centre taps, read contiguously
        centres = [cache.centre(name, t.to(like.device), like.shape, spatial)
                   if _reshaped(t, like) and any(t.shape[d] > like.shape[d] for d in spatial) else None
                   for name, t in zip(names, ranked, strict=True)]
    # in place where `like` is the target's own float32 memory (a view), else through a copy
    in_place = target.dtype == torch.float32 and like.data_ptr() == target.data_ptr() and like.is_contiguous()
    values = combo_mix(ranked, like, weights, lam, fan_in_dims=fan_in, spatial_dims=spatial, resized=resized,
                       out=like if in_place else None, centres=centres)
    if not in_place:
        target.copy_(values.reshape(target.shape))
    return determined_fraction([tuple(t.shape) for t in ranked], tuple(like.shape), lam, spatial)


def _reshaped(teacher: Tensor, like: Tensor) -> bool:
    """Does ComboInjection resize this teacher tensor (same rank, another shape)?"""
    return teacher.dim() == like.dim() and teacher.shape != like.shape


def _grown(unit: Unit, local: str, key: str, target: Tensor, source: Tensor, growth: Growth,
           common: dict) -> dict | None:
    """Function-preserving growth of one tensor (grow.py), or None where its shapes are not growth."""
    chunks = _FUSED.get(unit.name.rsplit(".", 1)[-1], 1) if local in ("weight", "bias") else 1
    if source.dim() != target.dim() or not can_grow(tuple(source.shape), tuple(target.shape), chunks):
        return None
    fan_in, spatial = _geometry(unit, local, target.dim())
    fan_in_dim = fan_in[0] if fan_in and unit.kind != "dwconv" else None
    reason = _inexact_reason(unit, local, source, target, growth)
    if fan_in_dim is not None and growth.groups.get(unit.name, 1) > 1 and source.shape[1] != target.shape[1]:
        reason = reason or "a grouped convolution whose group width changed: groups read other channels"
    out = grow(source, target, mode=growth.mode, fan_in_dim=fan_in_dim, spatial_dims=spatial, chunks=chunks,
               jitter=growth.jitter, generator=growth.generator)
    target.copy_(out.values)
    how = ("wider: new units start silent (nothing reads them yet), the function is kept" if growth.mode == "silent"
           else "wider: channels duplicated and their fan-out split (Net2Net), the function is kept")
    return report_row(key, target, unit.kind, "grow", fraction=out.from_teacher / target.numel(),
                      reason=reason or how, **common)


def _inexact_reason(unit: Unit, local: str, source: Tensor, target: Tensor, growth: Growth) -> str:
    """Why growing this tensor cannot keep the function exactly ("" when it can). A grown norm over channels always
    means duplicate mode (api._growth_plan), where whole ratios are exact."""
    if unit.name not in growth.channel_norms or local not in ("weight", "bias") or source.dim() != 1:
        return ""
    if unit.name in growth.group_norms:
        return ("a GroupNorm over widened channels: copies of a channel fall into other groups, whose statistics "
                "change, so the function is kept only approximately")
    return layer_norm_exact(source.shape[0], target.shape[0])[1]


_IDENTITY = "a projection shortcut the teacher block does without: set to pass its input through unchanged"


def place_identity(unit: Unit, local: str, key: str, target: Tensor, eps: float = 1e-5) -> dict:
    """A shortcut layer set up to compute the identity on the channels it has in common with its input: a 1x1 conv
    with ones on the diagonal, a BatchNorm with unit scale and zero shift and statistics (0, 1 - its eps)."""
    if unit.kind == "conv" and local == "weight":
        target.zero_()
        n = min(target.shape[0], target.shape[1])
        target[(torch.arange(n), torch.arange(n)) + (0,) * (target.dim() - 2)] = 1.0
    elif unit.kind == "norm" and local in ("weight", "bias", "running_mean", "running_var") and \
            target.is_floating_point():
        target.fill_(1.0 if local == "weight" else 0.0)
        if local == "running_var":
            target.fill_(1.0 - eps)
    elif local == "bias" and target.is_floating_point():
        target.zero_()
    else:
        return report_row(key, target, unit.kind, "init", reason=f"{_IDENTITY}; '{local}' kept as it was")
    return report_row(key, target, unit.kind, "identity", fraction=1.0, reason=_IDENTITY)
