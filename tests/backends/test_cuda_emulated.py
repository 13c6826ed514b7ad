"""Backend ``cuda`` on CPU tensors: the CUDA kernel source (csrc/cuda/lse_kernels.cuh)
compiled for the host against the emulation layer and run through the op pair
contrastive_kernels::lse_cuda_emulated / _backward under CONTRASTIVE_KERNELS_CUDA_EMULATE=1.

The whole oracle table, float64 gradcheck, opcheck on the emulated ops, and the edges of
the contract (NaN / inf, empty key sets, strides, unaligned rows, d over several chunks,
determinism). With a CUDA device, a part of the table also runs on the device kernels
(``gpu`` marker; skipped here)."""

import math

import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels import _extension
from contrastive_kernels.backends import cuda as cuda_backend
from contrastive_kernels.backends import registry
from contrastive_kernels.backends.reference import lse_reference
from contrastive_kernels.testing.core_cases import DTYPES, OPTIONS, SHAPES, make_inputs
from contrastive_kernels.testing.core_check import (check_against_oracle, fused, gradcheck_float64,
                                                   lse_and_grads, oracle_case)

pytestmark = pytest.mark.skipif(cuda_backend.emulated_ops is None,
                                reason=f"emulated CUDA ops not built: {_extension.LOAD_ERROR}")


@pytest.fixture(autouse=True)
def _emulate(monkeypatch):
    monkeypatch.setenv(cuda_backend.EMULATE_VAR, "1")


