"""Trace a model's execution graph into an ordered list of *units* (the layers TLI matches).

A unit is a module of a known kind (conv, linear, norm, embedding) with all its own tensors, or a lone parameter that
lives directly on some other module (`cls_token`, `pos_embed`, a layer-scale `gamma`). Units are what get matched and
injected: a conv's bias and a norm's running statistics travel with the weight they belong to.

The trace runs one forward pass with *meta* copies swapped in for the parameters, buffers and
input: the autograd graph is recorded (shapes only, no arithmetic), so tracing costs the same at 224 px as at 32 px and
cannot touch the model's real tensors, BatchNorm statistics included. Models whose forward does not run on the meta
device are traced for real, with every parameter, buffer, training flag and `requires_grad` restored afterwards.

From the graph, per unit: execution order (autograd sequence numbers), the block it sits in (blocks end at add / mul /
cat nodes that merge two data paths, as in the paper), its depth inside the block, the branch of the block's merge it
feeds (a residual branch vs. a projection shortcut), the activation that follows it, and whether it only feeds a
sigmoid gate (squeeze-excite's small convolutions, which match only each other).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

# 3x224x224 for timm models without a pretrained_cfg: what almost every ImageNet model accepts.
_DEFAULT_INPUT_SIZE = (3, 224, 224)

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)

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


class TraceError(RuntimeError):
    """The model could not be traced; the message says which input was tried and how to pass another."""


@dataclass
class Unit:
    """One matchable layer: a module's own tensors, or a lone parameter."""

    name: str  # module path ("layer1.0.conv1") or parameter path ("pos_embed")
    kind: str  # conv | dwconv | linear | norm | embedding | other
    shape: tuple[int, ...]  # shape of the signature tensor (the weight, or the lone parameter)
    tensors: dict[str, str]  # local name ("weight", "running_var", "" for a lone parameter) -> state_dict key
    order: int = -1  # execution order among reached units
    block: int = 0
    depth: int = 0  # index inside its block
    block_len: int = 1
    branch: int = 0
    activation: str = "none"
    gate: bool = False  # feeds only a sigmoid gate (squeeze-excite): matched only with gate layers

    @property
    def signature(self) -> str:
        return self.tensors.get("weight", next(iter(self.tensors.values())))


@dataclass
class Block:
    """Units between two merge nodes; `zero_unit` makes the block an identity when zeroed (residual blocks)."""

    units: list[int]  # indices into Graph.units
    merge: str = ""  # autograd name of the node that ends the block ("" for the last block)
    zero_unit: int | None = None


@dataclass
class Graph:
    units: list[Unit]  # reached units, in execution order
    blocks: list[Block]
    unreached: list[str]  # parameter names the forward pass never used
    input_size: tuple[int, ...]
    meta: bool  # traced on the meta device (no arithmetic, nothing touched)
    aliases: dict[str, str] = field(default_factory=dict)  # tied parameter name -> the name it shares storage with
    output_shape: tuple[int, ...] = ()  # of the first output tensor, batch of 1 (logits: (1, num_classes))

    def __len__(self) -> int:
        return len(self.units)


# --------------------------------------------------------------------------------------------------- units


def _module_kind(module: nn.Module) -> str | None:
    if isinstance(module, _CONV_TYPES):
        groups, cin = module.groups, module.in_channels
        return "dwconv" if groups > 1 and groups == cin else "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, _NORM_TYPES) or type(module).__name__.endswith(("Norm", "Norm2d", "NormAct2d")):
        return "norm"
    if isinstance(module, nn.Embedding):
        return "embedding"
    return None


def collect_units(model: nn.Module) -> tuple[list[Unit], dict[str, str]]:
    """Units of `model` in module-registration order, plus tied-parameter aliases."""
    units: list[Unit] = []
    seen: dict[int, str] = {}  # id(tensor) -> first state_dict key (tied weights)
    aliases: dict[str, str] = {}
    persistent = set(model.state_dict(keep_vars=True).keys())
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        own = [(n, t) for n, t in module.named_parameters(recurse=False)]
        own += [(n, t) for n, t in module.named_buffers(recurse=False) if f"{prefix}{n}" in persistent]
        fresh: dict[str, str] = {}
        for local, tensor in own:
            key = f"{prefix}{local}"
            if id(tensor) in seen:
                aliases[key] = seen[id(tensor)]
                continue
            seen[id(tensor)] = key
            fresh[local] = key
        kind = _module_kind(module)
        frozen_norm = kind == "norm" and "weight" in fresh  # FrozenBatchNorm2d keeps its affine tensors as buffers
        if not frozen_norm and not any(isinstance(t, nn.Parameter) for n, t in own if n in fresh):
            continue  # other buffers alone (or only tied copies) make no unit
        if kind is not None and "weight" in fresh:
            shape = tuple(module.weight.shape)
            units.append(Unit(mod_name, kind, shape, fresh))
            continue
        for local, key in fresh.items():  # lone parameters of a custom module
            tensor = dict(own)[local]
            if isinstance(tensor, nn.Parameter):
                units.append(Unit(key, "other", tuple(tensor.shape), {"": key}))
    for key, tensor in model.state_dict(keep_vars=True).items():  # a module registered under two names (CoaT)
        if seen.get(id(tensor), key) != key:
            aliases.setdefault(key, seen[id(tensor)])
    return units, aliases


