"""Shared fixtures: tiny Kaggle-shaped competition folders made from scikit-learn's bundled digits.

No download, a few milliseconds to write, and real images (a model can learn them), so a stage-1 /
stage-4 test is end to end without being slow.

- `image_competition`   session-scoped path: `train.csv` (id,label), `train/<id>.png` 32x32 RGB,
                        `test/<id>.png`, `sample_submission.csv` (id,label) and `solution.csv` (the
                        true test labels). Labels are the words "zero", "one", "two", so sorted class
                        names differ from digit order: a label-mapping bug shows.
- `pixel_competition`   session-scoped path in the Digit Recognizer shape: `train.csv` (label,
                        pixel0..pixel783, 28x28 grey), `test.csv`, `sample_submission.csv`
                        (ImageId 1-based, Label).
- `numeric_competition` session-scoped path shaped like `image_competition`, but ids are "0000",
                        "0001"... and the classes are "01", "10", "2": text that pandas reads as
                        numbers unless told not to (1, 10, 2 would lose the images and the classes).
- `make_image_competition`  the factory behind `image_competition`, for tests that need a variant
                        (another image folder, ids with extensions, a broken file, ids and class names
                        that look like numbers...). It writes into the folder you give it; the session
                        fixtures must be treated as read-only.
- `fake`                a fake Kaggle API (tests/fake_kaggle.py) that accepts alice/secret, with the real
                        `kaggle` client of this process pointed at it.
- `sleeps`              the publishing backoff delays, recorded instead of slept.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# data loaders default to one worker per core; tests load in-process, so 2 busy cores never fork (and tests that
# compare runs bit for bit see one process's decoding)
os.environ["KAGGLE_TLI_NUM_WORKERS"] = "0"

from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from fake_kaggle import FakeKaggle, point_client_at  # noqa: E402

from kaggle_tli.kaggle import client  # noqa: E402

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target  # (1797, 8, 8) in 0..16, labels 0..9


def _upscale(image8: np.ndarray, size: int) -> np.ndarray:
    grey = (image8 * (255.0 / 16.0)).astype(np.float32)
    return np.clip(cv2.resize(grey, (size, size), interpolation=cv2.INTER_LINEAR), 0, 255).astype(np.uint8)


def _pick(targets: np.ndarray, digits: Sequence[int], per_class: int, offset: int) -> np.ndarray:
    """`per_class` sample indices of each digit, starting at the `offset`-th occurrence."""
    return np.concatenate([np.flatnonzero(targets == d)[offset : offset + per_class] for d in digits])


def write_image_competition(
    root: Path,
    *,
    digits: Sequence[int] = (0, 1, 2),
    per_class: int = 20,
    n_test_per_class: int = 5,
    size: int = 32,
    ext: str = ".png",
    id_with_ext: bool = False,
    image_dir: str = "train",
    test_dir: str = "test",
    id_col: str = "id",
    label_col: str = "label",
    prefixes: tuple[str, str] = ("tr", "te"),
    label_names: Sequence[str] = WORDS,
) -> Path:
    """Write a train.csv + image-folder competition into `root` and return it.

    Ids are `<prefix><4 digits>` (`prefixes` for train and test: `("", "")` gives ids such as "0007"
    that pandas would read as numbers); digit d is labelled `label_names[d]`.
    """
    images, targets = _digits()
    root.mkdir(parents=True, exist_ok=True)
    tint = np.array([1.0, 0.8, 0.6], dtype=np.float32)  # RGB channels differ, as in a real photo

    def write(indices: np.ndarray, folder: Path, prefix: str) -> list[tuple[str, str]]:
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for k, i in enumerate(indices):
            rgb = (_upscale(images[i], size)[:, :, None] * tint).astype(np.uint8)
            name = f"{prefix}{k:04d}"
            cv2.imwrite(str(folder / f"{name}{ext}"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            rows.append((name + ext if id_with_ext else name, label_names[int(targets[i])]))
        return rows

    train = write(_pick(targets, digits, per_class, 0), root / image_dir, prefixes[0])
    test = write(_pick(targets, digits, n_test_per_class, per_class), root / test_dir, prefixes[1])
    pd.DataFrame(train, columns=[id_col, label_col]).to_csv(root / "train.csv", index=False)
    pd.DataFrame({id_col: [t[0] for t in test], label_col: label_names[digits[0]]}).to_csv(
        root / "sample_submission.csv", index=False
    )
    pd.DataFrame(test, columns=[id_col, label_col]).to_csv(root / "solution.csv", index=False)
    return root


def write_pixel_competition(root: Path, *, per_class: int = 10, n_test_per_class: int = 2) -> Path:
    """Write a Digit-Recognizer-shaped competition (28x28 grey pixel columns, 10 classes) into `root`."""
    images, targets = _digits()
    root.mkdir(parents=True, exist_ok=True)
    digits = range(10)
    columns = [f"pixel{i}" for i in range(28 * 28)]

    def table(indices: np.ndarray) -> pd.DataFrame:
        pixels = np.stack([_upscale(images[i], 28).reshape(-1) for i in indices])
        return pd.DataFrame(pixels, columns=columns)

    train_idx = _pick(targets, digits, per_class, 0)
    train = table(train_idx)
    train.insert(0, "label", targets[train_idx])
    train.to_csv(root / "train.csv", index=False)
    test_idx = _pick(targets, digits, n_test_per_class, per_class)
    table(test_idx).to_csv(root / "test.csv", index=False)
    ids = np.arange(1, len(test_idx) + 1)
    pd.DataFrame({"ImageId": ids, "Label": 0}).to_csv(root / "sample_submission.csv", index=False)
    pd.DataFrame({"ImageId": ids, "Label": targets[test_idx]}).to_csv(root / "solution.csv", index=False)
    return root


@pytest.fixture(scope="session")
def make_image_competition() -> Callable[..., Path]:
    """`make(root, **options) -> root`: see `write_image_competition` for the options."""
    return write_image_competition


@pytest.fixture(scope="session")
def image_competition(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny train.csv + PNG competition (60 train, 15 test images, 3 classes). Read-only by contract."""
    return write_image_competition(tmp_path_factory.mktemp("image_comp"))


@pytest.fixture(scope="session")
def pixel_competition(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Digit Recognizer (100 train rows, 20 test rows, 10 classes). Read-only by contract."""
    return write_pixel_competition(tmp_path_factory.mktemp("pixel_comp"))


NUMERIC_LABELS = ("01", "10", "2")  # digit d -> NUMERIC_LABELS[d]: "01" and "10" are not the numbers 1 and 10


@pytest.fixture(scope="session")
def numeric_competition(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ids "0000".."0059" (test "0000".."0014"), classes "01", "10", "2". Read-only by contract."""
    return write_image_competition(
        tmp_path_factory.mktemp("numeric_comp"), prefixes=("", ""), label_names=NUMERIC_LABELS
    )


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module: training tests then never stall on a busy 2-core machine (two thread
    pools sharing two cores can wait seconds per step)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fake(monkeypatch, tmp_path):
    with FakeKaggle(credentials=("alice", "secret")) as server:
        point_client_at(server, monkeypatch, tmp_path / "home")
        yield server


@pytest.fixture
def sleeps(monkeypatch):
    """Backoff delays, recorded instead of slept."""
    delays = []
    monkeypatch.setattr(client, "_sleep", delays.append)
    return delays
