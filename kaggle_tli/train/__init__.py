"""The one training loop and its run session: config, loop, records, launch, checks, session."""

from kaggle_tli.train.checks import (
    check_arch_channels,
    check_data,
    check_input_size,
    check_same_classes,
    check_spec_classes,
    spec_for_data,
)
from kaggle_tli.train.config import Metric, TrainConfig, fold_plan, resolve_metric, seed_everything
from kaggle_tli.train.launch import check_devices, launch
from kaggle_tli.train.records import LOG_COLUMNS, truncate_log
from kaggle_tli.train.session import RunBusyError, StageRequest, continue_run, git_sha, start_run

__all__ = [
    "LOG_COLUMNS",
    "Metric",
    "RunBusyError",
    "StageRequest",
    "TrainConfig",
    "check_arch_channels",
    "check_data",
    "check_devices",
    "check_input_size",
    "check_same_classes",
    "check_spec_classes",
    "continue_run",
    "fold_plan",
    "git_sha",
    "launch",
    "resolve_metric",
    "seed_everything",
    "spec_for_data",
    "start_run",
    "truncate_log",
]
