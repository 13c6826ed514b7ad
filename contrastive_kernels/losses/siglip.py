"""SigLIP's sigmoid loss (open_clip ``SigLipLoss``), fused: no logit block in memory.

Every image-text pair is a binary problem: loss = -sum_ij log sigmoid(z_ij s_ij) / B with
s = logit_scale * image @ text.T + logit_bias and z = +1 on the pairs (the diagonal, or
equal group ids), -1 elsewhere, B the local batch. One call of ``ops.pairwise_sigmoid`` per
block of texts; across ranks the texts travel as open_clip's ``dist_impl`` does, each
remote block a negative-only call (or, with group ids, one that compares the ids, so a
positive held by another rank is never counted as a negative):

- ``gather``: every rank's texts gathered with gradient (a reduce-scatter returns dtext),
  then one call over all of them (the local block's diagonal at offset rank * B);
- ``reduce``: each rank's texts broadcast in turn, gradient reduced back to the owner;
- ``shift``: W - 1 steps around the ring; ``bidir``: both directions at once, half the steps.

The last three hold one remote block at a time: per-rank memory O(B d).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import distributed, ops
from ..core.layout import keep_input_layout
from .algebra import check_labels, check_matrix, check_real_scalar, check_same, result_dtype

DIST_IMPLS = ("bidir", "shift", "reduce", "gather")


def _scalar(value, acc):
    """A checked scalar (check_real_scalar) as the op takes it: 0-dim in ``acc``."""
    return value.reshape(()).to(acc) if isinstance(value, torch.Tensor) else value


def _block(image, text, scale, bias, labels, text_labels, self_offset, backend):
    """sum_i row_loss_i of one image x text block."""
    row_loss = ops.pairwise_sigmoid(image, text, scale, bias, q_labels=labels,
                                    k_labels=text_labels, self_offset=self_offset,
                                    backend=backend)
    return row_loss.sum()


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
    (``text_labels``, default ``labels``: the texts' own ids). With world_size > 1 the texts
    of every rank enter this rank's loss through ``dist_impl`` (torch.distributed), with
    their ids; DDP's mean over ranks is then the loss of one process over the whole batch.
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
    acc = ops.accumulate_dtype(image_features.dtype)
    scale = _scalar(logit_scale, acc)
    bias = None if logit_bias is None else _scalar(logit_bias, acc)
    local = None if labels is not None else 0  # the diagonal, unless ids say who is paired

    def block(text, ids, self_offset):
        return _block(image_features, text, scale, bias, labels, ids, self_offset, backend)

    if world_size <= 1:
        total = block(text_features, text_labels, local)
    else:
        total = _distributed(block, text_features, text_labels, local, rank, world_size,
                             dist_impl)
    return (total / b).to(result_dtype(image_features))


def _distributed(block, text, ids, local, rank, world_size, dist_impl):
    """This rank's sum over every rank's text block (the remote ones negative-only, or
    compared by ids)."""
    from ..distributed import exchange

    seen = [t for t in (text, ids) if t is not None]
    distributed.check_equal_rows(seen)
    if dist_impl == "gather":
        parts = distributed.gather(text, with_grad=True)
        all_ids = None if ids is None else distributed.gather(ids, with_grad=False)[0]
        offset = None if local is None else rank * text.shape[0]
        return block(parts[0], all_ids, offset)
    if dist_impl == "reduce":
        total = 0
        for src in range(world_size):
            # this rank's own block uses its broadcast too: every rank then runs every
            # broadcast's backward (a reduce), in the same order
            text_src = exchange.broadcast(text, src)
            ids_src = None if ids is None else exchange.broadcast(ids, src)
            total = total + block(text_src, ids_src, local if src == rank else None)
        return total
    total = block(text, ids, local)
    left, right = (rank - 1) % world_size, (rank + 1) % world_size
    if dist_impl == "shift":
        for _ in range(world_size - 1):
            text = exchange.shift(text, left, right)
            ids = None if ids is None else exchange.shift(ids, left, right)
            total = total + block(text, ids, None)
        return total
    # bidir: blocks travel both ways; an odd remainder takes one last shift to the right
    to_left = to_right = text
    ids_left = ids_right = ids
    steps, remainder = divmod(world_size - 1, 2)
    for _ in range(steps):
        from_right, from_left = exchange.bidir(to_left, to_right, left, right)
        if ids is not None:
            ids_left, ids_right = exchange.bidir(ids_left, ids_right, left, right)
        total = total + block(from_right, ids_left, None) + block(from_left, ids_right, None)
        to_left, to_right = from_right, from_left
    if remainder:
        total = total + block(exchange.shift(to_right, left, right),
                              None if ids is None else exchange.shift(ids_right, left, right),
                              None)
    return total


class SigLipLoss(nn.Module):
    """Drop-in for open_clip's ``SigLipLoss`` (the pairwise sigmoid loss), fused.

    ``forward(image_features, text_features, logit_scale, logit_bias, output_dict=False,
    *, labels=None)``; ``labels`` (group ids) give the multi-positive form. ``chunk_size``
    is accepted for open_clip's signature and not needed: no logit block is ever stored.
    ``world_size > 1`` exchanges the texts over torch.distributed by ``dist_impl``
    (``bidir`` (default), ``shift``, ``reduce``, ``gather``).
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

from .spec import Accuracy, LossCase, LossSpec, unit  # noqa: E402


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
            ("image", "text", "logit_scale", "logit_bias"), error="1e-14"),),
        published_signature=dict(cache_labels=False, rank=0, world_size=1, dist_impl=None,
                                 chunk_size=0),
        published_forward=("image_features", "text_features", "logit_scale", "logit_bias",
                           "output_dict")),
)
