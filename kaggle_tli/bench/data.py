"""Benchmark: images/s of the input pipeline at Kaggle sizes, set against the decode-only limit on the same files.

For each original format (JPEG, PNG) and size (512, 1024, 2048 px) the benchmark writes `--images` synthetic photos
(smooth colour fields plus sensor-like noise, so a file weighs about what a camera image of that size does: the
first `UNIQUE` are drawn, the rest are copies under other names, which decode at the same cost), then measures:

- **decode only**: `ImageDataset.decode` (the library's own decode: OpenCV, one thread) over every file, in this
  process: the single-core limit. With w workers the limit is w times that (0 workers: 1 times);
- **reduced decode only**: the decode the loader itself does, which opens a JPEG at 1/2, 1/4 or 1/8 of its size
  where the training size leaves the same detail (`reduced_limit`, and the loader's share of it, `of_reduced`);
- **the training loader**: `ImageCsvData.train_loader` (decode, RandomResizedCrop, flip, normalise, to tensor) at
  224 and 384 px with 0, 1 and 2 workers;
- **the resize cache** (`cache="resized"`): the same loader's second epoch, and its first (`fill_per_s`: the epoch
  that fills the cache, where JPEGs are decoded reduced).

A loader's rate is timed from its first batch to its last, so worker start-up is left out and the figure is the
steady state. This process runs OpenCV and torch on one thread, like each worker, so 0 workers means one core.

    kaggle-tli bench data --out bench_out/data --images 128
    python -m kaggle_tli.bench.data --formats jpg --sizes 1024 --train-sizes 224      (the issue's case only)
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from kaggle_tli.bench._report import markdown_table, write_table
from kaggle_tli.data import ImageCsvData

__all__ = ["decode_rate", "loader_rate", "main", "make_originals", "run_data_bench"]

UNIQUE = 8  # distinct images per format and size; the others are copies (same decode cost, separate cache entries)
FOLDS = 16  # fold 0's training rows are 15/16 of the images: the loader sees nearly all of them
JPEG_QUALITY = 90


def make_originals(folder: Path, fmt: str, size: int, n: int, seed: int = 0) -> Path:
    """A competition folder (train.csv, train/<id>.<fmt>) of `n` size x size photos-like images, two classes."""
    rng = np.random.default_rng(seed)
    (folder / "train").mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if fmt == "jpg" else []
    ids = [f"img{i:05d}" for i in range(n)]
    for i, name in enumerate(ids):
        path = folder / "train" / f"{name}.{fmt}"
        if i >= UNIQUE:
            shutil.copyfile(folder / "train" / f"{ids[i % UNIQUE]}.{fmt}", path)
            continue
        coarse = rng.uniform(0, 255, (6, 6, 3)).astype(np.float32)
        smooth = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
        noisy = np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)
        if not cv2.imwrite(str(path), noisy, params):
            raise OSError(f"could not write {path}")
    pd.DataFrame({"id": ids, "label": [i % 2 for i in range(n)]}).to_csv(folder / "train.csv", index=False)
    return folder


def decode_rate(data: ImageCsvData, *, reduced: bool = False) -> float:
    """Images/s of the library's decode alone over every training file, on this one thread: of the whole original,
    or (`reduced`) at the fraction the loader decodes a JPEG at for `data`'s image size."""
    dataset = data.dataset(np.arange(len(data)), train=True)
    t0 = time.perf_counter()
    for i, path in enumerate(dataset.paths):
        if reduced:
            dataset.load(i)  # no cache here: the loader's own decode, before any transform
        else:
            dataset.decode(path)
    return len(dataset.paths) / (time.perf_counter() - t0)


def loader_rate(data: ImageCsvData, workers: int, batch_size: int, epochs: int = 1) -> list[float]:
    """Images/s of `data.train_loader` in each epoch, from its first batch to its last (fold 0's rows)."""
    loader = data.train_loader(0, batch_size, num_workers=workers)
    rates = []
    for _ in range(epochs):
        seen, t0 = 0, None
        for x, _ in loader:
            if t0 is None:
                t0 = time.perf_counter()  # the first batch carries the workers' start-up: not timed
                continue
            seen += len(x)
        rates.append(seen / (time.perf_counter() - t0) if t0 is not None and seen else float("nan"))
    return rates


