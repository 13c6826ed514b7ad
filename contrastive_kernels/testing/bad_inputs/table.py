"""The bad-input table: the case type, its README topics, and the helpers that add cases."""

from __future__ import annotations

import argparse
import dataclasses
import math
import textwrap
from typing import Callable, Optional

import torch

from ...losses import SPECS

NAN, INF = math.nan, math.inf

# --------------------------------------------------------------------------- the table


@dataclasses.dataclass(frozen=True)
class BadInput:
    """One input and its expected outcome.

    ``run(backend)`` makes the call. Errors: ``raises`` (the exception type) and ``match``
    (a phrase of the message that names ``arg`` and what was expected). Values:
    ``reference()`` gives the oracle's result (compared NaN-for-NaN and inf-for-inf) and
    ``pattern`` the special values the result must hold, one character per element
    ('n' NaN, '+' +inf, '-' -inf, '0' zero, 'f' finite).
    """

    id: str
    api: str                  # what is called, e.g. "ops.lse", "SupConLoss", "supcon_loss"
    topic: str                # key of TOPICS: the README row it belongs to
    run: Callable[[str], object]
    raises: Optional[type] = None
    arg: Optional[str] = None
    match: Optional[str] = None
    reference: Optional[Callable[[], torch.Tensor]] = None
    pattern: Optional[str] = None
    xfail_reason: Optional[str] = None
    xfail_backends: Optional[tuple] = None  # the backends xfail_reason applies to; None: all

    def xfails_on(self, backend: str) -> bool:
        return self.xfail_reason is not None and (self.xfail_backends is None
                                                  or backend in self.xfail_backends)

    @property
    def is_error(self) -> bool:
        return self.raises is not None

    @property
    def family(self) -> str:
        return FAMILIES[self.api]


