// Forward pairwise sigmoid (SigLIP) on CPU: with s_ij the score tile's logits
// (score_tile.h) and z_ij = +1 on the positives (self pair, equal labels), -1 elsewhere,
//
//     row_loss_i = sum_j softplus(-z_ij s_ij)       [N], no pair excluded
//
// Each tile's logits are computed once, their signs read from a sign tile where the tile
// holds positives (sign_tile), and reduced along rows (reduction.h: SigmoidReduction).
// No running max: every term is a softplus >= 0, summed per tile row in T, then into a
// double per row. OpenMP over row blocks, each walking the key tiles in order, so a row's
// result does not depend on the thread count.
#include "cpu/isa.h"  // first: the library headers, then the ISA switch

#include <algorithm>
#include <cstdint>

#include "reduction.h"
#include "schedule.h"
#include "score_tile.h"
#include "sigmoid_cpu.h"

CK_CPU_NAMESPACE_BEGIN

template <class T>
void sigmoid_forward_kernel(const Operands<T>& op, T* row_loss) {
  constexpr int64_t NR = panel_width<T>();
  const int64_t n = op.n, m = op.m;
  if (n == 0) return;
  if (m == 0) {
    std::fill(row_loss, row_loss + n, T(0));
    return;
  }
  const TileSizes ts = general_tile_sizes(n, m);
  const int64_t ld = tile_stride<T>(ts.cols);
  const int64_t nbr = ceil_div(n, ts.rows), nbc = ceil_div(m, ts.cols);
  const int64_t threads = std::min<int64_t>(kernel_threads(), nbr);
  // per thread: the score tile and its signs
  const int64_t per_thread = 2 * ts.rows * ld;
  at::Tensor scratch = at::empty({threads, per_thread}, c10::CppTypeToScalarType<T>::value);
  at::Tensor sums = at::empty({threads, ts.rows}, at::kDouble);
  T* scratch_p = scratch.data_ptr<T>();
  double* sums_p = sums.data_ptr<double>();
#pragma omp parallel num_threads(threads)
  {
    T* s = scratch_p + thread_index() * per_thread;
    T* z = s + ts.rows * ld;
    double* loss = sums_p + thread_index() * ts.rows;
#pragma omp for schedule(dynamic, 1)
    for (int64_t ib = 0; ib < nbr; ++ib) {
      const int64_t r0 = ib * ts.rows, nr = std::min(ts.rows, n - r0);
      std::fill(loss, loss + nr, 0.0);
      for (int64_t jb = 0; jb < nbc; ++jb) {
        const int64_t c0 = jb * ts.cols, nc = std::min(ts.cols, m - c0);
        score_tile(op, r0, nr, c0, nc, s, ld);
        const bool signed_tile = sign_tile(op, r0, nr, c0, nc, z, ld);
        SigmoidReduction<T>{}(s, signed_tile ? z : nullptr, ld, nr, round_up(nc, NR), loss);
      }
      for (int64_t i = 0; i < nr; ++i) row_loss[r0 + i] = T(loss[i]);
    }
  }
}

template void sigmoid_forward_kernel<float>(const Operands<float>&, float*);
template void sigmoid_forward_kernel<double>(const Operands<double>&, double*);

CK_CPU_NAMESPACE_END
