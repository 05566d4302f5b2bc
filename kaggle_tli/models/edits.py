"""The declarative edits users call: swap_activation, change_kernel_size, change_stride, widen, deepen, change_in_chans.

An edit is a frozen, JSON-serialisable record (``Edit``): ``prepare`` adjusts the build of the base (width, depth,
input channels), ``apply`` changes the built model. ``edit_from_dict`` turns the record stored in a spec back into
an edit; ``replace_head`` is in heads.py.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from timm.layers import create_act as ca
from timm.layers import create_act_layer
from torch import nn

from ._surgery import named_modules_all, new_conv_like, set_module
from .errors import EditError, check_in_chans

__all__ = [
    "Build",
    "ChangeInChans",
    "ChangeKernelSize",
    "ChangeStride",
    "Deepen",
    "Edit",
    "SwapActivation",
    "Widen",
    "activation_names",
    "change_in_chans",
    "change_kernel_size",
    "change_stride",
    "deepen",
    "edit_from_dict",
    "swap_activation",
    "widen",
]


@dataclass
class Build:
    """What flows down the build tree: outer edits see it first, the leaf (timm or factory) uses it."""

    arch: str
    num_classes: int
    in_chans: int | None
    kwargs: dict[str, Any]
    width: float = 1.0
    depth: float = 1.0
    # False when rebuilding a spec (maybe untrusted): module paths in it must not be imported
    allow_imports: bool = True


_EDIT_TYPES: dict[str, type[Edit]] = {}


@dataclass(frozen=True)
class Edit:
    """One declarative architecture edit: a frozen, JSON-serialisable record.

    ``prepare`` runs before the base is built (build-time knobs such as width); ``apply`` runs on the built
    model and returns it (usually the same object, modified). Subclasses set ``op``.
    """

    op: ClassVar[str] = ""

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.op:
            _EDIT_TYPES[cls.op] = cls

    def to_dict(self) -> dict[str, Any]:
        d = {"op": self.op}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d

    def describe(self) -> str:
        args = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"{self.op}({args})"

    def prepare(self, ctx: Build) -> None:
        """Adjust the build of the base (default: nothing)."""

    def apply(self, model: nn.Module, ctx: Build) -> nn.Module:
        """Edit the built model (default: nothing)."""
        return model


def edit_from_dict(d: Mapping[str, Any]) -> Edit:
    """Inverse of ``Edit.to_dict``: the record stored in a spec back to an Edit."""
    op = d.get("op")
    cls = _EDIT_TYPES.get(op)  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown edit op {op!r} in architecture spec; known ops: {sorted(_EDIT_TYPES)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in d:
            v = d[f.name]
            kwargs[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)


def _match(model: nn.Module, pattern: str, kinds: tuple[type, ...]) -> list[tuple[str, nn.Module]]:
    return [
        (n, m)
        for n, m in named_modules_all(model)
        if isinstance(m, kinds) and fnmatch.fnmatchcase(n, pattern)
    ]


def _nothing_matched(what: str, pattern: str, model: nn.Module, kinds: tuple[type, ...]) -> EditError:
    names = [n for n, m in named_modules_all(model) if isinstance(m, kinds)]
    sample = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
    return EditError(
        f"pattern {pattern!r} matches no {what}; fnmatch patterns are matched against module names like: "
        f"{sample or '(the model has none)'}"
    )


# Activations worth swapping. Gates (sigmoid, hard_sigmoid, tanh) are left alone on purpose: in SE/attention
# blocks they squash a score into [0, 1] and swapping them would change what the block computes.
_GATE_NAMES = {"sigmoid", "hard_sigmoid", "hardsigmoid", "tanh", "identity"}


def _activation_types() -> tuple[type, ...]:
    types: set[type] = {
        nn.ReLU,
        nn.ReLU6,
        nn.LeakyReLU,
        nn.PReLU,
        nn.RReLU,
        nn.ELU,
        nn.SELU,
        nn.CELU,
        nn.GELU,
        nn.SiLU,
        nn.Mish,
        nn.Hardswish,
        nn.Softplus,
    }
    for table in (getattr(ca, "_ACT_LAYER_DEFAULT", {}), getattr(ca, "_ACT_LAYER_ME", {})):
        for key, cls in table.items():
            if key not in _GATE_NAMES and isinstance(cls, type):
                types.add(cls)
    return tuple(types)


def activation_names() -> list[str]:
    """The timm activation names ``swap_activation`` and an 'mlp' head accept."""
    return sorted(k for k in ca._ACT_LAYER_DEFAULT if k != "identity")


@dataclass(frozen=True)
class SwapActivation(Edit):
    """Replace every activation module (matched by ``pattern`` on module names) with ``act``."""

    op: ClassVar[str] = "swap_activation"
    act: str
    pattern: str = "*"

    def __post_init__(self) -> None:
        valid = activation_names()
        if self.act not in valid:
            close = difflib.get_close_matches(str(self.act), valid, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise EditError(f"unknown activation {self.act!r}{hint}; valid names: {', '.join(valid)}")

    def apply(self, model: nn.Module, ctx: Build) -> nn.Module:
        kinds = _activation_types()
        hits = _match(model, self.pattern, kinds)
        if not hits:
            raise _nothing_matched("activation module", self.pattern, model, kinds)
        for name, old in hits:
            set_module(model, name, create_act_layer(self.act, inplace=bool(getattr(old, "inplace", False))))
        return model


def swap_activation(act: str, *, pattern: str = "*") -> SwapActivation:
    """Swap the activations (ReLU, SiLU, GELU, ... including the one fused in timm's BatchNormAct2d; not the
    sigmoid gates of SE blocks) for timm activation ``act`` (e.g. 'silu', 'gelu', 'mish')."""
    return SwapActivation(act=act, pattern=pattern)


def _pair(v: int | Sequence[int], what: str) -> tuple[int, int]:
    t = (v, v) if isinstance(v, int) and not isinstance(v, bool) else tuple(v)  # type: ignore[arg-type]
    if len(t) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in t):
        raise EditError(f"{what} must be a positive int or a pair of them, got {v!r}")
    return t  # type: ignore[return-value]


@dataclass(frozen=True)
class ChangeKernelSize(Edit):
    """Give the convs matched by ``pattern`` a ``kernel_size`` kernel, with 'same' padding so spatial sizes
    do not change. 1x1 convs are skipped unless ``include_pointwise`` (a pattern like '*' would otherwise
    turn every projection into a spatial conv)."""

    op: ClassVar[str] = "change_kernel_size"
    kernel_size: int | tuple[int, int]
    pattern: str = "*"
    include_pointwise: bool = False

    def __post_init__(self) -> None:
        ks = _pair(self.kernel_size, "kernel_size")
        if any(k % 2 == 0 for k in ks):
            raise EditError(
                f"kernel_size {self.kernel_size!r} is even: symmetric padding cannot keep spatial sizes for an even "
                f"kernel; use an odd size (3, 5, 7)"
            )

    def apply(self, model: nn.Module, ctx: Build) -> nn.Module:
        ks = _pair(self.kernel_size, "kernel_size")
        hits = [
            (n, m)
            for n, m in _match(model, self.pattern, (nn.Conv2d,))
            if self.include_pointwise or m.kernel_size != (1, 1)
        ]
        if not hits:
            raise _nothing_matched("spatial conv (kernel > 1x1)", self.pattern, model, (nn.Conv2d,))
        for name, old in hits:
            set_module(model, name, new_conv_like(old, kernel_size=ks))
        return model


def change_kernel_size(
    kernel_size: int | tuple[int, int], *, pattern: str = "*", include_pointwise: bool = False
) -> ChangeKernelSize:
    """Change the kernel size of the convs whose module name matches ``pattern`` (fnmatch)."""
    return ChangeKernelSize(kernel_size=kernel_size, pattern=pattern, include_pointwise=include_pointwise)


_STRIDED = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


@dataclass(frozen=True)
class ChangeStride(Edit):
    """Set the stride of the convs / pools matched by ``pattern`` (e.g. 'maxpool' to keep resolution on
    32 px images). Residual blocks need the shortcut changed too: match both ('layer2.0.*')."""

    op: ClassVar[str] = "change_stride"
    stride: int | tuple[int, int]
    pattern: str = "*"

    def __post_init__(self) -> None:
        _pair(self.stride, "stride")

    def apply(self, model: nn.Module, ctx: Build) -> nn.Module:
        stride = _pair(self.stride, "stride")
        hits = _match(model, self.pattern, _STRIDED)
        if not hits:
            raise _nothing_matched("conv or pooling layer", self.pattern, model, _STRIDED)
        for _, m in hits:
            # forward reads .stride each call, so setting it is enough; padding does not depend on stride
            m.stride = (
                stride if isinstance(m, nn.Conv2d) else (stride[0] if stride[0] == stride[1] else stride)
            )
        return model


def change_stride(stride: int | tuple[int, int], *, pattern: str) -> ChangeStride:
    """Change the stride of the convs / pooling layers whose module name matches ``pattern``."""
    return ChangeStride(stride=stride, pattern=pattern)


def _check_factor(v: Any, what: str) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise EditError(f"{what} factor must be a number > 0, got {v!r}")


@dataclass(frozen=True)
class Widen(Edit):
    """Multiply channel widths by ``factor`` with timm's own channel multiplier (build time)."""

    op: ClassVar[str] = "widen"
    factor: float

    def __post_init__(self) -> None:
        _check_factor(self.factor, "widen")

    def prepare(self, ctx: Build) -> None:
        ctx.width *= self.factor


