"""The C++ CPU kernels of the pairwise sigmoid (csrc/cpu/sigmoid_*.cpp), called as the raw
ops torch.ops.contrastive_kernels.pairwise_sigmoid_native / _backward: against the float64
oracle in every dtype (tolerance from the naive computation in that dtype) over one option
table, odd and empty shapes, strided inputs, NaN / inf, every need_* subset, gradcheck
through ops.pairwise_sigmoid, bitwise determinism across thread counts, both kernel sets."""

import dataclasses
import itertools

import pytest
import torch

from contrastive_kernels import _extension, ops
from contrastive_kernels.backends import native
from contrastive_kernels.backends.reference import pairwise_sigmoid_reference
from contrastive_kernels.testing.core_cases import make_inputs
from contrastive_kernels.testing.tolerance import assert_close

pytestmark = pytest.mark.skipif(native.BACKEND.available() is not None,
                                reason=f"cpu backend unavailable: {native.BACKEND.available()}")

EPS = 1e-12
NAMES = ("row_loss", "dq", "dk", "dscale", "dbias")
NAN, INF = float("nan"), float("inf")


def _ops():
    ns = torch.ops.contrastive_kernels
    return ns.pairwise_sigmoid_native, ns.pairwise_sigmoid_native_backward


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclasses.dataclass(frozen=True)
class Opt:
    id: str
    self_offset: int = None
    labels: bool = False
    bias: bool = False
    normalize: bool = False
    scale: float = 2.5


# self_offset 0 / -2 / None, labels (alone and with the self pair), bias with a -inf, normalize
OPTS = [Opt("plain"), Opt("self", self_offset=0, bias=True, scale=10.0),
        Opt("self_shifted", self_offset=-2, normalize=True, scale=14.0),
        Opt("labels", labels=True), Opt("labels_self", labels=True, self_offset=0, bias=True),
        Opt("all", self_offset=-2, labels=True, bias=True, normalize=True, scale=7.0)]
OPT = {o.id: o for o in OPTS}
# (N, M, d): one pair, odd tails, N != M both ways, several row and key blocks
SHAPES = [(1, 1, 1), (3, 3, 3), (1, 5, 130), (97, 61, 3), (61, 97, 130), (130, 257, 64)]


@dataclasses.dataclass
class Problem:
    """The op's arguments past q, k, scale, as the raw ops take them."""

    bias: torch.Tensor = None
    q_labels: torch.Tensor = None
    k_labels: torch.Tensor = None
    self_offset: int = None
    normalize: bool = False

    @classmethod
    def make(cls, opt, n, m, gen):
        pb = cls(self_offset=opt.self_offset, normalize=opt.normalize)
        if opt.bias:
            pb.bias = torch.randn(m, generator=gen, dtype=torch.float64) - 2
            if m > 2:
                pb.bias[1] = -INF  # a key whose negatives cost 0 and positives inf
        if opt.labels:
            pb.q_labels = torch.randint(0, 3, (n,), generator=gen)
            pb.k_labels = torch.randint(0, 3, (m,), generator=gen)
        return pb

    def args(self, q, k, scale):
        return (q, k, scale, self.bias, self.q_labels, self.k_labels, self.self_offset,
                self.normalize, EPS)

    def to(self, dtype):
        return dataclasses.replace(self, bias=None if self.bias is None else self.bias.to(dtype))


def _ours(q, k, scale, pb, g, needs=(True, True, True, True)):
    fwd, bwd = _ops()
    needs = needs[:3] + (needs[3] and pb.bias is not None,)
    row = fwd(*pb.args(q, k, scale))
    return (row,) + tuple(bwd(g.to(row.dtype), *pb.args(q, k, scale), row, *needs))


