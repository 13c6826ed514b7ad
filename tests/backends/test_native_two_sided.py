"""The C++ CPU kernels of the two-sided log-sum-exp (csrc/cpu/two_sided_*.cpp), called as
the raw ops torch.ops.contrastive_kernels.two_sided_lse_native / _backward: against the
float64 oracle (tolerance from the naive computation in each dtype), odd and empty
shapes, strided inputs, every exclusion, empty lines, NaN / inf, gradcheck, bitwise
determinism across thread counts, and the need_* subsets of the backward."""

import dataclasses
import math

import pytest
import torch

from contrastive_kernels.backends import native
from contrastive_kernels.backends.reference import two_sided_lse_reference
from contrastive_kernels.testing.core_cases import OPTIONS, Options, make_inputs
from contrastive_kernels.testing.tolerance import assert_close

pytestmark = pytest.mark.skipif(native.BACKEND.available() is not None,
                                reason=f"cpu backend unavailable: {native.BACKEND.available()}")

EPS = 1e-12


def _ops():
    ns = torch.ops.contrastive_kernels
    return ns.two_sided_lse_native, ns.two_sided_lse_native_backward


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclasses.dataclass
class Problem:
    """The op's arguments past q, k, scale, as the raw ops take them."""

    bias: torch.Tensor = None
    q_labels: torch.Tensor = None
    k_labels: torch.Tensor = None
    self_offset: int = None
    normalize: bool = False
    exclude_positives: bool = False

    def args(self, q, k, scale):
        return (q, k, scale, self.bias, self.q_labels, self.k_labels, self.self_offset,
                self.normalize, EPS, self.exclude_positives)

    def to(self, dtype):
        return dataclasses.replace(self, bias=None if self.bias is None else self.bias.to(dtype))


def _problem(opt, n, m, acc, gen):
    kw = opt.kwargs(n, m, "cpu", acc, gen)
    kw.pop("return_o")
    return Problem(**kw)


def _ours(q, k, scale, pb, g, h, needs=(True, True, True)):
    fwd, bwd = _ops()
    row, col = fwd(*pb.args(q, k, scale))
    grads = bwd(g.to(row.dtype), h.to(col.dtype), *pb.args(q, k, scale), row, col, *needs)
    return (row, col) + tuple(grads)


def _oracle(q, k, scale, pb, g, h, compute_dtype=None):
    """row_lse, col_lse and the gradients of <g, row_lse> + <h, col_lse> w.r.t. q, k, scale
    (live lines only), in float64 unless compute_dtype is given (the naive baseline)."""
    q = q.detach().clone().requires_grad_()
    k = k.detach().clone().requires_grad_()
    scale = scale.detach().clone().requires_grad_()
    row, col = two_sided_lse_reference(*pb.args(q, k, scale), compute_dtype=compute_dtype)
    outs = [row, col]
    weights = [g.to(row.dtype) * torch.isfinite(row), h.to(col.dtype) * torch.isfinite(col)]
    grads = torch.autograd.grad(outs, (q, k, scale), grad_outputs=weights, allow_unused=True)
    grads = tuple(torch.zeros_like(x) if gr is None else gr for x, gr in zip((q, k, scale), grads))
    return (row.detach(), col.detach()) + grads


NAMES = ("row_lse", "col_lse", "dq", "dk", "dscale")


def _check(q, k, scale, pb, gen, dtype):
    """Ours against the float64 oracle, with the naive dtype computation's error as the bar."""
    n, m = q.shape[0], k.shape[0]
    g = torch.randn(n, generator=gen, dtype=torch.float64)
    h = torch.randn(m, generator=gen, dtype=torch.float64)
    ours = _ours(q, k, scale.to(_acc(dtype)), pb.to(_acc(dtype)), g, h)
    oracle = _oracle(q.double(), k.double(), scale.double(), pb.to(torch.float64), g, h)
    for name, a in zip(NAMES, ours):
        assert a.dtype == (dtype if name in ("dq", "dk") else _acc(dtype)), name
    if dtype == torch.float64:  # the naive float64 computation is the oracle itself
        for name, a, b in zip(NAMES, ours, oracle):
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12, msg=name)
        return
    naive = _oracle(q, k, scale.to(dtype), pb.to(dtype), g, h, compute_dtype=dtype)
    for name, a, b, c in zip(NAMES, ours, oracle, naive):
        assert_close(name, a, b, c, dtype)


