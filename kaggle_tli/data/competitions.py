"""The two table-shaped data types: train.csv + an image folder (`ImageCsvData`), and a pixel CSV (`PixelCsvData`)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .base import KaggleData
from .cache import DEFAULT_CACHE_DIR, ResizeCache, decode_side
from .errors import DataError
from .pipeline import ArrayDataset, ImageDataset
from .tables import first_few, read_csv, require_column, require_ids

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
TRAIN_DIR_CANDIDATES = ("train", "images", "train_images", "train_imgs", "imgs")
TEST_DIR_CANDIDATES = ("test", "test_images", "test_imgs")


# --------------------------------------------------------------------------------------------------
# train.csv + image folder


class ImageCsvData(KaggleData):
    """`train.csv` (id, label) plus a folder of images, the most common Kaggle shape.

    The image folder is found among `train/`, `images/`, `train_images/`, ... unless `image_dir`
    is given; ids may carry the file extension or not. Test images come, in this order of
    preference, from the ids of `sample_submission.csv`, of `test_csv`, or the listing of the test
    folder (`test/`, `test_images/`). Every image file is checked to exist and to have an image
    header (`check_images="header"`; `"decode"` decodes them all, `"none"` skips the check).
    `cache="resized"` decodes each image once and keeps a copy shrunk to a little above `image_size` in
    `cache_dir` (default ./kaggle_tli_cache), reused by later epochs, folds and runs (kaggle_tli.data.cache).
    """

    def __init__(
        self,
        root: str | Path,
        csv: str = "train.csv",
        *,
        id_col: str = "id",
        label_col: str | None = None,
        label_cols: Sequence[str] | None = None,
        task: str | None = None,
        image_dir: str | Path | None = None,
        group_col: str | None = None,
        test_dir: str | Path | None = None,
        test_csv: str | None = None,
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
        if check_images not in ("header", "decode", "none"):
            raise ValueError(f"check_images={check_images!r}: use 'header', 'decode' or 'none'")
        cache = "resized" if cache_dir is not None and cache is None else cache
        if cache not in (None, "resized"):
            raise ValueError(f"cache={cache!r}: use cache='resized' (optionally with cache_dir=<folder>), or None")
        init_kwargs = dict(
            csv=csv, id_col=id_col, label_col=label_col, label_cols=None if label_cols is None else list(label_cols),
            task=task, image_dir=None if image_dir is None else str(image_dir),
            group_col=group_col, test_dir=None if test_dir is None else str(test_dir), test_csv=test_csv,
            sample_submission=sample_submission, image_size=image_size, in_chans=in_chans, folds=folds,
            seed=seed, hflip=hflip, check_images=check_images, cache=cache,
            cache_dir=None if cache_dir is None else str(Path(cache_dir).expanduser().resolve()),
        )
        super().__init__(
            root, label_col=label_col, label_cols=label_cols, task=task, image_size=image_size, folds=folds,
            seed=seed, group_col=group_col, hflip=hflip, train_transform=train_transform,
            valid_transform=valid_transform, sample_submission=sample_submission, init_kwargs=init_kwargs,
        )
        self.id_col, self.in_chans, self.check_images = id_col, in_chans, check_images
        self.cache = None if cache is None else ResizeCache(cache_dir or DEFAULT_CACHE_DIR, image_size, in_chans)
        table, source = self._training_table(csv)
        require_column(table, id_col, source=source, param="id_col")
        require_ids(table, id_col, source=source)
        ids = table[id_col].astype(str).tolist()
        dupes = table[id_col][table[id_col].duplicated()].astype(str).unique().tolist()
        if dupes:
            raise DataError(f"{source}: {len(dupes)} id(s) appear more than once ({first_few(dupes)}); ids must be unique")
        self.image_dir = self._find_image_dir(ids, image_dir, TRAIN_DIR_CANDIDATES, "training")
        paths = self._resolve(ids, self.image_dir, "training", param="image_dir", id_source=source)
        self.frame = pd.DataFrame({"id": ids, "path": paths})
        self._check_readable(self.frame["path"].tolist(), "training")
        self._encode(table, source)
        self.test_ids, self.test_paths = self._test_set_or_warning(lambda: self._find_test(test_dir, test_csv), ([], []))

    def _training_table(self, csv: str) -> tuple[pd.DataFrame, str]:
        """train.csv as written (ids, a single label column and groups as text), and how messages name it."""
        text_cols = [c for c in (self.id_col, *self._text_label_cols(), self.group_col) if c is not None]
        return read_csv(self.root / csv, what="training CSV", str_cols=text_cols), f"{csv!r}"

    # ---- finding files --------------------------------------------------------------------------

    def _find_image_dir(self, ids: list[str], given: str | Path | None, candidates: Sequence[str], what: str) -> Path:
        if given is not None:
            folder = Path(given) if Path(given).is_absolute() else self.root / given
            if not folder.is_dir():
                raise DataError(f"image_dir={str(given)!r} is not a folder under {str(self.root)!r}")
            return folder
        tried = [self.root / c for c in candidates if (self.root / c).is_dir()] + [self.root]
        for folder in tried:
            if _lookup(_index_folder(folder), ids[0], folder) is not None:
                return folder
        raise DataError(
            f"cannot find the {what} images: no file for id {ids[0]!r} in "
            f"{[str(p.relative_to(self.root)) or '.' for p in tried]}; pass image_dir=<folder with the images>"
        )

    def _resolve(self, ids: list[str], folder: Path, what: str, *, param: str, id_source: str) -> list[str]:
        index = _index_folder(folder)
        found = [_lookup(index, i, folder) for i in ids]
        missing = [i for i, f in zip(ids, found, strict=True) if f is None]
        if missing:
            raise DataError(
                f"{len(missing)} of {len(ids)} {what} images are missing from {str(folder)!r} "
                f"(first: {first_few(missing)}). Check {param}= and that the ids of {id_source} match the file "
                f"names (with or without one of the extensions {IMAGE_EXTS})."
            )
        return [str(folder / f) for f in found]

    def _check_readable(self, paths: list[str], what: str) -> None:
        if self.check_images == "none":
            return
        bad = [p for p in paths if not cv2.haveImageReader(p)]
        # a header can be fine while the pixels are not: decode a few (all with check_images="decode")
        sample = paths if self.check_images == "decode" else random.Random(0).sample(paths, min(16, len(paths)))
        flag = cv2.IMREAD_GRAYSCALE if self.in_chans == 1 else cv2.IMREAD_COLOR
        bad += [p for p in sample if p not in bad and cv2.imread(p, flag) is None]
        if bad:
            names = [Path(p).name for p in bad]
            raise DataError(
                f"{len(bad)} {what} image(s) cannot be read (first: {first_few(names)}): corrupt or not images. "
                "Replace the files or drop their rows from the CSV."
            )

    def _find_test(self, test_dir: str | Path | None, test_csv: str | None) -> tuple[list, list[str]]:
        ids, id_source = self._listed_test_ids(test_csv)
        folder = self._test_folder(test_dir)
        if folder is None:
            return [], []  # no test images here (often so on a training notebook): nothing to predict
        if ids is None:
            names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTS))
            with_ext = "." in str(self.frame["id"].iloc[0])
            ids = names if with_ext else [os.path.splitext(n)[0] for n in names]
        paths = self._resolve([str(i) for i in ids], folder, "test", param="test_dir", id_source=id_source)
        self._check_readable(paths, "test")
        return ids, paths

    def _listed_test_ids(self, test_csv: str | None) -> tuple[list | None, str]:
        """The test ids in submission order (sample submission first, then test_csv), and where they come from;
        None when neither lists them (the test folder's listing is used then)."""
        if self.sample_submission is not None:
            source = "the sample submission"
            require_ids(self.sample_submission, self.sample_submission.columns[0], source=source)
            return self.sample_submission.iloc[:, 0].astype(str).tolist(), source
        if test_csv is None:
            return None, "the test folder"
        table = read_csv(self.root / test_csv, what="test CSV", str_cols=(self.id_col,))
        require_column(table, self.id_col, source=repr(test_csv), param="id_col")
        require_ids(table, self.id_col, source=repr(test_csv))
        return table[self.id_col].astype(str).tolist(), repr(test_csv)

    def _test_folder(self, test_dir: str | Path | None) -> Path | None:
        if test_dir is None:
            found = [self.root / c for c in TEST_DIR_CANDIDATES if (self.root / c).is_dir()]
            return found[0] if found else None
        folder = Path(test_dir) if Path(test_dir).is_absolute() else self.root / test_dir
        if not folder.is_dir():
            raise DataError(f"test_dir={str(test_dir)!r} is not a folder under {str(self.root)!r}")
        return folder

    # ---- datasets -------------------------------------------------------------------------------

    def dataset(self, indices: np.ndarray, *, train: bool) -> ImageDataset:
        rows = self.frame.iloc[np.asarray(indices)]
        targets = self.training_targets(indices)
        return ImageDataset(rows["path"].tolist(), targets, self.transform(train), self.in_chans, self.cache,
                            self._decode_side())

    def test_dataset(self) -> ImageDataset:
        self._require_test_set()
        return ImageDataset(self.test_paths, np.full(len(self.test_paths), -1), self.transform(False), self.in_chans,
                            self.cache, self._decode_side())

    def _decode_side(self) -> int | None:
        """How small a JPEG may be decoded: the resize cache's size for the default pipelines, which never use
        more detail than that; full size for the user's own transforms, which may."""
        return None if self._custom_transforms else decode_side(self.image_size)


def _index_folder(folder: Path) -> dict[str, str]:
    """file name and stem -> file name, for the images directly inside `folder`."""
    index: dict[str, str] = {}
    for name in os.listdir(folder):
        index.setdefault(name, name)
        stem, ext = os.path.splitext(name)
        if ext.lower() in IMAGE_EXTS:
            index.setdefault(stem, name)
    return index


def _lookup(index: dict[str, str], image_id: str, folder: Path | None = None) -> str | None:
    if folder is not None and "/" in image_id:  # an id with a sub-folder: "bag/00023.jpg" or "bag/00023"
        found = [image_id] + [image_id + ext for ext in IMAGE_EXTS]
        return next((f for f in found if f.lower().endswith(IMAGE_EXTS) and (folder / f).is_file()), None)
    name = index.get(image_id)
    if name is not None and name.lower().endswith(IMAGE_EXTS):
        return name
    return None


# --------------------------------------------------------------------------------------------------
# pixel CSV (Digit Recognizer)


class PixelCsvData(KaggleData):
    """A label column plus one column per pixel (Kaggle's Digit Recognizer: 28x28 grey).

    The image shape is inferred as a square grey image unless `image_shape=(H, W)` or `(H, W, C)` is
    given. Ids are the `id_col` values when that column exists, else the row numbers; test ids come
    from the first column of `sample_submission.csv` (Digit Recognizer's `ImageId`, 1-based).
    """

    def __init__(
        self,
        root: str | Path,
        csv: str = "train.csv",
        *,
        label_col: str | None = None,
        label_cols: Sequence[str] | None = None,
        task: str | None = None,
        id_col: str | None = None,
        test_csv: str | None = "test.csv",
        sample_submission: str | None = "sample_submission.csv",
        image_shape: tuple[int, ...] | None = None,
        image_size: int | tuple[int, int] = 32,
        folds: int = 5,
        seed: int = 42,
        group_col: str | None = None,
        hflip: bool = False,  # digits and letters change meaning when mirrored
        train_transform: Callable | None = None,
        valid_transform: Callable | None = None,
    ):
        init_kwargs = dict(
            csv=csv, label_col=label_col, label_cols=None if label_cols is None else list(label_cols), task=task,
            id_col=id_col, test_csv=test_csv, sample_submission=sample_submission,
            image_shape=None if image_shape is None else list(image_shape), image_size=image_size, folds=folds,
            seed=seed, group_col=group_col, hflip=hflip,
        )
        super().__init__(
            root, label_col=label_col, label_cols=label_cols, task=task, image_size=image_size, folds=folds,
            seed=seed, group_col=group_col, hflip=hflip, train_transform=train_transform,
            valid_transform=valid_transform, sample_submission=sample_submission, init_kwargs=init_kwargs,
        )
        self.id_col = id_col
        source = f"{csv!r}"
        text_cols = [c for c in (id_col, *self._text_label_cols(), group_col) if c is not None]
        table = read_csv(self.root / csv, what="training CSV", str_cols=text_cols)
        if id_col is not None:
            require_column(table, id_col, source=source, param="id_col")
            require_ids(table, id_col, source=source)
        reserved = {self.label_col, id_col, group_col, "fold", *(label_cols or ()), *self._sample_columns()}
        self.pixel_cols = [c for c in table.columns if c not in reserved]
        self.image_shape = self._shape(image_shape, len(self.pixel_cols), source)
        self.in_chans = self.image_shape[2]
        self.images = self._pixels(table, source)
        ids = table[id_col].astype(str).tolist() if id_col else [str(i) for i in range(len(table))]
        self.frame = pd.DataFrame({"id": ids})
        self._encode(table, source)
        empty = [], np.zeros((0, *self.image_shape), dtype=np.uint8)
        self.test_ids, self.test_images = self._test_set_or_warning(lambda: self._find_test(test_csv), empty)

    def _shape(self, given: tuple[int, ...] | None, n: int, source: str) -> tuple[int, int, int]:
        if given is not None:
            shape = tuple(int(s) for s in given) + ((1,) if len(given) == 2 else ())
            if int(np.prod(shape)) != n:
                raise DataError(f"{source}: image_shape={tuple(given)} needs {int(np.prod(shape))} pixel columns, found {n}")
            return shape  # type: ignore[return-value]
        side = int(round(n**0.5))
        if side * side != n:
            raise DataError(
                f"{source}: {n} pixel columns is not a square grey image; pass image_shape=(H, W) or (H, W, C)"
            )
        return side, side, 1

    def _pixels(self, table: pd.DataFrame, source: str) -> np.ndarray:
        values = table[self.pixel_cols]
        non_numeric = [c for c in self.pixel_cols if not pd.api.types.is_numeric_dtype(values[c])]
        if non_numeric:
            raise DataError(
                f"{source}: pixel columns must be numbers, these are not: {first_few(non_numeric)}; "
                "if one of them is the id, pass id_col=<name>"
            )
        array = values.to_numpy(dtype=np.float32)
        if np.isnan(array).any():
            raise DataError(f"{source}: {int(np.isnan(array).any(axis=1).sum())} row(s) have empty pixel values")
        if array.max() <= 1.0:
            array = array * 255.0  # pixels stored as [0, 1] floats
        return np.clip(array, 0, 255).astype(np.uint8).reshape((len(table), *self.image_shape))

    def _find_test(self, test_csv: str | None) -> tuple[list, np.ndarray]:
        empty = np.zeros((0, *self.image_shape), dtype=np.uint8)
        if test_csv is None or not (self.root / test_csv).is_file():
            return [], empty
        table = read_csv(self.root / test_csv, what="test CSV", str_cols=(self.id_col,) if self.id_col else ())
        missing = [c for c in self.pixel_cols if c not in table.columns]
        if missing:
            raise DataError(f"test CSV {test_csv!r} lacks {len(missing)} pixel column(s) of train: {first_few(missing)}")
        images = self._pixels(table, repr(test_csv))
        # ids are text everywhere (as written in the CSV), like the training ids
        if self.id_col is not None and self.id_col in table.columns:
            ids = table[self.id_col].astype(str).tolist()
        elif self.sample_submission is not None and len(self.sample_submission) == len(table):
            ids = self.sample_submission.iloc[:, 0].astype(str).tolist()
        else:
            ids = [str(i) for i in range(len(table))]
        return ids, images

    def dataset(self, indices: np.ndarray, *, train: bool) -> ArrayDataset:
        indices = np.asarray(indices)
        return ArrayDataset(self.images[indices], self.training_targets(indices), self.transform(train))

    def test_dataset(self) -> ArrayDataset:
        self._require_test_set()
        return ArrayDataset(self.test_images, np.full(len(self.test_images), -1), self.transform(False))
