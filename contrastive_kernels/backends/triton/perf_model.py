"""The performance model of a compiled Triton config, from its SASS (no GPU).

Per streamed tile of one program: tensor-core instructions, MUFU.EX2 (exps), every MUFU op
(exps, reciprocals, logarithms: the sigmoid backward's 1 / (1 + e)) and all issued
instructions of the main loop (:func:`loop_counts`); with the per-SM rates of
:data:`RATES`, the predicted ceiling as a fraction of the dtype's tensor peak
(:func:`predict`). The report of :mod:`.aot` lists both; its test enforces
:data:`CEILING_FLOORS` and :func:`ex2_limit` (no tile computed twice).
"""

from __future__ import annotations

import dataclasses
import functools
import math
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


def _parse(sass: str) -> list:
    """(address, opcode, branch target or None) of every SASS instruction."""
    ins = []
    for m in _INSTR.finditer(sass):
        addr, text = int(m[1], 16), m[2]
        op = _opcode(text)
        target = None
        if op == "BRA":
            t = re.search(r"0x([0-9a-f]+)", text.split("BRA", 1)[1])
            target = int(t[1], 16) if t else None
        ins.append((addr, op, target))
    return ins


def _main_loop(ins):
    """(lo, hi, skipped) of the main loop: the innermost loop (backward branch) holding
    the most MUFU.EX2 and tensor instructions, and the blocks that forward branches
    inside it skip (mask blocks; the chunked configs' d loops behind their zero-trip
    guard). None when there is no such loop."""
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
    return lo, hi, skipped


def mma_flop(op: str) -> int:
    """FLOPs one warp's issue of a tensor instruction contributes: HMMA.mnk / DMMA.mxnxk
    are warp-wide (2 m n k), HGMMA.64xNxK is warpgroup-wide (each of its 4 warps issues
    it: 2 64 N K / 4)."""
    m = re.match(r"(HGMMA|HMMA|DMMA)\.(\d+)x?(\d+)x?(\d+)", op)
    if not m:
        return 0
    if m[1] == "HMMA" or (m[1] == "DMMA" and "x" not in op.split(".")[1]):
        digits = op.split(".")[1]  # 16816 -> 16 8 16, 1688 -> 16 8 8, 884 -> 8 8 4
        mnk = {"16816": (16, 8, 16), "1688": (16, 8, 8), "884": (8, 8, 4)}.get(digits)
        return 2 * mnk[0] * mnk[1] * mnk[2] if mnk else 0
    mm, n, k = int(m[2]), int(m[3]), int(m[4])
    return 2 * mm * n * k // (4 if m[1] == "HGMMA" else 1)


def _count(ins, lo, hi, skipped):
    """(instructions, MUFU.EX2, tensor instructions, MUFU ops, tensor FLOPs per warp) in
    [lo, hi] on the common path (outside the skipped blocks)."""
    total = n_ex2 = n_mma = n_mufu = flop = 0
    for a, op, _ in ins:
        if not lo <= a <= hi or any(b < a < t for b, t in skipped):
            continue
        total += 1
        n_ex2 += op.startswith("MUFU.EX2")
        n_mma += op.startswith(_TENSOR_OPS)
        n_mufu += op.startswith("MUFU.")
        flop += mma_flop(op)
    return total, n_ex2, n_mma, n_mufu, flop


@functools.lru_cache(maxsize=4)
def _parsed(sass: str):
    """(instructions, main loop or None) of one SASS text: loop_counts, chunk_counts and
    mma_coverage analyse the same row one after the other."""
    ins = _parse(sass)
    return ins, _main_loop(ins)


def loop_counts(sass: str):
    """(instructions, MUFU.EX2, tensor-core instructions, MUFU ops of any kind) per thread
    per iteration of the main loop (:func:`_main_loop`), on its common path: blocks that a
    forward branch inside the loop skips (the self-exclusion mask of diagonal tiles, the
    bound mask of the last tile, a chunked config's d loops: :func:`chunk_counts`) are
    left out. None when there is no such loop."""
    ins, found = _parsed(sass)
    if found is None:
        return None
    return _count(ins, *found)[:4]


@dataclasses.dataclass(frozen=True)
class ChunkCounts:
    """What a chunked config's d loops add to one streamed tile, per thread: ``once``
    instructions per tile (each loop's set-up behind its zero-trip guard) and, per d
    chunk, ``instr`` instructions, ``mufu`` MUFU ops, ``mma`` tensor instructions and
    ``flop`` tensor FLOPs per warp (summed over the tile's d loops: the score's q k^T
    and, in the backward, the accumulator's read-multiply-write)."""
    once: int = 0
    instr: int = 0
    mufu: int = 0
    mma: int = 0
    flop: int = 0


