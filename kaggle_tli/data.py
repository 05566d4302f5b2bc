"""Kaggle competition data: CSV + image folder, or the pixel-CSV shape of Digit Recognizer.

A data object reads and checks a competition folder once, at construction, so that every problem
(a misnamed column, missing or unreadable images, a class too small for the folds, an empty CSV)
is reported as a `DataError` *before* a run directory or a ledger row exists. It never writes into
the competition folder (on Kaggle `/kaggle/input` is read-only): the fold split lives in memory as
a `fold` column and each run saves it as `folds.csv` in its own directory.

    data = ImageCsvData("/kaggle/input/my-comp", image_size=224)      # train.csv + train/ images
    data = PixelCsvData("/kaggle/input/digit-recognizer")             # label + pixel0..pixel783

Ids, and labels that are not plain integers, are kept as the text the CSV holds: id "0001" stays
"0001" (pandas would read 1, and the image and the submission row would be lost), class "01" stays
"01". Labels written as plain integers ("0".."9") are integer classes.

What a trainer needs from a data object (the `KaggleData` interface): `num_classes`, `class_names`,
`in_chans`, `frame` (one row per training sample with `id`, `label`, `target`, `fold`),
`fold_indices(fold)`, `dataset(indices, train=...)`, `test_dataset()`, `test_ids`,
`sample_submission`, `spec()` (to rebuild it for `predict`) and `with_folds(...)`.
"""

from __future__ import annotations

import copy
import difflib
import os
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

# albumentations checks PyPI for a newer version on import; Kaggle code competitions are offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset, Sampler  # noqa: E402

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
TRAIN_DIR_CANDIDATES = ("train", "images", "train_images", "train_imgs", "imgs")
TEST_DIR_CANDIDATES = ("test", "test_images", "test_imgs")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SHOW = 5  # how many offending names an error message lists


class DataError(ValueError):
    """The competition data cannot be used as given; the message says what is wrong and how to fix it."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The competition folder or one of its CSV files is not there (both a DataError and a FileNotFoundError)."""


class DataWarning(UserWarning):
    """Something about the data that does not stop training (e.g. a broken test set) but needs a fix later."""


# --------------------------------------------------------------------------------------------------
# transforms


def default_transforms(
    image_size: int | tuple[int, int], *, train: bool, in_chans: int = 3, hflip: bool = True
) -> A.Compose:
    """The default albumentations pipeline: random-resized crop (+ horizontal flip) for training,
    a plain resize for validation and test, both normalised with ImageNet statistics (grey images
    use 0.5/0.5)."""
    h, w = _size_pair(image_size)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if in_chans == 3 else ((0.5,) * in_chans, (0.5,) * in_chans)
    if train:
        # scale >= 0.7: Kaggle images are usually centred on the object, a harsher crop loses it
        ops: list[Any] = [A.RandomResizedCrop(size=(h, w), scale=(0.7, 1.0))]
        if hflip:
            ops.append(A.HorizontalFlip(p=0.5))
    else:
        ops = [A.Resize(h, w)]
    ops.append(A.Normalize(mean=mean, std=std))
    return A.Compose(ops)


