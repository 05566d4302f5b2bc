"""Find attached inputs (weight bundles, competition folders) under ``/kaggle/input``.

Kaggle mounts inputs differently from one notebook image to the next: ``/kaggle/input/<slug>``,
``/kaggle/input/datasets/<owner>/<slug>``, ``/kaggle/input/competitions/<slug>``, sometimes with
symlinks between them. So nothing here hard-codes a layout: we walk the tree (bounded in depth) and
keep the directories that hold a marker file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

# written by `bundle()` into every weight bundle; notebooks look for it instead of a mount path
BUNDLE_MARKER = "kaggle-tli-bundle.json"
# a Kaggle competition folder holds at least one of these at its top
COMPETITION_MARKERS = ("sample_submission.csv", "train.csv")
KAGGLE_INPUT = "/kaggle/input"

# /kaggle/input/datasets/<owner>/<slug>/versions/<n> is the deepest known layout (5 levels)
_MAX_DEPTH = 5


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


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False
