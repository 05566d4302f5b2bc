"""Weight bundles: a run directory packed as a ready-to-upload Kaggle dataset, and back.

A bundle is a flat folder (the Kaggle client uploads only top-level files unless told to zip
folders, and Kaggle's handling of uploaded archives varies, so everything sits at the top):

    model.safetensors            + model_best / model_ema / fold<k> .safetensors when the run has them
    run.json                     the run's record (unchanged but for the Kaggle Model handles, see below)
    log.csv, oof.csv, ...        the run's other top-level files (state.pt and the step-0 weights only
                                 for unfinished runs, or on request: see `include_state`)
    ledger.csv                   the ledger rows of the run's whole lineage, root first
    kaggle_tli-<v>-py3-none-any.whl   this package, for `pip install --no-index --find-links <bundle>`
    kaggle-tli-bundle.json       the marker notebooks search for under /kaggle/input
    dataset-metadata.json        id, title, license: what `kaggle datasets create` needs
    model-metadata.json          with `model=`: the Kaggle Model, and its PyTorch variation with the parent
    model-instance-metadata.json run's variation as `baseModelInstance` (see metadata.py)

With `model=`, the bundle's copy of run.json and its ledger row for the run also name the run's Kaggle Model
variation (`kaggle_model`) and its parent's (`parent_kaggle_model`), so a notebook that mounts the bundle and
iterates from it hands the lineage on to the next variation.

Because it keeps the run directory's shape, `load_bundle` hands it straight to `load_run`: the
bundle *is* a (read-only) run directory, usable as `prev_run` for `iterate`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kaggle_tli.files import atomic_write_json

from .locate import BUNDLE_MARKER, locate_bundle, read_json
from .metadata import (
    DATASET_METADATA,
    DEFAULT_DATASET_LICENSE,
    DEFAULT_MODEL_LICENSE,
    METADATA_FILES,
    OWNER_PLACEHOLDER,
    ModelHandle,
    dataset_metadata,
    slugify,
)
from .model_files import (
    arch_name,
    bundle_description,
    model_bodies,
    model_target,
    parent_model,
    write_model_files,
)
from .wheel import build_wheel, package_version

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "kaggle-tli-bundle"
BUNDLE_SCHEMA = 1
# run-directory files a finished run's bundle leaves behind (unless `include_state=True`): the optimizer
# state and the step-0 weights are large, and iterate and predict read the trained weights only. An
# unfinished run needs them to continue (resume loads state.pt, or restarts a fold from its step-0
# weights, and a distilling run reads its teacher's copy), so its bundle carries them by default.
_STATE_FILES = ("state.pt", "init.safetensors", "teacher.safetensors")
_SKIP_SUFFIXES = (".tmp", ".lock", ".partial")


def bundle(
    run: Any,
    out_dir: str | Path,
    *,
    dataset: str | None = None,
    title: str | None = None,
    license: str = DEFAULT_DATASET_LICENSE,
    runs: str | Path | None = None,
    include_state: bool | None = None,
    wheel: str | Path | None = None,
    model: str | None = None,
    variation: str | None = None,
    model_license: str = DEFAULT_MODEL_LICENSE,
) -> Path:
    """Pack `run` (a Run, a run directory, or a run id with `runs=`) into `out_dir` as a bundle.

    `dataset` ("owner/slug") goes into dataset-metadata.json; without it the owner comes from
    $KAGGLE_USERNAME (else a placeholder `publish(dataset=...)` must replace) and the slug from the
    run id. `model` ("owner/model") adds model-metadata.json and model-instance-metadata.json for the
    Kaggle Model's PyTorch `variation` (default: the run's architecture name) under `model_license`.
    `include_state` adds state.pt and the step-0 weights; by default (None) only an unfinished run
    (status other than "done") carries them, so that `resume` can continue it from the bundle. `wheel` reuses an existing kaggle_tli wheel instead of building one. The bundle is
    built next to `out_dir` and moved into place at the end, so a failure never leaves half a bundle.
    """
    run_dir, info = _resolve_run(run, runs)
    run_id = str(info["id"])
    dataset = dataset or _default_dataset(run_id)
    title = title or _default_title(info)
    metadata = dataset_metadata(dataset, title, license, allow_placeholder=True)
    handle = model_target(model, variation, info, model_license)
    if not (run_dir / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"run {run_id} at {run_dir} has no model.safetensors: bundle a run that finished at least "
            "one epoch (its weights are what the bundle carries)"
        )
    include_state = _state_wanted(run_id, info, include_state)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    wheel_path = Path(wheel) if wheel is not None else build_wheel()
    if not wheel_path.is_file() or wheel_path.suffix != ".whl":
        raise FileNotFoundError(f"wheel {wheel_path} is not a .whl file: pass the kaggle_tli wheel, or wheel=None to build one")

    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        copied = _copy_run_files(run_dir, staging, include_state)
        lineage = _lineage_rows(run_dir, run_id)
        if handle is not None:
            info = {**info, "kaggle_model": handle.instance, "parent_kaggle_model": parent_model(info, lineage)}
            _write_run_json(staging, info)
        _write_ledger(lineage, staging / "ledger.csv", info)
        shutil.copy2(wheel_path, staging / wheel_path.name)
        marker = _marker(info, copied, lineage, wheel_path.name, include_state=include_state, dataset=dataset,
                         handle=handle)
        atomic_write_json(staging / BUNDLE_MARKER, marker)
        metadata["description"] = bundle_description(marker, info)
        atomic_write_json(staging / DATASET_METADATA, metadata)
        if handle is not None:
            write_model_files(staging, *model_bodies(marker, info, handle, license=model_license))
        _swap_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("bundled run %s into %s%s", run_id, out_dir,
             " with its training state (state.pt, step-0 weights)" if include_state else "")
    return out_dir


def _marker(info: dict, copied: list[str], lineage: list[dict], wheel: str, *, include_state: bool,
            dataset: str, handle: ModelHandle | None) -> dict:
    return {
        "format": BUNDLE_FORMAT,
        "schema": BUNDLE_SCHEMA,
        "run_id": str(info["id"]),
        "parent_id": info.get("parent_id"),
        "arch": arch_name(info),
        "num_classes": info.get("num_classes"),
        "kaggle_tli_version": package_version(),
        "wheel": wheel,
        "weights": sorted(n for n in copied if n.endswith(".safetensors")),
        "status": info.get("status"),
        # state.pt + step-0 weights: resume() can continue an unfinished run from this bundle
        "includes_state": include_state,
        "lineage": [row.get("run_id") for row in lineage],
        "dataset": dataset,
        "kaggle_model": handle.instance if handle else None,  # the variation it was built for
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _state_wanted(run_id: str, info: dict, include_state: bool | None) -> bool:
    """Whether the bundle carries state.pt and the step-0 weights; warns about an unfinished run."""
    status = info.get("status")
    if status in (None, "done"):
        return bool(include_state)
    if include_state is False:
        warnings.warn(
            f"run {run_id} has status {status!r} and include_state=False: its bundle cannot be resumed (no "
            "state.pt or step-0 weights), only used as a teacher; leave include_state unset to resume it",
            stacklevel=3,
        )
        return False
    warnings.warn(
        f"run {run_id} has status {status!r}: bundling its last weights with state.pt and its step-0 weights, so "
        "resume(load_bundle(...), data) can continue it",
        stacklevel=3,
    )
    return True


def load_bundle(
    path: str | Path, *, run_id: str | None = None, dataset: str | None = None, model: str | None = None,
    ledger: Any = None,
) -> Any:
    """The `Run` stored in a bundle; works on read-only folders such as /kaggle/input.

    `path` is the bundle itself or any folder above it (say "/kaggle/input": the marker file is
    searched for, whatever the mount layout); with several bundles there, `dataset` ("owner/slug"),
    `model` ("owner/model[/pytorch/variation[/version]]", a Kaggle Model) and `run_id` pick one. `ledger` (a path or a Ledger) receives the bundle's lineage rows, so a
    new run's lineage continues across notebooks.
    """
    from kaggle_tli.ledger import Ledger
    from kaggle_tli.runs import load_run

    bundle_dir = locate_bundle(path, run_id=run_id, dataset=dataset, model=model)
    validate_bundle(bundle_dir, for_upload=False)
    run = load_run(bundle_dir)
    if ledger is not None:
        target = ledger if isinstance(ledger, Ledger) else Ledger(ledger)
        target.import_rows(bundle_dir / "ledger.csv")
    return run


def validate_bundle(path: str | Path, *, dataset: str | None = None, for_upload: bool = True) -> dict:
    """Check a bundle before it is used or uploaded; return its dataset metadata (id replaced by `dataset`).

    Upload checks (`for_upload`) add what Kaggle itself would refuse, so a publish fails here, before
    any network traffic, rather than halfway through an upload.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"bundle folder {path} does not exist: build one with kaggle_tli.bundle(run, {str(path)!r})")
    missing = [n for n in (BUNDLE_MARKER, "run.json", "model.safetensors", DATASET_METADATA) if not (path / n).is_file()]
    if missing:
        raise ValueError(f"{path} is not a complete kaggle-tli bundle: missing {', '.join(missing)}; rebuild it with bundle()")
    marker = read_json(path / BUNDLE_MARKER)
    if marker.get("format") != BUNDLE_FORMAT or not isinstance(marker.get("schema"), int):
        raise ValueError(f"{path / BUNDLE_MARKER} is not a kaggle-tli bundle marker: rebuild the bundle with bundle()")
    if marker["schema"] > BUNDLE_SCHEMA:
        raise ValueError(
            f"bundle {path} has schema {marker['schema']}, newer than this kaggle_tli understands "
            f"({BUNDLE_SCHEMA}): install the wheel shipped inside it (pip install --no-index --find-links {path} kaggle-tli)"
        )
    meta = read_json(path / DATASET_METADATA)
    if dataset is not None:
        meta["id"] = dataset
    if for_upload:
        check_upload_files(path)
        licenses = meta.get("licenses") or []
        name = licenses[0].get("name") if len(licenses) == 1 and isinstance(licenses[0], dict) else None
        dataset_metadata(meta.get("id"), meta.get("title"), name)
    return meta


