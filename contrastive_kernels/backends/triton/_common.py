"""Triton helpers shared by the forward and backward kernels (inlined by the compiler)."""

import triton
import triton.language as tl
from triton import knobs


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
    return fn if knobs.runtime.interpret else triton.jit(fn)


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
    """acc + a @ b^T with the accumulator's dtype (fp32, or fp64 for fp64 operands)."""
    return tl.dot(a, tl.trans(b), acc, input_precision="tf32" if TF32 else "ieee")


@device_fn
def mma(acc, w, y, TF32: tl.constexpr):
    """acc + w @ y: fp32 weights w [R, C] rounded to the operand y's dtype (tensor cores)."""
    return tl.dot(w.to(y.dtype), y, acc, input_precision="tf32" if TF32 else "ieee")


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


@device_fn
def exclude(s, q_idx, k_idx, k_ok, q_lab, k_lab, SELF_OFFSET, K_EVEN: tl.constexpr,
            HAS_SELF: tl.constexpr, HAS_LABELS: tl.constexpr):
    """Set the logits outside A(i) to -inf. Index / label arguments are pre-broadcast
    ([R, 1] and [1, C] in the tile's orientation)."""
    if not K_EVEN:
        s = tl.where(k_ok, s, float("-inf"))
    if HAS_SELF:
        s = tl.where(k_idx == q_idx + SELF_OFFSET, float("-inf"), s)
    if HAS_LABELS:
        s = tl.where(k_lab == q_lab, float("-inf"), s)
    return s


@triton.jit
def inv_norm_kernel(X, OUT, R, D, stride_r, stride_d, EPS,
                    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, INT64: tl.constexpr):
    """OUT[r] = 1 / max(||X[r]||, EPS), accumulated in OUT's dtype (fp32 / fp64)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    if INT64:
        rows = rows.to(tl.int64)
    row_ok = rows < R
    offs_d = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_R], OUT.dtype.element_ty)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + offs_d
        x = tl.load(X + rows[:, None] * stride_r + cols[None, :] * stride_d,
                    mask=row_ok[:, None] & (cols < D)[None, :], other=0.0)
        x = x.to(OUT.dtype.element_ty)
        acc += tl.sum(x * x, axis=1)
    norm = tl.sqrt(acc)
    tl.store(OUT + rows, 1.0 / tl.maximum(norm, EPS), mask=row_ok)
