"""The notebook templates, rendered as kernels and run end to end by papermill in a /kaggle-shaped tree.

teacher -> bundle -> attached as a dataset -> iterate -> bundle -> attached -> inference -> submission.csv; the
iterated bundle is also attached as a Kaggle Model version (`input/<model>/pytorch/<variation>/<version>`) and a
second inference kernel, whose weights come from that model, must write the same submission.
Each notebook gets a fresh /kaggle/working, as on Kaggle, and /kaggle/input is read-only for it: its files are
chmod'ed, and under root the kernels start without the capabilities that let root ignore file modes (checked
with a probe). Two competitions are attached, so each notebook must pick its own by slug, and the bundles are
mounted the ways Kaggle does it (`input/datasets/<owner>/<slug>`, `input/<slug>`), unlike the competitions
(`input/competitions/<slug>`). Every proxy points at a closed port, so an accidental network call fails at
once; only the iterate notebook's publish reaches a server: a fake Kaggle API on 127.0.0.1. The inference
kernel runs on a Python without kaggle_tli, so its offline install cell really installs the bundled wheel.

Budget: 120 s on 2 cores (about 45 s on an idle machine: five kernels, three tiny trainings, three wheel builds).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pandas as pd
import papermill
import pytest
from conftest import WORDS
from fake_kaggle import FakeKaggle
from shape_competitions import write_shape_competition

import kaggle_tli
from kaggle_tli.data import open_competition
from kaggle_tli.kaggle import BUNDLE_MARKER, find_credentials, locate_bundle, render_kernel, validate_bundle
from kaggle_tli.kaggle.kernels import template_dirs
from kaggle_tli.ledger import Ledger

REPO = Path(kaggle_tli.__file__).resolve().parent.parent
TEMPLATES = ("teacher", "iterate", "inference")
KERNEL = "kaggle-tli-test"
BARE_KERNEL = "kaggle-tli-test-bare"  # a Python without kaggle_tli: the notebook installs it offline
COMPETITION = "tiny-digits"
PIXEL_COMPETITION = "digit-recognizer"  # the demo competition's shape: pixel columns in train.csv
OWNER = "tester"
WEIGHTS = f"{OWNER}/tiny-digits-weights"
MODEL = f"{OWNER}/tiny-digits-tli"  # the Kaggle Model the teacher and iterate notebooks bundle for
CLOSED_PORT = "http://127.0.0.1:9"  # the discard port: nothing listens there, connections fail at once
TRAIN = dict(max_steps=2, batch_size=8, train_kwargs={"progress": False})  # a tiny, quiet run

pytestmark = pytest.mark.timeout(400)


# ------------------------------------------------------------------------------------------ the tree


LAUNCHER = '''\
"""Start an ipykernel (or, with --probe DIR, try to write into DIR) as a process that file modes bind.

