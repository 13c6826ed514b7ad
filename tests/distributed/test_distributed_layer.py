"""The distributed layer (contrastive_kernels.distributed) on 2 and 4 gloo processes in
float64, gather and ring, with uneven row counts:

- the distributed lse, two_sided_lse and pairwise_sigmoid (rank r holds 2 + r queries and
  3 + r keys): every rank's row (and column) statistics and the gradients (dq on each
  rank, dk and a per-key bias's arriving at their owner, dscale and a scalar bias's
  summed over ranks as DDP does) against one process over the global key set;
- SupCon with gather_distributed (rank r holds 3 + r samples of 2 views): the mean of the
  ranks' losses is the single-process loss of the concatenated batch and each rank's
  feature gradient world_size times its rows' single-process gradient (DDP's average of
  the parameter gradients is then the single-process one), with labels (classes spread
  over the ranks) and without (SimCLR), 'all' and 'one'; PaCo and GPaCo the same way over
  [every rank's q; every rank's k; the shared queue]; cached_gradient_step under DDP
  (no_sync on all but the last chunk, a different chunk count per rank) gives the plain
  DDP step's gradients;
- the pair losses (NT-Xent, DCL, HCL, InfoNCE, CLIP's global loss, SigLIP) the same way;
- concat_all_gather and KeyQueue (the queue losses' enqueue) give every rank's keys,
  uneven counts too;
- a rank passing another d, dtype or option raises the same ValueError on every rank; a
  rank that dies makes the others fail within the process group's timeout, not hang.

One process group per world size: the ranks run every case in one spawn."""

import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from contrastive_kernels import ops
from contrastive_kernels.testing.ranks import free_port

D = 5
TIMEOUT_S = 15  # the process group's: a dead rank fails the others within it
# (id, options, backend): the pair rule by self offset, by labels (excluded), and
# normalization with a per-key bias and a shifted self pair on the C++ kernels
CASES = (
    ("self", dict(self_offset=0), "torch"),
    ("labels_excluded", dict(labels=True, exclude_positives=True), "torch"),
    ("normalize_bias_shifted", dict(self_offset=1, normalize=True, bias=True), "cpu"),
)
MODES = ("gather", "ring")
# pairwise_sigmoid: SigLIP's diagonal with a replicated (scalar) bias, and labels with a
# bias per key, normalized, on the C++ kernels
SIGMOID = (
    ("diagonal_scalar_bias", dict(self_offset=0, bias="scalar"), "torch"),
    ("labels_key_bias", dict(labels=True, bias="per_key", normalize=True), "cpu"),
)
SUPCON = (("labels_all", True, "all"), ("labels_one", True, "one"), ("simclr_all", False, "all"))
# two_sided_lse: CLIP's diagonal, and labels excluded with a per-key bias, normalized, on
# the C++ kernels
TWO_SIDED = (
    ("self", dict(self_offset=0), "torch"),
    ("labels_bias", dict(labels=True, exclude_positives=True, bias=True, normalize=True), "cpu"),
)
PACO = (("paco", False), ("gpaco", True))  # (id, GPaCo's anchors and smoothing)
QUEUE, CLASSES = 4, 3  # PaCo's shared queue rows and classes


