"""A training session: start a new run or continue an interrupted one, around the loop.

Everything that can be checked is checked before the run directory exists; then the session creates the run
directory, run.json and ledger row, takes the run's lock, launches training, and closes run.json and the ledger row
(done / interrupted / failed) whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from torch import nn

from kaggle_tli.checkpoint import load_state, save_weights
from kaggle_tli.data import KaggleData
from kaggle_tli.files import atomic_write_bytes, atomic_write_text
from kaggle_tli.ledger import Ledger
from kaggle_tli.models import create_model_from_spec
from kaggle_tli.runs import INIT_WEIGHTS, STATE_FILE, Run, load_run, make_run_dir, utc_now, write_run_info
from kaggle_tli.train.checks import check_input_size, check_same_classes, check_teacher, settle_metric
from kaggle_tli.train.config import TrainConfig, fold_plan, resolve_metric
from kaggle_tli.train.launch import check_devices, launch
from kaggle_tli.train.norms import check_precise
from kaggle_tli.train.records import truncate_log
from kaggle_tli.train.state import Job


class RunBusyError(RuntimeError):
    """Another process holds the run's lock: it is training that run right now."""


@dataclass
class StageRequest:
    """A new run, as `finetune` and `resume` describe it (everything already validated)."""

    stage: str
    init: str
    spec: dict
    data: KaggleData
    cfg: TrainConfig
    runs: Path
    init_state: dict[str, torch.Tensor]  # step-0 weights
    parent: Run | None = None
    init_files: dict[int, str] = field(default_factory=dict)  # per-fold step-0 weights (from the parent)
    extra: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    model: nn.Module | None = None  # the model the caller already built, for the input-size check
    input_checked: bool = False  # the caller already ran check_input_size on `model` (iterate does, before TLI)


_LEDGER_EXTRA = ("tli_score", "coverage", "notes")


def start_run(req: StageRequest) -> Run:
    """Create the run directory and ledger row, train, and close both (done / interrupted / failed).

    Everything that can be checked is checked before the run directory exists: folds, devices, that
    the model takes the data's images, and that the ledger is readable by this version. A failure
    while the run is being set up marks it failed (or removes a directory that holds no run.json
    yet) and releases its lock, so no run is left "running" with nobody training it.
    """
    folds = fold_plan(req.cfg, req.data.folds)
    req.cfg = settle_metric(req.cfg, req.data)
    check_devices(req.cfg)
    model = req.model if req.model is not None else create_model_from_spec(req.spec)
    if not req.input_checked:
        check_input_size(model, req.data, req.spec.get("name", "model"))
    check_precise(req.cfg, req.data, folds, model)
    check_teacher(req.cfg, req.extra)
    ledger = _ledger(req.runs)
    ledger.rows()  # a newer-schema or unreadable ledger fails here, before any run directory exists
    print(f"kaggle-tli: {req.data.describe_task()}")
    run_dir = make_run_dir(req.runs, req.spec.get("name", "model"))
    lock = FileLock(str(run_dir / ".lock"))
    lock.acquire(timeout=0)
    try:
        init_files = _setup_run(req, run_dir, folds, ledger)
    except BaseException as e:
        _abandon_setup(run_dir, ledger, e, remove_bare=True)
        lock.release()
        raise
    job = Job(run_dir, req.data, req.cfg, req.spec, folds, init_files)
    return _execute(job, ledger, lock, session_start=time.time())


def _setup_run(req: StageRequest, run_dir: Path, folds: list[int], ledger: Any) -> dict[int, str]:
    """Fill a fresh run directory (run.json, step-0 weights, folds.csv, extra files) and start its
    ledger row; returns the per-fold step-0 weight files."""
    # per-fold step-0 weights are copied in: the run must not depend on its parent's folder later
    init_files = {}
    for k in folds[1:]:
        if k in req.init_files:
            init_files[k] = f"init_fold{k}.safetensors"
            atomic_write_bytes(run_dir / init_files[k], Path(req.init_files[k]).read_bytes())
    info = _initial_info(req, run_dir, folds, init_files)
    write_run_info(run_dir, info)
    save_weights(req.init_state, run_dir / INIT_WEIGHTS, {"arch": req.spec.get("name", ""), "run_id": info["id"]})
    atomic_write_text(run_dir / "folds.csv", req.data.folds_frame().to_csv(index=False))
    for name, content in req.files.items():
        atomic_write_bytes(run_dir / Path(name).name, content.encode() if isinstance(content, str) else content)
    ledger.start(info["id"], **_ledger_start_fields(req, info, run_dir, folds))
    return init_files


def _abandon_setup(run_dir: Path, ledger: Any, error: BaseException, *, remove_bare: bool) -> None:
    """Setup failed before training: a run marked "running" becomes "failed" (run.json and ledger), a
    new directory without run.json is removed. Never masks `error` (the caller re-raises it)."""
    if not (run_dir / "run.json").is_file():
        if remove_bare:
            shutil.rmtree(run_dir, ignore_errors=True)
        return
    reason = f"setup failed: {type(error).__name__}: {error}"
    with contextlib.suppress(OSError, ValueError):
        info = json.loads((run_dir / "run.json").read_text())
        if info.get("status") == "running":
            info.update(status="failed", finished_at=utc_now(), error=reason[:2000])
            write_run_info(run_dir, info)
    with contextlib.suppress(OSError, ValueError):  # LedgerError is a ValueError
        row = ledger.get(run_dir.name)
        if row is not None and row.get("status") == "running":
            ledger.finish(run_dir.name, "failed", notes=reason[:200])


