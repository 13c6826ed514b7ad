"""The two-sided lse's Triton launchers (backends/triton/two_sided.py), called directly.

Under TRITON_INTERPRET=1 (tests/conftest.py) on CPU tensors: row_lse, col_lse, dq, dk and
dscale against the float64 oracle (``reference.two_sided_lse_reference`` and its autograd
gradients) with the tolerance set by the naive computation in the tested dtype
(``testing.tolerance``). The interpreter is slow, so the cases are a covering sample of
shapes, dtypes and options (the shared tables of ``testing.core_cases``), not their
product; the edges (empty lines, N = 0 / M = 0, NaN, +inf) and determinism have their
own tests.
"""

import math

import pytest
import torch

from contrastive_kernels.backends.reference import two_sided_lse_reference
from contrastive_kernels.core.contract import accumulate_dtype
from contrastive_kernels.testing.core_cases import LAUNCHER_CASES, OPTIONS, launcher_args
from contrastive_kernels.testing.core_check import strided_view
from contrastive_kernels.testing.tolerance import assert_close

pytest.importorskip("triton")
from contrastive_kernels.backends import triton as ck_triton  # noqa: E402
from contrastive_kernels.backends.triton import _ops, configs, key_split, launch  # noqa: E402
from contrastive_kernels.backends.triton.two_sided import (  # noqa: E402
    two_sided_lse_backward, two_sided_lse_forward)

pytestmark = pytest.mark.skipif(ck_triton.unavailable_reason() is not None,
                                reason=f"triton backend unavailable: {ck_triton.unavailable_reason()}")

OPT = {o.id: o for o in OPTIONS}
EPS = 1e-12
OUTPUTS = ("row_lse", "col_lse", "dq", "dk", "dscale")
F32, F64, F16, BF16 = torch.float32, torch.float64, torch.float16, torch.bfloat16

CASES = LAUNCHER_CASES


def _case(n, m, d, dtype, opt, seed=0):
    """(args, g, h): the launchers' inputs (``core_cases.launcher_args`` and
    exclude_positives) and the cotangents of row_lse and col_lse."""
    args, gen = launcher_args(n, m, d, dtype, opt, EPS, accumulate_dtype(dtype), seed)
    args["exclude_positives"] = opt.labels
    g = torch.randn(n, generator=gen, dtype=torch.float64)
    h = torch.randn(m, generator=gen, dtype=torch.float64)
    return args, g, h


def _reference(args, g, h, compute_dtype=None):
    """(row_lse, col_lse, dq, dk, dscale) of the oracle (float64 inputs) or of the naive
    formulation in ``compute_dtype`` (the inputs in that dtype)."""
    dt = compute_dtype or torch.float64

    def cast(v):
        return v.to(dt) if isinstance(v, torch.Tensor) and v.is_floating_point() else v

    a = {key: cast(v) for key, v in args.items()}
    q, k, scale = (a[n].detach().requires_grad_() for n in ("q", "k", "scale"))
    row, col = two_sided_lse_reference(q, k, scale, a["bias"], a["q_labels"], a["k_labels"],
                                       a["self_offset"], a["normalize"], EPS,
                                       a["exclude_positives"], compute_dtype=compute_dtype)
    # (an empty line's -inf makes the sum infinite; its gradient is still 0)
    loss = (row * g.to(row.dtype)).sum() + (col * h.to(col.dtype)).sum()
    dq, dk, ds = torch.autograd.grad(loss, (q, k, scale))
    return row.detach(), col.detach(), dq, dk, ds


def _ours(args, g, h, need=(True, True, True)):
    row, col = two_sided_lse_forward(*args.values())
    acc = row.dtype
    dq, dk, ds = two_sided_lse_backward(g.to(acc), h.to(acc), *args.values(), row, col, *need)
    return row, col, dq, dk, ds


def _check(args, g, h, ours=None):
    dtype = args["q"].dtype
    ours = ours if ours is not None else _ours(args, g, h)
    oracle = _reference({key: (v.double() if key in ("q", "k") else v)
                         for key, v in args.items()}, g, h)
    naive = _reference(args, g, h, compute_dtype=dtype)
    acc = accumulate_dtype(dtype)
    assert ours[0].dtype == acc and ours[1].dtype == acc
    assert ours[2].dtype == dtype and ours[3].dtype == dtype and ours[4].dtype == acc
    for name, a, b, c in zip(OUTPUTS, ours, oracle, naive):
        assert_close(name, a, b, c, dtype)
    return ours


@pytest.mark.parametrize("shape, dtype, opt", CASES,
                         ids=[f"{n}x{m}x{d}-{str(t)[6:]}-{o}" for (n, m, d), t, o in CASES])
def test_against_oracle(shape, dtype, opt):
    args, g, h = _case(*shape, dtype, OPT[opt])
    _check(args, g, h)


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_strided_inputs(dtype):
    """q and k as views with an odd row stride into NaN padding (no vector loads)."""
    args, g, h = _case(97, 70, 24, dtype, OPT["all"])
    ours = _ours(dict(args, q=strided_view(args["q"]), k=strided_view(args["k"])), g, h)
    _check(args, g, h, ours)


