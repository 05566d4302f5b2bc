"""Run-directory files: atomic writes, safetensors weights, safe state loading, finding runs.

Budget: < 5 s (no training).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from kaggle_tli.checkpoint import (
    CorruptCheckpointError,
    UnsafeCheckpointError,
    load_state,
    load_weights,
    save_state,
    save_weights,
    weights_metadata,
)
from kaggle_tli.files import atomic_write_json, atomic_write_text
from kaggle_tli.runs import Run, load_run, weights_name


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "run.json"
    atomic_write_text(target, "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old", "a failed write must leave the previous content intact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"], "no temporary file may be left behind"


def test_atomic_json_roundtrip_with_numpy_scalars(tmp_path):
    import json

    import numpy as np

    atomic_write_json(tmp_path / "a.json", {"cv": np.float32(0.5), "steps": np.int64(3), "p": tmp_path})
    assert json.loads((tmp_path / "a.json").read_text()) == {"cv": 0.5, "steps": 3, "p": str(tmp_path)}


def test_weights_roundtrip_with_tied_tensors_and_metadata(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight  # shared storage: safetensors refuses aliases unless copied

    model = Tied()
    save_weights(model.state_dict(), tmp_path / "m.safetensors", {"arch": "tied", "num_classes": 4})
    loaded = load_weights(tmp_path / "m.safetensors")
    assert set(loaded) == set(model.state_dict())
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    assert weights_metadata(tmp_path / "m.safetensors") == {"arch": "tied", "num_classes": "4"}


def test_views_of_one_tensor_at_different_offsets_are_saved_apart(tmp_path):
    base = torch.arange(12.0)
    state = {"whole": base, "middle": base[2:6], "tail": base[8:]}  # one storage, offsets 0, 2 and 8
    save_weights(state, tmp_path / "v.safetensors")
    loaded = load_weights(tmp_path / "v.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in state.items()), "each view must keep its own values"


def test_truncated_weights_are_a_clear_error(tmp_path):
    save_weights({"w": torch.ones(100)}, tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_weights(tmp_path / "m.safetensors")


def test_state_roundtrip_holds_rng_and_optimizer(tmp_path):
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "step": 7, "python": (3, (1, 2), None)}
    save_state(state, tmp_path / "state.pt")
    back = load_state(tmp_path / "state.pt")
    assert back["step"] == 7 and torch.equal(back["rng"], state["rng"])
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


class _Payload:
    """Unpickling this object would create a marker file: the way a malicious checkpoint runs code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class _SystemPayload:
    """A payload through a module torch blocks outright (os.system): torch words that refusal differently."""

    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("payload", ["allowlist", "blocked"])
def test_a_pickle_that_would_run_code_is_refused(tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = _Payload(marker) if payload == "allowlist" else _SystemPayload()
    torch.save({"step": 1, "evil": evil}, tmp_path / "state.pt")
    with pytest.raises(UnsafeCheckpointError, match="objects that safe loading refuses.*source you trust") as err:
        load_state(tmp_path / "state.pt")
    assert isinstance(err.value, pickle.UnpicklingError)
    said = str(err.value)
    assert "GLOBAL" in said, f"torch's reason must be quoted: {said}"
    # for a file from an attached dataset, torch's "weights_only=False will likely succeed" is the attack
    assert "weights_only" not in said and "likely succeed" not in said and "damaged" not in said, said
    # a bare pickle is not what torch.save writes: refused as not a training state, never unpickled
    with open(tmp_path / "bare.pt", "wb") as f:
        pickle.dump({"step": 1, "evil": _Payload(marker)}, f, protocol=2)
    with pytest.raises(CorruptCheckpointError):
        load_state(tmp_path / "bare.pt")
    assert not marker.exists(), "the payload must never execute"


def _truncated_state(path: Path) -> bytes:
    save_state({"model": {"w": torch.ones(256)}, "step": 3}, path)
    return path.read_bytes()[:-100]


@pytest.mark.parametrize(
    "make",
    [lambda p: b"this is not a checkpoint" * 8, lambda p: b"\x80\x02garbage", lambda p: b"", _truncated_state],
    ids=["text", "pickle-header-garbage", "empty", "truncated"],
)
def test_a_damaged_state_is_called_corrupt_not_unsafe(tmp_path, make):
    path = tmp_path / "state.pt"
    path.write_bytes(make(path))
    with pytest.raises(CorruptCheckpointError) as err:
        load_state(path)
    message = str(err.value)
    assert not isinstance(err.value, UnsafeCheckpointError), "damage is not an attack"
    assert "state.pt" in message and "Delete it" in message and "good copy" in message, message


def _fake_run(folder: Path, run_id: str) -> Path:
    path = folder / run_id
    path.mkdir(parents=True)
    atomic_write_json(path / "run.json", {"schema": 1, "id": run_id, "arch": {"name": "x"}, "num_classes": 2,
                                          "status": "done", "folds": {"0": {"status": "done"}}})
    return path


def test_load_run_by_path_file_or_id_and_helpful_error(tmp_path):
    runs = tmp_path / "runs"
    path = _fake_run(runs, "20260101-000000-x-abcd")
    assert load_run(path).id == "20260101-000000-x-abcd"
    assert load_run(path / "run.json").id == "20260101-000000-x-abcd"
    assert load_run("20260101-000000-x-abcd", runs=runs).path == path.resolve()
    with pytest.raises(FileNotFoundError, match="20260101-000000-x-abcd"):
        load_run("20260101-000000-x-abcf", runs=runs)  # one character off: the close id is suggested


def test_weights_names_and_missing_weights(tmp_path):
    assert weights_name("last", 0, 0) == "model.safetensors"
    assert weights_name("best", 2, 0) == "fold2_best.safetensors"
    assert weights_name("ema", None, 1) == "model_ema.safetensors"
    run = Run(path=_fake_run(tmp_path, "r1"), info=load_run(tmp_path / "r1").info)
    assert run.trained_folds == [0]
    with pytest.raises(FileNotFoundError, match="no model_best.safetensors"):
        run.weights_path("best")
    with pytest.raises(ValueError, match="which="):
        weights_name("final")


def test_a_run_whose_directory_was_deleted_says_so(tmp_path):
    import shutil

    run = load_run(_fake_run(tmp_path, "gone"))
    shutil.rmtree(run.path)
    match = r"run 'gone': its directory .*gone' no longer exists.*the ledger may still list it"
    with pytest.raises(FileNotFoundError, match=match):
        load_run(run)  # what predict, iterate and resume do first with a Run
    with pytest.raises(FileNotFoundError, match=match):
        run.weights_path("best")  # not "has no model_best.safetensors (weights present: none)"
