"""Blending runs: prediction frames averaged on id, weights fitted on common OOF rows, predict and the CLI.

Budget: about 10 s on 2 cores. Two resnet10t runs at 32 px on the digits competition, a few steps each, shared by
the module.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kaggle_tli.cli import main
from kaggle_tli.data import DataError, ImageCsvData
from kaggle_tli.ledger import Ledger
from kaggle_tli.stages import finetune, predict
from kaggle_tli.stages.blend import blend_frames, common_oof, fit_weights, normalise_weights

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def two_runs(image_competition, tmp_path_factory):
    """Two runs on the same folds (fold 0 validates the same 12 rows), unlike enough to blend."""
    data = ImageCsvData(image_competition, image_size=32)
    runs = tmp_path_factory.mktemp("blend_runs")
    a = finetune("resnet10t", data, runs=runs, epochs=1, max_steps=3, batch_size=16, lr=3e-3, seed=1,
                 progress=False)
    b = finetune("resnet10t", data, runs=runs, epochs=1, max_steps=2, batch_size=16, lr=1e-3, seed=2,
                 progress=False)
    return a, b, runs


def _frame(ids, values) -> pd.DataFrame:
    return pd.DataFrame({"id": ids, "prob_a": values[:, 0], "prob_b": values[:, 1]})


def test_blend_frames_aligns_on_id_and_weighs():
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    q = np.array([[0.1, 0.9], [0.6, 0.4], [0.3, 0.7]])
    first = _frame(["x", "y", "z"], p)
    shuffled = _frame(["z", "x", "y"], q[[2, 0, 1]])  # the same predictions, listed in another order
    out = blend_frames([first, shuffled], [3, 1])
    assert out["id"].tolist() == ["x", "y", "z"], "the first frame's order"
    np.testing.assert_allclose(out[["prob_a", "prob_b"]].to_numpy(), 0.75 * p + 0.25 * q)
    with pytest.raises(DataError, match="same classes or targets"):
        blend_frames([first, first.rename(columns={"prob_b": "prob_c"})])
    with pytest.raises(DataError, match="other ids"):
        blend_frames([first, _frame(["x", "y", "w"], q)])


@pytest.mark.parametrize("bad", [[1.0], [1.0, -1.0], [0, 0], [1.0, float("nan")], "0.5,x"])
def test_bad_weights_are_refused_with_the_forms_that_work(bad):
    with pytest.raises(ValueError, match="weights='fit'"):
        normalise_weights(bad, 2)
    np.testing.assert_allclose(normalise_weights("3,1", 2), [0.75, 0.25])


@pytest.mark.parametrize("metric", ["accuracy", "log_loss"])
def test_fitted_weights_score_at_least_the_better_run_on_common_oof_rows(two_runs, metric):
    a, b, _ = two_runs
    fit = fit_weights([a, b], metric=metric)
    better = max(fit.run_scores) if metric == "accuracy" else min(fit.run_scores)
    assert fit.fitted and fit.rows == 12 and abs(sum(fit.weights) - 1) < 1e-9
    assert (fit.score >= better) if metric == "accuracy" else (fit.score <= better), (fit.score, fit.run_scores)
    aligned, labels = common_oof([a, b])
    cols = [c for c in aligned[0] if c.startswith("prob_")]
    blended = sum(w * t[cols].to_numpy() for w, t in zip(fit.weights, aligned, strict=True))
    lookup = {c: i for i, c in enumerate(a.class_names)}
    y = np.array([lookup[v] for v in labels])
    from kaggle_tli.train import resolve_metric

    assert resolve_metric(metric)(y, blended) == pytest.approx(fit.score), "the reported score is the blend's"


def test_predict_blends_runs_writes_a_submission_and_a_ledger_row(two_runs, image_competition):
    a, b, runs = two_runs
    submission = predict([a, b], weights="fit")
    sample = pd.read_csv(image_competition / "sample_submission.csv", dtype=str)
    assert list(submission.columns) == list(sample.columns) and submission["id"].tolist() == sample["id"].tolist()
    row = next(r for r in Ledger(runs).rows() if r["stage"] == "blend")
    assert row["parent_run_id"] == a.id and a.id in row["notes"] and b.id in row["notes"] and row["cv"] is not None
    folder = runs / row["run_id"]
    assert (folder / "submission.csv").is_file() and (folder / "blend.json").is_file()
    probs = pd.read_csv(folder / "predictions.csv")
    cols = [c for c in probs if c.startswith("prob_")]
    np.testing.assert_allclose(probs[cols].sum(axis=1), 1.0, atol=1e-5, err_msg="a blend of probabilities")


def test_cli_predict_blends_with_given_weights(two_runs, tmp_path, capsys):
    a, b, runs = two_runs
    out = tmp_path / "sub.csv"
    assert main(["predict", str(a.path), str(b.path), "--weights", "0.7,0.3", "-o", str(out)]) == 0
    assert out.is_file() and "blend of 2 runs" in capsys.readouterr().out
    notes = [r["notes"] for r in Ledger(runs).rows() if r["stage"] == "blend"]
    assert any("given weights" in n and "x0.700" in n for n in notes), notes
    assert main(["predict", str(a.path), "--weights", "fit"]) == 2
    assert "blends several runs" in capsys.readouterr().err
    assert main(["ledger", "--runs", str(runs), "--plot", str(tmp_path / "lineage.png")]) == 0
    assert " blend " in capsys.readouterr().out and (tmp_path / "lineage.png").is_file(), "blend rows list and plot"
