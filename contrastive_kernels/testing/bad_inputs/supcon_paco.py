"""Bad inputs and edge values of SupCon, PaCo and GPaCo."""

from __future__ import annotations

import math

import torch

from ... import functional as F  # noqa: F401
from ... import losses as L  # noqa: F401
from ... import ops  # noqa: F401
from .. import reference_losses as R  # noqa: F401
from .table import (FAMILIES, INF, META, NAN, _err, _rand, _unit, _val, _with,  # noqa: F401
                    pair_err)


# --------------------------------------------------------------------------- SupCon


def _feats(bsz=4, views=2, d=4):
    return _unit(bsz, views, d, seed=4)


_SUP_LABELS = torch.tensor([0, 1, 0, 2])


def supcon_err(id, topic, raises, arg, match, module=False, features=None, xfail_reason=None,
               labels=_SUP_LABELS, mask=None, **kw):
    def run(backend):
        f = _feats() if features is None else features
        if module:
            return L.SupConLoss(**kw, backend=backend)(f, labels, mask)
        return F.supcon_loss(f, labels, mask, **kw, backend=backend)
    _err(f"supcon-{id}", "SupConLoss" if module else "supcon_loss", topic, run, raises, arg, match,
         xfail_reason)


def supcon_val(id, topic, pattern, features=None, labels=None, mask=None, oracle=None, **kw):
    def run(backend):
        return F.supcon_loss(_feats() if features is None else features, labels, mask, **kw,
                             backend=backend)

    def reference():
        if oracle is not None:
            return torch.tensor(oracle)
        return R.supcon_loss_reference((_feats() if features is None else features).double(),
                                       labels, mask, **kw)
    _val(f"supcon-{id}", "supcon_loss", topic, run, reference, pattern)


supcon_err("features-list", "type", TypeError, "features", "features must be a torch.Tensor",
           features=[[[1.0]]])
supcon_err("features-int", "dtype", TypeError, "features", "features must be floating point",
           features=torch.ones(4, 2, 4, dtype=torch.int64))
supcon_err("features-int-module", "dtype", TypeError, "features",
           "features must be floating point", module=True,
           features=torch.ones(4, 2, 4, dtype=torch.int32))
supcon_err("features-complex", "dtype", TypeError, "features", "features must be floating point",
           features=_feats().to(torch.complex64))
supcon_err("features-2d", "rank", ValueError, "features",
           "`features` needs to be [bsz, n_views, ...]", features=_rand(4, 4))
supcon_err("bsz-0", "range", ValueError, "features",
           "features must hold at least one sample and one view", features=torch.empty(0, 2, 4),
           labels=torch.empty(0, dtype=torch.long))
supcon_err("views-0", "range", ValueError, "features",
           "features must hold at least one sample and one view", features=torch.empty(4, 0, 4))
supcon_err("labels-float", "class_ids", TypeError, "labels",
           "labels must be an integer tensor of class ids", labels=_SUP_LABELS.float())
supcon_err("labels-nan", "class_ids", TypeError, "labels",
           "labels must be an integer tensor of class ids", labels=torch.tensor([0, NAN, 0, 1]))
supcon_err("labels-bool", "class_ids", TypeError, "labels",
           "labels must be an integer tensor of class ids",
           labels=torch.tensor([True, False, True, False]))
supcon_err("labels-complex", "class_ids", TypeError, "labels",
           "labels must be an integer tensor of class ids", labels=_SUP_LABELS.to(torch.complex64))
supcon_err("labels-int", "class_ids", TypeError, "labels",
           "labels must be a torch.Tensor of integer class ids", labels=3)
supcon_err("labels-list", "class_ids", TypeError, "labels",
           "labels must be a torch.Tensor of integer class ids", labels=[0, 1, 0, 2])
supcon_err("labels-float-module", "class_ids", TypeError, "labels",
           "labels must be an integer tensor of class ids", module=True,
           labels=_SUP_LABELS.double())
