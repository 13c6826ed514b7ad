"""Functional forms of the losses (defined in :mod:`contrastive_kernels.losses`), and the
row algebra they share, under the names this module has always had."""

from .losses import (bingo_loss, class_prior, clip_loss, clsa_ddm_loss, clsa_loss,  # noqa: F401
                     dcl_loss, dclw_loss, gpaco_loss, hcl_loss, info_nce, moco_loss,
                     negative_mises_fisher_weights, ntxent_loss, paco_loss, supcon_loss)
from .losses.algebra import label_segments, segment_sums, unit_rows  # noqa: F401
