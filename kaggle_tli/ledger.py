"""The run ledger: one CSV row per run, so every model can say where it came from.

Every stage (finetune, inject, resume, iterate) appends a row to ``<runs>/ledger.csv`` when it starts
and updates it when it ends; ``parent_run_id`` links a run to the run whose weights it started from,
which makes the file a forest of lineages that :meth:`Ledger.lineage` walks and
:meth:`Ledger.plot_lineage` draws. On Kaggle the ledger of an earlier notebook arrives as a read-only
input; :meth:`Ledger.import_rows` copies its rows into the working ledger so a lineage continues
across notebooks.

File format
-----------
Plain CSV, UTF-8, comma separated, a header line, then one line per run. The columns are
:data:`LEDGER_COLUMNS` in that order followed by a ``schema`` column holding, on every row, the
version of the format that wrote the row (:data:`SCHEMA_VERSION`). Choices and why:

- *Where the schema version lives.* A ``# schema=1`` comment line would need ``comment="#"`` in
  ``pandas.read_csv`` and shows as a junk row in Excel; a sidecar file (``ledger.schema.json``) gets
  lost when one file is uploaded, attached or copied on its own. A ``schema`` column is plain CSV
  that every tool reads, travels with each row (ledgers can be concatenated, rows imported) and sits
  last so that it stays out of the way. A ledger holding any row newer than this code raises
  :class:`LedgerSchemaError` for reads and writes alike, so an old kaggle-tli never rewrites, and
  so never damages, a newer ledger.
- *Values.* Missing values are empty fields; floats are written with ``repr`` (the shortest text
  that reads back to the same float); timestamps are ISO-8601 in UTC with milliseconds
  (``2026-11-27T11:35:01.123+00:00``); ``duration_s`` is seconds as a float.
- *One physical line per row.* Newlines inside text values are replaced by spaces, so a line number
  names a row and a damaged line cannot swallow its neighbours.

Concurrency and crashes
-----------------------
Every write (append, update, import) holds ``<ledger>.lock`` (``filelock``: an ``fcntl`` lock, which
the kernel releases when its holder dies, even by SIGKILL), reads the current file, and replaces it
whole: ``<ledger>.tmp`` is written, fsynced and moved over the ledger with ``os.replace``. A reader
therefore never needs the lock and always sees one complete version of the file, and a process
killed at any moment leaves either the old or the new file, never a torn line. Lines this code did
not write or cannot parse, and columns a user added in a spreadsheet, are carried over byte for byte.

A damaged line (wrong number of fields, garbage, a value that does not parse) is skipped or read in
part; each one is listed in :attr:`Ledger.problems` with its line number and announced by a
:class:`LedgerWarning`, and the rest of the ledger reads normally.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
import os
import stat
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "INITS",
    "LEDGER_COLUMNS",
    "LEDGER_NAME",
    "SCHEMA_VERSION",
    "STAGES",
    "STATUSES",
    "Ledger",
    "LedgerError",
    "LedgerProblem",
    "LedgerSchemaError",
    "LedgerWarning",
]

SCHEMA_VERSION = 1
LEDGER_NAME = "ledger.csv"
LEDGER_COLUMNS: tuple[str, ...] = (
    "run_id",
    "parent_run_id",
    "stage",
    "arch",
    "parent_arch",
    "init",
    "tli_score",
    "coverage",
    "fold",
    "epochs",
    "steps",
    "metric",
    "cv",
    "best_cv",
    "lb",
    "seed",
    "config_hash",
    "git_sha",
    "checkpoint",
    "status",
    "started_at",
    "finished_at",
    "duration_s",
    "notes",
)
_SCHEMA_COLUMN = "schema"
_FILE_COLUMNS = LEDGER_COLUMNS + (_SCHEMA_COLUMN,)

STAGES = ("finetune", "inject", "resume")
INITS = ("tli", "kaiming", "pretrained", "resume")
STATUSES = ("running", "done", "failed", "interrupted")

_FLOAT_COLUMNS = frozenset({"tli_score", "coverage", "cv", "best_cv", "lb", "duration_s"})
_INT_COLUMNS = frozenset({"epochs", "steps", "seed"})
_TIME_COLUMNS = frozenset({"started_at", "finished_at"})
_CHOICES = {"stage": STAGES, "init": INITS, "status": STATUSES}
# `fold` is usually a fold index, but a label ("all", "0-4") is accepted and kept as text.
_FOLD_COLUMN = "fold"

# Short: with filelock's default 50 ms, a writer in a tight loop re-takes the lock before a waiting
# one wakes up, and the waiter starves.
_LOCK_POLL_S = 0.01

_STATUS_COLOURS = {"done": "#cfe8cf", "running": "#fff2b3", "failed": "#f6c6c6", "interrupted": "#dddddd"}


class LedgerError(ValueError):
    """The ledger file cannot be used as asked (not a ledger, read-only, a damaged header)."""


class LedgerSchemaError(LedgerError):
    """The ledger was written by a newer kaggle-tli; this version neither reads nor rewrites it."""


class LedgerWarning(UserWarning):
    """Something in the ledger was skipped: a damaged line, a missing parent, a lineage cycle."""


@dataclass(frozen=True)
class LedgerProblem:
    """One thing the reader skipped; ``line`` is the 1-based line in the file (None: not a line)."""

    line: int | None
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line is not None else self.message


# --------------------------------------------------------------------------------------------------
# values: Python -> CSV text (strict, for writes) and CSV text -> Python (lenient, for reads)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _format_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def _parse_time(text: str) -> datetime:
    """An ISO-8601 timestamp; a trailing Z is accepted (Python 3.10's fromisoformat is not)."""
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    # a naive time is taken as local time, which is what datetime.now() would have produced
    return moment.astimezone(timezone.utc)


def _unwrap_scalar(column: str, value: Any) -> Any:
    """numpy and torch scalars -> Python numbers, without importing either."""
    if isinstance(value, (str, bytes, numbers.Number)) or not hasattr(value, "item"):
        return value
    try:
        return value.item()
    except (TypeError, ValueError) as e:
        raise ValueError(f"ledger column {column!r} takes one value, got {value!r}") from e


def _encode_float(column: str, value: Any) -> str:
    value = _unwrap_scalar(column, value)
    if isinstance(value, str) and not value.strip():
        return ""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise ValueError(f"ledger column {column!r} takes a number, got {value!r}")
    try:
        number = float(value)
    except ValueError as e:
        raise ValueError(f"ledger column {column!r} takes a number, got {value!r}") from e
    return "" if math.isnan(number) else repr(number)


def _encode_int(column: str, value: Any) -> str:
    value = _unwrap_scalar(column, value)
    if isinstance(value, str) and not value.strip():
        return ""
    number = _to_int(value)
    if number is None:
        raise ValueError(f"ledger column {column!r} takes a whole number, got {value!r}")
    return str(number)


def _to_int(value: Any) -> int | None:
    """An int from an int, an integral float or their text; None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def _encode_time(column: str, value: Any) -> str:
    if isinstance(value, str) and not value.strip():
        return ""
    try:
        if isinstance(value, datetime):
            moment = value.astimezone(timezone.utc)
        elif isinstance(value, str):
            moment = _parse_time(value)
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            moment = datetime.fromtimestamp(float(value), timezone.utc)  # Unix seconds
        else:
            raise TypeError(type(value).__name__)
    except (TypeError, ValueError, OverflowError, OSError) as e:
        raise ValueError(
            f"ledger column {column!r} takes a datetime, an ISO-8601 string or Unix seconds, got {value!r}"
        ) from e
    return _format_time(moment)


def _encode_text(column: str, value: Any) -> str:
    value = _unwrap_scalar(column, value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, bool) or not isinstance(value, (str, numbers.Number)):
        raise ValueError(f"ledger column {column!r} takes text, got {type(value).__name__} {value!r}")
    # one physical line per row: see the module docstring
    text = " ".join(str(value).replace("\x00", "").splitlines())
    choices = _CHOICES.get(column)
    if choices is not None and text and text not in choices:
        raise ValueError(f"ledger column {column!r} must be one of {', '.join(choices)}; got {text!r}")
    return text.strip() if column in ("run_id", "parent_run_id") else text


def _encode(column: str, value: Any) -> str:
    """One value as the text stored in the file; ValueError naming the column on a bad value."""
    if value is None:
        return ""
    if column in _FLOAT_COLUMNS:
        return _encode_float(column, value)
    if column in _INT_COLUMNS:
        return _encode_int(column, value)
    if column in _TIME_COLUMNS:
        return _encode_time(column, value)
    if column == _FOLD_COLUMN and _to_int(_unwrap_scalar(column, value)) is not None:
        return _encode_int(column, value)
    return _encode_text(column, value)


def _encode_fields(fields: Mapping[str, Any]) -> dict[str, str]:
    """Validate the keys and values of a (partial) row before anything touches the disk."""
    unknown = [key for key in fields if key not in LEDGER_COLUMNS]
    if unknown:
        raise ValueError(
            f"unknown ledger column(s) {', '.join(map(repr, unknown))}; valid columns: {', '.join(LEDGER_COLUMNS)}"
        )
    return {key: _encode(key, value) for key, value in fields.items()}


def _encode_row(row: Mapping[str, Any]) -> dict[str, str]:
    """A full row: every column present (missing -> empty) and a run_id that can be a key."""
    encoded = _encode_fields(row)
    run_id = encoded.get("run_id", "")
    if not run_id:
        raise ValueError(f"a ledger row needs a non-empty 'run_id'; got {row.get('run_id')!r}")
    if encoded.get("parent_run_id") == run_id:
        raise ValueError(f"run {run_id!r} cannot be its own parent (parent_run_id)")
    return {column: encoded.get(column, "") for column in LEDGER_COLUMNS}


def _decode(column: str, text: str) -> tuple[Any, str | None]:
    """The stored text of one field as a Python value, and a complaint when it does not parse."""
    if not text.strip():
        return None, None
    if column in _FLOAT_COLUMNS:
        try:
            return float(text), None
        except ValueError:
            return None, f"{column}={text!r} is not a number; read as empty"
    if column in _INT_COLUMNS:
        number = _to_int(text)
        return (number, None) if number is not None else (None, f"{column}={text!r} is not a whole number")
    if column == _FOLD_COLUMN:
        number = _to_int(text)
        return (number if number is not None else text), None
    if column in _TIME_COLUMNS:
        try:
            _parse_time(text)
        except ValueError:
            return text, f"{column}={text!r} is not an ISO-8601 timestamp"
    return text, None


# --------------------------------------------------------------------------------------------------
# the file: parsing into a snapshot that remembers every raw line


@dataclass
class _Snapshot:
    """The ledger file as read: raw lines (terminators kept) plus what could be parsed out of them."""

    lines: list[bytes] = field(default_factory=list)
    header: list[str] | None = None
    eol: str = "\n"
    rows: list[dict[str, Any]] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)  # run_id -> position in `lines`
    problems: list[LedgerProblem] = field(default_factory=list)
    newest_schema: int = 0


def _split_csv_line(text: str) -> list[str]:
    parsed = list(csv.reader([text], strict=True))
    return parsed[0] if parsed else []


def _format_csv_line(values: Mapping[str, str], header: list[str], eol: str) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=eol).writerow([values.get(column, "") for column in header])
    return buffer.getvalue().encode("utf-8")


def _check_header(header: list[str], path: Path) -> None:
    missing = [name for name in ("run_id", _SCHEMA_COLUMN) if name not in header]
    if missing:
        named = " and ".join(repr(name) for name in missing)
        columns = "column" if len(missing) == 1 else "columns"
        if missing == [_SCHEMA_COLUMN]:
            # run ids are there: most likely a ledger whose schema column was dropped by hand or by a tool
            fix = (f"If it is a kaggle-tli ledger, add a '{_SCHEMA_COLUMN}' column holding {SCHEMA_VERSION} on "
                   f"every row; otherwise point Ledger at a runs folder or its {LEDGER_NAME}.")
        else:
            fix = f"Point Ledger at a runs folder or its {LEDGER_NAME}."
        raise LedgerError(
            f"{path} does not look like a kaggle-tli ledger: its header {header[:6]!r} lacks the {named} "
            f"{columns}. {fix} The file was left untouched."
        )
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise LedgerError(f"{path}: the header repeats column(s) {duplicated}; remove the copies")


def _line_text(raw: bytes, first: bool) -> str:
    text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
    return text.lstrip("\ufeff") if first else text  # Excel writes a byte-order mark


def _parse(data: bytes, path: Path) -> _Snapshot:
    snap = _Snapshot(lines=data.splitlines(keepends=True))
    for i, raw in enumerate(snap.lines):
        text = _line_text(raw, first=i == 0)
        if not text.strip():
            continue
        try:
            fields = _split_csv_line(text)
        except csv.Error as e:
            snap.problems.append(LedgerProblem(i + 1, f"not valid CSV ({e}): {text[:60]!r}"))
            continue
        if snap.header is None:
            snap.header = [name.strip() for name in fields]
            snap.eol = "\r\n" if raw.endswith(b"\r\n") else "\n"
            _check_header(snap.header, path)
        else:
            _parse_row(snap, i, fields, text)
    return snap


def _parse_row(snap: _Snapshot, i: int, fields: list[str], text: str) -> None:
    header = snap.header or []
    if len(fields) != len(header):
        snap.problems.append(
            LedgerProblem(i + 1, f"expected {len(header)} fields, found {len(fields)}: {text[:60]!r}")
        )
        return
    record = dict(zip(header, fields, strict=True))
    schema = _to_int(record[_SCHEMA_COLUMN])
    if schema is None or schema < 1:
        snap.problems.append(LedgerProblem(i + 1, f"schema={record[_SCHEMA_COLUMN]!r} is not a version"))
        return
    snap.newest_schema = max(snap.newest_schema, schema)
    if schema > SCHEMA_VERSION:
        return  # the caller refuses the whole file
    row = {}
    for column in LEDGER_COLUMNS:
        row[column], complaint = _decode(column, record.get(column, ""))
        if complaint:
            snap.problems.append(LedgerProblem(i + 1, complaint))
    run_id = row["run_id"]
    if not run_id:
        snap.problems.append(LedgerProblem(i + 1, "empty run_id; row skipped"))
    elif run_id in snap.index:
        first = snap.index[run_id] + 1
        snap.problems.append(LedgerProblem(i + 1, f"run_id {run_id!r} repeats line {first}; row skipped"))
    else:
        snap.index[run_id] = i
        snap.rows.append(row)


# --------------------------------------------------------------------------------------------------
# lineage plot layout: depth on x, order on y, no graphviz


def _short_id(run_id: str, arch: str | None) -> str:
    """`20261127-113501-resnet18-3f2a` -> `113501-3f2a`: the arch is on the node already, and the date
    is the same for most runs of a notebook."""
    parts = run_id.split("-")
    arch_parts = set((arch or "").split("-"))
    kept = [p for p in parts if p and p not in arch_parts]
    if len(kept) > 1 and len(kept[0]) == 8 and kept[0].isdigit():
        kept = kept[1:]
    short = "-".join(kept) or run_id
    return short if len(short) <= 16 else short[:15] + "…"


def _tree_layout(
    nodes: list[str], parent_of: Mapping[str, str | None]
) -> tuple[dict[str, tuple[int, float]], list[str]]:
    """Place a forest: x = depth, y = leaf order, a parent centred on its children.

    Returns the positions and the nodes that had to be made roots to break a parent cycle.
    """
    children: dict[str, list[str]] = {node: [] for node in nodes}
    roots = []
    for node in nodes:
        parent = parent_of.get(node)
        if parent in children and parent != node:
            children[parent].append(node)
        else:
            roots.append(node)
    positions: dict[str, tuple[int, float]] = {}
    visited: set[str] = set()
    cycle_roots: list[str] = []
    next_leaf = 0
    pending = list(roots)
    while True:
        for root in pending:
            next_leaf = _place_subtree(root, children, positions, visited, next_leaf)
        unreached = [node for node in nodes if node not in visited]  # only cycles are never reached
        if not unreached:
            return positions, cycle_roots
        cycle_roots.append(unreached[0])
        pending = [unreached[0]]


def _place_subtree(
    root: str,
    children: Mapping[str, list[str]],
    positions: dict[str, tuple[int, float]],
    visited: set[str],
    next_leaf: int,
) -> int:
    """Iterative post-order walk (lineages can be deeper than Python's recursion limit)."""
    stack: list[tuple[str, int, bool]] = [(root, 0, False)]
    while stack:
        node, depth, expanded = stack.pop()
        if expanded:
            placed = [positions[kid][1] for kid in children[node] if kid in positions]
            if placed:
                positions[node] = (depth, (placed[0] + placed[-1]) / 2)
            else:
                positions[node] = (depth, float(next_leaf))
                next_leaf += 1
            continue
        if node in visited:
            continue
        visited.add(node)
        stack.append((node, depth, True))
        stack.extend((kid, depth + 1, False) for kid in reversed(children[node]) if kid not in visited)
    return next_leaf


def _node_label(row: Mapping[str, Any]) -> str:
    cv = row.get("cv")
    best = row.get("best_cv")
    score = f"cv {cv:.4f}" if cv is not None else (f"best {best:.4f}" if best is not None else "cv -")
    return f"{row.get('arch') or '?'}\n{_short_id(row['run_id'], row.get('arch'))}\n{score}"


def _draw_forest(
    rows: Mapping[str, Mapping[str, Any]],
    positions: Mapping[str, tuple[int, float]],
    cycle_roots: list[str],
    highlight: str | None,
    title: str,
) -> bytes:
    # the object API with an Agg canvas: no pyplot, so a notebook's backend and figures are untouched
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    depth = max((x for x, _ in positions.values()), default=0)
    height = max((y for _, y in positions.values()), default=0.0)
    fig = Figure(figsize=(2.4 * (depth + 1) + 0.8, 0.85 * (height + 1) + 0.9), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    boxes = {}
    for run_id, (x, y) in positions.items():
        row = rows[run_id]
        edge = "#c0392b" if run_id == highlight else "#555555"
        box = {
            "boxstyle": "round,pad=0.4",
            "fc": _STATUS_COLOURS.get(row.get("status"), "#ffffff"),
            "ec": edge,
            "lw": 2.0 if run_id == highlight else 0.8,
        }
        boxes[run_id] = ax.text(
            x, y, _node_label(row), ha="center", va="center", fontsize=8, family="monospace", bbox=box
        )
    for run_id in positions:
        parent = rows[run_id].get("parent_run_id")
        if parent in boxes:
            _draw_edge(ax, boxes[parent], boxes[run_id], closes_cycle=run_id in cycle_roots)
    legend = [Patch(fc=colour, ec="#555555", label=status) for status, colour in _STATUS_COLOURS.items()]
    ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    ax.set_xlim(-0.6, depth + 0.6)
    ax.set_ylim(height + 0.6, -0.6)  # first root at the top
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _draw_edge(ax: Any, parent_box: Any, child_box: Any, *, closes_cycle: bool) -> None:
    """An arrow anchored on the two text boxes, so it meets their edges whatever their size."""
    if closes_cycle:
        # the edge that closes a parent cycle runs backwards: a dashed red arc under the boxes
        arrow = {
            "arrowstyle": "-|>",
            "color": "#c0392b",
            "linestyle": "--",
            "connectionstyle": "arc3,rad=-0.3",
        }
        ax.annotate(
            "", xy=(0.5, 0.0), xycoords=child_box, xytext=(0.5, 0.0), textcoords=parent_box, arrowprops=arrow
        )
        return
    arrow = {"arrowstyle": "-|>", "color": "#333333", "shrinkA": 6, "shrinkB": 6}
    ax.annotate(
        "", xy=(0.0, 0.5), xycoords=child_box, xytext=(1.0, 0.5), textcoords=parent_box, arrowprops=arrow
    )


def _atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write `path.tmp`, fsync it and move it over `path`: readers see the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)
    try:  # make the rename itself durable; not every filesystem lets a directory be opened
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------
# the public class


class Ledger:
    """The run ledger of one runs folder: ``Ledger("runs")`` means ``runs/ledger.csv``.

    The file is created by the first write. Reads need no lock and work on read-only inputs.
    Rows come back as dicts keyed by :data:`LEDGER_COLUMNS`, with numbers as ``int``/``float``,
    timestamps as ISO-8601 strings and missing values as ``None``.
    """

    def __init__(self, path: str | os.PathLike[str], *, lock_timeout: float = 60.0) -> None:
        path = Path(path).expanduser()
        # an existing directory, or a path that is not a .csv file yet (`runs`), is a runs folder
        if path.is_dir() or (not path.exists() and path.suffix.lower() != ".csv"):
            path = path / LEDGER_NAME
        self.path = path
        self.lock_timeout = lock_timeout
        self.problems: list[LedgerProblem] = []

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    def __len__(self) -> int:
        return len(self.rows())

    def __contains__(self, run_id: object) -> bool:
        return isinstance(run_id, str) and run_id in self._load().index

    # ---------------------------------------------------------------------------------------- reads

    def rows(self) -> list[dict[str, Any]]:
        """Every readable row, in file order."""
        return [dict(row) for row in self._load().rows]

    def get(self, run_id: str) -> dict[str, Any] | None:
        """The row of `run_id`, or None when the ledger has no such run."""
        return next((dict(row) for row in self._load().rows if row["run_id"] == run_id), None)

    def to_frame(self) -> pd.DataFrame:
        """The ledger as a DataFrame: floats, nullable ints, UTC datetimes, strings."""
        import pandas as pd

        rows = self.rows()
        columns = {}
        for column in LEDGER_COLUMNS:
            values = [row[column] for row in rows]
            if column in _FLOAT_COLUMNS:
                columns[column] = pd.array([math.nan if v is None else v for v in values], dtype="float64")
            elif column in _INT_COLUMNS or (
                column == _FOLD_COLUMN and all(v is None or isinstance(v, int) for v in values)
            ):
                columns[column] = pd.array(values, dtype="Int64")
            elif column in _TIME_COLUMNS:
                columns[column] = pd.to_datetime(
                    pd.Series(values, dtype="object"), utc=True, errors="coerce", format="ISO8601"
                )
            else:
                columns[column] = pd.array([None if v is None else str(v) for v in values], dtype="string")
        return pd.DataFrame({name: pd.Series(data) for name, data in columns.items()})

    def lineage(self, run_id: str) -> list[dict[str, Any]]:
        """``[the run, its parent, ..., the root]``.

        A parent missing from this ledger, or a cycle of parents, ends the walk with a
        :class:`LedgerWarning` (also added to :attr:`problems`) instead of an error, so a notebook
        still sees the part of the lineage that is there.
        """
        by_id = {row["run_id"]: row for row in self.rows()}
        if run_id not in by_id:
            raise KeyError(f"run {run_id!r} is not in {self.path}")
        chain: list[dict[str, Any]] = []
        seen: set[str] = set()
        current: str | None = run_id
        while current:
            if current in seen:
                self._report(f"lineage of {run_id!r}: parent cycle at {current!r}; walk stopped")
                break
            row = by_id.get(current)
            if row is None:
                self._report(
                    f"lineage of {run_id!r}: run {chain[-1]['run_id']!r} names parent {current!r}, which is "
                    f"not in {self.path}; import the ledger that holds it with Ledger.import_rows(...)"
                )
                break
            chain.append(row)
            seen.add(current)
            current = row["parent_run_id"]
        return chain

    def plot_lineage(self, path: str | os.PathLike[str], run_id: str | None = None) -> Path:
        """Draw the runs as a tree (parent -> child, arch, short id and CV on each node) into a PNG.

        With `run_id`, only its ancestors and descendants are drawn and it is outlined in red.
        Node colours: green done, yellow running, red failed, grey interrupted.
        """
        rows = {row["run_id"]: row for row in self.rows()}
        if run_id is not None and run_id not in rows:
            raise KeyError(f"run {run_id!r} is not in {self.path}")
        nodes = list(rows) if run_id is None else self._family(run_id, rows)
        parent_of = {node: rows[node]["parent_run_id"] for node in nodes}
        positions, cycle_roots = _tree_layout(nodes, parent_of)
        for node in cycle_roots:
            self._report(f"lineage plot: parent cycle through {node!r}; drawn as a dashed red edge")
        title = f"{self.path}: {len(nodes)} run(s)" if nodes else f"{self.path}: no runs yet"
        png = _draw_forest(rows, positions, cycle_roots, run_id, title)
        out = Path(path).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(out, png)
        return out

    def _family(self, run_id: str, rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """The ancestors of `run_id`, itself and its descendants, in ledger order."""
        keep = {row["run_id"] for row in self.lineage(run_id)}
        children: dict[str, list[str]] = {}
        for node, row in rows.items():
            if row["parent_run_id"]:
                children.setdefault(row["parent_run_id"], []).append(node)
        frontier = [run_id]
        while frontier:
            kids = [kid for kid in children.get(frontier.pop(), []) if kid not in keep]
            keep.update(kids)
            frontier.extend(kids)
        return [node for node in rows if node in keep]

    # --------------------------------------------------------------------------------------- writes

    def create(self) -> Ledger:
        """Write the header of an empty ledger if the file does not exist yet (a bundle of a run with no rows)."""
        with self._locked() as snap:
            self._replace(self._lines_for_write(snap))
        return self

    def append(self, row: Mapping[str, Any]) -> None:
        """Add one run. Unknown keys or a run_id already present raise ValueError; missing keys are empty."""
        encoded = _encode_row(row)  # validate before touching the disk
        with self._locked() as snap:
            run_id = encoded["run_id"]
            if run_id in snap.index:
                raise ValueError(
                    f"run_id {run_id!r} is already in {self.path} (line {snap.index[run_id] + 1}); run ids "
                    "are unique: use update() to change that row"
                )
            lines = self._lines_for_write(snap)
            lines.append(
                _format_csv_line(self._with_schema(encoded), snap.header or list(_FILE_COLUMNS), snap.eol)
            )
            self._replace(lines)

    def update(self, run_id: str, **fields: Any) -> None:
        """Change some columns of an existing run, e.g. ``update(rid, status="done", cv=0.93)``.

        None clears a value; an unknown run raises KeyError.
        """
        encoded = _encode_fields(fields)
        if encoded.get("parent_run_id") == run_id:
            raise ValueError(f"run {run_id!r} cannot be its own parent (parent_run_id)")
        with self._locked() as snap:
            position = snap.index.get(run_id)
            if position is None:
                raise KeyError(f"run {run_id!r} is not in {self.path}; append it first")
            lines = self._lines_for_write(snap)
            raw = lines[position]
            record = dict(zip(snap.header or [], _split_csv_line(_line_text(raw, first=False)), strict=True))
            record.update(encoded)
            eol = "\r\n" if raw.endswith(b"\r\n") else "\n"
            lines[position] = _format_csv_line(self._with_schema(record), snap.header or [], eol)
            self._replace(lines)

    def start(self, run_id: str, **fields: Any) -> dict[str, Any]:
        """Append a run with ``status="running"`` and ``started_at`` = now (unless given); return its row."""
        row = {"status": "running", "started_at": _now(), **fields, "run_id": run_id}
        self.append(row)
        return self.get(run_id) or row

    def finish(self, run_id: str, status: str = "done", **fields: Any) -> dict[str, Any]:
        """Close a run: set `status`, ``finished_at`` = now and ``duration_s`` from ``started_at``
        (each unless given), plus any other `fields` (cv, best_cv, steps...); return its row."""
        if status == "running":
            raise ValueError(f"finish() ends a run: status must be one of {', '.join(STATUSES[1:])}")
        row = self.get(run_id)
        if row is None:
            raise KeyError(f"run {run_id!r} is not in {self.path}; start() it first")
        finished = _parse_time(_encode_time("finished_at", fields.pop("finished_at", None) or _now()))
        if "duration_s" not in fields and row["started_at"]:
            try:
                fields["duration_s"] = round((finished - _parse_time(row["started_at"])).total_seconds(), 3)
            except ValueError:
                pass  # a damaged started_at was already reported by the reader; leave duration empty
        self.update(run_id, status=status, finished_at=finished, **fields)
        return self.get(run_id) or row

    def import_rows(self, source: str | os.PathLike[str] | Ledger, *, lineage_of: str | None = None) -> int:
        """Copy the runs of another ledger (e.g. an attached Kaggle dataset) that this one lacks.

        The source is only read, never locked or written, so a read-only input works. Rows whose
        run_id is already here are skipped. `lineage_of`: copy only that run and its ancestors.
        Returns the number of rows added.
        """
        source = source if isinstance(source, Ledger) else Ledger(source)
        if not source.path.is_file():
            raise FileNotFoundError(
                f"no ledger at {source.path}: pass the folder that holds {LEDGER_NAME}, or the file itself"
            )
        if self.path.exists() and os.path.samefile(source.path, self.path):
            return 0
        rows = source.lineage(lineage_of) if lineage_of is not None else source.rows()
        incoming = []
        for row in rows:
            try:
                incoming.append(_encode_row(row))
            except ValueError as e:
                self._report(f"import from {source.path}: run {row['run_id']!r} skipped: {e}")
        with self._locked() as snap:
            header = snap.header or list(_FILE_COLUMNS)
            lines = self._lines_for_write(snap)
            new = [row for row in incoming if row["run_id"] not in snap.index]
            lines.extend(_format_csv_line(self._with_schema(row), header, snap.eol) for row in new)
            if new:
                self._replace(lines)
        return len(new)

    def import_lineage(self, run_id: str, *, near: str | os.PathLike[str]) -> int:
        """Continue a lineage that lives elsewhere: copy `run_id` and its ancestors from the ledger kept beside the
        run directory `near` (inside it for a Kaggle bundle, in its parent for a runs folder). Returns rows added."""
        if self.get(run_id) is not None:
            return 0
        near = Path(near)
        for candidate in (near / LEDGER_NAME, near.parent / LEDGER_NAME):
            if not candidate.is_file() or (self.path.exists() and os.path.samefile(candidate, self.path)):
                continue
            if Ledger(candidate).get(run_id) is not None:
                return self.import_rows(candidate, lineage_of=run_id)
        return 0

    # -------------------------------------------------------------------------------------- helpers

    def _load(self) -> _Snapshot:
        """Read and parse the file (a missing file is an empty ledger); refuse a newer schema."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        snap = _parse(data, self.path)
        if snap.newest_schema > SCHEMA_VERSION:
            raise LedgerSchemaError(
                f"{self.path} was written by kaggle-tli schema {snap.newest_schema}, this version reads up to "
                f"{SCHEMA_VERSION}: upgrade kaggle-tli (pip install -U kaggle-tli). The file was left untouched."
            )
        self.problems = list(snap.problems)
        if snap.problems:
            shown = "\n  ".join(str(problem) for problem in snap.problems[:10])
            more = f"\n  ... and {len(snap.problems) - 10} more" if len(snap.problems) > 10 else ""
            warnings.warn(
                f"{self.path}: {len(snap.problems)} problem(s), the rest reads normally:\n  {shown}{more}",
                LedgerWarning,
                stacklevel=3,
            )
        return snap

    def _report(self, message: str) -> None:
        self.problems.append(LedgerProblem(None, message))
        warnings.warn(message, LedgerWarning, stacklevel=3)

    @contextmanager
    def _locked(self) -> Iterator[_Snapshot]:
        """Hold the ledger's lock and yield the file as it is now."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(lock_path))
            lock.acquire(timeout=self.lock_timeout, poll_interval=_LOCK_POLL_S)
        except Timeout as e:
            raise TimeoutError(
                f"could not lock {lock_path} within {self.lock_timeout} s: another process is writing the "
                "ledger; retry, or pass a larger Ledger(..., lock_timeout=...)"
            ) from e
        except OSError as e:
            raise LedgerError(
                f"cannot write the ledger {self.path} ({e}). A ledger on a read-only input can only be read: "
                f"write to a working folder and import it, e.g. Ledger('/kaggle/working/runs').import_rows("
                f"'{self.path}')"
            ) from e
        try:
            yield self._load()
        finally:
            lock.release()

    @staticmethod
    def _with_schema(values: Mapping[str, str]) -> dict[str, str]:
        return {**values, _SCHEMA_COLUMN: str(SCHEMA_VERSION)}

    def _lines_for_write(self, snap: _Snapshot) -> list[bytes]:
        """The file's lines, ready to take more: a header when there is none, a final line ending."""
        if snap.header is None:
            # an empty (or blank) file: start it with our header
            snap.header = list(_FILE_COLUMNS)
            return [_format_csv_line({name: name for name in _FILE_COLUMNS}, snap.header, snap.eol)]
        missing = [name for name in _FILE_COLUMNS if name not in snap.header]
        if missing:
            raise LedgerError(
                f"{self.path}: the header lacks column(s) {missing}; restore them (values may stay empty) "
                "or start a new ledger"
            )
        lines = list(snap.lines)
        if lines and not lines[-1].endswith((b"\n", b"\r")):
            lines[-1] += snap.eol.encode()
        return lines

    def _replace(self, lines: list[bytes]) -> None:
        mode = stat.S_IMODE(os.stat(self.path).st_mode) if self.path.exists() else None
        _atomic_write_bytes(self.path, b"".join(lines), mode)
