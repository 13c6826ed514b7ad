"""Bad inputs and edge values of CLSA, BINGO, DCL / DCLW and HCL."""

from __future__ import annotations

import math

import torch

from ... import functional as F  # noqa: F401
from ... import losses as L  # noqa: F401
from ... import ops  # noqa: F401
from .. import reference_losses as R  # noqa: F401
from .table import (FAMILIES, INF, META, NAN, _err, _rand, _unit, _val, _with,  # noqa: F401
                    pair_err)
from .pairs import _o0, _o1, _qk, _queue


# --------------------------------------------------------------------------- CLSA


def _clsa(backend, q_weak=None, q_strong=None, k=None, queue=None, module=False, **kw):
    qw, k0 = _qk()
    qs = _unit(3, 4, seed=19)
    args = (qw if q_weak is None else q_weak, qs if q_strong is None else q_strong,
            k0 if k is None else k, _queue() if queue is None else queue)
    if module:
        return L.CLSALoss(**kw, backend=backend)(*args)
    return F.clsa_loss(*args, **kw, backend=backend)


pair_err("clsa_loss", _clsa, "q-strong-shape", "shape", ValueError, "q_strong",
         "q_weak and q_strong must have the same shape", q_strong=_unit(2, 4))
pair_err("CLSALoss", _clsa, "q-strong-list-bad", "shape", ValueError, "q_strong",
         "q_weak and q_strong must have the same shape", module=True,
         q_strong=[_unit(3, 4, seed=19), _unit(3, 5, seed=20)])
pair_err("clsa_loss", _clsa, "queue-d", "shape", ValueError, "queue",
         "queue must have feature size d = 4", queue=_unit(6, 5))
pair_err("CLSALoss", _clsa, "q-strong-list-of-lists", "type", TypeError, "q_strong",
         "q_strong must be a torch.Tensor", module=True, q_strong=[[[0.0] * 4] * 3])
pair_err("clsa_loss", _clsa, "q-weak-list", "type", TypeError, "q_weak",
         "q_weak must be a torch.Tensor", q_weak=[[0.0] * 4] * 3)
pair_err("clsa_loss", _clsa, "q-weak-int", "dtype", TypeError, "q_weak",
         "q_weak must be floating point", q_weak=torch.ones(3, 4, dtype=torch.int64))
pair_err("CLSALoss", _clsa, "T-0", "temperature", ValueError, "temperature",
         "temperature must be > 0", module=True, T=0.0)
pair_err("clsa_loss", _clsa, "temperature-neg", "temperature", ValueError, "temperature",
         "temperature must be > 0", temperature=-0.2)
pair_err("CLSALoss", _clsa, "clsa-t-0", "temperature", ValueError, "clsa_t",
         "clsa_t must be > 0", module=True, clsa_t=0.0)


def clsa_val(id, topic, pattern, queue=None, q_strong=None):
    def args():
        qw, k0 = _qk()
        return (qw, _unit(3, 4, seed=19) if q_strong is None else q_strong, k0,
                _queue() if queue is None else queue)

    def reference():
        qw, qs, k, queue = (x.double() for x in args())
        return R.clsa_loss_reference(qw, [qs], k, queue)
    _val(f"clsa-{id}", "clsa_loss", topic, lambda b: F.clsa_loss(*args(), backend=b),
         reference, pattern)


clsa_val("nan-queue", "nan", "n", queue=_with(_queue(), (5, 3), NAN))
clsa_val("nan-q-strong", "nan", "n", q_strong=_with(_unit(3, 4, seed=19), (0, 0), NAN))
clsa_val("empty-queue", "empty_queue", "f", queue=torch.empty(0, 4))

# --------------------------------------------------------------------------- BINGO


def _pos_keys(p=2):
    return _unit(3, p, 4, seed=21)


def _bingo(backend, q=None, positive_keys=None, queue=None, lam=(0.5, 0.5), module=False,
           temperature=0.2):
    q = _qk()[0] if q is None else q
    positive_keys = _pos_keys() if positive_keys is None else positive_keys
    queue = _queue() if queue is None else queue
    if module:
        return L.BingoLoss(temperature, backend=backend)(q, positive_keys, queue, lam)
    return F.bingo_loss(q, positive_keys, queue, lam, temperature, backend=backend)


pair_err("bingo_loss", _bingo, "lam-length", "lam", ValueError, "lam",
         "lam must have one weight per positive (P = 2)", lam=(0.5, 0.3, 0.2))
pair_err("BingoLoss", _bingo, "lam-tensor-length", "lam", ValueError, "lam",
         "lam must have one weight per positive (P = 2)", module=True, lam=torch.ones(3))
pair_err("bingo_loss", _bingo, "lam-complex-tensor", "lam", TypeError, "lam",
         "lam must hold real weights", lam=torch.ones(2, dtype=torch.complex64))
