"""Benchmark fixtures: the machine's measured fp32 GEMM rate, shared by every case.

Run with ``make bench`` (pytest-benchmark; JSON under bench/results/, then
bench/report.py draws the plot and the markdown table).
"""

import os
import statistics
import time

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "0")


def measure_gemm_flops(n: int = 4096, repeats: int = 3) -> float:
    """fp32 FLOP/s of an n x n x n torch.mm on the CPU (median of `repeats`)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times)


@pytest.fixture(scope="session")
def cpu_gemm_flops():
    return measure_gemm_flops()
