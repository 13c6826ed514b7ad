"""Triton backend: the streamed side split across programs (key_split.py, issue 10).

Under the interpreter the automatic choice is S = 1; these tests force S ranges with
CONTRASTIVE_KERNELS_TRITON_KEY_SPLITS and compare against the float64 oracle, against the
unsplit kernels, and check the merge's edge semantics and determinism. The interpreter's
tiles are 64 x 64 (configs.INTERPRET), so M = 150 keys are 3 key tiles: S = 2 gives two
ranges of 2 tiles (the second one runs past M, masked), S = 3 one tile each.
"""

import math

import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels import reference
from contrastive_kernels.testing.core_cases import OPTIONS, covering, make_inputs
from contrastive_kernels.testing.core_check import (acc_dtype, check_against_oracle, fused,
                                                    lse_and_grads)

pytest.importorskip("triton")
from contrastive_kernels.backends import triton as ck_triton  # noqa: E402
from contrastive_kernels.backends.triton import _ops, key_split  # noqa: E402

pytestmark = pytest.mark.skipif(ck_triton.unavailable_reason() is not None,
                                reason=f"triton backend unavailable: {ck_triton.unavailable_reason()}")

OPT = {o.id: o for o in OPTIONS}
ENV = key_split.SPLITS_ENV
ALL_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def _run(monkeypatch, splits, q, k, scale, kw, weights):
    monkeypatch.setenv(ENV, str(splits))
    return lse_and_grads(fused("triton"), q, k,
                         torch.tensor(scale, dtype=acc_dtype(q.dtype), device=q.device), kw,
                         weights)


def _case(n, m, d, dtype, opt, seed=0):
    q, k, gen = make_inputs(n, m, d, dtype, seed=seed)
    kw = OPT[opt].kwargs(n, m, "cpu", acc_dtype(dtype), gen)
    weights = torch.randn(n, generator=gen, dtype=torch.float64)
    return q, k, OPT[opt].scale, kw, weights


def _assert_near_unsplit(split, unsplit, dtype):
    """Split and unsplit differ only by the order of the fp32 (fp64) sums."""
    tol = {torch.float64: 1e-12, torch.float32: 2e-5}.get(dtype, 4e-3)
    for name, a, b in zip(("lse", "o", "dq", "dk", "dscale"), split, unsplit):
        if a is None:
            assert b is None
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, name
        torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol, msg=name)


# --------------------------------------------------------------------------- split rule


