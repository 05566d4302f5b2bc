"""publish: the real `kaggle` client against a fake Kaggle API; assert on what the server received."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_kaggle import FakeKaggle, make_run, point_client_at

import kaggle_tli
from kaggle_tli.kaggle import (
    KaggleAuthError,
    KaggleConflictError,
    KaggleNetworkError,
    KaggleServerError,
    bundle,
    publish,
)

RUN_ID = "20261127-113501-resnet18-3f2a"


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    """One bundle for the whole module (building the wheel is the slow part); tests only read it."""
    tmp = tmp_path_factory.mktemp("publish")
    run = make_run(tmp / "runs", RUN_ID)
    return bundle(run, tmp / "bundle", dataset="alice/resnet18-weights", title="ResNet18 teacher weights")


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())}


def _upload_names(bundle_dir):
    return {p.name for p in bundle_dir.iterdir() if p.name != "dataset-metadata.json"}


def test_creates_private_dataset_with_every_file(fake, bundle_dir):
    before = _digests(bundle_dir)
    result = publish(bundle_dir)
    assert result["action"] == "created" and result["dataset"] == "alice/resnet18-weights", result
    assert result["url"] == f"{fake.url}/datasets/alice/resnet18-weights"
    [up] = fake.uploads
    assert (up.kind, up.owner, up.slug) == ("create", "alice", "resnet18-weights")
    assert up.title == "ResNet18 teacher weights" and up.license == "CC0-1.0"
    assert up.is_private, "datasets are private unless public=True"
    assert set(up.files) == _upload_names(bundle_dir), f"every top-level file uploaded: {sorted(up.files)}"
    for name, data in up.files.items():
        assert data == (bundle_dir / name).read_bytes(), f"{name} arrived byte for byte"
    assert {u for _, u in fake.calls if u} == {"alice"}, "every API call authenticated as alice"
    assert _digests(bundle_dir) == before, "publishing never modifies the bundle"


def test_public_dataset_and_retargeted_id(fake, bundle_dir):
    publish(bundle_dir, "alice/other-weights", public=True)
    [up] = fake.uploads
    assert up.slug == "other-weights" and not up.is_private, "dataset= retargets; public=True is public"
    meta = json.loads((bundle_dir / "dataset-metadata.json").read_text())
    assert meta["id"] == "alice/resnet18-weights", "the bundle's own metadata is left alone"


def test_existing_dataset_gets_a_version_with_notes(fake, bundle_dir):
    fake.add_dataset("alice/resnet18-weights")
    result = publish(bundle_dir, notes="epoch 3, cv 0.91")
    assert result["action"] == "versioned"
    [up] = fake.uploads
    assert up.kind == "version" and up.notes == "epoch 3, cv 0.91"
    assert set(up.files) == _upload_names(bundle_dir)
    assert "CreateDataset" not in fake.methods(), "no attempt to create what exists"
    publish(bundle_dir)
    assert fake.uploads[-1].notes == f"kaggle-tli run {RUN_ID}", "default notes name the run"


def test_publish_a_run_builds_the_bundle_first(fake, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = make_run(tmp_path / "runs", "20261127-120000-resnet18-cccc")
    result = publish(run, "alice/fresh-weights", notes="first")
    bundle_dir = Path(result["bundle"])
    assert bundle_dir == Path("bundles/fresh-weights") and (bundle_dir / "model.safetensors").is_file()
    assert fake.uploads[0].files["model.safetensors"] == (run / "model.safetensors").read_bytes()


def test_dry_run_validates_without_network_or_credentials(tmp_path, bundle_dir, monkeypatch):
    with FakeKaggle() as server:
        point_client_at(server, monkeypatch, tmp_path / "home", username=None)
        result = publish(bundle_dir, dry_run=True)
        assert server.calls == [], "a dry run talks to nobody"
    assert result["action"] == "dry_run" and set(result["files"]) == _upload_names(bundle_dir)
    with pytest.raises(ValueError, match="owner/slug"):
        publish(bundle_dir, "not-an-id", dry_run=True)


def test_missing_credentials(tmp_path, bundle_dir, monkeypatch, capsys):
    with FakeKaggle() as server:
        point_client_at(server, monkeypatch, tmp_path / "home", username=None)
        with pytest.raises(KaggleAuthError) as err:
            publish(bundle_dir)
        assert server.calls == [], "nothing sent without credentials"
    msg = str(err.value)
    assert "no Kaggle credentials" in msg and "KAGGLE_USERNAME" in msg and "kaggle.json" in msg, msg
    assert str(bundle_dir) in msg, "the message says where the bundle is"
    assert capsys.readouterr().out == "", "the client's help text is captured, not printed"


def test_rejected_credentials_401(tmp_path, bundle_dir, monkeypatch):
    with FakeKaggle(credentials=("alice", "secret")) as server:
        point_client_at(server, monkeypatch, tmp_path / "home", key="wrong")
        with pytest.raises(KaggleAuthError, match="401") as err:
            publish(bundle_dir)
        assert server.methods() == ["GetDatasetStatus"], "no retry and no upload after a 401"
    assert "KAGGLE_KEY" in str(err.value)


def test_conflict_409_on_version(fake, bundle_dir, sleeps):
    fake.add_dataset("alice/resnet18-weights")
    fake.fail("CreateDatasetVersion", 409, message="version conflict")
    with pytest.raises(KaggleConflictError, match="409") as err:
        publish(bundle_dir)
    assert "another slug" in str(err.value) and sleeps == [], "a conflict is not retried"


def test_slug_already_in_use(fake, bundle_dir):
    fake.reserve("alice/resnet18-weights")
    with pytest.raises(KaggleConflictError, match="already in use") as err:
        publish(bundle_dir)
    assert "another slug" in str(err.value)
    assert fake.uploads == []


def test_5xx_retried_with_exponential_backoff(fake, bundle_dir, sleeps):
    fake.fail("CreateDataset", 503, times=2)
    fake.fail("StartBlobUpload", 500, times=1)
    result = publish(bundle_dir, retries=3)
    assert result["action"] == "created"
    assert sleeps == [2.0, 4.0, 8.0], f"three waits, doubling: {sleeps}"
    [up] = fake.uploads
    assert set(up.files) == _upload_names(bundle_dir), "the retried publish is complete"
    assert sum(m == "PUT" for m in fake.methods()) == len(up.files), "finished uploads are not sent again"
    assert "PUT-probe" in fake.methods(), "the client resumed: it asked how far its uploads got"


def test_5xx_gives_up_with_a_clear_message(fake, bundle_dir, sleeps):
    before = _digests(bundle_dir)
    fake.fail("CreateDataset", 502, times=10)
    with pytest.raises(KaggleServerError, match="502") as err:
        publish(bundle_dir, retries=2)
    assert sleeps == [2.0, 4.0], sleeps
    assert "gave up after 2 retries" in str(err.value) and "publish(" in str(err.value)
    assert fake.uploads == [] and _digests(bundle_dir) == before


def test_create_that_worked_before_its_5xx_is_reported_as_created(fake, bundle_dir, sleeps):
    """Kaggle creates the dataset but the answer is a 500: the retry hears "already in use", which is our own
    dataset, not a taken slug."""
    fake.fail("CreateDataset", 500, after=True)
    result = publish(bundle_dir)
    assert result["action"] == "created" and result["dataset"] == "alice/resnet18-weights", result
    assert result["url"].endswith("/datasets/alice/resnet18-weights"), result
    assert [u.kind for u in fake.uploads] == ["create"], "one dataset, created once"
    # the client's retry checks the slug first and refuses it as taken; publish then sees it is ours
    assert fake.methods().count("CreateDataset") == 1 and fake.methods()[-1] == "GetDatasetStatus", (
        f"retried, refused as a duplicate, then checked: {fake.methods()}")
    assert sleeps == [2.0], sleeps


def test_conflict_after_a_retry_is_still_a_conflict_when_the_dataset_is_not_there(fake, bundle_dir, sleeps):
    fake.fail("CreateDataset", 503)
    fake.reserve("alice/resnet18-weights")  # someone else's slug, invisible to GetDatasetStatus
    with pytest.raises(KaggleConflictError, match="already in use"):
        publish(bundle_dir)
    assert fake.uploads == [] and fake.methods()[-1] == "GetDatasetStatus", fake.methods()


def test_failed_file_upload_is_retried(fake, bundle_dir, sleeps):
    fake.fail("PUT", 500, times=1)  # storage refuses one file: the client gives up on it, we retry
    publish(bundle_dir)
    assert len(sleeps) == 1 and len(fake.uploads) == 1
    assert set(fake.uploads[0].files) == _upload_names(bundle_dir)


def test_network_down(tmp_path, bundle_dir, monkeypatch, sleeps):
    server = FakeKaggle().start()
    point_client_at(server, monkeypatch, tmp_path / "home")
    server.stop()  # nothing listens on the port any more
    before = _digests(bundle_dir)
    with pytest.raises(KaggleNetworkError, match="cannot reach") as err:
        publish(bundle_dir)
    assert "Internet" in str(err.value) and sleeps == [], "network down is reported at once"
    assert _digests(bundle_dir) == before


def test_subprocess_publish_through_http_proxy(tmp_path, bundle_dir):
    """A fresh process (the client authenticates at import) reaching the fake as an HTTP proxy."""
    home = tmp_path / "home"
    (home / "tmp").mkdir(parents=True)
    repo = Path(kaggle_tli.__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_") and "proxy" not in k.lower()}
    with FakeKaggle(credentials=("alice", "secret")) as server:
        env.update(HOME=str(home), TMPDIR=str(home / "tmp"), KAGGLE_API_ENVIRONMENT="LOCALHOST",
                   KAGGLE_USERNAME="alice", KAGGLE_KEY="secret", HTTP_PROXY=server.url, http_proxy=server.url,
                   NO_PROXY="", no_proxy="", PYTHONPATH=str(repo))
        code = (f"import kaggle_tli as kt; r = kt.publish({str(bundle_dir)!r}, notes='from a subprocess'); "
                "print('RESULT', r['action'], r['dataset'])")
        proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip() == "RESULT created alice/resnet18-weights", f"only our line: {proc.stdout!r}"
        [up] = server.uploads
        assert set(up.files) == _upload_names(bundle_dir)
