"""Functional forms of the losses: O((N + M) d) algebra around the core op.

Only :func:`contrastive_kernels.ops.lse` touches all N x M pairs; every other term here
(positive logits, counts, class sums) is computed from row-level quantities.
"""

from __future__ import annotations

import math
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


def segment_sums(seg: torch.Tensor, rows: torch.Tensor, num_segments: int):
    """(sum of the rows, number of rows) per segment id in [0, num_segments)."""
    sums = rows.new_zeros(num_segments, rows.shape[1]).index_add_(0, seg, rows)
    counts = rows.new_zeros(num_segments).index_add_(0, seg, rows.new_ones(seg.shape[0]))
    return sums, counts


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
    k_hat = unit_rows(contrast, normalize, eps)
    q_hat = k_hat[: anchors.shape[0]]  # anchors are the first rows of contrast
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
        class_sums, class_sizes = segment_sums(seg.repeat(n_views), k_hat, bsz)  # over all views
        anchor_seg = seg[sample]
        pos_logit_sum = lam * (q_hat * class_sums[anchor_seg]).sum(1) - self_logit
        pos_count = class_sizes[anchor_seg] - 1.0

    # sum_j mask_ij (s_ij - lse_i); a row with no positives (count 0) contributes 0 even
    # when its denominator is empty (lse = -inf), where the original would give NaN.
    weighted_log_prob = torch.where(pos_count == 0, torch.zeros_like(lse),
                                    pos_logit_sum - pos_count * lse)
    divisor = torch.where(pos_count < 1e-6, torch.ones_like(pos_count), pos_count)
    loss = -(temperature / base_temperature) * (weighted_log_prob / divisor)
    return loss.mean().to(features.dtype)


# =========================================================================== shared helpers
#
# Conventions of the losses below: every N x M quantity goes through ops.lse (the core op);
# everything else is row-level algebra in the accumulation dtype (float32, float64 for
# float64 inputs). Losses come back in the inputs' dtype, like supcon_loss.

_LOG_1E_12 = math.log(1e-12)


def _check_matrix(name: str, x, *, rows: Optional[int] = None, dim: Optional[int] = None):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [rows, d], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if rows is not None and x.shape[0] != rows:
        raise ValueError(f"{name} must have {rows} rows, got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} must have feature size d = {dim}, got shape {tuple(x.shape)}")


def _check_pair(name0: str, x0, name1: str, x1):
    """Two [B, d] tensors of the same shape, dtype and device."""
    _check_matrix(name0, x0)
    _check_matrix(name1, x1)
    if x0.shape != x1.shape:
        raise ValueError(f"{name0} and {name1} must have the same shape, got {tuple(x0.shape)} "
                         f"and {tuple(x1.shape)}")
    _check_same(name0, x0, name1, x1)


def _check_same(name0: str, x0, name1: str, x1):
    if x0.dtype != x1.dtype:
        raise TypeError(f"{name0} and {name1} must share a dtype, got {x0.dtype} and {x1.dtype}")
    if x0.device != x1.device:
        raise ValueError(f"{name0} and {name1} must be on one device, got {x0.device} and {x1.device}")


def _check_positive(name: str, value):
    if isinstance(value, torch.Tensor):
        return
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(dim=1)


