"""SigLIP's sigmoid loss (open_clip ``SigLipLoss``), fused: no logit block in memory.

Every image-text pair is a binary problem: loss = -sum_ij log sigmoid(z_ij s_ij) / B with
s = logit_scale * image @ text.T + logit_bias and z = +1 on the pairs (the diagonal, or
equal group ids), -1 elsewhere, B the local batch. One call of ``ops.pairwise_sigmoid``;
across ranks, of :func:`contrastive_kernels.distributed.pairwise_sigmoid`: each rank's
images against every rank's texts, the diagonal by global position (or the group ids
compared across ranks, so a positive held by another rank is never counted as a
negative). open_clip's ``dist_impl`` names choose its mode:

- ``gather``: every rank's texts gathered with gradient (a reduce-scatter returns dtext);
- ``shift``, ``bidir``, ``reduce``: the ring (the text shards travel rank to rank, each
  shard's transfer overlapped with the previous one's tiles, dtext travelling home with
  them): per-rank memory O(B d). open_clip's three differ in how the blocks move (one
  direction, both directions in half the steps, broadcasts); the ring's result is the same.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import distributed, ops
from ..core.layout import keep_input_layout
from .algebra import (check_labels, check_matrix, check_process_group, check_real_scalar,
                      check_same, mean_over_ranks, result_dtype)

DIST_IMPLS = ("bidir", "shift", "reduce", "gather")
MODE_OF = {"gather": "gather", "shift": "ring", "bidir": "ring", "reduce": "ring"}


def _scalar(value, acc):
    """A checked scalar (check_real_scalar) as the op takes it: 0-dim in ``acc``."""
    return value.reshape(()).to(acc) if isinstance(value, torch.Tensor) else value


@keep_input_layout("image_features", "text_features", "logit_scale", "logit_bias")
def siglip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale,
                logit_bias=None, *, labels: Optional[torch.Tensor] = None,
                text_labels: Optional[torch.Tensor] = None, rank: int = 0, world_size: int = 1,
                dist_impl: str = "bidir", backend: Optional[str] = "auto"):
    """SigLIP's sigmoid loss, open_clip ``SigLipLoss`` semantics.

    logits = logit_scale * image @ text.T + logit_bias (pass the exponentiated scale, as
    open_clip's model does; both may be tensors with a gradient); the loss is
    ``-logsigmoid(z * logits).sum() / B``. ``labels`` (group ids [B], integer) make the
    multi-positive form: image i and text j are a positive pair when their ids are equal
    (``text_labels``, default ``labels``: the texts' own ids). With world_size > 1 (the
    process group's ``rank`` / ``world_size``) the texts of every rank enter this rank's
    loss (``dist_impl``: module docstring), with their ids; each rank's loss is its rows'
    sum times world_size / B_global (B_local for equal batches, as open_clip), so that
    DDP's mean over ranks is the loss of one process over the whole batch, for uneven
    local batches too.
    """
    check_matrix("image_features", image_features)
    check_matrix("text_features", text_features, dim=image_features.shape[1])
    check_same("image_features", image_features, "text_features", text_features)
    b = image_features.shape[0]
    if text_features.shape[0] != b:
        raise ValueError(f"image_features and text_features must have the same batch size, "
                         f"got {b} and {text_features.shape[0]}")
    check_real_scalar("logit_scale", logit_scale, image_features.device)
    if logit_bias is not None:
        check_real_scalar("logit_bias", logit_bias, image_features.device)
    if dist_impl not in DIST_IMPLS:
        raise ValueError(f"dist_impl must be one of {DIST_IMPLS}, got {dist_impl!r}")
    if text_labels is not None and labels is None:
        raise ValueError("text_labels needs labels (the images' group ids)")
    if labels is not None:
        labels = check_labels("labels", labels, b)
        text_labels = labels if text_labels is None else check_labels("text_labels",
                                                                      text_labels, b)
    if world_size > 1:
        check_process_group(rank, world_size)
    acc = ops.accumulate_dtype(image_features.dtype)
    scale = _scalar(logit_scale, acc)
    bias = None if logit_bias is None else _scalar(logit_bias, acc)
    diagonal = None if labels is not None else 0  # unless ids say who is paired
    kw = dict(q_labels=labels, k_labels=text_labels, self_offset=diagonal, backend=backend)
    if world_size <= 1:
        row_loss = ops.pairwise_sigmoid(image_features, text_features, scale, bias, **kw)
    else:
        row_loss = distributed.pairwise_sigmoid(image_features, text_features, scale, bias,
                                                mode=MODE_OF[dist_impl], **kw)
    return mean_over_ranks(row_loss, world_size).to(result_dtype(image_features))


class SigLipLoss(nn.Module):
    """Drop-in for open_clip's ``SigLipLoss`` (the pairwise sigmoid loss), fused.

    ``forward(image_features, text_features, logit_scale, logit_bias, output_dict=False,
    *, labels=None)``; ``labels`` (group ids) give the multi-positive form. ``chunk_size``
    is accepted for open_clip's signature and not needed: no logit block is ever stored.
    ``world_size > 1`` contrasts every rank's texts over torch.distributed
    (``dist_impl``: ``gather`` gathers them, ``bidir`` (default), ``shift`` and ``reduce``
    pass them around the ring: :func:`siglip_loss`).
    """

    def __init__(self, cache_labels: bool = False, rank: int = 0, world_size: int = 1,
                 dist_impl: Optional[str] = None, chunk_size: int = 0, *,
                 backend: Optional[str] = "auto"):
        super().__init__()
        dist_impl = dist_impl or "bidir"
        if dist_impl not in DIST_IMPLS:
            raise ValueError(f"dist_impl must be one of {DIST_IMPLS}, got {dist_impl!r}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 0:
            raise ValueError(f"chunk_size must be an int >= 0, got {chunk_size!r}")
        self.cache_labels = cache_labels  # the signs are implicit: nothing to cache
        self.rank = rank
        self.world_size = world_size
        self.dist_impl = dist_impl
        self.chunk_size = chunk_size
        self.backend = backend

    def get_ground_truth(self, device, dtype, num_logits, negative_only=False) -> torch.Tensor:
        """open_clip's [num_logits, num_logits] sign matrix (materialized; the fused path
        never calls it)."""
        labels = -torch.ones((num_logits, num_logits), device=device, dtype=dtype)
        if not negative_only:
            labels = 2 * torch.eye(num_logits, device=device, dtype=dtype) + labels
        return labels

    def get_logits(self, image_features, text_features, logit_scale, logit_bias=None):
        """open_clip's B x B logits (materialized; the fused path never calls it)."""
        logits = logit_scale * image_features @ text_features.T
        return logits if logit_bias is None else logits + logit_bias

    def forward(self, image_features, text_features, logit_scale, logit_bias=None,
                output_dict: bool = False, *, labels: Optional[torch.Tensor] = None):
        loss = siglip_loss(image_features, text_features, logit_scale, logit_bias,
                           labels=labels, rank=self.rank, world_size=self.world_size,
                           dist_impl=self.dist_impl, backend=self.backend)
        return {"contrastive_loss": loss} if output_dict else loss


# --------------------------------------------------------------------------- registry

from .spec import Accuracy, Anchor, LossCase, LossSpec, library_loss, unit  # noqa: E402


def _siglip_case(id, groups=0):
    def make(gen, small):
        b, d = (3, 4) if small else (29, 24)
        x = {"image": unit(gen, b, d), "text": unit(gen, b, d),
             "logit_scale": torch.tensor(10.0, dtype=torch.float64),
             "logit_bias": torch.tensor(-10.0, dtype=torch.float64)}
        if groups:
            x["labels"] = torch.randint(0, groups, (b,), generator=gen)
        return x

    def call(f, x, **be):
        return f(x["image"], x["text"], x["logit_scale"], x["logit_bias"],
                 labels=x.get("labels"), **be)
    return LossCase(id, siglip_loss, make, call, ("image", "text", "logit_scale", "logit_bias"))


SPECS = (
    LossSpec(
        name="SigLIP", family="SigLIP", module=SigLipLoss, functional=(siglip_loss,),
        source="mlfoundations/open_clip `src/open_clip/loss.py` `SigLipLoss`",
        cases=(_siglip_case("siglip"), _siglip_case("siglip_groups", groups=4)),
        accuracy=(Accuracy(
            siglip_loss,
            lambda gen, s: {"image": unit(gen, 2 * s.b, s.d), "text": unit(gen, 2 * s.b, s.d),
                            "logit_scale": torch.tensor(10.0, dtype=torch.float64),
                            "logit_bias": torch.tensor(-10.0, dtype=torch.float64)},
            lambda f, x, **be: f(x["image"], x["text"], x["logit_scale"], x["logit_bias"],
                                 **be),
            ("image", "text", "logit_scale", "logit_bias"), error="1e-14",
            anchor=Anchor("open_clip", "3.3", library_loss(
                "open_clip.loss", "SigLipLoss", ("image", "text", "logit_scale", "logit_bias")),
                error="1e-14")),),
        published_signature=dict(cache_labels=False, rank=0, world_size=1, dist_impl=None,
                                 chunk_size=0),
        published_forward=("image_features", "text_features", "logit_scale", "logit_bias",
                           "output_dict")),
)
