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
//   - fp32 / fp64: the same layout computed with FMA (exact IEEE products and sums).
// Masks, scale, inverse norms, bias and the online log-sum-exp are applied in registers
// by row and column; row statistics are reduced over the 4 lanes of a quad by shuffles.
// The second products (o = P K, u = X K, v = X^T Q) take the probability / weight tile
// through shared memory and accumulate in fp32 (fp64) with FMA, into an fp32 / fp64
// buffer that one block owns exclusively (rows for o and u, keys for v): no atomics.
//
// Forward split over keys when the row grid is small (forward_key_splits, lse_params.h):
// grid.y ranges of whole key tiles write partial (max, sum, o); merge_splits_kernel
// combines them per row in range order.
//
// Backward (deterministic, two grids): the dq kernel (row grid) recomputes each tile and
// accumulates u~_i = sum_j x_ij k_j, x_ij = g_i rq_i rk_j exp(s_ij - lse_i); the dk kernel
// (key grid) recomputes the same tiles and accumulates v~_j = sum_i x_ij q_i; a per-row
// epilogue applies scale and the normalization Jacobian,
//     dq_i = scale (u~_i - [normalize, ||q_i|| >= eps] rq_i^2 <q_i, u~_i> q_i),
// and dscale = sum_i <q_i, u~_i> is summed by one warp in a fixed order.
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
template <class Tag>
CK_DEVICE void chunk_product(const typename Tag::S* qs, const typename Tag::S* ks,
                             typename Tag::Acc (&acc)[8][4]) {
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
template <class Tag>
CK_DEVICE void logits_tile(const KernelProblem& p, const Smem<Tag>& sm, const typename Tag::Acc* rq,
                           const typename Tag::Acc* rk, typename Tag::Acc scale, int64_t row0,
                           int64_t col0, typename Tag::Acc (&s)[8][4]) {
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
      [&](int i, int64_t) { chunk_product<Tag>(sm.q_stage(i), sm.k_stage(i), s); });
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const Acc* bias = static_cast<const Acc*>(p.bias);
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
        v = ok ? v * a * rk[col] + (bias != nullptr ? bias[col] : Acc(0)) : neg_inf<Acc>();
      }
  }
}

// out[r][c0 + c] (+)= sum_j W[r][j] X[j][c] for the 64 x kBK outputs of one staged chunk:
// W the weight tile (row stride kLdp, transposed when trans_w), X the staged chunk.
// out rows (row0 + r) own their memory in this block; beta scales the old value per row.
template <class Tag, bool kTransW>
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
    for (int j = 0; j < 64; ++j) {
      const Acc wv = kTransW ? w[j * kLdp + r] : w[r * kLdp + j];
      sum = ck_fma(wv, to_acc<Tag>(x[j * LDS + c]), sum);
    }
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

