"""Per-class sums over every rank's rows, without gathering anything N-sized.

The positive terms of SupCon and PaCo need, per class, the sum of the normalized keys of
the whole global batch and their count. Each rank sums its own rows per class in a label
space that every rank shares (:func:`global_segments`: the union of the ranks' distinct
labels, O(C) integers per rank), and the [C, d] sums are all-reduced with gradient
(:func:`all_reduce_sum`: the backward all-reduces the gradient, since every rank's loss
reads the same global sums).
"""

from __future__ import annotations

import torch


def row_counts(n: int, device, group=None) -> list:
    """Every rank's ``n`` (one host sync of world_size integers)."""
    import torch.distributed as dist

    mine = torch.tensor([n], dtype=torch.long, device=device)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(every, mine, group=group)
    return [int(c) for c in torch.cat(every).cpu()]


def global_segments(labels: torch.Tensor, group=None):
    """(segment id per row, number of classes) in the sorted union of every rank's labels:
    the same label has the same id on every rank."""
    import torch.distributed as dist

    local = torch.unique(labels)
    sizes = row_counts(local.numel(), labels.device, group)
    top = max(sizes)
    padded = torch.nn.functional.pad(local, (0, top - local.numel()))
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    space = torch.unique(torch.cat([p[:s] for p, s in zip(parts, sizes)]))
    return torch.searchsorted(space, labels), space.numel()


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        import torch.distributed as dist

        ctx.group = group
        out = x.detach().clone().contiguous()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def all_reduce_sum(x: torch.Tensor, group=None) -> torch.Tensor:
    """The sum of every rank's ``x``, with gradient (each rank gets the sum of every rank's
    gradient of the result)."""
    return _AllReduceSum.apply(x, group)


def first_row(n: int, device, group=None) -> int:
    """The global index of this rank's first row when every rank holds ``n`` of them (in
    rank order): ids that are unique across ranks (e.g. sample ids as labels) start here."""
    import torch.distributed as dist

    return sum(row_counts(n, device, group)[: dist.get_rank(group)])


def mean_share(losses: torch.Tensor, world: int, group=None) -> torch.Tensor:
    """This rank's share of the mean of ``losses`` over every rank's rows: their sum times
    world / (global row count). The ranks' shares average to the global mean, and DDP's
    gradient average is its gradient, also when the ranks hold different row counts."""
    total = sum(row_counts(losses.shape[0], losses.device, group))
    return losses.sum() * (world / total)
