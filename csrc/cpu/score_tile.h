// The score tile: the one place where the CPU kernels turn a tile of dot products into
// logits. For rows r0 .. r0 + nr and keys c0 .. c0 + nc,
//
//     s_ij = (<q_i, k_j> * scale rq_i) * rk_j + cb_j
//
// with rq, rk the inverse norms (1 without normalize), cb the key bias (0 without one,
// -inf for padding keys beyond M in the last key panel), and the excluded pairs E (key
// i + self_offset of row i where it exists; with exclude_positives every key sharing row
// i's label) masked afterwards: -inf in a forward tile, weight 0 in a backward one. For
// pairwise_sigmoid the same pairs are the positives: never masked, they flip the sign of
// the softplus argument, read from a sign tile (sign_tile) beside the logits.
//
// The forward stores s itself (score_tile) for a reduction policy (reduction.h); the
// backward never stores s: a weight policy turns each register of logits into dL/ds
// times the normalization factors (weight_tile), so every kernel, forward or backward,
// lse or two-sided, recomputes bit-identical logits from the same formula.
#pragma once

#include "cpu/isa.h"  // first: the library headers, then the ISA switch

#include <algorithm>
#include <cstdint>

#include "microkernel.h"
#include "operands.h"
#include "vec.h"

#if defined(__GNUC__)
#define CK_NOINLINE __attribute__((noinline))
#else
#define CK_NOINLINE
#endif

CK_CPU_NAMESPACE_BEGIN

// Logit s_ij = (dot_ij * row_factor_i) * rk_j + cb_j (operands.h).
template <class T>
CK_INLINE typename Vec<T>::V logit(typename Vec<T>::V dot, typename Vec<T>::V row_factor,
                                   const T* rk, const T* cb) {
  using VT = Vec<T>;
  return VT::fma(VT::mul(dot, row_factor), VT::load(rk), VT::load(cb));
}

// Sets the pairs of E in tile x (rows r0 .. r0 + nr, keys c0 .. c0 + nc, row stride ld)
// to `fill`: key i + self_offset of row i, and keys sharing row i's label.
template <class T>
inline void mark_pairs(const Operands<T>& op, T* x, int64_t ld, int64_t r0, int64_t nr, int64_t c0,
                       int64_t nc, T fill) {
  if (op.has_self) {
    const int64_t first = std::max(r0, c0 - op.self_offset);
    const int64_t last = std::min(r0 + nr, c0 + nc - op.self_offset);
    for (int64_t i = first; i < last; ++i) x[(i - r0) * ld + (i + op.self_offset - c0)] = fill;
  }
  if (op.ql != nullptr) {
    const int64_t* kl = op.kl + c0;
    for (int64_t i = 0; i < nr; ++i) {
      const int64_t li = op.ql[r0 + i];
      T* row = x + i * ld;
      for (int64_t j = 0; j < nc; ++j) row[j] = (kl[j] == li) ? fill : row[j];
    }
  }
}

// Masks the excluded pairs of tile x with `fill`; pairs that only flip a sign
// (signed_pairs) are left to sign_tile.
template <class T>
inline void mask_tile(const Operands<T>& op, T* x, int64_t ld, int64_t r0, int64_t nr, int64_t c0,
                      int64_t nc, T fill) {
  if (!op.signed_pairs) mark_pairs(op, x, ld, r0, nr, c0, nc, fill);
}

// The signs of a signed_pairs tile: z'_ij = -z_ij, -1 on the positives (E), +1 elsewhere,
// into z [nr x ncp] (stride ld), so that x = z' s is the softplus argument and
// dL/ds = z' sigmoid(x) g. Returns false, leaving z untouched, when the tile holds no
// positive (every tile of a problem without labels but the self pairs' diagonal band):
// its signs are all +1 and the kernels skip the multiply.
template <class T>
inline bool sign_tile(const Operands<T>& op, int64_t r0, int64_t nr, int64_t c0, int64_t nc, T* z,
                      int64_t ld) {
  const bool diagonal = op.has_self && std::max(r0, c0 - op.self_offset) <
                                           std::min(r0 + nr, c0 + nc - op.self_offset);
  if (!diagonal && op.ql == nullptr) return false;
  const int64_t ncp = round_up(nc, panel_width<T>());
  for (int64_t i = 0; i < nr; ++i) std::fill(z + i * ld, z + i * ld + ncp, T(1));
  mark_pairs(op, z, ld, r0, nr, c0, nc, T(-1));
  return true;
}

