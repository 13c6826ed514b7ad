"""Fake implementations, autograd and autocast for any declared (forward, backward) pair.

:func:`register_core_ops` attaches them to a pair declared in C++ (``TORCH_LIBRARY``) or
in Python; :func:`define_core_ops` declares a Python pair from two functions and
registers it. Both use the schemas and output contract of :mod:`.contract`.

- dq / dk come back in q's / k's layout (:mod:`.layout`).
- Second-order gradients are not supported: differentiating the backward op raises one
  clear error on every backend (rather than zeros or an internal error).
- Autocast: under ``torch.autocast`` the forward casts q and k to the autocast dtype (the
  products then run in it, accumulated in fp32, as a matmul under autocast does) and runs
  with autocast off; scale and bias keep their accumulation dtype, lse and o stay fp32.
"""


from __future__ import annotations

from typing import Callable

import torch

from .contract import BACKWARD_SCHEMA, FORWARD_SCHEMA, NAMESPACE, accumulate_dtype, op_names
from .layout import as_layout_of


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


def save_context(ctx, inputs, output):
    """What the backward needs of a forward call (``inputs`` start with the forward
    schema's arguments): q, k, scale, bias, labels, lse and the options; o carries no
    gradient. Shared by the ops' autograd and the torch.func path (:mod:`.transforms`)."""
    q, k, scale, bias, q_labels, k_labels, self_offset, normalize, eps, exclude_positives = \
        inputs[:10]
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(q, k, scale, bias, q_labels, k_labels, output[0])
    ctx.options = (self_offset, normalize, eps, exclude_positives)


def gradients(ctx, backward_op, grad_lse):
    """(dq, dk, dscale) of a saved call by ``backward_op``, None where no gradient is
    needed; dq / dk in q's / k's layout (every backend writes them contiguous)."""
    q, k, scale, bias, q_labels, k_labels, lse = ctx.saved_tensors
    need_dq, need_dk, need_dscale = ctx.needs_input_grad[:3]
    if not (need_dq or need_dk or need_dscale):
        return None, None, None
    if grad_lse is None:
        grad_lse = torch.zeros_like(lse)
    dq, dk, dscale = backward_op(grad_lse.contiguous(), q, k, scale, bias, q_labels, k_labels,
                                 *ctx.options, lse, need_dq, need_dk, need_dscale)
    return (as_layout_of(dq, q) if need_dq else None, as_layout_of(dk, k) if need_dk else None,
            dscale if need_dscale else None)


def _make_autograd(backward_op):
    def backward(ctx, grad_lse, grad_o):
        return gradients(ctx, backward_op, grad_lse) + (None,) * 8

    return save_context, backward


SECOND_ORDER_ERROR = ("contrastive_kernels: second-order gradients (differentiating the core "
                      "op's backward, e.g. autograd.grad(..., create_graph=True) then backward) "
                      "are not supported")


def _no_double_backward(ctx, *grads):
    raise RuntimeError(SECOND_ORDER_ERROR)


def _no_context(ctx, inputs, output):
    return None


def _autocast_kernel(op, device_type: str, first_cast: int):
    """Runs ``op`` with autocast off, after casting its first ``first_cast`` arguments."""
    key = getattr(torch._C.DispatchKey, "Autocast" + torch._C._dispatch_key_for_device(device_type))

    def cast(t):
        if t.is_floating_point() and t.dtype != torch.float64:
            return t.to(torch.get_autocast_dtype(device_type))
        return t

    def run(*args):
        args = tuple(cast(a) for a in args[:first_cast]) + tuple(args[first_cast:])
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            return op(*args)

    def kernel(_keyset, *args):
        return run(*args)

    return key, run, kernel


def _register_autocast(op, first_cast: int, lib) -> None:
    _, name = op.name().split("::")
    for device_type in ("cpu", "cuda"):
        if not torch._C._is_autocast_available(device_type):
            continue
        key, run, kernel = _autocast_kernel(op, device_type, first_cast)
        if op.has_kernel_for_dispatch_key(key):
            op.py_kernels.pop(key, None)
        op.py_impl(key)(run)  # what dynamo's tracing dispatches to
        lib.impl(name, kernel, key.name, with_keyset=True)


def register_core_ops(forward_op, backward_op) -> None:
    """Attach fake implementations, autograd and autocast to a declared pair."""
    torch.library.register_fake(forward_op)(_fake_forward)
    torch.library.register_fake(backward_op)(_fake_backward)
    setup_context, backward = _make_autograd(backward_op)
    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)
    torch.library.register_autograd(backward_op, _no_double_backward, setup_context=_no_context)
    lib = torch.library.Library(NAMESPACE, "FRAGMENT")
    _LIBRARIES.append(lib)
    _register_autocast(forward_op, 2, lib)   # q, k to the autocast dtype
    _register_autocast(backward_op, 0, lib)  # a backward inside the region: as saved


def lookup(kernel_set: str):
    """The (forward, backward) OpOverloads of ``lse_<kernel_set>``."""
    fwd, bwd = op_names(kernel_set)
    namespace = getattr(torch.ops, NAMESPACE)
    return getattr(namespace, fwd).default, getattr(namespace, bwd).default


_LIBRARIES: list = []  # keeps the Library objects (and so their registrations) alive


def define_core_ops(kernel_set: str, forward_impl: Callable, backward_impl: Callable,
                    dispatch_keys=("CompositeExplicitAutograd",)):
    """Declare ``lse_<kernel_set>`` and its backward as Python ops, with fake + autograd."""
    lib = torch.library.Library(NAMESPACE, "FRAGMENT")
    _LIBRARIES.append(lib)
    fwd_name, bwd_name = op_names(kernel_set)
    lib.define(fwd_name + FORWARD_SCHEMA)
    lib.define(bwd_name + BACKWARD_SCHEMA)
    for key in dispatch_keys:
        lib.impl(fwd_name, forward_impl, key)
        lib.impl(bwd_name, backward_impl, key)
    forward_op, backward_op = lookup(kernel_set)
    register_core_ops(forward_op, backward_op)
    return forward_op, backward_op