def _reduce(per_row: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_row.mean()
    if reduction == "sum":
        return per_row.sum()
    if reduction == "none":
        return per_row
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _logaddexp_safe(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """logaddexp whose gradient stays finite when both sides are -inf (empty key sets)."""
    both_empty = torch.isneginf(a) & torch.isneginf(b)
    out = torch.logaddexp(a.masked_fill(both_empty, 0.0), b.masked_fill(both_empty, 0.0))
    return out.masked_fill(both_empty, -math.inf)


def _lse_union(parts):
    """Combine (lse_a, o_a), (lse_b, o_b), ... over disjoint key sets into one (lse, o)."""
    lses = [p[0] for p in parts]
    lse = lses[0]
    for other in lses[1:]:
        lse = _logaddexp_safe(lse, other)
    if parts[0][1] is None:
        return lse, None
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    o = None
    for part_lse, part_o in parts:
        w = torch.exp(part_lse - safe).masked_fill(~torch.isfinite(lse), 0.0)
        o = w[:, None] * part_o if o is None else o + w[:, None] * part_o
    return lse, o


def _world():
    """(world_size, rank) of the default process group, or (1, 0) outside torch.distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _gather(x: torch.Tensor, with_grad: bool) -> list:
    """all_gather over the default group; with_grad keeps the autograd graph (like
    torch.distributed.nn.all_gather / lightly's GatherLayer)."""
    import torch.distributed as dist

    if with_grad:
        import torch.distributed.nn.functional as dist_fn

        return list(dist_fn.all_gather(x))
    parts = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return parts


# =========================================================================== PaCo / GPaCo


def class_prior(cls_num_list, num_classes: int, device=None) -> torch.Tensor:
    """cls_num_list / sum (PaCo's ``cal_weight_for_classes``), float64 [num_classes]."""
    counts = torch.as_tensor(cls_num_list, dtype=torch.float64, device=device).reshape(-1)
    if counts.numel() != num_classes:
        raise ValueError(f"cls_num_list must have num_classes = {num_classes} entries, "
                         f"got {counts.numel()}")
    if bool((counts < 0).any()) or not float(counts.sum()) > 0:
        raise ValueError("cls_num_list must hold non-negative counts with a positive sum")
    return counts / counts.sum()


def _parametric_contrastive(features, labels, sup_logits, n_anchors, *, alpha, beta, gamma,
                            supt, temperature, base_temperature, num_classes, prior, smooth,
                            backend):
    """PaCo / GPaCo: anchors features[:n_anchors] against every row of features (self
    excluded, sample keys weighted by gamma) and the class-center logits of sup_logits.

    log-prob denominator (the original's max-shifted sum with its + 1e-12):
        D_i = log(exp(lse_c_i) + gamma exp(lse_s_i) + 1e-12 exp(m_i))
    with lse_c = logsumexp of the center logits, lse_s = the core op over the sample keys
    and m_i the row max the original subtracts (see below). Positive weights: the center
    target t_i (one-hot or smoothed) times beta, alpha for each same-label sample key.
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        raise ValueError("features must be a 2-D tensor [N, d] ([q; k; queue]), got "
                         f"{getattr(features, 'shape', type(features).__name__)}")
    if not features.is_floating_point():
        raise TypeError(f"features must be floating point, got {features.dtype}")
    n, dim = features.shape
    if labels is None:
        raise ValueError("labels is required: [N] class ids of every row of features")
    if sup_logits is None:
        raise ValueError("sup_logits is required: [n_anchors, num_classes] classifier logits")
    labels = labels.reshape(-1).to(features.device)
    if labels.shape[0] != n:
        raise ValueError(f"labels must have one entry per row of features (N = {n}), "
                         f"got {labels.shape[0]}")
    if n_anchors < 1 or n_anchors > n:
        raise ValueError(f"the number of anchors must be in [1, N = {n}], got {n_anchors} "
                         "(check K against the number of rows of features)")
    if sup_logits.dim() != 2 or sup_logits.shape[0] != n_anchors:
        raise ValueError(f"sup_logits must be [n_anchors, num_classes] = [{n_anchors}, "
                         f"{num_classes}], got {tuple(sup_logits.shape)}")
    if num_classes is None:
        num_classes = sup_logits.shape[1]
    if sup_logits.shape[1] != num_classes:
        raise ValueError(f"sup_logits must have num_classes = {num_classes} columns, "
                         f"got {sup_logits.shape[1]}")
    _check_positive("temperature", temperature)
    _check_positive("supt", supt)
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if base_temperature is None:
        base_temperature = temperature

    device = features.device
    anchors = features[:n_anchors]
    lam = 1.0 / temperature
    acc = ops.accumulate_dtype(features.dtype)

    # center logits [B, C]: O(B C), given by the caller
    z = sup_logits.to(acc)
    if prior is not None:
        z = z + torch.log(prior.to(device=device, dtype=acc) + 1e-9)
    z = z / supt
    lse_c = torch.logsumexp(z, dim=1)

    q_hat = anchors.to(acc)
    k_hat = features.to(acc)
    self_logit = lam * _rowdot(q_hat, k_hat[:n_anchors])

    log_den = lse_c
    if gamma > 0:
        lse_s, _ = ops.lse(anchors, features, lam, self_offset=0, backend=backend)
        log_den = _logaddexp_safe(lse_c, lse_s + math.log(gamma))
    # The original subtracts m_i = max over the whole row (centers, every sample logit,
    # self included) before its "+ 1e-12". We use max(center logits, self logit): exact for
    # unit-norm features (PaCo's MoCo builder normalizes q, k and the queue), where the self
    # logit is the largest sample logit; otherwise the "+ 1e-12" term differs by at most
    # 1e-12 / gamma relative to the denominator.
    m = torch.maximum(z.amax(dim=1), self_logit).detach()
    log_den = torch.logaddexp(log_den, m + _LOG_1E_12)

    # same-label sample keys (self excluded): segment sums over q, k and queue jointly
    seg = label_segments(labels)
    class_sums, class_sizes = segment_sums(seg, k_hat, n)
    anchor_seg = seg[:n_anchors]
    pos_logit_sum = lam * _rowdot(q_hat, class_sums[anchor_seg]) - self_logit
    pos_count = class_sizes[anchor_seg] - 1.0

    # center targets: one-hot (PaCo) or smoothed (GPaCo), times beta
    y = labels[:n_anchors].long()
    if smooth:
        if num_classes < 2:
            raise ValueError("smooth > 0 needs num_classes >= 2")
        off = smooth / (num_classes - 1)
        z_y = z.gather(1, y[:, None]).squeeze(1)
        center_dot = off * z.sum(dim=1) + (1.0 - smooth - off) * z_y
        center_mass = off * (num_classes - 1) + (1.0 - smooth)
    else:
        center_dot = z.gather(1, y[:, None]).squeeze(1)
        center_mass = 1.0
    numerator = (beta * (center_dot - center_mass * log_den)
                 + alpha * (pos_logit_sum - pos_count * log_den))
    weight = beta * center_mass + alpha * pos_count
    mean_log_prob_pos = numerator / weight
    loss = -(temperature / base_temperature) * mean_log_prob_pos
    return loss.mean().to(features.dtype)


def paco_loss(features: torch.Tensor, labels: torch.Tensor, sup_logits: torch.Tensor,
              class_prior: torch.Tensor, *, alpha: float, beta: float = 1.0, gamma: float = 1.0,
              supt: float = 1.0, temperature: float = 1.0, base_temperature: Optional[float] = None,
              K: int = 128, num_classes: Optional[int] = None, backend: Optional[str] = "auto"):
    """Parametric contrastive loss (Cui et al., 2021), PaCo ``LT/losses.py`` semantics.

    features [N, d] = [q; k; queue] (as PaCo's ``moco/builder.py`` returns them), labels [N],
    sup_logits [B, C] for the B = (N - K) // 2 anchors (the first B rows), class_prior [C]
    (``cls_num_list / sum``). Per anchor: keys = every row but itself (weight gamma) plus
    the C class centers with logits (sup_logits + log(prior + 1e-9)) / supt; positives = its
    true center (weight beta) and every same-label row (weight alpha); loss =
    -(T / base_T) * weighted mean log-prob, averaged over anchors.
    """
    if class_prior is None:
        raise ValueError("class_prior is required for PaCo (call cal_weight_for_classes)")
    n = features.shape[0] if isinstance(features, torch.Tensor) else 0
    return _parametric_contrastive(
        features, labels, sup_logits, (n - K) // 2, alpha=alpha, beta=beta, gamma=gamma,
        supt=supt, temperature=temperature, base_temperature=base_temperature,
        num_classes=num_classes, prior=class_prior, smooth=0.0, backend=backend)


def gpaco_loss(features: torch.Tensor, labels: torch.Tensor, sup_logits: torch.Tensor,
               class_prior: Optional[torch.Tensor] = None, *, alpha: float, beta: float = 1.0,
               gamma: float = 1.0, supt: float = 1.0, temperature: float = 1.0,
               base_temperature: Optional[float] = None, K: int = 8192,
               num_classes: Optional[int] = None, smooth: float = 0.0,
               backend: Optional[str] = "auto"):
    """Generalized PaCo (Cui et al., 2023), GPaCo ``LT/losses.py`` semantics.

    As :func:`paco_loss` but the anchors are the first N - K rows (q and k both), the
    prior enters only when given, and ``smooth`` spreads the center target:
    (1 - smooth) on the true class, smooth / (C - 1) on the others.
    """
    n = features.shape[0] if isinstance(features, torch.Tensor) else 0
    if not 0 <= smooth < 1:
        raise ValueError(f"smooth must be in [0, 1), got {smooth}")
    return _parametric_contrastive(
        features, labels, sup_logits, n - K, alpha=alpha, beta=beta, gamma=gamma, supt=supt,
        temperature=temperature, base_temperature=base_temperature, num_classes=num_classes,
        prior=class_prior, smooth=smooth, backend=backend)


# =========================================================================== SimCLR NT-Xent


def ntxent_loss(out0: torch.Tensor, out1: torch.Tensor, temperature: float = 0.5,
                negatives: Optional[torch.Tensor] = None, *, gather_distributed: bool = False,
                eps: float = 1e-12, backend: Optional[str] = "auto"):
    """NT-Xent (SimCLR), lightly ``NTXentLoss`` semantics; rows are L2-normalized inside.

    Without ``negatives``: 2B anchors (out0 and out1), each against every other row of
    [out0; out1] (its partner is the positive), cross-entropy averaged over the 2B rows.
    With ``negatives`` [K, d] (a memory bank, used as given): B anchors out0, keys
    [its own out1 row; negatives], no in-batch negatives.
    ``gather_distributed`` gathers [out0; out1] from every rank (with gradient) as keys.
    """
    _check_pair("out0", out0, "out1", out1)
    if abs(temperature) < 1e-8:
        raise ValueError(f"Illegal temperature: abs({temperature}) < 1e-8")
    lam = 1.0 / temperature
    u0, u1 = unit_rows(out0, True, eps), unit_rows(out1, True, eps)
    pos = lam * _rowdot(u0, u1)
    if negatives is not None:
        _check_matrix("negatives", negatives, dim=out0.shape[1])
        if negatives.device != out0.device:
            raise ValueError(f"negatives must be on {out0.device}, got {negatives.device}")
        # the bank is used as stored (lightly does not renormalize it)
        bank = negatives.to(u0.dtype)
        lse_neg, _ = ops.lse(u0, bank, lam, backend=backend)
        loss = torch.logaddexp(pos, lse_neg) - pos
        return loss.mean().to(out0.dtype)

    batch = out0.shape[0]
    world, rank = _world() if gather_distributed else (1, 0)
    if world > 1:
        keys = torch.cat(_gather(out0, True) + _gather(out1, True), dim=0)
        lse0, _ = ops.lse(out0, keys, lam, self_offset=rank * batch, normalize=True, eps=eps,
                          backend=backend)
        lse1, _ = ops.lse(out1, keys, lam, self_offset=(world + rank) * batch, normalize=True,
                          eps=eps, backend=backend)
        lse = torch.cat([lse0, lse1])
    else:
        z = torch.cat([out0, out1], dim=0)
        lse, _ = ops.lse(z, z, lam, self_offset=0, normalize=True, eps=eps, backend=backend)
    loss = lse - torch.cat([pos, pos])
    return loss.mean().to(out0.dtype)


# =========================================================================== InfoNCE / CLIP


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale,
              logit_bias=None, *, local_loss: bool = False, gather_with_grad: bool = False,
              rank: int = 0, world_size: int = 1, backend: Optional[str] = "auto"):
    """CLIP's symmetric InfoNCE, open_clip ``ClipLoss`` semantics.

    logits = logit_scale * image @ text.T (+ logit_bias, a scalar); cross-entropy with the
    diagonal as targets, both directions, averaged. ``logit_scale`` may be a tensor with a
    gradient (pass the already exponentiated scale, as open_clip does). Features are used
    as given (open_clip's model normalizes them). With world_size > 1 the features of every
    rank are gathered (torch.distributed); ``local_loss`` keeps only the local rows as
    queries, against all gathered keys.
    """
    _check_matrix("image_features", image_features)
    _check_matrix("text_features", text_features, dim=image_features.shape[1])
    _check_same("image_features", image_features, "text_features", text_features)
    if image_features.shape[0] != text_features.shape[0]:
        raise ValueError(f"image_features and text_features must have the same batch size, "
                         f"got {image_features.shape[0]} and {text_features.shape[0]}")
    if isinstance(logit_scale, torch.Tensor) and logit_scale.numel() != 1:
        raise ValueError(f"logit_scale must be a scalar, got shape {tuple(logit_scale.shape)}")
    if logit_bias is not None and isinstance(logit_bias, torch.Tensor) and logit_bias.numel() != 1:
        raise ValueError(f"logit_bias must be a scalar (open_clip's learnable bias), got shape "
                         f"{tuple(logit_bias.shape)}")
    acc = ops.accumulate_dtype(image_features.dtype)
    scale = logit_scale.reshape(()).to(acc) if isinstance(logit_scale, torch.Tensor) else logit_scale

    if world_size > 1:
        all_img = _gather_features(image_features, local_loss, gather_with_grad, rank)
        all_txt = _gather_features(text_features, local_loss, gather_with_grad, rank)
        if local_loss:
            q_img, q_txt, offset = image_features, text_features, rank * image_features.shape[0]
        else:
            q_img, q_txt, offset = all_img, all_txt, 0
    else:
        all_img, all_txt, q_img, q_txt, offset = (image_features, text_features, image_features,
                                                  text_features, 0)

    lse_i, _ = ops.lse(q_img, all_txt, scale, backend=backend)
    lse_t, _ = ops.lse(q_txt, all_img, scale, backend=backend)
    n_q = q_img.shape[0]
    pos_i = scale * _rowdot(q_img.to(acc), all_txt[offset:offset + n_q].to(acc))
    pos_t = scale * _rowdot(q_txt.to(acc), all_img[offset:offset + n_q].to(acc))
    if logit_bias is not None:
        bias = logit_bias.reshape(()).to(acc) if isinstance(logit_bias, torch.Tensor) else logit_bias
        # a constant shift of every logit: it cancels, but keeps open_clip's graph (grad 0)
        lse_i, lse_t, pos_i, pos_t = lse_i + bias, lse_t + bias, pos_i + bias, pos_t + bias
    loss = ((lse_i - pos_i).mean() + (lse_t - pos_t).mean()) / 2
    return loss.to(image_features.dtype)


def _gather_features(x, local_loss, gather_with_grad, rank):
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("world_size > 1 needs an initialized torch.distributed process group")
    parts = _gather(x, gather_with_grad)
    if not gather_with_grad and not local_loss:
        parts[rank] = x  # the local rows keep their gradient (open_clip does the same)
    return torch.cat(parts, dim=0)


def info_nce(query: torch.Tensor, positive_key: torch.Tensor,
             negative_keys: Optional[torch.Tensor] = None, temperature: float = 0.1,
             symmetric: bool = False, reduction: str = "mean", *, normalize: bool = True,
             eps: float = 1e-12, backend: Optional[str] = "auto"):
    """InfoNCE (van den Oord et al.), the info-nce-pytorch ``info_nce`` semantics.

    Rows are L2-normalized (``normalize=True``). Without ``negative_keys``: query i against
    every positive_key row, target i (in-batch negatives). With ``negative_keys`` [M, d]
    (shared, "unpaired"): query i against [positive_key i; negative_keys], target 0.
    ``symmetric=True`` (in-batch only) averages the query->key and key->query losses (CLIP).
    reduction: 'mean' | 'sum' | 'none'.
    """
    _check_matrix("query", query)
    _check_matrix("positive_key", positive_key, rows=query.shape[0], dim=query.shape[1])
    _check_same("query", query, "positive_key", positive_key)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    lam = 1.0 / temperature
    uq = unit_rows(query, normalize, eps)
    uk = unit_rows(positive_key, normalize, eps)
    pos = lam * _rowdot(uq, uk)
    if negative_keys is not None:
        if isinstance(negative_keys, torch.Tensor) and negative_keys.dim() == 3:
            raise ValueError("negative_keys must be 2-D [M, d] (shared negatives); per-query "
                             "('paired') negatives [N, M, d] are not supported")
        _check_matrix("negative_keys", negative_keys, dim=query.shape[1])
        _check_same("query", query, "negative_keys", negative_keys)
        if symmetric:
            raise ValueError("symmetric=True is defined for in-batch negatives only "
                             "(negative_keys=None)")
        lse_neg, _ = ops.lse(query, negative_keys, lam, normalize=normalize, eps=eps,
                             backend=backend)
        loss = torch.logaddexp(pos, lse_neg) - pos
    else:
        lse_q, _ = ops.lse(query, positive_key, lam, normalize=normalize, eps=eps, backend=backend)
        loss = lse_q - pos
        if symmetric:
            lse_k, _ = ops.lse(positive_key, query, lam, normalize=normalize, eps=eps,
                               backend=backend)
            loss = (loss + (lse_k - pos)) / 2
    return _reduce(loss, reduction).to(query.dtype)


# =========================================================================== MoCo / CLSA / BINGO


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.07,
              *, in_batch_negatives: bool = False, reduction: str = "mean",
              backend: Optional[str] = "auto"):
    """MoCo's InfoNCE (He et al., facebookresearch/moco ``builder.py``).

    q, k [N, d] (normalized by the model, used as given), queue [K, d] (rows; MoCo stores
    its transpose). logits = [l_pos, l_neg] / T with l_pos_i = <q_i, k_i>, l_neg = q queue^T,
    target 0: only the own key is a positive and only the queue gives negatives.
    ``in_batch_negatives=True`` adds the other rows of k as negatives (logits
    [q k^T, q queue^T], target i, as CLSA's builder does).
    """
    _check_pair("q", q, "k", k)
    _check_matrix("queue", queue, dim=q.shape[1])
    _check_same("q", q, "queue", queue)
    _check_positive("temperature", temperature)
    lam = 1.0 / temperature
    acc = ops.accumulate_dtype(q.dtype)
    pos = lam * _rowdot(q.to(acc), k.to(acc))
    lse, _ = ops.lse(q, queue, lam, backend=backend)
    if in_batch_negatives:
        lse_k, _ = ops.lse(q, k, lam, backend=backend)  # includes the own key (the positive)
        lse = _logaddexp_safe(lse_k, lse)
    else:
        lse = torch.logaddexp(pos, lse)
    return _reduce(lse - pos, reduction).to(q.dtype)


def clsa_ddm_loss(q_weak: torch.Tensor, q_strong: torch.Tensor, k: torch.Tensor,
                  queue: torch.Tensor, temperature: float = 0.2, *,
                  backend: Optional[str] = "auto"):
    """CLSA's distributional distillation (Wang & Qi, maple-research-lab/CLSA): the weakly
    augmented query's distribution over the keys [k; queue] supervises the strong one's:

        -mean_i sum_j p_weak_ij log p_strong_ij,  p_x = softmax(<q_x, key_j> / temperature)

    computed as lse_strong_i - <q_strong_i, o_weak_i> / T with o_weak the core op's o output
    (the teacher's expected key). The teacher and the keys are detached, as in CLSA.
    """
    _check_pair("q_weak", q_weak, "q_strong", q_strong)
    _check_matrix("k", k, dim=q_weak.shape[1])
    _check_matrix("queue", queue, dim=q_weak.shape[1])
    _check_same("q_weak", q_weak, "k", k)
    _check_same("q_weak", q_weak, "queue", queue)
    _check_positive("temperature", temperature)
    lam = 1.0 / temperature
    k, queue, teacher = k.detach(), queue.detach(), q_weak.detach()
    lse_t, o_t = _lse_union([ops.lse(teacher, k, lam, return_o=True, backend=backend),
                             ops.lse(teacher, queue, lam, return_o=True, backend=backend)])
    lse_s, _ = _lse_union([ops.lse(q_strong, k, lam, backend=backend),
                           ops.lse(q_strong, queue, lam, backend=backend)])
    loss = lse_s - lam * _rowdot(q_strong.to(o_t.dtype), o_t)
    return loss.mean().to(q_strong.dtype)


def clsa_loss(q_weak: torch.Tensor, q_strong, k: torch.Tensor, queue: torch.Tensor,
              temperature: float = 0.2, clsa_t: float = 0.2, alpha: float = 1.0, *,
              backend: Optional[str] = "auto"):
    """CLSA's training loss for one weak query: the contrastive cross-entropy over
    [k (in-batch, own key positive); queue] at ``temperature`` plus ``alpha`` times the DDM
    loss at ``clsa_t`` for each strongly augmented query (a tensor or a list of them)."""
    strong = [q_strong] if isinstance(q_strong, torch.Tensor) else list(q_strong)
    loss = moco_loss(q_weak, k, queue, temperature, in_batch_negatives=True, backend=backend)
    for qs in strong:
        loss = loss + alpha * clsa_ddm_loss(q_weak, qs, k, queue, clsa_t, backend=backend)
    return loss


def bingo_loss(q: torch.Tensor, positive_keys: torch.Tensor, queue: torch.Tensor, lam,
               temperature: float = 0.2, *, backend: Optional[str] = "auto"):
    """BINGO's multi-positive cross-entropy (Xu et al., haohang96/bingo ``builder.py`` +
    ``MulposCrossEntropy``): for each positive m of query i, the logits
    [<q_i, positive_keys[i, m]>, q_i queue^T] / T with target 0; the loss is
    sum_m lam[m] * mean_i CE_m,i. positive_keys: [N, P, d] (or [N, d] for P = 1).
    The queue part is one core-op call shared by every positive.
    """
    _check_matrix("q", q)
    if not isinstance(positive_keys, torch.Tensor):
        raise TypeError(f"positive_keys must be a torch.Tensor, got {type(positive_keys).__name__}")
    if positive_keys.dim() == 2:
        positive_keys = positive_keys[:, None]
    if positive_keys.dim() != 3 or positive_keys.shape[0] != q.shape[0] \
            or positive_keys.shape[2] != q.shape[1]:
        raise ValueError(f"positive_keys must be [N, P, d] = [{q.shape[0]}, P, {q.shape[1]}], "
                         f"got {tuple(positive_keys.shape)}")
    _check_matrix("queue", queue, dim=q.shape[1])
    _check_same("q", q, "queue", queue)
    _check_same("q", q, "positive_keys", positive_keys)
    weights = [float(w) for w in (lam.tolist() if isinstance(lam, torch.Tensor) else lam)]
    if len(weights) != positive_keys.shape[1]:
        raise ValueError(f"lam must have one weight per positive (P = {positive_keys.shape[1]}), "
                         f"got {len(weights)}")
    _check_positive("temperature", temperature)
    inv_t = 1.0 / temperature
    acc = ops.accumulate_dtype(q.dtype)
    lse_queue, _ = ops.lse(q, queue, inv_t, backend=backend)
    pos = inv_t * torch.einsum("nd,npd->np", q.to(acc), positive_keys.to(acc))
    ce = (torch.logaddexp(pos, lse_queue[:, None]) - pos).mean(dim=0)  # [P]
    loss = sum(w * ce[m] for m, w in enumerate(weights))
    return loss.to(q.dtype)


# =========================================================================== DCL / DCLW


def negative_mises_fisher_weights(out0: torch.Tensor, out1: torch.Tensor,
                                  sigma: float = 0.5) -> torch.Tensor:
    """DCLW's weights w_i = 2 - B softmax_i(<out0_i, out1_i> / sigma), no gradient (lightly)."""
    sim = _rowdot(out0.detach(), out1.detach()) / sigma
    return 2 - out0.shape[0] * torch.softmax(sim, dim=0)


def dcl_loss(out0: torch.Tensor, out1: torch.Tensor, temperature: float = 0.1,
             weight_fn=None, *, gather_distributed: bool = False, eps: float = 1e-12,
             backend: Optional[str] = "auto"):
    """Decoupled contrastive loss (Yeh et al.), lightly ``DCLLoss`` semantics.

    Rows L2-normalized. For out0_i: -w_i <out0_i, out1_i> / T + lse over the other out0
    rows + lse over the other out1 rows (the positive dropped from the denominator; lightly
    adds the two log-sum-exps), averaged, and symmetrized with out0 <-> out1.
    ``weight_fn(out0, out1)`` gets the normalized rows and returns per-pair weights [B].
    """
    _check_pair("out0", out0, "out1", out1)
    _check_positive("temperature", temperature)
    lam = 1.0 / temperature
    u0, u1 = unit_rows(out0, True, eps), unit_rows(out1, True, eps)
    world, rank = _world() if gather_distributed else (1, 0)
    if world > 1:
        all0 = torch.cat(_gather(out0, True), dim=0)
        all1 = torch.cat(_gather(out1, True), dim=0)
    else:
        all0, all1 = out0, out1
    offset = rank * out0.shape[0]
    pos = lam * _rowdot(u0, u1)

    def one_side(x, x_all, y_all, w):
        lse_xx, _ = ops.lse(x, x_all, lam, self_offset=offset, normalize=True, eps=eps,
                            backend=backend)
        lse_xy, _ = ops.lse(x, y_all, lam, self_offset=offset, normalize=True, eps=eps,
                            backend=backend)
        positive = -pos if w is None else -pos * w
        return (positive + lse_xx + lse_xy).mean()

    w0 = w1 = None
    if weight_fn is not None:
        w0 = weight_fn(u0, u1)
        w1 = weight_fn(u1, u0)
    loss = 0.5 * (one_side(out0, all0, all1, w0) + one_side(out1, all1, all0, w1))
    return loss.to(out0.dtype)


def dclw_loss(out0: torch.Tensor, out1: torch.Tensor, temperature: float = 0.1,
              sigma: float = 0.5, *, gather_distributed: bool = False, eps: float = 1e-12,
              backend: Optional[str] = "auto"):
    """Weighted DCL: :func:`dcl_loss` with the negative von Mises-Fisher weights."""
    _check_positive("sigma", sigma)
    return dcl_loss(out0, out1, temperature,
                    lambda a, b: negative_mises_fisher_weights(a, b, sigma),
                    gather_distributed=gather_distributed, eps=eps, backend=backend)


# =========================================================================== HCL


def hcl_loss(out_1: torch.Tensor, out_2: torch.Tensor, temperature: float = 0.5,
             tau_plus: float = 0.1, beta: float = 1.0, estimator: str = "hard", *,
             normalize: bool = False, eps: float = 1e-12, backend: Optional[str] = "auto"):
    """Hard-negative contrastive loss (Robinson et al., joshr17/HCL ``image/main.py``).

    2B anchors [out_1; out_2]; negatives of row i: every row but itself and its partner
    (N = 2B - 2 of them), neg_ij = exp(s_ij / T); pos_i = exp(<out_1, out_2> / T).
    'hard': Ng = (-tau_plus N pos + sum_j neg^(1+beta) / mean_j neg^beta) / (1 - tau_plus),
    clamped below at N e^(-1/T); 'easy': Ng = sum_j neg. loss = mean -log(pos / (pos + Ng)).
    The two sums are core-op calls at scales (1 + beta) / T and beta / T. Rows are used as
    given (HCL's model normalizes them); ``normalize=True`` normalizes them first.
    """
    _check_pair("out_1", out_1, "out_2", out_2)
    _check_positive("temperature", temperature)
    if estimator not in ("hard", "easy"):
        raise ValueError(f"estimator must be 'hard' or 'easy', got {estimator!r}")
    batch = out_1.shape[0]
    if batch < 2:
        raise ValueError(f"HCL needs a batch of at least 2 pairs (out_1 has {batch} rows)")
    if not 0 <= tau_plus < 1:
        raise ValueError(f"tau_plus must be in [0, 1), got {tau_plus}")
    z = torch.cat([out_1, out_2], dim=0)
    pair = torch.arange(batch, device=z.device).repeat(2)  # self and partner share an id
    u1, u2 = unit_rows(out_1, normalize, eps), unit_rows(out_2, normalize, eps)
    log_pos = torch.cat([_rowdot(u1, u2)] * 2) / temperature
    kw = dict(q_labels=pair, k_labels=pair, exclude_positives=True, normalize=normalize,
              eps=eps, backend=backend)
    if estimator == "easy":
        lse, _ = ops.lse(z, z, 1.0 / temperature, **kw)
        return (torch.logaddexp(log_pos, lse) - log_pos).mean().to(out_1.dtype)

    n_neg = 2 * batch - 2
    lse_hard, _ = ops.lse(z, z, (1.0 + beta) / temperature, **kw)  # log sum neg^(1+beta)
    lse_imp, _ = ops.lse(z, z, beta / temperature, **kw)            # log sum neg^beta
    log_reweight = lse_hard - lse_imp + math.log(n_neg)
    # Ng and pos + Ng scaled by e^-c (c detached) so that nothing overflows
    c = torch.maximum(log_reweight, log_pos).detach()
    ng = (torch.exp(log_reweight - c) - tau_plus * n_neg * torch.exp(log_pos - c)) / (1 - tau_plus)
    ng = torch.clamp(ng, min=n_neg * math.exp(-1.0 / temperature) * torch.exp(-c))
    loss = c + torch.log(torch.exp(log_pos - c) + ng) - log_pos
    return loss.mean().to(out_1.dtype)
