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


def gather_rows(x: torch.Tensor, counts: list, group=None, with_grad: bool = False):
    """Every rank's rows of ``x`` in rank order, ``counts`` the ranks' row counts (they may
    differ: the collective runs on rows padded to the largest and cuts them out again).
    ``with_grad``: through the functional all-gather, whose backward reduce-scatters the
    gradient back to each row's owner."""
    import torch.distributed as dist

    from . import _autograd_all_gather

    top = max(counts)
    padded = torch.nn.functional.pad(x, (0, 0) * (x.dim() - 1) + (0, top - x.shape[0]))
    padded = padded.contiguous()
    if with_grad:
        out = _autograd_all_gather()(padded, 0, group if group is not None else dist.group.WORLD)
        out = out.wait() if callable(getattr(out, "wait", None)) else out
    else:
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded, group=group)
        out = torch.cat(parts)
    return torch.cat([out[r * top: r * top + c] for r, c in enumerate(counts)])


def global_segments(labels: torch.Tensor, group=None):
    """(segment id per row, number of classes) in the sorted union of every rank's labels:
    the same label has the same id on every rank."""
    local = torch.unique(labels)
    space = torch.unique(gather_rows(local, row_counts(local.numel(), labels.device, group),
                                     group))
    return torch.searchsorted(space, labels), space.numel()


class _AllReduceSum(torch.autograd.Function):
    """forward: the sum over ranks (or x itself); backward: the gradient summed over the
    ranks, divided by ``divide`` (or the rank's own gradient)."""

    @staticmethod
    def forward(ctx, x, group, forward_sum, backward_sum, divide):
        import torch.distributed as dist

        ctx.group, ctx.backward_sum, ctx.divide = group, backward_sum, divide
        out = x.detach().clone().contiguous()
        if forward_sum:
            dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        if ctx.backward_sum:
            dist.all_reduce(grad, group=ctx.group)
        if ctx.divide != 1:
            grad = grad / ctx.divide
        return grad, None, None, None, None


def all_reduce_sum(x: torch.Tensor, group=None, grad: str = "sum") -> torch.Tensor:
    """The sum of every rank's ``x``, with gradient: each rank gets the sum of every rank's
    gradient of the result (``grad="sum"``) or its own (``grad="local"``: the ranks' shared
    value of a loss whose terms' gradients reach their inputs by other collectives)."""
    if grad not in ("sum", "local"):
        raise ValueError(f"grad must be 'sum' or 'local', got {grad!r}")
    return _AllReduceSum.apply(x, group, True, grad == "sum", 1)


def replicated(x: torch.Tensor, group=None, average: bool = False) -> torch.Tensor:
    """``x`` (a parameter every rank holds, a temperature), whose gradient is summed over
    the ranks (``average``: their mean) in the backward, for a loss each rank computes
    from its share of the terms but whose value is every rank's."""
    import torch.distributed as dist

    return _AllReduceSum.apply(x, group, False, True, dist.get_world_size(group)
                               if average else 1)


def mean_share(losses: torch.Tensor, world: int, group=None, total=None) -> torch.Tensor:
    """This rank's share of the mean of ``losses`` over every rank's rows: their sum times
    world / (global row count; ``total``, or gathered here). The ranks' shares average to
    the global mean, and DDP's gradient average is its gradient, also when the ranks hold
    different row counts."""
    if total is None:
        total = sum(row_counts(losses.shape[0], losses.device, group))
    return losses.sum() * (world / total)
