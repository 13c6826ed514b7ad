"""Backward kernel: dq on a row-block grid, dk on a column-block grid (deterministic).

One kernel, two orientations (``DK`` constexpr). A program owns BLOCK_O rows of X and
streams BLOCK_I rows of Y, recomputing the logits from X, Y and the saved lse:

    DK = False:  X = q (own), Y = k;  P_ij = e^{s_ij - lse_i}
                 u_i  = sum_j P_ij k_j / ||k_j||        then  u_i *= g_i
    DK = True :  X = k (own), Y = q;  s^T computed directly as k q^T
                 v_j  = sum_i (g_i P_ij / ||q_i||) q_i

so no atomics are needed and each output row is written by exactly one program. Then
dx^ = scale * (u or v) and, through the normalization Jacobian (x^ = x / max(||x||, eps)),

    dx = (dx^ - x [||x|| >= eps] <x, dx^> / max(||x||, eps)^2) / max(||x||, eps).

dscale = sum_ij g_i P_ij c^_ij with c^_ij = <q^_i, k^_j>, read off the logits tile
(equal to sum_i <q^_i, u_i>, without dividing by the scale); each program writes its
partial sum, the host adds them in a fixed order.

SINGLE_D keeps the owned tile and the [BLOCK_O, BLOCK_D] accumulator in registers. With
larger d the accumulator lives in an fp32 buffer (global memory, zero-initialized),
updated chunk by chunk per streamed tile with a block barrier between tiles.
"""

import triton
import triton.language as tl

from ._common import dot_nt, exclude, load_tile, mma, offsets_need_int64, rescale_rows


def _int64(a):
    return offsets_need_int64(a["NX"], a["stride_xn"], a["NY"], a["stride_yn"], a["D"],
                              a["stride_xd"], a["stride_yd"])


HEURISTICS = {
    "HAS_BIAS": lambda a: a["BIAS"] is not None,
    "HAS_LABELS": lambda a: a["XLAB"] is not None,
    "HAS_NORM": lambda a: a["INVX"] is not None,
    "NEED_DX": lambda a: a["DX"] is not None,
    "NEED_DS": lambda a: a["DS_PART"] is not None,
    "EVEN_O": lambda a: a["NX"] % a["BLOCK_O"] == 0,
    "EVEN_I": lambda a: a["NY"] % a["BLOCK_I"] == 0,
    "EVEN_D": lambda a: a["D"] % a["BLOCK_D"] == 0 and a["D"] > 0,
    "SINGLE_D": lambda a: a["D"] <= a["BLOCK_D"],
    "INT64": _int64,
}