def _rows_for(folder: Path, fmt: str, size: int, train_sizes: list[int], workers: list[int], batch_size: int,
              cache_root: Path) -> list[dict]:
    """Every measurement on one set of originals."""
    data = ImageCsvData(folder, image_size=train_sizes[0], folds=FOLDS, check_images="none")
    paths = data.frame["path"].tolist()
    file_kb = float(np.mean([Path(p).stat().st_size for p in paths]) / 1024)
    decode = decode_rate(data)
    rows = []
    for train_px in train_sizes:
        plain = ImageCsvData(folder, image_size=train_px, folds=FOLDS, check_images="none")
        reduced = decode_rate(plain, reduced=True)
        for w in workers:
            limit, own_limit = decode * max(w, 1), reduced * max(w, 1)
            (rate,) = loader_rate(plain, w, batch_size)
            rows.append(dict(format=fmt, original_px=size, file_kb=file_kb, train_px=train_px, workers=w,
                             cache="no", images_per_s=rate, decode_limit=limit, of_limit=rate / limit,
                             reduced_limit=own_limit, of_reduced=rate / own_limit,
                             speedup=float("nan"), fill_per_s=float("nan")))
            cached = ImageCsvData(folder, image_size=train_px, folds=FOLDS, check_images="none", cache="resized",
                                  cache_dir=cache_root / f"{fmt}{size}_{train_px}_{w}")
            fill, fast = loader_rate(cached, w, batch_size, epochs=2)
            rows.append(dict(format=fmt, original_px=size, file_kb=file_kb, train_px=train_px, workers=w,
                             cache="resized", images_per_s=fast, decode_limit=limit, of_limit=float("nan"),
                             reduced_limit=own_limit, of_reduced=float("nan"),
                             speedup=fast / rate, fill_per_s=fill))
    return rows


def run_data_bench(*, formats: list[str], sizes: list[int], train_sizes: list[int], workers: list[int],
                   images: int, batch_size: int, work_dir: Path | None = None) -> pd.DataFrame:
    """The whole grid, one row per (format, original size, training size, workers, cache)."""
    threads = cv2.getNumThreads(), torch.get_num_threads()
    cv2.setNumThreads(1)  # this process stands for one core, like each worker
    torch.set_num_threads(1)
    rows = []
    try:
        with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
            for fmt in formats:
                for size in sizes:
                    folder = make_originals(Path(tmp) / f"{fmt}{size}", fmt, size, images)
                    rows += _rows_for(folder, fmt, size, train_sizes, workers, batch_size, Path(tmp) / "cache")
                    shutil.rmtree(folder)  # 2048-px PNGs add up: keep one set on disk at a time
    finally:
        cv2.setNumThreads(threads[0])
        torch.set_num_threads(threads[1])
    return pd.DataFrame(rows)


def _checks(frame: pd.DataFrame) -> list[str]:
    """The issue's two must-hold figures, on 1024-px JPEGs at 224 where measured."""
    case = frame[(frame.format == "jpg") & (frame.original_px == 1024) & (frame.train_px == 224)]
    notes = []
    for w in sorted(case.workers.unique()):
        plain = case[(case.workers == w) & (case.cache == "no")].iloc[0]
        cached = case[(case.workers == w) & (case.cache == "resized")].iloc[0]
        notes.append(f"1024-px JPEG at 224, {w} worker(s): {plain.of_limit:.0%} of the decode-only limit "
                     f"({plain.images_per_s:.0f} of {plain.decode_limit:.0f} images/s; {plain.of_reduced:.0%} of "
                     f"the reduced decode's {plain.reduced_limit:.0f}); with the cache, epoch 2 "
                     f"is {cached.speedup:.1f}x faster ({cached.images_per_s:.0f} images/s)")
    return notes


def main(argv: list[str] | None = None) -> int:
    """Command line: the table as markdown on stdout, and data.csv / data.md in --out."""
    parser = argparse.ArgumentParser(prog="kaggle-tli bench data", description=__doc__.splitlines()[0])
    ints = dict(type=int, nargs="+")
    parser.add_argument("--formats", nargs="+", default=["jpg", "png"], choices=("jpg", "png"))
    parser.add_argument("--sizes", **ints, default=[512, 1024, 2048], help="original sizes in pixels")
    parser.add_argument("--train-sizes", **ints, default=[224, 384], help="training image sizes")
    parser.add_argument("--workers", **ints, default=[0, 1, 2], help="DataLoader worker counts")
    parser.add_argument("--images", type=int, default=128, help="images per format and size")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default="bench_out/data", help="folder for data.csv and data.md")
    parser.add_argument("--work-dir", default=None, help="where the temporary images go (default: the system's)")
    args = parser.parse_args(argv)
    if args.images < max(2 * FOLDS, 3 * args.batch_size):
        parser.error(f"--images {args.images}: need at least {max(2 * FOLDS, 3 * args.batch_size)} (two per fold "
                     "and class, and three batches: the first is not timed)")
    load_before = os.getloadavg()[0]
    frame = run_data_bench(formats=args.formats, sizes=args.sizes, train_sizes=args.train_sizes,
                           workers=args.workers, images=args.images, batch_size=args.batch_size,
                           work_dir=Path(args.work_dir) if args.work_dir else None)
    formats = {"file_kb": ".0f", "images_per_s": ".0f", "decode_limit": ".0f", "of_limit": ".0%", "speedup": ".1f",
               "fill_per_s": ".0f", "reduced_limit": ".0f", "of_reduced": ".0%"}
    # rates are only comparable on an idle machine: say how busy it was
    notes = [f"{os.cpu_count()} CPU cores; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"]
    notes += _checks(frame)
    write_table(frame, args.out, "data", title="Input pipeline images/s", notes=notes, formats=formats)
    print(markdown_table(frame, formats))
    print("\n".join(notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
