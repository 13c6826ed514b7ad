"""nn.Module drop-ins for the published losses, backed by the fused core op."""

from __future__ import annotations

import functools
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


# --------------------------------------------------------------------------- PaCo / GPaCo


class PaCoLoss(nn.Module):
    """Drop-in for PaCo's ``LT/losses.py`` ``PaCoLoss`` (Cui et al., ICCV 2021).

    ``forward(features, labels, sup_logits)``: features [N, d] = [q; k; queue] from PaCo's
    MoCo builder, labels [N], sup_logits [B, num_classes] for the B = (N - K) // 2 anchors.
    Call :meth:`cal_weight_for_classes` first (the class prior enters the center logits).
    ``mask`` and ``epoch`` are accepted and ignored, as in the original.
    """

    def __init__(self, alpha, beta=1.0, gamma=1.0, supt=1.0, temperature=1.0,
                 base_temperature=None, K=128, num_classes=1000, *,
                 backend: Optional[str] = "auto"):
        super().__init__()
        self.temperature = temperature
        self.base_temperature = temperature if base_temperature is None else base_temperature
        self.K = K
        self.alpha = alpha
        self.beta = beta
        self.gamma = gamma
        self.supt = supt
        self.num_classes = num_classes
        self.backend = backend
        self.weight = None

    def cal_weight_for_classes(self, cls_num_list):
        """The class prior cls_num_list / sum; moved to the features' device in forward."""
        self.weight = functional.class_prior(cls_num_list, self.num_classes)

    def _prior(self):
        if self.weight is None:
            raise RuntimeError(f"{type(self).__name__}: call cal_weight_for_classes(cls_num_list) "
                               "before forward (the class prior enters the center logits)")
        return self.weight

    def forward(self, features, labels=None, sup_logits=None, mask=None, epoch=None):
        return functional.paco_loss(
            features, labels, sup_logits, self._prior(), alpha=self.alpha, beta=self.beta,
            gamma=self.gamma, supt=self.supt, temperature=self.temperature,
            base_temperature=self.base_temperature, K=self.K, num_classes=self.num_classes,
            backend=self.backend)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, supt={self.supt}, "
                f"temperature={self.temperature}, base_temperature={self.base_temperature}, "
                f"K={self.K}, num_classes={self.num_classes}, backend={self.backend!r}")


class GPaCoLoss(PaCoLoss):
    """Drop-in for GPaCo's ``LT/losses.py`` ``PaCoLoss`` (Cui et al., TPAMI 2023).

    Anchors are the first N - K rows (q and k both); the prior is used only once
    :meth:`cal_weight_for_classes` was called; ``smooth`` smooths the center targets.
    """

    def __init__(self, alpha, beta=1.0, gamma=1.0, supt=1.0, temperature=1.0,
                 base_temperature=None, K=8192, num_classes=1000, smooth=0.0, *,
                 backend: Optional[str] = "auto"):
        super().__init__(alpha, beta, gamma, supt, temperature, base_temperature, K,
                         num_classes, backend=backend)
        self.smooth = smooth

    def forward(self, features, labels=None, sup_logits=None):
        return functional.gpaco_loss(
            features, labels, sup_logits, self.weight, alpha=self.alpha, beta=self.beta,
            gamma=self.gamma, supt=self.supt, temperature=self.temperature,
            base_temperature=self.base_temperature, K=self.K, num_classes=self.num_classes,
            smooth=self.smooth, backend=self.backend)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", smooth={self.smooth}"


# --------------------------------------------------------------------------- NT-Xent


class MemoryBank(nn.Module):
    """lightly's ``MemoryBankModule`` behaviour: a FIFO of ``size`` past out1 rows.

    Filled lazily with random unit rows on first use (drawn as lightly does, randn(d, size)
    normalized per column, in the first batch's dtype); :meth:`forward` returns the bank
    as it was before this step and enqueues ``output`` (detached) when ``update``.
    Stored as rows [size, d].
    """

    def __init__(self, size: int = 2 ** 16):
        super().__init__()
        if size < 0:
            raise ValueError(f"Illegal memory bank size {size}, must be non-negative.")
        self.size = size
        self.register_buffer("bank", torch.empty(0), persistent=False)
        self.register_buffer("bank_ptr", torch.zeros(1, dtype=torch.long), persistent=False)

    @torch.no_grad()
    def _init_memory_bank(self, like: torch.Tensor):
        bank = torch.randn(like.shape[1], self.size, dtype=like.dtype)
        bank = torch.nn.functional.normalize(bank, dim=0)
        self.bank = bank.T.contiguous().to(like.device)
        self.bank_ptr = torch.zeros(1, dtype=torch.long, device=like.device)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, batch: torch.Tensor):
        batch_size = batch.shape[0]
        ptr = int(self.bank_ptr)
        if ptr + batch_size >= self.size:
            self.bank[ptr:] = batch[: self.size - ptr].detach().to(self.bank.dtype)
            self.bank_ptr[0] = 0
        else:
            self.bank[ptr:ptr + batch_size] = batch.detach().to(self.bank.dtype)
            self.bank_ptr[0] = ptr + batch_size

    def forward(self, output: torch.Tensor, update: bool = False, gather: bool = False):
        """(output, the bank before this step or None); ``gather`` enqueues the rows of
        every rank (torch.distributed), as lightly does with gather_distributed."""
        if self.size == 0:
            return output, None
        if self.bank.numel() == 0:
            self._init_memory_bank(output)
        bank = self.bank.clone().detach()
        if update:
            rows = output
            if gather and functional._world()[0] > 1:
                rows = torch.cat(functional._gather(output.detach(), False), dim=0)
            self._dequeue_and_enqueue(rows)
        return output, bank