def continue_run(run: Run, data: KaggleData, overrides: dict) -> Run:
    """Continue an interrupted (or killed, or failed) run in place, from its last state.pt."""
    allowed = {"time_budget_s", "num_workers", "checkpoint_every_steps", "device", "num_processes", "progress"}
    refused = sorted(set(overrides) - allowed)
    if refused:
        raise ValueError(
            f"cannot change {refused} while continuing interrupted run {run.id!r} (the resume would not be "
            f"exact); allowed: {sorted(allowed)}. To train on with other settings, let the run finish or start "
            "a child run from its weights with resume(run.build_model(), data, arch=run.arch, parent=run, ...)"
        )
    # a run saved before precise validation existed evaluated with running statistics: it goes on doing so
    saved = TrainConfig.from_dict({"eval_norms": "running", **run.config})
    has_state = (run.path / STATE_FILE).exists()
    if not has_state and not (run.path / INIT_WEIGHTS).is_file():
        raise FileNotFoundError(
            f"run {run.id!r} cannot be continued: it has neither a state.pt nor its step-0 weights "
            f"({run.info.get('step0_weights_removed') or INIT_WEIGHTS + ' is missing'}). Start a new run with the "
            "command that made this one (finetune or iterate)"
        )
    _check_same_world(run, saved, overrides, has_state)
    cfg = saved.replace(**overrides)
    check_devices(cfg)
    data = data.with_folds(run.path / "folds.csv")
    check_same_classes(run, data)
    check_input_size(create_model_from_spec(run.arch), data, run.arch.get("name", "model"))
    # read before taking the lock: a corrupt state.pt or ledger fails with the run left as it was
    state = load_state(run.path / STATE_FILE) if has_state else None
    ledger = _ledger(run.path.parent)
    ledger.rows()
    lock = FileLock(str(run.path / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout as e:
        raise RunBusyError(f"run {run.id!r} is being trained by another process right now (its lock is held): wait "
                           "for that process to finish or stop it, then continue the run") from e
    try:
        folds = fold_plan(cfg, data.folds)
        _reopen(run, cfg, state, ledger)
    except BaseException as e:
        _abandon_setup(run.path, ledger, e, remove_bare=False)
        lock.release()
        raise
    job = Job(run.path, data, cfg, run.arch, folds, {int(k): v for k, v in run.info.get("init_files", {}).items()})
    return _execute(job, ledger, lock, session_start=time.time())


def _check_same_world(run: Run, saved: TrainConfig, overrides: dict, has_state: bool) -> None:
    """The position inside an epoch (state.pt's batch_in_epoch) counts batches per process, and the
    schedule's length depends on the process count: continuing with another count would skip or
    repeat samples, so it is refused once a checkpoint exists."""
    n = overrides.get("num_processes", saved.num_processes)
    if n != saved.num_processes and has_state:
        raise ValueError(
            f"run {run.id!r} was trained with num_processes={saved.num_processes}, and its state.pt counts the "
            f"position inside the epoch per process: continuing with num_processes={n} would skip or repeat "
            f"samples. Continue with num_processes={saved.num_processes} (as many devices as before), or start "
            "a child run from its weights: resume(run.build_model(), data, arch=run.arch, parent=run, "
            f"num_processes={n}, ...)"
        )


def _reopen(run: Run, cfg: TrainConfig, state: dict | None, ledger: Any) -> None:
    """Mark a run being continued as running again (run.json, log.csv, ledger)."""
    done = [int(k) for k, r in run.info.get("folds", {}).items() if r.get("status") == "done"]
    truncate_log(run.path, state["fold"] if state else None, state["step"] if state else None, done)
    run.info.update(status="running", config=cfg.to_dict(), sessions=int(run.info.get("sessions", 1)) + 1)
    write_run_info(run.path, run.info)
    resumed_at = f"continued at fold {state['fold']} step {state['step']}" if state else "restarted from step 0"
    if ledger.get(run.id) is None:
        ledger.start(run.id, **{**_ledger_row_from_info(run), "notes": resumed_at})
    else:
        ledger.update(run.id, status="running", notes=resumed_at, finished_at=None)


def _execute(job: Job, ledger: Any, lock: Any, session_start: float) -> Run:
    status = "failed"
    try:
        launch(job)
        status = json.loads((job.run_dir / "run.json").read_text()).get("status", "failed")
        return load_run(job.run_dir)
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        try:
            _close(job, ledger, status, time.time() - session_start)
        finally:
            lock.release()


def _close(job: Job, ledger: Any, status: str, seconds: float) -> None:
    """Final run.json status and ledger row, whatever happened."""
    run = load_run(job.run_dir)
    info = run.info
    info["status"] = status if status != "running" else "failed"
    info["finished_at"] = utc_now()
    info["duration_s"] = round(float(info.get("duration_s") or 0.0) + seconds, 3)
    if info["status"] == "failed" and _no_step_taken(job.run_dir, info):
        _drop_step0_weights(job.run_dir, info)
    write_run_info(job.run_dir, info)
    metrics = info.get("metrics", {})
    ledger.finish(
        run.id, info["status"], steps=info.get("steps"), cv=metrics.get("cv"), best_cv=metrics.get("best_cv"),
        duration_s=info["duration_s"],
    )


def _no_step_taken(run_dir: Path, info: dict) -> bool:
    """No optimizer step was taken in any fold: no state.pt, no fold finished, progress still at step 0 (the loop
    records its first step of each fold in run.json)."""
    folds = info.get("folds", {}).values()
    started = any(r.get("status") in ("done", "interrupted") for r in folds)
    return not started and not (run_dir / STATE_FILE).exists() and not info.get("progress", {}).get("step")


def _drop_step0_weights(run_dir: Path, info: dict) -> None:
    """A run that failed before its first step has nothing to continue from, and its step-0 weights (tens of MB,
    recreated by running the same command again) would only fill the disk: remove them, and say so in run.json."""
    names = [INIT_WEIGHTS, *info.get("init_files", {}).values()]
    for name in names:
        (run_dir / name).unlink(missing_ok=True)
    info["step0_weights_removed"] = "the run failed before its first step; run the same command again to retry"


def _ledger(runs: Path) -> Any:
    return Ledger(runs)


def _initial_info(req: StageRequest, run_dir: Path, folds: list[int], init_files: dict[int, str]) -> dict:
    return {
        "schema": 1, "id": run_dir.name, "parent_id": req.parent.id if req.parent else None,
        "stage": req.stage, "init": req.init, "arch": req.spec, "num_classes": req.data.num_classes,
        "class_names": list(req.data.class_names), "config": req.cfg.to_dict(),
        "config_hash": req.cfg.config_hash(), "primary_fold": folds[0], "fold_plan": folds,
        "folds": {str(k): {"status": "pending"} for k in folds}, "metrics": {}, "status": "running",
        "created_at": utc_now(), "finished_at": None, "extra": dict(req.extra), "data": req.data.spec(),
        "init_files": {str(k): v for k, v in init_files.items()}, "sessions": 1,
        "parent_arch": req.parent.arch.get("name") if req.parent else None, "task": req.data.task_record(),
        # a parent loaded from a bundle built for a Kaggle Model names its variation: the child's own variation
        # will name it as its base (kaggle/model_files.py)
        "parent_kaggle_model": req.parent.info.get("kaggle_model") if req.parent else None,
    }


def _ledger_start_fields(req: StageRequest, info: dict, run_dir: Path, folds: list[int]) -> dict:
    fields = {
        "parent_run_id": info["parent_id"], "stage": req.stage, "arch": req.spec.get("name"),
        "parent_arch": info["parent_arch"], "parent_kaggle_model": info["parent_kaggle_model"], "init": req.init,
        "fold": _fold_label(folds),
        "epochs": req.cfg.epochs, "metric": resolve_metric(req.cfg.metric).name, "seed": req.cfg.seed,
        "config_hash": info["config_hash"], "git_sha": git_sha(), "checkpoint": str(run_dir.resolve()),
        "task": req.data.task,
        **_distill_fields(req.cfg.to_dict()),
    }
    fields.update({k: req.extra[k] for k in _LEDGER_EXTRA if k in req.extra})
    return fields


def _ledger_row_from_info(run: Run) -> dict:
    info = run.info
    cfg = info.get("config", {})
    return {
        "parent_run_id": info.get("parent_id"), "stage": info.get("stage"), "arch": run.arch.get("name"),
        "parent_arch": info.get("parent_arch"), "parent_kaggle_model": info.get("parent_kaggle_model"),
        "init": info.get("init"), "fold": _fold_label(info.get("fold_plan", [0])),
        "epochs": cfg.get("epochs"), "metric": str(cfg.get("metric")), "seed": cfg.get("seed"),
        "config_hash": info.get("config_hash"), "git_sha": git_sha(), "checkpoint": str(run.path.resolve()),
        "task": (info.get("task") or {}).get("name", "single_label"),
        **_distill_fields(cfg), **{k: info.get("extra", {})[k] for k in _LEDGER_EXTRA if k in info.get("extra", {})},
    }


def _distill_fields(cfg: dict) -> dict:
    """The ledger's distill columns: the KD weight and temperature of a distilled run, empty otherwise."""
    if not cfg.get("distill"):
        return {}
    return {"distill": float(cfg["distill"]), "distill_temperature": float(cfg.get("distill_temperature", 0.0))}


def _fold_label(folds: Sequence[int]) -> int | str:
    return folds[0] if len(folds) == 1 else ",".join(str(k) for k in folds)


def git_sha(cwd: str | Path | None = None) -> str:
    """Commit of the working directory's git checkout, or "" (not a checkout, no git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""
