"""`predict`: every trained fold of a run x horizontal-flip TTA -> a submission checked against the sample.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from kaggle_tli.data import DataError, KaggleData, rebuild_data
from kaggle_tli.files import atomic_write_text
from kaggle_tli.runs import Run, load_run, weights_name


def predict(
    run: Run | str | Path,
    test: KaggleData | str | Path | None = None,
    *,
    tta: bool = True,
    which: str = "best",
    batch_size: int = 64,
    device: str = "auto",
    out: str | Path | None = None,
) -> pd.DataFrame:
    """Predict the test set with every trained fold of `run` (averaging probabilities, with a
    horizontal-flip TTA), and return the submission, checked against `sample_submission.csv`.

    `test`: None rebuilds the run's data from run.json; a data object is used as is; a folder is
    the same competition mounted elsewhere. `which`: "best" | "last" | "ema" weights of each fold.
    `tta`: average with the mirrored image, only where the data allows mirroring (`data.hflip`;
    `PixelCsvData` sets it False because mirrored digits and letters change meaning).
    The submission is written to `out` when given (and only there); otherwise into the run
    directory, or to `./submission.csv` (the notebook's working directory, /kaggle/working on
    Kaggle) when the run directory is read-only (a run attached as a Kaggle dataset). The path
    written is printed.
    """
    run = load_run(run)
    data = _test_data(run, test)
    if list(data.class_names) != list(run.class_names):
        raise DataError(
            f"the data's classes {data.class_names[:10]} differ from the run's {run.class_names[:10]}; "
            "predict with the competition the run was trained on"
        )
    folds = [k for k in run.trained_folds if _has_weights(run, which, k)]
    if not folds:
        raise FileNotFoundError(f"run {run.id!r} has no {which!r} weights for any fold; train it first")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    probs = None
    for k in folds:
        model = run.build_model(which, k).to(dev).eval()
        p = _test_probs(model, data.test_dataset(), batch_size, dev, tta and data.hflip)
        probs = p if probs is None else probs + p
    probs = probs / len(folds)
    submission = make_submission(data, probs)
    _write_submission(run, submission, out)
    return submission


def _has_weights(run: Run, which: str, fold: int) -> bool:
    return (run.path / weights_name(which, fold, run.primary_fold)).is_file()


def _test_data(run: Run, test: KaggleData | str | Path | None) -> KaggleData:
    if isinstance(test, KaggleData):
        data = test
    else:
        spec = run.info.get("data")
        if not spec:
            raise ValueError(f"run {run.id!r} does not record its data; pass test=<data object>")
        data = rebuild_data(spec, root=test)
    if not data.has_test:
        raise DataError(
            f"no test images or rows found in {str(data.root)!r} (looked for test/, test_images/ and "
            "test.csv); pass test=<folder> or a data object with test_dir= / test_csv="
        )
    return data


@torch.no_grad()
def _test_probs(model: nn.Module, dataset: Any, batch_size: int, device: torch.device, tta: bool) -> np.ndarray:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator())
    outs = []
    amp = device.type == "cuda"
    for x, _ in tqdm(loader, desc="predict", leave=False, disable=len(loader) < 10):
        x = x.to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            p = model(x).float().softmax(1)
            if tta:
                p = (p + model(torch.flip(x, dims=[3])).float().softmax(1)) / 2
        outs.append(p.cpu())
    return torch.cat(outs).numpy()


def make_submission(data: KaggleData, probs: np.ndarray) -> pd.DataFrame:
    """The submission table in the shape of `sample_submission.csv`: one label column with class
    names, or one probability column per class when the sample's columns are the class names."""
    sample = data.sample_submission
    labels = [data.class_names[i] for i in probs.argmax(axis=1)]
    if sample is None:
        return pd.DataFrame({"id": data.test_ids, data.label_col: labels})
    id_col, targets = sample.columns[0], list(sample.columns[1:])
    table = pd.DataFrame({id_col: data.test_ids})
    names = [str(c) for c in data.class_names]
    if len(targets) == 1:
        table[targets[0]] = labels
    elif sorted(map(str, targets)) == sorted(names):
        for col in targets:
            table[col] = probs[:, names.index(str(col))]
    else:
        raise DataError(
            f"cannot fill sample submission columns {targets}: expected one label column or one column per "
            f"class ({names[:10]})"
        )
    check_submission(table, sample)
    return table


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


def _write_submission(run: Run, submission: pd.DataFrame, out: str | Path | None) -> Path:
    """Write the submission where `predict` says, print the path, and return it."""
    if out is not None:
        path = Path(out).expanduser()
    elif os.access(run.path, os.W_OK):
        path = run.path / "submission.csv"
    else:  # a run in /kaggle/input: the working directory is where Kaggle picks up submission.csv
        path = Path.cwd() / "submission.csv"
    atomic_write_text(path, submission.to_csv(index=False))
    print(f"kaggle-tli: submission ({len(submission)} rows) written to {path}")
    return path
