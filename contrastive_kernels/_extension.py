"""Loads the compiled extension ``contrastive_kernels._C``, if it was built, and registers
the fake implementations and autograd of its ops as it loads.

A missing or broken build is a warning plus the pure-Python backends, never an import
error: :data:`LOAD_ERROR` keeps the reason for ``available_backends()`` and ``info``.
"""

from __future__ import annotations

import warnings

import torch  # noqa: F401  (loads libtorch, which _C links against)

from .core.autograd import lookup, register_op
from .core.ops import SPECS

KERNEL_SET = "native"  # ops lse_native / lse_native_backward: one kernel per dispatch key
# the CUDA kernel source compiled for the host against the emulation layer (csrc/emulation)
EMULATED_KERNEL_SET = "cuda_emulated"

_C = None
LOAD_ERROR = None
native_ops = None  # lse's (forward, backward) OpOverloads once _C is loaded
emulated_ops = None  # the same for lse_cuda_emulated, when _C holds it
# {op: (forward, backward)} of every op of the family _C declares, per kernel set
native_op_pairs: dict = {}
emulated_op_pairs: dict = {}
EMULATED_ERROR = None


def _op_pairs(kernel_set: str) -> dict:
    """Every spec's pair in ``kernel_set`` that _C declares, registered (fake, autograd,
    autocast); an op _C lacks (built from older sources) is simply absent."""
    pairs = {}
    for name, spec in SPECS.items():
        try:
            pair = lookup(kernel_set, spec)
        except (AttributeError, RuntimeError):
            continue
        register_op(spec, *pair)
        pairs[name] = pair
    return pairs


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
    native_op_pairs = _op_pairs(KERNEL_SET)
    native_ops = native_op_pairs.get("lse")
    if native_ops is None:  # an extension built from other sources
        LOAD_ERROR = f"compiled extension _C has no lse_{KERNEL_SET} op; rebuild it"
    emulated_op_pairs = _op_pairs(EMULATED_KERNEL_SET)
    emulated_ops = emulated_op_pairs.get("lse")
    if emulated_ops is None:
        EMULATED_ERROR = f"compiled extension _C has no lse_{EMULATED_KERNEL_SET} op; rebuild it"


def build_info() -> dict:
    """What the extension was built with (empty when it is not loaded)."""
    if _C is None:
        return {}
    return dict(_C.build_info())


def kernels_for(device_type: str, op: str = "lse") -> bool:
    """Whether the loaded ``op`` has a kernel for this device type (CPU, CUDA)."""
    pair = native_op_pairs.get(op)
    if pair is None:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}[device_type]
    return torch._C._dispatch_has_kernel_for_dispatch_key(pair[0].name(), key)


def kernel_ops(kernel_set_pairs: dict, device_type: str, dispatch_key: str = None) -> dict:
    """The ops of ``kernel_set_pairs`` that have a kernel for ``dispatch_key`` (default:
    the device type's own), as {op: (forward, backward)}."""
    key = dispatch_key or {"cpu": "CPU", "cuda": "CUDA"}[device_type]
    return {name: pair for name, pair in kernel_set_pairs.items()
            if torch._C._dispatch_has_kernel_for_dispatch_key(pair[0].name(), key)}
