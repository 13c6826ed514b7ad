"""The two-sided log-sum-exp of the CUDA kernels (csrc/cuda/, policy LseRowsCols), run on CPU
tensors through the emulation layer: torch.ops.contrastive_kernels.two_sided_lse_cuda_emulated
/ _backward called directly against the float64 oracle two_sided_lse_reference (its autograd
gives the reference gradients), with the tolerance of testing.tolerance.compare (twice the
naive error in the same dtype).

The emulation is slow, so the table is a covering sample (every option with every dtype,
shapes rotating through the tails of the 64-wide tiles), not the full product; the edges of
the contract (NaN, +inf, empty rows and columns, empty inputs, strides, forced splits, tf32)
and bitwise determinism have their own tests."""

import itertools
import math

import pytest
import torch

from contrastive_kernels import _extension
from contrastive_kernels.backends import cuda as cuda_backend
from contrastive_kernels.backends.reference import two_sided_lse_reference
from contrastive_kernels.testing.core_cases import DTYPES, OPTIONS, make_inputs
from contrastive_kernels.testing.core_check import acc_dtype, strided_view
from contrastive_kernels.testing.tolerance import compare


def _ops():
    ns = torch.ops.contrastive_kernels
    return ns.two_sided_lse_cuda_emulated, ns.two_sided_lse_cuda_emulated_backward


def _built() -> bool:
    if _extension.emulated_ops is None:
        return False
    try:
        _ops()
    except (AttributeError, RuntimeError):
        return False
    return True


pytestmark = pytest.mark.skipif(not _built(), reason=(
    f"emulated CUDA ops not built: {_extension.LOAD_ERROR or _extension.EMULATED_ERROR}"))

SPLITS_VAR = "CONTRASTIVE_KERNELS_CUDA_SPLITS"
EPS = 1e-12
# (N, M, d): N != M, the tails of 64-row / 64-key tiles, d over 1, 3 and several chunks
SHAPES = [(1, 1, 1), (3, 65, 3), (65, 3, 130), (130, 257, 3), (97, 130, 33)]
# the lse table's options; two_sided_lse has no o
TWO_SIDED_OPTIONS = [o for o in OPTIONS if o.id != "o"]
# every (dtype, option) once, the shapes rotating, and "all" on every shape in fp32 / bf16
CASES = ([(dtype, SHAPES[i % len(SHAPES)], opt) for i, (dtype, opt) in
          enumerate(itertools.product(DTYPES, TWO_SIDED_OPTIONS))] +
         [(dtype, shape, TWO_SIDED_OPTIONS[-1]) for dtype in (torch.float32, torch.bfloat16)
          for shape in SHAPES])


@pytest.fixture(autouse=True)
def _emulate(monkeypatch):
    monkeypatch.setenv(cuda_backend.EMULATE_VAR, "1")
    monkeypatch.delenv(SPLITS_VAR, raising=False)


def _args(q, k, scale, kw):
    """The positional pair prefix of the schema, plus exclude_positives."""
    return (q, k, scale, kw.get("bias"), kw.get("q_labels"), kw.get("k_labels"),
            kw.get("self_offset"), kw.get("normalize", False), EPS,
            kw.get("exclude_positives", False))


def fused(q, k, scale, kw, g, h):
    """(row_lse, col_lse, dq, dk, dscale) of the emulated kernels; the cotangents g, h are
    applied to the lines with a finite statistic."""
    fwd, bwd = _ops()
    args = _args(q, k, scale, kw)
    row, col = fwd(*args)
    gl = (g.to(row.dtype) * torch.isfinite(row)).contiguous()
    hl = (h.to(col.dtype) * torch.isfinite(col)).contiguous()
    dq, dk, ds = bwd(gl, hl, *args, row, col, True, True, True)
    return row, col, dq, dk, ds


