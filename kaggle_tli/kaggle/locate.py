"""Find attached inputs (weight bundles, competition folders) under ``/kaggle/input``.

Kaggle mounts inputs differently from one notebook image to the next: ``/kaggle/input/<slug>``,
``/kaggle/input/datasets/<owner>/<slug>``, ``/kaggle/input/competitions/<slug>``, and Kaggle Models at
``/kaggle/input/<model>/pytorch/<variation>/<version>`` (``/kaggle/input/models/<owner>/...`` in newer images),
sometimes with symlinks between them. So nothing here hard-codes a layout: we walk the tree (bounded in depth) and
keep the directories that hold a marker file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from .metadata import FRAMEWORK, ModelHandle, parse_model_handle

# written by `bundle()` into every weight bundle; notebooks look for it instead of a mount path
BUNDLE_MARKER = "kaggle-tli-bundle.json"
# a Kaggle competition folder holds at least one of these at its top
COMPETITION_MARKERS = ("sample_submission.csv", "train.csv")
KAGGLE_INPUT = "/kaggle/input"

# /kaggle/input/models/<owner>/<model>/pytorch/<variation>/<version> is the deepest known layout (6 levels)
_MAX_DEPTH = 6


def find_inputs(
    marker: str | Sequence[str] = BUNDLE_MARKER,
    root: str | Path = KAGGLE_INPUT,
    *,
    max_depth: int = _MAX_DEPTH,
) -> list[Path]:
    """Directories under `root` (itself included) that contain `marker` (or any of several markers).

    The walk follows symlinks (Kaggle links mounts into each other) but visits every real directory
    once, does not descend below a match (a competition's image folders can hold 100k files), and
    stops at `max_depth`. Results are sorted, so the same tree always gives the same order.
    """
    markers = (marker,) if isinstance(marker, str) else tuple(marker)
    if not markers or not all(isinstance(m, str) and m for m in markers):
        raise ValueError(f"marker must be a file name or a list of file names, got {marker!r}")
    root = Path(root)
    if not root.is_dir():
        return []
    found: list[Path] = []
    seen: set[str] = set()
    stack = [(root, 0)]
    # iterative walk: no recursion limit, and symlink cycles end at `seen`
    while stack:
        directory, depth = stack.pop()
        real = os.path.realpath(directory)
        if real in seen:
            continue
        seen.add(real)
        try:
            entries = list(os.scandir(directory))
        except OSError:  # unreadable or vanished mount: skip it, the rest still counts
            continue
        names = {e.name for e in entries}
        if any(m in names for m in markers):
            found.append(directory)
            continue
        if depth >= max_depth:
            continue
        for entry in entries:
            if entry.name.startswith(".") or not _is_dir(entry):
                continue
            stack.append((Path(entry.path), depth + 1))
    return sorted(found)


def find_bundles(root: str | Path = KAGGLE_INPUT) -> list[Path]:
    """Every kaggle-tli weight bundle under `root`."""
    return find_inputs(BUNDLE_MARKER, root)


def find_competition(root: str | Path = KAGGLE_INPUT, slug: str | None = None) -> Path:
    """The one competition folder under `root` (by `sample_submission.csv` / `train.csv`).

    With several candidates, `slug` picks the one whose path contains it; weight bundles are never
    taken for a competition even if they carry a csv of that name.
    """
    candidates = [p for p in find_inputs(COMPETITION_MARKERS, root) if not (p / BUNDLE_MARKER).exists()]
    if slug is not None:
        candidates = [p for p in candidates if slug in p.parts]
    if len(candidates) == 1:
        return candidates[0]
    what = f"competition folder{' for ' + repr(slug) if slug else ''}"
    if not candidates:
        raise FileNotFoundError(
            f"no {what} under {root} (looked for {' or '.join(COMPETITION_MARKERS)} up to "
            f"{_MAX_DEPTH} levels deep): attach the competition to the notebook (Add Input), or pass "
            "the folder explicitly"
        )
    listing = ", ".join(str(p) for p in candidates)
    raise ValueError(f"several {what}s under {root}: {listing}; pass slug= (or the folder itself) to pick one")


def locate_bundle(path: str | Path, *, run_id: str | None = None, dataset: str | None = None,
                  model: str | None = None) -> Path:
    """The bundle folder at or below `path` (of dataset `dataset` or Kaggle Model `model`, and for run `run_id`,
    when given).

    A bundle belongs to `dataset` when its marker says so or when it is mounted under the dataset's slug (Kaggle
    mounts `owner/slug` as `.../slug`, whatever id the bundle was built with). It belongs to `model` ("owner/model",
    optionally with "/pytorch/variation[/version]") when its marker names that model (and variation), or when it is
    mounted under the model's slug (and variation and version): `.../<model>/pytorch/<variation>/<version>`.
    """
    path = Path(path)
    if dataset is not None and (not isinstance(dataset, str) or dataset.count("/") != 1):
        raise ValueError(f"dataset must be 'owner/slug', got {dataset!r}")
    handle = parse_model_handle(model) if model is not None else None
    candidates = [path] if (path / BUNDLE_MARKER).is_file() else find_bundles(path)
    if dataset is not None:
        slug = dataset.split("/")[1]
        candidates = [c for c in candidates
                      if read_json(c / BUNDLE_MARKER).get("dataset") == dataset or slug in c.relative_to(path).parts]
    if handle is not None:
        candidates = [c for c in candidates if _is_of_model(c, path, handle)]
    if run_id is not None:
        candidates = [c for c in candidates if read_json(c / BUNDLE_MARKER).get("run_id") == run_id]
    if len(candidates) == 1:
        return candidates[0]
    which = "".join(f"{w} " for w in (dataset and f"of dataset {dataset!r}", model and f"of model {model!r}",
                                       run_id and f"for run {run_id!r}") if w)
    if not candidates:
        raise FileNotFoundError(
            f"no kaggle-tli bundle {which}at or below {path} (looked for {BUNDLE_MARKER}): attach the "
            "weights dataset or model to the notebook (Add Input), or pass the bundle folder"
        )
    listing = ", ".join(f"{c} (run {read_json(c / BUNDLE_MARKER).get('run_id')})" for c in candidates)
    raise ValueError(f"several bundles {which}under {path}: {listing}; pass dataset=, model=, run_id= or the "
                     "folder itself")


def _is_of_model(bundle_dir: Path, root: Path, handle: ModelHandle) -> bool:
    """Whether the bundle at `bundle_dir` is (a version of) the model or variation `handle`."""
    marked = read_json(bundle_dir / BUNDLE_MARKER).get("kaggle_model")
    wanted = [handle.owner, handle.model, *([FRAMEWORK, handle.variation] if handle.variation else [])]
    if isinstance(marked, str) and marked.split("/")[:len(wanted)] == wanted:
        return handle.version is None or bundle_dir.name == str(handle.version)
    # a mount: .../<model>/pytorch/<variation>/<version>, owner-less in older images, owner-first in newer ones
    parts = bundle_dir.relative_to(root).parts if bundle_dir != root else bundle_dir.parts[-4:]
    tail = [handle.model, FRAMEWORK, handle.variation, str(handle.version) if handle.version else None]
    return all(p is None or p in parts for p in tail) and handle.model in parts


def read_json(path: Path) -> dict:
    """A bundle's JSON file (marker, metadata, run.json) as a dict; ValueError naming the file when unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False
