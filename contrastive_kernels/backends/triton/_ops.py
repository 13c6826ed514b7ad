"""The Triton core ops: ``contrastive_kernels::lse_triton`` and its backward.

Declared with ``torch.library.triton_op`` (schemas exactly ``contract.FORWARD_SCHEMA`` /
``contract.BACKWARD_SCHEMA``), kernels launched through ``wrap_triton`` so torch.compile sees
them; fake implementations and autograd come from
:func:`contrastive_kernels.core.autograd.register_core_ops`.

Host side only allocates outputs, picks the fixed config and launches; no value is read
back (the scale is loaded from its 0-dim tensor inside the kernels). When the owned grid
is small the streamed side is split into S ranges (``key_split``): partials in fp32 / fp64
workspaces, then a merge (forward) / finish (backward) kernel, combined in a fixed order.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
import triton
from torch.library import triton_op, wrap_triton

from ... import env
from ...core import contract
from ...core.autograd import register_core_ops
from . import configs, key_split
from ._common import inv_norm_kernel, offsets_need_int64
from .lse_backward import HEURISTICS as BWD_HEURISTICS
from .lse_backward import lse_bwd_kernel, lse_bwd_kernel_py
from .lse_forward import HEURISTICS as FWD_HEURISTICS
from .lse_forward import lse_fwd_kernel, lse_fwd_kernel_py

FORWARD_NAME = f"{contract.NAMESPACE}::lse_triton"
BACKWARD_NAME = f"{contract.NAMESPACE}::lse_triton_backward"

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


def _wrap(kernel):
    """wrap_triton(kernel), so torch.compile sees the launch. Under the interpreter, torch
    before 2.12 (the GPU machines' 2.11) rejects the interpreted function: there it is
    launched directly (nothing is compiled then anyway)."""
    try:
        return wrap_triton(kernel)
    except RuntimeError:
        if kernels_interpreted():
            return kernel
        raise


def _allow_tf32(dtype: torch.dtype) -> bool:
    """fp32 operands: tf32 unless torch asks for IEEE fp32 matmuls ("highest")."""
    return dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest"


def _flags(dtype: torch.dtype) -> dict:
    interp = interpreting()
    return dict(TF32=_allow_tf32(dtype) and not interp,
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


def _splits(device: torch.device, n_rows: int, n_streamed: int, cfg: configs.Config) -> tuple:
    """(S, streamed tiles per range) of one launch (key_split.splits_for). The opt-in
    autotuner keeps S = 1: its BLOCK_O / BLOCK_I (hence the ranges and the workspaces) are
    chosen inside the launch, after the host has sized everything."""
    if configs.autotune_enabled() and not kernels_interpreted():
        return 1, 0
    return key_split.splits_for(device, triton.cdiv(n_rows, cfg.block_o),
                                triton.cdiv(n_streamed, cfg.block_i), interpreting())


def _launch(which: str, n_rows: int, cfg: configs.Config, kwargs: dict, reset=(), splits=1):
    """Launch ``which`` ("fwd" / "bwd") over ceil(n_rows / BLOCK_O) x ``splits`` programs
    (kwargs' SPLIT_KEYS > 0 when splits > 1).

    Default: the fixed config, heuristics evaluated here (wrap_triton takes plain jit
    functions). With CONTRASTIVE_KERNELS_TRITON_AUTOTUNE=1 (compiled mode only):
    triton.autotune over the config's neighbours, heuristics applied per candidate.
    """
    plain, fn_py, heur = _KERNELS[which]
    if configs.autotune_enabled() and not kernels_interpreted():
        assert splits == 1, "the autotuned launch is never split"
        key = (which, cfg, tuple(reset))
        if key not in _tuned:
            space = [triton.Config({"BLOCK_O": c.block_o, "BLOCK_I": c.block_i},
                                   num_warps=c.num_warps, num_stages=c.num_stages)
                     for c in configs.autotune_space(cfg)]
            _tuned[key] = triton.autotune(space, key=["D"], reset_to_zero=list(reset) or None)(
                triton.heuristics(heur)(triton.jit(fn_py)))
        _wrap(_tuned[key])[lambda meta: (triton.cdiv(n_rows, meta["BLOCK_O"]),)](**kwargs)
        return
    blocks = dict(BLOCK_O=cfg.block_o, BLOCK_I=cfg.block_i)
    flags = heuristic_flags(which, {**kwargs, **blocks})
    _wrap(plain)[(triton.cdiv(n_rows, cfg.block_o), splits)](
        **kwargs, **blocks, **flags, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


# --------------------------------------------------------------------------- helpers


def _bias_padded(bias: Optional[torch.Tensor], acc: torch.dtype) -> Optional[torch.Tensor]:
    """bias in the accumulation dtype, padded to whole tiles (the kernels add it as it is:
    the logit stays on the contract's natural grid, _common.logit)."""
    if bias is None:
        return None
    return _padded(bias.to(acc), 0.0)


def _inv_norms(x: torch.Tensor, eps: float, acc: torch.dtype) -> torch.Tensor:
    rows, d = x.shape
    # padded like _padded (zeros): the streamed side's norms are loaded without a mask
    out = torch.zeros(rows + (-rows % configs.KEY_PAD), dtype=acc, device=x.device)
    if rows == 0:
        return out
    block_r = 16
    block_d = min(max(16, configs.next_pow2(d)), 256)
    int64 = rows * abs(x.stride(0)) + d * abs(x.stride(1)) >= 2 ** 31
    _wrap(inv_norm_kernel)[(triton.cdiv(rows, block_r),)](
        x, out, rows, d, x.stride(0), x.stride(1), max(eps, _FP32_TINY),
        BLOCK_R=block_r, BLOCK_D=block_d, INT64=int64)
    return out


_INT32_LABELS = (torch.int8, torch.uint8, torch.int16, torch.int32) + tuple(
    getattr(torch, name) for name in ("uint16",) if hasattr(torch, name))


def _per_key_inputs(bias, q_labels, k_labels):
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


def _padded(x: Optional[torch.Tensor], fill: float, length: int = 0) -> Optional[torch.Tensor]:
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


def _inv_norm_pair(q, k, normalize, eps, acc):
    """Inverse row norms of q and k for fused normalization, or (None, None)."""
    if not normalize:
        return None, None
    return _inv_norms(q, eps, acc), _inv_norms(k, eps, acc)


# --------------------------------------------------------------------------- forward


# The schemas are given explicitly: inferred from the type hints, ``Optional[int]`` would
# read ``SymInt?`` where the core-op contract says ``int?`` (tests assert the exact text).
@triton_op(FORWARD_NAME, mutates_args=(), schema=contract.FORWARD_SCHEMA)
def lse_triton(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor],
               q_labels: Optional[torch.Tensor], k_labels: Optional[torch.Tensor],
               self_offset: Optional[int], normalize: bool, eps: float,
               exclude_positives: bool, return_o: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    n, d = q.shape
    m = k.shape[0]
    acc = contract.accumulate_dtype(q.dtype)
    lse = torch.empty(n, dtype=acc, device=q.device)
    # o accumulates in place when d is chunked: zero-initialized
    o = (torch.zeros((n, d), dtype=acc, device=q.device) if return_o
         else torch.empty((0,), dtype=acc, device=q.device))
    if n == 0:
        return lse, o
    scale = scale.to(acc)
    q_labels, k_labels = contract.active_labels(q_labels, k_labels, exclude_positives)
    bias, q_labels, k_labels = _per_key_inputs(bias, q_labels, k_labels)
    bias, k_labels = _bias_padded(bias, acc), _padded(k_labels, 0)
    inv_q, inv_k = _inv_norm_pair(q, k, normalize, eps, acc)
    cfg = configs.select("fwd_o" if return_o else "fwd", d, q.dtype, arch_for(q.device),
                         tf32=_allow_tf32(q.dtype))
    block_d, single = configs.block_d_for(cfg, d, q.dtype)
    splits, per = _splits(q.device, n, m, cfg)
    lse_out, o_out, part_m = lse, (o if return_o else None), None
    if splits > 1:
        # the last range may run past M (masked): the per-key vectors cover every range
        span = splits * per * cfg.block_i
        bias, k_labels, inv_k = (_padded(bias, 0.0, span), _padded(k_labels, 0, span),
                                 _padded(inv_k, 0.0, span))
        # partials: running max, sum and unnormalized o of each key range (o accumulates
        # in place when d is chunked: zero-initialized)
        part_m = torch.empty((splits, n), dtype=acc, device=q.device)
        lse_out = torch.empty((splits, n), dtype=acc, device=q.device)
        if return_o:
            o_out = (torch.empty if single else torch.zeros)((splits, n, d), dtype=acc,
                                                             device=q.device)
    _launch("fwd", n, cfg, dict(
        Q=q, K=k, SCALE=scale, BIAS=bias, QLAB=q_labels, KLAB=k_labels, INVQ=inv_q, INVK=inv_k,
        LSE=lse_out, O=o_out, PART_M=part_m, N=n, M=m, D=d,
        SELF_OFFSET=0 if self_offset is None else int(self_offset),
        SPLIT_KEYS=per * cfg.block_i if splits > 1 else 0,
        stride_qn=q.stride(0), stride_qd=q.stride(1), stride_kn=k.stride(0),
        stride_kd=k.stride(1), HAS_SELF=self_offset is not None, BLOCK_D=block_d,
        **_flags(q.dtype)), reset=("O",) if return_o else (), splits=splits)
    if splits > 1:
        block_r = key_split.MERGE_ROWS
        _wrap(key_split.merge_kernel)[(triton.cdiv(n, block_r),)](
            part_m, lse_out, o_out, lse, o if return_o else None, n, d, splits,
            BLOCK_R=block_r, BLOCK_D=max(16, min(64, configs.next_pow2(d))),
            RETURN_O=return_o, INT64=splits * n * max(d, 1) >= 2 ** 31,
            num_warps=key_split.AUX_WARPS)
    return lse, o


# --------------------------------------------------------------------------- backward


def _launch_bwd(dk_side, grad_lse, q, k, scale, bias, q_labels, k_labels, self_offset, eps,
                lse, inv_q, inv_k, need_dx, need_ds):
    """One backward grid; returns (dx or None, per-program dscale partials or None)."""
    x, y = (k, q) if dk_side else (q, k)
    x_lab, y_lab = (k_labels, q_labels) if dk_side else (q_labels, k_labels)
    inv_x, inv_y = (inv_k, inv_q) if dk_side else (inv_q, inv_k)
    nx, d = x.shape
    ny = y.shape[0]
    acc = contract.accumulate_dtype(q.dtype)
    cfg = configs.select("bwd_dk" if dk_side else "bwd_dq", d, q.dtype, arch_for(q.device),
                         tf32=_allow_tf32(q.dtype))
    block_d, single = configs.block_d_for(cfg, d, q.dtype)
    flags = _flags(q.dtype)
    # The interpreter rounds fp32 -> bf16 stores toward zero (compiled Triton rounds to
    # nearest even): under it, bf16 gradients are stored in fp32 and rounded by torch.
    dx_dtype = torch.float32 if flags["UPCAST"] else x.dtype
    dx = torch.empty(x.shape, dtype=dx_dtype, device=x.device) if need_dx else None
    acc_buf = (torch.zeros((nx, d), dtype=acc, device=x.device) if (need_dx and not single)
               else None)
    splits, per = _splits(x.device, nx, ny, cfg)
    if splits > 1:
        # the last range may run past NY (masked): the streamed side's vectors cover it
        span = splits * per * cfg.block_i
        y_lab, inv_y = _padded(y_lab, 0, span), _padded(inv_y, 0.0, span)
        if dk_side:
            lse, grad_lse = _padded(lse, float("-inf"), span), _padded(grad_lse, 0.0, span)
        else:
            bias = _padded(bias, 0.0, span)
    if splits > 1 and need_dx:
        # one partial accumulator per range (in place when d is chunked: zero-initialized)
        acc_buf = (torch.empty if single else torch.zeros)((splits, nx, d), dtype=acc,
                                                           device=x.device)
    # one partial per (program, range); sized for the smallest BLOCK_O the autotuner may pick
    ds_part = (torch.zeros(splits * triton.cdiv(nx, min(cfg.block_o, 64)), dtype=acc,
                           device=x.device) if need_ds else None)
    eps32 = max(eps, _FP32_TINY)
    _launch("bwd", nx, cfg, dict(
        X=x, Y=y, SCALE=scale, BIAS=bias, XLAB=x_lab, YLAB=y_lab, INVX=inv_x, INVY=inv_y,
        LSE=lse, G=grad_lse, DX=dx, ACC_BUF=acc_buf, DS_PART=ds_part, NX=nx, NY=ny, D=d,
        SELF_OFFSET=0 if self_offset is None else int(self_offset),
        EPS=eps32, SPLIT_KEYS=per * cfg.block_i if splits > 1 else 0,
        stride_xn=x.stride(0), stride_xd=x.stride(1),
        stride_yn=y.stride(0), stride_yd=y.stride(1), DK=dk_side,
        HAS_SELF=self_offset is not None, BLOCK_D=block_d, **flags),
        reset=tuple(name for name, buf in (("ACC_BUF", acc_buf), ("DS_PART", ds_part))
                    if buf is not None), splits=splits)
    if splits > 1 and need_dx:
        block_r = key_split.finish_rows(block_d)
        int64 = (offsets_need_int64(nx, x.stride(0), nx, x.stride(0), d, x.stride(1),
                                    x.stride(1)) or splits * nx * d >= 2 ** 31)
        _wrap(key_split.finish_kernel)[(triton.cdiv(nx, block_r),)](
            acc_buf, x, dx, scale, nx, d, splits, eps32, x.stride(0), x.stride(1),
            BLOCK_R=block_r, BLOCK_D=block_d, HAS_NORM=inv_x is not None,
            EVEN_O=nx % block_r == 0, EVEN_D=d % block_d == 0 and d > 0, SINGLE_D=single,
            UPCAST=flags["UPCAST"], INT64=int64, num_warps=key_split.AUX_WARPS)
    if dx is not None and dx.dtype != x.dtype:
        dx = dx.to(x.dtype)
    return dx, ds_part


@triton_op(BACKWARD_NAME, mutates_args=(), schema=contract.BACKWARD_SCHEMA)
def lse_triton_backward(grad_lse: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                        scale: torch.Tensor, bias: Optional[torch.Tensor],
                        q_labels: Optional[torch.Tensor], k_labels: Optional[torch.Tensor],
                        self_offset: Optional[int], normalize: bool, eps: float,
                        exclude_positives: bool, lse: torch.Tensor, need_dq: bool,
                        need_dk: bool, need_dscale: bool
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    acc = contract.accumulate_dtype(q.dtype)
    dq = q.new_empty((0,))
    dk = k.new_empty((0,))
    if q.shape[0] == 0 or k.shape[0] == 0:
        # no pair (i, j): every gradient is zero
        dq = torch.zeros_like(q, memory_format=torch.contiguous_format) if need_dq else dq
        dk = torch.zeros_like(k, memory_format=torch.contiguous_format) if need_dk else dk
        return dq, dk, torch.zeros((), dtype=scale.dtype, device=scale.device)
    scale_acc = scale.to(acc)
    q_labels, k_labels = contract.active_labels(q_labels, k_labels, exclude_positives)
    bias, q_labels, k_labels = _per_key_inputs(bias, q_labels, k_labels)
    bias, q_labels, k_labels = (_bias_padded(bias, acc), _padded(q_labels, 0),
                                _padded(k_labels, 0))
    inv_q, inv_k = _inv_norm_pair(q, k, normalize, eps, acc)
    grad_lse = _padded(grad_lse, 0.0)
    lse = _padded(lse, float("-inf"))
    args = (grad_lse, q, k, scale_acc, bias, q_labels, k_labels, self_offset, eps, lse,
            inv_q, inv_k)
    ds_parts = []
    # dscale rides on whichever grid runs (the row grid when both do)
    if need_dq or (need_dscale and not need_dk):
        dq_out, part = _launch_bwd(False, *args, need_dx=need_dq, need_ds=need_dscale)
        dq = dq_out if need_dq else dq
        ds_parts.append(part)
    if need_dk:
        dk_out, part = _launch_bwd(True, *args, need_dx=True,
                                   need_ds=need_dscale and not ds_parts)
        dk = dk_out
        ds_parts.append(part)
    ds_parts = [p for p in ds_parts if p is not None]
    if need_dscale and ds_parts:
        dscale = ds_parts[0].sum().to(scale.dtype)
    else:
        dscale = torch.zeros((), dtype=scale.dtype, device=scale.device)
    return dq, dk, dscale


lse_op = torch.ops.contrastive_kernels.lse_triton.default
lse_backward_op = torch.ops.contrastive_kernels.lse_triton_backward.default
# The shared fake implementations replace the traced launcher triton_op registers as fake:
# same outputs, and they need no kernel (under the interpreter a launch on fake tensors
# would read data pointers). torch.compile still sees the kernels: triton_op decomposes
# the op into its wrap_triton calls under functionalization.
register_core_ops(lse_op, lse_backward_op)
