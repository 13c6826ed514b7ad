"""``python -m contrastive_kernels.demo``: the fused SupCon loss against the reference.

SupCon 'all' on bsz 4096 x 2 views, d 128, labels from 100 classes: for the naive
SupContrast formulation and each fused backend usable here, the loss, its difference
from the reference, the gradient's largest difference, forward + backward time (median)
and peak memory. Runs on the CPU, and on the GPU too when one is present.
"""

from __future__ import annotations

import argparse
import sys

import torch

from . import SupConLoss, available_backends
from .info import report
from .profiling import peak_memory_bytes
from .reference import supcon_loss_reference
from .timing import median_seconds


def _fused_backends(device: torch.device):
    usable = [name for name, reason in available_backends().items() if reason is None]
    wanted = ["cpu", "torch"] if device.type == "cpu" else ["triton", "torch"]
    return [name for name in wanted if name in usable]


def _measure(loss_fn, feats, labels, device, repeats):
    feats = feats.detach().requires_grad_()

    def step():
        feats.grad = None
        loss = loss_fn(feats, labels)
        loss.backward()
        return loss

    loss = step().detach()
    grad = feats.grad.detach().clone()
    seconds = median_seconds(step, device, repeats=repeats)
    feats.grad = None  # freed before, not during, the memory recording
    peak = peak_memory_bytes(step, device)
    return loss, grad, seconds, peak


def run(device: torch.device, bsz: int, views: int, dim: int, repeats: int) -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(bsz, views, dim, generator=gen), dim=-1).to(device)
    labels = torch.randint(0, 100, (bsz,), generator=gen).to(device)
    n = bsz * views
    print(f"\nSupCon 'all', bsz {bsz} x {views} views (N = {n}), d {dim}, fp32, on {device}:"
          f" forward + backward")
    rows = [("reference (SupContrast formulation)", lambda f, y: supcon_loss_reference(f, y))]
    rows += [(f"fused, backend={name!r}", SupConLoss(backend=name)) for name in _fused_backends(device)]
    header = f"  {'implementation':<38}{'loss':>14}{'|loss - ref|':>14}{'max|grad - ref|':>17}{'time (s)':>10}{'peak MiB':>11}"
    print(header)
    print("  " + "-" * (len(header) - 2))
    ref = None
    for name, loss_fn in rows:
        loss, grad, seconds, peak = _measure(loss_fn, feats, labels, device, repeats)
        if ref is None:
            ref = (loss, grad, seconds, peak)
            diff, gdiff = "", ""
        else:
            diff = f"{abs(loss.item() - ref[0].item()):.2e}"
            gdiff = f"{(grad - ref[1]).abs().max().item():.2e}"
        print(f"  {name:<38}{loss.item():>14.6f}{diff:>14}{gdiff:>17}{seconds:>10.3f}{peak / 2**20:>11.1f}")
        if ref is not None and name != rows[0][0]:
            print(f"  {'':<38}{'':>14}{'':>14}{'':>17}{ref[2] / seconds:>9.1f}x{ref[3] / max(peak, 1):>10.0f}x")


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
    print("\n(x: how many times faster / smaller than the reference)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
