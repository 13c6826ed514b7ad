"""The two-sided log-sum-exp on the Triton kernels: the launchers of its forward and backward.

    s_ij      = scale <q^_i, k^_j> + b_j, excluded pairs -inf   (score_tile, as for lse)
    row_lse_i = log sum_j e^{s_ij}      col_lse_j = log sum_i e^{s_ij}

Forward: ONE sweep of the row-block grid (``lse_forward`` with REDUCTION =
ROWS_AND_COLUMNS): the row statistics exactly as the lse op computes them, and per
(row block, column) a partial (max, sum) merged per column over the row blocks in a fixed
order (``key_split.merge_kernel``), so both results are bitwise deterministic.

Backward: the dq grid and the dk grid (``lse_backward`` with REDUCTION =
ROWS_AND_COLUMNS), each recomputing its tiles once with the weights

    w_ij = g_i e^{s_ij - row_lse_i} + h_j e^{s_ij - col_lse_j}

(a line whose lse is -inf adds no term), then dq^ = scale sum_j w_ij k^_j,
dk^ = scale sum_i w_ij q^_i, dscale = sum_ij w_ij <q^_i, k^_j> and the normalization
Jacobian as for lse.

Plain functions with the flat signatures of the op's schemas (``kTwoSidedLse`` in
csrc/common/contract.h): every kernel is launched through ``wrap_triton``, so a
``torch.library.triton_op`` around them (as ``_ops`` declares lse) lets torch.compile see
the launches.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import launch
from .score_tile import ROWS_AND_COLUMNS


def two_sided_lse_forward(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor,
                          bias: Optional[torch.Tensor], q_labels: Optional[torch.Tensor],
                          k_labels: Optional[torch.Tensor], self_offset: Optional[int],
                          normalize: bool, eps: float, exclude_positives: bool
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(row_lse [N], col_lse [M]) in the accumulation dtype."""
    row_lse, _, col_lse = launch.forward(q, k, scale, bias, q_labels, k_labels, self_offset,
                                         normalize, eps, exclude_positives, False,
                                         ROWS_AND_COLUMNS)
    return row_lse, col_lse


def two_sided_lse_backward(grad_row_lse: torch.Tensor, grad_col_lse: torch.Tensor,
                           q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor,
                           bias: Optional[torch.Tensor], q_labels: Optional[torch.Tensor],
                           k_labels: Optional[torch.Tensor], self_offset: Optional[int],
                           normalize: bool, eps: float, exclude_positives: bool,
                           row_lse: torch.Tensor, col_lse: torch.Tensor, need_dq: bool,
                           need_dk: bool, need_dscale: bool
                           ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq [N, d] or an empty [0], dk likewise, dscale 0-dim in scale's dtype)."""
    return launch.backward(grad_row_lse, q, k, scale, bias, q_labels, k_labels, self_offset,
                           normalize, eps, exclude_positives, row_lse, need_dq, need_dk,
                           need_dscale, grad_col=grad_col_lse, col_lse=col_lse)[:3]
