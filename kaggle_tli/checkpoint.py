"""Run directories: atomic files, safe weights, safe training state, and the `Run` handle.

    <runs>/<run_id>/
      run.json              what the run is: arch spec, config, classes, metrics, parent, status
      model.safetensors     last weights of the primary fold (the TLI teacher); model_best / model_ema
      fold<k>.safetensors   last weights of another trained fold (fold<k>_best, fold<k>_ema)
      init.safetensors      the weights at step 0 (random init, pretrained, or the injected student)
      state.pt              everything an exact resume needs (weights, optimizer, scheduler, scaler,
                            EMA, step, data position, RNG states), loaded with weights_only=True
      folds.csv, log.csv, oof.csv, submission.csv, transfer.csv (injected runs)

Every file is written to a temporary file in the same folder, fsynced and moved over the target with
`os.replace`, so a process killed at any moment (SIGKILL included) leaves the previous complete file
or the new complete file, never a torn one. Weights are safetensors (no code can hide in them);
`state.pt` goes through `torch.load(weights_only=True)`, which refuses any pickle that would build an
arbitrary Python object, and that refusal is reported as `UnsafeCheckpointError`; a damaged or
truncated `state.pt` (not a complete torch.save zip archive) is a `CorruptCheckpointError`.
"""

from __future__ import annotations

import difflib
import io
import json
import os
import pickle
import re
import secrets
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _st_load
from safetensors.torch import safe_open
from safetensors.torch import save as _st_save
from torch import nn

if TYPE_CHECKING:
    from kaggle_tli.tli.report import TransferReport

RUN_SCHEMA = 1
RUN_JSON = "run.json"
STATE_FILE = "state.pt"
INIT_WEIGHTS = "init.safetensors"
WEIGHT_KINDS = ("last", "best", "ema")


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds Python objects beyond tensors and plain containers: loading it could run code."""


class CorruptCheckpointError(ValueError):
    """A training state file is damaged or truncated (or not a torch.save archive at all)."""


# --------------------------------------------------------------------------------------------------
# atomic writes


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` so that readers (and a crash) see the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; a run dir is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    # the rename itself must reach the disk, or a power cut can bring the old name back
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (and Windows) do not fsync directories
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """`atomic_write_bytes` for an indented JSON document."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON: {obj!r}")


# --------------------------------------------------------------------------------------------------
# weights (safetensors) and state (torch.save, weights_only on load)


