"""The image pipeline: albumentations transforms, the datasets they feed, and the resumable batch sampler."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

# albumentations checks PyPI for a newer version on import; Kaggle code competitions are offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import Dataset, Sampler  # noqa: E402

from .cache import ResizeCache, jpeg_reduction  # noqa: E402
from .errors import DataError  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    """HWC numpy (what albumentations returns) -> CHW float tensor; uint8 is scaled to [0, 1].

    The CHW tensor is a view of the HWC array, not a copy: the loader's collate stacks the batch into one new
    tensor anyway, and a copy here cost a tenth of the non-decode time per image.
    """
    if isinstance(image, torch.Tensor):
        return image.float()
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if not image.flags.writeable or min(image.strides) < 0:  # torch takes neither (a user's [:, ::-1] flip)
        image = np.array(image)
    tensor = torch.from_numpy(image).permute(2, 0, 1)
    return tensor.float().div_(255.0) if tensor.dtype == torch.uint8 else tensor.float()


# --------------------------------------------------------------------------------------------------
# datasets and the resumable sampler


class AugmentedDataset(Dataset):
    """Base of the two datasets: items are (image tensor, target); the test set has target -1.

    A key is an index, or an (index, seed) pair from `EpochBatchSampler`. With a seed, the transform's
    random state is reset from it once per batch, so the augmentation of every sample depends only on
    (run seed, epoch, batch): identical with any number of workers and after a resume.
    """

    def __init__(self, targets: np.ndarray, transform: Callable | None):
        targets = np.asarray(targets)
        # class indices stay integers; multi-label and regression targets are float vectors
        self.targets = targets.astype(np.float32) if targets.dtype.kind == "f" else targets.astype(np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def _item(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        image = self.load(index)
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        target = self.targets[index]
        return _to_tensor(image), (torch.from_numpy(target.copy()) if target.ndim else int(target))

    def _seed(self, seed: int) -> None:
        if hasattr(self.transform, "set_random_state"):
            self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int | torch.Tensor]:
        if isinstance(key, tuple):
            index, seed = key
            self._seed(seed)
            return self._item(index)
        return self._item(int(key))

    def __getitems__(self, keys: list) -> list[tuple[torch.Tensor, int | torch.Tensor]]:
        # DataLoader hands a whole batch here: seed once, then transform the samples in order
        if keys and isinstance(keys[0], tuple):
            self._seed(keys[0][1])
            return [self._item(index) for index, _ in keys]
        return [self._item(int(k)) for k in keys]


class ImageDataset(AugmentedDataset):
    """Images read from files with OpenCV (RGB, or grey when `in_chans == 1`), through a resize cache if given.

    `min_side`, when given, lets a JPEG be decoded at 1/2, 1/4 or 1/8 of its size (libjpeg scales in the DCT, a
    fraction of the work) as long as its shorter side stays at least `min_side`: the size the resize cache keeps,
    so the default pipelines see the same detail with or without the cache. Leave it None for pipelines that
    need the full resolution (custom transforms that crop small regions).
    """

    def __init__(self, paths: Sequence[str], targets: np.ndarray, transform: Callable | None, in_chans: int = 3,
                 cache: ResizeCache | None = None, min_side: int | None = None):
        super().__init__(targets, transform)
        self.paths = list(paths)
        self.in_chans = in_chans
        self.cache = cache
        self.min_side = min_side
        self._reductions: dict[str, int] = {}  # per file: its header is read once, not every epoch

    def load(self, index: int) -> np.ndarray:
        path = self.paths[index]
        if self.cache is not None:
            return self.cache.load(path, self.decode)
        if not self.min_side:
            return self.decode(path)
        if path not in self._reductions:
            self._reductions[path] = jpeg_reduction(path, self.min_side)
        return self.decode(path, self._reductions[path])

    def decode(self, path: str, reduce: int = 1) -> np.ndarray:
        """The original file's pixels, HWC uint8 (16-bit files come down to 8 bits, keeping their brightness).
        `reduce` 2, 4 or 8 decodes at that fraction of the size (a JPEG's DCT scaling: far less work)."""
        return _read_image(path, self.in_chans, reduce)


class ArrayDataset(AugmentedDataset):
    """Images held in memory as an (N, H, W, C) uint8 array (the pixel-CSV shape)."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, transform: Callable | None):
        super().__init__(targets, transform)
        self.images = images

    def load(self, index: int) -> np.ndarray:
        return self.images[index]


# (grey, colour) OpenCV read flags per size reduction
_READ_FLAGS = {
    1: (cv2.IMREAD_GRAYSCALE, cv2.IMREAD_COLOR),
    2: (cv2.IMREAD_REDUCED_GRAYSCALE_2, cv2.IMREAD_REDUCED_COLOR_2),
    4: (cv2.IMREAD_REDUCED_GRAYSCALE_4, cv2.IMREAD_REDUCED_COLOR_4),
    8: (cv2.IMREAD_REDUCED_GRAYSCALE_8, cv2.IMREAD_REDUCED_COLOR_8),
}


def _read_image(path: str, in_chans: int, reduce: int = 1) -> np.ndarray:
    grey, colour = _READ_FLAGS[reduce]
    image = cv2.imread(path, grey if in_chans == 1 else colour)
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
