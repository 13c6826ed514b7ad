"""torch.distributed helpers of the losses: who we are, and gathering rows from every rank."""

from __future__ import annotations

import torch


def world():
    """(world_size, rank) of the default process group, or (1, 0) outside torch.distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather(x: torch.Tensor, with_grad: bool, keep_local: bool = False) -> torch.Tensor:
    """[world_size * rows, ...]: x of every rank, concatenated in rank order.

    ``with_grad`` keeps the autograd graph through the gather (like
    torch.distributed.nn.all_gather / lightly's GatherLayer). Without it, ``keep_local``
    puts this rank's own x (with its graph) in its slot, as open_clip does.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("gathering needs an initialized torch.distributed process group")
    if with_grad:
        import torch.distributed.nn.functional as dist_fn

        return torch.cat(list(dist_fn.all_gather(x)), dim=0)
    parts = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    if keep_local:
        parts[dist.get_rank()] = x
    return torch.cat(parts, dim=0)
