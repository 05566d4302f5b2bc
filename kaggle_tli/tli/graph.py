"""Trace a model's execution graph into its ordered units, with the block, depth, branch and activation of each.

One forward pass (forward.py) records the autograd graph; module identity comes from the units (units.py),
parameter identity from `AccumulateGrad.variable`. From the graph, per unit: execution order (autograd sequence
numbers), the block it sits in (blocks end at add / mul / cat nodes that merge two data paths, as in the paper), its
depth inside the block, the branch of the block's merge it feeds (a residual branch vs. a projection shortcut), the
activation that follows it, and whether it only feeds a sigmoid gate (squeeze-excite's small convolutions, which
match only each other).
"""

from __future__ import annotations

import bisect
import heapq

from torch import nn

from .forward import TraceError, checked_size, default_input_size, run_forward, tensors_in, unwrap_compiled
from .units import Block, Graph, Segment, Unit, collect_units, first_names, named_tensors

__all__ = ["Block", "Graph", "TraceError", "Unit", "default_input_size", "trace", "trace_as", "unwrap_compiled"]

# autograd node name -> canonical activation name
_ACTIVATIONS = {
    "ReluBackward0": "relu",
    "ReluBackward1": "relu",
    "HardtanhBackward0": "relu6",
    "LeakyReluBackward0": "leaky_relu",
    "EluBackward0": "elu",
    "GeluBackward0": "gelu",
    "SiluBackward0": "silu",
    "MishBackward0": "mish",
    "HardswishBackward0": "hard_swish",
    "HardsigmoidBackward0": "hard_sigmoid",
    "SigmoidBackward0": "sigmoid",
    "TanhBackward0": "tanh",
    "SoftplusBackward0": "softplus",
    "PreluKernelBackward0": "prelu",
}
# nodes an activation may hide behind: norms, reshapes, dropout-free copies
_PASS_THROUGH = (
    "NativeBatchNormBackward0",
    "CudnnBatchNormBackward0",
    "NativeLayerNormBackward0",
    "NativeGroupNormBackward0",
    "ViewBackward0",
    "ReshapeAliasBackward0",
    "UnsafeViewBackward0",
    "PermuteBackward0",
    "TransposeBackward0",
    "CloneBackward0",
    "AddBackward0",  # bias added separately
    "ExpandBackward0",
)
# a multiply input that comes straight from one of these is a gate (see _Walk.gate_inputs)
_GATES = ("SigmoidBackward0", "HardsigmoidBackward0")
_MERGES = ("AddBackward0", "AddBackward1", "SubBackward0", "MulBackward0", "CatBackward0", "CatBackward")


# --------------------------------------------------------------------------------------------------- graph walk


class _Walk:
    """Autograd graph from the outputs back to the leaves, with forward (consumer) edges added."""

    def __init__(self, roots: list, input_node):
        self.nodes: dict[int, object] = {}
        self.children: dict[int, list[int]] = {}
        self.consumers: dict[int, list[int]] = {}
        stack = list(roots)
        while stack:
            node = stack.pop()
            if node is None or id(node) in self.nodes:
                continue
            self.nodes[id(node)] = node
            kids = [f for f, _ in node.next_functions if f is not None]
            self.children[id(node)] = [id(k) for k in kids]
            for k in kids:
                self.consumers.setdefault(id(k), []).append(id(node))
            stack.extend(kids)
        self.data = self._reaches(id(input_node)) if input_node is not None else set(self.nodes)

    def _reaches(self, target: int) -> set[int]:
        """Nodes that depend on the input: everything upstream (in forward terms) of the input's leaf."""
        found, stack = {target}, [target]
        while stack:
            for parent in self.consumers.get(stack.pop(), ()):
                if parent not in found:
                    found.add(parent)
                    stack.append(parent)
        return found

    def name(self, nid: int) -> str:
        return type(self.nodes[nid]).__name__

    def seq(self, nid: int) -> int:
        return self.nodes[nid]._sequence_nr()

    def is_merge(self, nid: int) -> bool:
        if self.name(nid) not in _MERGES or nid not in self.data:
            return False
        return sum(1 for c in self.children[nid] if c in self.data) >= 2

    def gate_inputs(self, nid: int) -> list[int]:
        """The inputs of a multiply that come straight from a sigmoid: the gate of `x * sigmoid(f(x))`, as in
        squeeze-excite."""
        if self.name(nid) != "MulBackward0":
            return []
        found = []
        for start in (c for c in self.children[nid] if c in self.data):
            node = start
            for _ in range(4):  # the gate reaches the multiply through a broadcast or a reshape
                if self.name(node) not in _PASS_THROUGH or not self.children[node]:
                    break
                node = self.children[node][0]
            if self.name(node) in _GATES:
                found.append(start)
        return found


