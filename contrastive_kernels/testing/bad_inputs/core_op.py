"""Bad inputs and edge values of ops.lse."""

from __future__ import annotations

import math

import torch

from ... import functional as F  # noqa: F401
from ... import losses as L  # noqa: F401
from ... import ops  # noqa: F401
from .. import reference_losses as R  # noqa: F401
from .table import (FAMILIES, INF, META, NAN, _err, _rand, _unit, _val, _with,  # noqa: F401
                    pair_err)


# --------------------------------------------------------------------------- ops.lse


def _Q():
    return _rand(3, 4, seed=1)


def _K():
    return _rand(5, 4, seed=2)


def _lse(backend, q=None, k=None, scale=1.0, out=0, **kw):
    q = _Q() if q is None else q
    k = _K() if k is None else k
    return ops.lse(q, k, scale, backend=backend, **kw)[out]


def lse_err(id, topic, raises, arg, match, xfail_reason=None, **kw):
    _err(f"lse-{id}", "ops.lse", topic, lambda b: _lse(b, **kw), raises, arg, match,
         xfail_reason)


def lse_val(id, topic, pattern=None, xfail_reason=None, **kw):
    """A value case of ops.lse: the oracle is the same call on the reference backend."""
    _val(f"lse-{id}", "ops.lse", topic, lambda b: _lse(b, **kw),
         lambda: _lse("reference", **kw), pattern, xfail_reason)


_LAB3, _LAB5 = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 0, 1, 2])

lse_err("q-list", "type", TypeError, "q", "q must be a torch.Tensor", q=[[1.0, 2.0]])
lse_err("k-int", "type", TypeError, "k", "k must be a torch.Tensor", k=3)
lse_err("q-none-like-str", "type", TypeError, "q", "q must be a torch.Tensor", q="q")
lse_err("q-1d", "rank", ValueError, "q", "q must be 2-D [rows, d]", q=_rand(4))
lse_err("k-3d", "rank", ValueError, "k", "k must be 2-D [rows, d]", k=_rand(2, 5, 4))
lse_err("q-0d", "rank", ValueError, "q", "q must be 2-D [rows, d]", q=torch.tensor(1.0))
lse_err("q-int64", "dtype", TypeError, "q", "q must be floating point",
        q=torch.ones(3, 4, dtype=torch.int64))
lse_err("k-bool", "dtype", TypeError, "k", "k must be floating point",
        k=torch.ones(5, 4, dtype=torch.bool))
lse_err("k-complex", "dtype", TypeError, "k", "k must be floating point",
        k=_K().to(torch.complex64))
lse_err("d-mismatch", "shape", ValueError, "k", "q and k must have the same feature size d",
        k=_rand(5, 3))
lse_err("dtype-mismatch", "dtype_mismatch", TypeError, "k", "q and k must share a dtype",
        k=_K().double())
lse_err("device-mismatch", "device", ValueError, "k", "q and k must be on one device",
        k=torch.empty(5, 4, device=META))
lse_err("bias-shape", "bias", ValueError, "bias", "bias must have shape [M] = [5]",
        bias=torch.zeros(6))
lse_err("bias-2d", "bias", ValueError, "bias", "bias must have shape [M] = [5]",
        bias=torch.zeros(1, 5))
lse_err("bias-grad", "bias", ValueError, "bias", "pass bias.detach()",
        bias=torch.zeros(5, requires_grad=True))
lse_err("bias-device", "device", ValueError, "bias", "bias must be on cpu",
        bias=torch.zeros(5, device=META))
lse_err("bias-list", "type", TypeError, "bias", "bias must be a torch.Tensor",
        bias=[0.0] * 5)
lse_err("q-labels-shape", "core_labels", ValueError, "q_labels", "q_labels must have shape [3]",
        q_labels=torch.tensor([0, 1]), k_labels=_LAB5, exclude_positives=True)
