"""The public core op ``ops.lse``: validate, select a backend, call its op."""

from __future__ import annotations

from typing import Optional

import torch

from ..backends import registry
from .contract import CoreOptions, canonical_labels, scale_tensor, validate
from .transforms import CoreOpFunction, transforms_active


def lse(q: torch.Tensor, k: torch.Tensor, scale=1.0, *, bias: Optional[torch.Tensor] = None,
        q_labels: Optional[torch.Tensor] = None, k_labels: Optional[torch.Tensor] = None,
        self_offset: Optional[int] = None, normalize: bool = False, eps: float = 1e-12,
        exclude_positives: bool = False, return_o: bool = False, backend: Optional[str] = "auto"):
    """Masked log-sum-exp of ``scale * <q^_i, k^_j> + bias_j`` over the keys each row may see.

    Returns ``(lse, o)``: lse [N] in float32 (float64 for float64 inputs), differentiable in
    q, k and a tensor ``scale``; o [N, d] (``return_o=True``, not differentiable) or None.
    The exact contract is in :mod:`contrastive_kernels.core.contract`.
    """
    validate(q, k, bias, q_labels, k_labels, self_offset, exclude_positives, eps)
    scale_t = scale_tensor(scale, q)
    if bias is not None:
        bias = bias.to(scale_t.dtype).contiguous()
    if exclude_positives:
        q_labels, k_labels = canonical_labels(q_labels, k_labels)
    else:
        q_labels = k_labels = None
    opts = CoreOptions(normalize=bool(normalize), has_bias=bias is not None,
                       has_labels=q_labels is not None, has_self=self_offset is not None,
                       return_o=bool(return_o))
    chosen = registry.select(backend, q, opts)
    args = (q, k, scale_t, bias, q_labels, k_labels, self_offset, bool(normalize), float(eps),
            bool(exclude_positives), bool(return_o))
    if chosen.backward is not None and transforms_active():  # torch.func, forward AD
        lse_out, o = CoreOpFunction.apply(*args, chosen)
    else:
        lse_out, o = chosen.forward(*args)
    return lse_out, (o if return_o else None)