def _leaf_for(walk: _Walk, tensor_names: dict[int, str]) -> dict[str, int]:
    """state_dict key -> id of its AccumulateGrad node."""
    out = {}
    for nid, node in walk.nodes.items():
        var = getattr(node, "variable", None)
        if var is not None and id(var) in tensor_names:
            out[tensor_names[id(var)]] = nid
    return out


def _first_data_consumer(walk: _Walk, leaf: int) -> int | None:
    """The earliest node on the data path that uses a parameter (a linear's weight goes through a transpose first)."""
    best, stack, seen = None, list(walk.consumers.get(leaf, ())), set()
    while stack:
        nid = stack.pop()
        if nid in seen:
            continue
        seen.add(nid)
        if nid in walk.data:
            if best is None or walk.seq(nid) < walk.seq(best):
                best = nid
        else:
            stack.extend(walk.consumers.get(nid, ()))
    return best


def _activation_after(walk: _Walk, start: int, max_hops: int = 4) -> str:
    frontier = [start]
    for _ in range(max_hops):
        nxt = []
        for nid in frontier:
            for c in walk.consumers.get(nid, ()):
                name = walk.name(c)
                if name in _ACTIVATIONS:
                    return _ACTIVATIONS[name]
                if name in _PASS_THROUGH and not walk.is_merge(c):
                    nxt.append(c)
        frontier = nxt
    return "none"


def _upstream(walk: _Walk, start: int, *, through_merges: bool = False) -> set[int]:
    """Data nodes feeding `start`, back to (not through) the previous merges, or through them to the input."""
    found, stack = set(), [start]
    while stack:
        nid = stack.pop()
        if nid in found or nid not in walk.data:
            continue
        found.add(nid)
        if through_merges or not walk.is_merge(nid):
            stack.extend(walk.children[nid])
    return found


def _exclusive(walk: _Walk, a: int, b: int) -> tuple[set[int], set[int]]:
    """The data nodes upstream of `a` (itself included) that do not feed `b`, and those of `b` that do not feed `a`.

    Both are walked back together, latest node first (autograd numbers nodes in the order the forward pass made
    them, so every consumer of a node comes before it): a node's label, which inputs reach it, is final when it
    is taken, and the walk stops once every node still waiting is reached from both, everything above it being
    common. Where two full walks back to the input took time quadratic in the depth (a ViT's 24 adds)."""
    label = {a: 1, b: 2} if a != b else {a: 3}
    heap = sorted((-walk.seq(n), n) for n in label)  # a sorted list is a heap
    single = sum(1 for v in label.values() if v != 3)  # waiting nodes reached from one side only
    out: tuple[set[int], set[int]] = (set(), set())
    while heap and single:
        _, nid = heapq.heappop(heap)
        mark = label[nid]
        if mark != 3:
            single -= 1
            out[mark - 1].add(nid)
        for child in walk.children[nid]:
            if child not in walk.data or not walk.children[child]:  # the input's leaf feeds both
                continue
            before = label.get(child)
            if before is None:
                label[child] = mark
                heapq.heappush(heap, (-walk.seq(child), child))
                single += mark != 3
            elif before | mark != before:
                label[child] = 3
                single -= 1  # it waited with one side's label
    return out


def _gate_paths(walk: _Walk) -> set[int]:
    """Nodes that feed only the gate of a gating multiply: squeeze-excite's pooling, convolutions and sigmoid."""
    out: set[int] = set()
    for nid in walk.data:
        for gate in walk.gate_inputs(nid):
            others = [c for c in walk.children[nid] if c in walk.data and c != gate]
            out |= _upstream(walk, gate) - set().union(*(_upstream(walk, c) for c in others))
    return out


