"""nn.Module drop-ins for the published losses, backed by the fused core op."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from . import functional


class SupConLoss(nn.Module):
    """Drop-in for SupContrast's ``SupConLoss`` (Khosla et al., 2020).

    Same constructor and ``forward(features, labels=None, mask=None)`` as the original,
    plus keyword-only ``normalize`` (fuse F.normalize of the features) and ``backend``.
    Memory is O(N d) instead of the original's several N x N matrices.
    """

    def __init__(self, temperature: float = 0.07, contrast_mode: str = "all",
                 base_temperature: float = 0.07, *, normalize: bool = False,
                 backend: Optional[str] = "auto"):
        super().__init__()
        if contrast_mode not in ("all", "one"):
            raise ValueError(f"Unknown mode: {contrast_mode!r} (contrast_mode must be 'all' or 'one')")
        self.temperature = temperature
        self.contrast_mode = contrast_mode
        self.base_temperature = base_temperature
        self.normalize = normalize
        self.backend = backend

    def forward(self, features: torch.Tensor, labels: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return functional.supcon_loss(
            features, labels, mask, self.temperature, self.contrast_mode,
            self.base_temperature, normalize=self.normalize, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, contrast_mode={self.contrast_mode!r}, "
                f"base_temperature={self.base_temperature}, normalize={self.normalize}, "
                f"backend={self.backend!r}")