lse_err("k-labels-2d", "core_labels", ValueError, "k_labels", "k_labels must have shape [5]",
        q_labels=_LAB3, k_labels=_LAB5[None], exclude_positives=True)
lse_err("k-labels-float", "core_labels", TypeError, "k_labels",
        "k_labels must be an integer tensor", q_labels=_LAB3, k_labels=_LAB5.float(),
        exclude_positives=True)
lse_err("q-labels-nan", "core_labels", TypeError, "q_labels", "q_labels must be an integer tensor",
        q_labels=torch.tensor([0.0, NAN, 1.0]), k_labels=_LAB5, exclude_positives=True)
lse_err("q-labels-bool", "core_labels", TypeError, "q_labels",
        "q_labels must be an integer tensor", q_labels=torch.tensor([True, False, True]),
        k_labels=_LAB5, exclude_positives=True)
lse_err("k-labels-complex", "core_labels", TypeError, "k_labels",
        "k_labels must be an integer tensor", q_labels=_LAB3,
        k_labels=_LAB5.to(torch.complex64), exclude_positives=True)
lse_err("q-labels-device", "device", ValueError, "q_labels", "q_labels must be on cpu",
        q_labels=torch.zeros(3, dtype=torch.long, device=META), k_labels=_LAB5,
        exclude_positives=True)
lse_err("q-labels-list", "type", TypeError, "q_labels", "q_labels must be a torch.Tensor",
        q_labels=[0, 1, 2], k_labels=_LAB5, exclude_positives=True)
lse_err("exclude-no-labels", "missing", ValueError, "exclude_positives",
        "exclude_positives=True needs both q_labels and k_labels", q_labels=_LAB3,
        exclude_positives=True)
lse_err("self-offset-float", "self_offset", TypeError, "self_offset",
        "self_offset must be an int or None", self_offset=1.0)
lse_err("self-offset-bool", "self_offset", TypeError, "self_offset",
        "self_offset must be an int or None", self_offset=True)
lse_err("self-offset-tensor", "self_offset", TypeError, "self_offset",
        "self_offset must be an int or None", self_offset=torch.tensor(0))
lse_err("self-offset-2^63", "self_offset", ValueError, "self_offset",
        "self_offset must fit in int64", self_offset=2 ** 63)
lse_err("self-offset--2^63-1", "self_offset", ValueError, "self_offset",
        "self_offset must fit in int64", self_offset=-2 ** 63 - 1)
lse_err("eps-0", "eps", ValueError, "eps", "eps must be > 0", eps=0.0)
lse_err("eps-neg", "eps", ValueError, "eps", "eps must be > 0", eps=-1e-12)
lse_err("eps-nan", "eps", ValueError, "eps", "eps must be > 0", eps=NAN)
lse_err("scale-complex", "scale", TypeError, "scale", "scale must be real", scale=1j)
lse_err("scale-complex-tensor", "scale", TypeError, "scale", "scale must be real",
        scale=torch.tensor(1 + 0j))
lse_err("scale-vector", "scale", ValueError, "scale",
        "scale must be a float or a 0-dim tensor", scale=torch.ones(2))
lse_err("scale-str", "scale", TypeError, "scale", "scale must be a float or a 0-dim tensor",
        scale="1.0")
lse_err("scale-none", "scale", TypeError, "scale", "scale must be a float or a 0-dim tensor",
        scale=None)
lse_err("scale-device", "device", ValueError, "scale", "scale must be on cpu",
        scale=torch.ones((), device=META))
_err("lse-backend-unknown", "ops.lse", "backend", lambda b: ops.lse(_Q(), _K(), backend="nope"),
     ValueError, "backend", "backend='nope' is not one of ('auto'")

