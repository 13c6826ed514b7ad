// The second products of a weight tile W (in registers or shared memory) with a staged
// chunk X of the other side: out[r][k0 + c] (+)= sum_j W[r][j] X[j][c], on tensor cores
// (bf16 / fp16; fp32 under tf32) or by FMA (fp32 "highest", fp64). lse_kernels.cuh has the
// rules of what is rounded where.
#pragma once

#include "cuda/tile_traits.cuh"

namespace ck {
namespace CK_KERNEL_NAMESPACE {

// out[r][c0 + c] (+)= sum_j W[r][j] X[j][c] for the 64 x kBK outputs of one staged chunk,
// with FMA (fp32 / fp64): W the weight tile in shared memory (row stride kLdp), X the staged
// chunk. out rows (row0 + r) own their memory in this block; beta scales the old value per row.
template <class Tag>
CK_DEVICE void chunk_update(typename Tag::Acc* out, int64_t out_rows, int64_t d, int64_t row0,
                            int64_t k0, const typename Tag::Acc* w, const typename Tag::S* x,
                            const typename Tag::Acc* beta) {
  using Acc = typename Tag::Acc;
  constexpr int BK = Tag::kBK, LDS = kLds<Tag>;
  for (int idx = threadIdx.x; idx < 64 * BK; idx += kThreads) {
    const int r = idx / BK, c = idx % BK;
    const int64_t row = row0 + r, col = k0 + c;
    if (row >= out_rows || col >= d) continue;
    Acc sum = 0;
CK_UNROLL_N(4)
    for (int j = 0; j < 64; ++j) sum = ck_fma(w[r * kLdp + j], to_acc<Tag>(x[j * LDS + c]), sum);
    Acc* o = out + row * d + col;
    *o = (beta != nullptr ? *o * beta[r] : *o) + sum;
  }
}

// The tile (weights or probabilities) into shared memory, row-major [64][kLdp].
template <class Tag>
CK_DEVICE void store_weights(const Smem<Tag>& sm, const typename Tag::Acc (&s)[8][4]) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
CK_UNROLL
  for (int h = 0; h < 2; ++h)
CK_UNROLL
    for (int nt = 0; nt < 8; ++nt)
CK_UNROLL
      for (int e2 = 0; e2 < 2; ++e2)
        sm.ps[(warp * 16 + g + 8 * h) * kLdp + 8 * nt + 2 * t + e2] = s[nt][2 * h + e2];
}

// The weight tile s (accumulator layout: rows warp * 16 + g (+ 8), keys 8 nt + 2 t (+ 1))
// as the A fragments of mma.sync.m16n8k16 for its 64 keys, 4 steps of 16: the accumulator
// layout of two adjacent 8-key sub-tiles is the A layout of one 16-key step (a0 / a1: rows
// g / g + 8, keys 2t, 2t + 1; a2 / a3: keys 2t + 8, 2t + 9), so the weights never leave
// registers. Rounded to the input dtype. fp16: each row is first multiplied by the inverse
// of its largest |weight| in the tile (mult returns that largest weight, to undo on the
// fp32 products): the weights are probabilities times inverse norms (and g), which can
// exceed 65504 or sink into fp16 subnormals; scaled, they are at most 1 in magnitude.
// bf16 has the range of fp32: mult = 1. kLo (bf16 o): lo gets the rounding residue
// w - bf16(w), rounded to bf16 again, a second A operand: w is then carried to ~16 bits.
template <class Tag, bool kLo = false>
CK_DEVICE void weight_fragments(const float (&s)[8][4], uint32_t (&a)[4][4], float (&mult)[2],
                                uint32_t (&lo)[4][4]) {
  float inv[2] = {1.f, 1.f};
  mult[0] = mult[1] = 1.f;
  if constexpr (!Tag::kBF16) {
CK_UNROLL
    for (int h = 0; h < 2; ++h) {
      float mx = 0.f;
CK_UNROLL
      for (int nt = 0; nt < 8; ++nt)
CK_UNROLL
        for (int e2 = 0; e2 < 2; ++e2) {
          const float v = s[nt][2 * h + e2];
          mx = fmax_nan_skip(mx, v < 0.f ? -v : v);
        }
      mx = quad_max(mx);
      const bool use = mx > 0.f && ck_isfinite(mx);
      mult[h] = use ? mx : 1.f;
      inv[h] = use ? 1.f / mx : 1.f;
    }
  }
  auto pack = [](float x0, float x1) {
    return uint32_t(from_acc<Tag>(x0)) | (uint32_t(from_acc<Tag>(x1)) << 16);
  };
  auto residue = [](float x0, float x1) {
    return uint32_t(from_acc<Tag>(x0 - to_acc<Tag>(from_acc<Tag>(x0)))) |
           (uint32_t(from_acc<Tag>(x1 - to_acc<Tag>(from_acc<Tag>(x1)))) << 16);
  };
CK_UNROLL
  for (int kk = 0; kk < 4; ++kk)
CK_UNROLL
    for (int h = 0; h < 2; ++h)
CK_UNROLL
      for (int half = 0; half < 2; ++half) {
        const float x0 = s[2 * kk + half][2 * h] * inv[h], x1 = s[2 * kk + half][2 * h + 1] * inv[h];
        a[kk][2 * half + h] = pack(x0, x1);
        if constexpr (kLo) lo[kk][2 * half + h] = residue(x0, x1);
      }
}

// fp32 weights for mma.sync.m16n8k8 tf32, one 8-key step per sub-tile nt. The reduction
// order inside a step is free as long as A and B agree: A column t holds key 2t, column
// t + 4 key 2t + 1, so a0..a3 = s[nt][0], s[nt][2], s[nt][1], s[nt][3] with no shuffle,
// and B row t (t + 4) is read from key 2t (2t + 1). tf32 has fp32's range: no scaling.
CK_DEVICE void tf32_weight_fragments(const float (&s)[8][4], uint32_t (&a)[8][4]) {
CK_UNROLL
  for (int nt = 0; nt < 8; ++nt) {
    a[nt][0] = ck_cvt_tf32(s[nt][0]);
    a[nt][1] = ck_cvt_tf32(s[nt][2]);
    a[nt][2] = ck_cvt_tf32(s[nt][1]);
    a[nt][3] = ck_cvt_tf32(s[nt][3]);
  }
}

// The fp32 products of one chunk added to the block's buffer: out[r][k0 + c] = beta_r
// out[r][k0 + c] + mult_r acc (the warp's 16 rows, lane (g, t): rows g, g + 8, columns
// 8 nt + 2t, + 1).
template <class Tag, bool kBeta, int NT>
CK_DEVICE void add_chunk_products(float* out, int64_t out_rows, int64_t d, int64_t row0,
                                  int64_t k0, const float (&acc)[NT][4], const float (&beta)[2],
                                  const float (&mult)[2]) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
CK_UNROLL
  for (int h = 0; h < 2; ++h) {
    const int64_t row = row0 + warp * 16 + g + 8 * h;
    if (row >= out_rows) continue;
    float* o = out + row * d;
CK_UNROLL
    for (int nt = 0; nt < NT; ++nt)
CK_UNROLL
      for (int e2 = 0; e2 < 2; ++e2) {
        const int64_t col = k0 + 8 * nt + 2 * t + e2;
        if (col >= d) continue;
        const float prod = acc[nt][2 * h + e2] * mult[h];
        o[col] = kBeta ? ck_fma(o[col], beta[h], prod) : o[col] + prod;
      }
  }
}

