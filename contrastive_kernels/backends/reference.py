"""Backend ``reference``: the core op written naively with differentiable PyTorch.

It materializes the N x M logits, so it is the oracle, never a choice of "auto". Its
gradients come from autograd, independent of the hand-derived backward formulas of the
fused backends, so it checks them.
"""

from __future__ import annotations

import math

import torch

from ..core.norms import row_norms
from .registry import Backend, OpPair


def _normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x / row_norms(x).clamp_min(eps)[:, None]


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


def masked_logits(q, k, scale, bias, q_labels, k_labels, self_offset, normalize, eps,
                  exclude_positives, compute_dtype=None):
    """(s [N, M] with excluded pairs -inf, k^) in the accumulation dtype, or every step in
    ``compute_dtype`` (the naive low-precision baseline that sets test tolerances)."""
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
    return s, kh


def lse_reference(q, k, scale, bias, q_labels, k_labels, self_offset, normalize, eps,
                  exclude_positives, return_o, compute_dtype=None):
    """Core op, naively: lse [N] and o [N, d] (or an empty tensor), in float32 / float64.

    ``compute_dtype`` runs every step in that dtype instead (the naive low-precision
    baseline that sets test tolerances).
    """
    s, kh = masked_logits(q, k, scale, bias, q_labels, k_labels, self_offset, normalize, eps,
                          exclude_positives, compute_dtype)
    # rows whose every key is excluded: lse = -inf, o = 0, and no NaN in the gradient
    empty = torch.isneginf(s).all(dim=1)
    s = torch.cat([s.masked_fill(empty[:, None], 0.0), s.new_zeros(s.shape[0], 1)], dim=1)
    s_keys = s[:, :-1]  # the zero column keeps logsumexp defined when M = 0
    lse = torch.logsumexp(s_keys if s_keys.shape[1] else s, dim=1).masked_fill(empty, -math.inf)
    if return_o:
        p = torch.softmax(s_keys, dim=1) if s_keys.shape[1] else s_keys
        o = (p @ kh).masked_fill(empty[:, None], 0.0).detach()
    else:
        o = q.new_empty((0,), dtype=s.dtype)
    return lse, o


def _masked_lse(s, dim):
    """log-sum-exp of s over ``dim``, -inf for an all -inf line, with no NaN gradient."""
    empty = torch.isneginf(s).all(dim=dim, keepdim=True)
    if s.shape[dim] == 0:  # -inf, still a function of q and k (a zero gradient)
        return s.sum(dim=dim) - math.inf
    out = torch.logsumexp(s.masked_fill(empty, 0.0), dim=dim, keepdim=True)
    return out.masked_fill(empty, -math.inf).squeeze(dim)


def two_sided_lse_reference(q, k, scale, bias, q_labels, k_labels, self_offset, normalize, eps,
                            exclude_positives, compute_dtype=None):
    """Two-sided core op, naively: row_lse [N] over each row's keys and col_lse [M] over
    each key's rows, both over the same pairs (those outside the excluded set)."""
    s, _ = masked_logits(q, k, scale, bias, q_labels, k_labels, self_offset, normalize, eps,
                         exclude_positives, compute_dtype)
    return _masked_lse(s, 1), _masked_lse(s, 0)


def positive_mask(n, m, self_offset, q_labels, k_labels, device):
    """Dense [n, m] bool mask of the positive pairs of ``pairwise_sigmoid``: (i, i +
    self_offset) and, when both label tensors are given, the pairs with equal labels."""
    positive = excluded_mask(n, m, self_offset, None, None, False, device)
    if q_labels is not None and k_labels is not None:
        positive |= q_labels[:, None] == k_labels[None, :]
    return positive


def pairwise_sigmoid_reference(q, k, scale, bias, q_labels, k_labels, self_offset, normalize,
                               eps, compute_dtype=None):
    """Pairwise sigmoid op, naively: row_loss_i = sum_j softplus(-z_ij s_ij) [N], z = +1 on
    the positive pairs and -1 elsewhere; differentiable in q, k, scale and bias."""
    s, _ = masked_logits(q, k, scale, bias, None, None, None, normalize, eps, False,
                         compute_dtype)
    positive = positive_mask(q.shape[0], k.shape[0], self_offset, q_labels, k_labels, q.device)
    z = torch.where(positive, 1.0, -1.0).to(s.dtype)
    return -torch.nn.functional.logsigmoid(z * s).sum(dim=1)


BACKEND = Backend(
    name="reference",
    ops={"lse": OpPair(lse_reference), "two_sided_lse": OpPair(two_sided_lse_reference),
         "pairwise_sigmoid": OpPair(pairwise_sigmoid_reference)},
    description="naive PyTorch, materializes N x M; the oracle (never picked by auto)",
    devices=("cpu", "cuda", "xpu", "mps"),
    deterministic=False,  # index_put / softmax backward on CUDA may not be
)
