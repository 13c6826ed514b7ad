"""``ops.lse`` under torch.func transforms and forward-mode AD.

The op pairs register their autograd with ``torch.library.register_autograd``, which
torch.func's reverse-mode transforms cannot use ("autograd.Function ... must override the
setup_context staticmethod"), and which forward-mode AD silently skips (a zero tangent from
``torch.func.jvp``, none from dual tensors). So while a functorch transform or a
forward-AD level is active, ``ops.lse`` runs through :class:`CoreOpFunction` instead:

- ``torch.func.grad`` / ``vjp`` / ``jacrev``: its ``setup_context`` / ``backward`` call the
  backend's own backward op (jacrev vmaps that backward op: torch's per-sample fallback);
- ``torch.func.vmap``: a batching rule. Batched queries over shared keys (no self-exclusion,
  no query labels) are one call over the stacked rows, with no fallback; anything else runs
  one call per batch entry;
- forward mode (``torch.func.jvp``, ``jacfwd``, ``torch.autograd.forward_ad``): one clear
  error. The tangent of lse needs a second product with the keys' tangents that no kernel
  computes; reverse mode is the supported alternative.

Outside transforms nothing changes: the op's own registrations (fake, autograd, autocast)
serve plain autograd and torch.compile.
"""

from __future__ import annotations

import torch

from .autograd import gradients, save_context

FORWARD_AD_ERROR = (
    "contrastive_kernels: forward-mode AD of ops.lse (torch.func.jvp / jacfwd, "
    "torch.autograd.forward_ad) is not supported: no kernel computes the tangent's second "
    "product. Use reverse mode (torch.autograd.grad, torch.func.grad / vjp / jacrev).")


def transforms_active() -> bool:
    """Whether a functorch transform or a forward-AD dual level is active (never while
    torch.compile traces: its graph holds the op itself)."""
    if torch.compiler.is_compiling():
        return False
    try:
        if torch._C._are_functorch_transforms_active():
            return True
    except AttributeError:  # pragma: no cover - a torch without the query
        pass
    from torch.autograd import forward_ad
    return getattr(forward_ad, "_current_level", -1) >= 0


class CoreOpFunction(torch.autograd.Function):
    """The core op of one backend, with torch.func's rules."""

    @staticmethod
    def forward(q, k, scale, bias, q_labels, k_labels, self_offset, normalize, eps,
                exclude_positives, return_o, backend):
        return backend.forward(q, k, scale, bias, q_labels, k_labels, self_offset, normalize,
                               eps, exclude_positives, return_o)

    @staticmethod
    def setup_context(ctx, inputs, output):
        save_context(ctx, inputs, output)
        ctx.backend = inputs[-1]

    @staticmethod
    def backward(ctx, grad_lse, grad_o):
        # no graph of the backward (second order is not supported): torch.func runs the
        # backward with grad mode on, and the backward op's own autograd is not func-ready
        with torch.no_grad():
            return gradients(ctx, ctx.backend.backward, grad_lse) + (None,) * 9

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(FORWARD_AD_ERROR)

    @staticmethod
    def vmap(info, in_dims, q, k, scale, bias, q_labels, k_labels, self_offset, normalize,
             eps, exclude_positives, return_o, backend):
        rest = (scale, bias, q_labels, k_labels)
        only_q = all(d is None for d in in_dims[1:6]) and in_dims[0] is not None
        if only_q and self_offset is None and (q_labels is None or not exclude_positives):
            # the batch entries share every key: their rows are one call's rows
            qb = q.movedim(in_dims[0], 0)
            size, n, d = qb.shape
            lse, o = CoreOpFunction.apply(qb.reshape(size * n, d), k, *rest, self_offset,
                                          normalize, eps, exclude_positives, return_o, backend)
            o = o.reshape(size, n, d) if return_o else o
            return (lse.reshape(size, n), o), (0, 0 if return_o else None)
        args = (q, k) + rest
        outs = []
        for b in range(info.batch_size):
            one = [a if a is None or dim is None else a.select(dim, b)
                   for a, dim in zip(args, in_dims[:6])]
            outs.append(CoreOpFunction.apply(*one, self_offset, normalize, eps,
                                             exclude_positives, return_o, backend))
        lse = torch.stack([out[0] for out in outs])
        o = torch.stack([out[1] for out in outs]) if return_o else outs[0][1]
        return (lse, o), (0, 0 if return_o else None)