def save_weights(state_dict: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> Path:
    """Save tensors as safetensors, atomically. Tensors sharing memory (tied weights, or views of one
    tensor at any offset) are saved as separate copies, since safetensors refuses aliases."""
    seen: set[int] = set()
    tensors = {}
    for name, tensor in state_dict.items():
        t = tensor.detach().cpu().contiguous()
        # keyed on the storage alone: two views at different offsets still share memory
        key = t.untyped_storage().data_ptr() if t.numel() else id(t)
        if key in seen:
            t = t.clone()
        seen.add(key)
        tensors[name] = t
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    return atomic_write_bytes(path, _st_save(tensors, metadata=meta))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file onto the CPU; a missing or damaged file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {str(path)!r}")
    try:
        return _st_load(path.read_bytes())
    except SafetensorError as e:
        raise ValueError(f"{str(path)!r} is not a valid safetensors file ({e}); it may be truncated") from e


def weights_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata stored in a safetensors file (arch, run_id, num_classes...)."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def save_state(state: dict, path: str | Path) -> Path:
    """`torch.save` into memory, then one atomic write: a kill mid-save leaves the previous state."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


_CORRUPT_FIX = (
    "Delete it to restart the unfinished fold from its step-0 weights (finished folds are kept), or put back "
    "the last good copy (e.g. the run from the Kaggle dataset version you continued from)"
)


def load_state(path: str | Path) -> dict:
    """`torch.load(weights_only=True)`: tensors, numbers, strings and containers only.

    A pickle that would construct any other object (the way malicious checkpoints run code) is
    refused with `UnsafeCheckpointError` and nothing of it is executed. A file that is not a
    complete torch.save zip archive (truncated, overwritten, garbage) is a `CorruptCheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training state at {str(path)!r}")
    # torch.save writes a zip archive; a truncated one has lost its central directory at the end
    if not zipfile.is_zipfile(path):
        raise CorruptCheckpointError(
            f"{str(path)!r} is not a complete training state ({path.stat().st_size} bytes, not a torch.save zip "
            f"archive): it is truncated or damaged. {_CORRUPT_FIX}."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        said = _torch_reason(e)
        if "global" not in said.lower():  # a damaged pickle stream, not a forbidden object
            raise CorruptCheckpointError(f"{str(path)!r} is damaged ({said}). {_CORRUPT_FIX}.") from e
        raise UnsafeCheckpointError(
            f"refusing to load {str(path)!r}: it contains Python objects other than tensors and plain "
            "containers, and unpickling them could execute code. kaggle-tli never writes such files; "
            f"delete it or recreate it from a trusted source. (torch said: {said})"
        ) from e
    except (RuntimeError, EOFError, KeyError, ValueError, IndexError, TypeError, zipfile.BadZipFile) as e:
        raise CorruptCheckpointError(
            f"{str(path)!r} is damaged ({type(e).__name__}: {str(e).strip()[:300]}). {_CORRUPT_FIX}."
        ) from e


def _torch_reason(error: Exception) -> str:
    """The informative line of torch's weights_only error (its first lines are generic advice)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = [line for line in lines if "WeightsUnpickler error" in line or "Unsupported" in line]
    reason = (detail or lines or [type(error).__name__])[0]
    return reason.split(" Please use")[0]  # the rest is how to allowlist it, which we must not suggest


# --------------------------------------------------------------------------------------------------
# run directories


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_run_id(arch: str) -> str:
    """`20261127-113501-resnet18-3f2a`: sorts by creation time, unique thanks to the random tail."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9_.]+", "-", arch).strip("-")[:40] or "model"
    return f"{stamp}-{slug}-{secrets.token_hex(2)}"


def make_run_dir(runs: str | Path, arch: str) -> Path:
    """Create a fresh, empty run directory under `runs` (retrying on the rare id collision)."""
    runs = Path(runs).expanduser()
    runs.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        path = runs / new_run_id(arch)
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a unique run directory under {str(runs)!r}")


def weights_name(which: str = "last", fold: int | None = None, primary_fold: int = 0) -> str:
    """File name of the `which` weights of `fold` ("last" | "best" | "ema")."""
    if which not in WEIGHT_KINDS:
        raise ValueError(f"which={which!r}: choose one of {WEIGHT_KINDS}")
    suffix = "" if which == "last" else f"_{which}"
    if fold is None or fold == primary_fold:
        return f"model{suffix}.safetensors"
    return f"fold{fold}{suffix}.safetensors"


@dataclass
class Run:
    """A run directory and its `run.json`. Read-only use works on read-only folders."""

    path: Path
    info: dict

    @property
    def id(self) -> str:
        return self.info["id"]

    @property
    def parent_id(self) -> str | None:
        return self.info.get("parent_id")

    @property
    def arch(self) -> dict:
        """The architecture spec (`registry.arch_spec`) the weights belong to."""
        return self.info["arch"]

    @property
    def config(self) -> dict:
        return self.info.get("config", {})

    @property
    def metrics(self) -> dict:
        return self.info.get("metrics", {})

    @property
    def num_classes(self) -> int:
        return int(self.info["num_classes"])

    @property
    def class_names(self) -> list:
        return list(self.info.get("class_names", []))

    @property
    def status(self) -> str:
        return self.info.get("status", "")

    @property
    def stage(self) -> str:
        return self.info.get("stage", "")

    @property
    def primary_fold(self) -> int:
        return int(self.info.get("primary_fold", 0))

    @property
    def trained_folds(self) -> list[int]:
        """Folds with saved weights (finished, or stopped by the time budget), primary first."""
        folds = self.info.get("folds", {})
        done = [int(k) for k, v in folds.items() if v.get("status") in ("done", "interrupted")]
        return sorted(done, key=lambda k: (k != self.primary_fold, k))

    def weights_path(self, which: str = "last", fold: int | None = None) -> Path:
        """Path of the `which` weights ("last" | "best" | "ema") of `fold` (default: the primary fold)."""
        path = self.path / weights_name(which, fold, self.primary_fold)
        check_run_dir_exists(self)
        if not path.is_file():
            present = sorted(p.name for p in self.path.glob("*.safetensors"))
            raise FileNotFoundError(f"run {self.id!r} has no {path.name} (weights present: {present or 'none'})")
        return path

    def build_model(self, which: str = "last", fold: int | None = None) -> nn.Module:
        """The architecture rebuilt from `run.json["arch"]` with the `which` weights loaded (strictly)."""
        from kaggle_tli.registry import create_model_from_spec

        model = create_model_from_spec(self.arch)
        model.load_state_dict(load_weights(self.weights_path(which, fold)), strict=True)
        return model

    @property
    def report(self) -> TransferReport | None:
        """What TLI did to every tensor of an injected run (its transfer.csv); None for runs not injected."""
        from kaggle_tli.tli.report import TransferReport

        path = self.path / "transfer.csv"
        if not path.is_file():
            return None
        extra = self.info.get("extra", {})
        return TransferReport.from_csv(path, score=extra.get("tli_score", float("nan")),
                                       coverage=extra.get("coverage", float("nan")), settings=extra.get("tli", {}))

    def refresh(self) -> Run:
        """Re-read run.json (after another process updated it)."""
        self.info = _read_info(self.path)
        return self

    def __repr__(self) -> str:
        cv = self.metrics.get("cv")
        score = f", cv={cv:.4f}" if isinstance(cv, float) else ""
        return f"Run({self.id!r}, arch={self.arch.get('name')!r}, status={self.status!r}{score})"


def _read_info(path: Path) -> dict:
    try:
        info = json.loads((path / RUN_JSON).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path / RUN_JSON)!r} is not valid JSON ({e})") from e
    if int(info.get("schema", 0)) > RUN_SCHEMA:
        raise ValueError(f"{str(path)!r} was written by a newer kaggle-tli (run schema {info['schema']}); upgrade")
    return info


def load_run(path_or_id: str | Path | Run, runs: str | Path | None = None) -> Run:
    """A `Run` from a run directory, its run.json, or a run id looked up in `runs` (default "runs")."""
    if isinstance(path_or_id, Run):
        check_run_dir_exists(path_or_id)
        return path_or_id
    candidate = Path(path_or_id).expanduser()
    if candidate.name == RUN_JSON:
        candidate = candidate.parent
    search = Path(runs).expanduser() if runs is not None else Path("runs")
    for path in (candidate, search / str(path_or_id)):
        if (path / RUN_JSON).is_file():
            return Run(path=path.resolve(), info=_read_info(path))
    known = sorted(p.name for p in search.iterdir() if (p / RUN_JSON).is_file()) if search.is_dir() else []
    close = difflib.get_close_matches(str(path_or_id), known, n=3, cutoff=0.4)
    hint = f" Closest runs in {str(search)!r}: {close}." if close else f" Runs in {str(search)!r}: {known[-5:] or 'none'}."
    raise FileNotFoundError(f"no run {str(path_or_id)!r}: not a run directory (with {RUN_JSON}).{hint}")


def check_run_dir_exists(run: Run) -> None:
    """A `Run` object outlives its directory (deleted or moved after load_run): say so, rather than report its
    files one by one as missing."""
    if not run.path.is_dir():
        raise FileNotFoundError(
            f"run {run.id!r}: its directory {str(run.path)!r} no longer exists (deleted or moved since it was "
            "loaded); the ledger may still list it. Load the run from where it is now (load_run(<new path>)), or "
            "train it again"
        )


def write_run_info(path: Path, info: dict) -> None:
    atomic_write_json(path / RUN_JSON, info)
