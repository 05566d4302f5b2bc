"""Which task a competition is, read from its tables: the targets, their names, and the reason, or what is wrong.

The columns that `sample_submission.csv` asks for (other than the id) decide the task:
- columns that are also columns of train.csv are the targets (several 0/1 columns: multi-label; numbers:
  regression);
- columns that are the values of the label column (the class names) mean single-label probabilities;
- otherwise the label column (`label_col`) is the target: space-separated tags are multi-label, two classes
  binary, non-integer numbers (or a fractional sample for a many-valued column) regression, else single-label.

`task=` and `label_cols=` override the guess. Every refusal names the problem and the fix before anything is
written.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import DataError
from .tables import check_class_sizes, csv_lines, first_few, is_empty, parse_labels, require_column
from .tasks import check_task, standardise

_OVERRIDE = "pass task='single_label' | 'binary' | 'multilabel' | 'regression' (--task on the command line)"


@dataclass
class Targets:
    """What a competition's training table asks the model to predict."""

    task: str
    columns: list[str]  # the train.csv column(s) holding the targets
    names: list  # one per model output: class names, label names or target names
    labels: list[str]  # per row, as text, for folds.csv and oof.csv
    values: np.ndarray  # (N,) class indices, or (N, K) float 0/1 labels / targets
    how: str  # why this task, for the line printed at the start of a run
    tags: bool = False  # multi-label from one column of space-separated tags
    scale: dict | None = None  # regression: per-target mean and std (training is on standardised targets)
    sample_scores: bool = False  # the sample's values are fractions: submit scores, not labels

    def describe(self) -> str:
        outputs = {"single_label": "classes", "binary": "classes", "multilabel": "labels", "regression": "target(s)"}
        shown = ", ".join(str(n) for n in self.names[:8]) + (", ..." if len(self.names) > 8 else "")
        return f"task {self.task} ({len(self.names)} {outputs[self.task]}: {shown}; {self.how})"


def infer_targets(
    table: pd.DataFrame, sample: pd.DataFrame | None, *, label_col: str | None, label_cols: Sequence[str] | None,
    task: str | None, folds: int, source: str,
) -> Targets:
    """The targets of `table` (train.csv) for the task its sample submission (or `task=`, `label_cols=`) asks.
    `label_col` None: the column the sample submission asks for when train.csv has it, else "label"."""
    task = check_task(task)
    asked = [str(c) for c in sample.columns[1:]] if sample is not None else []
    given, label_col = label_col is not None, label_col or "label"
    if label_cols:
        for col in label_cols:
            require_column(table, col, source=source, param="label_cols")
        cols, how = [str(c) for c in label_cols], f"label_cols={list(label_cols)}"
    elif asked and all(c in table.columns for c in asked) and not given:
        cols = asked
        how = f"the sample submission asks for train.csv column{'s' if len(asked) > 1 else ''} {asked}"
    elif len(asked) > 1 and label_col in table.columns:
        return _class_columns(table, sample, label_col, task, folds, source)
    elif len(asked) > 1 and not given:
        raise DataError(
            f"the sample submission's columns {first_few(asked)} match no target in {source}: they are neither "
            f"columns of it (its columns: {first_few([str(c) for c in table.columns])}) nor the values of a label "
            f"column {label_col!r}. Pass label_cols=[...] (the train.csv columns to predict) or label_col=<column "
            "whose values are those names>"
        )
    else:
        require_column(table, label_col, source=source, param="label_col")
        cols, how = [label_col], f"column {label_col!r}"
    sample_values = sample[cols[0] if cols[0] in sample.columns else sample.columns[1]] if asked and len(cols) == 1 \
        else None
    if len(cols) == 1:
        return _one_column(table[cols[0]], cols[0], task, sample_values, folds, source, how)
    return _many_columns(table, cols, task, source, how)


# --------------------------------------------------------------------------------------------------
# one target column


