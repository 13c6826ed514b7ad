"""The core ops under torch.func transforms and forward-mode AD.

The op pairs register their autograd with ``torch.library.register_autograd``, which
torch.func's reverse-mode transforms cannot use ("autograd.Function ... must override the
setup_context staticmethod"), and which forward-mode AD silently skips (a zero tangent from
``torch.func.jvp``, none from dual tensors). So while a functorch transform or a
forward-AD level is active, a core op runs through :class:`CoreOpFunction` instead:

- ``torch.func.grad`` / ``vjp`` / ``jacrev``: its ``setup_context`` / ``backward`` call the
  backend's own backward op (jacrev vmaps that backward op: torch's per-sample fallback);
- ``torch.func.vmap``: a batching rule. For an op whose rows are independent (``lse``),
  batched queries over shared keys (no self-exclusion, no query labels) are one call over
  the stacked rows, with no fallback; anything else runs one call per batch entry;
- forward mode (``torch.func.jvp``, ``jacfwd``, ``torch.autograd.forward_ad``): one clear
  error. The tangent needs a second product with the keys' tangents that no kernel
  computes; reverse mode is the supported alternative.

Outside transforms nothing changes: the op's own registrations (fake, autograd, autocast)
serve plain autograd and torch.compile.
"""

from __future__ import annotations

import torch

from .autograd import gradients, save_context
from .ops import PAIR_PREFIX

FORWARD_AD_ERROR = (
    "contrastive_kernels: forward-mode AD of ops.{op} (torch.func.jvp / jacfwd, "
    "torch.autograd.forward_ad) is not supported: no kernel computes the tangent's second "
    "product. Use reverse mode (torch.autograd.grad, torch.func.grad / vjp / jacrev).")

_PAIR = len(PAIR_PREFIX)


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
    """One op of one backend, with torch.func's rules: ``apply(spec, pair, *args)`` with
    the op's flat arguments and the backend's :class:`~..backends.registry.OpPair`."""

    @staticmethod
    def forward(spec, pair, *args):
        return pair.forward(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        spec, pair = inputs[:2]
        save_context(spec, ctx, inputs[2:], output)
        ctx.pair = pair

    @staticmethod
    def backward(ctx, *grads):
        # no graph of the backward (second order is not supported): torch.func runs the
        # backward with grad mode on, and the backward op's own autograd is not func-ready
        count = len(ctx.spec.gradients)
        with torch.no_grad():
            grads_in = gradients(ctx, ctx.pair.backward, grads, ctx.needs_input_grad[2:2 + count])
        rest = (None,) * (_PAIR + len(ctx.spec.options) - count)
        return (None, None) + grads_in + rest

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(FORWARD_AD_ERROR.format(op=ctx.spec.name))

    @staticmethod
    def vmap(info, in_dims, spec, pair, *args):
        in_dims = in_dims[2:]
        q, k = args[0], args[1]
        self_offset = args[6]
        options = dict(zip(spec.option_names, args[_PAIR:]))
        q_labels_used = args[4] is not None and spec.labels_active(options)
        only_q = in_dims[0] is not None and all(d is None for d in in_dims[1:6])
        if spec.rows_independent and only_q and self_offset is None and not q_labels_used:
            # the batch entries share every key: their rows are one call's rows
            qb = q.movedim(in_dims[0], 0)
            size, n, d = qb.shape
            outs = spec.as_outputs(CoreOpFunction.apply(spec, pair, qb.reshape(size * n, d),
                                                        *args[1:]))
            shaped, dims = [], []
            for out, t in zip(spec.outputs, outs):
                if t.numel() == 0 and out.when is not None:
                    shaped.append(t)
                    dims.append(None)
                else:
                    shaped.append(t.reshape((size, n) + tuple(t.shape[1:])))
                    dims.append(0)
            return spec.returned(shaped), spec.returned(dims)
        per_entry = []
        for b in range(info.batch_size):
            one = [a if a is None or dim is None else a.select(dim, b)
                   for a, dim in zip(args, in_dims)]
            per_entry.append(spec.as_outputs(CoreOpFunction.apply(spec, pair, *one)))
        stacked, dims = [], []
        for i, out in enumerate(spec.outputs):
            first = per_entry[0][i]
            if first.numel() == 0 and out.when is not None:
                stacked.append(first)
                dims.append(None)
            else:
                stacked.append(torch.stack([entry[i] for entry in per_entry]))
                dims.append(0)
        return spec.returned(stacked), spec.returned(dims)
