"""Row norms that do not overflow, for the fused normalization of the contract.

sqrt(sum x^2) overflows fp32 once an entry passes ~1.8e19 (its square passes fp32's max),
so rows are scaled by their largest magnitude first, as robust norm routines do:
||x|| = m ||x / m||, m = max_j |x_j|.
"""

from __future__ import annotations

import torch


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """||x_i|| for each row of x (in x's dtype), without overflow or underflow."""
    m = x.abs().amax(dim=1) if x.shape[1] else x.new_zeros(x.shape[0])
    scale = torch.where(m > 0, m, torch.ones_like(m))  # zero rows: norm 0; NaN rows stay NaN
    return torch.linalg.vector_norm(x / scale[:, None], dim=1) * scale


def inverse_norms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """1 / max(||x_i||, eps)."""
    return 1.0 / row_norms(x).clamp_min(eps)
