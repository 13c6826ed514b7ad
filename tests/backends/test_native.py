"""The C++ CPU backend (csrc/cpu/): registration, the C++ argument checks, and the
symmetric (q is k) path: opcheck, the oracle, gradcheck, agreement with the general path,
determinism across runs and thread counts, the memory invariant. What every backend must
do (schemas, opcheck, the oracle table, output contract, special values, determinism, no
N x M allocation) is tests/core/test_conformance.py."""

import math

import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels import _extension, ops, reference
from contrastive_kernels.backends import native, registry
from contrastive_kernels.core.contract import CoreOptions
from contrastive_kernels.testing.measure import record_cpu_allocations
from contrastive_kernels.testing.core_cases import OPTIONS, Options, make_inputs
from contrastive_kernels.testing.tolerance import assert_close

pytestmark = pytest.mark.skipif(native.BACKEND.available() is not None,
                                reason=f"cpu backend unavailable: {native.BACKEND.available()}")
forward_op, backward_op = _extension.native_ops or (None, None)

NS = "contrastive_kernels"


def _lse_grads(backend, q, k, scale, kw, weights):
    """lse, o and the grads of <weights, lse> w.r.t. q, k, scale (q, k may share storage)."""
    q = q.detach().requires_grad_()
    k = k.detach().requires_grad_()
    scale = scale.detach().requires_grad_()
    if backend == "oracle":
        lse, o = reference.lse_reference(
            q, k, scale, kw.get("bias"), kw.get("q_labels"), kw.get("k_labels"),
            kw.get("self_offset"), kw.get("normalize", False), 1e-12,
            kw.get("exclude_positives", False), kw.get("return_o", False),
            compute_dtype=kw.get("compute_dtype"))
    else:
        lse, o = ck.ops.lse(q, k, scale, backend=backend,
                            **{n: v for n, v in kw.items() if n != "compute_dtype"})
    live = torch.isfinite(lse)
    grads = torch.autograd.grad(lse, (q, k, scale), grad_outputs=weights.to(lse.dtype) * live)
    return (lse.detach(), o) + tuple(grads)


# --------------------------------------------------------------------------- registration


def test_backend_is_registered_and_picked_for_cpu_tensors():
    assert ck.available_backends()["cpu"] is None
    q, k, _ = make_inputs(5, 6, 4, torch.float32)
    opts = CoreOptions(normalize=True)
    assert registry.select("auto", q, opts).name == "cpu"
    reasons = native.BACKEND.not_supported_reasons(torch.device("meta"), torch.float32, 4, opts)
    assert "takes cpu tensors" in " ".join(reasons)


def _op_args(opt, n, m, d, dtype, same_rows=False):
    q, k, gen = make_inputs(n, m, d, dtype)
    if same_rows:
        k = q
    acc = ops.accumulate_dtype(dtype)
    kw = opt.kwargs(n, m, "cpu", acc, gen)
    if same_rows and "q_labels" in kw:
        kw["k_labels"] = kw["q_labels"]
    return (q.requires_grad_(), k if same_rows else k.requires_grad_(),
            torch.tensor(opt.scale, dtype=acc, requires_grad=True), kw.get("bias"),
            kw.get("q_labels"), kw.get("k_labels"), kw.get("self_offset"),
            kw.get("normalize", False), 1e-12, kw.get("exclude_positives", False),
            kw.get("return_o", False))


SYM_LABELS = Options("labels_sym", normalize=True, self_offset=0, labels=True, return_o=True,
                     scale=7.0)
# (options, dtype, q and k the same tensor: the symmetric kernels; the general ones are
# opchecked by tests/core/test_conformance.py)
OPCHECK_CASES = [(OPTIONS[2], torch.float32, True), (SYM_LABELS, torch.float64, True)]


@pytest.mark.parametrize("opt,dtype,same_rows", OPCHECK_CASES,
                         ids=[f"{o.id}-{str(dt)[6:]}{'-sym' if sym else ''}"
                              for o, dt, sym in OPCHECK_CASES])
