"""CLIP's symmetric InfoNCE (open_clip ``ClipLoss``) and InfoNCE (info-nce-pytorch).

Each direction is a log-sum-exp over the other modality minus the paired logit; both
directions of one image x text matrix come from one sweep of the two-sided op
(``ops.two_sided_lse``: rows are image -> text, columns text -> image).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import distributed, ops
from ..core.layout import keep_input_layout
from .algebra import (check_gather_available, check_matrix, check_positive,
                      check_process_group, check_real_scalar, check_same, lse_over_ranks,
                      mean_over_ranks, reduce, result_dtype, rowdot, two_sided_over_ranks,
                      unit_rows)


@keep_input_layout("image_features", "text_features", "logit_scale", "logit_bias")
def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale,
              logit_bias=None, *, local_loss: bool = False, gather_with_grad: bool = False,
              rank: int = 0, world_size: int = 1, distributed_mode: str = "gather",
              backend: Optional[str] = "auto"):
    """CLIP's symmetric InfoNCE, open_clip ``ClipLoss`` semantics.

    logits = logit_scale * image @ text.T (+ logit_bias, a scalar); cross-entropy with the
    diagonal as targets, both directions, averaged. ``logit_scale`` may be a tensor with a
    gradient (pass the already exponentiated scale, as open_clip does). Features are used
    as given (open_clip's model normalizes them).

    world_size > 1 (torch.distributed; ``rank`` / ``world_size`` must be the process
    group's): each rank's pairs against every rank's by :func:`distributed.two_sided_lse`
    (``distributed_mode`` "gather" or "ring"), N_local x N_global work per rank, with
    open_clip's values and gradients on every rank: ``local_loss`` gives the mean over the
    local pairs, otherwise every rank gets the global batch's loss; ``gather_with_grad``
    lets every rank's loss reach every rank's features (without it, as open_clip, a rank's
    features get the gradient of its own loss only, and with ``local_loss`` only as
    queries). Local batch sizes may differ. A tensor ``logit_scale``'s gradient summed
    over the ranks (what DDP averages) is open_clip's; with ``local_loss`` and
    ``gather_with_grad`` its split between the ranks differs (a rank's column lse reads
    every rank's partial sums, whose scale gradient stays where they were computed).
    """
    check_matrix("image_features", image_features)
    check_matrix("text_features", text_features, dim=image_features.shape[1])
    check_same("image_features", image_features, "text_features", text_features)
    if image_features.shape[0] != text_features.shape[0]:
        raise ValueError(f"image_features and text_features must have the same batch size, "
                         f"got {image_features.shape[0]} and {text_features.shape[0]}")
    if isinstance(logit_scale, torch.Tensor) and logit_scale.numel() != 1:
        raise ValueError(f"logit_scale must be a scalar, got shape {tuple(logit_scale.shape)}")
    if logit_bias is not None and isinstance(logit_bias, torch.Tensor) and logit_bias.numel() != 1:
        raise ValueError(f"logit_bias must be a scalar (open_clip's learnable bias), got shape "
                         f"{tuple(logit_bias.shape)}")
    check_real_scalar("logit_scale", logit_scale, image_features.device)
    if logit_bias is not None:
        check_real_scalar("logit_bias", logit_bias, image_features.device)
    check_gather_available(world_size > 1, distributed_mode)
    if world_size > 1:
        check_process_group(rank, world_size)
    acc = ops.accumulate_dtype(image_features.dtype)
    scale = logit_scale.reshape(()).to(acc) if isinstance(logit_scale, torch.Tensor) else logit_scale
    bias = None
    if logit_bias is not None:
        bias = logit_bias.reshape(()).to(acc) if isinstance(logit_bias, torch.Tensor) else logit_bias

    def terms(scale):  # (lse_i - s_ii) + (lse_t - s_ii) of the local pairs
        image, text = image_features.to(acc), text_features.to(acc)
        if world_size <= 1 or gather_with_grad or not local_loss:
            lse_i, lse_t = two_sided_over_ranks(image_features, text_features, scale,
                                                world_size, distributed_mode, backend=backend)
            pos_i = pos_t = scale * rowdot(image, text)
        else:  # open_clip's local loss without gather_with_grad: every key a constant
            lse_i = distributed.lse(image_features, text_features.detach(), scale,
                                    mode=distributed_mode, backend=backend)
            lse_t = distributed.lse(text_features, image_features.detach(), scale,
                                    mode=distributed_mode, backend=backend)
            pos_i, pos_t = scale * rowdot(image, text.detach()), scale * rowdot(text, image.detach())
        if bias is not None:
            # a constant shift of every logit: it cancels, but keeps open_clip's graph (grad 0)
            lse_i, lse_t, pos_i, pos_t = lse_i + bias, lse_t + bias, pos_i + bias, pos_t + bias
        return (lse_i - pos_i) + (lse_t - pos_t)

    if world_size <= 1 or local_loss:
        loss = terms(scale).mean() / 2
    else:
        loss = _global_loss_on_every_rank(terms, scale, image_features, gather_with_grad)
    return loss.to(result_dtype(image_features))


def _global_loss_on_every_rank(terms, scale, image_features, with_grad):
    """open_clip's loss of the whole batch on every rank, from each rank's share: the sum
    of the ranks' local terms / (2 N_global). With its gradient reaching every rank's
    features (``with_grad``: world_size x the global loss's, open_clip's all-gather
    backward) or this rank's only (the global loss's), and the scale's that of the global
    loss on every rank."""
    n_global = sum(distributed.row_counts(image_features.shape[0], image_features.device))
    if not isinstance(scale, torch.Tensor):
        share = terms(scale).sum() / (2 * n_global)
    else:  # each rank's share gives the scale a share of its gradient: summed over ranks
        share = terms(distributed.replicated(scale, average=with_grad)).sum() / (2 * n_global)
    return distributed.all_reduce_sum(share, grad="sum" if with_grad else "local")


@keep_input_layout("query", "positive_key", "negative_keys")
def info_nce(query: torch.Tensor, positive_key: torch.Tensor,
             negative_keys: Optional[torch.Tensor] = None, temperature: float = 0.1,
             symmetric: bool = False, reduction: str = "mean", *, normalize: bool = True,
             eps: float = 1e-12, gather_distributed: bool = False,
             distributed_mode: str = "gather", backend: Optional[str] = "auto"):
    """InfoNCE (van den Oord et al.), the info-nce-pytorch ``info_nce`` semantics.

    Rows are L2-normalized (``normalize=True``). Without ``negative_keys``: query i against
    every positive_key row, target i (in-batch negatives). With ``negative_keys`` [M, d]
    (shared, "unpaired"): query i against [positive_key i; negative_keys], target 0.
    ``symmetric=True`` (in-batch only) averages the query->key and key->query losses (CLIP).
    reduction: 'mean' | 'sum' | 'none'.

    ``gather_distributed``: each rank's queries against every rank's keys (and negative
    keys; ``distributed_mode`` "gather" or "ring": :func:`contrastive_kernels.distributed.lse`).
    'mean' gives each rank its share of the global mean and 'sum' world_size times its
    rows' sum, so that the ranks' average is the single-process loss (and DDP's gradient
    average its gradient, for uneven batches too); 'none' gives this rank's rows.
    """
    check_matrix("query", query)
    check_matrix("positive_key", positive_key, rows=query.shape[0], dim=query.shape[1])
    check_same("query", query, "positive_key", positive_key)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    check_positive("temperature", temperature)
    check_gather_available(gather_distributed, distributed_mode)
    world = distributed.world()[0] if gather_distributed else 1
    lam = 1.0 / temperature

    def lse_of(x, keys):  # over every rank's keys when distributed
        return lse_over_ranks(x, keys, lam, world, distributed_mode, normalize=normalize,
                              eps=eps, backend=backend)

    uq = unit_rows(query, normalize, eps)
    uk = unit_rows(positive_key, normalize, eps)
    pos = lam * rowdot(uq, uk)
    if negative_keys is not None:
        if isinstance(negative_keys, torch.Tensor) and negative_keys.dim() == 3:
            raise ValueError("negative_keys must be 2-D [M, d] (shared negatives); per-query "
                             "('paired') negatives [N, M, d] are not supported")
        check_matrix("negative_keys", negative_keys, dim=query.shape[1])
        check_same("query", query, "negative_keys", negative_keys)
        if symmetric:
            raise ValueError("symmetric=True is defined for in-batch negatives only "
                             "(negative_keys=None)")
        loss = torch.logaddexp(pos, lse_of(query, negative_keys)) - pos
    elif symmetric:  # query -> key along rows, key -> query along columns: one sweep
        lse_q, lse_k = two_sided_over_ranks(query, positive_key, lam, world, distributed_mode,
                                            normalize=normalize, eps=eps, backend=backend)
        loss = ((lse_q - pos) + (lse_k - pos)) / 2
    else:
        loss = lse_of(query, positive_key) - pos
    if world > 1 and reduction != "none":
        share = mean_over_ranks(loss, world) if reduction == "mean" else loss.sum() * world
        return share.to(result_dtype(query))
    return reduce(loss, reduction).to(result_dtype(query))


class ClipLoss(nn.Module):
    """Drop-in for open_clip's ``ClipLoss`` (symmetric InfoNCE over image-text pairs).

    ``forward(image_features, text_features, logit_scale, logit_bias=None, output_dict=False)``;
    logit_scale (already exponentiated) may carry a gradient. world_size > 1 contrasts
    every rank's pairs over torch.distributed (``local_loss``, ``gather_with_grad`` as
    open_clip; ``distributed_mode`` "gather" or "ring": :func:`clip_loss`); Horovod is not
    supported.
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False,
                 cache_labels: bool = False, rank: int = 0, world_size: int = 1,
                 use_horovod: bool = False, *, distributed_mode: str = "gather",
                 backend: Optional[str] = "auto"):
        super().__init__()
        if use_horovod:
            raise NotImplementedError("use_horovod=True is not supported; use torch.distributed")
        check_gather_available(False, distributed_mode)
        self.distributed_mode = distributed_mode
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels  # the fused loss needs no labels: only for get_ground_truth
        self.rank = rank
        self.world_size = world_size
        self.use_horovod = use_horovod
        self.backend = backend
        self.prev_num_logits = 0
        self.labels = {}

    def get_ground_truth(self, device, num_logits) -> torch.Tensor:
        """open_clip's targets: arange(num_logits), offset by rank * num_logits with
        local_loss over ranks; cached per device with cache_labels. The fused path never
        calls it (its targets are the pairs' positions), so open_clip's subclasses that do
        keep working."""
        if self.prev_num_logits != num_logits or device not in self.labels:
            labels = torch.arange(num_logits, device=device, dtype=torch.long)
            if self.world_size > 1 and self.local_loss:
                labels = labels + num_logits * self.rank
            if self.cache_labels:
                self.labels[device] = labels
                self.prev_num_logits = num_logits
            return labels
        return self.labels[device]

    def get_logits(self, image_features, text_features, logit_scale, logit_bias=None):
        """open_clip's (logits_per_image, logits_per_text), materialized: B x B (or
        B x B_global over ranks, gathered as open_clip gathers). The fused forward never
        calls it; it is here for open_clip's subclasses (CoCa's and the distillation
        losses build on it)."""
        if self.world_size > 1:
            all_img, all_txt = _open_clip_gather(image_features, text_features,
                                                 self.local_loss, self.gather_with_grad)
            if self.local_loss:
                per_image = logit_scale * image_features @ all_txt.T
                per_text = logit_scale * text_features @ all_img.T
            else:
                per_image = logit_scale * all_img @ all_txt.T
                per_text = per_image.T
        else:
            per_image = logit_scale * image_features @ text_features.T
            per_text = logit_scale * text_features @ image_features.T
        if logit_bias is not None:
            per_image, per_text = per_image + logit_bias, per_text + logit_bias
        return per_image, per_text

    def forward(self, image_features, text_features, logit_scale, logit_bias=None,
                output_dict: bool = False):
        loss = clip_loss(
            image_features, text_features, logit_scale, logit_bias, local_loss=self.local_loss,
            gather_with_grad=self.gather_with_grad, rank=self.rank, world_size=self.world_size,
            distributed_mode=self.distributed_mode, backend=self.backend)
        return {"contrastive_loss": loss} if output_dict else loss


