"""Safe weights and safe training state: safetensors for weights, `state.pt` loaded with weights_only=True.

Weights are safetensors (no code can hide in them); `state.pt` goes through `torch.load(weights_only=True)`,
which refuses any pickle that would build an arbitrary Python object, and that refusal is reported as
`UnsafeCheckpointError`; a damaged or truncated `state.pt` (not a complete torch.save zip archive) is a
`CorruptCheckpointError`. Both are written atomically (`kaggle_tli.files`).
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _st_load
from safetensors.torch import safe_open
from safetensors.torch import save as _st_save

from kaggle_tli.files import atomic_write_bytes


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds Python objects beyond tensors and plain containers: loading it could run code."""


class CorruptCheckpointError(ValueError):
    """A training state file is damaged or truncated (or not a torch.save archive at all)."""


def save_weights(state_dict: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> Path:
    """Save tensors as safetensors, atomically. Tensors sharing memory (tied weights, or views of one
    tensor at any offset) are saved as separate copies, since safetensors refuses aliases."""
    seen: set[int] = set()
    tensors = {}
    for name, tensor in state_dict.items():
        t = tensor.detach().cpu().contiguous()
        # keyed on the storage alone: two views at different offsets still share memory
        key = t.untyped_storage().data_ptr() if t.numel() else id(t)
        if key in seen:
            t = t.clone()
        seen.add(key)
        tensors[name] = t
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    return atomic_write_bytes(path, _st_save(tensors, metadata=meta))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file onto the CPU; a missing file is a FileNotFoundError, a truncated or damaged one a
    `CorruptCheckpointError` that says how to get a good copy."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {str(path)!r}")
    try:
        return _st_load(path.read_bytes())
    except SafetensorError as e:
        raise _corrupt_weights(path, e) from e


def weights_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata stored in a safetensors file (arch, run_id, num_classes...)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except SafetensorError as e:
        raise _corrupt_weights(Path(path), e) from e


def _corrupt_weights(path: Path, error: Exception) -> CorruptCheckpointError:
    # kaggle-tli writes weights whole, in one atomic rename: a short file was cut while being copied, uploaded or
    # downloaded (or the disk filled up), so the fix is a good copy, not a repair
    return CorruptCheckpointError(
        f"{str(path)!r} is truncated or damaged ({path.stat().st_size} bytes; safetensors said: {error}). Copy it "
        "again from where it came from (the Kaggle dataset version or the machine that trained the run); without a "
        "good copy, train that run again (a fold's weights cannot be rebuilt from the other files)"
    )


def save_state(state: dict, path: str | Path) -> Path:
    """`torch.save` into memory, then one atomic write: a kill mid-save leaves the previous state."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


_CORRUPT_FIX = (
    "Delete it to restart the unfinished fold from its step-0 weights (finished folds are kept), or put back "
    "the last good copy (e.g. the run from the Kaggle dataset version you continued from)"
)


def load_state(path: str | Path) -> dict:
    """`torch.load(weights_only=True)`: tensors, numbers, strings and containers only.

    A pickle that would construct any other object (the way malicious checkpoints run code) is
    refused with `UnsafeCheckpointError` and nothing of it is executed. A file that is not a
    complete torch.save zip archive (truncated, overwritten, garbage) is a `CorruptCheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training state at {str(path)!r}")
    # torch.save writes a zip archive; a truncated one has lost its central directory at the end
    if not zipfile.is_zipfile(path):
        raise CorruptCheckpointError(
            f"{str(path)!r} is not a complete training state ({path.stat().st_size} bytes, not a torch.save zip "
            f"archive): it is truncated or damaged. {_CORRUPT_FIX}."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        said = _torch_reason(e)
        # torch names the refused object (GLOBAL module.name) whether it is allowlisted, blocked or unknown
        if "global" not in str(e).lower():  # a damaged pickle stream, not a forbidden object
            raise CorruptCheckpointError(f"{str(path)!r} is damaged ({said}). {_CORRUPT_FIX}.") from e
        raise UnsafeCheckpointError(
            f"refusing to load {str(path)!r}: it holds Python objects that safe loading refuses ({said}). "
            "Unpickling them could run any code, so a file like this from an attached dataset or a download may be "
            "an attack; load training state only from a source you trust. kaggle-tli never writes such objects: "
            "delete the file to restart the unfinished fold from its step-0 weights (finished folds are kept), or "
            "put back a copy you trust"
        ) from e
    except (RuntimeError, EOFError, KeyError, ValueError, IndexError, TypeError, zipfile.BadZipFile) as e:
        raise CorruptCheckpointError(
            f"{str(path)!r} is damaged ({type(e).__name__}: {str(e).strip()[:300]}). {_CORRUPT_FIX}."
        ) from e


# torch's advice around the reason: turning safe loading off or allowlisting the object, which must never be passed on
# (for a file from an attached dataset that advice is the attack), and a link to its documentation
_TORCH_ADVICE = ("weights_only", "re-running", "trusted source", "documentation", "safe_globals", "please use")


def _torch_reason(error: Exception) -> str:
    """The informative line of torch's weights_only error, without its advice."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = [line for line in lines if "unpickler error" in line.lower() or "unsupported" in line.lower()]
    plain = [line for line in lines if not any(word in line.lower() for word in _TORCH_ADVICE)]
    reason = (detail or plain or [type(error).__name__])[0]
    return reason.split(" Please use")[0].split(" Check the documentation")[0]
