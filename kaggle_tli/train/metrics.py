"""Validation metrics for every task shape: names to functions, the Kaggle favourites, and the fit check.

A metric is a scikit-learn function or scorer name, one of the Kaggle favourites below, or a callable
`fn(y_true, y_pred)`. What it is given depends on the task (`Metric.__call__`): class indices or class
probabilities, 0/1 label matrices or label probabilities, or values. `check_metric` tries the metric on a tiny
fake prediction of the task's shape before any run directory exists, so a metric that does not fit the task is
refused by name, with the right one suggested, instead of failing after the first epoch.
"""

from __future__ import annotations

import difflib
import inspect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sklearn.metrics as skm

# sklearn functions that score probabilities rather than labels
_PROBA_FUNCS = {"log_loss", "roc_auc_score", "average_precision_score", "top_k_accuracy_score", "brier_score_loss"}
_RANKING_FUNCS = ("roc_auc_score", "average_precision_score")  # undefined for a label with one class
_REGRESSION_PREFIXES = ("mean_", "median_", "root_mean", "max_error", "r2", "explained_variance", "neg_mean",
                        "neg_median", "neg_root", "neg_max", "d2_")
_SUGGEST = {
    "single_label": "'accuracy', 'f1_macro', 'log_loss', 'quadratic_weighted_kappa' or 'roc_auc_ovr'",
    "binary": "'roc_auc', 'accuracy', 'f1', 'log_loss'",
    "multilabel": "'roc_auc' (mean over labels), 'f1_micro', 'f1_macro', 'average_precision'",
    "regression": "'root_mean_squared_error', 'mean_absolute_error', 'r2' or 'quadratic_weighted_kappa'",
}


def quadratic_weighted_kappa(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Cohen's kappa with quadratic weights, on ordinal labels (predicted values are rounded to the nearest one)."""
    return float(skm.cohen_kappa_score(np.rint(np.ravel(y_true)).astype(int), np.rint(np.ravel(y_pred)).astype(int),
                                       weights="quadratic"))


def f1_macro(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """F1 averaged over classes (or labels), each counting the same."""
    return float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))


