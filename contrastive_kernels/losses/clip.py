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
from .algebra import (check_gather_available, check_matrix, check_real_scalar, check_positive,
                      check_same, lse_over_ranks, mean_over_ranks, reduce, result_dtype,
                      rowdot, unit_rows)


@keep_input_layout("image_features", "text_features", "logit_scale", "logit_bias")
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
    acc = ops.accumulate_dtype(image_features.dtype)
    scale = logit_scale.reshape(()).to(acc) if isinstance(logit_scale, torch.Tensor) else logit_scale

    if world_size > 1:
        all_img, all_txt = distributed.gather(image_features, text_features,
                                              with_grad=gather_with_grad,
                                              keep_local=not local_loss)
        if local_loss:
            q_img, q_txt, offset = image_features, text_features, rank * image_features.shape[0]
        else:
            q_img, q_txt, offset = all_img, all_txt, 0
    else:
        all_img, all_txt, q_img, q_txt, offset = (image_features, text_features, image_features,
                                                  text_features, 0)

    if q_img is all_img:  # one matrix, both directions: one sweep
        lse_i, lse_t = ops.two_sided_lse(all_img, all_txt, scale, backend=backend)
    else:  # local queries against gathered keys: two different matrices
        lse_i, _ = ops.lse(q_img, all_txt, scale, backend=backend)
        lse_t, _ = ops.lse(q_txt, all_img, scale, backend=backend)
    n_q = q_img.shape[0]
    pos_i = scale * rowdot(q_img.to(acc), all_txt[offset:offset + n_q].to(acc))
    pos_t = scale * rowdot(q_txt.to(acc), all_img[offset:offset + n_q].to(acc))
    if logit_bias is not None:
        bias = logit_bias.reshape(()).to(acc) if isinstance(logit_bias, torch.Tensor) else logit_bias
        # a constant shift of every logit: it cancels, but keeps open_clip's graph (grad 0)
        lse_i, lse_t, pos_i, pos_t = lse_i + bias, lse_t + bias, pos_i + bias, pos_t + bias
    loss = ((lse_i - pos_i).mean() + (lse_t - pos_t).mean()) / 2
    return loss.to(result_dtype(image_features))


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
    elif symmetric and world > 1:  # each direction over the other side's global rows
        loss = ((lse_of(query, positive_key) - pos) + (lse_of(positive_key, query) - pos)) / 2
    elif symmetric:  # query -> key along rows, key -> query along columns: one sweep
        lse_q, lse_k = ops.two_sided_lse(query, positive_key, lam, normalize=normalize, eps=eps,
                                         backend=backend)
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
    logit_scale (already exponentiated) may carry a gradient. world_size > 1 gathers the
    features over torch.distributed (``local_loss``, ``gather_with_grad`` as open_clip);
    Horovod is not supported.
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False,
                 cache_labels: bool = False, rank: int = 0, world_size: int = 1,
                 use_horovod: bool = False, *, backend: Optional[str] = "auto"):
        super().__init__()
        if use_horovod:
            raise NotImplementedError("use_horovod=True is not supported; use torch.distributed")
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels  # labels are implicit (the diagonal): nothing to cache
        self.rank = rank
        self.world_size = world_size
        self.use_horovod = use_horovod
        self.backend = backend

    def forward(self, image_features, text_features, logit_scale, logit_bias=None,
                output_dict: bool = False):
        loss = clip_loss(
            image_features, text_features, logit_scale, logit_bias, local_loss=self.local_loss,
            gather_with_grad=self.gather_with_grad, rank=self.rank, world_size=self.world_size,
            backend=self.backend)
        return {"contrastive_loss": loss} if output_dict else loss


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

from .spec import Accuracy, LossCase, LossSpec, randn, unit  # noqa: E402


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
        source="mlfoundations/open_clip `src/open_clip/loss.py` `ClipLoss`",
        cases=(_clip_case("clip", with_bias=False), _clip_case("clip_bias", with_bias=True)),
        accuracy=(Accuracy(
            clip_loss,
            lambda gen, s: {"image": unit(gen, 2 * s.b, s.d), "text": unit(gen, 2 * s.b, s.d),
                            "logit_scale": torch.tensor(1 / 0.07, dtype=torch.float64)},
            lambda f, x, **be: f(x["image"], x["text"], x["logit_scale"], **be),
            ("image", "text", "logit_scale"), error="1e-14"),),
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
