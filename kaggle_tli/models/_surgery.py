"""Module surgery inside the models package: swapping submodules and convs, and timm's width/depth multipliers.

Private to kaggle_tli.models (the underscore in the file name): its functions are public only to the modules
beside it. The scaled builds patch timm module globals, under the registry's lock.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import timm
import torch
from timm.layers import Conv2dSame
from torch import nn

from .errors import EditError
from .registry import LOCK

__all__ = ["named_modules_all", "new_conv_like", "replace_stem", "scaled_family", "set_module"]


def set_module(root: nn.Module, dotted: str, new: nn.Module) -> None:
    """Put ``new`` at the dotted module path ``dotted`` of ``root``."""
    parent_name, _, attr = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def named_modules_all(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every named submodule; one shared under two names is listed under both."""
    # remove_duplicate=False: one module object registered under two names gets replaced at both.
    return [(n, m) for n, m in model.named_modules(remove_duplicate=False) if n]


def _init_conv_(conv: nn.Conv2d) -> None:
    """timm's convention for fresh convs (efficientnet's _init_weight_goog, regnet, resnet's kaiming
    fan_out): normal(0, sqrt(2 / fan_out)) with fan_out = kh * kw * out / groups, zero bias."""
    kh, kw = conv.kernel_size
    fan_out = kh * kw * conv.out_channels // conv.groups
    with torch.no_grad():
        conv.weight.normal_(0.0, math.sqrt(2.0 / fan_out))
        if conv.bias is not None:
            conv.bias.zero_()


