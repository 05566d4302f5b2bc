"""Kaggle integration: weight bundles, publishing through the official client, kernel folders.

Nothing here imports torch or the `kaggle` client at import time: the client is imported (with
its output captured) only inside the functions that talk to Kaggle.
"""

from .bundle import bundle, load_bundle, locate_bundle, validate_bundle
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
from .locate import BUNDLE_MARKER, COMPETITION_MARKERS, find_bundles, find_competition, find_inputs
from .publish import publish
from .wheel import build_wheel

__all__ = [
    "BUNDLE_MARKER",
    "COMPETITION_MARKERS",
    "KaggleAuthError",
    "KaggleConflictError",
    "KaggleError",
    "KaggleNetworkError",
    "KaggleNotFoundError",
    "KaggleServerError",
    "build_wheel",
    "bundle",
    "find_bundles",
    "find_competition",
    "find_credentials",
    "find_inputs",
    "load_bundle",
    "locate_bundle",
    "publish",
    "push_kernel",
    "render_kernel",
    "validate_bundle",
]
