"""Backend ``cpu``: the core ops as C++ kernels (csrc/cpu/), OpenMP over tiles.

The ops ``contrastive_kernels::lse_cpu`` / ``lse_cpu_backward`` are declared and
implemented in C++ (``TORCH_LIBRARY_FRAGMENT`` + ``TORCH_LIBRARY_IMPL(..., CPU, ...)``);
importing the compiled extension registers them, and this module attaches the fake
implementations and autograd from :mod:`contrastive_kernels.ops`. Without the extension
the backend still exists and says why it is unavailable.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import _extension, backends, ops

forward_op = backward_op = None
if _extension._C is not None:
    try:
        forward_op = torch.ops.contrastive_kernels.lse_cpu.default
        backward_op = torch.ops.contrastive_kernels.lse_cpu_backward.default
    except (AttributeError, RuntimeError) as exc:  # an extension built without csrc/cpu
        _missing_reason = f"compiled extension _C has no lse_cpu op ({exc}); rebuild it"
    else:
        _missing_reason = None
        ops.register_core_ops(forward_op, backward_op)
else:
    _missing_reason = f"compiled extension _C not loaded: {_extension.LOAD_ERROR}"


def _unavailable() -> Optional[str]:
    return _missing_reason


def _rejects(q, k, opts) -> Optional[str]:
    if q.device.type != "cpu":
        return f"the cpu backend takes CPU tensors, got {q.device}"
    return None


def _unloaded_forward(*args, **kwargs):
    raise backends.BackendError(f"backend 'cpu' is unavailable: {_missing_reason}")


BACKEND = backends.Backend(
    name="cpu",
    forward=forward_op if forward_op is not None else _unloaded_forward,
    unavailable_reason=_unavailable,
    rejects=_rejects,
    auto_devices=("cpu",),
    description="C++ kernels, tiled, OpenMP; CPU tensors, fp32/fp64/bf16/fp16",
)
