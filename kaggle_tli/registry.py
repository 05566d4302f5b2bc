"""Stage 2: the model registry, the one build path for every model kaggle-tli trains.

A name resolves to one of three kinds of architecture:

* ``timm``: any model name timm knows (``resnet18``, ``efficientnet_b0``...), always built with
  ``pretrained=False`` unless the caller hands local weights in ``pretrained_cfg_overlay``;
* ``factory``: a user function registered with ``@register_arch(name)``, ``fn(num_classes, **kw) -> nn.Module``;
* ``edit``: a base architecture plus a list of declarative edits (``register_edit``), e.g. swap the
  activation or enlarge kernels.

``arch_spec(name, num_classes, **kw)`` describes a build as a JSON-serialisable dict (stored in
``run.json["arch"]``); ``create_model_from_spec(spec)`` rebuilds the same architecture in a fresh process.
An edited architecture rebuilds from its spec alone (the edits travel in it); a user factory must be
registered again (its source hash is in the spec, and a changed source warns), e.g. with
``import_archs("my_archs.py")``.

A spec may come from an untrusted dataset (a run.json in someone's Kaggle dataset), so rebuilding one
never imports a module or calls a function the spec names: only registered factories and heads, timm
names and the declarative edits are used, unless the caller opts in with ``allow_imports=True``. Nor
does it load weights (``pretrained``, ``checkpoint_path``...): a run's weights live in its safetensors.

The engine is kept out of this module on purpose: it imports torch and timm, and of kaggle-tli only the
engine's ``default_input_size`` (the input a model expects), for the check forward of ``register_edit``.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import timm
import torch
from torch import nn

__all__ = [
    "SPEC_SCHEMA",
    "ArchInfo",
    "ArchBuildError",
    "EditError",
    "UnknownArchError",
    "Edit",
    "register_arch",
    "register_edit",
    "register_head",
    "import_archs",
    "unregister_arch",
    "arch_info",
    "is_arch",
    "list_archs",
    "create_model",
    "arch_spec",
    "fixed_in_chans",
    "create_model_from_spec",
    "swap_activation",
    "change_kernel_size",
    "change_stride",
    "widen",
    "deepen",
    "change_in_chans",
    "replace_head",
    "edit_from_dict",
]

SPEC_SCHEMA = 1  # bump when the layout of arch_spec() changes; older specs must keep rebuilding

# build keywords that load weights: a spec never carries them (weights are not architecture) and a
# rebuild from a spec never acts on them (a tampered run.json must not make timm read or fetch files)
_WEIGHT_KWARGS = ("pretrained", "pretrained_cfg_overlay", "checkpoint_path")


# ----------------------------------------------------------------------------------------------- errors
class UnknownArchError(KeyError, ValueError):
    """An architecture name that is neither registered nor a timm model."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class ArchBuildError(RuntimeError):
    """A factory, timm or an edit failed while building a model."""


class EditError(ValueError):
    """An edit that cannot apply: a pattern matching nothing, an unknown activation, an unsupported family."""


# --------------------------------------------------------------------------------------------- metadata
@dataclass(frozen=True)
class ArchInfo:
    """How a registered architecture was made (like timm's pretrained/model metadata, but for builds).

    ``source_hash`` is a hash of the factory's source (user factories) or of the edit recipe (edits);
    a run stores it in its spec so a later rebuild can tell when the definition changed.
    """

    name: str
    kind: str  # "factory" | "edit" | "timm"
    parent: str | None = None
    description: str = ""
    kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    source_hash: str | None = None
    base: str | None = None
    edits: tuple[Edit, ...] = ()
    module: str | None = None
    qualname: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A plain-dict view (``dataclasses.asdict`` cannot copy the read-only kwargs mapping)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "parent": self.parent,
            "description": self.description,
            "kwargs": dict(self.kwargs),
            "source_hash": self.source_hash,
            "base": self.base,
            "edits": [e.to_dict() for e in self.edits],
            "module": self.module,
            "qualname": self.qualname,
        }


@dataclass(frozen=True)
class _Entry:
    info: ArchInfo
    factory: Callable[..., nn.Module] | None = None  # None for edits


