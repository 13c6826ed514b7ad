"""pairwise_sigmoid's Triton launchers (backends/triton/sigmoid.py), called directly.

Under TRITON_INTERPRET=1 (tests/conftest.py) on CPU tensors: row_loss, dq, dk, dscale and
dbias against the float64 oracle (``reference.pairwise_sigmoid_reference`` and its
autograd gradients) with the tolerance set by the naive computation in the tested dtype
(``testing.tolerance``). The interpreter is slow, so the cases are a covering sample of
the shared option table (``testing.core_cases``: labels and the self pair mark positives
here, no pair is excluded), shapes and dtypes; the edges, the config paths and
determinism have their own items.
"""

import math

import pytest
import torch

from contrastive_kernels.backends.reference import pairwise_sigmoid_reference
from contrastive_kernels.core.contract import accumulate_dtype
from contrastive_kernels.testing.core_cases import LAUNCHER_CASES, OPTIONS, launcher_args
from contrastive_kernels.testing.core_check import strided_view
from contrastive_kernels.testing.tolerance import assert_close

pytest.importorskip("triton")
from contrastive_kernels.backends import triton as ck_triton  # noqa: E402
from contrastive_kernels.backends.triton import configs, key_split, launch  # noqa: E402
from contrastive_kernels.backends.triton.sigmoid import (  # noqa: E402
    pairwise_sigmoid_backward, pairwise_sigmoid_forward)

pytestmark = pytest.mark.skipif(ck_triton.unavailable_reason() is not None,
                                reason=f"triton backend unavailable: {ck_triton.unavailable_reason()}")

OPT = {o.id: o for o in OPTIONS}
EPS = 1e-12
OUTPUTS = ("row_loss", "dq", "dk", "dscale", "dbias")
F32, F64, F16, BF16 = torch.float32, torch.float64, torch.float16, torch.bfloat16
ALL = (True, True, True, True)

# the shared sample, with a 97 x 70 tile-crossing fp16 "all" for the 130 x 1 one (a single
# key is the (1, 1, 1) case's again)
CASES = LAUNCHER_CASES[:-2] + [((97, 70, 130), F16, "all")]


def _case(n, m, d, dtype, opt, seed=0):
    """(args, g): the launchers' inputs (``core_cases.launcher_args``: labels, when the
    option has them, mark positives here) and the cotangent of row_loss."""
    args, gen = launcher_args(n, m, d, dtype, opt, EPS, accumulate_dtype(dtype), seed)
    return args, torch.randn(n, generator=gen, dtype=torch.float64)


def _reference(args, g, compute_dtype=None):
    """(row_loss, dq, dk, dscale, dbias) of the oracle (float64 inputs) or of the naive
    formulation in ``compute_dtype``; dbias [0] without a bias."""
    dt = compute_dtype or torch.float64

    def cast(v):
        return v.to(dt) if isinstance(v, torch.Tensor) and v.is_floating_point() else v

    a = {key: cast(v) for key, v in args.items()}
    leaves = [a[n].detach().requires_grad_() for n in ("q", "k", "scale")]
    bias = a["bias"].detach().requires_grad_() if a["bias"] is not None else None
    row = pairwise_sigmoid_reference(*leaves, bias, a["q_labels"], a["k_labels"],
                                     a["self_offset"], a["normalize"], EPS,
                                     compute_dtype=compute_dtype)
    grads = torch.autograd.grad((row * g.to(row.dtype)).sum(),
                                leaves + ([bias] if bias is not None else []))
    db = grads[3] if bias is not None else row.new_empty((0,))
    return (row.detach(),) + tuple(grads[:3]) + (db,)


def _ours(args, g, need=ALL):
    row = pairwise_sigmoid_forward(*args.values())
    return (row,) + tuple(pairwise_sigmoid_backward(g.to(row.dtype), *args.values(), row, *need))


def _check(args, g, ours=None):
    dtype = args["q"].dtype
    ours = ours if ours is not None else _ours(args, g)
    oracle = _reference({key: (v.double() if key in ("q", "k") else v)
                         for key, v in args.items()}, g)
    naive = _reference(args, g, compute_dtype=dtype)
    acc = accumulate_dtype(dtype)
    assert ours[0].dtype == acc and ours[4].dtype == acc and ours[3].dtype == acc
    assert ours[1].dtype == dtype and ours[2].dtype == dtype
    for name, a, b, c in zip(OUTPUTS, ours, oracle, naive):
        assert_close(name, a, b.to(a.dtype) if name == "dbias" else b, c, dtype)
    return ours


@pytest.mark.parametrize("shape, dtype, opt", CASES,
                         ids=[f"{n}x{m}x{d}-{str(t)[6:]}-{o}" for (n, m, d), t, o in CASES])
def test_against_oracle(shape, dtype, opt):
    args, g = _case(*shape, dtype, OPT[opt])
    _check(args, g)


def test_strided_inputs():
    """q and k as views with an odd row stride into NaN padding (no vector loads)."""
    args, g = _case(97, 70, 24, BF16, OPT["all"])
    _check(args, g, _ours(dict(args, q=strided_view(args["q"]), k=strided_view(args["k"])), g))


def test_positives_both_ways():
    """A self pair whose labels are also equal is one positive (its sign flipped once), and
    self_offset pairs past the keys are none: the diagonal tile with labels, offset +3."""
    args, g = _case(70, 66, 8, F64, OPT["all"])
    labels = torch.arange(70) % 4
    _check(dict(args, q_labels=labels, k_labels=labels[:66], self_offset=3), g)