supcon_err("labels-count", "label_count", ValueError, "labels",
           "Num of labels does not match num of features", labels=torch.tensor([0, 1, 0]))
supcon_err("labels-and-mask", "label_count", ValueError, "labels",
           "Cannot define both `labels` and `mask`", mask=torch.eye(4))
supcon_err("mask-shape", "mask", ValueError, "mask", "mask must be [bsz, bsz] = [4, 4]",
           labels=None, mask=torch.eye(3))
supcon_err("mask-1d", "mask", ValueError, "mask", "mask must be [bsz, bsz] = [4, 4]",
           labels=None, mask=torch.ones(4))
supcon_err("mask-list", "type", TypeError, "mask", "mask must be",
           labels=None, mask=[[1.0] * 4] * 4)
supcon_err("contrast-mode", "option", ValueError, "contrast_mode",
           "contrast_mode must be 'all' or 'one'", contrast_mode="both")
supcon_err("contrast-mode-module", "option", ValueError, "contrast_mode",
           "contrast_mode must be 'all' or 'one'", module=True, contrast_mode="ALL")
supcon_err("temperature-0", "temperature", ValueError, "temperature",
           "temperature must be > 0", temperature=0.0)
supcon_err("temperature-neg-module", "temperature", ValueError, "temperature",
           "temperature must be > 0", module=True, temperature=-0.1)
supcon_err("temperature-nan", "temperature", ValueError, "temperature",
           "temperature must be > 0", temperature=NAN)
supcon_err("eps-0", "eps", ValueError, "eps", "eps must be > 0", eps=0.0, normalize=True)
supcon_err("base-temperature-0", "temperature", ValueError, "base_temperature",
           "base_temperature must be > 0", base_temperature=0.0)
supcon_err("base-temperature-0-module", "temperature", ValueError, "base_temperature",
           "base_temperature must be > 0", module=True, base_temperature=0.0)

supcon_val("nan-features", "nan", "n", features=_with(_feats(), (1, 0, 2), NAN),
           labels=_SUP_LABELS)
supcon_val("no-positives-one-view", "no_positives", "0", features=_feats(views=1),
           labels=torch.tensor([0, 1, 2, 3]))
supcon_val("some-without-positives", "no_positives", "f", features=_feats(views=1),
           labels=_SUP_LABELS)
supcon_val("zero-mask", "no_positives", "0", mask=torch.zeros(4, 4))
supcon_val("lone-anchor", "no_positives", "0", features=_feats(bsz=1, views=1), oracle=0.0)
supcon_val("negative-label-ids", "accepted", "f", labels=torch.tensor([-5, 7, -5, 2]))
supcon_val("int8-labels", "accepted", "f", labels=_SUP_LABELS.to(torch.int8))

# signed mask rows: weights summing to 0 ([0, 1, -1]) or below 0. SupContrast sums
# mask * log_prob whatever the weights and divides by 1 where the sum is < 1e-6.
_SIGNED_MASK = torch.tensor([[0.0, 1.0, -1.0, 0.0], [1.0, 0.0, 0.0, 1.0],
                             [0.5, -0.5, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0]])


def _supcon_grad(backend, mask, mode):
    f = _feats().requires_grad_()
    loss = F.supcon_loss(f, mask=mask, contrast_mode=mode, backend=backend)
    return torch.autograd.grad(loss, f)[0]


def _supcon_grad_reference(mask, mode):
    f = _feats().double().requires_grad_()
    loss = R.supcon_loss_reference(f, mask=mask.double(), contrast_mode=mode)
    return torch.autograd.grad(loss, f)[0].float()


for _mode in ("all", "one"):
    supcon_val(f"signed-mask-{_mode}", "signed_mask", "f", mask=_SIGNED_MASK, contrast_mode=_mode)
    _val(f"supcon-signed-mask-grad-{_mode}", "supcon_loss", "signed_mask",
         lambda b, m=_mode: _supcon_grad(b, _SIGNED_MASK, m),
         lambda m=_mode: _supcon_grad_reference(_SIGNED_MASK, m), "f" * 32)