class NTXentLoss(nn.Module):
    """Drop-in for lightly's ``NTXentLoss`` (SimCLR's NT-Xent; MoCo-style with a bank).

    ``forward(out0, out1)``: rows normalized inside. ``memory_bank_size > 0``: out0 rows are
    the anchors, keys [own out1 row; bank], and out1 (normalized) enters the bank when out0
    requires grad. ``gather_distributed``: keys from every rank (torch.distributed).
    Equals pytorch-metric-learning's ``NTXentLoss`` on [out0; out1] with labels
    [0..B-1, 0..B-1] (one positive per row).
    """

    def __init__(self, temperature: float = 0.5, memory_bank_size: int = 0,
                 gather_distributed: bool = False, *, backend: Optional[str] = "auto"):
        super().__init__()
        if abs(temperature) < 1e-8:
            raise ValueError(f"Illegal temperature: abs({temperature}) < 1e-8")
        if gather_distributed and not torch.distributed.is_available():
            raise ValueError("gather_distributed is True but torch.distributed is not available")
        self.temperature = temperature
        self.memory_bank_size = memory_bank_size
        self.gather_distributed = gather_distributed
        self.backend = backend
        self.memory_bank = MemoryBank(memory_bank_size)

    def forward(self, out0: torch.Tensor, out1: torch.Tensor) -> torch.Tensor:
        negatives = None
        if self.memory_bank_size > 0:
            unit1 = torch.nn.functional.normalize(out1, dim=1)
            _, negatives = self.memory_bank(unit1, update=out0.requires_grad,
                                            gather=self.gather_distributed)
            negatives = negatives.to(out0.dtype)
        return functional.ntxent_loss(out0, out1, self.temperature, negatives,
                                      gather_distributed=self.gather_distributed,
                                      backend=self.backend)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, memory_bank_size={self.memory_bank_size}, "
                f"gather_distributed={self.gather_distributed}, backend={self.backend!r}")


# --------------------------------------------------------------------------- CLIP / InfoNCE


