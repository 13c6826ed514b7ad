"""ClipLoss on the CPU backend (the two-sided lse: one sweep for both directions), against
SupCon 'all' on the same CPU, and against CLIP's loss as two lse calls (before the
two-sided op).

    loss = 0.5 (mean_i row_lse_i + mean_j col_lse_j) - mean_i s_ii,
    s_ij = scale <x_i, y_j>  (x image, y text features, unit rows as open_clip passes them)

ClipLoss: ``contrastive_kernels.ClipLoss(backend="cpu")`` forward + backward (features
and logit_scale with gradients). Two lse calls: ops.lse in each direction plus the
diagonal, forward + backward, as ClipLoss computed it before. SupCon:
contrastive_kernels.SupConLoss(backend="cpu") forward + backward, N = 2 views x B / 2
rows of the same d (the same N^2 d as CLIP's B^2 d). Both timed in this process, median
of --repeats runs each, interleaved so that load from other processes hits both alike;
prints both, their ratio, the peak extra memory of one ClipLoss step, and the fp32 GEMM
rate measured in the same run (torch.mm, same threads).

    PYTHONPATH=$PWD python bench/two_sided_cpu.py [--b 16384] [--d 128] [--threads 2]
"""

import argparse
import statistics
import time

import torch

import contrastive_kernels as ck
from contrastive_kernels.testing.measure import peak_memory_bytes

_CLIP = ck.ClipLoss(backend="cpu")


def clip_step(x, y, scale):
    """ClipLoss forward + backward; (loss, dx, dy, dscale)."""
    x, y, scale = (t.detach().requires_grad_() for t in (x, y, scale))
    loss = _CLIP(x, y, scale)
    loss.backward()
    return loss, x.grad, y.grad, scale.grad


def two_lse_step(x, y, scale):
    """CLIP's loss as two ops.lse calls (one per direction), forward + backward."""
    x, y, scale = (t.detach().requires_grad_() for t in (x, y, scale))
    row, _ = ck.ops.lse(x, y, scale, backend="cpu")
    col, _ = ck.ops.lse(y, x, scale, backend="cpu")
    loss = 0.5 * (row.mean() + col.mean()) - scale * (x * y).sum(1).mean()
    loss.backward()
    return loss, x.grad, y.grad, scale.grad


def supcon_step(loss_fn, feats, labels):
    f = feats.detach().requires_grad_()
    loss = loss_fn(f, labels)
    loss.backward()
    return loss, f.grad


def gemm_rate(n=4096, d=128, repeats=5):
    """fp32 GFLOP/s of torch.mm at a [n, d] x [d, n] shape, median of `repeats`."""
    a, b = torch.randn(n, d), torch.randn(d, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    return 2 * n * n * d / statistics.median(times) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--b", type=int, default=16384, help="CLIP batch = SupCon rows N")
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--classes", type=int, default=100)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    gen = torch.Generator().manual_seed(0)
    b, d = opts.b, opts.d
    x = torch.nn.functional.normalize(torch.randn(b, d, generator=gen), dim=1)
    y = torch.nn.functional.normalize(x + 0.5 * torch.randn(b, d, generator=gen) / d ** 0.5, dim=1)
    scale = torch.tensor(1 / 0.07)  # logit_scale.exp() at CLIP's initialization, ~14.3
    feats = torch.nn.functional.normalize(torch.randn(b // 2, 2, d, generator=gen), dim=2)
    labels = torch.randint(0, opts.classes, (b // 2,), generator=gen)
    supcon = ck.SupConLoss(backend="cpu")

    clip_step(x, y, scale)  # warm-up (and the first kernel-set choice)
    supcon_step(supcon, feats, labels)
    two_lse_step(x, y, scale)
    clip_t, supcon_t, two_t = [], [], []
    for _ in range(opts.repeats):
        t = time.perf_counter()
        clip_step(x, y, scale)
        clip_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        supcon_step(supcon, feats, labels)
        supcon_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        two_lse_step(x, y, scale)
        two_t.append(time.perf_counter() - t)
    rate = gemm_rate(d=d)
    memory = peak_memory_bytes(lambda: clip_step(x, y, scale), "cpu")
    clip_m, supcon_m = statistics.median(clip_t), statistics.median(supcon_t)
    floor = 8 * b * b * d / (rate * 1e9)  # four B x B x d products
    print(f"cpu kernel set: {ck._C.build_info()['cpu_kernel']}, threads {opts.threads}")
    print(f"ClipLoss two-sided  B={b} d={d}: median {clip_m:.3f} s  "
          f"(runs {', '.join(f'{t:.3f}' for t in clip_t)})")
    print(f"SupCon 'all'        N={b} d={d}: median {supcon_m:.3f} s  "
          f"(runs {', '.join(f'{t:.3f}' for t in supcon_t)})")
    two_m = statistics.median(two_t)
    print(f"CLIP as two lse     B={b} d={d}: median {two_m:.3f} s  "
          f"(runs {', '.join(f'{t:.3f}' for t in two_t)})")
    print(f"ratio ClipLoss / SupCon: {clip_m / supcon_m:.2f}; two lse calls / SupCon: "
          f"{two_m / supcon_m:.2f}")
    print(f"sgemm rate (torch.mm 4096 x {d} x 4096): {rate:.1f} GFLOP/s; "
          f"ClipLoss at {clip_m / floor:.2f}x the four-product floor ({floor:.3f} s at that rate)")
    print(f"ClipLoss peak extra memory: {memory / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
