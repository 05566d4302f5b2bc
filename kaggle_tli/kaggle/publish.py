"""Publish a run (or a bundle) to Kaggle through the official client: as a dataset, or as a Kaggle Model.

A dataset is created when it does not exist yet and gets a new version when it does. A Kaggle Model
is model -> PyTorch variation -> version: the model and the variation are created as needed (the
variation with `baseModelInstance` naming the parent run's variation, when that was published), else
the variation gets a new version. The local bundle is never touched by publishing: the client uploads
from a throw-away staging folder of links to the bundle's files plus fresh metadata files (which is
also how `dataset=` or `model=` can retarget a bundle, even a read-only one under /kaggle/input).
Whatever fails, the bundle stays where it was and the error says how to retry.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kaggle_tli.files import atomic_write_json

from . import client
from .bundle import bundle, check_upload_files, validate_bundle
from .client import KaggleConflictError, KaggleError, KaggleNotFoundError
from .locate import BUNDLE_MARKER, read_json
from .metadata import (
    DATASET_METADATA,
    DEFAULT_MODEL_LICENSE,
    METADATA_FILES,
    MODEL_INSTANCE_METADATA,
    MODEL_METADATA,
    ModelHandle,
    check_model_files,
    parse_model_handle,
    slugify,
)
from .model_files import model_bodies, model_target, parent_model

log = logging.getLogger(__name__)

# where a dataset lives when the create call's own answer (which carries its url) was lost
_DATASET_URL = "https://www.kaggle.com/datasets"


def publish(
    run_or_bundle: Any,
    dataset: str | None = None,
    *,
    model: str | None = None,
    variation: str | None = None,
    public: bool = False,
    notes: str = "",
    dry_run: bool = False,
    retries: int = 3,
    out_dir: str | Path | None = None,
    runs: str | Path | None = None,
    title: str | None = None,
    license: str | None = None,
) -> dict:
    """Upload a bundle to Kaggle as dataset `dataset` ("owner/slug") or as Kaggle Model `model` ("owner/model").

    `run_or_bundle` is a bundle folder, or a run (Run, run directory, run id with `runs=`) that is
    first bundled into `out_dir` (default ./bundles/<slug>; `title` and `license` go to its
    metadata). A dataset is created or versioned. A model's PyTorch `variation` (default: the run's
    architecture name) is created with version 1, or versioned; `license` (default "Apache 2.0")
    goes to a new variation, and the ledger row of the run (in `runs`, or beside the run the bundle
    was made from) records the version's handle (`kaggle_model`) and the parent's (`parent_kaggle_model`).
    `public` applies when the dataset or model is created (Kaggle keeps visibility across versions);
    `notes` become the version notes. `dry_run` builds and validates only: no credentials, no
    network. Transient failures (5xx, 429, failed uploads) are retried `retries` times with
    exponential backoff. Returns what was done: action, dataset or model, url, files, bundle.
    """
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
    if dataset is not None and model is not None:
        raise ValueError("publish to one target at a time: dataset='owner/slug' or model='owner/model'")
    bundle_dir = _bundle_dir(run_or_bundle, dataset, model, variation=variation, out_dir=out_dir, runs=runs,
                             title=title, license=license)
    # a bundle built with bundle(model=...) goes to its model unless a dataset is asked for
    if model is not None or (dataset is None and read_json(bundle_dir / BUNDLE_MARKER).get("kaggle_model")):
        return _publish_model(bundle_dir, model, variation=variation, public=public, notes=notes, dry_run=dry_run,
                              retries=retries, runs=runs, license=license)
    if variation is not None:
        raise ValueError(f"variation={variation!r} applies to Kaggle Models: pass model='owner/model' too")
    meta = validate_bundle(bundle_dir, dataset=dataset)
    ref = meta["id"]
    run_id = read_json(bundle_dir / BUNDLE_MARKER).get("run_id")
    files = _upload_names(bundle_dir)
    summary = {"dataset": ref, "bundle": str(bundle_dir), "files": files, "public": public,
               "bytes": sum((bundle_dir / f).stat().st_size for f in files)}
    if dry_run:
        return {"action": "dry_run", "url": None, **summary, "notes": notes}
    notes = notes or f"kaggle-tli run {run_id}"
    try:
        return {**_upload(bundle_dir, meta, public=public, notes=notes, retries=retries), **summary, "notes": notes}
    except KaggleError as e:
        raise _keep_bundle_note(e, bundle_dir, f"{ref!r}") from e


def _bundle_dir(run_or_bundle: Any, dataset: str | None, model: str | None, *, variation: str | None,
                out_dir: Any, runs: Any, title: str | None, license: str | None) -> Path:
    """The bundle folder to publish, building it first when given a run."""
    if isinstance(run_or_bundle, str | os.PathLike) and (Path(run_or_bundle) / BUNDLE_MARKER).is_file():
        return Path(run_or_bundle)
    if dataset is None and model is None:
        raise ValueError("publishing a run needs dataset='owner/slug' (a Kaggle dataset) or model='owner/model' "
                         "(a Kaggle Model) to create or version")
    slug = (dataset or model).split("/")[-1] or "bundle"
    out = Path(out_dir) if out_dir is not None else Path("bundles") / slugify(slug)
    if model is not None:
        return bundle(run_or_bundle, out, model=model, variation=variation, title=title, runs=runs,
                      **({"model_license": license} if license else {}))
    return bundle(run_or_bundle, out, dataset=dataset, title=title, runs=runs, **({"license": license} if license else {}))


def _upload_names(bundle_dir: Path) -> list[str]:
    """The files the client uploads: the bundle's top-level files but the metadata, which it reads instead."""
    return sorted(p.name for p in bundle_dir.iterdir() if p.is_file() and p.name not in METADATA_FILES)


