"""Functional forms of the losses (defined in :mod:`contrastive_kernels.losses`, one per
registered loss, with their helper functions such as ``class_prior``)."""

from . import losses

__all__ = list(losses.FUNCTIONS)
globals().update({name: getattr(losses, name) for name in __all__})
