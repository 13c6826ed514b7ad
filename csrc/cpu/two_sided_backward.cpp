// Backward two-sided log-sum-exp on CPU. With g = dL/drow_lse, h = dL/dcol_lse and the
// two softmaxes p_ij = exp(s_ij - row_lse_i), p'_ij = exp(s_ij - col_lse_j):
//
//     w_ij = dL/ds_ij = g_i p_ij + h_j p'_ij          (0 for (i, j) in E; a row with
//                                                      row_lse = -inf adds no row term, a
//                                                      column with col_lse = -inf none)
//     u_i = sum_j w_ij k^_j,  v_j = sum_i w_ij q^_i
//     dq^ = scale u,  dk^ = scale v,  dscale = sum_i <q^_i, u_i>
//
// then the normalization Jacobian as in lse_backward.cpp (finish_gradient). Each tile is
// recomputed ONCE into x_ij = rq_i rk_j w_ij (score_tile.h: weight_tile, with the weight
// policies below) and feeds both products (backward_sweep.h), in the same deterministic
// schedule as the lse backward.
//
// One exponential per entry when the tile's row and column lse lie within
// kSharedPivotSpread of each other (c = the largest):
//
//     x_ij = e^{s_ij - c} (G_i rk_j + rq_i H_j),  G_i = e^{c - row_lse_i} g_i rq_i,
//                                                 H_j = e^{c - col_lse_j} h_j rk_j
//
// (every included s_ij is below both lse, so e^{s - c} <= 1, and a term that matters,
// p >= e^-40, stays a normal float); two otherwise.
#include "cpu/isa.h"  // first: the library headers, then the ISA switch

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "backward_sweep.h"
#include "score_tile.h"
#include "tile_ops.h"
#include "two_sided_cpu.h"

CK_CPU_NAMESPACE_BEGIN

namespace {

// Two exponentials per entry: x_ij = e^{s - row_lse_i} g_i rq_i rk_j + e^{s - col_lse_j} h_j rk_j rq_i.
template <class T>
struct TwoSidedWeights {
  const Operands<T>& op;
  LineTerms<T> rows;  // row_lse (+inf where empty), g rq
  LineTerms<T> cols;  // col_lse (+inf where empty), h rk; padded to whole key panels
  int64_t r0, c0;
  T* x;
  int64_t ld;
  template <class MR>
  CK_INLINE void operator()(MR, int64_t i0, int64_t p, VecT<T> (&s)[MR::value][2]) const {
    using VT = Vec<T>;
    constexpr int64_t NR = panel_width<T>();
    constexpr int W = VT::W;
    const int64_t j = c0 + p * NR;
#pragma GCC unroll 6
    for (int i = 0; i < MR::value; ++i) {
      const int64_t row = r0 + i0 + i;
      const VecT<T> lse_i = VT::set1(rows.lse[row]);
      const VecT<T> g_i = VT::set1(rows.gr[row]);
      const VecT<T> rq_i = VT::set1(op.rq[row]);
      T* out = x + (i0 + i) * ld + p * NR;
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const VecT<T> row_term =
            VT::mul(VT::exp(VT::sub(s[i][h], lse_i)), VT::mul(g_i, VT::load(op.rk + j + h * W)));
        const VecT<T> col_w = VT::mul(VT::load(cols.gr + j + h * W), rq_i);
        VT::store(out + h * W, VT::fma(VT::exp(VT::sub(s[i][h], VT::load(cols.lse + j + h * W))),
                                       col_w, row_term));
      }
    }
  }
};

