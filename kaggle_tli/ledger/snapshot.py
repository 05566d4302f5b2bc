"""The ledger file as read: a snapshot that keeps every raw line next to the rows parsed out of them.

Keeping the raw bytes lets a writer carry over, byte for byte, the lines it did not write or cannot parse and
the columns a user added in a spreadsheet. A damaged line (wrong number of fields, garbage, a value that does
not parse) is skipped or read in part and listed as a :class:`LedgerProblem` with its line number.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .schema import LEDGER_COLUMNS, SCHEMA_COLUMN, SCHEMA_VERSION, LedgerProblem, check_header
from .values import decode, to_int


@dataclass
class Snapshot:
    """The ledger file as read: raw lines (terminators kept) plus what could be parsed out of them."""

    lines: list[bytes] = field(default_factory=list)
    header: list[str] | None = None
    eol: str = "\n"
    rows: list[dict[str, Any]] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)  # run_id -> position in `lines`
    problems: list[LedgerProblem] = field(default_factory=list)
    newest_schema: int = 0


def split_csv_line(text: str) -> list[str]:
    """The fields of one CSV line (csv.Error when it is not valid CSV)."""
    parsed = list(csv.reader([text], strict=True))
    return parsed[0] if parsed else []


def format_csv_line(values: Mapping[str, str], header: list[str], eol: str) -> bytes:
    """One CSV line of `values` in the order of `header`, ending in `eol`, as UTF-8 bytes."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=eol).writerow([values.get(column, "") for column in header])
    return buffer.getvalue().encode("utf-8")


def line_text(raw: bytes, first: bool) -> str:
    """A raw line as text without its terminator (and, on the first line, without a byte-order mark)."""
    text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
    return text.lstrip("\ufeff") if first else text  # Excel writes a byte-order mark


def parse(data: bytes, path: Path) -> Snapshot:
    """The whole file parsed: every raw line kept, readable rows decoded, damaged lines listed as problems."""
    snap = Snapshot(lines=data.splitlines(keepends=True))
    for i, raw in enumerate(snap.lines):
        text = line_text(raw, first=i == 0)
        if not text.strip():
            continue
        try:
            fields = split_csv_line(text)
        except csv.Error as e:
            snap.problems.append(LedgerProblem(i + 1, f"not valid CSV ({e}): {text[:60]!r}"))
            continue
        if snap.header is None:
            snap.header = [name.strip() for name in fields]
            snap.eol = "\r\n" if raw.endswith(b"\r\n") else "\n"
            check_header(snap.header, path)
        else:
            _parse_row(snap, i, fields, text)
    return snap


def _parse_row(snap: Snapshot, i: int, fields: list[str], text: str) -> None:
    header = snap.header or []
    if len(fields) != len(header):
        snap.problems.append(
            LedgerProblem(i + 1, f"expected {len(header)} fields, found {len(fields)}: {text[:60]!r}")
        )
        return
    record = dict(zip(header, fields, strict=True))
    schema = to_int(record[SCHEMA_COLUMN])
    if schema is None or schema < 1:
        snap.problems.append(LedgerProblem(i + 1, f"schema={record[SCHEMA_COLUMN]!r} is not a version"))
        return
    snap.newest_schema = max(snap.newest_schema, schema)
    if schema > SCHEMA_VERSION:
        return  # the caller refuses the whole file
    row = {}
    for column in LEDGER_COLUMNS:
        row[column], complaint = decode(column, record.get(column, ""))
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
