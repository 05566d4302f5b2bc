"""Match student units to teacher units.

Every (student, teacher) pair gets a score in [0, 1] computed as whole arrays: kind compatibility, real shape
similarity per dimension, position in the network, depth inside the block, branch and the activation that follows.
Pairs of incompatible rank never match.

Assignment keeps order. Blocks (the stretches between merge nodes) are aligned first: a monotone map from student
blocks to teacher blocks in which a teacher block may be *repeated* for consecutive student blocks (a deeper student:
stage maps onto stage, and an extra block is seeded from its neighbour) or *skipped* (a shallower student). Inside each
matched block pair, units are aligned one-to-one in order. Both levels are dynamic programs vectorised over one axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from .units import Graph, Unit

KINDS = ("conv", "dwconv", "linear", "norm", "embedding", "other")

# How well a teacher kind can seed a student kind (row: student, column: teacher). 0 = never.
# A 1x1 conv and a linear are the same map; a depthwise conv is a conv with one input channel per group.
_KIND_COMPAT = np.array(
    [
        # conv  dwconv linear norm  emb   other
        [1.00, 0.50, 0.75, 0.00, 0.00, 0.00],  # conv
        [0.50, 1.00, 0.00, 0.00, 0.00, 0.00],  # dwconv
        [0.75, 0.00, 1.00, 0.00, 0.00, 0.00],  # linear
        [0.00, 0.00, 0.00, 1.00, 0.00, 0.00],  # norm
        [0.00, 0.00, 0.00, 0.00, 1.00, 0.00],  # embedding
        [0.00, 0.00, 0.00, 0.00, 0.00, 1.00],  # other
    ]
)

# Weights of the score's terms; they sum to 1 so identical units score exactly 1.0.
WEIGHTS = {"kind": 0.15, "shape": 0.30, "position": 0.25, "depth": 0.10, "branch": 0.10, "activation": 0.10}

REPEAT_DISCOUNT = 0.9  # a repeated teacher block is worth a little less than a fresh one, so fresh ones come first


@dataclass
class Features:
    """Per-unit features of one graph, as arrays."""

    kind: np.ndarray  # int, index into KINDS
    dims: np.ndarray  # (n, R) float, shapes padded with 1 to a common rank, linear seen as a 1x1 conv
    rank: np.ndarray  # int, rank after the linear -> conv view
    position: np.ndarray  # relative execution order in [0, 1]
    depth: np.ndarray  # relative depth inside the block in [0, 1]
    branch: np.ndarray  # int
    activation: np.ndarray  # object (strings)
    gate: np.ndarray  # bool: the layer only feeds a sigmoid gate (squeeze-excite)


_MAX_RANK = 5


def _dims(unit: Unit) -> tuple[int, ...]:
    shape = unit.shape
    if unit.kind == "linear" and len(shape) == 2:
        shape = (*shape, 1, 1)  # a linear is a 1x1 conv: lets the two match
    return shape


def features(units: list[Unit]) -> Features:
    n = len(units)
    dims = np.ones((n, _MAX_RANK))
    rank = np.zeros(n, dtype=int)
    for i, u in enumerate(units):
        d = _dims(u)[:_MAX_RANK]
        dims[i, : len(d)] = d
        rank[i] = len(_dims(u))
    span = max(n - 1, 1)
    return Features(
        kind=np.array([KINDS.index(u.kind) for u in units], dtype=int),
        dims=dims,
        rank=rank,
        position=np.arange(n) / span,
        depth=np.array([u.depth / max(u.block_len - 1, 1) for u in units]),
        branch=np.array([u.branch for u in units], dtype=int),
        activation=np.array([u.activation for u in units], dtype=object),
        gate=np.array([u.gate for u in units], dtype=bool),
    )


def score_matrix(s: Features, t: Features) -> np.ndarray:
    """Scores of every (student, teacher) pair, shape (n_s, n_t); -1 where the pair may never match."""
    kind = _KIND_COMPAT[s.kind[:, None], t.kind[None, :]]
    # the share of elements the two tensors have in common: product over dimensions of min / max
    shape = (np.minimum(s.dims[:, None, :], t.dims[None, :, :]) / np.maximum(s.dims[:, None, :], t.dims[None, :, :])).prod(-1)
    terms = {
        "kind": kind,
        "shape": shape,
        "position": 1 - np.abs(s.position[:, None] - t.position[None, :]),
        "depth": 1 - np.abs(s.depth[:, None] - t.depth[None, :]),
        "branch": (s.branch[:, None] == t.branch[None, :]).astype(float),
        "activation": (s.activation[:, None] == t.activation[None, :]).astype(float),
    }
    total = sum(WEIGHTS[k] * terms[k] for k in WEIGHTS) / sum(WEIGHTS.values())
    # a gate's small convolutions (C -> C/4 -> C on pooled features) and a main-path layer do different jobs: a
    # free-gap alignment would otherwise happily seed one from the other
    compatible = (kind > 0) & (s.rank[:, None] == t.rank[None, :]) & (s.gate[:, None] == t.gate[None, :])
    return np.where(compatible, np.clip(total, 0.0, 1.0), -1.0)


# --------------------------------------------------------------------------------------------------- alignment


def align(scores: np.ndarray) -> tuple[list[tuple[int, int]], float]:
    """One-to-one, order-preserving alignment maximising the summed score (Needleman-Wunsch, free gaps).

    Row i of the table is one numpy pass: a cell is the better of "match (i, j)" and "skip student i", then a running
    maximum along the row carries "skip teacher j".
    """
    n, m = scores.shape
    if n == 0 or m == 0:
        return [], 0.0
    table = np.zeros((n + 1, m + 1))
    for i in range(1, n + 1):
        best = np.maximum(table[i - 1, 1:], table[i - 1, :-1] + scores[i - 1])
        table[i, 1:] = np.maximum.accumulate(best)
    pairs, i, j = [], n, m
    while i > 0 and j > 0:
        s = scores[i - 1, j - 1]
        if s >= 0 and table[i, j] == table[i - 1, j - 1] + s:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif table[i, j] == table[i, j - 1]:
            j -= 1
        else:
            i -= 1
    return pairs[::-1], float(table[n, m])


@dataclass
class BlockMap:
    teacher: int | None  # teacher block, None = left at init
    repeat: bool  # True when this student block re-uses the teacher block of the block before it


def align_blocks(gain: np.ndarray, *, allow_repeat: bool = True) -> list[BlockMap]:
    """Monotone map of student blocks onto teacher blocks maximising the summed gain.

    A student block takes a fresh teacher block (later than the last one used), or none, or repeats one already used
    (worth REPEAT_DISCOUNT of its gain): the previous student block's, or, for a pair of blocks, the pair before it.
    Pairs matter because blocks end at every merge: a transformer block is an attention half and an MLP half, an
    inverted-residual block with squeeze-excite a half before the gate and one after, so a deeper student's extra
    block is two blocks that repeat the teacher's last two. Tables (1-based q, 0 = none yet): `fresh[p, q]` best
    total with block p on q by a fresh move, `on[p, q]` with block p on q by any move, `back[p, q]` with block p on
    q - 1 right after block p - 1 sat on q, `best[p, q]` best total for the first p blocks using blocks up to q.
    """
    P, Q = gain.shape
    neg = -np.inf
    fresh = np.full((P + 1, Q + 1), neg)
    on = np.full((P + 1, Q + 1), neg)
    back = np.full((P + 1, Q + 1), neg)
    best = np.zeros((P + 1, Q + 1))
    for p in range(1, P + 1):
        g = gain[p - 1]
        fresh[p, 1:] = best[p - 1, :-1] + g
        on[p, 1:] = fresh[p, 1:]
        if allow_repeat:
            on[p, 1:] = np.maximum(on[p, 1:], on[p - 1, 1:] + REPEAT_DISCOUNT * g)  # same block again
            on[p, 1:] = np.maximum(on[p, 1:], back[p - 1, 1:] + REPEAT_DISCOUNT * g)  # second of a repeated pair
            back[p, 2:] = on[p - 1, 2:] + REPEAT_DISCOUNT * g[:-1]  # first of a repeated pair
        row = np.maximum(best[p - 1], on[p])
        best[p] = np.maximum.accumulate(row)
    return _trace_blocks(gain, fresh, on, back, best)


def _trace_blocks(gain, fresh, on, back, best) -> list[BlockMap]:
    P, Q = gain.shape
    out: list[BlockMap] = [BlockMap(None, False) for _ in range(P)]
    p, q, state = P, Q, "best"
    while p > 0:
        if state == "best":
            if q > 0 and best[p, q] == best[p, q - 1]:
                q -= 1
            elif best[p, q] == best[p - 1, q]:
                p -= 1  # block p left at init
            else:
                state = "on"
        elif state == "back":  # block p sits on q - 1, block p - 1 on q
            out[p - 1] = BlockMap(q - 2, True)
            p, state = p - 1, "on"
        else:  # block p sits on teacher block q
            is_fresh = on[p, q] == fresh[p, q]
            out[p - 1] = BlockMap(q - 1, not is_fresh)
            if is_fresh:
                p, q, state = p - 1, q - 1, "best"
            else:
                again = on[p - 1, q] + REPEAT_DISCOUNT * gain[p - 1, q - 1]
                p, state = p - 1, "on" if on[p, q] == again else "back"
    return out


@dataclass
class Match:
    """Where one student unit's weights come from."""

    sources: list[int]  # teacher unit indices, best first
    weights: list[float]  # mixing weights, sum to 1
    scores: list[float]
    repeat: bool = False  # seeded from a teacher block that an earlier student block already used
    sure: bool = False  # aligned inside blocks of the same layer structure (or by growth_align)


