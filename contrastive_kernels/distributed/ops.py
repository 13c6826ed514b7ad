"""The distributed core ops: each rank's queries against the global key set.

    lse_i      = log sum_{j in K} exp(scale <q^_i, k^_j> + bias_j)        (lse)
    col_lse_j  = log sum_{i in Q} exp(scale <q^_i, k^_j> + bias_j)        (two_sided_lse,
                 with lse_i: CLIP's two directions of one image x text matrix)
    row_loss_i = sum_{j in K} softplus(-z_ij (scale <q^_i, k^_j> + bias))  (pairwise_sigmoid)
    K = [keys of rank 0; rank 1; ...], Q = [queries of rank 0; rank 1; ...]

minus the pairs the core op excludes, with ``self_offset`` and the labels referring to
global positions: this rank's query i pairs with global key ``start + i + self_offset``,
``start`` the global index of this rank's first key. Every rank calls it with its own
queries and keys (row counts may differ between ranks); the gradient of a key reaches the
rank that owns it, summed over every rank's queries, which is what DDP's averaging needs.

Two modes:

- ``"gather"``: the keys (and their labels and bias) are all-gathered with gradient (a
  reduce-scatter in the backward, not an all-reduce); one core-op call over the
  N_local x N_global problem. Per-rank memory O(N_global d).
- ``"ring"``: the key shards travel around the ring (``batch_isend_irecv``; the next
  shard's transfer overlaps the current shard's tiles). The forward keeps each shard's
  partial lse and merges them by logsumexp in shard order (so the result does not depend
  on the ring's direction); the backward sends the shards around again, recomputing each
  shard's op with autograd under the upstream weight g_i exp(lse_i^s - lse_i), and each
  shard's partial dk travels with it and arrives home complete. Per-rank memory
  O(N_local d) plus one shard in flight, never O(N_global d); the backward costs one more
  forward sweep than the gather's. pairwise_sigmoid's row losses are sums, so its shards
  merge by a plain sum in shard order (weight 1 in the backward).

The two-sided op's column side: every rank's sweep (one two-sided core-op call over its
queries and the gathered keys, or one per shard on the ring) leaves a partial col_lse of
every global key over its own queries, M_global scalars; :func:`_columns_over_ranks`
merges them into each owner's col_lse by one max and one sum all-reduce (differentiable:
the backward all-reduces the M_global column gradients, each rank then having the weight
of its partials). M_global scalars, never M_global x d.

Ring and gather agree to rounding, not bitwise: the ring merges W partial sums by a
logsumexp where the gather's kernel accumulates one online sum over all tiles.

Before any exchange the ranks compare one small signature (key count, d, dtype and the
options): a rank whose d, dtype or options differ gets the same ValueError on every rank,
instead of a hang or a backend abort inside the exchange. That read-back is one host sync
of world_size x 8 integers per call.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import ops as core_ops
from .class_sums import gather_rows

MODES = ("gather", "ring")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_FIELDS = ("keys", "d", "dtype", "labels", "bias", "self_offset", "normalize",
           "exclude_positives")


def _group_info(group):
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("the distributed core ops need an initialized torch.distributed "
                           "process group (torch.distributed.init_process_group)")
    return dist.get_world_size(group), dist.get_rank(group)


def _signatures(op, q, k, q_labels, bias, self_offset, normalize, exclude_positives, group):
    """[world, 8] int64 of every rank's (key count, d, dtype, labels?, bias?, self_offset,
    normalize, exclude_positives); raises on every rank where they disagree."""
    import torch.distributed as dist

    world, rank = _group_info(group)
    mine = torch.tensor([k.shape[0], q.shape[1], _DTYPES.index(q.dtype), q_labels is not None,
                         bias is not None, -(2 ** 62) if self_offset is None else self_offset,
                         normalize, exclude_positives], dtype=torch.long, device=q.device)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine, group=group)
    table = torch.stack(every).cpu()
    for col, name in enumerate(_FIELDS[1:], start=1):
        values = table[:, col].tolist()
        if len(set(values)) > 1:
            shown = ["None" if name == "self_offset" and v == -(2 ** 62) else
                     (str(_DTYPES[v]) if name == "dtype" else v) for v in values]
            raise ValueError(
                f"distributed {op}: every rank must pass the same {name}; got {shown} (one "
                f"per rank, this is rank {rank})")
    return table


def _check_pair(q, k, q_labels, k_labels, mode):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for name, x in (("q", q), ("k", k)):
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.dtype not in _DTYPES:
            raise ValueError(f"{name} must be a 2-D floating point tensor (fp16 / bf16 / fp32 "
                             f"/ fp64), got {getattr(x, 'shape', type(x).__name__)}")
    if (q_labels is None) != (k_labels is None):
        raise ValueError("q_labels and k_labels must be given together (or neither)")


def lse(q: torch.Tensor, k: torch.Tensor, scale=1.0, *, bias: Optional[torch.Tensor] = None,
        q_labels: Optional[torch.Tensor] = None, k_labels: Optional[torch.Tensor] = None,
        self_offset: Optional[int] = None, normalize: bool = False, eps: float = 1e-12,
        exclude_positives: bool = False, mode: str = "gather", group=None,
        backend: Optional[str] = "auto") -> torch.Tensor:
    """lse [N_local] of this rank's queries over every rank's keys (module docstring);
    differentiable in q, k and a tensor ``scale``. ``q_labels`` / ``k_labels`` and ``bias``
    as in :func:`contrastive_kernels.ops.lse` (both label tensors or neither on every
    rank)."""
    _check_pair(q, k, q_labels, k_labels, mode)
    table = _signatures("lse", q, k, q_labels, bias, self_offset, normalize, exclude_positives,
                        group)
    world, rank = _group_info(group)
    counts = table[:, 0].tolist()
    start = sum(counts[:rank])
    opts = dict(normalize=normalize, eps=eps, exclude_positives=exclude_positives,
                backend=backend)
    if mode == "gather" or world == 1:
        keys, labels, biases = _gather_keys(k, k_labels, bias, counts, group)
        offset = None if self_offset is None else start + self_offset
        return core_ops.lse(q, keys, scale, bias=biases, q_labels=q_labels, k_labels=labels,
                       self_offset=offset, **opts)[0]
    return _RingOp.apply(q, k, _scale_tensor(scale, q), None, bias, q_labels, k_labels,
                         self_offset, _LseShards, opts, counts, group)[0]


def two_sided_lse(q: torch.Tensor, k: torch.Tensor, scale=1.0, *,
                  bias: Optional[torch.Tensor] = None, q_labels: Optional[torch.Tensor] = None,
                  k_labels: Optional[torch.Tensor] = None, self_offset: Optional[int] = None,
                  normalize: bool = False, eps: float = 1e-12, exclude_positives: bool = False,
                  mode: str = "gather", group=None, backend: Optional[str] = "auto"):
    """(row_lse [N_local], col_lse [M_local]): this rank's queries over every rank's keys,
    and this rank's keys over every rank's queries (module docstring), from one sweep of
    the N_local x M_global pairs per rank; both differentiable in q, k and a tensor
    ``scale``. Options as in :func:`contrastive_kernels.ops.two_sided_lse`; the pair
    (i, j) is excluded where key j is global key start + i + ``self_offset``."""
    _check_pair(q, k, q_labels, k_labels, mode)
    table = _signatures("two_sided_lse", q, k, q_labels, bias, self_offset, normalize,
                        exclude_positives, group)
    world, rank = _group_info(group)
    counts = table[:, 0].tolist()
    opts = dict(normalize=normalize, eps=eps, exclude_positives=exclude_positives,
                backend=backend)
    if world == 1:
        return core_ops.two_sided_lse(q, k, scale, bias=bias, q_labels=q_labels,
                                      k_labels=k_labels, self_offset=self_offset, **opts)
    if mode == "gather":
        keys, labels, biases = _gather_keys(k, k_labels, bias, counts, group)
        offset = None if self_offset is None else sum(counts[:rank]) + self_offset
        rows, col_parts = core_ops.two_sided_lse(q, keys, scale, bias=biases,
                                                 q_labels=q_labels, k_labels=labels,
                                                 self_offset=offset, **opts)
    else:
        rows, col_parts = _RingOp.apply(q, k, _scale_tensor(scale, q), None, bias, q_labels,
                                        k_labels, self_offset, _TwoSidedShards, opts, counts,
                                        group)
    return rows, _columns_over_ranks(col_parts, counts, group)


def _columns_over_ranks(col_parts: torch.Tensor, counts, group) -> torch.Tensor:
    """This rank's keys' col_lse: the logsumexp over the ranks of every rank's partial
    col_lse [M_global] (over its own queries; -inf where it has none)."""
    import torch.distributed as dist

    from .class_sums import all_reduce_sum

    world, rank = _group_info(group)
    start = sum(counts[:rank])
    own = slice(start, start + counts[rank])
    shift = col_parts.detach().clone()
    dist.all_reduce(shift, op=dist.ReduceOp.MAX, group=group)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    total = all_reduce_sum(torch.exp(col_parts - shift), group)[own]
    # a key no query may pair with: -inf and no gradient (not log 0's)
    seen = total > 0
    return torch.where(seen, torch.log(torch.where(seen, total, torch.ones_like(total)))
                       + shift[own], torch.full_like(total, float("-inf")))


def _scale_tensor(scale, q):
    if isinstance(scale, torch.Tensor):
        return scale
    return torch.tensor(float(scale), dtype=torch.float64 if q.dtype == torch.float64
                        else torch.float32, device=q.device)


def pairwise_sigmoid(q: torch.Tensor, k: torch.Tensor, scale=1.0, bias=None, *,
                     q_labels: Optional[torch.Tensor] = None,
                     k_labels: Optional[torch.Tensor] = None, self_offset: Optional[int] = None,
                     normalize: bool = False, eps: float = 1e-12, mode: str = "gather",
                     group=None, backend: Optional[str] = "auto") -> torch.Tensor:
    """row_loss [N_local] of :func:`contrastive_kernels.ops.pairwise_sigmoid` for this
    rank's queries over every rank's keys (SigLIP over the global batch), positives by
    global position (``self_offset``) or equal labels, by gather or ring (module
    docstring; the ring sums the shards' partial row losses in shard order). ``bias``: a
    float or 0-dim tensor (replicated, like the scale: each rank gets its own rows'
    gradient, DDP sums them) or one per key [M_local] (its gradient reaches its owner)."""
    _check_pair(q, k, q_labels, k_labels, mode)
    per_key = isinstance(bias, torch.Tensor) and bias.dim() == 1
    table = _signatures("pairwise_sigmoid", q, k, q_labels, bias if per_key else None,
                        self_offset, normalize, False, group)
    world, rank = _group_info(group)
    counts = table[:, 0].tolist()
    opts = dict(normalize=normalize, eps=eps, backend=backend)
    if mode == "gather" or world == 1:
        keys, labels, biases = _gather_keys(k, k_labels, bias if per_key else None, counts,
                                            group)
        offset = None if self_offset is None else sum(counts[:rank]) + self_offset
        return core_ops.pairwise_sigmoid(q, keys, scale, biases if per_key else bias,
                                         q_labels=q_labels, k_labels=labels,
                                         self_offset=offset, **opts)
    fixed = None if bias is None or per_key else _scale_tensor(bias, q)
    return _RingOp.apply(q, k, _scale_tensor(scale, q), fixed, bias if per_key else None,
                         q_labels, k_labels, self_offset, _SigmoidShards, opts, counts,
                         group)[0]


# --------------------------------------------------------------------------- gather


def _gather_keys(k, k_labels, bias, counts, group):
    """Every rank's keys, labels and bias in rank order (class_sums.gather_rows), keys (and
    a bias that requires grad) with gradient."""
    if len(counts) == 1:
        return k, k_labels, bias
    return (gather_rows(k, counts, group, with_grad=True),
            None if k_labels is None else gather_rows(k_labels, counts, group),
            None if bias is None else gather_rows(bias, counts, group,
                                                  with_grad=bias.requires_grad))


# --------------------------------------------------------------------------- ring


class _Ring:
    """The shard schedule of one rank: at step t it holds the keys of rank (rank - t) mod
    world, received from its left neighbour, and passes them right."""

    def __init__(self, counts, group):
        self.world, self.rank = _group_info(group)
        self.counts, self.group = counts, group
        self.left, self.right = (self.rank - 1) % self.world, (self.rank + 1) % self.world
        self.starts = [sum(counts[:r]) for r in range(self.world)]

    def owner(self, step: int) -> int:
        return (self.rank - step) % self.world

    def post(self, tensors, step: int):
        """Start passing ``tensors`` (the shard of ``step``) right and receiving the shard
        of step + 1 from the left: (received buffers, requests to wait on)."""
        import torch.distributed as dist

        rows = self.counts[self.owner(step + 1)]
        bufs = [None if t is None else t.new_empty((rows,) + tuple(t.shape[1:]))
                for t in tensors]
        p2p = []
        for t, buf in zip(tensors, bufs):
            if t is None:
                continue
            p2p.append(dist.P2POp(dist.isend, t.contiguous(), self._peer(self.right),
                                  self.group))
            p2p.append(dist.P2POp(dist.irecv, buf, self._peer(self.left), self.group))
        return bufs, (dist.batch_isend_irecv(p2p) if p2p else [])

    def _peer(self, r: int) -> int:
        import torch.distributed as dist

        return r if self.group is None else dist.get_global_rank(self.group, r)

    def keys_of(self, step: int) -> slice:
        """The global key positions of the shard of ``step``."""
        owner = self.owner(step)
        return slice(self.starts[owner], self.starts[owner] + self.counts[owner])

    def offset(self, self_offset, step: int):
        """The core op's self_offset against the shard of ``step``."""
        if self_offset is None:
            return None
        return self.starts[self.rank] + self_offset - self.starts[self.owner(step)]


