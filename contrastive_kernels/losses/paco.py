"""PaCo (Cui et al., ICCV 2021) and GPaCo (TPAMI 2023), PaCo/GPaCo ``LT/losses.py``.

Per anchor, the keys are every other row of [q; k; queue] (weight gamma, the core op) and
the C class centers (dense [B, C] logits merged by logaddexp); positives are the true
center (weight beta, smoothed for GPaCo) and every same-label row (weight alpha, from
label segment sums).
"""

from __future__ import annotations

import inspect
import math
from typing import Optional

import torch

from .. import distributed, ops
from ..core.layout import keep_input_layout
from .algebra import (LOG_1E_12, check_gather_available, check_in_range, check_labels,
                      check_on, check_positive, gather_rows, label_segments, logaddexp_safe,
                      mean_over_ranks, result_dtype, rowdot, segment_sums)
from .spec import Accuracy, LossCase, LossSpec, randn, unit
from .state import ResizableBuffers


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
                            queue_rows, gather_distributed, distributed_mode, backend):
    """PaCo / GPaCo: anchors features[:n_anchors] against every row of features (self
    excluded, sample keys weighted by gamma) and the class-center logits of sup_logits.

    log-prob denominator (the original's max-shifted sum with its + 1e-12):
        D_i = log(exp(lse_c_i) + gamma exp(lse_s_i) + 1e-12 exp(m_i))
    with lse_c = logsumexp of the center logits, lse_s = the core op over the sample keys
    and m_i the row max the original subtracts (see below). Positive weights: the center
    target t_i (one-hot or smoothed) times beta, alpha for each same-label sample key.
    """
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a torch.Tensor [N, d] ([q; k; queue]), got "
                        f"{type(features).__name__}")
    if features.dim() != 2:
        raise ValueError("features must be a 2-D tensor [N, d] ([q; k; queue]), got "
                         f"{tuple(features.shape)}")
    if not features.is_floating_point():
        raise TypeError(f"features must be floating point, got {features.dtype}")
    n, dim = features.shape
    if labels is None:
        raise ValueError("labels is required: [N] class ids of every row of features")
    if sup_logits is None:
        raise ValueError("sup_logits is required: [n_anchors, num_classes] classifier logits")
    check_on("labels", labels, features.device, "features", movable=True)
    check_on("sup_logits", sup_logits, features.device, "features")
    check_on("class_prior", prior, features.device, "features", movable=True)
    labels = check_labels("labels", labels, n).to(features.device)
    if n_anchors < 1 or n_anchors > n:
        raise ValueError(f"the number of anchors must be in [1, N = {n}], got {n_anchors} "
                         "(check K against the number of rows of features)")
    if not isinstance(sup_logits, torch.Tensor):
        raise TypeError(f"sup_logits must be a torch.Tensor [n_anchors, num_classes], got "
                        f"{type(sup_logits).__name__}")
    if not sup_logits.is_floating_point():
        raise TypeError(f"sup_logits must be floating point (real logits), got {sup_logits.dtype}")
    if sup_logits.dim() != 2 or sup_logits.shape[0] != n_anchors:
        raise ValueError(f"sup_logits must be [n_anchors, num_classes] = [{n_anchors}, "
                         f"{num_classes}], got {tuple(sup_logits.shape)}")
    if num_classes is None:
        num_classes = sup_logits.shape[1]
    if sup_logits.shape[1] != num_classes:
        raise ValueError(f"sup_logits must have num_classes = {num_classes} columns, "
                         f"got {sup_logits.shape[1]}")
    check_positive("temperature", temperature)
    check_positive("supt", supt)
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if base_temperature is None:
        base_temperature = temperature
    check_positive("base_temperature", base_temperature)
    check_gather_available(gather_distributed, distributed_mode)
    world = distributed.world()[0] if gather_distributed else 1
    n_batch = n - queue_rows  # [q; k] of this rank; the queue after them
    if prior is not None and (not isinstance(prior, torch.Tensor) or prior.shape != (num_classes,)):
        raise ValueError(f"class_prior must have num_classes = {num_classes} entries, got "
                         f"{tuple(prior.shape) if isinstance(prior, torch.Tensor) else prior!r}")

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
    self_logit = lam * rowdot(q_hat, k_hat[:n_anchors])

    log_den = lse_c
    if gamma > 0:
        lse_s = _sample_lse(anchors, features, n_batch, lam, world, distributed_mode, backend)
        log_den = logaddexp_safe(lse_c, lse_s + math.log(gamma))
    # The original subtracts m_i = max over the whole row (centers, every sample logit,
    # self included) before its "+ 1e-12". We use max(center logits, self logit): exact for
    # unit-norm features (PaCo's MoCo builder normalizes q, k and the queue), where the self
    # logit is the largest sample logit; otherwise the "+ 1e-12" term differs by at most
    # 1e-12 / gamma relative to the denominator.
    m = torch.maximum(z.amax(dim=1), self_logit).detach()
    log_den = torch.logaddexp(log_den, m + LOG_1E_12)

    # same-label sample keys (self excluded): segment sums over q, k and queue jointly
    if world > 1:  # every rank's [q; k] summed over the ranks, the (shared) queue once
        seg, n_classes = distributed.global_segments(labels)
        class_sums, class_sizes = (distributed.all_reduce_sum(x) for x in segment_sums(
            seg[:n_batch], k_hat[:n_batch], n_classes))
        if queue_rows:
            queue_sums, queue_sizes = segment_sums(seg[n_batch:], k_hat[n_batch:], n_classes)
            class_sums, class_sizes = class_sums + queue_sums, class_sizes + queue_sizes
    else:
        seg = label_segments(labels)
        class_sums, class_sizes = segment_sums(seg, k_hat, n)
    anchor_seg = seg[:n_anchors]
    pos_logit_sum = lam * rowdot(q_hat, gather_rows(class_sums, anchor_seg)) - self_logit
    pos_count = class_sizes[anchor_seg] - 1.0

    # center targets: one-hot (PaCo) or smoothed (GPaCo), times beta
    y = labels[:n_anchors].long()
    check_in_range("labels", y, num_classes)
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
    return mean_over_ranks(loss, world).to(result_dtype(features))


