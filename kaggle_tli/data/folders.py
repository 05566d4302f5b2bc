"""One folder per class and no CSV (`train/<class>/*.png`): the class comes from the folder name."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from .competitions import IMAGE_EXTS, ImageCsvData
from .errors import DataError, DataNotFoundError


class ClassFolderData(ImageCsvData):
    """`train/<class>/<image>` with no training CSV: an id per file (`<class>/<file name>`), its class from the
    folder name. The test set (`test/`, `sample_submission.csv`) is found as `ImageCsvData` finds it.

        data = ClassFolderData("/kaggle/input/flowers", image_size=224)
    """

    def __init__(
        self,
        root: str | Path,
        *,
        train_dir: str = "train",
        task: str | None = None,
        test_dir: str | Path | None = None,
        sample_submission: str | None = "sample_submission.csv",
        image_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        folds: int = 5,
        seed: int = 42,
        hflip: bool = True,
        train_transform: Callable | None = None,
        valid_transform: Callable | None = None,
        check_images: str = "header",
        cache: str | None = None,
        cache_dir: str | Path | None = None,
    ):
        self.train_dir = train_dir
        super().__init__(
            root, csv=train_dir, id_col="id", label_col="label", task=task, image_dir=train_dir,
            test_dir=test_dir, sample_submission=sample_submission, image_size=image_size, in_chans=in_chans,
            folds=folds, seed=seed, hflip=hflip, train_transform=train_transform, valid_transform=valid_transform,
            check_images=check_images, cache=cache, cache_dir=cache_dir,
        )
        resolved_cache = {k: self._init_kwargs[k] for k in ("cache", "cache_dir")}  # as ImageCsvData resolved them
        self._init_kwargs = dict(
            train_dir=train_dir, task=task, test_dir=None if test_dir is None else str(test_dir),
            sample_submission=sample_submission, image_size=image_size, in_chans=in_chans, folds=folds, seed=seed,
            hflip=hflip, check_images=check_images, **resolved_cache,
        )

    def _training_table(self, csv: str) -> tuple[pd.DataFrame, str]:
        """id (`<class>/<file>`) and label (the folder name) of every image under `train_dir`."""
        folder = self.root / self.train_dir
        source = f"the class folders of {str(folder)!r}"
        if not folder.is_dir():
            raise DataNotFoundError(f"{str(folder)!r} does not exist: class folders go in train/<class>/<image>; "
                                    "pass train_dir=<folder holding one folder per class>")
        classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise DataError(f"{str(folder)!r} holds no class folders: put each class's images in train/<class>/")
        rows = []
        for name in classes:
            files = sorted(f for f in os.listdir(folder / name) if f.lower().endswith(IMAGE_EXTS))
            if not files:
                raise DataError(
                    f"class folder {str(folder / name)!r} has no images (looked for {', '.join(IMAGE_EXTS)}); add "
                    "its images or remove the folder"
                )
            rows += [(f"{name}/{f}", name) for f in files]
        return pd.DataFrame(rows, columns=["id", "label"], dtype=str), source


def has_class_folders(root: Path, train_dir: str = "train") -> bool:
    """Whether `root/train_dir` holds sub-folders (and no images of its own): the class-folder shape."""
    folder = root / train_dir
    if not folder.is_dir():
        return False
    entries = list(folder.iterdir())
    return any(e.is_dir() for e in entries) and not any(e.name.lower().endswith(IMAGE_EXTS) for e in entries)
