"""pairwise_sigmoid in the CUDA kernels (csrc/cuda/, policy SigmoidRows), run on CPU tensors
through the emulation layer: torch.ops.contrastive_kernels.pairwise_sigmoid_cuda_emulated /
_backward called directly against the float64 oracle pairwise_sigmoid_reference (its autograd
gives the reference gradients, dbias included), with the tolerance of testing.tolerance.compare
(twice the naive error in the same dtype).

The emulation is slow, so the table is a covering sample (every option with every dtype,
shapes rotating through the tails of the 64-wide tiles); the edges of the contract (NaN, inf,
empty inputs, strides, need_* subsets, forced splits, tf32), bitwise determinism and gradcheck
through ops.pairwise_sigmoid(..., backend="cuda") have their own tests."""

import math

import pytest
import torch

from contrastive_kernels import _extension, ops
from contrastive_kernels.backends import cuda as cuda_backend
from contrastive_kernels.backends.reference import pairwise_sigmoid_reference
from contrastive_kernels.testing.core_cases import DTYPES, OPTIONS, make_inputs
from contrastive_kernels.testing.core_check import acc_dtype, strided_view
from contrastive_kernels.testing.tolerance import compare


def _ops():
    ns = torch.ops.contrastive_kernels
    return ns.pairwise_sigmoid_cuda_emulated, ns.pairwise_sigmoid_cuda_emulated_backward


def _built() -> bool:
    if _extension.emulated_ops is None:
        return False
    try:
        _ops()[0].default
    except (AttributeError, RuntimeError):
        return False
    return True


pytestmark = pytest.mark.skipif(not _built(), reason=(
    f"emulated CUDA ops not built: {_extension.LOAD_ERROR or _extension.EMULATED_ERROR}"))

SPLITS_VAR = "CONTRASTIVE_KERNELS_CUDA_SPLITS"
EPS = 1e-12
# (N, M, d): N != M, the tails of 64-row / 64-key tiles, d over 1, 3 and several chunks
SHAPES = [(1, 1, 1), (3, 65, 3), (65, 3, 130), (130, 257, 3), (97, 130, 33)]
# the lse table's options (labels are positives here, not exclusions); no o
SIGMOID_OPTIONS = [o for o in OPTIONS if o.id != "o"]


@pytest.fixture(autouse=True)
def _emulate(monkeypatch):
    monkeypatch.setenv(cuda_backend.EMULATE_VAR, "1")
    monkeypatch.delenv(SPLITS_VAR, raising=False)


def _args(q, k, scale, kw):
    """The positional pair prefix of the schema."""
    return (q, k, scale, kw.get("bias"), kw.get("q_labels"), kw.get("k_labels"),
            kw.get("self_offset"), kw.get("normalize", False), EPS)


def fused(q, k, scale, kw, g, need=(True, True, True, True)):
    """(row_loss, dq, dk, dscale, dbias) of the emulated kernels for the cotangent g."""
    fwd, bwd = _ops()
    args = _args(q, k, scale, kw)
    row = fwd(*args)
    need = need[:3] + (need[3] and kw.get("bias") is not None,)
    return (row, *bwd(g.to(row.dtype), *args, row, *need))


def reference(q, k, scale, kw, g, compute_dtype=None):
    """The same five outputs from the naive formulation and autograd (float64: the oracle)."""
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, scale)]
    bias = kw.get("bias")
    if bias is not None:
        bias = bias.detach().clone().requires_grad_()
        leaves.append(bias)
    kw = dict(kw, bias=bias)
    row = pairwise_sigmoid_reference(*_args(*leaves[:3], kw), compute_dtype=compute_dtype)
    grads = torch.autograd.grad((g.to(row.dtype) * row).sum(), leaves, allow_unused=True)
    grads = [gr if gr is not None else torch.zeros_like(x) for gr, x in zip(grads, leaves)]
    if bias is None:
        grads.append(q.new_empty((0,), dtype=row.dtype))
    return (row.detach(), *grads)


def case(n, m, d, dtype, opt, seed=0):
    """(q, k, scale, kw, g): one table case's inputs, kw's floats in the accumulation dtype,
    the cotangent in float64."""
    q, k, gen = make_inputs(n, m, d, dtype, seed=seed)
    kw = opt.kwargs(n, m, "cpu", acc_dtype(dtype), gen)
    kw.pop("return_o")
    kw.pop("exclude_positives", None)
    g = torch.randn(n, generator=gen, dtype=torch.float64)
    return q, k, torch.tensor(opt.scale, dtype=acc_dtype(dtype)), kw, g


NAMES = ("row_loss", "dq", "dk", "dscale", "dbias")


