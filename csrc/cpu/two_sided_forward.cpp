// Forward two-sided log-sum-exp on CPU: with s_ij the score tile's logits (score_tile.h)
// and E the excluded pairs,
//
//     row_lse_i = log sum_{j : (i, j) not in E} exp(s_ij)     [N]
//     col_lse_j = log sum_{i : (i, j) not in E} exp(s_ij)     [M]
//
// both from ONE sweep: each tile's logits are computed once and reduced along its rows
// and its columns (reduction.h: TwoSidedReduction), with one exponential per entry at the
// tile's max where the tile's range allows it, two online (max, sum) updates otherwise.
// No N x M buffer and no per-block partial statistics: the running stats are O(N + M).
//
// Schedule (schedule.h): the tiles in Latin-square order, a tile starting only once the
// earlier tiles of its row block and of its key block are done. So the thread running a
// tile owns both blocks' stats, and every row (column) receives its tiles in an order
// fixed by the shapes: bitwise the same results for any thread count.
#include "cpu/isa.h"  // first: the library headers, then the ISA switch

#include <algorithm>
#include <cstdint>

#include "reduction.h"
#include "schedule.h"
#include "score_tile.h"
#include "two_sided_cpu.h"

CK_CPU_NAMESPACE_BEGIN

template <class T>
void two_sided_forward_kernel(const Operands<T>& op, T* row_lse, T* col_lse) {
  constexpr int64_t NR = panel_width<T>();
  const int64_t n = op.n, m = op.m;
  const TileSizes ts = general_tile_sizes(n, m);
  const int64_t ld = tile_stride<T>(ts.cols);
  const int64_t line = std::max(ld, ts.rows);
  const int64_t nbr = ceil_div(n, ts.rows), nbc = ceil_div(m, ts.cols);
  const at::ScalarType dtype = c10::CppTypeToScalarType<T>::value;
  at::Tensor maxima = at::empty({n + m}, dtype);
  at::Tensor sums = at::empty({n + m}, at::kDouble);
  const LineStats<T> rows{maxima.data_ptr<T>(), sums.data_ptr<double>()};
  const LineStats<T> cols = rows.at(n);
  rows.reset(n + m);
  if (nbr > 0 && nbc > 0) {
    TileSchedule schedule(latin_square_tiles(nbr, nbc), nbr, nbc, /*shared_blocks=*/false);
    const int64_t threads = std::min<int64_t>(kernel_threads(), nbr * nbc);
    // per thread: the score tile and the reduction's four lines
    const int64_t per_thread = ts.rows * ld + 4 * line;
    at::Tensor scratch = at::empty({threads, per_thread}, dtype);
    T* scratch_p = scratch.data_ptr<T>();
#pragma omp parallel num_threads(threads)
    {
      T* s = scratch_p + thread_index() * per_thread;
      const TwoSidedReduction<T> reduce(s + ts.rows * ld, line);
      schedule.run([&](int64_t ib, int64_t jb) {
        const int64_t r0 = ib * ts.rows, nr = std::min(ts.rows, n - r0);
        const int64_t c0 = jb * ts.cols, nc = std::min(ts.cols, m - c0);
        score_tile(op, r0, nr, c0, nc, s, ld);
        reduce(s, ld, nr, round_up(nc, NR), nc, rows.at(r0), cols.at(c0));
      });
    }
  }
  finish_lines(n, rows.max, rows.sum, row_lse, static_cast<T*>(nullptr), 0);
  finish_lines(m, cols.max, cols.sum, col_lse, static_cast<T*>(nullptr), 0);
}

template void two_sided_forward_kernel<float>(const Operands<float>&, float*, float*);
template void two_sided_forward_kernel<double>(const Operands<double>&, double*, double*);

CK_CPU_NAMESPACE_END
