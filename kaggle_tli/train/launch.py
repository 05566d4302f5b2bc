"""Where training runs: device checks, the Accelerate set-up, and one process or N data-parallel processes.

The multi-process path is Accelerate's `notebook_launcher` (fork; NCCL on GPUs, gloo on CPU), which is how
Kaggle's T4 x2 is used from a notebook; on CPU the same path runs with gloo, which is how it is tested.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import socket
from typing import Any

import torch
from accelerate import Accelerator, notebook_launcher
from accelerate.state import AcceleratorState, GradientState

from kaggle_tli.checkpoint import load_state
from kaggle_tli.runs import STATE_FILE
from kaggle_tli.train.config import TrainConfig
from kaggle_tli.train.loop import train_fold
from kaggle_tli.train.records import finish_run
from kaggle_tli.train.state import Ctx, Job


def _train_process(job: Job) -> None:
    """Entry point of every training process (called directly, or by Accelerate's launcher)."""
    acc = _accelerator(job.cfg)
    ctx = Ctx(job, acc)
    if ctx.device.type == "cpu" and ctx.world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.world))
    ctx.info["env"] = {
        "device": ctx.device.type, "world_size": ctx.world, "mixed_precision": str(acc.mixed_precision),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    state = load_state(job.run_dir / STATE_FILE) if (job.run_dir / STATE_FILE).exists() else None
    done = {int(k) for k, r in ctx.info.get("folds", {}).items() if r.get("status") == "done"}
    for fold in job.folds:
        if fold in done:
            continue
        resume_state = state if state is not None and state["fold"] == fold else None
        train_fold(ctx, fold, resume_state)
        if ctx.info["folds"][str(fold)]["status"] == "interrupted":
            finish_run(ctx, stopped_by_budget=True)
            return
    finish_run(ctx, stopped_by_budget=False)


def _accelerator(cfg: TrainConfig) -> Any:
    cuda = torch.cuda.is_available() if cfg.device == "auto" else cfg.device == "cuda"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA device is available; use device='auto' or 'cpu'")
    amp = cfg.amp in (True, "fp16") or (cfg.amp == "auto" and cuda)
    if amp and not cuda:
        raise ValueError("amp=fp16 needs a CUDA device; use amp='auto' or False on CPU")
    return Accelerator(cpu=not cuda, mixed_precision="fp16" if amp else "no")


def _reset_accelerate() -> None:
    """Forget Accelerate's process-wide state, so a later multi-process launch in the same notebook
    (which refuses to start when an Accelerator exists) and a later run with other settings work."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def launch(job: Job) -> None:
    """Train in this process, or in `num_processes` data-parallel processes via Accelerate's
    `notebook_launcher` (fork; NCCL on GPUs, gloo on CPU), which is how Kaggle's T4 x2 is used from
    a notebook. Only the main process writes files."""
    n = job.cfg.num_processes
    if n == 1:
        try:
            _train_process(job)
        finally:
            _reset_accelerate()
        return
    _reset_accelerate()
    cpu = job.cfg.device == "cpu" or (job.cfg.device == "auto" and not _cuda_visible())
    if cpu:  # the workers must not probe CUDA either: tell them
        job = dataclasses.replace(job, cfg=dataclasses.replace(job.cfg, device="cpu"))
    amp = "fp16" if not cpu and job.cfg.amp in ("auto", True, "fp16") else "no"
    print(f"kaggle-tli: training with {n} processes on {'CPU (gloo)' if cpu else 'GPUs (NCCL)'}")
    with contextlib.redirect_stdout(io.StringIO()):  # accelerate announces "CUDAs" even on CPU
        notebook_launcher(_train_process, args=(job,), num_processes=n, mixed_precision=amp, use_port=_free_port())


def check_devices(cfg: TrainConfig) -> None:
    """Refuse device settings that cannot work, before a run directory exists. Never initialises
    CUDA in this process (a later multi-process launch forks it)."""
    if cfg.num_processes > 1:
        gpus = torch.cuda.device_count() if _cuda_visible() else 0  # NVML count: no CUDA context
        use_gpu = cfg.device == "cuda" or (cfg.device == "auto" and gpus > 0)
        if use_gpu and gpus < cfg.num_processes:
            raise ValueError(
                f"num_processes={cfg.num_processes} but {gpus} GPU(s) are visible; use num_processes={max(gpus, 1)} "
                "or device='cpu' (gloo)"
            )
        cuda = use_gpu
    else:
        cuda = torch.cuda.is_available() if cfg.device != "cpu" else False
        if cfg.device == "cuda" and not cuda:
            raise ValueError("device='cuda' but no CUDA device is available; use device='auto' or 'cpu'")
    if cfg.amp in (True, "fp16") and not cuda:
        raise ValueError(f"amp={cfg.amp!r} needs a CUDA device (fp16 with a gradient scaler); use amp='auto' on CPU")


def _cuda_visible() -> bool:
    # decided without initialising CUDA in this process: forked workers could not use it otherwise
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return False
    return shutil.which("nvidia-smi") is not None and torch.cuda.device_count() > 0
