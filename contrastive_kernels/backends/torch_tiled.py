"""Backend ``torch``: the core ops in plain PyTorch, tiled so no N x M tensor exists.

Forward, per row block R and key tile C (online log-sum-exp, as in flash-attention):

    s   = scale (q^_R k^_C^T) + bias_C, excluded keys set to -inf
    m'  = max(m, rowmax s);  l = l e^{m - m'} + sum_j e^{s_j - m'};  o likewise
    lse = m + log l

Backward recomputes each tile once from the saved lse and feeds both sides
(one recompute, two products; the row-block loop is sequential so dk needs no atomics):

    P   = g_i e^{s_ij - lse_i}      (= dL/ds_ij)
    u_R += P k^_C,  v_C += P^T q^_R,  dq^ = scale u,  dk^ = scale v,  dscale = sum_i <q^_i, u_i>

and then through the normalization Jacobian  dq = (dq^ - [||q|| >= eps] q^ <q^, dq^>) / max(||q||, eps).

Memory: O((N + M) d) for the fp32 copies plus one tile of TILE_ELEMENTS floats (a few
temporaries of that size). Works on any device; computes in float32 (float64 for float64).
"""

from __future__ import annotations

import math

import torch

from ..core.autograd import define_core_ops
from ..core.contract import accumulate_dtype, active_labels
from ..core.norms import row_norms
from .registry import Backend

# Elements per similarity tile. 2^20 fp32 = 4 MiB: large enough that the tile matmuls run
# near the GEMM rate, small enough that the tile stays close to cache and memory stays flat.
TILE_ELEMENTS = 1 << 20
MAX_KEY_TILE = 4096


def tile_shape(n_rows: int, n_keys: int, tile_elements: int = TILE_ELEMENTS):
    block_keys = max(1, min(n_keys, MAX_KEY_TILE))
    block_rows = max(1, min(n_rows, tile_elements // block_keys))
    return block_rows, block_keys


def normalized(x: torch.Tensor, normalize: bool, eps: float, acc: torch.dtype):
    """(x^ in acc dtype, 1 / max(||x||, eps) or None, mask ||x|| >= eps or None)."""
    x = x.to(acc)
    if not normalize:
        return x, None, None
    norm = row_norms(x)
    inv = 1.0 / norm.clamp_min(eps)
    return x * inv[:, None], inv, norm >= eps


def _mask_tile(s, r0, c0, self_offset, q_labels, k_labels):
    """Set excluded (row, key) pairs of tile s (rows r0.., keys c0..) to -inf, in place."""
    rows, cols = s.shape
    if self_offset is not None:
        # key j = i + self_offset for rows i in [r0, r0 + rows) that land in [c0, c0 + cols)
        first = max(r0, c0 - self_offset)
        last = min(r0 + rows, c0 + cols - self_offset)
        if first < last:
            i = torch.arange(first, last, device=s.device)
            s[i - r0, i + self_offset - c0] = -math.inf
    if q_labels is not None:
        same = q_labels[r0:r0 + rows, None] == k_labels[None, c0:c0 + cols]
        s.masked_fill_(same, -math.inf)


def _tile_logits(qh, kh, scale, bias, r0, r1, c0, c1, self_offset, q_labels, k_labels):
    # scale after the product, as s_ij = scale <q^_i, k^_j> reads: an infinite scale then
    # gives +-inf per logit, not inf - inf inside the product
    s = (qh[r0:r1] @ kh[c0:c1].T).mul_(scale)
    if bias is not None:
        s += bias[c0:c1]
    _mask_tile(s, r0, c0, self_offset, q_labels, k_labels)
    return s


def _finite_pivot(row_max):
    """The running max where finite, else 0. A row that has seen only -inf keeps l = 0
    (lse = -inf: no keys); a +inf logit makes l = +inf (lse = +inf) instead of inf - inf;
    a NaN logit makes l NaN. So lse = pivot + log(l) needs no special case."""
    return torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))