Root ignores file modes through two capabilities; dropped from the bounding set before exec, the kernel
(still uid 0, so it reads root-owned files as their owner) cannot write a read-only file or folder.
"""
import ctypes
import os
import sys

PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2
if os.geteuid() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"cannot drop capability {cap}: run the tests as a normal user")
if sys.argv[1] == "--probe":
    command = ["-c", "import sys; open(sys.argv[1] + '/probe', 'w')", sys.argv[2]]
else:
    command = ["-m", "ipykernel_launcher", "-f", sys.argv[1]]
os.execv(sys.executable, [sys.executable, *command])
'''


def _write_kernelspec(base: Path, name: str, python: str, env: dict[str, str]) -> None:
    """A kernelspec `name` under base/jupyter that runs `python` (not whatever `python3` jupyter finds
    first) through LAUNCHER, with `env` on top of the environment."""
    spec_dir = base / "jupyter" / "kernels" / name
    spec_dir.mkdir(parents=True)
    spec = {"argv": [python, str(base / "launcher.py"), "{connection_file}"], "display_name": name,
            "language": "python", "env": env}
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))


def _bare_python(base: Path) -> Path:
    """A new venv that sees this one's packages (torch, timm, ipykernel, pip...) through a path entry but not
    kaggle_tli, whatever way it is installed here: .pth files on an added path are not run, and the
    checkout is not on its path. A notebook on it must install kaggle_tli from the attached wheel."""
    venv = base / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    Path(purelib, "this_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _set_mode(root: Path, *, writable: bool) -> None:
    for here, _, files in os.walk(root):
        os.chmod(here, 0o755 if writable else 0o555)
        for name in files:
            os.chmod(os.path.join(here, name), 0o644 if writable else 0o444)


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` with a digest of its bytes: the input tree must come out unchanged."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _kernel_env(home: Path) -> dict[str, str]:
    """What every test kernel runs with: a private HOME, the offline switches, no pip index, and a Kaggle
    client that would talk to localhost, never to kaggle.com."""
    return {
        "HOME": str(home), "TMPDIR": str(home / "tmp"), "IPYTHONDIR": str(home / "ipython"),
        "MPLCONFIGDIR": str(home / "mpl"), "XDG_CACHE_HOME": str(home / "cache"),
        "KAGGLE_CONFIG_DIR": str(home / ".kaggle"), "KAGGLE_API_ENVIRONMENT": "LOCALHOST",
        "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull, "PYTHONPATH": "",
    }


@pytest.fixture(scope="module")
def kaggle(make_image_competition, pixel_competition):
    """The /kaggle tree (input read-only), a home for the kernels and two kernelspecs, for this module."""
    base = Path(tempfile.mkdtemp(prefix="kaggle-tli-notebooks-"))
    tree = SimpleNamespace(base=base, input=base / "kaggle" / "input", working=base / "kaggle" / "working",
                           home=base / "home")
    try:
        make_image_competition(tree.input / "competitions" / COMPETITION, digits=(0, 1, 2), per_class=12,
                               n_test_per_class=4)
        # a second competition, so that every notebook must pick its own by slug
        shutil.copytree(pixel_competition, tree.input / "competitions" / PIXEL_COMPETITION)
        _set_mode(tree.input, writable=False)
        for sub in ("tmp", "ipython", "mpl", "cache"):
            (tree.home / sub).mkdir(parents=True)
        (base / "launcher.py").write_text(LAUNCHER)
        env = _kernel_env(tree.home)
        _write_kernelspec(base, KERNEL, sys.executable, {**env, "PYTHONPATH": str(REPO)})  # this checkout's kaggle_tli
        tree.bare_python = _bare_python(base)
        _write_kernelspec(base, BARE_KERNEL, str(tree.bare_python), env)
        probe = subprocess.run([sys.executable, str(base / "launcher.py"), "--probe", str(tree.input)],
                               capture_output=True, text=True, timeout=60)
        assert "PermissionError" in probe.stderr, f"a kernel could write into the input tree: {probe.stderr}"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("JUPYTER_PATH", str(base / "jupyter"))
            yield tree
    finally:
        _set_mode(tree.input, writable=True)
        shutil.rmtree(base, ignore_errors=True)


def _attach(tree: SimpleNamespace, bundle_dir: Path, mount: str) -> Path:
    """Mount a bundle under /kaggle/input at `mount`, read-only, as Kaggle attaches a dataset."""
    _set_mode(tree.input, writable=True)
    target = tree.input / mount
    shutil.copytree(bundle_dir, target)
    _set_mode(tree.input, writable=False)
    return target


def _execute(tree: SimpleNamespace, template: str, parameters: dict, *, env: dict[str, str | None] | None = None,
             kernel: str = KERNEL, competition: str = COMPETITION, name: str | None = None, weights: str | None = WEIGHTS,
             model_sources: tuple[str, ...] = ()) -> tuple[Path, str]:
    """Render `template` as a kernel and run it with papermill in a fresh /kaggle/working; return (a copy of
    that working dir, kept as outputs/<name>, and the text of the notebook's outputs)."""
    name = name or template
    if tree.working.exists():
        shutil.rmtree(tree.working)
    tree.working.mkdir(parents=True)
    folder = _render(tree, template, competition, parameters, name, weights=weights, model_sources=model_sources)
    return _run_notebook(tree, folder / f"{template}.ipynb", name, env=env, kernel=kernel)


def _render(tree: SimpleNamespace, template: str, competition: str, parameters: dict, name: str,
            weights: str | None = WEIGHTS, model_sources: tuple[str, ...] = ()) -> Path:
    return render_kernel(template, competition=competition, weights=weights, model_sources=model_sources,
                         out_dir=tree.base / "kernels" / name, owner=OWNER,
                         parameters={"input_root": str(tree.input), "working_root": str(tree.working),
                                     "torch_threads": 1, **parameters})


def _run_notebook(tree: SimpleNamespace, notebook: Path, name: str, *, env: dict[str, str | None] | None = None,
                  kernel: str = KERNEL) -> tuple[Path, str]:
    """Run a rendered notebook with papermill, offline, and check that /kaggle/input comes out unchanged."""
    executed = tree.base / "executed" / f"{name}.ipynb"
    executed.parent.mkdir(exist_ok=True)
    proxies = {k: CLOSED_PORT for k in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY")}
    quiet = {k: None for k in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "NO_PROXY", "no_proxy")}
    before = _snapshot(tree.input)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**proxies, **quiet, **(env or {})}.items():
            if value is None:
                mp.delenv(key, raising=False)
            else:
                mp.setenv(key, value)
        # no parameters here: the kernel folder runs exactly as rendered (render_kernel injected them)
        papermill.execute_notebook(str(notebook), str(executed), kernel_name=kernel,
                                   cwd=str(tree.working), progress_bar=False, start_timeout=180,
                                   execution_timeout=300)
    assert _snapshot(tree.input) == before, f"the {name} notebook changed files under /kaggle/input"
    output = tree.base / "outputs" / name
    shutil.copytree(tree.working, output)
    return output, _outputs_text(executed)


