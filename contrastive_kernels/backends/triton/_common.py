"""Triton helpers shared by the forward and backward kernels (inlined by the compiler)."""

import triton
import triton.language as tl

try:  # triton >= 3.4
    from triton import knobs as _knobs

    def _interpreting() -> bool:
        return bool(_knobs.runtime.interpret)
except ImportError:  # pragma: no cover - older triton: the variable is all there is
    import os as _os

    def _interpreting() -> bool:
        return _os.environ.get("TRITON_INTERPRET", "0") == "1"

# exp(x) = 2^(x log2 e): exp2 is one MUFU.EX2 (constexpr: jit reads only those globals)
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


def offsets_need_int64(rows_a, stride_a_row, rows_b, stride_b_row, d, stride_a_d, stride_b_d):
    """Whether some element offset of either [rows, d] operand (or an fp32 [rows_a, d]
    buffer) can pass 2^31, so the kernel must index with 64-bit offsets."""
    big = max(rows_a * abs(stride_a_row), rows_b * abs(stride_b_row),
              d * max(abs(stride_a_d), abs(stride_b_d)), rows_a * d)
    return big + d >= 2 ** 31


def device_fn(fn):
    """``triton.jit`` for a helper called from the kernels.

    Under TRITON_INTERPRET=1 the helper stays a plain Python function: the interpreter
    runs kernels as Python with triton.language already patched, and a jit'd helper
    would re-patch the language on every call (milliseconds each, inside the tile loops).
    Compiled, it is an ordinary @triton.jit function that the compiler inlines.
    """
    return fn if _interpreting() else triton.jit(fn)


@device_fn
def load_tile(base, offs_d, stride_d, row_ok, D, EVEN_R: tl.constexpr, EVEN_D: tl.constexpr,
              UPCAST: tl.constexpr):
    """[R, BLOCK_D] tile at row pointers ``base`` ([R, 1]) and columns ``offs_d``.

    Masked rows / columns read 0. ``UPCAST`` (interpreter only) turns bf16 into fp32,
    because the interpreter multiplies bf16 as raw 16-bit integers in tl.dot.
    """
    ptrs = base + offs_d[None, :] * stride_d
    if EVEN_R:
        if EVEN_D:
            t = tl.load(ptrs)
        else:
            t = tl.load(ptrs, mask=(offs_d < D)[None, :], other=0.0)
    else:
        if EVEN_D:
            t = tl.load(ptrs, mask=row_ok[:, None], other=0.0)
        else:
            t = tl.load(ptrs, mask=row_ok[:, None] & (offs_d < D)[None, :], other=0.0)
    if UPCAST:
        t = t.to(tl.float32)
    return t


@device_fn
def dot_nt(a, b, acc, TF32: tl.constexpr):
    """acc + a @ b^T with the accumulator's dtype (fp32, or fp64 for fp64 operands; given
    explicitly: triton 3.6 does not infer it from acc)."""
    return tl.dot(a, tl.trans(b), acc, input_precision="tf32" if TF32 else "ieee",
                  out_dtype=acc.dtype)


@device_fn
def mma(acc, w, y, TF32: tl.constexpr):
    """acc + w @ y: fp32 weights w [R, C] rounded to the operand y's dtype (tensor cores)."""
    return tl.dot(w.to(y.dtype), y, acc, input_precision="tf32" if TF32 else "ieee",
                  out_dtype=acc.dtype)


@device_fn
def rescale_rows(w, scale):
    """fp16 weights: (w / scale', scale / scale', scale') with scale' = max(scale, max_j |w_ij|).

    An accumulator kept in units of ``scale`` (multiplied by the ratio, then fed w /
    scale') stays in units of the largest weight seen so far in its row, an online
    rescaling like the softmax's: the rounded weights are at most 1 in magnitude, so
    tiny ones (g = 1/N, small norms) stay clear of fp16 subnormals and large ones
    (1 / ||k|| for small norms) cannot overflow.
    """
    new_scale = tl.maximum(scale, tl.max(tl.abs(w), axis=1))
    safe = tl.where(new_scale > 0, new_scale, 1.0)
    inv = 1.0 / safe
    return w * inv[:, None], scale * inv, new_scale


if _interpreting():  # the interpreter cannot run inline PTX
    def exp2(x):
        return tl.exp2(x)
else:
    @triton.jit
    def exp2(x):
        """2^x. fp32: one ``ex2.approx.ftz`` (a single MUFU.EX2); ``tl.exp2`` lowers to
        the non-ftz form, which ptxas wraps in a denormal fix-up (a compare and two
        multiplies). The arguments are logits minus a pivot at or above them, so a result
        under 2^-126 is negligible next to the pivot's own term. fp64 has no MUFU."""
        if x.dtype == tl.float32:
            return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x],
                                             dtype=tl.float32, is_pure=True, pack=1)
        else:
            return tl.exp2(x)