def lse_forward(q, k, scale, bias, q_labels, k_labels, self_offset, normalize, eps,
                exclude_positives, return_o):
    acc = accumulate_dtype(q.dtype)
    n, m = q.shape[0], k.shape[0]
    qh, _, _ = normalized(q, normalize, eps, acc)
    kh, _, _ = normalized(k, normalize, eps, acc)
    scale = scale.to(acc)
    q_labels, k_labels = active_labels(q_labels, k_labels, exclude_positives)
    lse = torch.empty(n, dtype=acc, device=q.device)
    o = torch.zeros((n, q.shape[1]) if return_o else (0,), dtype=acc, device=q.device)
    block_rows, block_keys = tile_shape(n, m)
    for r0 in range(0, n, block_rows):
        r1 = min(n, r0 + block_rows)
        run_max = torch.full((r1 - r0,), -math.inf, dtype=acc, device=q.device)
        run_sum = torch.zeros(r1 - r0, dtype=acc, device=q.device)
        run_o = o[r0:r1] if return_o else None
        for c0 in range(0, m, block_keys):
            c1 = min(m, c0 + block_keys)
            s = _tile_logits(qh, kh, scale, bias, r0, r1, c0, c1, self_offset, q_labels, k_labels)
            new_max = torch.maximum(run_max, s.amax(dim=1))
            pivot = _finite_pivot(new_max)
            rescale = torch.exp(run_max - pivot)
            s.sub_(pivot[:, None]).exp_()
            run_sum.mul_(rescale).add_(s.sum(dim=1))
            if return_o:
                run_o.mul_(rescale[:, None]).addmm_(s, kh[c0:c1])
            run_max = new_max
        lse[r0:r1] = _finite_pivot(run_max) + torch.log(run_sum)
        if return_o:
            run_o.div_(run_sum.clamp_min(torch.finfo(acc).tiny)[:, None])
    return lse, o


def lse_backward(grad_lse, q, k, scale, bias, q_labels, k_labels, self_offset, normalize, eps,
                 exclude_positives, lse, need_dq, need_dk, need_dscale):
    acc = accumulate_dtype(q.dtype)
    n, m = q.shape[0], k.shape[0]
    qh, q_inv, q_big = normalized(q, normalize, eps, acc)
    kh, k_inv, k_big = normalized(k, normalize, eps, acc)
    scale = scale.to(acc)
    q_labels, k_labels = active_labels(q_labels, k_labels, exclude_positives)
    live = lse != -math.inf  # rows with an empty A(i) carry no gradient; NaN rows pass NaN
    g = torch.where(live, grad_lse.to(acc), 0.0)
    lse_safe = torch.where(live, lse.to(acc), 0.0)
    u = torch.zeros(n, q.shape[1], dtype=acc, device=q.device) if (need_dq or need_dscale) else None
    v = torch.zeros(m, k.shape[1], dtype=acc, device=q.device) if need_dk else None
    block_rows, block_keys = tile_shape(n, m)
    for r0 in range(0, n, block_rows):
        r1 = min(n, r0 + block_rows)
        for c0 in range(0, m, block_keys):
            c1 = min(m, c0 + block_keys)
            p = _tile_logits(qh, kh, scale, bias, r0, r1, c0, c1, self_offset, q_labels, k_labels)
            p.sub_(lse_safe[r0:r1, None]).exp_().mul_(g[r0:r1, None])
            if u is not None:
                u[r0:r1].addmm_(p, kh[c0:c1])
            if v is not None:
                v[c0:c1].addmm_(p.T, qh[r0:r1])
    dq = dk = q.new_empty((0,))
    if need_dq:
        dq = _through_normalization(u * scale, qh, q_inv, q_big).to(q.dtype)
    if need_dk:
        dk = _through_normalization(v * scale, kh, k_inv, k_big).to(k.dtype)
    dscale = (qh * u).sum() if need_dscale else torch.zeros((), dtype=acc, device=q.device)
    return dq, dk, dscale.to(scale.dtype)


def _through_normalization(d_hat, x_hat, inv, big):
    """Chain rule through x^ = x / max(||x||, eps)."""
    if inv is None:
        return d_hat
    radial = (x_hat * d_hat).sum(dim=1, keepdim=True) * big[:, None]
    return (d_hat - x_hat * radial) * inv[:, None]


lse_op, lse_backward_op = define_core_ops("torch", lse_forward, lse_backward)

BACKEND = Backend(
    name="torch",
    forward=lse_op,
    backward=lse_backward_op,
    description="pure PyTorch, tiled over rows and keys; any device",
    devices=("cpu", "cuda", "xpu", "mps"),
    auto_devices=("cpu", "cuda", "xpu", "mps"),
    priority=30,
)
