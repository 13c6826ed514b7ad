"""Bad inputs and edge values of NT-Xent, CLIP, InfoNCE and MoCo."""

from __future__ import annotations

import math

import torch

from ... import functional as F  # noqa: F401
from ... import losses as L  # noqa: F401
from ... import ops  # noqa: F401
from .. import reference_losses as R  # noqa: F401
from .table import (FAMILIES, INF, META, NAN, _err, _rand, _unit, _val, _with,  # noqa: F401
                    pair_err)


# --------------------------------------------------------------------------- NT-Xent


def _o0(b=3):
    return _rand(b, 4, seed=7)


def _o1(b=3):
    return _rand(b, 4, seed=8)



def _ntxent(backend, out0=None, out1=None, module=False, temperature=0.5, negatives=None,
            **kw):
    out0 = _o0() if out0 is None else out0
    out1 = _o1() if out1 is None else out1
    if module:
        return L.NTXentLoss(temperature, **kw, backend=backend)(out0, out1)
    return F.ntxent_loss(out0, out1, temperature, negatives, **kw, backend=backend)


pair_err("ntxent_loss", _ntxent, "out0-list", "type", TypeError, "out0",
         "out0 must be a torch.Tensor", out0=[[1.0] * 4] * 3)
pair_err("ntxent_loss", _ntxent, "out1-int", "dtype", TypeError, "out1",
         "out1 must be floating point", out1=torch.ones(3, 4, dtype=torch.int32))
pair_err("ntxent_loss", _ntxent, "out0-3d", "rank", ValueError, "out0", "out0 must be 2-D",
         out0=_rand(3, 1, 4))
pair_err("NTXentLoss", _ntxent, "shape-mismatch", "shape", ValueError, "out0",
         "out0 and out1 must have the same shape", module=True, out1=_o1(2))
pair_err("ntxent_loss", _ntxent, "dtype-mismatch", "dtype_mismatch", TypeError, "out1",
         "out0 and out1 must share a dtype", out1=_o1().double())
pair_err("ntxent_loss", _ntxent, "temperature-0", "temperature", ValueError, "temperature",
         "Illegal temperature", temperature=0.0)
pair_err("NTXentLoss", _ntxent, "temperature-0-module", "temperature", ValueError,
         "temperature", "Illegal temperature", module=True, temperature=0.0)
pair_err("ntxent_loss", _ntxent, "negatives-d", "shape", ValueError, "negatives",
         "negatives must have feature size d = 4", negatives=_rand(5, 3))
pair_err("ntxent_loss", _ntxent, "negatives-list", "type", TypeError, "negatives",
         "negatives must be a torch.Tensor", negatives=[[0.0] * 4])
pair_err("ntxent_loss", _ntxent, "eps-0", "eps", ValueError, "eps", "eps must be > 0", eps=0.0)
pair_err("NTXentLoss", _ntxent, "bank-size-neg", "range", ValueError, "memory bank size",
         "Illegal memory bank size -1", module=True, memory_bank_size=-1)


def _bank_d_changes(backend):
    loss = L.NTXentLoss(memory_bank_size=8, backend=backend)
    loss(_o0().requires_grad_(), _o1())
    return loss(_rand(3, 5, seed=9).requires_grad_(), _rand(3, 5, seed=10))


_err("ntxent-bank-d-changes", "NTXentLoss", "bank", _bank_d_changes, ValueError, "memory bank",
     "the memory bank holds rows of d = 4, got a batch of d = 5")


def ntxent_val(id, topic, pattern, out0=None, out1=None, temperature=0.5, negatives=None,
               oracle=None):
    """oracle: the expected value where lightly's formulation cannot run (an empty batch)."""
    def args():
        return (_o0() if out0 is None else out0, _o1() if out1 is None else out1)

    def reference():
        if oracle is not None:
            return torch.tensor(oracle)
        return R.ntxent_loss_reference(*(x.double() for x in args()), temperature,
                                       None if negatives is None else negatives.double())
    _val(f"ntxent-{id}", "ntxent_loss", topic,
         lambda b: F.ntxent_loss(*args(), temperature, negatives, backend=b), reference,
         pattern)


