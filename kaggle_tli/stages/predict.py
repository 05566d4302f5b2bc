"""`predict`: every trained fold of a run x flip TTA, averaged in probability or value space -> a submission.

`run_predictions` gives the same averaged outputs (or the run's out-of-fold ones) as a table, one column per class,
label or target. Several runs are blended (kaggle_tli.stages.blend): each run's test predictions, averaged over its
folds and TTA, then the weighted mean of the runs.
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

from kaggle_tli.data import (
    DataError,
    KaggleData,
    activate,
    loader_options,
    make_submission,
    rebuild_data,
    tune_threshold,
)
from kaggle_tli.files import atomic_write_text
from kaggle_tli.models import memory_format
from kaggle_tli.runs import Run, load_run, weights_name
from kaggle_tli.stages.blend import (
    blend_frames,
    fit_weights,
    normalise_weights,
    oof_targets,
    prediction_columns,
    record_blend,
)
from kaggle_tli.stages.resume import runs_dir_for
from kaggle_tli.train import resolve_metric
from kaggle_tli.train.records import read_oof_table

TTA_VIEWS = ("hflip", "vflip", "hvflip")  # averaged with the image as it is; "all" is the three
RunLike = Run | str | Path


def predict(
    run: RunLike | Sequence[RunLike],
    test: KaggleData | str | Path | None = None,
    *,
    tta: bool | str | Sequence[str] = True,
    which: str = "best",
    batch_size: int = 64,
    device: str = "auto",
    out: str | Path | None = None,
    weights: Sequence[float] | str | None = None,
) -> pd.DataFrame:
    """Predict the test set with every trained fold of `run` (averaging probabilities or values over folds and TTA
    views), and return the submission, checked against `sample_submission.csv`.

    `test`: None rebuilds the run's data from run.json; a data object is used as is; a folder is
    the same competition mounted elsewhere. `which`: "best" | "last" | "ema" weights of each fold.
    `tta`: True averages with the mirrored image where the data allows mirroring (`data.hflip`; `PixelCsvData`
    sets it False because mirrored digits and letters change meaning); or name the views: "hflip", "vflip",
    "hvflip" (both flips), a list of them, or "all". A binary task submits the positive class's probability when
    the sample holds fractions (0.5) or the run's metric scores probabilities; tags are cut at the threshold that
    maximises the OOF micro F1.
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


def run_predictions(
    run: Run | str | Path, test: KaggleData | str | Path | None = None, *, split: str = "test",
    tta: bool | str | Sequence[str] = True, which: str = "best", batch_size: int = 64, device: str = "auto",
) -> pd.DataFrame:
    """A run's predictions in probability or value space: `id` plus one column per class, label or target (the
    run's `class_names`). `split="test"`: the test set, folds and TTA averaged as `predict` does; `split="oof"`:
    the out-of-fold predictions of oof.csv (with their `fold`), the rows to fit blend weights on."""
    run = load_run(run)
    names = [str(c) for c in run.class_names]
    if split == "oof":
        path = run.path / "oof.csv"
        if not path.is_file():
            raise FileNotFoundError(f"run {run.id!r} has no oof.csv: it has not finished a fold yet")
        table = read_oof_table(path)
        values = table[[_output_column(table, n) for n in names]].to_numpy(dtype=np.float64)
        return pd.concat([table[["id", "fold"]], pd.DataFrame(values, columns=names)], axis=1)
    if split != "test":
        raise ValueError(f"split={split!r}: use 'test' or 'oof'")
    data = _test_data(run, test)
    outputs = _averaged_outputs(run, data, tta=tta, which=which, batch_size=batch_size, device=device)
    return pd.concat([pd.DataFrame({"id": [str(i) for i in data.test_ids]}), pd.DataFrame(outputs, columns=names)],
                     axis=1)


def _output_column(table: pd.DataFrame, name: str) -> str:
    for col in (f"prob_{name}", f"pred_{name}"):
        if col in table.columns:
            return col
    raise DataError(f"oof.csv has no column for output {name!r} (prob_{name} or pred_{name})")


def _submission(run: Run, data: KaggleData, outputs: np.ndarray) -> pd.DataFrame:
    """The submission from a run's (or a blend's) averaged outputs, in the sample submission's shape: a binary
    task's positive-class probability where the sample or the metric asks for scores, tags at the OOF threshold."""
    metric = str(run.config.get("metric", "accuracy"))
    scores = data.target_info.sample_scores or (
        not metric.startswith("callable:") and resolve_metric(metric).needs_proba)
    threshold = _oof_threshold(run) if data.task == "multilabel" else 0.5
    return make_submission(data, outputs, scores=scores, threshold=threshold)


