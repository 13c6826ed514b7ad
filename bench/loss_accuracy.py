"""Float64 agreement of every fused loss with its naive reference, at realistic sizes.

For each loss, each backend and a few seeds: the relative error of the loss,
|fused - ref| / |ref|, and of its gradients, max|g_fused - g_ref| / max|g_ref|, over all
differentiable inputs; the same against the installed anchor library's own module where
the row names one (``Accuracy.anchor``: README's "matches <library>" column). The configurations are the registry's (each loss's
``LossSpec.accuracy``); the figure X of docs/losses.md ("matches its reference to X in
float64", the larger of the two over all seeds and backends, rounded up to a power of ten)
is each row's ``Accuracy.error``, which this script prints beside what it measured.
Optionally writes the rows (one per loss and backend, the harness row format, errors in
``extra``) as JSON.

    python bench/loss_accuracy.py [--backends torch cpu] [--seeds 3] [--json out.json]
                                  [--b 128] [--k 1024] [--d 128]
"""

from __future__ import annotations

import argparse
import math

import torch

from contrastive_kernels.losses import SPECS
from contrastive_kernels.losses.spec import Sizes
from contrastive_kernels.testing import fused_backends

import harness

# batch, queue / bank, feature and class sizes; main() may replace the first three
SIZES = Sizes()


def losses():
    """(spec, row) for every measured configuration of every registered loss."""
    return [(spec, row) for spec in SPECS for row in spec.accuracy]


def _loss_and_grads(fn_, inputs, grads):
    x = {k: v.detach().clone().requires_grad_(k in grads) if isinstance(v, torch.Tensor) else v
         for k, v in inputs.items()}
    tensors = [x[k] for k in grads]
    loss = fn_(x)
    out = torch.autograd.grad(loss, tensors, allow_unused=True)
    return loss.detach(), [torch.zeros_like(t) if g is None else g for g, t in zip(out, tensors)]


def anchor_errors(acc, backends, seeds, sizes):
    """{backend: {loss, grad}}: ours (``Anchor.call_ours``) against the anchor library's own
    module, relative errors as for the reference; None when the library is missing."""
    import importlib.util

    if acc.anchor is None or importlib.util.find_spec(acc.anchor.library) is None:
        return None
    theirs = acc.anchor.theirs()
    errors = {}
    for be in backends:
        worst_loss = worst_grad = 0.0
        for seed in range(seeds):
            inputs = acc.make(torch.Generator().manual_seed(seed), sizes)
            l_ref, g_ref = _loss_and_grads(theirs, inputs, acc.grads)
            l_ours, g_ours = _loss_and_grads(lambda x: acc.anchor.call_ours(acc, x, be),
                                             inputs, acc.grads)
            worst_loss = max(worst_loss, float((l_ours - l_ref).abs() / l_ref.abs()))
            for a, b in zip(g_ours, g_ref):
                scale = float(b.abs().max())
                if scale > 0:
                    worst_grad = max(worst_grad, float((a - b).abs().max()) / scale)
        errors[be] = dict(loss=worst_loss, grad=worst_grad)
    return errors


def measure(backends, seeds):
    rows = []
    for spec, acc in losses():
        row = dict(loss=acc.label or spec.name, source=acc.source or spec.source,
                   module=acc.module or spec.module.__name__,
                   functional=acc.functional or " / ".join(f.__name__ for f in spec.functional),
                   documented=acc.error, errors={})
        for be in backends:
            worst_loss = worst_grad = 0.0
            for seed in range(seeds):
                inputs = acc.make(torch.Generator().manual_seed(seed), SIZES)
                l_ref, g_ref = _loss_and_grads(acc.naive, inputs, acc.grads)
                l_ours, g_ours = _loss_and_grads(lambda x: acc.fused(x, be), inputs, acc.grads)
                worst_loss = max(worst_loss, float((l_ours - l_ref).abs() / l_ref.abs()))
                for a, b in zip(g_ours, g_ref):
                    scale = float(b.abs().max())
                    if scale > 0:
                        worst_grad = max(worst_grad, float((a - b).abs().max()) / scale)
            row["errors"][be] = dict(loss=worst_loss, grad=worst_grad)
        errors = anchor_errors(acc, backends, seeds, SIZES)
        if errors is not None:
            row["anchor"] = dict(library=acc.anchor.library, version=acc.anchor.version,
                                 documented=acc.anchor.error, errors=errors)
        rows.append(row)
    return rows


def _fmt(x):
    if x == 0:
        return "0 (bit-equal)"
    return f"{10 ** math.ceil(math.log10(x)):.0e}"


def measured(row):
    """The docs' figure for a row: its largest error over backends, loss and grads."""
    return _fmt(max(max(e["loss"], e["grad"]) for e in row["errors"].values()))


def markdown(rows, backends):
    head = ("| loss | source (read, re-implemented) | module | functional | "
            "matches its reference in float64 (rel. error, loss / grads) | measured | documented |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        errs = "; ".join(f"{be}: {_fmt(r['errors'][be]['loss'])} / {_fmt(r['errors'][be]['grad'])}"
                         for be in backends)
        lines.append(f"| {r['loss']} | {r['source']} | `{r['module']}` | "
                     f"`functional.{r['functional']}` | {errs} | {measured(r)} | "
                     f"{r['documented']} |")
    return "\n".join(lines)


def json_rows(rows, seeds):
    """The table in the harness row format: one row per loss and backend."""
    return [harness.make_row("loss_accuracy", be, "cpu", torch.float64, "forward+backward",
                             None, None, SIZES.d, loss=r["loss"], source=r["source"],
                             module=r["module"], functional=r["functional"],
                             loss_rel_err=e["loss"], grad_rel_err=e["grad"], seeds=seeds,
                             B=SIZES.b, K=SIZES.k, C=SIZES.c)
            for r in rows for be, e in r["errors"].items()]


def main(argv=None):
    global SIZES
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=None,
                        help="default: every fused backend of the registry usable on CPU")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--b", type=int, default=SIZES.b, help="batch size")
    parser.add_argument("--k", type=int, default=SIZES.k, help="queue / memory bank size")
    parser.add_argument("--d", type=int, default=SIZES.d, help="feature size")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    SIZES = Sizes(args.b, args.k, args.d, SIZES.c)
    backends = args.backends or fused_backends("cpu")
    rows = measure(backends, args.seeds)
    print(f"sizes: B = {SIZES.b}, K = {SIZES.k}, d = {SIZES.d}, C = {SIZES.c}; {args.seeds} seeds; "
          "float64\n")
    print(markdown(rows, backends))
    for r in rows:
        for be, e in r["errors"].items():
            print(f"{r['loss']:28s} {be:7s} loss {e['loss']:.2e}  grads {e['grad']:.2e}")
        if "anchor" in r:
            a = r["anchor"]
            print(f"{r['loss']:28s} against {a['library']} {a['version']}: measured "
                  f"{measured(a)}, documented {a['documented']}")
    if args.json:
        harness.write_rows(args.json, json_rows(rows, args.seeds), script="loss_accuracy.py")
    return rows


if __name__ == "__main__":
    main()
