"""The CPU backend against the matmul floor, on this machine, in one run.

    .venv/bin/python bench/cpu_floor.py [--n 16384] [--d 128] [--repeats 3] [--skip-torch]

Measures, in this order and in one process:

1. the fp32 GEMM rate: a 4096^3 torch.mm, median of a few;
2. the core op forward + backward on SupCon-'all'-like inputs (q and k the same tensor,
   N rows, d features, self_offset=0, scale 1/0.07, normalize=True): the symmetric kernels,
   and the same data through the general kernels (k a copy of q, so the pointers differ);
3. functional.supcon_loss forward + backward (features [N/2, 2, d], labels from 100
   classes, normalize=True) with backend='cpu' and backend='torch'.

Times are wall-clock medians (time.perf_counter). The floor is 8 N^2 d FLOPs (forward
2 N^2 d, backward one recompute and two products, 6 N^2 d) at the measured GEMM rate.
Peak extra memory is the highest live total of CPU allocations during one forward +
backward, above what was live before, from the torch profiler's memory events.
The machine may be shared: compare ratios within one run, and check `uptime`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import contrastive_kernels as ck
from contrastive_kernels import functional
from contrastive_kernels.profiling import peak_memory_bytes

MIB = 2 ** 20


def median_seconds(fn, repeats):
    fn()  # warm-up: first-touch page faults, lazy initialisation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gemm_rate(repeats):
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    seconds = median_seconds(lambda: torch.mm(a, b), max(repeats, 5))
    return 2 * 4096 ** 3 / seconds


def core_op_step(q, k, backend):
    """One forward + backward of the core op; q and k may be the same leaf."""
    def step():
        qq = q.detach().requires_grad_()
        kk = qq if k is q else k.detach().requires_grad_()
        lse, _ = ck.ops.lse(qq, kk, 1 / 0.07, self_offset=0, normalize=True, backend=backend)
        lse.sum().backward()
    return step


def supcon_step(features, labels, backend):
    def step():
        f = features.detach().requires_grad_()
        loss = functional.supcon_loss(f, labels, temperature=0.07, normalize=True, backend=backend)
        loss.backward()
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=16384, help="rows N = bsz x 2 views")
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-torch", action="store_true", help="skip the (slow) torch backend")
    args = parser.parse_args()
    n, d = args.n, args.d
    torch.manual_seed(0)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f} (1 min)")
    rate = gemm_rate(args.repeats)
    floor = 8 * n * n * d / rate
    print(f"fp32 GEMM 4096^3: {rate / 1e9:.1f} GFLOP/s -> floor 8 N^2 d = {floor:.3f} s "
          f"at N = {n}, d = {d}")

    x = torch.randn(n, d)
    features = torch.randn(n // 2, 2, d)
    labels = torch.randint(0, 100, (n // 2,))
    cases = [
        ("core op, q is k (symmetric kernels)", core_op_step(x, x, "cpu")),
        ("core op, k = q.clone() (general kernels)", core_op_step(x, x.clone(), "cpu")),
        ("supcon_loss, backend='cpu'", supcon_step(features, labels, "cpu")),
    ]
    if not args.skip_torch:
        cases.append(("supcon_loss, backend='torch'", supcon_step(features, labels, "torch")))

    results = {}
    print(f"{'case':44s} {'seconds':>8s} {'x floor':>8s} {'peak MiB':>9s}")
    for name, step in cases:
        seconds = median_seconds(step, args.repeats)
        peak = peak_memory_bytes(step, torch.device("cpu"))
        results[name] = seconds
        print(f"{name:44s} {seconds:8.3f} {seconds / floor:8.2f} {peak / MIB:9.1f}")
    if not args.skip_torch:
        speedup = results["supcon_loss, backend='torch'"] / results["supcon_loss, backend='cpu'"]
        print(f"supcon_loss: cpu is {speedup:.1f}x faster than torch")
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) at the end")


if __name__ == "__main__":
    main()