@pytest.mark.parametrize("forced", ["single", "chunked"])
def test_forced_config_paths(forced):
    """Every tile loop of the kernels: d in one tile, and d in 16-column chunks (the
    accumulators in global memory), on small tiles that cross many tails."""
    single = forced == "single"
    args, g = _case(45, 37, 40, F32, OPT["all"])
    with configs.forced(configs.Config(16, 16, 64 if single else 16, 4, 1, single)):
        _check(args, g)


@pytest.mark.parametrize("splits", [3])
def test_key_split(splits, monkeypatch):
    """Forced key splits: row sums added over key ranges, both backward grids split (dbias
    summed over the ranges of queries)."""
    args, g = _case(97, 200, 40, F32, OPT["all"])
    monkeypatch.setenv(key_split.SPLITS_ENV, str(splits))
    _check(args, g)


def test_gpu_tables():
    """The shipped sm_90 tiles (128-row blocks, SIGMOID_TILES) compute the same numbers."""
    args, g = _case(150, 70, 48, BF16, OPT["all"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(launch, "arch_for", lambda device: 90)
        _check(args, g)


@pytest.mark.parametrize("need", [(True, False, False, False), (False, False, False, True),
                                  (False, True, True, False)],
                         ids=["dq", "dbias", "dk_dscale"])
def test_gradient_subsets(need):
    """Only the grids that are needed run (dbias alone runs the dk grid without dk);
    dscale rides on whichever runs; what is not needed is an empty [0] / 0."""
    args, g = _case(37, 45, 16, F64, OPT["all"])
    full = _ours(args, g)
    part = _ours(args, g, need)
    for want, i in zip(need, (1, 2, 3, 4)):
        if want:
            torch.testing.assert_close(part[i], full[i])
        elif i == 3:
            assert part[i] == 0
        else:
            assert part[i].shape == (0,)
    no_bias = _ours(dict(args, bias=None), g)
    assert no_bias[4].shape == (0,) and no_bias[4].dtype == F64


def test_empty_shapes():
    """N = 0, M = 0 (row loss 0, zero gradients, dbias [M] of zeros) and d = 0 (the logits
    are the bias)."""
    args, g = _case(5, 3, 8, F32, OPT["all"])
    q, k = args["q"], args["k"]
    for n_rows, n_keys in ((0, 3), (5, 0)):
        a = dict(args, q=q[:n_rows], k=k[:n_keys], bias=args["bias"][:n_keys],
                 q_labels=args["q_labels"][:n_rows], k_labels=args["k_labels"][:n_keys])
        row, dq, dk, ds, db = _ours(a, g[:n_rows])
        assert row.shape == (n_rows,) and (row == 0).all()
        assert dq.shape == a["q"].shape and dk.shape == a["k"].shape and db.shape == (n_keys,)
        assert (dq == 0).all() and (dk == 0).all() and ds == 0 and (db == 0).all()
    _check(dict(args, q=q[:, :0], k=k[:, :0]), g)


def test_nan_and_inf():
    """A NaN logit: NaN in its row's loss and in the gradients the oracle has NaN in. An
    infinite bias: +inf loss where a key's x = +inf, 0 where x = -inf; gradients finite
    (sigmoid 1 and 0) as the oracle's."""
    args, g = _case(9, 11, 8, F32, OPT["plain"])
    q = args["q"].clone()
    q[2, 0] = float("nan")
    nan_args = dict(args, q=q, bias=torch.zeros(11))
    ours = _ours(nan_args, g)
    want = _reference({key: (v.double() if key in ("q", "k") else v)
                       for key, v in nan_args.items()}, g)
    for a, b in zip(ours, want):
        assert torch.equal(torch.isnan(a), torch.isnan(b))
    assert torch.isnan(ours[0][2]) and torch.isfinite(ours[0][torch.arange(9) != 2]).all()
    bias = torch.zeros(11)
    bias[3], bias[5] = float("inf"), -float("inf")
    inf_args = dict(args, bias=bias, self_offset=3)  # row 0's key 3 is its positive
    ours = _ours(inf_args, g)
    want = _reference({key: (v.double() if key in ("q", "k") else v)
                       for key, v in inf_args.items()}, g)
    assert torch.isposinf(ours[0][1:]).all() and torch.isfinite(ours[0][0])
    for a, b in zip(ours, want):
        assert torch.equal(torch.isnan(a), torch.isnan(b))
        assert torch.equal(torch.isinf(a), torch.isinf(b))


def test_gradcheck():
    """Through the registered core op's autograd (q, k, scale, bias) in float64."""
    from contrastive_kernels import ops

    args, _ = _case(7, 9, 5, F64, OPT["all"])
    bias = torch.randn(9, dtype=F64)  # finite: gradcheck differentiates every entry
    leaves = [t.clone().requires_grad_() for t in (args["q"], args["k"], args["scale"], bias)]

    def fn(q, k, scale, b):
        return ops.pairwise_sigmoid(q, k, scale, b, q_labels=args["q_labels"],
                                    k_labels=args["k_labels"], self_offset=0, normalize=True,
                                    eps=EPS, backend="triton")

    assert torch.autograd.gradcheck(fn, leaves)


def test_deterministic():
    """Bitwise reproducible run to run (dbias reduced per owned key in a fixed order);
    other tiles agree to rounding."""
    args, g = _case(130, 97, 64, F32, OPT["all"])
    first = _ours(args, g)
    with configs.forced(configs.Config(32, 32, 64, 4, 1, True)):
        other_tiles = _ours(args, g)
    again = _ours(args, g)
    for a, b, c in zip(first, again, other_tiles):
        assert torch.equal(a, b)
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-5)
    assert not math.isnan(float(first[3]))
