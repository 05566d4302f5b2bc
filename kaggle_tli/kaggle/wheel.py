"""The wheel a bundle carries: a `py3-none-any` wheel of the running kaggle_tli, built once per process.

Offline Kaggle notebooks install kaggle_tli from the bundle with `pip install --no-index --find-links <bundle>`,
so every bundle ships the very code that wrote it: from a source checkout via `pip wheel`, or, where kaggle_tli
was itself installed from a wheel, by packing the installed files back into one.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

from kaggle_tli.version import __version__

_wheel_cache: dict[str, Path] = {}


def build_wheel(out_dir: str | Path | None = None) -> Path:
    """A `py3-none-any` wheel of the running kaggle_tli.

    From a source checkout (also an editable install): `pip wheel --no-deps --no-build-isolation`
    of a clean copy of the source, so the checkout gets no build/ or egg-info litter. Without one
    (kaggle_tli was itself installed from a wheel, as in an offline notebook): the installed files
    are packed back into a wheel, so a notebook can bundle its own new run. Built once per process
    and source state; `out_dir` gets a copy.
    """
    source = _source_root()
    if source is not None:
        key = "src:" + _source_digest(source)
        maker = lambda d: _pip_wheel(source, d)  # noqa: E731
    else:
        dist = _installed_distribution()
        if dist is None:
            raise RuntimeError(
                "cannot build a wheel of kaggle_tli: it is neither a source checkout (no pyproject.toml "
                "next to the package) nor an installed distribution; install it with `pip install -e "
                "/path/to/kaggle-tli` or `pip install kaggle_tli-*.whl`, or pass wheel=PATH to bundle()"
            )
        key = f"dist:{dist.version}:{dist.locate_file('')}"
        maker = lambda d: _repack_installed(dist, d)  # noqa: E731
    cached = _wheel_cache.get(key)
    if cached is None or not cached.is_file():
        tmp = tempfile.mkdtemp(prefix="kaggle-tli-wheel-")
        atexit.register(shutil.rmtree, tmp, True)
        cached = maker(Path(tmp))
        _wheel_cache[key] = cached
    if out_dir is None:
        return cached
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(cached, out_dir / cached.name))


def _source_root() -> Path | None:
    root = Path(__file__).resolve().parents[2]  # kaggle_tli/kaggle/wheel.py -> the folder holding kaggle_tli/
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and re.search(r'(?m)^name\s*=\s*"kaggle[-_]tli"', pyproject.read_text()):
        return root
    return None


# what a wheel build needs from the checkout (tests, runs, .venv stay behind)
_SOURCE_FILES = ("pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in", "README.md", "LICENSE", "LICENSE.txt")
_SOURCE_DIRS = ("kaggle_tli", "templates")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")


def _source_digest(root: Path) -> str:
    h = hashlib.sha256()
    for name in _SOURCE_FILES:
        if (root / name).is_file():
            h.update(name.encode() + b"\0" + (root / name).read_bytes())
    for d in _SOURCE_DIRS:
        for p in sorted((root / d).rglob("*")) if (root / d).is_dir() else []:
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
                h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _pip_wheel(root: Path, out_dir: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="kaggle-tli-src-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in _SOURCE_FILES:
            if (root / name).is_file():
                shutil.copy2(root / name, src / name)
        for d in _SOURCE_DIRS:
            if (root / d).is_dir():
                shutil.copytree(root / d, src / d, ignore=_IGNORE)
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
               "--disable-pip-version-check", "-q", "-w", str(out_dir), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(out_dir.glob("kaggle_tli-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(
            f"building the kaggle_tli wheel from {root} failed (pip wheel exit {proc.returncode}); it needs "
            f"pip and setuptools>=64 in this environment. pip said:\n{tail}"
        )
    return wheels[-1]


def _installed_distribution() -> Any:
    for name in ("kaggle-tli", "kaggle_tli"):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        # an editable install's files are a .pth, not the package: useless to repack
        if any(str(f).startswith("kaggle_tli/") for f in dist.files or ()):
            return dist
    return None


# installer bookkeeping that pip writes at install time and that no wheel carries
_NOT_IN_WHEEL = {"INSTALLER", "REQUESTED", "RECORD", "direct_url.json"}


def _repack_installed(dist: Any, out_dir: Path) -> Path:
    """Pack an installed (non-editable) kaggle_tli back into a wheel, RECORD rebuilt with hashes."""
    version = dist.version
    info_dir = f"kaggle_tli-{version}.dist-info"
    entries: list[tuple[str, Path]] = []
    for f in dist.files or ():
        rel = str(f).replace(os.sep, "/")
        top, name = rel.split("/")[0], rel.rsplit("/", 1)[-1]
        if top == "kaggle_tli" and "__pycache__" not in rel and not rel.endswith(".pyc"):
            entries.append((rel, Path(dist.locate_file(f))))
        elif top.endswith(".dist-info") and name not in _NOT_IN_WHEEL:
            entries.append((f"{info_dir}/{rel.split('/', 1)[1]}", Path(dist.locate_file(f))))
    path = out_dir / f"kaggle_tli-{version}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for arcname, src in sorted(entries):
            data = src.read_bytes()
            zf.writestr(arcname, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arcname},sha256={digest},{len(data)}")
        record.append(f"{info_dir}/RECORD,,")
        zf.writestr(f"{info_dir}/RECORD", "\n".join(record) + "\n")
    return path


def package_version() -> str:
    """The version of the running kaggle_tli, as its package says it."""
    return __version__
