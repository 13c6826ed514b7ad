"""Backend ``triton``: Triton kernels for the core ops (CUDA tensors).

- ``score_tile.py``: the masked logits tile of one (owned block, streamed tile) pair, one
  function for every kernel, and the REDUCTION constants (ROWS: lse; ROWS_AND_COLUMNS:
  the two-sided lse; SIGMOID: pairwise_sigmoid).
- ``lse_forward.py``: row-block grid, online max / sum-exp over key tiles, fp32 lse and o;
  with ROWS_AND_COLUMNS also each row block's column partials.
- ``lse_backward.py``: deterministic two-grid backward (dq on rows, dk on columns), each
  recomputing the logits from the saved lse (and col_lse: both softmaxes).
- ``key_split.py``: splitting the streamed side of small grids; the in-order merge that
  also merges the two-sided column partials.
- ``launch.py``: the host side (configs, padding, label codes, splits, launches);
  ``_ops.py``: the core ops (``triton_op``); ``two_sided.py`` / ``sigmoid.py``: the
  two-sided lse's and pairwise_sigmoid's launchers.
- ``sigmoid_math.py``: softplus and the sigmoid weight of pairwise_sigmoid (REDUCTION
  SIGMOID: the score tile flips the positives' sign instead of excluding them).
- ``configs.py``: the fixed launch config per (kernel, d range, dtype, arch); autotuning
  is opt-in (``CONTRASTIVE_KERNELS_TRITON_AUTOTUNE=1``).
- ``aot.py`` (with ``aot_signatures`` / ``aot_compile`` / ``aot_report``, ``perf_model``):
  ahead-of-time compilation of every shipped config for sm_80 / sm_90 and the register /
  spill / shared-memory report (``docs/triton_compile_report.md``).

Under ``TRITON_INTERPRET=1`` (set before this package is imported) the kernels run on the
CPU through the Triton interpreter, and the backend then accepts CPU tensors too: that is
how the test-suite checks it on machines without a GPU. The interpreter multiplies bf16
as raw bits, so bf16 tiles are upcast to fp32 before ``tl.dot`` when interpreting.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from ..registry import Backend, BackendError, OpPair

try:
    import triton  # noqa: F401
    _IMPORT_ERROR: Optional[str] = None
except Exception as exc:  # pragma: no cover - depends on the environment
    _IMPORT_ERROR = f"triton is not importable ({exc})"

if _IMPORT_ERROR is None:
    try:
        from . import _ops
    except Exception as exc:  # pragma: no cover
        _IMPORT_ERROR = f"the Triton kernels failed to load ({type(exc).__name__}: {exc})"


def _interpret_env() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason() -> Optional[str]:
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if _interpret_env() or _ops.kernels_interpreted():
        return None
    if not torch.cuda.is_available():
        return "no CUDA device (and TRITON_INTERPRET is not 1, so no CPU interpreter)"
    return None


def device_check(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    if device.type == "cuda":
        if _ops.kernels_interpreted():
            return None  # the interpreter copies CUDA tensors to the host and back
        from . import configs
        forced = _ops.env.get("TRITON_ARCH")
        if forced:  # the config family is forced: the device's own is not asked
            return configs.unsupported_arch(divmod(int(forced), 10))
        return configs.unsupported_arch(torch.cuda.get_device_capability(device))
    if _ops.kernels_interpreted():
        return None
    if _interpret_env():
        return ("TRITON_INTERPRET=1 was set after contrastive_kernels.backends.triton was "
                "imported; set it before the import to run CPU tensors through the interpreter")
    return "CPU tensors run only under the Triton interpreter (TRITON_INTERPRET=1)"


def _op_pair(op: str) -> OpPair:
    """The op pair of ``op``, calling into the kernels (which fail with the reason when
    they could not be loaded)."""
    def ops():
        if _IMPORT_ERROR is not None:
            raise BackendError(f"backend 'triton' is unavailable: {_IMPORT_ERROR}")
        return {"lse": (_ops.lse_op, _ops.lse_backward_op),
                "two_sided_lse": (_ops.two_sided_op, _ops.two_sided_backward_op),
                "pairwise_sigmoid": (_ops.sigmoid_op, _ops.sigmoid_backward_op)}[op]

    return OpPair(lambda *args: ops()[0](*args), lambda *args: ops()[1](*args))


BACKEND = Backend(
    name="triton",
    ops={name: _op_pair(name) for name in ("lse", "two_sided_lse", "pairwise_sigmoid")},
    description="Triton kernels (CUDA; CPU under TRITON_INTERPRET=1)",
    devices=("cuda", "cpu"),
    auto_devices=("cuda",),
    priority=10,
    available=unavailable_reason,
    device_check=device_check,
)
