"""Kaggle Models: bundle(model=...), publish(model=...) with the real `kaggle` client against the fake Kaggle API
(asserting on what the server received), model mounts under /kaggle/input, and kernel init --model / --pin-image."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from fake_kaggle import FakeKaggle, make_run, point_client_at

from kaggle_tli.cli import main
from kaggle_tli.kaggle import (
    BUNDLE_MARKER,
    KaggleAuthError,
    KaggleConflictError,
    KaggleNetworkError,
    bundle,
    load_bundle,
    publish,
    push_kernel,
)
from kaggle_tli.ledger import Ledger

MODEL = "alice/tli-digits"
TEACHER = "20261127-100000-resnet18-aaaa"
CHILD = "20261127-110000-efficientnet_b0-bbbb"
PY_TORCH = "MODEL_FRAMEWORK_PY_TORCH"  # the client's wire name for framework "pytorch"


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A teacher (resnet18) and its student (efficientnet_b0) in one runs folder; the teacher bundled for MODEL.
    Module-scoped (the wheel is built once); tests copy what they change."""
    tmp = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("KAGGLE_USERNAME", raising=False)
        runs = tmp / "runs"
        make_run(runs, TEACHER)
        make_run(runs, CHILD, parent_id=TEACHER, arch="efficientnet_b0")
        teacher = bundle(runs / TEACHER, tmp / "teacher", model=MODEL)
    [wheel] = teacher.glob("kaggle_tli-*.whl")
    return tmp, wheel


@pytest.fixture
def runs(tmp_path):
    """The same two runs, fresh for each test: publishing writes the handles into their ledger."""
    make_run(tmp_path / "runs", TEACHER)
    make_run(tmp_path / "runs", CHILD, parent_id=TEACHER, arch="efficientnet_b0")
    return tmp_path / "runs"


@pytest.fixture
def teacher_bundle(family, runs, tmp_path):
    return bundle(runs / TEACHER, tmp_path / "teacher", model=MODEL, wheel=family[1])


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())}


def _uploaded(bundle_dir):
    """What the client uploads from a bundle: every top-level file but the metadata it reads."""
    skip = {"dataset-metadata.json", "model-metadata.json", "model-instance-metadata.json"}
    return {p.name for p in bundle_dir.iterdir() if p.name not in skip}


# ------------------------------------------------------------------------------------------ bundle, dry run


def test_bundle_for_a_model_writes_both_metadata_files_and_names_the_variation(family):
    teacher = family[0] / "teacher"
    model = json.loads((teacher / "model-metadata.json").read_text())
    assert (model["ownerSlug"], model["slug"], model["isPrivate"]) == ("alice", "tli-digits", True), model
    assert 6 <= len(model["title"]) <= 50, model["title"]
    instance = json.loads((teacher / "model-instance-metadata.json").read_text())
    assert (instance["ownerSlug"], instance["modelSlug"], instance["instanceSlug"]) == ("alice", "tli-digits",
                                                                                         "resnet18"), instance
    assert instance["framework"] == "pyTorch" and instance["licenseName"] == "Apache 2.0", instance
    assert instance["baseModelInstance"] == "" and instance["modelInstanceType"] == "BaseModel", "a root run"
    assert (teacher / "dataset-metadata.json").is_file(), "the same bundle can still go up as a dataset"
    handle = f"{MODEL}/pytorch/resnet18"
    assert json.loads((teacher / BUNDLE_MARKER).read_text())["kaggle_model"] == handle
    assert json.loads((teacher / "run.json").read_text())["kaggle_model"] == handle, "a mounted bundle names itself"
    assert Ledger(teacher / "ledger.csv").get(TEACHER)["kaggle_model"] == handle