def _pair_losses():
    """(id, loss of (a, b, negatives, **distributed keywords)) of the losses over pairs of
    views: rank r holds 3 + r pairs and 2 + r negative keys."""
    from contrastive_kernels.losses.clip import clip_loss, info_nce
    from contrastive_kernels.losses.dcl import dcl_loss
    from contrastive_kernels.losses.siglip import siglip_loss
    from contrastive_kernels.losses.hcl import hcl_loss
    from contrastive_kernels.losses.ntxent import ntxent_loss

    be = dict(backend="torch")
    return (
        ("ntxent", lambda a, b, n, **kw: ntxent_loss(a, b, 0.3, **kw, **be)),
        ("dcl", lambda a, b, n, **kw: dcl_loss(a, b, 0.2, **kw, **be)),
        ("hcl_hard", lambda a, b, n, **kw: hcl_loss(a, b, 0.5, 0.1, 1.0, "hard", **kw, **be)),
        ("hcl_easy", lambda a, b, n, **kw: hcl_loss(a, b, 0.5, 0.1, 1.0, "easy", **kw, **be)),
        ("info_nce", lambda a, b, n, **kw: info_nce(a, b, None, 0.2, **kw, **be)),
        ("info_nce_symmetric_sum", lambda a, b, n, **kw: info_nce(a, b, None, 0.2, True, "sum",
                                                                  **kw, **be)),
        ("info_nce_negatives", lambda a, b, n, **kw: info_nce(a, b, n, 0.2, **kw, **be)),
        # open_clip's flags: every rank gets the global loss, its gradient world x it
        ("clip_global", lambda a, b, n, **kw: _open_clip_style(clip_loss, a, b, kw,
                                                                gather_with_grad=True)),
        ("siglip", lambda a, b, n, **kw: _open_clip_style(siglip_loss, a, b, kw, bias=-2.0)),
    )


def _open_clip_style(loss, a, b, kw, bias=None, **flags):
    """A loss with open_clip's rank / world_size (and, for SigLIP, dist_impl: gather or
    the ring's shift) from the table's gather_distributed / distributed_mode."""
    from contrastive_kernels.losses.siglip import siglip_loss

    world, rank = (dist.get_world_size(), dist.get_rank()) if kw else (1, 0)
    mode = kw.get("distributed_mode", "gather")
    if loss is siglip_loss:
        flags["dist_impl"] = "gather" if mode == "gather" else "shift"
    else:
        flags["distributed_mode"] = mode
    return loss(a, b, 5.0, bias, rank=rank, world_size=world, backend="torch", **flags)


def _pair_data(world):
    gen = torch.Generator().manual_seed(9)
    rows, negs = [3 + r for r in range(world)], [2 + r for r in range(world)]
    a, b = (torch.nn.functional.normalize(torch.randn(sum(rows), D, generator=gen,
                                                      dtype=torch.float64), dim=1)
            for _ in range(2))
    n = torch.randn(sum(negs), D, generator=gen, dtype=torch.float64)
    return a, b, n, rows, negs

pytestmark = [pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                 reason="needs torch.distributed with gloo")]


def _data(world):
    gen = torch.Generator().manual_seed(5)
    nq, nk = [2 + r for r in range(world)], [3 + r for r in range(world)]
    q = torch.randn(sum(nq), D, generator=gen, dtype=torch.float64)
    k = torch.randn(sum(nk), D, generator=gen, dtype=torch.float64)
    ql = torch.randint(0, 3, (sum(nq),), generator=gen)
    kl = torch.randint(0, 3, (sum(nk),), generator=gen)
    bias = torch.randn(sum(nk), generator=gen, dtype=torch.float64)
    weights = torch.randn(sum(nq), generator=gen, dtype=torch.float64)  # the loss: sum c_i lse_i
    return nq, nk, q, k, ql, kl, bias, weights


def _supcon_data(world):
    gen = torch.Generator().manual_seed(8)
    bsz = [3 + r for r in range(world)]
    feats = torch.randn(sum(bsz), 2, D, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, (sum(bsz),), generator=gen)
    return torch.nn.functional.normalize(feats, dim=-1), labels, bsz


def _paco_data(world):
    """Per rank r: 2 + r anchors' q and k, labels, sup_logits; the queue every rank shares."""
    gen = torch.Generator().manual_seed(10)
    bsz = [2 + r for r in range(world)]
    q, k = (torch.nn.functional.normalize(torch.randn(sum(bsz), D, generator=gen,
                                                      dtype=torch.float64), dim=1)
            for _ in range(2))
    queue = torch.nn.functional.normalize(torch.randn(QUEUE, D, generator=gen,
                                                      dtype=torch.float64), dim=1)
    labels = torch.randint(0, CLASSES, (2 * sum(bsz) + QUEUE,), generator=gen)
    sup = torch.randn(2 * sum(bsz), CLASSES, generator=gen, dtype=torch.float64)
    return q, k, queue, labels, sup, bsz


