// Forward core op on CPU: for each row i,
//
//     lse_i = log sum_{j in A(i)} exp(s_ij),   s_ij = scale rq_i rk_j <q_i, k_j> + b_j
//     o_i   = sum_{j in A(i)} exp(s_ij - lse_i) rk_j k_j          (return_o)
//
// tiled flash-attention style: a block of rows against key tiles that fit in L2, an
// online (max, sum-exp) per row, o rescaled as the max grows. No N x M buffer: one tile
// of logits per thread.
//
// Each tile is a score tile (score_tile.h) reduced by a policy (reduction.h): rows only
// (RowReduction) or, for a symmetric off-diagonal tile without o, rows and columns
// (TwoSidedReduction, the two-sided lse's reduction).
//
// General case: OpenMP over row blocks; each row block walks the key tiles in order, so
// a row's result does not depend on the thread count or schedule.
//
// Symmetric case (q and k the same rows, no bias, symmetric exclusions: SupCon 'all',
// SimCLR): s_IJ = s_JI^T, so each off-diagonal tile is computed once and its exp-sums go
// both to its rows (along rows) and to the rows of block J (along columns), each with its
// own online max (or, when the tile's range allows, one shared pivot and one exponential
// per entry). The pairs run in tournament order (schedule.h) so that the two blocks'
// running stats are owned by one thread at a time; the order of updates is fixed by N alone.
#include "cpu/isa.h"  // first: the library headers, then the ISA switch
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "lse_cpu.h"
#include "microkernel.h"
#include "reduction.h"
#include "schedule.h"
#include "score_tile.h"
#include "tile_ops.h"

CK_CPU_NAMESPACE_BEGIN

