"""The package keeps its house rules (docs: /work/shared/DESIGN.md, issue 14), checked by an AST walk over kaggle_tli/.

Nothing of the package under test is imported: every module is parsed, so the checks are fast and see the source as
it is. Each check returns its offenders as readable lines ("path:line what"); the tests at the top assert that the
real package has none, and the tests at the bottom run the same checks on tiny synthetic trees, to prove that each
check does catch what it is meant to catch.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = "kaggle_tli"
PACKAGE_ROOT = Path(__file__).resolve().parents[1] / PACKAGE

MAX_MODULE_LINES = 450  # aim for about 400
MAX_FUNCTION_LINES = 60  # body lines, docstring included; aim for 50

# Modules over MAX_MODULE_LINES, allowed for now: the list only shrinks. Each entry is path -> its length when listed,
# and a listed file may not grow past it. tli/graph.py (560 lines when the rule was written) has since come under
# the limit, so the list is empty.
LONG_MODULES: dict[str, int] = {}

# Layers, arrows down only: a module may import the same layer (where that makes no cycle) or a higher number.
# A key ending in "/" covers a package folder; other keys are single files. Modules in no layer are reported.
LAYERS: dict[str, int] = {
    "__init__.py": 0, "cli.py": 0, "demo.py": 0,  # the face
    "stages/": 1, "kaggle/": 1, "bench/": 1,
    "train/": 2,
    "runs.py": 3,
    "models/": 4, "data/": 4,
    "checkpoint.py": 5, "ledger/": 5, "files.py": 5, "version.py": 5,
    "tli/": 6,  # the engine: imports nothing from the rest of the package
}
ENGINE = "tli/"

_KAGGLE_PARSER = ("runs (torch) and ledger (pandas) load where a bundle is built, read or published: the face's "
                  "parser imports the kaggle package for its subcommands (kaggle/cli.py), and `kaggle-tli --help` "
                  "must stay fast")

# Imports of kaggle_tli modules inside functions, allowed per module with the reason. The package face needs no
# entry: its lazy attributes go through importlib.import_module, not import statements.
LAZY_PACKAGE_IMPORTS: dict[str, str] = {
    "cli.py": "one handler per subcommand imports what that subcommand needs, so `kaggle-tli --help` stays fast",
    "kaggle/bundle.py": _KAGGLE_PARSER,
    "kaggle/publish.py": _KAGGLE_PARSER,
}

# Third-party (and stdlib) modules that may be imported inside functions anywhere, by top-level name, with the reason.
# demo.py gets no cv2/torch exception: only `kaggle-tli demo`'s handler imports it, and its top-level
# `from .runs import Run` imports torch anyway, so importing either lazily there saves no start-up time.
LAZY_THIRD_PARTY: dict[str, str] = {
    "kaggle": "the client authenticates and prints when imported: only inside the functions that publish",
    "kaggle_secrets": "exists only inside Kaggle notebooks",
    "matplotlib": "plotting is optional and pyplot picks a backend when imported",
    "iatransfer": "an optional baseline, not a dependency",
    "requests": "comes with the kaggle client, needed only when it is used",
    "importlib": "imports a module chosen at run time (bench NAME, import_archs)",
}


# --------------------------------------------------------------------------------------------------- the scan


@dataclass
class Import:
    """One import statement's edge: the importing module, the kaggle_tli module it reaches, and how."""

    line: int
    target: str | None  # a module of the package (dotted name), or None for a third-party module
    external: str  # the top-level name of a third-party module ("" for the package's own)
    names: tuple[str, ...]  # names taken from the target with `from target import ...` that are not submodules
    nested: bool  # inside a function or class body


@dataclass
class Module:
    """A parsed module of the package: its path relative to the package root, dotted name, syntax tree, imports."""

    rel: str
    name: str
    tree: ast.Module
    lines: int
    imports: list[Import] = field(default_factory=list)

    @property
    def is_init(self) -> bool:
        return self.rel.endswith("__init__.py")

    @property
    def package(self) -> str:
        """The dotted package that relative imports start from."""
        return self.name if self.is_init else self.name.rpartition(".")[0]


