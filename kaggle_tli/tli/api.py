"""`transfer`: trace both models, match their layers, inject the teacher's tensors into the student."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .activation import HOMOGENEOUS, SMOOTH_RELUS, sharpen_activations
from .forward import unwrap_compiled
from .graph import trace_as
from .grow import GROWTH_MODES
from .growth_align import GrowthAlignment, align_growth
from .guard import check_student, check_unchanged, fingerprint
from .inject import ResizeCache
from .match import Alignment, Match, match_graphs
from .options import DEFAULTS, TransferOptions
from .place import Growth, place_identity, place_unit, report_row
from .report import TransferReport
from .score import graph_score, score_from_total
from .units import Graph, Unit, first_names, named_tensors


@dataclass
class _Teacher:
    graph: Graph
    alignment: Alignment
    tensors: dict[str, Tensor]


def transfer(
    teacher: nn.Module | Sequence[nn.Module],
    student: nn.Module,
    *,
    input_size: tuple[int, ...] | None = None,
    teacher_input_size: tuple[int, ...] | None = None,
    options: TransferOptions | None = None,
    **overrides: Any,
) -> TransferReport:
    """Inject the teacher's weights into `student` (in place) and report what happened to every student tensor.

    teacher: a model, or several (each student tensor then takes its best-scoring source).
    input_size: (C, H, W) for the dummy forward pass; default from timm's pretrained_cfg.
    teacher_input_size: the teacher's own (C, H, W) where it differs from the student's.
    options, overrides: a `TransferOptions`, and/or any of its fields by name (`lam=0.5`, `method="combo"`, ...):
        see `TransferOptions` for what each does and its default.
    """
    start = time.perf_counter()
    with _gc_paused():
        return _transfer(teacher, student, input_size, teacher_input_size, options, overrides, start)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector held off for the call: a transfer makes tens of thousands of short-lived
    objects (graph nodes, dicts, tensors), and each full collection they trigger walks every object alive,
    both models' modules included, at random moments (it doubled some traces). What they leave is collected after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _transfer(teacher, student, input_size, teacher_input_size, options, overrides, start) -> TransferReport:
    opts = (options or DEFAULTS).with_overrides(**overrides)
    teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    teachers, student = [unwrap_compiled(t) for t in teachers], unwrap_compiled(student)
    _check_models(teachers, student)
    teacher_prints = [fingerprint(t) for t in teachers]
    s_graph = trace_as(student, input_size, "student")
    found = []
    for t_idx, t in enumerate(teachers):
        role = "teacher" if len(teachers) == 1 else f"teacher {t_idx}"
        t_graph = trace_as(t, teacher_input_size or input_size, role, teacher_input_size is None)
        heads = {} if opts.head_as_source else {"teacher_head": _head_indices(t, t_graph),
                                                "student_head": _head_indices(student, s_graph)}
        alignment = match_graphs(s_graph, t_graph, top_k=opts.top_k, one_to_one_total=not heads, **heads)
        found.append(_Teacher(t_graph, alignment, _tensors(t)))
    plan = _plan(student, s_graph, found, opts)
    rows = _write(student, s_graph, found, plan, opts)
    sharpened = _sharpen(teachers, student, s_graph, found, plan.choices, opts.activation_scale, rows)
    for t_idx, (t, before) in enumerate(zip(teachers, teacher_prints, strict=True)):
        check_unchanged(t, before, "teacher" if len(teachers) == 1 else f"teacher {t_idx}")
    check_student(student)

    params = set(first_names(named_tensors(student)[0]))
    counted = [r for r in rows if r["student"] in params]
    total = sum(r["numel"] for r in counted) or 1
    settings = {k: v for k, v in opts.as_dict().items() if k != "activation_scale"}  # _sharpen says if it applied
    settings.update(growth=plan.growth.mode if plan.growth else "none", teachers=len(found), **sharpened)
    return TransferReport(
        rows=rows,
        score=max(_score(s_graph, t) for t in found),
        coverage=sum(r["fraction"] * r["numel"] for r in counted) / total,
        blended=sum(r["blended"] * r["numel"] for r in counted) / total,
        settings=settings,
        unreached_student=list(s_graph.unreached),
        unreached_teacher=[n for t in found for n in t.graph.unreached],
        seconds=time.perf_counter() - start,
    )


@dataclass
class _Plan:
    """What happens to each student unit: its source, or zeroing, or the identity, or nothing (head, unmatched)."""

    choices: dict  # student unit -> (teacher index, Match)
    zeroed: set[int]  # last layers of extra residual branches
    identity: set[int]  # units of projection shortcuts the teacher did without
    head: set[str]  # classifier units left at init (class count differs)
    growth: Growth | None


def _plan(student: nn.Module, s_graph: Graph, found: list[_Teacher], opts: TransferOptions) -> _Plan:
    same_classes = [t_idx for t_idx, t in enumerate(found) if not _heads_differ(s_graph, t.graph)]
    head = set() if opts.transfer_head or len(same_classes) == len(found) else _head_units(student, s_graph)
    grown = align_growth(s_graph, found[0].graph) if opts.method == "auto" and len(found) == 1 else None
    if grown is None:
        choices = _matched_choices(s_graph, found, head, same_classes)
        zeroed = _identity_units(s_graph, found, choices) if opts.extra_blocks == "identity" else set()
        return _Plan(choices, zeroed, set(), head, None)
    choices = _grown_choices(grown, head, s_graph, found)
    zeroed = grown.zeroed if opts.extra_blocks == "identity" else set()
    growth = _growth_plan(student, s_graph, found, choices, opts.growth_jitter, opts.seed)
    return _Plan(choices, zeroed, grown.identity, head, growth)


def _write(student: nn.Module, s_graph: Graph, found: list[_Teacher], plan: _Plan, opts: TransferOptions
           ) -> list[dict]:
    """Write every student tensor as planned; one report row each."""
    s_tensors = _tensors(student)
    modules = dict(student.named_modules()) if plan.identity else {}
    cache = ResizeCache()
    rows = []
    with torch.no_grad():
        for i, unit in enumerate(s_graph.units):
            if i in plan.identity:
                eps = float(getattr(modules.get(unit.name), "eps", 1e-5))
                rows += [place_identity(unit, local, key, s_tensors[key], eps) for local, key in unit.tensors.items()]
                continue
            choice = plan.choices.get(i)
            skip = _skip_reason(unit, choice, opts.transfer_norm, unit.name in plan.head and choice is None)
            if skip:
                placed = [report_row(key, s_tensors[key], unit.kind, "init", reason=skip)
                          for key in unit.tensors.values()]
            else:
                t_idx, match = choice
                items = [(local, key, s_tensors[key], _sources(found[t_idx], match, local))
                         for local, key in unit.tensors.items()]
                placed = place_unit(unit, items, match, t_idx, opts.lam, plan.growth, cache)
            for (local, key), row in zip(unit.tensors.items(), placed, strict=True):
                if i in plan.zeroed and local in ("weight", "bias", ""):
                    s_tensors[key].zero_()
                    row.update(method="zeroed", fraction=1.0, blended=0.0, reason=_ZEROED)
                rows.append(row)
    for key in s_graph.unreached:
        rows.append(report_row(key, s_tensors[key], "", "init", reason="never used by the forward pass"))
    reported = {r["student"] for r in rows} | set(s_graph.aliases)
    for key in student.state_dict(keep_vars=True):
        if key not in reported and key in s_tensors:  # e.g. a model's own input-normalisation constants
            rows.append(report_row(key, s_tensors[key], "", "init", reason=_UNTRACED_BUFFER))
    return rows


def _sharpen(teachers: list[nn.Module], student: nn.Module, s_graph: Graph, found: list[_Teacher], choices: dict,
             scale: float, rows: list[dict]) -> dict:
    """Rescale a student whose smooth activations replace the teacher's ReLUs (activation.py), noting it in the rows
    of the tensors it changed; returns what to add to the report's settings: the scale applied, or why none was."""
    swapped = _swapped_relus(s_graph, found, choices)
    if not swapped or scale == 1.0:
        return {}
    blockers = sorted({u.activation for u in s_graph.units} - SMOOTH_RELUS - HOMOGENEOUS)
    if blockers:  # decided from the graph, before paying for a probe
        return _not_sharpened(f"the student also has {', '.join(blockers)} activations, which scaling would change")
    t_idx = max(set(swapped), key=swapped.count)  # the teacher most of the swapped layers come from
    if found[t_idx].graph.input_size != s_graph.input_size:
        return _not_sharpened("teacher and student take inputs of other sizes: no common probe to check the scaling")
    heads = [_classifier(m, g) for m, g in ((teachers[t_idx], found[t_idx].graph), (student, s_graph))]
    if not all(isinstance(getattr(h, "weight", None), Tensor) for h in heads):
        return _not_sharpened("no linear classifier found to rescale")
    why_not, changed = sharpen_activations(teachers[t_idx], student, *heads, scale, s_graph.input_size)
    if why_not:
        return _not_sharpened(why_not)
    module_names = {id(m): name for name, m in student.named_modules()}
    keys = {f"{module_names[id(m)]}.{local}".lstrip(".") for m, local in changed}
    note = f"scaled by {scale:g} so the smooth activations act like the teacher's ReLUs (activation_scale)"
    for row in rows:
        if row["student"] in keys:
            row["reason"] = f"{row['reason']}; {note}" if row["reason"] else note
    return {"activation_scale": scale}


