"""Functional forms of the losses: O((N + M) d) algebra around the core op.

Only :func:`contrastive_kernels.ops.lse` touches all N x M pairs; every other term here
(positive logits, counts, class sums) is computed from row-level quantities.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import ops


def unit_rows(x: torch.Tensor, normalize: bool, eps: float = 1e-12) -> torch.Tensor:
    """x (in the accumulation dtype), divided by max(||row||, eps) when ``normalize``."""
    x = x.to(ops.accumulate_dtype(x.dtype))
    if not normalize:
        return x
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(eps)


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


def supcon_loss(features: torch.Tensor, labels: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None, temperature: float = 0.07,
                contrast_mode: str = "all", base_temperature: float = 0.07, *,
                normalize: bool = False, eps: float = 1e-12, backend: Optional[str] = "auto"):
    """Supervised contrastive loss (Khosla et al.), SupContrast ``losses.py`` semantics.

    features: [bsz, n_views, ...] (extra dims flattened); labels: [bsz] or None; mask:
    [bsz, bsz] (mask[a, b] weighs sample b as a positive of anchor a) or None; neither
    gives SimCLR. Views are concatenated view-major; anchors are all N = bsz * n_views rows
    (``'all'``) or the first view (``'one'``). Each anchor's own row is excluded from its
    numerator and denominator; rows without positives contribute 0 and still count in the
    mean. ``normalize=True`` divides rows by max(||row||, eps) first (fused in the kernel).
    Returns a 0-dim loss in features' dtype.
    """
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if features.dim() < 3:
        raise ValueError("`features` needs to be [bsz, n_views, ...], at least 3 dimensions "
                         f"are required; got shape {tuple(features.shape)}")
    if features.dim() > 3:
        features = features.reshape(features.shape[0], features.shape[1], -1)
    if labels is not None and mask is not None:
        raise ValueError("Cannot define both `labels` and `mask`")
    if contrast_mode not in ("all", "one"):
        raise ValueError(f"Unknown mode: {contrast_mode!r} (contrast_mode must be 'all' or 'one')")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    bsz, n_views, dim = features.shape
    device = features.device
    if labels is not None:
        labels = labels.reshape(-1)
        if labels.shape[0] != bsz:
            raise ValueError(f"Num of labels does not match num of features: labels has "
                             f"{labels.shape[0]} entries, features has bsz = {bsz}")
        labels = labels.to(device)
    if mask is not None and tuple(mask.shape) != (bsz, bsz):
        raise ValueError(f"mask must be [bsz, bsz] = [{bsz}, {bsz}], got {tuple(mask.shape)}")

    contrast = features.transpose(0, 1).reshape(n_views * bsz, dim)  # view-major rows
    n_anchor_views = 1 if contrast_mode == "one" else n_views
    anchors = contrast[: n_anchor_views * bsz]
    lam = 1.0 / temperature

    # The denominator: every contrast row but the anchor itself (anchor i is contrast row i).
    lse, _ = ops.lse(anchors, contrast, lam, self_offset=0, normalize=normalize, eps=eps,
                     backend=backend)

    acc = lse.dtype
    q_hat = unit_rows(anchors, normalize, eps)
    k_hat = unit_rows(contrast, normalize, eps)
    self_logit = lam * (q_hat * k_hat[: q_hat.shape[0]]).sum(1)
    sample = torch.arange(q_hat.shape[0], device=device) % bsz  # batch index of each anchor

    # Positive term sum_j mask_ij s_ij and its weight count, without an N x N mask.
    if mask is not None:
        weights = mask.to(device=device, dtype=acc)
        per_sample = k_hat.view(n_views, bsz, dim).sum(0)            # sum over views, [bsz, d]
        positive_keys = (weights @ per_sample)[sample]
        self_weight = torch.diagonal(weights)[sample]
        pos_logit_sum = lam * (q_hat * positive_keys).sum(1) - self_weight * self_logit
        pos_count = n_views * weights.sum(1)[sample] - self_weight
    else:
        seg = label_segments(labels) if labels is not None else torch.arange(bsz, device=device)
        class_sums = torch.zeros(bsz, dim, dtype=acc, device=device)
        class_sums.index_add_(0, seg.repeat(n_views), k_hat)
        class_sizes = torch.zeros(bsz, dtype=acc, device=device).index_add_(
            0, seg, torch.ones(bsz, dtype=acc, device=device))
        anchor_seg = seg[sample]
        pos_logit_sum = lam * (q_hat * class_sums[anchor_seg]).sum(1) - self_logit
        pos_count = n_views * class_sizes[anchor_seg] - 1.0

    # sum_j mask_ij (s_ij - lse_i); a row with no positives (count 0) contributes 0 even
    # when its denominator is empty (lse = -inf), where the original would give NaN.
    weighted_log_prob = torch.where(pos_count == 0, torch.zeros_like(lse),
                                    pos_logit_sum - pos_count * lse)
    divisor = torch.where(pos_count < 1e-6, torch.ones_like(pos_count), pos_count)
    loss = -(temperature / base_temperature) * (weighted_log_prob / divisor)
    return loss.mean().to(features.dtype)
