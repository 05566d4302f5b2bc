"""Kaggle integration: weight bundles, published as datasets or Kaggle Models by the official client; kernels.

Nothing here imports torch or the `kaggle` client at import time: the client is imported (with
its output captured) only inside the functions that talk to Kaggle.
"""

from .bundle import bundle, load_bundle, validate_bundle
from .client import (
    KaggleAuthError,
    KaggleConflictError,
    KaggleError,
    KaggleNetworkError,
    KaggleNotFoundError,
    KaggleServerError,
    find_credentials,
)
from .kernels import push_kernel, render_kernel
from .locate import (
    BUNDLE_MARKER,
    COMPETITION_MARKERS,
    find_bundles,
    find_competition,
    find_inputs,
    locate_bundle,
)
from .metadata import DEFAULT_MODEL_LICENSE, MODEL_LICENSES, ModelHandle, parse_model_handle
from .publish import model_files, publish
from .wheel import build_wheel

__all__ = [
    "BUNDLE_MARKER",
    "COMPETITION_MARKERS",
    "DEFAULT_MODEL_LICENSE",
    "KaggleAuthError",
    "KaggleConflictError",
    "KaggleError",
    "KaggleNetworkError",
    "KaggleNotFoundError",
    "KaggleServerError",
    "MODEL_LICENSES",
    "ModelHandle",
    "build_wheel",
    "bundle",
    "find_bundles",
    "find_competition",
    "find_credentials",
    "find_inputs",
    "load_bundle",
    "locate_bundle",
    "model_files",
    "parse_model_handle",
    "publish",
    "push_kernel",
    "render_kernel",
    "validate_bundle",
]