def _swapped_relus(s_graph: Graph, found: list[_Teacher], choices: dict) -> list[int]:
    """For each student layer followed by a smooth activation whose teacher layer was followed by a ReLU: the index
    of that teacher."""
    out = []
    for i, (t_idx, match) in choices.items():
        source = found[t_idx].graph.units[match.sources[0]]
        if s_graph.units[i].activation in SMOOTH_RELUS and source.activation == "relu":
            out.append(t_idx)
    return out


def _not_sharpened(reason: str) -> dict:
    return {"activation_scale": 1.0, "activation_scale_skipped": reason}


def _classifier(model: nn.Module, graph: Graph) -> nn.Module | None:
    """The classifier: timm's get_classifier() when the model has one, else the module of the last unit."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if isinstance(head, nn.Module):
        return head
    return dict(model.named_modules()).get(graph.units[-1].name) if graph.units else None


_UNTRACED_BUFFER = "a buffer outside any traced layer: left as the student has it"
_ZEROED = "extra block seeded from a repeated teacher block: residual zeroed so the block starts as an identity"


# --------------------------------------------------------------------------------------------------- checks


def _check_models(teachers: list, student: nn.Module) -> None:
    if not isinstance(student, nn.Module):
        raise TypeError(f"student must be a torch.nn.Module, got {type(student).__name__}")
    if not teachers:
        raise ValueError("no teacher given: pass a model or a list of models")
    for t in teachers:
        if not isinstance(t, nn.Module):
            raise TypeError(
                f"teacher must be a torch.nn.Module (or a list of them), got {type(t).__name__}; "
                "to transfer from a run directory or a weights file use kaggle_tli.transfer"
            )
        if t is student:
            raise ValueError("teacher and student are the same object: build a separate student model to inject into")


# --------------------------------------------------------------------------------------------------- helpers


def _tensors(model: nn.Module) -> dict[str, Tensor]:
    params, buffers = named_tensors(model)
    out = {**params, **buffers}
    return out


def _score(s_graph: Graph, t: _Teacher) -> float:
    """The TLI score of the pair: from the transfer's own alignment where it scored every pair as tli_score does
    (the classifiers matched as any layer), else aligned afresh."""
    if t.alignment.one_to_one is not None:
        return score_from_total(s_graph, t.graph, t.alignment.one_to_one)
    return graph_score(s_graph, t.graph)


def _head_units(model: nn.Module, graph: Graph) -> set[str]:
    """Units of the classifier (`_classifier`); the last unit when that is a lone parameter."""
    head = _classifier(model, graph)
    if head is None:
        return {graph.units[-1].name} if graph.units else set()
    ids = {id(m) for m in head.modules()}
    names = {n for n, m in model.named_modules() if id(m) in ids}
    return {u.name for u in graph.units if u.name in names or u.name.rpartition(".")[0] in names}


def _head_indices(model: nn.Module, graph: Graph) -> list[int]:
    """Positions in `graph.units` of the classifier's units (`_head_units`)."""
    names = _head_units(model, graph)
    return [i for i, u in enumerate(graph.units) if u.name in names]


