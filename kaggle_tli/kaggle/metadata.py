"""Kaggle's metadata files for a bundle (dataset, model, model instance), built and checked as Kaggle checks them.

A bundle can go up as a Kaggle dataset (`dataset-metadata.json`) or as a Kaggle Model: model -> framework ->
variation -> version, described by `model-metadata.json` (the model) and `model-instance-metadata.json` (the PyTorch
variation, with `baseModelInstance` pointing at the parent run's variation). The checks here are those the `kaggle`
client (2.2.x) and Kaggle apply, so that `publish(..., dry_run=True)` catches a bad slug, title, license or
framework before any upload.

Model handles, as Kaggle writes them: `owner/model` (a model), `owner/model/pytorch/variation` (an instance, what
`baseModelInstance` holds) and `owner/model/pytorch/variation/version` (a version, what a notebook attaches).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

DATASET_METADATA = "dataset-metadata.json"
MODEL_METADATA = "model-metadata.json"
MODEL_INSTANCE_METADATA = "model-instance-metadata.json"
METADATA_FILES = (DATASET_METADATA, MODEL_METADATA, MODEL_INSTANCE_METADATA)
OWNER_PLACEHOLDER = "INSERT_OWNER_HERE"

DEFAULT_DATASET_LICENSE = "CC0-1.0"
# the client's own default (`kaggle models instances init`) and first in Kaggle's list below
DEFAULT_MODEL_LICENSE = "Apache 2.0"
# Kaggle's licenses for models (the client's docs/models_metadata.md); the server refuses other names
MODEL_LICENSES = (
    "Apache 2.0", "Attribution 3.0 IGO (CC BY 3.0 IGO)", "Attribution 3.0 Unported (CC BY 3.0)",
    "Attribution 4.0 International (CC BY 4.0)", "Attribution-NoDerivatives 4.0 International (CC BY-ND 4.0)",
    "Attribution-NonCommercial 4.0 International (CC BY-NC 4.0)",
    "Attribution-NonCommercial-NoDerivatives 4.0 International (CC BY-NC-ND 4.0)",
    "Attribution-NonCommercial-ShareAlike 3.0 IGO (CC BY-NC-SA 3.0 IGO)", "BSD-3-Clause", "CC BY-NC-SA 4.0",
    "CC BY-SA 3.0", "CC BY-SA 4.0", "CC0: Public Domain",
    "Community Data License Agreement - Permissive - Version 1.0",
    "Community Data License Agreement - Sharing - Version 1.0", "GNU Affero General Public License 3.0",
    "GNU Free Documentation License 1.3", "GNU Lesser General Public License 3.0", "GPL 2", "MIT",
    "ODC Attribution License (ODC-By)", "ODC Public Domain Dedication and Licence (PDDL)", "GPL 3",
)
# the framework part of a handle and of the /kaggle/input mount path; the metadata file spells it as the client's
# docs do, and the client maps either spelling to MODEL_FRAMEWORK_PY_TORCH
FRAMEWORK = "pytorch"
FRAMEWORK_METADATA = "pyTorch"

# Kaggle's limits for datasets (the client checks the same): slug and title 6-50 characters
_DATASET_SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{4,48})[a-z0-9]$")
_OWNER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
# the client's slug rules for models (`_validate_slug_syntax`): lowercase letters and digits joined by single
# hyphens (owners may also use underscores); Kaggle caps slugs at 50 characters
_MODEL_SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_MODEL_OWNER_RE = re.compile(r"^[a-z0-9]+(?:[_-][a-z0-9]+)*$")
_MAX_SLUG = 50
_TITLE = (6, 50)  # the datasets' title limits, applied to models too


@dataclass(frozen=True)
class ModelHandle:
    """A Kaggle Model handle: owner and model, plus the PyTorch variation and version where known."""

    owner: str
    model: str
    variation: str | None = None
    version: int | None = None

    @property
    def ref(self) -> str:
        """`owner/model`."""
        return f"{self.owner}/{self.model}"

    @property
    def instance(self) -> str:
        """`owner/model/pytorch/variation`: what `baseModelInstance` and the client's instance calls take."""
        if self.variation is None:
            raise ValueError(f"model handle {self.ref!r} names no variation")
        return f"{self.ref}/{FRAMEWORK}/{self.variation}"

    @property
    def source(self) -> str:
        """`owner/model/pytorch/variation/version`: what a notebook attaches (`model_sources`)."""
        if self.version is None:
            raise ValueError(f"model handle {self.instance!r} names no version")
        return f"{self.instance}/{self.version}"

    def __str__(self) -> str:
        if self.variation is None:
            return self.ref
        return self.instance if self.version is None else self.source


