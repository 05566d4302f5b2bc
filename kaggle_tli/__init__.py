"""kaggle-tli: Transfer Learning by Injection for Kaggle workflows.

The public names are imported lazily, so `import kaggle_tli` (and `kaggle-tli --help`) stay fast
and do not pull in torch until a name that needs it is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from .version import __version__

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # engine
    "TransferReport": "kaggle_tli.tli",
    "TransferOptions": "kaggle_tli.tli",
    "TransferIntegrityError": "kaggle_tli.tli",
    "TraceError": "kaggle_tli.tli",
    "tli_score": "kaggle_tli.tli",
    "similarity_matrix": "kaggle_tli.tli",
    "rank_teachers": "kaggle_tli.stages",
    "trace": "kaggle_tli.tli",
    "recalibrate_norms": "kaggle_tli.tli",
    "refit_head": "kaggle_tli.tli",
    # stage 3: transfer() accepts modules, run directories and weight files
    "transfer": "kaggle_tli.stages",
    "inject": "kaggle_tli.stages",
    # stage 2: models
    "register_arch": "kaggle_tli.models",
    "list_archs": "kaggle_tli.models",
    "create_model": "kaggle_tli.models",
    "import_archs": "kaggle_tli.models",
    "arch_spec": "kaggle_tli.models",
    "create_model_from_spec": "kaggle_tli.models",
    "register_edit": "kaggle_tli.models",
    "register_head": "kaggle_tli.models",
    "arch_info": "kaggle_tli.models",
    "swap_activation": "kaggle_tli.models",
    "change_kernel_size": "kaggle_tli.models",
    "change_stride": "kaggle_tli.models",
    "widen": "kaggle_tli.models",
    "deepen": "kaggle_tli.models",
    "change_in_chans": "kaggle_tli.models",
    "replace_head": "kaggle_tli.models",
    "UnknownArchError": "kaggle_tli.models",
    # data, training, runs
    "ImageCsvData": "kaggle_tli.data",
    "ClassFolderData": "kaggle_tli.data",
    "run_predictions": "kaggle_tli.stages",
    "DataError": "kaggle_tli.data",
    "DataWarning": "kaggle_tli.data",
    "rebuild_data": "kaggle_tli.data",
    "seed_everything": "kaggle_tli.train",
    "Metric": "kaggle_tli.train",
    "UnsafeCheckpointError": "kaggle_tli.checkpoint",
    "CorruptCheckpointError": "kaggle_tli.checkpoint",
    "save_weights": "kaggle_tli.checkpoint",
    "load_weights": "kaggle_tli.checkpoint",
    "PixelCsvData": "kaggle_tli.data",
    "TrainConfig": "kaggle_tli.train",
    "RunBusyError": "kaggle_tli.train",
    "Run": "kaggle_tli.runs",
    "load_run": "kaggle_tli.runs",
    "finetune": "kaggle_tli.stages",
    "resume": "kaggle_tli.stages",
    "predict": "kaggle_tli.stages",
    "iterate": "kaggle_tli.stages",
    "Ledger": "kaggle_tli.ledger",
    "LedgerError": "kaggle_tli.ledger",
    "LedgerSchemaError": "kaggle_tli.ledger",
    "LEDGER_COLUMNS": "kaggle_tli.ledger",
    # Kaggle
    "bundle": "kaggle_tli.kaggle",
    "load_bundle": "kaggle_tli.kaggle",
    "publish": "kaggle_tli.kaggle",
    "render_kernel": "kaggle_tli.kaggle",
    "push_kernel": "kaggle_tli.kaggle",
    "find_inputs": "kaggle_tli.kaggle",
    "find_bundles": "kaggle_tli.kaggle",
    "find_competition": "kaggle_tli.kaggle",
    "KaggleError": "kaggle_tli.kaggle",
    "find_credentials": "kaggle_tli.kaggle",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kaggle_tli' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: the next lookup skips __getattr__
    return value


def __dir__() -> list[str]:
    return __all__