def check(q, k, scale, kw, g, dtype, tf32_scale=None, ours=None):
    """Every output of the emulated kernels against the oracle, with the naive bar."""
    ours = fused(q, k, scale, kw, g) if ours is None else ours
    kw64 = {key: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
            for key, v in kw.items()}
    oracle = reference(q.double(), k.double(), scale.double(), kw64, g)
    naive = reference(q, k, scale.to(dtype), kw, g, compute_dtype=dtype)
    acc = acc_dtype(dtype)
    assert ours[0].dtype == acc and ours[4].dtype == acc and ours[3].dtype == scale.dtype
    assert ours[1].dtype == dtype and ours[2].dtype == dtype
    for name, x, ref, base in zip(NAMES, ours, oracle, naive):
        v = compare(x, ref.to(x.dtype) if name == "dbias" else ref, base, dtype,
                    tf32_scale=tf32_scale)
        assert v.shape_ok, (name, tuple(x.shape), tuple(ref.shape))
        assert not v.nan, f"{name}: NaN"
        assert v.ok, f"{name} ({dtype}): error {v.err:.3e} > {v.tol:.3e} (naive {v.naive_err:.3e})"
    return ours


@pytest.mark.parametrize("opt", SIGMOID_OPTIONS, ids=lambda o: o.id)
def test_oracle_table(opt):
    """Every dtype on this option, the shapes rotating with the option and the dtype."""
    i = SIGMOID_OPTIONS.index(opt)
    for j, dtype in enumerate(DTYPES):
        check(*case(*SHAPES[(i + j) % len(SHAPES)], dtype, opt), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_all_options_every_shape(dtype):
    for shape in SHAPES:
        check(*case(*shape, dtype, SIGMOID_OPTIONS[-1]), dtype)


def test_large_logits_keep_relative_accuracy():
    """Trained SigLIP logits sit at |x| ~ 10: softplus(-10) ~ 4.5e-5 must keep fp32's relative
    accuracy (log(1 + e) computed naively would not), also at |x| ~ 80 (e ~ 1e-35)."""
    fwd, _ = _ops()
    for target in (10.0, 30.0, 80.0):
        q = torch.ones(3, 1, dtype=torch.float32)
        k = torch.ones(70, 1, dtype=torch.float32)
        row = fwd(q, k, torch.tensor(target), None, None, None, None, False, EPS)
        # no positive: every pair is a negative at x = +target, softplus = target + log1p(e)
        want = 70 * (target + math.log1p(math.exp(-target)))
        assert abs(float(row[0]) - want) <= 2e-6 * want
        row = fwd(q, k, torch.tensor(-target), None, None, None, None, False, EPS)
        want = 70 * math.log1p(math.exp(-target))
        assert abs(float(row[0]) - want) <= 1e-6 * want, (target, float(row[0]), want)


def test_nan_and_inf():
    q, k, _ = make_inputs(70, 90, 8, torch.float32)
    fwd, bwd = _ops()
    scale = torch.tensor(2.0)
    g = torch.ones(70)
    qn = q.clone()
    qn[5, 3] = float("nan")  # row 5 meets every key
    row = fwd(qn, k, scale, None, None, None, 0, False, EPS)
    assert math.isnan(row[5]) and torch.isfinite(row[torch.arange(70) != 5]).all()
    dq, dk, ds, _ = bwd(g, qn, k, scale, None, None, None, 0, False, EPS, row, True, True, True,
                        False)
    assert torch.isnan(dq[5]).all() and torch.isfinite(dq[torch.arange(70) != 5]).all()
    assert torch.isnan(dk).all() and math.isnan(ds)
    bias = torch.zeros(90)
    bias[80] = float("inf")  # key 80: s = +inf; a negative (x = +inf) except for row 10
    bias[81] = float("-inf")  # key 81: s = -inf; x = -inf (nothing) except for row 11
    args = (q, k, scale, bias, None, None, 70, False, EPS)
    row = fwd(*args)
    live = (torch.arange(70) != 10) & (torch.arange(70) != 11)
    assert torch.isposinf(row[live]).all() and torch.isposinf(row[11])
    assert math.isfinite(row[10])  # its positive at +inf costs nothing
    dq, dk, ds, db = bwd(g, *args, row, False, False, False, True)
    # sigmoid(+inf) = 1 on the negatives of key 80, 0 on its positive; none on key 81 but row 11
    assert db[80] == 69 and db[81] == -1
    assert torch.isfinite(db).all()


def test_empty_inputs():
    fwd, bwd = _ops()
    scale = torch.tensor(2.0)
    q, k = torch.randn(3, 4), torch.randn(0, 4)
    bias = torch.zeros(0)
    row = fwd(q, k, scale, bias, None, None, 0, False, EPS)
    assert torch.equal(row, torch.zeros(3))
    dq, dk, ds, db = bwd(torch.ones(3), q, k, scale, bias, None, None, 0, False, EPS, row, True,
                         True, True, True)
    assert torch.equal(dq, torch.zeros(3, 4)) and dk.shape == (0, 4) and ds == 0
    assert db.shape == (0,)
    bias = torch.randn(3)
    row = fwd(k, q, scale, bias, None, None, 0, False, EPS)
    assert row.shape == (0,)
    dq, dk, ds, db = bwd(torch.ones(0), k, q, scale, bias, None, None, 0, False, EPS, row, True,
                         True, True, True)
    assert dq.shape == (0, 4) and torch.equal(dk, torch.zeros(3, 4)) and ds == 0
    assert torch.equal(db, torch.zeros(3))
    # d = 0: s = bias, softplus of it
    q0, k0 = torch.zeros(2, 0), torch.zeros(3, 0)
    ours = fused(q0, k0, scale, dict(bias=bias, self_offset=0), torch.ones(2, dtype=torch.float64))
    check(q0, k0, scale, dict(bias=bias, self_offset=0), torch.ones(2, dtype=torch.float64),
          torch.float32, ours=ours)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_strided_inputs(dtype):
    """NaN-padded views with an odd row stride (element-wise staging) and a column-major k:
    bitwise the results of the contiguous copies (cp.async staging), and the oracle's."""
    q, k, scale, kw, g = case(70, 90, 35, dtype, SIGMOID_OPTIONS[-1])
    k_cm = k.T.contiguous().T
    assert k_cm.stride() == (1, 90)
    ours = fused(strided_view(q), k_cm, scale, kw, g)
    for a, b in zip(ours, fused(q, k, scale, kw, g)):
        assert torch.equal(a, b)
    check(q, k, scale, kw, g, dtype, ours=ours)


def test_need_subsets():
    """Each need_* alone gives bit for bit the output of the full call and the empty outputs
    of the contract elsewhere; dbias alone runs the key grid without its second product."""
    q, k, scale, kw, g = case(70, 130, 16, torch.float32, SIGMOID_OPTIONS[-1])
    full = fused(q, k, scale, kw, g)
    for i in range(4):
        need = tuple(j == i for j in range(4))
        part = fused(q, k, scale, kw, g, need)
        for j, (a, b) in enumerate(zip(part[1:], full[1:])):
            if j == i:
                assert torch.equal(a, b), NAMES[j + 1]
            elif j == 2:
                assert a == 0
            else:
                assert a.shape == (0,), NAMES[j + 1]


@pytest.mark.parametrize("splits", [1, 2, 3])
def test_forced_splits(monkeypatch, splits):
    """The forward's key ranges (partial sums) and both backward grids split, dbias from the
    key grid's row ranges: against the oracle and bitwise repeatable (130 rows, 200 keys:
    3 / 4 tiles with tails)."""
    monkeypatch.setenv(SPLITS_VAR, str(splits))
    for dtype in (torch.float32, torch.bfloat16):
        inputs = case(130, 200, 24, dtype, SIGMOID_OPTIONS[-1])
        ours = check(*inputs, dtype)
        for a, b in zip(ours, fused(*inputs)):
            assert torch.equal(a, b)


def test_bitwise_deterministic_across_calls():
    inputs = case(130, 150, 24, torch.bfloat16, SIGMOID_OPTIONS[-1])
    first = fused(*inputs)
    for _ in range(2):
        for a, b in zip(first, fused(*inputs)):
            assert torch.equal(a, b)


def test_gradcheck_through_public_entry():
    """float64 gradcheck of ops.pairwise_sigmoid(backend="cuda") in q, k, scale and an [M]
    bias, then a scalar bias (expanded: its gradient is the sum of dbias)."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(5, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    k = torch.randn(7, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    scale = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(7, dtype=torch.float64, generator=gen, requires_grad=True)
    ql = torch.tensor([0, 1, 0, 2, 1])
    kl = torch.tensor([1, 1, 0, 2, 2, 0, 1])

    def f(q, k, scale, bias):
        return ops.pairwise_sigmoid(q, k, scale, bias, q_labels=ql, k_labels=kl, self_offset=1,
                                    normalize=True, backend="cuda")

    assert torch.autograd.gradcheck(f, (q, k, scale, bias))
    b0 = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda b: f(q.detach(), k.detach(), scale.detach(), b), (b0,))


def test_tf32(set_matmul_precision):
    """fp32 under precision "high": logits and second products on tf32 (m16n8k8), within the
    tf32 bar of the oracle and visibly different from "highest"."""
    inputs = case(97, 130, 64, torch.float32, SIGMOID_OPTIONS[-1])
    set_matmul_precision("highest")
    exact = fused(*inputs)
    set_matmul_precision("high")
    tf32 = check(*inputs, torch.float32, tf32_scale=float(inputs[2]))
    live = torch.isfinite(exact[0])  # rows positive with key 1 (bias -inf) are +inf
    assert float((tf32[0] - exact[0])[live].abs().max()) > 1e-5


def test_bad_inputs_are_named():
    q, k, scale, kw, _ = case(5, 7, 3, torch.float32, SIGMOID_OPTIONS[0])
    fwd, bwd = _ops()
    args = _args(q, k, scale, kw)
    row = fwd(*args)
    with pytest.raises(RuntimeError, match=r"grad_row_loss must have shape \[N\] = \[5\]"):
        bwd(torch.ones(7), *args, row, True, True, True, False)
    with pytest.raises(RuntimeError, match=r"need_dbias without a bias"):
        bwd(torch.ones(5), *args, row, True, True, True, True)
