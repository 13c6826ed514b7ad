"""The oracle losses: faithful re-implementations of the published code.

Each follows the original formulation step by step (our own code; see each function for
its source) and materializes every N x M matrix. They run in the dtype they are given, so
the same function is the float64 oracle and the "naive loss in this dtype" that sets the
tolerance of the low-precision tests.
"""

from __future__ import annotations

import math

import torch


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


# --------------------------------------------------------------------------- PaCo / GPaCo
#
# Deviation shared by both: the originals build their masks in float32 (``.float()``,
# ``torch.ones``, ``one_hot(...).to(torch.float32)``) and the prior with ``torch.Tensor``;
# here masks and prior follow the features' dtype, so that the float64 oracle is float64
# throughout (with float32 inputs the two agree exactly).


def _paco_family_reference(features, labels, sup_logits, weight, *, alpha, beta, gamma, supt,
                           temperature, base_temperature, batch_size, num_classes, smooth):
    device = features.device
    dtype = features.dtype
    base_temperature = temperature if base_temperature is None else base_temperature
    labels = labels.contiguous().view(-1, 1)
    mask = torch.eq(labels[:batch_size], labels.T).to(dtype).to(device)

    anchor_dot_contrast = torch.div(features[:batch_size] @ features.T, temperature)
    centers = sup_logits.to(dtype)
    if weight is not None:
        centers = centers + torch.log(weight.to(device=device, dtype=dtype) + 1e-9)
    anchor_dot_contrast = torch.cat((centers / supt, anchor_dot_contrast), dim=1)

    logits_max, _ = torch.max(anchor_dot_contrast, dim=1, keepdim=True)
    logits = anchor_dot_contrast - logits_max.detach()

    logits_mask = torch.scatter(torch.ones_like(mask), 1,
                                torch.arange(batch_size, device=device).view(-1, 1), 0)
    mask = mask * logits_mask

    one_hot = torch.nn.functional.one_hot(labels[:batch_size].view(-1),
                                          num_classes=num_classes).to(dtype)
    if smooth is not None:
        one_hot = smooth / (num_classes - 1) * (1 - one_hot) + (1 - smooth) * one_hot
    mask = torch.cat((one_hot * beta, mask * alpha), dim=1)

    logits_mask = torch.cat((torch.ones(batch_size, num_classes, dtype=dtype, device=device),
                             gamma * logits_mask), dim=1)
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True) + 1e-12)

    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    loss = -(temperature / base_temperature) * mean_log_prob_pos
    return loss.mean()


def paco_loss_reference(features, labels, sup_logits, weight, alpha=1.0, beta=1.0, gamma=1.0,
                        supt=1.0, temperature=1.0, base_temperature=None, K=128,
                        num_classes=1000):
    """PaCo ``LT/losses.py`` PaCoLoss.forward: features [q; k; queue] [N, d], labels [N],
    sup_logits [B, C] for the B = (N - K) // 2 anchors, weight = the class prior [C]."""
    batch_size = (features.shape[0] - K) // 2
    return _paco_family_reference(
        features, labels, sup_logits, weight, alpha=alpha, beta=beta, gamma=gamma, supt=supt,
        temperature=temperature, base_temperature=base_temperature, batch_size=batch_size,
        num_classes=num_classes, smooth=None)


def gpaco_loss_reference(features, labels, sup_logits, weight=None, alpha=1.0, beta=1.0,
                         gamma=1.0, supt=1.0, temperature=1.0, base_temperature=None, K=8192,
                         num_classes=1000, smooth=0.0):
    """GPaCo ``LT/losses.py`` PaCoLoss.forward: anchors the first N - K rows, the prior
    only when given (``self.weight`` set), label smoothing of the center targets."""
    batch_size = features.shape[0] - K
    return _paco_family_reference(
        features, labels, sup_logits, weight, alpha=alpha, beta=beta, gamma=gamma, supt=supt,
        temperature=temperature, base_temperature=base_temperature, batch_size=batch_size,
        num_classes=num_classes, smooth=smooth)


# --------------------------------------------------------------------------- NT-Xent


