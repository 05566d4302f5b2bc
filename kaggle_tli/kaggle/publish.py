"""Publish a run (or a bundle) as a Kaggle dataset through the official client.

The dataset is created when it does not exist yet and gets a new version when it does. The local
bundle is never touched by publishing: the client uploads from a throw-away staging folder of
links to the bundle's files plus a fresh dataset-metadata.json (which is also how `dataset=` can
retarget a bundle, even a read-only one under /kaggle/input). Whatever fails, the bundle stays
where it was and the error says how to retry.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from kaggle_tli.files import atomic_write_json

from . import client
from .bundle import DATASET_METADATA, bundle, read_json, validate_bundle
from .client import KaggleConflictError, KaggleError, KaggleNotFoundError
from .kernels import slugify
from .locate import BUNDLE_MARKER

log = logging.getLogger(__name__)

# where a dataset lives when the create call's own answer (which carries its url) was lost
_DATASET_URL = "https://www.kaggle.com/datasets"


def publish(
    run_or_bundle: Any,
    dataset: str | None = None,
    *,
    public: bool = False,
    notes: str = "",
    dry_run: bool = False,
    retries: int = 3,
    out_dir: str | Path | None = None,
    runs: str | Path | None = None,
    title: str | None = None,
    license: str = "CC0-1.0",
) -> dict:
    """Upload a bundle to Kaggle as dataset `dataset` ("owner/slug"): create it, or add a version.

    `run_or_bundle` is a bundle folder, or a run (Run, run directory, run id with `runs=`) that is
    first bundled into `out_dir` (default ./bundles/<slug>; `title` and `license` go to its
    metadata). `public` applies when the dataset is created (Kaggle keeps a dataset's visibility
    across versions); `notes` become the version notes. `dry_run` builds and validates only: no
    credentials, no network. Transient failures (5xx, 429, failed uploads) are retried `retries`
    times with exponential backoff. Returns what was done: action, dataset, url, files, bundle.
    """
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
    bundle_dir = _bundle_dir(run_or_bundle, dataset, out_dir=out_dir, runs=runs, title=title, license=license)
    meta = validate_bundle(bundle_dir, dataset=dataset)
    ref = meta["id"]
    run_id = read_json(bundle_dir / BUNDLE_MARKER).get("run_id")
    files = sorted(p.name for p in bundle_dir.iterdir() if p.is_file() and p.name != DATASET_METADATA)
    summary = {"dataset": ref, "bundle": str(bundle_dir), "files": files, "public": public,
               "bytes": sum((bundle_dir / f).stat().st_size for f in files)}
    if dry_run:
        return {"action": "dry_run", "url": None, **summary, "notes": notes}
    notes = notes or f"kaggle-tli run {run_id}"
    try:
        return {**_upload(bundle_dir, meta, public=public, notes=notes, retries=retries), **summary, "notes": notes}
    except KaggleError as e:
        raise _keep_bundle_note(e, bundle_dir, ref) from e


def _bundle_dir(
    run_or_bundle: Any, dataset: str | None, *, out_dir: Any, runs: Any, title: str | None, license: str
) -> Path:
    """The bundle folder to publish, building it first when given a run."""
    if isinstance(run_or_bundle, str | os.PathLike) and (Path(run_or_bundle) / BUNDLE_MARKER).is_file():
        return Path(run_or_bundle)
    if dataset is None:
        raise ValueError("publishing a run needs dataset='owner/slug' (the Kaggle dataset to create or version)")
    slug = dataset.split("/")[-1] or "bundle"
    out = Path(out_dir) if out_dir is not None else Path("bundles") / slugify(slug)
    return bundle(run_or_bundle, out, dataset=dataset, title=title, license=license, runs=runs)


def _upload(bundle_dir: Path, meta: dict, *, public: bool, notes: str, retries: int) -> dict:
    ref = meta["id"]
    api = client.authenticate()
    with tempfile.TemporaryDirectory(prefix="kaggle-tli-publish-") as tmp:
        staging = _stage(bundle_dir, meta, Path(tmp) / ref.split("/")[1])
        if not _exists(api, ref, retries):
            return _create(api, staging, ref, public=public, retries=retries)
        if public:
            log.warning("dataset %s exists: its visibility is kept (public= applies at creation only)", ref)
        what = f"adding a version to dataset {ref}"
        result = client.call(what, api.dataset_create_version, str(staging), notes,
                             quiet=True, dir_mode="skip", retries=retries)
        client.check_response(result, what)
    return {"action": "versioned", "url": getattr(result, "url", None), "ref": getattr(result, "ref", None)}


def _create(api: Any, staging: Path, ref: str, *, public: bool, retries: int) -> dict:
    """CreateDataset, retried on 5xx; a retry refused as a duplicate may be refusing our own first try.

    A 5xx can come back after Kaggle already created the dataset (a gateway timeout), and the retry is
    then told the slug is taken. The slug was free before we started, so when the dataset exists now,
    the create worked: that is reported, not a conflict.
    """
    what = f"creating dataset {ref}"
    attempts = 0

    def create() -> Any:
        nonlocal attempts
        attempts += 1
        return api.dataset_create_new(str(staging), public=public, quiet=True, dir_mode="skip")

    try:
        result = client.call(what, create, retries=retries)
        client.check_response(result, what)
    except KaggleConflictError:
        if attempts < 2 or not _exists(api, ref, retries):
            raise
        log.warning("creating dataset %s: a failed attempt had created it after all; the retry's conflict is "
                    "that dataset", ref)
        return {"action": "created", "url": f"{_DATASET_URL}/{ref}", "ref": ref}
    return {"action": "created", "url": getattr(result, "url", None), "ref": getattr(result, "ref", None)}


def _exists(api: Any, ref: str, retries: int) -> bool:
    try:
        client.call(f"checking whether dataset {ref} exists", api.dataset_status, ref, retries=retries)
    except KaggleNotFoundError:
        return False
    return True


def _stage(bundle_dir: Path, meta: dict, staging: Path) -> Path:
    """A folder of links to the bundle's files plus the (possibly retargeted) metadata."""
    staging.mkdir(parents=True)
    for p in bundle_dir.iterdir():
        if p.is_file() and p.name != DATASET_METADATA:
            try:
                os.symlink(p.resolve(), staging / p.name)
            except OSError:  # no symlinks on this filesystem: a copy is slower but equivalent
                shutil.copy2(p, staging / p.name)
    atomic_write_json(staging / DATASET_METADATA, meta)
    return staging


def _keep_bundle_note(e: KaggleError, bundle_dir: Path, ref: str) -> KaggleError:
    """The same error, saying that nothing local was lost and how to try again."""
    note = (f"Nothing was uploaded as a dataset version and the bundle at {bundle_dir} is unchanged: "
            f"after the fix, run kaggle_tli.publish({str(bundle_dir)!r}, {ref!r}) again.")
    err = type(e)(f"{e}\n{note}")
    err.output = e.output
    return err
