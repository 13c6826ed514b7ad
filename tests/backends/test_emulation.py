"""The CUDA emulation layer itself (csrc/emulation/): block barriers, warp shuffles and
votes, ldmatrix fragment layouts and mma.sync.m16n8k16 against a plain matmul, through
small kernels written against csrc/cuda/device.cuh (csrc/emulation/selftest.cpp)."""

import pytest
import torch

from contrastive_kernels import _extension

pytestmark = pytest.mark.skipif(_extension.native_ops is None,
                                reason=f"compiled extension not loaded: {_extension.LOAD_ERROR}")


def _ops():
    """The test kernels' private namespace (kept out of the public contrastive_kernels one)."""
    return torch.ops._contrastive_kernels_emulation


def test_selftest_ops_are_not_public():
    """The public namespace holds the core ops only (each with its fake kernel); the
    emulation's test kernels live in their own namespace."""
    public = torch.ops.contrastive_kernels
    for name in ("barrier", "shuffle", "ldmatrix", "mma", "mma_tf32", "tf32_round", "deadlock"):
        assert not hasattr(public, f"_cuda_emulation_test_{name}"), name
        assert hasattr(_ops(), name), name


def test_block_barrier_orders_shared_memory():
    out = _ops().barrier()
    t = torch.arange(128)
    for block in range(3):
        assert torch.equal(out[block, 0], block * 1000 + (t + 1) % 128)
        assert torch.equal(out[block, 1], block * 1000 + 500 + (127 - t))


def test_warp_shuffles_and_votes():
    out = _ops().shuffle()
    t = torch.arange(64)
    lane = t % 32
    base = t - lane
    v = t.float() + 0.5
    assert torch.equal(out[:, 7], v)
    assert torch.equal(out[:, 0], (base + (lane ^ 1)).float() + 0.5)
    assert torch.equal(out[:, 1], (base + (lane ^ 16)).float() + 0.5)
    assert torch.equal(out[:, 2], (base + 3).float() + 0.5)
    assert torch.equal(out[:, 3], 2 * ((base + (lane ^ 2)).float() + 0.5))
    ballot = sum(1 << i for i in range(32) if i % 3 == 0) & 0xFFFFFF
    assert torch.equal(out[:, 4], torch.full((64,), float(ballot)))
    assert torch.equal(out[:, 5], (t >= 32).float())  # thread 40 is in warp 1 only
    assert torch.equal(out[:, 6], torch.ones(64))


