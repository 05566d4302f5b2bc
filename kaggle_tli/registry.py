"""TEMPORARY shim for the parallel restructure; removed at merge.

The registry now lives in kaggle_tli.models (registry.py, build.py, edits.py, heads.py, edited.py, _surgery.py).
This module only re-exports the public names that the rest of kaggle_tli still imports from here. The tables
``_REGISTRY`` / ``_HEADS`` are not here: patch ``kaggle_tli.models.registry``.
"""

from kaggle_tli.models import (
    ArchBuildError,
    UnknownArchError,
    arch_info,
    arch_spec,
    change_kernel_size,
    create_model,
    create_model_from_spec,
    fixed_in_chans,
    import_archs,
    is_arch,
    list_archs,
    register_edit,
    swap_activation,
)

__all__ = [
    "ArchBuildError",
    "UnknownArchError",
    "arch_info",
    "arch_spec",
    "change_kernel_size",
    "create_model",
    "create_model_from_spec",
    "fixed_in_chans",
    "import_archs",
    "is_arch",
    "list_archs",
    "register_edit",
    "swap_activation",
]
