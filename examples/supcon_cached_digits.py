"""SupCon on scikit-learn's digits with a batch 8x larger than a memory budget allows,
by cached-gradient training (``contrastive_kernels.cached_gradient_step``).

The encoder is the digits example's with a wide hidden layer (8192), so that its
activations, not the loss, hold the memory: about 35x the fused loss's per row. The budget
is the peak memory of one plain training step at the batch that fits, 1/8 of the training
set, two views per image. The plain step over the whole training set (8x) needs about 8x
the budget. The cached step encodes the whole training set in chunks of half the batch
that fits (chunks of the full fitting batch would need the budget plus the full batch's
loss memory) and stays within the budget. Its parameter gradients are the plain step's,
so the training curve equals a plain full-batch run step for step (float64).

    python examples/supcon_cached_digits.py            # 10 steps, about a minute on 2 cores
    python examples/supcon_cached_digits.py --steps 3 --json out.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib

import torch

from contrastive_kernels import cached_gradient_step, functional
from contrastive_kernels.testing.measure import peak_memory_bytes

_DIGITS = pathlib.Path(__file__).resolve().with_name("supcon_digits.py")
_spec = importlib.util.spec_from_file_location("supcon_digits", _DIGITS)
digits = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(digits)


def supcon(feats, labels):
    return functional.supcon_loss(feats.view(-1, 2, feats.shape[-1]), labels,
                                  temperature=digits.TEMPERATURE,
                                  base_temperature=digits.TEMPERATURE, normalize=True)


def plain_step(model, rows, labels):
    loss = supcon(model(rows), labels)
    loss.backward()
    return loss.detach()


def cached_step(model, rows, labels, chunk_rows):
    return cached_gradient_step(model, rows, lambda f: supcon(f, labels), chunk_rows)


def sample_major(v):
    """[bsz, 2, 64] views as rows: sample i's views are rows 2i and 2i + 1."""
    return v.reshape(-1, v.shape[-1])


def encoder(hidden):
    return digits.Encoder(hidden=hidden).double()


def train(x, labels, steps, seed, noise, lr, hidden, chunk_rows=None):
    torch.manual_seed(seed)
    model = encoder(hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    curve = []
    for step in range(steps):
        rows = sample_major(digits.views(x, step, seed, noise))
        opt.zero_grad()
        loss = (plain_step(model, rows, labels) if chunk_rows is None
                else cached_step(model, rows, labels, chunk_rows))
        opt.step()
        curve.append(float(loss))
    return model, curve


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--multiple", type=int, default=8, help="batch / the batch that fits")
    parser.add_argument("--hidden", type=int, default=8192, help="the encoder's hidden width")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--noise", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    x_train, x_test, y_train, y_test = digits.load_data(args.seed)
    x = torch.as_tensor(x_train, dtype=torch.float64)
    labels = torch.as_tensor(y_train)
    fits = x.shape[0] // args.multiple  # samples per step within the budget
    chunk_rows = 2 * (fits // 2)  # half the fitting batch's samples, two views each

    torch.manual_seed(args.seed)
    model = encoder(args.hidden)
    rows = sample_major(digits.views(x, 0, args.seed, args.noise))

    def measured(step):
        model.zero_grad(set_to_none=False)  # .grad allocated before, as in training
        return peak_memory_bytes(step, "cpu")

    plain_step(model, rows[:2 * fits], labels[:fits])
    budget = measured(lambda: plain_step(model, rows[:2 * fits], labels[:fits]))
    plain_full = measured(lambda: plain_step(model, rows, labels))
    cached_full = measured(lambda: cached_step(model, rows, labels, chunk_rows))

    kw = dict(steps=args.steps, seed=args.seed, noise=args.noise, lr=args.lr, hidden=args.hidden)
    _, cached_curve = train(x, labels, chunk_rows=chunk_rows, **kw)
    model, plain_curve = train(x, labels, **kw)
    diff = max(abs(a - b) for a, b in zip(cached_curve, plain_curve))
    accuracy = digits.probe(model, x_train, y_train, x_test, y_test, torch.float64)
    result = {"samples_per_step": x.shape[0], "samples_that_fit": fits,
              "chunk_samples": chunk_rows // 2,
              "budget_bytes": budget, "plain_full_batch_bytes": plain_full,
              "cached_full_batch_bytes": cached_full, "cached": cached_curve,
              "plain": plain_curve, "max_abs_diff": diff, "probe_accuracy": accuracy}
    if not args.quiet:
        mib = 2 ** 20
        print(f"budget (plain step, {fits} samples):       {budget / mib:7.2f} MiB")
        print(f"plain step, {x.shape[0]} samples:          {plain_full / mib:7.2f} MiB")
        print(f"cached step, {x.shape[0]} samples (chunks of {chunk_rows // 2}): "
              f"{cached_full / mib:7.2f} MiB")
        print(f"{args.steps} steps: cached vs plain full-batch curve, max |diff| = {diff:.2e}; "
              f"final loss {cached_curve[-1]:.4f}; linear probe accuracy {accuracy:.3f}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