def _heads_differ(student: Graph, teacher: Graph) -> bool:
    """Do the models predict a different number of outputs (classes)? Read off the traced logits (the first output
    tensor), so it works for any model, not only timm's (which also say `num_classes`)."""
    return teacher.output_shape[-1:] != student.output_shape[-1:]


def _best_teacher(found: list[_Teacher], i: int, allowed: list[int] | None = None) -> tuple[int, Match] | None:
    """The teacher (among `allowed`, default all) whose match for student unit `i` scores highest."""
    best = None
    for t_idx, t in enumerate(found):
        m = t.alignment.matches.get(i) if allowed is None or t_idx in allowed else None
        if m is not None and (best is None or m.scores[0] > best[1].scores[0]):
            best = (t_idx, m)
    return best


def _skip_reason(unit: Unit, choice, transfer_norm: bool, head_differs: bool) -> str:
    if head_differs:
        return "classifier: class count differs (transfer_head=True to fill it)"
    if choice is None:
        return "no matching teacher layer"
    if unit.kind == "norm" and not transfer_norm:
        return "norm transfer off"
    return ""


def _sources(teacher: _Teacher, match: Match, local: str) -> list[tuple[str, Tensor, float]]:
    """(teacher key, tensor, mixing weight) of each of a match's sources that has a tensor named `local`."""
    out = []
    for j, w in zip(match.sources, match.weights, strict=True):
        key = teacher.graph.units[j].tensors.get(local)
        if key is not None:
            out.append((key, teacher.tensors[key], w))
    return out