def _label_branches(walk: _Walk, merges: list[int]) -> dict[int, tuple[int, int]]:
    """node -> (merge index, input index) for nodes on exactly one input path of their first downstream merge.

    Nodes feeding several inputs of the merge (everything before the fork: a ViT's patch embedding, say) get input
    index -1, the trunk of the block.
    """
    label: dict[int, tuple[int, int]] = {}
    for m_idx, m in enumerate(merges):
        inputs = [_upstream(walk, c) for c in walk.children[m] if c in walk.data]
        for b_idx, nodes in enumerate(inputs):
            others = set().union(*(n for j, n in enumerate(inputs) if j != b_idx))
            for nid in nodes:
                if nid not in label and not walk.is_merge(nid):
                    label[nid] = (m_idx, b_idx if nid not in others else -1)
    return label


def trace(model: nn.Module, input_size: tuple[int, ...] | None = None) -> Graph:
    """Trace `model` once and describe every parameter-holding layer (see the module docstring)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    model = unwrap_compiled(model)
    if not any(True for _ in model.parameters()):
        raise ValueError(f"{type(model).__name__} has no parameters: there is nothing to transfer to or from.")
    size = checked_size(input_size) if input_size is not None else default_input_size(model)
    units, aliases = collect_units(model)
    out, x, tensor_names, meta = run_forward(model, size)
    outputs = list(tensors_in(out))
    roots = [t.grad_fn for t in outputs if t.grad_fn is not None]
    if not roots:
        raise TraceError(f"{type(model).__name__}: the output does not depend on any parameter.")
    walk = _Walk(roots, getattr(x, "grad_fn", None) or _input_leaf(roots, x))
    leaves = _leaf_for(walk, tensor_names)

    reached, consumer = [], {}
    for unit in units:
        leaf = leaves.get(unit.signature) or next((leaves[k] for k in unit.tensors.values() if k in leaves), None)
        node = _first_data_consumer(walk, leaf) if leaf is not None else None
        if node is not None:
            consumer[unit.name] = node
            reached.append(unit)
    reached.sort(key=lambda u: walk.seq(consumer[u.name]))
    reached_keys = {k for u in reached for k in u.tensors.values()}
    all_params = first_names(named_tensors(model)[0])
    unreached = [n for n in all_params if n not in reached_keys]

    merges = sorted((n for n in walk.nodes if walk.is_merge(n)), key=walk.seq)
    gates = _gate_paths(walk)
    for unit in reached:
        unit.gate = consumer[unit.name] in gates
    blocks = _split_blocks(walk, reached, consumer, merges)
    segments = _segments(walk, reached, consumer, merges)
    return Graph(reached, blocks, unreached, size, meta, aliases, tuple(outputs[0].shape), segments)


def trace_as(model: nn.Module, input_size: tuple[int, ...] | None, role: str, offer_teacher_size: bool = False) -> Graph:
    """trace(), with the failing model's role ("student", "teacher 1", ...) leading the message, and
    `teacher_input_size` offered where a teacher was traced at the student's size."""
    try:
        return trace(model, input_size)
    except TraceError as e:
        extra = (" A teacher that takes inputs of another size than the student is traced at its own size with "
                 "teacher_input_size=(C, H, W)." if offer_teacher_size and input_size is not None else "")
        raise TraceError(f"{role}: {e}{extra}") from e


def _input_leaf(roots, x):
    """With a real forward pass the input is a leaf: find its AccumulateGrad node by identity."""
    stack, seen = list(roots), set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if getattr(node, "variable", None) is x:
            return node
        stack.extend(f for f, _ in node.next_functions)
    return None


def _split_blocks(walk: _Walk, units: list[Unit], consumer: dict[str, int], merges: list[int]) -> list[Block]:
    merge_seq = [walk.seq(m) for m in merges]
    labels = _label_branches(walk, merges)
    members: dict[int, list[int]] = {}
    raw_branch: dict[int, int] = {}
    for i, unit in enumerate(units):
        node = consumer[unit.name]
        unit.order = i
        unit.block = bisect.bisect_left(merge_seq, walk.seq(node))
        raw_branch[i] = labels.get(node, (unit.block, -1))[1]
        unit.activation = _activation_after(walk, node)
        members.setdefault(unit.block, []).append(i)

    blocks = []
    for new_idx, (b, idx) in enumerate(sorted(members.items())):
        canonical = _canonical_branches([raw_branch[i] for i in idx])
        for depth, i in enumerate(idx):
            u = units[i]
            u.block, u.depth, u.block_len, u.branch = new_idx, depth, len(idx), canonical[raw_branch[i]]
        merge = merges[b] if b < len(merges) else None
        zero = _zero_unit(walk, merge, idx, units, raw_branch)
        if zero is None and b + 1 not in members:
            zero = _zero_before_gated_add(walk, merges, b, idx, units)
        blocks.append(Block(idx, walk.name(merge) if merge else "", zero))
    return blocks


