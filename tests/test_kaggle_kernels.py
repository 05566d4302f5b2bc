"""render_kernel / push_kernel: ready-to-push kernel folders that the real client accepts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_kaggle import FakeKaggle, point_client_at
from slugify import slugify as kaggle_slugify  # python-slugify: what the kaggle client compares against

from kaggle_tli.kaggle import push_kernel, render_kernel
from kaggle_tli.kaggle.kernels import slugify


def _cell(source, tags=(), outputs=()):
    return {"cell_type": "code", "execution_count": 3, "metadata": {"tags": list(tags)},
            "outputs": list(outputs), "source": source}


@pytest.fixture
def template(tmp_path):
    """A minimal template in papermill's shape: defaults in a cell tagged `parameters`."""
    nb = {
        "nbformat": 4, "nbformat_minor": 5, "metadata": {},
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": "# Teacher"},
            _cell(["competition = 'digits'\n", "weights = None\n", "epochs: int = 1\n"], tags=["parameters"]),
            _cell("result = (competition, weights, epochs)",
                  outputs=[{"output_type": "stream", "name": "stdout", "text": "stale"}]),
        ],
    }
    path = tmp_path / "teacher.ipynb"
    path.write_text(json.dumps(nb))
    return path


def _run_cells(nb):
    """Execute the notebook's code cells in order (enough for assignments) and return the namespace."""
    ns = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            src = cell["source"]
            exec("".join(src) if isinstance(src, list) else src, ns)
    return ns


def test_metadata_is_complete_and_explicit(template, tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    out = render_kernel(template, competition="digit-recognizer", weights="alice/tli-weights", gpu=True,
                        out_dir=tmp_path / "k", parameters={"epochs": 5})
    meta = json.loads((out / "kernel-metadata.json").read_text())
    assert meta == {
        "id": "alice/digit-recognizer-teacher", "title": "Digit Recognizer Teacher", "code_file": "teacher.ipynb",
        "language": "python", "kernel_type": "notebook", "is_private": True, "enable_gpu": True,
        "enable_tpu": False, "enable_internet": False, "dataset_sources": ["alice/tli-weights"],
        "competition_sources": ["digit-recognizer"], "kernel_sources": [], "model_sources": [],
        "machine_shape": "NvidiaTeslaT4",
    }, meta
    assert kaggle_slugify(meta["title"]) == meta["id"].split("/")[1], "title and id slugify to each other"
    cpu = render_kernel(template, competition="digit-recognizer", weights=None, out_dir=tmp_path / "cpu",
                        owner="bob", title="My CPU notebook", private=False)
    meta = json.loads((cpu / "kernel-metadata.json").read_text())
    assert meta["id"] == "bob/my-cpu-notebook" and meta["enable_gpu"] is False and "machine_shape" not in meta
    assert meta["is_private"] is False and meta["dataset_sources"] == [] and meta["enable_internet"] is False


def test_parameters_are_injected_after_the_defaults(template, tmp_path):
    out = render_kernel(template, competition="digit-recognizer", weights=["alice/w-one", "alice/w-two"],
                        out_dir=tmp_path / "k", owner="alice", parameters={"epochs": 7})
    nb = json.loads((out / "teacher.ipynb").read_text())
    tags = [c["metadata"].get("tags", []) for c in nb["cells"]]
    assert tags[1] == ["parameters"] and tags[2] == ["injected-parameters"], tags
    ns = _run_cells(nb)
    assert ns["result"] == ("digit-recognizer", ["alice/w-one", "alice/w-two"], 7), ns["result"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in nb["cells"] if c["cell_type"] == "code")
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    # rendering a rendered notebook replaces its injected cell instead of stacking another
    again = render_kernel(out / "teacher.ipynb", competition="other-comp", weights=None, out_dir=tmp_path / "k2",
                          owner="alice")
    nb2 = json.loads((again / "teacher.ipynb").read_text())
    assert sum("injected-parameters" in c["metadata"].get("tags", []) for c in nb2["cells"]) == 1
    assert _run_cells(nb2)["result"] == ("other-comp", None, 1)


def test_bad_input_is_named(template, tmp_path):
    kw = dict(competition="digits", weights="alice/tli-weights", out_dir=tmp_path / "k", owner="alice")
    with pytest.raises(ValueError, match=r"no parameter\(s\) \['lr'\].*declares \['competition', 'epochs', 'weights'\]"):
        render_kernel(template, parameters={"lr": 0.1}, **kw)
    with pytest.raises(TypeError, match="plain Python literal"):
        render_kernel(template, parameters={"epochs": object()}, **kw)
    with pytest.raises(ValueError, match="owner/slug"):
        render_kernel(template, **{**kw, "weights": "no-owner"})
    with pytest.raises(ValueError, match="5-50 ASCII"):
        render_kernel(template, title="Kürbis notebook", **kw)
    with pytest.raises(ValueError, match="unknown template 'nope'"):
        render_kernel("nope", **kw)
    bare = tmp_path / "bare.ipynb"
    bare.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [_cell("x = 1")]}))
    with pytest.raises(ValueError, match="tagged 'parameters'"):
        render_kernel(bare, **kw)
    assert not (tmp_path / "k").exists(), "nothing written for bad input"


