"""Core op (lse) forward and backward on a CUDA GPU: the fused backends of the registry
usable there (Triton, torch tiled) against the naive reference, over N = M in
{16384, 65536, 262144}, d in {128, 256, 1024}, bf16 and fp32. Skips without a CUDA device.

    pytest bench/bench_triton_gpu.py [--bench-sizes 16384x128,65536x256]

Each case is a :class:`harness.Row` in bench/results/triton_gpu.json (written at the end of
the session): min / median / max seconds by CUDA events (``triton.testing.do_bench`` for
short calls, a few event pairs for long ones), peak extra memory
(``torch.cuda.max_memory_allocated`` above the inputs; ``harness.lse_rows``), and the matmul floor (forward
2 N M d; backward 6 N M d) at the GEMM rate torch.mm reaches on this GPU in the dtype
(fp32 at torch's float32 matmul precision); ``extra`` adds TFLOP/s against the floor and
against the 8 N M d the two-grid Triton backward actually spends. Cases over the time
budget (``CONTRASTIVE_KERNELS_BENCH_MAX_TFLOP``, default 60 TFLOP of floor work per call)
or over the memory of the GPU are skipped with the reason.
"""

import pytest
import torch

from contrastive_kernels import env
from contrastive_kernels.testing import fused_backends

import harness

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SIZES = [(n, d) for n in (16384, 65536, 262144) for d in (128, 256, 1024)]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# the reference is the registry's oracle backend, never among the fused ones
CONTENDERS = (fused_backends("cuda") if torch.cuda.is_available() else []) + ["reference"]
DIRECTIONS = ("forward", "backward")
RESULTS = harness.RESULTS / "triton_gpu.json"
_rows: list = []


def pytest_generate_tests(metafunc):
    if {"n", "d"} <= set(metafunc.fixturenames):
        sizes = harness.sizes_for(metafunc.config, SIZES)
        metafunc.parametrize("n,d", sizes, ids=[f"N{n}-d{d}" for n, d in sizes])


@pytest.fixture(scope="session", autouse=True)
def _write_results():
    yield
    if _rows:
        harness.write_rows(RESULTS, _rows, script="bench_triton_gpu.py",
                           fp32_precision=torch.get_float32_matmul_precision())


@pytest.fixture(scope="session")
def gemm_flop_s():
    """torch.mm rate (FLOP/s) per dtype at 8192^3 on this GPU."""
    return {name: harness.gemm_rate("cuda", dtype) for name, dtype in DTYPES.items()}


def _skip_reason(contender, n, d, which):
    total = torch.cuda.get_device_properties(0).total_memory
    if contender == "reference":
        need = 6 * n * n * 4 + 4 * n * d * 4  # several fp32 N x N matrices
        if need > 0.8 * total:
            return f"reference needs about {need / 2**30:.0f} GiB at N = {n}"
    flop = harness.floor_flop(n, n, d, which)
    budget = harness.max_tflop() * 1e12
    if flop > budget:
        return (f"{flop / 1e12:.0f} TFLOP of floor work per call > "
                f"{env.name('BENCH_MAX_TFLOP')}={harness.max_tflop():g}")
    if contender == "torch" and flop > budget / 8:
        return "torch tiled backend: over an eighth of the time budget (fp32 tiles, Python loop)"
    return None


@pytest.mark.gpu
@pytest.mark.parametrize("which", DIRECTIONS)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("contender", CONTENDERS)
def test_lse_gpu(gemm_flop_s, contender, n, d, dtype_name, which):
    reason = _skip_reason(contender, n, d, which)
    if reason:
        pytest.skip(reason)
    _rows.extend(harness.lse_rows(contender, n, d, DTYPES[dtype_name], gemm_flop_s[dtype_name],
                                  "cuda", directions=(which,)))
