"""The core ops as data, for the conformance suite (tests/core/test_conformance.py).

Every core op shares the pair prefix of :mod:`contrastive_kernels.core.contract` (q, k,
scale, bias, labels, self_offset, normalize, eps, exclude_positives) and differs in its
outputs. A :class:`CoreOp` entry says, for one op, everything the suite needs to check it
on any backend: how to call it (the public entry and the backend's raw torch.library op
pair), its float64 oracle, its outputs and their contract, which keyword options it
takes, and how its raw backward op is called. The scalar differentiated for gradients is
the same for every op: ``sum over differentiable outputs of <w, out>`` with a fixed
cotangent w per output, zeroed where the output is not finite (an empty row has no
gradient).

Adding an op to the suite is adding one entry to :data:`OPS`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch

from ..backends import reference
from ..core.contract import NAMESPACE, accumulate_dtype
from ..core.ops import SPECS
from .core_cases import OPTIONS, make_inputs

EPS = 1e-12
# the prefix keywords every op takes (the flat prefix's q, k, scale aside)
PREFIX_KEYWORDS = ("bias", "q_labels", "k_labels", "self_offset", "normalize", "eps")

# The kernel set of each backend's raw op pair on CPU tensors: <op>_<set> / <op>_<set>_backward
# (the cuda backend runs its kernel source through the emulation on CPU tensors).
KERNEL_SETS = {"torch": "torch", "cpu": "native", "triton": "triton", "cuda": "cuda_emulated"}


@dataclasses.dataclass(frozen=True)
class Output:
    """One output of an op: its shape in terms of the problem (``"n"``: [N], ``"m"``: [M],
    ``"nd"``: [N, d]), whether gradients flow through it, and the option that asks for it
    (None: always returned). Every output comes back in the accumulation dtype."""

    name: str
    shape: str
    differentiable: bool = True
    requested_by: Optional[str] = None

    def size(self, n: int, m: int, d: int) -> tuple:
        return {"n": (n,), "m": (m,), "nd": (n, d)}[self.shape]

    def present(self, kw: dict) -> bool:
        return self.requested_by is None or bool(kw.get(self.requested_by))


_SHAPES = {"rows": "n", "keys": "m", "rows_d": "nd"}


def _from_spec(name: str) -> dict:
    """outputs, own options and schemas of op ``name`` as its spec (core/ops) states them."""
    spec = SPECS[name]
    return dict(
        name=name,
        outputs=tuple(Output(o.name, _SHAPES[o.shape], o.differentiable, o.when)
                      for o in spec.outputs),
        takes=spec.option_names, backward_takes=spec.backward_options,
        gradients=spec.gradients,
        schemas=lambda: (spec.forward_schema(), spec.backward_schema()))


@dataclasses.dataclass(frozen=True)
class CoreOp:
    """One core op as the conformance suite sees it.

    ``call(backend, q, k, scale, kw)``: the public entry; a tuple with one tensor per
    :attr:`outputs` entry (None for an output not asked for).
    ``oracle(q, k, scale, kw, compute_dtype)``: the naive formulation, the same tuple;
    float64 inputs and ``compute_dtype=float64`` make it the oracle, the inputs' dtype the
    baseline whose error sets the tolerance (:mod:`.tolerance`).
    ``options``: the rows of the shared option table (:data:`.core_cases.OPTIONS`) that
    mean something for this op; ``takes``: the op's own keyword options beyond the prefix
    (in schema order), ``backward_takes`` those its backward takes too; ``gradients``:
    what its backward returns (dbias too for an op whose bias is differentiable).
    ``empty_sets``: whether a row or key can be left with no pair (-inf, no gradient).
    ``available()``: None, or why the op cannot be called in this build.
    """

    name: str
    outputs: tuple
    call: Callable
    oracle: Callable
    takes: tuple = ()
    backward_takes: tuple = ()
    gradients: tuple = ("dq", "dk", "dscale")
    options: tuple = tuple(OPTIONS)
    empty_sets: bool = True
    schemas: Callable = None          # () -> (forward schema, backward schema)
    available: Callable = lambda: None

    @property
    def differentiable(self) -> tuple:
        return tuple(o for o in self.outputs if o.differentiable)

    @property
    def wrt(self) -> tuple:
        """The inputs gradients are taken for: q, k, scale (and bias, where it has one)."""
        return ("q", "k", "scale") + (("bias",) if "dbias" in self.gradients else ())

    # ------------------------------------------------------------------ arguments

    def keywords(self, kw: dict) -> dict:
        """kw restricted to what this op takes (the option table also sets return_o)."""
        return {name: v for name, v in kw.items() if name in PREFIX_KEYWORDS + self.takes}

    def forward_args(self, q, k, scale, kw) -> tuple:
        """The positional arguments of the raw forward op (its schema's order)."""
        return ((q, k, scale, kw.get("bias"), kw.get("q_labels"), kw.get("k_labels"),
                 kw.get("self_offset"), bool(kw.get("normalize", False)), kw.get("eps", EPS))
                + tuple(bool(kw.get(name, False)) for name in self.takes))

    def backward_args(self, cotangents, forward_args, outputs, needs) -> tuple:
        """The raw backward op's arguments: one cotangent per differentiable output, the
        prefix, the op's backward options, the saved outputs, then one need_* flag per
        gradient (``needs`` gives dq, dk, dscale's; dbias's follows dscale's)."""
        prefix = forward_args[:len(forward_args) - len(self.takes)]
        own = dict(zip(self.takes, forward_args[len(prefix):]))
        saved = tuple(out for spec, out in zip(self.outputs, outputs) if spec.differentiable)
        needs = tuple(needs) + (needs[2],) * (len(self.gradients) - len(needs))
        if "dbias" in self.gradients and forward_args[3] is None:
            needs = needs[:3] + (False,)
        return (tuple(cotangents) + prefix + tuple(own[n] for n in self.backward_takes) + saved
                + needs)

    # ------------------------------------------------------------------ the raw ops

    def returned(self, outs) -> tuple:
        """A raw forward's outputs as a tuple (a one-output schema returns the tensor)."""
        return tuple(outs) if isinstance(outs, (tuple, list)) else (outs,)

    def kernel_ops(self, backend: str):
        """(forward, backward) OpOverloads of ``backend``'s raw op pair for this op, or
        None when the backend has none (its kernels are not built, or not yet written)."""
        from ..backends import registry

        kernel_set = KERNEL_SETS.get(backend)
        if kernel_set is None or registry.loaded(backend) is None:  # loading declares them
            return None
        namespace = getattr(torch.ops, NAMESPACE)
        try:
            fwd = getattr(namespace, f"{self.name}_{kernel_set}").default
            bwd = getattr(namespace, f"{self.name}_{kernel_set}_backward").default
        except (AttributeError, RuntimeError):
            return None
        return fwd, bwd

    def qualified_schemas(self, backend: str) -> tuple:
        """The schema text ``backend``'s raw op pair must have."""
        kernel_set = KERNEL_SETS[backend]
        fwd, bwd = self.schemas()
        parse = torch._C.parse_schema
        return (str(parse(f"{NAMESPACE}::{self.name}_{kernel_set}{fwd}")),
                str(parse(f"{NAMESPACE}::{self.name}_{kernel_set}_backward{bwd}")))


# --------------------------------------------------------------------------- evaluation


def cotangents(op: CoreOp, n: int, m: int, gen: torch.Generator) -> dict:
    """A fixed float64 cotangent per differentiable output (!= 1, drawn from ``gen``)."""
    rows = {"n": n, "m": m}
    return {o.name: torch.randn(rows[o.shape], generator=gen, dtype=torch.float64)
            for o in op.differentiable}


def evaluate(op: CoreOp, fn: Callable, q, k, scale, kw, weights: dict, wrt=None) -> dict:
    """{output: value, "dq" / "dk" / "dscale" / "dbias": gradient} of ``fn(q, k, scale,
    kw)``, the gradients of sum <weights[out] * finite(out), out> over the differentiable
    outputs, for the inputs ``wrt`` (default: :attr:`CoreOp.wrt`). ``scale`` may be a
    float (then there is no dscale). Outputs not asked for are None."""
    wrt = op.wrt if wrt is None else wrt
    inputs = {"q": q.detach().requires_grad_("q" in wrt),
              "k": k.detach().requires_grad_("k" in wrt)}
    if isinstance(scale, torch.Tensor):
        inputs["scale"] = scale.detach().requires_grad_("scale" in wrt)
    if "bias" in wrt and kw.get("bias") is not None:
        inputs["bias"] = kw["bias"].detach().requires_grad_()
        kw = dict(kw, bias=inputs["bias"])
    outs = fn(inputs["q"], inputs["k"], inputs.get("scale", scale), kw)
    result = {spec.name: (None if out is None else out.detach())
              for spec, out in zip(op.outputs, outs)}
    terms = [(out, weights[spec.name].to(device=out.device, dtype=out.dtype)
              * torch.isfinite(out))
             for spec, out in zip(op.outputs, outs) if spec.differentiable]
    want = [name for name in ("q", "k", "scale", "bias") if name in inputs and name in wrt]
    if not want:
        return result
    grads = torch.autograd.grad([t for t, _ in terms], [inputs[name] for name in want],
                                grad_outputs=[w for _, w in terms], allow_unused=True)
    for name, g in zip(want, grads):
        result["d" + name] = torch.zeros_like(inputs[name]) if g is None else g
    return result


def backend_fn(op: CoreOp, backend: str) -> Callable:
    def fn(q, k, scale, kw):
        return op.call(backend, q, k, scale, op.keywords(kw))
    return fn


def oracle_fn(op: CoreOp, compute_dtype) -> Callable:
    def fn(q, k, scale, kw):
        return op.oracle(q, k, scale, op.keywords(kw), compute_dtype)
    return fn


def to_float64(kw: dict) -> dict:
    return {name: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
            for name, v in kw.items()}


def table_case(op: CoreOp, n, m, d, dtype, opt, seed=0):
    """(q, k, scale, kw, weights) of one option-table case: q, k in ``dtype``, kw's float
    tensors and the 0-dim scale in the accumulation dtype, float64 cotangents."""
    q, k, gen = make_inputs(n, m, d, dtype, seed=seed)
    acc = accumulate_dtype(dtype)
    kw = opt.kwargs(n, m, "cpu", acc, gen)
    weights = cotangents(op, n, m, gen)
    return q, k, torch.tensor(opt.scale, dtype=acc), kw, weights


def oracle_and_baseline(op: CoreOp, q, k, scale, kw, weights, wrt=None):
    """The float64 oracle's results on the same values, and the naive formulation's in
    the inputs' dtype (the tolerance baseline)."""
    scale64 = scale.double() if isinstance(scale, torch.Tensor) else scale
    oracle = evaluate(op, oracle_fn(op, torch.float64), q.double(), k.double(), scale64,
                      to_float64(kw), weights, wrt)
    scale_low = scale.to(q.dtype) if isinstance(scale, torch.Tensor) else scale
    baseline = evaluate(op, oracle_fn(op, q.dtype), q, k, scale_low, kw, weights, wrt)
    return oracle, baseline


# --------------------------------------------------------------------------- the ops


def _lse_call(backend, q, k, scale, kw):
    from .. import ops
    return ops.lse(q, k, scale, backend=backend, **kw)


def _lse_oracle(q, k, scale, kw, compute_dtype):
    scale = scale if isinstance(scale, torch.Tensor) else torch.tensor(scale, dtype=q.dtype)
    lse, o = reference.lse_reference(
        q, k, scale, kw.get("bias"), kw.get("q_labels"), kw.get("k_labels"),
        kw.get("self_offset"), kw.get("normalize", False), kw.get("eps", EPS),
        kw.get("exclude_positives", False), kw.get("return_o", False),
        compute_dtype=compute_dtype)
    return lse, (o if kw.get("return_o") else None)


LSE = CoreOp(call=_lse_call, oracle=_lse_oracle, **_from_spec("lse"))


def _two_sided_call(backend, q, k, scale, kw):
    from .. import ops
    return ops.two_sided_lse(q, k, scale, backend=backend, **kw)


def _two_sided_oracle(q, k, scale, kw, compute_dtype):
    scale = scale if isinstance(scale, torch.Tensor) else torch.tensor(scale, dtype=q.dtype)
    return reference.two_sided_lse_reference(
        q, k, scale, kw.get("bias"), kw.get("q_labels"), kw.get("k_labels"),
        kw.get("self_offset"), kw.get("normalize", False), kw.get("eps", EPS),
        kw.get("exclude_positives", False), compute_dtype=compute_dtype)


TWO_SIDED_LSE = CoreOp(call=_two_sided_call, oracle=_two_sided_oracle,
                       options=tuple(o for o in OPTIONS if not o.return_o or o.id == "all"),
                       **_from_spec("two_sided_lse"))

def _sigmoid_call(backend, q, k, scale, kw):
    from .. import ops
    kw = dict(kw)
    return (ops.pairwise_sigmoid(q, k, scale, kw.pop("bias", None), backend=backend, **kw),)


def _sigmoid_oracle(q, k, scale, kw, compute_dtype):
    scale = scale if isinstance(scale, torch.Tensor) else torch.tensor(scale, dtype=q.dtype)
    return (reference.pairwise_sigmoid_reference(
        q, k, scale, kw.get("bias"), kw.get("q_labels"), kw.get("k_labels"),
        kw.get("self_offset"), kw.get("normalize", False), kw.get("eps", EPS),
        compute_dtype=compute_dtype),)


# the labels rows of the option table mark positives here (no pair is excluded)
PAIRWISE_SIGMOID = CoreOp(call=_sigmoid_call, oracle=_sigmoid_oracle, empty_sets=False,
                          options=tuple(o for o in OPTIONS if not o.return_o or o.id == "all"),
                          **_from_spec("pairwise_sigmoid"))

ALL_OPS = (LSE, TWO_SIDED_LSE, PAIRWISE_SIGMOID)
# the ops this build can call: what the suite is parametrized over
OPS = tuple(op for op in ALL_OPS if op.available() is None)


# --------------------------------------------------------------------------- the check


def check_against_oracle(op: CoreOp, backend: str, n, m, d, dtype, opt, seed=0) -> dict:
    """Run one option-table case on ``backend`` and assert every output and gradient is
    within the tolerance of :mod:`.tolerance` of the float64 oracle, in its contract's
    dtype and shape; returns the backend's results."""
    q, k, scale, kw, weights = table_case(op, n, m, d, dtype, opt, seed)
    oracle, baseline = oracle_and_baseline(op, q, k, scale, kw, weights)
    ours = evaluate(op, backend_fn(op, backend), q, k, scale, kw, weights)
    assert_matches_oracle(op, ours, oracle, baseline, q, k, scale, kw)
    return ours


def assert_matches_oracle(op: CoreOp, ours, oracle, baseline, q, k, scale, kw) -> None:
    from .tolerance import assert_close

    n, m, d = q.shape[0], k.shape[0], q.shape[1]
    acc = accumulate_dtype(q.dtype)
    for spec in op.outputs:
        got = ours[spec.name]
        if not spec.present(kw):
            assert got is None, f"{spec.name}: returned without {spec.requested_by}"
            continue
        assert got.dtype == acc and got.shape == spec.size(n, m, d), (
            f"{spec.name}: {got.dtype} {tuple(got.shape)}, want {acc} {spec.size(n, m, d)}")
        assert_close(spec.name, got, oracle[spec.name], baseline[spec.name], q.dtype)
    for name, x in (("dq", q), ("dk", k), ("dscale", scale), ("dbias", kw.get("bias"))):
        if name not in ours:
            continue
        assert ours[name].dtype == x.dtype and ours[name].shape == x.shape, (
            f"{name}: {ours[name].dtype} {tuple(ours[name].shape)}, want {x.dtype} "
            f"{tuple(x.shape)}")
        assert_close(name, ours[name], oracle[name], baseline[name], q.dtype)
