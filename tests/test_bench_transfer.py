"""The `transfer` benchmark on tiny timm models: files written, table shape, matrix properties, CLI errors.

Budget: under 30 s on 2 cores (tiny models, one timed call per pair). Speed itself is not asserted here: it is
what the benchmark measures, on a machine that is not shared with a test suite.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from kaggle_tli.bench import rivals
from kaggle_tli.bench import similarity as fig7
from kaggle_tli.bench import transfer as bench
from kaggle_tli.bench.methods import METHODS as INITS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PAIRS = [("resnet18", "resnet34"), ("test_resnet", "test_efficientnet")]
TINY = ["mobilenetv3_small_050", "lcnet_050", "test_efficientnet"]


def same_name(student, teacher):
    """A stand-in baseline where iatransfer is not installed: copy the tensors whose name and shape agree."""
    return INITS["same_name"].init(student, teacher)


@pytest.fixture(scope="module")
def pairs_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs")
    threads_before = torch.get_num_threads()
    frame = bench.run_pairs(PAIRS, repeats=1, threads=1, out_dir=out, num_classes=10, progress=False,
                            baseline=same_name)
    return frame, out, threads_before


def test_run_pairs_table(pairs_run):
    frame, _, _ = pairs_run
    assert list(frame.columns) == list(bench.PAIR_COLUMNS), f"columns changed: {list(frame.columns)}"
    assert list(zip(frame["teacher"], frame["student"], strict=True)) == PAIRS, "one row per pair, in order"
    assert frame["coverage"].between(0.0, 1.0).all(), f"coverage outside [0, 1]: {frame['coverage'].tolist()}"
    assert frame["tli_score"].between(0.0, 1.0).all(), f"TLI score outside [0, 1]: {frame['tli_score'].tolist()}"
    assert (frame["seconds"] > 0).all() and (frame["seconds_min"] <= frame["seconds_max"]).all()
    counts = frame[[f"n_{m}" for m in bench.METHODS]].sum(axis=1)
    assert (counts == frame["n_tensors"]).all(), "a report method the benchmark does not count: update METHODS"


def test_run_pairs_baseline_columns(pairs_run):
    frame, _, _ = pairs_run
    ref = frame.iloc[0]
    assert ref["iat_seconds"] > 0, "the baseline is timed in the same run"
    assert math.isclose(ref["speedup"], ref["iat_seconds"] / ref["seconds"]), "speedup = baseline s / ours"
    # by name, resnet34 takes resnet18's stem, head and first blocks of each stage; its extra blocks stay at init
    student = bench.create_model("resnet34", 10)
    teacher_state = bench.create_model("resnet18", 10).state_dict()
    by_name = sum(p.numel() for k, p in student.named_parameters()
                  if k in teacher_state and teacher_state[k].shape == p.shape)
    total = sum(p.numel() for p in student.parameters())
    assert ref["iat_coverage"] == pytest.approx(by_name / total), "the probe counts exactly what the baseline set"
    assert frame["blended"].between(0.0, 1.0).all() and (frame["coverage"] + frame["blended"] <= 1 + 1e-9).all()
    assert frame["prev_seconds"].isna().all() and frame["prev_ratio"].isna().all(), "no earlier engine: NaN"


def test_run_pairs_without_a_baseline_leaves_its_columns_empty():
    frame = bench.run_pairs(PAIRS[1:], repeats=1, threads=1, num_classes=10, progress=False, baseline=None)
    assert frame.iloc[0][["iat_seconds", "iat_coverage", "speedup"]].isna().all(), "no baseline: NaN, not 0"


def test_previous_engine_folder_without_a_package_is_refused(tmp_path):
    with pytest.raises(ValueError, match="git archive"):
        rivals.EngineProcess(tmp_path, threads=1)


def test_run_pairs_files_and_threads(pairs_run):
    _, out, threads_before = pairs_run
    for name in ("transfer.csv", "transfer.md", "transfer.png"):
        assert (out / name).stat().st_size > 0, f"{name} missing or empty"
    assert (out / "transfer.png").read_bytes()[:8] == PNG_MAGIC, "transfer.png is not a PNG"
    assert list(pd.read_csv(out / "transfer.csv").columns) == list(bench.PAIR_COLUMNS), "CSV keeps every column"
    md = (out / "transfer.md").read_text()
    assert "| resnet18 -> resnet34 | " in md and "Baseline columns (iatransfer s, iatransfer cov.): same_name" in md
    assert "nan" not in md, "a missing figure must print as a blank cell"
    assert torch.get_num_threads() == threads_before, "run_pairs must restore torch's thread count"


def test_run_similarity(tmp_path):
    matrix = fig7.run_similarity(TINY, out_dir=tmp_path, num_classes=10, progress=False)
    values = matrix.to_numpy()
    assert sorted(matrix.index) == sorted(TINY) and list(matrix.index) == list(matrix.columns), "labels"
    np.testing.assert_allclose(values, values.T, err_msg="similarity matrix must be symmetric")
    np.testing.assert_array_equal(np.diag(values), 1.0, err_msg="a model scores exactly 1 with itself")
    assert ((values >= 0) & (values <= 1)).all(), "scores outside [0, 1]"
    assert matrix.attrs["seconds"] > 0, "the timed part must be recorded"
    assert (tmp_path / "similarity.png").read_bytes()[:8] == PNG_MAGIC, "heatmap not written"
    csv = pd.read_csv(tmp_path / "similarity.csv", index_col="model")
    np.testing.assert_allclose(csv.to_numpy(), values, err_msg="CSV must hold the matrix in the same order")


def test_cluster_order_groups_families():
    # two families interleaved (a1 b1 a2 b2): clustering must put each family's members side by side
    names = ["a1", "b1", "a2", "b2"]
    s = np.array([[1.0, 0.1, 0.9, 0.2], [0.1, 1.0, 0.2, 0.8], [0.9, 0.2, 1.0, 0.1], [0.2, 0.8, 0.1, 1.0]])
    order = [names[i] for i in fig7.cluster_order(pd.DataFrame(s, index=names, columns=names))]
    assert order[0][0] == order[1][0] and order[2][0] == order[3][0], f"families not side by side: {order}"


def test_main_writes_all_files(tmp_path, capsys):
    rc = bench.main(["--out", str(tmp_path), "--pairs", "test_resnet:test_efficientnet", "--models", *TINY,
                     "--repeats", "1", "--threads", "1"])
    assert rc == 0
    for name in ("transfer.csv", "transfer.md", "transfer.png", "similarity.csv", "similarity.png"):
        assert (tmp_path / name).is_file(), f"main did not write {name}"
    printed = capsys.readouterr().out
    assert "| test_resnet -> test_efficientnet |" in printed and "similarity matrix: 3 models" in printed


@pytest.mark.parametrize("argv, needle", [
    (["--pairs", "resnet18-resnet34"], "TEACHER:STUDENT"),
    (["--pairs", "resnet18:resnet35"], "resnet35"),
    (["--models", "mnasnet_100"], "at least 2"),
    (["--repeats", "0"], "repeats"),
])
def test_main_rejects_bad_input_before_building(argv, needle, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        bench.main(["--out", str(tmp_path), *argv])
    assert e.value.code == 2, "argparse-style usage error expected"
    assert needle in capsys.readouterr().err, f"the error must name {needle!r}"
    assert not any(tmp_path.iterdir()), "nothing may be written when the input is bad"


def test_run_pairs_errors():
    with pytest.raises(ValueError, match="resnet35"):
        bench.run_pairs([("resnet18", "resnet35")], progress=False)
    with pytest.raises(ValueError, match=r"\(teacher, student\)"):
        bench.run_pairs(["resnet18"], progress=False)
    with pytest.raises(ValueError, match="repeats"):
        bench.run_pairs([("test_resnet", "test_efficientnet")], repeats=0, progress=False)
