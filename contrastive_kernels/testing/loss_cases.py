"""Shared tables for the loss-family tests: one entry per (loss, configuration).

Each case builds its inputs in float64 (then rounded to the dtype under test), and knows
how to run the fused functional form on a backend and the naive reference
(contrastive_kernels.reference) on the same inputs. Differentiable inputs are listed in
``grads``; everything else (labels, priors, weights) is a constant of the case.
"""

import dataclasses
import math
from typing import Callable

import torch

from .. import functional as F
from . import fused_backends
from . import reference_losses as R
from .tolerance import assert_close

# Backends the loss tests run on: every fused backend of the registry usable on CPU
# tensors here. CI builds the C++ extension and runs Triton under TRITON_INTERPRET=1 (set in
# conftest), so all run there; Triton cases are kept small because the interpreter is slow.
LOSS_BACKENDS = fused_backends()

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# the interpreter is slow and multiplies bf16 tiles in fp32 anyway: fewer dtypes there
TRITON_DTYPES = [torch.float32, torch.float16]


def _randn(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _unit(gen, *shape):
    x = _randn(gen, *shape)
    return x / x.norm(dim=-1, keepdim=True)


@dataclasses.dataclass(frozen=True)
class LossCase:
    id: str
    make: Callable      # (gen, small) -> dict of float64 tensors / constants
    fused: Callable     # (inputs, backend) -> 0-dim loss
    naive: Callable     # (inputs) -> 0-dim loss
    grads: tuple        # names of the differentiable inputs
    # inputs for torch.autograd.gradcheck: those without a stop-gradient path (the CLSA
    # teacher and DCLW's weights are detached on purpose, which finite differences see)
    gradcheck: tuple = None

    @property
    def gradcheck_inputs(self):
        return self.grads if self.gradcheck is None else self.gradcheck

    def inputs(self, dtype, small=False, seed=0):
        """(inputs in dtype, the same values in float64) with grads enabled."""
        gen = torch.Generator().manual_seed(seed)
        raw = self.make(gen, small)
        low, high = {}, {}
        for name, value in raw.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                rounded = value.to(dtype)
                grad = name in self.grads
                low[name] = rounded.detach().clone().requires_grad_(grad)
                high[name] = rounded.double().detach().clone().requires_grad_(grad)
            else:
                low[name] = high[name] = value
        return low, high


def run(case, fn, inputs, weight=0.7):
    """The loss and the grads of weight * loss (grad_output != 1) w.r.t. case.grads."""
    loss = fn(inputs)
    tensors = [inputs[name] for name in case.grads]
    grads = torch.autograd.grad(loss, tensors, grad_outputs=torch.full_like(loss, weight),
                                allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, tensors)]
    return [loss.detach()] + [g.detach() for g in grads]


def assert_loss_close(name, ours, oracle, naive, dtype):
    """:func:`.tolerance.assert_close` with two ulps of the output dtype for its rounding:
    a gradient in fp16 / bf16 is the sum of a few pieces each stored in that dtype (the
    core op returns dq and dk in the inputs' dtype, autograd accumulates in it: q and k of
    one call, the positive term), each rounded by up to half an ulp."""
    assert_close(name, ours, oracle, naive, dtype, output_ulps=2.0)


# --------------------------------------------------------------------------- PaCo / GPaCo

N_CLASSES = 7
CLS_NUM_LIST = [40, 25, 12, 9, 5, 3, 1]


def _paco_make(anchor_rows, gpaco=False):
    def make(gen, small):
        b, queue, d = (3, 5, 4) if small else (24, 40, 19)
        n = (b + queue) if gpaco else (2 * b + queue)
        a = b
        labels = torch.randint(0, N_CLASSES, (n,), generator=gen)
        return {"features": _unit(gen, n, d), "labels": labels,
                "sup_logits": 2.0 * _randn(gen, a, N_CLASSES), "K": queue}
    return make


def _paco_case(id, gamma=1.0, alpha=0.05, beta=1.0, supt=1.0, temperature=0.07,
               base_temperature=None):
    prior = F.class_prior(CLS_NUM_LIST, N_CLASSES)
    kw = dict(alpha=alpha, beta=beta, gamma=gamma, supt=supt, temperature=temperature,
              base_temperature=base_temperature, num_classes=N_CLASSES)
    return LossCase(
        id, _paco_make(None),
        lambda x, be: F.paco_loss(x["features"], x["labels"], x["sup_logits"], prior, K=x["K"],
                                  backend=be, **kw),
        lambda x: R.paco_loss_reference(x["features"], x["labels"], x["sup_logits"], prior,
                                        K=x["K"], **kw),
        ("features", "sup_logits"))