def check_upload_files(path: Path) -> None:
    """What any upload needs: the wheel offline notebooks install, and no sub-folders the client would skip."""
    if not list(path.glob("kaggle_tli-*.whl")):
        raise ValueError(f"bundle {path} carries no kaggle_tli wheel: offline notebooks could not install it; rebuild it with bundle()")
    subdirs = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        raise ValueError(
            f"bundle {path} has sub-folders {subdirs}, which the Kaggle client would silently skip: "
            "move their files to the top level or remove them"
        )


def _write_run_json(folder: Path, info: dict) -> None:
    from kaggle_tli.runs import write_run_info

    write_run_info(folder, info)


# ----------------------------------------------------------------------------- run side


def _resolve_run(run: Any, runs: str | Path | None) -> tuple[Path, dict]:
    """(run directory, run.json) for a Run, a run directory or a run id."""
    from kaggle_tli.runs import load_run

    if hasattr(run, "path") and hasattr(run, "info"):
        return Path(run.path), dict(run.info)
    if isinstance(run, str | os.PathLike) and (Path(run) / "run.json").is_file():
        path = Path(run)
        info = read_json(path / "run.json")
    elif isinstance(run, str | os.PathLike):
        loaded = load_run(run, runs)  # a run id: the runs folder resolves it
        path, info = Path(loaded.path), dict(loaded.info)
    else:
        raise TypeError(f"run must be a Run, a run directory or a run id, got {type(run).__name__}")
    if not info.get("id"):
        raise ValueError(f"{path / 'run.json'} has no 'id': is this a kaggle_tli run directory?")
    return path, info