ntxent_val("nan-out0", "nan", "n", out0=_with(_o0(), (1, 3), NAN))
ntxent_val("nan-negatives", "nan", "n", negatives=_with(_unit(5, 4, seed=11), (4, 0), NAN))
ntxent_val("zero-row", "extreme", "f", out0=_with(_o0(), 0, 0.0))
ntxent_val("batch-1", "degenerate", "f", out0=_o0(1), out1=_o1(1))
ntxent_val("empty-batch", "degenerate", "n", out0=_o0(0), out1=_o1(0), oracle=NAN)
ntxent_val("empty-negatives", "empty_queue", "0", negatives=torch.empty(0, 4))
ntxent_val("temperature-neg", "accepted", "f", temperature=-0.5)
ntxent_val("temperature-nan", "nan", "n", temperature=NAN)

# --------------------------------------------------------------------------- CLIP


def _clip(backend, img=None, txt=None, logit_scale=10.0, logit_bias=None, module=False):
    img = _unit(3, 4, seed=12) if img is None else img
    txt = _unit(3, 4, seed=13) if txt is None else txt
    if module:
        return L.ClipLoss(backend=backend)(img, txt, logit_scale, logit_bias)
    return F.clip_loss(img, txt, logit_scale, logit_bias, backend=backend)


pair_err("clip_loss", _clip, "image-list", "type", TypeError, "image_features",
         "image_features must be a torch.Tensor", img=[[1.0] * 4] * 3)
pair_err("ClipLoss", _clip, "text-int", "dtype", TypeError, "text_features",
         "text_features must be floating point", module=True,
         txt=torch.ones(3, 4, dtype=torch.int64))
pair_err("clip_loss", _clip, "image-1d", "rank", ValueError, "image_features",
         "image_features must be 2-D", img=_rand(4))
pair_err("clip_loss", _clip, "d-mismatch", "shape", ValueError, "text_features",
         "text_features must have feature size d = 4", txt=_unit(3, 5))
pair_err("clip_loss", _clip, "batch-mismatch", "shape", ValueError, "text_features",
         "image_features and text_features must have the same batch size", txt=_unit(2, 4))
pair_err("clip_loss", _clip, "dtype-mismatch", "dtype_mismatch", TypeError, "text_features",
         "image_features and text_features must share a dtype", txt=_unit(3, 4).double())
pair_err("clip_loss", _clip, "logit-scale-vector", "scale", ValueError, "logit_scale",
         "logit_scale must be a scalar", logit_scale=torch.ones(2))
pair_err("clip_loss", _clip, "logit-bias-vector", "scale", ValueError, "logit_bias",
         "logit_bias must be a scalar", logit_bias=torch.zeros(3))
pair_err("clip_loss", _clip, "logit-scale-complex", "scale", TypeError, "logit_scale",
         "logit_scale must be real", logit_scale=10j)
pair_err("ClipLoss", _clip, "logit-scale-complex-tensor", "scale", TypeError, "logit_scale",
         "logit_scale must be real", module=True, logit_scale=torch.tensor(10 + 1j))
pair_err("clip_loss", _clip, "logit-scale-str", "scale", TypeError, "logit_scale",
         "logit_scale must be", logit_scale="10")
pair_err("clip_loss", _clip, "logit-bias-complex", "scale", TypeError, "logit_bias",
         "logit_bias must be real", logit_bias=1j)


