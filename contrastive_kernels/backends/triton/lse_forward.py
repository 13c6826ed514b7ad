"""Forward kernel: masked log-sum-exp (and o) on a row-block grid; with REDUCTION = 1 the
two-sided lse (the same sweep also reduces each key's column), with REDUCTION = 2 the
pairwise sigmoid's row sums of softplus.

Program ``pid`` owns rows [pid * BLOCK_O, (pid + 1) * BLOCK_O) of q and streams the keys
in BLOCK_I tiles with an online max / sum-exp (flash-attention style):

    s   = c * r_i / ||k_j|| + b_j,  c = <q_i, k_j>,  r_i = scale / ||q_i||
          excluded pairs -> -inf            (score_tile: every kernel forms it alike)
    m'  = max(m, rowmax s);  p = finite(m') (else 0)
    l   = l e^{p_old - p} + sum_j e^{s_ij - p};  o likewise   (e^x = 2^{x log2 e})
    lse = p + log l   (l = 0 -> -inf: A(i) empty; l = +inf -> +inf; NaN -> NaN)

The self-exclusion mask is applied only on key tiles that meet the diagonal and the
key-bound mask only on the last tile.

REDUCTION = 1 (score_tile.ROWS_AND_COLUMNS): rows as above (row_lse = lse, no o), and per
key tile the row block's partial of each column, rows past N masked,

    m_bj = max_i s_ij,  l_bj = sum_i e^{s_ij - finite(m_bj)}

written to COL_M / COL_L [row blocks, M] by exactly one program each;
``key_split.merge_kernel`` merges the row blocks of each column in order b = 0, 1, ...
(the key split's merge along the other axis), so col_lse is bitwise deterministic.

REDUCTION = 2 (score_tile.SIGMOID, pairwise_sigmoid): the tile is x = -z s (the positives'
sign flipped, no pair excluded) and each row sums softplus(x) (sigmoid_math), no pivot:

    row_loss_i = sum_j softplus(x_ij)    (split: each range's sum, added in order)

SINGLE_D: the q tile is loaded once and o accumulates in registers. Otherwise q and k are
re-read chunk by chunk per key tile and o accumulates in its (zero-initialized) fp32
output in global memory, one [BLOCK_O, BLOCK_D] chunk at a time, with a block barrier
between key tiles so every thread sees the chunk another thread wrote.

SPLIT (key_split.py, when the row grid is small): grid axis 1 = S ranges of SPLIT_KEYS
keys (whole key tiles). Program (pid, s) streams only its range (K, the per-key vectors,
the key bound and the diagonal shifted once per program: the tile loop is unchanged; the
last range may run past M, masked) and writes its partial instead of
lse / o: the running max m_s (-inf: nothing seen) to PART_M[s], l_s (relative to the
pivot finite(m_s)) to LSE[s] and the unnormalized o_s (fp16: times w_scale, i.e. plain
fp32 units) to O[s]; ``merge_kernel`` combines the S partials per row in order s = 0..S-1:

    P = finite(max_s m_s),  w_s = 0 if m_s = -inf else e^{finite(m_s) - P}
    l = sum_s w_s l_s,  lse = P + log l,  o = sum_s w_s o_s / l  (l = 0 -> o = 0)
"""

import triton
import triton.language as tl

from ._common import (LN2, exp_of, finite_or_zero, load_tile, mma, offsets_need_int64,
                      rescale_rows)
from .score_tile import dot_tile, score_tile
from .sigmoid_math import softplus


def _int64(a):
    return offsets_need_int64(a["N"], a["stride_qn"], a["M"], a["stride_kn"], a["D"],
                              a["stride_qd"], a["stride_kd"])


HEURISTICS = {
    "HAS_BIAS": lambda a: a["BIAS"] is not None,
    "HAS_LABELS": lambda a: a["QLAB"] is not None,
    "HAS_NORM": lambda a: a["INVQ"] is not None,
    "RETURN_O": lambda a: a["O"] is not None,
    "EVEN_N": lambda a: a["N"] % a["BLOCK_O"] == 0,
    # split: every range whole (else the last one runs past M, masked)
    "EVEN_M": lambda a: a["M"] % max(a["BLOCK_I"], a.get("SPLIT_KEYS") or 0) == 0,
    "EVEN_D": lambda a: a["D"] % a["BLOCK_D"] == 0 and a["D"] > 0,
    "SINGLE_D": lambda a: a["D"] <= a["BLOCK_D"],
    "INT64": _int64,
    "SPLIT": lambda a: (a.get("SPLIT_KEYS") or 0) > 0,
}


