"""Weight bundles: a run directory packed as a ready-to-upload Kaggle dataset, and back.

A bundle is a flat folder (the Kaggle client uploads only top-level files unless told to zip
folders, and Kaggle's handling of uploaded archives varies, so everything sits at the top):

    model.safetensors            + model_best / model_ema / fold<k> .safetensors when the run has them
    run.json                     the run's record, unchanged
    log.csv, oof.csv, ...        the run's other top-level files (state.pt and the step-0 weights only
                                 for unfinished runs, or on request: see `include_state`)
    ledger.csv                   the ledger rows of the run's whole lineage, root first
    kaggle_tli-<v>-py3-none-any.whl   this package, for `pip install --no-index --find-links <bundle>`
    kaggle-tli-bundle.json       the marker notebooks search for under /kaggle/input
    dataset-metadata.json        id, title, license: what `kaggle datasets create` needs

Because it keeps the run directory's shape, `load_bundle` hands it straight to `load_run`: the
bundle *is* a (read-only) run directory, usable as `prev_run` for `iterate`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kaggle_tli.files import atomic_write_json
from kaggle_tli.ledger import LEDGER_COLUMNS, Ledger
from kaggle_tli.runs import load_run

from .kernels import slugify
from .locate import BUNDLE_MARKER, find_bundles
from .wheel import build_wheel, package_version

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "kaggle-tli-bundle"
BUNDLE_SCHEMA = 1
DATASET_METADATA = "dataset-metadata.json"
# run-directory files a finished run's bundle leaves behind (unless `include_state=True`): the optimizer
# state and the step-0 weights are large, and iterate and predict read the trained weights only. An
# unfinished run needs them to continue (resume loads state.pt, or restarts a fold from its step-0
# weights, and a distilling run reads its teacher's copy), so its bundle carries them by default.
_STATE_FILES = ("state.pt", "init.safetensors", "teacher.safetensors")
_SKIP_SUFFIXES = (".tmp", ".lock", ".partial")
# Kaggle's own limits (the client checks the same): slug and title 6-50 characters
_SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{4,48})[a-z0-9]$")
_OWNER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
OWNER_PLACEHOLDER = "INSERT_OWNER_HERE"


def bundle(
    run: Any,
    out_dir: str | Path,
    *,
    dataset: str | None = None,
    title: str | None = None,
    license: str = "CC0-1.0",
    runs: str | Path | None = None,
    include_state: bool | None = None,
    wheel: str | Path | None = None,
) -> Path:
    """Pack `run` (a Run, a run directory, or a run id with `runs=`) into `out_dir` as a bundle.

    `dataset` ("owner/slug") goes into dataset-metadata.json; without it the owner comes from
    $KAGGLE_USERNAME (else a placeholder `publish(dataset=...)` must replace) and the slug from the
    run id. `include_state` adds state.pt and the step-0 weights; by default (None) only an
    unfinished run (status other than "done") carries them, so that `resume` can continue it from
    the bundle. `wheel` reuses an existing kaggle_tli wheel instead of building one. The bundle is
    built next to `out_dir` and moved into place at the end, so a failure never leaves half a bundle.
    """
    run_dir, info = _resolve_run(run, runs)
    run_id = str(info["id"])
    dataset = dataset or _default_dataset(run_id)
    title = title or _default_title(info)
    metadata = dataset_metadata(dataset, title, license, allow_placeholder=True)
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
        lineage = _write_lineage(run_dir, run_id, info, staging / "ledger.csv")
        shutil.copy2(wheel_path, staging / wheel_path.name)
        marker = {
            "format": BUNDLE_FORMAT,
            "schema": BUNDLE_SCHEMA,
            "run_id": run_id,
            "parent_id": info.get("parent_id"),
            "arch": _arch_name(info),
            "num_classes": info.get("num_classes"),
            "kaggle_tli_version": package_version(),
            "wheel": wheel_path.name,
            "weights": sorted(n for n in copied if n.endswith(".safetensors")),
            "status": info.get("status"),
            # state.pt + step-0 weights: resume() can continue an unfinished run from this bundle
            "includes_state": include_state,
            "lineage": [row.get("run_id") for row in lineage],
            "dataset": dataset,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(staging / BUNDLE_MARKER, marker)
        metadata["description"] = _description(marker, info)
        atomic_write_json(staging / DATASET_METADATA, metadata)
        _swap_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("bundled run %s into %s%s", run_id, out_dir,
             " with its training state (state.pt, step-0 weights)" if include_state else "")
    return out_dir


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
    path: str | Path, *, run_id: str | None = None, dataset: str | None = None, ledger: Any = None
) -> Any:
    """The `Run` stored in a bundle; works on read-only folders such as /kaggle/input.

    `path` is the bundle itself or any folder above it (say "/kaggle/input": the marker file is
    searched for, whatever the mount layout); with several bundles there, `dataset` ("owner/slug")
    and `run_id` pick one. `ledger` (a path or a Ledger) receives the bundle's lineage rows, so a
    new run's lineage continues across notebooks.
    """
    bundle_dir = locate_bundle(path, run_id=run_id, dataset=dataset)
    validate_bundle(bundle_dir, for_upload=False)
    run = load_run(bundle_dir)
    if ledger is not None:
        target = ledger if isinstance(ledger, Ledger) else Ledger(ledger)
        target.import_rows(bundle_dir / "ledger.csv")
    return run


def locate_bundle(path: str | Path, *, run_id: str | None = None, dataset: str | None = None) -> Path:
    """The bundle folder at or below `path` (of dataset `dataset` and for run `run_id`, when given).

    A bundle belongs to `dataset` when its marker says so or when it is mounted under the dataset's
    slug (Kaggle mounts `owner/slug` as `.../slug`, whatever id the bundle was built with).
    """
    path = Path(path)
    if dataset is not None and (not isinstance(dataset, str) or dataset.count("/") != 1):
        raise ValueError(f"dataset must be 'owner/slug', got {dataset!r}")
    if (path / BUNDLE_MARKER).is_file():
        candidates = [path]
    else:
        candidates = find_bundles(path)
    if dataset is not None:
        slug = dataset.split("/")[1]
        candidates = [c for c in candidates
                      if read_json(c / BUNDLE_MARKER).get("dataset") == dataset or slug in c.relative_to(path).parts]
    if run_id is not None:
        candidates = [c for c in candidates if read_json(c / BUNDLE_MARKER).get("run_id") == run_id]
    if len(candidates) == 1:
        return candidates[0]
    which = "".join(f"{w} " for w in (dataset and f"of dataset {dataset!r}", run_id and f"for run {run_id!r}") if w)
    if not candidates:
        raise FileNotFoundError(
            f"no kaggle-tli bundle {which}at or below {path} (looked for {BUNDLE_MARKER}): attach the "
            "weights dataset to the notebook (Add Input), or pass the bundle folder"
        )
    listing = ", ".join(f"{c} (run {read_json(c / BUNDLE_MARKER).get('run_id')})" for c in candidates)
    raise ValueError(f"several bundles {which}under {path}: {listing}; pass dataset=, run_id= or the folder itself")


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
        if not list(path.glob("kaggle_tli-*.whl")):
            raise ValueError(f"bundle {path} carries no kaggle_tli wheel: offline notebooks could not install it; rebuild it with bundle()")
        subdirs = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        if subdirs:
            raise ValueError(
                f"bundle {path} has sub-folders {subdirs}, which the Kaggle client would silently skip: "
                "move their files to the top level or remove them"
            )
        licenses = meta.get("licenses") or []
        name = licenses[0].get("name") if len(licenses) == 1 and isinstance(licenses[0], dict) else None
        dataset_metadata(meta.get("id"), meta.get("title"), name)
    return meta


def dataset_metadata(dataset: Any, title: Any, license: Any, *, allow_placeholder: bool = False) -> dict:
    """A validated dataset-metadata.json body (id, title, exactly one license)."""
    if not isinstance(dataset, str) or dataset.count("/") != 1:
        raise ValueError(f"dataset must be 'owner/slug', got {dataset!r}")
    owner, slug = dataset.split("/")
    if owner == OWNER_PLACEHOLDER and not allow_placeholder:
        raise ValueError(
            f"dataset id {dataset!r} has no owner: pass dataset='<your kaggle user>/{slug}' (or set "
            "KAGGLE_USERNAME before bundling)"
        )
    if not _OWNER_RE.match(owner):
        raise ValueError(f"dataset owner {owner!r} is not a Kaggle user name (letters, digits, '-', '_')")
    if not _SLUG_RE.match(slug):
        raise ValueError(
            f"dataset slug {slug!r} must be 6-50 characters of lowercase letters, digits and '-', "
            f"starting and ending with a letter or digit (e.g. {slugify(slug)[:50] or 'tli-weights'!r})"
        )
    if not isinstance(title, str) or not 6 <= len(title) <= 50:
        raise ValueError(f"dataset title must be 6-50 characters, got {title!r}")
    if not isinstance(license, str) or not license.strip():
        raise ValueError(f"exactly one license name is needed (e.g. 'CC0-1.0', 'CC-BY-4.0', 'apache-2.0'), got {license!r}")
    return {"title": title, "id": dataset, "licenses": [{"name": license}], "keywords": []}


# ----------------------------------------------------------------------------- run side


def _resolve_run(run: Any, runs: str | Path | None) -> tuple[Path, dict]:
    """(run directory, run.json) for a Run, a run directory or a run id."""
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
    reserved = {BUNDLE_MARKER, DATASET_METADATA, "ledger.csv"}  # written by bundle() itself
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


def _write_lineage(run_dir: Path, run_id: str, info: dict, dest: Path) -> list[dict]:
    """Write the ledger rows of the run's lineage (root first) to `dest`; return them."""
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
    # written through Ledger itself so the file has exactly the format Ledger reads back (header with
    # its schema column included, also when there is no row)
    with tempfile.TemporaryDirectory(prefix="kaggle-tli-ledger-") as tmp:
        ledger = Ledger(Path(tmp) / "ledger.csv")
        columns = set(LEDGER_COLUMNS)
        for row in reversed(rows):
            ledger.append({k: v for k, v in row.items() if k in columns})
        if not rows:
            ledger.create()  # a run with no ledger rows still ships a readable, empty ledger
        shutil.copy2(ledger.path, dest)
    return rows