def ntxent_loss_reference(out0, out1, temperature=0.5, negatives=None):
    """lightly ``NTXentLoss.forward`` (one process); ``negatives`` [K, d] is the memory
    bank's content before this step's update (lightly keeps it as [d, K])."""
    device = out0.device
    batch_size = out0.shape[0]
    out0 = torch.nn.functional.normalize(out0, dim=1)
    out1 = torch.nn.functional.normalize(out1, dim=1)
    if negatives is not None:
        negatives = negatives.T.to(device)
        sim_pos = torch.einsum("nc,nc->n", out0, out1).unsqueeze(-1)
        sim_neg = torch.einsum("nc,ck->nk", out0, negatives)
        logits = torch.cat([sim_pos, sim_neg], dim=1) / temperature
        labels = torch.zeros(logits.shape[0], device=device, dtype=torch.long)
    else:
        diag_mask = torch.eye(batch_size, device=device, dtype=torch.bool)
        logits_00 = torch.einsum("nc,mc->nm", out0, out0) / temperature
        logits_01 = torch.einsum("nc,mc->nm", out0, out1) / temperature
        logits_10 = torch.einsum("nc,mc->nm", out1, out0) / temperature
        logits_11 = torch.einsum("nc,mc->nm", out1, out1) / temperature
        logits_00 = logits_00[~diag_mask].view(batch_size, -1)
        logits_11 = logits_11[~diag_mask].view(batch_size, -1)
        logits = torch.cat([torch.cat([logits_01, logits_00], dim=1),
                            torch.cat([logits_10, logits_11], dim=1)], dim=0)
        labels = torch.arange(batch_size, device=device, dtype=torch.long).repeat(2)
    return torch.nn.functional.cross_entropy(logits, labels, reduction="mean")


# --------------------------------------------------------------------------- CLIP / InfoNCE


def clip_loss_reference(image_features, text_features, logit_scale, logit_bias=None):
    """open_clip ``ClipLoss.forward`` with world_size = 1."""
    logits_per_image = logit_scale * image_features @ text_features.T
    logits_per_text = logit_scale * text_features @ image_features.T
    if logit_bias is not None:
        logits_per_image = logits_per_image + logit_bias
        logits_per_text = logits_per_text + logit_bias
    labels = torch.arange(logits_per_image.shape[0], device=image_features.device, dtype=torch.long)
    return (torch.nn.functional.cross_entropy(logits_per_image, labels)
            + torch.nn.functional.cross_entropy(logits_per_text, labels)) / 2


def siglip_loss_reference(image_features, text_features, logit_scale, logit_bias=None, *,
                          labels=None, text_labels=None):
    """open_clip ``SigLipLoss.forward`` with world_size = 1; ``labels``: the multi-positive
    form (a pair is positive when the group ids are equal)."""
    logits = logit_scale * image_features @ text_features.T
    if logit_bias is not None:
        logits = logits + logit_bias
    n = image_features.shape[0]
    if labels is None:
        signs = 2 * torch.eye(n, dtype=logits.dtype) - 1
    else:
        text_labels = labels if text_labels is None else text_labels
        signs = torch.where(labels[:, None] == text_labels[None, :], 1.0, -1.0).to(logits.dtype)
    return -torch.nn.functional.logsigmoid(signs * logits).sum() / n


def info_nce_reference(query, positive_key, negative_keys=None, temperature=0.1,
                       reduction="mean", symmetric=False):
    """info-nce-pytorch ``info_nce`` ('unpaired' negatives), plus a symmetric in-batch mode
    (the mean of both directions' per-sample losses, as CLIP)."""
    F = torch.nn.functional
    query, positive_key = F.normalize(query, dim=-1), F.normalize(positive_key, dim=-1)
    if negative_keys is not None:
        negative_keys = F.normalize(negative_keys, dim=-1)
        positive_logit = torch.sum(query * positive_key, dim=1, keepdim=True)
        negative_logits = query @ negative_keys.T
        logits = torch.cat([positive_logit, negative_logits], dim=1)
        labels = torch.zeros(len(logits), dtype=torch.long, device=query.device)
        return F.cross_entropy(logits / temperature, labels, reduction=reduction)
    logits = query @ positive_key.T
    labels = torch.arange(len(query), device=query.device)
    if not symmetric:
        return F.cross_entropy(logits / temperature, labels, reduction=reduction)
    per_row = (F.cross_entropy(logits / temperature, labels, reduction="none")
               + F.cross_entropy(logits.T / temperature, labels, reduction="none")) / 2
    return {"mean": per_row.mean, "sum": per_row.sum, "none": lambda: per_row}[reduction]()


# --------------------------------------------------------------------------- MoCo / CLSA / BINGO


def moco_loss_reference(q, k, queue, temperature=0.07, in_batch_negatives=False):
    """facebookresearch/moco ``builder.py`` logits + cross-entropy; queue as rows [K, d].
    ``in_batch_negatives``: CLSA's builder logits [q k^T, q queue^T] with targets i."""
    if in_batch_negatives:
        l_pos = torch.einsum("nc,ck->nk", q, k.T)
        labels = torch.arange(q.shape[0], dtype=torch.long, device=q.device)
    else:
        l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    l_neg = torch.einsum("nc,ck->nk", q, queue.T)
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    return torch.nn.functional.cross_entropy(logits, labels)


def clsa_ddm_loss_reference(q_weak, q_strong, k, queue, temperature=0.2):
    """CLSA ``model/CLSA.py`` labels0 / logits0 and ``training/train.py`` DDM loss:
    -mean(sum(log(softmax(strong logits / T2)) * softmax(weak logits / T2).detach()))."""
    k, queue = k.detach(), queue.detach()
    weak_logits = torch.cat([q_weak @ k.T, q_weak @ queue.T], dim=1)
    target = torch.softmax(weak_logits.detach() / temperature, dim=1)
    strong_logits = torch.cat([q_strong @ k.T, q_strong @ queue.T], dim=1) / temperature
    prob = torch.softmax(strong_logits, dim=1)
    return -torch.mean(torch.sum(torch.log(prob) * target, dim=1))


