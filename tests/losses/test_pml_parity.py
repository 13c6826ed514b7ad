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


# --------------------------------------------------------------------------- drop-ins

def _pml_cases():
    """(id, embeddings, labels, keywords of the call), float64: all pairs, a reference set
    (with its labels; without: the labels, and PML drops the pairs (i, i)), a miner's pairs
    and triplets, and the degenerate batches PML answers with its zero loss."""
    from pytorch_metric_learning import miners

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(30, 7, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (30,), generator=gen)
    ref = torch.randn(12, 7, generator=gen, dtype=torch.float64)
    ref_y = torch.randint(0, 4, (12,), generator=gen)
    return (
        ("all_pairs", x, y, {}),
        ("ref_emb", x, y, dict(ref_emb=ref, ref_labels=ref_y)),
        ("ref_emb_own_labels", x, y, dict(ref_emb=1.5 * x)),
        ("miner_pairs", x, y, dict(indices_tuple=miners.MultiSimilarityMiner(0.1)(x, y))),
        ("miner_triplets", x, y, dict(indices_tuple=miners.TripletMarginMiner(
            0.2, type_of_triplets="all")(x, y))),
        ("no_positive", x[:4], torch.arange(4), {}),
        ("no_negative", x[:5], torch.zeros(5, dtype=torch.long), {}),
    )


def test_pml_dropins_equal_pml():
    """contrastive_kernels.pml.SupConLoss / NTXentLoss against PML's own, float64, loss and
    gradients (of the embeddings and the reference), on the torch and cpu backends; no
    allocation of N x M / 2 elements at N = M = 2048; unsupported options raise by name."""
    from pytorch_metric_learning import distances, reducers

    from contrastive_kernels import pml
    from contrastive_kernels.testing.measure import record_cpu_allocations

    pairs = ((pml.SupConLoss, pml_losses.SupConLoss, 0.2), (pml.NTXentLoss, pml_losses.NTXentLoss, 0.3))
    for ours_cls, theirs_cls, t in pairs:
        for backend in [b for b in ("torch", "cpu") if b in LOSS_BACKENDS]:
            for name, x, y, kw in _pml_cases():
                got, want = (_pml_run(fn, x, y, kw) for fn in (
                    ours_cls(t, backend=backend), theirs_cls(t)))
                where = f"{ours_cls.__name__} {name} {backend}"
                for a, b in zip(got, want):
                    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=where)
        # memory: N = M = 2048 in two classes, where PML holds 2048 x 2048 matrices
        x = torch.randn(2048, 16)
        y = torch.arange(2048) % 2
        with record_cpu_allocations() as record:
            ours_cls(t, backend="torch")(x.clone().requires_grad_(), y).backward()
        assert 0 < record.largest < 4 * 2048 * 2048 // 2, (ours_cls.__name__, record.largest)
        theirs_cls(t, distance=distances.CosineSimilarity())  # a default: accepted
        ours_cls(t, distance=distances.CosineSimilarity())
        with pytest.raises(ValueError, match="option distance="):
            ours_cls(t, distance=distances.LpDistance())
        with pytest.raises(ValueError, match="option reducer="):
            ours_cls(t, reducer=reducers.SumReducer())
        with pytest.raises(ValueError, match="labels and indices_tuple cannot both be None"):
            ours_cls(t)(x)


def _pml_run(loss_fn, x, y, kw):
    a = x.clone().requires_grad_()
    kw = dict(kw)
    if kw.get("ref_emb") is not None:
        kw["ref_emb"] = (1.5 * a) if "ref_labels" not in kw else kw["ref_emb"].clone().requires_grad_()
    loss = loss_fn(a, y, **kw)
    inputs = [a] + ([kw["ref_emb"]] if kw.get("ref_emb") is not None and kw["ref_emb"].is_leaf else [])
    return (loss.detach(),) + torch.autograd.grad(loss, inputs, allow_unused=True,
                                                  materialize_grads=True)
