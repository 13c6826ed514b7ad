"""One call's pair problem, built once after validation and handed to the backends.

The public entries (``ops.lse``, ``ops.two_sided_lse``) build a :class:`PairProblem` from
the user's arguments: scale as the contract's 0-dim tensor, bias in the accumulation dtype
and contiguous, labels canonical by one rule (:func:`.contract.canonical_labels`) and only
when the op compares them. The flat argument list exists only at the ``torch.library``
boundary (:meth:`PairProblem.args`); a Python kernel set rebuilds the problem from it with
:meth:`PairProblem.from_args`, so no layer converts again.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from .contract import CoreOptions, canonical_labels, scale_tensor, validate
from .ops import PAIR_NAMES, OpSpec


@dataclasses.dataclass(frozen=True)
class PairProblem:
    q: torch.Tensor
    k: torch.Tensor
    scale: torch.Tensor                 # 0-dim, accumulation dtype (may need a grad)
    bias: Optional[torch.Tensor]        # [M], accumulation dtype, contiguous
    q_labels: Optional[torch.Tensor]    # canonical, or None when not compared
    k_labels: Optional[torch.Tensor]
    self_offset: Optional[int]
    normalize: bool
    eps: float

    @classmethod
    def build(cls, spec: OpSpec, q, k, scale, *, bias=None, q_labels=None, k_labels=None,
              self_offset=None, normalize=False, eps=1e-12, **options) -> "PairProblem":
        """Validate the user's arguments (naming the bad one) and lay them out once."""
        validate(q, k, bias, q_labels, k_labels, self_offset,
                 bool(options.get("exclude_positives", False)), eps,
                 bias_differentiable="dbias" in spec.gradients)
        scale_t = scale_tensor(scale, q)
        if bias is not None:
            bias = bias.to(scale_t.dtype).contiguous()
        if spec.labels_active(options) and q_labels is not None and k_labels is not None:
            q_labels, k_labels = canonical_labels(q_labels, k_labels)
        else:
            q_labels = k_labels = None
        return cls(q, k, scale_t, bias, q_labels, k_labels, self_offset, bool(normalize),
                   float(eps))

    @classmethod
    def from_args(cls, args) -> "PairProblem":
        """The problem of a flat op call (its first arguments are the pair prefix)."""
        return cls(*args[:len(PAIR_NAMES)])

    def args(self) -> tuple:
        """The pair prefix of the ops' schemas."""
        return tuple(getattr(self, name) for name in PAIR_NAMES)

    def features(self, spec: OpSpec, options: dict) -> CoreOptions:
        """What the call asks of a backend (the optional features it uses)."""
        return CoreOptions(normalize=self.normalize, has_bias=self.bias is not None,
                           has_labels=self.q_labels is not None,
                           has_self=self.self_offset is not None,
                           return_o=bool(options.get("return_o", False)))
