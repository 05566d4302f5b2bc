"""The run ledger: format, validation, concurrency, crashes, damage, schema, lineage, import, plot.

Budget: about 10 s on 2 CPU cores (the two subprocess tests take most of it).
"""

from __future__ import annotations

import csv
import io
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

import kaggle_tli
from kaggle_tli.ledger import (
    LEDGER_COLUMNS,
    SCHEMA_VERSION,
    Ledger,
    LedgerError,
    LedgerSchemaError,
    LedgerWarning,
)

pytestmark = pytest.mark.timeout(120)  # the whole file runs in a few seconds; subprocesses must not hang it

REPO = Path(kaggle_tli.__file__).resolve().parent.parent
FILE_COLUMNS = [*LEDGER_COLUMNS, "schema"]


def _run_python(code: str, *args: str) -> subprocess.Popen:
    """A child interpreter that imports this checkout of kaggle_tli."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _read_strict(path: Path) -> Ledger:
    """A ledger whose reading must not warn: any LedgerWarning fails the test."""
    ledger = Ledger(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LedgerWarning)
        ledger.rows()
    assert ledger.problems == [], f"unexpected problems: {ledger.problems}"
    return ledger


def _chain(ledger: Ledger, *run_ids: str) -> None:
    """Append runs, each the child of the one before."""
    parent = None
    for run_id in run_ids:
        ledger.append(
            {"run_id": run_id, "parent_run_id": parent, "stage": "resume", "arch": f"arch_{run_id}"}
        )
        parent = run_id


# ---------------------------------------------------------------------------------------- format


def test_file_is_plain_csv_with_a_schema_column(tmp_path):
    ledger = Ledger(tmp_path / "runs")  # a folder that does not exist yet
    assert ledger.path == tmp_path / "runs" / "ledger.csv", "a folder must mean <folder>/ledger.csv"
    assert not ledger.path.exists() and ledger.rows() == [], "reading a missing ledger must not create it"
    ledger.append({"run_id": "r0", "stage": "finetune", "arch": "resnet18", "cv": 0.1 + 0.2, "epochs": 3})
    ledger.append({"run_id": "r1", "parent_run_id": "r0", "notes": 'two\nlines, "quoted"'})

    lines = ledger.path.read_text().splitlines()
    assert lines[0].split(",") == FILE_COLUMNS, f"header must be LEDGER_COLUMNS + schema, got {lines[0]}"
    assert len(lines) == 3, "one physical line per row, even with a newline inside a value"

    frame = pd.read_csv(ledger.path)  # no options: plain pandas must read it
    assert list(frame.columns) == FILE_COLUMNS
    assert frame["schema"].tolist() == [SCHEMA_VERSION] * 2, "every row must carry the schema version"
    assert frame.loc[0, "cv"] == 0.1 + 0.2, "floats must round-trip exactly"

    row = ledger.get("r0")
    assert row["cv"] == 0.1 + 0.2 and row["epochs"] == 3, f"typed values expected, got {row}"
    assert row["notes"] is None and row["parent_run_id"] is None, "missing values read as None"
    assert ledger.get("r1")["notes"] == 'two lines, "quoted"'
    assert set(row) == set(LEDGER_COLUMNS), "rows are keyed by LEDGER_COLUMNS only"


def test_to_frame_dtypes(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.start("r0", stage="finetune", arch="resnet18", init="kaiming", seed=7, fold=0)
    ledger.finish("r0", cv=0.9, steps=120)
    ledger.start("r1", parent_run_id="r0", stage="resume", init="tli", tli_score=0.8)
    frame = ledger.to_frame()
    assert list(frame.columns) == list(LEDGER_COLUMNS)
    assert frame["cv"].dtype == "float64" and frame["duration_s"].dtype == "float64"
    assert str(frame["steps"].dtype) == "Int64" and str(frame["seed"].dtype) == "Int64"
    assert str(frame["fold"].dtype) == "Int64", "an all-integer fold column is an integer column"
    assert str(frame["started_at"].dtype).startswith("datetime64") and frame["started_at"].dt.tz is not None
    assert frame["finished_at"].isna().tolist() == [False, True], "the running run has no finished_at"
    assert pd.api.types.is_string_dtype(frame["arch"]), f"text columns are strings, got {frame['arch'].dtype}"
    empty = Ledger(tmp_path / "empty").to_frame()
    assert len(empty) == 0 and list(empty.columns) == list(LEDGER_COLUMNS)


# ------------------------------------------------------------------------------ append/update/get


def test_append_update_get(tmp_path):
    ledger = Ledger(tmp_path / "ledger.csv")
    ledger.append({"run_id": "r0", "stage": "finetune", "status": "running", "lb": 0.5})
    assert ledger.get("nope") is None and "r0" in ledger and len(ledger) == 1

    ledger.update("r0", status="done", cv=0.93, lb=None, checkpoint=tmp_path / "r0")
    row = ledger.get("r0")
    assert (row["status"], row["cv"], row["lb"]) == ("done", 0.93, None), f"update not applied: {row}"
    assert row["checkpoint"] == str(tmp_path / "r0"), "paths are stored as text"

    with pytest.raises(KeyError, match="ghost"):
        ledger.update("ghost", status="done")


def test_bad_rows_are_refused_before_touching_the_file(tmp_path):
    ledger = Ledger(tmp_path)
    with pytest.raises(ValueError, match=r"'colour'.*valid columns: run_id, parent_run_id"):
        ledger.append({"run_id": "r0", "colour": "red"})
    with pytest.raises(ValueError, match="stage.*finetune, inject, resume"):
        ledger.append({"run_id": "r0", "stage": "pretrain"})
    with pytest.raises(ValueError, match="'cv' takes a number"):
        ledger.append({"run_id": "r0", "cv": "high"})
    with pytest.raises(ValueError, match="'epochs' takes a whole number"):
        ledger.append({"run_id": "r0", "epochs": 2.5})
    with pytest.raises(ValueError, match="non-empty 'run_id'"):
        ledger.append({"arch": "resnet18"})
    with pytest.raises(ValueError, match="own parent"):
        ledger.append({"run_id": "r0", "parent_run_id": "r0"})
    assert not ledger.path.exists(), "a refused row must not create the ledger"

    ledger.append({"run_id": "r0"})
    before = ledger.path.read_bytes()
    with pytest.raises(ValueError, match="already in"):
        ledger.append({"run_id": "r0", "arch": "other"})
    with pytest.raises(ValueError, match="'status' must be one of"):
        ledger.update("r0", status="finished")
    assert ledger.path.read_bytes() == before, "a refused write must leave the file as it was"


def test_start_and_finish_fill_times_and_duration(tmp_path):
    ledger = Ledger(tmp_path)
    begin = datetime(2026, 11, 27, 11, 35, 1, 250000, tzinfo=timezone.utc)
    row = ledger.start("r0", stage="finetune", arch="resnet18", started_at=begin)
    assert row["status"] == "running" and row["started_at"] == "2026-11-27T11:35:01.250+00:00"

    end = begin + timedelta(minutes=2, seconds=3.5)
    row = ledger.finish("r0", finished_at=end.isoformat().replace("+00:00", "Z"), cv=0.91)
    assert row["status"] == "done" and row["cv"] == 0.91
    assert row["finished_at"] == "2026-11-27T11:37:04.750+00:00", "timestamps are stored as ISO-8601 UTC"
    assert row["duration_s"] == 123.5, f"duration from started_at expected, got {row['duration_s']}"

    ledger.start("r1")
    assert ledger.finish("r1", status="interrupted")["duration_s"] >= 0.0
    with pytest.raises(ValueError, match="status must be one of"):
        ledger.finish("r1", status="running")


# ------------------------------------------------------------------------- concurrency and crashes

_APPENDER = """
import pathlib, sys, time
from kaggle_tli.ledger import Ledger
path, tag, count, go = sys.argv[1:]
pathlib.Path(f"{go}.{tag}").touch()  # ready
while not pathlib.Path(go).exists():
    time.sleep(0.002)