_LOCK = threading.RLock()
_REGISTRY: dict[str, _Entry] = {}
_HEADS: dict[str, Callable[..., nn.Module]] = {}
_RECORDERS: list[list[str]] = []  # import_archs: the names stored while a module runs


def _source_hash(fn: Callable[..., Any]) -> str | None:
    """sha256 of the function's source; falls back to its bytecode when the source is not available
    (functions made by exec, some REPLs), and to None when even that is missing (C functions)."""
    try:
        text = inspect.getsource(fn)
        return "src:" + hashlib.sha256(inspect.cleandoc(text).encode()).hexdigest()[:16]
    except (OSError, TypeError):
        pass
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    blob = code.co_code + repr(code.co_consts).encode() + repr(code.co_names).encode()
    return "code:" + hashlib.sha256(blob).hexdigest()[:16]


def _json_hash(obj: Any) -> str:
    return "json:" + hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _check_json(what: str, obj: Any) -> None:
    try:
        json.dumps(obj)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{what} is not JSON-serialisable ({e}); a run stores its architecture as JSON, so pass plain "
            "values (str, int, float, bool, lists, dicts) or set the object inside a registered factory"
        ) from e


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"architecture name must be a non-empty string, got {name!r}")
    if name.startswith(("hf-hub:", "hf_hub:", "timm/")):
        raise ValueError(
            f"{name!r} names a Hugging Face Hub model: kaggle-tli never downloads weights; use the plain "
            "timm architecture name (e.g. 'resnet18') and load weights from a run or a local file"
        )
    return name


def _check_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0 (0 = no classifier), got {num_classes!r}")
    return num_classes


def _check_in_chans(in_chans: Any) -> int:
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be an int >= 1, got {in_chans!r}")
    return in_chans


# ------------------------------------------------------------------------------------------- registering
def _store(name: str, entry: _Entry) -> None:
    with _LOCK:
        old = _REGISTRY.get(name)
        if old is not None and old.info.source_hash != entry.info.source_hash:
            # Re-running an unchanged notebook cell re-registers the same definition: no noise for that.
            warnings.warn(
                f"architecture {name!r} is already registered ({old.info.kind}); overwriting it with the new "
                "definition. Runs made with the old one rebuild from their own spec (a changed factory warns).",
                UserWarning,
                stacklevel=3,
            )
        elif old is None and _is_timm(name):
            warnings.warn(
                f"architecture {name!r} shadows the timm model of the same name; create_model({name!r}) now "
                "builds yours",
                UserWarning,
                stacklevel=3,
            )
        _REGISTRY[name] = entry
        for names in _RECORDERS:
            names.append(name)