def _paco(gpaco, features, labels, sup_logits, **kw):
    from contrastive_kernels.losses.paco import class_prior, gpaco_loss, paco_loss

    if gpaco:  # anchors: every batch row (q and k)
        return gpaco_loss(features, labels, sup_logits, None, alpha=0.05, K=QUEUE,
                          num_classes=CLASSES, smooth=0.2, temperature=0.2, backend="torch",
                          **kw)
    return paco_loss(features, labels, sup_logits[: sup_logits.shape[0] // 2],
                     class_prior((5, 3, 1), CLASSES), alpha=0.05, K=QUEUE,
                     num_classes=CLASSES, temperature=0.2, backend="torch", **kw)


def _paco_rows(q, k, queue, labels, sup, rows, n_total):
    """(features [q; k; queue], labels, sup_logits [q's; k's]) of the rows ``rows`` of q
    and k (every row: one process's batch)."""
    label_q, label_k = labels[:n_total], labels[n_total:2 * n_total]
    return (torch.cat([q[rows], k[rows], queue]),
            torch.cat([label_q[rows], label_k[rows], labels[2 * n_total:]]),
            torch.cat([sup[:n_total][rows], sup[n_total:][rows]]))


def _slices(counts):
    starts = [sum(counts[:r]) for r in range(len(counts))]
    return [slice(s, s + c) for s, c in zip(starts, counts)]


def _kwargs(opts, ql, kl, bias):
    kw = dict(normalize=opts.get("normalize", False),
              exclude_positives=opts.get("exclude_positives", False),
              self_offset=opts.get("self_offset"))
    if opts.get("labels"):
        kw.update(q_labels=ql, k_labels=kl)
    if opts.get("bias"):
        kw["bias"] = bias
    return kw


def _worker(rank, world, port, out_dir):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    import datetime

    from contrastive_kernels import distributed as ckd
    from contrastive_kernels.losses.supcon import supcon_loss

    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    nq, nk, q, k, ql, kl, bias, weights = _data(world)
    rq, rk = _slices(nq)[rank], _slices(nk)[rank]
    results = {}
    for case, opts, backend in CASES:
        for mode in MODES:
            qr, kr = q[rq].clone().requires_grad_(), k[rk].clone().requires_grad_()
            scale = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
            kw = _kwargs(opts, ql[rq], kl[rk], bias[rk])
            out = ckd.lse(qr, kr, scale, mode=mode, backend=backend, **kw)
            dq, dk, ds = torch.autograd.grad((out * weights[rq]).sum(), (qr, kr, scale))
            dist.all_reduce(ds)  # a replicated parameter: DDP sums (then averages) it
            results[(case, mode)] = (out.detach(), dq, dk, ds)
    for case, opts, backend in TWO_SIDED:
        for mode in MODES:
            qr, kr = q[rq].clone().requires_grad_(), k[rk].clone().requires_grad_()
            scale = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
            kw = _kwargs(opts, ql[rq], kl[rk], bias[rk])
            rows, cols = ckd.two_sided_lse(qr, kr, scale, mode=mode, backend=backend, **kw)
            total = (rows * weights[rq]).sum() + (cols * _col_weights(world)[rk]).sum()
            dq, dk, ds = torch.autograd.grad(total, (qr, kr, scale))
            dist.all_reduce(ds)
            results[("two_sided", case, mode)] = (rows.detach(), cols.detach(), dq, dk, ds)
    for case, opts, backend in SIGMOID:
        for mode in MODES:
            qr, kr = q[rq].clone().requires_grad_(), k[rk].clone().requires_grad_()
            scale = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
            b = (torch.tensor(-0.8, dtype=torch.float64, requires_grad=True)
                 if opts["bias"] == "scalar" else bias[rk].clone().requires_grad_())
            kw = _kwargs(dict(opts, bias=False), ql[rq], kl[rk], None)
            kw.pop("exclude_positives")
            out = ckd.pairwise_sigmoid(qr, kr, scale, b, mode=mode, backend=backend, **kw)
            dq, dk, ds, db = torch.autograd.grad((out * weights[rq]).sum(), (qr, kr, scale, b))
            dist.all_reduce(ds)
            if opts["bias"] == "scalar":
                dist.all_reduce(db)
            results[("sigmoid", case, mode)] = (out.detach(), dq, dk, ds, db)
    for case, with_labels, contrast in SUPCON:
        for mode in MODES:
            feats, labels, bsz = _supcon_data(world)
            rows = _slices(bsz)[rank]
            f = feats[rows].clone().requires_grad_()
            loss = supcon_loss(f, labels[rows] if with_labels else None, None, 0.2, contrast,
                               0.07, gather_distributed=True, distributed_mode=mode,
                               backend="torch")
            (grad,) = torch.autograd.grad(loss, (f,))
            results[("supcon", case, mode)] = (loss.detach(), grad)
    results["ddp_cached"] = _ddp_cached_step(rank, world)
    pq, pk, queue, plabels, sup, pbsz = _paco_data(world)
    for case, gpaco in PACO:
        for mode in MODES:
            feats, lab, logits = _paco_rows(pq, pk, queue, plabels, sup, _slices(pbsz)[rank],
                                            sum(pbsz))
            feats, logits = feats.clone().requires_grad_(), logits.clone().requires_grad_()
            loss = _paco(gpaco, feats, lab, logits, gather_distributed=True,
                         distributed_mode=mode)
            results[("paco", case, mode)] = (loss.detach(),) + torch.autograd.grad(
                loss, (feats, logits), allow_unused=True, materialize_grads=True)
    a, b, n, rows, negs = _pair_data(world)
    ra, rn = _slices(rows)[rank], _slices(negs)[rank]
    for name, loss_of in _pair_losses():
        for mode in MODES:
            x, y = a[ra].clone().requires_grad_(), b[ra].clone().requires_grad_()
            neg = n[rn].clone().requires_grad_()
            loss = loss_of(x, y, neg, gather_distributed=True, distributed_mode=mode)
            results[("pair", name, mode)] = (loss.detach(),) + torch.autograd.grad(
                loss, (x, y, neg), allow_unused=True, materialize_grads=True)
    # the queue losses' enqueue: every rank's keys in rank order, no gradient
    results["enqueued"] = ckd.concat_all_gather(k[rk].clone().requires_grad_())
    # every rank's keys, then every rank's first key (the write wraps around)
    results["key_queue"] = _key_queue([k[rk].clone().requires_grad_(), k[rk][:1]], gather=True)
    # a rank with another d: the same ValueError on every rank
    try:
        ckd.lse(q[rq][:, : D - (rank == 1)], k[rk][:, : D - (rank == 1)], mode="ring")
        results["mismatch"] = None
    except ValueError as e:
        results["mismatch"] = str(e)
    # the last rank dies before the next call: the others fail within the timeout
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    if rank == world - 1:
        os._exit(0)
    t = time.time()
    try:
        ckd.lse(q[rq], k[rk], mode="ring")
        dead = ("returned", time.time() - t)
    except Exception as e:  # noqa: BLE001 - gloo raises RuntimeError / DistBackendError
        dead = (f"{type(e).__name__}: {e}", time.time() - t)
    torch.save(dead, os.path.join(out_dir, f"dead{rank}.pt"))
    os._exit(0)


@pytest.fixture(scope="module", params=[2, 4], ids=["world2", "world4"])
def ranks(request, tmp_path_factory):
    world = request.param
    out = tmp_path_factory.mktemp(f"dlse{world}")
    mp.start_processes(_worker, args=(world, free_port(), str(out)), nprocs=world,
                       join=True, start_method="spawn")
    per_rank = [torch.load(out / f"rank{r}.pt") for r in range(world)]
    dead = [torch.load(out / f"dead{r}.pt") for r in range(world - 1)]
    return world, per_rank, dead


def _ddp_cached_step(rank, world):
    """(plain, cached) parameter gradients of a DDP-wrapped linear encoder under SupCon
    with gather_distributed: the plain step, and cached_gradient_step in chunks of 3 rows
    (a different number of chunks on every rank) with DDP's no_sync."""
    from torch.nn.parallel import DistributedDataParallel

    from contrastive_kernels import cached_gradient_step
    from contrastive_kernels.losses.supcon import supcon_loss

    feats, labels, bsz = _supcon_data(world)
    rows = _slices(bsz)[rank]
    x, y = feats[rows].reshape(-1, D), labels[rows]  # sample-major: views 2i, 2i + 1
    torch.manual_seed(3)
    model = DistributedDataParallel(torch.nn.Linear(D, D).double())

    def loss_of(f):
        return supcon_loss(f.view(-1, 2, D), y, None, 0.2, gather_distributed=True,
                           backend="torch")
    loss_of(model(x)).backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    cached_gradient_step(model, x, loss_of, chunk_size=3, no_sync=model.no_sync)
    return plain, [p.grad.clone() for p in model.parameters()]


def _col_weights(world):
    gen = torch.Generator().manual_seed(6)
    return torch.randn(sum(3 + r for r in range(world)), generator=gen, dtype=torch.float64)


def _key_queue(batches, gather):
    """A 7-row KeyQueue (seeded draw) and its pointer after enqueuing ``batches``."""
    from contrastive_kernels.losses import KeyQueue

    torch.manual_seed(4)
    queue = KeyQueue(D, size=7).double()
    for keys in batches:
        queue.enqueue(keys, gather=gather)
    return queue(), int(queue.ptr)


def _reference(world, case_opts, backend):
    """Per rank: lse of its queries over the global keys (one process, one call per rank:
    the self pair of rank r's query i is global key start_r + i + offset), and the
    gradients of sum_r sum_i c_i lse_i."""
    nq, nk, q, k, ql, kl, bias, weights = _data(world)
    q, k = q.clone().requires_grad_(), k.clone().requires_grad_()
    scale = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    outs, total = [], 0
    for r, (rq, rk) in enumerate(zip(_slices(nq), _slices(nk))):
        kw = _kwargs(case_opts, ql[rq], kl, bias)
        if kw["self_offset"] is not None:
            kw["self_offset"] += rk.start
        out = ops.lse(q[rq], k, scale, backend=backend, **kw)[0]
        outs.append(out.detach())
        total = total + (out * weights[rq]).sum()
    dq, dk, ds = torch.autograd.grad(total, (q, k, scale))
    return outs, [dq[s] for s in _slices(nq)], [dk[s] for s in _slices(nk)], ds


def test_core_ops_every_rank_match_one_process(ranks):
    """lse and pairwise_sigmoid, gather and ring, against one process."""
    world, per_rank, _ = ranks
    for name, opts, backend in CASES:
        _check_lse_case(world, per_rank, name, opts, backend)
    for name, opts, backend in TWO_SIDED:
        _check_two_sided_case(world, per_rank, name, opts, backend)
    _check_sigmoid_cases(world, per_rank)


def _check_two_sided_case(world, per_rank, name, opts, backend):
    """One process: rank r's queries against every key (rows complete, columns partial),
    each key's column lse the logsumexp of the ranks' partials."""
    nq, nk, q, k, ql, kl, bias, weights = _data(world)
    q, k = q.clone().requires_grad_(), k.clone().requires_grad_()
    scale = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    rows, parts = [], []
    for rq, rk in zip(_slices(nq), _slices(nk)):
        kw = _kwargs(opts, ql[rq], kl, bias)
        if kw["self_offset"] is not None:
            kw["self_offset"] += rk.start
        row, col = ops.two_sided_lse(q[rq], k, scale, backend=backend, **kw)
        rows.append(row)
        parts.append(col)
    cols = torch.logsumexp(torch.stack(parts), dim=0)
    total = (torch.cat(rows) * weights).sum() + (cols * _col_weights(world)).sum()
    dq, dk, ds = torch.autograd.grad(total, (q, k, scale))
    for mode in MODES:
        for r, (rq, rk) in enumerate(zip(_slices(nq), _slices(nk))):
            got = per_rank[r][("two_sided", name, mode)]
            want = (rows[r].detach(), cols[rk].detach(), dq[rq], dk[rk], ds)
            for i, (x, y) in enumerate(zip(got, want)):
                torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-12,
                                           msg=f"two_sided {name} {mode} rank {r} out {i}")