def _open_clip_gather(image, text, local_loss, with_grad):
    """open_clip's gather_features: every rank's rows, with gradient, or without it but
    with this rank's own rows live unless local_loss."""
    counts = distributed.row_counts(image.shape[0], image.device)
    start = sum(counts[:distributed.world()[1]])
    out = []
    for x in (image, text):
        every = distributed.gather_rows(x if with_grad else x.detach(), counts,
                                        with_grad=with_grad)
        if not with_grad and not local_loss:
            every = torch.cat([every[:start], x, every[start + x.shape[0]:]])
        out.append(every)
    return out


class _SoftTargetDot(torch.autograd.Function):
    """sum_i w_i sum_j p_ij <x_i, y_j>, p = softmax_j(a <u_i, v_j>) a constant (the
    teacher's), without the N x M matrix. Forward: o_i = sum_j p_ij y_j is the core op's
    o over keys [v_j, y_j] with queries [a u_i, 0] (the zero half leaves the teacher's
    logits). Backward: d/dy_j = sum_i w_i p_ij x_i is the core op's dk over queries
    [a u_i, x_i] and keys [v_j, 0], at the zero half; d/dx_i = w_i o_i."""

    @staticmethod
    def forward(ctx, x, y, u, v, a, w, backend):
        _, o = ops.lse(torch.cat([a * u, torch.zeros_like(x)], 1), torch.cat([v, y], 1), 1.0,
                       return_o=True, backend=backend)
        o = o[:, u.shape[1]:].to(x.dtype)
        ctx.save_for_backward(x, o, u, v, a, w)
        ctx.backend = backend
        return (w * rowdot(x, o)).sum()

    @staticmethod
    def backward(ctx, g):
        x, o, u, v, a, w = ctx.saved_tensors
        dx = dy = None
        if ctx.needs_input_grad[0]:
            dx = (g * w)[:, None] * o
        if ctx.needs_input_grad[1]:
            with torch.enable_grad():
                zero = torch.zeros((v.shape[0], x.shape[1]), dtype=x.dtype, device=x.device,
                                   requires_grad=True)
                lse, _ = ops.lse(torch.cat([a * u, x.detach()], 1), torch.cat([v, zero], 1),
                                 1.0, backend=ctx.backend)
                (dy,) = torch.autograd.grad(lse, zero, g * w)
        return dx, dy, None, None, None, None, None


