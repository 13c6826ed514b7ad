// Forward core op on CPU: for each row i,
//
//     lse_i = log sum_{j in A(i)} exp(s_ij),   s_ij = scale rq_i rk_j <q_i, k_j> + b_j
//     o_i   = sum_{j in A(i)} exp(s_ij - lse_i) rk_j k_j          (return_o)
//
// tiled flash-attention style: a block of rows against key tiles that fit in L2, an
// online (max, sum-exp) per row, o rescaled as the max grows. No N x M buffer: one tile
// of logits per thread.
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
#include "schedule.h"
#include "tile_ops.h"

CK_CPU_NAMESPACE_BEGIN

namespace {

// Logits of tile (rows r0 .. r0 + nr, keys c0 .. c0 + nc) into s [nr x ncp], stride ld,
// masked entries -inf.
template <class T>
void tile_logits(const Operands<T>& op, int64_t r0, int64_t nr, int64_t c0, int64_t nc, T* s,
                 int64_t ld) {
  constexpr int64_t NR = panel_width<T>();
  constexpr int W = Vec<T>::W;
  const int64_t npanels = ceil_div(nc, NR);
  logits_tile<T>(op.q + r0 * op.dp, op.dp, nr, op.kt + (c0 / NR) * op.d * NR, op.d, npanels,
                 [&](auto mr, int64_t i0, int64_t p, VecT<T>(&c)[decltype(mr)::value][2]) {
                   constexpr int MR = decltype(mr)::value;
                   const int64_t j = p * NR;
#pragma GCC unroll 6
                   for (int i = 0; i < MR; ++i) {
                     const VecT<T> a = Vec<T>::set1(op.row_factor(r0 + i0 + i));
                     T* out = s + (i0 + i) * ld + j;
                     Vec<T>::store(out, logit<T>(c[i][0], a, op.rk + c0 + j, op.cb + c0 + j));
                     Vec<T>::store(out + W, logit<T>(c[i][1], a, op.rk + c0 + j + W, op.cb + c0 + j + W));
                   }
                 });
  // Padding keys get -inf from their bias, but an infinite scale or an infinite entry of
  // q makes their 0 * inf NaN: set them again (the last key panel only).
  if (nc % NR != 0) {
    const int64_t ncp = round_up(nc, NR);
    for (int64_t i = 0; i < nr; ++i) std::fill(s + i * ld + nc, s + i * ld + ncp, neg_inf<T>());
  }
  mask_tile(op, s, ld, r0, nr, c0, nc, neg_inf<T>());
}

// lse and o of rows r0 .. r0 + nr from their running stats: lse = pivot + log l, with the
// finite pivot of row_update, so an empty row (l = 0) gives -inf and a NaN met anywhere
// in the row (l NaN) gives NaN; a row whose max is +inf gives +inf unless it met a NaN.
// o rows (stride dp) divided by l.
template <class T>
void finish_rows(int64_t nr, const T* m, const double* l, T* lse, T* o, int64_t dp) {
  for (int64_t i = 0; i < nr; ++i) {
    if (m[i] == std::numeric_limits<T>::infinity() && !std::isnan(l[i]))
      lse[i] = std::numeric_limits<T>::infinity();
    else
      lse[i] = T(double(finite_pivot(m[i])) + std::log(l[i]));
    if (o != nullptr) {
      const T inv = l[i] > 0 || std::isnan(l[i]) ? T(1.0 / l[i]) : T(0);
      T* row = o + i * dp;
      for (int64_t c = 0; c < dp; ++c) row[c] *= inv;
    }
  }
}

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
      std::fill(row_max, row_max + nr, neg_inf<T>());
      std::fill(row_sum, row_sum + nr, 0.0);
      T* o_rows = o != nullptr ? o + r0 * dp : nullptr;
      for (int64_t jb = 0; jb < nbc; ++jb) {
        const int64_t c0 = jb * ts.cols, nc = std::min(ts.cols, m - c0);
        const int64_t ncp = round_up(nc, NR);
        tile_logits(op, r0, nr, c0, nc, s, ld);
        for (int64_t i = 0; i < nr; ++i) {
          const T rescale = row_update(s + i * ld, ncp, row_max[i], row_sum[i],
                                       o_rows != nullptr ? op.rk + c0 : nullptr);
          if (o_rows != nullptr) scale_rows(o_rows + i * dp, dp, 1, dp, &rescale);
        }
        if (o_rows != nullptr) {
          pack_panels(op.k + c0 * dp, nc, dp, k_tile);
          accumulate_product<T, ALayout::Rows>(s, ld, nr, k_tile, nc * NR, nc, dp, o_rows, dp);
        }
      }
      finish_rows(nr, row_max, row_sum, lse + r0, o_rows, dp);
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
  at::Tensor stats = at::empty({n}, c10::CppTypeToScalarType<T>::value);
  at::Tensor sums = at::zeros({n}, at::kDouble);
  T* row_max = stats.data_ptr<T>();
  double* row_sum = sums.data_ptr<double>();
  std::fill(row_max, row_max + n, neg_inf<T>());
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
    T* i_tile = rowmax + ld;
    T* j_tile = i_tile + b * dp;
    schedule.run([&](int64_t ib, int64_t jb) {
      const int64_t r0 = ib * b, nr = std::min(b, n - r0);
      const int64_t c0 = jb * b, nc = std::min(b, n - c0);
      const int64_t ncp = round_up(nc, panel_width<T>());
      tile_logits(op, r0, nr, c0, nc, s, ld);
      if (o != nullptr) {
        pack_panels(op.k + r0 * dp, nr, dp, i_tile);
        if (ib != jb) pack_panels(op.k + c0 * dp, nc, dp, j_tile);
      }
      const T* j_rows = ib != jb ? j_tile : i_tile;
      // without o, one exponential per entry serves both sides when the tile allows it
      if (ib != jb && o == nullptr &&
          shared_pivot_update(s, ld, nr, ncp, nc, row_max + r0, row_sum + r0, row_max + c0,
                              row_sum + c0, rowmax, colmax, colsum))
        return;
      if (ib != jb) {
        // columns first: the row pass below overwrites s with its o operand
        column_update(s, ld, nr, ncp, nc, row_max + c0, row_sum + c0,
                      o != nullptr ? op.rq + r0 : nullptr, e, rescale, colmax, colsum);
        if (o != nullptr) {
          scale_rows(o + c0 * dp, dp, nc, dp, rescale);
          // o_J += E^T K_I (E[i][j] = e^{s_ij - m_j} rq_i)
          accumulate_product<T, ALayout::Cols>(e, ld, nc, i_tile, nr * NR, nr, dp, o + c0 * dp, dp);
        }
      }
      for (int64_t i = 0; i < nr; ++i) {
        const T r = row_update(s + i * ld, ncp, row_max[r0 + i], row_sum[r0 + i],
                               o != nullptr ? op.rk + c0 : nullptr);
        if (o != nullptr) scale_rows(o + (r0 + i) * dp, dp, 1, dp, &r);
      }
      if (o != nullptr)
        accumulate_product<T, ALayout::Rows>(s, ld, nr, j_rows, nc * NR, nc, dp, o + r0 * dp, dp);
    });
  }
  finish_rows(n, row_max, row_sum, lse, o, dp);
}

}  // namespace

TileSizes general_tile_sizes(int64_t n, int64_t m) {
  // 96 x 256 logits (~100 KiB fp32): the tile and the operand panels in use stay in a
  // 512 KiB L2 (larger row blocks measured no faster). Smaller problems use smaller tiles
  // so that there are ~8 blocks each way to spread over threads. The sizes depend on the
  // shapes only, never on the thread count, so results are bitwise the same for any
  // number of threads.
  TileSizes ts;
  ts.rows = std::min<int64_t>(96, std::max<int64_t>(kMR, round_up(ceil_div(n, 8), kMR)));
  ts.cols = std::min<int64_t>(256, std::max<int64_t>(16, round_up(ceil_div(m, 8), 16)));
  return ts;
}

int64_t symmetric_block(int64_t n) {
  // 192 x 192 blocks: each pair does five 192 x 192 x d products, long enough inner loops
  // to amortize the micro-tile epilogues; measured (N = 16384, d = 128, 2 threads) a few
  // percent faster than 128 and 256, and 10% faster than 96.
  return std::min<int64_t>(192, std::max<int64_t>(16, round_up(ceil_div(n, 8), 16)));
}

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