def dotted(rel: str, package: str = PACKAGE) -> str:
    """kaggle_tli.bench.convergence for bench/convergence.py, kaggle_tli.bench for bench/__init__.py."""
    parts = rel.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def scan(root: Path) -> dict[str, Module]:
    """Every module under `root` (a package folder), parsed, with its imports resolved; keyed by dotted name."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        source = path.read_text(encoding="utf-8")
        mod = Module(rel, dotted(rel, root.name), ast.parse(source, filename=str(path)), len(source.splitlines()))
        modules[mod.name] = mod
    for mod in modules.values():
        mod.imports = list(_imports(mod, modules, root.name))
    return modules


def _nested_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes inside a function or class body."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            inside.update(id(n) for n in ast.walk(node) if n is not node)
    return inside


def _known(name: str, modules: dict[str, Module]) -> str:
    """`name` if it is a module of the package, else its longest prefix that is one (a name inside a module)."""
    while name not in modules and "." in name:
        name = name.rpartition(".")[0]
    return name


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:`: imports for annotations only, never run, so no edge."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            out.update(id(n) for n in ast.walk(node) if n is not node)
    return out


def _imports(mod: Module, modules: dict[str, Module], package: str):
    nested = _nested_nodes(mod.tree)
    annotations_only = _type_checking_nodes(mod.tree)
    for node in ast.walk(mod.tree):
        if id(node) in annotations_only:
            continue
        inner = id(node) in nested
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == package:
                    yield Import(node.lineno, _known(alias.name, modules), "", (), inner)
                else:
                    yield Import(node.lineno, None, alias.name.split(".")[0], (), inner)
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            if node.level:
                base = mod.package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != package:
                yield Import(node.lineno, None, source.split(".")[0], (), inner)
                continue
            submodules = [a.name for a in node.names if f"{source}.{a.name}" in modules]
            names = tuple(a.name for a in node.names if a.name not in submodules)
            for sub in submodules:
                yield Import(node.lineno, f"{source}.{sub}", "", (), inner)
            if names:
                yield Import(node.lineno, _known(source, modules), "", names, inner)


def layer_of(rel: str) -> int | None:
    """The layer of a module from its path (LAYERS), None when the map has no entry for it."""
    for key, layer in LAYERS.items():
        if rel == key or (key.endswith("/") and rel.startswith(key)):
            return layer
    return None


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


# --------------------------------------------------------------------------------------------------- the checks


def long_modules(modules: dict[str, Module]) -> list[str]:
    out = []
    for mod in modules.values():
        cap = LONG_MODULES.get(mod.rel, MAX_MODULE_LINES)
        if mod.lines > cap:
            out.append(f"{mod.rel}: {mod.lines} lines (limit {cap})")
        elif mod.rel in LONG_MODULES and mod.lines <= MAX_MODULE_LINES:
            out.append(f"{mod.rel}: {mod.lines} lines, under the limit now: drop it from LONG_MODULES")
    return out


def long_functions(modules: dict[str, Module]) -> list[str]:
    out = []
    for mod in modules.values():
        for node in ast.walk(mod.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.body[0].lineno + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(f"{mod.rel}:{node.lineno} {node.name}: {length} lines")
    return out


def bad_docstrings(modules: dict[str, Module]) -> list[str]:
    """A module docstring whose first line is one complete statement: it ends a sentence, or the line after it is
    blank (a one-line summary without a full stop). A first line that runs on into the second says more than one
    line can hold."""
    out = []
    for mod in modules.values():
        doc = ast.get_docstring(mod.tree)
        if not doc:
            out.append(f"{mod.rel}: no module docstring")
            continue
        lines = doc.splitlines()
        first = lines[0].strip()
        if not first:
            out.append(f"{mod.rel}: the docstring's first line is empty")
        elif not first.endswith((".", "?", "!")) and len(lines) > 1 and lines[1].strip():
            out.append(f"{mod.rel}: the docstring's first line runs on into the next: {first!r}")
    return out


def logic_in_inits(modules: dict[str, Module], allowed: dict[str, set[str]] | None = None) -> list[str]:
    """Statements other than the docstring, imports and `__all__` in `__init__.py` files."""
    allowed = INIT_EXTRAS if allowed is None else allowed
    out = []
    for mod in (m for m in modules.values() if m.is_init):
        for i, node in enumerate(mod.tree.body):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue
            name = _statement_name(node)
            if name == "__all__" or name in allowed.get(mod.rel, set()):
                continue
            out.append(f"{mod.rel}:{node.lineno} {type(node).__name__} {name or ''}".rstrip())
    return out


def _statement_name(node: ast.stmt) -> str | None:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        return ast.unparse(node.targets[0])
    if isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        return ast.unparse(node.target)
    return None


# The package face's lazy re-exports (PEP 562): `import kaggle_tli` must stay fast and not import torch, so its
# __init__ maps names to modules and imports one on first use. These statements, and no others, are allowed there.
INIT_EXTRAS: dict[str, set[str]] = {
    "__init__.py": {"__version__", "_EXPORTS", "__getattr__", "__dir__", "_Package", "sys.modules[__name__].__class__"},
}


def private_imports(modules: dict[str, Module]) -> list[str]:
    """`from x import _y` where x is another module of the package, and `mod._y` where mod was imported from it."""
    out = []
    for mod in modules.values():
        bound = set()  # local names bound to package modules
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                for imp in (i for i in mod.imports if i.line == node.lineno and i.target and i.target != mod.name):
                    out += [f"{mod.rel}:{imp.line} imports {imp.target}.{n}" for n in imp.names if _is_private(n)]
                    bound.update((a.asname or a.name) for a in node.names if imp.target.endswith(f".{a.name}"))
            elif isinstance(node, ast.Import):
                bound.update(a.asname for a in node.names if a.asname and a.name.split(".")[0] == PACKAGE)
        for node in ast.walk(mod.tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                    and _is_private(node.attr)):
                out.append(f"{mod.rel}:{node.lineno} reaches {node.value.id}.{node.attr}")
    return sorted(set(out))


def lazy_imports(modules: dict[str, Module]) -> list[str]:
    """Imports inside functions that neither LAZY_PACKAGE_IMPORTS nor LAZY_THIRD_PARTY allow."""
    out = []
    for mod in modules.values():
        for imp in (i for i in mod.imports if i.nested):
            if imp.target is not None and mod.rel not in LAZY_PACKAGE_IMPORTS:
                out.append(f"{mod.rel}:{imp.line} imports {imp.target} inside a function")
            elif imp.target is None and imp.external not in LAZY_THIRD_PARTY:
                out.append(f"{mod.rel}:{imp.line} imports {imp.external} inside a function")
    return sorted(set(out))


def unmapped_modules(modules: dict[str, Module]) -> list[str]:
    return [f"{mod.rel}: in no layer" for mod in modules.values() if layer_of(mod.rel) is None]


def upward_imports(modules: dict[str, Module]) -> list[str]:
    """Imports (anywhere in a module) of a module in a higher layer (a lower number), and engine imports that leave
    the engine."""
    out = []
    for mod in modules.values():
        here = layer_of(mod.rel)
        for imp in (i for i in mod.imports if i.target and i.target != mod.name):
            there = modules[imp.target] if imp.target in modules else None
            if there is None:
                continue
            if mod.rel.startswith(ENGINE) and not there.rel.startswith(ENGINE):
                out.append(f"{mod.rel}:{imp.line} the engine imports {there.rel}")
            elif here is not None and layer_of(there.rel) is not None and layer_of(there.rel) < here:
                out.append(f"{mod.rel}:{imp.line} (layer {here}) imports {there.rel} (layer {layer_of(there.rel)})")
    return sorted(set(out))


def import_cycles(modules: dict[str, Module]) -> list[str]:
    """Cycles among module-level imports (`from . import x` is an edge to x), one line per strongly connected set."""
    graph = {name: sorted({i.target for i in mod.imports if i.target and not i.nested and i.target != name})
             for name, mod in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            members = []
            while True:
                w = stack.pop()
                members.append(w)
                if w == v:
                    break
            if len(members) > 1:
                out.append(" <-> ".join(sorted(modules[m].rel for m in members)))

    for v in graph:
        if v not in index:
            visit(v)
    return sorted(out)


CHECKS = {
    "modules over the line limit": long_modules,
    "functions over the line limit": long_functions,
    "module docstrings": bad_docstrings,
    "logic in __init__.py": logic_in_inits,
    "private names imported from another module": private_imports,
    "imports inside functions": lazy_imports,
    "modules in no layer": unmapped_modules,
    "imports that go up a layer or out of the engine": upward_imports,
    "import cycles": import_cycles,
}


# --------------------------------------------------------------------------------------------------- the package


@pytest.fixture(scope="module")
def package() -> dict[str, Module]:
    return scan(PACKAGE_ROOT)


@pytest.mark.parametrize("check", list(CHECKS))
def test_package_keeps_the_rule(package, check):
    offenders = CHECKS[check](package)
    assert not offenders, f"{check} ({len(offenders)}):\n  " + "\n  ".join(offenders)


# --------------------------------------------------------------------------------------------------- the checker


def tree(tmp_path: Path, files: dict[str, str]) -> dict[str, Module]:
    """A synthetic package `kaggle_tli` under tmp_path holding `files` (path -> source), scanned."""
    root = tmp_path / PACKAGE
    for rel, source in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return scan(root)


DOC = '"""One idea."""\n'


def test_checker_finds_an_upward_import_and_an_engine_leaving_it(tmp_path):
    modules = tree(tmp_path, {
        "__init__.py": DOC, "runs.py": DOC, "tli/__init__.py": DOC,
        "files.py": DOC + "from .runs import Run\n",  # layer 5 -> layer 3
        "tli/graph.py": DOC + "from ..files import write\n",
        "data/__init__.py": DOC, "data/base.py": DOC + "from kaggle_tli.files import write\n",  # 4 -> 5: fine
    })
    assert upward_imports(modules) == ["files.py:2 (layer 5) imports runs.py (layer 3)",
                                       "tli/graph.py:2 the engine imports files.py"]


def test_checker_finds_a_cycle_and_reads_from_dot_import_x_as_an_edge_to_x(tmp_path):
    modules = tree(tmp_path, {
        "__init__.py": DOC, "data/__init__.py": DOC,
        "data/a.py": DOC + "from . import b\n",
        "data/b.py": DOC + "from .a import thing\n",
        "data/c.py": DOC + "def f():\n    from . import a\n",  # inside a function: no module-level edge
    })
    assert import_cycles(modules) == ["data/a.py <-> data/b.py"]


def test_checker_finds_private_imports_but_not_aliases_of_third_party_names(tmp_path):
    modules = tree(tmp_path, {
        "__init__.py": DOC, "models/__init__.py": DOC, "models/registry.py": DOC + "_REGISTRY = {}\n",
        "models/build.py": DOC + "from .registry import _REGISTRY\nfrom safetensors.torch import load as _st_load\n",
        "models/edits.py": DOC + "from . import registry as reg\n\ndef f():\n    return reg._REGISTRY, reg.__name__\n",
        "models/_surgery.py": DOC, "models/ok.py": DOC + "from ._surgery import cut\n",  # a private module is fine
    })
    assert private_imports(modules) == ["models/build.py:2 imports kaggle_tli.models.registry._REGISTRY",
                                        "models/edits.py:5 reaches reg._REGISTRY"]


def test_checker_finds_long_functions_long_modules_and_bad_docstrings(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    modules = tree(tmp_path, {
        "__init__.py": DOC,
        "files.py": DOC + f"def short():\n{body}\n\ndef long():\n{body}    return 1\n",
        "runs.py": DOC + "x = 1\n" * MAX_MODULE_LINES,
        "ledger/__init__.py": '"""The ledger: one CSV of every run, with its\nparent, schema and lock."""\n',
        "ledger/store.py": "x = 1\n",
    })
    assert long_functions(modules) == [f"files.py:{MAX_FUNCTION_LINES + 5} long: {MAX_FUNCTION_LINES + 1} lines"]
    assert long_modules(modules) == [f"runs.py: {MAX_MODULE_LINES + 1} lines (limit {MAX_MODULE_LINES})"]
    assert bad_docstrings(modules) == [
        "ledger/__init__.py: the docstring's first line runs on into the next: 'The ledger: one CSV of every run, "
        "with its'", "ledger/store.py: no module docstring"]


def test_checker_finds_logic_in_inits_and_unallowed_lazy_imports(tmp_path):
    modules = tree(tmp_path, {
        "__init__.py": DOC + "from .runs import Run\n__all__ = ['Run']\n",
        "runs.py": DOC + "def f():\n    import matplotlib\n    import cv2\n    from . import files\n",
        "files.py": DOC, "cli.py": DOC + "def cmd():\n    from .runs import Run\n",
        "data/__init__.py": DOC + "from .base import Data\n\ndef helper():\n    return 1\n",
        "data/base.py": DOC,
    })
    assert logic_in_inits(modules) == ["data/__init__.py:4 FunctionDef helper"]
    assert lazy_imports(modules) == ["runs.py:4 imports cv2 inside a function",
                                     "runs.py:5 imports kaggle_tli.files inside a function"]
    assert unmapped_modules(modules) == []
