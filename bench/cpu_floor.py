"""The CPU backends against the matmul floor, on this machine, in one run.

    .venv/bin/python bench/cpu_floor.py [--n 16384] [--d 128] [--repeats 3]
                                        [--backends cpu torch] [--skip-torch] [--json FILE]

Measures, in this order and in one process:

1. the fp32 GEMM rate: a 4096^3 torch.mm, median of a few;
2. for each fused backend of the registry usable on CPU (``--backends`` to choose): the
   core op forward + backward on SupCon-'all'-like inputs (q and k the same tensor, N rows,
   d features, self_offset=0, scale 1/0.07, normalize=True), and the same data with k a
   copy of q (the pointers differ, so no kernel can use the symmetry);
3. functional.supcon_loss forward + backward (features [N/2, 2, d], labels from 100
   classes, normalize=True) on each of those backends.

Times are min / median / max wall-clock seconds (time.perf_counter) after one warm-up.
The floor is 8 N^2 d FLOPs (forward 2 N^2 d, backward one recompute and two products,
6 N^2 d) at the measured GEMM rate, halved where q is k for a backend that computes each
symmetric tile once. Peak extra memory is the highest live total of CPU allocations
during one forward + backward, above what was live before (torch profiler memory events).
The machine may be shared: compare ratios within one run, and check the load average.
"""

from __future__ import annotations

import argparse

import torch

import contrastive_kernels as ck
from contrastive_kernels import functional
from contrastive_kernels.testing import fused_backends
from contrastive_kernels.testing.measure import peak_memory_bytes, time_fn

import harness

MIB = 2 ** 20


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=16384, help="rows N = bsz x 2 views")
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=None,
                        help="default: every fused backend usable on CPU, in 'auto' order")
    parser.add_argument("--skip-torch", action="store_true", help="skip the (slow) torch backend")
    parser.add_argument("--json", help="also write the rows (harness format) to this file")
    args = parser.parse_args(argv)
    n, d = args.n, args.d
    backends = args.backends or fused_backends("cpu")
    if args.skip_torch:
        backends = [b for b in backends if b != "torch"]
    torch.manual_seed(0)

    print(f"torch {torch.__version__}, {harness.device_name('cpu')}, {harness.cpu_load()}")
    rate = harness.gemm_rate("cpu", repeats=max(args.repeats, 5))
    full = harness.floor_flop(n, n, d, "forward+backward") / rate
    print(f"fp32 GEMM 4096^3: {rate / 1e9:.1f} GFLOP/s -> floor 8 N^2 d = {full:.3f} s "
          f"at N = {n}, d = {d} (4 N^2 d = {full / 2:.3f} s when symmetric tiles are done once)")

    x = torch.randn(n, d)
    features = torch.randn(n // 2, 2, d)
    labels = torch.randint(0, 100, (n // 2,))
    cases = []  # (label, subject, backend, q is k, step)
    for be in backends:
        cases += [(f"core op, q is k, {be}", "lse", be, True, core_op_step(x, x, be)),
                  (f"core op, k = q.clone(), {be}", "lse", be, False,
                   core_op_step(x, x.clone(), be))]
    for be in backends:
        cases.append((f"supcon_loss, backend={be!r}", "supcon_all", be, True,
                      supcon_step(features, labels, be)))

    rows = []
    print(f"{'case':40s} {'min / median / max (s)':>24s} {'floor (s)':>10s} {'x floor':>8s} "
          f"{'peak MiB':>9s}")
    for label, subject, be, q_is_k, step in cases:
        timing = time_fn(step, "cpu", repeats=args.repeats)
        peak = peak_memory_bytes(step, "cpu")
        row = harness.make_row(subject, be, "cpu", torch.float32, "forward+backward", n, n, d,
                               timing, peak, rate, q_is_k=q_is_k, case=label)
        rows.append(row)
        mark = "*" if row.floor_halved else " "
        print(f"{label:40s} {timing.format():>24s} {row.floor_s:>9.3f}{mark} {row.x_floor:8.2f} "
              f"{peak / MIB:9.1f}")
    if any(r.floor_halved for r in rows):
        print("(* floor halved: the backend computes each symmetric tile once when q is k)")
    supcon = {r.contender: r.median_s for r in rows if r.subject == "supcon_all"}
    if len(supcon) > 1:
        first, *others = supcon
        for other in others:
            print(f"supcon_loss: {first} is {supcon[other] / supcon[first]:.1f}x faster than "
                  f"{other} (medians)")
    print(f"{harness.cpu_load()} at the end")
    if args.json:
        print(f"wrote {harness.write_rows(args.json, rows, script='cpu_floor.py')}")
    return rows


if __name__ == "__main__":
    main()