lse_val("nan-q-row", "nan", "nff", q=_with(_Q(), (0, 1), NAN))
lse_val("nan-k-row", "nan", "nnn", k=_with(_K(), (2, 0), NAN))
lse_val("nan-q-normalize", "nan", "nff", q=_with(_Q(), (0, 1), NAN), normalize=True)
lse_val("nan-k-labels", "nan", "fnn", k=_with(_K(), (2, 0), NAN), q_labels=_LAB3,
        k_labels=_LAB5, exclude_positives=True)
lse_val("nan-bias", "nan", "nnn", bias=_with(torch.zeros(5), 3, NAN))
lse_val("nan-scale", "nan", "nnn", scale=NAN)
lse_val("nan-scale-tensor", "nan", "nnn", scale=torch.tensor(NAN))
lse_val("nan-k-excluded-key", "nan", "fnn", k=_with(_K(), (0, 0), NAN), self_offset=0)
lse_val("posinf-bias", "posinf", "+++", bias=_with(torch.zeros(5), 2, INF))
lse_val("posinf-bias-excluded", "posinf", "f++", bias=_with(torch.zeros(5), 0, INF),
        self_offset=0)
lse_val("posinf-bias-normalize", "posinf", "+++", bias=_with(torch.zeros(5), 4, INF),
        normalize=True)
lse_val("neginf-bias-one", "neginf", "fff", bias=_with(torch.zeros(5), 1, -INF))
lse_val("neginf-bias-all", "neginf", "---", bias=torch.full((5,), -INF))
lse_val("empty-m0", "empty_keys", "---", k=torch.empty(0, 4))
lse_val("empty-m0-o", "empty_keys", "000000000000", k=torch.empty(0, 4), return_o=True, out=1)
lse_val("empty-all-labels", "empty_keys", "---", q_labels=torch.zeros(3, dtype=torch.long),
        k_labels=torch.zeros(5, dtype=torch.long), exclude_positives=True)
lse_val("empty-self-m1", "empty_keys", "-ff", k=_rand(1, 4, seed=3), self_offset=0)
lse_val("empty-row-o", "empty_keys", "0000ffffffff", k=_rand(1, 4, seed=3), self_offset=0,
        return_o=True, out=1)
lse_val("n0", "degenerate", "", q=torch.empty(0, 4))
lse_val("d0", "degenerate", "fff", q=torch.empty(3, 0), k=torch.empty(5, 0))
lse_val("scale-0", "degenerate", "fff", scale=0.0)
lse_val("scale-1e4", "extreme", "fff", scale=1e4)
lse_val("scale-1e4-normalize", "extreme", "fff", scale=1e4, normalize=True)
lse_val("zero-row-normalize", "extreme", "fff", q=_with(_Q(), 1, 0.0), normalize=True)
lse_val("fp16-overflowing-products", "extreme", "fff", q=(_Q() * 300).half(),
        k=(_K() * 300).half())
lse_val("self-offset-far", "extreme", "fff", self_offset=2 ** 62)
lse_val("self-offset-far-neg", "extreme", "fff", self_offset=-2 ** 63)
lse_val("self-offset-beyond-m", "extreme", "fff", self_offset=5)


def _empty_row_grad(backend):
    q = _Q().requires_grad_()
    lse, _ = ops.lse(q, _rand(1, 4, seed=3), 1.0, self_offset=0, backend=backend)
    torch.where(torch.isfinite(lse), lse, 0.0).sum().backward()
    return q.grad


_val("lse-empty-row-grad", "ops.lse", "empty_keys", _empty_row_grad,
     lambda: _empty_row_grad("reference"), "0000ffffffff")


def _lse_grads(backend, wrt, q=None, k=None, **kw):
    from ..core_check import lse_grad
    return lse_grad(backend, _Q() if q is None else q, _K() if k is None else k, wrt=wrt, **kw)


