"""`kaggle-tli bench data`: the input-pipeline table, on a grid small enough for the test suite (about 2 s)."""

from __future__ import annotations

import pandas as pd
import pytest

from kaggle_tli.cli import main


def test_bench_data_writes_the_table_with_the_decode_limit_and_the_cache(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["bench", "data", "--formats", "jpg", "png", "--sizes", "96", "--train-sizes", "32", "--workers", "0",
            "--images", "32", "--batch-size", "4", "--out", str(out), "--work-dir", str(tmp_path)]
    assert main(argv) == 0
    table = pd.read_csv(out / "data.csv")
    assert len(table) == 4 and set(table["cache"]) == {"no", "resized"} and set(table["format"]) == {"jpg", "png"}
    assert (table["images_per_s"] > 0).all() and (table["decode_limit"] > 0).all(), table
    plain = table[table["cache"] == "no"]
    assert (plain["of_limit"] - plain["images_per_s"] / plain["decode_limit"]).abs().max() < 1e-9
    assert "| format |" in (out / "data.md").read_text() and "| jpg |" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "the temporary images are removed"


def test_bench_data_refuses_too_few_images(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "data", "--images", "8"])
    assert "--images 8: need at least" in capsys.readouterr().err
