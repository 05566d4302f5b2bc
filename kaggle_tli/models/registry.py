"""Architecture names: the registry tables, registering and importing definitions, listing and looking them up.

A name is a user factory (``@register_arch``), an edited architecture (``register_edit``, in edited.py) or any
model name timm knows. The tables ``_REGISTRY`` and ``_HEADS`` live here only: other modules read them through
``lookup``, ``resolve`` and ``head_factory`` at call time. An unknown name fails with the closest known names.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import timm
from torch import nn

from .errors import EditError, UnknownArchError, check_json, check_name

if TYPE_CHECKING:
    from .edits import Edit

__all__ = [
    "LOCK",
    "ArchInfo",
    "Entry",
    "arch_info",
    "head_factory",
    "import_archs",
    "is_arch",
    "list_archs",
    "lookup",
    "register_arch",
    "register_head",
    "resolve",
    "store",
    "unregister_arch",
]


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
class Entry:
    """A registered architecture: its metadata and, for a factory, the function."""

    info: ArchInfo
    factory: Callable[..., nn.Module] | None = None  # None for edits


# held while the tables change and while a build patches timm module globals (reentrant: a build may register)
LOCK = threading.RLock()
_REGISTRY: dict[str, Entry] = {}
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


# ------------------------------------------------------------------------------------------- registering
def store(name: str, entry: Entry) -> None:
    """Put ``entry`` under ``name``; warns when it replaces another definition or shadows a timm model."""
    with LOCK:
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
    check_name(name)
    defaults = dict(kwargs or {})
    check_json(f"default kwargs of {name!r}", defaults)

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
        store(name, Entry(info, fn))
        return fn

    return decorator


def unregister_arch(name: str) -> None:
    """Remove a registered architecture (timm names cannot be removed)."""
    with LOCK:
        if _REGISTRY.pop(name, None) is None:
            raise _unknown(name)


def register_head(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a classifier-head factory ``fn(in_features, num_classes, **kw) -> nn.Module``
    for ``replace_head(head=name)``. Like a user factory, it must be registered again in a fresh process."""
    check_name(name)

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        with LOCK:
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
    with LOCK:
        _RECORDERS.append(names)
    try:
        if module_or_path.endswith(".py") or "/" in module_or_path or "\\" in module_or_path:
            _import_file(Path(module_or_path).expanduser())
        else:
            _import_module(module_or_path)
    finally:
        with LOCK:
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
def lookup(name: str) -> Entry | None:
    """The entry registered as ``name``, or None (read from the table at call time)."""
    return _REGISTRY.get(name)


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
    with LOCK:
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
    with LOCK:
        registered = list(_REGISTRY)
    close = difflib.get_close_matches(name, registered + timm.list_models(), n=6, cutoff=0.6)
    hint = f" Closest names: {', '.join(close)}." if close else ""
    return UnknownArchError(
        f"unknown architecture {name!r}: it is neither registered nor a timm model.{hint} "
        f"To add it, decorate a factory `fn(num_classes, **kw) -> nn.Module` with "
        f"@kaggle_tli.register_arch({name!r}) (or use register_edit) and run that cell first; "
        f"list_archs('*', include_timm=True) lists every name."
    )


def resolve(name: str) -> dict[str, Any]:
    """The build node of ``name``: a JSON-able dict that, with num_classes/in_chans/kwargs, is enough to
    build the model (for factories: enough to find and check the registered function)."""
    check_name(name)
    entry = _REGISTRY.get(name)
    if entry is not None:
        info = entry.info
        if info.kind == "edit":
            assert info.base is not None  # set by register_edit
            return {
                "kind": "edit",
                "name": name,
                "base": resolve(info.base),
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


def head_factory(name: str, allow_imports: bool) -> Callable[..., nn.Module]:
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
        with LOCK:
            _HEADS[name] = fn
        return fn
    raise EditError(
        f"unknown head {name!r}: use 'linear', 'mlp', an import path 'package.module:function', or register it "
        f"with @kaggle_tli.register_head({name!r}) and run that cell first"
    )
