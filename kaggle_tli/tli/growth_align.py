"""Align a student that is the teacher grown wider and deeper: layer for layer, plus whole inserted branches.

A student has the teacher's structure up to widths and depths when its layers, in execution order, are the
teacher's layers one for one (same kind, no dimension smaller), except for whole segments the teacher lacks: extra
residual branches (a deeper stage: resnet18 -> resnet34, efficientnet_b0 -> b1, a ViT with more blocks) and extra
projection shortcuts (a resnet widened past its stem width needs one in its first block). Extra residual branches
start silent (their last layer zeroed, so the add passes its input through), seeded from the branch before them
where it has the same layers; extra shortcuts start as the identity. The student then computes the teacher's
function, exactly, once the matched layers are grown (grow.py).

One dynamic program over (student layers consumed, teacher layers matched), one numpy row per student layer. Where
several segments could be the inserted ones (a stage of two blocks grown to three), the later ones are, so the first
blocks of each stage keep their own teacher blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .match import features
from .units import Graph, Segment


@dataclass
class GrowthAlignment:
    pairs: dict[int, int]  # student unit -> teacher unit, one for one
    seeded: dict[int, int] = field(default_factory=dict)  # unit of an inserted branch -> the teacher unit it copies
    zeroed: set[int] = field(default_factory=set)  # last layer of each inserted residual branch
    identity: set[int] = field(default_factory=set)  # units of inserted projection shortcuts


def _compatible(student: Graph, teacher: Graph) -> np.ndarray:
    """(n_s, n_t): same kind, same gate role, same rank, and no student dimension smaller. The last layers (the
    classifier) pair whatever their class counts: whether they transfer is the head rule's decision."""
    s, t = features(student.units), features(teacher.units)
    out = ((s.kind[:, None] == t.kind[None, :]) & (s.gate[:, None] == t.gate[None, :])
           & (s.branch[:, None] == t.branch[None, :])
           & (s.rank[:, None] == t.rank[None, :]) & (s.dims[:, None, :] >= t.dims[None, :, :]).all(-1))
    if len(s.kind) and len(t.kind) and s.kind[-1] == t.kind[-1]:
        out[-1, -1] = True
    return out


def align_growth(student: Graph, teacher: Graph) -> GrowthAlignment | None:
    """The growth alignment of `student` onto `teacher` (module docstring), or None when the student is not the
    teacher grown."""
    n, m = len(student.units), len(teacher.units)
    if n < m or not m:
        return None
    ok = _compatible(student, teacher)
    inserts: dict[int, list[Segment]] = {}  # segment end -> segments that may be inserted there
    for seg in student.segments:
        if seg.kind in ("residual", "shortcut"):
            inserts.setdefault(seg.units[-1] + 1, []).append(seg)
    reach = np.zeros((n + 1, m + 1), dtype=bool)
    reach[0, 0] = True
    for i in range(n):  # row i is final here: every move into it starts at a smaller row
        for seg in inserts.get(i, ()):
            reach[i] |= reach[seg.units[0]]
        reach[i + 1, 1:] |= reach[i, :-1] & ok[i]
    for seg in inserts.get(n, ()):
        reach[n] |= reach[seg.units[0]]
    if not reach[n, m]:
        return None
    found = _trace_back(student, reach, ok, inserts)
    return found if _segments_agree(student, teacher, found) else None


def _trace_back(student: Graph, reach: np.ndarray, ok: np.ndarray, inserts: dict) -> GrowthAlignment:
    out = GrowthAlignment({})
    i, j = reach.shape[0] - 1, reach.shape[1] - 1
    inserted: list[Segment] = []
    while i > 0:
        seg = next((s for s in inserts.get(i, ()) if reach[s.units[0], j]), None)
        if seg is not None:  # prefer inserting: later segments are the extra ones
            inserted.append(seg)
            i = seg.units[0]
            continue
        out.pairs[i - 1] = j - 1
        i, j = i - 1, j - 1
    for seg in inserted:
        if seg.kind == "shortcut":
            out.identity.update(seg.units)
            continue
        out.seeded.update(_seed_from_previous(student, seg, out.pairs))
        if seg.zero_unit is not None:
            out.zeroed.add(seg.zero_unit)
    return out


def _seed_from_previous(student: Graph, seg: Segment, pairs: dict[int, int]) -> dict[int, int]:
    """An inserted branch copies the teacher layers of the nearest earlier matched branch with the same layers (the
    block it repeats; failing that, the same kinds of layer), where there is one; otherwise it stays at init (silent all the same)."""
    def layers(s: Segment) -> list[tuple]:  # kinds and shapes: an attention half is not an MLP half
        return [(student.units[i].kind, student.units[i].shape) for i in s.units]

    def kinds(s: Segment) -> list[str]:
        return [student.units[i].kind for i in s.units]

    earlier = [s for s in student.segments if s.kind == "residual" and s.units[-1] < seg.units[0]
               and all(i in pairs for i in s.units) and kinds(s) == kinds(seg)]
    if not earlier:
        return {}
    alike = [s for s in earlier if layers(s) == layers(seg)]
    source = max(alike or earlier, key=lambda s: s.units[0])
    return {i: pairs[k] for i, k in zip(seg.units, source.units, strict=True)}


def _segments_agree(student: Graph, teacher: Graph, found: GrowthAlignment) -> bool:
    """Layers pairing up one for one is not enough: a deep stem's three convolutions would pair with a resnet's stem
    and its first residual branch. The data flow must agree too: every student branch not inserted maps exactly
    onto a teacher branch, and every teacher branch is the image of one. (A residual branch may face a branch beside
    an inserted projection shortcut: that shortcut starts as the identity.)"""
    t_segments = {tuple(seg.units) for seg in teacher.segments}
    images = set()
    for seg in student.segments:
        if any(i not in found.pairs for i in seg.units):
            if all(i not in found.pairs for i in seg.units):
                continue  # inserted
            return False
        images.add(tuple(found.pairs[i] for i in seg.units))
    return images == t_segments
