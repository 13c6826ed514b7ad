// The backward: the tile loop of the row grid (dq) and the key grid (dk), templated on the
// reduction whose weights it applies (reductions.cuh), its kernels (lse, two_sided_lse,
// pairwise_sigmoid), the per-row epilogue (scale and the normalization Jacobian) and the
// fixed-order dscale sum.
#pragma once

#include "cuda/reductions.cuh"
#include "cuda/row_norms.cuh"
#include "cuda/score_tile.cuh"
#include "cuda/second_products.cuh"

namespace ck {
namespace CK_KERNEL_NAMESPACE {

// The backward's tile loop, for the 64 rows (kKeys: keys) of block blockIdx.x, over the
// tiles of range blockIdx.y of the keys (kKeys: rows): u~_i = sum_j x_ij k_j (the dq grid)
// or v~_j = sum_i x_ij q_i (the dk grid, on the transposed tile, so that the block's own
// keys are the warps' rows in both), x_ij = rq_i rk_j dL/ds_ij computed in place of the
// logits by the Reduction (lse: g_i exp(s_ij - lse_i); rows with lse = -inf get weight 0;
// a NaN statistic or logit gives NaN).
// Range r of S writes its partial sums into slice r of the workspace [S, rows, d];
// row_epilogue_kernel adds the S slices in order. The dq grid also sums, when b.rowdot is
// set, rowdot[r][i] = sum_j x_ij <q_i, k_j> (fp32 products of the unrounded weights and the
// raw dot products; dscale = their fixed-order sum). The dk grid runs without v (b.v null,
// no second product) when only the Reduction's dbias partials are wanted (kBiasGrad).
template <class Tag, class Reduction, bool kKeys>
CK_DEVICE void backward_tiles(const KernelProblem& p, const BackwardBuffers& b) {
  using S = typename Tag::S;
  using Acc = typename Tag::Acc;
  const Smem<Tag> sm = Smem<Tag>::carve();
  const Acc* rq = static_cast<const Acc*>(b.rq);
  const Acc* rk = static_cast<const Acc*>(b.rk);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int64_t own0 = int64_t(blockIdx.x) * 64;
  const int64_t own_count = kKeys ? p.m : p.n, other_count = kKeys ? p.n : p.m;
  const int64_t splits = kKeys ? b.v_splits : b.u_splits, split = blockIdx.y;
  const int64_t per_split = ((other_count + 63) / 64 + splits - 1) / splits * 64;
  const int64_t begin = split * per_split;
  const int64_t end = other_count < begin + per_split ? other_count : begin + per_split;
  Acc* const base = static_cast<Acc*>(kKeys ? b.v : b.u);
  Acc* const out = base == nullptr ? nullptr : base + split * own_count * p.d;
  const Acc scale = *static_cast<const Acc*>(p.scale);
  const S* other = static_cast<const S*>(kKeys ? p.q : p.k);
  const int64_t o_s0 = kKeys ? p.q_s0 : p.k_s0, o_s1 = kKeys ? p.q_s1 : p.k_s1;
  const bool o_vec = kKeys ? p.q_vec : p.k_vec;
  // The weights (reductions.cuh) and the own rows' factor. On tensor cores (bf16 / fp16,
  // fp32 with tf32) the own factor multiplies the fp32 products instead of the weights,
  // which are rounded to the operand type: only what varies along the reduction is rounded.
  typename Reduction::template Backward<Tag, kKeys> weights(p, b, own0);
  const Acc f_own[2] = {weights.own_factor(0), weights.own_factor(1)};
  Acc ds[2] = {0, 0};
  const bool want_ds = !kKeys && b.rowdot != nullptr;
  // fp32 with tf32 allowed: the second product on tf32 tensor cores too
  const bool tf32 = std::is_same_v<Tag, TagF32> && p.tf32;
  // the row factors multiply the products (tensor cores) or the weights (FMA)
  const bool row_factor_on_products = Tag::kMma || tf32;
  for (int64_t other0 = begin; other0 < end; other0 += 64) {
    const int64_t row0 = kKeys ? other0 : own0, col0 = kKeys ? own0 : other0;
    Acc s[8][4];
    logits_tile<Tag, kKeys, Reduction::kSigned>(
        p, sm, rq, rk, scale, row0, col0, s,
        [&](int h, int64_t row, int64_t col, Acc dot, Acc logit, bool marked) {
          if (logit == neg_inf<Acc>() || col >= p.m) return Acc(0);
          const Acc w = weights.weight(h, row, col, logit, marked);
          if (want_ds) ds[h] = ck_fma(w, dot, ds[h]);
          return row_factor_on_products ? w : f_own[h] * w;
        });
    if (out == nullptr) continue;  // dbias only (uniform over the block)
    // the other side's chunks into the K stage buffers (Q's, for the key grid)
    const auto stage = [&](int i, int64_t k0) {
      stage_chunk<Tag>(sm.k_stage(i), other, other0, other_count, o_s0, o_s1, k0, p.d, o_vec);
    };
    if constexpr (Tag::kMma) {
      uint32_t a[4][4];
      float mult[2];
      const float ones[2] = {1.f, 1.f};
      weight_fragments<Tag>(s, a, mult, a);
      mult[0] *= f_own[0];
      mult[1] *= f_own[1];
      pipelined_chunks<Tag>(p.d, stage, [&](int i, int64_t k0) {
        mma_chunk_update<Tag, false>(out, own_count, p.d, own0, k0, a, a, sm.k_stage(i), ones,
                                     mult);
      });
    } else {
      if constexpr (std::is_same_v<Tag, TagF32>) {
        if (tf32) {
          uint32_t a[8][4];
          tf32_weight_fragments(s, a);
          const float ones[2] = {1.f, 1.f};
          pipelined_chunks<Tag>(p.d, stage, [&](int i, int64_t k0) {
            tf32_chunk_update<Tag, false>(out, own_count, p.d, own0, k0, a, sm.k_stage(i), ones,
                                          f_own);
          });
          continue;
        }
      }
      store_weights<Tag>(sm, s);
      pipelined_chunks<Tag>(p.d, stage, [&](int i, int64_t k0) {
        chunk_update<Tag>(out, own_count, p.d, own0, k0, sm.ps, sm.k_stage(i), nullptr);
      });
    }
  }
  if constexpr (Reduction::kBiasGrad) weights.finish(p, b, own0, split);
  if (want_ds) {
CK_UNROLL
    for (int h = 0; h < 2; ++h) {
      const Acc v = f_own[h] * quad_sum(ds[h]);
      const int64_t row = own0 + warp * 16 + g + 8 * h;
      if (t == 0 && row < p.n) static_cast<Acc*>(b.rowdot)[split * p.n + row] = v;
    }
  }
}

// Backward, row grid: u~_i = sum_j x_ij k_j for the rows blockIdx.x * 64 ..
template <class Tag>
CK_GLOBAL void CK_LAUNCH_BOUNDS(kThreads) lse_backward_rows_kernel(KernelProblem p, BackwardBuffers b) {
  backward_tiles<Tag, LseRows, false>(p, b);
}

// Backward, key grid: v~_j = sum_i x_ij q_i for the keys blockIdx.x * 64 .., recomputing
// the same tiles transposed (rows in the same order for every key block: deterministic).
template <class Tag>
CK_GLOBAL void CK_LAUNCH_BOUNDS(kThreads) lse_backward_keys_kernel(KernelProblem p, BackwardBuffers b) {
  backward_tiles<Tag, LseRows, true>(p, b);
}

// two_sided_lse, row grid: u~_i = sum_j x_ij k_j with the two-sided weights, x_ij =
// rq_i rk_j (g_i exp(s_ij - row_lse_i) + h_j exp(s_ij - col_lse_j)).
template <class Tag>
CK_GLOBAL void CK_LAUNCH_BOUNDS(kThreads)
    two_sided_backward_rows_kernel(KernelProblem p, BackwardBuffers b) {
  backward_tiles<Tag, LseRowsCols, false>(p, b);
}

// two_sided_lse, key grid: v~_j = sum_i x_ij q_i, the same weights on the transposed tiles.
template <class Tag>
CK_GLOBAL void CK_LAUNCH_BOUNDS(kThreads)
    two_sided_backward_keys_kernel(KernelProblem p, BackwardBuffers b) {
  backward_tiles<Tag, LseRowsCols, true>(p, b);
}

// pairwise_sigmoid, row grid: u~_i = sum_j x_ij k_j, x_ij = rq_i rk_j (-z_ij) sigmoid(x_ij) g_i.
template <class Tag>
CK_GLOBAL void CK_LAUNCH_BOUNDS(kThreads)
    sigmoid_backward_rows_kernel(KernelProblem p, BackwardBuffers b) {
  backward_tiles<Tag, SigmoidRows, false>(p, b);
}

// pairwise_sigmoid, key grid: v~_j = sum_i x_ij q_i on the transposed tiles, and the dbias
// partials of the row range.
template <class Tag>
CK_GLOBAL void CK_LAUNCH_BOUNDS(kThreads)
    sigmoid_backward_keys_kernel(KernelProblem p, BackwardBuffers b) {
  backward_tiles<Tag, SigmoidRows, true>(p, b);
}

// Per-row epilogue, one warp per row: dx_i = scale (w_i - c_i x_i) with
// c_i = [normalize, ||x_i|| >= eps] r_i^2 <x_i, w_i>, where w_i = sum_s w[s][i] over the
// parts of a split grid, added in slice order (deterministic).
template <class Tag>
CK_GLOBAL void CK_LAUNCH_BOUNDS(kThreads)
    row_epilogue_kernel(const typename Tag::S* x, int64_t rows, int64_t d, int64_t s0, int64_t s1,
                        const typename Tag::Acc* r, const typename Tag::Acc* w, int64_t parts,
                        const typename Tag::Acc* scale_ptr, bool normalize, double eps,
                        typename Tag::S* dx) {
  using Acc = typename Tag::Acc;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // whole warps leave together
  const int64_t part_stride = rows * d;
  auto wsum = [&](int64_t c) {
    Acc v = w[row * d + c];
    for (int64_t s = 1; s < parts; ++s) v += w[s * part_stride + row * d + c];
    return v;
  };
  Acc dot = 0;
  for (int64_t c = lane; c < d; c += 32)
    dot = ck_fma(to_acc<Tag>(x[row * s0 + c * s1]), wsum(c), dot);
CK_UNROLL
  for (int m = 16; m > 0; m /= 2) dot += ck_shfl_xor(dot, m);  // butterfly: every lane
  const Acc ri = r[row], scale = *scale_ptr;
  // the norm as the inverse norms took it (scaled: a plain sum of squares underflows for
  // tiny rows and would pick the Jacobian's branch wrongly for a small eps)
  const bool jacobian =
      normalize && scaled_row_norm<Tag>(x, row, d, s0, s1, lane) >= Acc(eps);
  const Acc coef = jacobian ? ri * (ri * dot) : Acc(0);  // r^2 alone underflows for huge rows
  for (int64_t c = lane; c < d; c += 32) {
    const Acc xv = to_acc<Tag>(x[row * s0 + c * s1]);
    dx[row * d + c] = from_acc<Tag>(scale * (wsum(c) - coef * xv));
  }
}

// out = sum of x[0 .. n), by one warp in a fixed order (deterministic).
template <class Acc>
CK_GLOBAL void CK_LAUNCH_BOUNDS(32) fixed_order_sum_kernel(const Acc* x, int64_t n, Acc* out) {
  const int lane = threadIdx.x % 32;
  Acc sum = 0;
  for (int64_t i = lane; i < n; i += 32) sum += x[i];
CK_UNROLL
  for (int m = 16; m > 0; m /= 2) sum += ck_shfl_xor(sum, m);
  if (lane == 0) *out = sum;
}

}  // namespace CK_KERNEL_NAMESPACE
}  // namespace ck