def test_opcheck_symmetric(opt, dtype, same_rows):
    args = _op_args(opt, 7, 7 if same_rows else 11, 5, dtype, same_rows)
    torch.library.opcheck(forward_op, args)
    lse, _ = forward_op(*args)
    detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args[:-1])
    if same_rows:
        detached = (detached[0], detached[0]) + detached[2:]
    for needs in ((True, True, True), (True, False, False), (False, True, True)):
        bwd = (torch.randn_like(lse),) + detached + (lse.detach(),) + needs
        torch.library.opcheck(backward_op, bwd)


def test_bad_arguments_name_the_argument():
    q, k, _ = make_inputs(3, 4, 5, torch.float32)
    s = torch.tensor(1.0)
    with pytest.raises(RuntimeError, match="q must be 2-D"):
        forward_op(q[0], k, s, None, None, None, None, False, 1e-12, False, False)
    with pytest.raises(RuntimeError, match="bias must have shape"):
        forward_op(q, k, s, torch.zeros(3), None, None, None, False, 1e-12, False, False)
    with pytest.raises(RuntimeError, match="k_labels must be an integer"):
        forward_op(q, k, s, None, torch.zeros(3, dtype=torch.long), torch.zeros(4), None,
                        False, 1e-12, True, False)
    with pytest.raises(RuntimeError, match="eps must be > 0"):
        forward_op(q, k, s, None, None, None, None, True, 0.0, False, False)
    with pytest.raises(RuntimeError, match="grad_lse must have shape"):
        backward_op(torch.zeros(2), q, k, s, None, None, None, None, False, 1e-12, False,
                         torch.zeros(3), True, True, True)


# --------------------------------------------------------------------------- symmetric path

# q and k the same rows: the kernels compute each off-diagonal tile once for both sides.
# Shapes give one block, an odd number of blocks (a bye per round) and an even one (500).
SYM_SHAPES = [(1, 3), (97, 33), (300, 64), (500, 16)]
SYM_OPTIONS = [o for o in OPTIONS if not o.bias and o.self_offset in (None, 0)] + [SYM_LABELS]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SYM_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("opt", SYM_OPTIONS, ids=lambda o: o.id)
def test_symmetric_path_matches_oracle(dtype, shape, opt):
    n, d = shape
    q, _, gen = make_inputs(n, n, d, dtype)
    acc = ops.accumulate_dtype(dtype)
    kw = opt.kwargs(n, n, "cpu", acc, gen)
    if "q_labels" in kw:
        kw["k_labels"] = kw["q_labels"]  # symmetric exclusion
    weights = torch.randn(n, generator=gen, dtype=torch.float64)
    scale = torch.tensor(opt.scale, dtype=torch.float64)
    ours = _lse_grads("cpu", q, q, scale.to(acc), kw, weights)
    oracle = _lse_grads("oracle", q.double(), q.double(), scale, kw, weights)
    checked = (("lse", 0), ("dq", 2), ("dk", 3), ("dscale", 4)) + ((("o", 1),) if opt.return_o else ())
    if dtype == torch.float64:  # the naive float64 loss is the oracle itself: plain tolerance
        for name, i in checked:
            torch.testing.assert_close(ours[i], oracle[i], rtol=1e-11, atol=1e-12, msg=name)
        return
    naive = _lse_grads("oracle", q, q, scale.to(dtype), dict(kw, compute_dtype=dtype), weights)
    for name, i in checked:
        assert_close(name, ours[i], oracle[i], naive[i], dtype)


def test_symmetric_wide_logit_range_matches_oracle():
    """Row norms over three decades: tiles too wide for one shared pivot (forward) or one
    shared lse reference (backward) take the two-exponential path."""
    n = 300
    q, _, gen = make_inputs(n, n, 16, torch.float32)
    q = q * torch.logspace(-2, 1, n)[torch.randperm(n, generator=gen)][:, None]
    labels = torch.randint(0, 5, (n,), generator=gen)
    weights = torch.randn(n, generator=gen, dtype=torch.float64)
    scale = torch.tensor(20.0)
    for kw in (dict(self_offset=0), dict(self_offset=0, q_labels=labels, k_labels=labels,
                                         exclude_positives=True)):
        ours = _lse_grads("cpu", q, q, scale, kw, weights)
        oracle = _lse_grads("oracle", q.double(), q.double(), scale.double(), kw, weights)
        naive = _lse_grads("oracle", q, q, scale, dict(kw, compute_dtype=torch.float32), weights)
        for name, i in (("lse", 0), ("dq", 2), ("dk", 3), ("dscale", 4)):
            assert_close(name, ours[i], oracle[i], naive[i], torch.float32)


