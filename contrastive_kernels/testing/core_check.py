"""The core-op oracle check shared by every backend's tests and the GPU check.

lse, o and the gradients of <weights, lse> w.r.t. q, k and a tensor scale, computed by
a fused backend, against the float64 oracle, with the tolerance set by the naive
computation in the tested dtype (:mod:`.tolerance`).

A case may run in a *variant* (:data:`VARIANTS`): fp32 under tf32, the split grids
forced to three ranges, or q and k as strided views that no kernel can load with 16-byte
vectors. :func:`case_verdicts` returns the verdicts as data; :func:`check_against_oracle`
asserts them.
"""

from __future__ import annotations

import contextlib
import os

import torch

import contrastive_kernels as ck
from .. import env
from ..backends.reference import lse_reference
from ..core.contract import accumulate_dtype
from .core_cases import make_inputs
from .tolerance import assert_close, compare

OUTPUTS = ("lse", "o", "dq", "dk", "dscale")
VARIANTS = ("", "tf32", "split3", "strided")
SPLIT_VARIABLES = (env.name("CUDA_SPLITS"), env.name("TRITON_KEY_SPLITS"))


# the contract's accumulate_dtype under the name tests/backends imports (not a copy)
acc_dtype = accumulate_dtype


def lse_and_grads(fn, q, k, scale, kw, weights):
    """(lse, o, dq, dk, dscale) of fn(q, k, scale, kw) for the cotangent weights * live rows."""
    q = q.detach().requires_grad_()
    k = k.detach().requires_grad_()
    scale = scale.detach().requires_grad_()
    lse, o = fn(q, k, scale, kw)
    live = torch.isfinite(lse)
    gq, gk, gs = torch.autograd.grad(lse, (q, k, scale), grad_outputs=weights.to(lse.dtype) * live)
    return lse.detach(), o, gq, gk, gs


def lse_grad(backend, q, k, scale=2.0, wrt="q", **kw):
    """The gradient of <w, lse> w.r.t. q or k, w a fixed ramp over the rows that have keys
    (a cotangent != 1 that every backend and the oracle see alike)."""
    q = q.detach().clone().requires_grad_()
    k = k.detach().clone().requires_grad_()
    lse, _ = ck.ops.lse(q, k, scale, backend=backend, **kw)
    w = torch.linspace(0.5, 1.5, lse.shape[0], dtype=lse.dtype, device=lse.device)
    return torch.autograd.grad(lse, {"q": q, "k": k}[wrt], w * torch.isfinite(lse))[0]


def fused(backend):
    def fn(q, k, scale, kw):
        return ck.ops.lse(q, k, scale, backend=backend, **kw)
    return fn


def naive(compute_dtype):
    def fn(q, k, scale, kw):
        out = lse_reference(
            q, k, scale, kw.get("bias"), kw.get("q_labels"), kw.get("k_labels"),
            kw.get("self_offset"), kw.get("normalize", False), 1e-12,
            kw.get("exclude_positives", False), kw.get("return_o", False),
            compute_dtype=compute_dtype)
        return out[0], (out[1] if kw.get("return_o") else None)
    return fn


def oracle_case(n, m, d, dtype, opt, seed=0):
    """(q, k, scale, kw, weights, oracle) of one table case: the inputs (CPU, in ``dtype``;
    kw's float tensors in the accumulation dtype), the grad-output weights, and the float64
    oracle's (lse, o, dq, dk, dscale)."""
    q, k, gen = make_inputs(n, m, d, dtype, seed=seed)
    kw = opt.kwargs(n, m, "cpu", accumulate_dtype(dtype), gen)
    weights = torch.randn(n, generator=gen, dtype=torch.float64)
    scale = torch.tensor(opt.scale)
    oracle_kw = {key: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                 for key, v in kw.items()}
    oracle = lse_and_grads(naive(torch.float64), q.double(), k.double(), scale.double(),
                           oracle_kw, weights)
    return q, k, scale, kw, weights, oracle


def strided_view(x: torch.Tensor) -> torch.Tensor:
    """x as a view one element into a wider NaN-padded buffer with an odd row stride: no
    kernel may read it with 16-byte vectors, and a read of the padding shows as NaN."""
    wide = torch.full((x.shape[0], x.shape[1] + 3), float("nan"), dtype=x.dtype, device=x.device)
    view = wide[:, 1:1 + x.shape[1]]
    view.copy_(x)
    return view