# (N, M, d): one row, one key, N != M both ways, several row and key blocks, odd tails.
SHAPES = [(1, 1, 1), (3, 5, 3), (1, 7, 130), (9, 1, 3), (97, 61, 3), (61, 97, 130),
          (130, 257, 64)]
OPTS = ([dataclasses.replace(o, return_o=False) for o in OPTIONS if not o.return_o] +
        [dataclasses.replace(OPTIONS[-1], return_o=False),
         Options("self_far", self_offset=400, normalize=True),
         Options("self_far_negative", self_offset=-400),
         Options("labels_only", labels=True, normalize=True, scale=14.3)])
OPT = {o.id: o for o in OPTS}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("opt", OPTS, ids=lambda o: o.id)
def test_matches_oracle(opt, dtype):
    for shape in SHAPES:  # one item per (option, dtype): each shape is a few tiny calls
        n, m, d = shape
        q, k, gen = make_inputs(n, m, d, dtype)
        pb = _problem(opt, n, m, _acc(dtype), gen)
        _check(q, k, torch.tensor(opt.scale, dtype=torch.float64), pb, gen, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(3, 5, 3), (97, 61, 3), (130, 257, 64)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("opt", [OPT[i] for i in ("plain", "normalize", "labels", "all")], ids=lambda o: o.id)
def test_low_precision_matches_oracle(opt, shape, dtype):
    n, m, d = shape
    q, k, gen = make_inputs(n, m, d, dtype)
    pb = _problem(opt, n, m, torch.float32, gen)
    _check(q, k, torch.tensor(opt.scale, dtype=torch.float64), pb, gen, dtype)


def test_strided_inputs():
    """q a column slice, k a transposed view: neither contiguous rows."""
    gen = torch.Generator().manual_seed(3)
    q = (torch.randn(50, 2 * 24, generator=gen) / 5)[:, ::2]
    k = (torch.randn(24, 70, generator=gen) / 5).t()
    assert not q.is_contiguous() and not k.is_contiguous()
    labels = torch.randint(0, 4, (50,), generator=gen), torch.randint(0, 4, (70,), generator=gen)
    pb = Problem(normalize=True, self_offset=3, q_labels=labels[0], k_labels=labels[1],
                 exclude_positives=True)
    _check(q, k, torch.tensor(9.0, dtype=torch.float64), pb, gen, torch.float32)


def test_wide_logit_range_matches_oracle():
    """Row norms over three decades and no normalization: tiles too wide for one shared
    pivot (forward) or one shared lse reference (backward) take the per-side paths."""
    n, m = 300, 280
    q, k, gen = make_inputs(n, m, 16, torch.float32)
    q = q * torch.logspace(-2, 1, n)[torch.randperm(n, generator=gen)][:, None]
    k = k * torch.logspace(-2, 1, m)[torch.randperm(m, generator=gen)][:, None]
    _check(q, k, torch.tensor(20.0, dtype=torch.float64), Problem(self_offset=0), gen,
           torch.float32)


def test_clip_like_problem_matches_oracle():
    """Normalized features at CLIP's temperature, several blocks each way: the shared
    pivot in both directions."""
    q, k, gen = make_inputs(400, 300, 32, torch.float32)
    _check(q, k, torch.tensor(14.3, dtype=torch.float64), Problem(normalize=True), gen,
           torch.float32)


def test_same_tensor_gives_equal_row_and_column_lse():
    q, _, gen = make_inputs(200, 1, 16, torch.float32)
    row, col = _ops()[0](*Problem(normalize=True, self_offset=0).args(q, q, torch.tensor(7.0)))
    torch.testing.assert_close(row, col, rtol=1e-6, atol=1e-6)
    _check(q, q, torch.tensor(7.0, dtype=torch.float64), Problem(normalize=True, self_offset=0),
           gen, torch.float32)


# --------------------------------------------------------------------------- empty lines


def test_empty_rows_and_columns_get_minus_inf_and_no_gradient():
    n, m, d = 9, 7, 5
    q, k, _ = make_inputs(n, m, d, torch.float32)
    q_labels = torch.ones(n, dtype=torch.long)
    q_labels[0] = 0  # row 0 meets only keys of its own label: empty
    k_labels = torch.zeros(m, dtype=torch.long)
    bias = torch.zeros(m)
    bias[3] = -math.inf  # key 3 meets no row: empty column
    pb = Problem(bias=bias, q_labels=q_labels, k_labels=k_labels, exclude_positives=True)
    row, col, dq, dk, ds = _ours(q, k, torch.tensor(3.0), pb, torch.ones(n), torch.ones(m))
    assert torch.isneginf(row[0]) and torch.isfinite(row[1:]).all()
    assert torch.isneginf(col[3]) and torch.isfinite(col[torch.arange(m) != 3]).all()
    assert (dq[0] == 0).all() and (dk[3] == 0).all()
    assert torch.isfinite(dq).all() and torch.isfinite(dk).all() and torch.isfinite(ds)
    oracle = _oracle(q.double(), k.double(), torch.tensor(3.0, dtype=torch.float64),
                     pb.to(torch.float64), torch.ones(n), torch.ones(m))
    for name, a, b in zip(NAMES, (row, col, dq, dk, ds), oracle):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("n,m", [(4, 0), (0, 4), (0, 0)])
def test_no_rows_or_no_keys(n, m):
    q, k, _ = make_inputs(n, m, 8, torch.float32)
    row, col, dq, dk, ds = _ours(q, k, torch.tensor(2.0), Problem(normalize=True),
                                 torch.ones(n), torch.ones(m))
    assert row.shape == (n,) and col.shape == (m,)
    assert torch.isneginf(row).all() and torch.isneginf(col).all()
    assert dq.shape == (n, 8) and dk.shape == (m, 8)
    assert (dq == 0).all() and (dk == 0).all() and ds.item() == 0.0


def test_every_pair_excluded():
    q, k, _ = make_inputs(5, 5, 3, torch.float32)
    labels = torch.zeros(5, dtype=torch.long)
    pb = Problem(q_labels=labels, k_labels=labels, exclude_positives=True)
    row, col, dq, dk, ds = _ours(q, k, torch.tensor(2.0), pb, torch.ones(5), torch.ones(5))
    assert torch.isneginf(row).all() and torch.isneginf(col).all()
    assert (dq == 0).all() and (dk == 0).all() and ds.item() == 0.0


# --------------------------------------------------------------------------- NaN and inf


def test_nan_input_gives_nan_in_every_line_it_meets():
    q, k, _ = make_inputs(40, 30, 6, torch.float32)
    q[2, 0] = math.nan
    row, col, dq, dk, _ = _ours(q, k, torch.tensor(2.0), Problem(), torch.ones(40), torch.ones(30))
    assert torch.isnan(row[2]) and torch.isfinite(row[torch.arange(40) != 2]).all()
    assert torch.isnan(col).all()  # row 2 meets every key
    assert torch.isnan(dq[2]).all() and torch.isnan(dk).any()


def test_inf_logit_gives_inf():
    q, k, _ = make_inputs(20, 10, 4, torch.float32)
    bias = torch.zeros(10)
    bias[4] = math.inf
    row, col = _ops()[0](*Problem(bias=bias).args(q, k, torch.tensor(1.0)))
    assert torch.isposinf(row).all() and torch.isposinf(col[4])
    assert torch.isfinite(col[torch.arange(10) != 4]).all()


# --------------------------------------------------------------------------- gradcheck


class _TwoSided(torch.autograd.Function):
    """The raw op pair as a differentiable function of (q, k, scale), for gradcheck."""

    @staticmethod
    def forward(ctx, q, k, scale, pb):
        row, col = _ops()[0](*pb.args(q, k, scale))
        ctx.save_for_backward(q, k, scale, row, col)
        ctx.pb = pb
        return row, col

    @staticmethod
    def backward(ctx, g, h):
        q, k, scale, row, col = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        dq, dk, ds = _ops()[1](g.contiguous(), h.contiguous(), *ctx.pb.args(q, k, scale), row,
                               col, *needs)
        return (dq if needs[0] else None, dk if needs[1] else None,
                ds if needs[2] else None, None)


@pytest.mark.parametrize("opt", [OPT[i] for i in ("normalize", "bias", "all")], ids=lambda o: o.id)
def test_gradcheck_float64(opt):
    n, m = 14, 23  # several row and key blocks of the small-problem tiling
    q, k, gen = make_inputs(n, m, 3, torch.float64)
    pb = _problem(opt, n, m, torch.float64, gen)
    scale = torch.tensor(opt.scale, dtype=torch.float64, requires_grad=True)

    def f(q, k, s):
        row, col = _TwoSided.apply(q, k, s, pb)
        return (torch.where(torch.isfinite(row), row, 0.0),
                torch.where(torch.isfinite(col), col, 0.0))

    assert torch.autograd.gradcheck(f, (q.requires_grad_(), k.requires_grad_(), scale))


# --------------------------------------------------------------------------- determinism


DETERMINISM = {
    "labels": lambda n, m, gen: Problem(
        normalize=True, self_offset=1, q_labels=torch.randint(0, 9, (n,), generator=gen),
        k_labels=torch.randint(0, 9, (m,), generator=gen), exclude_positives=True),
    "bias": lambda n, m, gen: Problem(bias=torch.randn(m, generator=gen), self_offset=-3),
}


@pytest.mark.parametrize("case", DETERMINISM)
def test_thread_count_does_not_change_results(case):
    n, m = 700, 530
    q, k, gen = make_inputs(n, m, 40, torch.float32)
    pb = DETERMINISM[case](n, m, gen)
    g, h = torch.linspace(-1, 1, n), torch.linspace(1, -2, m)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _ours(q, k, torch.tensor(6.0), pb, g, h)
        torch.set_num_threads(2)
        two = _ours(q, k, torch.tensor(6.0), pb, g, h)
        again = _ours(q, k, torch.tensor(6.0), pb, g, h)
    finally:
        torch.set_num_threads(before)
    for name, a, b, c in zip(NAMES, one, two, again):
        assert torch.equal(a, b) and torch.equal(b, c), name


# --------------------------------------------------------------------------- need_* subsets


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False),
                                   (False, False, True), (True, False, True), (False, True, True)])
