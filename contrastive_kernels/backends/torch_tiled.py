"""Backend ``torch``: the core ops in plain PyTorch, tiled so no N x M tensor exists.

One sweep (:func:`_sweep`) scores the tiles, row block R by key tile C:

    s = scale (q^_R k^_C^T) + bias_C, excluded pairs set to -inf

and hands each to the op's reduction, a small policy class:

- forward of ``lse`` (:class:`RowLse`): online log-sum-exp along rows, as in
  flash-attention: m' = max(m, rowmax s); l = l e^{m - m'} + sum_j e^{s_j - m'}; o likewise;
- forward of ``two_sided_lse`` (:class:`RowColLse`): the same along rows, and along
  columns with per-column running (max, sum) updated by the row blocks in order (the loop
  is sequential, so the merge order is fixed);
- forward of ``pairwise_sigmoid`` (:class:`SigmoidRows`): no pair excluded; x = -z s
  (z = +1 on the positive pairs) and row sums of softplus(x);
- backward: each tile recomputed once into the weights W = dL/ds (:class:`LseWeights`:
  g_i e^{s_ij - lse_i}; :class:`TwoSidedWeights`: that plus h_j e^{s_ij - lse'_j};
  :class:`SigmoidWeights`: -z_ij sigmoid(-z_ij s_ij) g_i, with dbias_j = sum_i W_ij), then
  the shared second products

    u_R += W k^_C,  v_C += W^T q^_R,  dq^ = scale u,  dk^ = scale v,  dscale = sum_i <q^_i, u_i>

  and the normalization Jacobian  dq = (dq^ - [||q|| >= eps] q^ <q^, dq^>) / max(||q||, eps).

Memory: O((N + M) d) for the fp32 copies plus one tile of TILE_ELEMENTS floats (a few
temporaries of that size). Works on any device; computes in float32 (float64 for float64).
"""

from __future__ import annotations

import math

import torch

from ..core.autograd import define_op
from ..core.contract import accumulate_dtype
from ..core.norms import row_norms
from ..core.ops import LSE, PAIRWISE_SIGMOID, TWO_SIDED_LSE
from ..core.problem import PairProblem
from .registry import Backend, OpPair

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


class Tiles:
    """The score tiles of one problem: normalized rows in the accumulation dtype, the
    masks, and the tile shape. ``excludes``: whether the self pair (and, with
    ``exclude_positives``, the positives) leave the tiles as -inf; an op that excludes no
    pair (pairwise_sigmoid) reads them as :meth:`positives` instead."""

    def __init__(self, problem: PairProblem, exclude_positives: bool, excludes: bool = True):
        self.acc = acc = accumulate_dtype(problem.q.dtype)
        self.n, self.m = problem.q.shape[0], problem.k.shape[0]
        self.qh, self.q_inv, self.q_big = normalized(problem.q, problem.normalize, problem.eps, acc)
        self.kh, self.k_inv, self.k_big = normalized(problem.k, problem.normalize, problem.eps, acc)
        self.scale = problem.scale.to(acc)
        self.bias = problem.bias
        self.problem = problem
        self.self_offset = problem.self_offset if excludes else None
        active = excludes and exclude_positives and problem.q_labels is not None
        self.q_labels = problem.q_labels if active else None
        self.k_labels = problem.k_labels if active else None
        self.block_rows, self.block_keys = tile_shape(self.n, self.m)

    def logits(self, r0, r1, c0, c1):
        # scale after the product, as s_ij = scale <q^_i, k^_j> reads: an infinite scale
        # then gives +-inf per logit, not inf - inf inside the product
        s = (self.qh[r0:r1] @ self.kh[c0:c1].T).mul_(self.scale)
        if self.bias is not None:
            s += self.bias[c0:c1]
        self._mask(s, r0, c0)
        return s

    def _mask(self, s, r0, c0):
        """Set excluded (row, key) pairs of tile s (rows r0.., keys c0..) to -inf, in place."""
        _fill_marked(s, r0, c0, self.self_offset, self.q_labels, self.k_labels, -math.inf)

    def positives(self, s, r0, c0):
        """The positive pairs of tile s as a bool tile: the self pair, equal labels."""
        p = self.problem
        marked = torch.zeros(s.shape, dtype=torch.bool, device=s.device)
        _fill_marked(marked, r0, c0, p.self_offset, p.q_labels, p.k_labels, True)
        return marked

    def sweep(self, reduction):
        """Every tile, row block by row block, keys in order, to ``reduction``."""
        for r0 in range(0, self.n, self.block_rows):
            r1 = min(self.n, r0 + self.block_rows)
            reduction.start_rows(r0, r1)
            for c0 in range(0, self.m, self.block_keys):
                c1 = min(self.m, c0 + self.block_keys)
                reduction.tile(self.logits(r0, r1, c0, c1), r0, r1, c0, c1)
            reduction.finish_rows(r0, r1)


