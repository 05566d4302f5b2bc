"""Stage 3: TLI from runs and weight files.

The engine (`kaggle_tli.tli`) takes two modules. This layer turns what a Kaggle user actually has (a run, a run id, a
run directory on a read-only input path, a `.safetensors` file written by kaggle-tli) into modules, builds the new
architecture through the registry, and injects.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from kaggle_tli.checkpoint import load_weights, weights_metadata
from kaggle_tli.models import arch_spec, create_model, create_model_from_spec
from kaggle_tli.runs import Run, load_run
from kaggle_tli.tli import TransferOptions, TransferReport
from kaggle_tli.tli import rank_teachers as _engine_rank
from kaggle_tli.tli import transfer as _engine_transfer
from kaggle_tli.tli.options import DEFAULTS
from kaggle_tli.train.checks import check_arch_channels

TeacherLike = nn.Module | Run | str | Path


def load_teacher(source: TeacherLike, *, which: str = "last", runs: str | Path | None = None) -> nn.Module:
    """A teacher model from a module, a `Run`, a run id or directory, or a kaggle-tli `.safetensors` file."""
    if isinstance(source, nn.Module):
        return source
    if isinstance(source, Run):
        return source.build_model(which)
    path = Path(source).expanduser()
    if path.suffix == ".safetensors":
        return _model_from_weights(path)
    return load_run(source, runs=runs).build_model(which)


def _model_from_weights(path: Path) -> nn.Module:
    """A model rebuilt from the architecture recorded in a weights file's metadata (kaggle-tli writes it)."""
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {str(path)!r}")
    try:
        meta = weights_metadata(path)
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise ValueError(f"{str(path)!r} is not a readable safetensors file ({e}); it may be truncated") from e
    run_dir = path.parent
    if (run_dir / "run.json").is_file():  # a file inside a run directory: the run knows its architecture
        model = create_model_from_spec(load_run(run_dir).arch)
    elif meta.get("arch_spec"):  # written by `kaggle-tli inject`: the full recipe, edits included
        model = create_model_from_spec(json.loads(meta["arch_spec"]))
    elif meta.get("arch") and meta.get("num_classes"):
        model = create_model(meta["arch"], num_classes=int(meta["num_classes"]))
    else:
        raise ValueError(
            f"{str(path)!r} does not say which architecture its weights belong to (no run.json beside it, no 'arch' "
            "in its metadata). Build the model yourself, load the weights into it, and pass the module."
        )
    try:
        model.load_state_dict(load_weights(path), strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"{str(path)!r} does not fit the architecture recorded with it ({type(model).__name__}): "
            f"{str(e).splitlines()[0]}. Was the file edited or copied from another run?"
        ) from e
    return model


def transfer(
    teacher: TeacherLike | Sequence[TeacherLike],
    student: nn.Module,
    *,
    which: str = "last",
    input_size: tuple[int, ...] | None = None,
    teacher_input_size: tuple[int, ...] | None = None,
    options: TransferOptions | None = None,
    **overrides: Any,
) -> TransferReport:
    """Inject a teacher's weights into `student` in place; the options (`lam=`, `method=`, ...) are the engine's,
    `kaggle_tli.TransferOptions`.

    `teacher` may be a module, a `Run`, a run id or run directory, a `.safetensors` file written by kaggle-tli, or a
    list of these (several teachers: each student tensor takes its best source). `which` picks the run's "last",
    "best" or "ema" weights.
    """
    opts = (options or DEFAULTS).with_overrides(**overrides)  # checked before any file is read
    many = isinstance(teacher, (list, tuple))
    teachers = [load_teacher(t, which=which) for t in (teacher if many else [teacher])]
    return _engine_transfer(teachers if many else teachers[0], student, input_size=input_size,
                            teacher_input_size=teacher_input_size, options=opts)


def rank_teachers(
    student: nn.Module,
    candidates: Mapping[str, TeacherLike] | Sequence[TeacherLike],
    *,
    which: str = "last",
    runs: str | Path | None = None,
    **options,
) -> pd.DataFrame:
    """`kaggle_tli.tli.rank_teachers` with candidates given as modules, `Run`s, run ids or directories, or
    `.safetensors` files written by kaggle-tli (a list is named by run id or path). `options`: `input_size`,
    `batches`, `max_batches`, `progress`."""
    if not isinstance(candidates, Mapping):
        candidates = {_candidate_name(c, i): c for i, c in enumerate(candidates)}
    loaded = {name: load_teacher(c, which=which, runs=runs) for name, c in candidates.items()}
    return _engine_rank(student, loaded, **options)


def _candidate_name(candidate: TeacherLike, i: int) -> str:
    if isinstance(candidate, Run):
        return candidate.id
    if isinstance(candidate, nn.Module):
        return f"{i}:{type(candidate).__name__}"
    return str(candidate)


def inject(
    prev_run: Run | str | Path,
    new_arch: str,
    *,
    num_classes: int | None = None,
    which: str = "last",
    runs: str | Path | None = None,
    **transfer_options,
) -> tuple[nn.Module, TransferReport, dict]:
    """Stage 3: build `new_arch` from the registry and inject `prev_run`'s weights into it.

    Returns (student, report, arch spec of the student). The class count defaults to the previous run's.
    """
    run = load_run(prev_run, runs=runs)
    spec = student_spec(run, new_arch, num_classes=num_classes)
    student = create_model_from_spec(spec)
    report = _engine_transfer(run.build_model(which), student, **transfer_options)
    return student, report, spec


def student_spec(run: Run, new_arch: str, *, num_classes: int | None = None) -> dict:
    """The registry spec of `new_arch` for `run`'s task: its class count and input channels."""
    classes = run.num_classes if num_classes is None else num_classes
    in_chans = int(run.arch.get("in_chans") or 3)
    check_arch_channels(new_arch, in_chans, run_id=run.id)
    return arch_spec(new_arch, num_classes=classes, in_chans=in_chans)
