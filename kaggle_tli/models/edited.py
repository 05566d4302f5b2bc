"""Registering an edited architecture: a base plus declarative edits, checked by one forward pass.

Kept apart from registry.py because the check builds the model: registry.py sits below the build path, this
module above it. Of the engine only ``default_input_size`` (the input a model expects) is used.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from kaggle_tli.tli.graph import default_input_size

from .build import build_node
from .edits import Build, Edit
from .errors import EditError, check_json, check_name
from .heads import ReplaceHead
from .registry import ArchInfo, Entry, head_factory, resolve, store

__all__ = ["register_edit"]


def _json_hash(obj: Any) -> str:
    return "json:" + hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def register_edit(
    name: str,
    base: str,
    edits: Sequence[Edit],
    *,
    parent: str | None = None,
    description: str = "",
    kwargs: Mapping[str, Any] | None = None,
    validate: bool = True,
) -> ArchInfo:
    """Register ``name`` as ``base`` (any resolvable name) with ``edits`` applied at build time.

    With ``validate`` (default) the edited model is built once and run forward on the input size it
    expects (timm's pretrained_cfg, or a patch embedding's fixed ``img_size``) right away, so a pattern
    that matches nothing or a stride that breaks a residual add fails in the cell that registered it, not
    three steps later in training. A ``replace_head('pkg.module:fn')`` is imported here and registered
    as a head under that path.
    """
    check_name(name)
    if isinstance(edits, Edit):
        edits = [edits]
    edits = tuple(edits)
    for e in edits:
        if not isinstance(e, Edit):
            raise TypeError(
                f"register_edit({name!r}): edits must be Edit objects made by the helpers (swap_activation, "
                f"change_kernel_size, ...), got {type(e).__name__}"
            )
    if base == name:
        raise ValueError(f"register_edit({name!r}): an architecture cannot be its own base")
    base_node = resolve(base)  # unknown base fails here, with suggestions
    for e in edits:
        if isinstance(e, ReplaceHead) and ":" in e.head:
            # the caller named this import path in their own code: resolve it now, as a registered head, so
            # a spec of this architecture rebuilds in this process without allow_imports
            head_factory(e.head, allow_imports=True)
    defaults = dict(kwargs or {})
    check_json(f"default kwargs of {name!r}", defaults)
    recipe = {"base": base_node, "edits": [e.to_dict() for e in edits], "kwargs": defaults}
    info = ArchInfo(
        name=name,
        kind="edit",
        parent=parent if parent is not None else base,
        description=description or ", ".join(e.describe() for e in edits),
        kwargs=MappingProxyType(defaults),
        source_hash=_json_hash(recipe),
        base=base,
        edits=edits,
    )
    if validate:
        node = {"kind": "edit", "name": name, "base": base_node, "edits": recipe["edits"], "kwargs": defaults}
        _validate_edit(name, node, base_node)
    store(name, Entry(info))
    return info


def _validate_edit(name: str, node: Mapping[str, Any], base_node: Mapping[str, Any]) -> None:
    """Build the edited model and run it forward once, on the input size the model itself expects."""
    ctx = Build(arch=name, num_classes=2, in_chans=None, kwargs={})
    model = build_node(node, ctx, check_hash=False)
    # the model's own size: a ViT / Mixer / Swin asserts on any other (the base's default kwargs, such as
    # img_size, are in the build); CNNs get their pretrained_cfg size, where a stride slip shows
    size = default_input_size(model)
    x = torch.randn(1, *size)
    shown = "x".join(str(d) for d in x.shape)
    try:
        _forward(model, x)
    except Exception as e:  # noqa: BLE001 - any failure in the edited forward is reported as the edit's
        error = f"{type(e).__name__}: {str(e) or '(no message)'}"
        try:  # a base that fails on this input too is not the edit's fault
            base_ctx = Build(arch=name, num_classes=2, in_chans=size[0], kwargs=dict(node.get("kwargs", {})))
            _forward(build_node(base_node, base_ctx, check_hash=False), x)
        except Exception as base_error:  # noqa: BLE001 - same: only whether the base runs matters here
            warnings.warn(
                f"register_edit({name!r}): not validated: its base fails on a {shown} input as well "
                f"({type(base_error).__name__}: {base_error}); check the edited model before training it",
                UserWarning,
                stacklevel=3,
            )
            return
        raise EditError(
            f"{name!r} builds but its forward pass fails on a {shown} input (the model's own input size) where "
            f"the base works: {error}. A stride change usually needs the matching shortcut/downsample too "
            f"(widen the pattern, e.g. 'layer2.0.*'); if the edit is right and the model needs another input, "
            f"register it with validate=False"
        ) from e


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x)
    finally:
        model.train(was_training)