@dataclass
class Alignment:
    matches: dict[int, Match]  # student unit index -> match (absent: left at init)
    block_map: list[BlockMap]
    total: float  # summed score of one-to-one matches (repeats excluded): the basis of tli_score
    scores: np.ndarray | None = None  # (n_student, n_teacher) pair scores, -1 where a pair may never match
    one_to_one: float | None = None  # `total` of the alignment without repeats, where asked for (tli_score's basis)


def match_graphs(student: Graph, teacher: Graph, *, top_k: int = 1, allow_repeat: bool = True,
                 teacher_head: Sequence[int] = (), student_head: Sequence[int] = (),
                 one_to_one_total: bool = False) -> Alignment:
    """Score every pair, align blocks then units, and attach top-k candidates with softmax weights. Given the units
    of both classifiers (`teacher_head`, `student_head`), the classifiers match only each other: no body layer is
    seeded from the teacher's classifier, and the student's classifier takes nothing from the teacher's body.
    one_to_one_total: also align without repeats, from the same scores, and keep that alignment's total in
    `Alignment.one_to_one` (what tli_score needs: one pass where two calls would score and align everything twice)."""
    scores = score_matrix(features(student.units), features(teacher.units))
    if len(teacher_head) or len(student_head):
        in_s, in_t = np.zeros(len(student.units), bool), np.zeros(len(teacher.units), bool)
        in_s[list(student_head)], in_t[list(teacher_head)] = True, True
        scores[in_s[:, None] != in_t[None, :]] = -1.0
    s_blocks = [b.units for b in student.blocks]
    t_blocks = [b.units for b in teacher.blocks]
    inner: dict[tuple[int, int], list[tuple[int, int]]] = {}
    gain = np.zeros((len(s_blocks), len(t_blocks)))
    for p, s_idx in enumerate(s_blocks):
        for q, t_idx in enumerate(t_blocks):
            pairs, total = align(scores[_rows(s_idx), _rows(t_idx)] if _runs(s_idx) and _runs(t_idx)
                                 else scores[np.ix_(s_idx, t_idx)])
            inner[p, q] = [(s_idx[a], t_idx[b]) for a, b in pairs]
            gain[p, q] = total
    block_map = align_blocks(gain, allow_repeat=allow_repeat)
    pairs, sure = _unit_pairs(student, teacher, scores, inner, block_map)
    matches = {i: _candidates(scores[i], j, 1 if i in sure else top_k, rep, i in sure)
               for i, (j, rep) in sorted(pairs.items())}
    found = Alignment(matches, block_map, _total(scores, pairs), scores)
    if one_to_one_total:
        found.one_to_one = found.total if not allow_repeat else _total(
            scores, _unit_pairs(student, teacher, scores, inner, align_blocks(gain, allow_repeat=False))[0])
    return found


