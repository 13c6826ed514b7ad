"""The core ops' public entries (``ck.ops.lse``, ``ck.ops.two_sided_lse``): build the
call's problem (validated once), select a backend for the op, call its op pair.

The contract is :mod:`contrastive_kernels.core.contract`, each op's spec
:mod:`contrastive_kernels.core.ops`. This module sits above the backend registry; core/
below it knows no backend.
"""

from __future__ import annotations

from typing import Optional

import torch

from .backends import registry
from .core.autograd import define_op, register_op  # noqa: F401
from .core.contract import (BACKWARD_SCHEMA, FORWARD_SCHEMA, NAMESPACE,  # noqa: F401
                            accumulate_dtype)
from .core.ops import LSE, PAIRWISE_SIGMOID, SPECS, TWO_SIDED_LSE, OpSpec
from .core.problem import PairProblem
from .core.transforms import CoreOpFunction, transforms_active


def call(spec: OpSpec, problem: PairProblem, options: dict, backend: Optional[str] = "auto"):
    """Run op ``spec`` on a built problem with the op's own ``options``: the chosen
    backend's forward, through :class:`CoreOpFunction` under torch.func transforms."""
    chosen = registry.select(backend, problem.q, problem.features(spec, options), op=spec.name)
    pair = chosen.ops[spec.name]
    args = problem.args() + tuple(options[name] for name in spec.option_names)
    if pair.backward is not None and transforms_active():  # torch.func, forward AD
        return spec.as_outputs(CoreOpFunction.apply(spec, pair, *args))
    return spec.as_outputs(pair.forward(*args))


def _options(spec: OpSpec, given: dict) -> dict:
    return {name: bool(given.get(name, default)) for _, name, default in spec.options}


def lse(q: torch.Tensor, k: torch.Tensor, scale=1.0, *, bias: Optional[torch.Tensor] = None,
        q_labels: Optional[torch.Tensor] = None, k_labels: Optional[torch.Tensor] = None,
        self_offset: Optional[int] = None, normalize: bool = False, eps: float = 1e-12,
        exclude_positives: bool = False, return_o: bool = False, backend: Optional[str] = "auto"):
    """Masked log-sum-exp of ``scale * <q^_i, k^_j> + bias_j`` over the keys each row may see.

    Returns ``(lse, o)``: lse [N] in float32 (float64 for float64 inputs), differentiable in
    q, k and a tensor ``scale``; o [N, d] (``return_o=True``, not differentiable) or None.
    The exact contract is in :mod:`contrastive_kernels.core.ops.lse`.
    """
    options = _options(LSE, dict(exclude_positives=exclude_positives, return_o=return_o))
    problem = PairProblem.build(LSE, q, k, scale, bias=bias, q_labels=q_labels,
                                k_labels=k_labels, self_offset=self_offset, normalize=normalize,
                                eps=eps, **options)
    lse_out, o = call(LSE, problem, options, backend)
    return lse_out, (o if return_o else None)


def two_sided_lse(q: torch.Tensor, k: torch.Tensor, scale=1.0, *,
                  bias: Optional[torch.Tensor] = None, q_labels: Optional[torch.Tensor] = None,
                  k_labels: Optional[torch.Tensor] = None, self_offset: Optional[int] = None,
                  normalize: bool = False, eps: float = 1e-12, exclude_positives: bool = False,
                  backend: Optional[str] = "auto"):
    """Both directions of the masked log-sum-exp from one sweep over the tiles.

    Returns ``(row_lse, col_lse)``: row_lse [N] over each row's keys and col_lse [M] over
    each key's rows (the same excluded pairs leave both), in float32 (float64 for float64
    inputs), both differentiable in q, k and a tensor ``scale``. CLIP's loss is
    ``(mean(row_lse) + mean(col_lse)) / 2 - mean(s_ii)``. The exact contract is in
    :mod:`contrastive_kernels.core.ops.two_sided_lse`.
    """
    options = _options(TWO_SIDED_LSE, dict(exclude_positives=exclude_positives))
    problem = PairProblem.build(TWO_SIDED_LSE, q, k, scale, bias=bias, q_labels=q_labels,
                                k_labels=k_labels, self_offset=self_offset, normalize=normalize,
                                eps=eps, **options)
    return call(TWO_SIDED_LSE, problem, options, backend)


def pairwise_sigmoid(q: torch.Tensor, k: torch.Tensor, scale=1.0, bias=None, *,
                     q_labels: Optional[torch.Tensor] = None,
                     k_labels: Optional[torch.Tensor] = None, self_offset: Optional[int] = None,
                     normalize: bool = False, eps: float = 1e-12,
                     backend: Optional[str] = "auto"):
    """Per-row sigmoid loss ``row_loss_i = sum_j softplus(-z_ij s_ij)`` (SigLIP), with
    ``s_ij = scale * <q^_i, k^_j> + bias`` and z = +1 on the positive pairs, -1 elsewhere.

    Positives: (i, i + self_offset) when ``self_offset`` is given (SigLIP's diagonal: 0),
    and the pairs with equal labels when ``q_labels`` and ``k_labels`` are given; neither:
    every pair is a negative. ``bias``: None, a float, a 0-dim tensor or one per key [M];
    differentiable, like ``scale``. Returns row_loss [N] in float32 (float64 for float64
    inputs). The exact contract is in :mod:`contrastive_kernels.core.ops.pairwise_sigmoid`.
    """
    if bias is not None:
        bias = _per_key_bias(bias, q, k)
    problem = PairProblem.build(PAIRWISE_SIGMOID, q, k, scale, bias=bias, q_labels=q_labels,
                                k_labels=k_labels, self_offset=self_offset, normalize=normalize,
                                eps=eps)
    (row_loss,) = call(PAIRWISE_SIGMOID, problem, {}, backend)
    return row_loss


def _per_key_bias(bias, q, k):
    """A float or one-element bias as [M] (expanded: its gradient sums the keys')."""
    if isinstance(bias, torch.Tensor) and bias.dim() == 1 and bias.shape[0] == k.shape[0]:
        return bias
    from .core.contract import check_real_scalar
    check_real_scalar("bias", bias, q.device)
    if not isinstance(bias, torch.Tensor):
        bias = torch.tensor(float(bias), dtype=accumulate_dtype(q.dtype), device=q.device)
    return bias.reshape(()).expand(k.shape[0])


__all__ = ["lse", "two_sided_lse", "pairwise_sigmoid", "call", "SPECS"]