def _fill_marked(tile, r0, c0, self_offset, q_labels, k_labels, value):
    """Set the self pair (i, i + self_offset) and the pairs of equal labels of ``tile``
    (rows r0.., keys c0..) to ``value``, in place."""
    rows, cols = tile.shape
    if self_offset is not None:
        # key j = i + self_offset for rows i in [r0, r0 + rows) that land in [c0, c0 + cols)
        first = max(r0, c0 - self_offset)
        last = min(r0 + rows, c0 + cols - self_offset)
        if first < last:
            i = torch.arange(first, last, device=tile.device)
            tile[i - r0, i + self_offset - c0] = value
    if q_labels is not None and k_labels is not None:
        same = q_labels[r0:r0 + rows, None] == k_labels[None, c0:c0 + cols]
        tile.masked_fill_(same, value)


def _finite_pivot(row_max):
    """The running max where finite, else 0. A line that has seen only -inf keeps l = 0
    (lse = -inf: no keys); a +inf logit makes l = +inf (lse = +inf) instead of inf - inf;
    a NaN logit makes l NaN. So lse = pivot + log(l) needs no special case."""
    return torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))


class OnlineLse:
    """Running (max, sum-exp) of lines (rows or columns) met tile by tile."""

    def __init__(self, size, acc, device):
        self.max = torch.full((size,), -math.inf, dtype=acc, device=device)
        self.sum = torch.zeros(size, dtype=acc, device=device)

    def update(self, lo, hi, e_source, dim):
        """Merge tile ``e_source`` (a tile of logits, consumed) along ``dim`` into lines
        lo .. hi; returns (the tile exponentiated at the new pivot, the rescale factor)."""
        new_max = torch.maximum(self.max[lo:hi], e_source.amax(dim=dim))
        pivot = _finite_pivot(new_max)
        rescale = torch.exp(self.max[lo:hi] - pivot)
        e = e_source.sub_(pivot.unsqueeze(dim)).exp_()
        self.sum[lo:hi].mul_(rescale).add_(e.sum(dim=dim))
        self.max[lo:hi] = new_max
        return e, rescale

    def lse(self, lo=None, hi=None):
        return _finite_pivot(self.max[lo:hi]) + torch.log(self.sum[lo:hi])


class RowLse:
    """Forward of ``lse``: row statistics (and o)."""

    def __init__(self, tiles: Tiles, return_o: bool):
        self.t = tiles
        device = tiles.qh.device
        self.rows = OnlineLse(tiles.n, tiles.acc, device)
        self.lse = torch.empty(tiles.n, dtype=tiles.acc, device=device)
        self.o = torch.zeros((tiles.n, tiles.qh.shape[1]) if return_o else (0,), dtype=tiles.acc,
                             device=device)
        self.return_o = return_o

    def start_rows(self, r0, r1):
        pass

    def tile(self, s, r0, r1, c0, c1):
        e, rescale = self.rows.update(r0, r1, s, 1)
        if self.return_o:
            self.o[r0:r1].mul_(rescale[:, None]).addmm_(e, self.t.kh[c0:c1])

    def finish_rows(self, r0, r1):
        self.lse[r0:r1] = self.rows.lse(r0, r1)
        if self.return_o:
            self.o[r0:r1].div_(self.rows.sum[r0:r1].clamp_min(torch.finfo(self.t.acc).tiny)[:, None])


