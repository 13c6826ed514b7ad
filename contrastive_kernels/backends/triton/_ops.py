"""The Triton core ops: ``contrastive_kernels::lse_triton`` and its backward.

Declared with ``torch.library.triton_op`` (schemas exactly ``contract.FORWARD_SCHEMA`` /
``contract.BACKWARD_SCHEMA``); the launchers (``launch.forward`` / ``launch.backward``)
launch every kernel through ``wrap_triton``, so torch.compile sees them; fake
implementations and autograd come from
:func:`contrastive_kernels.core.autograd.register_core_ops`.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch.library import triton_op

from ... import env  # noqa: F401  (the package's __init__ reads env through this module)
from ...core import contract
from ...core.autograd import register_core_ops
from . import launch
from .launch import ARCH_ENV, arch_for, heuristic_flags, interpreting, kernels_interpreted  # noqa: F401

FORWARD_NAME = f"{contract.NAMESPACE}::lse_triton"
BACKWARD_NAME = f"{contract.NAMESPACE}::lse_triton_backward"


# The schemas are given explicitly: inferred from the type hints, ``Optional[int]`` would
# read ``SymInt?`` where the core-op contract says ``int?`` (tests assert the exact text).
@triton_op(FORWARD_NAME, mutates_args=(), schema=contract.FORWARD_SCHEMA)
def lse_triton(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor],
               q_labels: Optional[torch.Tensor], k_labels: Optional[torch.Tensor],
               self_offset: Optional[int], normalize: bool, eps: float,
               exclude_positives: bool, return_o: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    lse, o, _ = launch.forward(q, k, scale, bias, q_labels, k_labels, self_offset, normalize,
                               eps, exclude_positives, return_o)
    return lse, o


@triton_op(BACKWARD_NAME, mutates_args=(), schema=contract.BACKWARD_SCHEMA)
def lse_triton_backward(grad_lse: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                        scale: torch.Tensor, bias: Optional[torch.Tensor],
                        q_labels: Optional[torch.Tensor], k_labels: Optional[torch.Tensor],
                        self_offset: Optional[int], normalize: bool, eps: float,
                        exclude_positives: bool, lse: torch.Tensor, need_dq: bool,
                        need_dk: bool, need_dscale: bool
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return launch.backward(grad_lse, q, k, scale, bias, q_labels, k_labels, self_offset,
                           normalize, eps, exclude_positives, lse, need_dq, need_dk,
                           need_dscale)


lse_op = torch.ops.contrastive_kernels.lse_triton.default
lse_backward_op = torch.ops.contrastive_kernels.lse_triton_backward.default
# The shared fake implementations replace the traced launcher triton_op registers as fake:
# same outputs, and they need no kernel (under the interpreter a launch on fake tensors
# would read data pointers). torch.compile still sees the kernels: triton_op decomposes
# the op into its wrap_triton calls under functionalization.
register_core_ops(lse_op, lse_backward_op)
