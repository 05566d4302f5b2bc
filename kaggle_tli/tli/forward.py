"""One forward pass of a model on a dummy input that records its autograd graph and leaves the model as it was.

The pass runs on *meta* copies swapped in for the parameters, buffers and input: the autograd graph is recorded
(shapes only, no arithmetic), so it costs the same at 224 px as at 32 px and cannot touch the model's real tensors,
BatchNorm statistics included. Models whose forward does not run on the meta device are run for real, with every
training flag, `requires_grad` and changed buffer restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from .meta import ShapeOnly, meta_like
from .units import CONV_TYPES

# 3x224x224 for timm models without a pretrained_cfg: what almost every ImageNet model accepts.
_DEFAULT_INPUT_SIZE = (3, 224, 224)


class TraceError(RuntimeError):
    """The model could not be traced; the message says which input was tried and how to pass another."""


def default_input_size(model: nn.Module) -> tuple[int, ...]:
    """Input size (C, H, W) from timm's pretrained_cfg, corrected by the model's own image size and channels."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = tuple(cfg.get("input_size", _DEFAULT_INPUT_SIZE))
    # a patch embedding built for one image size (ViT, Mixer, ...) asserts on any other
    patch_embed = next((m for m in model.modules() if isinstance(_attribute(m, "img_size"), (tuple, list))), None)
    if patch_embed is not None and getattr(patch_embed, "strict_img_size", True):
        size = (size[0], *tuple(patch_embed.img_size))
    first_conv = next((m for m in model.modules() if isinstance(m, CONV_TYPES)), None)
    if first_conv is not None and first_conv.in_channels != size[0]:
        size = (first_conv.in_channels, *size[1:])
    return size


def _attribute(module: nn.Module, name: str):
    """getattr(module, name, None) without nn.Module.__getattr__'s failed lookup (an exception raised and caught
    per module: most of default_input_size's time on a model of hundreds of modules)."""
    found = vars(module).get(name)
    return found if found is not None else getattr(type(module), name, None)


def tensors_in(obj) -> Iterator[torch.Tensor]:
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
    with _meta_tensors(model) as names, ShapeOnly():
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
                        copies[id(real)] = meta_like(real).requires_grad_(grad)
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
    """Training flags restored on exit, exceptions included; with `buffers` (the real forward pass), also
    `requires_grad` and every buffer the pass changed (the meta pass touches neither: it runs on copies). A buffer is
    written back only where it differs, so an untouched model keeps its tensors' version counters (the transfer's
    integrity check reads them)."""

    def __init__(self, model: nn.Module, *, buffers: bool):
        self.model, self.with_buffers = model, buffers

    def __enter__(self):
        m = self.model
        # by object, not by name: one pass over the modules instead of building every dotted name twice
        self.training = [(mod, mod.training) for mod in m.modules()]
        self.requires_grad = [(p, p.requires_grad) for p in m.parameters()] if self.with_buffers else []
        self.buffers = {name: b.detach().clone() for name, b in m.named_buffers()} if self.with_buffers else {}
        return self

    def __exit__(self, *exc):
        for mod, flag in self.training:
            if mod.training is not flag:
                vars(mod)["training"] = flag  # a plain attribute: what nn.Module.__setattr__ ends in, at a tenth
        for p, flag in self.requires_grad:
            p.requires_grad_(flag)
        if not self.with_buffers:
            return False
        with torch.no_grad():
            for name, b in self.model.named_buffers():
                saved = self.buffers.get(name)
                if saved is not None and not torch.equal(b, saved):
                    b.copy_(saved)
        return False


def run_forward(model: nn.Module, input_size: tuple[int, ...]):
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


def checked_size(input_size) -> tuple[int, ...]:
    """`input_size` as a tuple of positive ints, refused with the fix when it is not one input's size."""
    ints = isinstance(input_size, (tuple, list, torch.Size)) and all(
        isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > 0 for n in input_size)
    if not ints:
        raise TypeError(f"input_size is the size of one input without the batch dimension, a tuple of positive ints "
                        f"such as (3, 224, 224); got {input_size!r}")
    return tuple(int(n) for n in input_size)


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module `torch.compile` wrapped (it shares its parameters): compiled code leaves no layer structure in the
    autograd graph, and its parameter names carry an `_orig_mod.` prefix."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else model
