"""bundle / load_bundle: a run packed as an uploadable dataset folder, and read back read-only."""

import hashlib
import json
import os
import stat
import zipfile

import pytest
from fake_kaggle import make_run

import kaggle_tli
from kaggle_tli.kaggle import BUNDLE_MARKER, bundle, load_bundle, validate_bundle
from kaggle_tli.ledger import Ledger

ROOT_ID = "20261127-100000-resnet18-aaaa"
CHILD_ID = "20261127-110000-resnet34-bbbb"


@pytest.fixture
def lineage_runs(tmp_path, monkeypatch):
    """A teacher and the student injected from it, in one runs folder with its ledger."""
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    runs = tmp_path / "runs"
    make_run(runs, ROOT_ID)
    child = make_run(runs, CHILD_ID, parent_id=ROOT_ID, arch="resnet34", extra_files={
        "transfer.csv": b"student,teacher\n", "fold1.safetensors": b"fold 1 weights", "init.safetensors": b"step 0"})
    return runs, child


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_bundle_holds_weights_record_lineage_marker_and_wheel(lineage_runs, tmp_path):
    runs, child = lineage_runs
    out = bundle(child, tmp_path / "out", dataset="alice/resnet34-weights", title="ResNet34 student weights")
    names = {p.name for p in out.iterdir()}
    wheels = [n for n in names if n.endswith(".whl")]
    assert len(wheels) == 1 and wheels[0].startswith("kaggle_tli-") and wheels[0].endswith("-py3-none-any.whl"), names
    expected = {"model.safetensors", "model_ema.safetensors", "fold1.safetensors", "run.json", "log.csv",
                "transfer.csv", "ledger.csv", BUNDLE_MARKER, "dataset-metadata.json", wheels[0]}
    assert names == expected, f"flat bundle without state.pt and init weights: {sorted(names)}"
    assert not [p for p in out.iterdir() if p.is_dir()], "no sub-folders: the client would skip them"
    src = _digests(child)
    got = _digests(out)
    for name in ("model.safetensors", "model_ema.safetensors", "fold1.safetensors", "run.json", "log.csv"):
        assert got[name] == src[name], f"{name} copied byte for byte"

    lineage = Ledger(out / "ledger.csv").rows()
    assert [r["run_id"] for r in lineage] == [ROOT_ID, CHILD_ID], "the whole lineage, root first"
    marker = json.loads((out / BUNDLE_MARKER).read_text())
    assert marker["run_id"] == CHILD_ID and marker["arch"] == "resnet34" and marker["parent_id"] == ROOT_ID
    assert marker["kaggle_tli_version"] == kaggle_tli.__version__ and marker["wheel"] == wheels[0]
    assert marker["weights"] == ["fold1.safetensors", "model.safetensors", "model_ema.safetensors"]
    meta = json.loads((out / "dataset-metadata.json").read_text())
    assert meta["id"] == "alice/resnet34-weights" and meta["title"] == "ResNet34 student weights"
    assert meta["licenses"] == [{"name": "CC0-1.0"}], "exactly one license"
    assert validate_bundle(out)["id"] == "alice/resnet34-weights"
    with zipfile.ZipFile(out / wheels[0]) as zf:
        assert "kaggle_tli/kaggle/bundle.py" in zf.namelist(), "the wheel carries this very package"


