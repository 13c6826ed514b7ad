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
from contrastive_kernels.testing.core_check import check_against_oracle, gradcheck_float64

pytestmark = pytest.mark.skipif(cuda_backend.emulated_ops is None,
                                reason=f"emulated CUDA ops not built: {_extension.LOAD_ERROR}")


@pytest.fixture(autouse=True)
def _emulate(monkeypatch):
    monkeypatch.setenv(cuda_backend.EMULATE_VAR, "1")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("opt", OPTIONS, ids=lambda o: o.id)
def test_oracle_table(dtype, shape, opt):
    check_against_oracle("cuda", *shape, dtype, opt)


@pytest.mark.parametrize("shape", [(130, 70, 300), (65, 129, 40), (65, 700, 40)],
                         ids=["d300", "tails", "key_splits"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_oracle_larger_tiles(shape, dtype):
    check_against_oracle("cuda", *shape, dtype, OPTIONS[-1])


@pytest.mark.parametrize("opt", OPTIONS, ids=lambda o: o.id)
def test_gradcheck_float64(opt):
    assert gradcheck_float64("cuda", opt)


def _args(dtype=torch.float32, n=5, m=7, d=6, labels=True):
    q, k, gen = make_inputs(n, m, d, dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    bias = torch.randn(m, generator=gen).to(acc)
    ql = torch.randint(0, 3, (n,), generator=gen) if labels else None
    kl = torch.randint(0, 3, (m,), generator=gen) if labels else None
    return q, k, torch.tensor(3.0, dtype=acc), bias, ql, kl


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_opcheck(dtype):
    fwd, bwd = cuda_backend.emulated_ops
    q, k, scale, bias, ql, kl = _args(dtype)
    fwd_args = (q, k, scale, bias, ql, kl, 1, True, 1e-12, True, True)
    torch.library.opcheck(fwd, fwd_args)
    lse, _ = fwd(*fwd_args)
    g = torch.randn_like(lse)
    torch.library.opcheck(bwd, (g, q, k, scale, bias, ql, kl, 1, True, 1e-12, True, lse,
                                True, True, True))
    if dtype != torch.bfloat16:
        qg, kg = q.clone().requires_grad_(), k.clone().requires_grad_()
        sg = scale.clone().requires_grad_()
        torch.library.opcheck(fwd, (qg, kg, sg, bias, ql, kl, 1, True, 1e-12, True, False))


def _oracle(q, k, scale, **kw):
    return lse_reference(q.double(), k.double(), torch.tensor(float(scale), dtype=torch.float64),
                         kw.get("bias"), kw.get("q_labels"), kw.get("k_labels"),
                         kw.get("self_offset"), kw.get("normalize", False), 1e-12,
                         kw.get("exclude_positives", False), False)[0]


def test_nan_inf_and_empty_rows():
    q = torch.randn(6, 8)
    k = torch.randn(5, 8)
    q[1, 3] = float("nan")
    bias = torch.zeros(5)
    bias[2] = float("inf")
    lse, _ = ck.ops.lse(q, k, 1.0, bias=bias, backend="cuda")
    assert math.isnan(lse[1])
    assert torch.isposinf(lse[[0, 2, 3, 4, 5]]).all()
    # labels that exclude every key of row 0: only that row is -inf and gets no gradient
    ql = torch.tensor([7, 0, 1, 0, 1, 0])
    kl = torch.tensor([7, 7, 7, 7, 7])
    qr = torch.randn(6, 8, requires_grad=True)
    lse, _ = ck.ops.lse(qr, k, 2.0, q_labels=ql, k_labels=kl, exclude_positives=True,
                        backend="cuda")
    assert torch.isneginf(lse[0]) and torch.isfinite(lse[1:]).all()
    torch.where(torch.isfinite(lse), lse, 0.0).sum().backward()
    assert torch.equal(qr.grad[0], torch.zeros(8)) and torch.isfinite(qr.grad).all()


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


def test_empty_key_set_and_empty_batch():
    lse, o = ck.ops.lse(torch.randn(3, 4), torch.randn(0, 4), backend="cuda", return_o=True)
    assert torch.isneginf(lse).all() and torch.equal(o, torch.zeros(3, 4))
    lse, _ = ck.ops.lse(torch.randn(0, 4), torch.randn(3, 4), backend="cuda")
    assert lse.shape == (0,)


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


def test_backward_is_deterministic():
    q, k, gen = make_inputs(70, 90, 40, torch.bfloat16)
    scale = torch.tensor(5.0, requires_grad=True)
    outs = []
    for _ in range(2):
        qq, kk = q.clone().requires_grad_(), k.clone().requires_grad_()
        lse, _ = ck.ops.lse(qq, kk, scale, normalize=True, backend="cuda")
        gq, gk, gs = torch.autograd.grad(lse.sum(), (qq, kk, scale))
        outs.append((lse, gq, gk, gs))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


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
