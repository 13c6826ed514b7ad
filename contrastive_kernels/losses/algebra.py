"""The O((N + M) d) algebra the losses share around the core op, and their argument checks.

Conventions of every loss: each N x M quantity goes through ``ops.lse`` (the core op);
everything else is row-level algebra in the accumulation dtype (float32, float64 for
float64 inputs); losses come back in the inputs' dtype.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .. import distributed, ops
from ..core.contract import accumulate_dtype, check_real_scalar, check_rows_tensor  # noqa: F401
from ..core.norms import row_norms

LOG_1E_12 = math.log(1e-12)


# --------------------------------------------------------------------------- row algebra


def result_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a loss returns: its inputs' dtype, but fp32 (the accumulation dtype) under
    torch.autocast, as the published losses return under autocast."""
    if torch.is_autocast_enabled(x.device.type):
        return accumulate_dtype(x.dtype)
    return x.dtype


def unit_rows(x: torch.Tensor, normalize: bool, eps: float = 1e-12) -> torch.Tensor:
    """x (in the accumulation dtype), divided by max(||row||, eps) when ``normalize``."""
    x = x.to(accumulate_dtype(x.dtype))
    if not normalize:
        return x
    return x / row_norms(x).clamp_min(eps)[:, None]


def rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(dim=1)


def label_segments(labels: torch.Tensor) -> torch.Tensor:
    """Dense ids in [0, len(labels)) with equal ids for equal labels.

    Sort-based, so no data-dependent output size and no host-device sync (unlike
    torch.unique); ids need not be consecutive, only consistent.
    """
    order = torch.argsort(labels)
    sorted_labels = labels[order]
    starts = torch.ones_like(sorted_labels, dtype=torch.long)
    starts[1:] = (sorted_labels[1:] != sorted_labels[:-1]).long()
    seg_sorted = torch.cumsum(starts, 0) - 1
    seg = torch.empty_like(seg_sorted)
    seg[order] = seg_sorted
    return seg


def scatter_add_rows(idx: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """out[idx[r]] += rows[r] into n zeroed rows, in the same order on every run.

    index_add_ is sequential over idx on the CPU; on CUDA it adds with atomics in a varying
    order, while index_put_(accumulate=True) sorts first. (Advanced-indexing backward,
    index_put_ on the CPU, adds from several threads in a varying order.)
    """
    out = rows.new_zeros((n,) + tuple(rows.shape[1:]))
    if rows.device.type == "cpu":
        return out.index_add_(0, idx, rows)
    return out.index_put_((idx,), rows, accumulate=True)


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, idx):
        ctx.save_for_backward(idx)
        ctx.rows = table.shape[0]
        return table.index_select(0, idx)

    @staticmethod
    def backward(ctx, grad):
        (idx,) = ctx.saved_tensors
        return scatter_add_rows(idx, grad, ctx.rows), None


def gather_rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """table[idx] whose gradient is summed in a fixed order (bitwise repeatable)."""
    return _GatherRows.apply(table, idx)


def segment_sums(seg: torch.Tensor, rows: torch.Tensor, num_segments: int):
    """(sum of the rows, number of rows) per segment id in [0, num_segments)."""
    sums = _ScatterRows.apply(seg, rows, num_segments)
    counts = scatter_add_rows(seg, rows.new_ones(seg.shape[0]), num_segments)
    return sums, counts


class _ScatterRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, idx, rows, n):
        ctx.save_for_backward(idx)
        return scatter_add_rows(idx, rows, n)

    @staticmethod
    def backward(ctx, grad):
        (idx,) = ctx.saved_tensors
        return None, grad.index_select(0, idx), None


