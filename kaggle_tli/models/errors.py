"""What the models package refuses: its error types, and the checks of the names and values users pass in."""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "ArchBuildError",
    "EditError",
    "UnknownArchError",
    "check_in_chans",
    "check_json",
    "check_name",
    "check_num_classes",
]


class UnknownArchError(KeyError, ValueError):
    """An architecture name that is neither registered nor a timm model."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class ArchBuildError(RuntimeError):
    """A factory, timm or an edit failed while building a model."""


class EditError(ValueError):
    """An edit that cannot apply: a pattern matching nothing, an unknown activation, an unsupported family."""


def check_json(what: str, obj: Any) -> None:
    """Refuse a value that run.json could not store."""
    try:
        json.dumps(obj)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{what} is not JSON-serialisable ({e}); a run stores its architecture as JSON, so pass plain "
            "values (str, int, float, bool, lists, dicts) or set the object inside a registered factory"
        ) from e


def check_name(name: Any) -> str:
    """``name``, checked: a non-empty string that does not name a Hugging Face Hub model."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"architecture name must be a non-empty string, got {name!r}")
    if name.startswith(("hf-hub:", "hf_hub:", "timm/")):
        raise ValueError(
            f"{name!r} names a Hugging Face Hub model: kaggle-tli never downloads weights; use the plain "
            "timm architecture name (e.g. 'resnet18') and load weights from a run or a local file"
        )
    return name


def check_num_classes(num_classes: Any) -> int:
    """``num_classes``, checked: an int >= 0."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0 (0 = no classifier), got {num_classes!r}")
    return num_classes


def check_in_chans(in_chans: Any) -> int:
    """``in_chans``, checked: an int >= 1."""
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be an int >= 1, got {in_chans!r}")
    return in_chans
