// What the op wrappers hand the CUDA kernels: raw pointers, sizes and strides, no ATen
// and no CUDA headers, so that lse_cuda.cu compiles without torch and the same runners
// exist twice: ck::cuda_kernels (nvcc, the device) and ck::emulated_kernels (the host
// compiler, csrc/emulation/: the same kernel source through the emulation layer).
#pragma once

#include <cstdint>

namespace ck {

enum class KernelDType : int { F16 = 0, BF16 = 1, F32 = 2, F64 = 3 };

// One core-op call (docs/design.md section 1). Every acc pointer has the accumulation
// type of the dtype (fp64 for F64, fp32 otherwise).
struct KernelProblem {
  int64_t n = 0, m = 0, d = 0;
  const void* q = nullptr;  // [n, d] with strides (q_s0, q_s1), in elements
  int64_t q_s0 = 0, q_s1 = 0;
  const void* k = nullptr;  // [m, d]
  int64_t k_s0 = 0, k_s1 = 0;
  const void* scale = nullptr;       // acc, one element, read on the device
  const void* bias = nullptr;        // acc [m] or null
  const int64_t* q_labels = nullptr;  // [n] when compared (exclude_positives; pairwise_sigmoid:
                                      // whenever both are given), else null
  const int64_t* k_labels = nullptr;  // [m]
  bool has_self = false;
  int64_t self_offset = 0;
  bool normalize = false;
  double eps = 1e-12;
  KernelDType dtype = KernelDType::F32;
  bool q_vec = false, k_vec = false;  // rows 16-byte aligned, unit inner stride: cp.async
  bool tf32 = false;  // fp32 logits on tf32 tensor cores (torch's fp32 matmul precision allows)
  void* stream = nullptr;             // cudaStream_t (ignored by the emulation)
};

struct ForwardBuffers {
  void* rq = nullptr;   // acc [n] workspace: 1 / max(||q_i||, eps), or 1
  void* rk = nullptr;   // acc [m]
  void* lse = nullptr;  // acc [n]
  void* o = nullptr;    // acc [n, d] zero-filled, or null without return_o
  int64_t splits = 1;       // key ranges (forward_key_splits); > 1: partials, then a merge
  void* part_m = nullptr;   // acc [splits, n] running max of each range
  void* part_l = nullptr;   // acc [splits, n] sum of exp(s - pivot) of each range
  void* part_o = nullptr;   // acc [splits, n, d] zero-filled, unnormalized o, with return_o
  // two_sided_lse: the column statistics, one partial (max, sum) per (64-row block, key)
  void* col_lse = nullptr;     // acc [m], -inf-filled (no rows: no block writes it)
  void* col_part_m = nullptr;  // acc [row_blocks, m], row_blocks = ceil(n / 64)
  void* col_part_l = nullptr;  // acc [row_blocks, m]
};

// Key ranges of the forward: when the row grid is small (a batch of 4096 rows is 64 blocks
// of 64 rows), the keys are split so that about 256 blocks run, each range at least 2 key
// tiles; the partial (max, sum, o) are merged per row in a fixed order. A function of the
// shapes only, so results are the same on every device and run.
inline int64_t forward_key_splits(int64_t n, int64_t m) {
  const int64_t row_blocks = (n + 63) / 64, key_tiles = (m + 63) / 64;
  if (row_blocks == 0) return 1;
  int64_t splits = (256 + row_blocks - 1) / row_blocks;
  if (splits > key_tiles / 2) splits = key_tiles / 2;
  return splits < 1 ? 1 : splits;
}

// Ranges of the backward's grids, the same rule: the dq grid (blocks of 64 rows) splits the
// keys, backward_splits(n, m); the dk grid (blocks of 64 keys) splits the rows,
// backward_splits(m, n). Each range writes a partial [rows, d] slice of a workspace; the
// per-row epilogue adds the slices in range order (deterministic).
inline int64_t backward_splits(int64_t own, int64_t other) { return forward_key_splits(own, other); }

// A forced split count (tests: CONTRASTIVE_KERNELS_CUDA_SPLITS, read by the op wrappers),
// clamped to [1, tiles of the split dimension]; forced <= 0 keeps the rule's value.
inline int64_t forced_splits(int64_t rule, int64_t forced, int64_t other) {
  if (forced <= 0) return rule;
  const int64_t tiles = (other + 63) / 64;
  const int64_t s = forced < tiles ? forced : tiles;
  return s < 1 ? 1 : s;
}

struct BackwardBuffers {
  const void* grad_lse = nullptr;  // acc [n], contiguous (two_sided_lse: grad_row_lse;
                                   // pairwise_sigmoid: grad_row_loss)
  const void* lse = nullptr;       // acc [n], contiguous (two_sided_lse: row_lse)
  const void* grad_col = nullptr;  // two_sided_lse: acc [m] grad_col_lse, contiguous
  const void* col_lse = nullptr;   // two_sided_lse: acc [m], contiguous
  void* rq = nullptr;              // acc [n] workspace
  void* rk = nullptr;              // acc [m] workspace
  void* u = nullptr;       // acc [u_splits, n, d] zero-filled, when dq or dscale is needed
  void* v = nullptr;       // acc [v_splits, m, d] zero-filled, when dk is needed
  int64_t u_splits = 1;    // key ranges of the dq grid (backward_splits(n, m))
  int64_t v_splits = 1;    // row ranges of the dk grid (backward_splits(m, n))
  void* dq = nullptr;      // input dtype [n, d] contiguous, or null
  void* dk = nullptr;      // input dtype [m, d] contiguous, or null
  void* rowdot = nullptr;  // acc [u_splits, n] workspace, when dscale is needed
  void* dscale = nullptr;  // acc scalar, or null
  // pairwise_sigmoid: dbias partials of the dk grid's row ranges, summed in range order
  void* dbias_part = nullptr;  // acc [v_splits, m], when dbias is needed
  void* dbias = nullptr;       // acc [m], or null
};

// Each launches its kernels on problem.stream and returns null, or a message naming the
// kernel whose launch failed. forward / backward: lse; two_sided_*: two_sided_lse; sigmoid_*:
// pairwise_sigmoid (ForwardBuffers::lse holds row_loss).
#define CK_DECLARE_RUNNERS                                                                 \
  const char* forward(const KernelProblem& problem, const ForwardBuffers& out);            \
  const char* backward(const KernelProblem& problem, const BackwardBuffers& out);          \
  const char* two_sided_forward(const KernelProblem& problem, const ForwardBuffers& out);  \
  const char* two_sided_backward(const KernelProblem& problem, const BackwardBuffers& out); \
  const char* sigmoid_forward(const KernelProblem& problem, const ForwardBuffers& out);    \
  const char* sigmoid_backward(const KernelProblem& problem, const BackwardBuffers& out);

namespace cuda_kernels {
CK_DECLARE_RUNNERS
}  // namespace cuda_kernels

namespace emulated_kernels {
CK_DECLARE_RUNNERS
}  // namespace emulated_kernels

#undef CK_DECLARE_RUNNERS

}  // namespace ck
