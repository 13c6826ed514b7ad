// The reductions of the score tile: what the forward keeps of each tile and what weight the
// backward gives each pair. The forward and backward tile loops (forward.cuh, backward.cuh)
// are templated on one of these policies; score tile, main loop and second products are
// shared.
//
//   LseRows      lse_i = log sum_j exp(s_ij)                      (the lse op)
//                backward weight  x_ij = g_i exp(s_ij - lse_i)
//   LseRowsCols  row_lse_i as above and col_lse_j = log sum_i exp(s_ij) (two_sided_lse)
//                backward weight  x_ij = g_i exp(s_ij - row_lse_i) + h_j exp(s_ij - col_lse_j)
//   SigmoidRows  row_loss_i = sum_j softplus(x_ij), x_ij = -z_ij s_ij  (pairwise_sigmoid)
//                backward weight  w_ij = -z_ij sigmoid(x_ij) g_i, and dbias_j = sum_i w_ij
//
// Traits: kCols (column statistics), kSigned (the score tile flips the sign of the marked
// pairs instead of excluding them), kRowSums (the row statistic is a plain sum: split
// partials are added, not merged as log-sum-exps), kBiasGrad (the key grid sums dbias).
//
// Forward state (Reduction::Forward<Tag>): constructed once per block (init), update(...,
// keep) once per score tile (before the tile is turned into probabilities in place), the row
// statistics in `rows` (the forward loop finishes them: result(h), or the split partials by
// store_partial).
// Column statistics of LseRowsCols: the block's 64 rows are one partial (max, sum) per
// column, written to [row_blocks, M]; merge_splits_kernel adds the row blocks per column in
// block order (bitwise deterministic).
//
// Backward state (Reduction::Backward<Tag, kKeys>): per own row of the block (kKeys: own
// keys) the factor that multiplies the fp32 products (own_factor), and weight(h, row, col,
// logit, marked): the rest of x_ij rq_i rk_j, the part that varies along the reduction, for
// a pair inside the matrix and outside the excluded set. A statistic of -inf (an empty row
// or column) contributes no term.
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
  CK_DEVICE Acc result(int h) const {
    const Acc piv = ck_isfinite(m[h]) ? m[h] : Acc(0);
    return l[h] == Acc(0) ? neg_inf<Acc>() : piv + ck_log(l[h]);
  }
  // a key range's (max, sum), merged per row by merge_splits_kernel
  CK_DEVICE void store_partial(const ForwardBuffers& b, int64_t split, int64_t n, int64_t row,
                               int h) const {
    static_cast<Acc*>(b.part_m)[split * n + row] = m[h];
    static_cast<Acc*>(b.part_l)[split * n + row] = l[h];
  }
};

// Row sums of the lane's two rows over key tiles (each tile: the lane's 16 terms in order,
// then the quad's butterfly): a fixed order, bitwise deterministic.
template <class Tag>
struct RowSums {
  using Acc = typename Tag::Acc;
  Acc l[2] = {0, 0};