ledger = Ledger(path)
began = time.time()
for i in range(int(count)):
    ledger.append({"run_id": f"{tag}-{i:03d}", "stage": "finetune", "arch": tag, "cv": i / 7,
                   "epochs": i, "notes": f"{tag}, row {i}"})
print(began, time.time())
"""


def test_two_processes_appending_200_rows_each_leave_400_intact_rows(tmp_path):
    path, go = tmp_path / "ledger.csv", tmp_path / "go"
    children = {tag: _run_python(_APPENDER, str(path), tag, "200", str(go)) for tag in ("a", "b")}
    deadline = time.time() + 30
    while not all(Path(f"{go}.{tag}").exists() for tag in children) and time.time() < deadline:
        time.sleep(0.01)
    go.touch()  # both start appending at once
    deadline = time.time() + 120
    while any(child.poll() is None for child in children.values()) and time.time() < deadline:
        _read_strict(path)  # readers take no lock and must never see a torn file
        time.sleep(0.02)
    spans = {}
    for tag, child in children.items():
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, f"appender {tag} failed:\n{err}"
        spans[tag] = [float(value) for value in out.split()]
    assert spans["a"][0] < spans["b"][1] and spans["b"][0] < spans["a"][1], f"no overlap: {spans}"

    rows = _read_strict(path).rows()
    assert len(rows) == 400, f"expected 400 rows, found {len(rows)}"
    for tag in children:
        mine = [row for row in rows if row["arch"] == tag]
        assert [row["run_id"] for row in mine] == [f"{tag}-{i:03d}" for i in range(200)], f"{tag} rows lost"
        for i, row in enumerate(mine):
            assert (row["cv"], row["epochs"], row["notes"]) == (i / 7, i, f"{tag}, row {i}"), f"torn: {row}"


_LOOPER = """
import os, pathlib, stat, sys, time
from kaggle_tli.ledger import Ledger
path, prefix, stall_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
if stall_after >= 0:
    # freeze inside the write after `stall_after` writes: new file written, not yet fsynced nor moved
    real_fsync, writes = os.fsync, [0]
    def fsync(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            writes[0] += 1
            if writes[0] > stall_after:
                pathlib.Path(path + ".stalled").touch()
                time.sleep(600)
        real_fsync(fd)
    os.fsync = fsync
ledger = Ledger(path)
i = 0
while True:  # start + finish: both an append and an update can be cut by the kill
    run_id = f"{prefix}{i:05d}"
    ledger.start(run_id, stage="resume", arch="victim", notes="x" * 4000)
    ledger.finish(run_id, cv=i / 3)
    i += 1
"""


def _kill(child: subprocess.Popen) -> None:
    os.kill(child.pid, signal.SIGKILL)
    _, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, f"the writer ended on its own:\n{err}"


def _assert_whole(path: Path) -> list[dict]:
    """Every line complete, every row as the looper wrote it; returns the rows."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), "the file must end with a whole line"
    assert all(len(fields) == len(FILE_COLUMNS) for fields in csv.reader(io.StringIO(raw.decode())))
    rows = _read_strict(path).rows()
    assert all(row["notes"] == "x" * 4000 and row["arch"] == "victim" for row in rows), "a row was cut"
    done = [row for row in rows if row["status"] == "done"]
    assert all(row["cv"] == int(row["run_id"][-5:]) / 3 for row in done), "a finished row lost its cv"
    return rows


def test_sigkill_inside_a_write_leaves_the_previous_file(tmp_path):
    path = tmp_path / "ledger.csv"
    child = _run_python(_LOOPER, str(path), "k-", "7")  # writes 1-7: three runs done, one started
    try:
        deadline = time.time() + 30
        while not Path(f"{path}.stalled").exists() and time.time() < deadline:
            time.sleep(0.01)
        pending = path.with_name("ledger.csv.tmp")
        assert pending.exists() and pending.read_bytes() != path.read_bytes(), "the writer is not mid-write"
    finally:
        _kill(child)
    rows = _assert_whole(path)
    assert [(row["run_id"], row["status"]) for row in rows] == [
        ("k-00000", "done"),
        ("k-00001", "done"),
        ("k-00002", "done"),
        ("k-00003", "running"),
    ], "a run killed before its finish() landed must stay 'running'"
    # the kernel released the dead writer's lock, and the next write replaces its leftover temp file
    Ledger(path, lock_timeout=5).finish("k-00003", status="interrupted")
    assert _read_strict(path).get("k-00003")["status"] == "interrupted"
    assert not path.with_name("ledger.csv.tmp").exists()


def test_sigkill_at_random_moments_leaves_no_torn_line(tmp_path):
    path = tmp_path / "ledger.csv"
    rng = random.Random(0)
    for round_ in range(3):
        child = _run_python(_LOOPER, str(path), f"k{round_}-", "-1")
        try:
            deadline = time.time() + 30
            while len(Ledger(path)) < 4 * (round_ + 1) and time.time() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.03))
        finally:
            _kill(child)
        rows = _assert_whole(path)
        assert len(rows) >= 4 * (round_ + 1), f"round {round_}: the writer made no progress"
        running = [row["run_id"] for row in rows if row["status"] == "running"]
        assert len(running) <= round_ + 1, f"only the killed run of each round may stay running: {running}"
    Ledger(path, lock_timeout=5).append({"run_id": "after"})
    assert "after" in _read_strict(path)