def _sample_lse(anchors, features, n_batch, lam, world, mode, backend):
    """The lse of each anchor over every row of features but itself: distributed, over
    every rank's [q; k] and this rank's queue (the same on every rank: counted once)."""
    if world == 1:
        return ops.lse(anchors, features, lam, self_offset=0, backend=backend)[0]
    lse = distributed.lse(anchors, features[:n_batch], lam, self_offset=0, mode=mode,
                          backend=backend)
    if n_batch < features.shape[0]:
        lse = logaddexp_safe(lse, ops.lse(anchors, features[n_batch:], lam, backend=backend)[0])
    return lse


@keep_input_layout("features", "sup_logits")
def paco_loss(features: torch.Tensor, labels: torch.Tensor, sup_logits: torch.Tensor,
              class_prior: torch.Tensor, *, alpha: float, beta: float = 1.0, gamma: float = 1.0,
              supt: float = 1.0, temperature: float = 1.0, base_temperature: Optional[float] = None,
              K: int = 128, num_classes: Optional[int] = None, gather_distributed: bool = False,
              distributed_mode: str = "gather", backend: Optional[str] = "auto"):
    """Parametric contrastive loss (Cui et al., 2021), PaCo ``LT/losses.py`` semantics.

    features [N, d] = [q; k; queue] (as PaCo's ``moco/builder.py`` returns them), labels [N],
    sup_logits [B, C] for the B = (N - K) // 2 anchors (the first B rows), class_prior [C]
    (``cls_num_list / sum``). Per anchor: keys = every row but itself (weight gamma) plus
    the C class centers with logits (sup_logits + log(prior + 1e-9)) / supt; positives = its
    true center (weight beta) and every same-label row (weight alpha); loss =
    -(T / base_T) * weighted mean log-prob, averaged over anchors.

    ``gather_distributed`` (torch.distributed): each rank passes its own [q; k; queue], the
    queue the same on every rank (PaCo's builder enqueues every rank's keys:
    :func:`contrastive_kernels.distributed.concat_all_gather`); its anchors are contrasted
    with every rank's q and k (``distributed_mode`` "gather" or "ring") and the queue once,
    the same-label rows counted by class sums all-reduced across ranks. Each rank's loss
    is its share of the global mean: the ranks' mean is the loss of one process over
    [every rank's q; every rank's k; queue], and DDP's gradient average its gradient.
    """
    if class_prior is None:
        raise ValueError("class_prior is required for PaCo (call cal_weight_for_classes)")
    n = features.shape[0] if isinstance(features, torch.Tensor) else 0
    return _parametric_contrastive(
        features, labels, sup_logits, (n - K) // 2, alpha=alpha, beta=beta, gamma=gamma,
        supt=supt, temperature=temperature, base_temperature=base_temperature,
        num_classes=num_classes, prior=class_prior, smooth=0.0, queue_rows=K,
        gather_distributed=gather_distributed, distributed_mode=distributed_mode,
        backend=backend)


