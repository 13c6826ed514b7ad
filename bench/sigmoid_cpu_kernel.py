"""The CPU pairwise sigmoid kernels against the one-sweep two-sided lse at the same shape.

    sigmoid:    ops.pairwise_sigmoid(q, k, scale, bias, self_offset=0, backend="cpu"),
                grad of row_loss.sum() to q, k, scale and bias
    two-sided:  ops.two_sided_lse(q, k, scale, backend="cpu"), grad of
                row_lse.sum() + col_lse.sum() to q, k, scale

q, k random unit-norm rows (normalize=False), scale 10, bias -10 (a scalar, SigLIP's
initialization). Both forward + backward, alternating in this process, median of
--repeats runs each; prints both times and their ratio (the sigmoid's target: <= 1.1),
in wall time and in this process's CPU time.

    PYTHONPATH=$PWD python bench/sigmoid_cpu_kernel.py [--b 16384] [--d 128] [--threads 2]
"""

import argparse
import statistics
import time

import torch

import contrastive_kernels as ck
from contrastive_kernels import ops


def sigmoid_step(q, k, scale, bias):
    q, k, scale, bias = (t.detach().requires_grad_() for t in (q, k, scale, bias))
    row = ops.pairwise_sigmoid(q, k, scale, bias, self_offset=0, normalize=False, backend="cpu")
    return torch.autograd.grad(row.sum(), (q, k, scale, bias))


def two_sided_step(q, k, scale):
    q, k, scale = (t.detach().requires_grad_() for t in (q, k, scale))
    row, col = ops.two_sided_lse(q, k, scale, backend="cpu")
    return torch.autograd.grad(row.sum() + col.sum(), (q, k, scale))


def timed(fn, *args):
    """(wall, process CPU) seconds of one call: on a shared machine the CPU time of this
    process is the steadier of the two."""
    t, c = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - t, time.process_time() - c


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--b", type=int, default=16384)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    gen = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(opts.b, opts.d, generator=gen), dim=1)
    k = torch.nn.functional.normalize(torch.randn(opts.b, opts.d, generator=gen), dim=1)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    sigmoid_step(q, k, scale, bias)  # warm-up (and the first kernel-set choice)
    two_sided_step(q, k, scale)
    sig_t, two_t = [], []
    for _ in range(opts.repeats):
        sig_t.append(timed(sigmoid_step, q, k, scale, bias))
        two_t.append(timed(two_sided_step, q, k, scale))
    runs = lambda ts: ", ".join(f"{t:.3f}" for t, _ in ts)
    wall = lambda ts: statistics.median(t for t, _ in ts)
    cpu = lambda ts: statistics.median(c for _, c in ts)
    print(f"cpu kernel set: {ck._C.build_info()['cpu_kernel']}, threads {opts.threads}, "
          f"B={opts.b} d={opts.d}")
    print(f"pairwise_sigmoid fwd+bwd: median {wall(sig_t):.3f} s  (runs {runs(sig_t)}; "
          f"CPU {cpu(sig_t):.3f} s)")
    print(f"two_sided_lse    fwd+bwd: median {wall(two_t):.3f} s  (runs {runs(two_t)}; "
          f"CPU {cpu(two_t):.3f} s)")
    print(f"ratio sigmoid / two-sided: {wall(sig_t) / wall(two_t):.3f} "
          f"(CPU time: {cpu(sig_t) / cpu(two_t):.3f})")

if __name__ == "__main__":
    main()