def _wait(reqs) -> None:
    for req in reqs:
        req.wait()


class _LseShards:
    """lse_i = logsumexp over the shards of their partial lse; d lse_i / d part_i =
    exp(part_i - lse_i), 0 where the shard holds none of the row's keys (part = -inf),
    also when the row has no key at all. ``part`` gives (row partial, column partial or
    None)."""

    @staticmethod
    def part(q, keys, scale, bias, q_labels, labels, self_offset, opts):
        return core_ops.lse(q, keys, scale, bias=bias, q_labels=q_labels, k_labels=labels,
                            self_offset=self_offset, **opts)[0], None

    @staticmethod
    def merge(parts):
        return torch.logsumexp(torch.stack(parts), dim=0)

    @staticmethod
    def weight(part, out):
        return torch.where(part == float("-inf"), torch.zeros_like(part), torch.exp(part - out))


class _TwoSidedShards(_LseShards):
    """The rows as :class:`_LseShards`; each shard's column partial (over this rank's
    queries) is kept in its keys' global slots for :func:`_columns_over_ranks`."""

    @staticmethod
    def part(q, keys, scale, bias, q_labels, labels, self_offset, opts):
        return core_ops.two_sided_lse(q, keys, scale, bias=bias, q_labels=q_labels,
                                      k_labels=labels, self_offset=self_offset, **opts)


