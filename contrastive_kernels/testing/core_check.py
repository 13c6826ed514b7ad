"""The core-op oracle check shared by every backend's tests.

lse, o and the gradients of <weights, lse> w.r.t. q, k and a tensor scale, computed by
a fused backend, against the float64 oracle, with the tolerance set by the naive
computation in the tested dtype (tolerance.assert_close).
"""

import torch

import contrastive_kernels as ck
from ..backends.reference import lse_reference
from .core_cases import make_inputs
from .tolerance import assert_close


def acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def lse_and_grads(fn, q, k, scale, kw, weights):
    """(lse, o, dq, dk, dscale) of fn(q, k, scale, kw) for the cotangent weights * live rows."""
    q = q.detach().requires_grad_()
    k = k.detach().requires_grad_()
    scale = scale.detach().requires_grad_()
    lse, o = fn(q, k, scale, kw)
    live = torch.isfinite(lse)
    gq, gk, gs = torch.autograd.grad(lse, (q, k, scale), grad_outputs=weights.to(lse.dtype) * live)
    return lse.detach(), o, gq, gk, gs


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
    kw = opt.kwargs(n, m, "cpu", acc_dtype(dtype), gen)
    weights = torch.randn(n, generator=gen, dtype=torch.float64)
    scale = torch.tensor(opt.scale)
    oracle_kw = {key: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                 for key, v in kw.items()}
    oracle = lse_and_grads(naive(torch.float64), q.double(), k.double(), scale.double(),
                           oracle_kw, weights)
    return q, k, scale, kw, weights, oracle


def check_against_oracle(backend, n, m, d, dtype, opt, device="cpu", seed=0):
    """Run the case on `backend` (tensors on `device`) and assert every output is close."""
    q, k, scale, kw, weights, oracle = oracle_case(n, m, d, dtype, opt, seed)
    acc = acc_dtype(dtype)
    baseline = lse_and_grads(naive(dtype), q, k, scale.to(dtype), kw, weights)
    device_kw = {key: (v.to(device) if isinstance(v, torch.Tensor) else v) for key, v in kw.items()}
    ours = lse_and_grads(fused(backend), q.to(device), k.to(device), scale.to(acc).to(device),
                         device_kw, weights.to(device))
    ours = tuple(t.cpu() if isinstance(t, torch.Tensor) else t for t in ours)

    assert ours[0].dtype == acc and ours[0].shape == (n,)
    for name, i in (("lse", 0), ("dq", 2), ("dk", 3), ("dscale", 4)):
        assert_close(name, ours[i], oracle[i], baseline[i], dtype)
    assert ours[2].dtype == dtype and ours[3].dtype == dtype
    if opt.return_o:
        assert ours[1].shape == (n, d) and not ours[1].requires_grad
        assert_close("o", ours[1], oracle[1], baseline[1], dtype)
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