def _runs(idx: list[int]) -> bool:
    """Are the indices one run (a block's units usually are)? Then a slice views the scores: no copy per pair."""
    return bool(idx) and idx[-1] - idx[0] == len(idx) - 1


def _rows(idx: list[int]) -> slice:
    return slice(idx[0], idx[-1] + 1)


def _unit_pairs(student: Graph, teacher: Graph, scores: np.ndarray, inner: dict, block_map: list[BlockMap]
                ) -> tuple[dict[int, tuple[int, bool]], set[int]]:
    """Student unit -> (teacher unit, repeat) from the block map, its gaps filled; and the sure student units."""
    pairs: dict[int, tuple[int, bool]] = {}
    sure: set[int] = set()
    for p, bm in enumerate(block_map):
        if bm.teacher is not None:
            pairs.update({s_i: (t_j, bm.repeat) for s_i, t_j in inner[p, bm.teacher]})
            if _same_structure(student, teacher, p, bm.teacher):
                sure.update(s_i for s_i, _ in inner[p, bm.teacher])
    pairs.update(_fill_gaps(scores, pairs))
    pairs.update(_partner_norms(student, teacher, scores, pairs))
    return pairs, sure


def _total(scores: np.ndarray, pairs: dict[int, tuple[int, bool]]) -> float:
    return float(sum(scores[i, j] for i, (j, rep) in pairs.items() if not rep))