@dataclass(frozen=True)
class Deepen(Edit):
    """Multiply the number of blocks per stage by ``factor`` with timm's own depth multiplier (build time)."""

    op: ClassVar[str] = "deepen"
    factor: float

    def __post_init__(self) -> None:
        _check_factor(self.factor, "deepen")

    def prepare(self, ctx: Build) -> None:
        ctx.depth *= self.factor


def widen(factor: float) -> Widen:
    """Wider channels: efficientnet / mobilenetv3 (channel_multiplier), regnet (w0, wa), resnet (channels)."""
    return Widen(factor=float(factor))


def deepen(factor: float) -> Deepen:
    """More blocks per stage: efficientnet / mobilenetv3 (depth_multiplier), regnet (depth), resnet (layers)."""
    return Deepen(factor=float(factor))


@dataclass(frozen=True)
class ChangeInChans(Edit):
    """Build the base for ``in_chans`` input channels (1 for grayscale, 4 for RGB+mask ...)."""

    op: ClassVar[str] = "change_in_chans"
    in_chans: int

    def __post_init__(self) -> None:
        check_in_chans(self.in_chans)

    def prepare(self, ctx: Build) -> None:
        if ctx.in_chans is None:  # the caller's explicit in_chans, or an outer edit's, wins
            ctx.in_chans = self.in_chans


def change_in_chans(in_chans: int) -> ChangeInChans:
    """Take ``in_chans`` input channels (timm's ``in_chans``; a factory without it gets its stem swapped)."""
    return ChangeInChans(in_chans=in_chans)