@device_fn
def logit(c, factor, bias, HAS_BIAS: tl.constexpr):
    """The contract's logit as every pass forms it: s = c * factor + bias, in natural units
    (c: the dot product already times the key's inverse norm; factor: scale / ||q_i||),
    the product first, the bias added last.

    One formula on one grid for the forward and both backward grids. With |s| far above
    the logit range (a large bias, large unnormalized rows) s rounds to its own ulp, and
    the backward's P = exp(s - lse) sums to 1 only if s is rounded as the forward rounded
    it and lse lies on the same (natural) grid. Kernels that formed s in base 2 (s log2 e,
    for a bare exp2) paid for the trip lse -> lse log2(e): dq and dk off by ~6e-4 at bias
    1e4, by ~93% at 1e9 (the dq grid, which also subtracted lse from the bias first), and
    ~3x the cpu backend's error at |logits| of 60-250. The exp is taken of the difference:
    :func:`exp_of`."""
    s = c * factor
    if HAS_BIAS:
        s = s + bias
    return s


@device_fn
def exp_of(x):
    """e^x for a logit minus its pivot or its lse (x <= 0 but for rounding): the difference
    is formed in natural units, where it is exact or nearly, then scaled to base 2."""
    return exp2(x * LOG2E)


@device_fn
def finite_or_zero(m):
    """The online pivot: the running max where it is finite, else 0. Keeping it finite
    means l = sum 2^(s - pivot) is 0 for an empty key set, +inf when some logit is +inf
    and NaN when one is NaN, so lse = pivot + log2(l) needs no special case."""
    return tl.where(tl.abs(m) < float("inf"), m, 0.0)


@device_fn
def tile_meets_diagonal(own0, own_n, inner0, inner_n, offset):
    """Whether rows [own0, own0 + own_n) and keys [inner0, inner0 + inner_n) hold a pair
    with key == row + offset: only those tiles pay for the self-exclusion mask."""
    return (inner0 < own0 + own_n + offset) & (inner0 + inner_n > own0 + offset)


@device_fn
def row_norm(x):
    """||x|| per row of an fp32 / fp64 tile as m ||x / m||, m = max |x|: squares of
    entries above ~1.8e19 (fp32) would overflow."""
    big = tl.max(tl.abs(x), axis=1)
    safe = tl.where((big > 0) & (big < float("inf")), big, 1.0)
    y = x / safe[:, None]
    return tl.where(big < float("inf"), safe * tl.sqrt(tl.sum(y * y, axis=1)), big)


@device_fn
def norm_update(big, ssq, x):
    """Online scaled sum of squares over d chunks: (max |x|, sum (x / max)^2)."""
    new_big = tl.maximum(big, tl.max(tl.abs(x), axis=1))
    safe = tl.where((new_big > 0) & (new_big < float("inf")), new_big, 1.0)
    old = tl.where((big > 0) & (big < float("inf")), big, 1.0)
    r = old / safe
    y = x / safe[:, None]
    return new_big, ssq * r * r + tl.sum(y * y, axis=1)


@device_fn
def norm_finish(big, ssq):
    safe = tl.where((big > 0) & (big < float("inf")), big, 1.0)
    return tl.where(big < float("inf"), safe * tl.sqrt(ssq), big)


@triton.jit
def inv_norm_kernel(X, OUT, R, D, stride_r, stride_d, EPS,
                    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, INT64: tl.constexpr):
    """OUT[r] = 1 / max(||X[r]||, EPS), accumulated in OUT's dtype (fp32 / fp64) as
    m ||X[r] / m|| (m = max |X[r]|) so that large entries do not overflow the squares."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    if INT64:
        rows = rows.to(tl.int64)
    row_ok = rows < R
    offs_d = tl.arange(0, BLOCK_D)
    big = tl.zeros([BLOCK_R], OUT.dtype.element_ty)
    ssq = tl.zeros([BLOCK_R], OUT.dtype.element_ty)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + offs_d
        x = tl.load(X + rows[:, None] * stride_r + cols[None, :] * stride_d,
                    mask=row_ok[:, None] & (cols < D)[None, :], other=0.0)
        big, ssq = norm_update(big, ssq, x.to(OUT.dtype.element_ty))
    norm = norm_finish(big, ssq)
    tl.store(OUT + rows, 1.0 / tl.maximum(norm, EPS), mask=row_ok)
