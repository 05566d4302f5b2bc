"""Every task shape from the data to a submission: inference of the task, bad input refused before anything is
written, metrics checked on a fake prediction, training, oof.csv, predict, the ledger, iterate across shapes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from shape_competitions import SHAPES, write_shape_competition

from kaggle_tli.cli import main
from kaggle_tli.data import ClassFolderData, DataError, ImageCsvData, open_competition
from kaggle_tli.ledger import Ledger
from kaggle_tli.stages import finetune, iterate, predict, run_predictions, tta_views
from kaggle_tli.train import TrainConfig
from kaggle_tli.train.loop import _mix, make_mixup
from kaggle_tli.train.metrics import check_metric, fake_prediction

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: torch on one thread for this module

TINY = dict(epochs=1, batch_size=16, max_steps=2, progress=False)
EXPECTED = {"binary": "binary", "multilabel": "multilabel", "tags": "multilabel", "regression": "regression",
            "integer": "single_label", "folders": "single_label"}
METRIC = {"binary": "roc_auc", "multilabel": "roc_auc", "tags": "roc_auc", "regression": "root_mean_squared_error",
          "folders": "accuracy"}


@pytest.fixture(scope="module")
def comps(tmp_path_factory):
    """shape -> a read-only competition folder of that shape (written on first use)."""
    made: dict = {}

    def get(shape: str):
        if shape not in made:
            made[shape] = write_shape_competition(tmp_path_factory.mktemp(shape), shape)
        return made[shape]

    return get


@pytest.fixture(scope="module")
def trained(comps, tmp_path_factory):
    """shape -> (run, data, submission) trained and predicted through the API, all in one runs folder."""
    runs = tmp_path_factory.mktemp("runs")
    out = {}
    for shape in ("binary", "multilabel", "tags", "regression", "folders"):
        data = open_competition(comps(shape), image_size=32, folds=2)
        run = finetune("resnet10t", data, runs=runs, **TINY)
        out[shape] = (run, data, predict(run, out=runs / f"{shape}.csv"))
    return out, runs


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------------ inferring the task


@pytest.mark.parametrize("shape", SHAPES)
def test_the_task_is_inferred_from_the_tables(comps, shape):
    data = open_competition(comps(shape), image_size=32, folds=2)
    assert data.task == EXPECTED[shape], data.describe_task()
    assert "task=" in data.describe_task(), "the printed line says how to override the guess"
    if shape == "tags":
        assert data.class_names == ["big", "even", "loop", "odd"] and data.targets.shape == (80, 4)
        assert (data.targets.sum(axis=1) >= 1).all(), "every row has its tags as 0/1 labels"
    if shape == "multilabel":
        assert data.class_names == ["even", "big", "loop"] and set(np.unique(data.targets)) == {0.0, 1.0}
    if shape == "integer":
        assert data.class_names == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90], "integer labels stay classes"
    if shape == "folders":
        assert isinstance(data, ClassFolderData) and data.frame["id"].iloc[0].count("/") == 1
    counts = data.frame["fold"].value_counts()
    assert len(counts) == 2 and counts.min() >= 35, f"folds are balanced for every shape: {counts.to_dict()}"


def test_task_and_label_cols_override_the_guess(comps):
    assert ImageCsvData(comps("integer"), image_size=32, folds=2, task="regression").task == "regression"
    assert ImageCsvData(comps("binary"), image_size=32, folds=2, task="single_label").task == "single_label"
    data = ImageCsvData(comps("multilabel"), image_size=32, folds=2, label_cols=["even", "loop"],
                        sample_submission=None)
    assert data.task == "multilabel" and data.class_names == ["even", "loop"]
    with pytest.raises(DataError, match="did you mean 'multilabel'"):
        ImageCsvData(comps("binary"), image_size=32, task="multi-label")


def test_regression_folds_stratify_on_binned_targets(comps):
    data = ImageCsvData(comps("regression"), image_size=32, folds=2)
    by_fold = data.frame.assign(value=data.targets[:, 0]).groupby("fold")["value"].mean()
    assert abs(by_fold[0] - by_fold[1]) < 5, f"binned stratification balances the target: {by_fold.to_dict()}"


# ------------------------------------------------------------------------------------ bad input


def _edit(src, dst, name, column, rows, value, *, rename=None):
    """A copy of competition `src` whose table `name` has `value` in `column` on `rows` (or renamed columns)."""
    root = _copy(src, dst)
    table = pd.read_csv(root / name, dtype=str, keep_default_na=False)
    if rename:
        table = table.rename(columns=rename)
    else:
        table.loc[list(rows), column] = value
    table.to_csv(root / name, index=False)
    return root


@pytest.mark.parametrize("shape, name, column, rows, value, options, pattern", [
    ("multilabel", "sample_submission.csv", None, (), None, {}, "match no target"),
    ("regression", "train.csv", "value", (3, 7), "", {}, r"no 'value' value, on CSV lines 5, 9"),
    ("regression", "train.csv", "value", (4,), "n/a!", {"task": "regression"}, r"CSV line 6 .*'n/a!'.*not numbers"),
    ("multilabel", "train.csv", "big", (0,), "2", {}, r"multi-label column 'big' is not 0/1 on CSV line 2 "),
    ("multilabel", "train.csv", "big", (0,), "2", {"task": "multilabel"}, r"'big' is not 0/1"),
])
def test_bad_input_is_refused_by_name_before_anything_is_written(comps, tmp_path, shape, name, column, rows, value,
                                                                  options, pattern):
    rename = {"even": "cat", "big": "dog"} if column is None else None
    root = _edit(comps(shape), tmp_path / "c", name, column, rows, value, rename=rename)
    with pytest.raises(DataError, match=pattern):
        finetune("resnet10t", ImageCsvData(root, image_size=32, folds=2, **options), runs=root / "runs", **TINY)
    assert not (root / "runs").exists(), "nothing is written"


def test_a_label_asked_for_but_never_trained_and_an_empty_class_folder(comps, tmp_path):
    root = _copy(comps("integer"), tmp_path / "asked")
    train = pd.read_csv(root / "train.csv", dtype=str)
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    probs = pd.DataFrame({"id": sample["id"], **{c: 0.1 for c in [*sorted(set(train["score"])), "999"]}})
    probs.to_csv(root / "sample_submission.csv", index=False)
    with pytest.raises(DataError, match=r"asks for label\(s\) '999' that 'train.csv' never has"):
        ImageCsvData(root, image_size=32, folds=2, label_col="score")
    root = _copy(comps("folders"), tmp_path / "folders")
    (root / "train" / "ten").mkdir()
    with pytest.raises(DataError, match=r"class folder .*ten' has no images"):
        open_competition(root, image_size=32, folds=2)


def test_ids_with_a_class_sub_folder_find_their_images(comps, tmp_path):
    root = _copy(comps("folders"), tmp_path / "bag")
    ids = sorted(f"{p.parent.name}/{p.name}" for p in (root / "train").glob("*/*.png"))
    pd.DataFrame({"id": ids, "label": [i.split("/")[0] for i in ids]}).to_csv(root / "train.csv", index=False)
    data = ImageCsvData(root, image_size=32, folds=2)
    assert len(data) == 80 and data.frame["path"].iloc[0].endswith(ids[0]), "ids like bag/00023.jpg are paths"


@pytest.mark.parametrize("task, outputs, metric, fits", [
    ("regression", 1, "accuracy", False), ("single_label", 10, "f1_score", False),
    ("single_label", 10, "roc_auc_score", False), ("single_label", 10, "mean_squared_error", False),
    ("single_label", 10, "quadratic_weighted_kappa", True), ("single_label", 10, "log_loss", True),
    ("binary", 2, "roc_auc", True), ("multilabel", 3, "f1_micro", True), ("multilabel", 3, "f1_score", False),
    ("multilabel", 3, "roc_auc", True), ("regression", 2, "rmse", True), ("regression", 1, "qwk", True),
])
def test_a_metric_is_tried_on_a_fake_prediction_of_the_task(task, outputs, metric, fits):
    if fits:
        assert np.isfinite(check_metric(metric, task, outputs)(*fake_prediction(task, outputs), task))
    else:
        with pytest.raises(ValueError, match=rf"{metric}.*(does not fit|scores numbers).*Use|use"):
            check_metric(metric, task, outputs)


def test_a_label_missing_from_a_validation_fold_is_left_out_of_the_mean_auc():
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    probs = np.array([[0.9, 0.2, 0.5], [0.1, 0.8, 0.5], [0.7, 0.6, 0.5], [0.2, 0.1, 0.5]])
    auc = check_metric("roc_auc", "multilabel", 3)(y, probs, "multilabel")
    assert auc == pytest.approx(1.0), "the third label, never positive here, has no AUC and is left out"
    assert np.isnan(check_metric("roc_auc", "multilabel", 3)(y[:, 2:], probs[:, 2:], "multilabel"))


def test_a_metric_that_does_not_fit_stops_finetune_before_a_run_exists(comps, tmp_path):
    data = ImageCsvData(comps("regression"), image_size=32, folds=2)
    with pytest.raises(ValueError, match="'accuracy' does not fit a regression task.*root_mean_squared_error"):
        finetune("resnet10t", data, runs=tmp_path / "runs", metric="accuracy", **TINY)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# ------------------------------------------------------------------------------------ training and submissions


def test_every_shape_trains_and_submits_what_the_sample_asks(trained, comps):
    out, runs = trained
    for shape, (run, data, sub) in out.items():
        sample = pd.read_csv(comps(shape) / "sample_submission.csv", dtype=str)
        assert list(sub.columns) == list(sample.columns), shape
        assert sub.iloc[:, 0].astype(str).tolist() == sample.iloc[:, 0].tolist(), f"{shape}: ids and order"
        assert run.info["task"]["name"] == data.task and run.metrics["metric"] == METRIC[shape], shape
        oof = pd.read_csv(run.path / "oof.csv")
        prefix = "pred" if data.task == "regression" else "prob"
        assert [f"{prefix}_{c}" for c in data.class_names] == [c for c in oof.columns if c.startswith(prefix + "_")]
    values = out["binary"][2]["label"].to_numpy(dtype=float)
    assert ((values > 0) & (values < 1)).all(), "a sample holding 0.5 gets the positive class's probability"
    multi = out["multilabel"][2][["even", "big", "loop"]].to_numpy(dtype=float)
    assert ((multi >= 0) & (multi <= 1)).all()
    tags = out["tags"][2]["tags"]
    assert all(t and set(t.split()) <= {"big", "even", "loop", "odd"} for t in tags), "tags at the tuned threshold"
    assert np.isfinite(out["regression"][2]["value"].to_numpy(dtype=float)).all()
    assert set(out["folders"][2]["label"]) <= set(out["folders"][1].class_names)
    rows = {r["run_id"]: r for r in Ledger(runs).rows()}
    for shape, (run, data, _) in out.items():
        row = rows[run.id]
        assert row["task"] == data.task and row["metric"] == METRIC[shape], row
        assert float(row["cv"]) == pytest.approx(run.metrics["cv"]), "the ledger's CV is the shape's metric"


def test_regression_cv_is_the_rmse_of_oof_csv(trained):
    run, data, _ = trained[0]["regression"]
    oof = pd.read_csv(run.path / "oof_last.csv", dtype={"id": str})
    truth = dict(zip(data.frame["id"], data.targets[:, 0], strict=True))
    rmse = float(np.sqrt(np.mean((oof["pred_value"] - oof["id"].map(truth)) ** 2)))
    assert run.metrics["cv"] == pytest.approx(rmse, rel=1e-5), "the CV is computed on values, never class indices"


def test_run_predictions_gives_test_and_oof_outputs_for_blending(trained):
    run, data, _ = trained[0]["multilabel"]
    test = run_predictions(run, tta="all")
    assert list(test.columns) == ["id", "even", "big", "loop"] and len(test) == len(data.test_ids)
    oof = run_predictions(run, split="oof")
    assert list(oof.columns) == ["id", "fold", "even", "big", "loop"] and len(oof) == len(data.fold_indices(0)[1])
    assert tta_views(True, hflip_allowed=False) == [] and tta_views("all") == ["hflip", "vflip", "hvflip"]
    with pytest.raises(ValueError, match="unknown view"):
        tta_views(["rot90"])


def test_integer_targets_are_a_regression_when_the_metric_says_so(comps, tmp_path, capsys):
    data = ImageCsvData(comps("integer"), image_size=32, folds=2)
    run = finetune("resnet10t", data, runs=tmp_path / "runs", metric="rmse", **TINY)
    assert run.info["task"]["name"] == "regression" and run.num_classes == 1
    assert "metric='rmse' scores numbers" in capsys.readouterr().out, "the printed task line says why"
    sub = predict(run, out=tmp_path / "sub.csv")
    assert sub["score"].dtype.kind == "f", "values, not class names"


def test_mixup_and_cutmix_for_class_shapes_and_refused_for_regression(comps, tmp_path):
    data = ImageCsvData(comps("multilabel"), image_size=32, folds=2)
    run = finetune("resnet10t", data, runs=tmp_path / "runs", mixup=0.4, cutmix=1.0, **TINY)
    assert run.info["status"] == "done" and np.isfinite(run.metrics["cv"])
    regression = ImageCsvData(comps("regression"), image_size=32, folds=2)
    with pytest.raises(ValueError, match="regression task has none"):
        finetune("resnet10t", regression, runs=tmp_path / "runs", mixup=0.4, **TINY)


def test_multilabel_mixup_mixes_label_rows_with_the_weights_of_the_images():
    # the loop's own mixing step, tried on a batch whose images say how much of each went in
    for mode in ("batch", "elem"):  # one weight per batch, or one per image
        mixup = make_mixup(TrainConfig(mixup=0.4), "multilabel", 3)
        mixup.mode = mode
        x = torch.arange(4, dtype=torch.float32)[:, None, None, None].expand(4, 3, 2, 2).clone()
        y = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=torch.float32)
        plain = x[:, 0, 0, 0].clone()
        mixed_x, mixed_y = _mix(mixup, "multilabel", x, y)
        lam = (mixed_x[:, 0, 0, 0] - plain.flip(0)) / (plain - plain.flip(0))
        assert torch.allclose(mixed_y, lam[:, None] * y + (1 - lam[:, None]) * y.flip(0), atol=1e-5), mode


def test_the_cli_trains_and_predicts_every_shape_option(comps, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["finetune", "resnet10t", "--data", str(comps("multilabel")), "--image-size", "32", "--folds", "2",
                 "--task", "multilabel", "--label-cols", "even,big,loop", "--runs", str(runs), "--max-steps", "2",
                 "--batch-size", "16", "--set", "progress=false"]) == 0
    assert "task multilabel (3 labels" in capsys.readouterr().out
    run_dir = next(p for p in runs.iterdir() if p.is_dir())
    assert json.loads((run_dir / "run.json").read_text())["task"]["name"] == "multilabel"
    assert main(["predict", str(run_dir), "--tta", "hflip,vflip", "-o", str(tmp_path / "sub.csv")]) == 0
    sub = pd.read_csv(tmp_path / "sub.csv", dtype={"id": str})
    sample = pd.read_csv(comps("multilabel") / "sample_submission.csv", dtype={"id": str})
    assert list(sub.columns) == list(sample.columns) and sub["id"].tolist() == sample["id"].tolist()


def test_the_cli_predicts_every_shape_like_the_api(trained, tmp_path):
    for shape, (run, _, api) in trained[0].items():
        out = tmp_path / f"{shape}.csv"
        assert main(["predict", str(run.path), "-o", str(out)]) == 0
        cli = pd.read_csv(out, dtype=str, keep_default_na=False)
        assert cli.equals(pd.read_csv(trained[1] / f"{shape}.csv", dtype=str, keep_default_na=False)), shape
        assert list(cli.columns) == [str(c) for c in api.columns], shape


# ------------------------------------------------------------------------------------ TLI across task shapes


def test_iterate_onto_another_shape_starts_the_head_at_init_and_says_so(trained, comps, capsys):
    run, _, _ = trained[0]["binary"]
    data = ImageCsvData(comps("regression"), image_size=32, folds=2)
    capsys.readouterr()
    child = iterate(run, "resnet10t", data, **TINY)
    said = capsys.readouterr().out
    assert "predicts binary" in said and "this data is regression" in said and "classifier starts" in said, said
    assert child.info["task"]["name"] == "regression" and child.metrics["metric"] == "root_mean_squared_error"
    assert child.info["extra"]["head"].startswith(f"run {run.id!r}"), "run.json records what became of the head"


@pytest.mark.parametrize("shape", ["multilabel", "regression"])
def test_a_same_shape_student_keeps_the_teachers_function(trained, shape):
    run, _, _ = trained[0][shape]
    child = iterate(run, "resnet10t", recalibrate=False, eval_at_start=True, **TINY)
    fold = str(run.primary_fold)
    assert child.metrics["start_metric"][fold] == pytest.approx(run.info["folds"][fold]["last_metric"], abs=1e-6), \
        "same architecture, same targets: the student predicts exactly what the teacher did"