@contextlib.contextmanager
def variant_context(variant: str):
    """What a variant changes while the case runs: the fp32 matmul precision, or the
    split counts the cuda and triton backends read at every call."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    precision = torch.get_float32_matmul_precision()
    saved = {var: os.environ.get(var) for var in SPLIT_VARIABLES}
    try:
        torch.set_float32_matmul_precision("high" if variant == "tf32" else "highest")
        if variant == "split3":
            for var in SPLIT_VARIABLES:
                os.environ[var] = "3"
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def run_case(backend, n, m, d, dtype, opt, device="cpu", seed=0, variant=""):
    """(ours, oracle, baseline): the backend's outputs on ``device`` (moved to the CPU), the
    float64 oracle's and the naive formulation's in ``dtype``."""
    q, k, scale, kw, weights, oracle = oracle_case(n, m, d, dtype, opt, seed)
    acc = accumulate_dtype(dtype)
    baseline = lse_and_grads(naive(dtype), q, k, scale.to(dtype), kw, weights)
    device_kw = {key: (v.to(device) if isinstance(v, torch.Tensor) else v) for key, v in kw.items()}
    qd, kd = q.to(device), k.to(device)
    if variant == "strided":
        qd, kd = strided_view(qd), strided_view(kd)
    with variant_context(variant):
        ours = lse_and_grads(fused(backend), qd, kd, scale.to(acc).to(device), device_kw,
                             weights.to(device))
    ours = tuple(t.cpu() if isinstance(t, torch.Tensor) else t for t in ours)
    return ours, oracle, baseline


def _tf32_scale(dtype, opt, variant):
    return opt.scale if variant == "tf32" and dtype == torch.float32 else None


def case_verdicts(backend, n, m, d, dtype, opt, device="cpu", seed=0, variant="") -> dict:
    """{output: Verdict.as_dict()} of one case, plus ``ok`` (every output passed, lse in
    the accumulation dtype, gradients in the inputs' dtype)."""
    ours, oracle, baseline = run_case(backend, n, m, d, dtype, opt, device, seed, variant)
    out = {}
    for i, name in enumerate(OUTPUTS):
        if name == "o" and not opt.return_o:
            continue
        out[name] = compare(ours[i], oracle[i], baseline[i], dtype,
                            tf32_scale=_tf32_scale(dtype, opt, variant)).as_dict()
    dtypes_ok = (ours[0].dtype == accumulate_dtype(dtype) and ours[2].dtype == dtype
                 and ours[3].dtype == dtype)
    out["ok"] = dtypes_ok and all(v["ok"] for v in out.values())
    return out


def check_against_oracle(backend, n, m, d, dtype, opt, device="cpu", seed=0, variant=""):
    """Run the case on `backend` (tensors on `device`) and assert every output is close."""
    ours, oracle, baseline = run_case(backend, n, m, d, dtype, opt, device, seed, variant)
    tf32_scale = _tf32_scale(dtype, opt, variant)
    assert ours[0].dtype == accumulate_dtype(dtype) and ours[0].shape == (n,)
    for name, i in (("lse", 0), ("dq", 2), ("dk", 3), ("dscale", 4)):
        assert_close(name, ours[i], oracle[i], baseline[i], dtype, tf32_scale=tf32_scale)
    assert ours[2].dtype == dtype and ours[3].dtype == dtype
    if opt.return_o:
        assert ours[1].shape == (n, d) and not ours[1].requires_grad
        assert_close("o", ours[1], oracle[1], baseline[1], dtype, tf32_scale=tf32_scale)
    else:
        assert ours[1] is None
    return ours


def gradcheck_float64(backend, opt, n=7, m=9, d=5) -> bool:
    """torch.autograd.gradcheck of a backend's lse (rows with no keys masked) in float64."""
    q, k, gen = make_inputs(n, m, d, torch.float64)
    kw = opt.kwargs(n, m, "cpu", torch.float64, gen)
    kw["return_o"] = False
    scale = torch.tensor(opt.scale, dtype=torch.float64, requires_grad=True)

    def f(q_, k_, s_):
        lse, _ = ck.ops.lse(q_, k_, s_, backend=backend, **kw)
        return torch.where(torch.isfinite(lse), lse, 0.0)

    return torch.autograd.gradcheck(f, (q.requires_grad_(), k.requires_grad_(), scale))
