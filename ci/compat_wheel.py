"""The wheel that `bundle` writes installs offline over this venv's packages, and the installed copy iterates.

`make test-compat` runs this with .venv-compat's Python (the oldest versions kaggle-tli declares), from
the repository root, after the test subset. It is what an offline Kaggle notebook does with a weights
bundle: `pip install --no-deps --no-index` of the bundled wheel into whatever the image carries, then
train on from the bundle.

1. the tests' tiny digits competition, and a 2-step resnet10t teacher trained with the checkout
2. `bundle` of that run: weights, run.json, lineage, marker and the kaggle_tli wheel
3. a notebook Python: a new venv whose only packages are this venv's (a path entry to its site-packages),
   so the editable kaggle-tli of .venv-compat stays as it is; the wheel goes into it with --no-deps
   --no-index and no pip configuration
4. in a fresh process outside the checkout: `import kaggle_tli` must come from the installed wheel, and
   `kaggle-tli iterate BUNDLE resnet18` (the installed console script) must train a TLI student
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import kaggle_tli as kt
from kaggle_tli.ledger import Ledger

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import write_image_competition  # noqa: E402  (the tests' tiny competition: 36 images, not 1,797)

STEPS = ["--max-steps", "2", "--batch-size", "8", "--set", "progress=false"]


def _clean_env() -> dict[str, str]:
    """No pip configuration, index or PYTHONPATH: the install must work from the wheel alone, and the
    checkout must not be importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _run(command: list[str], cwd: Path) -> str:
    proc = subprocess.run(command, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        sys.exit(f"compat wheel check: {' '.join(command)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def _notebook_python(venv: Path) -> tuple[Path, Path]:
    """A new venv without pip that sees this venv's packages through a .pth (appended after its own
    site-packages, so the wheel installed there wins); returns its python and its site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], venv).strip())
    (site / "compat_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python, site


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="kaggle-tli-compat-wheel-"))
    try:
        root = write_image_competition(work / "data", digits=(0, 1, 2), per_class=12, n_test_per_class=4)
        data = kt.ImageCsvData(root, image_size=32, folds=2)
        teacher = kt.finetune("resnet10t", data, runs=work / "runs", max_steps=2, batch_size=8, progress=False)
        bundle_dir = kt.bundle(teacher, work / "bundle")
        [wheel] = bundle_dir.glob("kaggle_tli-*.whl")
        python, site = _notebook_python(work / "venv")
        # --ignore-installed: through the path entry pip sees .venv-compat's editable kaggle-tli as "satisfied"
        _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", str(wheel)], work)

        where = _run([str(python), "-c", "import kaggle_tli; print(kaggle_tli.__file__)"], work).strip()
        if not Path(where).is_relative_to(site):
            sys.exit(f"compat wheel check: kaggle_tli came from {where}, not from the installed wheel in {site}")

        script = python.with_name("kaggle-tli")
        _run([str(script), "iterate", str(bundle_dir), "resnet18", "--runs", str(work / "student"), *STEPS], work)
        # the student's ledger holds the teacher's row (its lineage, from the bundle) and the new run's
        [row] = [r for r in Ledger(work / "student").rows() if r["run_id"] != teacher.id]
        if (row["status"], row["init"], row["parent_run_id"]) != ("done", "tli", teacher.id):
            sys.exit(f"compat wheel check: the iterate run did not finish from the teacher: {row}")
        print(f"compat wheel check: {wheel.name} installed offline from {where}; iterate "
              f"{teacher.id} -> {row['run_id']} ({row['arch']}) done")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
