// The CUDA kernels of the core op (docs/design.md section 1, docs/cuda.md), written
// against device.cuh so that the same source compiles with nvcc (lse_cuda.cu) and with
// the host compiler through the emulation layer (csrc/emulation/lse_emulated.cpp).
//
// The includer defines CK_KERNEL_NAMESPACE (cuda_kernels or emulated_kernels): the two
// instantiations link into one library and must not share a symbol.
//
// Tiles: a block of 128 threads (4 warps) owns kBM = 64 rows; key tiles of kBN = 64;
// the feature dimension streams through shared memory in chunks of kBK (32 for 16- and
// 32-bit inputs, 16 for fp64), loaded with cp.async when rows are 16-byte aligned, two
// stages deep (chunk c + 1 in flight while chunk c is multiplied). The
// logits tile S = Q K^T lives in registers in the m16n8 accumulator layout of mma.sync:
// warp w holds rows 16 w .. 16 w + 15; lane (g = lane / 4, t = lane % 4) holds, for key
// sub-tile nt (8 keys), s[nt] = {S[g][2t], S[g][2t+1], S[g+8][2t], S[g+8][2t+1]}.
//   - bf16 / fp16: ldmatrix.x4 fragments of Q and K, mma.sync.m16n8k16, fp32 accumulate;
//   - fp32: mma.sync.m16n8k8 tf32 (operands rounded by cvt.rna.tf32.f32) when torch's fp32
//     matmul precision is not "highest" (KernelProblem::tf32, set per call by the op
//     wrapper), else FMA (exact IEEE products and sums); fp64: FMA.
// Masks, scale, inverse norms, bias and the online log-sum-exp are applied in registers
// by row and column; row statistics are reduced over the 4 lanes of a quad by shuffles.
//
// The second products o = P K, u = X K (rows own the output) and v = X^T Q (keys own it):
//   - bf16 / fp16: on tensor cores. The weight tile never leaves registers: the
//     accumulator layout of two adjacent 8-key sub-tiles is the A-fragment layout of one
//     16-key step of mma.sync.m16n8k16, so the fp32 weights are rounded to the input dtype
//     and packed in place (weight_fragments; fp16 rows scaled by their largest weight in
//     the tile, the scale undone on the fp32 products; only the factors that vary along the
//     reduction are rounded, the row factors g_i rq_i (dq) and rk_j (dk) multiply the fp32
//     products; bf16 o adds a second A operand, the rounding residue). The B operand, the
//     staged K (Q) chunk [64 keys][kBK], k-major over the keys, comes by ldmatrix.x4.trans.
//     Per chunk of d the 16 x kBK products of a warp start at zero in registers and are
//     added to an fp32 buffer in global memory that the block owns (each element one
//     lane's): d is arbitrary, so a register accumulator over all of d does not fit.
//   - fp32 with tf32 allowed: mma.sync.m16n8k8 tf32, weights from registers too
//     (tf32_weight_fragments: the key order inside an 8-key step is chosen so that the
//     accumulator registers are the A fragment as they are), B by 32-bit shared loads.
//   - fp32 under "highest", fp64: the weight tile through shared memory, FMA in the
//     accumulation type (exact).
// The key grid of the backward computes the transposed tile S^T = K Q^T (logits_tile<kT>),
// so that its own keys are the warps' rows and v = X^T Q has the same shape as u = X K.
//
// Split grids when the own grid is small (forward_key_splits / backward_splits,
// lse_params.h; CONTRASTIVE_KERNELS_CUDA_SPLITS forces a count): grid.y ranges of whole
// tiles of the other side. Forward: partial (max, sum, o) per key range, merged per row in
// range order by merge_splits_kernel. Backward: the dq grid splits the keys, the dk grid the
// rows; range r writes slice r of a zero-filled workspace [S, rows, d] and the per-row
// epilogue adds the S slices in range order (deterministic, bitwise repeatable).
//
// Backward (deterministic, two grids): the dq kernel (row grid) recomputes each tile and
// accumulates u~_i = sum_j x_ij k_j, x_ij = g_i rq_i rk_j exp(s_ij - lse_i); the dk kernel
// (key grid) recomputes the same tiles and accumulates v~_j = sum_i x_ij q_i; a per-row
// epilogue applies scale and the normalization Jacobian,
//     dq_i = scale (u~_i - [normalize, ||q_i|| >= eps] rq_i^2 <q_i, u~_i> q_i),
// and dscale = sum_ij x_ij <q_i, k_j> (= sum_i <q_i, u~_i>), summed by the dq kernel per
// (range, row) from the fp32 weights and the raw dot products of the tile, then by one warp
// in a fixed order.
#pragma once

