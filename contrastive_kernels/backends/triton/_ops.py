"""The Triton core ops: ``contrastive_kernels::<op>_triton`` and its backward, for every op
the kernels implement (lse, two_sided_lse, pairwise_sigmoid).

Declared with ``torch.library.triton_op`` (schemas exactly the op spec's, core/ops); the
launchers (``launch.forward`` / ``launch.backward``, ``two_sided``) launch every kernel
through ``wrap_triton``, so torch.compile sees them; fake implementations and autograd
come from the spec (:func:`contrastive_kernels.core.autograd.register_op`).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch.library import triton_op

from ... import env  # noqa: F401  (the package's __init__ reads env through this module)
from ...core import contract
from ...core.autograd import register_op
from ...core.ops import LSE, PAIRWISE_SIGMOID, TWO_SIDED_LSE
from . import launch, sigmoid, two_sided
from .launch import ARCH_ENV, arch_for, heuristic_flags, interpreting, kernels_interpreted  # noqa: F401

FORWARD_NAME = f"{contract.NAMESPACE}::lse_triton"
BACKWARD_NAME = f"{contract.NAMESPACE}::lse_triton_backward"
TWO_SIDED_NAMES = tuple(f"{contract.NAMESPACE}::{n}" for n in TWO_SIDED_LSE.op_names("triton"))
SIGMOID_NAMES = tuple(f"{contract.NAMESPACE}::{n}" for n in PAIRWISE_SIGMOID.op_names("triton"))


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
                           need_dscale)[:3]


triton_op(TWO_SIDED_NAMES[0], two_sided.two_sided_lse_forward, mutates_args=(),
          schema=TWO_SIDED_LSE.forward_schema())
triton_op(TWO_SIDED_NAMES[1], two_sided.two_sided_lse_backward, mutates_args=(),
          schema=TWO_SIDED_LSE.backward_schema())
triton_op(SIGMOID_NAMES[0], sigmoid.pairwise_sigmoid_forward, mutates_args=(),
          schema=PAIRWISE_SIGMOID.forward_schema())
triton_op(SIGMOID_NAMES[1], sigmoid.pairwise_sigmoid_backward, mutates_args=(),
          schema=PAIRWISE_SIGMOID.backward_schema())

lse_op = torch.ops.contrastive_kernels.lse_triton.default
lse_backward_op = torch.ops.contrastive_kernels.lse_triton_backward.default
two_sided_op = torch.ops.contrastive_kernels.two_sided_lse_triton.default
two_sided_backward_op = torch.ops.contrastive_kernels.two_sided_lse_triton_backward.default
sigmoid_op = torch.ops.contrastive_kernels.pairwise_sigmoid_triton.default
sigmoid_backward_op = torch.ops.contrastive_kernels.pairwise_sigmoid_triton_backward.default
# The spec's fake implementations replace the traced launcher triton_op registers as fake:
# same outputs, and they need no kernel (under the interpreter a launch on fake tensors
# would read data pointers). torch.compile still sees the kernels: triton_op decomposes
# the op into its wrap_triton calls under functionalization.
register_op(LSE, lse_op, lse_backward_op)
register_op(TWO_SIDED_LSE, two_sided_op, two_sided_backward_op)
register_op(PAIRWISE_SIGMOID, sigmoid_op, sigmoid_backward_op)