def _check_lse_case(world, per_rank, name, opts, backend):
    outs, dqs, dks, ds = _reference(world, opts, backend)
    for mode in MODES:
        for r in range(world):
            out, dq, dk, dscale = per_rank[r][(name, mode)]
            where = f"{name} {mode} rank {r}/{world}"
            torch.testing.assert_close(out, outs[r], rtol=1e-12, atol=1e-12, msg=where)
            torch.testing.assert_close(dq, dqs[r], rtol=1e-11, atol=1e-12, msg=where)
            torch.testing.assert_close(dk, dks[r], rtol=1e-11, atol=1e-12, msg=where)
            torch.testing.assert_close(dscale, ds, rtol=1e-11, atol=1e-12, msg=where)


def test_enqueue_and_the_mismatch_and_dead_rank_errors(ranks):
    """concat_all_gather (the queue losses' enqueue) gives every rank's keys in rank order
    without gradient; a mismatched d raises on every rank; a dead rank fails the others."""
    world, per_rank, dead = ranks
    k = _data(world)[3]
    firsts = k[[s.start for s in _slices(_data(world)[1])]]
    queue, ptr = _key_queue([k, firsts], gather=False)
    for r in range(world):
        assert torch.equal(per_rank[r]["enqueued"], k) and not per_rank[r]["enqueued"].requires_grad
        assert torch.equal(per_rank[r]["key_queue"][0], queue) and per_rank[r]["key_queue"][1] == ptr
    messages = [p["mismatch"] for p in per_rank]
    assert all(m and "every rank must pass the same d" in m for m in messages), messages
    for message, seconds in dead:
        assert message != "returned" and seconds < TIMEOUT_S + 10, (message, seconds)


