"""The gathered (torch.distributed) paths of NT-Xent, DCL and CLIP, with gloo on
127.0.0.1: the ranks' losses and gradients against the single-process loss of the whole
batch (every rank holds an equal shard)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from contrastive_kernels import functional as fn
from contrastive_kernels import reference as R

WORLD, SHARD, DIM = 2, 5, 6

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")


def _data():
    gen = torch.Generator().manual_seed(11)
    n = WORLD * SHARD
    return [torch.randn(n, DIM, generator=gen, dtype=torch.float64) for _ in range(2)]


def _worker(rank, port, out_dir):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        a_all, b_all = _data()
        rows = slice(rank * SHARD, (rank + 1) * SHARD)
        results = {}
        cases = {
            "ntxent": lambda a, b: fn.ntxent_loss(a, b, 0.3, gather_distributed=True, backend="torch"),
            "dcl": lambda a, b: fn.dcl_loss(a, b, 0.2, gather_distributed=True, backend="torch"),
            "dclw": lambda a, b: fn.dclw_loss(a, b, 0.2, 0.5, gather_distributed=True, backend="torch"),
            "clip": lambda a, b: fn.clip_loss(a, b, 7.0, rank=rank, world_size=WORLD, backend="torch"),
            "clip_grad": lambda a, b: fn.clip_loss(a, b, 7.0, gather_with_grad=True, rank=rank,
                                                   world_size=WORLD, backend="torch"),
            "clip_local": lambda a, b: fn.clip_loss(a, b, 7.0, local_loss=True, gather_with_grad=True,
                                                    rank=rank, world_size=WORLD, backend="torch"),
        }
        for name, loss_of in cases.items():
            a = a_all[rows].clone().requires_grad_()
            b = b_all[rows].clone().requires_grad_()
            loss = loss_of(a, b)
            ga, gb = torch.autograd.grad(loss, (a, b))
            results[name] = (loss.detach(), ga, gb)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def _full(name):
    a_all, b_all = _data()
    a, b = a_all.clone().requires_grad_(), b_all.clone().requires_grad_()
    loss = {
        "ntxent": lambda: R.ntxent_loss_reference(a, b, 0.3),
        "dcl": lambda: R.dcl_loss_reference(a, b, 0.2),
        # lightly computes DCLW's weights on each rank's own rows (softmax over the local
        # batch), so the full-batch equivalent takes them per shard
        "dclw": lambda: R.dcl_loss_reference(a, b, 0.2, _per_shard_vmf_weights),
        "clip": lambda: R.clip_loss_reference(a, b, 7.0),
        "clip_grad": lambda: R.clip_loss_reference(a, b, 7.0),
        "clip_local": lambda: R.clip_loss_reference(a, b, 7.0),
    }[name]()
    ga, gb = torch.autograd.grad(loss, (a, b))
    return loss.detach(), ga, gb


def _per_shard_vmf_weights(x, y):
    return torch.cat([R.negative_mises_fisher_weights_reference(x[i:i + SHARD], y[i:i + SHARD], 0.5)
                      for i in range(0, x.shape[0], SHARD)])


def _close(x, y):
    torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["ntxent", "dcl", "dclw", "clip_local"])
def test_mean_of_rank_losses_is_the_full_batch_loss(ranks, name):
    # each rank's anchors are its own rows, against every rank's keys (gathered with grad):
    # the ranks' mean loss is the full batch's, and each rank's gradient (after the
    # all_gather backward sums the other ranks' contributions) is WORLD x the full one
    loss, ga, gb = _full(name)
    _close(sum(r[name][0] for r in ranks) / WORLD, loss)
    for rank, r in enumerate(ranks):
        rows = slice(rank * SHARD, (rank + 1) * SHARD)
        _close(r[name][1], WORLD * ga[rows])
        _close(r[name][2], WORLD * gb[rows])


@pytest.mark.parametrize("name", ["clip", "clip_grad"])
def test_clip_global_loss_on_every_rank(ranks, name):
    loss, ga, gb = _full(name)
    for rank, r in enumerate(ranks):
        rows = slice(rank * SHARD, (rank + 1) * SHARD)
        _close(r[name][0], loss)
        if name == "clip_grad":  # every rank's loss flows back to every shard
            _close(r[name][1], WORLD * ga[rows])
            _close(r[name][2], WORLD * gb[rows])
        else:  # open_clip without gather_with_grad: only the local rows carry a gradient
            assert r[name][1].abs().sum() > 0