def _zero_before_gated_add(walk: _Walk, merges: list, b: int, idx: list[int], units: list[Unit]) -> int | None:
    """SE-ResNet's blocks end `x + se(bn2(...))`: the gate's multiply ends the block that holds the layers, and the
    add right after it holds none, so its shortcut is an identity. Zeroing the last layer before the gate zeroes
    what the multiply passes on, and the residual block starts as an identity."""
    if b + 1 >= len(merges) or walk.name(merges[b]) != "MulBackward0":
        return None
    add = merges[b + 1]
    if walk.name(add) not in ("AddBackward0", "AddBackward1") or merges[b] not in walk.children[add]:
        return None
    main = [i for i in idx if not units[i].gate]
    return max(main, key=lambda i: units[i].order) if main else None


def _canonical_branches(raw: list[int]) -> dict[int, int]:
    """Number branches by how many layers they hold (main path 0, shortcut 1, ...; trunk -1), so the numbering does
    not depend on whether a model's code writes `x + shortcut` or `shortcut + x`."""
    counts: dict[int, int] = {}
    for r in raw:
        if r >= 0:
            counts[r] = counts.get(r, 0) + 1
    ranked = sorted(counts, key=lambda r: (-counts[r], r))
    return {-1: -1, **{r: k for k, r in enumerate(ranked)}}


def _zero_unit(walk: _Walk, merge, idx: list[int], units: list[Unit], raw_branch: dict[int, int]) -> int | None:
    """The unit whose zeroing turns a residual block into an identity: the last layer of the one input path that
    has layers, when the block ends in an add whose other input carries none (an identity shortcut)."""
    if merge is None or walk.name(merge) not in ("AddBackward0", "AddBackward1"):
        return None
    n_inputs = sum(1 for c in walk.children[merge] if c in walk.data)
    with_layers = {raw_branch[i] for i in idx if raw_branch[i] >= 0}
    if n_inputs != 2 or len(with_layers) != 1:
        return None
    branch = with_layers.pop()
    return max((i for i in idx if raw_branch[i] == branch), key=lambda i: units[i].order)


def _segments(walk: _Walk, units: list[Unit], consumer: dict[str, int], merges: list[int]) -> list[Segment]:
    """For every add of two data paths: the layers on each input that the other input does not share. One side
    without layers makes the other a residual branch (squeeze-excite gates and all); a side holding only a 1x1 conv
    (and its norm) beside a longer one is a projection shortcut, and the longer one its branch. Kept only where the
    layers run contiguously."""
    unit_at = {consumer[u.name]: i for i, u in enumerate(units)}
    out = []
    for m in merges:
        if walk.name(m) not in ("AddBackward0", "AddBackward1"):
            continue
        inputs = [c for c in walk.children[m] if c in walk.data]
        if len(inputs) != 2:
            continue
        sides = [sorted(unit_at[n] for n in side if n in unit_at) for side in _exclusive(walk, *inputs)]
        sides.sort(key=len)
        short, long_ = sides
        if not long_ or long_ != list(range(long_[0], long_[-1] + 1)):
            continue
        if not short:
            main = [i for i in long_ if not units[i].gate]
            out.append(Segment("residual", long_, max(main) if main else None))
        elif short == list(range(short[0], short[-1] + 1)) and _projection(units, short):
            out += [Segment("shortcut", short), Segment("branch", long_)]
    return out


def _projection(units: list[Unit], idx: list[int]) -> bool:
    kinds = [units[i].kind for i in idx]
    one_by_one = all(s == 1 for s in units[idx[0]].shape[2:])
    return kinds in (["conv"], ["conv", "norm"]) and one_by_one
