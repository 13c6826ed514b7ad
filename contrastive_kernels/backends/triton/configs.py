"""Fixed launch configurations of the Triton kernels, chosen on paper.

One entry per (kernel, d range, dtype class, arch). Kernels:

- ``fwd``    forward, lse only;
- ``fwd_o``  forward with o (an extra [BLOCK_O, BLOCK_D] fp32 accumulator);
- ``bwd_dq`` backward on the row grid (dq, and dscale);
- ``bwd_dk`` backward on the column grid (dk).

``block_o`` rows (of q for fwd / bwd_dq, of k for bwd_dk) are owned by one program;
``block_i`` is the tile of the streamed side. When ``next_pow2(d) <= block_d`` the whole
feature dimension is one tile (``SINGLE_D``: the owned tile is loaded once, the
accumulators live in registers); otherwise the kernels loop over d in ``block_d`` chunks
and the [rows, d] accumulators (o, dq, dk) live in an fp32 buffer in global memory.

Budget (checked by ``tests/test_triton_aot.py`` through ptxas for sm_80 and sm_90, see
``docs/triton_compile_report.md``): no spills, at most 255 registers per thread, and
shared memory within 99 KiB for the sm_80 family (so sm_86 / sm_89 fit too) / 227 KiB
for sm_90. Reasoning per entry:

- registers: an fp32 [R, C] tile costs R * C / (32 * num_warps) registers per thread;
  the logits tile, the accumulator and the owned operand together stay near 128-160,
  which leaves room for addresses and the softmax temporaries;
- shared memory: the streamed operand is multi-buffered (``num_stages`` copies of
  [block_i, block_d]) and the owned one is staged once; fp32 tiles cost twice fp16.
- sm_90 fp16 / bf16: block_o is a multiple of 64 per warp group so tl.dot lowers to wgmma.

Autotuning is opt-in: set ``CONTRASTIVE_KERNELS_TRITON_AUTOTUNE=1`` to let
``triton.autotune`` pick among :func:`autotune_space` (same ``block_d``) per d and dtype.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Iterator, Optional

import torch

AUTOTUNE_ENV = "CONTRASTIVE_KERNELS_TRITON_AUTOTUNE"
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
# compiles its largest tile). Where ptxas reported spills for a first choice, the streamed
# tile was halved (block_i 64 -> 32) or the warps doubled: see docs/triton_compile_report.md.
_T16_80 = {
    "fwd": [(64, _c(128, 64, 64, 4, 3)), (128, _c(128, 64, 128, 8, 3)),
            (256, _c(128, 64, 256, 8, 2)), (INF, _c(128, 64, 64, 8, 3, False))],
    "fwd_o": [(128, _c(128, 64, 128, 8, 2)), (256, _c(64, 64, 256, 8, 2)),
              (INF, _c(128, 64, 64, 8, 3, False))],
    "bwd_dq": [(128, _c(64, 32, 128, 4, 2)), (256, _c(64, 32, 256, 8, 2)),
               (INF, _c(128, 64, 64, 8, 2, False))],
    "bwd_dk": [(128, _c(64, 32, 128, 4, 2)), (256, _c(64, 32, 256, 8, 2)),
               (INF, _c(128, 64, 64, 8, 2, False))],
}
_T16_90 = {  # block_o a multiple of 64 rows per warp group: tl.dot lowers to wgmma
    "fwd": [(64, _c(128, 64, 64, 4, 3)), (128, _c(128, 128, 128, 8, 3)),
            (256, _c(128, 64, 256, 8, 2)), (INF, _c(128, 128, 64, 8, 4, False))],
    "fwd_o": [(128, _c(128, 64, 128, 8, 3)), (256, _c(64, 64, 256, 8, 2)),
              (INF, _c(128, 64, 64, 8, 3, False))],
    "bwd_dq": [(128, _c(128, 32, 128, 8, 2)), (256, _c(64, 32, 256, 8, 2)),
               (INF, _c(128, 64, 64, 8, 3, False))],
    "bwd_dk": [(128, _c(128, 32, 128, 8, 2)), (256, _c(64, 32, 256, 8, 2)),
               (INF, _c(128, 64, 64, 8, 3, False))],
}
_T32 = {  # tf32 / IEEE fp32 operands: twice the bytes of fp16 per tile
    "fwd": [(64, _c(128, 64, 64, 8, 3)), (128, _c(64, 64, 128, 4, 2)),
            (INF, _c(128, 64, 32, 8, 3, False))],
    "fwd_o": [(128, _c(64, 32, 128, 4, 2)), (INF, _c(64, 64, 32, 4, 3, False))],
    "bwd_dq": [(128, _c(64, 32, 128, 8, 2)), (INF, _c(64, 64, 32, 4, 2, False))],
    "bwd_dk": [(128, _c(64, 32, 128, 8, 2)), (INF, _c(64, 64, 32, 4, 2, False))],
}
_T64 = {  # fp64 (DMMA on sm_80 / sm_90): correctness more than speed
    "fwd": [(32, _c(64, 32, 32, 4, 2)), (INF, _c(64, 32, 16, 4, 2, False))],
    "fwd_o": [(32, _c(64, 32, 32, 4, 2)), (INF, _c(64, 32, 16, 4, 2, False))],
    "bwd_dq": [(32, _c(64, 32, 32, 8, 2)), (INF, _c(64, 32, 16, 4, 2, False))],
    "bwd_dk": [(32, _c(64, 32, 32, 8, 2)), (INF, _c(64, 32, 16, 4, 2, False))],
}
TABLE = {
    ("16", 80): _T16_80, ("16", 90): _T16_90,
    ("32", 80): _T32, ("32", 90): _T32,
    ("64", 80): _T64, ("64", 90): _T64,
}

# Under TRITON_INTERPRET=1 each tile op is a numpy call: modest tiles keep the tests quick
# while odd shapes still cross several row / key tiles and d = 130 takes the chunked path.
INTERPRET = {kernel: [(64, _c(64, 64, 64, 4, 1)), (INF, _c(64, 64, 64, 4, 1, False))]
             for kernel in KERNELS}


def dtype_class(dtype: torch.dtype) -> str:
    if dtype in (torch.float16, torch.bfloat16):
        return "16"
    if dtype == torch.float32:
        return "32"
    if dtype == torch.float64:
        return "64"
    raise TypeError(f"no Triton config for {dtype}")


def arch_of(capability) -> int:
    """Config family of a compute capability: 90 for Hopper and newer, 80 below."""
    major, minor = capability
    return 90 if major * 10 + minor >= 90 else 80


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


MIN_DOT_K = {"16": 16, "32": 16, "64": 16}


def select(kernel: str, d: int, dtype: torch.dtype, arch: Optional[int]) -> Config:
    """The fixed config for ``kernel`` at feature size d; ``arch`` None = interpreter."""
    if _forced:
        return _forced[-1]
    table = INTERPRET if arch is None else TABLE[(dtype_class(dtype), arch)]
    entries = table[kernel]
    for d_max, cfg in entries:
        if d_max is not None and d <= d_max:
            return cfg
    return entries[-1][1]


def block_d_for(cfg: Config, d: int, dtype: torch.dtype) -> tuple:
    """(BLOCK_D, single): the d tile actually launched for feature size d."""
    if cfg.single and next_pow2(d) <= cfg.block_d:
        return max(MIN_DOT_K[dtype_class(dtype)], next_pow2(d)), True
    return cfg.block_d, False


def shipped():
    """Every (kernel, dtype class, arch, d_max, Config) of the GPU tables (AOT report)."""
    for (dclass, arch), table in TABLE.items():
        for kernel in KERNELS:
            for d_max, cfg in table[kernel]:
                yield kernel, dclass, arch, d_max, cfg


def autotune_enabled() -> bool:
    return os.environ.get(AUTOTUNE_ENV, "") not in ("", "0")


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
