"""A bundle's Kaggle Model side: the variation it goes to, its parent's variation, and its metadata bodies.

Kept apart from bundle.py (which packs the files) and metadata.py (which knows Kaggle's rules): this is where a
run's record becomes a model card, a variation's usage text and its `baseModelInstance`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kaggle_tli.files import atomic_write_json

from .locate import BUNDLE_MARKER
from .metadata import (
    MODEL_INSTANCE_METADATA,
    MODEL_METADATA,
    ModelHandle,
    check_model_license,
    default_variation,
    instance_metadata,
    model_metadata,
    parse_model_handle,
)

log = logging.getLogger(__name__)


def arch_name(info: dict) -> str | None:
    """The architecture name in a run.json (an arch spec, or a bare name in older runs)."""
    arch = info.get("arch")
    if isinstance(arch, dict):
        return arch.get("name") or arch.get("arch") or arch.get("model")
    return arch


def model_target(model: str | None, variation: str | None, info: dict, license: str) -> ModelHandle | None:
    """The Kaggle Model variation a run's bundle goes to, checked before anything is written."""
    if model is None:
        if variation is not None:
            raise ValueError(f"variation={variation!r} needs model='owner/model' (the Kaggle Model it belongs to)")
        return None
    handle = parse_model_handle(model, parts=(2,))
    check_model_license(license)
    return ModelHandle(handle.owner, handle.model, variation or default_variation(arch_name(info)))


def parent_model(info: dict, lineage: list[dict]) -> str | None:
    """The parent run's Kaggle Model variation ("owner/model/pytorch/variation"), when it was published: from
    run.json (a run iterated from a mounted model bundle) or the parent's ledger row."""
    found = info.get("parent_kaggle_model")
    if not found and info.get("parent_id"):
        found = next((r.get("kaggle_model") for r in lineage if r.get("run_id") == info["parent_id"]), None)
    try:
        return parse_model_handle(found, parts=(4, 5)).instance if found else None
    except ValueError:
        log.warning("ignoring the parent's Kaggle Model handle %r: not owner/model/pytorch/variation", found)
        return None


def model_bodies(marker: dict, info: dict, handle: ModelHandle, *, license: str) -> tuple[dict, dict]:
    """model-metadata.json and model-instance-metadata.json for the bundle whose marker and run.json are given."""
    parent = info.get("parent_kaggle_model")
    base = parent if parent and parent != handle.instance else None  # a variation is no variant of itself
    card = ("Weights trained with kaggle-tli (Transfer Learning by Injection). Each variation is one "
            "architecture; a variation grown from another names it as its base model.")
    model_body = model_metadata(handle, f"kaggle-tli {handle.model}"[:50], description=card)
    instance_body = instance_metadata(handle, license=license, base=base, usage=bundle_description(marker, info),
                                      overview=f"kaggle-tli run {marker['run_id']} ({marker.get('arch')})"[:250])
    return model_body, instance_body


def write_model_files(folder: Path, model_body: dict, instance_body: dict) -> None:
    atomic_write_json(folder / MODEL_METADATA, model_body)
    atomic_write_json(folder / MODEL_INSTANCE_METADATA, instance_body)


def bundle_description(marker: dict, info: dict) -> str:
    """The card of a bundle (a dataset's description, a variation's usage): the run, its lineage, offline use."""
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