def _gpaco_case(id, with_prior, smooth, gamma=1.0, temperature=0.2, alpha=0.05):
    prior = F.class_prior(CLS_NUM_LIST, N_CLASSES) if with_prior else None
    kw = dict(alpha=alpha, beta=1.0, gamma=gamma, supt=1.5, temperature=temperature,
              base_temperature=0.07, num_classes=N_CLASSES, smooth=smooth)
    return LossCase(
        id, _paco_make(None, gpaco=True),
        lambda x, be: F.gpaco_loss(x["features"], x["labels"], x["sup_logits"], prior, K=x["K"],
                                   backend=be, **kw),
        lambda x: R.gpaco_loss_reference(x["features"], x["labels"], x["sup_logits"], prior,
                                         K=x["K"], **kw),
        ("features", "sup_logits"))


# --------------------------------------------------------------------------- pairs of views


def _pair_make(unit, bank=0, aligned=False):
    def make(gen, small):
        b, d = (3, 3) if small else (33, 17)
        draw = _unit if unit else (lambda g, *s: 1.7 * _randn(g, *s))
        x = {"out0": draw(gen, b, d), "out1": draw(gen, b, d)}
        if aligned:  # views of one sample close together, the rest spread: HCL's clamp fires
            # for the rows whose positive dominates
            noise = torch.linspace(0.05, 2.0, b, dtype=torch.float64)[:, None]
            out1 = x["out0"] + noise * x["out1"]
            x["out1"] = out1 / out1.norm(dim=-1, keepdim=True)
        if bank:
            x["bank"] = _unit(gen, 5 if small else bank, d)
        return x
    return make


def _ntxent_case(id, temperature, bank=0):
    if bank:
        return LossCase(
            id, _pair_make(False, bank),
            lambda x, be: F.ntxent_loss(x["out0"], x["out1"], temperature, x["bank"], backend=be),
            lambda x: R.ntxent_loss_reference(x["out0"], x["out1"], temperature, x["bank"]),
            ("out0", "out1"))
    return LossCase(
        id, _pair_make(False),
        lambda x, be: F.ntxent_loss(x["out0"], x["out1"], temperature, backend=be),
        lambda x: R.ntxent_loss_reference(x["out0"], x["out1"], temperature),
        ("out0", "out1"))


def _clip_make(gen, small):
    b, d = (3, 4) if small else (29, 24)
    return {"image": _unit(gen, b, d), "text": _unit(gen, b, d),
            "logit_scale": torch.tensor(14.3, dtype=torch.float64),
            "logit_bias": torch.tensor(-2.0, dtype=torch.float64)}


def _clip_case(id, with_bias):
    def fused(x, be):
        return F.clip_loss(x["image"], x["text"], x["logit_scale"],
                           x["logit_bias"] if with_bias else None, backend=be)

    def naive(x):
        return R.clip_loss_reference(x["image"], x["text"], x["logit_scale"],
                                     x["logit_bias"] if with_bias else None)
    grads = ("image", "text", "logit_scale") + (("logit_bias",) if with_bias else ())
    return LossCase(id, _clip_make, fused, naive, grads)


def _info_nce_make(gen, small):
    b, m, d = (3, 4, 5) if small else (26, 45, 12)
    return {"query": 2.0 * _randn(gen, b, d), "positive": 2.0 * _randn(gen, b, d),
            "negatives": 2.0 * _randn(gen, m, d)}


def _info_nce_case(id, negatives, symmetric=False, reduction="mean"):
    def fused(x, be):
        return F.info_nce(x["query"], x["positive"], x["negatives"] if negatives else None,
                          temperature=0.1, symmetric=symmetric, reduction=reduction, backend=be)

    def naive(x):
        return R.info_nce_reference(x["query"], x["positive"], x["negatives"] if negatives else None,
                                    temperature=0.1, symmetric=symmetric, reduction=reduction)
    grads = ("query", "positive") + (("negatives",) if negatives else ())
    return LossCase(id, _info_nce_make, fused, naive, grads)


def _queue_make(n_pos=0, strong=0):
    def make(gen, small):
        b, k, d = (3, 6, 4) if small else (21, 70, 16)
        x = {"q": _unit(gen, b, d), "k": _unit(gen, b, d), "queue": _unit(gen, k, d)}
        if n_pos:
            x["positive_keys"] = _unit(gen, b, n_pos, d)
        for i in range(strong):
            x[f"strong{i}"] = _unit(gen, b, d)
        return x
    return make