def reduce(per_row: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_row.mean()
    if reduction == "sum":
        return per_row.sum()
    if reduction == "none":
        return per_row
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def logaddexp_safe(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """logaddexp whose gradient stays finite when both sides are -inf (empty key sets)."""
    both_empty = torch.isneginf(a) & torch.isneginf(b)
    out = torch.logaddexp(a.masked_fill(both_empty, 0.0), b.masked_fill(both_empty, 0.0))
    return out.masked_fill(both_empty, -math.inf)


def lse_union(parts):
    """Combine (lse_a, o_a), (lse_b, o_b), ... over disjoint key sets into one (lse, o)."""
    lses = [p[0] for p in parts]
    lse = lses[0]
    for other in lses[1:]:
        lse = logaddexp_safe(lse, other)
    if parts[0][1] is None:
        return lse, None
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    o = None
    for part_lse, part_o in parts:
        w = torch.exp(part_lse - safe).masked_fill(~torch.isfinite(lse), 0.0)
        o = w[:, None] * part_o if o is None else o + w[:, None] * part_o
    return lse, o


# --------------------------------------------------------------------------- checks


def check_matrix(name: str, x, *, rows: Optional[int] = None, dim: Optional[int] = None):
    check_rows_tensor(name, x)
    if rows is not None and x.shape[0] != rows:
        raise ValueError(f"{name} must have {rows} rows, got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} must have feature size d = {dim}, got shape {tuple(x.shape)}")


def check_same(name0: str, x0, name1: str, x1):
    if x0.dtype != x1.dtype:
        raise TypeError(f"{name0} and {name1} must share a dtype, got {x0.dtype} and {x1.dtype}")
    if x0.device != x1.device:
        raise ValueError(f"{name0} and {name1} must be on one device, got {x0.device} and {x1.device}")


def check_pair(name0: str, x0, name1: str, x1):
    """Two [B, d] tensors of the same shape, dtype and device."""
    check_matrix(name0, x0)
    check_matrix(name1, x1)
    if x0.shape != x1.shape:
        raise ValueError(f"{name0} and {name1} must have the same shape, got {tuple(x0.shape)} "
                         f"and {tuple(x1.shape)}")
    check_same(name0, x0, name1, x1)


def check_on(name: str, t, device: torch.device, of: str, movable: bool = False) -> None:
    """t is on ``device`` (the device of ``of``). ``movable``: the published loss moves it
    there itself (labels, masks, a class prior: ``.to(device)``), so any device it can be
    copied from will do, but not the meta device, which holds no data."""
    if not isinstance(t, torch.Tensor) or t.device == device:
        return
    if movable and t.device.type != "meta":
        return
    if movable:
        raise ValueError(f"{name} must be on {device} (the device of {of}) or on a device it can "
                         f"be moved from, got {t.device}, which holds no data")
    raise ValueError(f"{name} must be on {device} (the device of {of}), got {t.device}")


def check_labels(name: str, labels: torch.Tensor, rows: int) -> torch.Tensor:
    """labels as a flat integer tensor of ``rows`` entries (float labels would be truncated
    in one place and compared exactly in another; NaN labels would equal nothing)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer class ids, got "
                        f"{type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of class ids, got {labels.dtype}")
    labels = labels.reshape(-1)
    if labels.shape[0] != rows:
        raise ValueError(f"{name} must have one entry per sample ({rows}), got {labels.shape[0]}")
    return labels


def check_in_range(name: str, ids: torch.Tensor, high: int) -> None:
    """ids in [0, high): an eager ValueError on the CPU; on other devices a device-side
    assert, so no host sync is added (skipped while torch.compile traces)."""
    if torch.compiler.is_compiling() or ids.numel() == 0:
        return
    if ids.device.type == "cpu":
        low, top = int(ids.min()), int(ids.max())
        if low < 0 or top >= high:
            raise ValueError(f"{name} must be class ids in [0, num_classes = {high}), got values "
                             f"in [{low}, {top}]")
    else:
        torch._assert_async(((ids >= 0) & (ids < high)).all(),
                            f"{name} must be class ids in [0, num_classes = {high})")


def check_gather_available(gather_distributed: bool, distributed_mode: str = "gather"):
    if gather_distributed and not torch.distributed.is_available():
        raise ValueError("gather_distributed is True but torch.distributed is not available")
    if distributed_mode not in distributed.MODES:
        raise ValueError(f"distributed_mode must be one of {distributed.MODES}, got "
                         f"{distributed_mode!r}")


def check_process_group(rank: int, world_size: int) -> None:
    """open_clip's explicit ``rank`` / ``world_size`` are the default process group's."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise RuntimeError(f"world_size = {world_size} needs an initialized torch.distributed "
                           "process group (torch.distributed.init_process_group)")
    got = distributed.world()
    if (world_size, rank) != got:
        raise ValueError(f"rank / world_size must be the process group's: got rank {rank} of "
                         f"world_size {world_size}, the process group has rank {got[1]} of "
                         f"{got[0]}")


def lse_over_ranks(q, k, scale, world: int, mode: str, **kw):
    """The lse of q over k (the core op) or, when world > 1, over every rank's k
    (:func:`contrastive_kernels.distributed.lse` in ``mode``)."""
    if world > 1:
        return distributed.lse(q, k, scale, mode=mode, **kw)
    return ops.lse(q, k, scale, **kw)[0]


def two_sided_over_ranks(q, k, scale, world: int, mode: str, **kw):
    """(row_lse, col_lse) of the two-sided core op or, when world > 1, of q over every
    rank's k and of k over every rank's q (:func:`contrastive_kernels.distributed.two_sided_lse`)."""
    if world > 1:
        return distributed.two_sided_lse(q, k, scale, mode=mode, **kw)
    return ops.two_sided_lse(q, k, scale, **kw)


def mean_over_ranks(losses: torch.Tensor, world: int, total=None) -> torch.Tensor:
    """The mean of ``losses`` or, when world > 1, this rank's share of the mean over every
    rank's rows (:func:`contrastive_kernels.distributed.mean_share`; ``total``: the global
    row count when the caller has it)."""
    if world > 1:
        return distributed.mean_share(losses, world, total=total)
    return losses.mean()


def check_positive(name: str, value):
    if isinstance(value, torch.Tensor):
        return
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