// Calls epi(mr, i0, p, s) for every micro-tile of the tile's logits, still in registers:
// s[i][h] holds rows r0 + i0 + i, keys c0 + p NR + h W .. + W (unmasked; padding keys
// -inf unless a non-finite factor made them NaN).
template <class T, class Epi>
CK_INLINE void tile_scores(const Operands<T>& op, int64_t r0, int64_t nr, int64_t c0, int64_t nc,
                           Epi&& epi) {
  constexpr int64_t NR = panel_width<T>();
  constexpr int W = Vec<T>::W;
  logits_tile<T>(op.q + r0 * op.dp, op.dp, nr, op.kt + (c0 / NR) * op.d * NR, op.d,
                 ceil_div(nc, NR),
                 [&](auto mr, int64_t i0, int64_t p, VecT<T>(&c)[decltype(mr)::value][2]) {
                   constexpr int MR = decltype(mr)::value;
                   const int64_t j = c0 + p * NR;
#pragma GCC unroll 6
                   for (int i = 0; i < MR; ++i) {
                     const VecT<T> a = Vec<T>::set1(op.row_factor(r0 + i0 + i));
                     c[i][0] = logit<T>(c[i][0], a, op.rk + j, op.cb + j);
                     c[i][1] = logit<T>(c[i][1], a, op.rk + j + W, op.cb + j + W);
                   }
                   epi(mr, i0, p, c);
                 });
}

// The forward's score tile: s [nr x ncp] (stride ld, ncp = nc rounded up to whole panels),
// excluded pairs and padding keys -inf.
template <class T>
inline void score_tile(const Operands<T>& op, int64_t r0, int64_t nr, int64_t c0, int64_t nc, T* s,
                       int64_t ld) {
  constexpr int64_t NR = panel_width<T>();
  constexpr int W = Vec<T>::W;
  tile_scores(op, r0, nr, c0, nc,
              [&](auto mr, int64_t i0, int64_t p, VecT<T>(&x)[decltype(mr)::value][2]) {
#pragma GCC unroll 6
                for (int i = 0; i < decltype(mr)::value; ++i) {
                  T* out = s + (i0 + i) * ld + p * NR;
                  Vec<T>::store(out, x[i][0]);
                  Vec<T>::store(out + W, x[i][1]);
                }
              });
  // Padding keys get -inf from their bias, but an infinite scale or an infinite entry of
  // q makes their 0 * inf NaN: set them again (the last key panel only).
  if (nc % NR != 0) {
    const int64_t ncp = round_up(nc, NR);
    for (int64_t i = 0; i < nr; ++i) std::fill(s + i * ld + nc, s + i * ld + ncp, neg_inf<T>());
  }
  mask_tile(op, s, ld, r0, nr, c0, nc, neg_inf<T>());
}

// The backward's weight tile(s): `weights` (a policy: weights(mr, i0, p, s) writes the
// weights of one micro-tile of logits wherever it keeps its outputs) over the whole tile,
// then the excluded pairs of each output tile (x, and x2 when not null; stride ld) set to
// 0. Padding keys are never read by the products (their inner dimension is nc).
// Never inlined: inlined into a sweep's tile body, GCC kept the policy's hoisted constants
// (the exp polynomial's, the pivot) in vector registers across the logits micro-kernel
// and spilled half of its 12 accumulators to the stack, which halved the speed of the
// two-sided backward's recompute.
template <class T, class Weights>
CK_NOINLINE void weight_tile(const Operands<T>& op, int64_t r0, int64_t nr, int64_t c0, int64_t nc,
                        Weights&& weights, T* x, T* x2, int64_t ld) {
  tile_scores(op, r0, nr, c0, nc, weights);
  mask_tile(op, x, ld, r0, nr, c0, nc, T(0));
  if (x2 != nullptr) mask_tile(op, x2, ld, r0, nr, c0, nc, T(0));
}

CK_CPU_NAMESPACE_END
