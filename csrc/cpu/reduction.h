// The forward kernels' reductions of a score tile (score_tile.h) into running log-sum-exp
// statistics, as policies the tile sweeps call once per tile:
//
//     RowReduction        rows only (the lse forward):  for each tile row i,
//                         (m_i, l_i) <- online update with s_i. (row_update)
//     TwoSidedReduction   rows AND columns (the two-sided lse; the symmetric lse's
//                         off-diagonal tiles, whose columns are rows of the other block):
//                         the rows' stats as above and, for each tile column j,
//                         (m_j, l_j) <- online update with s_.j (column_update); or both
//                         with ONE exponential per entry at the tile's max when the tile's
//                         range allows it (shared_pivot_update).
//
//     SigmoidReduction    rows only, no running max (pairwise_sigmoid): for each tile
//                         row i, loss_i += sum_j softplus(z'_ij s_ij).
//
// A line's result depends only on the order in which its tiles arrive, which the sweeps
// fix from the shapes alone (schedule.h), so the statistics are bitwise the same for any
// thread count. finish_lines turns (m, l) into lse = m + log l (-inf for an empty line,
// NaN for a line that met a NaN, +inf for a +inf logit).
#pragma once

#include "cpu/isa.h"  // first: the library headers, then the ISA switch

#include <cmath>
#include <cstdint>
#include <limits>

#include "tile_ops.h"
#include "vec.h"

CK_CPU_NAMESPACE_BEGIN

// Running (max, sum-exp) of a set of lines (rows or columns).
template <class T>
struct LineStats {
  T* max;
  double* sum;
  LineStats at(int64_t first) const { return {max + first, sum + first}; }
  void reset(int64_t count) const {
    std::fill(max, max + count, neg_inf<T>());
    std::fill(sum, sum + count, 0.0);
  }
};

// Rows only. With key factors w (the o product's operand, lse's return_o), each row of s
// becomes e^{s - m'} w and on_rescale(i, e^{m - m'}) rescales that row's earlier o.
template <class T>
struct RowReduction {
  template <class OnRescale>
  CK_INLINE void operator()(T* s, int64_t ld, int64_t nr, int64_t ncp, LineStats<T> rows,
                            const T* w, OnRescale&& on_rescale) const {
    for (int64_t i = 0; i < nr; ++i) {
      const T rescale = row_update(s + i * ld, ncp, rows.max[i], rows.sum[i], w);
      on_rescale(i, rescale);
    }
  }
  CK_INLINE void operator()(T* s, int64_t ld, int64_t nr, int64_t ncp, LineStats<T> rows) const {
    (*this)(s, ld, nr, ncp, rows, nullptr, [](int64_t, T) {});
  }
};

// Rows and columns of every tile. scratch: four lines of `line` >= max(nr, ncp) entries
// (rescale, colmax, colsum, rowmax), one set per thread.
template <class T>
struct TwoSidedReduction {
  T* rescale;
  T* colmax;
  T* colsum;
  T* rowmax;
  static constexpr int64_t kScratchLines = 4;
  TwoSidedReduction(T* scratch, int64_t line)
      : rescale(scratch), colmax(scratch + line), colsum(scratch + 2 * line),
        rowmax(scratch + 3 * line) {}

  // s [nr x ncp] (stride ld) of nc real keys; rows / cols: the stats of its first row / key.
  // s is overwritten.
  CK_INLINE void operator()(T* s, int64_t ld, int64_t nr, int64_t ncp, int64_t nc,
                            LineStats<T> rows, LineStats<T> cols) const {
    if (shared_pivot_update(s, ld, nr, ncp, nc, rows.max, rows.sum, cols.max, cols.sum, rowmax,
                            colmax, colsum))
      return;
    column_update(s, ld, nr, ncp, nc, cols.max, cols.sum, static_cast<const T*>(nullptr),
                  static_cast<T*>(nullptr), rescale, colmax, colsum);
    RowReduction<T>{}(s, ld, nr, ncp, rows);
  }
};

// Row sums of softplus(x), x = z' s (z' the tile's signs, sign_tile; null when all +1),
//
//     softplus(x) = max(x, 0) + log1p(e),   e = exp(-|x|) in [0, 1]
//
// one exp and one log1p (vec.h: the polynomial, never log(1 + e)) per logit, every term
// >= 0 so the sum has no cancellation. Padding keys (s = -inf) add exactly 0; x = +inf
// gives +inf, a NaN logit NaN (max keeps its data operand).
template <class T>
struct SigmoidReduction {
  template <bool Signed>
  static CK_INLINE T row_sum(const T* s, const T* z, int64_t ncp) {
    using VT = Vec<T>;
    using V = typename VT::V;
    constexpr int W = VT::W;
    V acc0 = VT::zero(), acc1 = VT::zero();
    for (int64_t j = 0; j < ncp; j += 2 * W) {  // ncp: whole panels of 2 W
      V x0 = VT::load(s + j), x1 = VT::load(s + j + W);
      if (Signed) {
        x0 = VT::mul(x0, VT::load(z + j));
        x1 = VT::mul(x1, VT::load(z + j + W));
      }
      acc0 = VT::add(acc0, VT::add(VT::max(VT::zero(), x0), VT::log1p(VT::exp(VT::neg_abs(x0)))));
      acc1 = VT::add(acc1, VT::add(VT::max(VT::zero(), x1), VT::log1p(VT::exp(VT::neg_abs(x1)))));
    }
    return VT::hsum(VT::add(acc0, acc1));
  }
  // s, z [nr x ncp] (stride ld); loss: the running sums of the tile's rows.
  CK_INLINE void operator()(const T* s, const T* z, int64_t ld, int64_t nr, int64_t ncp,
                            double* loss) const {
    for (int64_t i = 0; i < nr; ++i)
      loss[i] += double(z != nullptr ? row_sum<true>(s + i * ld, z + i * ld, ncp)
                                     : row_sum<false>(s + i * ld, nullptr, ncp));
  }
};

// lse of `count` lines from their running stats: lse = pivot + log l, with the finite
// pivot of row_update, so an empty line (l = 0) gives -inf and a NaN met anywhere in the
// line (l NaN) gives NaN; a line whose max is +inf gives +inf unless it met a NaN.
// With o (rows of stride dp), each row is divided by l.
template <class T>
inline void finish_lines(int64_t count, const T* m, const double* l, T* lse, T* o, int64_t dp) {
  for (int64_t i = 0; i < count; ++i) {
    if (m[i] == std::numeric_limits<T>::infinity() && !std::isnan(l[i]))
      lse[i] = std::numeric_limits<T>::infinity();
    else
      lse[i] = T(double(finite_pivot(m[i])) + std::log(l[i]));
    if (o != nullptr) {
      const T inv = l[i] > 0 || std::isnan(l[i]) ? T(1.0 / l[i]) : T(0);
      T* row = o + i * dp;
      for (int64_t c = 0; c < dp; ++c) row[c] *= inv;
    }
  }
}

CK_CPU_NAMESPACE_END
