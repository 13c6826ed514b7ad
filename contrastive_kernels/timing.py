"""Median wall time of a piece of work, measured the right way for its device.

CPU work is synchronous, so ``time.perf_counter`` around it is exact. CUDA work is
asynchronous: it is timed with ``triton.testing.do_bench`` (CUDA events, cache flush,
median) when Triton is installed, else with CUDA events around each repetition.
"""

from __future__ import annotations

import statistics
import time

import torch


def median_seconds(fn, device, repeats: int = 3, warmup: int = 1) -> float:
    device = torch.device(device)
    if device.type == "cuda":
        try:
            from triton.testing import do_bench
        except ImportError:
            do_bench = None
        if do_bench is not None:
            return do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return statistics.median(times)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
