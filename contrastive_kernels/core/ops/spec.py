"""An op of the family, as data: the shared pair prefix, the op's own inputs, outputs and
saved tensors. Everything else is derived from it: the schemas (here), the fake kernels,
autograd and autocast (:mod:`..autograd`), the C++ copy of the schemas is compared with
these per op (``csrc/common/contract.h``, tests/core/test_op_specs.py).

Every op reduces the same similarity tiles

    s_ij = scale * <q^_i, k^_j> + bias_j,     q^ = q / max(||q||, eps) when normalize

over the pairs (i, j) outside an excluded set, so every op shares the pair prefix below
and the backward's outputs (dq, dk, dscale); what differs is the reduction (the op's
outputs) and the weights dL/ds_ij its backward applies.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

# (schema type, name) of the inputs every op of the family starts with
PAIR_PREFIX = (
    ("Tensor", "q"), ("Tensor", "k"), ("Tensor", "scale"), ("Tensor?", "bias"),
    ("Tensor?", "q_labels"), ("Tensor?", "k_labels"), ("int?", "self_offset"),
    ("bool", "normalize"), ("float", "eps"),
)
PAIR_NAMES = tuple(name for _, name in PAIR_PREFIX)
# the gradients every backward returns, for q, k and scale (the first inputs, in order),
# and the flags that ask for them; an op whose bias is differentiable adds dbias
GRADIENTS = ("dq", "dk", "dscale")
NEEDS = ("need_dq", "need_dk", "need_dscale")
WITH_BIAS_GRADIENT = GRADIENTS + ("dbias",)


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype every product is accumulated in, and the statistics are returned in."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclasses.dataclass(frozen=True)
class Output:
    """One forward output, in the accumulation dtype.

    ``shape``: "rows" ([N]), "keys" ([M]) or "rows_d" ([N, d]). ``when``: the name of a
    bool option without which the output is an empty [0] tensor. Differentiable outputs are
    saved for the backward, which takes one incoming gradient per differentiable output.
    """

    name: str
    shape: str
    differentiable: bool = True
    when: Optional[str] = None

    def empty_like_for(self, q: torch.Tensor, k: torch.Tensor, options: dict) -> torch.Tensor:
        acc = accumulate_dtype(q.dtype)
        if self.when is not None and not options[self.when]:
            return q.new_empty((0,), dtype=acc)
        size = {"rows": (q.shape[0],), "keys": (k.shape[0],),
                "rows_d": (q.shape[0], q.shape[1])}[self.shape]
        return q.new_empty(size, dtype=acc)


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """An op of the family. ``options``: its own inputs after the pair prefix, as
    (schema type, name, default); ``backward_options``: those its backward takes too.
    ``rows_independent``: each query row's outputs depend on that row alone (so a batch of
    query sets over shared keys is one call over the stacked rows, as torch.func.vmap
    wants); ``label_option``: the bool option under which the labels are compared (None:
    always, when given). ``gradients``: what the backward returns, for the first inputs in
    order (:data:`GRADIENTS`, or :data:`WITH_BIAS_GRADIENT` for an op whose bias is
    differentiable: dbias [M] = sum_i dL/ds_ij, in the accumulation dtype)."""

    name: str
    options: tuple
    outputs: tuple
    backward_options: tuple = ()
    rows_independent: bool = False
    label_option: Optional[str] = None
    gradients: tuple = GRADIENTS
    doc: str = ""

    @property
    def needs(self) -> tuple:
        """The backward's flags asking for each gradient (need_dq, ...)."""
        return tuple("need_" + g for g in self.gradients)

    @property
    def option_names(self) -> tuple:
        return tuple(name for _, name, _ in self.options)

    @property
    def saved(self) -> tuple:
        """The outputs the backward takes back (the differentiable ones)."""
        return tuple(o for o in self.outputs if o.differentiable)

    def forward_schema(self) -> str:
        inputs = [f"{t} {n}" for t, n in PAIR_PREFIX] + [f"{t} {n}" for t, n, _ in self.options]
        returns = ", ".join("Tensor" for _ in self.outputs)
        return f"({', '.join(inputs)}) -> ({returns})"

    def backward_schema(self) -> str:
        types = {name: t for t, name, _ in self.options}
        inputs = ([f"Tensor grad_{o.name}" for o in self.saved]
                  + [f"{t} {n}" for t, n in PAIR_PREFIX]
                  + [f"{types[n]} {n}" for n in self.backward_options]
                  + [f"Tensor {o.name}" for o in self.saved]
                  + [f"bool {n}" for n in self.needs])
        return f"({', '.join(inputs)}) -> ({', '.join('Tensor' for _ in self.gradients)})"

    def op_names(self, kernel_set: str):
        """(forward, backward) op names of a kernel set, e.g. ``lse_native``."""
        return f"{self.name}_{kernel_set}", f"{self.name}_{kernel_set}_backward"

    def as_outputs(self, returned) -> tuple:
        """An op call's outputs as a tuple (a one-output schema returns the tensor)."""
        return tuple(returned) if isinstance(returned, (tuple, list)) else (returned,)

    def returned(self, outputs):
        """``outputs`` as the schema returns them (one output: the tensor itself)."""
        outputs = tuple(outputs)
        return outputs[0] if len(self.outputs) == 1 else outputs

    def labels_active(self, options: dict) -> bool:
        return self.label_option is None or bool(options[self.label_option])

    # --- the fake kernels (torch.compile, opcheck), from the outputs' shapes ---

    def fake_forward(self, *args):
        q, k = args[0], args[1]
        options = dict(zip(self.option_names, args[len(PAIR_PREFIX):]))
        return self.returned(o.empty_like_for(q, k, options) for o in self.outputs)

    def fake_backward(self, *args):
        grads = len(self.saved)
        q, k, scale = args[grads], args[grads + 1], args[grads + 2]
        need = args[-len(self.gradients):]
        out = (q.new_empty(q.shape if need[0] else (0,)),
               k.new_empty(k.shape if need[1] else (0,)), scale.new_empty(()))
        if "dbias" in self.gradients:
            out += (scale.new_empty((k.shape[0],) if need[3] else (0,)),)
        return out
