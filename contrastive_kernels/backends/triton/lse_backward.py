"""Backward kernel: dq on a row-block grid, dk on a column-block grid (deterministic).

One kernel, two orientations (``DK`` constexpr). A program owns BLOCK_O rows of X and
streams BLOCK_I rows of Y, recomputing the logits from X, Y and the saved lse exactly as
the forward formed them (``score_tile``), P = e^{s - lse} (= 2^{(s - lse) log2 e}):

    DK = False:  X = q (own), Y = k;  P_ij = e^{s_ij - lse_i}
                 u_i  = sum_j P_ij k_j / ||k_j||        then  u_i *= g_i
    DK = True :  X = k (own), Y = q;  s^T computed directly as k q^T
                 v_j  = sum_i (g_i P_ij / ||q_i||) q_i

so no atomics are needed and each output row is written by exactly one program. Then
dx^ = scale * (u or v) and, through the normalization Jacobian (x^ = x / max(||x||, eps)),

    dx = (dx^ - x [||x|| >= eps] <x, dx^> / max(||x||, eps)^2) / max(||x||, eps).

Rows with lse = -inf (A(i) empty) get no gradient; a NaN lse gives NaN gradients.

REDUCTION = 1 (the two-sided lse): the tile is recomputed once and both softmaxes applied,
the row one from LSE / G (per query) and the column one from COL_LSE / COL_G (per key,
h_j), so each weight is w_ij = g_i P_ij + h_j P'_ij with P'_ij = e^{s_ij - col_lse_j} (a
column with col_lse = -inf adds nothing), applied inside the loop (no row factor g at the
end); u, v, dscale and the epilogue are the same.

REDUCTION = 2 (pairwise_sigmoid): no saved statistic; the tile is x = -z s (score_tile,
SIGNED) and the weight w_ij = -z_ij sigmoid(x_ij) g_i (sigmoid_math: one exp, one
reciprocal), applied inside the loop as for the two-sided lse. The dk grid also sums its
owned keys' weights, dbias_j = sum_i w_ij (NEED_DB: elementwise in a [BLOCK_O, BLOCK_I]
tile, reduced once at the end, written by exactly one program per key; split: one part
per range to DBIAS[s], summed in order by the host).

dscale = sum_ij g_i P_ij c^_ij with c^_ij = <q^_i, k^_j>, read off the logits tile
(equal to sum_i <q^_i, u_i>, without dividing by the scale): accumulated elementwise in a
[BLOCK_O, BLOCK_I] tile and reduced once at the end; each program writes its partial sum,
the host adds them in a fixed order.

SINGLE_D keeps the owned tile and the [BLOCK_O, BLOCK_D] accumulator in registers. With
larger d the accumulator lives in an fp32 buffer (global memory, zero-initialized),
updated chunk by chunk per streamed tile with a block barrier between tiles.

SPLIT (key_split.py, when the owned grid is small): grid axis 1 = S ranges of SPLIT_KEYS
streamed rows (whole tiles; keys for dq, queries for dk). Program (pid, s) streams its
range (Y, its per-row vectors, the bound and the diagonal shifted once per program: the
tile loop is unchanged; the last range may run past NY, masked) and
writes its partial u_s (v_s) in plain fp32 units — times its row factor g_i on the dq
side and fp16's w_scale — to ACC_BUF[s] ([S, NX, D]); dscale partials go to
DS_PART[s * programs + pid]. ``key_split.finish_kernel`` sums the S partials of each row
in order s = 0..S-1 and runs the same epilogue (:func:`store_dx_single` /
:func:`store_dx_chunked`) with row factor = scale.
"""

import triton
import triton.language as tl

from ._common import (device_fn, exp_of, load_tile, mma, norm_finish, norm_update,
                      offsets_need_int64, rescale_rows, row_norm)
from .score_tile import dot_tile, saved_stats, score_tile
from .sigmoid_math import sigmoid_weight


def _int64(a):
    return offsets_need_int64(a["NX"], a["stride_xn"], a["NY"], a["stride_yn"], a["D"],
                              a["stride_xd"], a["stride_yd"])


