"""Bad inputs and edge values of SigLIP."""

from __future__ import annotations

import torch

from ... import functional as F
from ... import losses as L
from .. import reference_losses as R
from .table import NAN, _rand, _unit, _val, _with, pair_err


def _siglip(backend, img=None, txt=None, logit_scale=10.0, logit_bias=-10.0, module=False,
            init=None, **kw):
    img = _unit(3, 4, seed=16) if img is None else img
    txt = _unit(3, 4, seed=17) if txt is None else txt
    if module:
        return L.SigLipLoss(**(init or {}), backend=backend)(img, txt, logit_scale, logit_bias,
                                                             **kw)
    return F.siglip_loss(img, txt, logit_scale, logit_bias, **kw, backend=backend)


pair_err("siglip_loss", _siglip, "image-list", "type", TypeError, "image_features",
         "image_features must be a torch.Tensor", img=[[1.0] * 4] * 3)
pair_err("SigLipLoss", _siglip, "text-int", "dtype", TypeError, "text_features",
         "text_features must be floating point", module=True,
         txt=torch.ones(3, 4, dtype=torch.int64))
pair_err("siglip_loss", _siglip, "d-mismatch", "shape", ValueError, "text_features",
         "text_features must have feature size d = 4", txt=_unit(3, 5))
pair_err("siglip_loss", _siglip, "batch-mismatch", "shape", ValueError, "text_features",
         "image_features and text_features must have the same batch size", txt=_unit(2, 4))
pair_err("siglip_loss", _siglip, "logit-scale-vector", "scale", ValueError, "logit_scale",
         "logit_scale must be a float or a 0-dim tensor", logit_scale=torch.ones(2))
pair_err("siglip_loss", _siglip, "logit-bias-vector", "scale", ValueError, "logit_bias",
         "logit_bias must be a float or a 0-dim tensor", logit_bias=torch.zeros(3))
pair_err("siglip_loss", _siglip, "logit-bias-complex", "scale", TypeError, "logit_bias",
         "logit_bias must be real", logit_bias=1j)
pair_err("siglip_loss", _siglip, "labels-float", "class_ids", TypeError, "labels",
         "labels must be an integer tensor", labels=torch.zeros(3))
pair_err("siglip_loss", _siglip, "labels-length", "label_count", ValueError, "labels",
         "labels must have one entry per sample (3)", labels=torch.zeros(2, dtype=torch.long))
pair_err("SigLipLoss", _siglip, "dist-impl", "option", ValueError, "dist_impl",
         "dist_impl must be one of", module=True, init=dict(dist_impl="ring"))
pair_err("SigLipLoss", _siglip, "chunk-size-negative", "range", ValueError, "chunk_size",
         "chunk_size must be an int >= 0", module=True, init=dict(chunk_size=-1))


def siglip_val(id, topic, pattern, img=None, txt=None, logit_scale=10.0, logit_bias=-10.0):
    def args():
        return (_unit(3, 4, seed=16) if img is None else img,
                _unit(3, 4, seed=17) if txt is None else txt)
    _val(f"siglip-{id}", "siglip_loss", topic,
         lambda b: F.siglip_loss(*args(), logit_scale, logit_bias, backend=b),
         lambda: R.siglip_loss_reference(*(x.double() for x in args()), logit_scale,
                                         logit_bias),
         pattern)


siglip_val("nan-text", "nan", "n", txt=_with(_unit(3, 4, seed=17), (1, 2), NAN))
siglip_val("nan-logit-bias", "nan", "n", logit_bias=NAN)
siglip_val("logit-scale-0", "accepted", "f", logit_scale=0.0)
siglip_val("large-logits", "accepted", "f", img=_rand(3, 4, seed=18) * 1e3)