@pytest.mark.parametrize("splits", [2, 3])
def test_key_split(splits, monkeypatch):
    """Forced key splits: the row statistics merged over key ranges, both backward grids
    split; the column statistics do not depend on the split (bitwise)."""
    args, g, h = _case(97, 200, 40, F32, OPT["all"])
    unsplit = _ours(args, g, h)
    monkeypatch.setenv(key_split.SPLITS_ENV, str(splits))
    split = _check(args, g, h)
    assert torch.equal(split[1], unsplit[1])


def test_gpu_tables():
    """The shipped sm_90 tiles (128-row blocks) compute the same numbers."""
    args, g, h = _case(150, 70, 48, BF16, OPT["all"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(launch, "arch_for", lambda device: 90)
        _check(args, g, h)


def test_rows_are_the_lse_rows():
    """The row statistics are the lse op's, bit for bit (the same sweep, REDUCTION = 1
    only adds the column partials)."""
    args, _, _ = _case(97, 130, 64, F32, OPT["all"])
    row, _ = two_sided_lse_forward(*args.values())
    lse, _ = _ops.lse_triton(*args.values(), False)
    assert torch.equal(row, lse)


@pytest.mark.parametrize("need", [(True, False, False), (False, True, True),
                                  (False, False, True)], ids=["dq", "dk_dscale", "dscale"])
def test_gradient_subsets(need):
    """Only the grids that are needed run; dscale rides on whichever runs."""
    args, g, h = _case(37, 45, 16, F64, OPT["all"])
    full = _ours(args, g, h)
    part = _ours(args, g, h, need)
    for want, i in zip(need[:2], (2, 3)):
        if want:
            torch.testing.assert_close(part[i], full[i])
        else:
            assert part[i].shape == (0,)
    if need[2]:
        torch.testing.assert_close(part[4], full[4])
    else:
        assert part[4] == 0


def test_empty_rows_and_columns():
    """A row or column with every pair excluded: -inf, finite zero gradients, no NaN."""
    n, m, d = 6, 8, 16
    args, g, h = _case(n, m, d, F32, OPT["plain"])
    bias = torch.zeros(m)
    bias[4:] = -math.inf  # keys 4..7 dropped: empty columns
    args.update(bias=bias, q_labels=torch.tensor([0, 0, 1, 1, 2, 2]),
                k_labels=torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), exclude_positives=True)
    row, col, dq, dk, ds = _check(args, g, h)
    assert torch.isneginf(row[:2]).all() and torch.isfinite(row[2:]).all()
    assert torch.isneginf(col[4:]).all() and torch.isfinite(col[:4]).all()
    assert (dq[:2] == 0).all() and (dk[4:] == 0).all() and torch.isfinite(ds)


def test_no_rows_and_no_keys():
    args, g, h = _case(5, 3, 8, F32, OPT["all"])
    q, k = args["q"], args["k"]
    for n_rows, n_keys in ((0, 3), (5, 0)):
        a = dict(args, q=q[:n_rows], k=k[:n_keys], bias=args["bias"][:n_keys],
                 q_labels=args["q_labels"][:n_rows], k_labels=args["k_labels"][:n_keys])
        row, col = two_sided_lse_forward(*a.values())
        assert row.shape == (n_rows,) and col.shape == (n_keys,)
        assert torch.isneginf(row).all() and torch.isneginf(col).all()
        dq, dk, ds = two_sided_lse_backward(g[:n_rows].float(), h[:n_keys].float(),
                                            *a.values(), row, col, True, True, True)
        assert dq.shape == a["q"].shape and dk.shape == a["k"].shape
        assert (dq == 0).all() and (dk == 0).all() and ds == 0


def test_nan_and_inf():
    """A NaN logit: NaN in its row and every column it meets, and NaN gradients where the
    oracle's are NaN. A +inf bias: +inf in every row and in its column."""
    args, g, h = _case(9, 11, 8, F32, OPT["plain"])
    q = args["q"].clone()
    q[2, 0] = float("nan")
    nan_args = dict(args, q=q)
    row, col, dq, dk, _ = _ours(nan_args, g, h)
    want = _reference({key: (v.double() if key in ("q", "k") else v)
                       for key, v in nan_args.items()}, g, h)
    assert torch.equal(torch.isnan(row), torch.isnan(want[0])) and torch.isnan(row[2])
    assert torch.isnan(col).all() and torch.isfinite(row[torch.arange(9) != 2]).all()
    assert torch.equal(torch.isnan(dq), torch.isnan(want[2]))
    assert torch.equal(torch.isnan(dk), torch.isnan(want[3]))
    bias = torch.zeros(11)
    bias[3] = float("inf")
    row, col = two_sided_lse_forward(*dict(args, bias=bias).values())
    assert torch.isposinf(row).all() and torch.isposinf(col[3])
    assert torch.isfinite(col[torch.arange(11) != 3]).all()


def test_deterministic():
    """Bitwise reproducible: the column partials are merged in the row blocks' order."""
    args, g, h = _case(130, 97, 64, F32, OPT["all"])
    first = _ours(args, g, h)
    with configs.forced(configs.Config(32, 32, 64, 4, 1, True)):
        other_tiles = _ours(args, g, h)
    again = _ours(args, g, h)
    for a, b, c in zip(first, again, other_tiles):
        assert torch.equal(a, b)
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-5)