// One exponential per entry at the common pivot c: x_ij = e^{s - c} (G_i rk_j + rq_i H_j).
template <class T>
struct SharedPivotWeights {
  const Operands<T>& op;
  const T* row_coef;  // G_i of the tile's rows
  const T* col_coef;  // H_j of the tile's keys, 0 for padding keys
  T c;
  int64_t r0, c0;
  T* x;
  int64_t ld;
  template <class MR>
  CK_INLINE void operator()(MR, int64_t i0, int64_t p, VecT<T> (&s)[MR::value][2]) const {
    using VT = Vec<T>;
    constexpr int64_t NR = panel_width<T>();
    constexpr int W = VT::W;
    const int64_t j = c0 + p * NR;
    const VecT<T> vc = VT::set1(c);
#pragma GCC unroll 6
    for (int i = 0; i < MR::value; ++i) {
      const VecT<T> g_i = VT::set1(row_coef[i0 + i]);
      const VecT<T> rq_i = VT::set1(op.rq[r0 + i0 + i]);
      T* out = x + (i0 + i) * ld + p * NR;
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const VecT<T> e = VT::exp(VT::sub(s[i][h], vc));
        const VecT<T> f = VT::fma(g_i, VT::load(op.rk + j + h * W),
                                  VT::mul(rq_i, VT::load(col_coef + p * NR + h * W)));
        VT::store(out + h * W, VT::mul(e, f));
      }
    }
  }
};

// The weights of tile (r0 .. r0 + nr, c0 .. c0 + nc) into x: one exponential per entry
// when the lse range allows it. coef: nr + ncp scratch.
template <class T>
void tile_weights(const Operands<T>& op, LineTerms<T> rows, LineTerms<T> cols, int64_t r0,
                  int64_t nr, int64_t c0, int64_t nc, T* x, int64_t ld, T* coef) {
  constexpr int64_t NR = panel_width<T>();
  double hi = -std::numeric_limits<double>::infinity(), lo = std::numeric_limits<double>::infinity();
  lse_range(rows.lse, r0, nr, hi, lo);
  lse_range(cols.lse, c0, nc, hi, lo);
  if (hi < lo) hi = lo = 0;  // no live line: every weight is 0 whatever the pivot
  if (hi - lo > kSharedPivotSpread) {
    weight_tile(op, r0, nr, c0, nc, TwoSidedWeights<T>{op, rows, cols, r0, c0, x, ld}, x,
                static_cast<T*>(nullptr), ld);
    return;
  }
  const T c = T(hi);
  const int64_t ncp = round_up(nc, NR);
  T* row_coef = coef;
  T* col_coef = coef + nr;
  for (int64_t i = 0; i < nr; ++i) row_coef[i] = std::exp(c - rows.lse[r0 + i]) * rows.gr[r0 + i];
  for (int64_t j = 0; j < ncp; ++j) col_coef[j] = std::exp(c - cols.lse[c0 + j]) * cols.gr[c0 + j];
  weight_tile(op, r0, nr, c0, nc, SharedPivotWeights<T>{op, row_coef, col_coef, c, r0, c0, x, ld},
              x, static_cast<T*>(nullptr), ld);
}

}  // namespace

template <class T>
void two_sided_backward_kernel(const Operands<T>& op, const T* g, const T* h, const T* row_lse,
                               const T* col_lse, T* u, T* v) {
  if (op.n == 0 || op.m == 0 || (u == nullptr && v == nullptr)) return;
  const OwnedLineTerms<T> row_terms(g, row_lse, op.rq, op.n, op.n);
  // padded to whole key panels: the weights read the keys' terms a panel at a time
  const OwnedLineTerms<T> col_terms(h, col_lse, op.rk, op.m, op.mp);
  const LineTerms<T> rows = row_terms.terms(), cols = col_terms.terms();
  backward_sweep(op, u, v, kernel_threads(),
                 [&](int64_t r0, int64_t nr, int64_t c0, int64_t nc, T* x, int64_t ld, T* coef) {
                   tile_weights(op, rows, cols, r0, nr, c0, nc, x, ld, coef);
                 });
}

template void two_sided_backward_kernel<float>(const Operands<float>&, const float*, const float*,
                                               const float*, const float*, float*, float*);
template void two_sided_backward_kernel<double>(const Operands<double>&, const double*,
                                                const double*, const double*, const double*,
                                                double*, double*);

CK_CPU_NAMESPACE_END