def parse_model_handle(text: Any, *, parts: tuple[int, ...] = (2, 4, 5), what: str = "model") -> ModelHandle:
    """`text` ("owner/model", "owner/model/pytorch/variation" or ".../version", as `parts` allows) checked by the
    client's rules: every part present, slugs the client accepts, framework pytorch, an integer version."""
    shapes = {2: "OWNER/MODEL", 4: "OWNER/MODEL/pytorch/VARIATION", 5: "OWNER/MODEL/pytorch/VARIATION/VERSION"}
    wanted = " or ".join(shapes[n] for n in parts)
    pieces = text.split("/") if isinstance(text, str) else []
    if len(pieces) not in parts or not all(pieces):
        raise ValueError(f"{what} must be {wanted}, got {text!r}")
    owner, model = pieces[0], pieces[1]
    if not _MODEL_OWNER_RE.match(owner):
        raise ValueError(f"{what} {text!r}: owner {owner!r} must be a lowercase Kaggle user name")
    check_model_slug(model, "model slug")
    if len(pieces) == 2:
        return ModelHandle(owner, model)
    if pieces[2].lower() != FRAMEWORK:
        raise ValueError(f"{what} {text!r}: kaggle-tli publishes PyTorch weights, so the framework part is "
                         f"{FRAMEWORK!r}, not {pieces[2]!r}")
    check_model_slug(pieces[3], "variation")
    if len(pieces) == 4:
        return ModelHandle(owner, model, pieces[3])
    if not pieces[4].isdigit() or int(pieces[4]) < 1:
        raise ValueError(f"{what} {text!r}: the version must be a whole number >= 1, got {pieces[4]!r}")
    return ModelHandle(owner, model, pieces[3], int(pieces[4]))


def check_model_slug(slug: Any, what: str) -> str:
    """A model or variation slug, as the client and Kaggle accept it; ValueError with a suggestion otherwise."""
    if not isinstance(slug, str) or not _MODEL_SLUG_RE.match(slug) or len(slug) > _MAX_SLUG:
        hint = slugify(str(slug))[:_MAX_SLUG].strip("-") or "tli-weights"
        raise ValueError(f"{what} {slug!r} must be at most {_MAX_SLUG} lowercase letters and digits joined by "
                         f"single hyphens (e.g. {hint!r})")
    return slug


def default_variation(arch: Any) -> str:
    """The variation a run's weights go to when none is given: its architecture's name, as a slug."""
    slug = slugify(str(arch or ""))[:_MAX_SLUG].strip("-")
    return check_model_slug(slug, f"variation (from the architecture name {arch!r}; pass variation=)")


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
    if not _DATASET_SLUG_RE.match(slug):
        raise ValueError(
            f"dataset slug {slug!r} must be 6-50 characters of lowercase letters, digits and '-', "
            f"starting and ending with a letter or digit (e.g. {slugify(slug)[:50] or 'tli-weights'!r})"
        )
    _check_title(title, "dataset")
    if not isinstance(license, str) or not license.strip():
        raise ValueError(f"exactly one license name is needed (e.g. 'CC0-1.0', 'CC-BY-4.0', 'apache-2.0'), got {license!r}")
    return {"title": title, "id": dataset, "licenses": [{"name": license}], "keywords": []}


