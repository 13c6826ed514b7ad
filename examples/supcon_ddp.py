"""Train the digits SupCon encoder under DistributedDataParallel, the loss over every rank.

    torchrun --nproc_per_node 2 examples/supcon_ddp.py [--steps 20] [--mode ring] [--check]

Each rank holds a contiguous slice of the batch (every training image of scikit-learn's
digits in two noise-augmented views; 1257 images do not split evenly, so the ranks' batches
differ by one). ``SupConLoss(gather_distributed=True, distributed_mode=...)`` contrasts
each rank's anchors with every rank's rows and gives each rank its share of the global
mean, so DDP's gradient average is the single-process gradient of the whole batch.
``--check`` (float64) also trains the same encoder in one process on rank 0 and asserts
that the loss curves agree to 1e-9. Runs on gloo (CPU) or NCCL (one GPU per rank).
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

import contrastive_kernels as ck


def encoder(dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(),
                               torch.nn.Linear(128, 32)).to(dtype)


def batch(dtype, device):
    """The global batch (every rank builds the same one): images in two noisy views."""
    x, _, y, _ = train_test_split(*load_digits(return_X_y=True), test_size=0.3, random_state=0)
    x = torch.tensor(StandardScaler().fit_transform(x), dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    views = torch.stack([x + 0.3 * torch.randn(x.shape, generator=gen, dtype=dtype)
                         for _ in range(2)], dim=1)
    return views.to(device), torch.tensor(y).to(device)


def train(model, views, labels, steps, loss_fn, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    curve = []
    for _ in range(steps):
        feats = torch.nn.functional.normalize(model(views), dim=-1)
        loss = loss_fn(feats, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(loss.detach())
    return curve


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--mode", choices=("gather", "ring"), default="gather")
    parser.add_argument("--check", action="store_true", help="float64, and compare with one process")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else None
    dtype = torch.float64 if args.check else torch.float32
    views, labels = batch(dtype, device)
    rows = torch.tensor_split(torch.arange(views.shape[0]), world)[rank]  # uneven by one
    model = torch.nn.parallel.DistributedDataParallel(encoder(dtype).to(device))
    loss_fn = ck.SupConLoss(temperature=0.1, gather_distributed=True,
                            distributed_mode=args.mode)
    curve = train(model, views[rows], labels[rows], args.steps, loss_fn)
    # the ranks' shares average to the global loss
    curve = torch.stack(curve)
    dist.all_reduce(curve)
    curve = curve / world
    if rank == 0:
        print(f"{world} ranks ({args.mode}), batch {views.shape[0]} x 2 views: loss "
              f"{curve[0].item():.6f} -> {curve[-1].item():.6f} in {args.steps} steps")
        if args.check:
            single = torch.stack(train(encoder(dtype).to(device), views, labels, args.steps,
                                       ck.SupConLoss(temperature=0.1)))
            err = (single - curve).abs().max().item()
            print(f"one process: {single[-1].item():.6f}; largest difference {err:.2e}")
            assert err < 1e-9, err
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
