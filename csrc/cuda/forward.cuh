// The forward tile loop, templated on the reduction (reductions.cuh), its kernels (lse,
// two_sided_lse, pairwise_sigmoid) and the fixed-order merges of split partials.
#pragma once

#include "cuda/reductions.cuh"
#include "cuda/score_tile.cuh"
#include "cuda/second_products.cuh"

namespace ck {
namespace CK_KERNEL_NAMESPACE {

// The forward's tile loop for rows blockIdx.x * 64 .., online over the key tiles of range
// blockIdx.y: the row statistics (lse or row_loss, or the range's partials), what else the
// Reduction keeps of each tile (LseRowsCols: the column partials), and o = P K^ when kO.
template <class Tag, class Reduction, bool kO>
CK_DEVICE void forward_tiles(const KernelProblem& p, const ForwardBuffers& b) {
  static_assert(!(kO && Reduction::kCols), "o uses the shared memory of the column partials");
  using S = typename Tag::S;
  using Acc = typename Tag::Acc;
  const Smem<Tag> sm = Smem<Tag>::carve();
  const Acc* rq = static_cast<const Acc*>(b.rq);
  const Acc* rk = static_cast<const Acc*>(b.rk);
  const int64_t row0 = int64_t(blockIdx.x) * kBM;
  // this block's key range: split blockIdx.y of b.splits, whole key tiles
  const int64_t split = blockIdx.y;
  const int64_t per_split = ((p.m + kBN - 1) / kBN + b.splits - 1) / b.splits * kBN;
  const int64_t col_begin = split * per_split;
  const int64_t col_end = p.m < col_begin + per_split ? p.m : col_begin + per_split;
  const bool partial = b.splits > 1;
  Acc* o = nullptr;
  if constexpr (kO) o = static_cast<Acc*>(partial ? b.part_o : b.o) + (partial ? split * p.n * p.d : 0);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const Acc scale = *static_cast<const Acc*>(p.scale);
  typename Reduction::template Forward<Tag> red;
  const auto& rows = red.rows;
  for (int64_t col0 = col_begin; col0 < col_end; col0 += kBN) {
    Acc s[8][4];
    logits_tile<Tag, false, Reduction::kSigned>(p, sm, rq, rk, scale, row0, col0, s);
    Acc alpha[2];
    red.update(p, b, sm, col0, s, alpha, [&](int h, Acc a) {
      if (kO && !Tag::kMma && t == 0) sm.rowv[warp * 16 + g + 8 * h] = a;
    });
    if constexpr (kO) {
      // o_i = alpha_i o_i + sum_j p_ij rk_j k_j
      const auto stage = [&](int i, int64_t k0) {
        stage_chunk<Tag>(sm.k_stage(i), static_cast<const S*>(p.k), col0, p.m, p.k_s0, p.k_s1,
                         k0, p.d, p.k_vec);
      };
      if constexpr (Tag::kMma) {
        // bf16 / fp16: the weights p_ij rk_j stay in registers as mma A fragments
CK_UNROLL
        for (int nt = 0; nt < 8; ++nt)
CK_UNROLL
          for (int e2 = 0; e2 < 2; ++e2) {
            const int64_t col = col0 + 8 * nt + 2 * t + e2;
            const Acc rkc = col < p.m ? rk[col] : Acc(0);
            s[nt][e2] *= rkc;
            s[nt][2 + e2] *= rkc;
          }
        // bf16: two terms (rounded weights and their rounding residue); o is an output of
        // its own, not a gradient, and p_ij rk_j rounded to 8 bits would cost o ~2^-9
        constexpr bool kLo = Tag::kBF16;
        uint32_t a[4][4], lo[4][4];
        float mult[2];
        weight_fragments<Tag, kLo>(s, a, mult, lo);
        pipelined_chunks<Tag>(p.d, stage, [&](int i, int64_t k0) {
          mma_chunk_update<Tag, true, kLo>(o, p.n, p.d, row0, k0, a, lo, sm.k_stage(i), alpha,
                                           mult);
        });
      } else {
        if constexpr (std::is_same_v<Tag, TagF32>) {
          if (p.tf32) {  // fp32 with tf32 allowed: weights in registers, m16n8k8 tf32
CK_UNROLL
            for (int nt = 0; nt < 8; ++nt)
CK_UNROLL
              for (int e2 = 0; e2 < 2; ++e2) {
                const int64_t col = col0 + 8 * nt + 2 * t + e2;
                const Acc rkc = col < p.m ? rk[col] : Acc(0);
                s[nt][e2] *= rkc;
                s[nt][2 + e2] *= rkc;
              }
            uint32_t a[8][4];
            tf32_weight_fragments(s, a);
            const float ones[2] = {1.f, 1.f};
            pipelined_chunks<Tag>(p.d, stage, [&](int i, int64_t k0) {
              tf32_chunk_update<Tag, true>(o, p.n, p.d, row0, k0, a, sm.k_stage(i), alpha, ones);
            });
            continue;
          }
        }
        // fp32 / fp64: the tile's weights through shared memory, FMA (p first, then times
        // rk_j in a second pass: fewer registers live per thread)
        store_weights<Tag>(sm, s);
        CK_SYNC();
        for (int idx = threadIdx.x; idx < kBM * kBN; idx += kThreads) {
          const int r = idx / kBN, j = idx % kBN;
          const int64_t col = col0 + j;
          sm.ps[r * kLdp + j] = col < p.m ? sm.ps[r * kLdp + j] * rk[col] : Acc(0);
        }
        pipelined_chunks<Tag>(p.d, stage, [&](int i, int64_t k0) {
          chunk_update<Tag>(o, p.n, p.d, row0, k0, sm.ps, sm.k_stage(i), sm.rowv);
        });
      }
    }
  }
  if (partial) {  // merge_splits_kernel (sum_splits_kernel) finishes lse and o (row_loss)
CK_UNROLL
    for (int h = 0; h < 2; ++h) {
      const int64_t row = row0 + warp * 16 + g + 8 * h;
      if (t == 0 && row < p.n) rows.store_partial(b, split, p.n, row, h);
    }
    return;
  }
  Acc* lse = static_cast<Acc*>(b.lse);
CK_UNROLL
  for (int h = 0; h < 2; ++h) {
    const int64_t row = row0 + warp * 16 + g + 8 * h;
    const Acc l = rows.l[h];
    if (t == 0 && row < p.n) lse[row] = rows.result(h);
    if (kO && t == 0) sm.rowv[warp * 16 + g + 8 * h] = l == Acc(0) ? Acc(0) : Acc(1) / l;
  }
  if constexpr (kO) {
    CK_SYNC();
    for (int64_t idx = threadIdx.x; idx < int64_t(kBM) * p.d; idx += kThreads) {
      const int r = int(idx / p.d);
      const int64_t row = row0 + r, c = idx % p.d;
      if (row < p.n) o[row * p.d + c] *= sm.rowv[r];
    }
  }
}

// Forward of lse: lse (and o when kO) of rows blockIdx.x * 64 ..
template <class Tag, bool kO>
CK_GLOBAL void CK_LAUNCH_BOUNDS(kThreads)
    lse_forward_kernel(KernelProblem p, ForwardBuffers b) {
  forward_tiles<Tag, LseRows, kO>(p, b);
}

// Forward of two_sided_lse, one sweep: row_lse of rows blockIdx.x * 64 .. (or the key
// range's partials) and, for every key of the range, the partial (max, sum) of those 64
// rows; merge_splits_kernel reduces the row blocks per key in block order.
template <class Tag>
CK_GLOBAL void CK_LAUNCH_BOUNDS(kThreads)
    two_sided_forward_kernel(KernelProblem p, ForwardBuffers b) {
  forward_tiles<Tag, LseRowsCols, false>(p, b);
}

// Forward of pairwise_sigmoid: row_loss of rows blockIdx.x * 64 .. (or the key range's
// partial sums; sum_splits_kernel adds them in range order).
template <class Tag>
CK_GLOBAL void CK_LAUNCH_BOUNDS(kThreads)
    sigmoid_forward_kernel(KernelProblem p, ForwardBuffers b) {
  forward_tiles<Tag, SigmoidRows, false>(p, b);
}

// out_i = sum_s part[s][i] over the splits in order (deterministic): the row_loss partials of
// the key ranges, and the dbias partials of the key grid's row ranges. A thread per element.
template <class Acc>
CK_GLOBAL void CK_LAUNCH_BOUNDS(kThreads)
    sum_splits_kernel(int64_t n, int64_t splits, const Acc* part, Acc* out) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= n) return;
  Acc sum = part[i];
  for (int64_t s = 1; s < splits; ++s) sum += part[s * n + i];
  out[i] = sum;
}