def test_need_subsets(needs):
    n, m, d = 130, 97, 24
    q, k, gen = make_inputs(n, m, d, torch.float32)
    pb = _problem(OPT["all"], n, m, torch.float32, gen)
    g, h = torch.randn(n, generator=gen), torch.randn(m, generator=gen)
    full = _ours(q, k, torch.tensor(7.0), pb, g, h)
    part = _ours(q, k, torch.tensor(7.0), pb, g, h, needs)
    for need, name, a, b in zip(needs, ("dq", "dk"), part[2:4], full[2:4]):
        if need:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        else:
            assert a.shape == (0,), name
    if needs[2]:
        torch.testing.assert_close(part[4], full[4], rtol=1e-5, atol=1e-6)
    else:
        assert part[4].item() == 0.0


# --------------------------------------------------------------------------- arguments


def test_output_contract():
    q, k, _ = make_inputs(6, 4, 3, torch.bfloat16)
    fwd, bwd = _ops()
    row, col = fwd(q, k, torch.tensor(2.0), None, None, None, None, True, EPS, False)
    assert row.dtype == col.dtype == torch.float32 and row.shape == (6,) and col.shape == (4,)
    dq, dk, ds = bwd(torch.ones(6), torch.ones(4), q, k, torch.tensor(2.0), None, None, None,
                     None, True, EPS, False, row, col, False, True, False)
    assert dq.shape == (0,) and dq.dtype == torch.bfloat16
    assert dk.shape == (4, 3) and dk.dtype == torch.bfloat16 and dk.is_contiguous()
    assert ds.dim() == 0 and ds.dtype == torch.float32 and ds.item() == 0.0


