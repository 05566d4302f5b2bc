"""The training benchmarks run end to end on a tiny Kaggle-shaped folder (the real runs live in docs/benchmarks.md)."""

import math

import pandas as pd
import pytest
import torch

from kaggle_tli.bench import convergence as cv
from kaggle_tli.bench import norm, teachers


@pytest.fixture(scope="module")
def data(make_image_competition, tmp_path_factory):
    torch.set_num_threads(1)
    root = make_image_competition(tmp_path_factory.mktemp("comp"), digits=(0, 1, 2), per_class=20)
    return cv.load_folder(root, n_valid=15)


def test_folder_loads_as_three_channel_tensors(data):
    assert data.x_train.shape[1:] == (3, 32, 32) and len(data.x_valid) == 12, "a fifth of 60 images held out"
    assert data.num_classes == 3 and set(data.y_train.tolist()) <= {0, 1, 2}
    first = [y.tolist() for _, y in data.batches(3, 8, seed=1)]
    assert first == [y.tolist() for _, y in data.batches(3, 8, seed=1)], "same seed, same batches for every method"


def test_convergence_run_summary_and_plot(data, tmp_path):
    students = (cv.Student("tiny", "mobilenetv3_small_050", teacher="resnet10t", methods=("kaiming", "tli",
                                                                                          "same_name")),)
    cfg = cv.Config(steps=4, teacher_steps=4, seeds=(0,), students=students, eval_every=2, threads=1, cache=None)
    curves, teacher_frame = cv.run(data, cfg)
    assert set(curves["method"]) == {"kaiming", "tli", "same_name"} and list(teacher_frame["teacher"]) == ["resnet10t"]
    assert sorted(set(curves["step"])) == [0, 2, 4], "evaluated from step 0"
    table = cv.summarise(curves)
    assert {"acc_step0", "acc_final", "steps_to_kaiming_final"} <= set(table.columns)
    tli = table[table.method == "tli"].iloc[0]
    assert 0 < tli["coverage"] <= 1
    assert cv.steps_to_reach(pd.DataFrame({"step": [0, 2], "accuracy": [0.1, 0.2]}), 0.9) == math.inf
    assert cv.plot(curves, tmp_path / "c.png").stat().st_size > 10_000


def test_norm_chain_and_teachers_correlation(data, tmp_path):
    curves = norm.run_chain(data, steps=2, seeds=(0,), eval_every=2, threads=1,
                            chain=("mobilenetv3_small_050", "mobilenetv3_small_075"))
    assert set(curves["variant"]) == set(norm.VARIANTS) and set(curves["stage"]) == {0, 1}
    assert len(norm.summarise(curves)) == 2 * len(norm.VARIANTS)
    norm.plot(curves, tmp_path / "n.png")

    frames = teachers.run(data, student="mobilenetv3_small_050", teachers=("resnet10t", "mobilenetv3_small_075",
                                                                            "mnasnet_050"),
                          teacher_steps=2, steps=2, seeds=(0,), eval_every=2, threads=1, cache=tmp_path)
    table, rho, _ = teachers.summarise(frames)
    assert len(table) == 4 and table["tli_score"].notna().sum() == 3, "three teachers and the Kaiming row"
    assert -1 <= rho <= 1
    assert list(tmp_path.glob("teacher-*.safetensors")), "teachers are cached for the next run"