HEURISTICS = {
    "HAS_BIAS": lambda a: a["BIAS"] is not None,
    "HAS_LABELS": lambda a: a["XLAB"] is not None,
    "HAS_NORM": lambda a: a["INVX"] is not None,
    "NEED_DX": lambda a: a["DX"] is not None,
    "NEED_DS": lambda a: a["DS_PART"] is not None,
    "NEED_DB": lambda a: a.get("DBIAS") is not None,
    "EVEN_O": lambda a: a["NX"] % a["BLOCK_O"] == 0,
    # split: every range whole (else the last one runs past NY, masked)
    "EVEN_I": lambda a: a["NY"] % max(a["BLOCK_I"], a.get("SPLIT_KEYS") or 0) == 0,
    "EVEN_D": lambda a: a["D"] % a["BLOCK_D"] == 0 and a["D"] > 0,
    "SINGLE_D": lambda a: a["D"] <= a["BLOCK_D"],
    "INT64": _int64,
    "SPLIT": lambda a: (a.get("SPLIT_KEYS") or 0) > 0,
}


@device_fn
def store_dx_single(acc, row_c, xt, DX, own, own_ok, offs_d, D, EPS, HAS_NORM: tl.constexpr):
    """Epilogue, whole d in registers: dx^ = acc row_c, through the normalization
    Jacobian of the owned rows xt, stored to DX."""
    dhat = acc * row_c[:, None]
    if HAS_NORM:
        xf = xt.to(row_c.dtype)
        t = tl.sum(xf * dhat, axis=1)
        nrm = row_norm(xf)
        inv_e = 1.0 / tl.maximum(nrm, EPS)
        radial = tl.where(nrm >= EPS, t * inv_e * inv_e, 0.0)
        dhat = (dhat - xf * radial[:, None]) * inv_e[:, None]
        # d = 1: x^ = +-1 wherever ||x|| >= eps, so the exact gradient there is 0; the
        # projection above leaves a few ulps of dhat (rounded 1 / ||x||, twice)
        dhat = tl.where(((nrm >= EPS) & (nrm < float("inf")) & (D == 1))[:, None], 0.0, dhat)
    tl.store(DX + own[:, None] * D + offs_d[None, :], dhat,
             mask=own_ok[:, None] & (offs_d < D)[None, :])


@device_fn
def store_dx_chunked(ACC_BUF, row_c, x_base, DX, own, own_ok, offs_d, D, EPS, stride_xd,
                     BLOCK_O: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_O: tl.constexpr,
                     EVEN_D: tl.constexpr,
                     UPCAST: tl.constexpr, HAS_NORM: tl.constexpr):
    """The same epilogue, d in chunks: the accumulator rows are read from ACC_BUF."""
    ACC = row_c.dtype
    if HAS_NORM:
        t = tl.zeros([BLOCK_O], ACC)
        big = tl.zeros([BLOCK_O], ACC)
        ssq = tl.zeros([BLOCK_O], ACC)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + offs_d
            a_mask = own_ok[:, None] & (dd < D)[None, :]
            xf = load_tile(x_base, dd, stride_xd, own_ok, D, EVEN_O, EVEN_D, UPCAST).to(ACC)
            ac = tl.load(ACC_BUF + own[:, None] * D + dd[None, :], mask=a_mask, other=0.0)
            t += tl.sum(xf * ac, axis=1)
            big, ssq = norm_update(big, ssq, xf)
        t = t * row_c
        nrm = norm_finish(big, ssq)
        inv_e = 1.0 / tl.maximum(nrm, EPS)
        radial = tl.where(nrm >= EPS, t * inv_e * inv_e, 0.0)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + offs_d
        a_mask = own_ok[:, None] & (dd < D)[None, :]
        ac = tl.load(ACC_BUF + own[:, None] * D + dd[None, :], mask=a_mask, other=0.0)
        dhat = ac * row_c[:, None]
        if HAS_NORM:
            xf = load_tile(x_base, dd, stride_xd, own_ok, D, EVEN_O, EVEN_D, UPCAST).to(ACC)
            dhat = (dhat - xf * radial[:, None]) * inv_e[:, None]
        tl.store(DX + own[:, None] * D + dd[None, :], dhat, mask=a_mask)


