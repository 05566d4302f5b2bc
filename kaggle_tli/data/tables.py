"""Competition tables: reading CSVs as written, checking columns and ids, parsing labels, making folds."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from .errors import DataError, DataNotFoundError

_SHOW = 5  # how many offending names an error message lists


# pandas' default missing-value markers (documented under `na_values` of `pandas.read_csv`); they
# still apply to every column except the id / label columns, which are read as the text written
_PANDAS_NA = (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
    "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
)


def read_csv(path: Path, *, what: str, str_cols: Sequence[str | int] = ()) -> pd.DataFrame:
    """Read a CSV, turning a missing, empty or malformed file into a `DataError` that says what was
    expected and how to fix it.

    `str_cols` (column names, or positions such as 0 for a sample submission's id column) are read
    as the text written, never parsed: id "0001" stays "0001" (not 1), a class "01" stays "01", and an
    id "NA" stays "NA". Other columns keep pandas' type inference and missing-value markers.
    """
    if not path.is_file():
        near = sorted(p.name for p in path.parent.glob("*.csv")) if path.parent.is_dir() else []
        raise DataNotFoundError(f"{what} {str(path)!r} does not exist; CSV files in that folder: {near or 'none'}")
    try:
        frame = _read_csv_typed(path, str_cols)
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{what} {str(path)!r} is empty: it has no header and no rows") from e
    except pd.errors.ParserError as e:
        raise DataError(
            f"{what} {str(path)!r} is not a well-formed CSV (pandas: {str(e).strip()}). Fix that line (usually "
            "an unquoted comma or quote, or a row with more fields than the header) or export the file again"
        ) from e
    except UnicodeDecodeError as e:
        raise DataError(
            f"{what} {str(path)!r} is not UTF-8 text ({e}); save it again as UTF-8 CSV, or check that it is "
            "a CSV file at all"
        ) from e
    if frame.empty:
        raise DataError(f"{what} {str(path)!r} has a header but no rows; it needs one row per sample")
    return frame


def _read_csv_typed(path: Path, str_cols: Sequence[str | int]) -> pd.DataFrame:
    if not str_cols:
        return pd.read_csv(path)
    header = [str(c) for c in pd.read_csv(path, nrows=0).columns]
    as_text = {header[c] if isinstance(c, int) else c for c in str_cols if not isinstance(c, int) or c < len(header)}
    # keep_default_na=False turns NA parsing off for every column; the per-column na_values put it
    # back everywhere except the text columns
    na_values = {c: list(_PANDAS_NA) for c in header if c not in as_text}
    dtype = {c: str for c in as_text if c in header}
    return pd.read_csv(path, dtype=dtype, keep_default_na=False, na_values=na_values)


def require_column(frame: pd.DataFrame, column: str, *, source: str, param: str) -> None:
    """Fail with the columns that exist and the closest name when `column` is not in `frame`."""
    if column in frame.columns:
        return
    names = [str(c) for c in frame.columns]
    same_case = [c for c in names if c.lower() == str(column).lower()]
    close = same_case or difflib.get_close_matches(str(column), names, n=3, cutoff=0.5)
    shown = names[:20] + ([f"... {len(names) - 20} more"] if len(names) > 20 else [])
    hint = f" Did you mean {close[0]!r}? Pass {param}={close[0]!r}." if close else f" Pass {param}=<one of them>."
    raise DataError(f"{source} has no column {column!r}; its columns are {shown}.{hint}")


def check_class_sizes(labels: pd.Series, folds: int) -> None:
    """Stratified folds need every class in every fold: a class smaller than `folds` cannot be split,
    and a class with a single member cannot be split at all (not even with folds=2)."""
    counts = labels.value_counts()
    single = counts[counts < 2]
    if len(single):
        listed = ", ".join(repr(k) for k in list(single.index)[:_SHOW])
        raise DataError(
            f"{len(single)} class(es) have a single member: {listed}. A class needs at least 2 samples to "
            "appear in both training and validation rows; drop those rows or merge each into a related class."
        )
    small = counts[counts < folds]
    if len(small):
        listed = ", ".join(f"{k!r} ({v})" for k, v in list(small.items())[:_SHOW])
        raise DataError(
            f"{len(small)} class(es) have fewer members than folds={folds}: {listed}. "
            f"Use folds={int(counts.min())} or fewer, or merge/drop those classes."
        )


def parse_labels(labels: pd.Series) -> list:
    """Labels read as text -> class names: integers when every label is an integer written plainly
    ("0".."9": Digit Recognizer), else the text as written ("01" and "1" stay two classes; "1.0"
    stays "1.0"), so labels round-trip into the submission exactly as the competition wrote them."""
    text = [str(v) for v in labels]
    if text and all(_is_plain_int(v) for v in text):
        return [int(v) for v in text]
    return text


def _is_plain_int(text: str) -> bool:
    digits = text[1:] if text.startswith("-") else text
    return digits.isdigit() and digits.isascii() and str(int(text)) == text


def make_folds(targets: np.ndarray, folds: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Fold number per sample: StratifiedKFold, or StratifiedGroupKFold when groups are given."""
    out = np.full(len(targets), -1, dtype=np.int64)
    if groups is None:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(targets)), targets)
    else:
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(targets)), targets, groups)
    for k, (_, valid) in enumerate(splits):
        out[valid] = k
    return out


def first_few(items: Sequence[Any]) -> str:
    """The first few items, quoted, for an error message (", ..." when there are more)."""
    shown = ", ".join(repr(str(x)) for x in list(items)[:_SHOW])
    return shown + (", ..." if len(items) > _SHOW else "")


def csv_lines(rows: np.ndarray) -> str:
    """Where the flagged `rows` of a table read by `read_csv` are in its file, as a text editor counts:
    the header is line 1, so the row at position i is line i + 2 (pandas skips blank lines, which are
    rare in a Kaggle CSV; a row's position would then lag behind its line)."""
    lines = [int(i) + 2 for i in np.flatnonzero(rows)]
    shown = ", ".join(str(n) for n in lines[:_SHOW]) + (", ..." if len(lines) > _SHOW else "")
    return f"line{'s' if len(lines) > 1 else ''} {shown} (the header is line 1)"


def is_empty(values: pd.Series) -> np.ndarray:
    """Empty cells of a column read as text (read_csv str_cols), where a blank cell is "" rather than NaN."""
    return values.isna().to_numpy() | (values.astype(str).str.strip() == "").to_numpy()


def require_ids(table: pd.DataFrame, id_col: str, *, source: str) -> None:
    """Fail on rows without an id: they name no image and no submission row."""
    empty = is_empty(table[id_col])
    if empty.any():
        raise DataError(
            f"{source}: {int(empty.sum())} row(s) have an empty {id_col!r} value, on CSV {csv_lines(empty)}; "
            "fill in the ids or drop those rows"
        )