def f1_micro(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """F1 over all decisions pooled (multi-label: every image x label)."""
    return float(skm.f1_score(y_true, y_pred, average="micro", zero_division=0))


_FAVOURITES: dict[str, tuple[Callable, bool, bool]] = {  # name: (fn, needs_proba, greater_is_better)
    "quadratic_weighted_kappa": (quadratic_weighted_kappa, False, True),
    "qwk": (quadratic_weighted_kappa, False, True),
    "f1_macro": (f1_macro, False, True),
    "f1_micro": (f1_micro, False, True),
    "log_loss": (skm.log_loss, True, False),
    "rmse": (skm.root_mean_squared_error, False, False),
    "mae": (skm.mean_absolute_error, False, False),
    "auc": (skm.roc_auc_score, True, True),
}


@dataclass(frozen=True)
class Metric:
    """A validation metric. `fn(y_true, y_pred)` gets what `__call__` makes of the task's outputs."""

    name: str
    fn: Callable
    needs_proba: bool = False
    greater_is_better: bool = True
    sign: float = 1.0
    kwargs: dict = field(default_factory=dict)

    def __call__(self, y_true: np.ndarray, outputs: np.ndarray, task: str | None = None) -> float:
        """Score `outputs` (probabilities for classes and labels, values for regression) against `y_true`.
        Without `task`, (N,) targets and (N, C) outputs are single-label, as before task shapes existed."""
        task = task or "single_label"
        if task == "regression":
            y, pred = _squeeze(y_true), _squeeze(outputs)
            return self.sign * float(self.fn(y, pred, **self.kwargs))
        if task == "multilabel":
            return self._labels(np.asarray(y_true).astype(int), outputs)
        return self._classes(np.asarray(y_true), outputs)

    def _labels(self, y: np.ndarray, probs: np.ndarray) -> float:
        pred = probs if self.needs_proba else (probs >= 0.5).astype(int)
        if getattr(self.fn, "__name__", "") in _RANKING_FUNCS:
            # a rare label can be absent from (or everywhere in) a validation fold: its AUC is undefined, so it is
            # left out of the mean rather than stopping the run; no label left gives NaN
            both = [j for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
            if not both:
                return math.nan
            y, pred = y[:, both], pred[:, both]
        return self.sign * float(self.fn(y, pred, **self.kwargs))

    def _classes(self, y_true: np.ndarray, probs: np.ndarray) -> float:
        kwargs = dict(self.kwargs)
        if not self.needs_proba:
            return self.sign * float(self.fn(y_true, probs.argmax(axis=1), **kwargs))
        fn_name = getattr(self.fn, "__name__", "")
        y_score = probs
        if probs.shape[1] == 2 and fn_name not in ("log_loss", "top_k_accuracy_score"):
            y_score = probs[:, 1]
        elif "labels" in _parameters(self.fn):
            kwargs.setdefault("labels", list(range(probs.shape[1])))
        return self.sign * float(self.fn(y_true, y_score, **kwargs))

    def better(self, new: float, old: float | None) -> bool:
        if old is None or (isinstance(old, float) and math.isnan(old)):
            return not math.isnan(new)
        return new > old if self.greater_is_better else new < old

    @property
    def for_regression(self) -> bool:
        """Whether the name says it scores numbers (mean_squared_error, r2, rmse, ...)."""
        return self.name.startswith(_REGRESSION_PREFIXES) or self.name in ("rmse", "mae")


def _squeeze(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    return values[:, 0] if values.ndim == 2 and values.shape[1] == 1 else values


def _parameters(fn: Callable) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def _name_of(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def resolve_metric(metric: str | Callable | Metric) -> Metric:
    """"accuracy", a Kaggle favourite (quadratic_weighted_kappa / qwk, log_loss, f1_macro, f1_micro, rmse, mae,
    auc), an sklearn.metrics function name, an sklearn scorer name ("roc_auc", "neg_log_loss"), a `Metric`, or
    a callable fn(y_true, y_pred_labels_or_values)."""
    if isinstance(metric, Metric):
        return metric
    if callable(metric):
        return Metric(name=_name_of(metric), fn=metric)
    name = str(metric)
    if name == "accuracy":
        return Metric("accuracy", skm.accuracy_score)
    if name in _FAVOURITES:
        fn, proba, greater = _FAVOURITES[name]
        return Metric(name, fn, needs_proba=proba, greater_is_better=greater)
    fn = getattr(skm, name, None)
    if callable(fn) and not name.startswith("_") and name not in ("get_scorer", "make_scorer", "check_scoring"):
        lower_better = name.endswith(("_loss", "_error", "_deviance"))
        return Metric(name, fn, needs_proba=name in _PROBA_FUNCS, greater_is_better=not lower_better)
    try:
        scorer = skm.get_scorer(name)
    except ValueError as e:
        known = ["accuracy", *_FAVOURITES, *skm.get_scorer_names()]
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        raise ValueError(
            f"unknown metric {name!r}{f'; did you mean {close}?' if close else ''} Use 'accuracy', a Kaggle favourite "
            f"({', '.join(_FAVOURITES)}), an sklearn scorer name (sklearn.metrics.get_scorer_names()), an "
            "sklearn.metrics function name, or a callable"
        ) from e
    response = getattr(scorer, "_response_method", "predict")
    return Metric(
        name, scorer._score_func, needs_proba=response != "predict", sign=float(scorer._sign),
        kwargs=dict(scorer._kwargs),
    )


def check_metric(metric: str | Callable | Metric, task: str, outputs: int) -> Metric:
    """The metric, once it has scored a tiny fake prediction of `task`'s shape (`outputs` model outputs); a metric
    that does not fit is refused by name with the fitting ones suggested."""
    resolved = resolve_metric(metric)
    if task != "regression" and resolved.for_regression:
        raise ValueError(f"metric {resolved.name!r} scores numbers, but this is a {task} task: use "
                         f"{_SUGGEST[task]}, or task='regression' if the labels are numbers to predict")
    y, pred = fake_prediction(task, outputs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = resolved(y, pred, task)
    except Exception as e:  # noqa: BLE001 - any failure of a user's metric on a well-formed prediction means "does not fit"
        raise ValueError(
            f"metric {resolved.name!r} does not fit a {task} task with {outputs} output(s): on a prediction of that "
            f"shape it fails with {type(e).__name__}: {str(e).strip()[:300]}. Use {_SUGGEST[task]}"
        ) from e
    if not isinstance(value, float) or math.isnan(value):
        raise ValueError(f"metric {resolved.name!r} gives {value!r} on a {task} prediction; use {_SUGGEST[task]}")
    return resolved


def fake_prediction(task: str, outputs: int) -> tuple[np.ndarray, np.ndarray]:
    """A small, well-formed (targets, outputs) pair of `task`'s shape: every class and label present."""
    rng = np.random.default_rng(0)
    n = max(4 * outputs, 12)
    if task == "regression":
        return rng.normal(size=(n, outputs)).astype(np.float32), rng.normal(size=(n, outputs)).astype(np.float32)
    if task == "multilabel":
        y = (np.arange(n)[:, None] + np.arange(outputs)[None, :]) % 2
        return y.astype(np.float32), rng.uniform(size=(n, outputs)).astype(np.float32)
    y = np.arange(n) % outputs
    probs = rng.dirichlet(np.ones(outputs), size=n).astype(np.float64)
    return y, probs