def chunk_counts(sass: str):
    """The d loops of a chunked config: the loops nested inside the main loop, each
    behind the forward branch that skips it when d has no chunk; their set-up (inside
    the guard, outside the loop) counts once per tile, their body once per d chunk.
    ptxas keeps them inside the main loop's address range; the main loop's own counts
    (:func:`loop_counts`) leave them out. None without a main loop."""
    ins, found = _parsed(sass)
    if found is None:
        return None
    lo, hi, skipped = found
    inner = [(t, a) for a, op, t in ins if t is not None and lo < t < a < hi]
    once = instr = mufu = mma = flop = 0
    for t, a in inner:
        guards = [(b, g) for b, g in skipped if b < t and a < g]
        body = _count(ins, t, a, [(b, g) for b, g in skipped if t <= b and g <= a])
        instr += body[0]
        mufu += body[3]
        mma += body[2]
        flop += body[4]
        if guards:
            b, g = min(guards, key=lambda bg: bg[1] - bg[0])
            once += _count(ins, b + 1, g - 1, [(t - 1, a + 1)])[0]
    return ChunkCounts(once, instr, mufu, mma, flop)


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
    # pairwise_sigmoid at d = CHUNKED_MODEL_D (768, chunked d): the forward is
    # tensor-bound (12 chunks of q k^T against one softplus tile); the backward grids are
    # issue-bound at ~37 %: every d chunk reads, multiplies and writes back the fp32
    # [BLOCK_O, 64] accumulator in global memory (~320 instructions per chunk per thread)
    ("sigmoid_fwd", "bf16", 90, "d chunked"): 0.95,
    ("sigmoid_bwd_dq", "bf16", 90, "d chunked"): 0.33,
    ("sigmoid_bwd_dk", "bf16", 90, "d chunked"): 0.32,
    ("sigmoid_fwd", "bf16", 80, "d chunked"): 0.95,
    ("sigmoid_bwd_dq", "bf16", 80, "d chunked"): 0.34,
    ("sigmoid_bwd_dk", "bf16", 80, "d chunked"): 0.34,
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


# The d at which a chunked config's ceiling is modelled: the embedding width of CLIP /
# SigLIP ViT-L (and of siglip-kernel's published B = 65536 figure), past every single
# tile's range (d <= 512).
CHUNKED_MODEL_D = 768


def tile_flops(kernel, cfg, d=CHUNKED_MODEL_D) -> int:
    """The tensor FLOPs the model charges one streamed tile: 2 BLOCK_O BLOCK_I width per
    product (width BLOCK_D for a single-tile config, ``d`` for a chunked one); one product
    for ``fwd`` (the logits), two otherwise (+ o for ``fwd_o``, + dx for the backward)."""
    n_mm = 1 if kernel == "fwd" else 2
    return 2 * n_mm * cfg.block_o * cfg.block_i * (cfg.block_d if cfg.single else d)


def predict(kernel, dtype, arch, cfg, instr, mufu, mma, chunk=None, d=CHUNKED_MODEL_D):
    """(logits per thread per tile, predicted ceiling, bound) of one streamed tile: at
    d = BLOCK_D for a single-tile config; for a chunked one at ``d`` (ceil(d / BLOCK_D)
    chunks), its d loops (``chunk``: :class:`ChunkCounts`) added to the tile loop's
    counts.

    A program's tile costs, on its SM's shared resources: tensor (or FFMA) time
    flops / rate, MUFU time (every MUFU op: ex2, rcp, lg2) x threads / 16, issue time
    instr x warps / 4. Perfect overlap gives the ceiling tensor / max(tensor, MUFU,
    issue)."""
    threads = 32 * cfg.num_warps
    elems = cfg.block_o * cfg.block_i // threads
    if instr < 0 or (not cfg.single and chunk is None):
        return elems, -1.0, ""
    if not cfg.single:
        chunks = math.ceil(d / cfg.block_d)
        instr = instr + chunk.once + chunks * chunk.instr
        mufu = mufu + chunks * chunk.mufu
    flops = tile_flops(kernel, cfg, d)
    rate = RATES[arch]
    t = dict(tensor=flops / rate["flop"][dtype], mufu=mufu * threads / rate["mufu"],
             issue=instr * cfg.num_warps / rate["issue"])
    bound = max(t, key=t.get)
    return elems, round(t["tensor"] / t[bound], 3), bound


def mma_coverage(sass: str, kernel, cfg, chunk=None, d=CHUNKED_MODEL_D) -> float:
    """The tensor FLOPs of one streamed tile that the counted SASS holds (the main loop's
    common path and, chunked, ceil(d / BLOCK_D) passes of its d loops) over the FLOPs the
    model charges the tile: 1 when the counts hold every product of the tile and nothing
    twice. -1 without tensor instructions (IEEE fp32) or without a main loop."""
    ins, found = _parsed(sass)
    if found is None:
        return -1.0
    flop = _count(ins, *found)[4]
    if not cfg.single:
        if chunk is None:
            return -1.0
        flop += math.ceil(d / cfg.block_d) * chunk.flop
    if not flop:
        return -1.0
    return round(cfg.num_warps * flop / tile_flops(kernel, cfg, d), 3)
