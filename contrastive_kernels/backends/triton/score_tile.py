"""The score tile: the masked logits of one (owned block, streamed tile) pair, written once.

Every kernel that sweeps the pairs (the forward, the backward's dq grid and dk grid, for
either reduction) forms its tile here, so that each pass rounds every logit alike (the
backward's e^{s - lse} sums to 1 only if s is rounded as the forward rounded it):

    c_oi = <x_o, y_i>                          dot_tile: d in one tile or BLOCK_D chunks
    c^   = c / ||key||                         the key's inverse norm (HAS_NORM)
    s    = c^ * scale / ||query|| + b_key      _common.logit: the product, then the bias
    s    = -inf where the pair is excluded: equal labels; key == query + offset (only on
           tiles that meet that diagonal); a streamed index past its bound (only on the
           last tile); an owned index past its bound (MASK_OWN: the column statistics of
           the two-sided reduction must not see rows past N)

SIGNED (the sigmoid reduction): no pair is excluded; the positives (equal labels, the
self pair) are marked by their sign instead: the tile is x = -z s (z = +1 on them),
returned with s itself, so that z is the sign bits' difference. The bound masks still
write -inf, into x: softplus(-inf) and sigmoid(-inf) are 0, so a pair past the bound adds
nothing there either.

The owned rows are queries (``KEYS_OWNED`` False: the forward and the dq grid) or keys
(True: the dk grid, which computes s^T = k q^T directly). Per-row vectors are passed as
they are loaded ([BLOCK_O] owned, [BLOCK_I] streamed) and broadcast here.

:func:`saved_stats` reads a saved log-sum-exp and its cotangent the way the backward
uses them (a line with lse = -inf, empty, weighs nothing).
"""

import triton.language as tl

from ._common import device_fn, dot_nt, load_tile, logit, tile_meets_diagonal

# The reductions of the forward sweep (the REDUCTION constexpr of the kernels).
ROWS = 0  # lse: per query, over its keys
ROWS_AND_COLUMNS = 1  # the two-sided lse: also per key, over its queries
SIGMOID = 2  # pairwise_sigmoid: per query, the sum of softplus(-z s) over its keys


@device_fn
def dot_tile(xt, x_base, y_base, offs_d, stride_xd, stride_yd, own_ok, inner_ok, D, c,
             BLOCK_D: tl.constexpr, SINGLE_D: tl.constexpr, EVEN_O: tl.constexpr,
             EVEN_I: tl.constexpr, EVEN_D: tl.constexpr, UPCAST: tl.constexpr,
             TF32: tl.constexpr):
    """(c + X Y^T over d, the streamed tile). SINGLE_D: ``xt`` is the owned tile, loaded
    once by the caller, and the streamed tile is loaded whole and returned for the
    product that follows. Chunked: both are re-read BLOCK_D columns at a time (``xt`` is
    unused; the second result is c again, a placeholder the caller does not use)."""
    if SINGLE_D:
        yt = load_tile(y_base, offs_d, stride_yd, inner_ok, D, EVEN_I, EVEN_D, UPCAST)
        c = dot_nt(xt, yt, c, TF32)
    else:
        for d0 in range(0, D, BLOCK_D):
            xc = load_tile(x_base, d0 + offs_d, stride_xd, own_ok, D, EVEN_O, EVEN_D, UPCAST)
            yc = load_tile(y_base, d0 + offs_d, stride_yd, inner_ok, D, EVEN_I, EVEN_D, UPCAST)
            c = dot_nt(xc, yc, c, TF32)
        yt = c
    return c, yt


@device_fn
def _mark(s, pair, SIGNED: tl.constexpr):
    """A positive pair: excluded (-inf), or (SIGNED) its sign flipped."""
    if SIGNED:
        return tl.where(pair, -s, s)
    else:
        return tl.where(pair, float("-inf"), s)