@keep_input_layout("image_features", "text_features", "logit_scale", "dist_image_features",
                   "dist_text_features", "dist_logit_scale")
def distill_clip_loss(image_features, text_features, logit_scale, dist_image_features,
                      dist_text_features, dist_logit_scale, *, backend: Optional[str] = "auto"):
    """open_clip ``DistillClipLoss``: (contrastive_loss, distill_loss). The distillation is
    the cross-entropy of the student's logits s <image_i, text_j> against the teacher's
    softmax (rows, then columns, averaged):

        distill = (mean_i [lse_i - sum_j p_ij S_ij] + mean_j [lse_j - sum_i p'_ij S_ij]) / 2

    with p (p') the teacher's row (column) softmax, from one sweep for the student's both
    lse and two soft-target sums (:class:`_SoftTargetDot`). The teacher (``dist_*``) is a
    constant, as open_clip's training computes it under ``torch.no_grad``: a teacher
    feature that requires grad raises. One process (world_size 1).
    """
    for name, t in (("dist_image_features", dist_image_features),
                    ("dist_text_features", dist_text_features),
                    ("dist_logit_scale", dist_logit_scale)):
        if isinstance(t, torch.Tensor) and t.requires_grad:
            raise ValueError(f"{name} requires grad: the teacher's gradient is not supported "
                             "(compute the teacher under torch.no_grad(), as open_clip does, "
                             "or pass it .detach()ed)")
    check_matrix("dist_image_features", dist_image_features, rows=image_features.shape[0])
    check_matrix("dist_text_features", dist_text_features, rows=text_features.shape[0],
                 dim=dist_image_features.shape[1])
    check_real_scalar("dist_logit_scale", dist_logit_scale, image_features.device)
    contrastive = clip_loss(image_features, text_features, logit_scale, backend=backend)
    acc = ops.accumulate_dtype(image_features.dtype)
    scale = logit_scale.reshape(()).to(acc) if isinstance(logit_scale, torch.Tensor) else logit_scale
    t_scale = torch.as_tensor(dist_logit_scale, dtype=acc, device=image_features.device).reshape(())
    img, txt = image_features.to(acc), text_features.to(acc)
    t_img, t_txt = dist_image_features.to(acc), dist_text_features.to(acc)
    lse_i, lse_t = ops.two_sided_lse(image_features, text_features, scale, backend=backend)
    w_i = torch.full((img.shape[0],), 1.0 / img.shape[0], dtype=acc, device=img.device)
    w_t = torch.full((txt.shape[0],), 1.0 / txt.shape[0], dtype=acc, device=img.device)
    rows = lse_i.mean() - scale * _SoftTargetDot.apply(img, txt, t_img, t_txt, t_scale, w_i,
                                                       backend)
    cols = lse_t.mean() - scale * _SoftTargetDot.apply(txt, img, t_txt, t_img, t_scale, w_t,
                                                       backend)
    return contrastive, ((rows + cols) / 2).to(result_dtype(image_features))