@pytest.mark.parametrize("opt", [OPTIONS[1], SYM_OPTIONS[-1]], ids=lambda o: o.id)
def test_gradcheck_symmetric_float64(opt):
    n = 36  # three blocks of the symmetric kernels: pairs and byes
    q, _, gen = make_inputs(n, n, 2, torch.float64)
    kw = opt.kwargs(n, n, "cpu", torch.float64, gen)
    if "q_labels" in kw:
        kw["k_labels"] = kw["q_labels"]
    kw["return_o"] = False
    scale = torch.tensor(opt.scale, dtype=torch.float64, requires_grad=True)

    def f(x, s):
        lse, _ = ck.ops.lse(x, x, s, backend="cpu", **kw)
        return torch.where(torch.isfinite(lse), lse, 0.0)

    assert torch.autograd.gradcheck(f, (q.requires_grad_(), scale))


def test_symmetric_and_general_paths_agree():
    q, _, gen = make_inputs(333, 333, 24, torch.float32)
    labels = torch.randint(0, 7, (333,), generator=gen)
    kw = dict(normalize=True, self_offset=0, q_labels=labels, k_labels=labels,
              exclude_positives=True, return_o=True)
    weights = torch.randn(333, generator=gen, dtype=torch.float64)
    scale = torch.tensor(10.0)
    sym = _lse_grads("cpu", q, q, scale, kw, weights)
    general = _lse_grads("cpu", q, q.clone(), scale, kw, weights)  # another pointer: general path
    for a, b in zip(sym, general):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)


# --------------------------------------------------------------------------- determinism


def _fwd_bwd(q, k, **kw):
    return _lse_grads("cpu", q, k, torch.tensor(5.0), kw, torch.linspace(-1, 1, q.shape[0]))


def test_symmetric_bitwise_repeatable():
    q, _, _ = make_inputs(700, 1, 40, torch.float32)
    kw = dict(normalize=True, self_offset=0)
    first, second = _fwd_bwd(q, q, **kw), _fwd_bwd(q, q, **kw)
    for a, b in zip(first, second):
        assert (a is None and b is None) or torch.equal(a, b)


def test_symmetric_thread_count_does_not_change_results():
    q, _, _ = make_inputs(700, 1, 40, torch.float32)
    k, kw = q, dict(normalize=True, self_offset=0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _fwd_bwd(q, k, **kw)
        torch.set_num_threads(2)
        two = _fwd_bwd(q, k, **kw)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two):
        if a is None:
            continue
        torch.testing.assert_close(a, b)  # the contract: fp32 tolerance
        # and what the kernels guarantee: tile shapes and accumulation orders depend on
        # the problem shape only, so the bits are the same for any thread count
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- memory


def test_symmetric_memory_invariant_no_n_by_n():
    """Forward + backward of the symmetric kernels at N = 4096 allocate nothing of N x N
    bytes (so no N x N matrix of any dtype); the same probe sees the reference's."""
    n, d = 4096, 64
    q, _, _ = make_inputs(n, n, d, torch.float32)

    def largest_allocation(backend):
        qq = q.detach().requires_grad_()
        kk = qq
        with record_cpu_allocations() as record:
            lse, _ = ck.ops.lse(qq, kk, 10.0, normalize=True, self_offset=0, backend=backend)
            lse.sum().backward()
        return record.largest

    fused = largest_allocation("cpu")
    assert fused < n * n, f"cpu backend allocated {fused} bytes >= N*N = {n * n}"
    naive = largest_allocation("reference")
    assert naive >= n * n * 4, "the probe failed to see the reference's N x N float matrix"