def new_conv_like(
    old: nn.Conv2d, *, in_channels: int | None = None, kernel_size: tuple[int, int] | None = None
) -> nn.Conv2d:
    """A freshly initialised conv like ``old``, with another input width or kernel size."""
    in_ch = old.in_channels if in_channels is None else in_channels
    ks = old.kernel_size if kernel_size is None else kernel_size
    groups = old.groups if in_channels is None else 1  # a changed input width cannot keep its grouping
    factory = {"device": old.weight.device, "dtype": old.weight.dtype}
    if isinstance(old, Conv2dSame):
        new: nn.Conv2d = Conv2dSame(
            in_ch, old.out_channels, ks, old.stride, 0, old.dilation, groups, old.bias is not None, **factory
        )
    else:
        if isinstance(old.padding, str):  # 'same' / 'valid' carry over as they are
            padding: Any = old.padding
        else:
            padding = tuple((k - 1) * d // 2 for k, d in zip(ks, old.dilation, strict=True))
            if kernel_size is None:
                padding = old.padding
        new = nn.Conv2d(
            in_ch,
            old.out_channels,
            ks,
            stride=old.stride,
            padding=padding,
            dilation=old.dilation,
            groups=groups,
            bias=old.bias is not None,
            padding_mode=old.padding_mode,
            **factory,
        )
    _init_conv_(new)
    return new


def replace_stem(model: nn.Module, in_chans: int, arch: str) -> None:
    """Swap the first conv (in registration order) for one taking ``in_chans`` inputs."""
    for name, m in named_modules_all(model):
        if isinstance(m, nn.Conv2d):
            set_module(model, name, new_conv_like(m, in_channels=in_chans))
            return
    raise EditError(
        f"{arch!r} has no nn.Conv2d to adapt to in_chans={in_chans}; give its factory an in_chans argument"
    )


# ------------------------------------------------------------------------------- width / depth families
@contextmanager
def _patched(module: Any, attr: str, wrapper: Callable[..., Any]) -> Iterator[None]:
    original = getattr(module, attr)
    setattr(module, attr, wrapper)
    try:
        yield
    finally:
        setattr(module, attr, original)


def _round8(x: float) -> int:
    return max(8, int(round(x / 8)) * 8)


@contextmanager
def scaled_family(name: str, width: float, depth: float) -> Iterator[dict[str, Any]]:
    """Build-time width/depth scaling with timm's own knobs. Yields extra kwargs for timm.create_model.

    * regnet: the variant's RegNetCfg fields (w0, wa, depth) passed as kwargs (RegNet overlays them);
    * generator families (efficientnet, mobilenetv3, ... every timm generator with channel_multiplier /
      depth_multiplier): the variant's own multipliers are scaled by wrapping the generator during the call;
    * resnet: stage depths (layers) and widths (channels) scaled the same way;
    * convnext: stage depths (depths) and widths (dims);
    * vision_transformer: depth, and embed_dim with num_heads scaled alike so the head dimension stays (a ViT grown
      this way is the teacher with more heads, as vit_tiny -> vit_small is).
    Anything else is refused with the list of families that work.
    """
    if width == 1.0 and depth == 1.0:
        yield {}
        return
    base = timm.models.split_model_name_tag(name)[0]
    module = importlib.import_module(timm.models.model_entrypoint(base).__module__)
    family = module.__name__.rsplit(".", 1)[-1]
    with LOCK:  # patching module globals: one scaled build at a time
        if family == "regnet" and base in getattr(module, "model_cfgs", {}):
            # RegNet derives its stages from a linear width ramp w0 + wa * block over `depth` blocks; more
            # blocks with the same slope would grow extra stages, so the slope shrinks to keep the last width.
            cfg = module.model_cfgs[base]
            new_depth = max(4, round(cfg.depth * depth))
            yield {
                "w0": _round8(cfg.w0 * width),
                "wa": cfg.wa * width * cfg.depth / new_depth,
                "depth": new_depth,
            }
            return
        if family in _SCALERS:
            create, scaler = _SCALERS[family]
            with _patched(module, create, scaler(getattr(module, create), width, depth)):
                yield {}
            return
        gens = _multiplier_generators(module)
        used: list[str] = []
        if gens:
            with _patched_all(module, gens, width, depth, used):
                yield {}
            if used:
                return
        raise EditError(
            f"widen/deepen is not supported for {name!r} (timm family '{family}'): it has no channel/depth "
            f"multiplier kaggle-tli can scale. Supported: efficientnet / mobilenetv3 / other timm generator "
            f"families with channel_multiplier, regnet, resnet, convnext, vision_transformer. Pick one of those bases or register a factory"
        )


def _multiplier_generators(module: Any) -> list[str]:
    out = []
    for attr, fn in vars(module).items():
        if attr.startswith("_") and inspect.isfunction(fn) and fn.__module__ == module.__name__:
            params = inspect.signature(fn).parameters
            if "channel_multiplier" in params or "depth_multiplier" in params:
                out.append(attr)
    return out


@contextmanager
def _patched_all(module: Any, gens: list[str], width: float, depth: float, used: list[str]) -> Iterator[None]:
    originals = {g: getattr(module, g) for g in gens}

    def make(g: str) -> Callable[..., Any]:
        fn = originals[g]
        sig = inspect.signature(fn)

        def scaled(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            for param, factor, verb in (
                ("channel_multiplier", width, "widen"),
                ("depth_multiplier", depth, "deepen"),
            ):
                if factor == 1.0:
                    continue
                if param not in bound.arguments:
                    raise EditError(
                        f"{verb} is not supported for {bound.arguments.get('variant', g)!r}: its timm generator "
                        f"{g} has no {param}"
                    )
                bound.arguments[param] = bound.arguments[param] * factor
            used.append(g)
            return fn(*bound.args, **bound.kwargs)

        return scaled

    try:
        for g in gens:
            setattr(module, g, make(g))
        yield
    finally:
        for g, fn in originals.items():
            setattr(module, g, fn)


def _stage_scaler(create: Callable[..., Any], width: float, depth: float, *, blocks: tuple[str, tuple[int, ...]],
                  widths: tuple[str, tuple[int, ...]]) -> Callable[..., Any]:
    """For families whose variants name blocks and widths per stage (resnet: layers/channels, convnext:
    depths/dims): each argument, or the family's default, scaled."""
    (blocks_key, default_blocks), (widths_key, default_widths) = blocks, widths

    def scaled(variant: str, pretrained: bool = False, **kwargs: Any) -> Any:
        kwargs[blocks_key] = tuple(max(1, round(n * depth)) for n in kwargs.get(blocks_key) or default_blocks)
        kwargs[widths_key] = tuple(_round8(c * width) for c in kwargs.get(widths_key) or default_widths)
        return create(variant, pretrained, **kwargs)

    return scaled


def _vit_scaler(create: Callable[..., Any], width: float, depth: float) -> Callable[..., Any]:
    def scaled(variant: str, pretrained: bool = False, **kwargs: Any) -> Any:
        embed_dim, heads = kwargs.get("embed_dim", 768), kwargs.get("num_heads", 12)
        head_dim = embed_dim // heads
        kwargs["num_heads"] = max(1, round(heads * width))  # whole heads of the same size
        kwargs["embed_dim"] = head_dim * kwargs["num_heads"]
        kwargs["depth"] = max(1, round(kwargs.get("depth", 12) * depth))
        return create(variant, pretrained, **kwargs)

    return scaled


# timm family -> (its create function, the wrapper that scales the variant's arguments on the way in)
_SCALERS = {
    "resnet": ("_create_resnet", partial(_stage_scaler, blocks=("layers", (2, 2, 2, 2)),
                                         widths=("channels", (64, 128, 256, 512)))),
    "convnext": ("_create_convnext", partial(_stage_scaler, blocks=("depths", (3, 3, 9, 3)),
                                             widths=("dims", (96, 192, 384, 768)))),
    "vision_transformer": ("_create_vision_transformer", _vit_scaler),
}