@keep_input_layout("features", "sup_logits")
def gpaco_loss(features: torch.Tensor, labels: torch.Tensor, sup_logits: torch.Tensor,
               class_prior: Optional[torch.Tensor] = None, *, alpha: float, beta: float = 1.0,
               gamma: float = 1.0, supt: float = 1.0, temperature: float = 1.0,
               base_temperature: Optional[float] = None, K: int = 8192,
               num_classes: Optional[int] = None, smooth: float = 0.0,
               gather_distributed: bool = False, distributed_mode: str = "gather",
               backend: Optional[str] = "auto"):
    """Generalized PaCo (Cui et al., 2023), GPaCo ``LT/losses.py`` semantics.

    As :func:`paco_loss` but the anchors are the first N - K rows (q and k both), the
    prior enters only when given, and ``smooth`` spreads the center target:
    (1 - smooth) on the true class, smooth / (C - 1) on the others;
    ``gather_distributed`` as in :func:`paco_loss`.
    """
    n = features.shape[0] if isinstance(features, torch.Tensor) else 0
    if not 0 <= smooth < 1:
        raise ValueError(f"smooth must be in [0, 1), got {smooth}")
    return _parametric_contrastive(
        features, labels, sup_logits, n - K, alpha=alpha, beta=beta, gamma=gamma, supt=supt,
        temperature=temperature, base_temperature=base_temperature, num_classes=num_classes,
        prior=class_prior, smooth=smooth, queue_rows=K, gather_distributed=gather_distributed,
        distributed_mode=distributed_mode, backend=backend)


class PaCoLoss(ResizableBuffers):
    """Drop-in for PaCo's ``LT/losses.py`` ``PaCoLoss`` (Cui et al., ICCV 2021).

    ``forward(features, labels, sup_logits)``: features [N, d] = [q; k; queue] from PaCo's
    MoCo builder, labels [N], sup_logits [B, num_classes] for the B = (N - K) // 2 anchors.
    Call :meth:`cal_weight_for_classes` first (the class prior enters the center logits).
    ``mask`` and ``epoch`` are accepted and ignored, as in the original. The prior is a
    buffer, so it is saved and restored with ``state_dict()``.
    """

    _resizable = ("weight",)
    _keeps_dtype = ("weight",)  # the original's prior is a plain fp32 tensor: casts leave it

    def __init__(self, alpha, beta=1.0, gamma=1.0, supt=1.0, temperature=1.0,
                 base_temperature=None, K=128, num_classes=1000, *,
                 gather_distributed: bool = False, distributed_mode: str = "gather",
                 backend: Optional[str] = "auto"):
        super().__init__()
        check_gather_available(gather_distributed, distributed_mode)
        self.gather_distributed = gather_distributed
        self.distributed_mode = distributed_mode
        self.temperature = temperature
        self.base_temperature = temperature if base_temperature is None else base_temperature
        self.K = K
        self.alpha = alpha
        self.beta = beta
        self.gamma = gamma
        self.supt = supt
        self.num_classes = num_classes
        self.backend = backend
        self.register_buffer("weight", torch.empty(0, dtype=torch.float64))  # empty: not set

    def cal_weight_for_classes(self, cls_num_list):
        """The class prior cls_num_list / sum; moved to the features' device in forward."""
        self.weight = class_prior(cls_num_list, self.num_classes, self.weight.device)

    def _prior(self, required: bool = True):
        if self.weight.numel() == 0:
            if not required:
                return None
            raise RuntimeError(f"{type(self).__name__}: call cal_weight_for_classes(cls_num_list) "
                               "before forward (the class prior enters the center logits)")
        return self.weight

    def forward(self, features, labels=None, sup_logits=None, mask=None, epoch=None):
        return paco_loss(
            features, labels, sup_logits, self._prior(), alpha=self.alpha, beta=self.beta,
            gamma=self.gamma, supt=self.supt, temperature=self.temperature,
            base_temperature=self.base_temperature, K=self.K, num_classes=self.num_classes,
            **self._distributed())

    def _distributed(self) -> dict:
        return dict(gather_distributed=self.gather_distributed,
                    distributed_mode=self.distributed_mode, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, supt={self.supt}, "
                f"temperature={self.temperature}, base_temperature={self.base_temperature}, "
                f"K={self.K}, num_classes={self.num_classes}, backend={self.backend!r}")


class GPaCoLoss(PaCoLoss):
    """Drop-in for GPaCo's ``LT/losses.py`` ``PaCoLoss`` (Cui et al., TPAMI 2023).

    Anchors are the first N - K rows (q and k both); the prior is used only once
    :meth:`cal_weight_for_classes` was called; ``smooth`` smooths the center targets.
    """

    def __init__(self, alpha, beta=1.0, gamma=1.0, supt=1.0, temperature=1.0,
                 base_temperature=None, K=8192, num_classes=1000, smooth=0.0, *,
                 gather_distributed: bool = False, distributed_mode: str = "gather",
                 backend: Optional[str] = "auto"):
        super().__init__(alpha, beta, gamma, supt, temperature, base_temperature, K,
                         num_classes, gather_distributed=gather_distributed,
                         distributed_mode=distributed_mode, backend=backend)
        self.smooth = smooth

    def forward(self, features, labels=None, sup_logits=None):
        return gpaco_loss(
            features, labels, sup_logits, self._prior(required=False), alpha=self.alpha,
            beta=self.beta, gamma=self.gamma, supt=self.supt, temperature=self.temperature,
            base_temperature=self.base_temperature, K=self.K, num_classes=self.num_classes,
            smooth=self.smooth, **self._distributed())

    def extra_repr(self) -> str:
        return super().extra_repr() + f", smooth={self.smooth}"


