"""Write a benchmark's results into one output folder: `<stem>.csv`, `<stem>.md` (a markdown table) and PNGs.

Shared by every benchmark. Figures are built with `matplotlib.figure.Figure` (no pyplot), so nothing depends on
the interactive backend or leaks open figures; files are written atomically (`kaggle_tli.files`) so an
interrupted run never leaves half a table behind.
"""

from __future__ import annotations

import io
import math
import numbers
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from kaggle_tli.files import atomic_write_bytes


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
    atomic_write_bytes(csv_path, frame.to_csv(index=False).encode())
    parts = [f"# {title}\n"] if title else []
    parts.append(markdown_table(frame if view is None else view, formats))
    parts += [f"\n{n}" for n in notes]
    atomic_write_bytes(md_path, ("\n".join(parts) + "\n").encode())
    return csv_path, md_path


def float_formats(frame: pd.DataFrame, spec: str = ".3f") -> dict[str, str]:
    """`spec` for every float column of `frame` (the `formats` argument of the writers above)."""
    return {c: spec for c in frame.columns if pd.api.types.is_float_dtype(frame[c])}


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 120) -> Path:
    """Save `fig` as PNG (tight bounding box) atomically and return the path."""
    path = Path(path)
    prepare_dir(path.parent)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, bbox_inches="tight", format="png")
    return atomic_write_bytes(path, buffer.getvalue())
