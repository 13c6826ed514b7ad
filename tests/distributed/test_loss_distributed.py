"""The gathered (torch.distributed) paths of NT-Xent, DCL, DCLW and CLIP, with gloo on
127.0.0.1: the ranks' losses and gradients against the single-process loss of the whole
batch (every rank holds an equal shard; test_distributed_layer.py covers uneven ones and
the ring). ClipLoss, every combination of open_clip's local_loss / gather_with_grad in
both modes, equals open_clip's own ClipLoss run in the same processes (loss and feature
gradients per rank, logit_scale's summed over the ranks as DDP does). Also: SupCon over features gathered by hand with
torch.distributed.nn.all_gather (SupContrast issue 26's recipe) gives exact parameter
gradients, a rank / world_size that is not the process group's raises on every rank,
and the package's own gathers print no deprecation warning."""

import warnings

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from contrastive_kernels import functional as fn
from contrastive_kernels import reference as R
from contrastive_kernels.testing.ranks import free_port

WORLD, SHARD, DIM = 2, 5, 6

pytestmark = [pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                 reason="needs torch.distributed with gloo")]


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
            "dclw_ring": lambda a, b: fn.dclw_loss(a, b, 0.2, 0.5, gather_distributed=True,
                                                   distributed_mode="ring", backend="torch"),
            "clip": lambda a, b: fn.clip_loss(a, b, 7.0, rank=rank, world_size=WORLD, backend="torch"),
            "clip_grad": lambda a, b: fn.clip_loss(a, b, 7.0, gather_with_grad=True, rank=rank,
                                                   world_size=WORLD, backend="torch"),
            "clip_local": lambda a, b: fn.clip_loss(a, b, 7.0, local_loss=True, gather_with_grad=True,
                                                    rank=rank, world_size=WORLD, backend="torch"),
        }
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for name, loss_of in cases.items():
                a = a_all[rows].clone().requires_grad_()
                b = b_all[rows].clone().requires_grad_()
                loss = loss_of(a, b)
                ga, gb = torch.autograd.grad(loss, (a, b))
                results[name] = (loss.detach(), ga, gb)
        results["warnings"] = [str(w.message) for w in caught]
        results["open_clip"] = _clip_against_open_clip(rank, a_all[rows], b_all[rows])
        results["supcon_by_hand"] = _supcon_by_hand(rank)
        # open_clip's rank / world_size must be the process group's
        try:
            fn.clip_loss(a_all[rows], b_all[rows], 7.0, rank=rank, world_size=WORLD + 1,
                         backend="torch")
            results["wrong_world"] = None
        except ValueError as exc:
            results["wrong_world"] = str(exc)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


CLIP_FLAGS = [(local, with_grad) for local in (False, True) for with_grad in (False, True)]


def _clip_against_open_clip(rank, a, b):
    """{(local_loss, gather_with_grad, mode): (ours, open_clip's)}, each (loss, d image,
    d text, d logit_scale) on this rank."""
    from open_clip.loss import ClipLoss as OpenClipLoss

    import contrastive_kernels as ck

    def run(loss_fn):
        x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
        scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
        loss = loss_fn(x, y, scale)
        dx, dy, ds = torch.autograd.grad(loss, (x, y, scale))
        # a replicated parameter: DDP sums (then averages) its gradient. (With local_loss
        # and gather_with_grad, open_clip's rank r holds d loss_r / d scale; ours splits
        # the same sum differently: the column lse of a rank's texts reads every rank's
        # partial sums, so part of d loss_r / d scale is computed on the other ranks.)
        dist.all_reduce(ds)
        return loss.detach(), dx, dy, ds

    out = {}
    with warnings.catch_warnings():  # open_clip's torch.distributed.nn gathers are deprecated
        warnings.simplefilter("ignore", FutureWarning)
        for local, with_grad in CLIP_FLAGS:
            flags = dict(local_loss=local, gather_with_grad=with_grad, rank=rank,
                         world_size=WORLD)
            theirs = run(OpenClipLoss(**flags))
            for mode in ("gather", "ring"):
                ours = run(ck.ClipLoss(**flags, distributed_mode=mode, backend="torch"))
                out[(local, with_grad, mode)] = (ours, theirs)
    return out


