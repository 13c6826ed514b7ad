"""Loads the compiled extension ``contrastive_kernels._C``, if it was built, and registers
the fake implementations and autograd of its ops as it loads.

A missing or broken build is a warning plus the pure-Python backends, never an import
error: :data:`LOAD_ERROR` keeps the reason for ``available_backends()`` and ``info``.
"""

from __future__ import annotations

import warnings

import torch  # noqa: F401  (loads libtorch, which _C links against)

from .core.autograd import lookup, register_core_ops

KERNEL_SET = "native"  # ops lse_native / lse_native_backward: one kernel per dispatch key
# the CUDA kernel source compiled for the host against the emulation layer (csrc/emulation)
EMULATED_KERNEL_SET = "cuda_emulated"

_C = None
LOAD_ERROR = None
native_ops = None  # (forward, backward) OpOverloads once _C is loaded
emulated_ops = None  # the same for lse_cuda_emulated, when _C holds it
EMULATED_ERROR = None


def _torch_mismatch(built: str, running: str):
    """Why an extension built against torch ``built`` must not serve torch ``running``
    (a different minor release has another C++ ABI), or None."""
    def minor(v):
        return tuple(v.split("+")[0].split(".")[:2])
    if minor(built) != minor(running):
        return (f"compiled extension _C was built against torch {built} but torch {running} is "
                "running; rebuild it (pip install --no-build-isolation -e .) or install the "
                "wheel made for this torch")
    return None


try:
    from . import _C  # noqa: F401  (its TORCH_LIBRARY blocks declare the ops on load)
except Exception as exc:  # ImportError, or an undefined symbol from a torch mismatch
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"
    warnings.warn(
        f"contrastive_kernels: compiled extension _C not loaded ({LOAD_ERROR}); "
        "the C++/CUDA backends are unavailable, the PyTorch backends still work. "
        "Rebuild with `pip install --no-build-isolation -e .`.",
        RuntimeWarning, stacklevel=2)
else:
    LOAD_ERROR = _torch_mismatch(_C.build_info()["torch_version"], torch.__version__)

if _C is not None and LOAD_ERROR is not None:
    warnings.warn(f"contrastive_kernels: {LOAD_ERROR}; the C++/CUDA backends are disabled, "
                  "the PyTorch backends still work", RuntimeWarning, stacklevel=2)
elif _C is not None:
    try:
        native_ops = lookup(KERNEL_SET)
    except (AttributeError, RuntimeError) as exc:  # an extension built from other sources
        LOAD_ERROR = f"compiled extension _C has no lse_{KERNEL_SET} op ({exc}); rebuild it"
    else:
        register_core_ops(*native_ops)
    try:
        emulated_ops = lookup(EMULATED_KERNEL_SET)
    except (AttributeError, RuntimeError) as exc:
        EMULATED_ERROR = f"compiled extension _C has no lse_{EMULATED_KERNEL_SET} op ({exc}); rebuild it"
    else:
        register_core_ops(*emulated_ops)


def build_info() -> dict:
    """What the extension was built with (empty when it is not loaded)."""
    if _C is None:
        return {}
    return dict(_C.build_info())


def kernels_for(device_type: str) -> bool:
    """Whether the loaded op has a kernel for this device type (CPU, CUDA)."""
    if native_ops is None:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}[device_type]
    return torch._C._dispatch_has_kernel_for_dispatch_key(native_ops[0].name(), key)