# --------------------------------------------------------------------------- registry

_SOURCE = "dvlab-research/Parametric-Contrastive-Learning"
_CLASSES, _CLASS_COUNTS = 7, (40, 25, 12, 9, 5, 3, 1)   # a long tail, one class of 1


def _case(id, gpaco=False, with_prior=True, **kw):
    """features [q; k; queue] (PaCo: 2B + K rows, GPaCo: B + K), sup_logits of the B anchors."""
    def make(gen, small):
        b, queue, d = (3, 5, 4) if small else (24, 40, 19)
        n = (b + queue) if gpaco else (2 * b + queue)
        labels = torch.randint(0, _CLASSES, (n,), generator=gen)
        return {"features": unit(gen, n, d), "labels": labels,
                "sup_logits": 2.0 * randn(gen, b, _CLASSES), "K": queue,
                "prior": class_prior(_CLASS_COUNTS, _CLASSES) if with_prior else None}

    def call(f, x, **be):
        return f(x["features"], x["labels"], x["sup_logits"], x["prior"], K=x["K"],
                 num_classes=_CLASSES, **kw, **be)
    return LossCase(id, gpaco_loss if gpaco else paco_loss, make, call, ("features", "sup_logits"),
                    full_precision=("prior",))


def _accuracy(gpaco, **kw):
    def make(gen, s):
        anchors = 2 * s.b if gpaco else s.b
        x = {"features": unit(gen, 2 * s.b + s.k, s.d), "sup_logits": 3 * randn(gen, anchors, s.c)}
        x["labels"] = torch.randint(0, s.c, (2 * s.b + s.k,), generator=gen)
        x["prior"] = class_prior((1000 * torch.rand(s.c, generator=gen, dtype=torch.float64) ** 3
                                  + 1).round(), s.c)
        x["K"], x["C"] = s.k, s.c
        return x

    def call(f, x, **be):
        return f(x["features"], x["labels"], x["sup_logits"], x["prior"], alpha=0.05, K=x["K"],
                 num_classes=x["C"], **kw, **be)
    return Accuracy(gpaco_loss if gpaco else paco_loss, make, call, ("features", "sup_logits"),
                    error="1e-14")


_EMPTY = inspect.Parameter.empty
SPECS = (
    LossSpec(
        name="PaCo", family="PaCo", module=PaCoLoss, functional=(paco_loss,),
        helpers=(class_prior,), source=f"{_SOURCE} `LT/losses.py` + `LT/moco/builder.py`",
        cases=(_case("paco", alpha=0.05, temperature=0.07),
               _case("paco_gamma_half_base_t", gamma=0.5, alpha=0.3, beta=0.7, supt=0.8,
                     temperature=0.07, base_temperature=0.1),
               _case("paco_gamma0", gamma=0.0, alpha=0.05, temperature=0.2)),
        accuracy=(_accuracy(False, temperature=0.07),),
        # alpha required, as the issue states the API
        published_signature=dict(alpha=_EMPTY, beta=1.0, gamma=1.0, supt=1.0, temperature=1.0,
                                 base_temperature=None, K=128, num_classes=1000),
        published_forward=("features", "labels", "sup_logits", "mask", "epoch")),
    LossSpec(
        name="GPaCo", family="GPaCo", module=GPaCoLoss, functional=(gpaco_loss,),
        source=f"{_SOURCE} `GPaCo/LT/losses.py`",
        cases=(_case("gpaco_no_prior", gpaco=True, with_prior=False, alpha=0.05, supt=1.5,
                     temperature=0.2, base_temperature=0.07),
               _case("gpaco_prior_smooth", gpaco=True, smooth=0.1, gamma=0.8, alpha=0.05,
                     supt=1.5, temperature=0.2, base_temperature=0.07)),
        accuracy=(_accuracy(True, temperature=0.2, smooth=0.1),),
        published_signature=dict(alpha=_EMPTY, beta=1.0, gamma=1.0, supt=1.0, temperature=1.0,
                                 base_temperature=None, K=8192, num_classes=1000, smooth=0.0),
        published_forward=("features", "labels", "sup_logits")),
)