#include <cstdint>
#include <type_traits>

#include "cuda/device.cuh"
#include "cuda/lse_params.h"

#ifndef CK_KERNEL_NAMESPACE
#error "define CK_KERNEL_NAMESPACE before including lse_kernels.cuh"
#endif

namespace ck {
namespace CK_KERNEL_NAMESPACE {

struct TagF16 {
  using S = uint16_t;
  using Acc = float;
  static constexpr bool kMma = true, kBF16 = false;
  static constexpr int kBK = 32;
};
struct TagBF16 {
  using S = uint16_t;
  using Acc = float;
  static constexpr bool kMma = true, kBF16 = true;
  static constexpr int kBK = 32;
};
struct TagF32 {
  using S = float;
  using Acc = float;
  static constexpr bool kMma = false, kBF16 = false;
  static constexpr int kBK = 32;
};
struct TagF64 {
  using S = double;
  using Acc = double;
  static constexpr bool kMma = false, kBF16 = false;
  static constexpr int kBK = 16;
};

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kBM = 64;
constexpr int kBN = 64;
constexpr int kLdp = kBN + 1;  // row stride of the probability / weight tile
constexpr int kStages = 2;     // cp.async pipeline depth over the chunks of d

// Row stride of a staged chunk: kBK plus 16 bytes, so rows stay 16-byte aligned (cp.async,
// ldmatrix) and consecutive rows start in different banks.
template <class Tag>
inline constexpr int kLds = Tag::kBK + 16 / int(sizeof(typename Tag::S));

template <class Tag>
constexpr int smem_bytes() {
  using S = typename Tag::S;
  using Acc = typename Tag::Acc;
  return kStages * (kBM + kBN) * kLds<Tag> * int(sizeof(S)) + kBM * kLdp * int(sizeof(Acc)) +
         kBM * int(sizeof(Acc));
}

template <class Tag>
CK_DEVICE typename Tag::Acc to_acc(typename Tag::S x) {
  if constexpr (std::is_same_v<Tag, TagF16>) return ck_half_to_float(x);
  else if constexpr (std::is_same_v<Tag, TagBF16>) return ck_bf16_to_float(x);
  else return x;
}

template <class Tag>
CK_DEVICE typename Tag::S from_acc(typename Tag::Acc x) {
  if constexpr (std::is_same_v<Tag, TagF16>) return ck_float_to_half(x);
  else if constexpr (std::is_same_v<Tag, TagBF16>) return ck_float_to_bf16(x);
  else return x;
}

template <class Acc>
CK_DEVICE Acc neg_inf() { return -Acc(INFINITY); }

// The exp of the tile loops: the SFU's approximate exp (ex2.approx, a few ulp) for 16-bit
// inputs, whose own rounding (2^-8 bf16, 2^-11 fp16) dwarfs it; the accurate expf / exp for
// fp32 and fp64, so that their IEEE path on the device is the one the emulation proves (no
// --use_fast_math: csrc/cuda/nvcc_flags.py). The merge of split partials uses ck_exp.
template <class Tag>
CK_DEVICE typename Tag::Acc tile_exp(typename Tag::Acc x) {
  if constexpr (Tag::kMma) return ck_exp_approx(x);
  else return ck_exp(x);
}

template <class Acc>
CK_DEVICE Acc fmax_nan_skip(Acc a, Acc b) {  // fmax: a NaN operand is ignored
  return (a > b || b != b) ? a : b;
}

// Shared memory of the tile kernels: kStages staged chunks of Q and of K, the weight tile,
// a row vector.
template <class Tag>
struct Smem {
  typename Tag::S* qs;  // [kStages][kBM][kLds]
  typename Tag::S* ks;  // [kStages][kBN][kLds]
  typename Tag::Acc* ps;
  typename Tag::Acc* rowv;
  CK_DEVICE typename Tag::S* q_stage(int i) const { return qs + i * kBM * kLds<Tag>; }
  CK_DEVICE typename Tag::S* k_stage(int i) const { return ks + i * kBN * kLds<Tag>; }
  CK_DEVICE static Smem carve() {
    using S = typename Tag::S;
    using Acc = typename Tag::Acc;
    unsigned char* base = ck_dynamic_smem();
    Smem s;
    s.qs = reinterpret_cast<S*>(base);
    s.ks = s.qs + kStages * kBM * kLds<Tag>;
    s.ps = reinterpret_cast<Acc*>(s.ks + kStages * kBN * kLds<Tag>);
    s.rowv = s.ps + kBM * kLdp;
    return s;
  }
};

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

// The logits tile of rows row0.., keys col0..: dot products over every chunk of d, then
// s = dot (scale rq_i) rk_j + bias_j, -inf outside A(i) (and outside the matrix).
// kT: the transposed tile S^T (the warps' rows are the 64 keys, the columns the 64 rows of
// q), for the key grid of the backward, whose second product v = X^T Q then takes its A
// operand from registers like the row grid's. fin(h, row, col, dot, logit) gives the value
// kept (the backward's weights), element by element; h: which of the lane's two rows.
struct KeepLogit {
  template <class Acc>
  CK_DEVICE Acc operator()(int, int64_t, int64_t, Acc, Acc logit) const { return logit; }
};

template <class Tag, bool kT = false, class Fin = KeepLogit>
CK_DEVICE void logits_tile(const KernelProblem& p, const Smem<Tag>& sm, const typename Tag::Acc* rq,
                           const typename Tag::Acc* rk, typename Tag::Acc scale, int64_t row0,
                           int64_t col0, typename Tag::Acc (&s)[8][4], Fin fin = Fin()) {
  using S = typename Tag::S;
  using Acc = typename Tag::Acc;
CK_UNROLL
  for (int nt = 0; nt < 8; ++nt)
CK_UNROLL
    for (int e = 0; e < 4; ++e) s[nt][e] = Acc(0);
  pipelined_chunks<Tag>(
      p.d,
      [&](int i, int64_t k0) {
        stage_chunk<Tag>(sm.q_stage(i), static_cast<const S*>(p.q), row0, p.n, p.q_s0, p.q_s1,
                         k0, p.d, p.q_vec);
        stage_chunk<Tag>(sm.k_stage(i), static_cast<const S*>(p.k), col0, p.m, p.k_s0, p.k_s1,
                         k0, p.d, p.k_vec);
      },
      [&](int i, int64_t) {
        if constexpr (kT) chunk_product<Tag>(sm.k_stage(i), sm.q_stage(i), s, p.tf32);
        else chunk_product<Tag>(sm.q_stage(i), sm.k_stage(i), s, p.tf32);
      });
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const Acc* bias = static_cast<const Acc*>(p.bias);
  if constexpr (kT) {
CK_UNROLL
    for (int h = 0; h < 2; ++h) {
      const int64_t col = col0 + warp * 16 + g + 8 * h;  // the key of this register row
      const bool col_ok = col < p.m;
      const Acc rkc = col_ok ? rk[col] : Acc(0);
      const Acc bc = (col_ok && bias != nullptr) ? bias[col] : Acc(0);
      const int64_t label = (col_ok && p.q_labels != nullptr) ? p.k_labels[col] : 0;
CK_UNROLL
      for (int nt = 0; nt < 8; ++nt)
CK_UNROLL
        for (int e2 = 0; e2 < 2; ++e2) {
          const int64_t row = row0 + 8 * nt + 2 * t + e2;
          bool ok = col_ok && row < p.n;
          if (ok && p.has_self && col - row == p.self_offset) ok = false;
          if (ok && p.q_labels != nullptr && p.q_labels[row] == label) ok = false;
          Acc& v = s[nt][2 * h + e2];
          v = fin(h, row, col, v, ok ? v * (scale * rq[row]) * rkc + bc : neg_inf<Acc>());
        }
    }
  } else {
CK_UNROLL
    for (int h = 0; h < 2; ++h) {
      const int64_t row = row0 + warp * 16 + g + 8 * h;
      const bool row_ok = row < p.n;
      const Acc a = row_ok ? scale * rq[row] : Acc(0);
      const int64_t label = (row_ok && p.q_labels != nullptr) ? p.q_labels[row] : 0;
CK_UNROLL
      for (int nt = 0; nt < 8; ++nt)
CK_UNROLL
        for (int e2 = 0; e2 < 2; ++e2) {
          const int64_t col = col0 + 8 * nt + 2 * t + e2;
          bool ok = row_ok && col < p.m;
          if (ok && p.has_self && col - row == p.self_offset) ok = false;
          if (ok && p.q_labels != nullptr && p.k_labels[col] == label) ok = false;
          Acc& v = s[nt][2 * h + e2];
          v = fin(h, row, col, v,
                  ok ? v * a * rk[col] + (bias != nullptr ? bias[col] : Acc(0)) : neg_inf<Acc>());
        }
    }
  }
}

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

// Sum over the 4 lanes of a quad (the lanes holding one row).
template <class Acc>
CK_DEVICE Acc quad_sum(Acc v) {
  v += ck_shfl_xor(v, 1);
  v += ck_shfl_xor(v, 2);
  return v;
}

template <class Acc>
CK_DEVICE Acc quad_max(Acc v) {
  v = fmax_nan_skip(v, ck_shfl_xor(v, 1));
  v = fmax_nan_skip(v, ck_shfl_xor(v, 2));
  return v;
}

// ||x_i|| of one row, on every lane of the warp, as m ||x / m||, m = max_j |x_j|: sum x^2
// itself overflows fp32 once an entry passes ~1.8e19, and underflows (to a zero norm, the
// wrong branch of the normalization Jacobian) for rows of tiny or subnormal entries. The
// entries are divided by m, never multiplied by 1 / m: 1 / m overflows for m < ~2.9e-39.
// A NaN entry makes the norm NaN (fmax skips it; the sum of squares does not).
template <class Tag>
CK_DEVICE typename Tag::Acc scaled_row_norm(const typename Tag::S* x, int64_t row, int64_t d,
                                            int64_t s0, int64_t s1, int lane) {
  using Acc = typename Tag::Acc;
  Acc big = 0, ss = 0;
  for (int64_t c = lane; c < d; c += 32) {
    const Acc v = to_acc<Tag>(x[row * s0 + c * s1]);
    big = fmax_nan_skip(big, v < 0 ? -v : v);
  }
CK_UNROLL
  for (int m = 16; m > 0; m /= 2) big = fmax_nan_skip(big, ck_shfl_xor(big, m));
  const Acc unit = big > Acc(0) ? big : Acc(1);
  for (int64_t c = lane; c < d; c += 32) {
    const Acc v = to_acc<Tag>(x[row * s0 + c * s1]) / unit;
    ss = ck_fma(v, v, ss);
  }
CK_UNROLL
  for (int m = 16; m > 0; m /= 2) ss += ck_shfl_xor(ss, m);
  return unit * ck_sqrt(ss);
}

// r_i = 1 / max(||x_i||, eps) with normalize, else 1. One warp per row.
template <class Tag>
CK_GLOBAL void CK_LAUNCH_BOUNDS(kThreads)
    inverse_norms_kernel(const typename Tag::S* x, int64_t rows, int64_t d, int64_t s0, int64_t s1,
                         bool normalize, double eps, typename Tag::Acc* r) {
  using Acc = typename Tag::Acc;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // whole warps leave together
  if (!normalize) {
    if (lane == 0) r[row] = Acc(1);
    return;
  }
  const Acc norm = scaled_row_norm<Tag>(x, row, d, s0, s1, lane), e = Acc(eps);
  if (lane == 0) r[row] = Acc(1) / (norm > e ? norm : (norm != norm ? norm : e));
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

// Forward: lse (and o when kO) of rows blockIdx.x * 64 .., online over the key tiles of
// range blockIdx.y.
template <class Tag, bool kO>
CK_GLOBAL void CK_LAUNCH_BOUNDS(kThreads)
    lse_forward_kernel(KernelProblem p, ForwardBuffers b) {
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
  Acc mrow[2] = {neg_inf<Acc>(), neg_inf<Acc>()}, lrow[2] = {0, 0};
  for (int64_t col0 = col_begin; col0 < col_end; col0 += kBN) {
    Acc s[8][4];
    logits_tile<Tag>(p, sm, rq, rk, scale, row0, col0, s);
    Acc alpha[2];
CK_UNROLL
    for (int h = 0; h < 2; ++h) {
      Acc mx = neg_inf<Acc>();
CK_UNROLL
      for (int nt = 0; nt < 8; ++nt)
        mx = fmax_nan_skip(fmax_nan_skip(mx, s[nt][2 * h]), s[nt][2 * h + 1]);
      mx = quad_max(mx);
      const Acc m_new = fmax_nan_skip(mrow[h], mx);
      // A finite pivot: +inf logits give l = inf (lse = +inf), never inf - inf.
      const Acc piv_new = ck_isfinite(m_new) ? m_new : Acc(0);
      const Acc piv_old = ck_isfinite(mrow[h]) ? mrow[h] : Acc(0);
      alpha[h] = mrow[h] == neg_inf<Acc>() ? Acc(0) : tile_exp<Tag>(piv_old - piv_new);
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
      lrow[h] = lrow[h] * alpha[h] + sum;
      mrow[h] = m_new;
      if (kO && !Tag::kMma && t == 0) sm.rowv[warp * 16 + g + 8 * h] = alpha[h];
    }
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
  if (partial) {  // merge_splits_kernel finishes lse and o
CK_UNROLL
    for (int h = 0; h < 2; ++h) {
      const int64_t row = row0 + warp * 16 + g + 8 * h;
      if (t == 0 && row < p.n) {
        static_cast<Acc*>(b.part_m)[split * p.n + row] = mrow[h];
        static_cast<Acc*>(b.part_l)[split * p.n + row] = lrow[h];
      }
    }
    return;
  }
  Acc* lse = static_cast<Acc*>(b.lse);
CK_UNROLL
  for (int h = 0; h < 2; ++h) {
    const int64_t row = row0 + warp * 16 + g + 8 * h;
    const Acc piv = ck_isfinite(mrow[h]) ? mrow[h] : Acc(0);
    const Acc l = lrow[h];
    // only an empty key set (l = 0) gives -inf; a NaN logit makes l, hence lse, NaN
    const Acc value = l == Acc(0) ? neg_inf<Acc>() : piv + ck_log(l);
    if (t == 0 && row < p.n) lse[row] = value;
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

// Merges the partial (max, sum, o) of the key ranges per row, in range order (fixed):
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

// The backward's tile loop, for the 64 rows (kKeys: keys) of block blockIdx.x, over the
// tiles of range blockIdx.y of the keys (kKeys: rows): u~_i = sum_j x_ij k_j (the dq grid)
// or v~_j = sum_i x_ij q_i (the dk grid, on the transposed tile, so that the block's own
// keys are the warps' rows in both), x_ij = g_i rq_i rk_j exp(s_ij - lse_i) computed in
// place of the logits (rows with lse = -inf get weight 0; a NaN lse or logit gives NaN).
// Range r of S writes its partial sums into slice r of the workspace [S, rows, d];
// row_epilogue_kernel adds the S slices in order. The dq grid also sums, when b.rowdot is
// set, rowdot[r][i] = sum_j x_ij <q_i, k_j> (fp32 products of the unrounded weights and the
// raw dot products; dscale = their fixed-order sum).
template <class Tag, bool kKeys>
CK_DEVICE void backward_tiles(const KernelProblem& p, const BackwardBuffers& b) {
  using S = typename Tag::S;
  using Acc = typename Tag::Acc;
  const Smem<Tag> sm = Smem<Tag>::carve();
  const Acc* rq = static_cast<const Acc*>(b.rq);
  const Acc* rk = static_cast<const Acc*>(b.rk);
  const Acc* lse = static_cast<const Acc*>(b.lse);
  const Acc* grad = static_cast<const Acc*>(b.grad_lse);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int64_t own0 = int64_t(blockIdx.x) * 64;
  const int64_t own_count = kKeys ? p.m : p.n, other_count = kKeys ? p.n : p.m;
  const int64_t splits = kKeys ? b.v_splits : b.u_splits, split = blockIdx.y;
  const int64_t per_split = ((other_count + 63) / 64 + splits - 1) / splits * 64;
  const int64_t begin = split * per_split;
  const int64_t end = other_count < begin + per_split ? other_count : begin + per_split;
  Acc* out = static_cast<Acc*>(kKeys ? b.v : b.u) + split * own_count * p.d;
  const Acc scale = *static_cast<const Acc*>(p.scale);
  const S* other = static_cast<const S*>(kKeys ? p.q : p.k);
  const int64_t o_s0 = kKeys ? p.q_s0 : p.k_s0, o_s1 = kKeys ? p.q_s1 : p.k_s1;
  const bool o_vec = kKeys ? p.q_vec : p.k_vec;
  // per own row: its lse (inf without keys: weight 0) and g_i rq_i (dq grid), or rk_j (dk
  // grid). On tensor cores (bf16 / fp16, fp32 with tf32) these row factors multiply the
  // fp32 products instead of the weights, which are rounded to the operand type: only what
  // varies along the reduction is rounded (p_ij rk_j for dq, g_i rq_i p_ij for dk).
  Acc l_own[2] = {Acc(INFINITY), Acc(INFINITY)}, f_own[2] = {0, 0}, ds[2] = {0, 0};
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
  const bool want_ds = !kKeys && b.rowdot != nullptr;
  // fp32 with tf32 allowed: the second product on tf32 tensor cores too
  const bool tf32 = std::is_same_v<Tag, TagF32> && p.tf32;
  // the row factors multiply the products (tensor cores) or the weights (FMA)
  const bool row_factor_on_products = Tag::kMma || tf32;
  for (int64_t other0 = begin; other0 < end; other0 += 64) {
    const int64_t row0 = kKeys ? other0 : own0, col0 = kKeys ? own0 : other0;
    Acc s[8][4];
    logits_tile<Tag, kKeys>(
        p, sm, rq, rk, scale, row0, col0, s,
        [&](int h, int64_t row, int64_t col, Acc dot, Acc logit) {
          if (logit == neg_inf<Acc>() || col >= p.m) return Acc(0);
          if constexpr (kKeys) {
            Acc l = Acc(INFINITY), gq = 0;
            if (row < p.n && lse[row] != neg_inf<Acc>()) {
              l = lse[row];
              gq = grad[row] * rq[row];
            }
            const Acc x = gq * tile_exp<Tag>(logit - l);
            return row_factor_on_products ? x : x * f_own[h];
          } else {
            const Acc w = tile_exp<Tag>(logit - l_own[h]) * rk[col];
            if (want_ds) ds[h] = ck_fma(w, dot, ds[h]);
            return row_factor_on_products ? w : f_own[h] * w;
          }
        });
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
  backward_tiles<Tag, false>(p, b);
}

// Backward, key grid: v~_j = sum_i x_ij q_i for the keys blockIdx.x * 64 .., recomputing
// the same tiles transposed (rows in the same order for every key block: deterministic).
template <class Tag>
CK_GLOBAL void CK_LAUNCH_BOUNDS(kThreads) lse_backward_keys_kernel(KernelProblem p, BackwardBuffers b) {
  backward_tiles<Tag, true>(p, b);
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

// ---------------------------------------------------------------------------------------
// Launchers (host side of either build).

#if defined(__CUDACC__)
#define CK_ALLOW_SMEM(kernel, bytes)                                                        \
  do {                                                                                      \
    if ((bytes) > 48 * 1024)                                                                \
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (bytes));   \
  } while (0)
#define CK_CHECK_LAUNCH(name)                                                          \
  do {                                                                                 \
    const cudaError_t err_ = cudaGetLastError();                                       \
    if (err_ != cudaSuccess) return launch_error(name, cudaGetErrorString(err_));      \
  } while (0)
#else
#define CK_ALLOW_SMEM(kernel, bytes) ((void)0)
#define CK_CHECK_LAUNCH(name) ((void)0)
#endif

inline const char* launch_error(const char* kernel, const char* what) {
  static thread_local char message[256];
  int i = 0;
  for (const char* part : {kernel, ": ", what})
    for (; *part != '\0' && i < 255; ++part) message[i++] = *part;
  message[i] = '\0';
  return message;
}

inline unsigned blocks_for(int64_t count, int64_t per_block) {
  return unsigned((count + per_block - 1) / per_block);
}

template <class Tag>
const char* inverse_norms(const KernelProblem& p, void* rq, void* rk) {
  using S = typename Tag::S;
  using Acc = typename Tag::Acc;
  const ck_dev::dim3 block(kThreads);
  if (p.n > 0) {
    CK_LAUNCH(inverse_norms_kernel<Tag>, ck_dev::dim3(blocks_for(p.n, kWarps)), block, 0, p.stream,
              static_cast<const S*>(p.q), p.n, p.d, p.q_s0, p.q_s1, p.normalize, p.eps,
              static_cast<Acc*>(rq));
    CK_CHECK_LAUNCH("inverse_norms_kernel(q)");
  }
  if (p.m > 0) {
    CK_LAUNCH(inverse_norms_kernel<Tag>, ck_dev::dim3(blocks_for(p.m, kWarps)), block, 0, p.stream,
              static_cast<const S*>(p.k), p.m, p.d, p.k_s0, p.k_s1, p.normalize, p.eps,
              static_cast<Acc*>(rk));
    CK_CHECK_LAUNCH("inverse_norms_kernel(k)");
  }
  return nullptr;
}

template <class Tag>
const char* forward_t(const KernelProblem& p, const ForwardBuffers& b) {
  if (p.n == 0) return nullptr;
  if (const char* err = inverse_norms<Tag>(p, b.rq, b.rk)) return err;
  constexpr int smem = smem_bytes<Tag>();
  const ck_dev::dim3 grid(blocks_for(p.n, kBM), unsigned(b.splits));
  // o in its own instantiation: its state would cost the lse-only kernel registers
  if (b.o != nullptr && p.d > 0) {
    CK_ALLOW_SMEM((lse_forward_kernel<Tag, true>), smem);
    CK_LAUNCH((lse_forward_kernel<Tag, true>), grid, ck_dev::dim3(kThreads), smem, p.stream, p, b);
  } else {
    CK_ALLOW_SMEM((lse_forward_kernel<Tag, false>), smem);
    CK_LAUNCH((lse_forward_kernel<Tag, false>), grid, ck_dev::dim3(kThreads), smem, p.stream, p, b);
  }
  CK_CHECK_LAUNCH("lse_forward_kernel");
  if (b.splits > 1) {
    using Acc = typename Tag::Acc;
    CK_LAUNCH(merge_splits_kernel<Acc>, ck_dev::dim3(blocks_for(p.n, kWarps)),
              ck_dev::dim3(kThreads), 0, p.stream, p.n, p.d, b.splits,
              static_cast<const Acc*>(b.part_m), static_cast<const Acc*>(b.part_l),
              static_cast<const Acc*>(b.part_o), static_cast<Acc*>(b.lse), static_cast<Acc*>(b.o));
    CK_CHECK_LAUNCH("merge_splits_kernel");
  }
  return nullptr;
}

template <class Tag>
const char* backward_t(const KernelProblem& p, const BackwardBuffers& b) {
  using S = typename Tag::S;
  using Acc = typename Tag::Acc;
  if (p.n == 0 && p.m == 0) return nullptr;
  if (const char* err = inverse_norms<Tag>(p, b.rq, b.rk)) return err;
  constexpr int smem = smem_bytes<Tag>();
  const ck_dev::dim3 block(kThreads);
  const Acc* scale = static_cast<const Acc*>(p.scale);
  if (b.u != nullptr && p.n > 0) {  // dq (and the dscale partials)
    CK_ALLOW_SMEM(lse_backward_rows_kernel<Tag>, smem);
    CK_LAUNCH(lse_backward_rows_kernel<Tag>,
              ck_dev::dim3(blocks_for(p.n, kBM), unsigned(b.u_splits)), block, smem, p.stream,
              p, b);
    CK_CHECK_LAUNCH("lse_backward_rows_kernel");
    if (b.dq != nullptr)
      CK_LAUNCH(row_epilogue_kernel<Tag>, ck_dev::dim3(blocks_for(p.n, kWarps)), block, 0,
                p.stream, static_cast<const S*>(p.q), p.n, p.d, p.q_s0, p.q_s1,
                static_cast<const Acc*>(b.rq), static_cast<const Acc*>(b.u), b.u_splits, scale,
                p.normalize, p.eps, static_cast<S*>(b.dq));
    CK_CHECK_LAUNCH("row_epilogue_kernel(q)");
  }
  if (b.dscale != nullptr) {
    CK_LAUNCH(fixed_order_sum_kernel<Acc>, ck_dev::dim3(1), ck_dev::dim3(32), 0, p.stream,
              static_cast<const Acc*>(b.rowdot), p.n * b.u_splits, static_cast<Acc*>(b.dscale));
    CK_CHECK_LAUNCH("fixed_order_sum_kernel");
  }
  if (b.v != nullptr && p.m > 0) {
    CK_ALLOW_SMEM(lse_backward_keys_kernel<Tag>, smem);
    CK_LAUNCH(lse_backward_keys_kernel<Tag>,
              ck_dev::dim3(blocks_for(p.m, kBN), unsigned(b.v_splits)), block, smem, p.stream,
              p, b);
    CK_CHECK_LAUNCH("lse_backward_keys_kernel");
    CK_LAUNCH(row_epilogue_kernel<Tag>, ck_dev::dim3(blocks_for(p.m, kWarps)), block, 0, p.stream,
              static_cast<const S*>(p.k), p.m, p.d, p.k_s0, p.k_s1, static_cast<const Acc*>(b.rk),
              static_cast<const Acc*>(b.v), b.v_splits, scale, p.normalize, p.eps,
              static_cast<S*>(b.dk));
    CK_CHECK_LAUNCH("row_epilogue_kernel(k)");
  }
  return nullptr;
}

// The runners of lse_params.h for this namespace: one instantiation per dtype.
#define CK_DEFINE_RUNNERS                                                                 \
  const char* forward(const KernelProblem& p, const ForwardBuffers& b) {                  \
    switch (p.dtype) {                                                                    \
      case KernelDType::F16: return forward_t<TagF16>(p, b);                              \
      case KernelDType::BF16: return forward_t<TagBF16>(p, b);                            \
      case KernelDType::F32: return forward_t<TagF32>(p, b);                              \
      case KernelDType::F64: return forward_t<TagF64>(p, b);                              \
    }                                                                                     \
    return "unknown dtype";                                                               \
  }                                                                                       \
  const char* backward(const KernelProblem& p, const BackwardBuffers& b) {                \
    switch (p.dtype) {                                                                    \
      case KernelDType::F16: return backward_t<TagF16>(p, b);                             \
      case KernelDType::BF16: return backward_t<TagBF16>(p, b);                           \
      case KernelDType::F32: return backward_t<TagF32>(p, b);                             \
      case KernelDType::F64: return backward_t<TagF64>(p, b);                             \
    }                                                                                     \
    return "unknown dtype";                                                               \
  }

}  // namespace CK_KERNEL_NAMESPACE
}  // namespace ck