def _upload(bundle_dir: Path, meta: dict, *, public: bool, notes: str, retries: int) -> dict:
    ref = meta["id"]
    api = client.authenticate()
    with tempfile.TemporaryDirectory(prefix="kaggle-tli-publish-") as tmp:
        staging = _stage(bundle_dir, Path(tmp) / ref.split("/")[1], {DATASET_METADATA: meta})
        if not _dataset_exists(api, ref, retries):
            result = _create_once(f"creating dataset {ref}", lambda: api.dataset_create_new(
                str(staging), public=public, quiet=True, dir_mode="skip"),
                lambda: _dataset_exists(api, ref, retries), retries=retries)
            if result is None:
                return {"action": "created", "url": f"{_DATASET_URL}/{ref}", "ref": ref}
            return {"action": "created", "url": getattr(result, "url", None), "ref": getattr(result, "ref", None)}
        if public:
            log.warning("dataset %s exists: its visibility is kept (public= applies at creation only)", ref)
        what = f"adding a version to dataset {ref}"
        result = client.call(what, api.dataset_create_version, str(staging), notes,
                             quiet=True, dir_mode="skip", retries=retries)
        client.check_response(result, what)
    return {"action": "versioned", "url": getattr(result, "url", None), "ref": getattr(result, "ref", None)}


def _create_once(what: str, create: Callable[[], Any], exists: Callable[[], bool], *, retries: int) -> Any:
    """A create call, retried on 5xx; a retry refused as a duplicate may be refusing our own first try.

    A 5xx can come back after Kaggle already created the dataset or model (a gateway timeout), and the
    retry is then told the slug is taken. The slug was free before we started, so when the thing exists
    now, the create worked: that is reported (as None: its answer is lost), not as a conflict.
    """
    attempts = 0

    def attempt() -> Any:
        nonlocal attempts
        attempts += 1
        return create()

    try:
        result = client.call(what, attempt, retries=retries)
        client.check_response(result, what)
    except KaggleConflictError:
        if attempts < 2 or not exists():
            raise
        log.warning("%s: a failed attempt had done it after all; the retry's conflict is that one", what)
        return None
    return result


def _dataset_exists(api: Any, ref: str, retries: int) -> bool:
    return _found(f"checking whether dataset {ref} exists", api.dataset_status, ref, retries=retries) is not None


def _found(what: str, fn: Callable[..., Any], *args: Any, retries: int) -> Any:
    """`fn(*args)` through the client door, or None when Kaggle answers 404."""
    try:
        return client.call(what, fn, *args, retries=retries)
    except KaggleNotFoundError:
        return None


# ----------------------------------------------------------------------------- Kaggle Models


