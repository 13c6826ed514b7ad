// The backward kernels' shared half: given a weight policy that fills a tile
// X_IJ = [x_ij] (score_tile.h: weight_tile) with
//
//     x_ij = rq_i rk_j dL/ds_ij          (lse: g_i p_ij; two-sided: g_i p_ij + h_j p'_ij)
//
// every tile feeds the two second products with the raw rows,
//
//     u~_I += X_IJ K_J,   v~_J += X_IJ^T Q_I      so u~_i = rq_i u_i, v~_j = rk_j v_j,
//
// and finish_gradient (lse_backward.cpp) turns u~, v~ into dq, dk, dscale.
//
// Parallel schedule without atomic adds or per-thread copies of dk (schedule.h): tiles
// in Latin-square order ((I, I + r mod nbc)), each starting once the previous tiles of
// its row block and its key block are done, so it owns their u~ and v~ rows; with one
// side only, each block walks the other side's blocks in a fixed order. So every row's
// contributions arrive in an order fixed by the shapes: bitwise the same for any thread
// count.
#pragma once

#include "cpu/isa.h"  // first: the library headers, then the ISA switch

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "microkernel.h"
#include "operands.h"
#include "schedule.h"
#include "vec.h"

CK_CPU_NAMESPACE_BEGIN

// Per-line inputs of the weights (rows with g = dL/drow_lse, or columns with h): the
// saved lse, +inf for a line with no pairs (lse = -inf), so that its weights are exactly
// 0 whatever the logits, and g_i r_i (r the line's inverse norm; 0 for such lines). A NaN
// lse is kept: exp(s - NaN) makes that line's weights, and so its gradients, NaN.
// Padded to `padded` entries (+inf, 0): a tile reads its keys' terms a panel at a time.
template <class T>
struct LineTerms {
  const T* lse;
  const T* gr;
};

template <class T>
class OwnedLineTerms {
 public:
  OwnedLineTerms(const T* grad, const T* lse, const T* inv_norm, int64_t count, int64_t padded)
      : lse_(padded, std::numeric_limits<T>::infinity()), gr_(padded, T(0)) {
    for (int64_t i = 0; i < count; ++i) {
      if (lse[i] != neg_inf<T>()) {
        lse_[i] = lse[i];
        gr_[i] = grad[i] * inv_norm[i];
      }
    }
  }
  LineTerms<T> terms() const { return {lse_.data(), gr_.data()}; }

 private:
  std::vector<T> lse_, gr_;
};

// The largest and smallest finite-or-NaN-free lse of lines first .. first + count that
// may carry weight (+inf lines carry none; NaN drops out of the max / min).
template <class T>
inline void lse_range(const T* lse, int64_t first, int64_t count, double& hi, double& lo) {
  for (int64_t i = first; i < first + count; ++i) {
    const double l = lse[i];
    if (l != std::numeric_limits<double>::infinity()) {
      hi = std::max(hi, l);
      lo = std::min(lo, l);
    }
  }
}

// u~ [n, dp] and v~ [m, dp] (either null when not needed) from every tile of the general
// tiling. weights(r0, nr, c0, nc, x, ld, coef) fills X of the tile (stride ld) and may use
// coef, per-thread scratch of at least nr + ncp entries (per-line factors).
// weights_own_keys: the weights also write per-key outputs of the tile's key block (the
// sigmoid's dbias), so the tiles always run in the Latin-square order, which hands each
// key block to one tile at a time and, whichever products are needed, in the same order.
template <class T, class TileWeights>
void backward_sweep(const Operands<T>& op, T* u, T* v, int64_t threads, TileWeights&& weights,
                    bool weights_own_keys = false) {
  constexpr int64_t NR = panel_width<T>();
  const int64_t n = op.n, m = op.m, dp = op.dp;
  const TileSizes ts = general_tile_sizes(n, m);
  const int64_t ld = tile_stride<T>(ts.cols);
  const int64_t nbr = ceil_div(n, ts.rows), nbc = ceil_div(m, ts.cols);
  // per thread: the weights tile, the tile's key and row blocks in feature panels, and
  // the weights' per-line factors
  const int64_t per_thread = ts.rows * ld + (ts.cols + ts.rows) * dp + ts.rows + ld;
  at::Tensor scratch = at::empty({threads, per_thread}, c10::CppTypeToScalarType<T>::value);
  T* scratch_p = scratch.data_ptr<T>();

  auto tile = [&](T* x, int64_t ib, int64_t jb) {
    const int64_t r0 = ib * ts.rows, nr = std::min(ts.rows, n - r0);
    const int64_t c0 = jb * ts.cols, nc = std::min(ts.cols, m - c0);
    T* k_tile = x + ts.rows * ld;
    T* q_tile = k_tile + ts.cols * dp;
    T* coef = q_tile + ts.rows * dp;
    weights(r0, nr, c0, nc, x, ld, coef);
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
  const bool both = (u != nullptr && v != nullptr) || weights_own_keys;
  TileSchedule schedule(both ? latin_square_tiles(nbr, nbc)
                             : std::vector<std::pair<int64_t, int64_t>>{},
                        nbr, nbc, /*shared_blocks=*/false);
#pragma omp parallel num_threads(threads)
  {
    T* x = scratch_p + thread_index() * per_thread;
    if (both) {
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

CK_CPU_NAMESPACE_END