def test_class_sum_losses_ranks_match_one_process(ranks):
    """SupCon and PaCo / GPaCo (the positive terms by class sums across ranks); SupCon's
    cached-gradient step under DDP gives the plain DDP step's gradients."""
    world, per_rank, _ = ranks
    for r in range(world):
        plain, cached = per_rank[r]["ddp_cached"]
        for a, b in zip(plain, cached):
            torch.testing.assert_close(b, a, rtol=1e-11, atol=1e-13, msg=f"ddp cached rank {r}")
    for name, with_labels, contrast in SUPCON:
        _check_supcon_case(world, per_rank, name, with_labels, contrast)
    for name, gpaco in PACO:
        _check_paco_case(world, per_rank, name, gpaco)


def _check_paco_case(world, per_rank, name, gpaco):
    q, k, queue, labels, sup, bsz = _paco_data(world)
    n = sum(bsz)
    feats, lab, logits = _paco_rows(q, k, queue, labels, sup, slice(0, n), n)
    feats, logits = feats.clone().requires_grad_(), logits.clone().requires_grad_()
    loss = _paco(gpaco, feats, lab, logits)
    g_feats, g_logits = torch.autograd.grad(loss, (feats, logits), allow_unused=True,
                                            materialize_grads=True)
    for mode in MODES:
        got = [per_rank[r][("paco", name, mode)] for r in range(world)]
        where = f"{name} {mode} world {world}"
        torch.testing.assert_close(sum(g[0] for g in got) / world, loss.detach(), rtol=1e-12,
                                   atol=1e-12, msg=where)
        for r, rows in enumerate(_slices(bsz)):
            b = bsz[r]
            # the rank's [q; k] rows and their sup_logits rows (the queue's gradient, a
            # buffer's, is not compared)
            want = (torch.cat([g_feats[:n][rows], g_feats[n:2 * n][rows]]),
                    torch.cat([g_logits[:n][rows], g_logits[n:][rows]]))
            for i, (x, y) in enumerate(zip((got[r][1][:2 * b], got[r][2]), want)):
                if not gpaco and i == 1:  # PaCo's anchors are the q rows only
                    x, y = x[:b], y[:b]
                torch.testing.assert_close(x, world * y, rtol=1e-10, atol=1e-12,
                                           msg=f"{where} rank {r} input {i}")


