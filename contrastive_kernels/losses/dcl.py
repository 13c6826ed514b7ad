"""Decoupled contrastive learning (Yeh et al. 2022), lightly ``DCLLoss`` / ``DCLWLoss``:
the positive pair is dropped from the denominator, which is a core-op call with the
partner excluded.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import nn

from .. import distributed
from ..core.layout import keep_input_layout
from .algebra import (check_gather_available, check_pair, check_positive, lse_over_ranks,
                      mean_over_ranks, result_dtype, rowdot, unit_rows)
from .spec import Accuracy, Anchor, LossCase, LossSpec, library_loss, pair_inputs, two_views


def negative_mises_fisher_weights(out0: torch.Tensor, out1: torch.Tensor,
                                  sigma: float = 0.5) -> torch.Tensor:
    """DCLW's weights w_i = 2 - B softmax_i(<out0_i, out1_i> / sigma), no gradient (lightly)."""
    sim = rowdot(out0.detach(), out1.detach()) / sigma
    return 2 - out0.shape[0] * torch.softmax(sim, dim=0)


@keep_input_layout("out0", "out1")
def dcl_loss(out0: torch.Tensor, out1: torch.Tensor, temperature: float = 0.1,
             weight_fn=None, *, gather_distributed: bool = False,
             distributed_mode: str = "gather", eps: float = 1e-12,
             backend: Optional[str] = "auto"):
    """Decoupled contrastive loss (Yeh et al.), lightly ``DCLLoss`` semantics (>= 1.5.21).

    Rows L2-normalized. For out0_i: -w_i <out0_i, out1_i> / T + one log-sum-exp over every
    negative: the other out0 rows and the other out1 rows together (its own row and its
    positive dropped), averaged, and symmetrized with out0 <-> out1.
    ``weight_fn(out0, out1)`` gets the normalized rows and returns per-pair weights [B].
    ``gather_distributed``: every rank's rows are negatives (``distributed_mode`` "gather"
    or "ring": :func:`contrastive_kernels.distributed.lse`), each rank's loss its share of
    the global mean (equal batches: the local mean, as lightly; uneven ones weighted).
    """
    check_pair("out0", out0, "out1", out1)
    check_positive("temperature", temperature)
    check_gather_available(gather_distributed, distributed_mode)
    lam = 1.0 / temperature
    u0, u1 = unit_rows(out0, True, eps), unit_rows(out1, True, eps)
    world, rank = distributed.world() if gather_distributed else (1, 0)
    pos = lam * rowdot(u0, u1)
    # keys [out0; out1] (every rank's) labelled by their global sample id, so excluding a
    # query's own label drops both its own row and its positive in one call
    batch = out0.shape[0]
    counts = distributed.row_counts(batch, out0.device) if world > 1 else [batch]
    q_labels = torch.arange(batch, device=out0.device) + sum(counts[:rank])
    keys, k_labels = torch.cat([out0, out1]), q_labels.repeat(2)

    def one_side(x, w):
        lse_neg = lse_over_ranks(x, keys, lam, world, distributed_mode, q_labels=q_labels,
                                 k_labels=k_labels, exclude_positives=True, normalize=True,
                                 eps=eps, backend=backend)
        positive = -pos if w is None else -pos * w
        return mean_over_ranks(positive + lse_neg, world, sum(counts))

    w0 = w1 = None
    if weight_fn is not None:
        w0 = _checked_weights(weight_fn(u0, u1), batch, out0.device)
        w1 = _checked_weights(weight_fn(u1, u0), batch, out0.device)
    loss = 0.5 * (one_side(out0, w0) + one_side(out1, w1))
    return loss.to(result_dtype(out0))


def _checked_weights(w, batch: int, device: torch.device) -> torch.Tensor:
    if not isinstance(w, torch.Tensor) or w.shape not in ((batch,), ()):
        shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"weight_fn must return per-pair weights of shape [B] = [{batch}] "
                         f"(or a scalar), got {shape}")
    if w.device != device:
        raise ValueError(f"weight_fn must return weights on {device} (the device of out0), "
                         f"got {w.device}")
    return w


