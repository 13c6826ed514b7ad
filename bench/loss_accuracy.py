"""Float64 agreement of every fused loss with its naive reference, at realistic sizes.

For each loss, each backend and a few seeds: the relative error of the loss,
|fused - ref| / |ref|, and of its gradients, max|g_fused - g_ref| / max|g_ref|, over all
differentiable inputs. Prints the table for docs/losses.md ("matches its reference to X
in float64", X = the larger of the two over all seeds) and optionally writes the rows
(one per loss and backend, the harness row format, errors in ``extra``) as JSON.

    python bench/loss_accuracy.py [--backends torch cpu] [--seeds 3] [--json out.json]
                                  [--b 128] [--k 1024] [--d 128]
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from contrastive_kernels import functional as fn
from contrastive_kernels.testing import fused_backends
from contrastive_kernels.testing import reference_losses as R

import harness

# batch, queue / bank, feature and class sizes; main() may replace the first three, which
# the case makers below read when they are called
B, K, D, C = 128, 1024, 128, 100


def _unit(gen, *shape):
    return F.normalize(torch.randn(*shape, generator=gen, dtype=torch.float64), dim=-1)


def _randn(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _counts(gen):
    return (1000 * torch.rand(C, generator=gen, dtype=torch.float64) ** 3 + 1).round()


# name, source, module, functional, make(gen) -> (tensors, consts), fused(x, c, be), ref(x, c)
LOSSES = [
    ("SupCon", "HobbitLong/SupContrast `losses.py` `SupConLoss`", "SupConLoss", "supcon_loss",
     lambda g: ({"features": _unit(g, 2 * B, 2, D)}, {"labels": torch.randint(0, C, (2 * B,), generator=g)}),
     lambda x, c, be: fn.supcon_loss(x["features"], c["labels"], temperature=0.1, backend=be),
     lambda x, c: R.supcon_loss_reference(x["features"], c["labels"], temperature=0.1)),
    ("PaCo", "dvlab-research/Parametric-Contrastive-Learning `LT/losses.py`, `LT/moco/builder.py`",
     "PaCoLoss", "paco_loss",
     lambda g: ({"features": _unit(g, 2 * B + K, D), "sup_logits": 3 * _randn(g, B, C)},
                {"labels": torch.randint(0, C, (2 * B + K,), generator=g),
                 "prior": fn.class_prior(_counts(g), C)}),
     lambda x, c, be: fn.paco_loss(x["features"], c["labels"], x["sup_logits"], c["prior"],
                                   alpha=0.05, temperature=0.07, K=K, num_classes=C, backend=be),
     lambda x, c: R.paco_loss_reference(x["features"], c["labels"], x["sup_logits"], c["prior"],
                                        alpha=0.05, temperature=0.07, K=K, num_classes=C)),
    ("GPaCo", "dvlab-research/Parametric-Contrastive-Learning `GPaCo/LT/losses.py`",
     "GPaCoLoss", "gpaco_loss",
     lambda g: ({"features": _unit(g, 2 * B + K, D), "sup_logits": 3 * _randn(g, 2 * B, C)},
                {"labels": torch.randint(0, C, (2 * B + K,), generator=g),
                 "prior": fn.class_prior(_counts(g), C)}),
     lambda x, c, be: fn.gpaco_loss(x["features"], c["labels"], x["sup_logits"], c["prior"],
                                    alpha=0.05, temperature=0.2, K=K, num_classes=C, smooth=0.1,
                                    backend=be),
     lambda x, c: R.gpaco_loss_reference(x["features"], c["labels"], x["sup_logits"], c["prior"],
                                         alpha=0.05, temperature=0.2, K=K, num_classes=C,
                                         smooth=0.1)),
    ("SimCLR NT-Xent", "lightly `lightly/loss/ntx_ent_loss.py`", "NTXentLoss", "ntxent_loss",
     lambda g: ({"out0": _randn(g, 2 * B, D), "out1": _randn(g, 2 * B, D)}, {}),
     lambda x, c, be: fn.ntxent_loss(x["out0"], x["out1"], 0.5, backend=be),
     lambda x, c: R.ntxent_loss_reference(x["out0"], x["out1"], 0.5)),
    ("NT-Xent + memory bank", "lightly `ntx_ent_loss.py` + `memory_bank.py`", "NTXentLoss(memory_bank_size=K)",
     "ntxent_loss(negatives=bank)",
     lambda g: ({"out0": _randn(g, B, D), "out1": _randn(g, B, D)}, {"bank": _unit(g, K, D)}),
     lambda x, c, be: fn.ntxent_loss(x["out0"], x["out1"], 0.2, c["bank"], backend=be),
     lambda x, c: R.ntxent_loss_reference(x["out0"], x["out1"], 0.2, c["bank"])),
    ("InfoNCE / CLIP", "mlfoundations/open_clip `src/open_clip/loss.py` `ClipLoss`", "ClipLoss",
     "clip_loss",
     lambda g: ({"image": _unit(g, 2 * B, D), "text": _unit(g, 2 * B, D),
                 "logit_scale": torch.tensor(1 / 0.07, dtype=torch.float64)}, {}),
     lambda x, c, be: fn.clip_loss(x["image"], x["text"], x["logit_scale"], backend=be),
     lambda x, c: R.clip_loss_reference(x["image"], x["text"], x["logit_scale"])),
    ("InfoNCE", "RElbers/info-nce-pytorch `info_nce` (unpaired negatives)", "InfoNCE", "info_nce",
     lambda g: ({"query": _randn(g, B, D), "positive": _randn(g, B, D),
                 "negatives": _randn(g, K, D)}, {}),
     lambda x, c, be: fn.info_nce(x["query"], x["positive"], x["negatives"], 0.1, backend=be),
     lambda x, c: R.info_nce_reference(x["query"], x["positive"], x["negatives"], 0.1)),
    ("MoCo", "facebookresearch/moco `moco/builder.py` (logits [l_pos, l_neg], CE)", "MoCoLoss",
     "moco_loss",
     lambda g: ({"q": _unit(g, B, D), "k": _unit(g, B, D), "queue": _unit(g, K, D)}, {}),
     lambda x, c, be: fn.moco_loss(x["q"], x["k"], x["queue"], 0.07, backend=be),
     lambda x, c: R.moco_loss_reference(x["q"], x["k"], x["queue"], 0.07)),
    ("CLSA (contrastive + DDM)", "maple-research-lab/CLSA `model/CLSA.py`, `training/train.py`",
     "CLSALoss", "clsa_loss / clsa_ddm_loss",
     lambda g: ({"q": _unit(g, B, D), "strong": _unit(g, B, D), "k": _unit(g, B, D)},
                {"queue": _unit(g, K, D)}),
     lambda x, c, be: fn.clsa_loss(x["q"], x["strong"], x["k"], c["queue"], 0.2, 0.2, 1.0,
                                   backend=be),
     lambda x, c: R.clsa_loss_reference(x["q"], [x["strong"]], x["k"], c["queue"], 0.2, 0.2, 1.0)),
    ("BINGO", "haohang96/bingo `moco/builder.py` + `main_moco.py` `MulposCrossEntropy`",
     "BingoLoss", "bingo_loss",
     lambda g: ({"q": _unit(g, B, D), "positive_keys": _unit(g, B, 2, D)},
                {"queue": _unit(g, K, D)}),
     lambda x, c, be: fn.bingo_loss(x["q"], x["positive_keys"], c["queue"], (0.5, 0.5), 0.2,
                                    backend=be),
     lambda x, c: R.bingo_loss_reference(x["q"], x["positive_keys"], c["queue"], (0.5, 0.5), 0.2)),
    ("DCL", "lightly `lightly/loss/dcl_loss.py` `DCLLoss`", "DCLLoss", "dcl_loss",
     lambda g: ({"out0": _randn(g, 2 * B, D), "out1": _randn(g, 2 * B, D)}, {}),
     lambda x, c, be: fn.dcl_loss(x["out0"], x["out1"], 0.1, backend=be),
     lambda x, c: R.dcl_loss_reference(x["out0"], x["out1"], 0.1)),
    ("DCLW", "lightly `lightly/loss/dcl_loss.py` `DCLWLoss`", "DCLWLoss", "dclw_loss",
     lambda g: ({"out0": _randn(g, 2 * B, D), "out1": _randn(g, 2 * B, D)}, {}),
     lambda x, c, be: fn.dclw_loss(x["out0"], x["out1"], 0.1, 0.5, backend=be),
     lambda x, c: R.dclw_loss_reference(x["out0"], x["out1"], 0.1, 0.5)),
    ("HCL", "joshr17/HCL `image/main.py` `criterion`", "HCLLoss", "hcl_loss",
     lambda g: ({"out0": _unit(g, 2 * B, D), "out1": _unit(g, 2 * B, D)}, {}),
     lambda x, c, be: fn.hcl_loss(x["out0"], x["out1"], 0.5, 0.1, 1.0, "hard", backend=be),
     lambda x, c: R.hcl_loss_reference(x["out0"], x["out1"], 0.5, 0.1, 1.0, "hard")),
]


def _loss_and_grads(fn_, tensors, consts):
    x = {k: v.detach().clone().requires_grad_() for k, v in tensors.items()}
    loss = fn_(x, consts)
    grads = torch.autograd.grad(loss, list(x.values()), allow_unused=True)
    return loss.detach(), [torch.zeros_like(t) if g is None else g for g, t in zip(grads, x.values())]


def measure(backends, seeds):
    rows = []
    for name, source, module, functional_name, make, fused, ref in LOSSES:
        row = dict(loss=name, source=source, module=module, functional=functional_name, errors={})
        for be in backends:
            worst_loss = worst_grad = 0.0
            for seed in range(seeds):
                tensors, consts = make(torch.Generator().manual_seed(seed))
                l_ref, g_ref = _loss_and_grads(ref, tensors, consts)
                l_ours, g_ours = _loss_and_grads(lambda x, c: fused(x, c, be), tensors, consts)
                worst_loss = max(worst_loss, float((l_ours - l_ref).abs() / l_ref.abs()))
                for a, b in zip(g_ours, g_ref):
                    scale = float(b.abs().max())
                    if scale > 0:
                        worst_grad = max(worst_grad, float((a - b).abs().max()) / scale)
            row["errors"][be] = dict(loss=worst_loss, grad=worst_grad)
        rows.append(row)
    return rows


def _fmt(x):
    if x == 0:
        return "0 (bit-equal)"
    return f"{10 ** math.ceil(math.log10(x)):.0e}"


def markdown(rows, backends):
    head = ("| loss | source (read, re-implemented) | module | functional | "
            "matches its reference in float64 (rel. error, loss / grads) |")
    lines = [head, "|---|---|---|---|---|"]
    for r in rows:
        errs = "; ".join(f"{be}: {_fmt(r['errors'][be]['loss'])} / {_fmt(r['errors'][be]['grad'])}"
                         for be in backends)
        lines.append(f"| {r['loss']} | {r['source']} | `{r['module']}` | "
                     f"`functional.{r['functional']}` | {errs} |")
    return "\n".join(lines)


def json_rows(rows, seeds):
    """The table in the harness row format: one row per loss and backend."""
    return [harness.make_row("loss_accuracy", be, "cpu", torch.float64, "forward+backward",
                             None, None, D, loss=r["loss"], source=r["source"],
                             module=r["module"], functional=r["functional"],
                             loss_rel_err=e["loss"], grad_rel_err=e["grad"], seeds=seeds,
                             B=B, K=K, C=C)
            for r in rows for be, e in r["errors"].items()]


def main(argv=None):
    global B, K, D
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=None,
                        help="default: every fused backend of the registry usable on CPU")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--b", type=int, default=B, help="batch size")
    parser.add_argument("--k", type=int, default=K, help="queue / memory bank size")
    parser.add_argument("--d", type=int, default=D, help="feature size")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    B, K, D = args.b, args.k, args.d
    backends = args.backends or fused_backends("cpu")
    rows = measure(backends, args.seeds)
    print(f"sizes: B = {B}, K = {K}, d = {D}, C = {C}; {args.seeds} seeds; float64\n")
    print(markdown(rows, backends))
    for r in rows:
        for be, e in r["errors"].items():
            print(f"{r['loss']:28s} {be:7s} loss {e['loss']:.2e}  grads {e['grad']:.2e}")
    if args.json:
        harness.write_rows(args.json, json_rows(rows, args.seeds), script="loss_accuracy.py")
    return rows

if __name__ == "__main__":
    main()
