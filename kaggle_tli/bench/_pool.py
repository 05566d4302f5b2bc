"""Run independent benchmark jobs in worker processes that split the CPU cores between them.

Small models on 2 cores barely use a second thread, so two single-thread processes finish a list of training runs
almost twice as fast as one process with two threads. What must not happen is processes each starting a pool of as
many threads as there are cores: OpenMP threads spin-wait for each other and every step stalls. Each worker therefore
runs `threads` torch threads, with `workers * threads` at most the cores it was given.

A job is a module-level function and its arguments; it is called as `fn(data, *args)`. The data is sent to each
worker once, at start-up (spawned workers: no fork of a process whose thread pools already run). With one worker the
jobs run in this process, in order, which is what tests and debugging want.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import torch
from tqdm.auto import tqdm

Job = tuple[Callable[..., Any], tuple]

_DATA: Any = None  # the worker's copy of the data, set by _start


def cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def split_cores(workers: int | None, threads: int | None) -> tuple[int, int]:
    """(workers, threads per worker) from what the user gave: by default one single-thread worker per core."""
    n = cores()
    if workers is None:
        workers = max(1, n // (threads or 1))
    threads = threads or max(1, n // workers)
    return max(1, workers), max(1, threads)


def _start(data: Any, threads: int, setup: Callable[[], None] | None) -> None:
    global _DATA
    torch.set_num_threads(threads)
    _DATA = data
    if setup is not None:
        setup()


def _call(job: Job) -> Any:
    fn, args = job
    return fn(_DATA, *args)


def run_jobs(jobs: Sequence[Job], data: Any, *, workers: int, threads: int, setup: Callable[[], None] | None = None,
             desc: str = "jobs") -> list[Any]:
    """Results of every job, in the order of `jobs`. A job that raises stops the run with its error."""
    if workers <= 1 or len(jobs) <= 1:
        _start(data, threads, setup)
        return [fn(data, *args) for fn, args in tqdm(jobs, desc=desc, leave=False)]
    results: list[Any] = [None] * len(jobs)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context, initializer=_start,
                             initargs=(data, threads, setup)) as pool:
        futures = {pool.submit(_call, job): i for i, job in enumerate(jobs)}
        try:
            for future in tqdm(as_completed(futures), total=len(futures), desc=f"{desc} ({workers} workers)"):
                results[futures[future]] = future.result()
        except BaseException:  # a failed job or Ctrl-C: do not start the queued ones
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return results
