"""TEMPORARY shim for the parallel restructure; removed at merge.

The trainer now lives in `kaggle_tli.train` (config, loop, records, session, launch, checks) and `predict` in
`kaggle_tli.stages.predict`; this module only re-exports their public names for code not yet moved over.
"""

from kaggle_tli.stages.predict import check_submission, make_submission, predict
from kaggle_tli.train import (
    LOG_COLUMNS,
    Metric,
    RunBusyError,
    StageRequest,
    TrainConfig,
    check_devices,
    check_input_size,
    continue_run,
    fold_plan,
    git_sha,
    launch,
    resolve_metric,
    seed_everything,
    start_run,
    truncate_log,
)

__all__ = [
    "LOG_COLUMNS",
    "Metric",
    "RunBusyError",
    "StageRequest",
    "TrainConfig",
    "check_devices",
    "check_input_size",
    "check_submission",
    "continue_run",
    "fold_plan",
    "git_sha",
    "launch",
    "make_submission",
    "predict",
    "resolve_metric",
    "seed_everything",
    "start_run",
    "truncate_log",
]
