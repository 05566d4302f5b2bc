"""Blending runs: a weighted mean of their prediction frames, with weights given or fitted on their common OOF rows.

A prediction frame is a table with an `id` column and one numeric column per predicted quantity: the class
probabilities of a classifier (`prob_<class>`, as oof.csv writes them), or the values of a regression. The blend
never looks at what the columns mean, only that every run predicts the same ones, so it averages probabilities in
probability space and values in value space alike.

Fitted weights come from greedy forward selection with replacement (Caruana et al., 2004): start from the best run
alone, and keep adding the run whose extra share most improves the metric on the runs' common out-of-fold rows,
until nothing improves. Because it starts from the best run and accepts only improvements, the fitted blend scores
at least the better run's OOF metric on those rows (in-sample: the weights were chosen on the rows they are scored
on, so the figure is optimistic for the leaderboard). It needs no gradient, so it works for accuracy, AUC, log loss
or any metric the runs were scored with.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from kaggle_tli.data import DataError
from kaggle_tli.files import atomic_write_json, atomic_write_text
from kaggle_tli.ledger import Ledger
from kaggle_tli.runs import Run, utc_now
from kaggle_tli.train import Metric, resolve_metric
from kaggle_tli.train.records import read_oof_table

# oof.csv's columns that are not predictions: the row, its true label, its fold and the argmax label
NOT_PREDICTIONS = ("id", "label", "fold", "prediction")
FIT_ROUNDS = 100  # at most this many shares of 1/k: enough resolution, and each round scores every run once


@dataclass
class BlendFit:
    """What fitting (or scoring given) weights found on the runs' common out-of-fold rows."""

    weights: list[float]
    metric: str
    rows: int  # the common OOF rows the scores are on
    run_scores: list[float]  # each run alone, on those rows
    score: float  # the blend, on those rows (in-sample when the weights were fitted there)
    fitted: bool = False


def prediction_columns(frame: pd.DataFrame) -> list[str]:
    """The numeric columns of a prediction frame that are predictions (not the id, label, fold or argmax)."""
    return [c for c in frame.columns if c not in NOT_PREDICTIONS and pd.api.types.is_numeric_dtype(frame[c])]


def normalise_weights(weights: Sequence[float] | str | None, n: int) -> np.ndarray:
    """Weights as a float array summing to 1: equal when None; text such as "0.7,0.3" (the CLI's --weights) is
    read as numbers; refused unless n finite, non-negative values."""
    if weights is None:
        return np.full(n, 1.0 / n)
    try:
        w = np.asarray(weights.split(",") if isinstance(weights, str) else list(weights), dtype=float)
    except ValueError:
        w = np.full(n + 1, np.nan)  # not numbers: refused below, with the same message
    if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(
            f"weights={list(weights)!r}: need {n} finite, non-negative numbers (one per run) that do not all "
            "equal 0, e.g. weights=[0.7, 0.3]; or weights='fit' to fit them on the runs' OOF rows, or None for "
            "equal weights"
        )
    return w / w.sum()


def blend_frames(frames: Sequence[pd.DataFrame], weights: Sequence[float] | None = None) -> pd.DataFrame:
    """The weighted mean of prediction frames over the same ids and prediction columns, in the first frame's
    id order (the others are aligned on id, so each run may list its rows in its own order)."""
    if not frames:
        raise ValueError("nothing to blend: pass two or more runs (or prediction frames)")
    w = normalise_weights(weights, len(frames))
    first = frames[0]
    columns = prediction_columns(first)
    ids = first["id"].astype(str)
    total = np.zeros((len(first), len(columns)))
    for k, (frame, share) in enumerate(zip(frames, w, strict=True)):
        other = prediction_columns(frame)
        if sorted(other) != sorted(columns):
            raise DataError(
                f"prediction frame {k} predicts columns {other[:8]}, frame 0 {columns[:8]}: only runs that "
                "predict the same classes or targets can be blended (runs trained on the same competition)"
            )
        indexed = frame.assign(id=frame["id"].astype(str)).set_index("id")
        if indexed.index.has_duplicates or set(indexed.index) != set(ids):
            raise DataError(
                f"prediction frame {k} has other ids than frame 0 ({len(indexed)} vs {len(ids)} rows): blend "
                "predictions of the same test set"
            )
        total += share * indexed.loc[ids, columns].to_numpy(dtype=float)
    return pd.concat([pd.DataFrame({"id": ids.to_numpy()}), pd.DataFrame(total, columns=columns)], axis=1)


def read_oof(run: Run) -> pd.DataFrame:
    """A run's oof.csv (ids, labels and argmax as the text written), or a clear error when it has none."""
    path = run.path / "oof.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"run {run.id!r} has no oof.csv (no fold was trained to its end), so blend weights cannot be fitted "
            "on it: pass weights=[...] (or --weights) yourself, or finish the run first (resume)"
        )
    return read_oof_table(path)


def common_oof(runs: Sequence[Run]) -> tuple[list[pd.DataFrame], pd.Series]:
    """Each run's OOF rows restricted to the ids every run has, in one order, and those rows' true labels."""
    tables = [read_oof(run) for run in runs]
    common = set(tables[0]["id"])
    for table in tables[1:]:
        common &= set(table["id"])
    if not common:
        raise DataError(
            f"runs {[r.id for r in runs]} share no out-of-fold rows, so their weights cannot be fitted: fit on runs "
            "validated on the same rows (iterate keeps its parent's folds; use the same fold or train_folds='all'), "
            "or pass weights=[...]"
        )
    order = sorted(common)
    aligned = [t.drop_duplicates("id", keep="last").set_index("id").loc[order].reset_index() for t in tables]
    labels = aligned[0]["label"]
    for run, table in zip(runs[1:], aligned[1:], strict=True):
        if not table["label"].equals(labels):
            raise DataError(f"run {run.id!r} has other true labels than {runs[0].id!r} on the same ids: blend runs "
                            "trained on the same train.csv")
    return aligned, labels