// The second product on tf32 tensor cores (fp32 inputs, p.tf32): the weights of
// tf32_weight_fragments times the staged fp32 chunk x [64 keys][kLds], B fragments by
// plain 32-bit loads (b0: key 8 nt + 2t, b1: key 8 nt + 2t + 1, feature 8 f + g; rows
// 2t apart at a stride of kBK + 4 words: 32 different banks).
template <class Tag, bool kBeta>
CK_DEVICE void tf32_chunk_update(float* out, int64_t out_rows, int64_t d, int64_t row0,
                                 int64_t k0, const uint32_t (&a)[8][4], const float* x,
                                 const float (&beta)[2], const float (&mult)[2]) {
  constexpr int LDS = kLds<Tag>, NT = Tag::kBK / 8;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  float acc[NT][4];
CK_UNROLL
  for (int f = 0; f < NT; ++f)
CK_UNROLL
    for (int e = 0; e < 4; ++e) acc[f][e] = 0.f;
CK_UNROLL  // fully: a[nt] must stay in registers
  for (int nt = 0; nt < 8; ++nt)
CK_UNROLL
    for (int f = 0; f < NT; ++f) {
      const uint32_t b[2] = {ck_cvt_tf32(x[(8 * nt + 2 * t) * LDS + 8 * f + g]),
                             ck_cvt_tf32(x[(8 * nt + 2 * t + 1) * LDS + 8 * f + g])};
      ck_mma_m16n8k8_tf32(acc[f], a[nt], b, acc[f]);
    }
  add_chunk_products<Tag, kBeta, NT>(out, out_rows, d, row0, k0, acc, beta, mult);
}

