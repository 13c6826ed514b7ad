"""Our modules against the installed anchor libraries themselves: lightly (NT-Xent with
and without a memory bank, DCL, DCLW) and open_clip (ClipLoss with its get_logits /
get_ground_truth, DistillClipLoss, SigLipLoss), float64, loss and grads.
pytorch-metric-learning parity is in test_pml_parity.py and test_supcon.py."""

import pathlib
import sys

import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels.testing import emulated_backends, fused_backends

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench"))

BACKENDS = [b for b in fused_backends() if b != "triton"]
TOL = dict(rtol=1e-10, atol=1e-12)


def _pair(batch=12, dim=8, seed=5):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, dim, generator=gen, dtype=torch.float64),
            torch.randn(batch, dim, generator=gen, dtype=torch.float64))


def _loss_and_grads(loss_fn, *inputs):
    leaves = [x.clone().requires_grad_() for x in inputs]
    loss = loss_fn(*leaves)
    return [loss.detach()] + list(torch.autograd.grad(loss, leaves))


def _assert_same(ours, theirs):
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b.to(a.dtype), **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_registry_rows_match_their_anchor_library(backend):
    """Every registry row that names an anchor library (``Accuracy.anchor``: lightly's
    NTXentLoss / DCLLoss / DCLWLoss, open_clip's ClipLoss / SigLipLoss, PML's SupConLoss)
    agrees with the library's own module within its documented figure (README's column),
    at the figure's own sizes (one of its seeds), float64, loss and gradients."""
    import loss_accuracy

    from contrastive_kernels.losses.spec import Sizes

    rows = [(spec, acc) for spec, acc in loss_accuracy.losses() if acc.anchor]
    assert {spec.family for spec, _ in rows} >= {"NT-Xent", "DCL", "DCLW", "CLIP", "SigLIP",
                                                  "SupCon"}
    for spec, acc in rows:
        errors = loss_accuracy.anchor_errors(acc, [backend], 1, Sizes())
        if errors is None:
            pytest.skip(f"{acc.anchor.library} is not installed")
        worst = max(errors[backend].values())
        assert worst <= float(acc.anchor.error), (spec.family, acc.anchor.library, errors)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lightly_ntxent_memory_bank(backend):
    lightly_loss = pytest.importorskip("lightly.loss")
    torch.manual_seed(0)
    theirs_fn = lightly_loss.NTXentLoss(temperature=0.3, memory_bank_size=(20, 8))
    torch.manual_seed(0)
    ours_fn = ck.NTXentLoss(temperature=0.3, memory_bank_size=(20, 8), backend=backend)
    for step in range(3):  # the bank fills and wraps
        out0, out1 = _pair(seed=step)
        out0, out1 = out0.float(), out1.float()
        theirs = _loss_and_grads(theirs_fn, out0, out1)
        ours = _loss_and_grads(ours_fn, out0, out1)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_open_clip(backend):
    open_clip_loss = pytest.importorskip("open_clip.loss")
    img, txt = _pair()
    scale = torch.tensor(14.0, dtype=torch.float64)
    theirs = _loss_and_grads(open_clip_loss.ClipLoss(), img, txt, scale)
    ours = _loss_and_grads(ck.ClipLoss(backend=backend), img, txt, scale)
    _assert_same(ours, theirs)
    # open_clip's materialized helpers, for the subclasses built on them
    for flags in (dict(), dict(cache_labels=True)):
        o, t = ck.ClipLoss(**flags), open_clip_loss.ClipLoss(**flags)
        for _ in range(2):
            assert torch.equal(o.get_ground_truth("cpu", 5), t.get_ground_truth("cpu", 5))
        for a, b in zip(o.get_logits(img, txt, scale, 0.5), t.get_logits(img, txt, scale, 0.5)):
            assert torch.equal(a, b)
    # DistillClipLoss: both losses, each with its gradients (teacher: 9 features, its scale)
    t_img, t_txt = _pair(dim=9, seed=6)
    teacher = (t_img, t_txt, torch.tensor(3.0, dtype=torch.float64))
    from contrastive_kernels.losses import DistillClipLoss
    for part in (0, 1):
        def pick(loss_fn, part=part):
            return lambda *x: loss_fn(*x, *teacher)[part]
        theirs = _loss_and_grads(pick(open_clip_loss.DistillClipLoss()), img, txt, scale)
        ours = _loss_and_grads(pick(DistillClipLoss(backend=backend)), img, txt, scale)
        _assert_same(ours, theirs)
    with pytest.raises(ValueError, match="dist_image_features requires grad"):
        DistillClipLoss()(img, txt, scale, t_img.requires_grad_(), t_txt, 3.0)


@pytest.mark.parametrize("backend", fused_backends() + emulated_backends())
def test_open_clip_siglip(backend):
    """Every backend (triton interpreted, cuda emulated): loss and the gradients of both
    features, logit_scale and logit_bias, at SigLIP's initialization and at a trained-like
    scale (logits far from 0, where log1p and the sigmoid's tails matter)."""
    open_clip_loss = pytest.importorskip("open_clip.loss")
    img, txt = (torch.nn.functional.normalize(x, dim=1) for x in _pair(batch=7, dim=5))
    for scale, bias in ((10.0, -10.0), (100.0, -5.0)):
        scalars = (torch.tensor(scale, dtype=torch.float64), torch.tensor(bias, dtype=torch.float64))
        theirs = _loss_and_grads(open_clip_loss.SigLipLoss(), img, txt, *scalars)
        ours = _loss_and_grads(ck.SigLipLoss(backend=backend), img, txt, *scalars)
        _assert_same(ours, theirs)
