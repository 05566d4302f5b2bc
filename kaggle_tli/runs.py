"""A run directory and its `Run` handle: the layout of the folder, and run.json written and read only here.

    <runs>/<run_id>/
      run.json              what the run is: arch spec, config, classes, metrics, parent, status
      model.safetensors     last weights of the primary fold (the TLI teacher); model_best / model_ema
      fold<k>.safetensors   last weights of another trained fold (fold<k>_best, fold<k>_ema)
      init.safetensors      the weights at step 0 (random init, pretrained, or the injected student)
      state.pt              everything an exact resume needs (weights, optimizer, scheduler, scaler,
                            EMA, step, data position, RNG states), loaded with weights_only=True
      folds.csv, log.csv, oof.csv, submission.csv, transfer.csv (injected runs)

Every file is written atomically (`kaggle_tli.files`); weights and state go through `kaggle_tli.checkpoint`.
"""

from __future__ import annotations

import difflib
import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from torch import nn

from kaggle_tli.checkpoint import load_weights
from kaggle_tli.files import atomic_write_json
from kaggle_tli.models import create_model_from_spec
from kaggle_tli.tli.report import TransferReport

RUN_SCHEMA = 1
RUN_JSON = "run.json"
STATE_FILE = "state.pt"
INIT_WEIGHTS = "init.safetensors"
WEIGHT_KINDS = ("last", "best", "ema")


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the millisecond (run.json timestamps)."""
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
        model = create_model_from_spec(self.arch)
        model.load_state_dict(load_weights(self.weights_path(which, fold)), strict=True)
        return model

    @property
    def report(self) -> TransferReport | None:
        """What TLI did to every tensor of an injected run (its transfer.csv); None for runs not injected."""
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
    """Write run.json of the run directory `path` (atomically)."""
    atomic_write_json(path / RUN_JSON, info)