// r_i = 1 / max(||x_i||, eps) with normalize, else 1. One warp per row. The norm is taken
// as m ||x / m||, m = max_j |x_j|: sum x^2 itself overflows fp32 once an entry passes ~1.8e19.
template <class Tag>
CK_GLOBAL void CK_LAUNCH_BOUNDS(kThreads)
    inverse_norms_kernel(const typename Tag::S* x, int64_t rows, int64_t d, int64_t s0, int64_t s1,
                         bool normalize, double eps, typename Tag::Acc* r) {
  using Acc = typename Tag::Acc;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // whole warps leave together
  Acc big = 0, ss = 0;
  if (normalize) {
    for (int64_t c = lane; c < d; c += 32) {
      const Acc v = to_acc<Tag>(x[row * s0 + c * s1]);
      big = fmax_nan_skip(big, v < 0 ? -v : v);
    }
CK_UNROLL
    for (int m = 16; m > 0; m /= 2) big = fmax_nan_skip(big, ck_shfl_xor(big, m));
    const Acc inv_big = big > Acc(0) ? Acc(1) / big : Acc(1);  // a NaN still reaches ss
    for (int64_t c = lane; c < d; c += 32) {
      const Acc v = to_acc<Tag>(x[row * s0 + c * s1]) * inv_big;
      ss = ck_fma(v, v, ss);
    }
  }
CK_UNROLL
  for (int m = 16; m > 0; m /= 2) ss += ck_shfl_xor(ss, m);
  if (lane == 0) {
    const Acc norm = (big > Acc(0) ? big : Acc(1)) * ck_sqrt(ss), e = Acc(eps);
    r[row] = normalize ? Acc(1) / (norm > e ? norm : (norm != norm ? norm : e)) : Acc(1);
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
      const Acc alpha = mrow[h] == neg_inf<Acc>() ? Acc(0) : ck_exp(piv_old - piv_new);
      Acc sum = 0;
CK_UNROLL
      for (int nt = 0; nt < 8; ++nt)
CK_UNROLL
        for (int e2 = 0; e2 < 2; ++e2) {
          const Acc pe = ck_exp(s[nt][2 * h + e2] - piv_new);
          s[nt][2 * h + e2] = pe;
          sum += pe;
        }
      sum = quad_sum(sum);
      lrow[h] = lrow[h] * alpha + sum;
      mrow[h] = m_new;
      if (kO && t == 0) sm.rowv[warp * 16 + g + 8 * h] = alpha;
    }
    if constexpr (kO) {
      // o_i = alpha_i o_i + sum_j p_ij rk_j k_j, the tile's weights through shared memory
      // (p first, then times rk_j in a second pass: fewer registers live per thread)
      store_weights<Tag>(sm, s);
      CK_SYNC();
      for (int idx = threadIdx.x; idx < kBM * kBN; idx += kThreads) {
        const int r = idx / kBN, j = idx % kBN;
        const int64_t col = col0 + j;
        sm.ps[r * kLdp + j] = col < p.m ? sm.ps[r * kLdp + j] * rk[col] : Acc(0);
      }
      pipelined_chunks<Tag>(
          p.d,
          [&](int i, int64_t k0) {
            stage_chunk<Tag>(sm.k_stage(i), static_cast<const S*>(p.k), col0, p.m, p.k_s0,
                             p.k_s1, k0, p.d, p.k_vec);
          },
          [&](int i, int64_t k0) {
            chunk_update<Tag, false>(o, p.n, p.d, row0, k0, sm.ps, sm.k_stage(i), sm.rowv);
          });
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

// The weights x_ij = g_i rq_i rk_j exp(s_ij - lse_i) of the tile in place of its logits.
// Rows with lse = -inf (no key) get weight 0; a NaN lse or logit gives NaN.
template <class Tag>
CK_DEVICE void tile_weights(const KernelProblem& p, const BackwardBuffers& b, int64_t row0,
                            int64_t col0, typename Tag::Acc (&s)[8][4]) {
  using Acc = typename Tag::Acc;
  const Acc* rq = static_cast<const Acc*>(b.rq);
  const Acc* rk = static_cast<const Acc*>(b.rk);
  const Acc* lse = static_cast<const Acc*>(b.lse);
  const Acc* grad = static_cast<const Acc*>(b.grad_lse);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
CK_UNROLL
  for (int h = 0; h < 2; ++h) {
    const int64_t row = row0 + warp * 16 + g + 8 * h;
    Acc l = Acc(INFINITY), gq = 0;
    if (row < p.n && lse[row] != neg_inf<Acc>()) {
      l = lse[row];
      gq = grad[row] * rq[row];
    }
CK_UNROLL
    for (int nt = 0; nt < 8; ++nt)
CK_UNROLL
      for (int e2 = 0; e2 < 2; ++e2) {
        const int64_t col = col0 + 8 * nt + 2 * t + e2;
        Acc& v = s[nt][2 * h + e2];
        v = (v == neg_inf<Acc>() || col >= p.m) ? Acc(0) : gq * ck_exp(v - l) * rk[col];
      }
  }
}

// Backward, row grid: u~_i = sum_j x_ij k_j for the rows blockIdx.x * 64 ..
template <class Tag>
CK_GLOBAL void CK_LAUNCH_BOUNDS(kThreads) lse_backward_rows_kernel(KernelProblem p, BackwardBuffers b) {
  using S = typename Tag::S;
  using Acc = typename Tag::Acc;
  const Smem<Tag> sm = Smem<Tag>::carve();
  const int64_t row0 = int64_t(blockIdx.x) * kBM;
  const Acc scale = *static_cast<const Acc*>(p.scale);
  for (int64_t col0 = 0; col0 < p.m; col0 += kBN) {
    Acc s[8][4];
    logits_tile<Tag>(p, sm, static_cast<const Acc*>(b.rq), static_cast<const Acc*>(b.rk), scale,
                     row0, col0, s);
    tile_weights<Tag>(p, b, row0, col0, s);
    store_weights<Tag>(sm, s);
    pipelined_chunks<Tag>(
        p.d,
        [&](int i, int64_t k0) {
          stage_chunk<Tag>(sm.k_stage(i), static_cast<const S*>(p.k), col0, p.m, p.k_s0, p.k_s1,
                           k0, p.d, p.k_vec);
        },
        [&](int i, int64_t k0) {
          chunk_update<Tag, false>(static_cast<Acc*>(b.u), p.n, p.d, row0, k0, sm.ps,
                                   sm.k_stage(i), nullptr);
        });
  }
}

// Backward, key grid: v~_j = sum_i x_ij q_i for the keys blockIdx.x * 64 .., recomputing
// the same tiles (rows in the same order for every key block: deterministic).
template <class Tag>
CK_GLOBAL void CK_LAUNCH_BOUNDS(kThreads) lse_backward_keys_kernel(KernelProblem p, BackwardBuffers b) {
  using S = typename Tag::S;
  using Acc = typename Tag::Acc;
  const Smem<Tag> sm = Smem<Tag>::carve();
  const int64_t col0 = int64_t(blockIdx.x) * kBN;
  const Acc scale = *static_cast<const Acc*>(p.scale);
  for (int64_t row0 = 0; row0 < p.n; row0 += kBM) {
    Acc s[8][4];
    logits_tile<Tag>(p, sm, static_cast<const Acc*>(b.rq), static_cast<const Acc*>(b.rk), scale,
                     row0, col0, s);
    tile_weights<Tag>(p, b, row0, col0, s);
    store_weights<Tag>(sm, s);
    pipelined_chunks<Tag>(
        p.d,
        [&](int i, int64_t k0) {
          stage_chunk<Tag>(sm.q_stage(i), static_cast<const S*>(p.q), row0, p.n, p.q_s0, p.q_s1,
                           k0, p.d, p.q_vec);
        },
        [&](int i, int64_t k0) {
          chunk_update<Tag, true>(static_cast<Acc*>(b.v), p.m, p.d, col0, k0, sm.ps,
                                  sm.q_stage(i), nullptr);
        });
  }
}

// Per-row epilogue, one warp per row: dx_i = scale (w_i - c_i x_i) with
// c_i = [normalize, ||x_i|| >= eps] r_i^2 <x_i, w_i>; rowdot_i = <x_i, w_i>.
template <class Tag>
CK_GLOBAL void CK_LAUNCH_BOUNDS(kThreads)
    row_epilogue_kernel(const typename Tag::S* x, int64_t rows, int64_t d, int64_t s0, int64_t s1,
                        const typename Tag::Acc* r, const typename Tag::Acc* w,
                        const typename Tag::Acc* scale_ptr, bool normalize, double eps,
                        typename Tag::S* dx, typename Tag::Acc* rowdot) {
  using Acc = typename Tag::Acc;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // whole warps leave together
  Acc dot = 0, ss = 0;
  for (int64_t c = lane; c < d; c += 32) {
    const Acc xv = to_acc<Tag>(x[row * s0 + c * s1]);
    dot = ck_fma(xv, w[row * d + c], dot);
    ss = ck_fma(xv, xv, ss);
  }
CK_UNROLL
  for (int m = 16; m > 0; m /= 2) {  // butterfly: every lane ends with the same sums
    dot += ck_shfl_xor(dot, m);
    ss += ck_shfl_xor(ss, m);
  }
  if (rowdot != nullptr && lane == 0) rowdot[row] = dot;
  if (dx == nullptr) return;
  const Acc ri = r[row], scale = *scale_ptr;
  const bool jacobian = normalize && ck_sqrt(ss) >= Acc(eps);
  const Acc coef = jacobian ? ri * (ri * dot) : Acc(0);  // r^2 alone underflows for huge rows
  for (int64_t c = lane; c < d; c += 32) {
    const Acc xv = to_acc<Tag>(x[row * s0 + c * s1]);
    dx[row * d + c] = from_acc<Tag>(scale * (w[row * d + c] - coef * xv));
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
  if (b.u != nullptr && p.n > 0) {
    CK_ALLOW_SMEM(lse_backward_rows_kernel<Tag>, smem);
    CK_LAUNCH(lse_backward_rows_kernel<Tag>, ck_dev::dim3(blocks_for(p.n, kBM)), block, smem,
              p.stream, p, b);
    CK_CHECK_LAUNCH("lse_backward_rows_kernel");
    CK_LAUNCH(row_epilogue_kernel<Tag>, ck_dev::dim3(blocks_for(p.n, kWarps)), block, 0, p.stream,
              static_cast<const S*>(p.q), p.n, p.d, p.q_s0, p.q_s1, static_cast<const Acc*>(b.rq),
              static_cast<const Acc*>(b.u), scale, p.normalize, p.eps, static_cast<S*>(b.dq),
              static_cast<Acc*>(b.rowdot));
    CK_CHECK_LAUNCH("row_epilogue_kernel(q)");
  }
  if (b.dscale != nullptr) {
    CK_LAUNCH(fixed_order_sum_kernel<Acc>, ck_dev::dim3(1), ck_dev::dim3(32), 0, p.stream,
              static_cast<const Acc*>(b.rowdot), p.n, static_cast<Acc*>(b.dscale));
    CK_CHECK_LAUNCH("fixed_order_sum_kernel");
  }
  if (b.v != nullptr && p.m > 0) {
    CK_ALLOW_SMEM(lse_backward_keys_kernel<Tag>, smem);
    CK_LAUNCH(lse_backward_keys_kernel<Tag>, ck_dev::dim3(blocks_for(p.m, kBN)), block, smem,
              p.stream, p, b);
    CK_CHECK_LAUNCH("lse_backward_keys_kernel");
    CK_LAUNCH(row_epilogue_kernel<Tag>, ck_dev::dim3(blocks_for(p.m, kWarps)), block, 0, p.stream,
              static_cast<const S*>(p.k), p.m, p.d, p.k_s0, p.k_s1, static_cast<const Acc*>(b.rk),
              static_cast<const Acc*>(b.v), scale, p.normalize, p.eps, static_cast<S*>(b.dk),
              static_cast<Acc*>(nullptr));
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
