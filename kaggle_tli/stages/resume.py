"""Stage 4: train on from existing weights (a TLI-injected student, a finished run, or an interrupted one).

What `resume(x, data, **cfg)` does depends on `x`:

* an `nn.Module` (typically the student TLI just injected): a **new run** from its weights. `arch`
  (name or `arch_spec` dict) is required, since the run must be able to rebuild the model; `parent`
  (a Run, id or path) is optional and, when given, supplies the config defaults and the fold split.
* a **finished** run (Run, id or path with status "done"): a **new child run** whose parent is that
  run. Each fold starts from the parent's last weights of the same fold when the parent trained it,
  else from the parent's primary-fold weights. Fresh optimizer and schedule.
* an **unfinished** run (status "interrupted" or "failed", or "running" but no longer held by any
  process, e.g. after a SIGKILL or a dead Kaggle session): the **same run continues** from its last
  `state.pt`, exactly (see kaggle_tli.train). Only runtime options may change (`time_budget_s`,
  `num_workers`, `checkpoint_every_steps`, `device`, `progress`; `num_processes` only while no
  checkpoint exists, since the position inside an epoch is counted per process). A read-only run
  directory (an attached Kaggle dataset) is first copied into `runs`.

A module is one set of weights, so every fold of the new run starts from it: when the run trains
several folds (`train_folds`) from a student injected from the primary-fold teacher, the other
folds' validation rows were seen by that teacher and their out-of-fold scores are optimistic.

A new run inherits its parent's `TrainConfig` (same fold, batch size, lr, metric...), with `cfg`
overriding single fields, and always uses the parent's `folds.csv`, so its validation rows are rows
the parent never trained on. `extra` goes to run.json["extra"] and its ledger columns (tli_score,
coverage, notes) to the ledger row; `files` are written into the run directory before training
(iterate passes the TLI report as transfer.csv).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kaggle_tli.checkpoint import load_weights
from kaggle_tli.data import KaggleData
from kaggle_tli.ledger import INITS, STAGES, Ledger
from kaggle_tli.models import create_model_from_spec
from kaggle_tli.runs import Run, load_run, weights_name
from kaggle_tli.train import StageRequest, TrainConfig, continue_run, fold_plan, start_run
from kaggle_tli.train.checks import check_data, check_spec_classes, spec_for_data


def resume(
    run_or_model: Run | str | Path | nn.Module,
    data: KaggleData,
    *,
    arch: str | dict | None = None,
    parent: Run | str | Path | None = None,
    stage: str = "resume",
    init: str = "resume",
    extra: dict | None = None,
    files: dict[str, str | bytes] | None = None,
    runs: str | Path | None = None,
    **cfg: Any,
) -> Run:
    """Train on from a module, a finished run (new child run) or an unfinished run (continued in place)."""
    check_data(data)
    if stage not in STAGES or init not in INITS:
        raise ValueError(f"stage={stage!r} / init={init!r}: stage is one of {STAGES}, init one of {INITS}")
    if isinstance(run_or_model, nn.Module):
        return _from_module(run_or_model, data, arch, parent, stage, init, extra, files, runs, cfg)
    run = load_run(run_or_model, runs)
    if run.status != "done":
        given = {"arch": arch, "parent": parent, "extra": extra, "files": files}
        if any(v is not None for v in given.values()) or stage != "resume" or init != "resume":
            raise ValueError(
                f"run {run.id!r} is unfinished ({run.status!r}) and is continued as it is; arch/parent/extra/files/"
                "stage/init apply to new runs only"
            )
        return continue_run(_writable(run, runs), data, cfg)
    return _from_run(run, data, arch, stage, init, extra, files, runs, cfg)


def _from_module(
    model: nn.Module, data: KaggleData, arch: str | dict | None, parent: Any, stage: str, init: str,
    extra: dict | None, files: dict | None, runs: Any, cfg: dict,
) -> Run:
    if arch is None:
        raise TypeError("resume(model, ...) needs arch=<name or arch_spec dict> so the run can rebuild the model")
    spec = arch if isinstance(arch, dict) else spec_for_data(arch, data)
    check_spec_classes(spec, data)
    parent_run = load_run(parent, runs) if parent is not None else None
    config, data = _config_and_split(parent_run, data, cfg)
    state, rebuilt = _matching_state(model, spec)
    request = StageRequest(
        stage=stage, init=init, spec=spec, data=data, cfg=config, runs=runs_dir_for(parent_run, runs),
        init_state=state, parent=parent_run, extra=dict(extra or {}), files=dict(files or {}), model=rebuilt,
    )
    return start_run(request)


def start_child(student: nn.Module, spec: dict, data: KaggleData, parent: Run, *, stage: str, init: str,
                extra: dict, files: dict, runs: Path, cfg: dict) -> Run:
    """A new child run of `parent` from a student the caller built from `spec` and already checked against `data`
    (iterate: its classes, its input size, the parent's fold split): nothing is rebuilt or checked twice."""
    config = _parent_config(parent, cfg)
    request = StageRequest(
        stage=stage, init=init, spec=spec, data=data, cfg=config, runs=runs,
        init_state={k: v.detach().cpu().clone() for k, v in student.state_dict().items()}, parent=parent,
        extra=dict(extra), files=dict(files), model=student, input_checked=True,
    )
    return start_run(request)


def _from_run(
    run: Run, data: KaggleData, arch: str | dict | None, stage: str, init: str, extra: dict | None,
    files: dict | None, runs: Any, cfg: dict,
) -> Run:
    name = arch.get("name") if isinstance(arch, dict) else arch
    if name is not None and name != run.arch.get("name"):
        raise ValueError(
            f"run {run.id!r} holds {run.arch.get('name')!r} weights, not {name!r}; to move them into another "
            "architecture, inject first (kaggle_tli.transfer) and pass the student model here"
        )
    check_spec_classes(run.arch, data)
    config, data = _config_and_split(run, data, cfg)
    primary = fold_plan(config, data.folds)[0]
    source = primary if primary in run.trained_folds else run.primary_fold
    init_files = {k: str(run.path / weights_name("last", k, run.primary_fold)) for k in run.trained_folds}
    request = StageRequest(
        stage=stage, init=init, spec=run.arch, data=data, cfg=config, runs=runs_dir_for(run, runs),
        init_state=load_weights(run.weights_path("last", source)), parent=run, init_files=init_files,
        extra=dict(extra or {}), files=dict(files or {}),
    )
    return start_run(request)


def _config_and_split(parent: Run | None, data: KaggleData, cfg: dict) -> tuple[TrainConfig, KaggleData]:
    """The parent's config with `cfg` on top, and the parent's fold split (when it saved one)."""
    if parent is None:
        config = TrainConfig.from_kwargs(**cfg)
    else:
        config = _parent_config(parent, cfg)
        if (parent.path / "folds.csv").is_file():
            data = data.with_folds(parent.path / "folds.csv")
        if list(parent.class_names) != list(data.class_names):
            raise ValueError(
                f"the data's classes {data.class_names[:10]} differ from parent run {parent.id!r}'s "
                f"{parent.class_names[:10]}"
            )
    fold_plan(config, data.folds)
    return config, data


def _parent_config(parent: Run, cfg: dict) -> TrainConfig:
    """The parent's training config with `cfg` on top (a child never downloads pretrained weights, and distills
    only when asked: its teacher is not its parent's)."""
    inherited = {**parent.config, "pretrained": False, "distill": 0.0, "distill_steps": None}
    return TrainConfig.from_dict(inherited).replace(**cfg)


def _matching_state(model: nn.Module, spec: dict) -> tuple[dict[str, torch.Tensor], nn.Module]:
    """The module's weights, checked to load strictly into the architecture `spec` rebuilds, and that
    rebuilt model (on the CPU, for the input-size check)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    rebuilt = create_model_from_spec(spec)
    try:
        rebuilt.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"the model passed to resume() does not match arch {spec.get('name')!r}: {str(e).splitlines()[0]} "
            "Pass the arch the model was built with (create_model(name, ...) -> arch=name)."
        ) from e
    return state, rebuilt


def runs_dir_for(parent: Run | None, runs: str | Path | None = None) -> Path:
    """Where a new run goes: `runs`, else beside its parent when that folder is writable, else ./runs."""
    if runs is not None:
        return Path(runs).expanduser()
    return parent.path.parent if parent is not None and os.access(parent.path.parent, os.W_OK) else Path("runs")


def _writable(run: Run, runs: str | Path | None) -> Run:
    """An unfinished run in a read-only folder (a Kaggle input) is copied into `runs` to continue there."""
    if os.access(run.path, os.W_OK):
        return run
    target = Path(runs or "runs").expanduser() / run.id
    if not target.exists():
        shutil.copytree(run.path, target, ignore=shutil.ignore_patterns(".lock", ".*.tmp"))
        Ledger(target.parent).import_lineage(run.id, near=run.path)
    return load_run(target)