def reference(q, k, scale, kw, g, h, compute_dtype=None):
    """The same five outputs from the naive formulation and autograd (float64: the oracle)."""
    q = q.detach().clone().requires_grad_()
    k = k.detach().clone().requires_grad_()
    scale = scale.detach().clone().requires_grad_()
    row, col = two_sided_lse_reference(*_args(q, k, scale, kw), compute_dtype=compute_dtype)
    loss = ((g.to(row.dtype) * torch.isfinite(row)) * torch.where(torch.isfinite(row), row, 0)).sum() + \
        ((h.to(col.dtype) * torch.isfinite(col)) * torch.where(torch.isfinite(col), col, 0)).sum()
    dq, dk, ds = torch.autograd.grad(loss, (q, k, scale), allow_unused=True)
    zeros = lambda x: torch.zeros_like(x)  # noqa: E731  (no finite line: no graph)
    return (row.detach(), col.detach(), dq if dq is not None else zeros(q),
            dk if dk is not None else zeros(k), ds if ds is not None else zeros(scale))


def case(n, m, d, dtype, opt, seed=0):
    """(q, k, scale, kw, g, h): one table case's inputs, kw's floats in the accumulation
    dtype, cotangents in float64."""
    q, k, gen = make_inputs(n, m, d, dtype, seed=seed)
    kw = opt.kwargs(n, m, "cpu", acc_dtype(dtype), gen)
    kw.pop("return_o")
    g = torch.randn(n, generator=gen, dtype=torch.float64)
    h = torch.randn(m, generator=gen, dtype=torch.float64)
    return q, k, torch.tensor(opt.scale, dtype=acc_dtype(dtype)), kw, g, h


NAMES = ("row_lse", "col_lse", "dq", "dk", "dscale")


def check(q, k, scale, kw, g, h, dtype, tf32_scale=None, ours=None):
    """Every output of the emulated kernels against the oracle, with the naive bar."""
    ours = fused(q, k, scale, kw, g, h) if ours is None else ours
    kw64 = {key: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
            for key, v in kw.items()}
    oracle = reference(q.double(), k.double(), scale.double(), kw64, g, h)
    naive = reference(q, k, scale.to(dtype), kw, g, h, compute_dtype=dtype)
    acc = acc_dtype(dtype)
    assert ours[0].dtype == acc and ours[1].dtype == acc and ours[4].dtype == scale.dtype
    assert ours[2].dtype == dtype and ours[3].dtype == dtype
    for name, x, ref, base in zip(NAMES, ours, oracle, naive):
        v = compare(x, ref, base, dtype, tf32_scale=tf32_scale)
        assert v.shape_ok, (name, tuple(x.shape), tuple(ref.shape))
        assert not v.nan, f"{name}: NaN"
        assert v.ok, f"{name} ({dtype}): error {v.err:.3e} > {v.tol:.3e} (naive {v.naive_err:.3e})"
    return ours


@pytest.mark.parametrize("dtype,shape,opt", CASES,
                         ids=[f"{str(d)[6:]}-{'x'.join(map(str, s))}-{o.id}" for d, s, o in CASES])
def test_oracle_table(dtype, shape, opt):
    check(*case(*shape, dtype, opt), dtype)


def test_rows_equal_lse_bitwise():
    """The row statistics come from the same policy code as lse's: bit for bit, with and
    without a key split (forced)."""
    ns = torch.ops.contrastive_kernels
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        q, k, scale, kw, _, _ = case(97, 200, 40, dtype, TWO_SIDED_OPTIONS[-1])
        args = _args(q, k, scale, kw)
        row, _ = _ops()[0](*args)
        lse, _ = ns.lse_cuda_emulated(*args, False)
        assert torch.equal(row, lse), dtype


