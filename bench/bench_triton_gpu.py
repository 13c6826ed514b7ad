"""Core op (lse) forward and backward on a CUDA GPU: the Triton kernels against the torch
tiled backend and the naive reference, over N = M in {16384, 65536, 262144},
d in {128, 256, 1024}, bf16 and fp32. Skips without a CUDA device.

    pytest bench/bench_triton_gpu.py --benchmark-json=bench/results/triton_gpu_pytest.json

Each case records in ``extra_info`` (and in bench/results/triton_gpu.json, written at the
end of the session): the median time from ``triton.testing.do_bench`` (CUDA events), the
TFLOP/s against the matmul floor (forward 2 N M d; backward 6 N M d, and the 8 N M d
the two-grid scheme actually spends), the same floor at the GEMM rate torch.mm reaches
on this GPU in the dtype, and the peak extra memory (``torch.cuda.max_memory_allocated``
above the inputs). Cases over the time budget (``CK_BENCH_MAX_TFLOP``, default 60 TFLOP of
floor work per call) or over the memory of the GPU are skipped with the reason.
"""

import json
import os
import pathlib

import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels import reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

NS = (16384, 65536, 262144)
DS = (128, 256, 1024)
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
CONTENDERS = ("triton", "torch", "reference")
PASSES = ("forward", "backward")
MAX_TFLOP = float(os.environ.get("CK_BENCH_MAX_TFLOP", "60"))
RESULTS = pathlib.Path(__file__).parent / "results" / "triton_gpu.json"
_rows: list = []


@pytest.fixture(scope="session", autouse=True)
def _write_results():
    yield
    if _rows:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({"device": torch.cuda.get_device_name(),
                                       "torch": torch.__version__, "rows": _rows}, indent=1))


@pytest.fixture(scope="session")
def gemm_tflops():
    """torch.mm rate (TFLOP/s) per dtype at 8192^3 on this GPU (fp32: torch's precision)."""
    import triton.testing

    rates = {}
    for name, dtype in DTYPES.items():
        a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
        ms = triton.testing.do_bench(lambda: a @ a, return_mode="median")
        rates[name] = 2 * 8192 ** 3 / ms / 1e9
        del a
    return rates


def _floor_flops(n, m, d, which):
    return {"forward": 2, "backward": 6}[which] * n * m * d


def _skip_reason(contender, n, d, dtype, which):
    total = torch.cuda.get_device_properties(0).total_memory
    if contender == "reference":
        need = 6 * n * n * 4 + 4 * n * d * 4  # several fp32 N x N matrices
        if need > 0.8 * total:
            return f"reference needs about {need / 2**30:.0f} GiB at N = {n}"
    flops = _floor_flops(n, n, d, which)
    if flops > MAX_TFLOP * 1e12:
        return (f"{flops / 1e12:.0f} TFLOP of floor work per call > CK_BENCH_MAX_TFLOP="
                f"{MAX_TFLOP:g}")
    if contender == "torch" and flops > MAX_TFLOP * 1e12 / 8:
        return "torch tiled backend: over an eighth of the time budget (fp32 tiles, Python loop)"
    return None


def _call(contender, q, k, scale):
    kw = dict(normalize=True, self_offset=0)
    if contender == "reference":
        return reference.lse_reference(q, k, scale, None, None, None, 0, True, 1e-12, False,
                                       False)[0]
    return ck.ops.lse(q, k, scale, backend=contender, **kw)[0]


def _time_ms(fn):
    """Median ms by CUDA events: do_bench when a call is short, else 3 timed calls."""
    import triton.testing

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    first = start.elapsed_time(end)
    if first < 200:
        return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
    times = []
    for _ in range(3):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[1]


@pytest.mark.gpu
@pytest.mark.parametrize("which", PASSES)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("d", DS)
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("contender", CONTENDERS)
def test_lse_gpu(benchmark, gemm_tflops, contender, n, d, dtype_name, which):
    dtype = DTYPES[dtype_name]
    reason = _skip_reason(contender, n, d, dtype, which)
    if reason:
        pytest.skip(reason)
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(n, d, device="cuda", dtype=dtype, generator=gen)
    k = torch.randn(n, d, device="cuda", dtype=dtype, generator=gen)
    acc = torch.float32
    scale = torch.tensor(10.0, device="cuda", dtype=acc, requires_grad=True)
    if which == "backward":
        q.requires_grad_()
        k.requires_grad_()
        lse = _call(contender, q, k, scale)
        grad = torch.randn_like(lse)

        def fn():
            torch.autograd.grad(lse, (q, k, scale), grad, retain_graph=True)
    else:
        def fn():
            with torch.no_grad():
                _call(contender, q, k, scale)

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    ms = _time_ms(fn)

    def step():
        fn()
        torch.cuda.synchronize()

    benchmark.pedantic(step, rounds=3 if ms < 1000 else 1, iterations=1, warmup_rounds=0)
    floor = _floor_flops(n, n, d, which)
    spent = 8 * n * n * d if (which == "backward" and contender == "triton") else floor
    row = dict(contender=contender, pass_=which, N=n, M=n, d=d, dtype=dtype_name,
               median_ms=ms, tflops_floor=floor / ms / 1e9, tflops_spent=spent / ms / 1e9,
               floor_ms_at_gemm_rate=floor / (gemm_tflops[dtype_name] * 1e9),
               gemm_tflops=gemm_tflops[dtype_name], peak_bytes=peak,
               fp32_precision=torch.get_float32_matmul_precision())
    row["x_floor"] = ms / row["floor_ms_at_gemm_rate"]
    benchmark.extra_info.update(row)
    _rows.append(row)
