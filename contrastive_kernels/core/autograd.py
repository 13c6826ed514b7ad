"""Fake implementations, autograd and autocast of any declared op pair, derived from the
op's spec (:mod:`.ops`).

:func:`register_op` attaches them to a pair declared in C++ (``TORCH_LIBRARY``) or in
Python; :func:`define_op` declares a Python pair from two functions and registers it.

- The forward's differentiable outputs are saved; the backward takes one incoming gradient
  per differentiable output (zeros for an unused one) and returns (dq, dk, dscale); dq / dk
  come back in q's / k's layout (:mod:`.layout`).
- Second-order gradients are not supported: differentiating the backward op raises one
  clear error on every backend (rather than zeros or an internal error).
- Autocast: under ``torch.autocast`` the forward casts q and k to the autocast dtype (the
  products then run in it, accumulated in fp32, as a matmul under autocast does) and runs
  with autocast off; scale and bias keep their accumulation dtype, the outputs stay fp32.
"""

from __future__ import annotations

from typing import Callable

import torch

from .layout import as_layout_of
from .ops import LSE, PAIR_PREFIX, OpSpec

NAMESPACE = "contrastive_kernels"
_PAIR = len(PAIR_PREFIX)


def save_context(spec: OpSpec, ctx, inputs, output):
    """What the backward needs of a forward call (``inputs`` start with the forward
    schema's arguments): q, k, scale, bias, labels, the differentiable outputs and the
    options; the other outputs carry no gradient. Shared by the ops' autograd and the
    torch.func path (:mod:`.transforms`)."""
    q, k, scale, bias, q_labels, k_labels, self_offset, normalize, eps = inputs[:_PAIR]
    options = dict(zip(spec.option_names, inputs[_PAIR:]))
    saved = []
    for out, tensor in zip(spec.outputs, spec.as_outputs(output)):
        if out.differentiable:
            saved.append(tensor)
        else:
            ctx.mark_non_differentiable(tensor)
    ctx.save_for_backward(q, k, scale, bias, q_labels, k_labels, *saved)
    ctx.options = (self_offset, normalize, eps) + tuple(options[n] for n in spec.backward_options)
    ctx.spec = spec


def gradients(ctx, backward_op, grads, need=None):
    """The gradients of the spec's first inputs ((dq, dk, dscale), plus dbias for an op with
    a differentiable bias) of a saved call by ``backward_op`` from the incoming gradients of
    every forward output, None where no gradient is needed (``need``: whether each of those
    inputs needs one; default their ``needs_input_grad``); dq / dk in q's / k's layout
    (every backend writes them contiguous)."""
    q, k, scale, bias, q_labels, k_labels, *saved = ctx.saved_tensors
    count = len(ctx.spec.gradients)
    need = list(ctx.needs_input_grad[:count] if need is None else need)
    if count > 3:
        need[3] = bool(need[3]) and bias is not None
    if not any(need):
        return (None,) * count
    incoming = [g for out, g in zip(ctx.spec.outputs, grads) if out.differentiable]
    incoming = [torch.zeros_like(s) if g is None else g.contiguous()
                for g, s in zip(incoming, saved)]
    out = backward_op(*incoming, q, k, scale, bias, q_labels, k_labels, *ctx.options, *saved,
                      *need)
    dq, dk = out[0], out[1]
    return ((as_layout_of(dq, q) if need[0] else None, as_layout_of(dk, k) if need[1] else None)
            + tuple(g if n else None for g, n in zip(out[2:], need[2:])))


def _make_autograd(spec: OpSpec, backward_op):
    rest = (None,) * (_PAIR + len(spec.options) - len(spec.gradients))

    def setup_context(ctx, inputs, output):
        save_context(spec, ctx, inputs, output)

    def backward(ctx, *grads):
        return gradients(ctx, backward_op, grads) + rest

    return setup_context, backward


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


def register_op(spec: OpSpec, forward_op, backward_op) -> None:
    """Attach fake implementations, autograd and autocast to a declared pair of ``spec``."""
    torch.library.register_fake(forward_op)(spec.fake_forward)
    torch.library.register_fake(backward_op)(spec.fake_backward)
    setup_context, backward = _make_autograd(spec, backward_op)
    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)
    torch.library.register_autograd(backward_op, _no_double_backward, setup_context=_no_context)
    lib = torch.library.Library(NAMESPACE, "FRAGMENT")
    _LIBRARIES.append(lib)
    _register_autocast(forward_op, 2, lib)   # q, k to the autocast dtype
    _register_autocast(backward_op, 0, lib)  # a backward inside the region: as saved


def lookup(kernel_set: str, spec: OpSpec = LSE):
    """The (forward, backward) OpOverloads of ``<op>_<kernel_set>``."""
    fwd, bwd = spec.op_names(kernel_set)
    namespace = getattr(torch.ops, NAMESPACE)
    return getattr(namespace, fwd).default, getattr(namespace, bwd).default


_LIBRARIES: list = []  # keeps the Library objects (and so their registrations) alive


def define_op(spec: OpSpec, kernel_set: str, forward_impl: Callable, backward_impl: Callable,
              dispatch_keys=("CompositeExplicitAutograd",)):
    """Declare ``<op>_<kernel_set>`` and its backward as Python ops, with fake + autograd."""
    lib = torch.library.Library(NAMESPACE, "FRAGMENT")
    _LIBRARIES.append(lib)
    fwd_name, bwd_name = spec.op_names(kernel_set)
    lib.define(fwd_name + spec.forward_schema())
    lib.define(bwd_name + spec.backward_schema())
    for key in dispatch_keys:
        lib.impl(fwd_name, forward_impl, key)
        lib.impl(bwd_name, backward_impl, key)
    forward_op, backward_op = lookup(kernel_set, spec)
    register_op(spec, forward_op, backward_op)
    return forward_op, backward_op

