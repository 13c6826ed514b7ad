"""The performance model of a compiled Triton config, from its SASS (no GPU).

Per streamed tile of one program: tensor-core instructions, MUFU.EX2 (exps), every MUFU op
(exps, reciprocals, logarithms: the sigmoid backward's 1 / (1 + e)) and all issued
instructions of the main loop (:func:`loop_counts`); with the per-SM rates of
:data:`RATES`, the predicted ceiling as a fraction of the dtype's tensor peak
(:func:`predict`). The report of :mod:`.aot` lists both; its test enforces
:data:`CEILING_FLOORS` and :func:`ex2_limit` (no tile computed twice).
"""

from __future__ import annotations

import re

_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_TENSOR_OPS = ("HMMA", "HGMMA", "DMMA")
# Per-row exps on top of one per logit: the online rescale factor, which the compiler may
# evaluate in the layouts of both the logits and the o accumulator; at most
# min(EX2_SLACK, logits / 2) of them. A tile computed twice adds a whole tile's worth.
EX2_SLACK = 8


def ex2_limit(tile_elems: int) -> int:
    return tile_elems + min(EX2_SLACK, tile_elems // 2)


def mufu_limit(tile_elems: int, per_logit: int) -> int:
    """Every MUFU op of a tile: the exps' limit for ``per_logit`` ops per logit, and as
    many again per row (fp16's online rescale takes a reciprocal per row and tile, which
    the compiler may also evaluate in two layouts). A tile computed twice still exceeds it."""
    return ex2_limit(tile_elems * per_logit) + min(EX2_SLACK, tile_elems // 2)


def _opcode(text: str) -> str:
    if text.startswith("@"):
        text = text.split(None, 1)[1]
    return text.split()[0]


def loop_counts(sass: str):
    """(instructions, MUFU.EX2, tensor-core instructions, MUFU ops of any kind) per thread
    per iteration of the
    main loop: the innermost loop (backward branch) holding the most MUFU.EX2 and tensor
    instructions, on its common path: blocks that a forward branch inside the loop skips
    (the self-exclusion mask of diagonal tiles, the bound mask of the last tile) are left
    out. None when there is no such loop."""
    ins = []
    for m in _INSTR.finditer(sass):
        addr, text = int(m[1], 16), m[2]
        op = _opcode(text)
        target = None
        if op == "BRA":
            t = re.search(r"0x([0-9a-f]+)", text.split("BRA", 1)[1])
            target = int(t[1], 16) if t else None
        ins.append((addr, op, target))
    loops = [(t, a) for a, op, t in ins if t is not None and t < a]  # t == a: the trap

    def work(lo, hi):
        return sum(op.startswith(("MUFU.EX2",) + _TENSOR_OPS) for a, op, _ in ins
                   if lo <= a <= hi)

    loops = [lp for lp in loops if work(*lp)]
    if not loops:
        return None
    best = max(work(*lp) for lp in loops)
    lo, hi = min((lp for lp in loops if work(*lp) == best), key=lambda lp: lp[1] - lp[0])
    skipped = [(a, t) for a, op, t in ins if t is not None and lo <= a < t <= hi]
    total = n_ex2 = n_mma = n_mufu = 0
    for a, op, _ in ins:
        if not lo <= a <= hi or any(b < a < t for b, t in skipped):
            continue
        total += 1
        n_ex2 += op.startswith("MUFU.EX2")
        n_mma += op.startswith(_TENSOR_OPS)
        n_mufu += op.startswith("MUFU.")
    return total, n_ex2, n_mma, n_mufu


# Per-SM, per-clock rates. Tensor / FMA FLOP: NVIDIA A100 (sm_80) and H100 (sm_90)
# architecture whitepapers: dense fp16/bf16 1024 FMA/clk/SM on A100 and 2x on H100, tf32
# half of that, fp64 DMMA 64 / 128 FMA/clk/SM, IEEE fp32 FFMA 64 / 128 per clk/SM (peak
# TFLOPS = rate x SMs x boost clock: 312 / 989 bf16, 156 / 495 tf32, 19.5 / 67 fp64 and
# fp32). MUFU (ex2): 16 results/clk/SM on both (CUDA C Programming Guide, arithmetic
# instruction throughput, cc 8.0 / 9.0). Issue: 4 warp schedulers x 1 warp-instruction /
# clk per SM.
RATES = {
    80: dict(flop={"fp16": 2048, "bf16": 2048, "tf32": 1024, "fp32": 128, "fp64": 128},
             mufu=16, issue=4),
    90: dict(flop={"fp16": 4096, "bf16": 4096, "tf32": 2048, "fp32": 256, "fp64": 256},
             mufu=16, issue=4),
}
# Floors of the predicted ceiling (fraction of the dtype's peak) that the compile test
# enforces: the d <= 128 bf16 / tf32 configs, set a few points under what the model gives
# for the fixed kernels (heaviest specialization), so that a change that adds instructions
# to the main loop or duplicates work fails. These are ceilings of a perfect-overlap model,
# not measured rates. The aims for sm_90 bf16 were forward 75 % and each backward grid
# 60 %: the backward grids meet them; the forward with bias and labels (one exp, a label
# compare and the scaling per logit against an 8-HGMMA tile) reaches 63 %, the common
# call without them (SIMCLR_FLOORS) 79 %. Both lost 6-9 points (one FMUL per logit) when
# the logits moved from base 2 to the contract's natural units (_common.logit: the
# backward's P = e^{s - lse} must round s as the forward did; base 2 left dq off by up to
# 93 % at large biases).
CEILING_FLOORS = {
    ("fwd", "bf16", 90, "d <= 128"): 0.60,
    ("fwd_o", "bf16", 90, "d <= 128"): 0.85,
    ("bwd_dq", "bf16", 90, "d <= 128"): 0.90,
    ("bwd_dk", "bf16", 90, "d <= 128"): 0.75,
    ("fwd", "bf16", 80, "d <= 128"): 0.90,  # 93 % (99 % in base 2)
    ("fwd_o", "bf16", 80, "d <= 128"): 0.95,
    ("bwd_dq", "bf16", 80, "d <= 128"): 0.95,
    ("bwd_dk", "bf16", 80, "d <= 128"): 0.95,
    ("fwd", "tf32", 90, "d <= 128"): 0.65,
    ("fwd_o", "tf32", 90, "d <= 128"): 0.85,
    # the two-sided lse (first version, a few points under the model): its forward pays a
    # second max / sum-exp per tile along the columns, whose cross-warp reduction makes
    # the sm_90 tile issue-bound (26 %); its backward grids two exps per logit
    ("two_sided_fwd", "bf16", 90, "d <= 128"): 0.22,
    ("two_sided_bwd_dq", "bf16", 90, "d <= 128"): 0.60,
    ("two_sided_bwd_dk", "bf16", 90, "d <= 128"): 0.58,
    ("two_sided_fwd", "bf16", 80, "d <= 128"): 0.50,
    ("two_sided_bwd_dq", "bf16", 80, "d <= 128"): 0.85,
    ("two_sided_bwd_dk", "bf16", 80, "d <= 128"): 0.85,
    # pairwise_sigmoid (first version, a few points under the model): issue-bound, its
    # softplus costs ~8 more instructions per logit than the lse's exp (the log1p
    # polynomial, the max), its weights ~6 (the reciprocal, the sign, the two branches of
    # the sigmoid) and the dk grid's dbias tile one more
    ("sigmoid_fwd", "bf16", 90, "d <= 128"): 0.36,
    ("sigmoid_bwd_dq", "bf16", 90, "d <= 128"): 0.64,
    ("sigmoid_bwd_dk", "bf16", 90, "d <= 128"): 0.60,
    ("sigmoid_fwd", "bf16", 80, "d <= 128"): 0.64,
    ("sigmoid_bwd_dq", "bf16", 80, "d <= 128"): 0.87,
    ("sigmoid_bwd_dk", "bf16", 80, "d <= 128"): 0.84,
}
# The same for the common call (normalization and self-exclusion, no bias or labels:
# SimCLR / NT-Xent, CLIP), the report's "(no bias, no labels)" rows: the issue's aims
# (forward >= 75 %, backward grids >= 60 % on sm_90 bf16) with a few points of margin.
SIMCLR_FLOORS = {
    ("fwd", "bf16", 90, "d <= 128"): 0.75,
    ("fwd_o", "bf16", 90, "d <= 128"): 0.90,
    ("bwd_dq", "bf16", 90, "d <= 128"): 0.90,
    ("bwd_dk", "bf16", 90, "d <= 128"): 0.90,
    ("fwd", "bf16", 80, "d <= 128"): 0.95,
    ("fwd_o", "bf16", 80, "d <= 128"): 0.95,
    ("bwd_dq", "bf16", 80, "d <= 128"): 0.95,
    ("bwd_dk", "bf16", 80, "d <= 128"): 0.95,
    # pairwise_sigmoid without bias and labels (the model's figures less a few points)
    ("sigmoid_fwd", "bf16", 90, "d <= 128"): 0.42,
    ("sigmoid_bwd_dq", "bf16", 90, "d <= 128"): 0.70,
    ("sigmoid_bwd_dk", "bf16", 90, "d <= 128"): 0.68,
    ("sigmoid_fwd", "bf16", 80, "d <= 128"): 0.72,
    ("sigmoid_bwd_dq", "bf16", 80, "d <= 128"): 0.95,
    ("sigmoid_bwd_dk", "bf16", 80, "d <= 128"): 0.95,
}


def predict(kernel, dtype, arch, cfg, instr, mufu, mma):
    """(logits per thread per tile, predicted ceiling, bound) of one streamed tile of a
    single-tile config (d = its BLOCK_D).

    A program's tile costs, on its SM's shared resources: tensor (or FFMA) time
    flops / rate, MUFU time (every MUFU op: ex2, rcp, lg2) x threads / 16, issue time
    instr x warps / 4. Perfect
    overlap gives the ceiling tensor / max(tensor, MUFU, issue). Chunked configs are not
    modelled: ptxas lays their inner d loops outside the tile loop's address range."""
    threads = 32 * cfg.num_warps
    elems = cfg.block_o * cfg.block_i // threads
    if instr < 0 or not cfg.single:
        return elems, -1.0, ""
    n_mm = 1 if kernel == "fwd" else 2  # logits; + o (fwd_o) or + dx (backward)
    flops = 2 * n_mm * cfg.block_o * cfg.block_i * cfg.block_d
    rate = RATES[arch]
    t = dict(tensor=flops / rate["flop"][dtype], mufu=mufu * threads / rate["mufu"],
             issue=instr * cfg.num_warps / rate["issue"])
    bound = max(t, key=t.get)
    return elems, round(t["tensor"] / t[bound], 3), bound
