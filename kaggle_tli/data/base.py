"""The common data object `KaggleData`: label encoding, folds, transforms, loaders and the test set."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

from .errors import DataError, DataNotFoundError, DataWarning
from .loading import loader_options
from .pipeline import AugmentedDataset, EpochBatchSampler, default_transforms
from .shapes import Targets, fold_strata, infer_targets
from .tables import first_few, make_folds, read_csv, require_column
from .tasks import check_task


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
        label_col: str | None,
        label_cols: Sequence[str] | None,
        task: str | None,
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
        self.label_col, self.group_col = label_col or "label", group_col
        self._label_col_given = label_col
        self.label_cols = [str(c) for c in label_cols] if label_cols else None
        self.task_given = check_task(task)  # None: inferred from the tables
        self.image_size, self.folds, self.seed, self.hflip = image_size, folds, seed, hflip
        self._custom_transforms = train_transform is not None or valid_transform is not None
        self._train_transform, self._valid_transform = train_transform, valid_transform
        self._init_kwargs = init_kwargs
        self.sample_submission = self._read_sample_submission(sample_submission)

    # ---- label encoding and folds -------------------------------------------------------------

    def _encode(self, table: pd.DataFrame, source: str) -> None:
        """Infer the task and its targets (`data/shapes.py`), then fill `class_names` (one name per model output)
        and `frame`'s label (as text for a table), target (class index, single-label shapes) and fold columns."""
        targets = infer_targets(
            table, self.sample_submission, label_col=self._label_col_given, label_cols=self.label_cols,
            task=self.task_given, folds=self.folds, source=source,
        )
        self.label_col = targets.columns[0]
        candidates = [c for c in (self.label_col, *(self.label_cols or ()), *self._sample_columns()) if c in table]
        self._target_table = table[list(dict.fromkeys(candidates))]
        self._set_targets(targets, table, source)

    def _set_targets(self, targets: Targets, table: pd.DataFrame, source: str) -> None:
        self.target_info = targets
        self.class_names = list(targets.names)
        self.frame["label"] = targets.labels
        if targets.values.ndim == 1:
            self.frame["target"] = targets.values
        groups = None
        if self.group_col is not None:
            require_column(table, self.group_col, source=source, param="group_col")
            groups = table[self.group_col].astype(str).to_numpy()
            if len(set(groups)) < self.folds:
                raise DataError(f"{source}: {len(set(groups))} groups in {self.group_col!r} < folds={self.folds}")
        self._groups = groups
        self.frame["fold"] = make_folds(fold_strata(targets, self.folds), self.folds, self.seed, groups)

    def _text_label_cols(self) -> list[str]:
        """The columns that may hold a single label, to be read as the text written ("01" stays "01")."""
        asked = self._sample_columns()
        return [self.label_col, *(asked if len(asked) == 1 else [])]

    def _sample_columns(self) -> list[str]:
        return [str(c) for c in self.sample_submission.columns[1:]] if self.sample_submission is not None else []

    def with_task(self, task: str, *, reason: str | None = None) -> KaggleData:
        """A copy read as another task shape (the targets and folds made again), e.g. integer scores as a
        regression when the metric is a regression metric (`reason` says so in the printed task line)."""
        clone = copy.copy(self)
        clone.frame = self.frame[["id", *(["path"] if "path" in self.frame else [])]].copy()
        clone.task_given = task
        clone._init_kwargs = {**self._init_kwargs, "task": task}
        table = self._target_table
        source = "the training table"
        targets = infer_targets(table, self.sample_submission, label_col=self._label_col_given,
                                label_cols=self.label_cols, task=task, folds=self.folds, source=source)
        if reason:
            targets.how = reason
        clone._set_targets(targets, self._group_table(), source)
        return clone

    def _group_table(self) -> pd.DataFrame:
        if self.group_col is None:
            return pd.DataFrame(index=self.frame.index)
        return pd.DataFrame({self.group_col: self._groups})

    # ---- the task -----------------------------------------------------------------------------

    @property
    def task(self) -> str:
        """"single_label", "binary", "multilabel" or "regression" (see `kaggle_tli.data.tasks`)."""
        return self.target_info.task

    @property
    def targets(self) -> np.ndarray:
        """Per training row: the class index (single-label, binary), or the 0/1 labels / target values (N, K)."""
        return self.target_info.values

    def training_targets(self, indices: np.ndarray) -> np.ndarray:
        """What the loss sees for rows `indices`: regression targets standardised, the others as they are."""
        values = self.targets[np.asarray(indices)]
        scale = self.target_info.scale
        if scale is None:
            return values
        return ((values - np.array(scale["mean"])) / np.array(scale["std"])).astype(np.float32)

    def task_record(self) -> dict:
        """The task as run.json records it: enough for predict to turn outputs into a submission."""
        t = self.target_info
        return {"name": t.task, "columns": list(t.columns), "tags": t.tags, "scale": t.scale,
                "sample_scores": t.sample_scores, "how": t.how}

    def describe_task(self) -> str:
        """One line: the task, its outputs and why (printed at the start of a run)."""
        return self.target_info.describe()

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
                f"({first_few(missing)}), {len(mapping)} ids saved vs {len(ids)} here; "
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

    def dataset(self, indices: np.ndarray, *, train: bool) -> AugmentedDataset:
        """A dataset over rows `indices` of `frame`, with the train or valid pipeline."""
        raise NotImplementedError

    def test_dataset(self) -> AugmentedDataset:
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
        num_workers: int | None = None, seed: int | None = None,
    ) -> DataLoader:
        """Batches of (images, targets) from the training rows of `fold`.

        Meant for work outside the trainer, such as re-estimating BatchNorm statistics after a TLI
        injection: `recalibrate_norms(model, (x for x, _ in data.train_loader(0, 64)))`. `num_workers`
        None: one per CPU core (kaggle_tli.data.loading); the workers persist across epochs of the loader.
        """
        train_idx, _ = self.fold_indices(fold)
        sampler = EpochBatchSampler(
            np.arange(len(train_idx)), batch_size, seed=self.seed if seed is None else seed, shuffle=shuffle,
            drop_last=False,
        )
        options = loader_options(num_workers, cuda=False, persistent=True)
        return DataLoader(self.dataset(train_idx, train=augment), batch_sampler=sampler, **options)

    def valid_loader(self, fold: int = 0, batch_size: int = 64, *, num_workers: int | None = None) -> DataLoader:
        """Batches of (images, targets) from the validation rows of `fold`, in order, no augmentation."""
        _, valid_idx = self.fold_indices(fold)
        options = loader_options(num_workers, cuda=False)
        return DataLoader(self.dataset(valid_idx, train=False), batch_size=batch_size, **options)

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
            "num_classes": self.num_classes, "in_chans": self.in_chans, "task": self.task,
        }

    def _test_summary(self) -> str:
        return "a test set that cannot be used" if self._test_problem else f"{len(self.test_ids)} test samples"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.root)!r}: {len(self.frame)} train samples, "
            f"{self.task}, {self.num_classes} outputs, {self.folds} folds, {self._test_summary()})"
        )