class ClipLoss(nn.Module):
    """Drop-in for open_clip's ``ClipLoss`` (symmetric InfoNCE over image-text pairs).

    ``forward(image_features, text_features, logit_scale, logit_bias=None, output_dict=False)``;
    logit_scale (already exponentiated) may carry a gradient. world_size > 1 gathers the
    features over torch.distributed (``local_loss``, ``gather_with_grad`` as open_clip);
    Horovod is not supported.
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False,
                 cache_labels: bool = False, rank: int = 0, world_size: int = 1,
                 use_horovod: bool = False, *, backend: Optional[str] = "auto"):
        super().__init__()
        if use_horovod:
            raise NotImplementedError("use_horovod=True is not supported; use torch.distributed")
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels  # labels are implicit (the diagonal): nothing to cache
        self.rank = rank
        self.world_size = world_size
        self.use_horovod = use_horovod
        self.backend = backend

    def forward(self, image_features, text_features, logit_scale, logit_bias=None,
                output_dict: bool = False):
        loss = functional.clip_loss(
            image_features, text_features, logit_scale, logit_bias, local_loss=self.local_loss,
            gather_with_grad=self.gather_with_grad, rank=self.rank, world_size=self.world_size,
            backend=self.backend)
        return {"contrastive_loss": loss} if output_dict else loss


class InfoNCE(nn.Module):
    """InfoNCE module (info-nce-pytorch ``InfoNCE`` semantics, 'unpaired' negatives), with
    ``symmetric`` for the CLIP-style two-way in-batch loss."""

    def __init__(self, temperature: float = 0.1, reduction: str = "mean",
                 negative_mode: str = "unpaired", symmetric: bool = False, *,
                 backend: Optional[str] = "auto"):
        super().__init__()
        if negative_mode != "unpaired":
            raise ValueError(f"negative_mode must be 'unpaired' (shared negative keys), "
                             f"got {negative_mode!r}")
        self.temperature = temperature
        self.reduction = reduction
        self.negative_mode = negative_mode
        self.symmetric = symmetric
        self.backend = backend

    def forward(self, query, positive_key, negative_keys=None):
        return functional.info_nce(query, positive_key, negative_keys, self.temperature,
                                   self.symmetric, self.reduction, backend=self.backend)


# --------------------------------------------------------------------------- MoCo / CLSA / BINGO


class MoCoLoss(nn.Module):
    """MoCo's contrastive loss (facebookresearch/moco ``builder.py`` logits + cross-entropy).

    ``forward(q, k, queue)``: q, k [N, d] normalized by the model, queue [K, d] rows (MoCo
    keeps the transpose, [d, K]: pass ``queue.T``). Keys per query: its own k row and the
    queue; ``in_batch_negatives=True`` adds the other k rows.
    """

    def __init__(self, temperature: float = 0.07, in_batch_negatives: bool = False, *,
                 backend: Optional[str] = "auto"):
        super().__init__()
        self.temperature = temperature
        self.in_batch_negatives = in_batch_negatives
        self.backend = backend

    def forward(self, q, k, queue):
        return functional.moco_loss(q, k, queue, self.temperature,
                                    in_batch_negatives=self.in_batch_negatives,
                                    backend=self.backend)


class CLSALoss(nn.Module):
    """CLSA's loss for one weak view (maple-research-lab/CLSA ``model/CLSA.py`` +
    ``training/train.py``): contrastive cross-entropy of q_weak over [k (in-batch); queue]
    at ``T``, plus ``alpha`` x the DDM loss at ``clsa_t`` for each strong view.

    ``forward(q_weak, q_strong, k, queue)``; q_strong is a tensor or a list of tensors.
    """

    def __init__(self, T: float = 0.2, clsa_t: float = 0.2, alpha: float = 1.0, *,
                 backend: Optional[str] = "auto"):
        super().__init__()
        self.T = T
        self.clsa_t = clsa_t
        self.alpha = alpha
        self.backend = backend

    def forward(self, q_weak, q_strong, k, queue):
        return functional.clsa_loss(q_weak, q_strong, k, queue, self.T, self.clsa_t, self.alpha,
                                    backend=self.backend)


class BingoLoss(nn.Module):
    """BINGO's multi-positive cross-entropy (haohang96/bingo ``MulposCrossEntropy`` over the
    builder's logits): ``forward(q, positive_keys, queue, lam=None)`` with positive_keys
    [N, P, d], queue [K, d]; ``lam`` (per call, as the original) defaults to the module's."""

    def __init__(self, temperature: float = 0.2, lam=(0.5, 0.5), *,
                 backend: Optional[str] = "auto"):
        super().__init__()
        self.temperature = temperature
        self.lam = tuple(lam)
        self.backend = backend

    def forward(self, q, positive_keys, queue, lam=None):
        return functional.bingo_loss(q, positive_keys, queue, self.lam if lam is None else lam,
                                     self.temperature, backend=self.backend)


# --------------------------------------------------------------------------- DCL / DCLW / HCL


class DCLLoss(nn.Module):
    """Drop-in for lightly's ``DCLLoss`` (decoupled contrastive learning, Yeh et al. 2022)."""

    def __init__(self, temperature: float = 0.1, weight_fn=None, gather_distributed: bool = False,
                 *, backend: Optional[str] = "auto"):
        super().__init__()
        if gather_distributed and not torch.distributed.is_available():
            raise ValueError("gather_distributed is True but torch.distributed is not available")
        self.temperature = temperature
        self.weight_fn = weight_fn
        self.gather_distributed = gather_distributed
        self.backend = backend

    def forward(self, out0, out1):
        return functional.dcl_loss(out0, out1, self.temperature, self.weight_fn,
                                   gather_distributed=self.gather_distributed,
                                   backend=self.backend)


class DCLWLoss(DCLLoss):
    """Drop-in for lightly's ``DCLWLoss``: DCL with negative von Mises-Fisher weights."""

    def __init__(self, temperature: float = 0.1, sigma: float = 0.5,
                 gather_distributed: bool = False, *, backend: Optional[str] = "auto"):
        super().__init__(temperature, functools.partial(
            functional.negative_mises_fisher_weights, sigma=sigma), gather_distributed,
            backend=backend)
        self.sigma = sigma


class HCLLoss(nn.Module):
    """Hard-negative contrastive loss (Robinson et al., ICLR 2021; joshr17/HCL
    ``image/main.py`` ``criterion``): ``forward(out_1, out_2)``; the batch size is taken
    from the inputs. Rows used as given (HCL's model normalizes them) unless ``normalize``."""

    def __init__(self, temperature: float = 0.5, tau_plus: float = 0.1, beta: float = 1.0,
                 estimator: str = "hard", *, normalize: bool = False,
                 backend: Optional[str] = "auto"):
        super().__init__()
        if estimator not in ("hard", "easy"):
            raise ValueError(f"estimator must be 'hard' or 'easy', got {estimator!r}")
        self.temperature = temperature
        self.tau_plus = tau_plus
        self.beta = beta
        self.estimator = estimator
        self.normalize = normalize
        self.backend = backend

    def forward(self, out_1, out_2):
        return functional.hcl_loss(out_1, out_2, self.temperature, self.tau_plus, self.beta,
                                   self.estimator, normalize=self.normalize, backend=self.backend)