pair_err("bingo_loss", _bingo, "lam-scalar", "lam", TypeError, "lam",
         "lam must", lam=0.5)
pair_err("bingo_loss", _bingo, "lam-complex-list", "lam", TypeError, "lam",
         "lam must hold real weights", lam=(0.5, 1j))
pair_err("bingo_loss", _bingo, "positive-keys-shape", "shape", ValueError, "positive_keys",
         "positive_keys must be [N, P, d] = [3, P, 4]", positive_keys=_unit(3, 2, 5))
pair_err("bingo_loss", _bingo, "positive-keys-list", "type", TypeError, "positive_keys",
         "positive_keys must be a torch.Tensor", positive_keys=[[0.0] * 4] * 3)
pair_err("bingo_loss", _bingo, "temperature-0", "temperature", ValueError, "temperature",
         "temperature must be > 0", temperature=0.0)
pair_err("BingoLoss", _bingo, "temperature-neg-module", "temperature", ValueError,
         "temperature", "temperature must be > 0", module=True, temperature=-1.0)
pair_err("bingo_loss", _bingo, "queue-d", "shape", ValueError, "queue",
         "queue must have feature size d = 4", queue=_unit(6, 2))
pair_err("bingo_loss", _bingo, "q-list", "type", TypeError, "q", "q must be a torch.Tensor",
         q=[[0.0] * 4] * 3)


def bingo_val(id, topic, pattern, queue=None, positive_keys=None, lam=(0.5, 0.5)):
    def args():
        return (_qk()[0], _pos_keys() if positive_keys is None else positive_keys,
                _queue() if queue is None else queue)

    def reference():
        q, pk, qu = (x.double() for x in args())
        return R.bingo_loss_reference(q, pk if pk.dim() == 3 else pk[:, None], qu, lam)
    _val(f"bingo-{id}", "bingo_loss", topic, lambda b: F.bingo_loss(*args(), lam, backend=b),
         reference, pattern)


bingo_val("nan-queue", "nan", "n", queue=_with(_queue(), (1, 1), NAN))
bingo_val("single-positive-2d", "degenerate", "f", positive_keys=_unit(3, 4, seed=22),
          lam=(1.0,))
bingo_val("lam-zero", "degenerate", "0", lam=(0.0, 0.0))
bingo_val("empty-queue", "empty_queue", "0", queue=torch.empty(0, 4))

# --------------------------------------------------------------------------- DCL / DCLW


def _dcl(backend, out0=None, out1=None, module=None, temperature=0.1, **kw):
    out0 = _o0() if out0 is None else out0
    out1 = _o1() if out1 is None else out1
    if module == "dcl":
        return L.DCLLoss(temperature, **kw, backend=backend)(out0, out1)
    if module == "dclw":
        return L.DCLWLoss(temperature, **kw, backend=backend)(out0, out1)
    if module == "dclw_loss":
        return F.dclw_loss(out0, out1, temperature, **kw, backend=backend)
    return F.dcl_loss(out0, out1, temperature, **kw, backend=backend)


pair_err("dcl_loss", _dcl, "weight-fn-shape", "weight_fn", ValueError, "weight_fn",
         "weight_fn must return per-pair weights of shape [B] = [3]",
         weight_fn=lambda a, b: torch.ones(3, 1))
pair_err("DCLLoss", _dcl, "weight-fn-rows", "weight_fn", ValueError, "weight_fn",
         "weight_fn must return per-pair weights of shape [B] = [3]", module="dcl",
         weight_fn=lambda a, b: torch.ones(6))
pair_err("dcl_loss", _dcl, "weight-fn-list", "weight_fn", ValueError, "weight_fn",
         "weight_fn must return per-pair weights of shape [B] = [3]",
         weight_fn=lambda a, b: [1.0, 1.0, 1.0])
pair_err("dcl_loss", _dcl, "temperature-0", "temperature", ValueError, "temperature",
         "temperature must be > 0", temperature=0.0)
pair_err("DCLLoss", _dcl, "temperature-neg-module", "temperature", ValueError, "temperature",
         "temperature must be > 0", module="dcl", temperature=-0.1)
pair_err("DCLWLoss", _dcl, "sigma-0", "range", ValueError, "sigma", "sigma must be > 0",
         module="dclw", sigma=0.0)
pair_err("dclw_loss", _dcl, "sigma-neg", "range", ValueError, "sigma", "sigma must be > 0",
         module="dclw_loss", sigma=-0.5)
pair_err("DCLWLoss", _dcl, "temperature-0-module", "temperature", ValueError, "temperature",
         "temperature must be > 0", module="dclw", temperature=0.0)
pair_err("dcl_loss", _dcl, "shape-mismatch", "shape", ValueError, "out0",
         "out0 and out1 must have the same shape", out1=_o1(4))
pair_err("dcl_loss", _dcl, "out0-int", "dtype", TypeError, "out0", "out0 must be floating point",
         out0=torch.ones(3, 4, dtype=torch.int64))