class RowColLse(RowLse):
    """Forward of ``two_sided_lse``: row statistics, and column statistics merged across
    the row blocks in their (fixed) order."""

    def __init__(self, tiles: Tiles):
        super().__init__(tiles, return_o=False)
        self.cols = OnlineLse(tiles.m, tiles.acc, tiles.qh.device)

    def tile(self, s, r0, r1, c0, c1):
        self.cols.update(c0, c1, s.clone(), 0)
        super().tile(s, r0, r1, c0, c1)


class SigmoidRows:
    """Forward of ``pairwise_sigmoid``: row sums of softplus(-z s)."""

    def __init__(self, tiles: Tiles):
        self.t = tiles
        self.row_loss = torch.zeros(tiles.n, dtype=tiles.acc, device=tiles.qh.device)

    def start_rows(self, r0, r1):
        pass

    def finish_rows(self, r0, r1):
        pass

    def tile(self, s, r0, r1, c0, c1):
        x = torch.where(self.t.positives(s, r0, c0), s.neg(), s)
        # softplus(x) = max(x, 0) + log1p(e^{-|x|}): exact at both ends (torch's own
        # softplus returns x past a threshold)
        loss = x.abs().neg_().exp_().log1p_().add_(x.clamp_min_(0))
        self.row_loss[r0:r1] += loss.sum(dim=1)


def lse_forward(*args):
    problem = PairProblem.from_args(args)
    exclude_positives, return_o = args[-2:]
    tiles = Tiles(problem, exclude_positives)
    reduction = RowLse(tiles, return_o)
    tiles.sweep(reduction)
    return reduction.lse, reduction.o


def two_sided_lse_forward(*args):
    problem = PairProblem.from_args(args)
    tiles = Tiles(problem, args[-1])
    reduction = RowColLse(tiles)
    tiles.sweep(reduction)
    return reduction.lse, reduction.cols.lse()


def _live(lse, grad, acc):
    """(g, lse) with lines of an empty set (lse = -inf) given no gradient; NaN passes."""
    live = lse != -math.inf
    return torch.where(live, grad.to(acc), 0.0), torch.where(live, lse.to(acc), 0.0)


class LseWeights:
    """Backward of ``lse``: W = g_i e^{s_ij - lse_i}."""

    def __init__(self, tiles, grad_lse, lse):
        self.g, self.lse = _live(lse, grad_lse, tiles.acc)

    def __call__(self, s, r0, r1, c0, c1):
        return s.sub_(self.lse[r0:r1, None]).exp_().mul_(self.g[r0:r1, None])


class TwoSidedWeights(LseWeights):
    """Backward of ``two_sided_lse``: W = g_i e^{s_ij - lse_i} + h_j e^{s_ij - lse'_j}."""

    def __init__(self, tiles, grad_row, grad_col, row_lse, col_lse):
        super().__init__(tiles, grad_row, row_lse)
        self.h, self.col_lse = _live(col_lse, grad_col, tiles.acc)

    def __call__(self, s, r0, r1, c0, c1):
        cols = (s - self.col_lse[None, c0:c1]).exp_().mul_(self.h[None, c0:c1])
        return super().__call__(s, r0, r1, c0, c1).add_(cols)


class SigmoidWeights:
    """Backward of ``pairwise_sigmoid``: W = -z_ij sigmoid(-z_ij s_ij) g_i."""

    def __init__(self, tiles, grad_row_loss):
        self.t, self.g = tiles, grad_row_loss.to(tiles.acc)

    def __call__(self, s, r0, r1, c0, c1):
        positive = self.t.positives(s, r0, c0)
        w = torch.where(positive, s.neg(), s).sigmoid_().mul_(self.g[r0:r1, None])
        return torch.where(positive, w.neg(), w)