// The second product on tensor cores (bf16 / fp16): for the warp's 16 rows and the kBK
// columns of one staged chunk, out[r][k0 + c] = beta_r out[r][k0 + c] + mult_r
// sum_j W[r][j] X[j][c], W the weight fragments of weight_fragments, X the staged chunk
// [64 keys][kLds] (the B operand, k-major over the keys: ldmatrix.x4.trans gives the
// fragments of two 8-column tiles for one 16-key step), fp32 accumulation in registers.
// The products of one tile start from zero and are added to the fp32 buffer (global memory
// the block owns exclusively; each element belongs to one lane) after the 64 keys.
template <class Tag, bool kBeta, bool kLo = false>
CK_DEVICE void mma_chunk_update(float* out, int64_t out_rows, int64_t d, int64_t row0,
                                int64_t k0, const uint32_t (&a)[4][4], const uint32_t (&lo)[4][4],
                                const typename Tag::S* x, const float (&beta)[2],
                                const float (&mult)[2]) {
  constexpr int LDS = kLds<Tag>, NT = Tag::kBK / 8;
  const int lane = threadIdx.x % 32;
  float acc[NT][4];
CK_UNROLL
  for (int nt = 0; nt < NT; ++nt)
CK_UNROLL
    for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
  const int mi = lane / 8;  // the 8 x 8 matrix this lane addresses a row of
CK_UNROLL
  for (int kk = 0; kk < 4; ++kk)
CK_UNROLL
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t b4[4];
      ck_ldmatrix_x4_trans(b4, x + (kk * 16 + (mi % 2) * 8 + lane % 8) * LDS + np * 16 +
                                   (mi / 2) * 8);
      const uint32_t b0[2] = {b4[0], b4[1]}, b1[2] = {b4[2], b4[3]};
      if constexpr (kLo) {
        ck_mma_m16n8k16<Tag::kBF16>(acc[2 * np], lo[kk], b0, acc[2 * np]);
        ck_mma_m16n8k16<Tag::kBF16>(acc[2 * np + 1], lo[kk], b1, acc[2 * np + 1]);
      }
      ck_mma_m16n8k16<Tag::kBF16>(acc[2 * np], a[kk], b0, acc[2 * np]);
      ck_mma_m16n8k16<Tag::kBF16>(acc[2 * np + 1], a[kk], b1, acc[2 * np + 1]);
    }
  add_chunk_products<Tag, kBeta, NT>(out, out_rows, d, row0, k0, acc, beta, mult);
}

}  // namespace CK_KERNEL_NAMESPACE
}  // namespace ck
