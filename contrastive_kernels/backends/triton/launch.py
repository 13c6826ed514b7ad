"""Launching the Triton kernels: the host side shared by the core ops (``_ops``: lse) and
the two-sided lse (``two_sided``).

Host side only allocates outputs, picks the fixed config and launches; no value is read
back (the scale is loaded from its 0-dim tensor inside the kernels). When the owned grid
is small the streamed side is split into S ranges (``key_split``): partials in fp32 / fp64
workspaces, then a merge (forward) / finish (backward) kernel, combined in a fixed order.

:func:`forward` sweeps the tiles once for either reduction (``score_tile.ROWS``: lse and
o; ``ROWS_AND_COLUMNS``: row and column lse, the columns merged over the row blocks by
``key_split.merge_kernel``); :func:`backward` runs the dq and dk grids, with the column
softmax when given the column statistics.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
from torch.library import wrap_triton

from ... import env
from ...core import contract
from . import configs, key_split
from ._common import inv_norm_kernel, offsets_need_int64
from .lse_backward import HEURISTICS as BWD_HEURISTICS
from .lse_backward import lse_bwd_kernel, lse_bwd_kernel_py
from .lse_forward import HEURISTICS as FWD_HEURISTICS
from .lse_forward import lse_fwd_kernel, lse_fwd_kernel_py
from .score_tile import ROWS, ROWS_AND_COLUMNS, SIGMOID

_FP32_TINY = 1.1754943508222875e-38  # eps is passed to the kernels as an fp32 scalar


def interpreting() -> bool:
    """Whether the kernels run under the Triton interpreter (read at call time)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1" or kernels_interpreted()