def run_metric(runs: Sequence[Run], metric: str | Metric | None) -> Metric:
    """The metric the runs were scored with (they must agree), or the one given."""
    if metric is not None:
        return resolve_metric(metric)
    names = {str(run.config.get("metric", "accuracy")) for run in runs}
    if len(names) > 1:
        raise ValueError(f"the runs were scored with different metrics {sorted(names)}: pass metric=<one of them>")
    return resolve_metric(names.pop())


def run_task(run: Run) -> str:
    """The run's task shape as run.json records it (runs from before task shapes are single-label)."""
    return (run.info.get("task") or {}).get("name", "single_label")


def oof_targets(run: Run, labels: pd.Series) -> np.ndarray:
    """The true targets of OOF rows, as oof.csv writes them (a class, space-separated tags or values), in the form
    the run's metric takes: class indices, a 0/1 matrix of labels, or the values."""
    task, names = run_task(run), [str(c) for c in run.class_names]
    if task == "regression":
        return np.array([[float(v) for v in str(text).split()] for text in labels], dtype=np.float64)
    if task == "multilabel":
        return np.array([[float(n in set(str(text).split())) for n in names] for text in labels])
    lookup = {n: i for i, n in enumerate(names)}
    return np.array([lookup[str(v)] for v in labels])


def fit_weights(runs: Sequence[Run], *, weights: Sequence[float] | None = None, metric: str | Metric | None = None,
                rounds: int = FIT_ROUNDS) -> BlendFit:
    """Score the runs, and the blend, on their common OOF rows; fit the weights there unless `weights` are given."""
    scorer = run_metric(runs, metric)
    aligned, labels = common_oof(runs)
    columns = prediction_columns(aligned[0])
    preds = np.stack([t[columns].to_numpy(dtype=float) for t in aligned])
    y, task = oof_targets(runs[0], labels), run_task(runs[0])
    run_scores = [float(scorer(y, p, task)) for p in preds]
    if weights is not None:
        w = normalise_weights(weights, len(runs))
        score = float(scorer(y, np.tensordot(w, preds, 1), task))
        return BlendFit(list(map(float, w)), scorer.name, len(y), run_scores, score)
    counts = np.zeros(len(runs))
    best = max(range(len(runs)), key=lambda i: run_scores[i] if scorer.greater_is_better else -run_scores[i])
    counts[best], score = 1, run_scores[best]
    for _ in range(rounds - 1):
        trials = [float(scorer(y, np.tensordot((counts + np.eye(len(runs))[i]) / (counts.sum() + 1), preds, 1), task))
                  for i in range(len(runs))]
        pick = max(range(len(runs)), key=lambda i: trials[i] if scorer.greater_is_better else -trials[i])
        if not scorer.better(trials[pick], score):
            break
        counts[pick] += 1
        score = trials[pick]
    return BlendFit(list(map(float, counts / counts.sum())), scorer.name, len(y), run_scores, score, fitted=True)


def record_blend(runs: Sequence[Run], fit: BlendFit | None, weights: np.ndarray, submission: pd.DataFrame,
                 runs_dir: Path, test_frame: pd.DataFrame) -> Path:
    """A blend folder (blend.json, the blended test predictions, submission.csv) and its ledger row.

    The ledger row's stage is "blend", its parent the first run, its notes every run with its weight, its cv the
    blend's score on the runs' common OOF rows when they have them.
    """
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    blend_id = f"{stamp}-blend-{secrets.token_hex(2)}"
    folder = runs_dir / blend_id
    folder.mkdir(parents=True)
    info = {
        "id": blend_id, "stage": "blend", "created_at": utc_now(),
        "runs": [{"id": r.id, "path": str(r.path), "weight": float(w)} for r, w in zip(runs, weights, strict=True)],
        "fitted": bool(fit and fit.fitted),
        "oof": None if fit is None else {"metric": fit.metric, "rows": fit.rows, "score": fit.score,
                                         "run_scores": dict(zip([r.id for r in runs], fit.run_scores, strict=True))},
    }
    atomic_write_json(folder / "blend.json", info)
    atomic_write_text(folder / "predictions.csv", test_frame.to_csv(index=False))
    atomic_write_text(folder / "submission.csv", submission.to_csv(index=False))
    mix = ", ".join(f"{r.id} x{w:.3f}" for r, w in zip(runs, weights, strict=True))
    now = utc_now()
    Ledger(runs_dir).append({
        "run_id": blend_id, "parent_run_id": runs[0].id, "stage": "blend", "arch": "blend",
        "parent_arch": runs[0].arch.get("name"), "metric": None if fit is None else fit.metric,
        "cv": None if fit is None else fit.score, "checkpoint": str(folder.resolve()), "status": "done",
        "started_at": now, "finished_at": now, "duration_s": 0.0, "task": run_task(runs[0]),
        "notes": f"{'fitted' if fit and fit.fitted else 'given'} weights: {mix}",
    })
    return folder
