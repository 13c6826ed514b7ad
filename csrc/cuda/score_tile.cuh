// The score (logits) tile of 64 rows and 64 keys, in registers: the dot products of the
// main loop, then scale, inverse norms, bias and the marked pairs (self_offset, equal
// labels): excluded (-inf) for the lse ops, sign-flipped for pairwise_sigmoid.
#pragma once

#include "cuda/mainloop.cuh"

namespace ck {
namespace CK_KERNEL_NAMESPACE {

// The logits tile of rows row0.., keys col0..: dot products over every chunk of d, then
// s = dot (scale rq_i) rk_j + bias_j, and -inf outside the matrix. A marked pair (i, j) (j =
// i + self_offset, or equal labels when labels are given) is -inf (excluded from A(i)) when
// not kSigned, and holds x = -s with marked = true when kSigned (pairwise_sigmoid: the tile
// holds x = -z s, z = +1 on the positives, and the weights need z). kT: the transposed tile
// S^T (the warps' rows are the 64 keys, the columns the 64 rows of q), for the key grid of
// the backward, whose second product v = X^T Q then takes its A operand from registers like
// the row grid's. fin(h, row, col, dot, logit, marked) gives the value kept (the backward's
// weights), element by element; h: which of the lane's two rows.
struct KeepLogit {
  template <class Acc>
  CK_DEVICE Acc operator()(int, int64_t, int64_t, Acc, Acc logit, bool) const { return logit; }
};

// What a pair holds: -inf outside the matrix; inside, logit() (its sign flipped on a marked
// pair when kSigned, -inf on a marked pair otherwise). logit() is only evaluated where it is
// kept, so the lse ops' code is what it was before the sign-flip mode.
template <bool kSigned, class Acc, class Logit>
CK_DEVICE Acc marked_value(bool in, bool marked, Logit logit) {
  if constexpr (kSigned) {
    if (!in) return neg_inf<Acc>();
    const Acc s = logit();
    return marked ? -s : s;
  } else {
    return (in && !marked) ? logit() : neg_inf<Acc>();
  }
}

template <class Tag, bool kT = false, bool kSigned = false, class Fin = KeepLogit>
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
          const bool in = col_ok && row < p.n;
          const bool marked = in && ((p.has_self && col - row == p.self_offset) ||
                                     (p.q_labels != nullptr && p.q_labels[row] == label));
          Acc& v = s[nt][2 * h + e2];
          const auto logit = [&] { return v * (scale * rq[row]) * rkc + bc; };
          v = fin(h, row, col, v, marked_value<kSigned, Acc>(in, marked, logit),
                  kSigned && marked);
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
          const bool in = row_ok && col < p.m;
          const bool marked = in && ((p.has_self && col - row == p.self_offset) ||
                                     (p.q_labels != nullptr && p.k_labels[col] == label));
          Acc& v = s[nt][2 * h + e2];
          const auto logit = [&] { return v * a * rk[col] + (bias != nullptr ? bias[col] : Acc(0)); };
          v = fin(h, row, col, v, marked_value<kSigned, Acc>(in, marked, logit),
                  kSigned && marked);
        }
    }
  }
}

}  // namespace CK_KERNEL_NAMESPACE
}  // namespace ck