pair_err("dcl_loss", _dcl, "out1-list", "type", TypeError, "out1", "out1 must be a torch.Tensor",
         out1=[[0.0] * 4] * 3)
pair_err("DCLWLoss", _dcl, "out0-complex", "dtype", TypeError, "out0",
         "out0 must be floating point", module="dclw", out0=_o0().to(torch.complex64),
         out1=_o1().to(torch.complex64))


def dcl_val(id, topic, pattern, out0=None, out1=None, weighted=False):
    def args():
        return (_o0() if out0 is None else out0, _o1() if out1 is None else out1)
    api = "dclw_loss" if weighted else "dcl_loss"
    fused = F.dclw_loss if weighted else F.dcl_loss
    oracle = R.dclw_loss_reference if weighted else R.dcl_loss_reference
    _val(f"{api.split('_')[0]}-{id}", api, topic, lambda b: fused(*args(), backend=b),
         lambda: oracle(*(x.double() for x in args())), pattern)


dcl_val("nan-out0", "nan", "n", out0=_with(_o0(), (0, 2), NAN))
dcl_val("nan-out1", "nan", "n", out1=_with(_o1(), (2, 0), NAN), weighted=True)
dcl_val("batch-1", "degenerate", "-", out0=_o0(1), out1=_o1(1))
dcl_val("zero-row", "extreme", "f", out0=_with(_o0(), 1, 0.0))

# --------------------------------------------------------------------------- HCL


def _hcl(backend, out_1=None, out_2=None, module=False, **kw):
    o1, o2 = _qk(seed=23)
    out_1 = o1 if out_1 is None else out_1
    out_2 = o2 if out_2 is None else out_2
    if module:
        return L.HCLLoss(**kw, backend=backend)(out_1, out_2)
    return F.hcl_loss(out_1, out_2, **kw, backend=backend)


pair_err("hcl_loss", _hcl, "estimator", "option", ValueError, "estimator",
         "estimator must be 'hard' or 'easy'", estimator="medium")
pair_err("HCLLoss", _hcl, "estimator-module", "option", ValueError, "estimator",
         "estimator must be 'hard' or 'easy'", module=True, estimator="Hard")
pair_err("hcl_loss", _hcl, "tau-plus-1", "range", ValueError, "tau_plus",
         "tau_plus must be in [0, 1)", tau_plus=1.0)
pair_err("HCLLoss", _hcl, "tau-plus-neg-module", "range", ValueError, "tau_plus",
         "tau_plus must be in [0, 1)", module=True, tau_plus=-0.1)
pair_err("hcl_loss", _hcl, "tau-plus-nan", "range", ValueError, "tau_plus",
         "tau_plus must be in [0, 1)", tau_plus=NAN)
pair_err("hcl_loss", _hcl, "batch-1", "range", ValueError, "out_1",
         "HCL needs a batch of at least 2 pairs (out_1 has 1 rows)", out_1=_unit(1, 4),
         out_2=_unit(1, 4, seed=1))
pair_err("hcl_loss", _hcl, "temperature-0", "temperature", ValueError, "temperature",
         "temperature must be > 0", temperature=0.0)
pair_err("HCLLoss", _hcl, "temperature-neg-module", "temperature", ValueError, "temperature",
         "temperature must be > 0", module=True, temperature=-0.5)
pair_err("hcl_loss", _hcl, "out-2-list", "type", TypeError, "out_2",
         "out_2 must be a torch.Tensor", out_2=[[0.0] * 4] * 3)
pair_err("hcl_loss", _hcl, "eps-0", "eps", ValueError, "eps", "eps must be > 0", eps=0.0,
         normalize=True)
pair_err("hcl_loss", _hcl, "out-1-int", "dtype", TypeError, "out_1",
         "out_1 must be floating point", out_1=torch.ones(3, 4, dtype=torch.int64),
         out_2=torch.ones(3, 4, dtype=torch.int64))


def hcl_val(id, topic, pattern, out_1=None, out_2=None, **kw):
    def args():
        o1, o2 = _qk(seed=23)
        return (o1 if out_1 is None else out_1, o2 if out_2 is None else out_2)
    _val(f"hcl-{id}", "hcl_loss", topic, lambda b: F.hcl_loss(*args(), **kw, backend=b),
         lambda: R.hcl_loss_reference(*(x.double() for x in args()), **kw), pattern)


hcl_val("nan-out-1", "nan", "n", out_1=_with(_qk(seed=23)[0], (1, 1), NAN))
hcl_val("nan-out-1-easy", "nan", "n", out_1=_with(_qk(seed=23)[0], (0, 3), NAN),
        estimator="easy")
hcl_val("batch-2", "degenerate", "f", out_1=_unit(2, 4, seed=24), out_2=_unit(2, 4, seed=25))
