"""The locked ledger CSV: :class:`Ledger` appends, updates and reads rows and answers lineage queries.

Every stage (finetune, inject, resume, iterate) appends a row to ``<runs>/ledger.csv`` when it starts
and updates it when it ends; ``parent_run_id`` links a run to the run whose weights it started from,
which makes the file a forest of lineages that :meth:`Ledger.lineage` walks and
:meth:`Ledger.plot_lineage` draws. On Kaggle the ledger of an earlier notebook arrives as a read-only
input; :meth:`Ledger.import_rows` copies its rows into the working ledger so a lineage continues
across notebooks.

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
import math
import os
import stat
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock, Timeout

from kaggle_tli.files import atomic_write_bytes

from .plot import draw_forest, tree_layout
from .schema import (
    ADDED_IN_SCHEMA,
    FILE_COLUMNS,
    FLOAT_COLUMNS,
    FOLD_COLUMN,
    INT_COLUMNS,
    LEDGER_COLUMNS,
    LEDGER_NAME,
    SCHEMA_COLUMN,
    SCHEMA_VERSION,
    STATUSES,
    TIME_COLUMNS,
    LedgerError,
    LedgerProblem,
    LedgerWarning,
    check_version,
)
from .snapshot import Snapshot, format_csv_line, line_text, parse, split_csv_line
from .values import encode_fields, encode_row, encode_time, now, parse_time

# Short: with filelock's default 50 ms, a writer in a tight loop re-takes the lock before a waiting
# one wakes up, and the waiter starves.
_LOCK_POLL_S = 0.01


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
        rows = self.rows()
        columns = {}
        for column in LEDGER_COLUMNS:
            values = [row[column] for row in rows]
            if column in FLOAT_COLUMNS:
                columns[column] = pd.array([math.nan if v is None else v for v in values], dtype="float64")
            elif column in INT_COLUMNS or (
                column == FOLD_COLUMN and all(v is None or isinstance(v, int) for v in values)
            ):
                columns[column] = pd.array(values, dtype="Int64")
            elif column in TIME_COLUMNS:
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
        positions, cycle_roots = tree_layout(nodes, parent_of)
        for node in cycle_roots:
            self._report(f"lineage plot: parent cycle through {node!r}; drawn as a dashed red edge")
        title = f"{self.path}: {len(nodes)} run(s)" if nodes else f"{self.path}: no runs yet"
        png = draw_forest(rows, positions, cycle_roots, run_id, title)
        out = Path(path).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, png)
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
        encoded = encode_row(row)  # validate before touching the disk
        with self._locked() as snap:
            run_id = encoded["run_id"]
            if run_id in snap.index:
                raise ValueError(
                    f"run_id {run_id!r} is already in {self.path} (line {snap.index[run_id] + 1}); run ids "
                    "are unique: use update() to change that row"
                )
            lines = self._lines_for_write(snap)
            lines.append(
                format_csv_line(self._with_schema(encoded), snap.header or list(FILE_COLUMNS), snap.eol)
            )
            self._replace(lines)

    def update(self, run_id: str, **fields: Any) -> None:
        """Change some columns of an existing run, e.g. ``update(rid, status="done", cv=0.93)``.

        None clears a value; an unknown run raises KeyError.
        """
        encoded = encode_fields(fields)
        if encoded.get("parent_run_id") == run_id:
            raise ValueError(f"run {run_id!r} cannot be its own parent (parent_run_id)")
        with self._locked() as snap:
            position = snap.index.get(run_id)
            if position is None:
                raise KeyError(f"run {run_id!r} is not in {self.path}; append it first")
            lines = self._lines_for_write(snap)
            raw = lines[position]
            record = dict(zip(snap.header or [], split_csv_line(line_text(raw, first=False)), strict=True))
            record.update(encoded)
            eol = "\r\n" if raw.endswith(b"\r\n") else "\n"
            lines[position] = format_csv_line(self._with_schema(record), snap.header or [], eol)
            self._replace(lines)

    def start(self, run_id: str, **fields: Any) -> dict[str, Any]:
        """Append a run with ``status="running"`` and ``started_at`` = now (unless given); return its row."""
        row = {"status": "running", "started_at": now(), **fields, "run_id": run_id}
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
        finished = parse_time(encode_time("finished_at", fields.pop("finished_at", None) or now()))
        if "duration_s" not in fields and row["started_at"]:
            try:
                fields["duration_s"] = round((finished - parse_time(row["started_at"])).total_seconds(), 3)
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
                incoming.append(encode_row(row))
            except ValueError as e:
                self._report(f"import from {source.path}: run {row['run_id']!r} skipped: {e}")
        with self._locked() as snap:
            header = snap.header or list(FILE_COLUMNS)
            lines = self._lines_for_write(snap)
            new = [row for row in incoming if row["run_id"] not in snap.index]
            lines.extend(format_csv_line(self._with_schema(row), header, snap.eol) for row in new)
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

    def _load(self) -> Snapshot:
        """Read and parse the file (a missing file is an empty ledger); refuse a newer schema."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        snap = parse(data, self.path)
        check_version(snap.newest_schema, self.path)
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
    def _locked(self) -> Iterator[Snapshot]:
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
        return {**values, SCHEMA_COLUMN: str(SCHEMA_VERSION)}

    def _lines_for_write(self, snap: Snapshot) -> list[bytes]:
        """The file's lines, ready to take more: a header when there is none, a final line ending."""
        if snap.header is None:
            # an empty (or blank) file: start it with our header
            snap.header = list(FILE_COLUMNS)
            return [format_csv_line({name: name for name in FILE_COLUMNS}, snap.header, snap.eol)]
        missing = [name for name in FILE_COLUMNS if name not in snap.header]
        added_later = {name for added in ADDED_IN_SCHEMA.values() for name in added}
        if missing and not set(missing) <= added_later:
            raise LedgerError(
                f"{self.path}: the header lacks column(s) {missing}; restore them (values may stay empty) "
                "or start a new ledger"
            )
        lines = self._upgraded(snap, missing) if missing else list(snap.lines)
        if lines and not lines[-1].endswith((b"\n", b"\r")):
            lines[-1] += snap.eol.encode()
        return lines

    @staticmethod
    def _upgraded(snap: Snapshot, missing: list[str]) -> list[bytes]:
        """The lines of an older schema's file with the columns it lacks added before `schema`, left empty.

        Rows keep their own schema number (it says which format wrote them); blank and damaged lines stay
        as they were.
        """
        old_header = list(snap.header or [])
        at = old_header.index(SCHEMA_COLUMN)
        new_header = old_header[:at] + missing + old_header[at:]
        lines, header_seen = [], False
        for i, raw in enumerate(snap.lines):
            text = line_text(raw, first=i == 0)
            try:
                fields = split_csv_line(text) if text.strip() else []
            except csv.Error:
                fields = []
            eol = "\r\n" if raw.endswith(b"\r\n") else "\n"
            if fields and not header_seen:
                header_seen = True
                lines.append(format_csv_line({name: name for name in new_header}, new_header, eol))
            elif len(fields) == len(old_header):
                lines.append(format_csv_line(dict(zip(old_header, fields, strict=True)), new_header, eol))
            else:
                lines.append(raw)
        if lines and not lines[-1].endswith((b"\n", b"\r")):
            lines[-1] += snap.eol.encode()
        snap.header = new_header
        return lines

    def _replace(self, lines: list[bytes]) -> None:
        mode = stat.S_IMODE(os.stat(self.path).st_mode) if self.path.exists() else None
        atomic_write_bytes(self.path, b"".join(lines), mode=mode, locked=True)
