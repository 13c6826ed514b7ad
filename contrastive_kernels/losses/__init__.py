"""The loss family: one module per family, each holding its functional form and its
nn.Module drop-in; the shared row algebra is :mod:`.algebra`."""

from .clip import ClipLoss, InfoNCE, clip_loss, info_nce
from .dcl import DCLLoss, DCLWLoss, dcl_loss, dclw_loss, negative_mises_fisher_weights
from .hcl import HCLLoss, hcl_loss
from .ntxent import MemoryBank, NTXentLoss, ntxent_loss
from .paco import GPaCoLoss, PaCoLoss, class_prior, gpaco_loss, paco_loss
from .queue import BingoLoss, CLSALoss, MoCoLoss, bingo_loss, clsa_ddm_loss, clsa_loss, moco_loss
from .supcon import SupConLoss, supcon_loss

MODULES = ["SupConLoss", "PaCoLoss", "GPaCoLoss", "NTXentLoss", "ClipLoss", "InfoNCE", "MoCoLoss",
           "CLSALoss", "BingoLoss", "DCLLoss", "DCLWLoss", "HCLLoss"]
FUNCTIONS = ["supcon_loss", "paco_loss", "gpaco_loss", "class_prior", "ntxent_loss", "clip_loss",
             "info_nce", "moco_loss", "clsa_ddm_loss", "clsa_loss", "bingo_loss", "dcl_loss",
             "dclw_loss", "negative_mises_fisher_weights", "hcl_loss"]
__all__ = MODULES + FUNCTIONS + ["MemoryBank"]