def lse_bwd_kernel_py(
    X, Y, SCALE, BIAS, XLAB, YLAB, INVX, INVY, LSE, G, COL_LSE, COL_G, DX, ACC_BUF, DS_PART,
    DBIAS, NX, NY, D, SELF_OFFSET, EPS, SPLIT_KEYS,
    stride_xn, stride_xd, stride_yn, stride_yd,
    DK: tl.constexpr, HAS_SELF: tl.constexpr, TF32: tl.constexpr, UPCAST: tl.constexpr,
    RESCALE: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr,
    REDUCTION: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_LABELS: tl.constexpr, HAS_NORM: tl.constexpr,
    NEED_DX: tl.constexpr, NEED_DS: tl.constexpr, NEED_DB: tl.constexpr,
    EVEN_O: tl.constexpr, EVEN_I: tl.constexpr,
    EVEN_D: tl.constexpr, SINGLE_D: tl.constexpr, INT64: tl.constexpr, SPLIT: tl.constexpr,
):
    pid = tl.program_id(0)
    if SPLIT:
        # per program, outside the tile loop: the streamed rows start at this range (Y, its
        # per-row vectors, the bound and the diagonal shifted), so the tile loop is the
        # unsplit one over SPLIT_KEYS rows (a kernel argument: a computed trip count makes
        # the compiler widen the loop counter to 64 bits). The last range may run past
        # NY: masked like a tail, its per-row vectors padded by the launcher.
        split = tl.program_id(1)
        inner_lo = split * SPLIT_KEYS
        i_end = SPLIT_KEYS
        NY = NY - inner_lo
        Y += inner_lo.to(tl.int64) * stride_yn
        if HAS_NORM:
            INVY += inner_lo
        if HAS_LABELS:
            YLAB += inner_lo
        if DK:  # own == inner + offset
            SELF_OFFSET = SELF_OFFSET + inner_lo
            if REDUCTION != 2:
                LSE += inner_lo
            G += inner_lo
            if NEED_DB:  # this range's part of dbias, in [S, NX]
                DBIAS += split.to(tl.int64) * NX
        else:  # inner == own + offset
            SELF_OFFSET = SELF_OFFSET - inner_lo
            if HAS_BIAS:
                BIAS += inner_lo
            if REDUCTION == 1:
                COL_LSE += inner_lo
                COL_G += inner_lo
        if NEED_DX:
            ACC_BUF += split.to(tl.int64) * NX * D
        if NEED_DS:
            DS_PART += split * tl.num_programs(0)
    else:
        i_end = NY
    own0 = pid * BLOCK_O
    own = own0 + tl.arange(0, BLOCK_O)
    if INT64:
        own = own.to(tl.int64)
    own_ok = own < NX
    offs_d = tl.arange(0, BLOCK_D)
    lam = tl.load(SCALE)
    ACC = lam.dtype
    inv_x = tl.zeros([BLOCK_O], ACC) + 1.0
    if HAS_NORM:
        inv_x = tl.load(INVX + own, mask=own_ok, other=0.0)
    if HAS_LABELS:
        x_lab = tl.load(XLAB + own, mask=own_ok, other=0)
    else:
        x_lab = 0
    # only lse = -inf lines (empty, or past the bound) are dead: a NaN lse must reach P
    if DK:
        if HAS_BIAS:
            b_own = tl.load(BIAS + own, mask=own_ok, other=0.0)
        else:
            b_own = 0.0
        if REDUCTION == 1:  # the owned keys' column statistics
            lse_c, g_c = saved_stats(
                tl.load(COL_LSE + own, mask=own_ok, other=float("-inf")).to(ACC),
                tl.load(COL_G + own, mask=own_ok, other=0.0).to(ACC))
    else:
        if REDUCTION == 2:  # no saved statistic: the weights need only g
            g_o = tl.load(G + own, mask=own_ok, other=0.0).to(ACC)
        else:
            lse_o, g_o = saved_stats(
                tl.load(LSE + own, mask=own_ok, other=float("-inf")).to(ACC),
                tl.load(G + own, mask=own_ok, other=0.0).to(ACC))
        rf_o = inv_x * lam
    x_base = X + own[:, None] * stride_xn
    if SINGLE_D:
        xt = load_tile(x_base, offs_d, stride_xd, own_ok, D, EVEN_O, EVEN_D, UPCAST)
        if NEED_DX:
            acc = tl.zeros([BLOCK_O, BLOCK_D], ACC)
    else:
        xt = None  # chunked: dot_tile re-reads x chunk by chunk
    if NEED_DS:
        ds_acc = tl.zeros([BLOCK_O, BLOCK_I], ACC)
    if NEED_DB:
        db_acc = tl.zeros([BLOCK_O, BLOCK_I], ACC)
    w_scale = tl.zeros([BLOCK_O], ACC)  # fp16: the accumulator is kept in units of w_scale
    for i0 in range(0, i_end, BLOCK_I):
        inner = i0 + tl.arange(0, BLOCK_I)
        if INT64:
            inner = inner.to(tl.int64)
        inner_ok = inner < NY
        y_base = Y + inner[:, None] * stride_yn
        c, yt = dot_tile(xt, x_base, y_base, offs_d, stride_xd, stride_yd, own_ok, inner_ok, D,
                         tl.zeros([BLOCK_O, BLOCK_I], ACC), BLOCK_D, SINGLE_D, EVEN_O, EVEN_I,
                         EVEN_D, UPCAST, TF32)
        # per-streamed-row vectors: padded by the launcher, so whole-tile (vectorized) loads
        if HAS_NORM:
            inv_y = tl.load(INVY + inner)
        else:
            inv_y = 1.0
        if HAS_LABELS:
            y_lab = tl.load(YLAB + inner)
        else:
            y_lab = 0
        if DK:
            # rows of the tile are keys (own), columns are queries (inner)
            if REDUCTION == 2:
                lse_i = 0.0
                g_i = tl.load(G + inner).to(ACC)
            else:
                lse_i, g_i = saved_stats(tl.load(LSE + inner).to(ACC),
                                         tl.load(G + inner).to(ACC))
            col_f = tl.zeros([BLOCK_I], ACC) + lam
            if HAS_NORM:
                col_f = col_f * inv_y
                if not NEED_DB:  # dbias sums the weights before the 1 / ||q_i||
                    g_i = g_i * inv_y
            # ROWS: t = s - lse_i masked (the shift inside the score tile)
            t, c_hat, s0 = score_tile(c, inv_x, col_f, b_own, x_lab, y_lab, own, own0,
                                       own_ok, inner, i0, inner_ok, NX, NY, SELF_OFFSET,
                                       lse_i, REDUCTION == 0, True, BLOCK_O, BLOCK_I,
                                       HAS_NORM, HAS_BIAS, HAS_LABELS, HAS_SELF, EVEN_O,
                                       EVEN_I, False, REDUCTION == 2)
            # w = g_i P_ij / ||q_i||; the dscale term adds <q^_i, k^_j> = c w / ||k_j||
            if REDUCTION == 0:
                w = exp_of(t) * g_i[None, :]
            elif REDUCTION == 2:  # -z_ij sigmoid(x_ij) g_i (/ ||q_i||)
                w = sigmoid_weight(t, s0, g_i[None, :])
                if NEED_DB:
                    db_acc += w
                    if HAS_NORM:
                        w = w * inv_y[None, :]
            else:  # + h_j P'_ij / ||q_i|| (t = s, unshifted: both lse subtracted here)
                w = exp_of(t - lse_i[None, :]) * g_i[None, :]
                if HAS_NORM:
                    w += exp_of(t - lse_c[:, None]) * (g_c[:, None] * inv_y[None, :])
                else:
                    w += exp_of(t - lse_c[:, None]) * g_c[:, None]
            if NEED_DS:
                ds_acc += w * c
        else:
            if HAS_BIAS:
                bias = tl.load(BIAS + inner)
            else:
                bias = 0.0
            if REDUCTION == 2:
                shift = 0.0
            else:
                shift = lse_o[:, None]
            t, c_hat, s0 = score_tile(c, inv_y, rf_o, bias, x_lab, y_lab, own, own0, own_ok,
                                       inner, i0, inner_ok, NX, NY, SELF_OFFSET, shift,
                                       REDUCTION == 0, False, BLOCK_O, BLOCK_I, HAS_NORM,
                                       HAS_BIAS, HAS_LABELS, HAS_SELF, EVEN_O, EVEN_I, False,
                                       REDUCTION == 2)
            if REDUCTION == 0:  # g_i applied once at the end
                p = exp_of(t)
            elif REDUCTION == 2:  # -z_ij sigmoid(x_ij) g_i
                p = sigmoid_weight(t, s0, g_o[:, None])
            else:  # g_i P_ij + h_j P'_ij (t = s, unshifted)
                lse_c, g_c = saved_stats(tl.load(COL_LSE + inner).to(ACC),
                                         tl.load(COL_G + inner).to(ACC))
                p = (exp_of(t - lse_o[:, None]) * g_o[:, None]
                     + exp_of(t - lse_c[None, :]) * g_c[None, :])
            if NEED_DS:
                ds_acc += p * c_hat
            if HAS_NORM:
                w = p * inv_y[None, :]
            else:
                w = p
        if NEED_DX:
            if RESCALE:
                w, ratio, w_scale = rescale_rows(w, w_scale)
            if SINGLE_D:
                if RESCALE:
                    acc = acc * ratio[:, None]
                acc = mma(acc, w, yt, TF32)
            else:
                for d0 in range(0, D, BLOCK_D):
                    dd = d0 + offs_d
                    yc = load_tile(y_base, dd, stride_yd, inner_ok, D, EVEN_I, EVEN_D, UPCAST)
                    a_ptrs = ACC_BUF + own[:, None] * D + dd[None, :]
                    a_mask = own_ok[:, None] & (dd < D)[None, :]
                    ac = tl.load(a_ptrs, mask=a_mask, other=0.0)
                    if RESCALE:
                        ac = ac * ratio[:, None]
                    ac = mma(ac, w, yc, TF32)
                    tl.store(a_ptrs, ac, mask=a_mask)
                tl.debug_barrier()
    if NEED_DS:
        ds = tl.sum(ds_acc, axis=1) * inv_x
        if not DK:
            if REDUCTION == 0:
                ds = ds * g_o
        tl.store(DS_PART + pid, tl.sum(tl.where(own_ok, ds, 0.0), axis=0))
    if NEED_DB:  # dbias_j = sum_i w_ij of the owned keys (this range's part when SPLIT)
        tl.store(DBIAS + own, tl.sum(db_acc, axis=1), mask=own_ok)
    if NEED_DX:
        if SPLIT:
            # the partial in plain fp32 units: times g (dq side) and fp16's w_scale; the
            # scale and the Jacobian are applied by key_split.finish_kernel
            if DK or REDUCTION != 0:
                row_c = tl.zeros([BLOCK_O], ACC) + 1.0
            else:
                row_c = g_o
            if RESCALE:
                row_c = row_c * w_scale
            if SINGLE_D:
                tl.store(ACC_BUF + own[:, None] * D + offs_d[None, :], acc * row_c[:, None],
                         mask=own_ok[:, None] & (offs_d < D)[None, :])
            elif RESCALE or not (DK or REDUCTION != 0):
                for d0 in range(0, D, BLOCK_D):
                    dd = d0 + offs_d
                    a_ptrs = ACC_BUF + own[:, None] * D + dd[None, :]
                    a_mask = own_ok[:, None] & (dd < D)[None, :]
                    ac = tl.load(a_ptrs, mask=a_mask, other=0.0)
                    tl.store(a_ptrs, ac * row_c[:, None], mask=a_mask)
        else:
            # dx^ = lam * u (row factor g on the dq side)
            if DK or REDUCTION != 0:
                row_c = tl.zeros([BLOCK_O], ACC) + lam
            else:
                row_c = lam * g_o
            if RESCALE:
                row_c = row_c * w_scale
            if SINGLE_D:
                store_dx_single(acc, row_c, xt, DX, own, own_ok, offs_d, D, EPS, HAS_NORM)
            else:
                store_dx_chunked(ACC_BUF, row_c, x_base, DX, own, own_ok, offs_d, D, EPS,
                                 stride_xd, BLOCK_O, BLOCK_D, EVEN_O, EVEN_D, UPCAST, HAS_NORM)


# The HAS_* / EVEN_* / SINGLE_D / INT64 constexprs come from HEURISTICS: applied on the
# host for the fixed configs (wrap_triton takes plain jit functions), and through
# triton.heuristics under the opt-in autotuner.
lse_bwd_kernel = triton.jit(lse_bwd_kernel_py)