@keep_input_layout("out0", "out1")
def dclw_loss(out0: torch.Tensor, out1: torch.Tensor, temperature: float = 0.1,
              sigma: float = 0.5, *, gather_distributed: bool = False,
              distributed_mode: str = "gather", eps: float = 1e-12,
              backend: Optional[str] = "auto"):
    """Weighted DCL: :func:`dcl_loss` with the negative von Mises-Fisher weights."""
    check_positive("sigma", sigma)
    return dcl_loss(out0, out1, temperature,
                    lambda a, b: negative_mises_fisher_weights(a, b, sigma),
                    gather_distributed=gather_distributed, distributed_mode=distributed_mode,
                    eps=eps, backend=backend)


class DCLLoss(nn.Module):
    """Drop-in for lightly's ``DCLLoss`` (decoupled contrastive learning, Yeh et al. 2022)."""

    def __init__(self, temperature: float = 0.1, weight_fn=None, gather_distributed: bool = False,
                 *, distributed_mode: str = "gather", backend: Optional[str] = "auto"):
        super().__init__()
        check_gather_available(gather_distributed, distributed_mode)
        self.temperature = temperature
        self.weight_fn = weight_fn
        self.gather_distributed = gather_distributed
        self.distributed_mode = distributed_mode
        self.backend = backend

    def forward(self, out0, out1):
        return dcl_loss(out0, out1, self.temperature, self.weight_fn,
                        gather_distributed=self.gather_distributed,
                        distributed_mode=self.distributed_mode, backend=self.backend)


class DCLWLoss(DCLLoss):
    """Drop-in for lightly's ``DCLWLoss``: DCL with negative von Mises-Fisher weights.

    ``forward`` is :func:`dclw_loss`, so the module validates sigma exactly as the
    functional form does (``weight_fn`` is kept as lightly exposes it).
    """

    def __init__(self, temperature: float = 0.1, sigma: float = 0.5,
                 gather_distributed: bool = False, *, distributed_mode: str = "gather",
                 backend: Optional[str] = "auto"):
        super().__init__(temperature, functools.partial(negative_mises_fisher_weights, sigma=sigma),
                         gather_distributed, distributed_mode=distributed_mode, backend=backend)
        self.sigma = sigma

    def forward(self, out0, out1):
        return dclw_loss(out0, out1, self.temperature, self.sigma,
                         gather_distributed=self.gather_distributed,
                         distributed_mode=self.distributed_mode, backend=self.backend)


# --------------------------------------------------------------------------- registry


def _accuracy(function, name, *args):
    return Accuracy(function,
                    lambda gen, s: two_views(gen, 2 * s.b, s.d),
                    lambda f, x, **be: f(x["out0"], x["out1"], *args, **be), ("out0", "out1"),
                    error="1e-14",
                    anchor=Anchor("lightly", "1.6", library_loss(
                        "lightly.loss", name, ("out0", "out1"), *args), error="1e-14"))


SPECS = (
    LossSpec(
        name="DCL", family="DCL", module=DCLLoss, functional=(dcl_loss,),
        source=("lightly `lightly/loss/dcl_loss.py` `DCLLoss` (>= 1.5.21: one log-sum-exp over "
                "all negatives)"),
        cases=(LossCase("dcl", dcl_loss, pair_inputs(),
                        lambda f, x, **be: f(x["out0"], x["out1"], 0.1, **be), ("out0", "out1")),),
        accuracy=(_accuracy(dcl_loss, "DCLLoss", 0.1),),
        published_signature=dict(temperature=0.1, weight_fn=None, gather_distributed=False),
        published_forward=("out0", "out1")),
    LossSpec(
        name="DCLW", family="DCLW", module=DCLWLoss, functional=(dclw_loss,),
        helpers=(negative_mises_fisher_weights,),
        source="lightly `lightly/loss/dcl_loss.py` `DCLWLoss` (>= 1.5.21, as DCL)",
        cases=(LossCase("dclw", dclw_loss, pair_inputs(),
                        lambda f, x, **be: f(x["out0"], x["out1"], 0.1, 0.5, **be),
                        ("out0", "out1"), gradcheck=()),),
        accuracy=(_accuracy(dclw_loss, "DCLWLoss", 0.1, 0.5),),
        published_signature=dict(temperature=0.1, sigma=0.5, gather_distributed=False),
        published_forward=("out0", "out1")),
)