# ------------------------------------------------------------------------------------- damage


def test_corrupt_lines_are_reported_with_their_line_number_and_kept(tmp_path):
    ledger = Ledger(tmp_path)
    _chain(ledger, "r0", "r1", "r2")
    header, row0, row1, row2 = ledger.path.read_bytes().splitlines(keepends=True)
    bad_cv = row2.split(b",")  # the test rows hold no quoted commas
    bad_cv[FILE_COLUMNS.index("cv")] = b"not-a-number"
    garbage = b"\xff\xfe\x00 garbage line\n"
    torn = row1[:30]  # a half line at the end, as an editor crash might leave
    damaged = [header, row0, garbage, b"a,b,c\n", row1.replace(b"r1", b"r1x"), b",".join(bad_cv), torn]
    ledger.path.write_bytes(b"".join(damaged))

    with pytest.warns(LedgerWarning, match="line 3"):
        rows = ledger.rows()
    assert [row["run_id"] for row in rows] == ["r0", "r1x", "r2"], "undamaged rows must still read"
    assert rows[2]["cv"] is None, "an unparsable value reads as empty"
    by_line = {problem.line: problem.message for problem in ledger.problems}
    assert sorted(by_line) == [3, 4, 6, 7], f"problems at the wrong lines: {ledger.problems}"
    assert f"expected {len(FILE_COLUMNS)} fields, found 3" in by_line[4] and "cv='not-a-number'" in by_line[6]

    with pytest.warns(LedgerWarning):
        ledger.append({"run_id": "r3"})
        ledger.update("r0", status="done")
    lines = ledger.path.read_bytes().splitlines(keepends=True)
    assert lines[2:5] == damaged[2:5] and lines[6] == torn + b"\n", "damaged lines must be kept byte for byte"
    with pytest.warns(LedgerWarning):
        assert ledger.get("r3") is not None and ledger.get("r0")["status"] == "done"