def _oracle(q, k, scale, pb, g, compute_dtype=None):
    """row_loss and the gradients of <g, row_loss> (finite rows only) w.r.t. q, k, scale and
    bias, in float64 unless compute_dtype is given (the naive baseline)."""
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, scale)]
    bias = None if pb.bias is None else pb.bias.detach().clone().requires_grad_()
    pb = dataclasses.replace(pb, bias=bias)
    row = pairwise_sigmoid_reference(*pb.args(*leaves), compute_dtype=compute_dtype)
    inputs = leaves + ([bias] if bias is not None else [])
    grads = torch.autograd.grad(row, inputs, grad_outputs=g.to(row.dtype) * torch.isfinite(row),
                                allow_unused=True)
    grads = [torch.zeros_like(x) if gr is None else gr for x, gr in zip(inputs, grads)]
    if bias is None:
        grads.append(torch.empty(0, dtype=row.dtype))
    return (row.detach(),) + tuple(grads)


def _ours_and_oracle(q, k, scale, pb, g, dtype):
    """Ours and the float64 oracle; rows of infinite loss (a positive at bias -inf) get no
    gradient in the oracle (g masked), nor in ours."""
    ours = list(_ours(q, k, scale.to(_acc(dtype)), pb.to(_acc(dtype)), g))
    oracle = _oracle(q.double(), k.double(), scale.double(), pb.to(torch.float64), g)
    row_live = torch.isfinite(oracle[0])
    if not bool(row_live.all()):
        ours[1:] = _ours(q, k, scale.to(_acc(dtype)), pb.to(_acc(dtype)), g * row_live)[1:]
    return ours, oracle


