// Row norms of q and k: the overflow-free norm of one row by one warp, and the inverse
// norms of the fused normalization.
#pragma once

#include "cuda/tile_traits.cuh"

namespace ck {
namespace CK_KERNEL_NAMESPACE {

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

}  // namespace CK_KERNEL_NAMESPACE
}  // namespace ck