# --------------------------------------------------------------------------- PaCo / GPaCo
# N = 6 rows = [q (2); k (2); queue (2)], C = 3 classes; PaCo anchors (N - K) // 2 = 2,
# GPaCo anchors N - K = 4.

_C = 3
_PACO_LABELS = torch.tensor([0, 1, 0, 1, 2, 0])
_PRIOR = torch.tensor([0.5, 0.3, 0.2])


def _paco_feats():
    return _unit(6, 4, seed=5)


def _sup(rows, cols=_C):
    return _rand(rows, cols, seed=6)


def paco_err(id, topic, raises, arg, match, which="paco", xfail_reason=None, **kw):
    gpaco = which.lower().startswith("gpaco")
    args = dict(features=_paco_feats(), labels=_PACO_LABELS, sup_logits=_sup(4 if gpaco else 2))
    args.update({k: kw.pop(k) for k in list(kw) if k in args})
    opts = dict(alpha=0.5, K=2, num_classes=_C)
    opts.update(kw)
    prior = opts.pop("class_prior", _PRIOR)

    def run(backend):
        if which == "paco":
            return F.paco_loss(args["features"], args["labels"], args["sup_logits"], prior,
                               **opts, backend=backend)
        if which == "gpaco":
            return F.gpaco_loss(args["features"], args["labels"], args["sup_logits"], **opts,
                                backend=backend)
        cls = L.PaCoLoss if which == "PaCoLoss" else L.GPaCoLoss
        module = cls(**opts, backend=backend)
        module.cal_weight_for_classes([5, 3, 2])
        return module(args["features"], args["labels"], args["sup_logits"])
    api = {"paco": "paco_loss", "gpaco": "gpaco_loss"}.get(which, which)
    _err(f"{which.lower()}-{id}", api, topic, run, raises, arg, match, xfail_reason)


def paco_val(id, topic, pattern, gpaco=False, features=None, labels=_PACO_LABELS,
             sup_logits=None, **kw):
    opts = dict(alpha=0.5, K=2, num_classes=_C)
    opts.update(kw)

    def inputs():
        f = _paco_feats() if features is None else features
        s = _sup(4 if gpaco else 2) if sup_logits is None else sup_logits
        return f, s

    def run(backend):
        f, s = inputs()
        if gpaco:
            return F.gpaco_loss(f, labels, s, **opts, backend=backend)
        return F.paco_loss(f, labels, s, _PRIOR, **opts, backend=backend)

    def reference():
        f, s = inputs()
        if gpaco:
            return R.gpaco_loss_reference(f.double(), labels, s.double(), **opts)
        return R.paco_loss_reference(f.double(), labels, s.double(), _PRIOR.double(), **opts)
    _val(f"{'gpaco' if gpaco else 'paco'}-{id}", "gpaco_loss" if gpaco else "paco_loss", topic,
         run, reference, pattern)


paco_err("features-list", "type", TypeError, "features", "features must be",
         features=[[0.0] * 4] * 6)
paco_err("features-1d", "rank", ValueError, "features", "features must be a 2-D tensor",
         features=_rand(6))
paco_err("features-int", "dtype", TypeError, "features", "features must be floating point",
         features=torch.ones(6, 4, dtype=torch.int64))
paco_err("labels-float", "class_ids", TypeError, "labels",
         "labels must be an integer tensor of class ids", labels=_PACO_LABELS.float())
paco_err("labels-nan", "class_ids", TypeError, "labels",
         "labels must be an integer tensor of class ids",
         labels=_with(_PACO_LABELS.float(), 1, NAN))
paco_err("labels-list", "class_ids", TypeError, "labels",
         "labels must be a torch.Tensor of integer class ids", labels=[0, 1, 0, 1, 2, 0])
