// Backward pairwise sigmoid on CPU. With g = dL/drow_loss, x_ij = z'_ij s_ij (z' = -z:
// -1 on the positives, +1 elsewhere; score_tile.h: sign_tile) and e = exp(-|x|):
//
//     dL/ds_ij = z'_ij sigmoid(x_ij) g_i,   sigmoid(x) = 1 / (1 + e) (x >= 0), e / (1 + e)
//     dbias_j  = sum_i dL/ds_ij
//
// one exp and one division per logit, no cancellation (1 - sigmoid is never formed); then
// the second products and the normalization Jacobian as for lse (backward_sweep.h,
// finish_gradient). Each tile is recomputed once into x_ij = rq_i rk_j dL/ds_ij (weight_tile
// with SigmoidWeights, which also sums dL/ds down the tile's columns in registers). The
// tiles run in the Latin-square order whenever dbias is needed: each key block, and so its
// dbias, belongs to one tile at a time and receives its row blocks in an order fixed by the
// shapes, so dbias, like dq and dk, is bitwise the same for any thread count.
#include "cpu/isa.h"  // first: the library headers, then the ISA switch

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "backward_sweep.h"
#include "score_tile.h"
#include "sigmoid_cpu.h"

CK_CPU_NAMESPACE_BEGIN

namespace {

// x_ij = rq_i rk_j z'_ij sigmoid(z'_ij s_ij) g_i into x, and sum_i z' sigmoid g_i of each key
// added to colsum (one entry per key of the tile). Signed: z' read from z (stride ld), else +1.
// Unit: no normalize, rq = rk = 1 on every real key (padding keys' weights are never read),
// so the rk multiply goes (SigLIP's usual call passes unit rows).
template <class T, bool Signed, bool Unit>
struct SigmoidWeights {
  const Operands<T>& op;
  const T* g;
  const T* z;
  int64_t r0, c0;
  T* x;
  T* colsum;
  int64_t ld;
  template <class MR>
  CK_INLINE void operator()(MR, int64_t i0, int64_t p, VecT<T> (&s)[MR::value][2]) const {
    using VT = Vec<T>;
    constexpr int64_t NR = panel_width<T>();
    constexpr int W = VT::W;
    const int64_t j = c0 + p * NR;
    const VecT<T> one = VT::set1(T(1));
    VecT<T> col[2] = {VT::load(colsum + p * NR), VT::load(colsum + p * NR + W)};
#pragma GCC unroll 6
    for (int i = 0; i < MR::value; ++i) {
      const int64_t row = r0 + i0 + i;
      const VecT<T> g_i = VT::set1(g[row]);
      const VecT<T> gr_i = VT::set1(g[row] * op.rq[row]);
      const int64_t at = (i0 + i) * ld + p * NR;
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        VecT<T> xs = s[i][h];
        const VecT<T> zs = Signed ? VT::load(z + at + h * W) : one;
        if (Signed) xs = VT::mul(xs, zs);
        const VecT<T> e = VT::exp(VT::neg_abs(xs));
        const VecT<T> r = VT::div(one, VT::add(one, e));
        VecT<T> sig = VT::select_neg(xs, r, VT::mul(e, r));
        if (Signed) sig = VT::mul(sig, zs);
        col[h] = VT::fma(sig, g_i, col[h]);
        const VecT<T> w = VT::mul(sig, gr_i);
        VT::store(x + at + h * W, Unit ? w : VT::mul(w, VT::load(op.rk + j + h * W)));
      }
    }
    VT::store(colsum + p * NR, col[0]);
    VT::store(colsum + p * NR + W, col[1]);
  }
};

}  // namespace

template <class T>
void sigmoid_backward_kernel(const Operands<T>& op, const T* g, T* u, T* v, T* dbias) {
  constexpr int64_t NR = panel_width<T>();
  const int64_t n = op.n, m = op.m;
  if (n == 0 || m == 0 || (u == nullptr && v == nullptr && dbias == nullptr)) return;
  const int64_t threads = kernel_threads();
  const TileSizes ts = general_tile_sizes(n, m);
  const int64_t ld = tile_stride<T>(ts.cols);
  // per thread: the tile's signs (the sweep's coef scratch holds its column sums)
  at::Tensor signs = at::empty({threads, ts.rows * ld}, c10::CppTypeToScalarType<T>::value);
  T* signs_p = signs.data_ptr<T>();
  // dbias summed in double across row blocks, in the schedule's fixed order
  std::vector<double> bias_sum(dbias != nullptr ? m : 0, 0.0);
  backward_sweep(
      op, u, v, threads,
      [&](int64_t r0, int64_t nr, int64_t c0, int64_t nc, T* x, int64_t ld_x, T* colsum) {
        T* z = signs_p + thread_index() * ts.rows * ld;
        const int64_t ncp = round_up(nc, NR);
        std::fill(colsum, colsum + ncp, T(0));
        const bool signed_tile = sign_tile(op, r0, nr, c0, nc, z, ld_x);
        auto run = [&](auto is_signed, auto unit) {
          using Weights = SigmoidWeights<T, decltype(is_signed)::value, decltype(unit)::value>;
          weight_tile(op, r0, nr, c0, nc, Weights{op, g, z, r0, c0, x, colsum, ld_x}, x,
                      static_cast<T*>(nullptr), ld_x);
        };
        using Yes = std::true_type;
        using No = std::false_type;
        if (op.normalize) signed_tile ? run(Yes{}, No{}) : run(No{}, No{});
        else signed_tile ? run(Yes{}, Yes{}) : run(No{}, Yes{});
        if (dbias != nullptr)
          for (int64_t j = 0; j < nc; ++j) bias_sum[c0 + j] += double(colsum[j]);
      },
      /*weights_own_keys=*/dbias != nullptr);
  for (int64_t j = 0; j < int64_t(bias_sum.size()); ++j) dbias[j] = T(bias_sum[j]);
}

template void sigmoid_backward_kernel<float>(const Operands<float>&, const float*, float*, float*,
                                             float*);
template void sigmoid_backward_kernel<double>(const Operands<double>&, const double*, double*,
                                              double*, double*);

CK_CPU_NAMESPACE_END
