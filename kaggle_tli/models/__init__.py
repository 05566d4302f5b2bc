"""Stage 2: the models package, names and the one build path for every model kaggle-tli trains.

A name resolves to one of three kinds of architecture:

* ``timm``: any model name timm knows (``resnet18``, ``efficientnet_b0``...), always built with
  ``pretrained=False`` unless the caller hands local weights in ``pretrained_cfg_overlay``;
* ``factory``: a user function registered with ``@register_arch(name)``, ``fn(num_classes, **kw) -> nn.Module``;
* ``edit``: a base architecture plus a list of declarative edits (``register_edit``), e.g. swap the
  activation or enlarge kernels.

``arch_spec(name, num_classes, **kw)`` describes a build as a JSON-serialisable dict (stored in
``run.json["arch"]``); ``create_model_from_spec(spec)`` rebuilds the same architecture in a fresh process.
An edited architecture rebuilds from its spec alone (the edits travel in it); a user factory must be
registered again (its source hash is in the spec, and a changed source warns), e.g. with
``import_archs("my_archs.py")``.

The package, one idea per module: `errors` (what users catch, and the checks of their values), `registry`
(names and the tables), `edits` and `heads` (the declarative edits), `build` (specs and the one build path),
`edited` (register_edit: a base plus edits, validated by a forward pass), `layout` (channels_last where it
pays) and `_surgery` (module swaps and timm's width/depth multipliers, internal to the package). Arrows point down
that list's reverse: edited -> build -> heads -> edits -> _surgery -> registry -> errors; `layout` imports none.
"""

from .build import SPEC_SCHEMA, arch_spec, create_model, create_model_from_spec, fixed_in_chans
from .edited import register_edit
from .edits import (
    Edit,
    change_in_chans,
    change_kernel_size,
    change_stride,
    deepen,
    edit_from_dict,
    swap_activation,
    widen,
)
from .errors import ArchBuildError, EditError, UnknownArchError
from .heads import replace_head
from .layout import memory_format, wants_channels_last
from .registry import (
    ArchInfo,
    arch_info,
    import_archs,
    is_arch,
    list_archs,
    register_arch,
    register_head,
    unregister_arch,
)

__all__ = [
    "SPEC_SCHEMA",
    "ArchInfo",
    "ArchBuildError",
    "EditError",
    "UnknownArchError",
    "Edit",
    "register_arch",
    "register_edit",
    "register_head",
    "import_archs",
    "unregister_arch",
    "arch_info",
    "is_arch",
    "list_archs",
    "create_model",
    "arch_spec",
    "fixed_in_chans",
    "create_model_from_spec",
    "swap_activation",
    "change_kernel_size",
    "change_stride",
    "widen",
    "deepen",
    "change_in_chans",
    "replace_head",
    "edit_from_dict",
    "memory_format",
    "wants_channels_last",
]
