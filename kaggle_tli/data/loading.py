"""DataLoader settings as current practice has them: workers from the machine's cores, one OpenCV thread each.

`num_workers=None` means one worker per CPU core the process may use (at most `MAX_WORKERS`): decoding and
augmenting large images is usually what starves a GPU, and 0 workers does it all in the training process. The
environment variable `KAGGLE_TLI_NUM_WORKERS` overrides the default (the test suite sets 0, so tests never fork).
Each worker runs OpenCV on one thread: with w workers on w cores, OpenCV's own thread pool would only make them
compete; in the training process itself OpenCV runs sequentially, which keeps forked workers safe. Workers persist across epochs where the loader is reused, and batches are pinned for the copy to CUDA.
"""

from __future__ import annotations

import os
from typing import Any

import cv2

# OpenCV's thread pool does not survive fork: a DataLoader worker forked after the pool has started waits forever
# for threads that exist only in the parent (a resize of a large image is enough to start it). So OpenCV runs
# sequentially in this process, set before any call here can start the pool; the workers decode in parallel instead.
cv2.setNumThreads(0)

MAX_WORKERS = 8  # beyond that, start-up and memory grow faster than throughput on the machines Kaggle lends
WORKERS_ENV = "KAGGLE_TLI_NUM_WORKERS"


def default_num_workers() -> int:
    """`KAGGLE_TLI_NUM_WORKERS` when set, else the CPU cores this process may use (at most MAX_WORKERS)."""
    given = os.environ.get(WORKERS_ENV, "").strip()
    if given:
        try:
            return max(0, int(given))
        except ValueError as e:
            raise ValueError(f"{WORKERS_ENV}={given!r}: set a whole number of workers (0: load in the main process)"
                             ) from e
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return min(cores, MAX_WORKERS)


def one_opencv_thread(_worker_id: int) -> None:
    """DataLoader worker_init_fn: OpenCV on one thread inside each worker."""
    cv2.setNumThreads(1)


def loader_options(num_workers: int | None, *, cuda: bool, persistent: bool = False, processes: int = 1
                   ) -> dict[str, Any]:
    """Keyword arguments for a DataLoader: worker count (None: the default, shared out among `processes`
    data-parallel training processes), their initialiser, pinned memory on CUDA, persistent workers when the
    loader is iterated more than once."""
    if num_workers is None:
        default = default_num_workers()
        workers = max(1, default // max(1, processes)) if default else 0
    else:
        workers = int(num_workers)
    options: dict[str, Any] = {"num_workers": workers, "pin_memory": cuda}
    if workers > 0:
        options.update(worker_init_fn=one_opencv_thread, persistent_workers=persistent)
    return options
