"""Loads the compiled extension ``contrastive_kernels._C``, if it was built.

A missing or broken build is a warning plus the pure-Python backends, never an import
error: :data:`LOAD_ERROR` keeps the reason for ``available_backends()`` and ``info``.
"""

from __future__ import annotations

import warnings

import torch  # noqa: F401  (loads libtorch, which _C links against)

_C = None
LOAD_ERROR = None

try:
    from . import _C  # noqa: F401  (registers the C++ ops with torch.library on import)
except Exception as exc:  # ImportError, or an undefined symbol from a torch mismatch
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"
    warnings.warn(
        f"contrastive_kernels: compiled extension _C not loaded ({LOAD_ERROR}); "
        "the C++/CUDA backends are unavailable, the PyTorch backends still work. "
        "Rebuild with `pip install --no-build-isolation -e .`.",
        RuntimeWarning, stacklevel=2)


def build_info() -> dict:
    """What the extension was built with (empty when it is not loaded)."""
    if _C is None:
        return {}
    return dict(_C.build_info())