def _size_pair(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def _to_tensor(image: Any) -> torch.Tensor:
    """HWC numpy (what albumentations returns) -> CHW float tensor; uint8 is scaled to [0, 1]."""
    if isinstance(image, torch.Tensor):
        return image.float()
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    return tensor.float().div_(255.0) if tensor.dtype == torch.uint8 else tensor.float()


# --------------------------------------------------------------------------------------------------
# datasets and the resumable sampler


class _AugmentedDataset(Dataset):
    """Base of the two datasets: items are (image tensor, target); the test set has target -1.

    A key is an index, or an (index, seed) pair from `EpochBatchSampler`. With a seed, the transform's
    random state is reset from it once per batch, so the augmentation of every sample depends only on
    (run seed, epoch, batch): identical with any number of workers and after a resume.
    """

    def __init__(self, targets: np.ndarray, transform: Callable | None):
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def _item(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.load(index)
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        return _to_tensor(image), int(self.targets[index])

    def _seed(self, seed: int) -> None:
        if hasattr(self.transform, "set_random_state"):
            self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        if isinstance(key, tuple):
            index, seed = key
            self._seed(seed)
            return self._item(index)
        return self._item(int(key))

    def __getitems__(self, keys: list) -> list[tuple[torch.Tensor, int]]:
        # DataLoader hands a whole batch here: seed once, then transform the samples in order
        if keys and isinstance(keys[0], tuple):
            self._seed(keys[0][1])
            return [self._item(index) for index, _ in keys]
        return [self._item(int(k)) for k in keys]


class ImageDataset(_AugmentedDataset):
    """Images read from files with OpenCV (RGB, or grey when `in_chans == 1`)."""

    def __init__(self, paths: Sequence[str], targets: np.ndarray, transform: Callable | None, in_chans: int = 3):
        super().__init__(targets, transform)
        self.paths = list(paths)
        self.in_chans = in_chans

    def load(self, index: int) -> np.ndarray:
        path = self.paths[index]
        return _read_image(path, self.in_chans)


class ArrayDataset(_AugmentedDataset):
    """Images held in memory as an (N, H, W, C) uint8 array (the pixel-CSV shape)."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, transform: Callable | None):
        super().__init__(targets, transform)
        self.images = images

    def load(self, index: int) -> np.ndarray:
        return self.images[index]


def _read_image(path: str, in_chans: int) -> np.ndarray:
    flag = cv2.IMREAD_GRAYSCALE if in_chans == 1 else cv2.IMREAD_COLOR
    image = cv2.imread(path, flag)
    if image is None:
        raise _unreadable_image_error(path)
    if in_chans == 1:
        return image[:, :, None]
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _unreadable_image_error(path: str) -> DataError:
    # cv2.imread returns None both for a missing file and for a corrupt one: tell the two apart
    if not os.path.isfile(path):
        return DataError(
            f"image {path!r} is missing: the file was removed or moved after the data was checked. Restore it, "
            "or build the data object again (ImageCsvData(...)) to list every missing image"
        )
    return DataError(
        f"cannot decode image {path!r}: the file is corrupt, truncated or not an image. Unless told otherwise the "
        "data check (check_images='header') decodes only 16 sampled images: build the data with "
        "ImageCsvData(..., check_images='decode') to list every unreadable file, then replace those files or drop "
        "their rows from the CSV"
    )


class EpochBatchSampler(Sampler):
    """Batches of (index, seed) keys whose order is a pure function of (seed, epoch).

    That is what makes a resume exact: the trainer recreates the sampler for the interrupted epoch
    with `start_batch` = the number of batches already consumed. With `world > 1` every process
    draws the same permutation and takes its own slice of each global batch (data parallel: the
    batch size is per process, as in Accelerate).
    """

    def __init__(
        self,
        indices: np.ndarray,
        batch_size: int,
        *,
        seed: int,
        epoch: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        start_batch: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        self.indices = np.asarray(indices)
        self.batch_size, self.seed, self.epoch = batch_size, seed, epoch
        self.shuffle, self.drop_last, self.start_batch = shuffle, drop_last, start_batch
        self.rank, self.world = rank, world

    def _global_batches(self) -> int:
        span = self.batch_size * self.world
        n = len(self.indices)
        return n // span if self.drop_last else -(-n // span)

    def __len__(self) -> int:
        return max(0, self._global_batches() - self.start_batch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.indices
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = order[torch.randperm(len(order), generator=g).numpy()]
        span = self.batch_size * self.world
        for b in range(self.start_batch, self._global_batches()):
            chunk = order[b * span : (b + 1) * span]
            mine = chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            if len(mine) == 0:
                mine = chunk[-1:]  # a short last batch: every process must still take a step
            batch_seed = (self.seed * 1_000_003 + self.epoch * 10_007 + b) * 7 + self.rank
            yield [(int(i), batch_seed % (2**63)) for i in mine]


# --------------------------------------------------------------------------------------------------
# checks shared by both data shapes


# pandas' default missing-value markers (documented under `na_values` of `pandas.read_csv`); they
# still apply to every column except the id / label columns, which are read as the text written
_PANDAS_NA = (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
    "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
)


def read_csv(path: Path, *, what: str, str_cols: Sequence[str | int] = ()) -> pd.DataFrame:
    """Read a CSV, turning a missing, empty or malformed file into a `DataError` that says what was
    expected and how to fix it.

    `str_cols` (column names, or positions such as 0 for a sample submission's id column) are read
    as the text written, never parsed: id "0001" stays "0001" (not 1), a class "01" stays "01", and an
    id "NA" stays "NA". Other columns keep pandas' type inference and missing-value markers.
    """
    if not path.is_file():
        near = sorted(p.name for p in path.parent.glob("*.csv")) if path.parent.is_dir() else []
        raise DataNotFoundError(f"{what} {str(path)!r} does not exist; CSV files in that folder: {near or 'none'}")
    try:
        frame = _read_csv_typed(path, str_cols)
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{what} {str(path)!r} is empty: it has no header and no rows") from e
    except pd.errors.ParserError as e:
        raise DataError(
            f"{what} {str(path)!r} is not a well-formed CSV (pandas: {str(e).strip()}). Fix that line (usually "
            "an unquoted comma or quote, or a row with more fields than the header) or export the file again"
        ) from e
    except UnicodeDecodeError as e:
        raise DataError(
            f"{what} {str(path)!r} is not UTF-8 text ({e}); save it again as UTF-8 CSV, or check that it is "
            "a CSV file at all"
        ) from e
    if frame.empty:
        raise DataError(f"{what} {str(path)!r} has a header but no rows; it needs one row per sample")
    return frame


def _read_csv_typed(path: Path, str_cols: Sequence[str | int]) -> pd.DataFrame:
    if not str_cols:
        return pd.read_csv(path)
    header = [str(c) for c in pd.read_csv(path, nrows=0).columns]
    as_text = {header[c] if isinstance(c, int) else c for c in str_cols if not isinstance(c, int) or c < len(header)}
    # keep_default_na=False turns NA parsing off for every column; the per-column na_values put it
    # back everywhere except the text columns
    na_values = {c: list(_PANDAS_NA) for c in header if c not in as_text}
    dtype = {c: str for c in as_text if c in header}
    return pd.read_csv(path, dtype=dtype, keep_default_na=False, na_values=na_values)


def require_column(frame: pd.DataFrame, column: str, *, source: str, param: str) -> None:
    """Fail with the columns that exist and the closest name when `column` is not in `frame`."""
    if column in frame.columns:
        return
    names = [str(c) for c in frame.columns]
    same_case = [c for c in names if c.lower() == str(column).lower()]
    close = same_case or difflib.get_close_matches(str(column), names, n=3, cutoff=0.5)
    shown = names[:20] + ([f"... {len(names) - 20} more"] if len(names) > 20 else [])
    hint = f" Did you mean {close[0]!r}? Pass {param}={close[0]!r}." if close else f" Pass {param}=<one of them>."
    raise DataError(f"{source} has no column {column!r}; its columns are {shown}.{hint}")


def check_class_sizes(labels: pd.Series, folds: int) -> None:
    """Stratified folds need every class in every fold: a class smaller than `folds` cannot be split,
    and a class with a single member cannot be split at all (not even with folds=2)."""
    counts = labels.value_counts()
    single = counts[counts < 2]
    if len(single):
        listed = ", ".join(repr(k) for k in list(single.index)[:_SHOW])
        raise DataError(
            f"{len(single)} class(es) have a single member: {listed}. A class needs at least 2 samples to "
            "appear in both training and validation rows; drop those rows or merge each into a related class."
        )
    small = counts[counts < folds]
    if len(small):
        listed = ", ".join(f"{k!r} ({v})" for k, v in list(small.items())[:_SHOW])
        raise DataError(
            f"{len(small)} class(es) have fewer members than folds={folds}: {listed}. "
            f"Use folds={int(counts.min())} or fewer, or merge/drop those classes."
        )


def parse_labels(labels: pd.Series) -> list:
    """Labels read as text -> class names: integers when every label is an integer written plainly
    ("0".."9": Digit Recognizer), else the text as written ("01" and "1" stay two classes; "1.0"
    stays "1.0"), so labels round-trip into the submission exactly as the competition wrote them."""
    text = [str(v) for v in labels]
    if text and all(_is_plain_int(v) for v in text):
        return [int(v) for v in text]
    return text


def _is_plain_int(text: str) -> bool:
    digits = text[1:] if text.startswith("-") else text
    return digits.isdigit() and digits.isascii() and str(int(text)) == text


def make_folds(targets: np.ndarray, folds: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Fold number per sample: StratifiedKFold, or StratifiedGroupKFold when groups are given."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    out = np.full(len(targets), -1, dtype=np.int64)
    if groups is None:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(targets)), targets)
    else:
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(targets)), targets, groups)
    for k, (_, valid) in enumerate(splits):
        out[valid] = k
    return out


def _first(items: Sequence[Any]) -> str:
    shown = ", ".join(repr(str(x)) for x in list(items)[:_SHOW])
    return shown + (", ..." if len(items) > _SHOW else "")


def _csv_lines(rows: np.ndarray) -> str:
    """Where the flagged `rows` of a table read by `read_csv` are in its file, as a text editor counts:
    the header is line 1, so the row at position i is line i + 2 (pandas skips blank lines, which are
    rare in a Kaggle CSV; a row's position would then lag behind its line)."""
    lines = [int(i) + 2 for i in np.flatnonzero(rows)]
    shown = ", ".join(str(n) for n in lines[:_SHOW]) + (", ..." if len(lines) > _SHOW else "")
    return f"line{'s' if len(lines) > 1 else ''} {shown} (the header is line 1)"


def _is_empty(values: pd.Series) -> np.ndarray:
    """Empty cells of a column read as text (read_csv str_cols), where a blank cell is "" rather than NaN."""
    return values.isna().to_numpy() | (values.astype(str).str.strip() == "").to_numpy()


def _require_ids(table: pd.DataFrame, id_col: str, *, source: str) -> None:
    """Fail on rows without an id: they name no image and no submission row."""
    empty = _is_empty(table[id_col])
    if empty.any():
        raise DataError(
            f"{source}: {int(empty.sum())} row(s) have an empty {id_col!r} value, on CSV {_csv_lines(empty)}; "
            "fill in the ids or drop those rows"
        )


def _check_image_size(image_size: Any) -> None:
    """Refuse a size no resize can produce, before albumentations fails on it deep inside a loader."""
    is_pair = isinstance(image_size, (tuple, list))
    sizes = list(image_size) if is_pair else [image_size]
    if (is_pair and len(sizes) != 2) or not all(_is_positive_int(n) for n in sizes):
        raise DataError(
            f"image_size={image_size!r}: need a positive number of pixels, e.g. image_size=224, or a positive "
            "(height, width) pair such as image_size=(224, 320)"
        )


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


# --------------------------------------------------------------------------------------------------
# the common data object


class KaggleData:
    """What both data shapes share: label encoding, folds, datasets, loaders and the test set.

    Subclasses fill `frame`, `class_names`, `in_chans`, the test set, and implement `_load_source`.
    """

    frame: pd.DataFrame
    class_names: list
    in_chans: int
    test_ids: list
    sample_submission: pd.DataFrame | None
    _test_problem: str | None = None  # why the test set cannot be used, when it cannot

    def __init__(
        self,
        root: str | Path,
        *,
        label_col: str,
        image_size: int | tuple[int, int],
        folds: int,
        seed: int,
        group_col: str | None,
        hflip: bool,
        train_transform: Callable | None,
        valid_transform: Callable | None,
        sample_submission: str | None,
        init_kwargs: dict,
    ):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataNotFoundError(f"competition folder {str(self.root)!r} does not exist or is not a folder")
        if not isinstance(folds, int) or folds < 2:
            raise DataError(f"folds={folds!r}: need an integer >= 2 (5 is usual)")
        _check_image_size(image_size)
        self.label_col, self.group_col = label_col, group_col
        self.image_size, self.folds, self.seed, self.hflip = image_size, folds, seed, hflip
        self._custom_transforms = train_transform is not None or valid_transform is not None
        self._train_transform, self._valid_transform = train_transform, valid_transform
        self._init_kwargs = init_kwargs
        self.sample_submission = self._read_sample_submission(sample_submission)

    # ---- label encoding and folds -------------------------------------------------------------

    def _encode(self, table: pd.DataFrame, source: str) -> None:
        """Fill `class_names` (sorted original labels) and `frame` with target and fold columns."""
        labels = table[self.label_col]
        missing = _is_empty(labels)
        if missing.any():
            raise DataError(
                f"{source}: {int(missing.sum())} row(s) have no {self.label_col!r} value, on CSV "
                f"{_csv_lines(missing)}; fill or drop them"
            )
        values = parse_labels(labels)
        check_class_sizes(pd.Series(values), self.folds)
        self.class_names = sorted(set(values))
        if len(self.class_names) < 2:
            raise DataError(f"{source}: column {self.label_col!r} has one class only; classification needs two")
        lookup = {c: i for i, c in enumerate(self.class_names)}
        self.frame["label"] = values
        self.frame["target"] = np.array([lookup[v] for v in values], dtype=np.int64)
        groups = None
        if self.group_col is not None:
            require_column(table, self.group_col, source=source, param="group_col")
            groups = table[self.group_col].astype(str).to_numpy()
            if len(set(groups)) < self.folds:
                raise DataError(f"{source}: {len(set(groups))} groups in {self.group_col!r} < folds={self.folds}")
        self.frame["fold"] = make_folds(self.frame["target"].to_numpy(), self.folds, self.seed, groups)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.frame)

    def fold_indices(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """(train rows, validation rows) of `fold`, as positions into `frame`."""
        if not 0 <= int(fold) < self.folds:
            raise ValueError(f"fold={fold!r} is out of range: this data has folds 0..{self.folds - 1}")
        in_fold = self.frame["fold"].to_numpy() == int(fold)
        return np.flatnonzero(~in_fold), np.flatnonzero(in_fold)

    def folds_frame(self) -> pd.DataFrame:
        """id, label, fold: what each run saves as `folds.csv`."""
        return self.frame[["id", "label", "fold"]].copy()

    def with_folds(self, folds: pd.DataFrame | str | Path) -> KaggleData:
        """A copy using a saved split (a `folds.csv` from an earlier run), so a child run validates on
        exactly the rows its parent never trained on."""
        if isinstance(folds, pd.DataFrame):
            table = folds
        else:
            table = read_csv(Path(folds), what="folds table", str_cols=("id", "label"))
        for col in ("id", "fold"):
            require_column(table, col, source="the folds table", param="folds")
        mapping = dict(zip(table["id"].astype(str), table["fold"].astype(int), strict=True))
        ids = self.frame["id"].astype(str)
        missing = [i for i in ids if i not in mapping]
        if missing or len(mapping) != len(ids):
            raise DataError(
                f"the saved split does not match this data: {len(missing)} id(s) have no fold "
                f"({_first(missing)}), {len(mapping)} ids saved vs {len(ids)} here; "
                "use the same train.csv as the parent run"
            )
        clone = copy.copy(self)
        clone.frame = self.frame.copy()
        clone.frame["fold"] = [mapping[i] for i in ids]
        clone.folds = int(clone.frame["fold"].max()) + 1
        return clone

    # ---- transforms, datasets, loaders ---------------------------------------------------------

    def transform(self, train: bool) -> Callable:
        """The user's pipeline when given, else `default_transforms` for this image size."""
        given = self._train_transform if train else self._valid_transform
        if given is not None:
            # a private copy: the dataset reseeds its transform per batch
            return copy.deepcopy(given)
        return default_transforms(self.image_size, train=train, in_chans=self.in_chans, hflip=self.hflip)

    def dataset(self, indices: np.ndarray, *, train: bool) -> _AugmentedDataset:
        """A dataset over rows `indices` of `frame`, with the train or valid pipeline."""
        raise NotImplementedError

    def test_dataset(self) -> _AugmentedDataset:
        """The test images in submission order (targets are -1)."""
        raise NotImplementedError

    @property
    def has_test(self) -> bool:
        """Whether there is a test set to predict; a broken one counts, so predicting reports what is wrong."""
        return len(self.test_ids) > 0 or self._test_problem is not None

    def _test_set_or_warning(self, find: Callable[[], tuple], empty: tuple) -> tuple:
        """What `find` returns, the test set. A problem with it only warns here: it must not stop training on
        sound training data; `test_dataset()` raises it when the test set is actually used."""
        try:
            return find()
        except DataError as e:
            self._test_problem = str(e).rstrip(".") + "."
            warnings.warn(
                f"the test set cannot be used: {self._test_problem} Training is not affected; predicting will "
                "fail with this message until it is fixed.",
                DataWarning,
                stacklevel=3,  # the line that built the data object
            )
            return empty

    def _require_test_set(self) -> None:
        if self._test_problem is not None:
            raise DataError(f"the test set cannot be used: {self._test_problem}")

    def train_loader(
        self, fold: int = 0, batch_size: int = 64, *, augment: bool = True, shuffle: bool = True,
        num_workers: int = 0, seed: int | None = None,
    ) -> DataLoader:
        """Batches of (images, targets) from the training rows of `fold`.

        Meant for work outside the trainer, such as re-estimating BatchNorm statistics after a TLI
        injection: `recalibrate_norms(model, (x for x, _ in data.train_loader(0, 64)))`.
        """
        train_idx, _ = self.fold_indices(fold)
        sampler = EpochBatchSampler(
            np.arange(len(train_idx)), batch_size, seed=self.seed if seed is None else seed, shuffle=shuffle,
            drop_last=False,
        )
        return DataLoader(self.dataset(train_idx, train=augment), batch_sampler=sampler, num_workers=num_workers)

    def valid_loader(self, fold: int = 0, batch_size: int = 64, *, num_workers: int = 0) -> DataLoader:
        """Batches of (images, targets) from the validation rows of `fold`, in order, no augmentation."""
        _, valid_idx = self.fold_indices(fold)
        return DataLoader(self.dataset(valid_idx, train=False), batch_size=batch_size, num_workers=num_workers)

    # ---- test set and description --------------------------------------------------------------

    def _read_sample_submission(self, name: str | None) -> pd.DataFrame | None:
        if name is None:
            return None
        path = self.root / name
        if not path.is_file():
            return None
        # ids as written: "0001" must not become 1 in the submission
        table = read_csv(path, what="sample submission", str_cols=(0,))
        if table.shape[1] < 2:
            raise DataError(f"sample submission {str(path)!r} needs an id column and at least one target column")
        return table

    def spec(self) -> dict:
        """JSON description from which `rebuild_data` makes the same object again (for `predict`)."""
        return {
            # absolute: a run made from `cd X && ... --data ../comp` must rebuild from any working directory
            "type": type(self).__name__, "root": str(self.root.resolve()), "kwargs": self._init_kwargs,
            "custom_transforms": self._custom_transforms, "n_train": len(self.frame),
            "num_classes": self.num_classes, "in_chans": self.in_chans,
        }

    def _test_summary(self) -> str:
        return "a test set that cannot be used" if self._test_problem else f"{len(self.test_ids)} test samples"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.root)!r}: {len(self.frame)} train samples, "
            f"{self.num_classes} classes, {self.folds} folds, {self._test_summary()})"
        )


# --------------------------------------------------------------------------------------------------
# train.csv + image folder


class ImageCsvData(KaggleData):
    """`train.csv` (id, label) plus a folder of images, the most common Kaggle shape.

    The image folder is found among `train/`, `images/`, `train_images/`, ... unless `image_dir`
    is given; ids may carry the file extension or not. Test images come, in this order of
    preference, from the ids of `sample_submission.csv`, of `test_csv`, or the listing of the test
    folder (`test/`, `test_images/`). Every image file is checked to exist and to have an image
    header (`check_images="header"`; `"decode"` decodes them all, `"none"` skips the check).
    """

    def __init__(
        self,
        root: str | Path,
        csv: str = "train.csv",
        *,
        id_col: str = "id",
        label_col: str = "label",
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
    ):
        if check_images not in ("header", "decode", "none"):
            raise ValueError(f"check_images={check_images!r}: use 'header', 'decode' or 'none'")
        init_kwargs = dict(
            csv=csv, id_col=id_col, label_col=label_col, image_dir=None if image_dir is None else str(image_dir),
            group_col=group_col, test_dir=None if test_dir is None else str(test_dir), test_csv=test_csv,
            sample_submission=sample_submission, image_size=image_size, in_chans=in_chans, folds=folds,
            seed=seed, hflip=hflip, check_images=check_images,
        )
        super().__init__(
            root, label_col=label_col, image_size=image_size, folds=folds, seed=seed, group_col=group_col,
            hflip=hflip, train_transform=train_transform, valid_transform=valid_transform,
            sample_submission=sample_submission, init_kwargs=init_kwargs,
        )
        self.id_col, self.in_chans, self.check_images = id_col, in_chans, check_images
        source = f"{csv!r}"
        text_cols = [c for c in (id_col, label_col, group_col) if c is not None]
        table = read_csv(self.root / csv, what="training CSV", str_cols=text_cols)
        require_column(table, id_col, source=source, param="id_col")
        require_column(table, label_col, source=source, param="label_col")
        _require_ids(table, id_col, source=source)
        ids = table[id_col].astype(str).tolist()
        dupes = table[id_col][table[id_col].duplicated()].astype(str).unique().tolist()
        if dupes:
            raise DataError(f"{source}: {len(dupes)} id(s) appear more than once ({_first(dupes)}); ids must be unique")
        self.image_dir = self._find_image_dir(ids, image_dir, TRAIN_DIR_CANDIDATES, "training")
        paths = self._resolve(ids, self.image_dir, "training", param="image_dir", id_source=source)
        self.frame = pd.DataFrame({"id": ids, "path": paths})
        self._check_readable(self.frame["path"].tolist(), "training")
        self._encode(table, source)
        self.test_ids, self.test_paths = self._test_set_or_warning(lambda: self._find_test(test_dir, test_csv), ([], []))

    # ---- finding files --------------------------------------------------------------------------

    def _find_image_dir(self, ids: list[str], given: str | Path | None, candidates: Sequence[str], what: str) -> Path:
        if given is not None:
            folder = Path(given) if Path(given).is_absolute() else self.root / given
            if not folder.is_dir():
                raise DataError(f"image_dir={str(given)!r} is not a folder under {str(self.root)!r}")
            return folder
        tried = [self.root / c for c in candidates if (self.root / c).is_dir()] + [self.root]
        for folder in tried:
            if _lookup(_index_folder(folder), ids[0]) is not None:
                return folder
        raise DataError(
            f"cannot find the {what} images: no file for id {ids[0]!r} in "
            f"{[str(p.relative_to(self.root)) or '.' for p in tried]}; pass image_dir=<folder with the images>"
        )

    def _resolve(self, ids: list[str], folder: Path, what: str, *, param: str, id_source: str) -> list[str]:
        index = _index_folder(folder)
        found = [_lookup(index, i) for i in ids]
        missing = [i for i, f in zip(ids, found, strict=True) if f is None]
        if missing:
            raise DataError(
                f"{len(missing)} of {len(ids)} {what} images are missing from {str(folder)!r} "
                f"(first: {_first(missing)}). Check {param}= and that the ids of {id_source} match the file "
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
                f"{len(bad)} {what} image(s) cannot be read (first: {_first(names)}): corrupt or not images. "
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
            _require_ids(self.sample_submission, self.sample_submission.columns[0], source=source)
            return self.sample_submission.iloc[:, 0].astype(str).tolist(), source
        if test_csv is None:
            return None, "the test folder"
        table = read_csv(self.root / test_csv, what="test CSV", str_cols=(self.id_col,))
        require_column(table, self.id_col, source=repr(test_csv), param="id_col")
        _require_ids(table, self.id_col, source=repr(test_csv))
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
        return ImageDataset(rows["path"].tolist(), rows["target"].to_numpy(), self.transform(train), self.in_chans)

    def test_dataset(self) -> ImageDataset:
        self._require_test_set()
        return ImageDataset(self.test_paths, np.full(len(self.test_paths), -1), self.transform(False), self.in_chans)


def _index_folder(folder: Path) -> dict[str, str]:
    """file name and stem -> file name, for the images directly inside `folder`."""
    index: dict[str, str] = {}
    for name in os.listdir(folder):
        index.setdefault(name, name)
        stem, ext = os.path.splitext(name)
        if ext.lower() in IMAGE_EXTS:
            index.setdefault(stem, name)
    return index


def _lookup(index: dict[str, str], image_id: str) -> str | None:
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
        label_col: str = "label",
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
            csv=csv, label_col=label_col, id_col=id_col, test_csv=test_csv, sample_submission=sample_submission,
            image_shape=None if image_shape is None else list(image_shape), image_size=image_size, folds=folds,
            seed=seed, group_col=group_col, hflip=hflip,
        )
        super().__init__(
            root, label_col=label_col, image_size=image_size, folds=folds, seed=seed, group_col=group_col,
            hflip=hflip, train_transform=train_transform, valid_transform=valid_transform,
            sample_submission=sample_submission, init_kwargs=init_kwargs,
        )
        self.id_col = id_col
        source = f"{csv!r}"
        text_cols = [c for c in (id_col, label_col, group_col) if c is not None]
        table = read_csv(self.root / csv, what="training CSV", str_cols=text_cols)
        require_column(table, label_col, source=source, param="label_col")
        if id_col is not None:
            require_column(table, id_col, source=source, param="id_col")
            _require_ids(table, id_col, source=source)
        reserved = {label_col, id_col, group_col, "fold"}
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
                f"{source}: pixel columns must be numbers, these are not: {_first(non_numeric)}; "
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
            raise DataError(f"test CSV {test_csv!r} lacks {len(missing)} pixel column(s) of train: {_first(missing)}")
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
        return ArrayDataset(self.images[indices], self.frame["target"].to_numpy()[indices], self.transform(train))

    def test_dataset(self) -> ArrayDataset:
        self._require_test_set()
        return ArrayDataset(self.test_images, np.full(len(self.test_images), -1), self.transform(False))


# --------------------------------------------------------------------------------------------------

_DATA_TYPES = {"ImageCsvData": ImageCsvData, "PixelCsvData": PixelCsvData}


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
    """A competition folder as `PixelCsvData` (the CSV has pixel0, pixel1, ... columns: Digit Recognizer's shape)
    or `ImageCsvData` (train.csv + an image folder); `format` "pixels" / "images" skips the guess. `options` go to
    the class (id_col applies to image folders only)."""
    if format not in ("auto", "images", "pixels"):
        raise ValueError(f"format={format!r}: use 'auto', 'images' or 'pixels'")
    if format == "auto":
        header = read_csv(Path(root) / csv, what="training CSV").columns
        format = "pixels" if any(str(c).startswith("pixel") for c in header) else "images"
    if format == "pixels":
        options.pop("id_col", None)
        return PixelCsvData(root, csv, **options)
    return ImageCsvData(root, csv, **options)