def clip_val(id, topic, pattern, img=None, txt=None, logit_scale=10.0, logit_bias=None):
    def args():
        return (_unit(3, 4, seed=12) if img is None else img,
                _unit(3, 4, seed=13) if txt is None else txt)
    _val(f"clip-{id}", "clip_loss", topic,
         lambda b: F.clip_loss(*args(), logit_scale, logit_bias, backend=b),
         lambda: R.clip_loss_reference(*(x.double() for x in args()), logit_scale, logit_bias),
         pattern)


clip_val("nan-image", "nan", "n", img=_with(_unit(3, 4, seed=12), (2, 2), NAN))
clip_val("nan-logit-scale", "nan", "n", logit_scale=NAN)
clip_val("nan-logit-bias", "nan", "n", logit_bias=NAN)
clip_val("logit-scale-0", "accepted", "f", logit_scale=0.0)

# --------------------------------------------------------------------------- InfoNCE


def _infonce(backend, query=None, positive_key=None, negative_keys=None, module=False, **kw):
    query = _rand(3, 4, seed=14) if query is None else query
    positive_key = _rand(3, 4, seed=15) if positive_key is None else positive_key
    if module:
        return L.InfoNCE(**kw, backend=backend)(query, positive_key, negative_keys)
    return F.info_nce(query, positive_key, negative_keys, **kw, backend=backend)


pair_err("InfoNCE", _infonce, "temperature-0-module", "temperature", ValueError, "temperature",
         "temperature must be > 0", module=True, temperature=0)
pair_err("InfoNCE", _infonce, "temperature-neg-module", "temperature", ValueError,
         "temperature", "temperature must be > 0", module=True, temperature=-0.1)
pair_err("info_nce", _infonce, "temperature-0", "temperature", ValueError, "temperature",
         "temperature must be > 0", temperature=0.0)
pair_err("info_nce", _infonce, "temperature-nan", "temperature", ValueError, "temperature",
         "temperature must be > 0", temperature=NAN)
pair_err("info_nce", _infonce, "reduction", "option", ValueError, "reduction",
         "reduction must be 'mean', 'sum' or 'none'", reduction="avg")
pair_err("InfoNCE", _infonce, "reduction-module", "option", ValueError, "reduction",
         "reduction must be 'mean', 'sum' or 'none'", module=True, reduction="batchmean")
pair_err("InfoNCE", _infonce, "negative-mode", "option", ValueError, "negative_mode",
         "negative_mode must be 'unpaired'", module=True, negative_mode="paired")
pair_err("info_nce", _infonce, "negative-keys-3d", "rank", ValueError, "negative_keys",
         "negative_keys must be 2-D [M, d]", negative_keys=_rand(3, 2, 4))
pair_err("info_nce", _infonce, "negative-keys-d", "shape", ValueError, "negative_keys",
         "negative_keys must have feature size d = 4", negative_keys=_rand(5, 3))
pair_err("info_nce", _infonce, "symmetric-with-negatives", "option", ValueError, "symmetric",
         "symmetric=True is defined for in-batch negatives only", symmetric=True,
         negative_keys=_rand(5, 4))
pair_err("info_nce", _infonce, "query-list", "type", TypeError, "query",
         "query must be a torch.Tensor", query=[[1.0] * 4] * 3)
pair_err("info_nce", _infonce, "query-complex", "dtype", TypeError, "query",
         "query must be floating point", query=_rand(3, 4).to(torch.complex64))
pair_err("info_nce", _infonce, "positive-key-rows", "shape", ValueError, "positive_key",
         "positive_key must have 3 rows", positive_key=_rand(2, 4))
pair_err("info_nce", _infonce, "negative-keys-dtype", "dtype_mismatch", TypeError,
         "negative_keys", "query and negative_keys must share a dtype",
         negative_keys=_rand(5, 4).double())


def infonce_val(id, topic, pattern, query=None, negative_keys=None, **kw):
    def args():
        return (_rand(3, 4, seed=14) if query is None else query, _rand(3, 4, seed=15),
                negative_keys)
    _val(f"infonce-{id}", "info_nce", topic,
         lambda b: F.info_nce(*args(), **kw, backend=b),
         lambda: R.info_nce_reference(*(None if x is None else x.double() for x in args()),
                                      **kw),
         pattern)