def test_nan_and_inf_reach_every_line_they_meet():
    q, k, _ = make_inputs(70, 90, 8, torch.float32)
    fwd, _ = _ops()
    scale = torch.tensor(2.0)
    qn = q.clone()
    qn[5, 3] = float("nan")  # row 5 meets every key
    row, col = fwd(qn, k, scale, None, None, None, None, False, EPS, False)
    assert math.isnan(row[5]) and torch.isfinite(row[torch.arange(70) != 5]).all()
    assert torch.isnan(col).all()
    kn = k.clone()
    kn[80, 0] = float("nan")  # key 80 (second key tile) meets every row
    row, col = fwd(q, kn, scale, None, None, None, None, False, EPS, False)
    assert torch.isnan(row).all()
    assert math.isnan(col[80]) and torch.isfinite(col[torch.arange(90) != 80]).all()
    # ... unless the pair is excluded: self_offset 75 pairs row 5 with key 80
    row, col = fwd(q, kn, scale, None, None, None, 75, False, EPS, False)
    assert not math.isnan(row[5]) and math.isnan(row[4])
    bias = torch.zeros(90)
    bias[70] = float("inf")  # key 70: +inf logits, in every row and in its column
    row, col = fwd(q, k, scale, bias, None, None, None, False, EPS, False)
    assert torch.isposinf(row).all() and torch.isposinf(col[70])
    assert torch.isfinite(col[torch.arange(90) != 70]).all()


def test_empty_rows_and_columns_have_no_gradient():
    """A row whose keys are all excluded and a key whose rows are all excluded: -inf, and no
    gradient through them (their cotangent is ignored, even a large one)."""
    q, k, _ = make_inputs(70, 80, 8, torch.float32)
    ql = torch.zeros(70, dtype=torch.long)
    kl = torch.ones(80, dtype=torch.long)
    ql[3] = 1  # row 3 shares its label with every key: empty
    kl[77] = 0  # key 77 shares its label with every other row; row 3 is excluded by self_offset
    kw = dict(q_labels=ql, k_labels=kl, self_offset=74, exclude_positives=True, normalize=True)
    scale = torch.tensor(3.0)
    fwd, bwd = _ops()
    args = _args(q, k, scale, kw)
    row, col = fwd(*args)
    assert torch.isneginf(row[3]) and torch.isfinite(row[torch.arange(70) != 3]).all()
    assert torch.isneginf(col[77]) and torch.isfinite(col[torch.arange(80) != 77]).all()
    g = torch.ones(70)
    h = torch.ones(80)
    g[3] = 1e30
    h[77] = 1e30
    dq, dk, ds = bwd(g, h, *args, row, col, True, True, True)
    assert torch.equal(dq[3], torch.zeros(8)) and torch.equal(dk[77], torch.zeros(8))
    assert torch.isfinite(dq).all() and torch.isfinite(dk).all() and torch.isfinite(ds)
    check(q, k, scale, kw, g.double(), h.double(), torch.float32)


def test_empty_inputs():
    fwd, bwd = _ops()
    scale = torch.tensor(2.0)
    q, k = torch.randn(3, 4), torch.randn(0, 4)
    row, col = fwd(q, k, scale, None, None, None, None, False, EPS, False)
    assert torch.isneginf(row).all() and col.shape == (0,)
    dq, dk, ds = bwd(torch.ones(3), torch.ones(0), q, k, scale, None, None, None, None, False,
                     EPS, False, row, col, True, True, True)
    assert torch.equal(dq, torch.zeros(3, 4)) and dk.shape == (0, 4) and ds == 0
    row, col = fwd(k, q, scale, None, None, None, None, False, EPS, False)
    assert row.shape == (0,) and torch.isneginf(col).all() and col.shape == (3,)
    dq, dk, ds = bwd(torch.ones(0), torch.ones(3), k, q, scale, None, None, None, None, False,
                     EPS, False, row, col, True, True, True)
    assert dq.shape == (0, 4) and torch.equal(dk, torch.zeros(3, 4)) and ds == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_strided_inputs(dtype):
    """NaN-padded views with an odd row stride (element-wise staging) and a column-major k:
    bitwise the results of the contiguous copies (cp.async staging), and the oracle's."""
    q, k, scale, kw, g, h = case(70, 90, 35, dtype, TWO_SIDED_OPTIONS[-1])
    k_cm = k.T.contiguous().T
    assert k_cm.stride() == (1, 90)
    ours = fused(strided_view(q), k_cm, scale, kw, g, h)
    for a, b in zip(ours, fused(q, k, scale, kw, g, h)):
        assert torch.equal(a, b)
    check(q, k, scale, kw, g, h, dtype, ours=ours)


