"""The elementwise math of ``pairwise_sigmoid``: softplus (forward) and the sigmoid weight
(backward) of x = -z s, each from one exp e = e^{-|x|} in (0, 1].

    softplus(x) = max(x, 0) + log1p(e)
    sigmoid(x)  = 1 / (1 + e)  (x >= 0),  e / (1 + e)  (x < 0)

Why a polynomial for log1p (fp32): the hardware's lg2.approx has an *absolute* error of
about 2^-22.6, so log(1 + e) through MUFU.LG2 loses all relative accuracy for small e
(trained SigLIP logits sit at |x| ~ 10, e ~ 5e-5: ~0.3 % off), and correcting it
(log(u) e / (u - 1), u = 1 + e) costs a second MUFU op (the reciprocal) on top. One MUFU op
takes the issue slot of about 8 FMAs (16 MUFU vs 128 FMA lanes per clock per SM), so nine
FMA-pipe instructions on (0, 1] cost about what the one extra MUFU.LG2 would, and are exact:

    log1p(e) = e p(e),  p of degree 8 (a near-minimax fit of log1p(e) / e on [0, 1])

max error 2.4 ulp of log1p(e) over all fp32 e in [0, 1] (Horner in fp32, measured against
float64 on 4e6 points), relative at every e (p(0) = 1 - 2^-24), so tiny terms keep their
digits. e itself is one ex2.approx.ftz (2 ulp) of -|x| log2 e, whose rounding adds
|x| 2^-24 relative (the same as every exp of the lse kernels); the ftz is harmless: e <
2^-126 only when softplus is 0 or x to fp32 precision. fp64 (no MUFU, correctness over
speed): log(u) e / (u - 1), exact to a few ulp, e itself where u rounds to 1.

The backward's reciprocal 1 / (1 + e), 1 + e in [1, 2], is one rcp.approx.ftz (1 ulp)
instead of the IEEE division Triton emits for ``/`` (a MUFU.RCP plus a Newton step and a
slow path). NaN stays NaN through every branch; x = +inf gives softplus inf and sigmoid 1,
x = -inf gives 0 and 0 (the oracle's values).
"""

import triton
import triton.language as tl

from ._common import _interpreting, device_fn, exp_of

# log1p(e) / e on [0, 1], highest degree first (Horner)
P8 = (0.005212325602769852, -0.029422812163829803, 0.07809017598628998,
      -0.13651570677757263, 0.19100427627563477, -0.2484152764081955,
      0.33318910002708435, -0.49999484419822693, 0.9999999403953552)
C0 = tl.constexpr(P8[0])
C1 = tl.constexpr(P8[1])
C2 = tl.constexpr(P8[2])
C3 = tl.constexpr(P8[3])
C4 = tl.constexpr(P8[4])
C5 = tl.constexpr(P8[5])
C6 = tl.constexpr(P8[6])
C7 = tl.constexpr(P8[7])
C8 = tl.constexpr(P8[8])

if _interpreting():  # the interpreter cannot run inline PTX
    def rcp(x):
        return 1.0 / x
else:
    @triton.jit
    def rcp(x):
        """1 / x. fp32: one rcp.approx.ftz (MUFU.RCP, 1 ulp); fp64: the IEEE division."""
        if x.dtype == tl.float32:
            return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [x],
                                             dtype=tl.float32, is_pure=True, pack=1)
        else:
            return 1.0 / x


@device_fn
def log1p_unit(e):
    """log1p(e) for e in [0, 1] (see the module's comment for the error bound)."""
    if e.dtype == tl.float64:
        u = 1.0 + e
        um1 = u - 1.0
        return tl.where(um1 == 0.0, e, tl.log(u) * (e / tl.where(um1 == 0.0, 1.0, um1)))
    else:
        p = C0 * e + C1
        p = p * e + C2
        p = p * e + C3
        p = p * e + C4
        p = p * e + C5
        p = p * e + C6
        p = p * e + C7
        p = p * e + C8
        return p * e


@device_fn
def softplus(x):
    """max(x, 0) + log1p(e^{-|x|})."""
    return tl.maximum(x, 0.0) + log1p_unit(exp_of(-tl.abs(x)))


@device_fn
def sigmoid_weight(x, s, g):
    """-z sigmoid(x) g = dL/ds for x = -z s (score_tile, SIGNED). z is read off the sign
    bits (x and s differ in sign exactly on the positives, zeros included: s = +-0 is a
    pair like any other) and applied to g by flipping its sign bit, before the exp: no
    per-logit mask stays live across the MUFU ops."""
    if x.dtype == tl.float64:
        bits = tl.int64
        sign = -9223372036854775808
    else:
        bits = tl.int32
        sign = -2147483648
    flip = (x.to(bits, bitcast=True) ^ s.to(bits, bitcast=True)) & sign
    gz = (g.to(bits, bitcast=True) ^ flip).to(x.dtype, bitcast=True)
    e = exp_of(-tl.abs(x))
    return tl.where(x >= 0, gz, e * gz) * rcp(1.0 + e)
