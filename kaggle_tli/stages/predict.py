"""`predict`: every trained fold of a run x horizontal-flip TTA -> a submission checked against the sample.

Several runs are blended (kaggle_tli.stages.blend): each run's test predictions, averaged over its folds and TTA,
then the weighted mean of the runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from kaggle_tli.data import DataError, KaggleData, loader_options, rebuild_data
from kaggle_tli.files import atomic_write_text
from kaggle_tli.runs import Run, load_run, weights_name
from kaggle_tli.stages.blend import (
    blend_frames,
    fit_weights,
    normalise_weights,
    prediction_columns,
    record_blend,
)
from kaggle_tli.stages.resume import runs_dir_for

RunLike = Run | str | Path


def predict(
    run: RunLike | Sequence[RunLike],
    test: KaggleData | str | Path | None = None,
    *,
    tta: bool = True,
    which: str = "best",
    batch_size: int = 64,
    device: str = "auto",
    out: str | Path | None = None,
    weights: Sequence[float] | str | None = None,
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

    A list of runs is blended: `weights` None averages them equally, numbers weigh them, "fit" fits the
    weights on the runs' common out-of-fold rows (kaggle_tli.stages.blend). The blend gets a folder beside
    the first run (blend.json, predictions.csv, submission.csv) and a ledger row with stage "blend".
    """
    options = dict(tta=tta, which=which, batch_size=batch_size, device=device)
    if isinstance(run, (list, tuple)):
        return _predict_blend([load_run(r) for r in run], test, weights, out, options)
    if weights is not None:
        raise ValueError("weights= blends several runs: pass a list of runs, e.g. predict([run1, run2], weights='fit')")
    run = load_run(run)
    data = _test_data(run, test)
    submission = _submission(run, data, _averaged_outputs(run, data, **options))
    _write_submission(run, submission, out)
    return submission


def _submission(run: Run, data: KaggleData, outputs: np.ndarray) -> pd.DataFrame:
    """The submission from a run's (or a blend's) averaged outputs, in the sample submission's shape."""
    return make_submission(data, outputs)


def _predict_blend(runs: list[Run], test: Any, weights: Any, out: str | Path | None, options: dict) -> pd.DataFrame:
    if not runs:
        raise ValueError("predict([]): pass at least one run to blend")
    fit = fit_weights(runs) if isinstance(weights, str) and weights == "fit" else None
    w = normalise_weights(fit.weights if fit else weights, len(runs))
    if fit is None and all((r.path / "oof.csv").is_file() for r in runs):
        fit = fit_weights(runs, weights=w)  # the given weights' OOF score, for the ledger
    data = _test_data(runs[0], test)
    ids = pd.DataFrame({"id": [str(i) for i in data.test_ids]})
    columns = [f"prob_{c}" for c in data.class_names]  # oof.csv's names: a test frame reads like an OOF frame
    frames = [pd.concat([ids, pd.DataFrame(_averaged_outputs(r, data, **options), columns=columns)], axis=1)
              for r in runs]
    blended = blend_frames(frames, w)
    submission = _submission(runs[0], data, blended[prediction_columns(blended)].to_numpy())
    folder = record_blend(runs, fit, w, submission, runs_dir_for(runs[0]), blended)
    if out is not None:
        atomic_write_text(Path(out).expanduser(), submission.to_csv(index=False))
    print(f"kaggle-tli: blend of {len(runs)} runs -> {folder}/submission.csv" + (f" and {out}" if out else ""))
    return submission


def _averaged_outputs(run: Run, data: KaggleData, *, tta: bool, which: str, batch_size: int, device: str
                      ) -> np.ndarray:
    """The run's test probabilities: the mean over its trained folds (each with TTA where allowed)."""
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
    return probs / len(folds)


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
    options = loader_options(None, cuda=device.type == "cuda")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator(), **options)
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
