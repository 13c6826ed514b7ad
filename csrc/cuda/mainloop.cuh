// The main loop over the feature dimension: chunks of d staged into shared memory through
// a two-stage cp.async pipeline, and the chunk's contribution to the logits tile in the
// mma.sync accumulator layout (lse_kernels.cuh describes the layout).
#pragma once

#include "cuda/tile_traits.cuh"

namespace ck {
namespace CK_KERNEL_NAMESPACE {

// The chunks k0 = 0, kBK, .. of d through a two-stage cp.async pipeline: stage(i, k0)
// issues the copies of a chunk into stage buffer i, use(i, k0) consumes it; the copies of
// chunk c + 1 are in flight while chunk c is used. Every thread runs it (it syncs).
template <class Tag, class Stage, class Use>
CK_DEVICE void pipelined_chunks(int64_t d, Stage stage, Use use) {
  const int64_t chunks = (d + Tag::kBK - 1) / Tag::kBK;
  if (chunks == 0) return;
  stage(0, int64_t(0));
  ck_cp_async_commit();
  for (int64_t c = 0; c < chunks; ++c) {
    const int buf = int(c & 1);
    if (c + 1 < chunks) {
      stage(buf ^ 1, (c + 1) * Tag::kBK);  // its buffer was last read before the sync below
      ck_cp_async_commit();
      ck_cp_async_wait<1>();
    } else {
      ck_cp_async_wait<0>();
    }
    CK_SYNC();
    use(buf, c * Tag::kBK);
    CK_SYNC();
  }
}

// Rows row0 .. row0 + 63, features k0 .. k0 + kBK - 1 of x [rows, d] into dst [64][lds],
// zero outside the matrix. cp.async 16 bytes at a time when vec (the caller commits and
// waits: pipelined_chunks), else element by element.
template <class Tag>
CK_DEVICE void stage_chunk(typename Tag::S* dst, const typename Tag::S* x, int64_t row0,
                           int64_t rows, int64_t s0, int64_t s1, int64_t k0, int64_t d, bool vec) {
  using S = typename Tag::S;
  constexpr int BK = Tag::kBK, LDS = kLds<Tag>, E = 16 / int(sizeof(S)), CH = BK / E;
  const int tid = threadIdx.x;
  if (vec) {
    for (int idx = tid; idx < 64 * CH; idx += kThreads) {
      const int r = idx / CH, c = (idx % CH) * E;
      const int64_t gr = row0 + r, gc = k0 + c;
      S* out = dst + r * LDS + c;
      if (gr < rows && gc < d) {
        const int64_t avail = d - gc;
        const int bytes = int(avail >= E ? E : avail) * int(sizeof(S));
        ck_cp_async_16(out, x + gr * s0 + gc, bytes);
      } else {
        for (int e = 0; e < E; ++e) out[e] = S(0);
      }
    }
  } else {
    for (int idx = tid; idx < 64 * BK; idx += kThreads) {
      const int r = idx / BK, c = idx % BK;
      const int64_t gr = row0 + r, gc = k0 + c;
      dst[r * LDS + c] = (gr < rows && gc < d) ? x[gr * s0 + gc * s1] : S(0);
    }
  }
}

// acc += Qs Ks^T for the staged chunk, in the accumulator layout described above.
// tf32 (fp32 inputs, p.tf32): mma.sync.m16n8k8 on operands rounded by cvt.rna.tf32.f32,
// read from the staged chunks with plain 32-bit loads (fragment rows g at a stride of
// kBK + 4 words: the 32 lanes of a fragment load hit 32 different banks).
template <class Tag>
CK_DEVICE void chunk_product(const typename Tag::S* qs, const typename Tag::S* ks,
                             typename Tag::Acc (&acc)[8][4], bool tf32 = false) {
  constexpr int LDS = kLds<Tag>;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if constexpr (Tag::kMma) {
CK_UNROLL
    for (int kk = 0; kk < Tag::kBK; kk += 16) {
      uint32_t a[4];
      ck_ldmatrix_x4(a, qs + (warp * 16 + lane % 16) * LDS + kk + (lane / 16) * 8);
CK_UNROLL
      for (int np = 0; np < kBN / 16; ++np) {
        uint32_t b4[4];
        ck_ldmatrix_x4(b4, ks + (np * 16 + lane % 8 + 8 * (lane / 16)) * LDS + kk +
                               ((lane / 8) % 2) * 8);
        const uint32_t b0[2] = {b4[0], b4[1]}, b1[2] = {b4[2], b4[3]};
        ck_mma_m16n8k16<Tag::kBF16>(acc[2 * np], a, b0, acc[2 * np]);
        ck_mma_m16n8k16<Tag::kBF16>(acc[2 * np + 1], a, b1, acc[2 * np + 1]);
      }
    }
  } else {
    using Acc = typename Tag::Acc;
    const int g = lane / 4, t = lane % 4;
    const int r0 = warp * 16 + g;
    if constexpr (std::is_same_v<Tag, TagF32>) {
      if (tf32) {
CK_UNROLL
        for (int kk = 0; kk < Tag::kBK; kk += 8) {
          const uint32_t a[4] = {ck_cvt_tf32(qs[r0 * LDS + kk + t]),
                                 ck_cvt_tf32(qs[(r0 + 8) * LDS + kk + t]),
                                 ck_cvt_tf32(qs[r0 * LDS + kk + t + 4]),
                                 ck_cvt_tf32(qs[(r0 + 8) * LDS + kk + t + 4])};
CK_UNROLL
          for (int nt = 0; nt < 8; ++nt) {
            const uint32_t b[2] = {ck_cvt_tf32(ks[(8 * nt + g) * LDS + kk + t]),
                                   ck_cvt_tf32(ks[(8 * nt + g) * LDS + kk + t + 4])};
            ck_mma_m16n8k8_tf32(acc[nt], a, b, acc[nt]);
          }
        }
        return;
      }
    }
    auto step = [&](int kk) {
      const Acc qa = qs[r0 * LDS + kk], qb = qs[(r0 + 8) * LDS + kk];
CK_UNROLL
      for (int nt = 0; nt < 8; ++nt) {
        const Acc k0 = ks[(8 * nt + 2 * t) * LDS + kk], k1 = ks[(8 * nt + 2 * t + 1) * LDS + kk];
        acc[nt][0] = ck_fma(qa, k0, acc[nt][0]);
        acc[nt][1] = ck_fma(qa, k1, acc[nt][1]);
        acc[nt][2] = ck_fma(qb, k0, acc[nt][2]);
        acc[nt][3] = ck_fma(qb, k1, acc[nt][3]);
      }
    };
    if constexpr (sizeof(Acc) == 8) {  // 64 accumulator registers already: no unrolling
CK_UNROLL_N(1)
      for (int kk = 0; kk < Tag::kBK; ++kk) step(kk);
    } else {
CK_UNROLL_N(4)
      for (int kk = 0; kk < Tag::kBK; ++kk) step(kk);
    }
  }
}

}  // namespace CK_KERNEL_NAMESPACE
}  // namespace ck
