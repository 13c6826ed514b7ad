// SIMD helpers for the CPU kernels: one 256-bit register type per accumulation dtype
// (8 floats / 4 doubles), the handful of operations the kernels use, and a vectorized
// exp and log1p for float.
//
// In the AVX2 + FMA build of the kernels (cpu/isa.h: CK_CPU_AVX2) these are intrinsics;
// in the baseline build a plain array fallback keeps the same code compiling and correct
// (the compiler auto-vectorizes what it can, with SSE2 on x86-64), just slower. Both have
// 32-byte registers, so panel widths and operand layouts are the same in both builds.
#pragma once

#include "cpu/isa.h"  // first: the library headers, then the ISA switch

#include <cmath>
#include <cstdint>
#include <limits>

#define CK_HAVE_AVX2 CK_CPU_AVX2

#if defined(__GNUC__)
#define CK_INLINE inline __attribute__((always_inline))
#else
#define CK_INLINE inline
#endif

CK_CPU_NAMESPACE_BEGIN

template <class T>
struct Vec;

#if CK_HAVE_AVX2

template <>
struct Vec<float> {
  using V = __m256;
  static constexpr int W = 8;
  static CK_INLINE V zero() { return _mm256_setzero_ps(); }
  static CK_INLINE V set1(float x) { return _mm256_set1_ps(x); }
  static CK_INLINE V load(const float* p) { return _mm256_loadu_ps(p); }
  static CK_INLINE void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static CK_INLINE V add(V a, V b) { return _mm256_add_ps(a, b); }
  static CK_INLINE V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static CK_INLINE V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static CK_INLINE V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  // max(a, b) returns b when either is NaN (x86 semantics): callers put the data second
  // so that a NaN input stays visible instead of being swallowed.
  static CK_INLINE V max(V a, V b) { return _mm256_max_ps(a, b); }
  static CK_INLINE float hsum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static CK_INLINE float hmax(V v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }

  // exp(x) to under 1 ulp: n = round(x log2 e), r = x - n ln2 in two FMA steps (ln2 split
  // in a short high part and a low part, so that n ln2_hi is exact and r keeps its bits
  // even for |x| near 87), e^r from a degree-6 minimax polynomial on |r| <= ln2 / 2, and
  // 2^n added straight into the exponent bits. Arguments below -86 give exactly 0, so -inf
  // logits (dropped keys, masked pairs) contribute exactly nothing; arguments above 88 are
  // clamped (the kernels never need more than e^88). NaN propagates.
  static CK_INLINE V exp(V x) {
    const V lo = _mm256_set1_ps(-86.0f);  // n >= -124: 2^n p stays a normal float
    const V xc = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(lo, x));  // NaN passes
    const V n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    V r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    V p = _mm256_set1_ps(1.3843653558e-03f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3741549616e-03f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1668000130e-02f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666430951e-01f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.9999993843e-01f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    // p in [0.7, 1.42] has exponent field 126 or 127; adding n in [-124, 127] keeps it normal
    const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
    const V y = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
    return _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), y);  // x < lo: exactly 0
  }
  static CK_INLINE V div(V a, V b) { return _mm256_div_ps(a, b); }
  // -|x|: the sign bit set (NaN stays NaN)
  static CK_INLINE V neg_abs(V x) { return _mm256_or_ps(x, _mm256_set1_ps(-0.0f)); }
  // where x has its sign bit set (x < 0, -0, negative NaN): b, else a
  static CK_INLINE V select_neg(V x, V a, V b) { return _mm256_blendv_ps(a, b, x); }

  // log1p(e) for e in [0, 1] (softplus's e = exp(-|x|)) as e P(e), P a degree-8
  // polynomial (relative-error least squares on [0, 1], iteratively reweighted towards
  // minimax) in Horner form: 8 FMAs and a multiply, no range reduction and no division.
  // Measured over 3e6 e (uniform on [0, 1] and e^-U(0, 87)) against float64: at most
  // 2.1 ulp, 0.64 ulp on average; relative accuracy holds as e -> 0 (no 1 + e is ever
  // formed, so trained SigLIP's e ~ 5e-5 keeps every bit). log1p(0) = 0 exactly; NaN
  // propagates.
  static CK_INLINE V log1p(V e) {
    V p = _mm256_set1_ps(5.232738796621561e-03f);
    p = _mm256_fmadd_ps(p, e, _mm256_set1_ps(-2.9505418613553047e-02f));
    p = _mm256_fmadd_ps(p, e, _mm256_set1_ps(7.822624593973160e-02f));
    p = _mm256_fmadd_ps(p, e, _mm256_set1_ps(-1.3663271069526672e-01f));
    p = _mm256_fmadd_ps(p, e, _mm256_set1_ps(1.9106018543243408e-01f));
    p = _mm256_fmadd_ps(p, e, _mm256_set1_ps(-2.4842984974384308e-01f));
    p = _mm256_fmadd_ps(p, e, _mm256_set1_ps(3.331909775733948e-01f));
    p = _mm256_fmadd_ps(p, e, _mm256_set1_ps(-4.999949336051941e-01f));
    p = _mm256_fmadd_ps(p, e, _mm256_set1_ps(9.999999403953552e-01f));
    return _mm256_mul_ps(p, e);
  }
};

