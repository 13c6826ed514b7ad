"""Wrong devices for every tensor argument of every loss (and of ops.lse): each argument in
turn on the meta device while the first stays on the CPU. The error must be a ValueError
naming that argument before anything is moved (``.to(device)`` of a meta tensor raised
torch's bare "Cannot copy out of meta tensor"; a device mismatch inside the algebra raised
torch's "Tensor on device ... is not on the expected device").

Arguments the published losses move to the features' device themselves (labels, masks, a
class prior, BINGO's lam) may come from any device with data; the others must share the
first argument's device.
"""

from __future__ import annotations

import torch

from ... import functional as F
from ... import losses as L
from ... import ops
from .table import META, _err, _rand, _unit


def _feats():
    return _unit(4, 2, 4, seed=21)


def _rows(seed, n=4, d=4):
    return _unit(n, d, seed=seed)


# (api, call(backend, **kwargs), valid kwargs, the arguments to move -> what each must say)
MOVED = "must be on cpu"          # check_on: "<arg> must be on cpu (the device of ...)"
PAIRED = "must be on one device"  # check_same: "<first> and <arg> must be on one device"
SPECS = [
    ("ops.lse", lambda b, **kw: ops.lse(kw.pop("q"), kw.pop("k"), kw.pop("scale"), backend=b, **kw),
                lambda: dict(q=_rows(1, 3), k=_rows(2, 5), scale=torch.tensor(2.0),
                             q_labels=torch.tensor([0, 1, 0]), k_labels=torch.tensor([0, 1, 1, 0, 2]),
                             exclude_positives=True),
                {"k_labels": MOVED}),
    ("supcon_loss", lambda b, **kw: F.supcon_loss(backend=b, **kw),
                    lambda: dict(features=_feats(), labels=torch.tensor([0, 1, 0, 1])),
                    {"labels": "labels must be on cpu"}),
    ("SupConLoss", lambda b, **kw: L.SupConLoss(backend=b)(**kw),
                   lambda: dict(features=_feats(), mask=torch.eye(4)),
                   {"mask": "mask must be on cpu"}),
    ("paco_loss", lambda b, **kw: F.paco_loss(backend=b, **kw),
                  lambda: dict(features=_rows(3, 6), labels=torch.tensor([0, 1, 0, 1, 2, 0]),
                               sup_logits=_rand(2, 3, seed=4), class_prior=torch.tensor([0.5, 0.3, 0.2]),
                               alpha=0.5, K=2, num_classes=3),
                  {"labels": MOVED, "sup_logits": MOVED, "class_prior": MOVED}),
    ("gpaco_loss", lambda b, **kw: F.gpaco_loss(backend=b, **kw),
                   lambda: dict(features=_rows(3, 6), labels=torch.tensor([0, 1, 0, 1, 2, 0]),
                                sup_logits=_rand(4, 3, seed=4), class_prior=torch.tensor([0.5, 0.3, 0.2]),
                                alpha=0.5, K=2, num_classes=3),
                   {"labels": MOVED, "sup_logits": MOVED, "class_prior": MOVED}),
    ("ntxent_loss", lambda b, **kw: F.ntxent_loss(backend=b, **kw),
                    lambda: dict(out0=_rows(5), out1=_rows(6), negatives=_rows(7, 5)),
                    {"out1": PAIRED, "negatives": MOVED}),
    ("clip_loss", lambda b, **kw: F.clip_loss(backend=b, **kw),
                  lambda: dict(image_features=_rows(8), text_features=_rows(9),
                               logit_scale=torch.tensor(10.0), logit_bias=torch.tensor(-1.0)),
                  {"text_features": PAIRED, "logit_scale": MOVED, "logit_bias": MOVED}),
    ("info_nce", lambda b, **kw: F.info_nce(backend=b, **kw),
                 lambda: dict(query=_rows(10), positive_key=_rows(11), negative_keys=_rows(12, 6)),
                 {"positive_key": PAIRED, "negative_keys": PAIRED}),
    ("moco_loss", lambda b, **kw: F.moco_loss(backend=b, **kw),
                  lambda: dict(q=_rows(13), k=_rows(14), queue=_rows(15, 6)),
                  {"k": PAIRED, "queue": PAIRED}),
    ("clsa_loss", lambda b, **kw: F.clsa_loss(backend=b, **kw),
                  lambda: dict(q_weak=_rows(16), q_strong=_rows(17), k=_rows(18), queue=_rows(19, 6)),
                  {"q_strong": PAIRED, "k": PAIRED, "queue": PAIRED}),
    ("bingo_loss", lambda b, **kw: F.bingo_loss(backend=b, **kw),
                   lambda: dict(q=_rows(20), positive_keys=_unit(4, 2, 4, seed=21),
                                queue=_rows(22, 6), lam=torch.tensor([0.5, 0.5])),
                   {"positive_keys": PAIRED, "queue": PAIRED, "lam": MOVED}),
    ("dcl_loss", lambda b, **kw: F.dcl_loss(backend=b, **kw),
                 lambda: dict(out0=_rows(23), out1=_rows(24)),
                 {"out1": PAIRED}),
    ("dclw_loss", lambda b, **kw: F.dclw_loss(backend=b, **kw),
                  lambda: dict(out0=_rows(23), out1=_rows(24)),
                  {"out1": PAIRED}),
    ("hcl_loss", lambda b, **kw: F.hcl_loss(backend=b, **kw),
                 lambda: dict(out_1=_rows(25), out_2=_rows(26)),
                 {"out_2": PAIRED}),
]


def _on_meta(value):
    return value.to(META) if isinstance(value, torch.Tensor) else value


for _api, _call, _valid, _moved in SPECS:
    for _arg, _phrase in _moved.items():
        _match = _phrase if _phrase.startswith(_arg) else (
            f"{_arg} {_phrase}" if _phrase == MOVED else f"and {_arg} {_phrase}")

        def _run(backend, call=_call, valid=_valid, arg=_arg):
            kwargs = valid()
            kwargs[arg] = _on_meta(kwargs[arg])
            return call(backend, **kwargs)
        _err(f"device-{_api.lower().replace('.', '-')}-{_arg}", _api, "device", _run,
             ValueError, _arg, _match)

# a DCL weight_fn whose weights land on another device
_err("device-dcl-weight-fn", "dcl_loss", "device",
     lambda b: F.dcl_loss(_rows(23), _rows(24), weight_fn=lambda x, y: torch.ones(4, device=META),
                          backend=b),
     ValueError, "weight_fn", "weight_fn must return weights on cpu")
