"""After a transfer, prove both models are whole: no meta tensor, the teacher untouched, the student finite.

The trace swaps meta copies into the models and swaps the real tensors back; a model whose structure defeats that
(a module called or registered twice) once came back half on the meta device, teacher included, and the student
then computed NaN under a report that said all was well. These checks turn any such case into an error that names
the tensors, instead of a model that is silently broken. They cost one pass over the tensors' metadata, plus one
`isfinite` over the student: the teacher is checked by storage pointer and version counter, not by a clone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .units import named_tensors


class TransferIntegrityError(RuntimeError):
    """A transfer would hand back a broken model; the message names the tensors and what to do."""


@dataclass(frozen=True)
class Fingerprint:
    """What identifies a tensor's contents without reading them: in-place writes bump `version`, a swap changes
    the object, the storage or the device."""

    obj: int
    data_ptr: int
    version: int
    device: str
    shape: tuple[int, ...]


def fingerprint(model: nn.Module) -> dict[str, Fingerprint]:
    """Every parameter and buffer of `model`, by state_dict-style name (shared tensors under each name)."""
    params, buffers = named_tensors(model)
    tensors = {**params, **buffers}
    return {name: Fingerprint(id(t), t.data_ptr(), t._version, str(t.device), tuple(t.shape))
            for name, t in tensors.items()}


def _listed(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_unchanged(model: nn.Module, before: dict[str, Fingerprint], role: str) -> None:
    """Raise if any tensor of `model` differs from `before` (same names, same objects, no in-place write)."""
    after = fingerprint(model)
    changed = sorted(n for n in before.keys() | after.keys() if before.get(n) != after.get(n))
    if changed:
        raise TransferIntegrityError(
            f"the {role} was modified by the transfer ({len(changed)} tensors: {_listed(changed)}). This is a bug in "
            "kaggle_tli's engine: please report it with the architecture names. Rebuild or reload the "
            f"{role} before using it again; it no longer holds the weights it had.")


def check_student(student: nn.Module) -> None:
    """Raise if the student holds a meta tensor or a non-finite value after the transfer."""
    params, buffers = named_tensors(student)
    tensors = {**params, **buffers}
    meta = [n for n, t in tensors.items() if t.is_meta]
    if meta:
        raise TransferIntegrityError(
            f"the student has {len(meta)} tensors on the meta device after the transfer ({_listed(meta)}): they hold "
            "no values. This is a bug in kaggle_tli's engine: please report it with the architecture names, and "
            "rebuild the student before training it.")
    with torch.no_grad():
        floats = [(n, t) for n, t in tensors.items() if t.is_floating_point() and t.numel()]
        # one float32 sum per tensor is finite when every element is (and reads each element once, where isfinite
        # also writes a mask, and a float64 sum converts every element); only a non-finite sum (or one overflowed by
        # huge finite values) is looked at element by element
        sums = torch.stack([t.sum(dtype=torch.float32).cpu() for _, t in floats]) if floats else torch.zeros(0)
        suspects = [floats[k] for k in torch.nonzero(~torch.isfinite(sums)).flatten().tolist()]
        bad = [n for n, t in suspects if not bool(torch.isfinite(t).all())]
    if bad:
        raise TransferIntegrityError(
            f"the student has non-finite values (NaN or inf) after the transfer in {len(bad)} tensors ({_listed(bad)}). "
            "Check the teacher first (a diverged teacher carries NaN into its student: "
            "`all(p.isfinite().all() for p in teacher.parameters())`); rebuild the student before using it.")