def _outputs_text(path: Path) -> str:
    nb = nbformat.read(str(path), as_version=4)
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text = out.get("text", "") if out.output_type == "stream" else out.get("data", {}).get("text/plain", "")
            parts.append(text)
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------ the chain


@pytest.fixture(scope="module")
def teacher(kaggle):
    """Stage 1 with publish=True but no credentials anywhere: it must bundle (for the dataset and the Kaggle Model),
    then skip publishing."""
    params = dict(arch="resnet10t", image_size=32, data_kwargs={"folds": 3}, epochs=1, lr=3e-3, publish=True,
                  model=MODEL, **TRAIN)
    out, text = _execute(kaggle, "teacher", params)
    return out, text


@pytest.fixture(scope="module")
def iterated(kaggle, teacher):
    """Stages 2-4 from the teacher's bundle, publishing the new bundle to a fake Kaggle as a new dataset version
    and as a new variation of the Kaggle Model, based on the teacher's variation."""
    teacher_out, _ = teacher
    _attach(kaggle, teacher_out / "bundle", f"datasets/{OWNER}/{WEIGHTS.split('/')[1]}")
    params = dict(edits=[["swap_activation", {"act": "silu"}]], publish=True, model=MODEL, **TRAIN)
    with FakeKaggle(credentials=(OWNER, "secret")) as server:
        server.add_dataset(WEIGHTS)  # the teacher's dataset exists: the new bundle becomes its next version
        server.add_model(MODEL, instance=("resnet10t", 1))  # and so does its variation of the model
        env = {"KAGGLE_USERNAME": OWNER, "KAGGLE_KEY": "secret", "NO_PROXY": "", "no_proxy": "",
               **{k: server.url for k in ("HTTP_PROXY", "http_proxy")}}
        out, text = _execute(kaggle, "iterate", params, env=env)
    return out, text, server


@pytest.fixture(scope="module")
def inferred(kaggle, iterated):
    """Inference from the iterated run's bundle, attached beside the teacher's (flat `input/<slug>` layout),
    on a Python without kaggle_tli: the notebook installs it from the bundles' wheel, offline."""
    iterate_out, _, _ = iterated
    run_id = json.loads((iterate_out / "bundle" / BUNDLE_MARKER).read_text())["run_id"]
    _attach(kaggle, iterate_out / "bundle", "tiny-digits-weights-v2")
    out, text = _execute(kaggle, "inference", dict(run_id=run_id), kernel=BARE_KERNEL)
    return out, text, run_id