paco_err("labels-none", "missing", ValueError, "labels", "labels is required", labels=None)
paco_err("labels-count", "label_count", ValueError, "labels",
         "labels must have one entry per sample (6)", labels=_PACO_LABELS[:5])
paco_err("labels-eq-C", "label_range", ValueError, "labels",
         "labels must be class ids in [0, num_classes = 3)", labels=_with(_PACO_LABELS, 1, 3))
paco_err("labels-negative", "label_range", ValueError, "labels",
         "labels must be class ids in [0, num_classes = 3)", labels=_with(_PACO_LABELS, 0, -1))
paco_err("labels-eq-C", "label_range", ValueError, "labels",
         "labels must be class ids in [0, num_classes = 3)", which="gpaco",
         labels=_with(_PACO_LABELS, 3, 3))
paco_err("labels-negative", "label_range", ValueError, "labels",
         "labels must be class ids in [0, num_classes = 3)", which="GPaCoLoss",
         labels=_with(_PACO_LABELS, 2, -2))
paco_err("labels-float", "class_ids", TypeError, "labels",
         "labels must be an integer tensor of class ids", which="GPaCoLoss",
         labels=_PACO_LABELS.double())
paco_err("labels-eq-C", "label_range", ValueError, "labels",
         "labels must be class ids in [0, num_classes = 3)", which="PaCoLoss",
         labels=_with(_PACO_LABELS, 0, 7))
paco_err("sup-logits-none", "missing", ValueError, "sup_logits", "sup_logits is required",
         sup_logits=None)
paco_err("sup-logits-rows", "shape", ValueError, "sup_logits",
         "sup_logits must be [n_anchors, num_classes] = [2, 3]", sup_logits=_sup(3))
paco_err("sup-logits-classes", "shape", ValueError, "sup_logits",
         "sup_logits must have num_classes = 3 columns", sup_logits=_sup(2, 4))
paco_err("sup-logits-rows", "shape", ValueError, "sup_logits",
         "sup_logits must be [n_anchors, num_classes] = [4, 3]", which="gpaco",
         sup_logits=_sup(2))
paco_err("K-too-large", "range", ValueError, "K", "must be in [1, N = 6], got 0 (check K",
         K=6)
paco_err("K-too-large", "range", ValueError, "K", "must be in [1, N = 6], got 0 (check K",
         which="gpaco", K=6)
paco_err("temperature-0", "temperature", ValueError, "temperature", "temperature must be > 0",
         temperature=0.0)
paco_err("base-temperature-0", "temperature", ValueError, "base_temperature",
         "base_temperature must be > 0", base_temperature=0.0)
paco_err("sup-logits-list", "type", TypeError, "sup_logits", "sup_logits must be",
         which="gpaco", sup_logits=[[0.0] * 3] * 4)
paco_err("sup-logits-complex", "dtype", TypeError, "sup_logits", "sup_logits must be",
         sup_logits=_sup(2).to(torch.complex64))
paco_err("class-prior-length", "shape", ValueError, "class_prior",
         "class_prior must have num_classes = 3 entries", class_prior=torch.full((4,), 0.25))
paco_err("features-int", "dtype", TypeError, "features", "features must be floating point",
         which="gpaco", features=torch.ones(6, 4, dtype=torch.int32))
paco_err("temperature-neg", "temperature", ValueError, "temperature",
         "temperature must be > 0", which="PaCoLoss", temperature=-1.0)
paco_err("temperature-0", "temperature", ValueError, "temperature", "temperature must be > 0",
         which="GPaCoLoss", temperature=0.0)
paco_err("supt-0", "range", ValueError, "supt", "supt must be > 0", supt=0.0)
paco_err("gamma-neg", "range", ValueError, "gamma", "gamma must be >= 0", gamma=-0.5)
paco_err("class-prior-none", "missing", ValueError, "class_prior", "class_prior is required",
         class_prior=None)
