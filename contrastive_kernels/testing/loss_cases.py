"""Shared tables for the loss-family tests: one entry per (loss, configuration), taken from
the loss registry (each loss declares its configurations, ``LossSpec.cases``).

Each case (:class:`contrastive_kernels.losses.spec.LossCase`) builds its inputs in float64
(then rounded to the dtype under test), and knows how to run the fused functional form on a
backend and the naive reference (:mod:`.reference_losses`) on the same inputs.
Differentiable inputs are listed in ``grads``; everything else (labels, priors, weights) is
a constant of the case.
"""

import torch

from ..losses import SPECS
from ..losses.spec import LossCase  # noqa: F401  (the type of CASES' entries)
from . import fused_backends
from .tolerance import assert_close

# Backends the loss tests run on: every fused backend of the registry usable on CPU
# tensors here. CI builds the C++ extension and runs Triton under TRITON_INTERPRET=1 (set in
# conftest), so all run there; Triton cases are kept small because the interpreter is slow.
LOSS_BACKENDS = fused_backends()

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# the interpreter is slow and multiplies bf16 tiles in fp32 anyway: fewer dtypes there
TRITON_DTYPES = [torch.float32, torch.float16]


def run(case, fn, inputs, weight=0.7):
    """The loss and the grads of weight * loss (grad_output != 1) w.r.t. case.grads."""
    loss = fn(inputs)
    tensors = [inputs[name] for name in case.grads]
    grads = torch.autograd.grad(loss, tensors, grad_outputs=torch.full_like(loss, weight),
                                allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, tensors)]
    return [loss.detach()] + [g.detach() for g in grads]


def assert_loss_close(name, ours, oracle, naive, dtype):
    """:func:`.tolerance.assert_close` with two ulps of the output dtype for its rounding:
    a gradient in fp16 / bf16 is the sum of a few pieces each stored in that dtype (the
    core op returns dq and dk in the inputs' dtype, autograd accumulates in it: q and k of
    one call, the positive term), each rounded by up to half an ulp."""
    assert_close(name, ours, oracle, naive, dtype, output_ulps=2.0)


# every configuration of every registered loss (each loss declares its own, LossSpec.cases)
CASES = [case for spec in SPECS for case in spec.cases]