def _expected_ldmatrix(m, num, trans):
    mats = m.view(4, 8, 8).long() & 0xFFFF
    out = torch.zeros(32, 4, dtype=torch.long)
    for lane in range(32):
        for i in range(num):
            if trans:
                lo, hi = mats[i, 2 * (lane % 4), lane // 4], mats[i, 2 * (lane % 4) + 1, lane // 4]
            else:
                lo, hi = mats[i, lane // 4, 2 * (lane % 4)], mats[i, lane // 4, 2 * (lane % 4) + 1]
            out[lane, i] = lo | (hi << 16)
    return out


@pytest.mark.parametrize("num", [1, 2, 4])
@pytest.mark.parametrize("trans", [False, True], ids=["plain", "trans"])
def test_ldmatrix_fragment_layouts(num, trans):
    m = (torch.arange(256, dtype=torch.int32) * 7 + 3).to(torch.int16)
    got = _ops().ldmatrix(m, num, trans).long() & 0xFFFFFFFF
    assert torch.equal(got, _expected_ldmatrix(m, num, trans))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("b_trans", [False, True], ids=["b_col", "b_row_ldmatrix_trans"])
def test_mma_fragment_matmul_matches_plain(dtype, b_trans):
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(16, 16, generator=gen).to(dtype)
    b = torch.randn(16, 8, generator=gen).to(dtype)
    c = torch.randn(16, 8, generator=gen)
    d = _ops().mma(a.view(torch.int16), b.view(torch.int16), c,
                                         dtype == torch.bfloat16, b_trans)
    plain = a.double() @ b.double() + c.double()
    # 16-bit products are exact; one fp32 rounding of the sum
    torch.testing.assert_close(d.double(), plain, rtol=1e-6, atol=1e-6)
    # a permutation of rows of A moves rows of D: the layout is by row, not scrambled
    perm = torch.randperm(16, generator=gen)
    d2 = _ops().mma(a[perm].contiguous().view(torch.int16), b.view(torch.int16),
                                          c[perm].contiguous(), dtype == torch.bfloat16, b_trans)
    assert torch.equal(d2, d[perm])


def test_divergent_barrier_raises_instead_of_hanging():
    with pytest.raises(RuntimeError, match="deadlock"):
        _ops().deadlock()


def _tf32_round(x: torch.Tensor) -> torch.Tensor:
    """cvt.rna.tf32.f32 in torch: round to nearest, ties away from zero, 10 mantissa bits."""
    u = x.contiguous().view(torch.int32).long() & 0xFFFFFFFF
    special = (u & 0x7F800000) == 0x7F800000
    r = torch.where(special, u, ((u + 0x1000) & ~0x1FFF) & 0xFFFFFFFF)
    return torch.where(r >= 2**31, r - 2**32, r).to(torch.int32).view(torch.float32)


def test_tf32_rounding_is_rna():
    one = 1.0
    ulp = 2.0 ** -10
    x = torch.tensor([one, one + ulp / 2, one + ulp / 2 - 2.0 ** -20, -(one + ulp / 2),
                      one + 3 * ulp / 2, 3.0e38, float("inf"), -float("inf"), 1e-40, 0.0],
                     dtype=torch.float32)
    got = _ops().tf32_round(x)
    want = torch.tensor([one, one + ulp, one, -(one + ulp), one + 2 * ulp])
    assert torch.equal(got[:5], want)  # 1 + 3 ulp / 2: a tie, away from zero
    assert torch.equal(got[5:], _tf32_round(x[5:]))
    assert torch.isinf(got[6]) and torch.isinf(got[7]) and got[9] == 0
    # ties away from zero: 1 + ulp/2 goes up, -(1 + ulp/2) goes down
    assert got[1] == one + ulp and got[3] == -(one + ulp)
    nan = _ops().tf32_round(torch.tensor([float("nan")]))
    assert torch.isnan(nan).all()
    gen = torch.Generator().manual_seed(3)
    r = torch.randn(4096, generator=gen) * 10.0 ** torch.randint(-20, 20, (4096,), generator=gen)
    got = _ops().tf32_round(r.float())
    assert torch.equal(got, _tf32_round(r.float()))
    assert ((got.view(torch.int32) & 0x1FFF) == 0).all()
    assert ((got - r).abs() <= r.abs() * 2.0 ** -11).all()


def test_mma_tf32_fragment_matmul_matches_plain():
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(16, 8, generator=gen)
    b = torch.randn(8, 8, generator=gen)
    c = torch.randn(16, 8, generator=gen)
    d = _ops().mma_tf32(a, b, c)
    plain = _tf32_round(a).double() @ _tf32_round(b).double() + c.double()
    # tf32 products are exact; one fp32 rounding of the sum
    torch.testing.assert_close(d.double(), plain, rtol=1e-6, atol=1e-6)
    # the inputs were rounded: the fp32 product is further away than the rounding error
    exact = a.double() @ b.double() + c.double()
    assert (d.double() - exact).abs().max() > 1e-5
    # permuting rows of A (and C) permutes rows of D; columns of B, columns of D
    perm = torch.randperm(16, generator=gen)
    d2 = _ops().mma_tf32(a[perm].contiguous(), b, c[perm].contiguous())
    assert torch.equal(d2, d[perm])
    cperm = torch.randperm(8, generator=gen)
    d3 = _ops().mma_tf32(a, b[:, cperm].contiguous(), c[:, cperm].contiguous())
    assert torch.equal(d3, d[:, cperm])