class DistillClipLoss(ClipLoss):
    """Drop-in for open_clip's ``DistillClipLoss``: ``forward(image_features,
    text_features, logit_scale, dist_image_features, dist_text_features, dist_logit_scale,
    output_dict=False)`` -> (contrastive_loss, distill_loss), fused
    (:func:`distill_clip_loss`). One process; the teacher is a constant."""

    def forward(self, image_features, text_features, logit_scale, dist_image_features,
                dist_text_features, dist_logit_scale, output_dict: bool = False):
        if self.world_size > 1:
            raise NotImplementedError("DistillClipLoss with world_size > 1 is not supported "
                                      "yet (ClipLoss is)")
        contrastive, distill = distill_clip_loss(
            image_features, text_features, logit_scale, dist_image_features,
            dist_text_features, dist_logit_scale, backend=self.backend)
        if output_dict:
            return {"contrastive_loss": contrastive, "distill_loss": distill}
        return contrastive, distill


class InfoNCE(nn.Module):
    """InfoNCE module (info-nce-pytorch ``InfoNCE`` semantics, 'unpaired' negatives), with
    ``symmetric`` for the CLIP-style two-way in-batch loss."""

    def __init__(self, temperature: float = 0.1, reduction: str = "mean",
                 negative_mode: str = "unpaired", symmetric: bool = False, *,
                 gather_distributed: bool = False, distributed_mode: str = "gather",
                 backend: Optional[str] = "auto"):
        super().__init__()
        check_gather_available(gather_distributed, distributed_mode)
        self.gather_distributed = gather_distributed
        self.distributed_mode = distributed_mode
        if negative_mode != "unpaired":
            raise ValueError(f"negative_mode must be 'unpaired' (shared negative keys), "
                             f"got {negative_mode!r}")
        self.temperature = temperature
        self.reduction = reduction
        self.negative_mode = negative_mode
        self.symmetric = symmetric
        self.backend = backend

    def forward(self, query, positive_key, negative_keys=None):
        return info_nce(query, positive_key, negative_keys, self.temperature,
                        self.symmetric, self.reduction,
                        gather_distributed=self.gather_distributed,
                        distributed_mode=self.distributed_mode, backend=self.backend)


