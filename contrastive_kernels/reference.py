"""Compatibility names: the reference core op and the oracle losses.

The reference core op is :mod:`contrastive_kernels.backends.reference`; the faithful
re-implementations of the published losses are :mod:`contrastive_kernels.testing.reference_losses`.
"""

from .backends.reference import excluded_mask, lse_reference  # noqa: F401
from .testing.reference_losses import *  # noqa: F401,F403