def _check_supcon_case(world, per_rank, name, with_labels, contrast):
    from contrastive_kernels.losses.supcon import supcon_loss

    feats, labels, bsz = _supcon_data(world)
    f = feats.clone().requires_grad_()
    loss = supcon_loss(f, labels if with_labels else None, None, 0.2, contrast, 0.07,
                       backend="torch")
    (grad,) = torch.autograd.grad(loss, (f,))
    for mode in MODES:
        got = [per_rank[r][("supcon", name, mode)] for r in range(world)]
        where = f"supcon {name} {mode} world {world}"
        torch.testing.assert_close(sum(g[0] for g in got) / world, loss.detach(), rtol=1e-12,
                                   atol=1e-12, msg=where)
        for r, rows in enumerate(_slices(bsz)):
            torch.testing.assert_close(got[r][1], world * grad[rows], rtol=1e-10, atol=1e-12,
                                       msg=f"{where} rank {r}")


def test_pair_losses_ranks_match_one_process(ranks):
    world, per_rank, _ = ranks
    for name, loss_of in _pair_losses():
        _check_pair_case(world, per_rank, name, loss_of)


def _check_pair_case(world, per_rank, name, loss_of):
    a, b, n, rows, negs = _pair_data(world)
    x, y, neg = (t.clone().requires_grad_() for t in (a, b, n))
    loss = loss_of(x, y, neg)
    grads = torch.autograd.grad(loss, (x, y, neg), allow_unused=True, materialize_grads=True)
    for mode in MODES:
        got = [per_rank[r][("pair", name, mode)] for r in range(world)]
        where = f"{name} {mode} world {world}"
        torch.testing.assert_close(sum(g[0] for g in got) / world, loss.detach(), rtol=1e-12,
                                   atol=1e-12, msg=where)
        for r in range(world):
            for i, part in enumerate((_slices(rows)[r], _slices(rows)[r], _slices(negs)[r])):
                torch.testing.assert_close(got[r][1 + i], world * grads[i][part], rtol=1e-10,
                                           atol=1e-12, msg=f"{where} rank {r} input {i}")