def lse_fwd_kernel_py(
    Q, K, SCALE, BIAS, QLAB, KLAB, INVQ, INVK, LSE, O, PART_M, COL_M, COL_L,
    N, M, D, SELF_OFFSET, SPLIT_KEYS,
    stride_qn, stride_qd, stride_kn, stride_kd,
    HAS_SELF: tl.constexpr, TF32: tl.constexpr, UPCAST: tl.constexpr, RESCALE: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr,
    REDUCTION: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_LABELS: tl.constexpr, HAS_NORM: tl.constexpr,
    RETURN_O: tl.constexpr, EVEN_N: tl.constexpr, EVEN_M: tl.constexpr, EVEN_D: tl.constexpr,
    SINGLE_D: tl.constexpr, INT64: tl.constexpr, SPLIT: tl.constexpr,
):
    pid = tl.program_id(0)
    if REDUCTION == 1:  # this row block's line of the [row blocks, M] column partials
        COL_M += pid.to(tl.int64) * M
        COL_L += pid.to(tl.int64) * M
    if SPLIT:
        # per program, outside the tile loop: the keys start at this range (K, the per-key
        # vectors, the key bound and the diagonal shifted), so the tile loop is the
        # unsplit one over SPLIT_KEYS keys (a kernel argument: a computed trip count makes
        # the compiler widen the loop counter to 64 bits). The last range may run past
        # the keys: masked like a tail, its per-key vectors padded by the launcher.
        split = tl.program_id(1)
        key_lo = split * SPLIT_KEYS
        n_end = SPLIT_KEYS
        M = M - key_lo
        SELF_OFFSET = SELF_OFFSET - key_lo
        K += key_lo.to(tl.int64) * stride_kn
        if HAS_BIAS:
            BIAS += key_lo
        if HAS_LABELS:
            KLAB += key_lo
        if HAS_NORM:
            INVK += key_lo
        if REDUCTION == 1:
            COL_M += key_lo
            COL_L += key_lo
        LSE += split.to(tl.int64) * N
        if REDUCTION != 2:  # the sigmoid's partial is its sum alone
            PART_M += split.to(tl.int64) * N
        if RETURN_O:
            O += split.to(tl.int64) * N * D
    else:
        n_end = M
    row0 = pid * BLOCK_O
    rows = row0 + tl.arange(0, BLOCK_O)
    if INT64:
        rows = rows.to(tl.int64)
    row_ok = rows < N
    offs_d = tl.arange(0, BLOCK_D)
    lam = tl.load(SCALE)
    ACC = lam.dtype
    row_f = tl.zeros([BLOCK_O], ACC) + lam
    if HAS_NORM:
        row_f = row_f * tl.load(INVQ + rows, mask=row_ok, other=0.0)
    if HAS_LABELS:
        q_lab = tl.load(QLAB + rows, mask=row_ok, other=0)
    else:
        q_lab = 0
    q_base = Q + rows[:, None] * stride_qn
    if SINGLE_D:
        qt = load_tile(q_base, offs_d, stride_qd, row_ok, D, EVEN_N, EVEN_D, UPCAST)
    else:
        qt = None  # chunked: dot_tile re-reads q chunk by chunk
    m_i = tl.full([BLOCK_O], float("-inf"), ACC)
    piv = tl.zeros([BLOCK_O], ACC)
    l_i = tl.zeros([BLOCK_O], ACC)
    if RETURN_O:
        if SINGLE_D:
            o_acc = tl.zeros([BLOCK_O, BLOCK_D], ACC)
        w_scale = tl.zeros([BLOCK_O], ACC)  # fp16: o is kept in units of w_scale
    for n0 in range(0, n_end, BLOCK_I):
        cols = n0 + tl.arange(0, BLOCK_I)
        if INT64:
            cols = cols.to(tl.int64)
        col_ok = cols < M
        k_base = K + cols[:, None] * stride_kn
        c, kt = dot_tile(qt, q_base, k_base, offs_d, stride_qd, stride_kd, row_ok, col_ok, D,
                         tl.zeros([BLOCK_O, BLOCK_I], ACC), BLOCK_D, SINGLE_D, EVEN_N, EVEN_M,
                         EVEN_D, UPCAST, TF32)
        # per-key vectors: padded by the launcher, so whole-tile (vectorized) loads
        if HAS_NORM:
            inv_k = tl.load(INVK + cols)
        else:
            inv_k = 1.0
        if HAS_BIAS:
            bias = tl.load(BIAS + cols)
        else:
            bias = 0.0
        if HAS_LABELS:
            k_lab = tl.load(KLAB + cols)
        else:
            k_lab = 0
        s, c, _ = score_tile(c, inv_k, row_f, bias, q_lab, k_lab, rows, row0, row_ok, cols,
                             n0, col_ok, N, M, SELF_OFFSET, 0.0, False, False, BLOCK_O,
                             BLOCK_I, HAS_NORM, HAS_BIAS, HAS_LABELS, HAS_SELF, EVEN_N, EVEN_M,
                             REDUCTION == 1, REDUCTION == 2)
        if REDUCTION == 2:  # s is x = -z s: the row sums of softplus(x), no pivot
            l_i += tl.sum(softplus(s), axis=1)
        else:
            if REDUCTION == 1:
                # this row block's partial of each column, merged over the row blocks in order
                # by key_split.merge_kernel: (max_i s_ij, sum_i e^{s_ij - finite(max)})
                m_c = tl.max(s, axis=0)
                l_c = tl.sum(exp_of(s - finite_or_zero(m_c)[None, :]), axis=0)
                tl.store(COL_M + cols, m_c, mask=col_ok)
                tl.store(COL_L + cols, l_c, mask=col_ok)
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            piv_new = finite_or_zero(m_new)
            # <= 0 whenever l > 0 (the old pivot was a finite max); clamped so that a row that
            # has seen nothing (l = 0, pivot 0) cannot form 0 * inf
            alpha = exp_of(tl.minimum(piv - piv_new, 0.0))
            p = exp_of(s - piv_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            if RETURN_O:
                w = p
                if HAS_NORM:
                    w = w * inv_k[None, :]
                if RESCALE:
                    w, ratio, w_scale = rescale_rows(w, w_scale)
                    alpha_o = alpha * ratio
                else:
                    alpha_o = alpha
                if SINGLE_D:
                    o_acc = mma(o_acc * alpha_o[:, None], w, kt, TF32)
                else:
                    for d0 in range(0, D, BLOCK_D):
                        dd = d0 + offs_d
                        kc = load_tile(k_base, dd, stride_kd, col_ok, D, EVEN_M, EVEN_D, UPCAST)
                        o_ptrs = O + rows[:, None] * D + dd[None, :]
                        o_mask = row_ok[:, None] & (dd < D)[None, :]
                        oc = tl.load(o_ptrs, mask=o_mask, other=0.0)
                        oc = mma(oc * alpha_o[:, None], w, kc, TF32)
                        tl.store(o_ptrs, oc, mask=o_mask)
                    tl.debug_barrier()
            m_i = m_new
            piv = piv_new
    if REDUCTION == 2:  # the row loss, or (SPLIT) this key range's part of it
        tl.store(LSE + rows, l_i, mask=row_ok)
    elif SPLIT:
        # the partial of this key range, merged by key_split.merge_kernel
        tl.store(PART_M + rows, m_i, mask=row_ok)
        tl.store(LSE + rows, l_i, mask=row_ok)
    else:
        # l = 0 (A(i) empty) -> -inf, +inf -> +inf, NaN -> NaN: no special case
        lse = piv + tl.log2(l_i) * LN2
        tl.store(LSE + rows, lse, mask=row_ok)
    if RETURN_O:
        if SPLIT:
            # unnormalized, in plain units (fp16: out of w_scale's)
            if RESCALE:
                inv_l = w_scale
            else:
                inv_l = tl.full([BLOCK_O], 1.0, ACC)
        else:
            inv_l = tl.where(l_i == 0, 0.0, 1.0 / l_i)
            if RESCALE:
                inv_l = inv_l * w_scale
        if SINGLE_D:
            o_ptrs = O + rows[:, None] * D + offs_d[None, :]
            tl.store(o_ptrs, o_acc * inv_l[:, None], mask=row_ok[:, None] & (offs_d < D)[None, :])
        elif RESCALE or not SPLIT:  # a split partial without RESCALE is final as it is
            for d0 in range(0, D, BLOCK_D):
                dd = d0 + offs_d
                o_ptrs = O + rows[:, None] * D + dd[None, :]
                o_mask = row_ok[:, None] & (dd < D)[None, :]
                oc = tl.load(o_ptrs, mask=o_mask, other=0.0)
                tl.store(o_ptrs, oc * inv_l[:, None], mask=o_mask)


# The HAS_* / EVEN_* / SINGLE_D / INT64 constexprs come from HEURISTICS: applied on the
# host for the fixed configs (wrap_triton takes plain jit functions), and through
# triton.heuristics under the opt-in autotuner.
lse_fwd_kernel = triton.jit(lse_fwd_kernel_py)
