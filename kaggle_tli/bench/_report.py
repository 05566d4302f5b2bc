"""Write a benchmark's results into one output folder: `<stem>.csv`, `<stem>.md` (a markdown table) and PNGs.

Shared by every benchmark. Figures are built with `matplotlib.figure.Figure` (no pyplot), so nothing depends on
the interactive backend or leaks open figures; files are written atomically (temp file + `os.replace`) so an
interrupted run never leaves half a table behind.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure


def prepare_dir(out_dir: str | Path) -> Path:
    """`out_dir` as a Path, created if missing; a clear error when it cannot be a folder."""
    path = Path(out_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise NotADirectoryError(
            f"benchmark output {str(path)!r} exists and is not a folder: pass another output folder"
        ) from e
    return path


def _temp_beside(path: Path) -> Path:
    # opened by name rather than mkstemp: mkstemp's 0600 mode would make shared results unreadable to others
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = _temp_beside(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _cell(value: object, fmt: str | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""  # a missing reference figure stays blank rather than printing "nan"
    if fmt and isinstance(value, numbers.Real) and not isinstance(value, bool):
        return format(value, fmt)
    return str(value).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame, formats: Mapping[str, str] | None = None) -> str:
    """A GitHub markdown table of `frame` (index dropped); `formats` maps a column to a format spec like ".2f"."""
    formats = dict(formats or {})
    cols = [str(c) for c in frame.columns]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |",
             "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, formats.get(c)) for c, v in zip(cols, row, strict=True)) + " |")
    return "\n".join(lines) + "\n"


def write_table(frame: pd.DataFrame, out_dir: str | Path, stem: str, *, title: str = "",
                notes: Iterable[str] = (), formats: Mapping[str, str] | None = None,
                view: pd.DataFrame | None = None) -> tuple[Path, Path]:
    """Write `<stem>.csv` (every column of `frame`, full precision) and `<stem>.md` (title, the table of `view`,
    default `frame`, then `notes` as paragraphs); return both paths."""
    out = prepare_dir(out_dir)
    csv_path, md_path = out / f"{stem}.csv", out / f"{stem}.md"
    _write_atomic(csv_path, frame.to_csv(index=False).encode())
    parts = [f"# {title}\n"] if title else []
    parts.append(markdown_table(frame if view is None else view, formats))
    parts += [f"\n{n}" for n in notes]
    _write_atomic(md_path, ("\n".join(parts) + "\n").encode())
    return csv_path, md_path


def float_formats(frame: pd.DataFrame, spec: str = ".3f") -> dict[str, str]:
    """`spec` for every float column of `frame` (the `formats` argument of the writers above)."""
    return {c: spec for c in frame.columns if pd.api.types.is_float_dtype(frame[c])}


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 120) -> Path:
    """Save `fig` as PNG (tight bounding box) atomically and return the path."""
    path = Path(path)
    prepare_dir(path.parent)
    tmp = _temp_beside(path)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