def model_files(bundle_dir: str | Path, model: str | None = None, *, variation: str | None = None,
                license: str | None = None, public: bool = False) -> tuple[ModelHandle, dict, dict]:
    """(variation handle, model-metadata.json body, model-instance-metadata.json body) to publish `bundle_dir` as
    Kaggle Model `model` ("owner/model"; default: the one the bundle was built for), checked as Kaggle would.

    The bundle's own files are used when they are for that model and variation, else they are built from its
    marker and run.json, as bundle(model=...) builds them; a read-only bundle works. `public` sets the model's
    visibility, `license` (default: the bundle's, else DEFAULT_MODEL_LICENSE) the variation's license.
    """
    bundle_dir = Path(bundle_dir)
    validate_bundle(bundle_dir, for_upload=False)
    check_upload_files(bundle_dir)
    marker, info = read_json(bundle_dir / BUNDLE_MARKER), read_json(bundle_dir / "run.json")
    built_for = parse_model_handle(marker["kaggle_model"], parts=(4,)) if marker.get("kaggle_model") else None
    model = model or (built_for.ref if built_for else None)
    if model is None:
        raise ValueError(f"bundle {bundle_dir} was not built for a Kaggle Model: pass model='owner/model'")
    if variation is None and built_for is not None and built_for.ref == model:
        variation = built_for.variation  # the variation it was built for, not the default
    handle = model_target(model, variation, info, license or DEFAULT_MODEL_LICENSE)
    own = [bundle_dir / MODEL_METADATA, bundle_dir / MODEL_INSTANCE_METADATA]
    if all(p.is_file() for p in own) and marker.get("kaggle_model") == handle.instance:
        model_body, instance_body = read_json(own[0]), read_json(own[1])
        if license is not None:
            instance_body["licenseName"] = license
    else:
        lineage = _bundle_lineage(bundle_dir, info)
        info = {**info, "parent_kaggle_model": parent_model(info, lineage)}
        model_body, instance_body = model_bodies(marker, info, handle, license=license or DEFAULT_MODEL_LICENSE)
    model_body["isPrivate"] = not public
    return check_model_files(model_body, instance_body), model_body, instance_body


def _bundle_lineage(bundle_dir: Path, info: dict) -> list[dict]:
    from kaggle_tli.ledger import Ledger

    try:
        return Ledger(bundle_dir / "ledger.csv").lineage(str(info.get("id")))
    except (KeyError, FileNotFoundError):
        return []


def _publish_model(bundle_dir: Path, model: str | None, *, variation: str | None, public: bool, notes: str,
                   dry_run: bool, retries: int, runs: Any, license: str | None) -> dict:
    handle, model_body, instance_body = model_files(bundle_dir, model, variation=variation, license=license,
                                                    public=public)
    run_id = read_json(bundle_dir / BUNDLE_MARKER).get("run_id")
    files = _upload_names(bundle_dir)
    base = instance_body.get("baseModelInstance") or None
    summary = {"model": handle.ref, "variation": handle.variation, "framework": instance_body["framework"],
               "base_model_instance": base, "license": instance_body["licenseName"], "bundle": str(bundle_dir),
               "files": files, "public": public, "bytes": sum((bundle_dir / f).stat().st_size for f in files)}
    if dry_run:
        return {"action": "dry_run", "url": None, "kaggle_model": handle.instance, **summary, "notes": notes}
    notes = notes or f"kaggle-tli run {run_id}"
    try:
        done = _upload_model(bundle_dir, handle, {MODEL_METADATA: model_body, MODEL_INSTANCE_METADATA: instance_body},
                             public=public, notes=notes, retries=retries)
    except KaggleError as e:
        raise _keep_bundle_note(e, bundle_dir, f"model={handle.ref!r}, variation={handle.variation!r}") from e
    _record_in_ledgers(bundle_dir, run_id, done["kaggle_model"], base, runs)
    return {**done, **summary, "notes": notes}


