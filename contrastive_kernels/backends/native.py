"""Backend ``cpu``: the compiled ops ``contrastive_kernels::<op>_native`` on CPU tensors.

The ops are declared once in C++ (``csrc/register.cpp``, from the table in
``csrc/common/contract.h``) with one kernel per dispatch key (``csrc/cpu/`` for CPU,
``csrc/cuda/`` for CUDA); their fake implementations and autograd are registered when the
extension loads (:mod:`contrastive_kernels._extension`). The backend implements the ops
that have a CPU kernel. Without the extension it still exists and says why it is
unavailable.
"""

from __future__ import annotations

from typing import Optional

from .. import _extension
from .registry import Backend, BackendError, OpPair


def _cpu_available() -> Optional[str]:
    if _extension.native_ops is None:
        return f"compiled extension _C not loaded: {_extension.LOAD_ERROR}"
    if not _extension.kernels_for("cpu"):
        return "compiled extension _C has no CPU kernel for lse_native; rebuild it"
    return None


def _unloaded(*args, **kwargs):
    raise BackendError(f"backend 'cpu' is unavailable: {_cpu_available()}")


def _ops() -> dict:
    if _extension.native_ops is None:
        return {"lse": OpPair(_unloaded, _unloaded)}
    return {name: OpPair(*pair)
            for name, pair in _extension.kernel_ops(_extension.native_op_pairs, "cpu").items()}


BACKEND = Backend(
    name="cpu",
    ops=_ops(),
    description="C++ kernels, tiled, OpenMP; CPU tensors, fp32/fp64/bf16/fp16",
    devices=("cpu",),
    auto_devices=("cpu",),
    priority=20,
    symmetric_tiles=True,
    available=_cpu_available,
)
