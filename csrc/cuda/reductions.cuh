// The reductions of the score tile: what the forward keeps of each tile and what weight the
// backward gives each pair. The forward and backward tile loops (forward.cuh, backward.cuh)
// are templated on one of these policies; score tile, main loop and second products are
// shared.
//
//   LseRows      lse_i = log sum_j exp(s_ij)                      (the lse op)
//                backward weight  x_ij = g_i exp(s_ij - lse_i)
//   LseRowsCols  row_lse_i as above and col_lse_j = log sum_i exp(s_ij) (two_sided_lse)
//                backward weight  x_ij = g_i exp(s_ij - row_lse_i) + h_j exp(s_ij - col_lse_j)
//
// Forward state (Reduction::Forward<Tag>): constructed once per block (init), update(...,
// keep) once per score tile (before the tile is turned into probabilities in place), the row
// statistics in `rows` (the forward loop finishes them: lse or split partials).
// Column statistics of LseRowsCols: the block's 64 rows are one partial (max, sum) per
// column, written to [row_blocks, M]; merge_splits_kernel adds the row blocks per column in
// block order (bitwise deterministic).
//
// Backward state (Reduction::Backward<Tag, kKeys>): per own row of the block (kKeys: own
// keys) the factor that multiplies the fp32 products (own_factor), and weight(h, row, col,
// logit): the rest of x_ij rq_i rk_j, the part that varies along the reduction, for a pair
// inside the matrix and outside the excluded set. A statistic of -inf (an empty row or
// column) contributes no term.
#pragma once

#include "cuda/tile_traits.cuh"

namespace ck {
namespace CK_KERNEL_NAMESPACE {

// The online log-sum-exp of the lane's two rows (warp * 16 + g, + 8) over key tiles, with a
// finite pivot (pivot = m if finite else 0; lse = pivot + log l): NaN in gives NaN out, +inf
// stays +inf, only an empty key set gives -inf.
template <class Tag>
struct OnlineRows {
  using Acc = typename Tag::Acc;
  Acc m[2] = {neg_inf<Acc>(), neg_inf<Acc>()}, l[2] = {0, 0};

  // s := exp(s - pivot) (the tile's probabilities up to the row's running sum); alpha: the
  // factor that rescales what was summed before this tile (l, and o); keep(h, alpha[h]) as
  // soon as row h is done (the FMA path of o stores it: fp64 +o has no register to spare).
  template <class Keep>
  CK_DEVICE void update(Acc (&s)[8][4], Acc (&alpha)[2], Keep keep) {
CK_UNROLL
    for (int h = 0; h < 2; ++h) {
      Acc mx = neg_inf<Acc>();
CK_UNROLL
      for (int nt = 0; nt < 8; ++nt)
        mx = fmax_nan_skip(fmax_nan_skip(mx, s[nt][2 * h]), s[nt][2 * h + 1]);
      mx = quad_max(mx);
      const Acc m_new = fmax_nan_skip(m[h], mx);
      // A finite pivot: +inf logits give l = inf (lse = +inf), never inf - inf.
      const Acc piv_new = ck_isfinite(m_new) ? m_new : Acc(0);
      const Acc piv_old = ck_isfinite(m[h]) ? m[h] : Acc(0);
      alpha[h] = m[h] == neg_inf<Acc>() ? Acc(0) : tile_exp<Tag>(piv_old - piv_new);
      Acc sum = 0;
CK_UNROLL
      for (int nt = 0; nt < 8; ++nt)
CK_UNROLL
        for (int e2 = 0; e2 < 2; ++e2) {
          const Acc pe = tile_exp<Tag>(s[nt][2 * h + e2] - piv_new);
          s[nt][2 * h + e2] = pe;
          sum += pe;
        }
      sum = quad_sum(sum);
      l[h] = l[h] * alpha[h] + sum;
      m[h] = m_new;
      keep(h, alpha[h]);
    }
  }