@pytest.mark.parametrize("shape", [(130, 70, 300), (65, 129, 40), (65, 700, 40)],
                         ids=["d300", "tails", "key_splits"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_oracle_larger_tiles(shape, dtype):
    check_against_oracle("cuda", *shape, dtype, OPTIONS[-1])


def _args(dtype=torch.float32, n=5, m=7, d=6, labels=True):
    q, k, gen = make_inputs(n, m, d, dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    bias = torch.randn(m, generator=gen).to(acc)
    ql = torch.randint(0, 3, (n,), generator=gen) if labels else None
    kl = torch.randint(0, 3, (m,), generator=gen) if labels else None
    return q, k, torch.tensor(3.0, dtype=acc), bias, ql, kl


def _oracle(q, k, scale, **kw):
    return lse_reference(q.double(), k.double(), torch.tensor(float(scale), dtype=torch.float64),
                         kw.get("bias"), kw.get("q_labels"), kw.get("k_labels"),
                         kw.get("self_offset"), kw.get("normalize", False), 1e-12,
                         kw.get("exclude_positives", False), False)[0]


def test_nan_inf_and_empty_rows_across_key_splits():
    """Keys split into ranges merged per row (forward_key_splits): the same edge cases."""
    q = torch.randn(6, 8)
    k = torch.randn(300, 8)  # 5 key tiles: 2 ranges
    q[1, 3] = float("nan")
    bias = torch.zeros(300)
    bias[260] = float("inf")  # in the second range
    lse, o = ck.ops.lse(q, k, 1.0, bias=bias, backend="cuda", return_o=True)
    assert math.isnan(lse[1]) and torch.isposinf(lse[[0, 2, 3, 4, 5]]).all()
    kl = torch.zeros(300, dtype=torch.long)
    kl[:128] = 1  # row 0 (label 0) sees only the first range, rows of label 1 only the second
    ql = torch.tensor([0, 1, 0, 1, 2, 2])
    kl[:] = torch.where(torch.arange(300) < 128, 1, 0)
    lse, o = ck.ops.lse(q, k, 2.0, q_labels=ql, k_labels=kl, exclude_positives=True,
                        backend="cuda", return_o=True)
    ref = _oracle(q, k, 2.0, q_labels=ql, k_labels=kl, exclude_positives=True)
    ok = ~torch.isnan(ref)
    torch.testing.assert_close(lse[ok].double(), ref[ok], rtol=1e-5, atol=1e-5)
    kl[:] = 2  # rows of label 2 see no key at all
    lse, o = ck.ops.lse(q, k, 2.0, q_labels=ql, k_labels=kl, exclude_positives=True,
                        backend="cuda", return_o=True)
    assert torch.isneginf(lse[4:]).all() and torch.equal(o[4:], torch.zeros(2, 8))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_strided_and_unaligned_inputs(dtype):
    base_q = torch.randn(40, 75, dtype=torch.float64)
    base_k = torch.randn(90, 33, dtype=torch.float64).T  # [33, 90]: column-major rows
    q = base_q.to(dtype)[:, 1:71:2]                    # stride (75, 2), d = 35
    k = base_k.to(dtype)[:, 3:38]                      # stride (1, 33)
    q_c, k_c = q.contiguous(), k.contiguous()
    a, _ = ck.ops.lse(q, k, 2.0, normalize=True, self_offset=1, backend="cuda")
    b, _ = ck.ops.lse(q_c, k_c, 2.0, normalize=True, self_offset=1, backend="cuda")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    ref = _oracle(q, k, 2.0, normalize=True, self_offset=1)
    torch.testing.assert_close(a.double(), ref, rtol=1e-2 if dtype == torch.float16 else 1e-5,
                               atol=1e-2 if dtype == torch.float16 else 1e-5)
    # rows that start off a 16-byte boundary take the element-wise (non cp.async) path
    qu = (torch.randn(20, 65, dtype=torch.float64) / 8).to(dtype)[:, 1:]
    ku = (torch.randn(33, 64, dtype=torch.float64) / 8).to(dtype)
    c, _ = ck.ops.lse(qu, ku, 1.0, backend="cuda")
    torch.testing.assert_close(c.double(), _oracle(qu, ku, 1.0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_cp_async_partial_chunks(dtype):
    """16-byte aligned rows (cp.async) whose d ends inside a 16-byte copy (zero-filled)."""
    big_q = (torch.randn(70, 64, dtype=torch.float64) / 6).to(dtype)
    big_k = (torch.randn(90, 64, dtype=torch.float64) / 6).to(dtype)
    q, k = big_q[:, :37], big_k[:, :37]
    lse, o = ck.ops.lse(q, k, 3.0, backend="cuda", return_o=True, normalize=True)
    ref, o_ref = lse_reference(q.double(), k.double(), torch.tensor(3.0, dtype=torch.float64),
                               None, None, None, None, True, 1e-12, False, True)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(lse.double(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(o.double(), o_ref, rtol=tol, atol=tol)


def test_fp16_weights_out_of_range_are_rescaled():
    """fp16 second products: the weights p_ij rk_j pass 65504 when keys have tiny norms
    (rk ~ 1e5 here) and the dk weights g_i rq_i p_ij sink towards fp16 subnormals with small
    g; each row of the tile is scaled by its largest weight before the rounding to fp16, so
    o and the gradients stay finite and close to the float64 result on the same inputs."""
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(70, 16, generator=gen, dtype=torch.float64).to(torch.float16)
    k = (torch.randn(90, 16, generator=gen, dtype=torch.float64) * 2e-6).to(torch.float16)
    g = torch.randn(70, generator=gen, dtype=torch.float64) * 1e-3
    outs = []
    for backend, dtype in (("cuda", torch.float16), ("torch", torch.float64)):
        qq = q.to(dtype).requires_grad_()
        kk = k.to(dtype).requires_grad_()
        lse, o = ck.ops.lse(qq, kk, 3.0, normalize=True, return_o=True, backend=backend)
        gq, gk = torch.autograd.grad(lse, (qq, kk), grad_outputs=g.to(lse.dtype))
        outs.append((o, gq, gk))
    for name, ours, ref in zip(("o", "dq", "dk"), *outs):
        assert torch.isfinite(ours).all(), name
        mag = float(ref.abs().max())
        assert float((ours.double() - ref).abs().max()) <= 1e-2 * mag, name


SPLITS_VAR = "CONTRASTIVE_KERNELS_CUDA_SPLITS"


@pytest.mark.parametrize("splits", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_forced_splits_against_oracle(monkeypatch, splits, dtype):
    """Forward key ranges and both backward grids split into 1, 2 or 3 ranges (the dq grid
    over keys, the dk grid over rows, partial slices summed in order): every output within
    the oracle's tolerance, tails included (190 rows, 200 keys: 3 / 4 tiles)."""
    monkeypatch.setenv(SPLITS_VAR, str(splits))
    check_against_oracle("cuda", 190, 200, 40, dtype, OPTIONS[-1])
    check_against_oracle("cuda", 70, 130, 24, dtype, OPTIONS[1])


def _lse_and_grads(q, k, scale, **kw):
    qq, kk = q.clone().requires_grad_(), k.clone().requires_grad_()
    ss = scale.clone().requires_grad_()
    lse, _ = ck.ops.lse(qq, kk, ss, backend="cuda", **kw)
    w = torch.linspace(-1, 2, lse.shape[0], dtype=lse.dtype)
    gq, gk, gs = torch.autograd.grad((lse * w).sum(), (qq, kk, ss))
    return lse, gq, gk, gs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_split_backward_is_bitwise_deterministic(monkeypatch, dtype):
    """Each split count gives bitwise-identical results from run to run (no atomics, the
    partial slices and the dscale partials added in a fixed order); different split counts
    agree to rounding."""
    q, k, _ = make_inputs(130, 200, 40, dtype)
    scale = torch.tensor(6.0)
    results = {}
    for splits in (1, 2, 3):
        monkeypatch.setenv(SPLITS_VAR, str(splits))
        a = _lse_and_grads(q, k, scale, normalize=True, self_offset=0)
        b = _lse_and_grads(q, k, scale, normalize=True, self_offset=0)
        for x, y in zip(a, b):
            assert torch.equal(x, y)
        results[splits] = a
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
    for splits in (2, 3):
        for x, y in zip(results[1], results[splits]):
            torch.testing.assert_close(x.float(), y.float(), **tol)


def test_forced_splits_ignore_invalid_values(monkeypatch):
    q, k, _ = make_inputs(20, 70, 8, torch.float32)
    ref = ck.ops.lse(q, k, 2.0, backend="cuda")[0]
    for value in ("0", "-3", "x", "", "1000"):  # the shape rule, or clamped to the tiles
        monkeypatch.setenv(SPLITS_VAR, value)
        torch.testing.assert_close(ck.ops.lse(q, k, 2.0, backend="cuda")[0], ref)


@pytest.mark.parametrize("opt", [OPTIONS[0], OPTIONS[-1]], ids=lambda o: o.id)
def test_tf32_logits_follow_matmul_precision(set_matmul_precision, opt):
    """fp32 logits and second products run on mma.sync.m16n8k8 tf32 when torch's fp32
    matmul precision allows tf32 ("high" / "medium"), on the exact FMA path under
    "highest": the two differ on random data, "highest" meets the fp32 oracle tolerances,
    "high" a tf32 tolerance."""
    n, m, d = 97, 130, 64
    q, k, scale, kw, weights, oracle = oracle_case(n, m, d, torch.float32, opt)
    set_matmul_precision("highest")
    exact = lse_and_grads(fused("cuda"), q, k, scale, kw, weights)
    check_against_oracle("cuda", n, m, d, torch.float32, opt)
    set_matmul_precision("high")
    tf32 = lse_and_grads(fused("cuda"), q, k, scale, kw, weights)
    assert not torch.equal(exact[0], tf32[0])
    outputs = ((0, "lse"), (2, "dq"), (3, "dk"), (4, "dscale"))
    outputs += ((1, "o"),) if opt.return_o else ()
    for i, name in outputs:
        ref = oracle[i].double()
        live = torch.isfinite(ref)
        mag = max(1.0, float(ref[live].abs().max()))
        err_tf32 = float((tf32[i].double() - ref)[live].abs().max())
        err_exact = float((exact[i].double() - ref)[live].abs().max())
        # operands rounded to 10 mantissa bits: logits off by ~ scale * 2^-11 * |q| |k|
        assert err_tf32 <= 2.0 ** -10 * opt.scale * mag, (name, err_tf32)
        assert err_exact <= 1e-4 * mag, (name, err_exact)
    assert float((tf32[0] - exact[0]).abs().max()) > 1e-5  # tf32 rounding shows
    set_matmul_precision("medium")
    medium = lse_and_grads(fused("cuda"), q, k, scale, kw, weights)
    for a, b in zip(tf32, medium):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)


def test_tf32_leaves_other_dtypes_alone(set_matmul_precision):
    for dtype in (torch.float64, torch.bfloat16):
        q, k, _ = make_inputs(40, 70, 16, dtype)
        set_matmul_precision("highest")
        a = ck.ops.lse(q, k, 3.0, backend="cuda", return_o=True)
        set_matmul_precision("high")
        b = ck.ops.lse(q, k, 3.0, backend="cuda", return_o=True)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_selection_rules(monkeypatch):
    q = torch.randn(3, 4)
    assert registry.auto_order().index("triton") < registry.auto_order().index("cuda")
    assert cuda_backend.BACKEND.auto_devices == ("cuda",)
    # auto on CPU tensors never picks cuda, even when emulating
    assert registry.select("auto", q, ck.core.contract.CoreOptions()).name != "cuda"
    monkeypatch.setenv(cuda_backend.EMULATE_VAR, "0")
    with pytest.raises(ck.BackendError, match="CUDA_EMULATE"):
        ck.ops.lse(q, q, backend="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("opt", [OPTIONS[0], OPTIONS[-1]], ids=lambda o: o.id)
def test_oracle_on_device(cuda_device, dtype, opt):
    if cuda_backend.BACKEND.not_supported_reasons(cuda_device, dtype, None,
                                                  ck.core.contract.CoreOptions()):
        pytest.skip("backend cuda cannot run on this device")
    for shape in [(97, 61, 3), (130, 257, 64), (65, 700, 40)]:
        check_against_oracle("cuda", *shape, dtype, opt, device=cuda_device)


@pytest.mark.gpu
@pytest.mark.parametrize("where", ["query", "key"])
def test_subnormal_rows_on_device(cuda_device, where):
    """A row of fp32 subnormals under normalize, on the device: the 1/eps branch of the
    normalization Jacobian, as the float64 oracle (flush-to-zero, or an overflowing 1 / max
    in the inverse norms, gave 0)."""
    from contrastive_kernels.testing.core_check import lse_grad
    gen = torch.Generator().manual_seed(3)
    q, k = torch.randn(37, 24, generator=gen), torch.randn(45, 24, generator=gen)
    x = q if where == "query" else k
    x[5] = torch.randn(24, generator=gen) * 1e-40
    for wrt in ("q", "k"):
        want = lse_grad("reference", q.double(), k.double(), wrt=wrt, normalize=True).float()
        got = lse_grad("cuda", q.to(cuda_device), k.to(cuda_device), wrt=wrt, normalize=True)
        torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-5)