@pytest.mark.parametrize("title", ["Digit Recognizer Teacher", "TLI: resnet18 -> resnet34 (v2)", "bob's  model__x"])
def test_slug_matches_kaggle_client(title):
    assert slugify(title) == kaggle_slugify(title)


def test_push_kernel_sends_what_the_metadata_says(template, tmp_path, monkeypatch):
    out = render_kernel(template, competition="digit-recognizer", weights="alice/tli-weights", gpu=True,
                        out_dir=tmp_path / "k", owner="alice")
    with FakeKaggle(credentials=("alice", "secret")) as server:
        point_client_at(server, monkeypatch, tmp_path / "home")
        result = push_kernel(out)
        [body] = server.kernels
    assert result["version"] == 1 and result["id"] == "alice/digit-recognizer-teacher", result
    assert body["slug"] == "alice/digit-recognizer-teacher" and body["newTitle"] == "Digit Recognizer Teacher"
    assert (body["language"], body["kernelType"]) == ("python", "notebook")
    assert body["isPrivate"] is True and body["enableGpu"] is True and body["machineShape"] == "NvidiaTeslaT4"
    assert body["enableInternet"] is False, "internet off is sent explicitly (the client defaults to on)"
    assert body["datasetDataSources"] == ["alice/tli-weights"] and body["competitionDataSources"] == ["digit-recognizer"]
    sent = json.loads(body["text"])
    assert any("injected-parameters" in c["metadata"].get("tags", []) for c in sent["cells"])


def test_real_kaggle_cli_pushes_the_rendered_folder(template, tmp_path):
    """`kaggle kernels push` in a subprocess, reaching the fake as its HTTP proxy."""
    out = render_kernel(template, competition="digit-recognizer", weights="alice/tli-weights",
                        out_dir=tmp_path / "k", owner="alice")
    home = tmp_path / "home"
    (home / "tmp").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_") and "proxy" not in k.lower()}
    with FakeKaggle(credentials=("alice", "secret")) as server:
        env.update(HOME=str(home), TMPDIR=str(home / "tmp"), KAGGLE_API_ENVIRONMENT="LOCALHOST",
                   KAGGLE_USERNAME="alice", KAGGLE_KEY="secret", HTTP_PROXY=server.url, http_proxy=server.url,
                   NO_PROXY="", no_proxy="")
        proc = subprocess.run([sys.executable, "-m", "kaggle", "kernels", "push", "-p", str(out)], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        [body] = server.kernels
    assert "successfully pushed" in proc.stdout, proc.stdout
    assert "does not resolve" not in proc.stdout, "the client found title and id consistent"
    assert body["enableInternet"] is False and body["isPrivate"] is True
    assert Path(out / "teacher.ipynb").is_file()
