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
// One recompute and two products per tile. Parallel schedule without atomic adds or
// per-thread copies of dk (schedule.h): tiles in Latin-square order ((I, I + r mod nbc)),
// each starting once the previous tiles of its row block and its key block are done, so
// it owns their u~ and v~ rows. Symmetric problems (see lse_forward.cpp) compute each
// off-diagonal tile once, in tournament order, and derive from it the weights of both
// (I, J) and (J, I): one recompute and four products for two tiles. In both schemes a
// row's contributions arrive in an order fixed by the shapes, so results are bitwise the
// same for any thread count.
#include "cpu/isa.h"  // first: the library headers, then the ISA switch
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "lse_cpu.h"
#include "microkernel.h"
#include "schedule.h"
#include "tile_ops.h"

CK_CPU_NAMESPACE_BEGIN

namespace {

// Per-row inputs of the weights: lse (+inf for rows with an empty A(i), lse = -inf, so
// that their weights are exactly 0 whatever the logits) and g_i rq_i (0 for such rows).
// A NaN lse is kept: exp(s - NaN) makes that row's weights, and so its gradients, NaN.
template <class T>
struct RowTerms {
  const T* lse;
  const T* grq;
};

// x_ij = g_i rq_i rk_j exp(s_ij - lse_i) for tile (rows r0 .. r0 + nr, keys c0 .. c0 + nc),
// and with x2 (symmetric problems) the weights of the transposed tile, stored untransposed:
// x2_ij = g_j rq_j rk_i exp(s_ij - lse_j). Excluded pairs are 0.
template <class T>
void tile_weights(const Operands<T>& op, RowTerms<T> rt, int64_t r0, int64_t nr, int64_t c0,
                  int64_t nc, T* x, T* x2, int64_t ld) {
  using VT = Vec<T>;
  constexpr int64_t NR = panel_width<T>();
  constexpr int W = VT::W;
  const int64_t npanels = ceil_div(nc, NR);
  logits_tile<T>(
      op.q + r0 * op.dp, op.dp, nr, op.kt + (c0 / NR) * op.d * NR, op.d, npanels,
      [&](auto mr, int64_t i0, int64_t p, VecT<T>(&c)[decltype(mr)::value][2]) {
        constexpr int MR = decltype(mr)::value;
        const int64_t j = c0 + p * NR;
#pragma GCC unroll 6
        for (int i = 0; i < MR; ++i) {
          const int64_t row = r0 + i0 + i;
          const VecT<T> a = VT::set1(op.row_factor(row));
          const VecT<T> lse_i = VT::set1(rt.lse[row]);
          const VecT<T> g_i = VT::set1(rt.grq[row]);
          T* out = x + (i0 + i) * ld + p * NR;
#pragma GCC unroll 2
          for (int h = 0; h < 2; ++h) {
            const VecT<T> s = logit<T>(c[i][h], a, op.rk + j + h * W, op.cb + j + h * W);
            VT::store(out + h * W, VT::mul(VT::exp(VT::sub(s, lse_i)),
                                           VT::mul(g_i, VT::load(op.rk + j + h * W))));
            if (x2 != nullptr) {
              const VecT<T> w = VT::mul(VT::load(rt.grq + j + h * W), VT::set1(op.rq[row]));
              VT::store(x2 + (out - x) + h * W,
                        VT::mul(VT::exp(VT::sub(s, VT::load(rt.lse + j + h * W))), w));
            }
          }
        }
      });
  mask_tile(op, x, ld, r0, nr, c0, nc, T(0));
  if (x2 != nullptr) mask_tile(op, x2, ld, r0, nr, c0, nc, T(0));
}

// Weights of an off-diagonal symmetric tile for both (I, J) and (J, I), as tile_weights
// with x2, but with ONE exponential per entry when the tile's rows and keys have lse
// within kSharedPivotSpread of each other (c = the largest): e^{s - c} times per-row and
// per-key factors e^{c - lse} g rq. Every term that matters (p >= e^-40) then stays a
// normal float. Otherwise, two exponentials (tile_weights). coef: nr + ncp scratch.
template <class T>
void pair_weights(const Operands<T>& op, RowTerms<T> rt, int64_t r0, int64_t nr, int64_t c0,
                  int64_t nc, T* x, T* x2, int64_t ld, T* coef) {
  using VT = Vec<T>;
  constexpr int64_t NR = panel_width<T>();
  constexpr int W = VT::W;
  double hi = -std::numeric_limits<double>::infinity(), lo = std::numeric_limits<double>::infinity();
  auto scan = [&](int64_t first, int64_t count) {
    for (int64_t i = first; i < first + count; ++i) {
      const double l = rt.lse[i];
      // +inf: a row with no keys (or a true +inf lse): its weights are 0 for finite logits.
      // A NaN lse drops out of the max / min and makes its own weights NaN.
      if (l != std::numeric_limits<double>::infinity()) {
        hi = std::max(hi, l);
        lo = std::min(lo, l);
      }
    }
  };
  scan(r0, nr);
  scan(c0, nc);
  if (hi < lo) hi = lo = 0;  // no live row: every weight is 0 whatever the pivot
  if (hi - lo > kSharedPivotSpread) {
    tile_weights(op, rt, r0, nr, c0, nc, x, x2, ld);
    return;
  }
  const T c = T(hi);
  const int64_t ncp = round_up(nc, NR);
  T* row_coef = coef;       // e^{c - lse_i} g_i rq_i
  T* col_coef = coef + nr;  // e^{c - lse_j} g_j rq_j, zero for padding keys
  for (int64_t i = 0; i < nr; ++i) row_coef[i] = std::exp(c - rt.lse[r0 + i]) * rt.grq[r0 + i];
  for (int64_t j = 0; j < ncp; ++j) col_coef[j] = std::exp(c - rt.lse[c0 + j]) * rt.grq[c0 + j];
  const VecT<T> vc = VT::set1(c);
  logits_tile<T>(
      op.q + r0 * op.dp, op.dp, nr, op.kt + (c0 / NR) * op.d * NR, op.d, ceil_div(nc, NR),
      [&](auto mr, int64_t i0, int64_t p, VecT<T>(&acc)[decltype(mr)::value][2]) {
        constexpr int MR = decltype(mr)::value;
        const int64_t j = c0 + p * NR;
#pragma GCC unroll 6
        for (int i = 0; i < MR; ++i) {
          const int64_t row = r0 + i0 + i;
          const VecT<T> a = VT::set1(op.row_factor(row));
          const VecT<T> ri = VT::set1(row_coef[i0 + i]);
          const VecT<T> qi = VT::set1(op.rq[row]);
          T* out = x + (i0 + i) * ld + p * NR;
          T* out2 = x2 + (i0 + i) * ld + p * NR;
#pragma GCC unroll 2
          for (int h = 0; h < 2; ++h) {
            const VecT<T> s = logit<T>(acc[i][h], a, op.rk + j + h * W, op.cb + j + h * W);
            const VecT<T> e = VT::exp(VT::sub(s, vc));
            VT::store(out + h * W, VT::mul(e, VT::mul(ri, VT::load(op.rk + j + h * W))));
            VT::store(out2 + h * W, VT::mul(e, VT::mul(qi, VT::load(col_coef + p * NR + h * W))));
          }
        }
      });
  mask_tile(op, x, ld, r0, nr, c0, nc, T(0));
  mask_tile(op, x2, ld, r0, nr, c0, nc, T(0));
}

template <class T>
void backward_general(const Operands<T>& op, RowTerms<T> rt, T* u, T* v, int64_t threads) {
  constexpr int64_t NR = panel_width<T>();
  const int64_t n = op.n, m = op.m, dp = op.dp;
  const TileSizes ts = general_tile_sizes(n, m);
  const int64_t ld = tile_stride<T>(ts.cols);
  const int64_t nbr = ceil_div(n, ts.rows), nbc = ceil_div(m, ts.cols);
  // per thread: the weights tile and the tile's key and row blocks in feature panels
  const int64_t per_thread = ts.rows * ld + (ts.cols + ts.rows) * dp;
  at::Tensor scratch = at::empty({threads, per_thread}, c10::CppTypeToScalarType<T>::value);
  T* scratch_p = scratch.data_ptr<T>();

  auto tile = [&](T* x, int64_t ib, int64_t jb) {
    const int64_t r0 = ib * ts.rows, nr = std::min(ts.rows, n - r0);
    const int64_t c0 = jb * ts.cols, nc = std::min(ts.cols, m - c0);
    T* k_tile = x + ts.rows * ld;
    T* q_tile = k_tile + ts.cols * dp;
    tile_weights(op, rt, r0, nr, c0, nc, x, static_cast<T*>(nullptr), ld);
    if (u != nullptr) {
      pack_panels(op.k + c0 * dp, nc, dp, k_tile);
      accumulate_product<T, ALayout::Rows>(x, ld, nr, k_tile, nc * NR, nc, dp, u + r0 * dp, dp);
    }
    if (v != nullptr) {
      pack_panels(op.q + r0 * dp, nr, dp, q_tile);
      accumulate_product<T, ALayout::Cols>(x, ld, nc, q_tile, nr * NR, nr, dp, v + c0 * dp, dp);
    }
  };

  // both sides: Latin-square order, each tile waiting only for its two blocks
  TileSchedule schedule(u != nullptr && v != nullptr ? latin_square_tiles(nbr, nbc)
                                                     : std::vector<std::pair<int64_t, int64_t>>{},
                        nbr, nbc, /*shared_blocks=*/false);
#pragma omp parallel num_threads(threads)
  {
    T* x = scratch_p + thread_index() * per_thread;
    if (u != nullptr && v != nullptr) {
      schedule.run([&](int64_t ib, int64_t jb) { tile(x, ib, jb); });
    } else if (u != nullptr) {  // rows only: each row block walks the key blocks
#pragma omp for schedule(dynamic, 1)
      for (int64_t ib = 0; ib < nbr; ++ib)
        for (int64_t r = 0; r < nbc; ++r) tile(x, ib, (ib + r) % nbc);
    } else if (v != nullptr) {  // keys only: each key block walks the row blocks
#pragma omp for schedule(dynamic, 1)
      for (int64_t jb = 0; jb < nbc; ++jb)
        for (int64_t r = 0; r < nbr; ++r) tile(x, (jb + r) % nbr, jb);
    }
  }
}

template <class T>
void backward_symmetric(const Operands<T>& op, RowTerms<T> rt, T* u, T* v, int64_t threads) {
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
  const int64_t padded = round_up(op.n, panel_width<T>());
  std::vector<T> lse_safe(padded, std::numeric_limits<T>::infinity()), grq(padded, T(0));
  for (int64_t i = 0; i < op.n; ++i) {
    if (lse[i] != neg_inf<T>()) {
      lse_safe[i] = lse[i];
      grq[i] = grad_lse[i] * op.rq[i];
    }
  }
  const RowTerms<T> rt{lse_safe.data(), grq.data()};
  const int64_t threads = kernel_threads();
  if (op.symmetric) backward_symmetric(op, rt, u, v, threads);
  else backward_general(op, rt, u, v, threads);
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