@device_fn
def score_tile(c, key_inv, query_f, bias, own_lab, inner_lab, own, own0, own_ok, inner,
               inner0, inner_ok, NX, NY, SELF_OFFSET, shift,
               SHIFTED: tl.constexpr,
               KEYS_OWNED: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr,
               HAS_NORM: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_LABELS: tl.constexpr,
               HAS_SELF: tl.constexpr, EVEN_O: tl.constexpr, EVEN_I: tl.constexpr,
               MASK_OWN: tl.constexpr, SIGNED: tl.constexpr):
    """(s, c^, s0): the masked logits [BLOCK_O, BLOCK_I], the products times the key's
    inverse norm and the logits before the masks (SIGNED: s is then x = -z s and they are
    what z is read from; else a placeholder the caller does not use). ``key_inv``: 1 / ||key|| of the owned
    keys (KEYS_OWNED) or of the streamed ones; ``query_f``: scale / ||query|| of the other side; ``bias``: of the keys
    (0.0 without HAS_BIAS); labels: 0 without HAS_LABELS. SHIFTED: s - ``shift`` (the
    lse backward's saved lse, broadcast by the caller) is formed before the masks, which
    then write -inf into the difference: one subtraction fewer on the common path of
    the compiled loop than masking s first."""
    if HAS_NORM:
        if KEYS_OWNED:
            c = c * key_inv[:, None]
        else:
            c = c * key_inv[None, :]
    if KEYS_OWNED:
        if HAS_BIAS:
            b = bias[:, None]
        else:
            b = 0.0
        s = logit(c, query_f[None, :], b, HAS_BIAS)
    else:
        if HAS_BIAS:
            b = bias[None, :]
        else:
            b = 0.0
        s = logit(c, query_f[:, None], b, HAS_BIAS)
    if SHIFTED:
        s = s - shift
    # SIGNED: the labels' flip on every tile (one compare and one select per logit), the
    # self pair's only on the tiles that meet the diagonal, where a pair its labels already
    # flipped is left as it is (one positive, one flip). No mask leaves a branch: a mask
    # carried out of the diagonal's branch cost ptxas a bit-packing sequence of ~4
    # instructions per logit on every tile. The caller that needs z (the backward's
    # weights) reads it off the sign bits of x and s (the third result).
    s0 = s
    if HAS_LABELS:
        s = _mark(s, own_lab[:, None] == inner_lab[None, :], SIGNED)
    if HAS_SELF:
        if KEYS_OWNED:  # own == inner + offset
            if tile_meets_diagonal(inner0, BLOCK_I, own0, BLOCK_O, SELF_OFFSET):
                pair = own[:, None] == inner[None, :] + SELF_OFFSET
                if SIGNED and HAS_LABELS:
                    pair = pair & (own_lab[:, None] != inner_lab[None, :])
                s = _mark(s, pair, SIGNED)
        else:  # inner == own + offset
            if tile_meets_diagonal(own0, BLOCK_O, inner0, BLOCK_I, SELF_OFFSET):
                pair = inner[None, :] == own[:, None] + SELF_OFFSET
                if SIGNED and HAS_LABELS:
                    pair = pair & (own_lab[:, None] != inner_lab[None, :])
                s = _mark(s, pair, SIGNED)
    if not EVEN_I:
        if inner0 + BLOCK_I > NY:
            s = tl.where(inner_ok[None, :], s, float("-inf"))
    if MASK_OWN:
        if not EVEN_O:
            if own0 + BLOCK_O > NX:
                s = tl.where(own_ok[:, None], s, float("-inf"))
    return s, c, s0


@device_fn
def saved_stats(lse, g):
    """(lse, g) as the backward applies them: a line with lse = -inf (empty, or past the
    bound) gets lse = +inf and g = 0, so its weights e^{s - lse} g are 0 without a NaN;
    a NaN lse stays NaN and reaches the weights."""
    dead = lse == float("-inf")
    return tl.where(dead, float("inf"), lse), tl.where(dead, 0.0, g)
