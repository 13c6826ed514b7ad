"""NT-Xent against pytorch-metric-learning's NTXentLoss where PML defines the same loss:
embeddings [out0; out1] with labels [0..B-1, 0..B-1], i.e. one positive per row (PML
then averages -log(e^pos / (e^pos + sum over different-label rows)) over the 2B positive
pairs, which is SimCLR's NT-Xent). PML SupConLoss parity lives in tests/losses/test_supcon.py."""

import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels.testing.loss_cases import LOSS_BACKENDS

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")

BACKENDS = [b for b in LOSS_BACKENDS if b != "triton"] + (["triton"] if "triton" in LOSS_BACKENDS else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [0.07, 0.5])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ntxent_equals_pml(backend, temperature, dtype):
    batch, dim = (4, 5) if backend == "triton" else (37, 16)
    gen = torch.Generator().manual_seed(3)
    out0 = (2.0 * torch.randn(batch, dim, generator=gen, dtype=torch.float64)).to(dtype)
    out1 = (0.5 * torch.randn(batch, dim, generator=gen, dtype=torch.float64)).to(dtype)
    labels = torch.arange(batch).repeat(2)

    a0, a1 = out0.clone().requires_grad_(), out1.clone().requires_grad_()
    ours = ck.NTXentLoss(temperature, backend=backend)(a0, a1)
    g_ours = torch.autograd.grad(ours, (a0, a1))

    b0, b1 = out0.clone().requires_grad_(), out1.clone().requires_grad_()
    theirs = pml_losses.NTXentLoss(temperature=temperature)(torch.cat([b0, b1]), labels)
    g_theirs = torch.autograd.grad(theirs, (b0, b1))

    # PML adds finfo.tiny inside its log and normalizes with its own eps; both are far
    # below these tolerances
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(ours, theirs, **tol)
    for g, h in zip(g_ours, g_theirs):
        torch.testing.assert_close(g, h, **tol)