def test_a_file_that_is_not_a_ledger_is_refused(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("id,label\n1,cat\n")
    with pytest.raises(LedgerError, match="does not look like a kaggle-tli ledger"):
        Ledger(path).rows()
    with pytest.raises(LedgerError):
        Ledger(path).append({"run_id": "r0"})
    assert path.read_text() == "id,label\n1,cat\n"


@pytest.mark.parametrize("dropped", ["schema", "run_id"])
def test_a_header_missing_one_key_column_names_only_that_column(tmp_path, dropped):
    ledger = Ledger(tmp_path)
    _chain(ledger, "r0", "r1")
    with ledger.path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    kept = [c for c in FILE_COLUMNS if c != dropped]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=kept, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    ledger.path.write_text(buffer.getvalue())
    before = ledger.path.read_bytes()
    other = "run_id" if dropped == "schema" else "schema"
    for action in (lambda: Ledger(tmp_path).rows(), lambda: Ledger(tmp_path).append({"run_id": "r2"})):
        with pytest.raises(LedgerError, match=f"lacks the '{dropped}' column\\.") as err:
            action()
        assert f"'{other}'" not in str(err.value).split("lacks")[1], f"only the missing column is named: {err.value}"
    if dropped == "schema":
        assert f"add a 'schema' column holding {SCHEMA_VERSION}" in str(err.value), str(err.value)
    assert ledger.path.read_bytes() == before, "a refused ledger must be left byte for byte as it was"


def test_a_ledger_from_a_newer_schema_is_refused_and_never_rewritten(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append({"run_id": "old"})
    newer = FILE_COLUMNS + ["gpu_hours"]
    row = dict.fromkeys(newer, "")
    row.update(run_id="new", schema=str(SCHEMA_VERSION + 1), gpu_hours="1.5")
    with open(ledger.path, "w", newline="") as handle:  # a future kaggle-tli rewrote the file
        writer = csv.DictWriter(handle, newer, lineterminator="\n")
        writer.writeheader()
        writer.writerow({**dict.fromkeys(newer, ""), "run_id": "old", "schema": str(SCHEMA_VERSION)})
        writer.writerow(row)
    before, mtime = ledger.path.read_bytes(), ledger.path.stat().st_mtime_ns

    message = rf"schema {SCHEMA_VERSION + 1}, this version reads up to {SCHEMA_VERSION}: upgrade kaggle-tli"
    for action in (
        ledger.rows,
        lambda: ledger.append({"run_id": "mine"}),
        lambda: ledger.update("old", status="done"),
        lambda: Ledger(tmp_path / "other").import_rows(ledger.path),
    ):
        with pytest.raises(LedgerSchemaError, match=message):
            action()
    assert ledger.path.read_bytes() == before and ledger.path.stat().st_mtime_ns == mtime, (
        "file was rewritten"
    )
    assert not (tmp_path / "other" / "ledger.csv").exists()


# ------------------------------------------------------------------------------------ lineage


def test_lineage_walks_to_the_root(tmp_path):
    ledger = Ledger(tmp_path)
    _chain(ledger, "a", "b", "c")
    _chain(ledger, "other")
    assert [row["run_id"] for row in _read_strict(tmp_path).lineage("c")] == ["c", "b", "a"]
    assert [row["run_id"] for row in ledger.lineage("a")] == ["a"]
    with pytest.raises(KeyError, match="ghost"):
        ledger.lineage("ghost")


def test_lineage_reports_a_missing_parent_and_a_cycle(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append({"run_id": "orphan", "parent_run_id": "from-another-notebook"})
    with pytest.warns(LedgerWarning, match="'from-another-notebook'.*import_rows"):
        assert [row["run_id"] for row in ledger.lineage("orphan")] == ["orphan"]
    assert any("from-another-notebook" in str(problem) for problem in ledger.problems)

    _chain(ledger, "x", "y")
    ledger.update("x", parent_run_id="y")  # x <- y <- x
    with pytest.warns(LedgerWarning, match="cycle"):
        assert [row["run_id"] for row in ledger.lineage("y")] == ["y", "x"], "the walk must stop at the cycle"


def test_import_rows_from_a_read_only_ledger_continues_the_lineage(tmp_path):
    source_dir = tmp_path / "input" / "prev-notebook" / "runs"
    source = Ledger(source_dir)
    _chain(source, "s0", "s1")
    source.append({"run_id": "shared", "arch": "from-source"})
    here = Ledger(tmp_path / "working" / "runs")
    here.append({"run_id": "shared", "arch": "from-here"})
    here.append({"run_id": "d1", "parent_run_id": "s1", "stage": "resume"})

    source_bytes, source_listing = source.path.read_bytes(), sorted(os.listdir(source_dir))
    source.path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    source_dir.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    try:
        assert here.import_rows(source_dir) == 2, "s0 and s1 are new; 'shared' is already here"
        assert here.import_rows(Ledger(source.path)) == 0, "a second import adds nothing"
        listing = sorted(os.listdir(source_dir))
    finally:
        source_dir.chmod(0o755)
        source.path.chmod(0o644)
    assert source.path.read_bytes() == source_bytes and listing == source_listing, "the source was written to"
    assert here.get("shared")["arch"] == "from-here", "an existing run must not be overwritten by an import"
    assert [row["run_id"] for row in _read_strict(here.path).lineage("d1")] == ["d1", "s1", "s0"]
    assert here.get("s1") == source.get("s1"), "imported rows must be copied value for value"
    with pytest.raises(FileNotFoundError, match="no ledger at"):
        here.import_rows(tmp_path / "nowhere")


def test_plot_lineage_writes_a_png(tmp_path):
    import matplotlib.image

    ledger = Ledger(tmp_path)
    ledger.start("20261127-113501-resnet18-3f2a", stage="finetune", arch="resnet18")
    ledger.finish("20261127-113501-resnet18-3f2a", cv=0.91)
    for i, arch in enumerate(["resnet18_k5", "resnet26d", "efficientnet_b0"]):
        ledger.append(
            {"run_id": f"r{i}", "parent_run_id": "20261127-113501-resnet18-3f2a", "arch": arch, "cv": i}
        )
    ledger.append({"run_id": "lonely", "arch": "convnext_tiny", "status": "failed"})

    out = ledger.plot_lineage(tmp_path / "plots" / "lineage.png")
    assert out == tmp_path / "plots" / "lineage.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 150 and image.shape[1] > 300, f"image too small: {image.shape}"
    colours = {tuple(pixel) for pixel in image.reshape(-1, image.shape[-1])[::7].round(2).tolist()}
    assert len(colours) > 20, "the image looks blank"

    part = ledger.plot_lineage(tmp_path / "part.png", run_id="r1")
    assert matplotlib.image.imread(part).shape[0] < image.shape[0], "one family must be smaller than all runs"


def test_the_ledger_does_not_import_torch():
    child = _run_python("import sys, kaggle_tli.ledger; print('torch' in sys.modules)")
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert out.strip() == "False", "kaggle_tli.ledger must stay light: light tools use it without torch"


def test_import_only_a_runs_lineage(tmp_path):
    source = Ledger(tmp_path / "a")
    source.append({"run_id": "root", "stage": "finetune", "status": "done"})
    source.append({"run_id": "child", "parent_run_id": "root", "stage": "inject", "status": "done"})
    source.append({"run_id": "other", "stage": "finetune", "status": "done"})
    target = Ledger(tmp_path / "b")
    assert target.import_rows(source, lineage_of="child") == 2
    assert sorted(r["run_id"] for r in target.rows()) == ["child", "root"], "unrelated runs stay out"


def test_a_schema_1_ledger_gains_the_new_columns_on_its_first_write(tmp_path):
    """A ledger written before schema 2 stays readable and writable: its rows keep their values and their
    schema number, and the header gains the columns schema 2 added (empty on the old rows)."""
    from kaggle_tli.ledger.schema import ADDED_IN_SCHEMA

    old_columns = [c for c in LEDGER_COLUMNS if c not in ADDED_IN_SCHEMA[2]] + ["schema"]
    path = tmp_path / "ledger.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, old_columns)
        writer.writeheader()
        writer.writerow({**dict.fromkeys(old_columns, ""), "run_id": "old", "stage": "finetune", "cv": "0.5",
                         "schema": "1"})
    ledger = Ledger(path)
    assert ledger.get("old")["cv"] == 0.5 and ledger.get("old")["task"] is None
    ledger.append({"run_id": "new", "parent_run_id": "old", "task": "binary", "distill": 0.5})
    header = path.read_text().splitlines()[0].split(",")
    assert header == FILE_COLUMNS, header
    assert Ledger(path).get("old")["cv"] == 0.5
    assert Ledger(path).get("new")["task"] == "binary" and Ledger(path).get("new")["distill"] == 0.5
    assert pd.read_csv(path)["schema"].tolist() == [1, SCHEMA_VERSION], "old rows keep the schema that wrote them"
