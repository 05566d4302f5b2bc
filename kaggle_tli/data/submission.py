"""Outputs -> the submission table `sample_submission.csv` asks for, for every task shape, checked like Kaggle does.

    single-label   labels, or one probability column per class
    binary         the positive class's probability when scores are asked (a fractional sample such as 0.5, or a
                   metric on scores), else labels; or one probability column per class
    multi-label    one probability column per label, or space-separated tags at a threshold (tuned on OOF)
    regression     the values, one column per target
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .base import KaggleData
from .errors import DataError
from .tasks import tags_at


def make_submission(data: KaggleData, outputs: np.ndarray, *, scores: bool | None = None,
                    threshold: float = 0.5) -> pd.DataFrame:
    """The submission in the shape of `sample_submission.csv` (a two-column id, target table without one).

    `outputs`: class or label probabilities, or values, one row per test id. `scores`: submit the positive
    class's probability in a binary task (default: when the sample holds fractions). `threshold`: where a
    multi-label probability becomes a tag.
    """
    task = data.task
    sample = data.sample_submission
    names = [str(c) for c in data.class_names]
    scores = data.target_info.sample_scores if scores is None else scores
    if sample is None:
        columns = data.target_info.columns if task in ("regression", "multilabel") and not data.target_info.tags \
            else [data.label_col]
        table = pd.DataFrame({"id": data.test_ids})
        _fill(table, columns, task, names, outputs, scores, threshold, data)
        return table
    id_col, asked = sample.columns[0], [str(c) for c in sample.columns[1:]]
    table = pd.DataFrame({id_col: data.test_ids})
    _fill(table, asked, task, names, outputs, scores, threshold, data)
    table.columns = list(sample.columns)  # the sample's own column labels, whatever their type
    check_submission(table, sample)
    return table


def _fill(table: pd.DataFrame, asked: list[str], task: str, names: list[str], outputs: np.ndarray, scores: bool,
          threshold: float, data: KaggleData) -> None:
    if sorted(asked) == sorted(names) and (len(asked) > 1 or task == "regression"):
        for col in asked:  # one probability (or value) column per class, label or target, by name
            table[col] = outputs[:, names.index(col)]
        return
    if len(asked) != 1:
        raise DataError(
            f"cannot fill sample submission columns {asked}: this {task} run predicts {names[:10]}, so the sample "
            "needs one column for them or one column per name"
        )
    col = asked[0]
    if task == "multilabel":
        table[col] = tags_at(outputs, data.class_names, threshold)
    elif task == "regression":
        if outputs.shape[1] != 1:
            raise DataError(f"the sample submission has one target column {col!r}, but the run predicts "
                            f"{len(names)} targets {names[:10]}; give the sample one column per target")
        table[col] = outputs[:, 0]
    elif task == "binary" and scores:
        table[col] = outputs[:, 1]  # the positive class: the second of the two sorted class names
    else:
        table[col] = [data.class_names[i] for i in outputs.argmax(axis=1)]


def check_submission(submission: pd.DataFrame, sample: pd.DataFrame) -> None:
    """Same columns, same ids in the same order, no empty cell: what Kaggle's scorer requires."""
    if list(submission.columns) != list(sample.columns):
        raise DataError(f"submission columns {list(submission.columns)} differ from the sample's {list(sample.columns)}")
    if len(submission) != len(sample):
        raise DataError(f"submission has {len(submission)} rows, the sample submission {len(sample)}")
    ids, expected = submission.iloc[:, 0].astype(str).tolist(), sample.iloc[:, 0].astype(str).tolist()
    if ids != expected:
        where = next(i for i, (a, b) in enumerate(zip(ids, expected, strict=True)) if a != b)
        raise DataError(f"submission ids differ from the sample's at row {where}: {ids[where]!r} vs {expected[where]!r}")
    if submission.isna().any().any():
        raise DataError("the submission has empty cells")