template <>
struct Vec<double> {
  using V = __m256d;
  static constexpr int W = 4;
  static CK_INLINE V zero() { return _mm256_setzero_pd(); }
  static CK_INLINE V set1(double x) { return _mm256_set1_pd(x); }
  static CK_INLINE V load(const double* p) { return _mm256_loadu_pd(p); }
  static CK_INLINE void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static CK_INLINE V add(V a, V b) { return _mm256_add_pd(a, b); }
  static CK_INLINE V sub(V a, V b) { return _mm256_sub_pd(a, b); }
  static CK_INLINE V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  static CK_INLINE V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static CK_INLINE V max(V a, V b) { return _mm256_max_pd(a, b); }
  static CK_INLINE double hsum(V v) {
    alignas(32) double t[4];
    _mm256_store_pd(t, v);
    return (t[0] + t[1]) + (t[2] + t[3]);
  }
  static CK_INLINE double hmax(V v) {
    alignas(32) double t[4];
    _mm256_store_pd(t, v);
    return std::fmax(std::fmax(t[0], t[1]), std::fmax(t[2], t[3]));
  }
  // float64 is the checking precision (gradcheck, oracle comparisons): the libm exp.
  static CK_INLINE V exp(V x) {
    alignas(32) double t[4];
    _mm256_store_pd(t, x);
    for (int i = 0; i < 4; ++i) t[i] = std::exp(t[i]);
    return _mm256_load_pd(t);
  }
  static CK_INLINE V log1p(V x) {
    alignas(32) double t[4];
    _mm256_store_pd(t, x);
    for (int i = 0; i < 4; ++i) t[i] = std::log1p(t[i]);
    return _mm256_load_pd(t);
  }
  static CK_INLINE V div(V a, V b) { return _mm256_div_pd(a, b); }
  static CK_INLINE V neg_abs(V x) { return _mm256_or_pd(x, _mm256_set1_pd(-0.0)); }
  static CK_INLINE V select_neg(V x, V a, V b) { return _mm256_blendv_pd(a, b, x); }
};

#else  // portable fallback: same interface over a small array

template <class T, int N>
struct Lanes {
  T v[N];
};

template <class T>
struct VecFallback {
  static constexpr int W = 32 / sizeof(T);
  using V = Lanes<T, W>;
  static V zero() { return set1(T(0)); }
  static V set1(T x) { V r; for (int i = 0; i < W; ++i) r.v[i] = x; return r; }
  static V load(const T* p) { V r; for (int i = 0; i < W; ++i) r.v[i] = p[i]; return r; }
  static void store(T* p, V a) { for (int i = 0; i < W; ++i) p[i] = a.v[i]; }
  static V add(V a, V b) { for (int i = 0; i < W; ++i) a.v[i] += b.v[i]; return a; }
  static V sub(V a, V b) { for (int i = 0; i < W; ++i) a.v[i] -= b.v[i]; return a; }
  static V mul(V a, V b) { for (int i = 0; i < W; ++i) a.v[i] *= b.v[i]; return a; }
  // a * b + c, not std::fma: without hardware FMA that is a slow library call
  static V fma(V a, V b, V c) { for (int i = 0; i < W; ++i) c.v[i] += a.v[i] * b.v[i]; return c; }
  static V max(V a, V b) {
    for (int i = 0; i < W; ++i) a.v[i] = (std::isnan(b.v[i]) || b.v[i] > a.v[i]) ? b.v[i] : a.v[i];
    return a;
  }
  static T hsum(V a) { T s = 0; for (int i = 0; i < W; ++i) s += a.v[i]; return s; }
  static T hmax(V a) { T s = a.v[0]; for (int i = 1; i < W; ++i) s = std::fmax(s, a.v[i]); return s; }
  static V exp(V a) { for (int i = 0; i < W; ++i) a.v[i] = std::exp(a.v[i]); return a; }
  static V log1p(V a) { for (int i = 0; i < W; ++i) a.v[i] = std::log1p(a.v[i]); return a; }
  static V div(V a, V b) { for (int i = 0; i < W; ++i) a.v[i] /= b.v[i]; return a; }
  static V neg_abs(V a) { for (int i = 0; i < W; ++i) a.v[i] = -std::fabs(a.v[i]); return a; }
  static V select_neg(V x, V a, V b) {
    for (int i = 0; i < W; ++i) a.v[i] = std::signbit(x.v[i]) ? b.v[i] : a.v[i];
    return a;
  }
};

template <>
struct Vec<float> : VecFallback<float> {};
template <>
struct Vec<double> : VecFallback<double> {};

#endif

// Width of one micro-tile row: two registers (16 floats / 8 doubles). Feature dimensions
// are padded to a multiple of it and key panels are this wide.
template <class T>
constexpr int64_t panel_width() {
  return 2 * Vec<T>::W;
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline int64_t ceil_div(int64_t x, int64_t m) { return (x + m - 1) / m; }

template <class T>
constexpr T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

// The SIMD register type of T's vector unit.
template <class T>
using VecT = typename Vec<T>::V;

CK_CPU_NAMESPACE_END