def _mlp_batch():
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(WORLD * SHARD, 2, DIM, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, (WORLD * SHARD,), generator=gen)
    model = torch.nn.Sequential(torch.nn.Linear(DIM, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    torch.manual_seed(13)
    for p in model.parameters():
        torch.nn.init.normal_(p)
    return x, labels, model.double()


def _supcon_by_hand(rank):
    """Each rank: its shard through the model, features all-gathered with gradient by hand,
    the global SupCon loss; parameter gradients all-reduced (summed)."""
    import contrastive_kernels as ck
    x, labels, model = _mlp_batch()
    rows = slice(rank * SHARD, (rank + 1) * SHARD)
    feats = torch.nn.functional.normalize(model(x[rows]), dim=-1)
    with warnings.catch_warnings():  # the recipe's API is deprecated in torch 2.14
        warnings.simplefilter("ignore", FutureWarning)
        gathered = torch.cat(dist.nn.all_gather(feats), dim=0)
    loss = ck.SupConLoss(temperature=0.1, backend="torch")(gathered, labels)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    for g in grads:
        dist.all_reduce(g)
    return loss.detach(), grads


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
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
        "dclw_ring": lambda: R.dcl_loss_reference(a, b, 0.2, _per_shard_vmf_weights),
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


def test_mean_of_rank_losses_is_the_full_batch_loss(ranks):
    # each rank's anchors are its own rows, against every rank's keys (gathered with grad):
    # the ranks' mean loss is the full batch's, and each rank's gradient (after the
    # all_gather backward sums the other ranks' contributions) is WORLD x the full one
    for name in ("ntxent", "dcl", "dclw", "dclw_ring", "clip_local"):
        _check_mean_of_rank_losses(ranks, name)
    # and the package's own gathers print no deprecation warning
    for r in ranks:
        assert not [w for w in r["warnings"] if "deprecated" in w], r["warnings"]


def _check_mean_of_rank_losses(ranks, name):
    loss, ga, gb = _full(name)
    _close(sum(r[name][0] for r in ranks) / WORLD, loss)
    for rank, r in enumerate(ranks):
        rows = slice(rank * SHARD, (rank + 1) * SHARD)
        _close(r[name][1], WORLD * ga[rows])
        _close(r[name][2], WORLD * gb[rows])


def test_clip_global_loss_on_every_rank(ranks):
    for name in ("clip", "clip_grad"):
        _check_clip_global_loss(ranks, name)


def _check_clip_global_loss(ranks, name):
    loss, ga, gb = _full(name)
    for rank, r in enumerate(ranks):
        rows = slice(rank * SHARD, (rank + 1) * SHARD)
        _close(r[name][0], loss)
        if name == "clip_grad":  # every rank's loss flows back to every shard
            _close(r[name][1], WORLD * ga[rows])
            _close(r[name][2], WORLD * gb[rows])
        else:  # open_clip without gather_with_grad: only the local rows carry a gradient
            assert r[name][1].abs().sum() > 0


def test_supcon_over_features_gathered_by_hand(ranks):
    """The summed parameter gradients over the ranks are WORLD x the full batch's (every
    rank computes the same global loss; the all_gather backward sums into each shard)."""
    import contrastive_kernels as ck
    x, labels, model = _mlp_batch()
    feats = torch.nn.functional.normalize(model(x), dim=-1)
    loss = ck.SupConLoss(temperature=0.1, backend="torch")(feats, labels)
    loss.backward()
    for r in ranks:
        got_loss, got_grads = r["supcon_by_hand"]
        _close(got_loss, loss.detach())
        for g, p in zip(got_grads, model.parameters()):
            _close(g, WORLD * p.grad)


def test_clip_loss_every_flag_and_mode_equals_open_clip_per_rank(ranks):
    """Ours against open_clip per rank; a rank / world_size that is not the process
    group's raises on every rank."""
    for r in ranks:
        assert r["wrong_world"] and "must be the process group's" in r["wrong_world"], \
            r["wrong_world"]
    for rank, r in enumerate(ranks):
        for (local, with_grad, mode), (ours, theirs) in r["open_clip"].items():
            for i, (x, y) in enumerate(zip(ours, theirs)):
                torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12, msg=(
                    f"local_loss={local} gather_with_grad={with_grad} {mode} rank {rank} "
                    f"out {i}"))