# --------------------------------------------------------------------------------------------------- tracing


def default_input_size(model: nn.Module) -> tuple[int, ...]:
    """Input size (C, H, W) from timm's pretrained_cfg, corrected by the model's own image size and channels."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = tuple(cfg.get("input_size", _DEFAULT_INPUT_SIZE))
    # a patch embedding built for one image size (ViT, Mixer, ...) asserts on any other
    patch_embed = next((m for m in model.modules() if isinstance(getattr(m, "img_size", None), (tuple, list))), None)
    if patch_embed is not None and getattr(patch_embed, "strict_img_size", True):
        size = (size[0], *tuple(patch_embed.img_size))
    first_conv = next((m for m in model.modules() if isinstance(m, _CONV_TYPES)), None)
    if first_conv is not None and first_conv.in_channels != size[0]:
        size = (first_conv.in_channels, *size[1:])
    return size


def _tensors_in(obj) -> Iterator[torch.Tensor]:
    """Every tensor inside a model output, in order (the first is taken as the logits): tensors, tuples, lists,
    dicts, dataclass-like objects."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            yield item
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed(item))
        elif hasattr(item, "__dict__") and not isinstance(item, nn.Module):
            stack.extend(reversed(list(vars(item).values())))


def _forward_meta(model: nn.Module, input_size: tuple[int, ...]):
    """Forward on meta copies: records the graph, computes nothing, leaves the model untouched."""
    with _meta_tensors(model) as names:
        dtype = next(iter(model.parameters())).dtype
        x = torch.empty((1, *input_size), device="meta", dtype=dtype, requires_grad=True)
        out = model(x)
    return out, x, names


@contextmanager
def _meta_tensors(model: nn.Module) -> Iterator[dict[int, str]]:
    """Every parameter and buffer of `model` swapped for a meta copy that requires grad, restored on exit.

    Swapped once per module *object*, however many names it is registered under: CoaT shares one position-encoding
    module between blocks, and `torch.func.functional_call` swaps per name and restores in the same order, so the
    second name's "original" was already the meta copy and the real tensors never came back. A tensor shared by two
    modules (tied weights) gets one meta copy, so the tie survives. Yields id(meta copy) -> state_dict key.
    """
    copies: dict[int, torch.Tensor] = {}  # id(real tensor) -> its meta copy
    names: dict[int, str] = {}
    swapped: list[tuple[dict, str, torch.Tensor]] = []  # (module._parameters or _buffers, local name, real tensor)
    try:
        for mod_name, module in model.named_modules():  # each module object once
            prefix = f"{mod_name}." if mod_name else ""
            for table, is_param in ((module._parameters, True), (module._buffers, False)):
                for local, real in list(table.items()):
                    if real is None:
                        continue
                    if id(real) not in copies:
                        # a frozen norm's weight and bias are buffers: traced like parameters, so the norm is found
                        grad = is_param or _affine_buffer(local, real)
                        copies[id(real)] = torch.empty_like(real, device="meta").requires_grad_(grad)
                        names[id(copies[id(real)])] = f"{prefix}{local}"
                    swapped.append((table, local, real))
                    table[local] = copies[id(real)]
        yield names
    finally:
        for table, local, real in reversed(swapped):
            table[local] = real


def _affine_buffer(name: str, buffer: torch.Tensor) -> bool:
    return buffer.is_floating_point() and name.rsplit(".", 1)[-1] in ("weight", "bias")


def _forward_real(model: nn.Module, input_size: tuple[int, ...]):
    """Forward on the real tensors (for models the meta device cannot run); the caller restores state."""
    params = dict(model.named_parameters())
    for p in params.values():
        p.requires_grad_(True)  # frozen parameters must still appear in the graph
    first = next(iter(params.values()))
    x = torch.zeros((1, *input_size), device=first.device, dtype=first.dtype, requires_grad=True)
    out = model(x)
    return out, x, {id(p): n for n, p in params.items()}