infonce_val("nan-negative-keys", "nan", "n", negative_keys=_with(_rand(5, 4), (2, 1), NAN))
infonce_val("nan-query-row-none", "nan", "nff", query=_with(_rand(3, 4, seed=14), (0, 0), NAN),
            reduction="none", negative_keys=_rand(5, 4))
infonce_val("nan-query-symmetric", "nan", "nnn",
            query=_with(_rand(3, 4, seed=14), (1, 0), NAN), reduction="none", symmetric=True)
infonce_val("empty-negative-keys", "empty_queue", "000", negative_keys=torch.empty(0, 4),
            reduction="none")

# --------------------------------------------------------------------------- MoCo


def _qk(seed=16):
    return _unit(3, 4, seed=seed), _unit(3, 4, seed=seed + 1)


def _queue(k=6):
    return _unit(k, 4, seed=18)


def _moco(backend, q=None, k=None, queue=None, module=False, temperature=0.07, **kw):
    q0, k0 = _qk()
    q, k = (q0 if q is None else q), (k0 if k is None else k)
    queue = _queue() if queue is None else queue
    if module:
        return L.MoCoLoss(temperature, **kw, backend=backend)(q, k, queue)
    return F.moco_loss(q, k, queue, temperature, **kw, backend=backend)


pair_err("moco_loss", _moco, "queue-d", "shape", ValueError, "queue",
         "queue must have feature size d = 4", queue=_unit(6, 3))
pair_err("MoCoLoss", _moco, "queue-1d", "rank", ValueError, "queue", "queue must be 2-D",
         module=True, queue=_unit(4))
pair_err("moco_loss", _moco, "qk-shape", "shape", ValueError, "k",
         "q and k must have the same shape", k=_unit(2, 4))
pair_err("moco_loss", _moco, "queue-dtype", "dtype_mismatch", TypeError, "queue",
         "q and queue must share a dtype", queue=_queue().half())
pair_err("moco_loss", _moco, "q-int", "dtype", TypeError, "q", "q must be floating point",
         q=torch.ones(3, 4, dtype=torch.int64))
pair_err("moco_loss", _moco, "queue-list", "type", TypeError, "queue",
         "queue must be a torch.Tensor", queue=[[0.0] * 4])
pair_err("moco_loss", _moco, "temperature-0", "temperature", ValueError, "temperature",
         "temperature must be > 0", temperature=0.0)
pair_err("MoCoLoss", _moco, "temperature-neg-module", "temperature", ValueError,
         "temperature", "temperature must be > 0", module=True, temperature=-0.07)
pair_err("moco_loss", _moco, "reduction", "option", ValueError, "reduction",
         "reduction must be 'mean', 'sum' or 'none'", reduction="max")


def moco_val(id, topic, pattern, q=None, k=None, queue=None, **kw):
    def args():
        q0, k0 = _qk()
        return (q0 if q is None else q, k0 if k is None else k,
                _queue() if queue is None else queue)
    _val(f"moco-{id}", "moco_loss", topic, lambda b: F.moco_loss(*args(), **kw, backend=b),
         lambda: R.moco_loss_reference(*(x.double() for x in args()), **kw), pattern)


moco_val("nan-queue", "nan", "n", queue=_with(_queue(), (3, 2), NAN))
moco_val("nan-queue-in-batch", "nan", "n", queue=_with(_queue(), (0, 0), NAN),
         in_batch_negatives=True)
moco_val("nan-k", "nan", "n", k=_with(_qk()[1], (1, 1), NAN))
moco_val("empty-queue", "empty_queue", "0", queue=torch.empty(0, 4))
moco_val("empty-queue-in-batch", "empty_queue", "f", queue=torch.empty(0, 4),
         in_batch_negatives=True)
