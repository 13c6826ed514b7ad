"""The core ops: masked log-sum-exp over normalized similarities, and its gradient.

For queries q [N, d], keys k [M, d] (DESIGN.md section 1):

    s_ij  = scale * <q^_i, k^_j> + bias_j      q^ = q / max(||q||, eps) when normalize
    lse_i = log sum_{j in A(i)} exp(s_ij)      A(i): all j but i + self_offset and, with
                                               exclude_positives, j with k_labels[j] == q_labels[i]
    o_i   = sum_{j in A(i)} exp(s_ij - lse_i) k^_j          (only with return_o)

A row with an empty A(i) gets lse = -inf, o = 0 and no gradient.

Every backend that owns kernels declares the same pair of torch.library ops,
``contrastive_kernels::lse_<backend>`` and ``contrastive_kernels::lse_<backend>_backward``,
with the schemas below; :func:`register_core_ops` attaches the fake implementation
(torch.compile) and the autograd formula to such a pair, whether it was declared in
Python (:func:`define_core_ops`) or in C++ (``TORCH_LIBRARY``).

Op contract, shared by all backends:

- ``scale`` is a 0-dim tensor in the accumulation dtype (float64 for float64 inputs,
  float32 otherwise); lse and o come back in that dtype, dq / dk in the inputs' dtype,
  dscale in the scale's dtype.
- When ``return_o`` is False, o is an empty tensor of shape [0]; when a ``need_*``
  flag is False the matching gradient is an empty tensor ([0] for dq / dk, a 0-dim
  zero for dscale).
- ``bias``, labels and o carry no gradient (o is marked non-differentiable).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from . import backends

NAMESPACE = "contrastive_kernels"

FORWARD_SCHEMA = (
    "(Tensor q, Tensor k, Tensor scale, Tensor? bias, Tensor? q_labels, Tensor? k_labels, "
    "int? self_offset, bool normalize, float eps, bool exclude_positives, bool return_o) "
    "-> (Tensor, Tensor)"
)
BACKWARD_SCHEMA = (
    "(Tensor grad_lse, Tensor q, Tensor k, Tensor scale, Tensor? bias, Tensor? q_labels, "
    "Tensor? k_labels, int? self_offset, bool normalize, float eps, bool exclude_positives, "
    "Tensor lse, bool need_dq, bool need_dk, bool need_dscale) -> (Tensor, Tensor, Tensor)"
)


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- fake / autograd


def _fake_forward(q, k, scale, bias, q_labels, k_labels, self_offset, normalize, eps,
                  exclude_positives, return_o):
    acc = accumulate_dtype(q.dtype)
    lse = q.new_empty((q.shape[0],), dtype=acc)
    o = q.new_empty((q.shape[0], q.shape[1]) if return_o else (0,), dtype=acc)
    return lse, o


def _fake_backward(grad_lse, q, k, scale, bias, q_labels, k_labels, self_offset, normalize,
                   eps, exclude_positives, lse, need_dq, need_dk, need_dscale):
    dq = q.new_empty(q.shape if need_dq else (0,))
    dk = k.new_empty(k.shape if need_dk else (0,))
    return dq, dk, scale.new_empty(())


def _make_autograd(backward_op):
    def setup_context(ctx, inputs, output):
        (q, k, scale, bias, q_labels, k_labels, self_offset, normalize, eps,
         exclude_positives, return_o) = inputs
        lse, o = output
        ctx.mark_non_differentiable(o)
        ctx.save_for_backward(q, k, scale, bias, q_labels, k_labels, lse)
        ctx.options = (self_offset, normalize, eps, exclude_positives)

    def backward(ctx, grad_lse, grad_o):
        q, k, scale, bias, q_labels, k_labels, lse = ctx.saved_tensors
        self_offset, normalize, eps, exclude_positives = ctx.options
        need_dq, need_dk, need_dscale = ctx.needs_input_grad[:3]
        if not (need_dq or need_dk or need_dscale):
            return (None,) * 11
        if grad_lse is None:
            grad_lse = torch.zeros_like(lse)
        dq, dk, dscale = backward_op(
            grad_lse.contiguous(), q, k, scale, bias, q_labels, k_labels, self_offset,
            normalize, eps, exclude_positives, lse, need_dq, need_dk, need_dscale)
        return (dq if need_dq else None, dk if need_dk else None,
                dscale if need_dscale else None) + (None,) * 8

    return setup_context, backward


def register_core_ops(forward_op, backward_op, *, fake: bool = True) -> None:
    """Attach fake implementations and autograd to a declared (forward, backward) pair."""
    if fake:
        torch.library.register_fake(forward_op)(_fake_forward)
        torch.library.register_fake(backward_op)(_fake_backward)
    setup_context, backward = _make_autograd(backward_op)
    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


def define_core_ops(backend_name: str, forward_impl: Callable, backward_impl: Callable,
                    device_types=None):
    """Declare ``lse_<backend>`` and its backward as Python custom ops, with fake + autograd."""
    lib = torch.library.Library(NAMESPACE, "FRAGMENT")
    _LIBRARIES.append(lib)
    fwd_name, bwd_name = f"lse_{backend_name}", f"lse_{backend_name}_backward"
    lib.define(fwd_name + FORWARD_SCHEMA)
    lib.define(bwd_name + BACKWARD_SCHEMA)
    for key in device_types or ("CompositeExplicitAutograd",):
        lib.impl(fwd_name, forward_impl, key)
        lib.impl(bwd_name, backward_impl, key)
    forward_op = getattr(getattr(torch.ops, NAMESPACE), fwd_name).default
    backward_op = getattr(getattr(torch.ops, NAMESPACE), bwd_name).default
    register_core_ops(forward_op, backward_op)
    return forward_op, backward_op


_LIBRARIES: list = []  # keeps the Library objects (and so their registrations) alive


# --------------------------------------------------------------------------- public entry


def _check_inputs(q, k, bias, q_labels, k_labels, self_offset, exclude_positives, eps):
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D [rows, d], got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point (fp16/bf16/fp32/fp64), got {t.dtype}")
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"q and k must have the same feature size d, got q {tuple(q.shape)} "
                         f"and k {tuple(k.shape)}")
    if q.dtype != k.dtype:
        raise TypeError(f"q and k must share a dtype, got q {q.dtype} and k {k.dtype}")
    if q.device != k.device:
        raise ValueError(f"q and k must be on one device, got q on {q.device}, k on {k.device}")
    if bias is not None:
        if bias.shape != (k.shape[0],):
            raise ValueError(f"bias must have shape [M] = [{k.shape[0]}], got {tuple(bias.shape)}")
        if bias.device != k.device:
            raise ValueError(f"bias must be on {k.device}, got {bias.device}")
        if bias.requires_grad and torch.is_grad_enabled():
            raise ValueError("bias carries no gradient in the core op; pass bias.detach()")
    for name, t, rows in (("q_labels", q_labels, q.shape[0]), ("k_labels", k_labels, k.shape[0])):
        if t is not None:
            if t.shape != (rows,):
                raise ValueError(f"{name} must have shape [{rows}], got {tuple(t.shape)}")
            if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
                raise TypeError(f"{name} must be an integer tensor, got {t.dtype}")
            if t.device != q.device:
                raise ValueError(f"{name} must be on {q.device}, got {t.device}")
    if exclude_positives and (q_labels is None or k_labels is None):
        raise ValueError("exclude_positives=True needs both q_labels and k_labels")
    if self_offset is not None and not isinstance(self_offset, int):
        raise TypeError(f"self_offset must be an int or None, got {type(self_offset).__name__}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")


def _scale_tensor(scale, q: torch.Tensor) -> torch.Tensor:
    acc = accumulate_dtype(q.dtype)
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise ValueError(f"scale must be a float or a 0-dim tensor, got shape {tuple(scale.shape)}")
        if scale.device != q.device:
            raise ValueError(f"scale must be on {q.device}, got {scale.device}")
        return scale.reshape(()).to(acc)
    if not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or a 0-dim tensor, got {type(scale).__name__}")
    # torch.full, not torch.tensor: a fill kernel, no host-to-device copy that syncs.
    return torch.full((), float(scale), dtype=acc, device=q.device)


def lse(q: torch.Tensor, k: torch.Tensor, scale=1.0, *, bias: Optional[torch.Tensor] = None,
        q_labels: Optional[torch.Tensor] = None, k_labels: Optional[torch.Tensor] = None,
        self_offset: Optional[int] = None, normalize: bool = False, eps: float = 1e-12,
        exclude_positives: bool = False, return_o: bool = False, backend: Optional[str] = "auto"):
    """Masked log-sum-exp of ``scale * <q^_i, k^_j> + bias_j`` over the keys each row may see.

    Returns ``(lse, o)``: lse [N] in float32 (float64 for float64 inputs), differentiable in
    q, k and a tensor ``scale``; o [N, d] (``return_o=True``, not differentiable) or None.
    See the module docstring for the exact contract.
    """
    _check_inputs(q, k, bias, q_labels, k_labels, self_offset, exclude_positives, eps)
    scale_t = _scale_tensor(scale, q)
    if bias is not None:
        bias = bias.to(scale_t.dtype)
    if not exclude_positives:
        q_labels = k_labels = None  # labels only matter for exclusion
    opts = backends.CoreOptions(normalize=normalize, has_bias=bias is not None,
                                has_labels=q_labels is not None, has_self=self_offset is not None,
                                return_o=return_o)
    chosen = backends.select(backend, q, k, opts)
    lse_out, o = chosen.forward(q, k, scale_t, bias, q_labels, k_labels, self_offset,
                                bool(normalize), float(eps), bool(exclude_positives), bool(return_o))
    return lse_out, (o if return_o else None)