def _arch_name(info: dict) -> str | None:
    arch = info.get("arch")
    if isinstance(arch, dict):
        return arch.get("name") or arch.get("arch") or arch.get("model")
    return arch


def _default_dataset(run_id: str) -> str:
    owner = os.environ.get("KAGGLE_USERNAME") or OWNER_PLACEHOLDER
    slug = slugify(f"tli-{run_id}")[:50].strip("-")
    return f"{owner}/{slug}"


def _default_title(info: dict) -> str:
    return f"TLI weights {_arch_name(info) or info['id']}"[:50].strip()


def _description(marker: dict, info: dict) -> str:
    metrics = info.get("metrics") or {}
    lines = [
        f"Weights of kaggle-tli run `{marker['run_id']}` (arch `{marker['arch']}`).",
        "",
        f"- lineage (newest first): {' <- '.join(str(r) for r in marker['lineage']) or marker['run_id']}",
        *(f"- {k}: {v}" for k, v in metrics.items() if isinstance(v, int | float | str)),
        "",
        "Offline use in a notebook:",
        "",
        "```",
        "import glob, os, subprocess, sys",
        f"bundle = os.path.dirname(glob.glob('/kaggle/input/**/{BUNDLE_MARKER}', recursive=True)[0])",
        "subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-index', '--no-deps', '--find-links', bundle, 'kaggle-tli'], check=True)",
        "import kaggle_tli as kt",
        "run = kt.load_bundle(bundle)",
        "```",
    ]
    return "\n".join(lines)


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


def read_json(path: Path) -> dict:
    """A bundle's JSON file (marker, metadata, run.json) as a dict; ValueError naming the file when unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
