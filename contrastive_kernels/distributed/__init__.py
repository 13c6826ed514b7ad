"""The distributed layer: the core ops over every rank's keys (:mod:`.ops`: ``lse``,
``two_sided_lse``, ``pairwise_sigmoid``, by gather or ring), the class sums and row
gathers the losses build on (:mod:`.class_sums`), and the queue losses' enqueue
(:func:`concat_all_gather`).

Gathers with gradient use torch's functional collectives (``all_gather_single``, whose
backward is a reduce-scatter; ``all_gather_tensor_autograd`` on torch releases before it),
not the deprecated ``torch.distributed.nn.functional.all_gather``. Row counts may differ
between ranks: every gather first exchanges them (one host sync of world_size integers).
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
                         replicated, row_counts)
from .ops import MODES, lse, pairwise_sigmoid, two_sided_lse  # noqa: E402  (the core ops)
