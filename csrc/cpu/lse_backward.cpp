// Backward core op on CPU. With g_i = dL/dlse_i and p_ij = exp(s_ij - lse_i):
//
//     dL/ds_ij = g_i p_ij
//     u_i = sum_j g_i p_ij k^_j,   v_j = sum_i g_i p_ij q^_i
//     dq^ = scale u,  dk^ = scale v,  dscale = sum_i <q^_i, u_i>  (= (1/scale) sum <q^, dq^>)
//     dq_i = r_i (dq^_i - [||q_i|| >= eps] q^_i <q^_i, dq^_i>)   (normalization Jacobian)
//
// Each tile of s is recomputed once, from q, k and the saved lse, into the weights
// x_ij = g_i rq_i rk_j p_ij (zero for excluded pairs), and feeds both products:
// u~_I += x K_J and v~_J += x^T Q_I with the raw rows, so u~_i = rq_i u_i and
// v~_j = rk_j v_j; the epilogue then needs no normalized copy of q or k:
//
//     dq_i = scale (u~_i - [||q_i|| >= eps] rq_i^2 <q_i, u~_i> q_i),  dscale = sum_i <q_i, u~_i>
//
// One recompute (score_tile.h: weight_tile with the LseWeights policy) and two products
// per tile, in backward_sweep.h's deterministic schedule. Symmetric problems (see
// lse_forward.cpp) compute each off-diagonal tile once, in tournament order (schedule.h),
// and derive from it the weights of both (I, J) and (J, I): one recompute and four
// products for two tiles. In both schemes a row's contributions arrive in an order fixed
// by the shapes, so results are bitwise the same for any thread count.
#include "cpu/isa.h"  // first: the library headers, then the ISA switch
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "backward_sweep.h"
#include "lse_cpu.h"
#include "microkernel.h"
#include "schedule.h"
#include "score_tile.h"
#include "tile_ops.h"

CK_CPU_NAMESPACE_BEGIN

namespace {

// Lse's weight policy (score_tile.h: weight_tile): x_ij = g_i rq_i rk_j exp(s_ij - lse_i)
// of the tile at (r0, c0) into x and, with x2 (symmetric problems), the weights of the
// transposed tile, stored untransposed: x2_ij = g_j rq_j rk_i exp(s_ij - lse_j).
template <class T>
struct LseWeights {
  const Operands<T>& op;
  LineTerms<T> rt;
  int64_t r0, c0;
  T* x;
  T* x2;
  int64_t ld;
  template <class MR>
  CK_INLINE void operator()(MR, int64_t i0, int64_t p, VecT<T> (&s)[MR::value][2]) const {
    using VT = Vec<T>;
    constexpr int64_t NR = panel_width<T>();
    constexpr int W = VT::W;
    const int64_t j = c0 + p * NR;
#pragma GCC unroll 6
    for (int i = 0; i < MR::value; ++i) {
      const int64_t row = r0 + i0 + i;
      const VecT<T> lse_i = VT::set1(rt.lse[row]);
      const VecT<T> g_i = VT::set1(rt.gr[row]);
      T* out = x + (i0 + i) * ld + p * NR;
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        VT::store(out + h * W, VT::mul(VT::exp(VT::sub(s[i][h], lse_i)),
                                       VT::mul(g_i, VT::load(op.rk + j + h * W))));
        if (x2 != nullptr) {
          const VecT<T> w = VT::mul(VT::load(rt.gr + j + h * W), VT::set1(op.rq[row]));
          VT::store(x2 + (out - x) + h * W,
                    VT::mul(VT::exp(VT::sub(s[i][h], VT::load(rt.lse + j + h * W))), w));
        }
      }
    }
  }
};

template <class T>
void tile_weights(const Operands<T>& op, LineTerms<T> rt, int64_t r0, int64_t nr, int64_t c0,
                  int64_t nc, T* x, T* x2, int64_t ld) {
  weight_tile(op, r0, nr, c0, nc, LseWeights<T>{op, rt, r0, c0, x, x2, ld}, x, x2, ld);
}