  template <class Term>
  CK_DEVICE void add(const Acc (&s)[8][4], Term term) {
CK_UNROLL
    for (int h = 0; h < 2; ++h) {
      Acc sum = 0;
CK_UNROLL
      for (int nt = 0; nt < 8; ++nt)
CK_UNROLL
        for (int e2 = 0; e2 < 2; ++e2) sum += term(s[nt][2 * h + e2]);
      l[h] += quad_sum(sum);
    }
  }
  CK_DEVICE Acc result(int h) const { return l[h]; }
  // a key range's sum, added per row in range order by sum_splits_kernel
  CK_DEVICE void store_partial(const ForwardBuffers& b, int64_t split, int64_t n, int64_t row,
                               int h) const {
    static_cast<Acc*>(b.part_l)[split * n + row] = l[h];
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
  static constexpr bool kCols = false, kSigned = false, kRowSums = false, kBiasGrad = false;

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
    CK_DEVICE Acc weight(int h, int64_t row, int64_t col, Acc logit, bool) const {
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
  static constexpr bool kCols = true, kSigned = false, kRowSums = false, kBiasGrad = false;

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
    CK_DEVICE Acc weight(int h, int64_t row, int64_t col, Acc logit, bool) const {
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

// pairwise_sigmoid: the score tile holds x_ij = -z_ij s_ij (kSigned: the marked pairs are the
// positives, their sign flipped; nothing is excluded, out-of-matrix pairs are -inf, whose
// softplus and sigmoid are 0). Forward: row sums of softplus(x) (tile_softplus: one exp and
// a polynomial per logit). Backward: w_ij = dL/ds_ij = -z_ij sigmoid(x_ij) g_i (tile_sigmoid:
// one exp and one reciprocal), -z_ij = -1 on the marked pairs, +1 elsewhere.
struct SigmoidRows {
  static constexpr bool kCols = false, kSigned = true, kRowSums = true, kBiasGrad = true;

  template <class Tag>
  struct Forward {
    using Acc = typename Tag::Acc;
    RowSums<Tag> rows;
    template <class Keep>
    CK_DEVICE void update(const KernelProblem&, const ForwardBuffers&, const Smem<Tag>&, int64_t,
                          Acc (&s)[8][4], Acc (&)[2], Keep) {
      rows.add(s, [](Acc x) { return tile_softplus<Tag>(x); });
    }
  };

  // x_ij rq_i rk_j = (g_i rq_i) * (rk_j w'_ij) on the row grid, (rk_j) * (rq_i g_i w'_ij) on
  // the key grid, w'_ij = -z_ij sigmoid(x_ij). The key grid also sums dbias_j = sum_i g_i
  // w'_ij over its row range, per lane in tile order and then over the quad (the lanes of
  // one key): one partial per (row range, key), added in range order (sum_splits_kernel).
  template <class Tag, bool kKeys>
  struct Backward {
    using Acc = typename Tag::Acc;
    const Acc *rq, *rk, *grad;
    Acc f_own[2] = {0, 0}, db[2] = {0, 0};

    CK_DEVICE Backward(const KernelProblem& p, const BackwardBuffers& b, int64_t own0)
        : rq(static_cast<const Acc*>(b.rq)),
          rk(static_cast<const Acc*>(b.rk)),
          grad(static_cast<const Acc*>(b.grad_lse)) {
      const int warp = threadIdx.x / 32, g = (threadIdx.x % 32) / 4;
CK_UNROLL
      for (int h = 0; h < 2; ++h) {
        const int64_t own = own0 + warp * 16 + g + 8 * h;
        if (own < (kKeys ? p.m : p.n)) f_own[h] = kKeys ? rk[own] : grad[own] * rq[own];
      }
    }
    CK_DEVICE Acc own_factor(int h) const { return f_own[h]; }
    CK_DEVICE Acc weight(int h, int64_t row, int64_t col, Acc x, bool marked) {
      const Acc sig = tile_sigmoid<Tag>(x);
      const Acc w = marked ? -sig : sig;
      if constexpr (kKeys) {
        const Acc dlds = w * grad[row];
        db[h] += dlds;
        return dlds * rq[row];
      } else {
        return w * rk[col];
      }
    }
    // the key grid's dbias partials [splits, m] (every lane: the quad sums shuffle)
    CK_DEVICE void finish(const KernelProblem& p, const BackwardBuffers& b, int64_t own0,
                          int64_t split) const {
      if (!kKeys || b.dbias_part == nullptr) return;
      const int warp = threadIdx.x / 32, g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4;
CK_UNROLL
      for (int h = 0; h < 2; ++h) {
        const Acc v = quad_sum(db[h]);
        const int64_t own = own0 + warp * 16 + g + 8 * h;
        if (t == 0 && own < p.m) static_cast<Acc*>(b.dbias_part)[split * p.m + own] = v;
      }
    }
  };
};

}  // namespace CK_KERNEL_NAMESPACE
}  // namespace ck