# --------------------------------------------------------------------------- registry

from .spec import Accuracy, Anchor, LossCase, LossSpec, library_loss, randn, unit  # noqa: E402


def _clip_case(id, with_bias):
    def make(gen, small):
        b, d = (3, 4) if small else (29, 24)
        return {"image": unit(gen, b, d), "text": unit(gen, b, d),
                "logit_scale": torch.tensor(14.3, dtype=torch.float64),
                "logit_bias": torch.tensor(-2.0, dtype=torch.float64)}

    def call(f, x, **be):
        return f(x["image"], x["text"], x["logit_scale"], x["logit_bias"] if with_bias else None,
                 **be)
    grads = ("image", "text", "logit_scale") + (("logit_bias",) if with_bias else ())
    return LossCase(id, clip_loss, make, call, grads)


def _info_nce_case(id, negatives, symmetric=False, reduction="mean"):
    def make(gen, small):
        b, m, d = (3, 4, 5) if small else (26, 45, 12)
        return {"query": 2.0 * randn(gen, b, d), "positive": 2.0 * randn(gen, b, d),
                "negatives": 2.0 * randn(gen, m, d)}

    def call(f, x, **be):
        return f(x["query"], x["positive"], x["negatives"] if negatives else None,
                 temperature=0.1, symmetric=symmetric, reduction=reduction, **be)
    grads = ("query", "positive") + (("negatives",) if negatives else ())
    return LossCase(id, info_nce, make, call, grads)