def _copy_run_files(run_dir: Path, dest: Path, include_state: bool) -> list[str]:
    """Copy the run's top-level files (weights, run.json, csv logs); sub-folders would not upload."""
    copied = []
    reserved = {BUNDLE_MARKER, *METADATA_FILES, "ledger.csv"}  # written by bundle() itself
    for p in sorted(run_dir.iterdir()):
        name = p.name
        if not p.is_file() or name.startswith(".") or name.endswith(_SKIP_SUFFIXES) or name in reserved:
            continue
        if name in _STATE_FILES and not include_state:
            continue
        if name.endswith(".whl"):  # a bundle re-bundled: its old wheel gives way to the current one
            continue
        shutil.copy2(p, dest / name)
        copied.append(name)
    return copied


def _lineage_rows(run_dir: Path, run_id: str) -> list[dict]:
    """The ledger rows of the run's lineage, newest first, from the runs folder's ledger or the run's own."""
    from kaggle_tli.ledger import Ledger

    rows: list[dict] = []
    # the runs folder's ledger, then the run's own (a run loaded from a bundle carries one)
    for source in (run_dir.parent / "ledger.csv", run_dir / "ledger.csv"):
        if source.is_file():
            try:
                rows = Ledger(source).lineage(run_id)
            except KeyError:
                rows = []
            if rows:
                break
    if not rows:
        warnings.warn(
            f"no ledger row for run {run_id} next to {run_dir}: the bundle's ledger.csv holds no lineage",
            stacklevel=3,
        )
    return rows


def _write_ledger(rows: list[dict], dest: Path, info: dict) -> None:
    """Write `rows` root first to `dest`; the run's own row takes its Kaggle Model handles from `info`."""
    from kaggle_tli.ledger import LEDGER_COLUMNS, Ledger

    handles = {k: info[k] for k in ("kaggle_model", "parent_kaggle_model") if info.get(k)}
    # written through Ledger itself so the file has exactly the format Ledger reads back (header with
    # its schema column included, also when there is no row)
    with tempfile.TemporaryDirectory(prefix="kaggle-tli-ledger-") as tmp:
        ledger = Ledger(Path(tmp) / "ledger.csv")
        columns = set(LEDGER_COLUMNS)
        for row in reversed(rows):
            own = handles if row.get("run_id") == info.get("id") else {}
            ledger.append({**{k: v for k, v in row.items() if k in columns}, **own})
        if not rows:
            ledger.create()  # a run with no ledger rows still ships a readable, empty ledger
        shutil.copy2(ledger.path, dest)


def _default_dataset(run_id: str) -> str:
    owner = os.environ.get("KAGGLE_USERNAME") or OWNER_PLACEHOLDER
    slug = slugify(f"tli-{run_id}")[:50].strip("-")
    return f"{owner}/{slug}"


def _default_title(info: dict) -> str:
    return f"TLI weights {arch_name(info) or info['id']}"[:50].strip()


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to replace a folder that is not a bundle: bundle() must never eat someone's files."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"out_dir {out_dir} is a file: pass a folder path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / BUNDLE_MARKER).is_file():
        raise FileExistsError(
            f"out_dir {out_dir} exists, is not empty and is not a kaggle-tli bundle: pass an empty or new folder"
        )


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    """Move the finished bundle to `out_dir`, replacing an older bundle there only at the very end."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    os.chmod(out_dir, 0o755)  # mkdtemp made it 0o700
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