namespace {

template <class T>
void forward_general(const Operands<T>& op, T* lse, T* o, int64_t threads) {
  constexpr int64_t NR = panel_width<T>();
  const int64_t n = op.n, m = op.m, dp = op.dp;
  const TileSizes ts = general_tile_sizes(n, m);
  const int64_t ld = tile_stride<T>(ts.cols);
  const int64_t nbr = ceil_div(n, ts.rows), nbc = ceil_div(m, ts.cols);
  // per thread: one logits tile, the running max of its row block and, for o, the key
  // tile in feature panels
  const int64_t per_thread = ts.rows * ld + ts.rows + (o != nullptr ? ts.cols * dp : 0);
  at::Tensor scratch = at::empty({threads, per_thread}, c10::CppTypeToScalarType<T>::value);
  at::Tensor sums = at::empty({threads, ts.rows}, at::kDouble);
  T* scratch_p = scratch.data_ptr<T>();
  double* sums_p = sums.data_ptr<double>();
#pragma omp parallel num_threads(threads)
  {
    const int tid = thread_index();
    T* s = scratch_p + tid * per_thread;
    T* row_max = s + ts.rows * ld;
    T* k_tile = row_max + ts.rows;
    double* row_sum = sums_p + tid * ts.rows;
#pragma omp for schedule(dynamic, 1)
    for (int64_t ib = 0; ib < nbr; ++ib) {
      const int64_t r0 = ib * ts.rows, nr = std::min(ts.rows, n - r0);
      const LineStats<T> rows{row_max, row_sum};
      rows.reset(nr);
      T* o_rows = o != nullptr ? o + r0 * dp : nullptr;
      for (int64_t jb = 0; jb < nbc; ++jb) {
        const int64_t c0 = jb * ts.cols, nc = std::min(ts.cols, m - c0);
        const int64_t ncp = round_up(nc, NR);
        score_tile(op, r0, nr, c0, nc, s, ld);
        RowReduction<T>{}(s, ld, nr, ncp, rows, o_rows != nullptr ? op.rk + c0 : nullptr,
                          [&](int64_t i, T rescale) {
                            if (o_rows != nullptr) scale_rows(o_rows + i * dp, dp, 1, dp, &rescale);
                          });
        if (o_rows != nullptr) {
          pack_panels(op.k + c0 * dp, nc, dp, k_tile);
          accumulate_product<T, ALayout::Rows>(s, ld, nr, k_tile, nc * NR, nc, dp, o_rows, dp);
        }
      }
      finish_lines(nr, row_max, row_sum, lse + r0, o_rows, dp);
    }
  }
}

template <class T>
void forward_symmetric(const Operands<T>& op, T* lse, T* o, int64_t threads) {
  const int64_t n = op.n, dp = op.dp;
  constexpr int64_t NR = panel_width<T>();
  const int64_t b = symmetric_block(n);
  const int64_t ld = tile_stride<T>(b);
  const int64_t nb = ceil_div(n, b);
  TileSchedule schedule(tournament_tiles(nb), nb, nb, /*shared_blocks=*/true);
  // running stats of every row (rows of block J are also updated from tiles (I, J))
  at::Tensor maxima = at::empty({n}, c10::CppTypeToScalarType<T>::value);
  at::Tensor sums = at::zeros({n}, at::kDouble);
  T* row_max = maxima.data_ptr<T>();
  double* row_sum = sums.data_ptr<double>();
  const LineStats<T> stats{row_max, row_sum};
  stats.reset(n);
  // per thread: logits tile, column-side exp tile, 4 rows of row / column stats and, for
  // o, both blocks' rows in feature panels
  const int64_t per_thread = 2 * b * ld + 4 * ld + (o != nullptr ? 2 * b * dp : 0);
  at::Tensor scratch = at::empty({threads, per_thread}, c10::CppTypeToScalarType<T>::value);
  T* scratch_p = scratch.data_ptr<T>();
#pragma omp parallel num_threads(threads)
  {
    const int tid = thread_index();
    T* s = scratch_p + tid * per_thread;
    T* e = s + b * ld;
    T* rescale = e + b * ld;
    T* colmax = rescale + ld;
    T* colsum = colmax + ld;
    T* rowmax = colsum + ld;
    T* reduction_scratch = rescale;  // the same four lines, in TwoSidedReduction's order
    T* i_tile = rowmax + ld;
    T* j_tile = i_tile + b * dp;
    schedule.run([&](int64_t ib, int64_t jb) {
      const int64_t r0 = ib * b, nr = std::min(b, n - r0);
      const int64_t c0 = jb * b, nc = std::min(b, n - c0);
      const int64_t ncp = round_up(nc, panel_width<T>());
      score_tile(op, r0, nr, c0, nc, s, ld);
      if (o != nullptr) {
        pack_panels(op.k + r0 * dp, nr, dp, i_tile);
        if (ib != jb) pack_panels(op.k + c0 * dp, nc, dp, j_tile);
      }
      const T* j_rows = ib != jb ? j_tile : i_tile;
      const LineStats<T> rows_i = stats.at(r0), rows_j = stats.at(c0);
      // without o, one policy serves both sides: tile (J, I)'s rows are this tile's columns
      if (o == nullptr) {
        if (ib != jb) TwoSidedReduction<T>(reduction_scratch, ld)(s, ld, nr, ncp, nc, rows_i, rows_j);
        else RowReduction<T>{}(s, ld, nr, ncp, rows_i);
        return;
      }
      if (ib != jb) {
        // columns first: the row pass below overwrites s with its o operand
        column_update(s, ld, nr, ncp, nc, rows_j.max, rows_j.sum, op.rq + r0, e, rescale, colmax,
                      colsum);
        scale_rows(o + c0 * dp, dp, nc, dp, rescale);
        // o_J += E^T K_I (E[i][j] = e^{s_ij - m_j} rq_i)
        accumulate_product<T, ALayout::Cols>(e, ld, nc, i_tile, nr * NR, nr, dp, o + c0 * dp, dp);
      }
      RowReduction<T>{}(s, ld, nr, ncp, rows_i, op.rk + c0, [&](int64_t i, T r) {
        scale_rows(o + (r0 + i) * dp, dp, 1, dp, &r);
      });
      accumulate_product<T, ALayout::Rows>(s, ld, nr, j_rows, nc * NR, nc, dp, o + r0 * dp, dp);
    });
  }
  finish_lines(n, row_max, row_sum, lse, o, dp);
}

}  // namespace

template <class T>
void lse_forward_kernel(const Operands<T>& op, T* lse, T* o) {
  if (op.n == 0) return;
  const int64_t threads = kernel_threads();
  if (op.symmetric) forward_symmetric(op, lse, o, threads);
  else forward_general(op, lse, o, threads);
}

template void lse_forward_kernel<float>(const Operands<float>&, float*, float*);
template void lse_forward_kernel<double>(const Operands<double>&, double*, double*);

CK_CPU_NAMESPACE_END