SPECS = (
    LossSpec(
        name="InfoNCE / CLIP", family="CLIP", module=ClipLoss, functional=(clip_loss,),
        helpers=(DistillClipLoss, distill_clip_loss),
        source="mlfoundations/open_clip `src/open_clip/loss.py` `ClipLoss`",
        cases=(_clip_case("clip", with_bias=False), _clip_case("clip_bias", with_bias=True)),
        accuracy=(Accuracy(
            clip_loss,
            lambda gen, s: {"image": unit(gen, 2 * s.b, s.d), "text": unit(gen, 2 * s.b, s.d),
                            "logit_scale": torch.tensor(1 / 0.07, dtype=torch.float64)},
            lambda f, x, **be: f(x["image"], x["text"], x["logit_scale"], **be),
            ("image", "text", "logit_scale"), error="1e-14",
            anchor=Anchor("open_clip", "3.3", library_loss(
                "open_clip.loss", "ClipLoss", ("image", "text", "logit_scale")),
                error="1e-14")),),
        published_signature=dict(local_loss=False, gather_with_grad=False, cache_labels=False,
                                 rank=0, world_size=1, use_horovod=False),
        published_forward=("image_features", "text_features", "logit_scale", "logit_bias",
                           "output_dict")),
    LossSpec(
        name="InfoNCE", family="InfoNCE", module=InfoNCE, functional=(info_nce,),
        source="RElbers/info-nce-pytorch `info_nce` (unpaired negatives) + `symmetric`",
        cases=(_info_nce_case("info_nce", negatives=False),
               _info_nce_case("info_nce_negatives_sum", negatives=True, reduction="sum"),
               _info_nce_case("info_nce_symmetric", negatives=False, symmetric=True)),
        accuracy=(Accuracy(
            info_nce,
            lambda gen, s: {"query": randn(gen, s.b, s.d), "positive": randn(gen, s.b, s.d),
                            "negatives": randn(gen, s.k, s.d)},
            lambda f, x, **be: f(x["query"], x["positive"], x["negatives"], 0.1, **be),
            ("query", "positive", "negatives"), error="1e-14"),),
        # the published constructor has no `symmetric` (ours adds it after negative_mode)
        published_forward=("query", "positive_key", "negative_keys")),
)
