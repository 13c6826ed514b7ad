"""Every configuration of every registered loss (LossSpec.cases, collected in
contrastive_kernels/testing/loss_cases.py), every backend, every dtype: loss and gradients
against the float64 naive reference (contrastive_kernels.testing.reference_losses), with
tolerances set by the naive formulation's own error in that dtype."""

import pytest
import torch

from contrastive_kernels.testing.loss_cases import (CASES, DTYPES, LOSS_BACKENDS, TRITON_DTYPES,
                                                    assert_loss_close, run)


@pytest.mark.parametrize("backend", LOSS_BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_loss_matches_reference(case, backend):
    """One item per (loss case, backend), over every dtype the backend takes."""
    for dtype in (TRITON_DTYPES if backend == "triton" else DTYPES):
        _check_loss(case, backend, dtype)


def _check_loss(case, backend, dtype):
    small = backend == "triton"
    low, high = case.inputs(dtype, small=small)
    oracle = run(case, case.naive, high)
    naive_low, _ = case.inputs(dtype, small=small)
    naive = run(case, case.naive, naive_low)
    ours = run(case, lambda x: case.fused(x, backend), low)
    assert ours[0].dtype == dtype, f"loss dtype {ours[0].dtype} != input dtype {dtype}"
    assert_loss_close(f"loss ({dtype})", ours[0], oracle[0], naive[0], dtype)
    for name, g_ours, g_oracle, g_naive in zip(case.grads, ours[1:], oracle[1:], naive[1:]):
        assert g_ours.dtype == dtype, f"grad {name} dtype {g_ours.dtype}"
        assert_loss_close(f"d{name} ({dtype})", g_ours, g_oracle, g_naive, dtype)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_gradcheck_float64(case):
    names = list(case.gradcheck_inputs)
    if not names:
        pytest.skip("every input has a stop-gradient path (checked against the reference instead)")
    low, _ = case.inputs(torch.float64, small=True, seed=1)

    def f(*tensors):
        x = dict(low)
        x.update(zip(names, tensors))
        return case.fused(x, "torch")

    tensors = tuple(low[n].detach().clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(f, tensors, eps=1e-6, atol=1e-7)


def test_every_case_is_finite_and_positive_somewhere():
    # guards against a case whose inputs make the comparison vacuous (e.g. a zero loss)
    for case in CASES:
        low, _ = case.inputs(torch.float64)
        value = float(case.naive(low).detach())
        assert torch.isfinite(torch.tensor(value)) and value != 0.0, case.id


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_gradients_of_contiguous_inputs_are_contiguous(case):
    """Every loss hands a contiguous input a contiguous gradient (core/layout.py): SupCon's
    view-major rows and BINGO's positive keys once gave strided ones, which
    torch.distributed.nn.all_gather's backward mishandled over gloo."""
    low, _ = case.inputs(torch.float32, small=True)
    loss = case.fused(low, "torch")
    tensors = [low[name] for name in case.grads]
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    for name, x, g in zip(case.grads, tensors, grads):
        assert g is None or not x.is_contiguous() or g.is_contiguous(), (name, g.stride())