def _one_column(column: pd.Series, col: str, task: str | None, sample_values: pd.Series | None, folds: int,
                source: str, how: str) -> Targets:
    text = _filled(column, col, source)
    numbers = _numbers(text)
    scores = sample_values is not None and _fractional(sample_values)
    if task is None:
        task, why = _guess_one(text, numbers, scores)
        how = f"{how}: {why}; {_OVERRIDE}"
    else:
        how = f"task={task!r}"
    if task == "regression":
        if numbers is None:
            bad = np.array([_number(v) is None for v in text])
            raise DataError(f"{source}: column {col!r} is a regression target, but CSV {csv_lines(bad)} hold(s) "
                            f"{first_few([text[i] for i in np.flatnonzero(bad)])}, not numbers; fix those rows")
        values = numbers.reshape(-1, 1)
        return Targets("regression", [col], [col], text, values, how, scale=standardise(values))
    if task == "multilabel":
        names = sorted(set(parse_labels(pd.Series([t for v in text for t in v.split()]))), key=_sort_key)
        lookup = {str(n): j for j, n in enumerate(names)}
        values = np.zeros((len(text), len(names)), dtype=np.float32)
        for i, v in enumerate(text):
            values[i, [lookup[t] for t in v.split()]] = 1.0
        return Targets("multilabel", [col], names, text, values, how, tags=True, sample_scores=scores)
    return _classes(text, col, task, folds, source, how, scores)


def _filled(column: pd.Series, col: str, source: str) -> list[str]:
    """The column's values as text, once every row has one (empty cells are refused by CSV line)."""
    missing = is_empty(column)
    if missing.any():
        raise DataError(f"{source}: {int(missing.sum())} row(s) have no {col!r} value, on CSV {csv_lines(missing)}; "
                        "fill or drop them")
    return [str(v).strip() for v in column]


def _guess_one(text: list[str], numbers: np.ndarray | None, scores: bool) -> tuple[str, str]:
    distinct = set(text)
    tokens = {t for v in distinct for t in v.split()}
    if any(len(v.split()) > 1 for v in distinct) and len(tokens) <= len(distinct):
        return "multilabel", f"space-separated tags ({len(tokens)} tags in {len(distinct)} combinations)"
    if numbers is not None and not np.all(numbers == np.round(numbers)):
        return "regression", "non-integer numbers"
    if numbers is not None and scores and len(distinct) > 2:
        return "regression", "numbers, and the sample submission holds fractions"
    if len(distinct) == 2:
        return "binary", "two classes" + (" and the sample submission holds fractions: scores" if scores else "")
    return "single_label", f"{len(distinct)} classes"


def _classes(text: list[str], col: str, task: str, folds: int, source: str, how: str, scores: bool) -> Targets:
    values = parse_labels(pd.Series(text))
    names = sorted(set(values), key=_sort_key)
    if len(names) < 2:
        raise DataError(f"{source}: column {col!r} has one class only; classification needs two")
    if task == "binary" and len(names) != 2:
        raise DataError(f"task='binary' but column {col!r} of {source} has {len(names)} classes "
                        f"({first_few(names)}); use task='single_label'")
    if task is None:
        task = "binary" if len(names) == 2 else "single_label"
    check_class_sizes(pd.Series(values), folds)
    lookup = {c: i for i, c in enumerate(names)}
    index = np.array([lookup[v] for v in values], dtype=np.int64)
    return Targets(task, [col], names, list(values), index, how, sample_scores=scores)


def _class_columns(table: pd.DataFrame, sample: pd.DataFrame, label_col: str, task: str | None, folds: int,
                   source: str) -> Targets:
    """The sample asks for one probability column per class of `label_col`: every class must be in train.csv."""
    asked = [str(c) for c in sample.columns[1:]]
    text = _filled(table[label_col], label_col, source)
    known = {str(v) for v in parse_labels(pd.Series(text))}
    never = [c for c in asked if c not in known]
    if len(never) == len(asked):
        raise DataError(
            f"the sample submission's columns {first_few(asked)} match no target in {source}: they are neither its "
            f"columns nor values of {label_col!r} (its values: {first_few(sorted(known))}). Pass label_cols=[...] or "
            "label_col=<the column whose values are those names>"
        )
    if never:
        raise DataError(
            f"the sample submission asks for label(s) {first_few(never)} that {source} never has in column "
            f"{label_col!r}: the model cannot learn a class without examples. Add training rows for them, or check "
            "that label_col names the right column"
        )
    unasked = sorted(known - set(asked))
    if unasked:
        raise DataError(f"{source} has class(es) {first_few(unasked)} in {label_col!r} that the sample submission "
                        "has no column for; drop those rows or fix the sample submission")
    how = f"the sample submission asks for one probability column per class of {label_col!r}"
    return _classes(text, label_col, task or ("binary" if len(asked) == 2 else "single_label"), folds, source, how,
                    True)


