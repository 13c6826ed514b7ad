"""Fused, memory-lean kernels for contrastive losses.

Every loss is a masked log-sum-exp over normalized similarities (the core op,
:func:`contrastive_kernels.ops.lse`) plus O((N + M) d) algebra, so no N x M matrix is held.
"""

from . import _extension  # noqa: F401  (loads the compiled ops and registers them, or warns)
from . import functional, ops
from ._version import __version__
from .backends import BackendError, available_backends
from .losses import (BingoLoss, ClipLoss, CLSALoss, DCLLoss, DCLWLoss, GPaCoLoss, HCLLoss,
                     InfoNCE, MoCoLoss, NTXentLoss, PaCoLoss, SupConLoss)

__all__ = ["SupConLoss", "PaCoLoss", "GPaCoLoss", "NTXentLoss", "ClipLoss", "InfoNCE", "MoCoLoss",
           "CLSALoss", "BingoLoss", "DCLLoss", "DCLWLoss", "HCLLoss",
           "functional", "ops", "available_backends", "BackendError", "__version__"]
