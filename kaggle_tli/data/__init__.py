"""Kaggle competition data: CSV + image folder, one folder per class, or the pixel-CSV shape of Digit Recognizer.

A data object reads and checks a competition folder once, at construction, so that every problem
(a misnamed column, missing or unreadable images, a class too small for the folds, an empty CSV)
is reported as a `DataError` *before* a run directory or a ledger row exists. It never writes into
the competition folder (on Kaggle `/kaggle/input` is read-only): the fold split lives in memory as
a `fold` column and each run saves it as `folds.csv` in its own directory.

    data = ImageCsvData("/kaggle/input/my-comp", image_size=224)      # train.csv + train/ images
    data = PixelCsvData("/kaggle/input/digit-recognizer")             # label + pixel0..pixel783
    data = ClassFolderData("/kaggle/input/flowers")                   # train/<class>/*.jpg, no CSV

The task shape (single-label, binary, multi-label, regression) is read from train.csv and what
sample_submission.csv asks for (`shapes`), unless `task=` / `label_cols=` say it.

Ids, and labels that are not plain integers, are kept as the text the CSV holds: id "0001" stays
"0001" (pandas would read 1, and the image and the submission row would be lost), class "01" stays
"01". Labels written as plain integers ("0".."9") are integer classes.

What a trainer needs from a data object (the `KaggleData` interface): `task`, `num_classes` (model
outputs), `class_names` (one name per output), `targets`, `in_chans`, `frame` (one row per training sample
with `id`, `label`, `fold`, and `target` for single-label shapes),
`fold_indices(fold)`, `dataset(indices, train=...)`, `test_dataset()`, `test_ids`,
`sample_submission`, `spec()` (to rebuild it for `predict`) and `with_folds(...)`.

The package, one idea per module: `errors` (what users catch), `tables` (CSVs as written, labels, folds),
`pipeline` (albumentations, datasets, the epoch batch sampler), `cache` (the resize cache), `loading` (DataLoader
settings), `tasks` (the four task shapes: loss, activation, default metric), `shapes` (which task a competition
is), `submission` (outputs -> the sample's table), `base` (`KaggleData`), `competitions` (`ImageCsvData`,
`PixelCsvData`), `folders` (`ClassFolderData`: one folder per class) and `opening` (`open_competition`,
`rebuild_data`).
"""

from .base import KaggleData
from .cache import DEFAULT_CACHE_DIR, ResizeCache
from .competitions import IMAGE_EXTS, TEST_DIR_CANDIDATES, TRAIN_DIR_CANDIDATES, ImageCsvData, PixelCsvData
from .errors import DataError, DataNotFoundError, DataWarning
from .folders import ClassFolderData
from .loading import default_num_workers, loader_options
from .opening import open_competition, rebuild_data
from .pipeline import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ArrayDataset,
    AugmentedDataset,
    EpochBatchSampler,
    ImageDataset,
    default_transforms,
)
from .shapes import Targets, infer_targets
from .submission import check_submission, make_submission
from .tables import check_class_sizes, make_folds, parse_labels, read_csv, require_column
from .tasks import LOSSES, TASKS, activate, check_task, default_metric, task_loss, tune_threshold

__all__ = [
    "LOSSES",
    "TASKS",
    "Targets",
    "activate",
    "check_submission",
    "check_task",
    "default_metric",
    "infer_targets",
    "make_submission",
    "task_loss",
    "tune_threshold",
    "DEFAULT_CACHE_DIR",
    "IMAGE_EXTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TEST_DIR_CANDIDATES",
    "TRAIN_DIR_CANDIDATES",
    "ArrayDataset",
    "AugmentedDataset",
    "ClassFolderData",
    "DataError",
    "DataNotFoundError",
    "DataWarning",
    "EpochBatchSampler",
    "ImageCsvData",
    "ImageDataset",
    "ResizeCache",
    "KaggleData",
    "PixelCsvData",
    "check_class_sizes",
    "default_num_workers",
    "default_transforms",
    "loader_options",
    "make_folds",
    "open_competition",
    "parse_labels",
    "read_csv",
    "rebuild_data",
    "require_column",
]
