"""Drop-ins for pytorch-metric-learning's ``SupConLoss`` and ``NTXentLoss``, fused.

PML calls ``loss_fn(embeddings, labels=None, indices_tuple=None, ref_emb=None,
ref_labels=None)``. It builds an N x M cosine-similarity matrix and masks of its positive
and negative pairs. Here the same values come without N x M memory:

- **Pairs.** Without ``indices_tuple``, every (anchor, reference) pair is positive (equal
  labels) or negative. The pair (i, i) is dropped when the reference labels are the labels
  themselves (PML's test is ``ref_labels is labels``, so this also holds when ``ref_emb``
  is None). With a miner's ``indices_tuple`` (pairs (a1, p, a2, n) or triplets
  (a, p, n)), only those pairs count, as a sparse list: O(pairs) memory, never a mask.
- **SupConLoss** (temperature 0.1): L_i = -(sum_{p in P(i)} s_ip - |P(i)| D_i) / |P(i)|,
  where D_i is the logsumexp over i's positive and negative pairs and s is the cosine
  similarity / T. Dense: D is the core op over every reference row but (i, i), and the
  positive sum is a class sum. PML's ``AvgNonZeroReducer`` averages the L_i > 0.
- **NTXentLoss** (temperature 0.07): per positive pair (a, p),
  softplus(N_a - s_ap) = -log(e^{s_ap} / (e^{s_ap} + sum_{n in neg(a)} e^{s_an})), where
  N_a is the logsumexp over a's negatives. Dense: N is the core op with the same-label
  keys excluded. The positive pairs are summed class by class in row tiles, recomputed in
  the backward (torch.utils.checkpoint), so memory is one tile: PML's positives x
  negatives matrix (its issues 203, 547, 604) never exists. Mean over the positive pairs.
- Both return PML's zero loss (``sum(embeddings * 0)``) when the batch holds no positive
  pair or no negative pair.

PML's ``+ finfo.tiny`` inside its logarithms is left out, so values agree to rounding.
Options PML has and this does not (another ``distance``, ``reducer``, an
``embedding_regularizer``) raise, naming the option.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import ops
from .core.contract import check_rows_tensor
from .losses.algebra import (check_labels, check_positive, gather_rows,
                             segment_sums, unit_rows)

_TILE = 2 ** 20  # logits per tile of the positive-pair sums


class _PMLLoss(nn.Module):
    """The PML call and its checks; subclasses compute the dense and the sparse loss."""

    _reducer = ""

    def __init__(self, temperature: float, *, backend: Optional[str] = "auto", **kwargs):
        super().__init__()
        check_positive("temperature", temperature)
        for name, value in kwargs.items():
            if not _is_default(name, value, self._reducer):
                raise ValueError(
                    f"{type(self).__name__}: option {name}={value!r} is not supported (the fused "
                    f"loss is PML's with CosineSimilarity and {self._reducer}; use "
                    "pytorch_metric_learning for other settings)")
        self.temperature = temperature
        self.backend = backend

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None,
                ref_labels=None):
        check_rows_tensor("embeddings", embeddings)
        if labels is None and indices_tuple is None:
            raise ValueError("labels and indices_tuple cannot both be None (pass labels, or "
                             "a miner's indices_tuple)")
        # PML drops the pairs (i, i) when its reference labels are the labels object itself:
        # no ref_emb, or a ref_emb with ref_labels None or ref_labels given as labels
        same = ref_emb is None or ref_labels is None or ref_labels is labels
        if ref_emb is None:
            ref_emb = embeddings
        check_rows_tensor("ref_emb", ref_emb)
        if ref_emb.shape[1] != embeddings.shape[1]:
            raise ValueError(f"ref_emb must have d = {embeddings.shape[1]}, got shape "
                             f"{tuple(ref_emb.shape)}")
        if labels is not None:
            labels = check_labels("labels", labels, embeddings.shape[0]).to(embeddings.device)
        if same:
            if labels is not None and ref_emb.shape[0] != embeddings.shape[0]:
                raise ValueError(f"ref_emb has {ref_emb.shape[0]} rows: pass ref_labels (the "
                                 f"labels are those of the {embeddings.shape[0]} embeddings)")
            ref_labels = labels
        else:
            ref_labels = check_labels("ref_labels", ref_labels, ref_emb.shape[0]).to(
                ref_emb.device)
        lam = 1.0 / self.temperature
        q = unit_rows(embeddings, True)
        k = q if ref_emb is embeddings else unit_rows(ref_emb, True)
        if indices_tuple is None:
            loss = self._dense(embeddings, ref_emb, q, k, labels, ref_labels, same, lam)
        else:
            pairs = _pairs(indices_tuple, q.shape[0], k.shape[0])
            # PML: a tuple of at most one index per tensor is a zero loss
            loss = None if all(x.numel() <= 1 for x in pairs) else self._sparse(q, k, pairs, lam)
        if loss is None:  # no positive or no negative pair: PML's zero loss
            return (embeddings * 0).sum()
        return loss.to(embeddings.dtype)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, backend={self.backend!r}"


def _is_default(name, value, reducer) -> bool:
    """PML's defaults of these losses: CosineSimilarity, their reducer, no regularizer."""
    if value is None and name in ("reducer", "embedding_regularizer", "distance"):
        return True
    if name == "distance":
        return type(value).__name__ == "CosineSimilarity" and value.power == 1
    if name == "reducer":
        return type(value).__name__ == reducer
    if name == "collect_stats":
        return True
    return False