  // only an empty key set (l = 0) gives -inf; a NaN logit makes l, hence lse, NaN
  CK_DEVICE Acc lse(int h) const {
    const Acc piv = ck_isfinite(m[h]) ? m[h] : Acc(0);
    return l[h] == Acc(0) ? neg_inf<Acc>() : piv + ck_log(l[h]);
  }
};

// The column statistics of one score tile over the block's 64 rows: for each key j of the
// tile, m_j = max_i s_ij (NaN skipped) and l_j = sum_i exp(s_ij - pivot_j), pivot_j = m_j if
// finite else 0, written to col_part_m / col_part_l [row_blocks, M] at row block
// blockIdx.x. Through shared memory, without shuffles: each lane's two rows, then the
// (warp, g) partials of a column summed by one thread in a fixed order (3 barriers; the
// scratch is the weight tile and row vector, which the lse-only forward does not use).
template <class Tag>
CK_DEVICE void column_partials(const KernelProblem& p, const ForwardBuffers& b,
                               const Smem<Tag>& sm, int64_t col0,
                               const typename Tag::Acc (&s)[8][4]) {
  using Acc = typename Tag::Acc;
  constexpr int kParts = kWarps * 8;  // (warp, g): the lanes whose two rows share a column
  static_assert(2 * kParts * kLdp <= kBM * kLdp, "column scratch fits the weight tile");
  Acc* part_max = sm.ps;                  // [32][kLdp]: (warp, g) x key
  Acc* part_sum = sm.ps + kParts * kLdp;  // [32][kLdp]
  Acc* pivot = sm.rowv;                   // [64]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int part = warp * 8 + g;
CK_UNROLL
  for (int nt = 0; nt < 8; ++nt)
CK_UNROLL
    for (int e2 = 0; e2 < 2; ++e2)
      part_max[part * kLdp + 8 * nt + 2 * t + e2] = fmax_nan_skip(s[nt][e2], s[nt][2 + e2]);
  CK_SYNC();
  const int c = threadIdx.x;  // the key of the column threads
  const int64_t col = col0 + c;
  const int64_t block = blockIdx.x;
  if (c < kBN) {
    Acc mx = neg_inf<Acc>();
    for (int r = 0; r < kParts; ++r) mx = fmax_nan_skip(mx, part_max[r * kLdp + c]);
    pivot[c] = ck_isfinite(mx) ? mx : Acc(0);
    if (col < p.m) static_cast<Acc*>(b.col_part_m)[block * p.m + col] = mx;
  }
  CK_SYNC();
CK_UNROLL
  for (int nt = 0; nt < 8; ++nt)
CK_UNROLL
    for (int e2 = 0; e2 < 2; ++e2) {
      const int key = 8 * nt + 2 * t + e2;
      const Acc piv = pivot[key];
      part_sum[part * kLdp + key] =
          tile_exp<Tag>(s[nt][e2] - piv) + tile_exp<Tag>(s[nt][2 + e2] - piv);
    }
  CK_SYNC();
  if (c < kBN && col < p.m) {
    Acc sum = 0;
    for (int r = 0; r < kParts; ++r) sum += part_sum[r * kLdp + c];
    static_cast<Acc*>(b.col_part_l)[block * p.m + col] = sum;
  }
}

// lse: the row statistics only.
struct LseRows {
  static constexpr bool kCols = false;

  template <class Tag>
  struct Forward {
    using Acc = typename Tag::Acc;
    OnlineRows<Tag> rows;
    template <class Keep>
    CK_DEVICE void update(const KernelProblem&, const ForwardBuffers&, const Smem<Tag>&, int64_t,
                          Acc (&s)[8][4], Acc (&alpha)[2], Keep keep) {
      rows.update(s, alpha, keep);
    }
  };

  // x_ij rq_i rk_j = (g_i rq_i) * (rk_j exp(s_ij - lse_i)) on the row grid (own rows i),
  // (rk_j) * (g_i rq_i exp(s_ij - lse_i)) on the key grid (own keys j).
  template <class Tag, bool kKeys>
  struct Backward {
    using Acc = typename Tag::Acc;
    const KernelProblem& p;
    const Acc *rq, *rk, *lse, *grad;
    Acc l_own[2] = {Acc(INFINITY), Acc(INFINITY)}, f_own[2] = {0, 0};