def test_bad_arguments_name_the_argument():
    q, k, _ = make_inputs(3, 4, 5, torch.float32)
    s = torch.tensor(1.0)
    fwd, bwd = _ops()
    with pytest.raises(RuntimeError, match="two_sided_lse_native: k must be 2-D"):
        fwd(q, k[0], s, None, None, None, None, False, EPS, False)
    with pytest.raises(RuntimeError, match="exclude_positives=True needs both"):
        fwd(q, k, s, None, torch.zeros(3, dtype=torch.long), None, None, False, EPS, True)
    row, col = fwd(q, k, s, None, None, None, None, False, EPS, False)
    args = (q, k, s, None, None, None, None, False, EPS, False)
    with pytest.raises(RuntimeError, match=r"grad_col_lse must have shape \[M\] = \[4\]"):
        bwd(torch.zeros(3), torch.zeros(3), *args, row, col, True, True, True)
    with pytest.raises(RuntimeError, match=r"row_lse must have shape \[N\] = \[3\]"):
        bwd(torch.zeros(3), torch.zeros(4), *args, col, col, True, True, True)
    with pytest.raises(RuntimeError, match="col_lse must be floating point"):
        bwd(torch.zeros(3), torch.zeros(4), *args, row, torch.zeros(4, dtype=torch.long),
            True, True, True)
