"""Opening a competition folder as the right data type, and rebuilding a run's data from its run.json."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from .base import KaggleData
from .competitions import ImageCsvData, PixelCsvData
from .errors import DataWarning
from .folders import ClassFolderData, has_class_folders
from .tables import read_csv

_DATA_TYPES = {"ImageCsvData": ImageCsvData, "PixelCsvData": PixelCsvData, "ClassFolderData": ClassFolderData}


def rebuild_data(spec: dict, root: str | Path | None = None) -> KaggleData:
    """The data object `spec` (from `KaggleData.spec()`, kept in run.json) describes, optionally on
    another root (the same competition mounted elsewhere, e.g. in a Kaggle rerun)."""
    kind = _DATA_TYPES.get(spec.get("type", ""))
    if kind is None:
        raise ValueError(f"cannot rebuild data of type {spec.get('type')!r}; pass the data object itself")
    if spec.get("custom_transforms"):
        warnings.warn(
            "this run was trained with custom train_transform= / valid_transform= pipelines, which run.json "
            "cannot store: the data is rebuilt with the default albumentations pipelines instead, so training "
            "and prediction no longer see the images the run saw. Pass the data object built with your "
            "transforms, e.g. iterate(prev_run, arch, data=data) or predict(run, test=data)",
            DataWarning,
            stacklevel=2,
        )
    kwargs = dict(spec.get("kwargs", {}))
    for key in ("image_size", "image_shape"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    return kind(root if root is not None else spec["root"], **kwargs)


def open_competition(root: str | Path, csv: str = "train.csv", *, format: str = "auto", **options: Any
                     ) -> KaggleData:
    """A competition folder as `PixelCsvData` (the CSV has pixel0, pixel1, ... columns: Digit Recognizer's shape),
    `ImageCsvData` (train.csv + an image folder) or `ClassFolderData` (no train.csv, train/<class>/ folders);
    `format` "pixels" / "images" / "folders" skips the guess. `options` go to the class (id_col applies to image
    folders only)."""
    if format not in ("auto", "images", "pixels", "folders"):
        raise ValueError(f"format={format!r}: use 'auto', 'images', 'pixels' or 'folders'")
    if format == "auto" and not (Path(root) / csv).is_file() and has_class_folders(Path(root)):
        format = "folders"
    if format == "folders":
        for key in ("id_col", "label_col", "label_cols", "image_dir", "test_csv", "group_col"):
            options.pop(key, None)
        return ClassFolderData(root, **options)
    if format == "auto":
        header = read_csv(Path(root) / csv, what="training CSV").columns
        format = "pixels" if any(str(c).startswith("pixel") for c in header) else "images"
    if format == "pixels":
        options.pop("id_col", None)
        return PixelCsvData(root, csv, **options)
    return ImageCsvData(root, csv, **options)