paco_err("smooth-1", "range", ValueError, "smooth", "smooth must be in [0, 1)", which="gpaco",
         smooth=1.0)
paco_err("smooth-neg", "range", ValueError, "smooth", "smooth must be in [0, 1)",
         which="GPaCoLoss", smooth=-0.1)
paco_err("smooth-one-class", "range", ValueError, "smooth", "smooth > 0 needs num_classes >= 2",
         which="gpaco", smooth=0.1, num_classes=1, labels=torch.zeros(6, dtype=torch.long),
         sup_logits=_sup(4, 1))


def _paco_no_prior(backend):
    return L.PaCoLoss(0.5, K=2, num_classes=_C, backend=backend)(
        _paco_feats(), _PACO_LABELS, _sup(2))


def _paco_bad_counts(counts):
    def run(backend):
        L.PaCoLoss(0.5, K=2, num_classes=_C, backend=backend).cal_weight_for_classes(counts)
    return run


_err("paco-module-no-prior", "PaCoLoss", "missing", _paco_no_prior, RuntimeError,
     "cal_weight_for_classes", "call cal_weight_for_classes(cls_num_list) before forward")
_err("paco-prior-length", "PaCoLoss", "shape", _paco_bad_counts([5, 3]), ValueError,
     "cls_num_list", "cls_num_list must have num_classes = 3 entries")
_err("paco-prior-negative", "PaCoLoss", "range", _paco_bad_counts([5, -3, 2]), ValueError,
     "cls_num_list", "cls_num_list must hold non-negative counts with a positive sum")

paco_val("nan-features", "nan", "n", features=_with(_paco_feats(), (4, 1), NAN))
paco_val("nan-sup-logits", "nan", "n", sup_logits=_with(_sup(2), (0, 2), NAN))
paco_val("nan-features", "nan", "n", gpaco=True, features=_with(_paco_feats(), (0, 0), NAN))
paco_val("gamma-0", "degenerate", "f", gamma=0.0)
paco_val("queue-label-beyond-C", "accepted", "f", labels=_with(_PACO_LABELS, 5, 9))

# module casts: the published prior is a plain fp32 tensor that .half() / .to(dtype) leave
# alone; a long-tail prior (counts 1e8 ... 1) must keep its tail classes (fp16 made them 0)
_LONG_TAIL = [10 ** 8, 10 ** 4, 1]
_TAIL_LABELS = torch.tensor([2, 1, 2, 1, 0, 2])  # anchors of the tail class: its center counts


def _cast_module_loss(backend, which, cast):
    cls = L.PaCoLoss if which == "PaCoLoss" else L.GPaCoLoss
    module = cls(alpha=0.5, K=2, num_classes=_C, backend=backend)
    module.cal_weight_for_classes(_LONG_TAIL)
    module = cast(module)
    sup = _sup(2 if which == "PaCoLoss" else 4)
    return module(_paco_feats(), _TAIL_LABELS, sup)


def _cast_module_reference(which):
    prior = torch.tensor(_LONG_TAIL, dtype=torch.float64)
    prior = prior / prior.sum()
    ref = R.paco_loss_reference if which == "PaCoLoss" else R.gpaco_loss_reference
    return ref(_paco_feats().double(), _TAIL_LABELS, _sup(2 if which == "PaCoLoss" else 4).double(),
               prior, alpha=0.5, K=2, num_classes=_C).float()


for _which in ("PaCoLoss", "GPaCoLoss"):
    for _name, _cast in (("half", lambda m: m.half()), ("bf16", lambda m: m.to(torch.bfloat16)),
                         ("double-then-float", lambda m: m.double().float())):
        _val(f"{_which.lower()}-module-{_name}-long-tail-prior", _which, "module_cast",
             lambda b, w=_which, c=_cast: _cast_module_loss(b, w, c),
             lambda w=_which: _cast_module_reference(w), "f")
