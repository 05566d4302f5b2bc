"""The ledger's fixed, versioned column schema: the columns, their kinds, the version, and the header checks.

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
  (``2026-11-27T11:35:01.123+00:00``); ``duration_s`` is seconds as a float (see ``values.py``).
- *One physical line per row.* Newlines inside text values are replaced by spaces, so a line number
  names a row and a damaged line cannot swallow its neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 2
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
    # added in schema 2
    "task",
    "distill",
    "distill_temperature",
    "kaggle_model",
    "parent_kaggle_model",
)
# Columns each schema added. A ledger written by an older schema lacks them; the first write adds them to
# its header (empty on the old rows) instead of refusing the file.
ADDED_IN_SCHEMA: dict[int, tuple[str, ...]] = {
    2: ("task", "distill", "distill_temperature", "kaggle_model", "parent_kaggle_model"),
}
# the last column of the file: the version of the format that wrote each row
SCHEMA_COLUMN = "schema"
FILE_COLUMNS = LEDGER_COLUMNS + (SCHEMA_COLUMN,)

STAGES = ("finetune", "inject", "resume", "blend")  # blend: a row per blended prediction (schema 2)
INITS = ("tli", "kaiming", "pretrained", "resume")
STATUSES = ("running", "done", "failed", "interrupted")

# the kinds of the columns, which decide how values.py writes and reads them
FLOAT_COLUMNS = frozenset(
    {"tli_score", "coverage", "cv", "best_cv", "lb", "duration_s", "distill", "distill_temperature"}
)
INT_COLUMNS = frozenset({"epochs", "steps", "seed"})
TIME_COLUMNS = frozenset({"started_at", "finished_at"})
CHOICES = {"stage": STAGES, "init": INITS, "status": STATUSES}
# `fold` is usually a fold index, but a label ("all", "0-4") is accepted and kept as text.
FOLD_COLUMN = "fold"


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


def check_header(header: list[str], path: Path) -> None:
    """Refuse a header that is not a kaggle-tli ledger's (no run_id or schema column, repeated columns)."""
    missing = [name for name in ("run_id", SCHEMA_COLUMN) if name not in header]
    if missing:
        named = " and ".join(repr(name) for name in missing)
        columns = "column" if len(missing) == 1 else "columns"
        if missing == [SCHEMA_COLUMN]:
            # run ids are there: most likely a ledger whose schema column was dropped by hand or by a tool
            fix = (f"If it is a kaggle-tli ledger, add a '{SCHEMA_COLUMN}' column holding {SCHEMA_VERSION} on "
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


def check_version(newest_schema: int, path: Path) -> None:
    """Refuse a ledger holding a row of a newer schema: this version neither reads nor rewrites it."""
    if newest_schema > SCHEMA_VERSION:
        raise LedgerSchemaError(
            f"{path} was written by kaggle-tli schema {newest_schema}, this version reads up to "
            f"{SCHEMA_VERSION}: upgrade kaggle-tli (pip install -U kaggle-tli). The file was left untouched."
        )
