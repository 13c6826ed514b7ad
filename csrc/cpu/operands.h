// The inputs of one core-op call, laid out once for the tile kernels.
//
// Everything here is O((N + M) d): rows in the accumulation dtype with the feature
// dimension padded to a panel multiple (the inputs themselves when they already are so),
// K^T in key panels for the logits product, per-row inverse norms, the per-key bias padded
// with -inf, and int64 labels. Normalization is never applied to a copy: the kernels
// multiply the dot products by the inverse norms (DESIGN.md section 1).
#pragma once

#include "cpu/isa.h"  // first: the library headers, then the ISA switch

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "vec.h"

#ifdef _OPENMP
#include <omp.h>
#endif

CK_CPU_NAMESPACE_BEGIN

template <class T>
struct Operands {
  int64_t n = 0, m = 0, d = 0;
  int64_t dp = 0;   // padded feature dimension: row stride of q and k
  int64_t mp = 0;   // keys padded to a whole number of panels
  const T* q = nullptr;   // [n, dp], zero beyond d
  const T* k = nullptr;   // [m, dp]
  const T* kt = nullptr;  // [mp / NR][d][NR]: panel p holds keys p NR .. p NR + NR - 1
  const T* rq = nullptr;  // [n] 1 / max(||q_i||, eps), or 1 without normalize
  const T* rk = nullptr;  // [mp] the same for keys; 0 for padding keys
  const T* cb = nullptr;  // [mp] key bias, 0 without one, -inf for padding keys
  // With normalize, rows whose largest entry is huge (huge_row_bound) are held scaled by
  // an exact power of two, 2^-e_i, so that no fp32 dot product of two of them overflows;
  // the normalized rows, hence lse and o, are unchanged. The gradient of such a row is
  // 2^-e_i times that of the held row: these factors (double, one per row) or null when
  // no row of q (of k) was scaled.
  const double* q_grad_factor = nullptr;
  const double* k_grad_factor = nullptr;
  const int64_t* ql = nullptr;  // [n] labels when exclude_positives, else null
  const int64_t* kl = nullptr;  // [m]
  // pairwise_sigmoid: the pairs of E (self pair, equal labels) are its positives, which
  // flip the logit's sign (score_tile.h: sign_tile) instead of being excluded.
  bool signed_pairs = false;
  bool has_self = false;
  int64_t self_offset = 0;
  bool normalize = false;
  double scale = 1;
  // Logits s_ij = (dot_ij row_factor(i)) rk_j + cb_j: the row factor folds scale and rq_i.
  T row_factor(int64_t i) const { return T(scale * double(rq[i])); }
  // q and k are the same rows, there is no bias, and the excluded set is symmetric
  // (self_offset is none or 0, labels equal): s_ij = s_ji, so one tile serves both.
  bool symmetric = false;
  std::vector<at::Tensor> owned;  // keeps the buffers above alive
};

// Lays out q [n, d], k [m, d] (any float dtype, any strides) for accumulation dtype T.
template <class T>
Operands<T> prepare_operands(const at::Tensor& q, const at::Tensor& k, double scale,
                             const std::optional<at::Tensor>& bias,
                             const std::optional<at::Tensor>& q_labels,
                             const std::optional<at::Tensor>& k_labels,
                             std::optional<int64_t> self_offset, bool normalize, double eps,
                             bool exclude_positives);

// ||x_i|| of rows x [rows, stride], accumulated in double.
template <class T>
void row_norms(const T* x, int64_t rows, int64_t d, int64_t stride, double* out);

#ifdef _OPENMP
inline int thread_index() { return omp_get_thread_num(); }
#else
inline int thread_index() { return 0; }
#endif

// Threads for one kernel call: torch's intra-op count, 1 inside someone else's parallel region.
int kernel_threads();

CK_CPU_NAMESPACE_END
