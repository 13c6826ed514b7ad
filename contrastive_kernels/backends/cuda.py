"""Backend ``cuda``: the CUDA C++ kernels of the compiled op (``csrc/cuda/``).

- On CUDA tensors: ``contrastive_kernels::<op>_native`` / ``<op>_native_backward``, whose
  CUDA kernel (``TORCH_LIBRARY_IMPL(contrastive_kernels, CUDA, ...)``) is the one this
  backend selects; the CPU kernel of the same op is backend ``cpu``.
- Under ``CONTRASTIVE_KERNELS_CUDA_EMULATE=1`` it also takes CPU tensors and runs the same
  kernel source, compiled for the host against the emulation layer (``csrc/emulation/``),
  through the op pairs ``contrastive_kernels::<op>_cuda_emulated`` / ``_backward`` (the role
  ``TRITON_INTERPRET=1`` plays for Triton). The variable is read at every call.

fp32 inputs use tf32 tensor cores exactly when ``torch.get_float32_matmul_precision()`` is
not ``"highest"`` (read by the C++ op wrapper at every call); ``CONTRASTIVE_KERNELS_CUDA_SPLITS``
forces the number of ranges of the split grids (tests). See docs/cuda.md.

``auto`` on CUDA tensors prefers ``triton`` (priority 10) over ``cuda`` (priority 15)
until GPU figures say otherwise: :data:`PRIORITY` is the one line to change
(docs/cuda.md).
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _extension, env
from ..core.ops import SPECS
from .registry import Backend, BackendError, OpPair

EMULATE_KEY = "CUDA_EMULATE"
EMULATE_VAR = env.name(EMULATE_KEY)
# "auto" tries lower priorities first; triton is 10. Swap when GPU timings favour cuda.
PRIORITY = 15
MIN_CAPABILITY = (8, 0)  # mma.sync.m16n8k16 with bf16, ldmatrix, cp.async

# (forward, backward) of lse_cuda_emulated; declared, and given fake / autograd / autocast,
# as soon as _C loads (contrastive_kernels._extension)
emulated_ops = _extension.emulated_ops
_EMULATED_ERROR: Optional[str] = (_extension.EMULATED_ERROR if _extension.native_ops is not None
                                  else f"compiled extension _C not loaded: {_extension.LOAD_ERROR}")


def emulating() -> bool:
    """Whether CPU tensors run through the emulated kernels (read at every call)."""
    return env.flag(EMULATE_KEY)


def _has_cuda_kernels() -> bool:
    return _extension.kernels_for("cuda")


def unavailable_reason() -> Optional[str]:
    if _extension.native_ops is None:
        return f"compiled extension _C not loaded: {_extension.LOAD_ERROR}"
    if emulating():
        return _EMULATED_ERROR
    if not _has_cuda_kernels():
        why = _extension.build_info().get("no_cuda_reason") or "no CUDA kernel registered"
        return (f"extension built without the CUDA kernels ({why}); "
                f"{EMULATE_VAR}=1 runs them on CPU tensors through the emulation")
    if not torch.cuda.is_available():
        return f"no CUDA device ({EMULATE_VAR}=1 runs the kernels on CPU tensors through the emulation)"
    return None


def device_check(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    if device.type == "cpu":
        if emulating():
            return None
        return f"CPU tensors run only through the emulation ({EMULATE_VAR}=1)"
    if not _has_cuda_kernels():
        return "extension built without the CUDA kernels"
    capability = torch.cuda.get_device_capability(device)
    if tuple(capability) < MIN_CAPABILITY:
        return (f"needs compute capability >= {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} "
                f"(mma.sync bf16), device has {capability[0]}.{capability[1]}")
    return None


def _pair_for(op: str, device: torch.device):
    """(forward, backward) of the op pair that runs ``op``'s kernels for tensors on ``device``."""
    if device.type == "cpu":
        pair = _extension.emulated_op_pairs.get(op)
        if pair is None:
            raise BackendError(f"backend 'cuda' is unavailable: {_EMULATED_ERROR or 'no emulated ' + op}")
        return pair
    pair = _extension.native_op_pairs.get(op)
    if pair is None:
        raise BackendError(f"backend 'cuda' is unavailable: {unavailable_reason()}")
    return pair


def _routed(op: str) -> OpPair:
    grads = len(SPECS[op].saved)  # the backward's incoming gradients come before q

    def forward(q, *args):
        return _pair_for(op, q.device)[0](q, *args)

    def backward(*args):
        return _pair_for(op, args[grads].device)[1](*args)

    return OpPair(forward, backward)


def _ops() -> dict:
    """The ops whose kernels this build has, emulated or for CUDA."""
    names = set(_extension.kernel_ops(_extension.emulated_op_pairs, "cpu"))
    names |= set(_extension.kernel_ops(_extension.native_op_pairs, "cuda"))
    return {name: _routed(name) for name in SPECS if name in names or name == "lse"}


BACKEND = Backend(
    name="cuda",
    ops=_ops(),
    description=("CUDA C++ kernels (mma.sync / ldmatrix / cp.async); CPU tensors through the "
                 f"emulation under {EMULATE_VAR}=1"),
    devices=("cuda", "cpu"),
    auto_devices=("cuda",),
    priority=PRIORITY,
    available=unavailable_reason,
    device_check=device_check,
)
