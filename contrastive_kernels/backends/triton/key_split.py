"""Splitting the streamed side across programs when the owned grid is small.

The forward's row grid (and the backward's dq / dk grids) has cdiv(rows, BLOCK_O)
programs, each streaming every tile of the other side: N = 4096 rows of 128 are 32
programs on a 132-SM H200. With S > 1 a second grid axis splits the streamed tiles into S
contiguous ranges of whole tiles; each program writes a partial to an fp32 (fp64)
workspace and a small kernel here combines the S partials of each row in the fixed order
s = 0..S-1 (no atomics), so results are bitwise reproducible run to run:

- forward, :func:`merge_kernel`: partial (m_s, l_s, o_s) of each key range, m_s the
  range's running max (-inf when it saw no key), l_s = sum e^(s - finite(m_s)) and o_s
  unnormalized in plain fp32 units. With P = finite(max_s m_s) and the weight
  w_s = 0 if m_s = -inf else e^(finite(m_s) - P) (the explicit 0: an empty range, l_s = 0
  and pivot 0, must not become 0 * e^(0 - P) = 0 * inf when P is very negative),
  l = sum_s w_s l_s, lse = P + log l, o = (sum_s w_s o_s) / l (0 when l = 0).
  The unsplit kernel's edge semantics follow: no key -> -inf and o = 0, a +inf logit ->
  +inf, NaN -> NaN.
- backward, :func:`finish_kernel`: the partial u_s (v_s), already times its row factor
  (g on the dq side, fp16's w_scale), summed over s, then the unsplit kernel's own
  epilogue (``lse_backward.store_dx_single`` / ``store_dx_chunked``: scale, the
  normalization Jacobian, the store in the input dtype).

The number of ranges is :func:`choose_splits`, a function of the grid shape and the SM
count only; ``CONTRASTIVE_KERNELS_TRITON_KEY_SPLITS`` forces it (tests; under the
interpreter the automatic choice is 1).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from ... import env
from ._common import LN2, exp_of, finite_or_zero, load_tile
from .lse_backward import store_dx_chunked, store_dx_single

SPLITS_ENV = env.name("TRITON_KEY_SPLITS")
MAX_SPLITS = 16
WAVES = 2  # aim for about this many programs per SM
MERGE_ROWS = 32  # rows per merge program (o merged in chunks of at most 64 columns)
AUX_WARPS = 4


def finish_rows(block_d: int) -> int:
    """Rows per finish program: its [rows, BLOCK_D] fp32 sum and the owned tile stay within
    about 32 + 16 registers per thread at 4 warps (32 rows up to BLOCK_D = 128, 16 at 256,
    8 at 512)."""
    return max(8, min(32, 4096 // block_d))


def choose_splits(row_programs: int, streamed_tiles: int, sm_count: Optional[int]) -> int:
    """Ranges S of the streamed tiles for a grid of ``row_programs`` owned blocks.

    1 when the grid already fills the GPU (row_programs >= SMs) or the SM count is
    unknown; else min(ceil(WAVES SMs / row_programs), streamed_tiles // 2, MAX_SPLITS):
    about two programs per SM, each range at least two tiles (the partial's write and the
    merge cost about one tile). Pure: the same shapes give the same S on every run."""
    if not sm_count or row_programs <= 0 or row_programs >= sm_count:
        return 1
    s = min(math.ceil(WAVES * sm_count / row_programs), streamed_tiles // 2, MAX_SPLITS)
    return max(1, s)


def ranges(splits: int, streamed_tiles: int) -> tuple:
    """(S, tiles per range) with S clamped so that no range is empty."""
    if streamed_tiles <= 1 or splits <= 1:
        return 1, max(streamed_tiles, 1)
    per = math.ceil(streamed_tiles / min(splits, streamed_tiles))
    return math.ceil(streamed_tiles / per), per


_SM_COUNT: dict = {}


def sm_count(device: torch.device) -> Optional[int]:
    """Multiprocessors of a CUDA device, cached per device index (no sync); None for other
    devices or without CUDA (fake-tensor tracing on a CPU machine)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


def splits_for(device: torch.device, row_programs: int, streamed_tiles: int,
               interpreted: bool) -> tuple:
    """(S, tiles per range) of one launch: the forced value when the variable is set
    (> 0), else :func:`choose_splits` (1 under the interpreter), clamped by :func:`ranges`."""
    forced = int(env.get("TRITON_KEY_SPLITS", "0"))
    if forced > 0:
        wanted = forced
    elif interpreted:
        wanted = 1
    else:
        wanted = choose_splits(row_programs, streamed_tiles, sm_count(device))
    return ranges(wanted, streamed_tiles)


@triton.jit
def merge_kernel(PART_M, PART_L, PART_O, LSE, O, N, D, S,
                 BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, RETURN_O: tl.constexpr,
                 INT64: tl.constexpr):
    """lse (and o) of rows from the S key-range partials, combined in order s = 0..S-1."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    if INT64:
        rows = rows.to(tl.int64)
    row_ok = rows < N
    m = tl.full([BLOCK_R], float("-inf"), PART_L.dtype.element_ty)
    for s in range(0, S):
        m = tl.maximum(m, tl.load(PART_M + s * N + rows, mask=row_ok, other=float("-inf")))
    piv = finite_or_zero(m)
    l_sum = tl.zeros([BLOCK_R], PART_L.dtype.element_ty)
    for s in range(0, S):
        m_s = tl.load(PART_M + s * N + rows, mask=row_ok, other=float("-inf"))
        # an empty range (m_s = -inf, l_s = 0, pivot 0) weighs 0, never 0 * 2^(0 - P)
        w = tl.where(m_s == float("-inf"), 0.0, exp_of(finite_or_zero(m_s) - piv))
        l_sum += w * tl.load(PART_L + s * N + rows, mask=row_ok, other=0.0)
    tl.store(LSE + rows, piv + tl.log2(l_sum) * LN2, mask=row_ok)
    if RETURN_O:
        inv_l = tl.where(l_sum == 0, 0.0, 1.0 / l_sum)
        offs_d = tl.arange(0, BLOCK_D)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + offs_d
            mask = row_ok[:, None] & (dd < D)[None, :]
            acc = tl.zeros([BLOCK_R, BLOCK_D], PART_L.dtype.element_ty)
            for s in range(0, S):
                m_s = tl.load(PART_M + s * N + rows, mask=row_ok, other=float("-inf"))
                w = tl.where(m_s == float("-inf"), 0.0, exp_of(finite_or_zero(m_s) - piv))
                part = tl.load(PART_O + (s * N + rows)[:, None] * D + dd[None, :], mask=mask,
                               other=0.0)
                acc += part * w[:, None]
            tl.store(O + rows[:, None] * D + dd[None, :], acc * inv_l[:, None], mask=mask)


@triton.jit
def finish_kernel(PART, X, DX, SCALE, NX, D, S, EPS, stride_xn, stride_xd,
                  BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, HAS_NORM: tl.constexpr,
                  EVEN_O: tl.constexpr, EVEN_D: tl.constexpr, SINGLE_D: tl.constexpr,
                  UPCAST: tl.constexpr, INT64: tl.constexpr):
    """dx of rows from the S partials (PART [S, NX, D]), summed in order s = 0..S-1, then
    the backward's epilogue with row factor = scale. Chunked d: the sum goes to PART[0]."""
    own = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    if INT64:
        own = own.to(tl.int64)
    own_ok = own < NX
    offs_d = tl.arange(0, BLOCK_D)
    lam = tl.load(SCALE)
    row_c = tl.zeros([BLOCK_R], lam.dtype) + lam
    x_base = X + own[:, None] * stride_xn
    if SINGLE_D:
        mask = own_ok[:, None] & (offs_d < D)[None, :]
        acc = tl.load(PART + own[:, None] * D + offs_d[None, :], mask=mask, other=0.0)
        for s in range(1, S):
            acc += tl.load(PART + (s * NX + own)[:, None] * D + offs_d[None, :], mask=mask,
                           other=0.0)
        xt = load_tile(x_base, offs_d, stride_xd, own_ok, D, EVEN_O, EVEN_D, UPCAST)
        store_dx_single(acc, row_c, xt, DX, own, own_ok, offs_d, D, EPS, HAS_NORM)
    else:
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + offs_d
            mask = own_ok[:, None] & (dd < D)[None, :]
            acc = tl.load(PART + own[:, None] * D + dd[None, :], mask=mask, other=0.0)
            for s in range(1, S):
                acc += tl.load(PART + (s * NX + own)[:, None] * D + dd[None, :], mask=mask,
                               other=0.0)
            tl.store(PART + own[:, None] * D + dd[None, :], acc, mask=mask)
        tl.debug_barrier()
        store_dx_chunked(PART, row_c, x_base, DX, own, own_ok, offs_d, D, EPS, stride_xd,
                         BLOCK_R, BLOCK_D, EVEN_O, EVEN_D, UPCAST, HAS_NORM)
