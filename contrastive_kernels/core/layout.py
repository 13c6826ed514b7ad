"""Gradients in the layout their inputs came in.

Autograd hands each input's gradient to whatever made that input exactly as the backward
produced it. A loss that views its rows through ``transpose`` / ``reshape`` (SupCon's
view-major rows, BINGO's positive keys) would return a strided gradient for a contiguous
input, and some consumers mishandle one: ``torch.distributed.nn.all_gather``'s backward
over gloo gave wrong parameter gradients (the SupContrast issue 26 recipe). So every
loss's differentiable inputs pass through :func:`keep_input_layout`, and the core op's
backward returns dq / dk with q's / k's strides: contiguous where the input was, the
input's own strides where it was a dense strided view, contiguous otherwise.
"""

from __future__ import annotations

import functools

import torch


def same_layout(shape, stride_a, stride_b) -> bool:
    """Whether two tensors of ``shape`` lay their elements out alike (the stride of a dim
    of size 1 is irrelevant)."""
    return all(n <= 1 or a == b for n, a, b in zip(shape, stride_a, stride_b))


def layout_of(x: torch.Tensor):
    """The strides a gradient of x should have (what ``torch.empty_like`` keeps: x's for a
    non-overlapping dense layout, else contiguous), or None for contiguous; found without
    allocating or keeping x."""
    return None if x.is_contiguous() else torch.empty_like(x, device="meta").stride()


def in_layout(grad: torch.Tensor, stride) -> torch.Tensor:
    """``grad`` with ``stride`` (:func:`layout_of`; None: contiguous), copied only when its
    own layout differs."""
    if stride is None:
        return grad.contiguous()
    if same_layout(grad.shape, grad.stride(), stride):
        return grad
    return torch.empty_strided(grad.shape, stride, dtype=grad.dtype,
                               device=grad.device).copy_(grad)


def as_layout_of(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``grad`` in ``like``'s layout."""
    return in_layout(grad, layout_of(like))


class _KeepLayout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.stride = layout_of(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return in_layout(grad, ctx.stride)


def keep_layout(x):
    """x, whose gradient comes back in x's layout (lists / tuples: each tensor)."""
    if isinstance(x, (list, tuple)):
        return type(x)(keep_layout(t) for t in x)
    if isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled():
        return _KeepLayout.apply(x)
    return x


def keep_input_layout(*names):
    """Decorator: the named arguments' gradients come back in their own layout (anything
    that is not a tensor requiring grad passes unchanged, to be validated by the loss)."""
    def decorate(fn):
        code = fn.__code__
        positions = {name: code.co_varnames[:code.co_argcount].index(name) for name in names}

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            args = list(args)
            for name, pos in positions.items():
                if name in kwargs:
                    kwargs[name] = keep_layout(kwargs[name])
                elif pos < len(args):
                    args[pos] = keep_layout(args[pos])
            return fn(*args, **kwargs)
        return wrapper
    return decorate
