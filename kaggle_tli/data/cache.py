"""The resize cache: each original image decoded and downscaled once, kept as a uint8 .npy file, reused after.

Competition images are often 1-2k px while training happens at 224-512: decoding the original is most of what a
data loader does, every epoch, fold and `iterate` run. The cache decodes an original once, shrinks it (area
interpolation, aspect ratio kept) so its shorter side is `MARGIN` times the training size, and saves the pixels as
an uncompressed .npy file: loading that later costs a file read, no decode. Files are never upscaled.

JPEG originals at least twice the cached size are decoded at 1/2, 1/4 or 1/8 of their size (libjpeg scales in the
DCT, so the decode does a fraction of the work) before the final area resize: the epoch that fills the cache costs
about what an epoch without the cache does, or less, although it also writes every copy.

A cached file is found by a key of the source's absolute path, size in bytes and modification time, plus the
target size and channel count: a changed source or another image size gets a new file, so nothing stale is read.
Files are written atomically (a temporary name, then a rename), so data-loader workers can fill the cache at once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

DEFAULT_CACHE_DIR = "kaggle_tli_cache"  # under the working directory: /kaggle/working on Kaggle
# RandomResizedCrop keeps at least 70% of the area (about 84% of a side): 1.25x leaves every crop larger than
# the output, so training still downsamples, as it would from the original
MARGIN = 1.25


def decode_side(image_size: int | tuple[int, int]) -> int:
    """The shorter side an original needs for training at `image_size` without losing detail: the cached copy's
    size, and how far the loader may shrink a JPEG while decoding it."""
    side = max(image_size) if isinstance(image_size, (tuple, list)) else int(image_size)
    return int(round(side * MARGIN))


def jpeg_reduction(source: str, short_side: int) -> int:
    """How much smaller a JPEG may be decoded (8, 4, 2) with its shorter side still at least `short_side`;
    1 for other formats, or when the header cannot be read (the decode then reports the file)."""
    if not source.lower().endswith((".jpg", ".jpeg")):
        return 1
    try:
        with Image.open(source) as header:  # reads the header only
            shorter = min(header.size)
    except (OSError, ValueError):
        return 1
    return next((k for k in (8, 4, 2) if shorter // k >= short_side), 1)


class ResizeCache:
    """Decoded, downscaled copies of originals in `folder`, for one training size (`image_size`)."""

    def __init__(self, folder: str | Path, image_size: int | tuple[int, int], in_chans: int):
        self.short_side = decode_side(image_size)
        self.folder = Path(folder).expanduser().resolve() / f"{self.short_side}px_{in_chans}ch"
        self.in_chans = in_chans

    def __repr__(self) -> str:
        return f"ResizeCache({str(self.folder)!r})"

    def path_for(self, source: str) -> Path:
        """Where the cached copy of `source` lives (it changes when the source file changes)."""
        st = os.stat(source)
        key = f"{os.path.abspath(source)}|{st.st_size}|{st.st_mtime_ns}|{self.short_side}|{self.in_chans}"
        digest = hashlib.sha1(key.encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.npy"

    def load(self, source: str, decode: Callable[[str, int], np.ndarray]) -> np.ndarray:
        """The cached pixels of `source` (HWC uint8), decoding (`decode(path, reduce)`) and storing them on first
        use."""
        target = self.path_for(source)
        try:
            return np.load(target)
        except (OSError, ValueError, EOFError):  # FileNotFoundError is an OSError
            pass  # not cached yet, or a damaged entry: decode the original again
        image = self.shrink(decode(source, self.reduction(source)))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, image)
        os.replace(tmp, target)
        return image

    def reduction(self, source: str) -> int:
        """How much smaller `source` may be decoded for this cache (see `jpeg_reduction`)."""
        return jpeg_reduction(source, self.short_side)

    def shrink(self, image: np.ndarray) -> np.ndarray:
        """`image` with its shorter side brought down to `short_side` (never up)."""
        h, w = image.shape[:2]
        scale = self.short_side / min(h, w)
        if scale >= 1:
            return image
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        return small[:, :, None] if small.ndim == 2 else small