def test_include_state_and_rebundle_replaces_in_place(lineage_runs, tmp_path):
    _, child = lineage_runs
    out = bundle(child, tmp_path / "out", dataset="alice/with-state", include_state=True)
    assert (out / "state.pt").read_bytes() == b"optimizer state stand-in", "state.pt on request"
    assert (out / "init.safetensors").read_bytes() == b"step 0", "and the step-0 weights"
    bundle(child, out, dataset="alice/with-state")
    assert not (out / "state.pt").exists(), "re-bundling into a bundle folder replaces it whole"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "no staging left behind"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dataset="alice"), "owner/slug"),
        (dict(dataset="alice/short"), "6-50 characters"),
        (dict(dataset="alice/Upper-Case-Slug"), "lowercase"),
        (dict(dataset="alice/good-slug", title="tiny"), "title must be 6-50"),
        (dict(dataset="alice/good-slug", license=""), "license"),
    ],
)
def test_bad_metadata_fails_before_writing(lineage_runs, tmp_path, kwargs, match):
    _, child = lineage_runs
    with pytest.raises(ValueError, match=match):
        bundle(child, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists(), "nothing written for invalid metadata"


def test_refuses_runs_without_weights_and_foreign_folders(lineage_runs, tmp_path):
    _, child = lineage_runs
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a kaggle-tli bundle"):
        bundle(child, foreign, dataset="alice/some-weights")
    assert (foreign / "mine.txt").read_text() == "keep me", "a foreign folder is never replaced"
    (child / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        bundle(child, tmp_path / "out", dataset="alice/some-weights")


def test_default_id_needs_an_owner_before_upload(lineage_runs, tmp_path):
    _, child = lineage_runs
    out = bundle(child, tmp_path / "out")
    meta = json.loads((out / "dataset-metadata.json").read_text())
    assert meta["id"].endswith("/tli-" + CHILD_ID) and 6 <= len(meta["title"]) <= 50, meta
    with pytest.raises(ValueError, match="no owner"):
        validate_bundle(out)
    assert validate_bundle(out, dataset="bob/tli-student")["id"] == "bob/tli-student", "publish(dataset=) fixes it"


def _read_only(folder):
    for p in folder.iterdir():
        p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)


def test_load_bundle_from_read_only_input_and_continue_lineage(lineage_runs, tmp_path):
    _, child = lineage_runs
    kaggle_input = tmp_path / "input"
    mount = kaggle_input / "datasets" / "alice" / "resnet34-weights"
    bundle(child, mount, dataset="alice/resnet34-weights")
    before = _digests(mount)
    _read_only(mount)
    try:
        working = tmp_path / "working" / "runs"
        working.mkdir(parents=True)
        run = load_bundle(kaggle_input, ledger=working)  # searched from the input root, by marker
        assert run.id == CHILD_ID and os.path.samefile(run.path, mount), (run.id, run.path)
        assert [r["run_id"] for r in Ledger(working).lineage(CHILD_ID)] == [CHILD_ID, ROOT_ID], "lineage imported"
        assert _digests(mount) == before, "loading never writes into the bundle"
        # a notebook bundles a run that it loaded from a bundle: the lineage travels along
        again = bundle(run, tmp_path / "again", dataset="alice/resnet34-again")
        assert [r["run_id"] for r in Ledger(again / "ledger.csv").rows()] == [ROOT_ID, CHILD_ID]
    finally:
        mount.chmod(0o755)
        for p in mount.iterdir():
            p.chmod(0o644)


def test_load_bundle_picks_by_run_id(lineage_runs, tmp_path):
    runs, child = lineage_runs
    bundle(runs / ROOT_ID, tmp_path / "input" / "teacher-weights", dataset="alice/teacher-weights")
    bundle(child, tmp_path / "input" / "student-weights", dataset="alice/student-weights")
    with pytest.raises(ValueError, match="run_id="):
        load_bundle(tmp_path / "input")
    assert load_bundle(tmp_path / "input", run_id=ROOT_ID).id == ROOT_ID
    with pytest.raises(FileNotFoundError, match="Add Input"):
        load_bundle(tmp_path / "input", run_id="nope")


def test_run_without_a_ledger_row_bundles_a_ledger_that_loads(tmp_path, monkeypatch):
    """A run whose ledger row is gone (a run folder copied on its own): the bundle's ledger.csv holds no rows but
    is a real ledger, so load_bundle(ledger=) and iterate's lineage import read it instead of failing."""
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    run = make_run(tmp_path / "runs", ROOT_ID)
    (tmp_path / "runs" / "ledger.csv").unlink()
    with pytest.warns(UserWarning, match="no ledger row"):
        out = bundle(run, tmp_path / "out", dataset="alice/no-ledger-row")
    working = tmp_path / "working"
    loaded = load_bundle(out, ledger=working)
    assert loaded.id == ROOT_ID and Ledger(working).rows() == [], "an empty lineage imports as nothing"
    reference = Ledger(tmp_path / "reference.csv")
    reference.append({"run_id": "x"})
    header = (out / "ledger.csv").read_text().splitlines()
    assert header == reference.path.read_text().splitlines()[:1], f"the ledger's own header, no rows: {header}"


@pytest.fixture
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_unfinished_run_bundle_carries_its_state_and_resumes(image_competition, tmp_path, one_torch_thread):
    """An interrupted run, bundled with the defaults, continues from its bundle in another notebook."""
    from kaggle_tli.data import ImageCsvData
    from kaggle_tli.stages import finetune, resume

    data = ImageCsvData(image_competition, image_size=32)
    # a budget below the trainer's stop reserve stops it right after its first step
    run = finetune("resnet10t", data, runs=tmp_path / "runs", epochs=1, time_budget_s=0.5, batch_size=16,
                   lr=3e-3, progress=False)
    assert run.status == "interrupted", f"fixture assumption: an interrupted run, got {run.status!r}"
    with pytest.warns(UserWarning, match="state.pt"):
        out = bundle(run, tmp_path / "input" / "unfinished", dataset="alice/unfinished-run")
    assert (out / "state.pt").is_file() and (out / "init.safetensors").is_file(), sorted(p.name for p in out.iterdir())
    marker = json.loads((out / BUNDLE_MARKER).read_text())
    assert marker["includes_state"] is True and marker["status"] == "interrupted", marker
    _read_only(out)
    try:
        done = resume(load_bundle(tmp_path / "input"), data, runs=tmp_path / "working", time_budget_s=None)
    finally:
        out.chmod(0o755)
    assert done.id == run.id and done.status == "done", (done.id, done.status)
    assert done.info["steps"] > run.info["steps"], "the run went on from where it stopped"
    with pytest.warns(UserWarning, match="cannot be resumed"):
        slim = bundle(run, tmp_path / "slim", dataset="alice/unfinished-slim", include_state=False)
    assert not (slim / "state.pt").exists(), "include_state=False is obeyed"
