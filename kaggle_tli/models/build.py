"""The one build path: arch_spec describes a build as JSON, create_model and create_model_from_spec build it.

A spec may come from an untrusted dataset (a run.json in someone's Kaggle dataset), so rebuilding one never
imports a module or calls a function the spec names: only registered factories and heads, timm names and the
declarative edits are used, unless the caller opts in with ``allow_imports=True``. Nor does it load weights
(``pretrained``, ``checkpoint_path``...): a run's weights live in its safetensors.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import timm
from torch import nn

from ._surgery import replace_stem, scaled_family
from .edits import Build, ChangeInChans, edit_from_dict
from .errors import ArchBuildError, EditError, UnknownArchError, check_in_chans, check_json, check_num_classes
from .registry import LOCK, Entry, arch_info, lookup, resolve

__all__ = [
    "SPEC_SCHEMA",
    "arch_spec",
    "build_node",
    "create_model",
    "create_model_from_spec",
    "fixed_in_chans",
]

SPEC_SCHEMA = 1  # bump when the layout of arch_spec() changes; older specs must keep rebuilding

# build keywords that load weights: a spec never carries them (weights are not architecture) and a
# rebuild from a spec never acts on them (a tampered run.json must not make timm read or fetch files)
_WEIGHT_KWARGS = ("pretrained", "pretrained_cfg_overlay", "checkpoint_path")


def create_model(name: str, num_classes: int, *, in_chans: int | None = None, **kwargs: Any) -> nn.Module:
    """Build architecture ``name`` with a ``num_classes`` classifier: the one build path of kaggle-tli.

    ``in_chans`` defaults to the architecture's own (3, or what a ``change_in_chans`` edit set); an explicit
    value wins. Extra keywords go to the factory / ``timm.create_model`` (e.g. ``drop_rate=0.2``).
    timm models are never downloaded: ``pretrained=True`` needs ``pretrained_cfg_overlay=dict(file=...)``.
    """
    check_num_classes(num_classes)
    if in_chans is not None:
        check_in_chans(in_chans)
    node = resolve(name)
    ctx = Build(arch=name, num_classes=num_classes, in_chans=in_chans, kwargs=dict(kwargs))
    return build_node(node, ctx, check_hash=False)


def arch_spec(name: str, num_classes: int, **kwargs: Any) -> dict[str, Any]:
    """A JSON-serialisable description of ``create_model(name, num_classes, **kwargs)``.

    Weights are not architecture: ``pretrained``, ``pretrained_cfg_overlay`` and ``checkpoint_path`` are
    left out, here and in registered default kwargs (a run's weights live in its safetensors files). The
    spec holds the edit recipe, so an edited architecture rebuilds in a process that never registered it.

    Layout (schema 1): ``schema``, ``name``, ``kind`` ("timm" | "factory" | "edit"), ``parent``,
    ``num_classes``, ``in_chans`` (effective), ``kwargs`` (the caller's), ``source_hash`` (factory source
    or edit recipe), ``timm_version`` and ``build``: a tree of nodes, ``{"kind": "timm", "name"}``,
    ``{"kind": "factory", "name", "source_hash", "module", "qualname", "kwargs"}`` or
    ``{"kind": "edit", "name", "base": <node>, "edits": [Edit.to_dict(), ...], "kwargs"}``.
    """
    check_num_classes(num_classes)
    in_chans = kwargs.pop("in_chans", None)
    if in_chans is not None:
        check_in_chans(in_chans)
    for k in _WEIGHT_KWARGS:
        kwargs.pop(k, None)
    check_json(f"kwargs of {name!r}", kwargs)
    node, _ = _without_weight_kwargs(resolve(name))
    info = arch_info(name)
    spec = {
        "schema": SPEC_SCHEMA,
        "name": name,
        "kind": node["kind"],
        "parent": info.parent,
        "num_classes": num_classes,
        "in_chans": _effective_in_chans(node, in_chans),
        "kwargs": dict(kwargs),
        "build": node,
        "source_hash": info.source_hash,
        "timm_version": timm.__version__,
    }
    check_json(f"spec of {name!r}", spec)
    return spec


def create_model_from_spec(spec: Mapping[str, Any], *, allow_imports: bool = False) -> nn.Module:
    """Rebuild the architecture an ``arch_spec`` dict describes (e.g. ``run.json["arch"]``).

    Edited architectures rebuild from the spec alone. A user factory, or a ``replace_head`` head, must be
    registered in this process (``import_archs``, or the cell that registers it); a factory whose source
    changed since the spec was written still builds, with a warning. A spec can come from an untrusted
    dataset, so the modules it names are imported only with ``allow_imports=True`` (the factory's module,
    a 'module:function' head): pass it for specs you trust. Weight-loading keywords in a spec are ignored,
    with a warning.
    """
    if not isinstance(spec, Mapping):
        raise TypeError(
            f"create_model_from_spec expects the dict made by arch_spec(), got {type(spec).__name__}"
        )
    missing = [k for k in ("schema", "name", "num_classes", "build") if k not in spec]
    if missing:
        raise ValueError(
            f"not an architecture spec: missing {missing}; make one with arch_spec(name, num_classes)"
        )
    if not isinstance(spec["schema"], int) or spec["schema"] > SPEC_SCHEMA:
        raise ValueError(
            f"architecture spec schema {spec['schema']!r} is newer than this kaggle-tli understands "
            f"({SPEC_SCHEMA}); upgrade kaggle-tli"
        )
    num_classes = check_num_classes(spec["num_classes"])
    in_chans = spec.get("in_chans")
    if not isinstance(spec["build"], Mapping) or not isinstance(spec.get("kwargs") or {}, Mapping):
        raise ValueError(
            "not an architecture spec: 'build' and 'kwargs' must be dicts; make one with arch_spec()"
        )
    build, dropped = _without_weight_kwargs(spec["build"])
    kwargs, dropped_top = _split_weight_kwargs(spec.get("kwargs") or {})
    dropped |= dropped_top
    if dropped:
        warnings.warn(
            f"architecture spec of {spec['name']!r} asks to load weights ({', '.join(sorted(dropped))}); ignored: "
            "a spec describes the architecture only, a run's weights come from its safetensors files",
            UserWarning,
            stacklevel=2,
        )
    ctx = Build(
        arch=spec["name"],
        num_classes=num_classes,
        in_chans=in_chans,
        kwargs=kwargs,
        allow_imports=allow_imports,
    )
    return build_node(build, ctx, check_hash=True)


def _without_weight_kwargs(node: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """A copy of a build node (and its bases) without weight-loading kwargs, and the keys it dropped."""
    out = dict(node)
    dropped: set[str] = set()
    if isinstance(out.get("kwargs"), Mapping):
        out["kwargs"], dropped = _split_weight_kwargs(out["kwargs"])
    if isinstance(out.get("base"), Mapping):
        out["base"], below = _without_weight_kwargs(out["base"])
        dropped |= below
    return out, dropped


def _split_weight_kwargs(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """(kwargs without the weight-loading keys, the keys that would have loaded something)."""
    dropped = {k for k in _WEIGHT_KWARGS if k in kwargs and (k != "pretrained" or kwargs[k])}
    return {k: v for k, v in kwargs.items() if k not in _WEIGHT_KWARGS}, dropped


def fixed_in_chans(name: str) -> int | None:
    """The input channels architecture ``name`` is registered with (a ``change_in_chans`` edit, or ``in_chans``
    in its registered kwargs), or None when it takes whatever the caller passes (timm names, factories)."""
    return _recipe_in_chans(resolve(name))


def _recipe_in_chans(node: Mapping[str, Any]) -> int | None:
    """The outermost change_in_chans edit, else an in_chans default kwarg, down the build tree; else None."""
    while node["kind"] == "edit":
        for d in reversed(node["edits"]):
            if d.get("op") == ChangeInChans.op:
                return int(d["in_chans"])
        if "in_chans" in node.get("kwargs", {}):
            return int(node["kwargs"]["in_chans"])
        node = node["base"]
    if "in_chans" in node.get("kwargs", {}):
        return int(node["kwargs"]["in_chans"])
    return None


def _effective_in_chans(node: Mapping[str, Any], explicit: int | None) -> int:
    """The caller's value, else the outermost change_in_chans edit, else a default kwarg, else 3."""
    if explicit is not None:
        return explicit
    recipe = _recipe_in_chans(node)
    if recipe is not None:
        return recipe
    entry = lookup(node["name"]) if node["kind"] == "factory" else None
    if entry is not None and entry.factory is not None:
        default = _param_default(entry.factory, "in_chans")
        if isinstance(default, int):  # a factory written for grayscale says so in its signature
            return default
    return 3


def _param_default(fn: Callable[..., Any], param: str) -> Any:
    try:
        p = inspect.signature(fn).parameters.get(param)
    except (TypeError, ValueError):
        return None
    return None if p is None or p.default is inspect.Parameter.empty else p.default


def build_node(node: Mapping[str, Any], ctx: Build, *, check_hash: bool) -> nn.Module:
    """Build the model a spec node describes (timm, factory or edit), with ``ctx`` from the edits above it."""
    kind = node.get("kind")
    builder = _BUILDERS.get(kind)
    if builder is None:
        raise ValueError(
            f"architecture spec node has unknown kind {kind!r}; expected one of {sorted(_BUILDERS)}"
        )
    return builder(node, ctx, check_hash)


def _build_timm(node: Mapping[str, Any], ctx: Build, check_hash: bool) -> nn.Module:
    name = node["name"]
    kwargs = {**node.get("kwargs", {}), **ctx.kwargs}
    kwargs.pop("in_chans", None)
    in_chans = ctx.in_chans if ctx.in_chans is not None else 3
    pretrained = bool(kwargs.pop("pretrained", False))
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if pretrained and not (overlay.get("file") or overlay.get("state_dict")):
        raise ValueError(
            f"pretrained=True for {name!r} needs local weights: kaggle-tli never downloads them. Pass "
            "pretrained_cfg_overlay=dict(file='/kaggle/input/.../weights.safetensors'), or leave pretrained "
            "off and transfer weights from a run with TLI"
        )
    # under the lock: a scaled build patches timm module globals, and no other build may see them
    with LOCK, scaled_family(name, ctx.width, ctx.depth) as extra:
        try:
            model = timm.create_model(
                name, pretrained=pretrained, num_classes=ctx.num_classes, in_chans=in_chans, **extra, **kwargs
            )
        except EditError:
            raise
        except (TypeError, ValueError, RuntimeError, AssertionError, KeyError) as e:
            scaled = (
                f", width x{ctx.width:g}, depth x{ctx.depth:g}"
                if (ctx.width, ctx.depth) != (1.0, 1.0)
                else ""
            )
            fix = "try another widen/deepen factor" if scaled else "fix the kwargs"
            raise ArchBuildError(
                f"timm could not build {name!r} (num_classes={ctx.num_classes}, in_chans={in_chans}, "
                f"kwargs={kwargs}{scaled}): {type(e).__name__}: {str(e) or '(no message)'}; {fix}"
            ) from e
    return model


def _accepts(fn: Callable[..., Any], param: str) -> tuple[bool, bool]:
    """(names ``param`` explicitly, takes ``**kwargs``) for a factory's signature."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False, True
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return param in params, var_kw


def _find_factory(node: Mapping[str, Any], allow_imports: bool) -> Entry:
    name = node["name"]
    entry = lookup(name)
    module = node.get("module")
    importable = isinstance(module, str) and bool(module) and module != "__main__"
    if entry is None and importable and allow_imports:
        # A factory defined in an importable module registers itself on import.
        try:
            importlib.import_module(module)
        except ImportError:
            pass
        entry = lookup(name)
    if entry is None or entry.factory is None:
        where = f" (it was defined in {module}.{node.get('qualname')})" if module else ""
        fix = f"run the cell (or import the module) with its @kaggle_tli.register_arch({name!r}) first, then rebuild"
        if importable and not allow_imports:
            fix = (
                f"a spec may come from an untrusted dataset, so its module {module!r} is not imported "
                f"automatically: import it yourself (kaggle_tli.import_archs({module!r})), or pass "
                "create_model_from_spec(spec, allow_imports=True) if you trust this spec; or " + fix
            )
        raise UnknownArchError(
            f"architecture {name!r} is a user factory{where} that is not registered in this process: {fix}"
        )
    return entry


def _build_factory(node: Mapping[str, Any], ctx: Build, check_hash: bool) -> nn.Module:
    name = node["name"]
    entry = _find_factory(node, ctx.allow_imports)
    if check_hash and node.get("source_hash") and entry.info.source_hash != node["source_hash"]:
        warnings.warn(
            f"the factory registered as {name!r} changed since this spec was written (source hash "
            f"{node['source_hash']} -> {entry.info.source_hash}); the rebuilt model may not match the run's weights",
            UserWarning,
            stacklevel=4,
        )
    if ctx.width != 1.0 or ctx.depth != 1.0:
        raise EditError(
            f"widen/deepen cannot apply to {name!r}: it is a user factory and kaggle-tli cannot see inside it. "
            f"Give the factory a width/depth argument and register the wider version under a new name"
        )
    fn = entry.factory
    assert fn is not None  # _find_factory checked it
    kwargs = {**entry.info.kwargs, **node.get("kwargs", {}), **ctx.kwargs}
    in_chans = ctx.in_chans if ctx.in_chans is not None else kwargs.pop("in_chans", None)
    kwargs.pop("in_chans", None)
    named, var_kw = _accepts(fn, "in_chans")
    adapt_stem = False
    if in_chans is None:
        pass  # nobody asked: the factory's own default (3, or what its signature says)
    elif named or (var_kw and in_chans != 3):
        kwargs["in_chans"] = in_chans
    elif in_chans != 3:
        adapt_stem = True  # the factory cannot take it: swap the first conv afterwards
    try:
        model = fn(ctx.num_classes, **kwargs)
    except Exception as e:  # noqa: BLE001 - any error inside user code is wrapped with the arch name
        raise ArchBuildError(
            f"factory for {name!r} failed: {type(e).__name__}: {e}; fix the factory or its kwargs "
            f"(called with num_classes={ctx.num_classes}, kwargs={kwargs})"
        ) from e
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"factory for {name!r} returned {type(model).__name__}, not an nn.Module; the factory must "
            f"`return` the model it builds"
        )
    if adapt_stem:
        replace_stem(model, in_chans, name)
    return model


def _build_edit(node: Mapping[str, Any], ctx: Build, check_hash: bool) -> nn.Module:
    name = node["name"]
    edits = [edit_from_dict(d) for d in node["edits"]]
    inner = Build(
        arch=ctx.arch,
        num_classes=ctx.num_classes,
        in_chans=ctx.in_chans,
        kwargs={**node.get("kwargs", {}), **ctx.kwargs},
        width=ctx.width,
        depth=ctx.depth,
        allow_imports=ctx.allow_imports,
    )
    if inner.in_chans is None and "in_chans" in inner.kwargs:
        inner.in_chans = check_in_chans(inner.kwargs["in_chans"])
    inner.kwargs.pop("in_chans", None)
    for e in edits:  # build-time edits (widen, deepen, in_chans) shape the base build
        e.prepare(inner)
    model = build_node(node["base"], inner, check_hash=check_hash)
    for e in edits:  # module edits, in the order they were listed
        try:
            model = e.apply(model, inner)
        except EditError as err:
            raise EditError(f"edit {e.describe()} of {name!r}: {err}") from err
    return model


_BUILDERS: dict[str, Callable[[Mapping[str, Any], Build, bool], nn.Module]] = {
    "timm": _build_timm,
    "factory": _build_factory,
    "edit": _build_edit,
}
