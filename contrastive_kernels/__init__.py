"""Fused, memory-lean kernels for contrastive losses.

Every loss is a masked log-sum-exp over normalized similarities (the core op,
:func:`contrastive_kernels.ops.lse`) plus O((N + M) d) algebra, so no N x M matrix is held.
The loss modules exported here are those of the registry (:data:`contrastive_kernels.losses.SPECS`).
"""

from . import _extension  # noqa: F401  (loads the compiled ops and registers them, or warns)
from . import functional, losses, ops
from ._version import __version__
from .cached_gradient import cached_gradient_step
from .backends import BackendError, available_backends

globals().update({name: getattr(losses, name) for name in losses.MODULES})

__all__ = list(losses.MODULES) + ["functional", "ops", "available_backends", "BackendError",
                                  "cached_gradient_step", "__version__"]
