"""SigLipLoss on the CPU backend (the fused pairwise sigmoid) against the one-sweep ClipLoss
on the same CPU and against open_clip's SigLipLoss, forward + backward, time and peak
memory in one run.

    loss = -sum_ij log sigmoid(z_ij (scale <x_i, y_j> + bias)) / B,  z = +1 on the diagonal

Ours: ``contrastive_kernels.SigLipLoss(backend="cpu")`` and ``ClipLoss(backend="cpu")``;
open_clip: its ``SigLipLoss`` (B x B logits and signs in memory, autograd keeps them). The
open_clip installed here (3.3.0) has no ``chunk_size`` option; its row-chunked form is
re-implemented as ``open_clip chunked`` (each chunk's logits kept for the backward, as
the option does). Features, logit_scale and logit_bias carry gradients. Median of
--repeats runs each, interleaved so that load from other processes hits all alike; the
peak extra memory of one step of each; the fp32 GEMM rate of the same run (bench/harness.py's floor).

    PYTHONPATH=$PWD python bench/siglip_cpu.py [--b 16384] [--d 128] [--threads 2]
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import contrastive_kernels as ck
from contrastive_kernels.testing.measure import peak_memory_bytes

import harness


def step(loss_fn, x, y, scale, bias):
    """Forward + backward of ``loss_fn(x, y, scale, bias)``; the gradients."""
    x, y, scale, bias = (t.detach().requires_grad_() for t in (x, y, scale, bias))
    loss = loss_fn(x, y, scale, bias)
    loss.backward()
    return loss, x.grad, y.grad, scale.grad, bias.grad


def open_clip_chunked(chunk):
    """open_clip's sigmoid loss over row chunks of ``chunk`` images (autograd keeps every
    chunk's logits for the softplus backward)."""
    def loss_fn(x, y, scale, bias):
        total = 0.0
        for r0 in range(0, x.shape[0], chunk):
            logits = scale * x[r0:r0 + chunk] @ y.T + bias
            signs = -torch.ones_like(logits)
            rows = torch.arange(logits.shape[0])
            signs[rows, rows + r0] = 1.0
            total = total - F.logsigmoid(signs * logits).sum()
        return total / x.shape[0]
    return loss_fn


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--b", type=int, default=16384)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--backend", default="cpu")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    from open_clip.loss import SigLipLoss as OpenClipSigLip

    gen = torch.Generator().manual_seed(0)
    b, d = opts.b, opts.d
    x = F.normalize(torch.randn(b, d, generator=gen), dim=1)
    y = F.normalize(x + 0.5 * torch.randn(b, d, generator=gen) / d ** 0.5, dim=1)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)  # SigLIP's initialization
    losses = {
        "SigLipLoss (ours)": ck.SigLipLoss(backend=opts.backend),
        "ClipLoss (ours, one sweep)": ck.ClipLoss(backend=opts.backend),
        "open_clip SigLipLoss": OpenClipSigLip(),
        f"open_clip chunked ({opts.chunk} rows)": open_clip_chunked(opts.chunk),
    }
    times = {name: [] for name in losses}
    for fn in losses.values():  # warm-up
        step(fn, x, y, scale, bias)
    for _ in range(opts.repeats):
        for name, fn in losses.items():
            t = time.perf_counter()
            step(fn, x, y, scale, bias)
            times[name].append(time.perf_counter() - t)
    memory = {name: peak_memory_bytes(lambda fn=fn: step(fn, x, y, scale, bias), "cpu")
              for name, fn in losses.items()}
    ours, theirs = ([t.detach() for t in step(losses[name], x, y, scale, bias)]
                    for name in ("SigLipLoss (ours)", "open_clip SigLipLoss"))
    rate = harness.gemm_rate("cpu") / 1e9
    median = {name: statistics.median(t) for name, t in times.items()}
    clip = median["ClipLoss (ours, one sweep)"]
    print(f"cpu kernel set: {ck._C.build_info()['cpu_kernel']}, threads {opts.threads}, "
          f"B={b} d={d} fp32, forward + backward")
    print("| loss | median s | runs | / ClipLoss | peak extra MiB |")
    print("|---|---:|---|---:|---:|")
    for name in losses:
        print(f"| {name} | {median[name]:.3f} | {', '.join(f'{t:.3f}' for t in times[name])} "
              f"| {median[name] / clip:.2f} | {memory[name] / 2**20:.1f} |")
    diff = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
               for a, b in zip(ours, theirs))
    print(f"ours vs open_clip (fp32): largest relative difference of loss / gradients {diff:.1e}")
    print(f"sgemm rate (torch.mm 4096^3, bench/harness.py): {rate:.1f} GFLOP/s; the four B x B x d "
          f"products of a step at that rate: {8 * b * b * d / (rate * 1e9):.3f} s")


if __name__ == "__main__":
    main()