def test_need_flags_and_partial_cotangents():
    """need_dq / need_dk / need_dscale off give the empty outputs of the contract; with h = 0
    (g = 0) only the row (column) term acts, each against the oracle."""
    q, k, scale, kw, g, h = case(70, 90, 16, torch.float32, TWO_SIDED_OPTIONS[1])
    fwd, bwd = _ops()
    args = _args(q, k, scale, kw)
    row, col = fwd(*args)
    dq, dk, ds = bwd(g.float(), h.float(), *args, row, col, False, False, False)
    assert dq.shape == (0,) and dk.shape == (0,) and ds == 0
    full = bwd(g.float(), h.float(), *args, row, col, True, True, True)
    dq, dk, ds = bwd(g.float(), h.float(), *args, row, col, False, True, False)
    assert torch.equal(dk, full[1])
    check(q, k, scale, kw, g, torch.zeros_like(h), torch.float32)
    check(q, k, scale, kw, torch.zeros_like(g), h, torch.float32)


@pytest.mark.parametrize("splits", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_forced_splits(monkeypatch, splits, dtype):
    """The forward's key ranges and both backward grids split (CONTRASTIVE_KERNELS_CUDA_SPLITS):
    each range writes the column partials of its own keys; against the oracle and bitwise
    repeatable (190 rows, 200 keys: 3 / 4 tiles with tails)."""
    monkeypatch.setenv(SPLITS_VAR, str(splits))
    inputs = case(190, 200, 40, dtype, TWO_SIDED_OPTIONS[-1])
    ours = check(*inputs, dtype)
    for a, b in zip(ours, fused(*inputs)):
        assert torch.equal(a, b)


def test_bitwise_deterministic_across_calls():
    inputs = case(130, 150, 24, torch.bfloat16, TWO_SIDED_OPTIONS[1])
    first = fused(*inputs)
    for _ in range(2):
        for a, b in zip(first, fused(*inputs)):
            assert torch.equal(a, b)


def test_tf32(set_matmul_precision):
    """fp32 under precision "high": logits and second products on tf32 (m16n8k8), within the
    tf32 bar of the oracle and visibly different from "highest"."""
    inputs = case(97, 130, 64, torch.float32, TWO_SIDED_OPTIONS[-1])
    set_matmul_precision("highest")
    exact = fused(*inputs)
    set_matmul_precision("high")
    tf32 = check(*inputs, torch.float32, tf32_scale=float(inputs[2]))
    live = torch.isfinite(exact[1])  # key 1 is dropped (bias -inf)
    assert float((tf32[1] - exact[1])[live].abs().max()) > 1e-5


def test_bad_statistics_are_named():
    q, k, scale, kw, _, _ = case(5, 7, 3, torch.float32, TWO_SIDED_OPTIONS[0])
    fwd, bwd = _ops()
    args = _args(q, k, scale, kw)
    row, col = fwd(*args)
    with pytest.raises(RuntimeError, match=r"grad_col_lse must have shape \[M\] = \[7\]"):
        bwd(torch.ones(5), torch.ones(5), *args, row, col, True, True, True)
    with pytest.raises(RuntimeError, match=r"col_lse must have shape \[M\] = \[7\]"):
        bwd(torch.ones(5), torch.ones(7), *args, row, row, True, True, True)
    with pytest.raises(RuntimeError, match=r"row_lse must be floating point"):
        bwd(torch.ones(5), torch.ones(7), *args, torch.ones(5, dtype=torch.long), col, True,
            True, True)
