"""The wheel a bundle carries installs offline into a fresh venv, and can be rebuilt from there."""

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from kaggle_tli.kaggle import build_wheel


def _clean_env(**extra):
    """No pip config, index or PYTHONPATH leaking in: the install must work from the wheel alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


def _fresh_venv(path):
    """A new venv without pip, seeing the heavy dependencies (torch, timm...) of this one via a .pth."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=60)
    python = path / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # appended after the venv's own site-packages, so what pip installs there wins
    Path(purelib, "heavy_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python, Path(purelib)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_wheel_is_pure_python_and_complete(wheel):
    assert wheel.name.endswith("-py3-none-any.whl"), f"installs on any notebook Python: {wheel.name}"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert "kaggle_tli/__init__.py" in names and "kaggle_tli/kaggle/publish.py" in names, names
    assert not [n for n in names if "__pycache__" in n or n.startswith(("tests/", "build/"))], names
    assert any(n.endswith(".dist-info/entry_points.txt") for n in names), "the kaggle-tli console script"


def test_offline_install_into_fresh_venv_and_repack(wheel, tmp_path):
    python, site = _fresh_venv(tmp_path / "venv")
    # --ignore-installed: the heavy-deps .pth may show an editable kaggle-tli that pip would call "satisfied"
    install = [str(python), "-m", "pip", "install", "--no-index", "--no-deps", "--ignore-installed", "--find-links",
               str(wheel.parent), "kaggle-tli"]
    proc = subprocess.run(install, cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    check = ("import kaggle_tli, kaggle_tli.kaggle, torch, timm; "
             "print(kaggle_tli.__file__); print(kaggle_tli.kaggle.find_bundles('/nonexistent'))")
    proc = subprocess.run([str(python), "-c", check], cwd=tmp_path, env=_clean_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    where = Path(proc.stdout.splitlines()[0])
    assert where.is_relative_to(site), f"imported from the installed wheel, not the source tree: {where}"

    # no source checkout there: a notebook bundling its own run packs the installed files instead
    repack = "from kaggle_tli.kaggle import build_wheel; print(build_wheel('rebuilt'))"
    proc = subprocess.run([str(python), "-c", repack], cwd=tmp_path, env=_clean_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rebuilt = tmp_path / proc.stdout.strip()
    assert rebuilt.name == wheel.name
    with zipfile.ZipFile(wheel) as a, zipfile.ZipFile(rebuilt) as b:
        original = {n: a.read(n) for n in a.namelist() if not n.endswith("RECORD")}
        again = {n: b.read(n) for n in b.namelist() if not n.endswith("RECORD")}
    assert again == original, f"same files, same bytes: {sorted(set(original) ^ set(again))}"

    # and the rebuilt wheel installs too (a second notebook down the chain)
    python2, site2 = _fresh_venv(tmp_path / "venv2")
    install[0], install[-2] = str(python2), str(rebuilt.parent)
    proc = subprocess.run(install, cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (site2 / "kaggle_tli" / "kaggle" / "bundle.py").is_file()
