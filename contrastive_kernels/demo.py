"""``python -m contrastive_kernels.demo``: the fused SupCon loss against the reference.

SupCon 'all' on bsz 4096 x 2 views, d 128, labels from 100 classes: for the naive
SupContrast formulation and each fused backend of the registry usable on the device, the
loss, its difference from the reference, the gradient's largest difference, forward +
backward time (min / median / max) and peak memory. Runs on the CPU, and on the GPU too
when one is present.
"""

from __future__ import annotations

import argparse
import sys

import torch

from . import SupConLoss
from .info import report
from .testing import fused_backends
from .testing.measure import peak_memory_bytes, time_fn
from .testing.reference_losses import supcon_loss_reference

NAME_W, LOSS_W, DIFF_W, GDIFF_W, TIME_W, MEM_W = 38, 14, 14, 17, 25, 11


def _measure(loss_fn, feats, labels, device, repeats):
    feats = feats.detach().requires_grad_()

    def step():
        feats.grad = None
        loss = loss_fn(feats, labels)
        loss.backward()
        return loss

    loss = step().detach()
    grad = feats.grad.detach().clone()
    timing = time_fn(step, device, repeats=repeats)
    feats.grad = None  # freed before, not during, the memory recording
    peak = peak_memory_bytes(step, device)
    return loss, grad, timing, peak


def run(device: torch.device, bsz: int, views: int, dim: int, repeats: int) -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(bsz, views, dim, generator=gen), dim=-1).to(device)
    labels = torch.randint(0, 100, (bsz,), generator=gen).to(device)
    n = bsz * views
    print(f"\nSupCon 'all', bsz {bsz} x {views} views (N = {n}), d {dim}, fp32, on {device}:"
          f" forward + backward")
    rows = [("reference (SupContrast formulation)", supcon_loss_reference)]
    rows += [(f"fused, backend={name!r}", SupConLoss(backend=name))
             for name in fused_backends(device.type)]
    header = (f"  {'implementation':<{NAME_W}}{'loss':>{LOSS_W}}{'|loss - ref|':>{DIFF_W}}"
              f"{'max|grad - ref|':>{GDIFF_W}}{'time min/med/max (s)':>{TIME_W}}"
              f"{'peak MiB':>{MEM_W}}")
    print(header)
    print("  " + "-" * (len(header) - 2))
    ref = None
    for name, loss_fn in rows:
        loss, grad, timing, peak = _measure(loss_fn, feats, labels, device, repeats)
        if ref is None:
            ref = (loss, grad, timing, peak)
            diff, gdiff = "", ""
        else:
            diff = f"{abs(loss.item() - ref[0].item()):.2e}"
            gdiff = f"{(grad - ref[1]).abs().max().item():.2e}"
        print(f"  {name:<{NAME_W}}{loss.item():>{LOSS_W}.6f}{diff:>{DIFF_W}}{gdiff:>{GDIFF_W}}"
              f"{timing.format():>{TIME_W}}{peak / 2**20:>{MEM_W}.1f}")
        if ref[2] is not timing:
            print(f"  {'':<{NAME_W + LOSS_W + DIFF_W + GDIFF_W}}"
                  f"{ref[2].median / timing.median:>{TIME_W - 1}.1f}x"
                  f"{ref[3] / max(peak, 1):>{MEM_W - 1}.0f}x")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bsz", type=int, default=4096)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(report())
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        run(device, args.bsz, args.views, args.dim, args.repeats)
    print("\n(x: how many times faster (median time) / smaller (peak memory) than the reference)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