# README rows: topic -> (input, expected outcome). The exception types of a row are added
# from its cases, and the families it applies to.
TOPICS = {
    "type": ("an argument of the wrong Python type: a list, an int, a string or None for a "
             "tensor, a float or a tensor for an int",
             "names the argument and the type it must have"),
    "dtype": ("integer, bool or complex tensors where floating point is expected",
              "`<arg> must be floating point`"),
    "rank": ("wrong rank: 1-D or 3-D where [rows, d] is expected, 2-D SupCon features",
             "`<arg> must be 2-D [rows, d]` (SupCon: `features` needs [bsz, n_views, ...])"),
    "shape": ("mismatched sizes: feature size d, batch size, rows of a paired input",
              "names both arguments (or the one) and the size expected"),
    "dtype_mismatch": ("two inputs of different dtypes", "`<a> and <b> must share a dtype`"),
    "device": ("inputs on different devices (checked with the meta device)",
               "`... must be on one device` / `<arg> must be on cpu`"),
    "bias": ("bias of the wrong shape or requiring grad",
             "`bias must have shape [M]` / `pass bias.detach()`"),
    "core_labels": ("q_labels / k_labels of the wrong shape or not integer; "
                    "exclude_positives without both",
                    "`<arg> must have shape [N]` / `must be an integer tensor` / "
                    "`needs both q_labels and k_labels`"),
    "class_ids": ("labels that are not integer class ids: float (even integer-valued), NaN, "
                  "bool, complex, a Python int or list",
                  "`labels must be a(n) ... integer class ids`: class ids are never truncated"),
    "label_count": ("one label per sample violated, labels and mask both given",
                    "`Num of labels does not match num of features` / `Cannot define both`"),
    "label_range": ("an anchor's label outside [0, num_classes)",
                    "`labels must be class ids in [0, num_classes = C)` (eager on CPU)"),
    "self_offset": ("self_offset a float, bool or tensor / outside int64",
                    "`self_offset must be an int or None` / `must fit in int64`"),
    "eps": ("eps 0, negative or NaN", "`eps must be > 0`"),
    "scale": ("scale complex (number or tensor), not a scalar, a string or None",
              "`scale must be real` / `scale must be a float or a 0-dim tensor`"),
    "temperature": ("temperature (or base_temperature) 0, negative or NaN, in the module or "
                    "the functional form",
                    "`temperature must be > 0` (NT-Xent: `Illegal temperature`, as lightly)"),
    "option": ("an unknown string option: contrast_mode, reduction, estimator, negative_mode",
               "names the option and its allowed values"),
    "range": ("a numeric option out of range: tau_plus, smooth, gamma, supt, sigma, K, "
              "memory bank size, HCL batch < 2, SupCon bsz or n_views 0",
              "`<arg> must be in ...` / `must be > 0` / `must be >= 0`"),
    "missing": ("a required input missing: labels, sup_logits, class prior, "
                "exclude_positives labels", "`<arg> is required` / `call cal_weight_for_classes`"),
    "mask": ("SupCon mask of the wrong shape", "`mask must be [bsz, bsz]`"),
    "bank": ("NT-Xent memory bank whose d changes between calls",
             "`the memory bank holds rows of d = ...`"),
    "weight_fn": ("DCL weight_fn returning the wrong shape or a non-tensor",
                  "`weight_fn must return per-pair weights of shape [B]`"),
    "lam": ("BINGO lam of the wrong length, a scalar or complex",
            "`lam must have one weight per positive` / `lam must hold real weights`"),
    "backend": ("an unknown backend name", "lists what can run"),
    "nan": ("NaN in an input: q, k, bias, scale, features, queue, negatives, logits, "
            "NT-Xent's temperature",
            "NaN where the NaN reaches (its row of lse, or the loss), as the oracle; "
            "never a silent 0 or finite value"),
    "posinf": ("+inf bias on a key", "lse = +inf, except for a row that excludes that key"),
    "neginf": ("-inf bias on a key", "the key is ignored; -inf on every key gives lse = -inf"),
    "empty_keys": ("an empty key set: M = 0, every key excluded by labels or self_offset",
                   "lse = -inf, o = 0, zero gradient for that row"),
    "empty_queue": ("an empty queue / negatives (K = 0)",
                    "the loss of the positive alone, as the oracle (0 for MoCo and InfoNCE)"),
    "no_positives": ("SupCon anchors without positives",
                     "contribute 0 and count in the mean, as SupContrast; a lone anchor with "
                     "no keys at all gives 0 too (SupContrast gives NaN)"),
    "degenerate": ("degenerate sizes: N = 0, d = 0, B = 1, an empty batch",
                   "as the oracle: an empty lse, log M, a loss of 0, -inf or NaN"),
    "extreme": ("extreme values: scale 1e4, zero rows under normalize, fp16 products above "
                "65504, self_offset far outside [-N, M)",
                "finite where the oracle is, no overflow; nothing excluded"),
    "func": ("torch.func transforms over ops.lse: grad, jacrev, vmap (and vmap of grad), jvp",
             "reverse mode and vmap as the plain-PyTorch oracle; forward mode (jvp, "
             "forward_ad) one clear RuntimeError naming the supported alternative"),
    "module_cast": ("a stateful module cast with .half(), .to(torch.bfloat16) or .double() "
                    "(PaCo / GPaCo class prior)",
                    "what the published module keeps: the prior in full precision, so the loss "
                    "is unchanged; memory banks follow the cast, as lightly's buffer does"),
    "signed_mask": ("SupCon mask rows with negative weights, summing to 0 or below",
                    "SupContrast's value: sum_j mask_ij log_prob_ij over a divisor of 1"),
    "huge_bias": ("a key bias far above the logit range (1e2 ... 3e38) on one key or on all",
                  "dq and dk as the float64 oracle's: each pass rounds the logit alike"),
    "subnormal": ("a row of fp32 subnormals under normalize (||x|| < eps)",
                  "the gradient of the 1/eps branch, as the oracle (not flushed to 0)"),
    "accepted": ("values the originals accept: NT-Xent negative temperature, CLIP "
                 "logit_scale 0, non-anchor PaCo labels >= C, negative SupCon label ids",
                 "the original's value"),
}

# api name -> family: ops.lse, and every public name of every registered loss
FAMILIES = {"ops.lse": "ops.lse",
            **{obj.__name__: spec.family for spec in SPECS for obj in spec.public}}

CASES: list = []


def _err(id, api, topic, run, raises, arg, match, xfail_reason=None):
    CASES.append(BadInput(id, api, topic, run, raises=raises, arg=arg, match=match,
                          xfail_reason=xfail_reason))


def _val(id, api, topic, run, reference, pattern=None, xfail_reason=None):
    CASES.append(BadInput(id, api, topic, run, reference=reference, pattern=pattern,
                          xfail_reason=xfail_reason))


# --------------------------------------------------------------------------- inputs
# tiny float32 tensors, the same on every call (seeded generators)


def _rand(*shape, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def _unit(*shape, seed=0, dtype=torch.float32):
    x = _rand(*shape, seed=seed, dtype=torch.float64)
    return (x / x.norm(dim=-1, keepdim=True)).to(dtype)


def _with(x, index, value):
    x = x.clone()
    x[index] = value
    return x


META = torch.device("meta")



def pair_err(api, call, id, topic, raises, arg, match, xfail_reason=None, **kw):
    """A loss of two [B, d] inputs (out0, out1 / q, k / ...) called as call(backend, **kw)."""
    _err(f"{FAMILIES[api].lower()}-{id}", api, topic, lambda b: call(b, **kw), raises, arg,
         match, xfail_reason)

