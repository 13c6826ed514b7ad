"""``pairwise_sigmoid`` (SigLIP's loss) on the Triton kernels: the launchers of its forward
and backward.

    s_ij = scale <q^_i, k^_j> + b_j,  x_ij = -z_ij s_ij  (z = +1 on the positives)
    row_loss_i = sum_j softplus(x_ij)

The same kernels as lse, with REDUCTION = SIGMOID (score_tile): the score tile marks the
positives (equal labels, the self pair) and flips their sign instead of excluding them.

Forward: ONE sweep of the row-block grid (``lse_forward``): per row the sum of softplus
(sigmoid_math: one exp per logit, log1p by a polynomial on the FMA units), no pivot;
with the key split the S ranges' partial sums are added in order s = 0..S-1.

Backward: the dq grid (rows own, keys streamed) and the dk grid (keys own, rows
streamed) of ``lse_backward``, each recomputing its tiles once with the weights

    w_ij = dL/ds_ij = -z_ij sigmoid(x_ij) g_i       (one exp and one reciprocal)

then dq^ = scale sum_j w_ij k^_j, dk^ = scale sum_i w_ij q^_i, dscale = sum_ij w_ij c^_ij
and the normalization Jacobian as for lse. The dk grid also sums each owned key's weights,
dbias_j = sum_i w_ij, in a fixed order per program (split: one part per range, summed in
order), so every output is bitwise deterministic; it runs for dbias alone when dk is not
needed.

Plain functions with the flat signatures of the op's schemas (``kPairwiseSigmoid`` in
csrc/common/contract.h), declared as core ops by ``_ops``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import launch
from .score_tile import SIGMOID


def pairwise_sigmoid_forward(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor,
                             bias: Optional[torch.Tensor], q_labels: Optional[torch.Tensor],
                             k_labels: Optional[torch.Tensor], self_offset: Optional[int],
                             normalize: bool, eps: float) -> torch.Tensor:
    """row_loss [N] in the accumulation dtype."""
    row_loss, _, _ = launch.forward(q, k, scale, bias, q_labels, k_labels, self_offset,
                                    normalize, eps, False, False, SIGMOID)
    return row_loss


def pairwise_sigmoid_backward(grad_row_loss: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                              scale: torch.Tensor, bias: Optional[torch.Tensor],
                              q_labels: Optional[torch.Tensor], k_labels: Optional[torch.Tensor],
                              self_offset: Optional[int], normalize: bool, eps: float,
                              row_loss: torch.Tensor, need_dq: bool, need_dk: bool,
                              need_dscale: bool, need_dbias: bool
                              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq [N, d] or an empty [0], dk likewise, dscale 0-dim in scale's dtype, dbias [M] in
    the accumulation dtype or an empty [0]). The weights need no saved statistic:
    ``row_loss`` is not read."""
    return launch.backward(grad_row_loss, q, k, scale, bias, q_labels, k_labels, self_offset,
                           normalize, eps, False, row_loss, need_dq, need_dk, need_dscale,
                           reduction=SIGMOID, need_dbias=need_dbias and bias is not None)