def _same_structure(student: Graph, teacher: Graph, p: int, q: int) -> bool:
    """Blocks with the same sequence of layer kinds: their aligned layers are sure matches (paper 3.3 mixes top-k
    candidates only where "we do not have a sure match"), whatever the widths or kernel sizes."""
    kinds = [[g.units[i].kind for i in g.blocks[b].units] for g, b in ((student, p), (teacher, q))]
    return kinds[0] == kinds[1]


def _fill_gaps(scores: np.ndarray, pairs: dict[int, tuple[int, bool]]) -> dict[int, tuple[int, bool]]:
    """Align the student units the block map left out with the teacher units between their matched neighbours.

    Blocks are cut at merges, and families merge in different places (a squeeze-excite multiply splits an EfficientNet
    block in two, a MnasNet block has none), so one student block may straddle several teacher blocks. The block map
    pins the anchors; this fills the stretches between them, still in order and one-to-one.
    """
    n, m = scores.shape
    anchors = sorted((i, j) for i, (j, rep) in pairs.items() if not rep)
    bounds = [(-1, -1), *anchors, (n, m)]
    filled = {}
    for (i0, j0), (i1, j1) in pairwise(bounds):
        gap_s = [i for i in range(i0 + 1, i1) if i not in pairs]
        gap_t = list(range(j0 + 1, j1))
        if gap_s and gap_t:
            found, _ = align(scores[np.ix_(gap_s, gap_t)])
            filled.update({gap_s[a]: (gap_t[b], False) for a, b in found})
        # a layer the teacher has no counterpart for borrows the best compatible one around it (not counted in the
        # score: the teacher tensor is used twice)
        window = list(range(max(j0, 0), min(j1, m - 1) + 1))
        for i in gap_s:
            if i not in filled and window:
                j = window[int(np.argmax(scores[i, window]))]
                if scores[i, j] >= 0:
                    filled[i] = (j, True)
    return filled


def _partner_norms(student: Graph, teacher: Graph, scores: np.ndarray,
                   pairs: dict[int, tuple[int, bool]]) -> dict[int, tuple[int, bool]]:
    """Norms still unmatched take the norm that follows their layer's teacher layer.

    A norm normalises the layer just before it, so it belongs with that layer: when the layer was seeded from teacher
    layer j and j is followed by a norm, that norm's statistics and affine describe the very channels the layer's
    weights now come from. The gap filler finds no norm where the teacher units around a gap are all convolutions
    (efficientnet_b0 -> b1 left its last block's projection norm at init that way). Borrowed, like a gap filled from
    a window: not counted in the score.
    """
    out = {}
    for i in range(1, len(student.units)):
        producer = pairs.get(i - 1)
        if i in pairs or producer is None or student.units[i].kind != "norm" or student.units[i - 1].kind == "norm":
            continue
        j = producer[0] + 1
        if j < len(teacher.units) and teacher.units[j].kind == "norm" and scores[i, j] >= 0:
            out[i] = (j, True)
    return out


def _candidates(row: np.ndarray, aligned: int, top_k: int, repeat: bool, sure: bool) -> Match:
    """The aligned teacher unit first, then the next best compatible ones; softmax over scores (paper eq. 1)."""
    sources = [aligned]
    if top_k > 1:
        order = np.argsort(-row, kind="stable")
        sources += order[(order != aligned) & (row[order] >= 0)][: top_k - 1].tolist()
    z = np.array([row[j] for j in sources])
    w = np.exp(z - z.max())
    w = w / w.sum()
    return Match([int(j) for j in sources], [float(x) for x in w], [float(x) for x in z], repeat, sure)