// Both of LseWeights' outputs of an off-diagonal symmetric tile with ONE exponential per
// entry: e^{s - c} times per-row and per-key factors e^{c - lse} g rq (row_coef, col_coef).
template <class T>
struct PairWeights {
  const Operands<T>& op;
  int64_t r0, c0;
  const T* row_coef;
  const T* col_coef;
  T c;
  T* x;
  T* x2;
  int64_t ld;
  template <class MR>
  CK_INLINE void operator()(MR, int64_t i0, int64_t p, VecT<T> (&s)[MR::value][2]) const {
    using VT = Vec<T>;
    constexpr int64_t NR = panel_width<T>();
    constexpr int W = VT::W;
    const int64_t j = c0 + p * NR;
    const VecT<T> vc = VT::set1(c);
#pragma GCC unroll 6
    for (int i = 0; i < MR::value; ++i) {
      const int64_t row = r0 + i0 + i;
      const VecT<T> ri = VT::set1(row_coef[i0 + i]);
      const VecT<T> qi = VT::set1(op.rq[row]);
      T* out = x + (i0 + i) * ld + p * NR;
      T* out2 = x2 + (i0 + i) * ld + p * NR;
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const VecT<T> e = VT::exp(VT::sub(s[i][h], vc));
        VT::store(out + h * W, VT::mul(e, VT::mul(ri, VT::load(op.rk + j + h * W))));
        VT::store(out2 + h * W, VT::mul(e, VT::mul(qi, VT::load(col_coef + p * NR + h * W))));
      }
    }
  }
};

// Weights of an off-diagonal symmetric tile for both (I, J) and (J, I), as tile_weights
// with x2, but with ONE exponential per entry when the tile's rows and keys have lse
// within kSharedPivotSpread of each other (c = the largest): every term that matters
// (p >= e^-40) then stays a normal float. Otherwise, two exponentials (tile_weights).
// coef: nr + ncp scratch.
template <class T>
void pair_weights(const Operands<T>& op, LineTerms<T> rt, int64_t r0, int64_t nr, int64_t c0,
                  int64_t nc, T* x, T* x2, int64_t ld, T* coef) {
  constexpr int64_t NR = panel_width<T>();
  double hi = -std::numeric_limits<double>::infinity(), lo = std::numeric_limits<double>::infinity();
  lse_range(rt.lse, r0, nr, hi, lo);
  lse_range(rt.lse, c0, nc, hi, lo);
  if (hi < lo) hi = lo = 0;  // no live row: every weight is 0 whatever the pivot
  if (hi - lo > kSharedPivotSpread) {
    tile_weights(op, rt, r0, nr, c0, nc, x, x2, ld);
    return;
  }
  const T c = T(hi);
  const int64_t ncp = round_up(nc, NR);
  T* row_coef = coef;       // e^{c - lse_i} g_i rq_i
  T* col_coef = coef + nr;  // e^{c - lse_j} g_j rq_j, zero for padding keys
  for (int64_t i = 0; i < nr; ++i) row_coef[i] = std::exp(c - rt.lse[r0 + i]) * rt.gr[r0 + i];
  for (int64_t j = 0; j < ncp; ++j) col_coef[j] = std::exp(c - rt.lse[c0 + j]) * rt.gr[c0 + j];
  weight_tile(op, r0, nr, c0, nc, PairWeights<T>{op, r0, c0, row_coef, col_coef, c, x, x2, ld},
              x, x2, ld);
}

template <class T>
void backward_symmetric(const Operands<T>& op, LineTerms<T> rt, T* u, T* v, int64_t threads) {
  const int64_t n = op.n, dp = op.dp;
  constexpr int64_t NR = panel_width<T>();
  const int64_t b = symmetric_block(n);
  const int64_t ld = tile_stride<T>(b);
  const int64_t nb = ceil_div(n, b);
  TileSchedule schedule(tournament_tiles(nb), nb, nb, /*shared_blocks=*/true);
  // per thread: both weight tiles, both blocks' rows in feature panels, and the per-row /
  // per-key factors of pair_weights
  const int64_t per_thread = 2 * b * ld + 2 * b * dp + 2 * ld;
  at::Tensor scratch = at::empty({threads, per_thread}, c10::CppTypeToScalarType<T>::value);
  T* scratch_p = scratch.data_ptr<T>();
  const T* rows = op.q;  // == op.k
#pragma omp parallel num_threads(threads)
  {
    T* x = scratch_p + thread_index() * per_thread;
    T* x2 = x + b * ld;
    T* i_tile = x2 + b * ld;
    T* j_tile = i_tile + b * dp;
    T* coef = j_tile + b * dp;
    schedule.run([&](int64_t ib, int64_t jb) {
      const int64_t r0 = ib * b, nr = std::min(b, n - r0);
      const int64_t c0 = jb * b, nc = std::min(b, n - c0);
      const bool pair = ib != jb;
      if (pair) pair_weights(op, rt, r0, nr, c0, nc, x, x2, ld, coef);
      else tile_weights(op, rt, r0, nr, c0, nc, x, static_cast<T*>(nullptr), ld);
      pack_panels(rows + r0 * dp, nr, dp, i_tile);
      if (pair) pack_panels(rows + c0 * dp, nc, dp, j_tile);
      const T* rows_i = i_tile;
      const T* rows_j = pair ? j_tile : i_tile;
      const int64_t pi = nr * NR, pj = nc * NR;  // panel strides
      if (u != nullptr) {
        accumulate_product<T, ALayout::Rows>(x, ld, nr, rows_j, pj, nc, dp, u + r0 * dp, dp);
        if (pair)  // tile (J, I): its weights are x2^T
          accumulate_product<T, ALayout::Cols>(x2, ld, nc, rows_i, pi, nr, dp, u + c0 * dp, dp);
      }
      if (v != nullptr) {
        accumulate_product<T, ALayout::Cols>(x, ld, nc, rows_i, pi, nr, dp, v + c0 * dp, dp);
        if (pair)
          accumulate_product<T, ALayout::Rows>(x2, ld, nr, rows_j, pj, nc, dp, v + r0 * dp, dp);
      }
    });
  }
}

}  // namespace