def _grad_val(id, topic, wrt, pattern, **kw):
    """A gradient case: the oracle is the reference backend on float64 copies of the
    inputs, rounded to the inputs' dtype."""
    def oracle():
        q, k = kw.get("q", _Q()), kw.get("k", _K())
        kw64 = {name: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point()
                       else v) for name, v in kw.items() if name not in ("q", "k")}
        return _lse_grads("reference", wrt, q.double(), k.double(), **kw64).to(q.dtype)
    _val(f"lse-{id}-d{wrt}", "ops.lse", topic, lambda b: _lse_grads(b, wrt, **kw), oracle,
         pattern)


# one key far above every other: its softmax weight is 1 to the last bit, so dq and dk are
# exact only if the backward rounds each logit as the forward did (triton once did not)
for _magnitude in (1e2, 1e4, 1e9, 1e20, 1e38, 3e38):
    for _wrt in ("q", "k"):
        _grad_val(f"huge-bias-{_magnitude:.0e}", "huge_bias", _wrt, "f" * (12 if _wrt == "q" else 20),
                  bias=_with(torch.zeros(5), 3, _magnitude), normalize=True)
# the same far above the logit range, but every key: all weights matter
_grad_val("bias-1e3-every-key", "huge_bias", "q", "f" * 12,
          bias=1e3 + torch.linspace(0.0, 2.0, 5), normalize=True)
# a row of fp32 subnormals (||q_0|| < eps): the 1/eps branch of the normalization
# Jacobian, dq_0 = dq^_0 / eps, not 0 (flush-to-zero on a device gave 0)
_SUBNORMAL_Q = _with(_Q(), 0, _rand(4, seed=9) * 1e-40)
_grad_val("subnormal-row", "subnormal", "q", "f" * 12, q=_SUBNORMAL_Q, normalize=True)
_grad_val("subnormal-row", "subnormal", "k", "f" * 20, q=_SUBNORMAL_Q, normalize=True)
_grad_val("subnormal-key", "subnormal", "k", "f" * 20, k=_with(_K(), 2, _rand(4, seed=8) * 1e-41),
          normalize=True)


# torch.func transforms over ops.lse: reverse mode and vmap as the plain-PyTorch oracle
# gives them (core/transforms.py), forward mode one clear error
def _func_lse(backend, **kw):
    k = _K()  # drawn outside the transform (vmap refuses random draws inside)
    return lambda q: ops.lse(q, k, 2.0, backend=backend, **kw)[0]


_QB = torch.stack([_Q(), 2 * _Q()])
_val("lse-func-grad", "ops.lse", "func", lambda b: torch.func.grad(lambda q: _func_lse(b)(q).sum())(_Q()),
     lambda: torch.func.grad(lambda q: _func_lse("reference")(q).sum())(_Q()), "f" * 12)
_val("lse-func-jacrev", "ops.lse", "func", lambda b: torch.func.jacrev(_func_lse(b))(_Q()),
     lambda: torch.func.jacrev(_func_lse("reference"))(_Q()), "f" * 36)
_val("lse-func-vmap", "ops.lse", "func", lambda b: torch.func.vmap(_func_lse(b))(_QB),
     lambda: torch.func.vmap(_func_lse("reference"))(_QB), "f" * 6)
_val("lse-func-vmap-self", "ops.lse", "func",
     lambda b: torch.func.vmap(_func_lse(b, self_offset=1))(_QB),
     lambda: torch.func.vmap(_func_lse("reference", self_offset=1))(_QB), "f" * 6)


def _vmap_grad(backend):
    f = _func_lse(backend)
    return torch.func.vmap(torch.func.grad(lambda q: f(q).sum()))(_QB)


_val("lse-func-vmap-grad", "ops.lse", "func", _vmap_grad, lambda: _vmap_grad("reference"),
     "f" * 24)
_err("lse-func-jvp", "ops.lse", "func",
     lambda b: torch.func.jvp(_func_lse(b), (_Q(),), (torch.ones(3, 4),)),
     RuntimeError, "jvp", "forward-mode AD of ops.lse (torch.func.jvp")