def _check_sigmoid_cases(world, per_rank):
    for name, opts, backend in SIGMOID:
        nq, nk, q, k, ql, kl, bias, weights = _data(world)
        q, k = q.clone().requires_grad_(), k.clone().requires_grad_()
        scale = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
        b = (torch.tensor(-0.8, dtype=torch.float64, requires_grad=True)
             if opts["bias"] == "scalar" else bias.clone().requires_grad_())
        outs, total = [], 0
        for rq, rk in zip(_slices(nq), _slices(nk)):
            kw = _kwargs(dict(opts, bias=False), ql[rq], kl, None)
            kw.pop("exclude_positives")
            if kw["self_offset"] is not None:
                kw["self_offset"] += rk.start
            out = ops.pairwise_sigmoid(q[rq], k, scale, b, backend=backend, **kw)
            outs.append(out.detach())
            total = total + (out * weights[rq]).sum()
        dq, dk, ds, db = torch.autograd.grad(total, (q, k, scale, b))
        for mode in MODES:
            for r, (rq, rk) in enumerate(zip(_slices(nq), _slices(nk))):
                got = per_rank[r][("sigmoid", name, mode)]
                want = (outs[r], dq[rq], dk[rk], ds, db if opts["bias"] == "scalar" else db[rk])
                for i, (x, y) in enumerate(zip(got, want)):
                    torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-12,
                                               msg=f"sigmoid {name} {mode} rank {r} out {i}")