template <class T>
void lse_backward_kernel(const Operands<T>& op, const T* grad_lse, const T* lse, T* u, T* v) {
  if (op.n == 0 || op.m == 0 || (u == nullptr && v == nullptr)) return;
  // padded to a panel multiple: symmetric weights read them as key-side vectors
  const OwnedLineTerms<T> terms(grad_lse, lse, op.rq, op.n, round_up(op.n, panel_width<T>()));
  const LineTerms<T> rt = terms.terms();
  const int64_t threads = kernel_threads();
  if (op.symmetric) {
    backward_symmetric(op, rt, u, v, threads);
    return;
  }
  backward_sweep(op, u, v, threads,
                 [&](int64_t r0, int64_t nr, int64_t c0, int64_t nc, T* x, int64_t ld, T*) {
                   tile_weights(op, rt, r0, nr, c0, nc, x, static_cast<T*>(nullptr), ld);
                 });
}

template <class T>
double finish_gradient(const T* x, int64_t rows, int64_t d, int64_t dp, T* acc, double scale,
                       bool normalize, double eps, bool apply, const double* row_factor) {
  // t_i = <x_i, acc_i>; acc_i <- scale (acc_i - [||x_i|| >= eps] t_i x_i / ||x_i||^2), all in
  // double: the radial part cancels almost exactly when acc_i is nearly parallel to x_i, so
  // the norm here is the exact one rather than the kernel's rounded inverse. Row chunks of a
  // fixed size and an ordered sum of their partials keep dscale deterministic.
  constexpr int64_t kChunk = 256;
  const int64_t chunks = ceil_div(rows, kChunk);
  std::vector<double> partial(chunks, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ch = begin; ch < end; ++ch) {
      double total = 0;
      for (int64_t i = ch * kChunk; i < std::min(rows, (ch + 1) * kChunk); ++i) {
        const T* xi = x + i * dp;
        T* ai = acc + i * dp;
        double t = 0, norm2 = 0;
        for (int64_t c = 0; c < d; ++c) {
          t += double(xi[c]) * double(ai[c]);
          norm2 += double(xi[c]) * double(xi[c]);
        }
        total += t;
        if (!apply) continue;
        const double norm = std::sqrt(norm2);
        const double coef = (normalize && norm >= eps) ? t / (norm * norm) : 0.0;
        const double si = row_factor != nullptr ? scale * row_factor[i] : scale;
        for (int64_t c = 0; c < d; ++c) ai[c] = T(si * (double(ai[c]) - coef * double(xi[c])));
      }
      partial[ch] = total;
    }
  });
  double sum = 0;
  for (double p : partial) sum += p;
  return sum;
}

template void lse_backward_kernel<float>(const Operands<float>&, const float*, const float*, float*, float*);
template void lse_backward_kernel<double>(const Operands<double>&, const double*, const double*, double*, double*);
template double finish_gradient<float>(const float*, int64_t, int64_t, int64_t, float*, double, bool, double, bool, const double*);
template double finish_gradient<double>(const double*, int64_t, int64_t, int64_t, double*, double, bool, double, bool, const double*);

CK_CPU_NAMESPACE_END