class _Restore:
    """Training flags and `requires_grad` restored on exit, exceptions included; with `buffers`, also every buffer a
    real forward pass changed. A buffer is written back only where it differs, so an untouched model keeps its
    tensors' version counters (the transfer's integrity check reads them)."""

    def __init__(self, model: nn.Module, *, buffers: bool):
        self.model, self.with_buffers = model, buffers

    def __enter__(self):
        m = self.model
        self.training = {name: mod.training for name, mod in m.named_modules()}
        self.requires_grad = {name: p.requires_grad for name, p in m.named_parameters()}
        self.buffers = {name: b.detach().clone() for name, b in m.named_buffers()} if self.with_buffers else {}
        return self

    def __exit__(self, *exc):
        m = self.model
        for name, mod in m.named_modules():
            mod.training = self.training[name]
        for name, p in m.named_parameters():
            p.requires_grad_(self.requires_grad[name])
        with torch.no_grad():
            for name, b in m.named_buffers():
                saved = self.buffers.get(name)
                if saved is not None and not torch.equal(b, saved):
                    b.copy_(saved)
        return False


def _run_forward(model: nn.Module, input_size: tuple[int, ...]):
    errors = []
    for forward in (_forward_meta, _forward_real):
        # the meta pass never touches a real tensor; only the real one needs its buffers saved
        with _Restore(model, buffers=forward is _forward_real), torch.enable_grad():
            model.eval()
            try:
                out, x, names = forward(model, input_size)
                return out, x, names, forward is _forward_meta
            except Exception as e:  # noqa: BLE001 - any failure of user code falls through to the next way
                errors.append(f"{forward.__name__[1:]}: {type(e).__name__}: {e}")
    own = default_input_size(model)
    if len(input_size) == len(own) + 1 and input_size[0] == 1:
        hint = f"input_size excludes the batch dimension: pass input_size={tuple(input_size[1:])}"
    elif own != tuple(input_size):
        hint = f"this model's own input size is input_size={own}"
    else:
        hint = "pass the size of one input the model accepts, without the batch dimension, as input_size=(C, H, W)"
    raise TraceError(
        f"{type(model).__name__}: the forward pass failed on a dummy input of shape {(1, *input_size)} "
        f"({'; '.join(errors)}). Fix: {hint}."
    )


def _checked_size(input_size) -> tuple[int, ...]:
    """`input_size` as a tuple of positive ints, refused with the fix when it is not one input's size."""
    ints = isinstance(input_size, (tuple, list, torch.Size)) and all(
        isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > 0 for n in input_size)
    if not ints:
        raise TypeError(f"input_size is the size of one input without the batch dimension, a tuple of positive ints "
                        f"such as (3, 224, 224); got {input_size!r}")
    return tuple(int(n) for n in input_size)


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


def _upstream(walk: _Walk, start: int) -> set[int]:
    """Data nodes feeding `start`, back to (not through) the previous merges."""
    found, stack = set(), [start]
    while stack:
        nid = stack.pop()
        if nid in found or nid not in walk.data:
            continue
        found.add(nid)
        if not walk.is_merge(nid):
            stack.extend(walk.children[nid])
    return found


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


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module `torch.compile` wrapped (it shares its parameters): compiled code leaves no layer structure in the
    autograd graph, and its parameter names carry an `_orig_mod.` prefix."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else model


def trace(model: nn.Module, input_size: tuple[int, ...] | None = None) -> Graph:
    """Trace `model` once and describe every parameter-holding layer (see the module docstring)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    model = unwrap_compiled(model)
    if not any(True for _ in model.parameters()):
        raise ValueError(f"{type(model).__name__} has no parameters: there is nothing to transfer to or from.")
    size = _checked_size(input_size) if input_size is not None else default_input_size(model)
    units, aliases = collect_units(model)
    out, x, tensor_names, meta = _run_forward(model, size)
    outputs = list(_tensors_in(out))
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
    all_params = [n for n, _ in model.named_parameters()]
    unreached = [n for n in all_params if n not in reached_keys]

    merges = sorted((n for n in walk.nodes if walk.is_merge(n)), key=walk.seq)
    gates = _gate_paths(walk)
    for unit in reached:
        unit.gate = consumer[unit.name] in gates
    blocks = _split_blocks(walk, reached, consumer, merges)
    return Graph(reached, blocks, unreached, size, meta, aliases, tuple(outputs[0].shape))


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