def test_teacher_trains_bundles_and_skips_publishing_without_credentials(teacher):
    out, text = teacher
    bundle_dir = out / "bundle"
    meta = validate_bundle(bundle_dir)  # what a publish would check before any upload
    assert meta["id"] == WEIGHTS, f"the bundle is for the weights dataset parameter: {meta['id']}"
    marker = json.loads((bundle_dir / BUNDLE_MARKER).read_text())
    assert marker["arch"] == "resnet10t" and marker["lineage"] == [marker["run_id"]], marker
    run = json.loads((bundle_dir / "run.json").read_text())
    assert run["status"] == "done" and run["stage"] == "finetune", run
    assert run["data"]["root"].endswith(f"competitions/{COMPETITION}"), "found by marker under input_root"
    assert "publishing skipped" in text and "no Kaggle credentials" in text, text[-2000:]
    [wheel] = bundle_dir.glob("kaggle_tli-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    missing = {f"kaggle_tli/templates/{t}.ipynb" for t in TEMPLATES} - names
    assert not missing, f"the wheel ships the templates as kaggle_tli.templates; missing {missing}"


def test_teacher_recognises_a_pixel_table_competition(kaggle):
    """The example kernels' competition (Digit Recognizer) is a pixel table: `data_kind="auto"` must see it."""
    out, text = _execute(kaggle, "teacher", dict(arch="resnet10t", max_steps=1, batch_size=16, epochs=1,
                                                 train_kwargs={"progress": False}),
                         competition=PIXEL_COMPETITION, name="teacher-pixels")
    run = json.loads((out / "bundle" / "run.json").read_text())
    assert run["data"]["type"] == "PixelCsvData" and run["data"]["in_chans"] == 1, run["data"]
    assert run["data"]["root"].endswith(f"competitions/{PIXEL_COMPETITION}"), "picked by its slug"
    assert "publish=False" in text, "publishing is off by default, and the notebook says so"


def test_iterate_injects_from_the_attached_bundle_keeps_lineage_and_publishes_a_version(teacher, iterated):
    teacher_out, _ = teacher
    out, text, server = iterated
    teacher_id = json.loads((teacher_out / "bundle" / BUNDLE_MARKER).read_text())["run_id"]
    run = json.loads((out / "bundle" / "run.json").read_text())
    assert run["parent_id"] == teacher_id and run["stage"] == "inject" and run["init"] == "tli", run
    assert run["arch"]["name"] == "resnet10t-swap_activation", run["arch"]
    lineage = [r["run_id"] for r in Ledger(out / "bundle" / "ledger.csv").lineage(run["id"])]
    assert lineage == [run["id"], teacher_id], f"the lineage crosses notebooks through the bundle: {lineage}"
    assert "TLI score" in text and "coverage" in text, "the TLI report summary is shown"
    assert (out / "lineage.png").read_bytes()[:4] == b"\x89PNG", "the lineage plot is drawn"

    [upload] = server.uploads
    assert (upload.kind, f"{upload.owner}/{upload.slug}") == ("version", WEIGHTS), upload
    assert {"model.safetensors", "run.json", "ledger.csv", BUNDLE_MARKER} <= set(upload.files), sorted(upload.files)
    assert json.loads(upload.files[BUNDLE_MARKER])["run_id"] == run["id"], "the new run went up"
    assert "resnet10t-swap_activation" in (upload.notes or ""), upload.notes
    assert "published (versioned)" in text, text[-2000:]

    # the Kaggle Model: the teacher's handle came with its mounted bundle, the child's variation names it as base
    [variation] = server.model_uploads
    base = f"{MODEL}/pytorch/resnet10t"
    assert (variation.kind, variation.variation, variation.base) == ("instance", "resnet10t-swap-activation", base)
    assert variation.framework == "MODEL_FRAMEWORK_PY_TORCH" and variation.files == upload.files, "the same bundle"
    assert run["parent_kaggle_model"] == base, "the child's run.json keeps its parent's variation"
    row = Ledger(out / "runs").get(run["id"])
    assert (row["kaggle_model"], row["parent_kaggle_model"]) == (f"{MODEL}/pytorch/resnet10t-swap-activation/1", base)
    assert f"published (created) {MODEL}/pytorch/resnet10t-swap-activation/1" in text, text[-2000:]


def test_inference_writes_a_valid_submission_offline(kaggle, inferred):
    out, text, run_id = inferred
    assert "kaggle_tli installed offline from" in text, text[:3000]
    installed = subprocess.run([str(kaggle.bare_python), "-c", "import kaggle_tli; print(kaggle_tli.__file__)"],
                               capture_output=True, text=True, timeout=120, cwd=kaggle.base)
    assert Path(installed.stdout.strip()).is_relative_to(kaggle.bare_python.parent.parent), (
        f"kaggle_tli came from the wheel into the bare venv: {installed.stdout} {installed.stderr}")
    competition = kaggle.input / "competitions" / COMPETITION
    sample = pd.read_csv(competition / "sample_submission.csv")
    submission = pd.read_csv(out / "submission.csv")
    assert list(submission.columns) == list(sample.columns), submission.columns
    assert submission["id"].tolist() == sample["id"].tolist(), "the sample's ids, in its order"
    assert set(submission["label"]) <= {"zero", "one", "two"}, "labels are the competition's class names"
    assert submission.notna().all().all()
    assert not (out / "bundle").exists() and not (out / "runs").exists(), "inference trains nothing"

    # both bundles are attached: the dataset alone is ambiguous, the run id is not
    with pytest.raises(ValueError, match="several bundles of dataset"):
        locate_bundle(kaggle.input, dataset=WEIGHTS)
    assert locate_bundle(kaggle.input, dataset=WEIGHTS, run_id=run_id).name == "tiny-digits-weights-v2"
    with pytest.raises(FileNotFoundError, match="no kaggle-tli bundle of dataset 'tester/other-weights'"):
        locate_bundle(kaggle.input, dataset="tester/other-weights")


@pytest.fixture(scope="module")
def inferred_from_model(kaggle, iterated, inferred):
    """Inference again, its weights now from the iterated run's Kaggle Model version mounted models-style. After
    `inferred`: its bundle is the same run's, and would make that kernel's dataset choice ambiguous."""
    iterate_out, _, _ = iterated
    _attach(kaggle, iterate_out / "bundle", "tiny-digits-tli/pytorch/resnet10t-swap-activation/1")
    source = f"{MODEL}/pytorch/resnet10t-swap-activation/1"
    out, text = _execute(kaggle, "inference", {}, name="inference-model", weights=None, model_sources=(source,))
    return out, text, source


def test_inference_from_a_kaggle_model_mount_gives_the_same_submission(kaggle, inferred, inferred_from_model):
    out, text, source = inferred_from_model
    meta = json.loads((kaggle.base / "kernels" / "inference-model" / "kernel-metadata.json").read_text())
    assert meta["model_sources"] == [source] and meta["dataset_sources"] == [], meta
    picked = locate_bundle(kaggle.input, model=source)  # what the kernel's load_bundle(model=...) found
    assert picked.relative_to(kaggle.input).as_posix() == "tiny-digits-tli/pytorch/resnet10t-swap-activation/1"
    assert "kaggle_tli is importable" in text, text[:2000]
    from_dataset = pd.read_csv(inferred[0] / "submission.csv")
    pd.testing.assert_frame_equal(pd.read_csv(out / "submission.csv"), from_dataset)


# ------------------------------------------------------------------------------------------ every task shape

SHAPE_RUNS = ("binary", "multilabel", "tags", "regression", "folders")


def test_the_inference_template_predicts_every_task_shape(kaggle, teacher, tmp_path):
    """One kernel, several predictions: the inference notebook's prediction cells run once per shape, each after
    its own injected parameters (one papermill run, not five: kernels are slow to start)."""
    wheel = next((teacher[0] / "bundle").glob("*.whl"))  # the teacher's bundle already built one
    _set_mode(kaggle.input, writable=True)
    runs = {}
    for shape in SHAPE_RUNS:
        comp = write_shape_competition(kaggle.input / "competitions" / f"shape-{shape}", shape, per_class=4,
                                       n_test_per_class=1)
        run = kaggle_tli.finetune("resnet10t", open_competition(comp, image_size=32, folds=2), runs=tmp_path,
                                  max_steps=1, batch_size=8, progress=False)
        kaggle_tli.bundle(run, kaggle.input / f"shape-{shape}-weights", dataset=f"{OWNER}/shape-{shape}", wheel=wheel)
        runs[shape] = run.id
    _set_mode(kaggle.input, writable=False)
    if kaggle.working.exists():
        shutil.rmtree(kaggle.working)
    kaggle.working.mkdir(parents=True)
    cells = []
    for k, shape in enumerate(SHAPE_RUNS):
        folder = _render(kaggle, "inference", f"shape-{shape}", {"run_id": runs[shape], "tta": "all",
                         "working_root": str(kaggle.working / shape)}, f"inference-{shape}",
                         weights=f"{OWNER}/shape-{shape}")
        nb = nbformat.read(str(folder / "inference.ipynb"), as_version=4)
        injected = next(i for i, c in enumerate(nb.cells) if "injected-parameters" in c.metadata.get("tags", []))
        setup = next(i for i, c in enumerate(nb.cells) if "import kaggle_tli as kt" in c.source)
        picked = nb.cells if k == 0 else [nb.cells[injected], *nb.cells[setup:]]
        for i, cell in enumerate(picked):
            cell["id"] = f"{shape}-{i}"  # cell ids must stay unique in the combined notebook
        cells += picked
    nb.cells = cells
    combined = kaggle.base / "kernels" / "inference-shapes.ipynb"
    nbformat.write(nb, str(combined))
    out, text = _run_notebook(kaggle, combined, "inference-shapes")
    for shape in SHAPE_RUNS:
        sample = pd.read_csv(kaggle.input / "competitions" / f"shape-{shape}" / "sample_submission.csv", dtype=str)
        sub = pd.read_csv(out / shape / "submission.csv", dtype=str, keep_default_na=False)
        assert list(sub.columns) == list(sample.columns) and sub.iloc[:, 0].tolist() == sample.iloc[:, 0].tolist()
        values = sub.iloc[:, 1:]
        if shape in ("binary", "multilabel"):
            numbers = values.to_numpy(dtype=float)
            assert ((numbers > 0) & (numbers < 1)).all(), f"{shape}: probabilities, never hard labels"
        elif shape == "tags":
            assert all(set(t.split()) <= {"big", "even", "loop", "odd"} and t for t in values["tags"]), values
        elif shape == "regression":
            assert values["value"].astype(float).notna().all()
        else:
            assert set(values["label"]) <= set(WORDS), values


# ------------------------------------------------------------------------------------------ the files


EXAMPLES = {  # how kernels/ was rendered (kernels/README.md): the CLI's arguments
    "teacher": dict(competition="digit-recognizer", weights="your-kaggle-name/kaggle-tli-weights", gpu=True),
    "iterate": dict(competition="digit-recognizer", weights="your-kaggle-name/kaggle-tli-weights", gpu=True),
    "inference": dict(competition="digit-recognizer", weights="your-kaggle-name/kaggle-tli-weights", gpu=False),
}


@pytest.mark.parametrize("template", TEMPLATES)
def test_example_kernels_are_rendered_from_the_current_templates(template, tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    out = render_kernel(template, **EXAMPLES[template], out_dir=tmp_path)
    for name in (f"{template}.ipynb", "kernel-metadata.json"):
        shipped = REPO / "kernels" / template / name
        assert shipped.read_text() == (out / name).read_text(), (
            f"{shipped.relative_to(REPO)} differs from a fresh render: re-render it as kernels/README.md says")
    nb = nbformat.read(str(out / f"{template}.ipynb"), as_version=4)
    nbformat.validate(nb)
    first = nb.cells[1]
    assert first.cell_type == "code" and "HF_HUB_OFFLINE" in first.source and "NO_ALBUMENTATIONS_UPDATE" in first.source
    sources = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "/kaggle/input/" not in sources, "no mount layout is hard-coded, only the root parameter"


def test_templates_ship_in_the_package_and_every_package_is_listed():
    names = {p.stem for d in template_dirs() for p in d.glob("*.ipynb")}
    assert names >= set(TEMPLATES), f"templates found: {names} in {template_dirs()}"
    pyproject = (REPO / "pyproject.toml").read_text()
    listed = set(re.findall(r'"([\w.]+)"', re.search(r"(?ms)^packages = \[(.*?)\]", pyproject).group(1)))
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "kaggle_tli").rglob("__init__.py")}
    assert on_disk | {"kaggle_tli.templates"} == listed, (
        f"pyproject's [tool.setuptools] packages must list every package: missing {on_disk - listed}")


def test_find_credentials_looks_at_variables_files_and_kaggle_secrets(tmp_path, monkeypatch):
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "kaggle_secrets", None)  # not a Kaggle notebook: import fails
    assert find_credentials() is None
    (tmp_path / "kaggle.json").write_text("{}")
    assert find_credentials() == str(tmp_path / "kaggle.json")
    (tmp_path / "kaggle.json").unlink()

    class Secrets:  # Kaggle's UserSecretsClient: one secret set, the other missing
        def get_secret(self, name):
            if name == "KAGGLE_KEY":
                raise RuntimeError("no secret KAGGLE_KEY attached")
            return "alice"

    monkeypatch.setitem(sys.modules, "kaggle_secrets", SimpleNamespace(UserSecretsClient=Secrets))
    assert find_credentials() is None and os.environ["KAGGLE_USERNAME"] == "alice", "half a pair is not enough"
    monkeypatch.setenv("KAGGLE_KEY", "k")
    assert find_credentials() == "$KAGGLE_USERNAME and $KAGGLE_KEY"