// Merges the partial (max, sum, o) of the key ranges per row, in range order (fixed), or
// (two_sided_lse) the row blocks' partials per column:
// lse = P + log(sum_s l_s e^{p_s - P}), o = sum_s o_s e^{p_s - P} / l. One warp per row.
template <class Acc>
CK_GLOBAL void CK_LAUNCH_BOUNDS(kThreads)
    merge_splits_kernel(int64_t n, int64_t d, int64_t splits, const Acc* part_m,
                        const Acc* part_l, const Acc* part_o, Acc* lse, Acc* o) {
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= n) return;  // whole warps leave together
  Acc m = neg_inf<Acc>();
  for (int64_t s = 0; s < splits; ++s) m = fmax_nan_skip(m, part_m[s * n + row]);
  const Acc piv = ck_isfinite(m) ? m : Acc(0);
  auto factor = [&](int64_t s) {
    const Acc ms = part_m[s * n + row];
    return ms == neg_inf<Acc>() ? Acc(0) : ck_exp((ck_isfinite(ms) ? ms : Acc(0)) - piv);
  };
  Acc l = 0;
  for (int64_t s = 0; s < splits; ++s) l += part_l[s * n + row] * factor(s);
  if (lane == 0) lse[row] = l == Acc(0) ? neg_inf<Acc>() : piv + ck_log(l);
  if (o == nullptr) return;
  const Acc inv = l == Acc(0) ? Acc(0) : Acc(1) / l;
  for (int64_t c = lane; c < d; c += 32) {
    Acc acc = 0;
    for (int64_t s = 0; s < splits; ++s) acc += part_o[(s * n + row) * d + c] * factor(s);
    o[row * d + c] = acc * inv;
  }
}

}  // namespace CK_KERNEL_NAMESPACE
}  // namespace ck