def test_cli_bundle_with_model_and_dry_run(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    out = tmp_path / "child"
    assert main(["bundle", CHILD, "-o", str(out), "--runs", str(runs), "--model", MODEL]) == 0
    instance = json.loads((out / "model-instance-metadata.json").read_text())
    assert instance["instanceSlug"] == "efficientnet-b0", "the architecture name, as a slug"
    capsys.readouterr()
    with FakeKaggle() as server:
        point_client_at(server, monkeypatch, tmp_path / "home", username=None)
        assert main(["publish", str(out), "--dry-run"]) == 0
        assert server.calls == [], "a dry run talks to nobody, and needs no credentials"
    result = json.loads(capsys.readouterr().out)
    assert result["action"] == "dry_run" and result["kaggle_model"] == f"{MODEL}/pytorch/efficientnet-b0", result
    assert set(result["files"]) == _uploaded(out), result["files"]


@pytest.mark.parametrize("edit, match", [
    (("model-metadata.json", "title", "TLI"), "model title must be 6-50"),
    (("model-metadata.json", "slug", "TLI_Digits"), "model slug 'TLI_Digits'"),
    (("model-instance-metadata.json", "licenseName", "CC0-1.0"), "not one Kaggle accepts"),
    (("model-instance-metadata.json", "framework", "tensorFlow2"), "framework must be 'pyTorch'"),
    (("model-instance-metadata.json", "instanceSlug", "ResNet 18"), "variation 'ResNet 18'"),
])
def test_dry_run_refuses_metadata_kaggle_would_refuse(family, tmp_path, edit, match):
    copy = Path(shutil.copytree(family[0] / "teacher", tmp_path / "b"))
    name, key, value = edit
    body = json.loads((copy / name).read_text())
    body[key] = value
    (copy / name).write_text(json.dumps(body))
    with pytest.raises(ValueError, match=match):
        publish(copy, dry_run=True)


def test_bad_targets_are_named_before_anything_is_written(family, tmp_path):
    run = family[0] / "runs" / TEACHER
    for kwargs, match in [(dict(model="alice"), "OWNER/MODEL"), (dict(model="Alice/tli-digits"), "lowercase"),
                          (dict(model=MODEL, model_license="MIT License"), "not one Kaggle accepts"),
                          (dict(variation="resnet18"), "needs model=")]:
        with pytest.raises(ValueError, match=match):
            bundle(run, tmp_path / "never", wheel=family[1], **kwargs)
        assert not (tmp_path / "never").exists(), kwargs
    with pytest.raises(ValueError, match="one target at a time"):
        publish(family[0] / "teacher", "alice/tli-weights", model=MODEL, dry_run=True)


# ------------------------------------------------------------------------------------------ publish


def test_creates_model_and_variation_then_adds_versions(fake, teacher_bundle, runs):
    before = _digests(teacher_bundle)
    result = publish(teacher_bundle)
    assert (result["action"], result["version"], result["model_created"]) == ("created", 1, True), result
    assert result["kaggle_model"] == f"{MODEL}/pytorch/resnet18/1", result
    created_model, created_instance = fake.model_uploads
    assert (created_model.kind, created_model.owner, created_model.model) == ("model", "alice", "tli-digits")
    assert created_model.is_private, "private unless public=True"
    assert (created_instance.kind, created_instance.framework, created_instance.variation) == (
        "instance", PY_TORCH, "resnet18")
    assert created_instance.license == "Apache 2.0" and not created_instance.base
    assert set(created_instance.files) == _uploaded(teacher_bundle), sorted(created_instance.files)
    for name, data in created_instance.files.items():
        assert data == (teacher_bundle / name).read_bytes(), f"{name} arrived byte for byte"
    assert Ledger(runs).get(TEACHER)["kaggle_model"] == f"{MODEL}/pytorch/resnet18/1", "the ledger row names it"

    result = publish(teacher_bundle, notes="epoch 3, cv 0.91")
    assert (result["action"], result["version"], result["model_created"]) == ("versioned", 2, False), result
    version = fake.model_uploads[-1]
    assert (version.kind, version.variation, version.version, version.notes) == (
        "version", "resnet18", 2, "epoch 3, cv 0.91")
    assert set(version.files) == _uploaded(teacher_bundle)
    assert fake.methods().count("CreateModel") == 1 and fake.methods().count("CreateModelInstance") == 1
    assert Ledger(runs).get(TEACHER)["kaggle_model"] == f"{MODEL}/pytorch/resnet18/2"
    assert _digests(teacher_bundle) == before, "publishing never modifies the bundle"


def test_child_variation_names_the_parent_variation_as_its_base(fake, teacher_bundle, runs, tmp_path):
    publish(teacher_bundle, runs=runs)
    result = publish(runs / CHILD, model=MODEL, runs=runs, out_dir=tmp_path / "child", public=True)
    assert result["base_model_instance"] == f"{MODEL}/pytorch/resnet18", result
    child = fake.model_uploads[-1]
    assert (child.kind, child.variation, child.base) == ("instance", "efficientnet-b0", f"{MODEL}/pytorch/resnet18")
    assert child.body["body"]["modelInstanceType"] == "MODEL_INSTANCE_TYPE_KAGGLE_VARIANT", child.body
    assert [u.kind for u in fake.model_uploads] == ["model", "instance", "instance"], "the model is created once"
    row = Ledger(runs).get(CHILD)
    assert (row["kaggle_model"], row["parent_kaggle_model"]) == (f"{MODEL}/pytorch/efficientnet-b0/1",
                                                                  f"{MODEL}/pytorch/resnet18"), row
    assert json.loads((tmp_path / "child" / "run.json").read_text())["parent_kaggle_model"] == f"{MODEL}/pytorch/resnet18"


def test_public_applies_when_the_model_is_created(fake, teacher_bundle):
    publish(teacher_bundle, public=True)
    assert fake.model_uploads[0].kind == "model" and fake.model_uploads[0].is_private is False


def test_5xx_retried_and_a_create_that_worked_before_its_5xx(fake, teacher_bundle, sleeps):
    fake.fail("CreateModel", 500, after=True)  # created, but the answer is lost: the retry hears 409
    fake.fail("CreateModelInstance", 503, times=2)
    result = publish(teacher_bundle, retries=3)
    assert result["action"] == "created" and result["version"] == 1, result
    assert sleeps == [2.0, 2.0, 4.0], f"one wait for the model, two doubling ones for the variation: {sleeps}"
    assert [u.kind for u in fake.model_uploads] == ["model", "instance"], "each created once"
    assert set(fake.model_uploads[1].files) == _uploaded(teacher_bundle), "the retried upload is complete"


@pytest.mark.parametrize("failure", ["401", "409", "no credentials", "no network"])
def test_failures_are_named_and_keep_the_bundle(failure, teacher_bundle, tmp_path, monkeypatch, sleeps):
    before = _digests(teacher_bundle)
    server = FakeKaggle(credentials=("alice", "secret")).start()
    point_client_at(server, monkeypatch, tmp_path / "home", key="wrong" if failure == "401" else "secret",
                    username=None if failure == "no credentials" else "alice")
    expected = {"401": (KaggleAuthError, "401"), "409": (KaggleConflictError, "409"),
                "no credentials": (KaggleAuthError, "no Kaggle credentials"),
                "no network": (KaggleNetworkError, "cannot reach")}[failure]
    if failure == "409":
        server.add_model(MODEL, instance=("resnet18", 1))
        server.fail("CreateModelInstanceVersion", 409, message="version conflict")
    if failure == "no network":
        server.stop()
    try:
        with pytest.raises(expected[0], match=expected[1]) as err:
            publish(teacher_bundle)
    finally:
        server.stop()
    assert str(teacher_bundle) in str(err.value) and "model='alice/tli-digits'" in str(err.value), str(err.value)
    assert _digests(teacher_bundle) == before and server.model_uploads == [] and sleeps == []


# ------------------------------------------------------------------------------------------ notebooks


def test_load_bundle_finds_a_model_mount_beside_a_dataset_mount(family, tmp_path):
    teacher = family[0] / "teacher"
    inputs = tmp_path / "input"
    shutil.copytree(teacher, inputs / "datasets" / "alice" / "tli-weights")
    shutil.copytree(teacher, inputs / "tli-digits" / "pytorch" / "resnet18" / "1")
    shutil.copytree(teacher, inputs / "models" / "alice" / "tli-digits" / "pytorch" / "resnet18" / "2")
    run = load_bundle(inputs, model=f"{MODEL}/pytorch/resnet18/1")
    assert run.path == (inputs / "tli-digits" / "pytorch" / "resnet18" / "1").resolve(), run.path
    assert load_bundle(inputs, model=f"{MODEL}/pytorch/resnet18/2").path.parent.name == "resnet18"
    with pytest.raises(ValueError, match="several bundles of model"):
        load_bundle(inputs, model=MODEL)
    with pytest.raises(FileNotFoundError, match="or model to the notebook"):
        load_bundle(inputs, model=f"{MODEL}/pytorch/resnet18/3")


def test_kernel_init_attaches_a_model_version_and_pins_the_image(fake, tmp_path, capsys):
    source = f"{MODEL}/pytorch/resnet18/3"
    out = tmp_path / "kernel"
    assert main(["kernel", "init", "inference", "--competition", "digit-recognizer", "--model", source,
                 "--pin-image", "-o", str(out)]) == 0
    meta = json.loads((out / "kernel-metadata.json").read_text())
    assert meta["model_sources"] == [source] and meta["dataset_sources"] == [], meta
    assert meta["docker_image_pinning_type"] == "original" and meta["id"].startswith("alice/"), meta
    nb = json.loads((out / "inference.ipynb").read_text())
    injected = next(c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", []))
    assert f"model = {source!r}" in "".join(injected["source"]), "the notebook picks the attached model"
    push_kernel(out)
    [body] = fake.kernels
    assert body["modelDataSources"] == [source] and body["dockerImagePinningType"] == "original", body
    capsys.readouterr()
    for args, message in [(["--model", f"{MODEL}/pytorch/resnet18"], "VERSION"),
                          (["--model", f"{MODEL}/pytorch/resnet18/latest"], "the version a number"),
                          ([], "--weights")]:
        assert main(["kernel", "init", "inference", "--competition", "digit-recognizer", *args, "-o",
                     str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err, args
