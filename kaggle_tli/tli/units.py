"""The units TLI matches: a model's parameter-holding layers, each with all its own tensors.

A unit is a module of a known kind (conv, linear, norm, embedding) with all its own tensors, or a lone parameter that
lives directly on some other module (`cls_token`, `pos_embed`, a layer-scale `gamma`). Units are what get matched and
injected: a conv's bias and a norm's running statistics travel with the weight they belong to. `Graph` holds what the
trace (graph.py) finds out about them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


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
class Segment:
    """The layers on one input of an add, back to where that input forked from the other: a residual branch (the
    other input carries no layers, so zeroing `zero_unit` makes the add an identity), or a projection shortcut and
    the branch beside it."""

    kind: str  # "residual" | "shortcut" | "branch"
    units: list[int]  # indices into Graph.units, in execution order
    zero_unit: int | None = None  # residual: the layer whose zeroing silences the branch


@dataclass
class Graph:
    units: list[Unit]  # reached units, in execution order
    blocks: list[Block]
    unreached: list[str]  # parameter names the forward pass never used
    input_size: tuple[int, ...]
    meta: bool  # traced on the meta device (no arithmetic, nothing touched)
    aliases: dict[str, str] = field(default_factory=dict)  # tied parameter name -> the name it shares storage with
    output_shape: tuple[int, ...] = ()  # of the first output tensor, batch of 1 (logits: (1, num_classes))
    segments: list[Segment] = field(default_factory=list)  # residual branches and projection shortcuts

    def __len__(self) -> int:
        return len(self.units)


def _module_kind(module: nn.Module) -> str | None:
    if isinstance(module, CONV_TYPES):
        groups, cin = module.groups, module.in_channels
        return "dwconv" if groups > 1 and groups == cin else "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, _NORM_TYPES) or type(module).__name__.endswith(("Norm", "Norm2d", "NormAct2d")):
        return "norm"
    if isinstance(module, nn.Embedding):
        return "embedding"
    return None


def named_tensors(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(parameters, buffers) by state_dict-style name, every name of a shared tensor included: what
    named_parameters(remove_duplicate=False) and named_buffers(remove_duplicate=False) give, in one walk over the
    modules instead of one generator per module per call (a transfer asks several times)."""
    params: dict[str, Tensor] = {}
    buffers: dict[str, Tensor] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        prefix = f"{mod_name}." if mod_name else ""
        params.update((f"{prefix}{n}", t) for n, t in module._parameters.items() if t is not None)
        buffers.update((f"{prefix}{n}", t) for n, t in module._buffers.items() if t is not None)
    return params, buffers


def first_names(tensors: dict[str, Tensor]) -> list[str]:
    """The first name of each tensor, in order: what named_parameters() (shared tensors once) names."""
    first: dict[int, str] = {}
    for name, t in tensors.items():
        first.setdefault(id(t), name)
    return list(first.values())


def collect_units(model: nn.Module) -> tuple[list[Unit], dict[str, str]]:
    """Units of `model` in module-registration order, plus tied-parameter aliases."""
    units: list[Unit] = []
    seen: dict[int, str] = {}  # id(tensor) -> first state_dict key (tied weights)
    aliases: dict[str, str] = {}
    state = model.state_dict(keep_vars=True)
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        # the module's own tables (what named_parameters(recurse=False) walks, without its generator per module)
        own = [(n, t) for n, t in module._parameters.items() if t is not None]
        own += [(n, t) for n, t in module._buffers.items() if t is not None and f"{prefix}{n}" in state]
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
    for key, tensor in state.items():  # a module registered under two names (CoaT)
        if seen.get(id(tensor), key) != key:
            aliases.setdefault(key, seen[id(tensor)])
    return units, aliases