def lse_bwd_kernel_py(
    X, Y, SCALE, BIAS, XLAB, YLAB, INVX, INVY, LSE, G, DX, ACC_BUF, DS_PART,
    NX, NY, D, SELF_OFFSET, EPS,
    stride_xn, stride_xd, stride_yn, stride_yd,
    DK: tl.constexpr, HAS_SELF: tl.constexpr, TF32: tl.constexpr, UPCAST: tl.constexpr,
    RESCALE: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_LABELS: tl.constexpr, HAS_NORM: tl.constexpr,
    NEED_DX: tl.constexpr, NEED_DS: tl.constexpr, EVEN_O: tl.constexpr, EVEN_I: tl.constexpr,
    EVEN_D: tl.constexpr, SINGLE_D: tl.constexpr, INT64: tl.constexpr,
):
    pid = tl.program_id(0)
    own = pid * BLOCK_O + tl.arange(0, BLOCK_O)
    if INT64:
        own = own.to(tl.int64)
    own_ok = own < NX
    offs_d = tl.arange(0, BLOCK_D)
    lam = tl.load(SCALE)
    ACC = lam.dtype
    inv_x = tl.zeros([BLOCK_O], ACC) + 1.0
    if HAS_NORM:
        inv_x = tl.load(INVX + own, mask=own_ok, other=0.0)
    x_lab = own
    if HAS_LABELS:
        x_lab = tl.load(XLAB + own, mask=own_ok, other=0)
    if DK:
        if HAS_BIAS:
            b_own = tl.load(BIAS + own, mask=own_ok, other=0.0).to(ACC)
    else:
        lse_o = tl.load(LSE + own, mask=own_ok, other=float("-inf")).to(ACC)
        live_o = own_ok & (lse_o > float("-inf"))
        lse_o = tl.where(live_o, lse_o, float("inf"))  # P = e^{s - inf} = 0 on dead rows
        g_o = tl.where(live_o, tl.load(G + own, mask=own_ok, other=0.0).to(ACC), 0.0)
    x_base = X + own[:, None] * stride_xn
    if SINGLE_D:
        xt = load_tile(x_base, offs_d, stride_xd, own_ok, D, EVEN_O, EVEN_D, UPCAST)
        if NEED_DX:
            acc = tl.zeros([BLOCK_O, BLOCK_D], ACC)
    ds = tl.zeros([BLOCK_O], ACC)
    w_scale = tl.zeros([BLOCK_O], ACC)  # fp16: the accumulator is kept in units of w_scale
    for i0 in range(0, NY, BLOCK_I):
        inner = i0 + tl.arange(0, BLOCK_I)
        if INT64:
            inner = inner.to(tl.int64)
        inner_ok = inner < NY
        y_base = Y + inner[:, None] * stride_yn
        if SINGLE_D:
            yt = load_tile(y_base, offs_d, stride_yd, inner_ok, D, EVEN_I, EVEN_D, UPCAST)
            c = dot_nt(xt, yt, tl.zeros([BLOCK_O, BLOCK_I], ACC), TF32)
        else:
            c = tl.zeros([BLOCK_O, BLOCK_I], ACC)
            for d0 in range(0, D, BLOCK_D):
                xc = load_tile(x_base, d0 + offs_d, stride_xd, own_ok, D, EVEN_O, EVEN_D, UPCAST)
                yc = load_tile(y_base, d0 + offs_d, stride_yd, inner_ok, D, EVEN_I, EVEN_D, UPCAST)
                c = dot_nt(xc, yc, c, TF32)
        if HAS_NORM:
            inv_y = tl.load(INVY + inner, mask=inner_ok, other=0.0)
            c = c * inv_x[:, None] * inv_y[None, :]
        s = c * lam
        y_lab = inner
        if HAS_LABELS:
            y_lab = tl.load(YLAB + inner, mask=inner_ok, other=0)
        if DK:
            # rows of the tile are keys (own), columns are queries (inner)
            if HAS_BIAS:
                s = s + b_own[:, None]
            s = exclude(s, inner[None, :], own[:, None], own_ok[:, None], y_lab[None, :],
                        x_lab[:, None], SELF_OFFSET, EVEN_O, HAS_SELF, HAS_LABELS)
            lse_i = tl.load(LSE + inner, mask=inner_ok, other=float("-inf")).to(ACC)
            live_i = inner_ok & (lse_i > float("-inf"))
            lse_i = tl.where(live_i, lse_i, float("inf"))
            g_i = tl.where(live_i, tl.load(G + inner, mask=inner_ok, other=0.0).to(ACC), 0.0)
            gp = tl.exp(s - lse_i[None, :]) * g_i[None, :]
            if HAS_NORM:
                w = gp * inv_y[None, :]
            else:
                w = gp
        else:
            if HAS_BIAS:
                s = s + tl.load(BIAS + inner, mask=inner_ok, other=0.0).to(ACC)[None, :]
            s = exclude(s, own[:, None], inner[None, :], inner_ok[None, :], x_lab[:, None],
                        y_lab[None, :], SELF_OFFSET, EVEN_I, HAS_SELF, HAS_LABELS)
            p = tl.exp(s - lse_o[:, None])
            if NEED_DS:
                gp = p * g_o[:, None]
            if HAS_NORM:
                w = p * inv_y[None, :]
            else:
                w = p
        if NEED_DS:
            ds += tl.sum(gp * c, axis=1)
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
        tl.store(DS_PART + pid, tl.sum(ds, axis=0))
    if NEED_DX:
        # dx^ = lam * u (row factor g on the dq side)
        if DK:
            row_c = tl.zeros([BLOCK_O], ACC) + lam
        else:
            row_c = lam * g_o
        if RESCALE:
            row_c = row_c * w_scale
        if SINGLE_D:
            dhat = acc * row_c[:, None]
            if HAS_NORM:
                xf = xt.to(ACC)
                t = tl.sum(xf * dhat, axis=1)
                nrm = tl.sqrt(tl.sum(xf * xf, axis=1))
                inv_e = 1.0 / tl.maximum(nrm, EPS)
                radial = tl.where(nrm >= EPS, t * inv_e * inv_e, 0.0)
                dhat = (dhat - xf * radial[:, None]) * inv_e[:, None]
            tl.store(DX + own[:, None] * D + offs_d[None, :], dhat,
                     mask=own_ok[:, None] & (offs_d < D)[None, :])
        else:
            if HAS_NORM:
                t = tl.zeros([BLOCK_O], ACC)
                n2 = tl.zeros([BLOCK_O], ACC)
                for d0 in range(0, D, BLOCK_D):
                    dd = d0 + offs_d
                    a_mask = own_ok[:, None] & (dd < D)[None, :]
                    xf = load_tile(x_base, dd, stride_xd, own_ok, D, EVEN_O, EVEN_D, UPCAST).to(ACC)
                    ac = tl.load(ACC_BUF + own[:, None] * D + dd[None, :], mask=a_mask, other=0.0)
                    t += tl.sum(xf * ac, axis=1)
                    n2 += tl.sum(xf * xf, axis=1)
                t = t * row_c
                nrm = tl.sqrt(n2)
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


# The HAS_* / EVEN_* / SINGLE_D / INT64 constexprs come from HEURISTICS: applied on the
# host for the fixed configs (wrap_triton takes plain jit functions), and through
# triton.heuristics under the opt-in autotuner.
lse_bwd_kernel = triton.jit(lse_bwd_kernel_py)