    CK_DEVICE Backward(const KernelProblem& p_, const BackwardBuffers& b, int64_t own0)
        : p(p_),
          rq(static_cast<const Acc*>(b.rq)),
          rk(static_cast<const Acc*>(b.rk)),
          lse(static_cast<const Acc*>(b.lse)),
          grad(static_cast<const Acc*>(b.grad_lse)) {
      const int warp = threadIdx.x / 32, g = (threadIdx.x % 32) / 4;
      // per own row: its lse (inf without keys: weight 0) and g_i rq_i (dq grid), or rk_j
      // (dk grid)
CK_UNROLL
      for (int h = 0; h < 2; ++h) {
        const int64_t own = own0 + warp * 16 + g + 8 * h;
        if constexpr (kKeys) {
          f_own[h] = own < p.m ? rk[own] : Acc(0);
        } else if (own < p.n && lse[own] != neg_inf<Acc>()) {
          l_own[h] = lse[own];
          f_own[h] = grad[own] * rq[own];
        }
      }
    }
    CK_DEVICE Acc own_factor(int h) const { return f_own[h]; }
    CK_DEVICE Acc weight(int h, int64_t row, int64_t col, Acc logit) const {
      if constexpr (kKeys) {
        Acc l = Acc(INFINITY), gq = 0;
        if (row < p.n && lse[row] != neg_inf<Acc>()) {
          l = lse[row];
          gq = grad[row] * rq[row];
        }
        return gq * tile_exp<Tag>(logit - l);
      } else {
        return tile_exp<Tag>(logit - l_own[h]) * rk[col];
      }
    }
  };
};

// two_sided_lse: row statistics as lse, and column statistics of the same tiles.
struct LseRowsCols {
  static constexpr bool kCols = true;

  template <class Tag>
  struct Forward {
    using Acc = typename Tag::Acc;
    OnlineRows<Tag> rows;
    // the columns first: they need the logits, which the rows turn into probabilities
    template <class Keep>
    CK_DEVICE void update(const KernelProblem& p, const ForwardBuffers& b, const Smem<Tag>& sm,
                          int64_t col0, Acc (&s)[8][4], Acc (&alpha)[2], Keep keep) {
      column_partials<Tag>(p, b, sm, col0, s);
      rows.update(s, alpha, keep);
    }
  };

  // x_ij rq_i rk_j = rq_i * (rk_j (g_i p_ij + h_j p'_ij)) on the row grid,
  // rk_j * (rq_i (g_i p_ij + h_j p'_ij)) on the key grid; p_ij = exp(s_ij - row_lse_i),
  // p'_ij = exp(s_ij - col_lse_j). g and h are inside the weight (each varies along one
  // side), so only the inverse norm of the own side multiplies the products.
  template <class Tag, bool kKeys>
  struct Backward {
    using Acc = typename Tag::Acc;
    const KernelProblem& p;
    const Acc *rq, *rk, *row_lse, *grad_row, *col_lse, *grad_col;
    // the own side's statistic (+inf when it is -inf: no term) and its gradient
    Acc l_own[2] = {Acc(INFINITY), Acc(INFINITY)}, g_own[2] = {0, 0}, f_own[2] = {0, 0};

    CK_DEVICE Backward(const KernelProblem& p_, const BackwardBuffers& b, int64_t own0)
        : p(p_),
          rq(static_cast<const Acc*>(b.rq)),
          rk(static_cast<const Acc*>(b.rk)),
          row_lse(static_cast<const Acc*>(b.lse)),
          grad_row(static_cast<const Acc*>(b.grad_lse)),
          col_lse(static_cast<const Acc*>(b.col_lse)),
          grad_col(static_cast<const Acc*>(b.grad_col)) {
      const int warp = threadIdx.x / 32, g = (threadIdx.x % 32) / 4;
      const Acc* own_lse = kKeys ? col_lse : row_lse;
      const Acc* own_grad = kKeys ? grad_col : grad_row;
      const Acc* own_r = kKeys ? rk : rq;
      const int64_t own_count = kKeys ? p.m : p.n;
CK_UNROLL
      for (int h = 0; h < 2; ++h) {
        const int64_t own = own0 + warp * 16 + g + 8 * h;
        if (own >= own_count) continue;
        f_own[h] = own_r[own];
        if (own_lse[own] != neg_inf<Acc>()) {
          l_own[h] = own_lse[own];
          g_own[h] = own_grad[own];
        }
      }
    }
    CK_DEVICE Acc own_factor(int h) const { return f_own[h]; }
    CK_DEVICE Acc weight(int h, int64_t row, int64_t col, Acc logit) const {
      const int64_t other = kKeys ? row : col;
      const Acc* other_lse = kKeys ? row_lse : col_lse;
      const Acc* other_grad = kKeys ? grad_row : grad_col;
      Acc l = Acc(INFINITY), go = 0;
      if (other_lse[other] != neg_inf<Acc>()) {
        l = other_lse[other];
        go = other_grad[other];
      }
      const Acc w = g_own[h] * tile_exp<Tag>(logit - l_own[h]) + go * tile_exp<Tag>(logit - l);
      return w * (kKeys ? rq[row] : rk[col]);
    }
  };
};

}  // namespace CK_KERNEL_NAMESPACE
}  // namespace ck
