"""The oracle: naive implementations that materialize every N x M matrix.

Two kinds of thing live here:

- :func:`lse_reference`, the core op written with plain differentiable PyTorch (backend
  ``reference``). Its gradients come from autograd, independent of the hand-derived
  backward formulas of the fused backends, so it checks them.
- Faithful re-implementations of the published losses, following the original code's
  formulation step by step (our own code; see each function for its source). They run in
  the dtype they are given, so the same function is the float64 oracle and the "naive loss
  in this dtype" that sets the tolerance of the low-precision tests.
"""

from __future__ import annotations

import math

import torch

from . import backends


def _normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(eps)


def excluded_mask(n, m, self_offset, q_labels, k_labels, exclude_positives, device):
    """Dense [n, m] bool mask of the (row, key) pairs outside A(i)."""
    excluded = torch.zeros(n, m, dtype=torch.bool, device=device)
    if self_offset is not None:
        i = torch.arange(n, device=device)
        j = i + self_offset
        keep = (j >= 0) & (j < m)
        excluded[i[keep], j[keep]] = True
    if exclude_positives:
        excluded |= q_labels[:, None] == k_labels[None, :]
    return excluded


def lse_reference(q, k, scale, bias, q_labels, k_labels, self_offset, normalize, eps,
                  exclude_positives, return_o, compute_dtype=None):
    """Core op, naively: lse [N] and o [N, d] (or an empty tensor), in float32 / float64.

    ``compute_dtype`` runs every step in that dtype instead (the naive low-precision
    baseline that sets test tolerances).
    """
    acc = compute_dtype or (torch.float64 if q.dtype == torch.float64 else torch.float32)
    qh, kh = q.to(acc), k.to(acc)
    if normalize:
        qh, kh = _normalize(qh, eps), _normalize(kh, eps)
    s = scale.to(acc) * (qh @ kh.T)
    if bias is not None:
        s = s + bias.to(acc)
    excluded = excluded_mask(q.shape[0], k.shape[0], self_offset, q_labels, k_labels,
                             exclude_positives, q.device)
    s = s.masked_fill(excluded, -math.inf)
    # rows whose every key is excluded: lse = -inf, o = 0, and no NaN in the gradient
    empty = torch.isneginf(s).all(dim=1)
    s = torch.cat([s.masked_fill(empty[:, None], 0.0), s.new_zeros(s.shape[0], 1)], dim=1)
    s_keys = s[:, :-1]  # the zero column keeps logsumexp defined when M = 0
    lse = torch.logsumexp(s_keys if s_keys.shape[1] else s, dim=1).masked_fill(empty, -math.inf)
    if return_o:
        p = torch.softmax(s_keys, dim=1) if s_keys.shape[1] else s_keys
        o = (p @ kh).masked_fill(empty[:, None], 0.0).detach()
    else:
        o = q.new_empty((0,), dtype=acc)
    return lse, o


BACKEND = backends.Backend(
    name="reference",
    forward=lse_reference,
    unavailable_reason=lambda: None,
    rejects=lambda q, k, opts: None,
    auto_devices=(),
    description="naive PyTorch, materializes N x M; the oracle (never picked by auto)",
)


# --------------------------------------------------------------------------- SupCon


def supcon_loss_reference(features, labels=None, mask=None, temperature=0.07,
                          contrast_mode="all", base_temperature=0.07):
    """SupContrast ``losses.py`` SupConLoss.forward, formulated as the original does.

    features [bsz, n_views, ...]; the dense [N, N] logits, masks and log-probabilities are
    all materialized, in features' dtype. Rows without positives contribute 0 and count
    in the mean (the original's ``mask_pos_pairs`` guard).
    """
    device = features.device
    if features.dim() < 3:
        raise ValueError("`features` needs to be [bsz, n_views, ...], at least 3 dimensions are required")
    if features.dim() > 3:
        features = features.reshape(features.shape[0], features.shape[1], -1)
    batch_size = features.shape[0]
    if labels is not None and mask is not None:
        raise ValueError("Cannot define both `labels` and `mask`")
    if labels is None and mask is None:
        mask = torch.eye(batch_size, dtype=features.dtype, device=device)
    elif labels is not None:
        labels = labels.contiguous().view(-1, 1)
        if labels.shape[0] != batch_size:
            raise ValueError("Num of labels does not match num of features")
        mask = torch.eq(labels, labels.T).to(features.dtype).to(device)
    else:
        mask = mask.to(features.dtype).to(device)

    contrast_count = features.shape[1]
    contrast_feature = torch.cat(torch.unbind(features, dim=1), dim=0)
    if contrast_mode == "one":
        anchor_feature, anchor_count = features[:, 0], 1
    elif contrast_mode == "all":
        anchor_feature, anchor_count = contrast_feature, contrast_count
    else:
        raise ValueError(f"Unknown mode: {contrast_mode}")

    anchor_dot_contrast = torch.div(anchor_feature @ contrast_feature.T, temperature)
    logits_max, _ = torch.max(anchor_dot_contrast, dim=1, keepdim=True)
    logits = anchor_dot_contrast - logits_max.detach()

    mask = mask.repeat(anchor_count, contrast_count)
    logits_mask = torch.scatter(
        torch.ones_like(mask), 1,
        torch.arange(batch_size * anchor_count, device=device).view(-1, 1), 0)
    mask = mask * logits_mask

    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))

    mask_pos_pairs = mask.sum(1)
    mask_pos_pairs = torch.where(mask_pos_pairs < 1e-6, torch.ones_like(mask_pos_pairs), mask_pos_pairs)
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask_pos_pairs

    loss = -(temperature / base_temperature) * mean_log_prob_pos
    return loss.view(anchor_count, batch_size).mean()