def model_metadata(handle: ModelHandle, title: Any, *, public: bool = False, description: str = "") -> dict:
    """A validated model-metadata.json body: the model that holds every variation."""
    _check_title(title, "model")
    return {"ownerSlug": handle.owner, "slug": handle.model, "title": title, "subtitle": "",
            "isPrivate": not public, "description": description, "publishTime": "", "provenanceSources": ""}


def instance_metadata(handle: ModelHandle, *, license: Any = DEFAULT_MODEL_LICENSE, base: str | None = None,
                      overview: str = "", usage: str = "") -> dict:
    """A validated model-instance-metadata.json body: the PyTorch variation `handle.variation`.

    `base` ("owner/model/pytorch/variation") is the parent run's variation: Kaggle shows the new variation as a
    variant of it (`baseModelInstance`). A root run is a base model.
    """
    check_model_license(license)
    base_handle = parse_model_handle(base, parts=(4,), what="baseModelInstance") if base else None
    return {
        "ownerSlug": handle.owner, "modelSlug": handle.model, "instanceSlug": handle.variation,
        "framework": FRAMEWORK_METADATA, "overview": overview, "usage": usage, "licenseName": license,
        "fineTunable": True, "trainingData": [],
        "modelInstanceType": "KaggleVariant" if base_handle else "BaseModel",
        "baseModelInstance": base_handle.instance if base_handle else "", "externalBaseModelUrl": "",
    }


def check_model_license(license: Any) -> str:
    if license not in MODEL_LICENSES:
        raise ValueError(f"model license {license!r} is not one Kaggle accepts for models: use one of "
                         f"{', '.join(repr(n) for n in MODEL_LICENSES[:4])}, ... (default {DEFAULT_MODEL_LICENSE!r})")
    return license


def check_model_files(model: Any, instance: Any) -> ModelHandle:
    """Check a bundle's model-metadata.json and model-instance-metadata.json bodies as the client and Kaggle
    would (placeholders, slugs, title, privacy, license, framework, base); return the variation's handle."""
    if not isinstance(model, dict) or not isinstance(instance, dict):
        raise ValueError(f"{MODEL_METADATA} and {MODEL_INSTANCE_METADATA} must each hold a JSON object")
    handle = parse_model_handle(f"{model.get('ownerSlug')}/{model.get('slug')}", parts=(2,), what=MODEL_METADATA)
    model_metadata(handle, model.get("title"))
    if not isinstance(model.get("isPrivate"), bool):
        raise ValueError(f"{MODEL_METADATA}: isPrivate must be true or false, got {model.get('isPrivate')!r}")
    if (instance.get("ownerSlug"), instance.get("modelSlug")) != (handle.owner, handle.model):
        raise ValueError(f"{MODEL_INSTANCE_METADATA} is for model {instance.get('ownerSlug')}/"
                         f"{instance.get('modelSlug')}, {MODEL_METADATA} for {handle.ref}: rebuild the bundle")
    if str(instance.get("framework", "")).lower() != FRAMEWORK:
        raise ValueError(f"{MODEL_INSTANCE_METADATA}: framework must be {FRAMEWORK_METADATA!r} (kaggle-tli weights "
                         f"are PyTorch), got {instance.get('framework')!r}")
    variation = check_model_slug(instance.get("instanceSlug"), "variation")
    instance_metadata(ModelHandle(handle.owner, handle.model, variation), license=instance.get("licenseName"),
                      base=instance.get("baseModelInstance") or None)
    return ModelHandle(handle.owner, handle.model, variation)


def slugify(text: str) -> str:
    """Kaggle's slug of a title (same result as python-slugify for ASCII titles)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _check_title(title: Any, what: str) -> None:
    low, high = _TITLE
    if not isinstance(title, str) or not low <= len(title) <= high:
        raise ValueError(f"{what} title must be {low}-{high} characters, got {title!r}")