def register_arch(
    name: str,
    parent: str | None = None,
    description: str = "",
    *,
    kwargs: Mapping[str, Any] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``fn(num_classes, **kw) -> nn.Module`` under ``name``.

    ``parent`` names the architecture this one derives from (lineage only); ``kwargs`` are default keyword
    arguments passed to the factory (the caller's keywords win). The function is returned unchanged.
    """
    _check_name(name)
    defaults = dict(kwargs or {})
    _check_json(f"default kwargs of {name!r}", defaults)

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not callable(fn):
            raise TypeError(f"@register_arch({name!r}) must decorate a function, got {type(fn).__name__}")
        info = ArchInfo(
            name=name,
            kind="factory",
            parent=parent,
            description=description or (inspect.getdoc(fn) or "").split("\n")[0],
            kwargs=MappingProxyType(defaults),
            source_hash=_source_hash(fn),
            module=getattr(fn, "__module__", None),
            qualname=getattr(fn, "__qualname__", None),
        )
        _store(name, _Entry(info, fn))
        return fn

    return decorator


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
    _check_name(name)
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
    base_node = _resolve(base)  # unknown base fails here, with suggestions
    for e in edits:
        if isinstance(e, ReplaceHead) and ":" in e.head:
            # the caller named this import path in their own code: resolve it now, as a registered head, so
            # a spec of this architecture rebuilds in this process without allow_imports
            _head_factory(e.head, allow_imports=True)
    defaults = dict(kwargs or {})
    _check_json(f"default kwargs of {name!r}", defaults)
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
    _store(name, _Entry(info))
    return info


def unregister_arch(name: str) -> None:
    """Remove a registered architecture (timm names cannot be removed)."""
    with _LOCK:
        if _REGISTRY.pop(name, None) is None:
            raise _unknown(name)


def register_head(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a classifier-head factory ``fn(in_features, num_classes, **kw) -> nn.Module``
    for ``replace_head(head=name)``. Like a user factory, it must be registered again in a fresh process."""
    _check_name(name)

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        with _LOCK:
            if name in _HEADS and _source_hash(_HEADS[name]) != _source_hash(fn):
                warnings.warn(
                    f"head {name!r} is already registered; overwriting it", UserWarning, stacklevel=2
                )
            _HEADS[name] = fn
        return fn

    return decorator


def import_archs(module_or_path: str) -> list[str]:
    """Import a module (dotted name) or run a ``.py`` file so its ``@register_arch`` / ``register_edit``
    calls take effect; return the architecture names it registered, in order.

    For command-line use (``kaggle-tli --import my_archs.py ...``) and for rebuilding runs of user
    factories in a fresh process. A module imported before is reloaded, so its registrations run again
    (an unchanged definition re-registers silently). A file is imported under its stem as module name,
    with its folder on ``sys.path`` while it runs, so it can import its neighbours.
    """
    if not isinstance(module_or_path, str) or not module_or_path.strip():
        raise ValueError(f"import_archs needs a module name or a .py file path, got {module_or_path!r}")
    names: list[str] = []
    with _LOCK:
        _RECORDERS.append(names)
    try:
        if module_or_path.endswith(".py") or "/" in module_or_path or "\\" in module_or_path:
            _import_file(Path(module_or_path).expanduser())
        else:
            _import_module(module_or_path)
    finally:
        with _LOCK:
            _RECORDERS.remove(names)
    return list(dict.fromkeys(names))


def _import_module(name: str) -> None:
    try:
        if name in sys.modules:
            importlib.reload(sys.modules[name])
        else:
            importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name or name.startswith(f"{e.name}."):  # the module itself, not one it imports
            raise ModuleNotFoundError(
                f"no module named {name!r}: pass an importable dotted name (its folder on sys.path / PYTHONPATH) "
                f"or the path of a .py file",
                name=name,
            ) from e
        raise


def _import_file(path: Path) -> None:
    if not path.is_file() or path.suffix != ".py":
        raise FileNotFoundError(
            f"no Python file at {str(path)!r}: pass the path of a .py file or a dotted module name"
        )
    path = path.resolve()
    name = path.stem
    if not name.isidentifier():
        raise ValueError(
            f"{path.name!r} is not importable as a module: rename it to a Python identifier (my_archs.py)"
        )
    old = sys.modules.get(name)
    old_file = getattr(old, "__file__", None)
    if old is not None and (old_file is None or Path(old_file).resolve() != path):
        raise ValueError(
            f"cannot import {str(path)!r} as module {name!r}: a different module of that name is already "
            f"imported ({old_file or 'built in'}); rename the file"
        )
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has a source loader
        raise ImportError(f"cannot load {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # factories defined there report this module name, as an import would
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        sys.path.remove(str(path.parent))


# ------------------------------------------------------------------------------------------------ lookup
def _is_timm(name: str) -> bool:
    try:
        return timm.is_model(name)
    except Exception:  # noqa: BLE001 - a malformed name is simply "not timm"
        return False


def is_arch(name: str) -> bool:
    """True when ``name`` is registered or a timm model."""
    return name in _REGISTRY or _is_timm(name)


def _natural_key(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def list_archs(pattern: str | Sequence[str] = "*", *, include_timm: bool = False) -> list[str]:
    """Registered names matching the fnmatch ``pattern`` (or any of several), naturally sorted
    (``resnet10t`` before ``resnet101``). ``include_timm=True`` adds timm's model names."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    with _LOCK:
        names = set(_REGISTRY)
    if include_timm:
        names.update(timm.list_models())
    return sorted({n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)}, key=_natural_key)


def arch_info(name: str) -> ArchInfo:
    """The metadata record of a registered architecture, or a minimal one for a timm model."""
    entry = _REGISTRY.get(name)
    if entry is not None:
        return entry.info
    if _is_timm(name):
        fn = timm.models.model_entrypoint(timm.models.split_model_name_tag(name)[0])
        return ArchInfo(name=name, kind="timm", module=fn.__module__, qualname=fn.__qualname__)
    raise _unknown(name)


def _unknown(name: str) -> UnknownArchError:
    with _LOCK:
        registered = list(_REGISTRY)
    close = difflib.get_close_matches(name, registered + timm.list_models(), n=6, cutoff=0.6)
    hint = f" Closest names: {', '.join(close)}." if close else ""
    return UnknownArchError(
        f"unknown architecture {name!r}: it is neither registered nor a timm model.{hint} "
        f"To add it, decorate a factory `fn(num_classes, **kw) -> nn.Module` with "
        f"@kaggle_tli.register_arch({name!r}) (or use register_edit) and run that cell first; "
        f"list_archs('*', include_timm=True) lists every name."
    )


def _resolve(name: str) -> dict[str, Any]:
    """The build node of ``name``: a JSON-able dict that, with num_classes/in_chans/kwargs, is enough to
    build the model (for factories: enough to find and check the registered function)."""
    _check_name(name)
    entry = _REGISTRY.get(name)
    if entry is not None:
        info = entry.info
        if info.kind == "edit":
            assert info.base is not None  # set by register_edit
            return {
                "kind": "edit",
                "name": name,
                "base": _resolve(info.base),
                "edits": [e.to_dict() for e in info.edits],
                "kwargs": dict(info.kwargs),
            }
        return {
            "kind": "factory",
            "name": name,
            "source_hash": info.source_hash,
            "module": info.module,
            "qualname": info.qualname,
            "kwargs": dict(info.kwargs),
        }
    if _is_timm(name):
        return {"kind": "timm", "name": name}
    raise _unknown(name)


# -------------------------------------------------------------------------------------------- building
@dataclass
class _Build:
    """What flows down the build tree: outer edits see it first, the leaf (timm or factory) uses it."""

    arch: str
    num_classes: int
    in_chans: int | None
    kwargs: dict[str, Any]
    width: float = 1.0
    depth: float = 1.0
    # False when rebuilding a spec (maybe untrusted): module paths in it must not be imported
    allow_imports: bool = True


def create_model(name: str, num_classes: int, *, in_chans: int | None = None, **kwargs: Any) -> nn.Module:
    """Build architecture ``name`` with a ``num_classes`` classifier: the one build path of kaggle-tli.

    ``in_chans`` defaults to the architecture's own (3, or what a ``change_in_chans`` edit set); an explicit
    value wins. Extra keywords go to the factory / ``timm.create_model`` (e.g. ``drop_rate=0.2``).
    timm models are never downloaded: ``pretrained=True`` needs ``pretrained_cfg_overlay=dict(file=...)``.
    """
    _check_num_classes(num_classes)
    if in_chans is not None:
        _check_in_chans(in_chans)
    node = _resolve(name)
    ctx = _Build(arch=name, num_classes=num_classes, in_chans=in_chans, kwargs=dict(kwargs))
    return _build(node, ctx, check_hash=False)


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
    _check_num_classes(num_classes)
    in_chans = kwargs.pop("in_chans", None)
    if in_chans is not None:
        _check_in_chans(in_chans)
    for k in _WEIGHT_KWARGS:
        kwargs.pop(k, None)
    _check_json(f"kwargs of {name!r}", kwargs)
    node, _ = _without_weight_kwargs(_resolve(name))
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
    _check_json(f"spec of {name!r}", spec)
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
    num_classes = _check_num_classes(spec["num_classes"])
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
    ctx = _Build(
        arch=spec["name"],
        num_classes=num_classes,
        in_chans=in_chans,
        kwargs=kwargs,
        allow_imports=allow_imports,
    )
    return _build(build, ctx, check_hash=True)


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
    return _recipe_in_chans(_resolve(name))


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
    entry = _REGISTRY.get(node["name"]) if node["kind"] == "factory" else None
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


def _build(node: Mapping[str, Any], ctx: _Build, *, check_hash: bool) -> nn.Module:
    kind = node.get("kind")
    builder = _BUILDERS.get(kind)
    if builder is None:
        raise ValueError(
            f"architecture spec node has unknown kind {kind!r}; expected one of {sorted(_BUILDERS)}"
        )
    return builder(node, ctx, check_hash)


def _build_timm(node: Mapping[str, Any], ctx: _Build, check_hash: bool) -> nn.Module:
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
    with _LOCK, _scaled_family(name, ctx.width, ctx.depth) as extra:
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


def _find_factory(node: Mapping[str, Any], allow_imports: bool) -> _Entry:
    name = node["name"]
    entry = _REGISTRY.get(name)
    module = node.get("module")
    importable = isinstance(module, str) and bool(module) and module != "__main__"
    if entry is None and importable and allow_imports:
        # A factory defined in an importable module registers itself on import.
        try:
            importlib.import_module(module)
        except ImportError:
            pass
        entry = _REGISTRY.get(name)
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


def _build_factory(node: Mapping[str, Any], ctx: _Build, check_hash: bool) -> nn.Module:
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
        _replace_stem(model, in_chans, name)
    return model


def _build_edit(node: Mapping[str, Any], ctx: _Build, check_hash: bool) -> nn.Module:
    name = node["name"]
    edits = [edit_from_dict(d) for d in node["edits"]]
    inner = _Build(
        arch=ctx.arch,
        num_classes=ctx.num_classes,
        in_chans=ctx.in_chans,
        kwargs={**node.get("kwargs", {}), **ctx.kwargs},
        width=ctx.width,
        depth=ctx.depth,
        allow_imports=ctx.allow_imports,
    )
    if inner.in_chans is None and "in_chans" in inner.kwargs:
        inner.in_chans = _check_in_chans(inner.kwargs["in_chans"])
    inner.kwargs.pop("in_chans", None)
    for e in edits:  # build-time edits (widen, deepen, in_chans) shape the base build
        e.prepare(inner)
    model = _build(node["base"], inner, check_hash=check_hash)
    for e in edits:  # module edits, in the order they were listed
        try:
            model = e.apply(model, inner)
        except EditError as err:
            raise EditError(f"edit {e.describe()} of {name!r}: {err}") from err
    return model


_BUILDERS: dict[str, Callable[[Mapping[str, Any], _Build, bool], nn.Module]] = {
    "timm": _build_timm,
    "factory": _build_factory,
    "edit": _build_edit,
}


def _validate_edit(name: str, node: Mapping[str, Any], base_node: Mapping[str, Any]) -> None:
    """Build the edited model and run it forward once, on the input size the model itself expects."""
    from kaggle_tli.tli.graph import default_input_size

    ctx = _Build(arch=name, num_classes=2, in_chans=None, kwargs={})
    model = _build(node, ctx, check_hash=False)
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
            base_ctx = _Build(arch=name, num_classes=2, in_chans=size[0], kwargs=dict(node.get("kwargs", {})))
            _forward(_build(base_node, base_ctx, check_hash=False), x)
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


# ---------------------------------------------------------------------------------------- module surgery
def _set_module(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, attr = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def _named_modules_all(model: nn.Module) -> list[tuple[str, nn.Module]]:
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


def _new_conv_like(
    old: nn.Conv2d, *, in_channels: int | None = None, kernel_size: tuple[int, int] | None = None
) -> nn.Conv2d:
    in_ch = old.in_channels if in_channels is None else in_channels
    ks = old.kernel_size if kernel_size is None else kernel_size
    groups = old.groups if in_channels is None else 1  # a changed input width cannot keep its grouping
    factory = {"device": old.weight.device, "dtype": old.weight.dtype}
    same_cls = _conv2d_same_cls()
    if same_cls is not None and isinstance(old, same_cls):
        new: nn.Conv2d = same_cls(
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


def _conv2d_same_cls() -> type | None:
    try:
        from timm.layers import Conv2dSame
    except ImportError:  # pragma: no cover - every timm 1.x has it
        return None
    return Conv2dSame


def _replace_stem(model: nn.Module, in_chans: int, arch: str) -> None:
    """Swap the first conv (in registration order) for one taking ``in_chans`` inputs."""
    for name, m in _named_modules_all(model):
        if isinstance(m, nn.Conv2d):
            _set_module(model, name, _new_conv_like(m, in_channels=in_chans))
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
def _scaled_family(name: str, width: float, depth: float) -> Iterator[dict[str, Any]]:
    """Build-time width/depth scaling with timm's own knobs. Yields extra kwargs for timm.create_model.

    * regnet: the variant's RegNetCfg fields (w0, wa, depth) passed as kwargs (RegNet overlays them);
    * generator families (efficientnet, mobilenetv3, ... every timm generator with channel_multiplier /
      depth_multiplier): the variant's own multipliers are scaled by wrapping the generator during the call;
    * resnet: stage depths (layers) and widths (channels) scaled the same way.
    Anything else is refused with the list of families that work.
    """
    if width == 1.0 and depth == 1.0:
        yield {}
        return
    base = timm.models.split_model_name_tag(name)[0]
    module = importlib.import_module(timm.models.model_entrypoint(base).__module__)
    family = module.__name__.rsplit(".", 1)[-1]
    with _LOCK:  # patching module globals: one scaled build at a time
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
        if family == "resnet":
            with _patched(module, "_create_resnet", _resnet_scaler(module._create_resnet, width, depth)):
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
            f"families with channel_multiplier, regnet, resnet. Pick one of those bases or register a factory"
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


def _resnet_scaler(create: Callable[..., Any], width: float, depth: float) -> Callable[..., Any]:
    def scaled(variant: str, pretrained: bool = False, **kwargs: Any) -> Any:
        layers = kwargs.get("layers", (2, 2, 2, 2))
        channels = kwargs.get("channels") or (64, 128, 256, 512)
        kwargs["layers"] = tuple(max(1, round(n * depth)) for n in layers)
        kwargs["channels"] = tuple(_round8(c * width) for c in channels)
        return create(variant, pretrained, **kwargs)

    return scaled


# ------------------------------------------------------------------------------------------------- edits
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

    def prepare(self, ctx: _Build) -> None:
        """Adjust the build of the base (default: nothing)."""

    def apply(self, model: nn.Module, ctx: _Build) -> nn.Module:
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
        for n, m in _named_modules_all(model)
        if isinstance(m, kinds) and fnmatch.fnmatchcase(n, pattern)
    ]


def _nothing_matched(what: str, pattern: str, model: nn.Module, kinds: tuple[type, ...]) -> EditError:
    names = [n for n, m in _named_modules_all(model) if isinstance(m, kinds)]
    sample = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
    return EditError(
        f"pattern {pattern!r} matches no {what}; fnmatch patterns are matched against module names like: "
        f"{sample or '(the model has none)'}"
    )


# Activations worth swapping. Gates (sigmoid, hard_sigmoid, tanh) are left alone on purpose: in SE/attention
# blocks they squash a score into [0, 1] and swapping them would change what the block computes.
_GATE_NAMES = {"sigmoid", "hard_sigmoid", "hardsigmoid", "tanh", "identity"}


def _activation_types() -> tuple[type, ...]:
    from timm.layers import create_act as ca

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


def _activation_names() -> list[str]:
    from timm.layers import create_act as ca

    return sorted(k for k in ca._ACT_LAYER_DEFAULT if k != "identity")


@dataclass(frozen=True)
class SwapActivation(Edit):
    """Replace every activation module (matched by ``pattern`` on module names) with ``act``."""

    op: ClassVar[str] = "swap_activation"
    act: str
    pattern: str = "*"

    def __post_init__(self) -> None:
        valid = _activation_names()
        if self.act not in valid:
            close = difflib.get_close_matches(str(self.act), valid, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise EditError(f"unknown activation {self.act!r}{hint}; valid names: {', '.join(valid)}")

    def apply(self, model: nn.Module, ctx: _Build) -> nn.Module:
        from timm.layers import create_act_layer

        kinds = _activation_types()
        hits = _match(model, self.pattern, kinds)
        if not hits:
            raise _nothing_matched("activation module", self.pattern, model, kinds)
        for name, old in hits:
            _set_module(model, name, create_act_layer(self.act, inplace=bool(getattr(old, "inplace", False))))
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

    def apply(self, model: nn.Module, ctx: _Build) -> nn.Module:
        ks = _pair(self.kernel_size, "kernel_size")
        hits = [
            (n, m)
            for n, m in _match(model, self.pattern, (nn.Conv2d,))
            if self.include_pointwise or m.kernel_size != (1, 1)
        ]
        if not hits:
            raise _nothing_matched("spatial conv (kernel > 1x1)", self.pattern, model, (nn.Conv2d,))
        for name, old in hits:
            _set_module(model, name, _new_conv_like(old, kernel_size=ks))
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

    def apply(self, model: nn.Module, ctx: _Build) -> nn.Module:
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

    def prepare(self, ctx: _Build) -> None:
        ctx.width *= self.factor


@dataclass(frozen=True)
class Deepen(Edit):
    """Multiply the number of blocks per stage by ``factor`` with timm's own depth multiplier (build time)."""

    op: ClassVar[str] = "deepen"
    factor: float

    def __post_init__(self) -> None:
        _check_factor(self.factor, "deepen")

    def prepare(self, ctx: _Build) -> None:
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
        _check_in_chans(self.in_chans)

    def prepare(self, ctx: _Build) -> None:
        if ctx.in_chans is None:  # the caller's explicit in_chans, or an outer edit's, wins
            ctx.in_chans = self.in_chans


def change_in_chans(in_chans: int) -> ChangeInChans:
    """Take ``in_chans`` input channels (timm's ``in_chans``; a factory without it gets its stem swapped)."""
    return ChangeInChans(in_chans=in_chans)


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
        if self.head == "mlp" and self.act not in _activation_names():
            raise EditError(f"unknown activation {self.act!r}; valid names: {', '.join(_activation_names())}")

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["kwargs"] = {k: v for k, v in self.kwargs}
        return d

    def apply(self, model: nn.Module, ctx: _Build) -> nn.Module:
        path, old = _classifier(model)
        in_features = old.in_features
        _set_module(model, path, self._make(in_features, ctx.num_classes, ctx.allow_imports))
        return model

    def _make(self, in_features: int, num_classes: int, allow_imports: bool) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        if self.head == "linear":
            return nn.Sequential(nn.Dropout(self.dropout), nn.Linear(in_features, num_classes))
        if self.head == "mlp":
            from timm.layers import create_act_layer

            layers: list[nn.Module] = []
            width = in_features
            for h in self.hidden:
                layers += [nn.Linear(width, h), create_act_layer(self.act), nn.Dropout(self.dropout)]
                width = h
            layers.append(nn.Linear(width, num_classes))
            return nn.Sequential(*layers)
        fn = _head_factory(self.head, allow_imports)
        try:
            head = fn(in_features, num_classes, **dict(self.kwargs))
        except Exception as e:  # noqa: BLE001 - user code, wrapped with its name
            raise ArchBuildError(
                f"head factory {self.head!r} failed: {type(e).__name__}: {e}; fix the head factory"
            ) from e
        if not isinstance(head, nn.Module):
            raise TypeError(f"head factory {self.head!r} returned {type(head).__name__}, not an nn.Module")
        return head


def _head_factory(name: str, allow_imports: bool) -> Callable[..., nn.Module]:
    """The head factory called ``name``; a 'module:function' path is imported only with ``allow_imports``
    and is then kept as a registered head of that name."""
    if name in _HEADS:
        return _HEADS[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        if not allow_imports:
            raise EditError(
                f"head {name!r}: a spec may come from an untrusted dataset, so its module {module!r} is not "
                f"imported and {attr!r} is not called: register the head in this process first (import the "
                f"module that defines it, or kaggle_tli.import_archs({module!r})), or pass "
                "create_model_from_spec(spec, allow_imports=True) if you trust this spec"
            )
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise EditError(f"head {name!r}: cannot import {attr!r} from {module!r} ({e})") from e
        if not callable(fn):
            raise EditError(f"head {name!r}: {module}.{attr} is a {type(fn).__name__}, not a function")
        with _LOCK:
            _HEADS[name] = fn
        return fn
    raise EditError(
        f"unknown head {name!r}: use 'linear', 'mlp', an import path 'package.module:function', or register it "
        f"with @kaggle_tli.registry.register_head({name!r}) and run that cell first"
    )


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
    linears = [(n, m) for n, m in _named_modules_all(model) if isinstance(m, nn.Linear)]
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
    _check_json(f"replace_head({head!r}) kwargs", kwargs)
    return ReplaceHead(
        head=head, hidden=hidden_t, dropout=float(dropout), act=act, kwargs=tuple(sorted(kwargs.items()))
    )