def _pairs(indices_tuple, n, m):
    """(a1, p, a2, n) index tensors (triplets become pairs, as PML's convert_to_pairs)."""
    if not isinstance(indices_tuple, (tuple, list)) or len(indices_tuple) not in (3, 4):
        raise ValueError("indices_tuple must be (anchors, positives, negatives) triplets or "
                         f"(a1, p, a2, n) pairs, got {type(indices_tuple).__name__} of "
                         f"{len(indices_tuple) if isinstance(indices_tuple, (tuple, list)) else '?'}")
    if len(indices_tuple) == 3:
        a, p, neg = indices_tuple
        indices_tuple = (a, p, a, neg)
    out = []
    for name, idx, high in zip(("a1", "p", "a2", "n"), indices_tuple, (n, m, n, m)):
        if not isinstance(idx, torch.Tensor) or idx.dim() != 1 or idx.is_floating_point():
            raise ValueError(f"indices_tuple's {name} must be a 1-D integer tensor")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= high):
            raise ValueError(f"indices_tuple's {name} must index [0, {high}), got values in "
                             f"[{int(idx.min())}, {int(idx.max())}]")
        out.append(idx.long())
    if out[0].shape != out[1].shape or out[2].shape != out[3].shape:
        raise ValueError("indices_tuple: a1 and p, and a2 and n, must have the same length")
    return out


