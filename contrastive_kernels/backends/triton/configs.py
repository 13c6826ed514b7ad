"""Fixed launch configurations of the Triton kernels, chosen on paper.

One entry per (kernel, d range, dtype class, arch). Dtype classes: "16" (fp16 / bf16),
"tf32" (fp32 operands on tf32 tensor cores, torch precision "high" / "medium"), "fp32"
(IEEE fp32, torch's default "highest": FFMA on the CUDA cores), "64". Kernels:

- ``fwd``    forward, lse only;
- ``fwd_o``  forward with o (an extra [BLOCK_O, BLOCK_D] fp32 accumulator);
- ``bwd_dq`` backward on the row grid (dq, and dscale);
- ``bwd_dk`` backward on the column grid (dk);
- ``two_sided_fwd`` / ``two_sided_bwd_dq`` / ``two_sided_bwd_dk``: the two-sided lse's
  sweeps (REDUCTION = ROWS_AND_COLUMNS), on the configs of ``fwd`` / ``bwd_dq`` /
  ``bwd_dk`` except where :data:`TWO_SIDED_TILES` gives a smaller tile;
- ``sigmoid_fwd`` / ``sigmoid_bwd_dq`` / ``sigmoid_bwd_dk``: pairwise_sigmoid's sweeps
  (REDUCTION = SIGMOID), likewise on the shared configs except where
  :data:`SIGMOID_TILES` gives another.

``block_o`` rows (of q for fwd / bwd_dq, of k for bwd_dk) are owned by one program;
``block_i`` is the tile of the streamed side. When ``next_pow2(d) <= block_d`` the whole
feature dimension is one tile (``SINGLE_D``: the owned tile is loaded once, the
accumulators live in registers); otherwise the kernels loop over d in ``block_d`` chunks
and the [rows, d] accumulators (o, dq, dk) live in an fp32 buffer in global memory.

Budget (checked by ``tests/backends/test_triton_aot.py`` through ptxas for sm_80 and
sm_90, see ``docs/triton_compile_report.md``): no spills, at most 255 registers per
thread, and shared memory within 99 KiB for the sm_80 family (so sm_86 / sm_89 fit too) /
227 KiB for sm_90. Reasoning per entry:

- registers: an fp32 [R, C] tile costs R * C / (32 * num_warps) registers per thread;
  the logits tile, the accumulator and the owned operand together stay near 128-160,
  which leaves room for addresses and the softmax temporaries;
- shared memory: the streamed operand is multi-buffered (``num_stages`` copies of
  [block_i, block_d]) and the owned one is staged once; fp32 tiles cost twice fp16.
- sm_90 fp16 / bf16: block_o is a multiple of 64 per warp group so tl.dot lowers to wgmma;
- no duplicated work: a 64 x 32 logits tile cannot be split over 8 warps, which then
  compute it twice (the report counts the exps per thread to catch it).

Autotuning is opt-in: set ``CONTRASTIVE_KERNELS_TRITON_AUTOTUNE=1`` to let
``triton.autotune`` pick among :func:`autotune_space` (same ``block_d``) per d and dtype.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator, Optional

import torch

from ... import env

AUTOTUNE_ENV = env.name("TRITON_AUTOTUNE")
KERNELS = ("fwd", "fwd_o", "bwd_dq", "bwd_dk")
ARCHS = (80, 90)
INF = None  # d_max of the chunked entry


@dataclasses.dataclass(frozen=True)
class Config:
    block_o: int
    block_i: int
    block_d: int  # single-tile cap when single, else the chunk size
    num_warps: int
    num_stages: int
    single: bool  # True: d up to block_d in one tile; False: chunked

    def describe(self) -> str:
        mode = "single" if self.single else "chunk"
        return (f"O{self.block_o} I{self.block_i} D{self.block_d}({mode}) "
                f"w{self.num_warps} s{self.num_stages}")


def _c(bo, bi, bd, w, s, single=True):
    return Config(bo, bi, bd, w, s, single)


# (kernel, dtype class, arch) -> [(d_max, Config)], d_max ascending, the last one chunked.
# A single-tile entry covers d up to d_max with BLOCK_D = next_pow2(d) (the AOT report
# compiles its largest tile). Choices are checked in docs/triton_compile_report.md (no
# spills, no duplicated tile); where a first choice spilled, the streamed tile was halved.
# 8 warps on a 64-row tile only with a streamed tile of 64: with 32 columns the two warp
# groups cannot split the logits tile and both compute it (twice the exps and MMAs).
# d <= 512 (CLIP's widths): one tile, the [rows, 512] fp32 accumulator in registers (128
# registers per thread at 4 warps x 16 / 32 rows), instead of the chunked path's
# read-modify-write of it in global memory on every streamed tile. The backward grids fit
# only with 16 owned rows (mma.sync, no wgmma: 64 rows spill at any warp count); that
# re-streams the other operand every 16 rows, 2 BLOCK_O = 32 FLOP per byte read from L2,
# still above the chunked path's 4 BLOCK_O BLOCK_I / (2 BLOCK_I + 10 BLOCK_O) = 12-23
# (docs/triton.md, "Large d").
_T16_80 = {
    "fwd": [(64, _c(128, 64, 64, 4, 3)), (128, _c(128, 64, 128, 8, 3)),
            (256, _c(128, 64, 256, 8, 2)), (512, _c(64, 32, 512, 4, 1)),
            (INF, _c(128, 64, 64, 8, 3, False))],
    "fwd_o": [(128, _c(128, 32, 128, 8, 2)), (256, _c(64, 32, 256, 4, 2)),
              (512, _c(32, 32, 512, 4, 2)), (INF, _c(128, 64, 64, 8, 3, False))],
    # fp16's online rescaling costs the dq grid a few registers more: 32-row tiles
    "bwd_dq": [(128, _c(32, 32, 128, 4, 2)), (256, _c(32, 32, 256, 4, 2)),
               (512, _c(16, 32, 512, 4, 2)), (INF, _c(128, 16, 64, 8, 2, False))],
    "bwd_dk": [(128, _c(64, 32, 128, 4, 2)), (256, _c(64, 64, 256, 8, 2)),
               (512, _c(16, 32, 512, 4, 2)), (INF, _c(128, 32, 64, 8, 2, False))],
}
_T16_90 = {  # block_o a multiple of 64 rows per warp group: tl.dot lowers to wgmma
    "fwd": [(64, _c(128, 64, 64, 4, 3)), (128, _c(128, 128, 128, 8, 3)),
            (256, _c(128, 64, 256, 8, 2)), (512, _c(64, 64, 512, 4, 2)),
            (INF, _c(128, 128, 64, 8, 4, False))],
    "fwd_o": [(128, _c(128, 64, 128, 8, 3)), (256, _c(64, 64, 256, 4, 2)),
              (512, _c(64, 64, 512, 8, 2)), (INF, _c(128, 64, 64, 8, 3, False))],
    "bwd_dq": [(128, _c(128, 32, 128, 8, 2)), (256, _c(64, 64, 256, 8, 2)),
               (512, _c(16, 64, 512, 4, 3)), (INF, _c(128, 32, 64, 8, 3, False))],
    "bwd_dk": [(128, _c(128, 32, 128, 8, 2)), (256, _c(64, 64, 256, 8, 2)),
               (512, _c(16, 64, 512, 4, 3)), (INF, _c(128, 64, 64, 8, 3, False))],
}
_TF32 = {  # tf32 operands: twice the bytes of fp16 per tile
    "fwd": [(64, _c(128, 64, 64, 8, 3)), (128, _c(64, 64, 128, 4, 2)),
            (INF, _c(128, 64, 32, 8, 3, False))],
    "fwd_o": [(128, _c(64, 32, 128, 4, 2)), (INF, _c(64, 64, 32, 4, 3, False))],
    "bwd_dq": [(64, _c(64, 32, 64, 4, 2)), (INF, _c(64, 32, 32, 4, 2, False))],
    "bwd_dk": [(64, _c(64, 32, 64, 4, 2)), (INF, _c(64, 32, 32, 4, 2, False))],
}
# IEEE fp32 (torch's default precision "highest"): tl.dot runs as FFMA on the CUDA cores
# with both operands and the product in registers, so the tiles are small and d is
# chunked early; the chunk loop costs little next to the FFMAs.
_FP32 = {
    "fwd": [(32, _c(64, 64, 32, 4, 2)), (INF, _c(64, 64, 32, 4, 2, False))],
    "fwd_o": [(32, _c(64, 32, 32, 4, 2)), (INF, _c(64, 32, 32, 4, 2, False))],
    # one pipeline stage: with two, sm_80's software pipeline spilled a few bytes
    "bwd_dq": [(32, _c(32, 32, 32, 4, 2)), (INF, _c(32, 32, 16, 4, 1, False))],
    "bwd_dk": [(32, _c(32, 32, 32, 4, 2)), (INF, _c(32, 32, 16, 4, 1, False))],
}
_T64 = {  # fp64 (DMMA on sm_80 / sm_90): correctness more than speed
    "fwd": [(32, _c(64, 32, 32, 4, 2)), (INF, _c(64, 32, 16, 4, 2, False))],
    "fwd_o": [(32, _c(64, 32, 32, 4, 2)), (INF, _c(64, 32, 16, 4, 2, False))],
    "bwd_dq": [(32, _c(32, 32, 32, 4, 2)), (INF, _c(64, 16, 16, 4, 2, False))],
    "bwd_dk": [(32, _c(32, 32, 32, 4, 2)), (INF, _c(64, 16, 16, 4, 2, False))],
}
TABLE = {
    ("16", 80): _T16_80, ("16", 90): _T16_90,
    ("tf32", 80): _TF32, ("tf32", 90): _TF32,
    ("fp32", 80): _FP32, ("fp32", 90): _FP32,
    ("64", 80): _T64, ("64", 90): _T64,
}
DTYPE_CLASSES = ("16", "tf32", "fp32", "64")

# two-sided kernel -> the kernel whose table entries it runs with
TWO_SIDED = {"two_sided_fwd": "fwd", "two_sided_bwd_dq": "bwd_dq",
             "two_sided_bwd_dk": "bwd_dk"}
# (kernel, dtype class, arch, d_max) -> the two-sided kernel's config where the shared one
# spills in the compile report: the forward's column partials (a second max / sum-exp per
# tile) and the backward's second softmax (a [rows, cols] exp and its statistics) cost
# registers. Halved tiles, chosen as the first-choice fixes were above.
TWO_SIDED_TILES = {
    ("bwd_dk", "16", 80, 128): _c(32, 32, 128, 4, 2),  # fp16: 8 B spilled at O64
    ("bwd_dk", "16", 80, 256): _c(32, 32, 256, 4, 2),  # fp16: 72 B at O64 I64 w8
    ("fwd", "fp32", 80, 32): _c(64, 32, 32, 4, 2),  # IEEE FFMA tiles: 20 B at I64
    ("fwd", "fp32", 90, 32): _c(64, 32, 32, 4, 2),  # 108 B at I64
    ("fwd", "64", 80, INF): _c(32, 32, 16, 4, 2, False),  # fp64: 8 B at O64
    ("fwd", "64", 90, INF): _c(32, 32, 16, 4, 2, False),  # 12 B at O64
    ("bwd_dq", "64", 90, 32): _c(32, 16, 32, 4, 2),  # 12 B at I32
}
# pairwise_sigmoid's kernels -> the kernels whose table entries they run with, and
# (kernel, dtype class, arch, d_max) -> its own config where the shared one does not fit
# (its backward keeps a dbias accumulator tile beside dscale's on the dk grid).
SIGMOID = {"sigmoid_fwd": "fwd", "sigmoid_bwd_dq": "bwd_dq", "sigmoid_bwd_dk": "bwd_dk"}
SIGMOID_TILES = {
    ("bwd_dk", "16", 80, 128): _c(32, 32, 128, 4, 2),  # fp16: 16 B spilled at O64
    ("bwd_dk", "16", 80, 256): _c(32, 32, 256, 4, 1),  # 72 B at O64 I64 w8, 8 B at s2
    ("bwd_dk", "16", 80, INF): _c(128, 16, 64, 8, 2, False),  # 72 B at I32
    # 64 rows spill at any warp count (220 B at I64 w8, 976 B at I32 w4, 160 B at s1):
    # 16 rows on mma.sync, as the d <= 512 tiles
    ("bwd_dq", "16", 90, 256): _c(16, 64, 256, 4, 3),
    ("bwd_dk", "16", 90, 256): _c(16, 64, 256, 4, 3),
    ("bwd_dk", "16", 90, INF): _c(128, 32, 64, 8, 3, False),  # 548 B at I64
    ("bwd_dk", "fp32", 90, 32): _c(32, 16, 32, 4, 2),  # IEEE FFMA tiles: 12 B at I32
}
# the variants' (base kernel, own tiles)
_VARIANTS = {**{k: (b, TWO_SIDED_TILES) for k, b in TWO_SIDED.items()},
             **{k: (b, SIGMOID_TILES) for k, b in SIGMOID.items()}}
# The launcher pads the streamed side's per-row vectors to a multiple of this (every
# block_i divides it): the kernels load them a whole tile at a time without a mask.
KEY_PAD = 128

# Under TRITON_INTERPRET=1 each tile op is a numpy call: modest tiles keep the tests quick
# while odd shapes still cross several row / key tiles and d = 130 takes the chunked path.
INTERPRET = {kernel: [(64, _c(64, 64, 64, 4, 1)), (INF, _c(64, 64, 64, 4, 1, False))]
             for kernel in KERNELS}


def dtype_class(dtype: torch.dtype, tf32: bool = True) -> str:
    """Config class: "16" (fp16 / bf16), "tf32" / "fp32" (fp32 operands on tf32 tensor
    cores / as IEEE fp32), "64"."""
    if dtype in (torch.float16, torch.bfloat16):
        return "16"
    if dtype == torch.float32:
        return "tf32" if tf32 else "fp32"
    if dtype == torch.float64:
        return "64"
    raise TypeError(f"no Triton config for {dtype}")


# Shared memory per block (opt-in maximum) by compute capability; the tables need up to
# 99 KiB (the 80 family) / 227 KiB (the 90 family).
_FAMILY = {
    8: 80,   # sm_80 (163 KiB), sm_86 / sm_89 (99 KiB), sm_87 (163 KiB): mma.sync
    9: 90,   # sm_90 (227 KiB): wgmma
    10: 90,  # sm_100 / sm_103 (227 KiB): the sm_90 tiles fit; not measured there
    12: 80,  # sm_120 / sm_121 (99 KiB): mma.sync like sm_80; the sm_90 tiles would not fit
}


def unsupported_arch(capability) -> Optional[str]:
    """Why no config family fits compute capability ``capability``, or None."""
    major, minor = capability
    if major < 8:
        return (f"compute capability {major}.{minor}: the configs need sm_80's tensor cores "
                "(bf16, tf32) and up to 99 KiB of shared memory per block (sm_75 has 64 KiB)")
    if major not in _FAMILY:
        return (f"compute capability {major}.{minor}: no config family checked for it "
                "(known: 8.x, 9.0, 10.x, 12.x); set CONTRASTIVE_KERNELS_TRITON_ARCH=80 or 90 "
                "to force one")
    return None


def arch_of(capability) -> int:
    """Config family of a compute capability (see ``_FAMILY``); ValueError when none fits."""
    reason = unsupported_arch(capability)
    if reason:
        raise ValueError(reason)
    return _FAMILY[capability[0]]


_forced: list = []


@contextlib.contextmanager
def forced(config: Config) -> Iterator[None]:
    """Use ``config`` for every kernel launched in the block (tests: force a code path)."""
    _forced.append(config)
    try:
        yield
    finally:
        _forced.pop()


def next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


MIN_DOT_K = 16


def select(kernel: str, d: int, dtype: torch.dtype, arch: Optional[int],
           tf32: bool = True) -> Config:
    """The fixed config for ``kernel`` at feature size d; ``arch`` None = interpreter;
    ``tf32``: whether fp32 operands run on tf32 tensor cores (else IEEE fp32)."""
    if _forced:
        return _forced[-1]
    base, own = _VARIANTS.get(kernel, (kernel, {}))
    dclass = None if arch is None else dtype_class(dtype, tf32)
    entries = INTERPRET[base] if arch is None else TABLE[(dclass, arch)][base]
    for d_max, cfg in entries:
        if d_max is None or d <= d_max:
            break
    return own.get((base, dclass, arch, d_max), cfg)


def block_d_for(cfg: Config, d: int, dtype: torch.dtype) -> tuple:
    """(BLOCK_D, single): the d tile actually launched for feature size d."""
    if cfg.single and next_pow2(d) <= cfg.block_d:
        return max(MIN_DOT_K, next_pow2(d)), True
    return cfg.block_d, False


def shipped(two_sided: bool = False, sigmoid: bool = False):
    """Every (kernel, dtype class, arch, d_max, Config) of the GPU tables (AOT report):
    the core op's kernels, or (``two_sided``) the two-sided lse's, or (``sigmoid``)
    pairwise_sigmoid's."""
    for (dclass, arch), table in TABLE.items():
        if two_sided or sigmoid:
            for kernel, base in (TWO_SIDED if two_sided else SIGMOID).items():
                for d_max, cfg in table[base]:
                    yield (kernel, dclass, arch, d_max,
                           _VARIANTS[kernel][1].get((base, dclass, arch, d_max), cfg))
        else:
            for kernel in KERNELS:
                for d_max, cfg in table[kernel]:
                    yield kernel, dclass, arch, d_max, cfg


def autotune_enabled() -> bool:
    return env.get("TRITON_AUTOTUNE", "") not in ("", "0")


def autotune_space(cfg: Config) -> list:
    """Neighbours of the default config (same block_d) for opt-in autotuning."""
    out = [cfg]
    for bo in (64, 128):
        for bi in (32, 64, 128):
            for w in (4, 8):
                for s in (2, 3, 4):
                    c = Config(bo, bi, cfg.block_d, w, s, cfg.single)
                    if c not in out:
                        out.append(c)
    return out
