"""Backend ``triton``: Triton kernels for the core ops (CUDA tensors).

- ``lse_forward.py``: row-block grid, online max / sum-exp over key tiles, fp32 lse and o.
- ``lse_backward.py``: deterministic two-grid backward (dq on rows, dk on columns), each
  recomputing the logits from the saved lse.
- ``configs.py``: the fixed launch config per (kernel, d range, dtype, arch); autotuning
  is opt-in (``CONTRASTIVE_KERNELS_TRITON_AUTOTUNE=1``).
- ``aot.py``: ahead-of-time compilation of every shipped config for sm_80 / sm_90 and the
  register / spill / shared-memory report (``docs/triton_compile_report.md``).

Under ``TRITON_INTERPRET=1`` (set before this package is imported) the kernels run on the
CPU through the Triton interpreter, and the backend then accepts CPU tensors too: that is
how the test-suite checks it on machines without a GPU. The interpreter multiplies bf16
as raw bits, so bf16 tiles are upcast to fp32 before ``tl.dot`` when interpreting.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from .. import backends

try:
    import triton  # noqa: F401
    _IMPORT_ERROR: Optional[str] = None
except Exception as exc:  # pragma: no cover - depends on the environment
    _IMPORT_ERROR = f"triton is not importable ({exc})"

if _IMPORT_ERROR is None:
    try:
        from . import _ops
        from ._ops import lse_backward_op, lse_op  # noqa: F401
    except Exception as exc:  # pragma: no cover
        _IMPORT_ERROR = f"the Triton kernels failed to load ({type(exc).__name__}: {exc})"

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _interpret_env() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason() -> Optional[str]:
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if _interpret_env() or _ops._kernels_interpreted():
        return None
    if not torch.cuda.is_available():
        return "no CUDA device (and TRITON_INTERPRET is not 1, so no CPU interpreter)"
    return None


def rejects(q: torch.Tensor, k: torch.Tensor, opts: backends.CoreOptions) -> Optional[str]:
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype} is not supported (fp16, bf16, fp32, fp64)"
    if q.device.type == "cuda":
        if _ops._kernels_interpreted():
            return None  # the interpreter copies CUDA tensors to the host and back
        major, minor = torch.cuda.get_device_capability(q.device)
        if (major, minor) < (7, 5):
            return f"compute capability {major}.{minor} < 7.5 (Triton needs Turing or newer)"
        if q.dtype == torch.bfloat16 and major < 8:
            return f"bf16 needs compute capability >= 8.0, got {major}.{minor}"
        return None
    if q.device.type == "cpu":
        if _ops._kernels_interpreted():
            return None
        if _interpret_env():
            return ("TRITON_INTERPRET=1 was set after contrastive_kernels.triton was imported; "
                    "set it before the import to run CPU tensors through the interpreter")
        return "CPU tensors run only under the Triton interpreter (TRITON_INTERPRET=1)"
    return f"{q.device.type} tensors are not supported (CUDA, or CPU under TRITON_INTERPRET=1)"


def _forward(*args):
    if _IMPORT_ERROR is not None:
        raise backends.BackendError(f"backend 'triton' is unavailable: {_IMPORT_ERROR}")
    return lse_op(*args)


BACKEND = backends.Backend(
    name="triton",
    forward=_forward,
    unavailable_reason=unavailable_reason,
    rejects=rejects,
    auto_devices=("cuda",),
    description="Triton kernels (CUDA; CPU under TRITON_INTERPRET=1)",
)