def clsa_loss_reference(q_weak, q_strong_list, k, queue, temperature=0.2, clsa_t=0.2, alpha=1.0):
    """One weak query's CLSA loss: cross-entropy over [k; queue] plus alpha * DDM per strong."""
    loss = moco_loss_reference(q_weak, k, queue, temperature, in_batch_negatives=True)
    for q_strong in q_strong_list:
        loss = loss + alpha * clsa_ddm_loss_reference(q_weak, q_strong, k, queue, clsa_t)
    return loss


def bingo_loss_reference(q, positive_keys, queue, lam, temperature=0.2):
    """haohang96/bingo ``moco/builder.py`` logits_q_nk + ``MulposCrossEntropy``:
    positive_keys [N, P, d], queue [K, d]."""
    pos = torch.einsum("nmc,nc->nm", positive_keys, q).unsqueeze(-1)
    neg = torch.einsum("nc,ck->nk", q, queue.T)
    neg = neg.unsqueeze(1).repeat(1, positive_keys.shape[1], 1)
    logits = torch.cat([pos, neg], dim=2) / temperature
    targets = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    total = 0
    for i in range(logits.shape[1]):
        total = total + lam[i] * torch.nn.functional.cross_entropy(logits[:, i], targets)
    return total


# --------------------------------------------------------------------------- DCL / DCLW


def negative_mises_fisher_weights_reference(out0, out1, sigma=0.5):
    similarity = torch.einsum("nm,nm->n", out0.detach(), out1.detach()) / sigma
    return 2 - out0.shape[0] * torch.softmax(similarity, dim=0)


def dcl_loss_reference(out0, out1, temperature=0.1, weight_fn=None):
    """lightly ``DCLLoss.forward`` (one process), release 1.5.21 and later: one
    log-sum-exp over all negatives."""
    out0 = torch.nn.functional.normalize(out0, dim=1)
    out1 = torch.nn.functional.normalize(out1, dim=1)

    def one_side(a, b):
        batch_size = a.shape[0]
        diag_mask = torch.eye(batch_size, device=a.device, dtype=torch.bool)
        sim_00 = torch.einsum("nc,mc->nm", a, a) / temperature
        sim_01 = torch.einsum("nc,mc->nm", a, b) / temperature
        positive_loss = -sim_01[diag_mask]
        if weight_fn:
            positive_loss = positive_loss * weight_fn(a, b)
        sim_00 = sim_00[~diag_mask].view(batch_size, -1)
        sim_01 = sim_01[~diag_mask].view(batch_size, -1)
        all_negs = torch.cat([sim_00, sim_01], dim=1)
        return (positive_loss + torch.logsumexp(all_negs, dim=1)).mean()

    return 0.5 * (one_side(out0, out1) + one_side(out1, out0))


def dclw_loss_reference(out0, out1, temperature=0.1, sigma=0.5):
    """lightly ``DCLWLoss``: DCL with the negative von Mises-Fisher weights."""
    return dcl_loss_reference(
        out0, out1, temperature,
        lambda a, b: negative_mises_fisher_weights_reference(a, b, sigma))


# --------------------------------------------------------------------------- HCL


def hcl_loss_reference(out_1, out_2, temperature=0.5, tau_plus=0.1, beta=1.0, estimator="hard"):
    """joshr17/HCL ``image/main.py`` criterion (rows used as given)."""
    batch_size = out_1.shape[0]
    out = torch.cat([out_1, out_2], dim=0)
    neg = torch.exp(torch.mm(out, out.t().contiguous()) / temperature)
    mask = torch.ones((batch_size, 2 * batch_size), dtype=torch.bool, device=out.device)
    for i in range(batch_size):
        mask[i, i] = 0
        mask[i, i + batch_size] = 0
    mask = torch.cat((mask, mask), 0)
    neg = neg.masked_select(mask).view(2 * batch_size, -1)
    pos = torch.exp(torch.sum(out_1 * out_2, dim=-1) / temperature)
    pos = torch.cat([pos, pos], dim=0)
    if estimator == "hard":
        n = batch_size * 2 - 2
        imp = (beta * neg.log()).exp()
        reweight_neg = (imp * neg).sum(dim=-1) / imp.mean(dim=-1)
        ng = (-tau_plus * n * pos + reweight_neg) / (1 - tau_plus)
        ng = torch.clamp(ng, min=n * math.e ** (-1 / temperature))
    elif estimator == "easy":
        ng = neg.sum(dim=-1)
    else:
        raise ValueError("Invalid estimator selected. Please use any of [hard, easy]")
    return (-torch.log(pos / (pos + ng))).mean()