def kernels_interpreted() -> bool:
    """Whether the kernel objects are the interpreter's (TRITON_INTERPRET=1 at import)."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover
        return False
    return isinstance(lse_fwd_kernel, InterpretedFunction)


ARCH_ENV = env.name("TRITON_ARCH")  # "80" / "90": config family without asking the device


def arch_for(device: torch.device):
    """Config family (80 / 90) for a CUDA device, None under the interpreter."""
    if interpreting() or device.type != "cuda":
        return None
    forced = env.get("TRITON_ARCH")
    if forced:
        return configs.arch_of(divmod(int(forced), 10))
    return configs.arch_of(torch.cuda.get_device_capability(device))


def wrap(kernel):
    """wrap_triton(kernel), so torch.compile sees the launch. Under the interpreter, torch
    before 2.12 (the GPU machines' 2.11) rejects the interpreted function: there it is
    launched directly (nothing is compiled then anyway)."""
    try:
        return wrap_triton(kernel)
    except RuntimeError:
        if kernels_interpreted():
            return kernel
        raise


def allow_tf32(dtype: torch.dtype) -> bool:
    """fp32 operands: tf32 unless torch asks for IEEE fp32 matmuls ("highest")."""
    return dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest"


def flags(dtype: torch.dtype) -> dict:
    interp = interpreting()
    return dict(TF32=allow_tf32(dtype) and not interp,
                UPCAST=interp and dtype == torch.bfloat16,
                RESCALE=dtype == torch.float16)


# --------------------------------------------------------------------------- launching

_KERNELS = {"fwd": (lse_fwd_kernel, lse_fwd_kernel_py, FWD_HEURISTICS),
            "bwd": (lse_bwd_kernel, lse_bwd_kernel_py, BWD_HEURISTICS)}
_tuned: dict = {}


def heuristic_flags(which: str, kwargs: dict) -> dict:
    """The HAS_* / EVEN_* / SINGLE_D / INT64 constexprs of one launch (kwargs: every
    runtime argument and the block sizes)."""
    return {name: bool(fn(kwargs)) for name, fn in _KERNELS[which][2].items()}


def splits_of(device: torch.device, n_rows: int, n_streamed: int, cfg: configs.Config) -> tuple:
    """(S, streamed tiles per range) of one launch (key_split.splits_for). The opt-in
    autotuner keeps S = 1: its BLOCK_O / BLOCK_I (hence the ranges and the workspaces) are
    chosen inside the launch, after the host has sized everything."""
    if configs.autotune_enabled() and not kernels_interpreted():
        return 1, 0
    return key_split.splits_for(device, triton.cdiv(n_rows, cfg.block_o),
                                triton.cdiv(n_streamed, cfg.block_i), interpreting())


def launch(which: str, n_rows: int, cfg: configs.Config, kwargs: dict, reset=(), splits=1,
           tunable: bool = True):
    """Launch ``which`` ("fwd" / "bwd") over ceil(n_rows / BLOCK_O) x ``splits`` programs
    (kwargs' SPLIT_KEYS > 0 when splits > 1).

    Default: the fixed config, heuristics evaluated here (wrap_triton takes plain jit
    functions). With CONTRASTIVE_KERNELS_TRITON_AUTOTUNE=1 (compiled mode only) and
    ``tunable``: triton.autotune over the config's neighbours, heuristics applied per
    candidate (not for the two-sided sweep, whose column partials are sized by BLOCK_O).
    """
    plain, fn_py, heur = _KERNELS[which]
    if tunable and configs.autotune_enabled() and not kernels_interpreted():
        assert splits == 1, "the autotuned launch is never split"
        key = (which, cfg, tuple(reset))
        if key not in _tuned:
            space = [triton.Config({"BLOCK_O": c.block_o, "BLOCK_I": c.block_i},
                                   num_warps=c.num_warps, num_stages=c.num_stages)
                     for c in configs.autotune_space(cfg)]
            _tuned[key] = triton.autotune(space, key=["D"], reset_to_zero=list(reset) or None)(
                triton.heuristics(heur)(triton.jit(fn_py)))
        wrap(_tuned[key])[lambda meta: (triton.cdiv(n_rows, meta["BLOCK_O"]),)](**kwargs)
        return
    blocks = dict(BLOCK_O=cfg.block_o, BLOCK_I=cfg.block_i)
    derived = heuristic_flags(which, {**kwargs, **blocks})
    wrap(plain)[(triton.cdiv(n_rows, cfg.block_o), splits)](
        **kwargs, **blocks, **derived, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


# --------------------------------------------------------------------------- helpers


def bias_padded(bias: Optional[torch.Tensor], acc: torch.dtype) -> Optional[torch.Tensor]:
    """bias in the accumulation dtype, padded to whole tiles (the kernels add it as it is:
    the logit stays on the contract's natural grid, _common.logit)."""
    if bias is None:
        return None
    return padded(bias.to(acc), 0.0)


def inv_norms(x: torch.Tensor, eps: float, acc: torch.dtype) -> torch.Tensor:
    rows, d = x.shape
    # padded like _padded (zeros): the streamed side's norms are loaded without a mask
    out = torch.zeros(rows + (-rows % configs.KEY_PAD), dtype=acc, device=x.device)
    if rows == 0:
        return out
    block_r = 16
    block_d = min(max(16, configs.next_pow2(d)), 256)
    int64 = rows * abs(x.stride(0)) + d * abs(x.stride(1)) >= 2 ** 31
    wrap(inv_norm_kernel)[(triton.cdiv(rows, block_r),)](
        x, out, rows, d, x.stride(0), x.stride(1), max(eps, _FP32_TINY),
        BLOCK_R=block_r, BLOCK_D=block_d, INT64=int64)
    return out


_INT32_LABELS = (torch.int8, torch.uint8, torch.int16, torch.int32) + tuple(
    getattr(torch, name) for name in ("uint16",) if hasattr(torch, name))


def per_key_inputs(bias, q_labels, k_labels):
    """bias and labels as the kernels index them: contiguous, and both label tensors int32
    (the kernels compare raw integers: int8 -1 and uint8 255 share their bits, and a
    64-bit compare costs two instructions per logit).

    Decided by dtype, never by reading values (that would sync): dtypes that fit int32
    are cast; wider ones are replaced by an equality-preserving int32 code, the value's
    position in the sorted concatenation of both label vectors (sort + searchsorted on
    the device, O((N + M) log(N + M)))."""
    if bias is not None:
        bias = bias.contiguous()
    if q_labels is not None and k_labels is not None:
        if q_labels.dtype in _INT32_LABELS and k_labels.dtype in _INT32_LABELS:
            q_labels = q_labels.to(torch.int32).contiguous()
            k_labels = k_labels.to(torch.int32).contiguous()
        else:
            ql, kl = q_labels.to(torch.int64), k_labels.to(torch.int64)
            ordered = torch.sort(torch.cat([ql, kl])).values
            q_labels = torch.searchsorted(ordered, ql, out_int32=True)
            k_labels = torch.searchsorted(ordered, kl, out_int32=True)
    return bias, q_labels, k_labels


def padded(x: Optional[torch.Tensor], fill: float, length: int = 0) -> Optional[torch.Tensor]:
    """A contiguous copy of a per-row vector padded with ``fill`` to a multiple of
    configs.KEY_PAD, and to at least ``length`` (the key split's last range may run past
    the rows): the kernels load the streamed side's vectors (bias, labels, inverse norms,
    lse, g) of a whole tile without a mask, which lets the loads vectorize; the last
    tile's bound mask drops the padding. Returned as it is when nothing needs adding."""
    if x is None:
        return None
    n = x.shape[0]
    total = max(n + (-n % configs.KEY_PAD), length)
    if total == n and x.is_contiguous():
        return x
    out = torch.full((total,), fill, dtype=x.dtype, device=x.device)
    out[:n] = x
    return out


def inv_norm_pair(q, k, normalize, eps, acc):
    """Inverse row norms of q and k for fused normalization, or (None, None)."""
    if not normalize:
        return None, None
    return inv_norms(q, eps, acc), inv_norms(k, eps, acc)



def _pair_inputs(q, k, bias, q_labels, k_labels, normalize, eps, exclude_positives, acc,
                 reduction=ROWS):
    """(bias, q_labels, k_labels, inv_q, inv_k) as the kernels read them: labels only under
    exclude_positives (the sigmoid: whenever both are given, they mark positives) and as
    int32 codes, the key-side vectors padded to whole tiles."""
    q_labels, k_labels = contract.active_labels(q_labels, k_labels,
                                                exclude_positives or reduction == SIGMOID)
    bias, q_labels, k_labels = per_key_inputs(bias, q_labels, k_labels)
    inv_q, inv_k = inv_norm_pair(q, k, normalize, eps, acc)
    return bias_padded(bias, acc), padded(q_labels, 0), padded(k_labels, 0), inv_q, inv_k


def merge(part_m, part_l, part_o, lse, o, rows: int, d: int, parts: int) -> None:
    """lse (and o) of ``rows`` lines from ``parts`` partials [parts, rows] merged in order
    (key_split.merge_kernel): the key split's ranges, or the row blocks of the columns."""
    if rows == 0:
        return
    block_r = key_split.MERGE_ROWS
    wrap(key_split.merge_kernel)[(triton.cdiv(rows, block_r),)](
        part_m, part_l, part_o, lse, o, rows, d, parts,
        BLOCK_R=block_r, BLOCK_D=max(16, min(64, configs.next_pow2(d))),
        RETURN_O=o is not None, INT64=parts * rows * max(d, 1) >= 2 ** 31,
        num_warps=key_split.AUX_WARPS)


def forward(q, k, scale, bias, q_labels, k_labels, self_offset, normalize, eps,
            exclude_positives, return_o=False, reduction=ROWS):
    """(lse [N], o [N, d] or an empty [0], col_lse [M] or None) of one sweep over the tiles.

    ``reduction``: ROWS (the lse core op), ROWS_AND_COLUMNS (the two-sided lse, no o):
    each row block also writes a partial (max, sum) per column to [row blocks, M]
    workspaces, merged per column in the order of the row blocks; or SIGMOID (the first
    result is then the row loss, the sum of softplus(-z s); key ranges summed in order)."""
    n, d = q.shape
    m = k.shape[0]
    acc = contract.accumulate_dtype(q.dtype)
    two_sided = reduction == ROWS_AND_COLUMNS
    lse = torch.empty(n, dtype=acc, device=q.device)
    # o accumulates in place when d is chunked: zero-initialized
    o = (torch.zeros((n, d), dtype=acc, device=q.device) if return_o
         else torch.empty((0,), dtype=acc, device=q.device))
    # no row: every column is empty (-inf)
    col_lse = torch.full((m,), float("-inf"), dtype=acc, device=q.device) if two_sided else None
    if n == 0:
        return lse, o, col_lse
    scale = scale.to(acc)
    bias, q_labels, k_labels, inv_q, inv_k = _pair_inputs(q, k, bias, q_labels, k_labels,
                                                          normalize, eps, exclude_positives, acc,
                                                          reduction)
    kernel = ("two_sided_fwd" if two_sided else "sigmoid_fwd" if reduction == SIGMOID
              else "fwd_o" if return_o else "fwd")
    cfg = configs.select(kernel, d, q.dtype, arch_for(q.device), tf32=allow_tf32(q.dtype))
    block_d, single = configs.block_d_for(cfg, d, q.dtype)
    splits, per = splits_of(q.device, n, m, cfg)
    lse_out, o_out, part_m = lse, (o if return_o else None), None
    if splits > 1:
        # the last range may run past M (masked): the per-key vectors cover every range
        span = splits * per * cfg.block_i
        bias, k_labels, inv_k = (padded(bias, 0.0, span), padded(k_labels, 0, span),
                                 padded(inv_k, 0.0, span))
        # partials: running max, sum and unnormalized o of each key range (o accumulates
        # in place when d is chunked: zero-initialized)
        part_m = None if reduction == SIGMOID else torch.empty((splits, n), dtype=acc,
                                                               device=q.device)
        lse_out = torch.empty((splits, n), dtype=acc, device=q.device)
        if return_o:
            o_out = (torch.empty if single else torch.zeros)((splits, n, d), dtype=acc,
                                                             device=q.device)
    row_blocks = triton.cdiv(n, cfg.block_o)
    col_m = col_l = None
    if two_sided:  # every (row block, column) is written by exactly one program
        col_m = torch.empty((row_blocks, m), dtype=acc, device=q.device)
        col_l = torch.empty((row_blocks, m), dtype=acc, device=q.device)
    launch("fwd", n, cfg, dict(
        Q=q, K=k, SCALE=scale, BIAS=bias, QLAB=q_labels, KLAB=k_labels, INVQ=inv_q, INVK=inv_k,
        LSE=lse_out, O=o_out, PART_M=part_m, COL_M=col_m, COL_L=col_l, N=n, M=m, D=d,
        SELF_OFFSET=0 if self_offset is None else int(self_offset),
        SPLIT_KEYS=per * cfg.block_i if splits > 1 else 0,
        stride_qn=q.stride(0), stride_qd=q.stride(1), stride_kn=k.stride(0),
        stride_kd=k.stride(1), HAS_SELF=self_offset is not None, BLOCK_D=block_d,
        REDUCTION=reduction, **flags(q.dtype)),
        reset=("O",) if return_o else (), splits=splits, tunable=not two_sided)
    if splits > 1 and reduction == SIGMOID:
        torch.sum(lse_out, dim=0, out=lse)  # the S ranges' row sums, in a fixed order
    elif splits > 1:
        merge(part_m, lse_out, o_out, lse, o if return_o else None, n, d, splits)
    if two_sided:
        merge(col_m, col_l, None, col_lse, None, m, 0, row_blocks)
    return lse, o, col_lse


def _backward_grid(dk_side, grad_lse, q, k, scale, bias, q_labels, k_labels, self_offset, eps,
                   lse, inv_q, inv_k, col_lse, grad_col, need_dx, need_ds, reduction=ROWS,
                   need_db=False):
    """One backward grid; returns (dx or None, per-program dscale partials or None, dbias
    or None). ``col_lse`` / ``grad_col`` (padded) given: the two-sided weights g P + h P';
    SIGMOID: -z sigmoid(-z s) g (``lse`` unused), dbias from the dk grid (``need_db``)."""
    x, y = (k, q) if dk_side else (q, k)
    x_lab, y_lab = (k_labels, q_labels) if dk_side else (q_labels, k_labels)
    inv_x, inv_y = (inv_k, inv_q) if dk_side else (inv_q, inv_k)
    nx, d = x.shape
    ny = y.shape[0]
    acc = contract.accumulate_dtype(q.dtype)
    kernel = ("two_sided_" if col_lse is not None else "sigmoid_" if reduction == SIGMOID
              else "") + ("bwd_dk" if dk_side else "bwd_dq")
    cfg = configs.select(kernel, d, q.dtype, arch_for(q.device), tf32=allow_tf32(q.dtype))
    block_d, single = configs.block_d_for(cfg, d, q.dtype)
    fl = flags(q.dtype)
    # The interpreter rounds fp32 -> bf16 stores toward zero (compiled Triton rounds to
    # nearest even): under it, bf16 gradients are stored in fp32 and rounded by torch.
    dx_dtype = torch.float32 if fl["UPCAST"] else x.dtype
    dx = torch.empty(x.shape, dtype=dx_dtype, device=x.device) if need_dx else None
    acc_buf = (torch.zeros((nx, d), dtype=acc, device=x.device) if (need_dx and not single)
               else None)
    splits, per = splits_of(x.device, nx, ny, cfg)
    if splits > 1:
        # the last range may run past NY (masked): the streamed side's vectors cover it
        span = splits * per * cfg.block_i
        y_lab, inv_y = padded(y_lab, 0, span), padded(inv_y, 0.0, span)
        if dk_side:
            lse, grad_lse = padded(lse, float("-inf"), span), padded(grad_lse, 0.0, span)
        else:
            bias = padded(bias, 0.0, span)
            col_lse, grad_col = padded(col_lse, float("-inf"), span), padded(grad_col, 0.0, span)
    if splits > 1 and need_dx:
        # one partial accumulator per range (in place when d is chunked: zero-initialized)
        acc_buf = (torch.empty if single else torch.zeros)((splits, nx, d), dtype=acc,
                                                           device=x.device)
    # one partial per (program, range); sized for the smallest BLOCK_O the autotuner may pick
    ds_part = (torch.zeros(splits * triton.cdiv(nx, min(cfg.block_o, 64)), dtype=acc,
                           device=x.device) if need_ds else None)
    # dbias of the owned keys, one part per range (summed in order below)
    db = (torch.empty((splits, nx) if splits > 1 else (nx,), dtype=acc, device=x.device)
          if need_db else None)
    eps32 = max(eps, _FP32_TINY)
    launch("bwd", nx, cfg, dict(
        X=x, Y=y, SCALE=scale, BIAS=bias, XLAB=x_lab, YLAB=y_lab, INVX=inv_x, INVY=inv_y,
        LSE=lse, G=grad_lse, COL_LSE=col_lse, COL_G=grad_col, DX=dx, ACC_BUF=acc_buf,
        DS_PART=ds_part, DBIAS=db, NX=nx, NY=ny, D=d,
        SELF_OFFSET=0 if self_offset is None else int(self_offset),
        EPS=eps32, SPLIT_KEYS=per * cfg.block_i if splits > 1 else 0,
        stride_xn=x.stride(0), stride_xd=x.stride(1),
        stride_yn=y.stride(0), stride_yd=y.stride(1), DK=dk_side,
        HAS_SELF=self_offset is not None, BLOCK_D=block_d,
        REDUCTION=reduction if col_lse is None else ROWS_AND_COLUMNS, **fl),
        reset=tuple(name for name, buf in (("ACC_BUF", acc_buf), ("DS_PART", ds_part))
                    if buf is not None), splits=splits)
    if splits > 1 and need_dx:
        block_r = key_split.finish_rows(block_d)
        int64 = (offsets_need_int64(nx, x.stride(0), nx, x.stride(0), d, x.stride(1),
                                    x.stride(1)) or splits * nx * d >= 2 ** 31)
        wrap(key_split.finish_kernel)[(triton.cdiv(nx, block_r),)](
            acc_buf, x, dx, scale, nx, d, splits, eps32, x.stride(0), x.stride(1),
            BLOCK_R=block_r, BLOCK_D=block_d, HAS_NORM=inv_x is not None,
            EVEN_O=nx % block_r == 0, EVEN_D=d % block_d == 0 and d > 0, SINGLE_D=single,
            UPCAST=fl["UPCAST"], INT64=int64, num_warps=key_split.AUX_WARPS)
    if dx is not None and dx.dtype != x.dtype:
        dx = dx.to(x.dtype)
    if db is not None and splits > 1:
        db = db.sum(dim=0)
    return dx, ds_part, db


def backward(grad_lse, q, k, scale, bias, q_labels, k_labels, self_offset, normalize, eps,
             exclude_positives, lse, need_dq, need_dk, need_dscale, grad_col=None,
             col_lse=None, reduction=ROWS, need_dbias=False):
    """(dq or [0], dk or [0], dscale, dbias [M] or [0]) from the saved lse (and,
    two-sided, the saved col_lse with its cotangent grad_col; SIGMOID: no statistic, lse
    unused): the dq grid and / or the dk grid, each recomputing the logits once; dscale
    from whichever grid runs (the row grid when both do), dbias from the dk grid."""
    acc = contract.accumulate_dtype(q.dtype)
    dq = q.new_empty((0,))
    dk = k.new_empty((0,))
    dbias = torch.empty((0,), dtype=acc, device=q.device)
    if q.shape[0] == 0 or k.shape[0] == 0:
        # no pair (i, j): every gradient is zero
        dq = torch.zeros_like(q, memory_format=torch.contiguous_format) if need_dq else dq
        dk = torch.zeros_like(k, memory_format=torch.contiguous_format) if need_dk else dk
        if need_dbias:
            dbias = torch.zeros((k.shape[0],), dtype=acc, device=q.device)
        return dq, dk, torch.zeros((), dtype=scale.dtype, device=scale.device), dbias
    scale_acc = scale.to(acc)
    bias, q_labels, k_labels, inv_q, inv_k = _pair_inputs(q, k, bias, q_labels, k_labels,
                                                          normalize, eps, exclude_positives, acc,
                                                          reduction)
    if col_lse is not None:
        col_lse, grad_col = padded(col_lse, float("-inf")), padded(grad_col, 0.0)
    lse = None if reduction == SIGMOID else padded(lse, float("-inf"))
    args = (padded(grad_lse, 0.0), q, k, scale_acc, bias, q_labels, k_labels, self_offset, eps,
            lse, inv_q, inv_k, col_lse, grad_col)
    dk_grid = need_dk or need_dbias
    ds_parts = []
    if need_dq or (need_dscale and not dk_grid):
        dq_out, part, _ = _backward_grid(False, *args, need_dx=need_dq, need_ds=need_dscale,
                                         reduction=reduction)
        dq = dq_out if need_dq else dq
        ds_parts.append(part)
    if dk_grid:
        dk_out, part, db = _backward_grid(True, *args, need_dx=need_dk,
                                          need_ds=need_dscale and not ds_parts,
                                          reduction=reduction, need_db=need_dbias)
        dk = dk_out if need_dk else dk
        dbias = db if need_dbias else dbias
        ds_parts.append(part)
    ds_parts = [p for p in ds_parts if p is not None]
    if need_dscale and ds_parts:
        dscale = ds_parts[0].sum().to(scale.dtype)
    else:
        dscale = torch.zeros((), dtype=scale.dtype, device=scale.device)
    return dq, dk, dscale, dbias
