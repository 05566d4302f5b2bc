"""Competition folders of every task shape, made from scikit-learn's digits (real images a model can learn).

Each writer builds on `write_image_competition` (train/ and test/ PNGs of digits 0..9) and rewrites the tables:

- `binary`       train.csv id,label with 1 for digits >= 5, 0 otherwise; the sample holds 0.5 (an AUC competition)
- `multilabel`   train.csv id,even,big,loop (0/1 columns); the sample asks for the three columns with 0.5
- `tags`         train.csv id,tags with space-separated tags ("even loop", "odd big"); the sample holds one tag
- `regression`   train.csv id,value with value = digit * 10 + 0.5; the sample holds 0.0 ... a fractional 0.5
- `integer`      train.csv id,score with score = digit * 10 (integers: classes unless the metric is a regression
                 metric or task='regression')
- `folders`      train/<word>/*.png and no train.csv (one folder per class); test/ and sample_submission.csv

`solution.csv` always holds the test rows' true values in the sample's shape.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from conftest import WORDS, write_image_competition

SHAPES = ("binary", "multilabel", "tags", "regression", "integer", "folders")
DIGITS = tuple(range(10))


def _tags(d: int) -> list[str]:
    tags = ["even" if d % 2 == 0 else "odd"]
    if d >= 5:
        tags.append("big")
    if d in (0, 6, 8, 9):
        tags.append("loop")
    return tags


def write_shape_competition(root: Path, shape: str, *, per_class: int = 8, n_test_per_class: int = 2) -> Path:
    """Write a competition of `shape` (one of SHAPES) into `root` and return it."""
    write_image_competition(root, digits=DIGITS, per_class=per_class, n_test_per_class=n_test_per_class)
    word_to_digit = {w: i for i, w in enumerate(WORDS)}
    train = pd.read_csv(root / "train.csv", dtype=str)
    test = pd.read_csv(root / "solution.csv", dtype=str)
    d_train = np.array([word_to_digit[w] for w in train["label"]])
    d_test = np.array([word_to_digit[w] for w in test["label"]])
    (root / "solution.csv").unlink()
    if shape == "folders":
        return _class_folders(root, train)
    tables = {
        "binary": lambda d: {"label": (d >= 5).astype(int)},
        "multilabel": lambda d: {"even": (d % 2 == 0).astype(int), "big": (d >= 5).astype(int),
                                 "loop": np.isin(d, (0, 6, 8, 9)).astype(int)},
        "tags": lambda d: {"tags": [" ".join(_tags(int(x))) for x in d]},
        "regression": lambda d: {"value": d * 10 + 0.5},
        "integer": lambda d: {"score": d * 10},
    }[shape]
    pd.DataFrame({"id": train["id"], **tables(d_train)}).to_csv(root / "train.csv", index=False)
    solution = pd.DataFrame({"id": test["id"], **tables(d_test)})
    solution.to_csv(root / "solution.csv", index=False)
    sample = solution.copy()
    placeholder = {"binary": 0.5, "multilabel": 0.5, "tags": "even", "regression": 0.5, "integer": 0}[shape]
    for col in sample.columns[1:]:
        sample[col] = placeholder
    sample.to_csv(root / "sample_submission.csv", index=False)
    return root


def _class_folders(root: Path, train: pd.DataFrame) -> Path:
    """Move train/<id>.png into train/<label>/<id>.png and drop train.csv."""
    for image_id, label in zip(train["id"], train["label"], strict=True):
        (root / "train" / label).mkdir(exist_ok=True)
        shutil.move(str(root / "train" / f"{image_id}.png"), str(root / "train" / label / f"{image_id}.png"))
    (root / "train.csv").unlink()
    return root
