"""Hard-negative contrastive loss (Robinson et al., ICLR 2021; joshr17/HCL ``image/main.py``).

The importance-weighted negative sum is two core-op calls at scales (1 + beta) / T and
beta / T, each excluding the row itself and its partner through labels.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .. import distributed
from ..core.layout import keep_input_layout
from .algebra import (check_gather_available, check_pair, check_positive, lse_over_ranks,
                      mean_over_ranks, result_dtype, rowdot, unit_rows)
from .spec import Accuracy, LossCase, LossSpec, pair_inputs, two_views, unit


def check_estimator(estimator):
    if estimator not in ("hard", "easy"):
        raise ValueError(f"estimator must be 'hard' or 'easy', got {estimator!r}")


@keep_input_layout("out_1", "out_2")
def hcl_loss(out_1: torch.Tensor, out_2: torch.Tensor, temperature: float = 0.5,
             tau_plus: float = 0.1, beta: float = 1.0, estimator: str = "hard", *,
             normalize: bool = False, eps: float = 1e-12, gather_distributed: bool = False,
             distributed_mode: str = "gather", backend: Optional[str] = "auto"):
    """Hard-negative contrastive loss (Robinson et al., joshr17/HCL ``image/main.py``).

    2B anchors [out_1; out_2]; negatives of row i: every row but itself and its partner
    (N = 2B - 2 of them), neg_ij = exp(s_ij / T); pos_i = exp(<out_1, out_2> / T).
    'hard': Ng = (-tau_plus N pos + sum_j neg^(1+beta) / mean_j neg^beta) / (1 - tau_plus),
    clamped below at N e^(-1/T); 'easy': Ng = sum_j neg. loss = mean -log(pos / (pos + Ng)).
    The two sums are core-op calls at scales (1 + beta) / T and beta / T. Rows are used as
    given (HCL's model normalizes them); ``normalize=True`` normalizes them first.
    ``gather_distributed``: every rank's rows are negatives (N = 2 B_global - 2;
    ``distributed_mode`` "gather" or "ring": :func:`contrastive_kernels.distributed.lse`),
    each rank's loss its share of the global mean (uneven batches weighted).
    """
    check_pair("out_1", out_1, "out_2", out_2)
    check_positive("temperature", temperature)
    check_estimator(estimator)
    check_gather_available(gather_distributed, distributed_mode)
    batch = out_1.shape[0]
    if batch < 2:
        raise ValueError(f"HCL needs a batch of at least 2 pairs (out_1 has {batch} rows)")
    if not 0 <= tau_plus < 1:
        raise ValueError(f"tau_plus must be in [0, 1), got {tau_plus}")
    world, rank = distributed.world() if gather_distributed else (1, 0)
    z = torch.cat([out_1, out_2], dim=0)
    # self and partner share an id, unique over the ranks
    counts = distributed.row_counts(batch, z.device) if world > 1 else [batch]
    pair = (torch.arange(batch, device=z.device) + sum(counts[:rank])).repeat(2)
    u1, u2 = unit_rows(out_1, normalize, eps), unit_rows(out_2, normalize, eps)
    log_pos = torch.cat([rowdot(u1, u2)] * 2) / temperature
    kw = dict(q_labels=pair, k_labels=pair, exclude_positives=True, normalize=normalize,
              eps=eps, backend=backend)

    def lse_of(scale):  # over every rank's rows when distributed
        return lse_over_ranks(z, z, scale, world, distributed_mode, **kw)

    def mean(loss):
        return mean_over_ranks(loss, world, 2 * sum(counts)).to(result_dtype(out_1))

    if estimator == "easy":
        lse = lse_of(1.0 / temperature)
        return mean(torch.logaddexp(log_pos, lse) - log_pos)

    n_neg = 2 * sum(counts) - 2
    lse_hard = lse_of((1.0 + beta) / temperature)  # log sum neg^(1+beta)
    lse_imp = lse_of(beta / temperature)           # log sum neg^beta
    log_reweight = lse_hard - lse_imp + math.log(n_neg)
    # Ng and pos + Ng scaled by e^-c (c detached) so that nothing overflows
    c = torch.maximum(log_reweight, log_pos).detach()
    ng = (torch.exp(log_reweight - c) - tau_plus * n_neg * torch.exp(log_pos - c)) / (1 - tau_plus)
    ng = torch.clamp(ng, min=n_neg * math.exp(-1.0 / temperature) * torch.exp(-c))
    loss = c + torch.log(torch.exp(log_pos - c) + ng) - log_pos
    return mean(loss)


class HCLLoss(nn.Module):
    """Hard-negative contrastive loss (Robinson et al., ICLR 2021; joshr17/HCL
    ``image/main.py`` ``criterion``): ``forward(out_1, out_2)``; the batch size is taken
    from the inputs. Rows used as given (HCL's model normalizes them) unless ``normalize``."""

    def __init__(self, temperature: float = 0.5, tau_plus: float = 0.1, beta: float = 1.0,
                 estimator: str = "hard", *, normalize: bool = False,
                 gather_distributed: bool = False, distributed_mode: str = "gather",
                 backend: Optional[str] = "auto"):
        super().__init__()
        check_estimator(estimator)
        check_gather_available(gather_distributed, distributed_mode)
        self.gather_distributed = gather_distributed
        self.distributed_mode = distributed_mode
        self.temperature = temperature
        self.tau_plus = tau_plus
        self.beta = beta
        self.estimator = estimator
        self.normalize = normalize
        self.backend = backend

    def forward(self, out_1, out_2):
        return hcl_loss(out_1, out_2, self.temperature, self.tau_plus, self.beta,
                        self.estimator, normalize=self.normalize,
                        gather_distributed=self.gather_distributed,
                        distributed_mode=self.distributed_mode, backend=self.backend)


# --------------------------------------------------------------------------- registry


def _case(id, estimator, tau_plus=0.1, beta=1.0, temperature=0.5, aligned=False):
    return LossCase(id, hcl_loss, pair_inputs(unit_rows=True, aligned=aligned),
                    lambda f, x, **be: f(x["out0"], x["out1"], temperature, tau_plus, beta,
                                         estimator, **be),
                    ("out0", "out1"))


SPECS = (
    LossSpec(
        name="HCL", family="HCL", module=HCLLoss, functional=(hcl_loss,),
        source="joshr17/HCL `image/main.py` `criterion`",
        cases=(_case("hcl_hard", "hard"),
               # views aligned: the clamp of Ng fires for some rows, not all
               _case("hcl_hard_beta3_clamped", "hard", tau_plus=0.5, beta=3.0, temperature=0.3,
                     aligned=True),
               _case("hcl_easy", "easy")),
        accuracy=(Accuracy(
            hcl_loss,
            lambda gen, s: two_views(gen, 2 * s.b, s.d, draw=unit),
            lambda f, x, **be: f(x["out0"], x["out1"], 0.5, 0.1, 1.0, "hard", **be),
            ("out0", "out1"), error="1e-15"),)),
)
