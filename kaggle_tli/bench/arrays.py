"""In-memory image data for the training benchmarks: Fashion-MNIST or a Kaggle-shaped folder, as tensors.

`ArrayData` yields the same batches in the same order for a given seed, whoever asks, so benchmark methods differ
only in how their students start.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from kaggle_tli.data import open_competition

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
_MISSING_DATA = (
    "Fashion-MNIST was not found in {path}. Install it with\n"
    "    sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist\n"
    "or point the benchmark at any Kaggle-shaped image folder with --data DIR (train.csv + images)."
)




@dataclass
class ArrayData:
    """Normalised images and labels held in memory: the benchmark's data, whatever its source."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_valid: torch.Tensor
    y_valid: torch.Tensor
    num_classes: int
    name: str = ""

    def batches(self, steps: int, batch_size: int, seed: int):
        """`steps` batches of training data in an order fixed by `seed` (the same for every method)."""
        g = torch.Generator().manual_seed(seed)
        n = len(self.x_train)
        order = torch.cat([torch.randperm(n, generator=g) for _ in range(math.ceil(steps * batch_size / n) + 1)])
        for step in range(steps):
            idx = order[step * batch_size:(step + 1) * batch_size]
            yield self.x_train[idx], self.y_train[idx]


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _to_rgb32(images: np.ndarray, size: int) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    if x.dim() == 3:
        x = x[:, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return ((x - 0.5) / 0.25).contiguous()


def load_fashion_mnist(n_train: int = 12_000, n_valid: int = 2_000, size: int = 32, seed: int = 0,
                       root: Path = FASHION_DIR) -> ArrayData:
    """A fixed random subset of Fashion-MNIST (Debian's dataset-fashion-mnist) as 3-channel tensors."""
    files = {k: root / f"{k}-idx{3 if 'images' in k else 1}-ubyte.gz"
             for k in ("train-images", "train-labels", "t10k-images", "t10k-labels")}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(_MISSING_DATA.format(path=root))
    rng = np.random.default_rng(seed)
    tr = rng.permutation(60_000)[:n_train]
    te = rng.permutation(10_000)[:n_valid]
    return ArrayData(
        x_train=_to_rgb32(_read_idx(files["train-images"])[tr], size),
        y_train=torch.from_numpy(_read_idx(files["train-labels"])[tr].astype(np.int64)),
        x_valid=_to_rgb32(_read_idx(files["t10k-images"])[te], size),
        y_valid=torch.from_numpy(_read_idx(files["t10k-labels"])[te].astype(np.int64)),
        num_classes=10,
        name="fashion-mnist",
    )


def load_folder(root: str | Path, size: int = 32, n_valid: int = 2_000, seed: int = 0) -> ArrayData:
    """A Kaggle-shaped competition folder (train.csv + images, or a pixel CSV) loaded into memory at `size` px,
    with its validation transform; a random `n_valid` (at most a fifth) held out."""
    data = open_competition(root, image_size=size)
    dataset = data.dataset(np.arange(len(data)), train=False)
    images, labels = zip(*(dataset[i] for i in tqdm(range(len(dataset)), desc=f"load {Path(root).name}")),
                         strict=True)
    x = torch.stack(images)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1).contiguous()  # the benchmark's models take 3 channels
    y = torch.as_tensor(labels, dtype=torch.int64)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))
    n_valid = min(n_valid, len(x) // 5)
    valid, train = order[:n_valid], order[n_valid:]
    return ArrayData(x[train], y[train], x[valid], y[valid], data.num_classes, name=Path(root).name)

