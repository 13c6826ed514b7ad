"""SigLIP's four exchanges (``dist_impl`` bidir / shift / reduce / gather) on 2 and 4 gloo
processes: every rank's loss and gradients against open_clip's own distributed SigLipLoss
run in the same processes, and the ranks together against one process over the
concatenated batch (the multi-positive form too: group ids travel with the texts, so a
positive held by another rank is never counted as a negative)."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from contrastive_kernels.losses.siglip import DIST_IMPLS, SigLipLoss
from contrastive_kernels.testing.ranks import free_port
from contrastive_kernels.testing.reference_losses import siglip_loss_reference

SHARD, DIM, GROUPS = 4, 6, 3
TIMEOUT_S = 60  # a mismatched exchange fails the test instead of hanging it

pytestmark = [pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                 reason="needs torch.distributed with gloo")]


def _data(world):
    gen = torch.Generator().manual_seed(21)
    n = world * SHARD
    img, txt = (torch.nn.functional.normalize(torch.randn(n, DIM, generator=gen,
                                                          dtype=torch.float64), dim=1)
                for _ in range(2))
    labels = torch.randint(0, GROUPS, (n,), generator=gen)
    return img, txt, labels, torch.tensor(7.0, dtype=torch.float64), torch.tensor(
        -3.0, dtype=torch.float64)


def _grads(loss_fn, img, txt, scale, bias, **kw):
    img, txt = img.clone().requires_grad_(), txt.clone().requires_grad_()
    scale, bias = scale.clone().requires_grad_(), bias.clone().requires_grad_()
    loss = loss_fn(img, txt, scale, bias, **kw)
    grads = torch.autograd.grad(loss, (img, txt, scale, bias))
    # the scalars are replicated parameters: DDP sums (then averages) their gradients
    for g in grads[2:]:
        dist.all_reduce(g)
    return (loss.detach(),) + grads


def _worker(rank, world, port, out_dir):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    import datetime
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    try:
        from open_clip.loss import SigLipLoss as OpenClipSigLip

        img, txt, labels, scale, bias = _data(world)
        rows = slice(rank * SHARD, (rank + 1) * SHARD)
        img, txt, labels = img[rows], txt[rows], labels[rows]
        results = {}
        for impl in DIST_IMPLS:
            ours = SigLipLoss(rank=rank, world_size=world, dist_impl=impl, backend="torch")
            theirs = OpenClipSigLip(rank=rank, world_size=world, dist_impl=impl)
            results[impl] = _grads(ours, img, txt, scale, bias)
            results[impl + "_open_clip"] = _grads(theirs, img, txt, scale, bias)
            results[impl + "_groups"] = _grads(ours, img, txt, scale, bias, labels=labels)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module", params=[2, 4], ids=["world2", "world4"])
def world_ranks(request, tmp_path_factory):
    world = request.param
    out = tmp_path_factory.mktemp(f"siglip{world}")
    mp.spawn(_worker, args=(world, free_port(), str(out)), nprocs=world, join=True)
    return world, [torch.load(out / f"rank{r}.pt") for r in range(world)]


def _one_process(world, groups):
    img, txt, labels, scale, bias = _data(world)
    inputs = [t.clone().requires_grad_() for t in (img, txt, scale, bias)]
    loss = siglip_loss_reference(*inputs, labels=labels if groups else None)
    return (loss.detach(),) + torch.autograd.grad(loss, inputs)


def _close(x, y):
    torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", DIST_IMPLS)
def test_exchanges_match_open_clip_and_one_process(world_ranks, impl):
    """Per rank, ours equals open_clip's; over the ranks, the mean loss is the one-process
    loss of the whole batch, and every gradient is world x its one-process value (each
    rank's loss is its rows' sum over B_local; DDP averages the ranks)."""
    world, ranks = world_ranks
    for groups, key in ((False, impl), (True, impl + "_groups")):
        loss, g_img, g_txt, g_scale, g_bias = _one_process(world, groups)
        _close(sum(r[key][0] for r in ranks) / world, loss)
        for rank, r in enumerate(ranks):
            rows = slice(rank * SHARD, (rank + 1) * SHARD)
            if not groups:
                for got, want in zip(r[key], r[impl + "_open_clip"]):
                    _close(got, want)
            _close(r[key][1], world * g_img[rows])
            _close(r[key][2], world * g_txt[rows])
            _close(r[key][3], world * g_scale)
            _close(r[key][4], world * g_bias)