def _pair_logits(q, k, rows, cols, lam):
    """lam <q_rows[t], k_cols[t]> for each listed pair, in chunks (O(pairs) memory)."""
    chunk = max(1, _TILE // max(q.shape[1], 1))
    parts = [checkpoint(lambda r, c: lam * (q[r] * k[c]).sum(1), rows[s:s + chunk],
                        cols[s:s + chunk], use_reentrant=False)
             for s in range(0, rows.shape[0], chunk)]
    return torch.cat(parts) if parts else q.new_zeros(0)


def _lse_by_row(values, rows, n):
    """Per row r in [0, n): logsumexp of the ``values`` whose row is r (-inf where none)."""
    top = torch.full((n,), float("-inf"), dtype=values.dtype, device=values.device)
    top = top.scatter_reduce(0, rows, values.detach(), "amax")
    shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = torch.zeros_like(top).index_add(0, rows, torch.exp(values - shift[rows]))
    seen = total > 0
    return torch.where(seen, torch.log(torch.where(seen, total, torch.ones_like(total)))
                       + shift, torch.full_like(total, float("-inf")))


def _unique_pairs(rows, cols, m):
    codes = torch.unique(rows * m + cols)
    return codes // m, codes % m


class SupConLoss(_PMLLoss):
    """pytorch-metric-learning's ``SupConLoss(temperature=0.1)``, fused (module docstring):
    ``forward(embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None)``."""

    _reducer = "AvgNonZeroReducer"

    def __init__(self, temperature: float = 0.1, *, backend: Optional[str] = "auto",
                 **kwargs):
        super().__init__(temperature, backend=backend, **kwargs)

    def _dense(self, embeddings, ref_emb, q, k, labels, ref_labels, same, lam):
        seg_q, seg_k, classes = _shared_segments(labels, ref_labels)
        sums, sizes = segment_sums(seg_k, k, classes)
        positives = sizes[seg_q] - (1.0 if same else 0.0)
        if _no_pairs(int(positives.sum()), int((k.shape[0] - sizes[seg_q]).sum())):
            return None
        lse, _ = ops.lse(embeddings, ref_emb, lam, self_offset=0 if same else None,
                         normalize=True, backend=self.backend)
        pos_sum = lam * (q * gather_rows(sums, seg_q)).sum(1)
        if same:
            pos_sum = pos_sum - lam * (q * k).sum(1)
        return _avg_non_zero(-(pos_sum - positives * torch.where(
            positives > 0, lse, torch.zeros_like(lse))) / torch.clamp(positives, min=1.0))

    def _sparse(self, q, k, pairs, lam):
        a1, p, a2, n = pairs
        m = k.shape[0]
        a1, p = _unique_pairs(a1, p, m)  # PML marks a mask: a pair counts once
        a2, n = _unique_pairs(a2, n, m)
        if a1.numel() == 0 or a2.numel() == 0:
            return None
        if torch.isin(a1 * m + p, a2 * m + n).any():
            raise ValueError("indices_tuple: each pair must be either positive or negative")
        s_pos, s_neg = _pair_logits(q, k, a1, p, lam), _pair_logits(q, k, a2, n, lam)
        lse = _lse_by_row(torch.cat([s_pos, s_neg]), torch.cat([a1, a2]), q.shape[0])
        count = torch.zeros(q.shape[0], dtype=q.dtype, device=q.device).index_add(
            0, a1, torch.ones_like(s_pos))
        pos_sum = torch.zeros_like(count).index_add(0, a1, s_pos)
        safe = torch.where(count > 0, lse, torch.zeros_like(lse))
        return _avg_non_zero(-(pos_sum - count * safe) / torch.clamp(count, min=1.0))


def _no_pairs(p: int, n: int) -> bool:
    """PML's zero loss for ``p`` positive and ``n`` negative pairs: none of either, or at
    most one of each (its all-pairs tuple then holds at most one index per tensor)."""
    return p == 0 or n == 0 or (p <= 1 and n <= 1)


def _shared_segments(labels, ref_labels):
    """(segment of each label, of each reference label, number of segments) in the sorted
    union of both label sets."""
    space = torch.unique(torch.cat([labels, ref_labels]))
    return (torch.searchsorted(space, labels), torch.searchsorted(space, ref_labels),
            space.numel())


def _avg_non_zero(losses):
    """PML's AvgNonZeroReducer: the mean of the losses above 0 (0 when none is)."""
    keep = losses > 0
    return torch.where(keep, losses, torch.zeros_like(losses)).sum() / keep.sum().clamp(min=1)


class NTXentLoss(_PMLLoss):
    """pytorch-metric-learning's ``NTXentLoss(temperature=0.07)``, fused (module docstring):
    ``forward(embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None)``."""

    _reducer = "MeanReducer"

    def __init__(self, temperature: float = 0.07, *, backend: Optional[str] = "auto",
                 **kwargs):
        super().__init__(temperature, backend=backend, **kwargs)

    def _dense(self, embeddings, ref_emb, q, k, labels, ref_labels, same, lam):
        neg, _ = ops.lse(embeddings, ref_emb, lam, q_labels=labels, k_labels=ref_labels,
                         exclude_positives=True, normalize=True, backend=self.backend)
        total, count, negatives = _positive_softplus(q, k, labels, ref_labels, neg, lam, same)
        if _no_pairs(count, negatives):
            return None
        return total / count

    def _sparse(self, q, k, pairs, lam):
        a1, p, a2, n = pairs  # every listed pair counts, repeats too (PML's n_per_p)
        if a1.numel() == 0 or a2.numel() == 0:
            return None
        neg = _lse_by_row(_pair_logits(q, k, a2, n, lam), a2, q.shape[0])
        s_pos = _pair_logits(q, k, a1, p, lam)
        return torch.nn.functional.softplus(neg[a1] - s_pos).mean()


def _positive_softplus(q, k, labels, ref_labels, neg, lam, same):
    """(sum over the positive pairs (a, p) of softplus(neg_a - lam <q_a, k_p>), their
    count, the number of negative pairs): class by class, row tiles recomputed in the
    backward. One host read of the class sizes."""
    seg_q, seg_k, classes = _shared_segments(labels, ref_labels)
    order_q, order_k = torch.argsort(seg_q, stable=True), torch.argsort(seg_k, stable=True)
    n_q = torch.bincount(seg_q, minlength=classes).tolist()
    n_k = torch.bincount(seg_k, minlength=classes).tolist()
    negatives = sum(a * (k.shape[0] - b) for a, b in zip(n_q, n_k))
    total, count = q.new_zeros(()), 0
    start_q = start_k = 0
    for rows, cols in zip(n_q, n_k):
        idx_q, idx_k = order_q[start_q:start_q + rows], order_k[start_k:start_k + cols]
        start_q, start_k = start_q + rows, start_k + cols
        if not rows or not cols:
            continue
        tile = max(1, _TILE // cols)
        for s in range(0, rows, tile):
            total = total + checkpoint(_tile_softplus, q, k, neg, idx_q[s:s + tile], idx_k,
                                       lam, same, use_reentrant=False)
        count += rows * cols
    if same:
        count -= labels.shape[0]  # the pairs (i, i)
    return total, count, negatives


def _tile_softplus(q, k, neg, idx_q, idx_k, lam, same):
    logits = lam * q[idx_q] @ k[idx_k].T
    val = torch.nn.functional.softplus(neg[idx_q, None] - logits)
    if same:
        val = val.masked_fill(idx_q[:, None] == idx_k[None, :], 0.0)
    return val.sum()


__all__ = ["SupConLoss", "NTXentLoss"]