def _predict_blend(runs: list[Run], test: Any, weights: Any, out: str | Path | None, options: dict) -> pd.DataFrame:
    if not runs:
        raise ValueError("predict([]): pass at least one run to blend")
    fit = fit_weights(runs) if isinstance(weights, str) and weights == "fit" else None
    w = normalise_weights(fit.weights if fit else weights, len(runs))
    if fit is None and all((r.path / "oof.csv").is_file() for r in runs):
        fit = fit_weights(runs, weights=w)  # the given weights' OOF score, for the ledger
    data = _test_data(runs[0], test)
    ids = pd.DataFrame({"id": [str(i) for i in data.test_ids]})
    prefix = "pred" if data.task == "regression" else "prob"  # oof.csv's names: a test frame reads like OOF's
    columns = [f"{prefix}_{c}" for c in data.class_names]
    frames = [pd.concat([ids, pd.DataFrame(_averaged_outputs(r, data, **options), columns=columns)], axis=1)
              for r in runs]
    blended = blend_frames(frames, w)
    submission = _submission(runs[0], data, blended[prediction_columns(blended)].to_numpy())
    folder = record_blend(runs, fit, w, submission, runs_dir_for(runs[0]), blended)
    if out is not None:
        atomic_write_text(Path(out).expanduser(), submission.to_csv(index=False))
    print(f"kaggle-tli: blend of {len(runs)} runs -> {folder}/submission.csv" + (f" and {out}" if out else ""))
    return submission


def _averaged_outputs(run: Run, data: KaggleData, *, tta: Any, which: str, batch_size: int, device: str
                      ) -> np.ndarray:
    """The run's test outputs (probabilities or values): the mean over its trained folds and TTA views."""
    record = run.info.get("task") or {"name": "single_label"}
    if data.task != record["name"]:
        raise DataError(
            f"the data is read as a {data.task} task but run {run.id!r} predicts {record['name']}: build the data "
            f"with task={record['name']!r} (--task {record['name']}), or pass test=<folder> to rebuild it as the run did"
        )
    if list(data.class_names) != list(run.class_names):
        raise DataError(
            f"the data's classes {data.class_names[:10]} differ from the run's {run.class_names[:10]}; "
            "predict with the competition the run was trained on"
        )
    folds = [k for k in run.trained_folds if _has_weights(run, which, k)]
    if not folds:
        raise FileNotFoundError(f"run {run.id!r} has no {which!r} weights for any fold; train it first")
    views = tta_views(tta, data.hflip)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    total = None
    for k in folds:
        model = run.build_model(which, k).to(dev).eval()
        layout = memory_format(model, run.config.get("channels_last", "auto"), dev)  # as the run trained
        out = _test_outputs(model, data.test_dataset(), batch_size, dev, views, record, layout)
        total = out if total is None else total + out
    return total / len(folds)


def tta_views(tta: bool | str | Sequence[str], hflip_allowed: bool = True) -> list[str]:
    """The flips averaged with the plain image: True is "hflip" where mirroring is allowed, False none."""
    if tta is True:
        return ["hflip"] if hflip_allowed else []
    if tta is False or tta is None:
        return []
    views = list(TTA_VIEWS) if tta == "all" else [tta] if isinstance(tta, str) else list(tta)
    bad = [v for v in views if v not in TTA_VIEWS]
    if bad:
        raise ValueError(f"tta={tta!r}: unknown view(s) {bad}; use True, False, 'all' or some of {TTA_VIEWS}")
    return views


def _oof_threshold(run: Run) -> float:
    """The tag threshold with the best micro F1 on the run's out-of-fold predictions (0.5 without them)."""
    path = run.path / "oof.csv"
    if not path.is_file():
        return 0.5
    table = read_oof_table(path)
    names = [str(c) for c in run.class_names]
    outputs = table[[f"prob_{n}" for n in names]].to_numpy(dtype=np.float64)
    return tune_threshold(oof_targets(run, table["label"]), outputs)


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


_FLIP_DIMS = {"hflip": [3], "vflip": [2], "hvflip": [2, 3]}


@torch.no_grad()
def _test_outputs(model: nn.Module, dataset: Any, batch_size: int, device: torch.device, views: list[str],
                  record: dict, layout: torch.memory_format = torch.preserve_format) -> np.ndarray:
    options = loader_options(None, cuda=device.type == "cuda")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator(), **options)
    outs = []
    amp = device.type == "cuda"
    task, scale = record.get("name", "single_label"), record.get("scale")
    for x, _ in tqdm(loader, desc="predict", leave=False, disable=len(loader) < 10):
        x = x.to(device, memory_format=layout)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            p = activate(task, model(x), scale)
            for view in views:  # averaged where they are scored: probabilities or values, never logits
                p = p + activate(task, model(torch.flip(x, dims=_FLIP_DIMS[view])), scale)
        outs.append((p / (1 + len(views))).cpu())
    return torch.cat(outs).numpy()


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
