"""Backend ``cpu``: the compiled op ``contrastive_kernels::lse_native`` on CPU tensors.

The op is declared once in C++ (``csrc/register.cpp``) with one kernel per dispatch key
(``csrc/cpu/`` for CPU; CUDA next); its fake implementation and autograd are registered
when the extension loads (:mod:`contrastive_kernels._extension`). Without the extension the
backend still exists and says why it is unavailable.
"""

from __future__ import annotations

from typing import Optional

from .. import _extension
from .registry import Backend, BackendError


def _cpu_available() -> Optional[str]:
    if _extension.native_ops is None:
        return f"compiled extension _C not loaded: {_extension.LOAD_ERROR}"
    if not _extension.kernels_for("cpu"):
        return "compiled extension _C has no CPU kernel for lse_native; rebuild it"
    return None


def _unloaded(*args, **kwargs):
    raise BackendError(f"backend 'cpu' is unavailable: {_cpu_available()}")


BACKEND = Backend(
    name="cpu",
    forward=_extension.native_ops[0] if _extension.native_ops else _unloaded,
    backward=_extension.native_ops[1] if _extension.native_ops else _unloaded,
    description="C++ kernels, tiled, OpenMP; CPU tensors, fp32/fp64/bf16/fp16",
    devices=("cpu",),
    auto_devices=("cpu",),
    priority=20,
    symmetric_tiles=True,
    available=_cpu_available,
)