class SecondProducts:
    """The backward's reduction of weight tiles: u = W K^, v = W^T Q^ (and the column sums
    of W, the gradient of the bias, for an op with a differentiable bias)."""

    def __init__(self, tiles: Tiles, weights, need_dq, need_dk, need_dscale, need_dbias=None):
        self.t, self.weights = tiles, weights
        d, acc, device = tiles.qh.shape[1], tiles.acc, tiles.qh.device
        self.u = torch.zeros(tiles.n, d, dtype=acc, device=device) if (need_dq or need_dscale) else None
        self.v = torch.zeros(tiles.m, d, dtype=acc, device=device) if need_dk else None
        self.with_dbias = need_dbias is not None
        self.dbias = torch.zeros(tiles.m, dtype=acc, device=device) if need_dbias else None

    def start_rows(self, r0, r1):
        pass

    def finish_rows(self, r0, r1):
        pass

    def tile(self, s, r0, r1, c0, c1):
        w = self.weights(s, r0, r1, c0, c1)
        if self.u is not None:
            self.u[r0:r1].addmm_(w, self.t.kh[c0:c1])
        if self.v is not None:
            self.v[c0:c1].addmm_(w.T, self.t.qh[r0:r1])
        if self.dbias is not None:
            self.dbias[c0:c1] += w.sum(dim=0)

    def gradients(self, q, k, need_dq, need_dk, need_dscale, need_dbias=False):
        t = self.t
        dq = dk = q.new_empty((0,))
        if need_dq:
            dq = _through_normalization(self.u * t.scale, t.qh, t.q_inv, t.q_big).to(q.dtype)
        if need_dk:
            dk = _through_normalization(self.v * t.scale, t.kh, t.k_inv, t.k_big).to(k.dtype)
        if need_dscale:
            dscale = (t.qh * self.u).sum()
        else:
            dscale = torch.zeros((), dtype=t.acc, device=q.device)
        grads = (dq, dk, dscale.to(t.scale.dtype))
        if self.with_dbias:
            grads += (self.dbias if need_dbias else t.scale.new_empty((0,)),)
        return grads


def _through_normalization(d_hat, x_hat, inv, big):
    """Chain rule through x^ = x / max(||x||, eps)."""
    if inv is None:
        return d_hat
    radial = (x_hat * d_hat).sum(dim=1, keepdim=True) * big[:, None]
    return (d_hat - x_hat * radial) * inv[:, None]


def _backward(problem, exclude_positives, make_weights, needs, excludes=True):
    tiles = Tiles(problem, exclude_positives, excludes)
    if problem.q.shape[0] == 0 or problem.k.shape[0] == 0 or not any(needs):
        products = SecondProducts(tiles, None, *needs)
    else:
        products = SecondProducts(tiles, make_weights(tiles), *needs)
        tiles.sweep(products)
    return products.gradients(problem.q, problem.k, *needs)


def lse_backward(grad_lse, *args):
    problem = PairProblem.from_args(args)
    exclude_positives, lse = args[-5:-3]
    return _backward(problem, exclude_positives, lambda t: LseWeights(t, grad_lse, lse),
                     args[-3:])


def two_sided_lse_backward(grad_row, grad_col, *args):
    problem = PairProblem.from_args(args)
    exclude_positives, row_lse, col_lse = args[-6:-3]
    return _backward(problem, exclude_positives,
                     lambda t: TwoSidedWeights(t, grad_row, grad_col, row_lse, col_lse), args[-3:])


def pairwise_sigmoid_forward(*args):
    tiles = Tiles(PairProblem.from_args(args), False, excludes=False)
    reduction = SigmoidRows(tiles)
    tiles.sweep(reduction)
    return reduction.row_loss


def pairwise_sigmoid_backward(grad_row_loss, *args):
    problem = PairProblem.from_args(args)
    return _backward(problem, False, lambda t: SigmoidWeights(t, grad_row_loss), args[-4:],
                     excludes=False)


lse_op, lse_backward_op = define_op(LSE, "torch", lse_forward, lse_backward)
two_sided_op, two_sided_backward_op = define_op(TWO_SIDED_LSE, "torch", two_sided_lse_forward,
                                                two_sided_lse_backward)
sigmoid_op, sigmoid_backward_op = define_op(PAIRWISE_SIGMOID, "torch", pairwise_sigmoid_forward,
                                            pairwise_sigmoid_backward)

BACKEND = Backend(
    name="torch",
    ops={"lse": OpPair(lse_op, lse_backward_op),
         "two_sided_lse": OpPair(two_sided_op, two_sided_backward_op),
         "pairwise_sigmoid": OpPair(sigmoid_op, sigmoid_backward_op)},
    description="pure PyTorch, tiled over rows and keys; any device",
    devices=("cpu", "cuda", "xpu", "mps"),
    auto_devices=("cpu", "cuda", "xpu", "mps"),
    priority=30,
)