class _SigmoidShards:
    """row_loss_i = the sum over the shards of their partial sums (in shard order); each
    partial's weight in the backward is 1."""

    @staticmethod
    def part(q, keys, scale, bias, q_labels, labels, self_offset, opts):
        return core_ops.pairwise_sigmoid(q, keys, scale, bias, q_labels=q_labels,
                                         k_labels=labels, self_offset=self_offset,
                                         **opts), None

    @staticmethod
    def merge(parts):
        return torch.stack(parts).sum(0)

    @staticmethod
    def weight(part, out):
        return torch.ones_like(part)


class _RingOp(torch.autograd.Function):
    """One core op's row statistic over the ring's shards (module docstring), and its
    column partials in global key order ([M_global]; empty for the ops without columns).
    ``bias`` is replicated (None or 0-dim: stays, its gradient summed here like the
    scale's) and ``key_bias`` per key (travels with the shard, its gradient home with dk)."""

    @staticmethod
    def forward(ctx, q, k, scale, bias, key_bias, q_labels, k_labels, self_offset, reduction,
                opts, counts, group):
        ring = _Ring(counts, group)
        parts, col_parts = [None] * ring.world, [None] * ring.world
        shard = (k.detach(), k_labels, None if key_bias is None else key_bias.detach())
        fixed = None if bias is None else bias.detach()
        for step in range(ring.world):
            last = step == ring.world - 1
            nxt, reqs = (None, []) if last else ring.post(shard, step)
            keys, labels, kb = shard
            owner = ring.owner(step)
            parts[owner], col_parts[owner] = reduction.part(
                q.detach(), keys, scale.detach(), kb if kb is not None else fixed, q_labels,
                labels, ring.offset(self_offset, step), opts)
            del keys, labels, kb
            _wait(reqs)
            shard = nxt if not last else shard
        out = reduction.merge(parts)
        cols = out.new_empty(0) if col_parts[0] is None else torch.cat(col_parts)
        ctx.save_for_backward(q, k, scale, out)
        ctx.rest = (bias, key_bias, q_labels, k_labels, self_offset, reduction, opts, ring)
        return out, cols

    @staticmethod
    def backward(ctx, grad, grad_cols):
        q, k, scale, out = ctx.saved_tensors
        bias, key_bias, q_labels, k_labels, self_offset, reduction, opts, ring = ctx.rest
        need_q, need_k, need_s, need_b, need_kb = ctx.needs_input_grad[:5]
        # the sums over the shards (dq, dscale, dbias) start as the first shard's terms, and
        # so does the gradient that travels home with each shard (its dk, its bias'): no
        # zero-filled [N_local, d] buffers
        sums = {}
        home = None
        shard = (k.detach(), k_labels, None if key_bias is None else key_bias.detach())
        for step in range(ring.world):
            last = step == ring.world - 1
            # the next shard's keys move while this one's tiles are recomputed
            nxt, reqs = (None, []) if last else ring.post(shard, step)
            keys, labels, kb = shard
            with torch.enable_grad():
                qd = q.detach().requires_grad_(need_q)
                kd = keys.detach().requires_grad_(True)
                sd = scale.detach().requires_grad_(need_s)
                bd = None if bias is None else bias.detach().requires_grad_(need_b)
                kbd = None if kb is None else kb.detach().requires_grad_(need_kb)
                part, col_part = reduction.part(qd, kd, sd, kbd if kbd is not None else bd,
                                                q_labels, labels,
                                                ring.offset(self_offset, step), opts)
                outs, seeds = [part], [grad * reduction.weight(part, out)]
                if col_part is not None:  # its keys' column gradient, from the merge
                    outs.append(col_part)
                    seeds.append(grad_cols[ring.keys_of(step)])
                wrt = [(name, x) for name, x, need in (("q", qd, need_q), ("k", kd, True),
                                                       ("s", sd, need_s), ("b", bd, need_b),
                                                       ("kb", kbd, need_kb)) if need]
                got = dict(zip([n for n, _ in wrt], torch.autograd.grad(
                    outs, [x for _, x in wrt], seeds, allow_unused=True,
                    materialize_grads=True)))
            # the shard's temporaries go before the next shard's are made: per-rank memory
            # stays a few [N_local, d] buffers
            del part, col_part, outs, seeds, qd, kd, sd, bd, kbd
            for name in ("q", "s", "b"):
                if name in got:
                    term = got.pop(name)
                    sums[name] = term if name not in sums else sums[name].add_(term)
            mine = (got.pop("k"),) + ((got.pop("kb"),) if need_kb else ())
            home = mine if home is None else tuple(h.add_(m) for h, m in zip(home, mine))
            del mine, got
            _wait(reqs)
            # this shard's gradients so far follow it right (the last hop takes them home);
            # the left neighbour's, of the next shard, come in
            home, home_reqs = ring.post(home, step)
            _wait(home_reqs)
            shard = nxt if not last else shard
        dq, ds, db = sums.get("q"), sums.get("s"), sums.get("b")
        dk = home[0] if need_k else None
        dkb = home[1] if need_kb else None
        return (dq, dk, ds, db, dkb) + (None,) * 7