def test_split_rule():
    rule = key_split.choose_splits
    # N = 4096 rows of 128: 32 programs on 132 SMs -> split; 65536 rows fill the GPU
    assert rule(32, 4096 // 128, 132) > 1
    assert rule(32, 4096 // 128, 132) == min(math.ceil(264 / 32), 16, 16)
    assert rule(65536 // 128, 65536 // 128, 132) == 1
    assert rule(132, 1000, 132) == 1
    assert rule(1, 1000, 132) == key_split.MAX_SPLITS
    # each range at least two tiles; unknown SM count (CPU, interpreter) -> 1
    assert rule(1, 5, 132) == 2 and rule(1, 3, 132) == 1 and rule(1, 1, 132) == 1
    assert rule(4, 100, None) == 1 and rule(0, 100, 132) == 1
    for programs in (1, 2, 7, 31, 64, 131):
        for tiles in range(0, 40):
            s = rule(programs, tiles, 132)
            assert 1 <= s <= max(1, tiles // 2)
            n, per = key_split.ranges(s, tiles)
            assert n <= max(tiles, 1)


def test_ranges_are_never_empty():
    for wanted in range(1, 20):
        for tiles in (0, 1, 2, 3, 5, 7, 16):
            n, per = key_split.ranges(wanted, tiles)
            assert 1 <= n <= max(wanted, 1), (wanted, tiles)
            assert (n - 1) * per < max(tiles, 1) <= n * per, (wanted, tiles)  # last range holds a tile
            assert n <= max(tiles, 1), (wanted, tiles)


def test_forced_and_interpreted_defaults(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv(ENV, raising=False)
    assert key_split.splits_for(cpu, 1, 32, interpreted=True) == (1, 32)
    assert key_split.splits_for(cpu, 1, 32, interpreted=False) == (1, 32)  # no SM count
    monkeypatch.setenv(ENV, "0")
    assert key_split.splits_for(cpu, 1, 32, interpreted=True) == (1, 32)
    monkeypatch.setenv(ENV, "3")
    assert key_split.splits_for(cpu, 1, 3, interpreted=True) == (3, 1)
    assert key_split.splits_for(cpu, 1, 2, interpreted=True) == (2, 1)  # clamped
    assert key_split.splits_for(cpu, 1, 7, interpreted=True) == (3, 3)


# --------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("opt", ["all", "plain"])
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("splits", [2, 3])
def test_split_matches_oracle(monkeypatch, splits, dtype, opt):
    """N = 37, M = 150 (3 key tiles), single-tile d: the dq grid and the forward split."""
    monkeypatch.setenv(ENV, str(splits))
    check_against_oracle("triton", 37, 150, 40, dtype, OPT[opt])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("splits", [2, 3])
def test_split_chunked_d(monkeypatch, splits, dtype):
    """d = 130: the chunked path (o / dq / dk accumulated in the workspace in place)."""
    monkeypatch.setenv(ENV, str(splits))
    check_against_oracle("triton", 37, 150, 130, dtype, OPT["all"])


@pytest.mark.parametrize("d", [40, 130], ids=["single_d", "chunked_d"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_split_dk_grid(monkeypatch, dtype, d):
    """N = 150 queries (3 tiles): the dk grid splits over queries."""
    monkeypatch.setenv(ENV, "2")
    check_against_oracle("triton", 150, 37, d, dtype, OPT["all"])


# the covering design of splits x dtypes x options (core_cases.covering: fp32 every option at
# both splits, every other dtype "all" at both and each other option at one): every
# (dtype, option), (splits, option) and (splits, dtype) pair, not the 64-case factorial
SPLIT_TABLE = covering(tuple(OPTIONS), shapes=(2, 3), dtypes=tuple(ALL_DTYPES))


@pytest.mark.slow
@pytest.mark.parametrize("splits,dtype,opt", SPLIT_TABLE,
                         ids=[f"{s}-{str(d)[6:]}-{o.id}" for s, d, o in SPLIT_TABLE])
def test_split_option_table(monkeypatch, splits, dtype, opt):
    """Every option of the shared table, both grids split (N = M = 150: 3 tiles each)."""
    monkeypatch.setenv(ENV, str(splits))
    check_against_oracle("triton", 150, 150, 24, dtype, opt)
    check_against_oracle("triton", 37, 150, 130, dtype, opt)


@pytest.mark.parametrize("shape", [(37, 150, 40), (150, 37, 130)], ids=["dq_fwd", "dk"])
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_split_matches_unsplit(monkeypatch, dtype, shape):
    """Every output of S = 2 and S = 3 against S = 1 (a tight tolerance)."""
    q, k, scale, kw, w = _case(*shape, dtype, "all")
    unsplit = _run(monkeypatch, 1, q, k, scale, kw, w)
    for splits in (2, 3):
        _assert_near_unsplit(_run(monkeypatch, splits, q, k, scale, kw, w), unsplit, dtype)


def test_split_is_deterministic(monkeypatch):
    """Two runs are bitwise equal (the merge / finish order is fixed)."""
    q, k, scale, kw, w = _case(150, 150, 130, torch.float32, "all")
    first = _run(monkeypatch, 3, q, k, scale, kw, w)
    second = _run(monkeypatch, 3, q, k, scale, kw, w)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_dscale_only(monkeypatch):
    """dscale alone (no dq / dk): the partials per (program, range) summed on the host."""
    q, k, scale, kw, w = _case(37, 150, 40, torch.float32, "all")
    sc = torch.tensor(scale, requires_grad=True)
    got = []
    for splits in (1, 3):
        monkeypatch.setenv(ENV, str(splits))
        lse, _ = ck.ops.lse(q, k, sc, backend="triton", **kw)
        live = torch.isfinite(lse)
        got.append(torch.autograd.grad(lse, sc, w.float() * live)[0])
    torch.testing.assert_close(got[0], got[1], rtol=2e-5, atol=2e-5)


# --------------------------------------------------------------------------- edges


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("d", [24, 130], ids=["single_d", "chunked_d"])
def test_empty_range_with_very_negative_logits(monkeypatch, dtype, d):
    """Rows whose keys all sit in one range, with logits near -1e4: the other ranges saw
    nothing (m = -inf, l = 0, pivot 0). A merge weight 2^(0 - P) with P ~ -1.4e4 would be
    inf, and 0 * inf = NaN; the right weight is 0."""
    n, m = 37, 150
    q, k, _ = make_inputs(n, m, d, dtype)
    bias = torch.full((m,), float("-inf"))
    bias[64:128] = -1e4  # key tile 1 only: range 1 of 3 (S = 3), range 0 of 2 (S = 2)
    kw = dict(bias=bias, return_o=True)
    want = reference.lse_reference(q.double(), k.double(), torch.tensor(2.0, dtype=torch.float64),
                                   bias.double(), None, None, None, False, 1e-12, False, True)
    for splits in (2, 3):
        lse, o, gq, gk, gs = _run(monkeypatch, splits, q, k, 2.0, kw,
                                  torch.ones(n, dtype=torch.float64))
        assert torch.isfinite(lse).all() and torch.isfinite(o).all(), splits
        assert torch.isfinite(gq).all() and torch.isfinite(gk).all() and torch.isfinite(gs)
        torch.testing.assert_close(lse.double(), want[0], rtol=1e-6, atol=0)
        torch.testing.assert_close(o.double(), want[1], rtol=5e-3, atol=5e-3)


@pytest.mark.parametrize("d", [24, 130], ids=["single_d", "chunked_d"])
def test_empty_rows_split(monkeypatch, d):
    """All-excluded rows: lse = -inf, o = 0, zero gradients, as unsplit."""
    n, m = 70, 150
    q, k, _ = make_inputs(n, m, d, torch.float32)
    q_labels = torch.tensor([0, 1] * (n // 2))
    k_labels = torch.tensor([0] * 100 + [1] * 50)
    bias = torch.zeros(m)
    bias[100:] = float("-inf")  # class-1 keys dropped: class-0 rows see nothing
    kw = dict(bias=bias, q_labels=q_labels, k_labels=k_labels, exclude_positives=True,
              return_o=True, normalize=True)
    grad = torch.ones(n, dtype=torch.float64)
    unsplit = _run(monkeypatch, 1, q, k, 3.0, kw, grad)
    for splits in (2, 3):
        lse, o, gq, gk, gs = out = _run(monkeypatch, splits, q, k, 3.0, kw, grad)
        assert torch.isneginf(lse[0::2]).all() and torch.isfinite(lse[1::2]).all()
        assert (o[0::2] == 0).all() and (gq[0::2] == 0).all()
        assert torch.isfinite(gq).all() and torch.isfinite(gk).all() and torch.isfinite(gs)
        _assert_near_unsplit(out, unsplit, torch.float32)


def test_nan_and_inf_propagate_as_unsplit(monkeypatch):
    """A +inf logit -> lse +inf, NaN -> NaN, in whichever range it falls."""
    n, m, d = 37, 150, 16
    q, k, _ = make_inputs(n, m, d, torch.float32)
    q[0, 3] = float("nan")
    bias = torch.zeros(m)
    bias[140] = float("inf")  # the last range
    q_labels = torch.arange(n) % 5
    k_labels = torch.full((m,), 7)
    k_labels[140] = 1  # rows of label 1 do not see the +inf key
    kw = dict(bias=bias, q_labels=q_labels, k_labels=k_labels, exclude_positives=True,
              return_o=True)
    outs = {}
    for splits in (1, 2, 3):
        _ops_env(monkeypatch, splits)
        outs[splits] = ck.ops.lse(q, k, 2.0, backend="triton", **kw)
    lse1, o1 = outs[1]
    assert torch.isnan(lse1[0])
    assert torch.isposinf(lse1[(q_labels != 1) & (torch.arange(n) > 0)]).all()
    assert torch.isfinite(lse1[q_labels == 1]).all()
    for splits in (2, 3):
        lse, o = outs[splits]
        assert torch.equal(torch.isnan(lse), torch.isnan(lse1))
        assert torch.equal(torch.isposinf(lse), torch.isposinf(lse1))
        fin = torch.isfinite(lse1)
        torch.testing.assert_close(lse[fin], lse1[fin], rtol=2e-5, atol=2e-5)
        torch.testing.assert_close(o[fin], o1[fin], rtol=2e-5, atol=2e-5)
        assert torch.equal(torch.isfinite(o), torch.isfinite(o1))
    # NaN gradients on the NaN row, as unsplit
    grads = {}
    for splits in (1, 3):
        _ops_env(monkeypatch, splits)
        qq = q.clone().requires_grad_()
        lse, _ = ck.ops.lse(qq, k, 2.0, backend="triton")
        grads[splits] = torch.autograd.grad(lse, qq, torch.ones(n))[0]
    assert torch.isnan(grads[3][0]).all()
    torch.testing.assert_close(grads[3][1:], grads[1][1:], rtol=2e-5, atol=2e-5)


def _ops_env(monkeypatch, splits):
    monkeypatch.setenv(ENV, str(splits))


def test_interpreter_default_is_unsplit(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    if _ops.interpreting():
        dev = torch.device("cpu")
        assert key_split.splits_for(dev, 1, 100, interpreted=True)[0] == 1


# --------------------------------------------------------------------------- GPU only


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_gpu_automatic_split(cuda_device, monkeypatch, dtype):
    """Compiled kernels on a CUDA device: N = 4096 splits automatically (S > 1 on any GPU
    with more than 32 SMs), close to the forced unsplit run, bitwise reproducible."""
    if _ops.kernels_interpreted():
        pytest.skip("compiled Triton needed: CONTRASTIVE_KERNELS_TRITON_NATIVE=1")
    monkeypatch.delenv(ENV, raising=False)
    n, m, d = 4096, 4096, 128
    assert key_split.splits_for(cuda_device, n // 128, m // 128, interpreted=False)[0] > 1
    q, k, scale, kw, w = _case(n, m, d, dtype, "all")
    q, k, w = q.to(cuda_device), k.to(cuda_device), w.to(cuda_device)
    kw = {key: (v.to(cuda_device) if isinstance(v, torch.Tensor) else v) for key, v in kw.items()}
    auto = lse_and_grads(fused("triton"), q, k, torch.tensor(scale, device=cuda_device), kw, w)
    again = lse_and_grads(fused("triton"), q, k, torch.tensor(scale, device=cuda_device), kw, w)
    for a, b in zip(auto, again):
        assert torch.equal(a, b)
    unsplit = _run(monkeypatch, 1, q, k, scale, kw, w)
    for name, a, b in zip(("lse", "o", "dq", "dk", "dscale"), auto, unsplit):
        tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
        torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol, msg=name)
