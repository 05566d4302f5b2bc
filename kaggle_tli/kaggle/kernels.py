"""Render parameterised notebook templates into ready-to-push Kaggle kernel folders, and push them.

A template is a Jupyter notebook with one code cell tagged `parameters` (papermill's convention).
Rendering keeps that cell as the defaults and inserts an `injected-parameters` cell after it with
the chosen values, exactly as papermill would, so the same notebook runs under papermill in tests
and as-is on Kaggle. Next to it goes `kernel-metadata.json` with every field written explicitly:
in particular `enable_internet: false`, because the client's default is true and code
competitions reject notebooks with internet on. `pin_image=True` adds `docker_image_pinning_type:
"original"`, which the client sends with the push: Kaggle then reruns the notebook (a competition's
hidden rerun included) on the image it was first run on, not on the newest one.
"""

from __future__ import annotations

import ast
import importlib.resources
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import client
from .metadata import slugify

KERNEL_METADATA = "kernel-metadata.json"
T4_X2 = "NvidiaTeslaT4"  # Kaggle's GPU shape (2 x T4); the P100 is retired
# the client's `valid_push_pinning_types`: "original" keeps the image of the notebook's first run, "latest" follows
PIN_ORIGINAL_IMAGE = "original"
_PARAMETERS_TAG = "parameters"
_INJECTED_TAG = "injected-parameters"
_KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
_ID_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def render_kernel(
    template: str | Path,
    *,
    competition: str | None,
    weights: str | Sequence[str] | None,
    gpu: bool = False,
    out_dir: str | Path,
    owner: str | None = None,
    title: str | None = None,
    private: bool = True,
    parameters: dict[str, Any] | None = None,
    kernel_sources: Sequence[str] = (),
    model_sources: Sequence[str] = (),
    pin_image: bool = False,
) -> Path:
    """Write `<out_dir>/<template>.ipynb` and `<out_dir>/kernel-metadata.json`; return `out_dir`.

    `template` is a notebook path or a template name ("teacher", "iterate", "inference").
    `competition` (a slug), `weights` (one or more "owner/slug" datasets) and `model_sources` (Kaggle
    Model versions, "owner/model/pytorch/variation/version") are attached as inputs and, when the
    template declares parameters of those names (`model` for a single model source), injected into
    the notebook; so is every entry of `parameters`, which must name parameters the template
    declares. The kernel id is `<owner>/<slug of title>`; `owner` defaults to $KAGGLE_USERNAME, then
    to the first weights (or model) owner. `pin_image` pins the notebook's image (see above).
    """
    src = resolve_template(template)
    nb = _read_notebook(src)
    weights_list = [weights] if isinstance(weights, str) else list(weights or [])
    for ref in weights_list:
        _check_ref(ref, "weights dataset")
    for ref in kernel_sources:
        _check_ref(ref, "kernel source")
    models = [_check_model_source(ref) for ref in model_sources]
    if competition is not None and not _ID_PART.match(competition):
        raise ValueError(f"competition must be a Kaggle competition slug such as 'digit-recognizer', got {competition!r}")

    declared = _declared_parameters(nb, src)
    given = (("competition", competition), ("weights", weights), ("model", models[0] if len(models) == 1 else None))
    values = {k: v for k, v in given if k in declared and (v is not None or k != "model")}
    unknown = sorted(set(parameters or {}) - declared)
    if unknown:
        raise ValueError(f"template {src.name} has no parameter(s) {unknown}; it declares {sorted(declared)}")
    values.update(parameters or {})
    _inject(nb, values)

    title = title or _default_title(competition, src.stem)
    slug = _check_title(title)
    owner = owner or os.environ.get("KAGGLE_USERNAME") or next((r.split("/")[0] for r in weights_list + models), None)
    if not owner or not _ID_PART.match(owner):
        raise ValueError(f"kernel owner {owner!r} is not a Kaggle user name: pass owner= or set KAGGLE_USERNAME")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    code_file = f"{src.stem}.ipynb"
    metadata = _kernel_metadata(f"{owner}/{slug}", title, code_file, private=private, gpu=gpu, weights=weights_list,
                                competition=competition, kernels=list(kernel_sources), models=models,
                                pin_image=pin_image)
    (out_dir / code_file).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    (out_dir / KERNEL_METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
    return out_dir


def push_kernel(folder: str | Path, *, retries: int = 3) -> dict:
    """Push a rendered kernel folder to Kaggle (a new version, run there); return ref, url, version."""
    folder = Path(folder)
    meta_path = folder / KERNEL_METADATA
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder} has no {KERNEL_METADATA}: render it first with render_kernel(...)")
    meta = json.loads(meta_path.read_text())
    if not (folder / str(meta.get("code_file", ""))).is_file():
        raise FileNotFoundError(f"{folder} lacks its code_file {meta.get('code_file')!r}: render the kernel again")
    _check_title(meta.get("title", ""))
    api = client.authenticate()
    what = f"pushing notebook {meta.get('id')}"
    result = client.call(what, api.kernels_push, str(folder), retries=retries)
    client.check_response(result, what)
    return {"ref": result.ref, "url": result.url, "version": result.version_number, "id": meta.get("id")}


def _kernel_metadata(kernel_id: str, title: str, code_file: str, *, private: bool, gpu: bool, weights: list[str],
                     competition: str | None, kernels: list[str], models: list[str], pin_image: bool) -> dict:
    """kernel-metadata.json, every field written explicitly."""
    metadata = {
        "id": kernel_id,
        "title": title,
        "code_file": code_file,
        "language": "python",
        "kernel_type": "notebook",
        "is_private": bool(private),
        "enable_gpu": bool(gpu),
        "enable_tpu": False,
        "enable_internet": False,  # written explicitly: the client defaults it to true
        "dataset_sources": weights,
        "competition_sources": [competition] if competition else [],
        "kernel_sources": kernels,
        "model_sources": models,
    }
    if pin_image:
        metadata["docker_image_pinning_type"] = PIN_ORIGINAL_IMAGE
    if gpu:
        metadata["machine_shape"] = T4_X2
    return metadata