def _matched_choices(s_graph: Graph, found: list[_Teacher], head: set[str], same_classes: list[int]) -> dict:
    """Student unit -> (teacher index, match) from the score-based alignment; a classifier takes its weights only
    from a teacher with its class count."""
    choices = {}
    for i, unit in enumerate(s_graph.units):
        choice = _best_teacher(found, i, same_classes if unit.name in head else None)
        if choice is not None:
            choices[i] = choice
    return choices


def _grown_choices(grown: GrowthAlignment, head: set[str], s_graph: Graph, found: list[_Teacher]) -> dict:
    """Student unit -> (0, match) from the growth alignment: every pair is sure; an inserted branch repeats a
    teacher block; a classifier whose class count differs is left to the head rule."""
    scores = found[0].alignment.scores
    choices = {}
    for table, repeat in ((grown.pairs, False), (grown.seeded, True)):
        for i, j in table.items():
            if s_graph.units[i].name not in head:
                score = float(scores[i, j]) if scores is not None else 1.0
                choices[i] = (0, Match([j], [1.0], [score], repeat=repeat, sure=True))
    return choices


def _growth_plan(student: nn.Module, graph: Graph, found: list[_Teacher], choices: dict, jitter: float,
                 seed: int) -> Growth:
    """Function-preserving growth applies when the student is the teacher grown (growth_align.py); across
    families ComboInjection stays the method. The mode is "duplicate" when a grown layer is a norm over channels
    (LayerNorm, GroupNorm), else "silent" (grow.py)."""
    modules = dict(student.named_modules())
    channel_norms = {u.name for u in graph.units if u.kind == "norm"
                     and "BatchNorm" not in type(modules.get(u.name)).__name__}
    grown_norm = any(graph.units[i].name in channel_norms
                     and graph.units[i].shape != found[t].graph.units[m.sources[0]].shape
                     for i, (t, m) in choices.items())
    groups = {u.name: getattr(modules.get(u.name), "groups", 1) for u in graph.units if u.kind == "conv"}
    group_norms = {u.name for u in graph.units if isinstance(modules.get(u.name), nn.GroupNorm)
                   and modules[u.name].num_groups > 1}
    return Growth(GROWTH_MODES[1] if grown_norm else GROWTH_MODES[0], jitter,
                  torch.Generator().manual_seed(seed), groups, channel_norms, group_norms)


def _identity_units(graph: Graph, found: list[_Teacher], choices: dict) -> set[int]:
    """Units to zero so that student blocks repeating a teacher block start as identities (Net2Net's deeper
    transform): the last layer of a residual branch whose shortcut is an identity, in a block seeded from a teacher
    block already used upstream.

    Except the second half of a block a squeeze-excite gate splits: regnety's blocks map onto regnetx's in two
    halves, the first taking a teacher block afresh and the one after the gate's multiply repeating it with teacher
    layers nothing has used yet, and zeroing that would delete a block the teacher has. (Across families the zeroing
    stays: students learnt faster with those blocks as identities, docs/benchmarks.md.)
    """
    first_use: dict[tuple[int, int], int] = {}  # (teacher, teacher unit) -> the first student unit it seeds
    for i in sorted(choices):  # student units in execution order
        first_use.setdefault((choices[i][0], choices[i][1].sources[0]), i)
    out = set()
    for t_idx, t in enumerate(found):
        previous = None
        for block, bm in zip(graph.blocks, t.alignment.block_map, strict=True):
            z = block.zero_unit
            if bm.repeat and z is not None and choices.get(z, (None,))[0] == t_idx:
                novel = first_use[t_idx, choices[z][1].sources[0]] == z
                if not (novel and _second_half(previous, bm)):
                    out.add(z)
            previous = (block, bm)
    return out


def _second_half(previous, bm) -> bool:
    """Does this block finish the previous one, cut at a gate's multiply, on the same fresh teacher block? (Not when
    the multiply closes a whole residual block, as in SE-ResNet, where the previous block has its own zero unit.)"""
    if previous is None:
        return False
    block, prev_bm = previous
    cut = block.merge == "MulBackward0" and block.zero_unit is None
    return cut and not prev_bm.repeat and prev_bm.teacher == bm.teacher


