"""torch.distributed helpers of the losses: who we are, and gathering rows from every rank.

Gathers with gradient use torch's functional collectives (``all_gather_single``, whose
backward is a reduce-scatter; ``all_gather_tensor_autograd`` on torch releases before it),
not the deprecated ``torch.distributed.nn.functional.all_gather``. Before the tensors of
one call are gathered the ranks exchange their row counts once: unequal counts raise one
clear ValueError on every rank instead of aborting the process inside the backend (gloo's
"Received data size doesn't match") or hanging. That exchange reads 1 integer per rank
back to the host.
"""

from __future__ import annotations

import torch


def world():
    """(world_size, rank) of the default process group, or (1, 0) outside torch.distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _autograd_all_gather():
    """The functional all-gather with gradient of this torch (rows concatenated on dim 0)."""
    from torch.distributed import _functional_collectives as fc

    return getattr(fc, "all_gather_single", None) or fc.all_gather_tensor_autograd


def check_equal_rows(xs) -> None:
    """Raise on every rank unless every rank holds as many rows as this one (the tensors
    ``xs`` of one call share their row count: the losses check their pairs first)."""
    import torch.distributed as dist

    n = xs[0].shape[0]
    count = torch.tensor([n], dtype=torch.long, device=xs[0].device)
    counts = [torch.empty_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    if len(set(counts)) > 1:
        raise ValueError(
            f"gathered loss: every rank must hold the same number of rows, got {counts} "
            f"(rows per rank; this is rank {dist.get_rank()} with {n}); pad or drop the last "
            "batch (DistributedSampler(drop_last=True)), uneven batches are not supported yet")


def gather(*xs: torch.Tensor, with_grad: bool, keep_local: bool = False) -> list:
    """[world_size * rows, ...] per tensor of ``xs``: its rows of every rank, concatenated
    in rank order (one row-count check for all of them).

    ``with_grad`` keeps the autograd graph through the gather (the backward returns to each
    rank the sum over ranks of the gradient of its rows, by a reduce-scatter). Without it,
    ``keep_local`` puts this rank's own x (with its graph) in its slot, as open_clip does.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("gathering needs an initialized torch.distributed process group")
    check_equal_rows(xs)
    return [_gather_one(x, with_grad, keep_local) for x in xs]


def _gather_one(x: torch.Tensor, with_grad: bool, keep_local: bool) -> torch.Tensor:
    import torch.distributed as dist

    if with_grad:
        out = _autograd_all_gather()(x.contiguous(), 0, dist.group.WORLD)
        return out.wait() if hasattr(out, "wait") and callable(out.wait) else out
    parts = [torch.empty_like(x, memory_format=torch.contiguous_format)
             for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    if keep_local:
        parts[dist.get_rank()] = x
    return torch.cat(parts, dim=0)


def concat_all_gather(x: torch.Tensor, group=None) -> torch.Tensor:
    """Every rank's rows of ``x`` in rank order, without gradient: what MoCo's, CLSA's and
    BINGO's builders enqueue (their ``concat_all_gather``). Row counts may differ between
    ranks (one host sync of world_size integers)."""
    import torch.distributed as dist

    from .class_sums import gather_rows, row_counts

    x = x.detach()
    if not (dist.is_available() and dist.is_initialized()):
        return x
    return gather_rows(x, row_counts(x.shape[0], x.device, group), group)


from .class_sums import (all_reduce_sum, gather_rows, global_segments, mean_share,  # noqa: E402
                         row_counts)
from .ops import MODES, lse, pairwise_sigmoid  # noqa: E402  (the distributed core ops)