def _upload_model(bundle_dir: Path, handle: ModelHandle, metadata: dict[str, dict], *, public: bool, notes: str,
                  retries: int) -> dict:
    """GetModel -> CreateModel when missing; GetModelInstance -> CreateModelInstance (version 1) when missing,
    else CreateModelInstanceVersion."""
    api = client.authenticate()
    with tempfile.TemporaryDirectory(prefix="kaggle-tli-publish-") as tmp:
        staging = _stage(bundle_dir, Path(tmp) / handle.variation, metadata)
        created_model = _found(f"checking whether model {handle.ref} exists", api.model_get, handle.ref,
                               retries=retries) is None
        if created_model:
            _create_once(f"creating model {handle.ref}", lambda: api.model_create_new(str(staging)),
                         lambda: _found(f"checking model {handle.ref}", api.model_get, handle.ref, retries=retries)
                         is not None, retries=retries)
        elif public:
            log.warning("model %s exists: its visibility is kept (public= applies at creation only)", handle.ref)
        version = _instance_version(api, handle, retries)
        if version is None:
            result = _create_once(f"creating variation {handle.instance}", lambda: api.model_instance_create(
                str(staging), quiet=True, dir_mode="skip"), lambda: _instance_version(api, handle, retries) is not None,
                retries=retries)
            action, version = "created", 1
        else:
            what = f"adding a version to variation {handle.instance}"
            result = client.call(what, api.model_instance_version_create, handle.instance, str(staging), notes,
                                 quiet=True, dir_mode="skip", retries=retries)
            client.check_response(result, what)
            action, version = "versioned", version + 1
    return {"action": action, "model_created": created_model, "version": version,
            "kaggle_model": f"{handle.instance}/{version}", "url": getattr(result, "url", None)}


def _instance_version(api: Any, handle: ModelHandle, retries: int) -> int | None:
    """The variation's latest version number, or None when the variation does not exist yet."""
    found = _found(f"checking whether variation {handle.instance} exists", api.model_instance_get, handle.instance,
                   retries=retries)
    return None if found is None else int(getattr(found, "version_number", 0) or 0)


def _record_in_ledgers(bundle_dir: Path, run_id: Any, source: str, parent: str | None, runs: Any) -> None:
    """Write the published version's handle into the run's ledger row: in `runs`, and in the ledger beside the
    run directory the bundle was made from. A ledger that is missing, read-only or lacks the run is skipped:
    the upload is done, and the bundle's own ledger.csv already names the variation."""
    from kaggle_tli.ledger import Ledger, LedgerError

    candidates = [Path(runs)] if runs is not None else []
    own = _ledger_row(bundle_dir, run_id)
    if own.get("checkpoint"):  # the run directory (or a weights file in it): its runs folder holds the ledger
        checkpoint = Path(own["checkpoint"])
        candidates += [checkpoint.parent, checkpoint.parent.parent]
    for folder in dict.fromkeys(c.resolve() for c in candidates):
        ledger = Ledger(folder)
        try:
            if ledger.path.is_file() and ledger.get(str(run_id)) is not None:
                ledger.update(str(run_id), kaggle_model=source, parent_kaggle_model=parent)
        except (OSError, LedgerError) as e:
            log.warning("published %s, but its ledger row in %s was not updated: %s", source, ledger.path, e)


def _ledger_row(bundle_dir: Path, run_id: Any) -> dict:
    from kaggle_tli.ledger import Ledger

    try:
        return Ledger(bundle_dir / "ledger.csv").get(str(run_id)) or {}
    except (OSError, ValueError):
        return {}


def _stage(bundle_dir: Path, staging: Path, metadata: dict[str, dict]) -> Path:
    """A folder of links to the bundle's files plus the (possibly retargeted) metadata files."""
    staging.mkdir(parents=True)
    for p in bundle_dir.iterdir():
        if p.is_file() and p.name not in METADATA_FILES:
            try:
                os.symlink(p.resolve(), staging / p.name)
            except OSError:  # no symlinks on this filesystem: a copy is slower but equivalent
                shutil.copy2(p, staging / p.name)
    for name, body in metadata.items():
        atomic_write_json(staging / name, body)
    return staging


def _keep_bundle_note(e: KaggleError, bundle_dir: Path, target: str) -> KaggleError:
    """The same error, saying that nothing local was lost and how to try again."""
    note = (f"Nothing was uploaded as a new version and the bundle at {bundle_dir} is unchanged: "
            f"after the fix, run kaggle_tli.publish({str(bundle_dir)!r}, {target}) again.")
    err = type(e)(f"{e}\n{note}")
    err.output = e.output
    return err