# --------------------------------------------------------------------------------------------------
# several target columns


def _many_columns(table: pd.DataFrame, cols: list[str], task: str | None, source: str, how: str) -> Targets:
    if task in ("single_label", "binary"):
        raise DataError(f"task={task!r} takes one label column, but the targets are the columns {cols}; use "
                        "task='multilabel' (0/1 columns) or 'regression' (numbers), or label_col=<one column>")
    values = np.stack([_numeric_column(table[c], c, source) for c in cols], axis=1)
    zero_one = [bool(np.isin(values[:, j], (0.0, 1.0)).all()) for j in range(len(cols))]
    if task == "multilabel" or (task is None and any(zero_one) and np.all(values == np.round(values))):
        bad = [c for c, ok in zip(cols, zero_one, strict=True) if not ok]
        if bad:
            col = bad[0]
            rows = ~np.isin(values[:, cols.index(col)], (0.0, 1.0))
            raise DataError(
                f"{source}: multi-label column {col!r} is not 0/1 on CSV {csv_lines(rows)}: a multi-label target "
                "holds 1 where the label applies and 0 where it does not. Fix those rows, or pass task='regression' "
                "if the columns are numbers to predict"
            )
        names = list(cols)
        labels = [" ".join(c for c, v in zip(cols, row, strict=True) if v > 0.5) for row in values]
        why = how if task else f"{how}: 0/1 columns; {_OVERRIDE}"
        return Targets("multilabel", cols, names, labels, values.astype(np.float32), why)
    why = how if task else f"{how}: numbers; {_OVERRIDE}"
    labels = [" ".join(f"{v:g}" for v in row) for row in values]
    return Targets("regression", cols, list(cols), labels, values.astype(np.float32), why, scale=standardise(values))


def _numeric_column(column: pd.Series, col: str, source: str) -> np.ndarray:
    numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(numbers)
    if bad.any():
        empty = is_empty(column.astype(object).where(column.notna(), ""))
        what = "empty" if empty[bad].all() else "not numbers"
        raise DataError(f"{source}: target column {col!r} is {what} on CSV {csv_lines(bad)}; every row needs a "
                        "number there: fix or drop those rows")
    return numbers


# --------------------------------------------------------------------------------------------------
# folds per shape


def fold_strata(targets: Targets, folds: int) -> np.ndarray:
    """A stratum per row for stratified folds: the class; for multi-label the row's rarest label (so every label
    spreads over the folds); for regression the quantile bin of the (mean standardised) target."""
    if targets.task in ("single_label", "binary"):
        return targets.values
    if targets.task == "multilabel":
        counts = targets.values.sum(axis=0)
        rarity = np.where(targets.values > 0.5, counts[None, :], np.inf)
        strata = np.where(np.isinf(rarity.min(axis=1)), -1, rarity.argmin(axis=1))
    else:
        scale = targets.scale or {"mean": [0.0], "std": [1.0]}
        z = ((targets.values - np.array(scale["mean"])) / np.array(scale["std"])).mean(axis=1)
        bins = max(1, min(10, len(z) // (2 * folds)))
        strata = pd.qcut(pd.Series(z).rank(method="first"), q=bins, labels=False).to_numpy()
    return _merge_rare(np.asarray(strata), folds)


def _merge_rare(strata: np.ndarray, folds: int) -> np.ndarray:
    """Strata smaller than the fold count go into one shared stratum (or the largest one), so the split never fails
    on a rare label combination."""
    values, counts = np.unique(strata, return_counts=True)
    rare = values[counts < folds]
    if len(rare) == 0:
        return strata
    out = strata.copy()
    target = values[counts.argmax()] if counts[counts < folds].sum() < folds else rare[0]
    out[np.isin(strata, rare)] = target
    return out


# --------------------------------------------------------------------------------------------------
# numbers written as text


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def _numbers(text: list[str]) -> np.ndarray | None:
    values = [_number(v) for v in text]
    return None if any(v is None for v in values) else np.array(values, dtype=np.float64)


def _fractional(values: pd.Series) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    return bool(len(numbers)) and not np.isnan(numbers).any() and bool(np.any(numbers != np.round(numbers)))


def _sort_key(value: object) -> tuple:
    return (0, value, "") if isinstance(value, int) else (1, 0, str(value))
