"""Ledger values: Python -> CSV text (strict, for writes) and CSV text -> Python (lenient, for reads).

Missing values are empty fields; floats are written with ``repr`` (the shortest text that reads back to the
same float); timestamps are ISO-8601 in UTC with milliseconds; text loses its newlines (one physical line per
row). A bad value on write raises ValueError naming the column; a bad field on read comes back with a
complaint for the reader's problem list.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from .schema import CHOICES, FLOAT_COLUMNS, FOLD_COLUMN, INT_COLUMNS, LEDGER_COLUMNS, TIME_COLUMNS


def now() -> datetime:
    """The current time, in UTC."""
    return datetime.now(timezone.utc)


def _format_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def parse_time(text: str) -> datetime:
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
    number = to_int(value)
    if number is None:
        raise ValueError(f"ledger column {column!r} takes a whole number, got {value!r}")
    return str(number)


def to_int(value: Any) -> int | None:
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


def encode_time(column: str, value: Any) -> str:
    """A datetime, ISO-8601 text or Unix seconds as the stored UTC timestamp text."""
    if isinstance(value, str) and not value.strip():
        return ""
    try:
        if isinstance(value, datetime):
            moment = value.astimezone(timezone.utc)
        elif isinstance(value, str):
            moment = parse_time(value)
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
    # one physical line per row: see schema.py's docstring
    text = " ".join(str(value).replace("\x00", "").splitlines())
    choices = CHOICES.get(column)
    if choices is not None and text and text not in choices:
        raise ValueError(f"ledger column {column!r} must be one of {', '.join(choices)}; got {text!r}")
    return text.strip() if column in ("run_id", "parent_run_id") else text


def _encode(column: str, value: Any) -> str:
    """One value as the text stored in the file; ValueError naming the column on a bad value."""
    if value is None:
        return ""
    if column in FLOAT_COLUMNS:
        return _encode_float(column, value)
    if column in INT_COLUMNS:
        return _encode_int(column, value)
    if column in TIME_COLUMNS:
        return encode_time(column, value)
    if column == FOLD_COLUMN and to_int(_unwrap_scalar(column, value)) is not None:
        return _encode_int(column, value)
    return _encode_text(column, value)


def encode_fields(fields: Mapping[str, Any]) -> dict[str, str]:
    """Validate the keys and values of a (partial) row before anything touches the disk."""
    unknown = [key for key in fields if key not in LEDGER_COLUMNS]
    if unknown:
        raise ValueError(
            f"unknown ledger column(s) {', '.join(map(repr, unknown))}; valid columns: {', '.join(LEDGER_COLUMNS)}"
        )
    return {key: _encode(key, value) for key, value in fields.items()}


def encode_row(row: Mapping[str, Any]) -> dict[str, str]:
    """A full row: every column present (missing -> empty) and a run_id that can be a key."""
    encoded = encode_fields(row)
    run_id = encoded.get("run_id", "")
    if not run_id:
        raise ValueError(f"a ledger row needs a non-empty 'run_id'; got {row.get('run_id')!r}")
    if encoded.get("parent_run_id") == run_id:
        raise ValueError(f"run {run_id!r} cannot be its own parent (parent_run_id)")
    return {column: encoded.get(column, "") for column in LEDGER_COLUMNS}


def decode(column: str, text: str) -> tuple[Any, str | None]:
    """The stored text of one field as a Python value, and a complaint when it does not parse."""
    if not text.strip():
        return None, None
    if column in FLOAT_COLUMNS:
        try:
            return float(text), None
        except ValueError:
            return None, f"{column}={text!r} is not a number; read as empty"
    if column in INT_COLUMNS:
        number = to_int(text)
        return (number, None) if number is not None else (None, f"{column}={text!r} is not a whole number")
    if column == FOLD_COLUMN:
        number = to_int(text)
        return (number if number is not None else text), None
    if column in TIME_COLUMNS:
        try:
            parse_time(text)
        except ValueError:
            return text, f"{column}={text!r} is not an ISO-8601 timestamp"
    return text, None
