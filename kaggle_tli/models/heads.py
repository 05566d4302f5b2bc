"""The replace_head edit: a new classifier (linear, MLP, a registered head or an import path) on a built model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from timm.layers import create_act_layer
from torch import nn

from ._surgery import named_modules_all, set_module
from .edits import Build, Edit, activation_names
from .errors import ArchBuildError, EditError, check_json
from .registry import head_factory

__all__ = ["ReplaceHead", "replace_head"]


@dataclass(frozen=True)
class ReplaceHead(Edit):
    """Replace the classifier with ``head``: 'linear' (a fresh Linear), 'mlp' (Linear-act-dropout-Linear with
    ``hidden`` units), a name registered with ``@register_head``, or an import path 'package.module:function'
    (imported by ``register_edit`` / ``create_model``; from a spec only with ``allow_imports=True``, unless
    already resolved in this process). The class count is always the ``num_classes`` given to create_model."""

    op: ClassVar[str] = "replace_head"
    head: str = "mlp"
    hidden: tuple[int, ...] = (512,)
    dropout: float = 0.0
    act: str = "relu"
    kwargs: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        # normalise what JSON gives back (lists, dicts) so a rebuilt edit equals the original
        hidden = (self.hidden,) if isinstance(self.hidden, int) else tuple(self.hidden)
        object.__setattr__(self, "hidden", hidden)
        kw = self.kwargs.items() if isinstance(self.kwargs, Mapping) else self.kwargs
        object.__setattr__(self, "kwargs", tuple(sorted((str(k), v) for k, v in kw)))
        if not isinstance(self.head, str) or not self.head:
            raise EditError(
                f"replace_head: head must be 'linear', 'mlp', a registered head or 'module:fn', got {self.head!r}"
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise EditError(f"replace_head: dropout must be in [0, 1), got {self.dropout!r}")
        if self.head == "mlp" and self.act not in activation_names():
            raise EditError(f"unknown activation {self.act!r}; valid names: {', '.join(activation_names())}")

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["kwargs"] = {k: v for k, v in self.kwargs}
        return d

    def apply(self, model: nn.Module, ctx: Build) -> nn.Module:
        path, old = _classifier(model)
        in_features = old.in_features
        set_module(model, path, self._make(in_features, ctx.num_classes, ctx.allow_imports))
        return model

    def _make(self, in_features: int, num_classes: int, allow_imports: bool) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        if self.head == "linear":
            return nn.Sequential(nn.Dropout(self.dropout), nn.Linear(in_features, num_classes))
        if self.head == "mlp":
            layers: list[nn.Module] = []
            width = in_features
            for h in self.hidden:
                layers += [nn.Linear(width, h), create_act_layer(self.act), nn.Dropout(self.dropout)]
                width = h
            layers.append(nn.Linear(width, num_classes))
            return nn.Sequential(*layers)
        fn = head_factory(self.head, allow_imports)
        try:
            head = fn(in_features, num_classes, **dict(self.kwargs))
        except Exception as e:  # noqa: BLE001 - user code, wrapped with its name
            raise ArchBuildError(
                f"head factory {self.head!r} failed: {type(e).__name__}: {e}; fix the head factory"
            ) from e
        if not isinstance(head, nn.Module):
            raise TypeError(f"head factory {self.head!r} returned {type(head).__name__}, not an nn.Module")
        return head


def _classifier(model: nn.Module) -> tuple[str, nn.Linear]:
    """The final classifier: timm's pretrained_cfg names it ('fc', 'classifier', 'head.fc'); for other
    models, the last nn.Linear."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    path = cfg.get("classifier")
    if isinstance(path, (list, tuple)):
        path = path[0]
    if path:
        try:
            m = model.get_submodule(path)
        except AttributeError:
            m = None
        if isinstance(m, nn.Linear):
            return path, m
    linears = [(n, m) for n, m in named_modules_all(model) if isinstance(m, nn.Linear)]
    if not linears:
        raise EditError(
            "replace_head: the model has no nn.Linear classifier to replace (num_classes=0 or a conv head)"
        )
    return linears[-1]


def replace_head(
    head: str = "mlp",
    *,
    hidden: int | Sequence[int] = 512,
    dropout: float = 0.0,
    act: str = "relu",
    **kwargs: Any,
) -> ReplaceHead:
    """Replace the classifier head (see ``ReplaceHead``); extra keywords go to a custom head factory."""
    hidden_t = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    check_json(f"replace_head({head!r}) kwargs", kwargs)
    return ReplaceHead(
        head=head, hidden=hidden_t, dropout=float(dropout), act=act, kwargs=tuple(sorted(kwargs.items()))
    )