def resolve_template(template: str | Path) -> Path:
    """A template path as given, or the bundled template of that name."""
    path = Path(template)
    if path.suffix == ".ipynb" or os.sep in str(template):
        if not path.is_file():
            raise FileNotFoundError(f"template notebook {path} does not exist")
        return path
    dirs = template_dirs()
    for d in dirs:
        if (d / f"{template}.ipynb").is_file():
            return d / f"{template}.ipynb"
    known = sorted({p.stem for d in dirs for p in d.glob("*.ipynb")})
    raise ValueError(f"unknown template {template!r}: known templates are {known}, or pass a path to a .ipynb file")


def template_dirs() -> list[Path]:
    """Where named templates live: the source checkout's `templates/` (what a developer edits), then the
    `kaggle_tli.templates` package that pyproject maps onto that folder, so wheels and editable installs
    carry the same notebooks."""
    dirs = []
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "templates").is_dir():
        dirs.append(root / "templates")
    try:
        packaged = importlib.resources.files("kaggle_tli.templates")
    except ModuleNotFoundError:  # an install made before templates were packaged
        packaged = None
    # a Traversable inside a zip has no folder to glob; installs from wheels and editable installs do
    if isinstance(packaged, Path) and packaged.is_dir() and all(packaged.resolve() != d.resolve() for d in dirs):
        dirs.append(packaged)
    return dirs


def _read_notebook(path: Path) -> dict:
    try:
        nb = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"template {path} is not a readable notebook: {e}") from e
    if nb.get("nbformat") != 4 or not isinstance(nb.get("cells"), list):
        raise ValueError(f"template {path} is not an nbformat-4 notebook")
    return nb


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _tags(cell: dict) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _declared_parameters(nb: dict, path: Path) -> set[str]:
    cells = [c for c in nb["cells"] if c.get("cell_type") == "code" and _PARAMETERS_TAG in _tags(c)]
    if len(cells) != 1:
        raise ValueError(
            f"template {path} needs exactly one code cell tagged {_PARAMETERS_TAG!r} (papermill's convention), "
            f"found {len(cells)}"
        )
    names = set()
    for node in ast.parse(_source(cells[0])).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def _inject(nb: dict, values: dict[str, Any]) -> None:
    """Insert the injected-parameters cell after the parameters cell; clear every output."""
    nb["cells"] = [c for c in nb["cells"] if _INJECTED_TAG not in _tags(c)]  # re-rendering replaces it
    lines = ["# Parameters"]
    for name, value in values.items():
        text = repr(value)
        try:
            ok = ast.literal_eval(text) == value
        except (ValueError, SyntaxError):
            ok = False
        if not ok:
            raise TypeError(f"parameter {name}={value!r} is not a plain Python literal (str, number, bool, None, list, dict)")
        lines.append(f"{name} = {text}")
    index = next(i for i, c in enumerate(nb["cells"]) if _PARAMETERS_TAG in _tags(c))
    cell = {"cell_type": "code", "execution_count": None, "metadata": {"tags": [_INJECTED_TAG]},
            "outputs": [], "source": "\n".join(lines) + "\n"}
    if nb.get("nbformat_minor", 0) >= 5:  # nbformat 4.5 cells have ids; a fixed one keeps renders diffable
        cell["id"] = _INJECTED_TAG
    nb["cells"].insert(index + 1, cell)
    for c in nb["cells"]:
        if c.get("cell_type") == "code":
            c["outputs"], c["execution_count"] = [], None
    nb.setdefault("metadata", {})["kernelspec"] = dict(_KERNELSPEC)
    nb["metadata"].setdefault("language_info", {"name": "python"})


def _default_title(competition: str | None, stem: str) -> str:
    words = re.split(r"[-_\s]+", f"{competition or 'kaggle-tli'} {stem}")
    title = " ".join(w.capitalize() for w in words if w)
    while len(title) > 50:  # Kaggle's limit; drop whole words from the end
        title = title.rsplit(" ", 1)[0]
    return title


def _check_title(title: str) -> str:
    """The slug of a valid title; titles are ASCII so that our slug equals Kaggle's."""
    if not isinstance(title, str) or not 5 <= len(title) <= 50 or not title.isascii():
        raise ValueError(f"kernel title must be 5-50 ASCII characters, got {title!r}")
    slug = slugify(title)
    if len(slug) < 5:
        raise ValueError(f"kernel title {title!r} gives the too-short slug {slug!r}: use more letters or digits")
    return slug


def _check_model_source(ref: Any) -> str:
    """A Kaggle Model version to attach, checked as the client checks `model_sources` when it pushes: five
    non-empty parts, the last a version number. Any framework: a notebook may attach models of any kind."""
    parts = ref.split("/") if isinstance(ref, str) else []
    if len(parts) != 5 or not all(parts) or not parts[4].isdigit():
        raise ValueError(f"model source must be OWNER/MODEL/FRAMEWORK/VARIATION/VERSION (e.g. "
                         f"'alice/tli-digits/pytorch/resnet18/1', the version a number), got {ref!r}")
    return ref


def _check_ref(ref: Any, what: str) -> None:
    parts = ref.split("/") if isinstance(ref, str) else []
    if len(parts) != 2 or not all(_ID_PART.match(p) for p in parts):
        raise ValueError(f"{what} must be 'owner/slug', got {ref!r}")