def _check(q, k, scale, pb, gen, dtype):
    g = torch.randn(q.shape[0], generator=gen, dtype=torch.float64)
    ours, oracle = _ours_and_oracle(q, k, scale, pb, g, dtype)
    for name, a in zip(NAMES, ours):
        expected = dtype if name in ("dq", "dk") else _acc(dtype)
        assert a.dtype == expected, name
    if dtype == torch.float64:
        for name, a, b in zip(NAMES, ours, oracle):
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12, msg=name)
        return
    naive = _oracle(q, k, scale.to(dtype), pb.to(dtype), g, compute_dtype=dtype)
    for name, a, b, c in zip(NAMES, ours, oracle, naive):
        assert_close(name, a, b, c, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("opt", OPTS, ids=lambda o: o.id)
def test_matches_oracle(opt, dtype):
    for n, m, d in SHAPES:  # one item per (option, dtype): each shape is a few small calls
        q, k, gen = make_inputs(n, m, d, dtype)
        pb = Problem.make(opt, n, m, gen)
        _check(q, k, torch.tensor(opt.scale, dtype=torch.float64), pb, gen, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("opt", [OPT["self"], OPT["all"]], ids=lambda o: o.id)
def test_low_precision_matches_oracle(opt, dtype):
    for n, m, d in SHAPES[2:]:
        q, k, gen = make_inputs(n, m, d, dtype)
        pb = Problem.make(opt, n, m, gen)
        _check(q, k, torch.tensor(opt.scale, dtype=torch.float64), pb, gen, dtype)


def test_empty_shapes():
    for n, m, d in [(0, 5, 3), (4, 0, 3), (0, 0, 2), (4, 5, 0), (7, 3, 0)]:
        q, k, gen = make_inputs(n, m, d, torch.float32)
        pb = Problem.make(OPT["all"], n, m, gen)
        _check(q, k, torch.tensor(3.0, dtype=torch.float64), pb, gen, torch.float32)


def test_strided_inputs():
    q, k, gen = make_inputs(80, 70, 40, torch.float32)
    qs, ks = q.t().contiguous().t(), k.repeat_interleave(2, dim=1)[:, ::2]  # column-major, stride 2
    assert not qs.is_contiguous() and not ks.is_contiguous()
    pb = Problem.make(OPT["all"], 80, 70, gen)
    g = torch.randn(80, generator=gen)
    a = _ours(q, k, torch.tensor(5.0), pb.to(torch.float32), g)
    b = _ours(qs, ks, torch.tensor(5.0), pb.to(torch.float32), g)
    for name, x, y in zip(NAMES, a, b):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_nan_and_inf_follow_the_oracle(dtype):
    """NaN in q / k / bias / scale, +-inf bias and inf entries: NaN exactly where the oracle
    has NaN (never a silent finite value), the same infinities, finite values close."""
    n, m, d = 37, 41, 19
    cases = []
    for what in ("q", "k", "bias", "q_inf", "bias_inf", "scale"):
        q, k, gen = make_inputs(n, m, d, dtype)
        pb = Problem.make(OPT["labels_self"], n, m, gen).to(_acc(dtype))
        scale = torch.tensor(4.0, dtype=_acc(dtype))
        if what == "q":
            q[3, 2] = NAN
        elif what == "k":
            k[5, 0] = NAN
        elif what == "bias":
            pb.bias[7] = NAN
        elif what == "q_inf":
            q[2, 1] = INF
        elif what == "bias_inf":
            pb.bias[8] = INF
        elif what == "scale":
            scale = torch.tensor(NAN, dtype=_acc(dtype))
        cases.append((what, q, k, scale, pb))
    for what, q, k, scale, pb in cases:
        ours, oracle = _ours_and_oracle(q, k, scale, pb, torch.ones(n, dtype=torch.float64), dtype)
        for name, a, b in zip(NAMES, ours, oracle):
            a, b = a.double(), b.double()
            assert torch.equal(a.isnan(), b.isnan()), f"{what}: {name} NaN pattern"
            assert torch.equal(a.isinf(), b.isinf()) and torch.equal(a[a.isinf()], b[b.isinf()]), \
                f"{what}: {name} infinities"
            fin = torch.isfinite(b)
            torch.testing.assert_close(a[fin], b[fin], rtol=1e-4, atol=1e-4, msg=f"{what}: {name}")


def test_need_subsets():
    """Every subset of (dq, dk, dscale, dbias): the same values as the full call, bitwise
    (dbias: one schedule whenever it is needed), empty outputs when not needed."""
    n, m, d = 130, 97, 24
    q, k, gen = make_inputs(n, m, d, torch.float32)
    pb = Problem.make(OPT["all"], n, m, gen).to(torch.float32)
    g = torch.randn(n, generator=gen)
    full = _ours(q, k, torch.tensor(7.0), pb, g)
    for needs in itertools.product((False, True), repeat=4):
        part = _ours(q, k, torch.tensor(7.0), pb, g, needs)
        for need, name, a, b in zip(needs, NAMES[1:], part[1:], full[1:]):
            if name == "dscale":
                assert torch.equal(a, b) if need else a.item() == 0.0, (needs, name)
            elif need:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{needs} {name}")
                if name == "dbias":
                    assert torch.equal(a, b), needs
            else:
                assert a.shape == (0,), (needs, name)


@pytest.mark.parametrize("opt", [OPT["all"], OPT["labels_self"]], ids=lambda o: o.id)
def test_gradcheck_float64(opt):
    """Through ops.pairwise_sigmoid(backend="cpu"): the fake / autograd registration of the
    spec over our kernels, bias included (finite biases: gradcheck needs finite losses)."""
    n, m = 14, 23  # several row and key blocks of the small-problem tiling
    q, k, gen = make_inputs(n, m, 3, torch.float64)
    pb = Problem.make(dataclasses.replace(opt, bias=False), n, m, gen)
    bias = torch.randn(m, generator=gen, dtype=torch.float64).requires_grad_()
    scale = torch.tensor(opt.scale, dtype=torch.float64, requires_grad=True)

    def f(q, k, scale, bias):
        return ops.pairwise_sigmoid(q, k, scale, bias, q_labels=pb.q_labels, k_labels=pb.k_labels,
                                    self_offset=pb.self_offset, normalize=pb.normalize,
                                    backend="cpu")

    assert torch.autograd.gradcheck(f, (q.requires_grad_(), k.requires_grad_(), scale, bias))


@pytest.mark.parametrize("opt", [OPT["all"], OPT["self"]], ids=lambda o: o.id)
def test_thread_count_does_not_change_results(opt):
    n, m = 700, 530  # several row and key blocks at full tile size
    q, k, gen = make_inputs(n, m, 40, torch.float32)
    pb = Problem.make(opt, n, m, gen).to(torch.float32)
    g = torch.linspace(-1, 1, n)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _ours(q, k, torch.tensor(6.0), pb, g)
        torch.set_num_threads(2)
        two = _ours(q, k, torch.tensor(6.0), pb, g)
        again = _ours(q, k, torch.tensor(6.0), pb, g)
    finally:
        torch.set_num_threads(before)
    for name, a, b, c in zip(NAMES, one, two, again):
        assert torch.equal(a, b) and torch.equal(b, c), name


@pytest.mark.parametrize("kernel_set", ["avx2+fma", "baseline"])
def test_kernel_set_matches_oracle(kernel_set):
    """Both kernel sets (CONTRASTIVE_KERNELS_CPU_KERNEL / set_cpu_kernel pick one): the
    AVX2 log1p polynomial and the baseline's libm log1p both against the oracle, also at
    |logit| ~ 10-30 where softplus(-|x|) ~ e and log(1 + e) would have lost it."""
    _C = _extension._C
    if kernel_set not in _C.cpu_kernels():
        pytest.skip(f"kernel set {kernel_set} is not runnable here ({_C.cpu_kernels()})")
    previous = _C.set_cpu_kernel(kernel_set)
    try:
        for opt, scale in ((OPT["all"], 7.0), (OPT["self"], 30.0)):
            n, m, d = 97, 130, 64
            q, k, gen = make_inputs(n, m, d, torch.float32)
            pb = Problem.make(opt, n, m, gen)
            _check(q, k, torch.tensor(scale, dtype=torch.float64), pb, gen, torch.float32)
        assert _C.build_info()["cpu_kernel"] == kernel_set
    finally:
        _C.set_cpu_kernel(previous)


def test_output_contract_and_bad_arguments():
    q, k, _ = make_inputs(6, 4, 3, torch.bfloat16)
    fwd, bwd = _ops()
    s = torch.tensor(2.0)
    row = fwd(q, k, s, None, None, None, 0, True, EPS)
    assert row.dtype == torch.float32 and row.shape == (6,)
    dq, dk, ds, db = bwd(torch.ones(6), q, k, s, None, None, None, 0, True, EPS, row,
                         False, True, False, False)
    assert dq.shape == (0,) and dq.dtype == torch.bfloat16
    assert dk.shape == (4, 3) and dk.dtype == torch.bfloat16 and dk.is_contiguous()
    assert ds.dim() == 0 and ds.dtype == torch.float32 and ds.item() == 0.0
    assert db.shape == (0,) and db.dtype == torch.float32
    bias = torch.zeros(4)
    *_, db = bwd(torch.ones(6), q, k, s, bias, None, None, 0, True, EPS, row,
                 False, False, False, True)
    assert db.shape == (4,) and db.dtype == torch.float32
    with pytest.raises(RuntimeError, match="pairwise_sigmoid_native: k must be 2-D"):
        fwd(q, k[0], s, None, None, None, None, False, EPS)
    with pytest.raises(RuntimeError, match=r"k_labels must have shape \[4\]"):
        fwd(q, k, s, None, torch.zeros(6, dtype=torch.long), torch.zeros(3, dtype=torch.long),
            None, False, EPS)
    with pytest.raises(RuntimeError, match=r"grad_row_loss must have shape \[N\] = \[6\]"):
        bwd(torch.ones(4), q, k, s, None, None, None, 0, True, EPS, row, True, True, True, False)
    with pytest.raises(RuntimeError, match="row_loss must be floating point"):
        bwd(torch.ones(6), q, k, s, None, None, None, 0, True, EPS, torch.zeros(6, dtype=torch.long),
            True, True, True, False)
