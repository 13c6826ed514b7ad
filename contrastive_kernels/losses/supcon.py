"""SupCon (Khosla et al., 2020), SupContrast ``losses.py`` semantics.

    L_i = -(T / T_base) * (1 / |P(i)|) sum_{p in P(i)} (s_ip - lse_i),  s = <f_i, f_p> / T

The denominator lse_i (every row but the anchor) is the core op; the positive sum is
lam <f^_i, C[y_i] - f^_i> with C the per-label sum of rows (or mask @ view-sum for a user
mask), so no N x N mask exists.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import distributed
from ..core.layout import keep_input_layout
from .algebra import (check_gather_available, check_labels, check_on, check_positive,
                      gather_rows, label_segments, lse_over_ranks, mean_over_ranks,
                      result_dtype, segment_sums, unit_rows)
from .spec import Accuracy, Anchor, LossCase, LossSpec, unit

CONTRAST_MODES = ("all", "one")


def check_supcon_options(temperature, contrast_mode, base_temperature):
    if contrast_mode not in CONTRAST_MODES:
        raise ValueError(f"Unknown mode: {contrast_mode!r} (contrast_mode must be 'all' or 'one')")
    check_positive("temperature", temperature)
    check_positive("base_temperature", base_temperature)


@keep_input_layout("features")
def supcon_loss(features: torch.Tensor, labels: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None, temperature: float = 0.07,
                contrast_mode: str = "all", base_temperature: float = 0.07, *,
                normalize: bool = False, eps: float = 1e-12, gather_distributed: bool = False,
                distributed_mode: str = "gather", backend: Optional[str] = "auto"):
    """Supervised contrastive loss, SupContrast ``losses.py`` semantics.

    features: [bsz, n_views, ...] (extra dims flattened); labels: [bsz] or None; mask:
    [bsz, bsz] (mask[a, b] weighs sample b as a positive of anchor a) or None; neither
    gives SimCLR. Views are concatenated view-major; anchors are all N = bsz * n_views rows
    (``'all'``) or the first view (``'one'``). Each anchor's own row is excluded from its
    numerator and denominator; rows without positives contribute 0 and still count in the
    mean. ``normalize=True`` divides rows by max(||row||, eps) first (fused in the kernel).
    Returns a 0-dim loss in features' dtype.

    ``gather_distributed`` (torch.distributed): each rank passes its own batch; its anchors
    are contrasted with every rank's rows (``distributed_mode`` "gather" or "ring", see
    :func:`contrastive_kernels.distributed.lse`), the positives counted over the global
    batch by class sums all-reduced across ranks (labels) or within the rank (no labels:
    a sample's views are on its rank). Each rank's loss is its anchors' sum times
    world_size / (global anchors): the mean over ranks is the single-process loss of the
    concatenated batch, and DDP's gradient average is its gradient, for uneven batches too.
    A user ``mask`` cannot name the other ranks' samples and raises.
    """
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if not features.is_floating_point():
        raise TypeError(f"features must be floating point (fp16/bf16/fp32/fp64), got {features.dtype}")
    if features.dim() < 3:
        raise ValueError("`features` needs to be [bsz, n_views, ...], at least 3 dimensions "
                         f"are required; got shape {tuple(features.shape)}")
    if features.dim() > 3:
        features = features.reshape(features.shape[0], features.shape[1], -1)
    if labels is not None and mask is not None:
        raise ValueError("Cannot define both `labels` and `mask`")
    check_supcon_options(temperature, contrast_mode, base_temperature)
    check_gather_available(gather_distributed, distributed_mode)
    world = distributed.world()[0] if gather_distributed else 1
    if world > 1 and mask is not None:
        raise ValueError("gather_distributed with a mask: a [bsz, bsz] mask cannot name the "
                         "other ranks' samples; pass labels")
    bsz, n_views, dim = features.shape
    if bsz == 0 or n_views == 0:
        raise ValueError(f"features must hold at least one sample and one view, got shape "
                         f"{tuple(features.shape)}")
    device = features.device
    check_on("labels", labels, device, "features", movable=True)
    check_on("mask", mask, device, "features", movable=True)
    if labels is not None:
        if isinstance(labels, torch.Tensor) and labels.numel() != bsz:
            raise ValueError(f"Num of labels does not match num of features: labels has "
                             f"{labels.numel()} entries, features has bsz = {bsz}")
        labels = check_labels("labels", labels, bsz).to(device)
    if mask is not None and not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor [bsz, bsz] or None, got {type(mask).__name__}")
    if mask is not None and tuple(mask.shape) != (bsz, bsz):
        raise ValueError(f"mask must be [bsz, bsz] = [{bsz}, {bsz}], got {tuple(mask.shape)}")

    contrast = features.transpose(0, 1).reshape(n_views * bsz, dim)  # view-major rows
    n_anchor_views = 1 if contrast_mode == "one" else n_views
    anchors = contrast[: n_anchor_views * bsz]
    lam = 1.0 / temperature

    # The denominator: every contrast row but the anchor itself (anchor i is contrast row i).
    # (distributed: every rank's rows as keys; anchor i's own row is its global key start + i)
    lse = lse_over_ranks(anchors, contrast, lam, world, distributed_mode, self_offset=0,
                         normalize=normalize, eps=eps, backend=backend)

    acc = lse.dtype
    k_hat = unit_rows(contrast, normalize, eps)
    q_hat = k_hat[: anchors.shape[0]]  # anchors are the first rows of contrast
    self_logit = lam * (q_hat * k_hat[: q_hat.shape[0]]).sum(1)
    sample = torch.arange(q_hat.shape[0], device=device) % bsz  # batch index of each anchor

    # Positive term sum_j mask_ij s_ij and its weight count, without an N x N mask.
    if mask is not None:
        weights = mask.to(device=device, dtype=acc)
        per_sample = k_hat.view(n_views, bsz, dim).sum(0)            # sum over views, [bsz, d]
        positive_keys = gather_rows(weights @ per_sample, sample)
        self_weight = torch.diagonal(weights)[sample]
        pos_logit_sum = lam * (q_hat * positive_keys).sum(1) - self_weight * self_logit
        pos_count = n_views * weights.sum(1)[sample] - self_weight
    else:
        if world > 1 and labels is not None:  # the global classes, summed over the ranks
            seg, n_classes = distributed.global_segments(labels)
            class_sums, class_sizes = segment_sums(seg.repeat(n_views), k_hat, n_classes)
            class_sums = distributed.all_reduce_sum(class_sums)
            class_sizes = distributed.all_reduce_sum(class_sizes)
        else:
            seg = (label_segments(labels) if labels is not None
                   else torch.arange(bsz, device=device))
            class_sums, class_sizes = segment_sums(seg.repeat(n_views), k_hat, bsz)  # all views
        anchor_seg = seg[sample]
        pos_logit_sum = lam * (q_hat * gather_rows(class_sums, anchor_seg)).sum(1) - self_logit
        pos_count = class_sizes[anchor_seg] - 1.0

    # sum_j mask_ij (s_ij - lse_i) = pos_logit_sum - pos_count lse_i, as the original sums
    # it whatever the weights: a signed mask row whose weights sum to 0 (e.g. [0, 1, -1])
    # keeps sum_j mask_ij s_ij. Only the term pos_count lse_i is dropped at a count of 0,
    # so that an anchor with no other row at all (lse = -inf) gives 0, not the original's
    # NaN (0 * -inf).
    weighted_log_prob = pos_logit_sum - torch.where(pos_count == 0, torch.zeros_like(lse),
                                                    pos_count * lse)
    divisor = torch.where(pos_count < 1e-6, torch.ones_like(pos_count), pos_count)
    loss = -(temperature / base_temperature) * (weighted_log_prob / divisor)
    return mean_over_ranks(loss, world).to(result_dtype(features))


class SupConLoss(nn.Module):
    """Drop-in for SupContrast's ``SupConLoss`` (Khosla et al., 2020).

    Same constructor and ``forward(features, labels=None, mask=None)`` as the original,
    plus keyword-only ``normalize`` (fuse F.normalize of the features) and ``backend``.
    Memory is O(N d) instead of the original's several N x N matrices.
    """

    def __init__(self, temperature: float = 0.07, contrast_mode: str = "all",
                 base_temperature: float = 0.07, *, normalize: bool = False,
                 gather_distributed: bool = False, distributed_mode: str = "gather",
                 backend: Optional[str] = "auto"):
        super().__init__()
        check_supcon_options(temperature, contrast_mode, base_temperature)
        check_gather_available(gather_distributed, distributed_mode)
        self.gather_distributed = gather_distributed
        self.distributed_mode = distributed_mode
        self.temperature = temperature
        self.contrast_mode = contrast_mode
        self.base_temperature = base_temperature
        self.normalize = normalize
        self.backend = backend

    def forward(self, features: torch.Tensor, labels: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return supcon_loss(features, labels, mask, self.temperature, self.contrast_mode,
                           self.base_temperature, normalize=self.normalize,
                           gather_distributed=self.gather_distributed,
                           distributed_mode=self.distributed_mode, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, contrast_mode={self.contrast_mode!r}, "
                f"base_temperature={self.base_temperature}, normalize={self.normalize}, "
                f"gather_distributed={self.gather_distributed}, "
                f"distributed_mode={self.distributed_mode!r}, backend={self.backend!r}")


# --------------------------------------------------------------------------- registry
# The family table holds two SupCon configurations; the full SupCon matrix (shapes x
# positives x modes x normalization) is testing/supcon_cases.py, run by tests/losses/test_supcon.py.


def _pml_rows(module, backend):
    """``module``'s SupConLoss(0.1) (PML's, or our drop-in for it) on the row's features as
    PML takes them: [bsz * views, d] view-major, labels repeated."""
    import importlib

    kw = {} if backend is None else dict(backend=backend)
    loss = importlib.import_module(module).SupConLoss(0.1, **kw)

    def call(x):
        f = x["features"]
        return loss(f.transpose(0, 1).reshape(-1, f.shape[-1]), x["labels"].repeat(f.shape[1]))
    return call


def _case(id, positives, contrast_mode):
    def make(gen, small):
        b, views, d = (3, 2, 4) if small else (19, 2, 13)
        x = {"features": unit(gen, b, views, d)}
        if positives == "labels":
            x["labels"] = torch.randint(0, 5, (b,), generator=gen)
        else:  # a user mask, one anchor without positives
            mask = (torch.rand(b, b, generator=gen) < 0.3).double()
            mask[0] = 0.0
            x["mask"] = mask
        return x

    def call(f, x, **be):
        return f(x["features"], x.get("labels"), x.get("mask"), 0.1, contrast_mode, 0.07, **be)
    return LossCase(id, supcon_loss, make, call, ("features",))


SPECS = (
    LossSpec(
        name="SupCon", family="SupCon", module=SupConLoss, functional=(supcon_loss,),
        source="HobbitLong/SupContrast `losses.py`",
        cases=(_case("supcon_labels_all", "labels", "all"),
               _case("supcon_mask_one", "mask", "one")),
        accuracy=(Accuracy(
            supcon_loss,
            lambda gen, s: {"features": unit(gen, 2 * s.b, 2, s.d),
                            "labels": torch.randint(0, s.c, (2 * s.b,), generator=gen)},
            lambda f, x, **be: f(x["features"], x["labels"], temperature=0.1, **be),
            ("features",), error="1e-14",
            # PML's SupConLoss takes [N, d] rows and labels; its drop-in is ck.pml.SupConLoss
            anchor=Anchor("pytorch_metric_learning", "2.9", lambda: _pml_rows(
                "pytorch_metric_learning.losses", None), error="1e-14",
                ours=lambda x, backend: _pml_rows("contrastive_kernels.pml", backend)(x))),),
        published_signature=dict(temperature=0.07, contrast_mode="all", base_temperature=0.07),
        published_forward=("features", "labels", "mask")),
)