def _moco_case(id, in_batch):
    return LossCase(
        id, _queue_make(),
        lambda x, be: F.moco_loss(x["q"], x["k"], x["queue"], 0.07, in_batch_negatives=in_batch,
                                  backend=be),
        lambda x: R.moco_loss_reference(x["q"], x["k"], x["queue"], 0.07, in_batch),
        ("q", "k", "queue"))


def _clsa_cases():
    ddm = LossCase(
        "clsa_ddm", _queue_make(strong=1),
        lambda x, be: F.clsa_ddm_loss(x["q"], x["strong0"], x["k"], x["queue"], 0.2, backend=be),
        lambda x: R.clsa_ddm_loss_reference(x["q"], x["strong0"], x["k"], x["queue"], 0.2),
        ("q", "strong0"), gradcheck=("strong0",))
    full = LossCase(
        "clsa_two_strong", _queue_make(strong=2),
        lambda x, be: F.clsa_loss(x["q"], [x["strong0"], x["strong1"]], x["k"], x["queue"], 0.2,
                                  0.25, 1.5, backend=be),
        lambda x: R.clsa_loss_reference(x["q"], [x["strong0"], x["strong1"]], x["k"], x["queue"],
                                        0.2, 0.25, 1.5),
        ("q", "strong0", "strong1"), gradcheck=("strong0", "strong1"))
    return [ddm, full]


def _bingo_case(id, lam):
    return LossCase(
        id, _queue_make(n_pos=len(lam)),
        lambda x, be: F.bingo_loss(x["q"], x["positive_keys"], x["queue"], lam, 0.2, backend=be),
        lambda x: R.bingo_loss_reference(x["q"], x["positive_keys"], x["queue"], lam, 0.2),
        ("q", "positive_keys", "queue"))


def _dcl_case(id, weighted):
    if weighted:
        return LossCase(
            id, _pair_make(False),
            lambda x, be: F.dclw_loss(x["out0"], x["out1"], 0.1, 0.5, backend=be),
            lambda x: R.dclw_loss_reference(x["out0"], x["out1"], 0.1, 0.5),
            ("out0", "out1"), gradcheck=())
    return LossCase(
        id, _pair_make(False),
        lambda x, be: F.dcl_loss(x["out0"], x["out1"], 0.1, backend=be),
        lambda x: R.dcl_loss_reference(x["out0"], x["out1"], 0.1),
        ("out0", "out1"))


def _hcl_case(id, estimator, tau_plus=0.1, beta=1.0, temperature=0.5, aligned=False):
    return LossCase(
        id, _pair_make(True, aligned=aligned),
        lambda x, be: F.hcl_loss(x["out0"], x["out1"], temperature, tau_plus, beta, estimator,
                                 backend=be),
        lambda x: R.hcl_loss_reference(x["out0"], x["out1"], temperature, tau_plus, beta,
                                       estimator),
        ("out0", "out1"))


CASES = [
    _paco_case("paco"),
    _paco_case("paco_gamma_half_base_t", gamma=0.5, alpha=0.3, beta=0.7, supt=0.8,
               base_temperature=0.1),
    _paco_case("paco_gamma0", gamma=0.0, temperature=0.2),
    _gpaco_case("gpaco_no_prior", with_prior=False, smooth=0.0),
    _gpaco_case("gpaco_prior_smooth", with_prior=True, smooth=0.1, gamma=0.8),
    _ntxent_case("ntxent", 0.5),
    _ntxent_case("ntxent_t01", 0.1),
    _ntxent_case("ntxent_bank", 0.2, bank=50),
    _clip_case("clip", with_bias=False),
    _clip_case("clip_bias", with_bias=True),
    _info_nce_case("info_nce", negatives=False),
    _info_nce_case("info_nce_negatives_sum", negatives=True, reduction="sum"),
    _info_nce_case("info_nce_symmetric", negatives=False, symmetric=True),
    _moco_case("moco", in_batch=False),
    _moco_case("moco_in_batch", in_batch=True),
    *_clsa_cases(),
    _bingo_case("bingo", (0.5, 0.5)),
    _bingo_case("bingo_three", (0.6, 0.3, 0.1)),
    _dcl_case("dcl", weighted=False),
    _dcl_case("dclw", weighted=True),
    _hcl_case("hcl_hard", "hard"),
    _hcl_case("hcl_hard_beta3_clamped", "hard", tau_plus=0.5, beta=3.0, temperature=0.3,
              aligned=True),
    _hcl_case("hcl_easy", "easy"),
]
