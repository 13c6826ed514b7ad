// The CPU kernel sets and the run-time choice between them.
//
// The kernel sources are compiled once per instruction set (cpu/isa.h): `baseline` (any
// CPU of the target) and, on x86-64 with GCC, `avx2` (AVX2 + FMA). Each build exposes its
// entry points as a KernelSet; ops_cpu.cpp calls the one kernel_set() returns.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

// Whether this build has the AVX2 + FMA kernel set: x86-64 and a compiler that takes
// `#pragma GCC target` (clang does not; there, only the baseline is built).
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__) && !defined(__clang__)
#define CK_CPU_AVX2_VARIANT 1
#else
#define CK_CPU_AVX2_VARIANT 0
#endif

namespace ck {
namespace cpu {

// The arguments of one core-op call as the kernels take them: checked, labels only when
// the op compares them (contract::active_labels), scale as a double.
struct CallArgs {
  const at::Tensor& q;
  const at::Tensor& k;
  double scale;
  const std::optional<at::Tensor>& bias;
  const std::optional<at::Tensor>& q_labels;
  const std::optional<at::Tensor>& k_labels;
  std::optional<int64_t> self_offset;
  bool normalize;
  double eps;
  bool exclude_positives;
};

struct KernelSet {
  const char* name;  // as build_info()["cpu_kernel"] reports it
  // (lse, o) per the op contract; o is empty unless return_o.
  std::tuple<at::Tensor, at::Tensor> (*forward)(const CallArgs& args, bool return_o);
  // (dq, dk, dscale); scale is the op's scale tensor (dscale takes its options).
  std::tuple<at::Tensor, at::Tensor, at::Tensor> (*backward)(
      const CallArgs& args, const at::Tensor& grad_lse, const at::Tensor& scale,
      const at::Tensor& lse, bool need_dq, bool need_dk, bool need_dscale);
  // The two-sided lse: (row_lse, col_lse) per the op contract.
  std::tuple<at::Tensor, at::Tensor> (*two_sided_forward)(const CallArgs& args);
  // (dq, dk, dscale) from the gradients of both lse vectors.
  std::tuple<at::Tensor, at::Tensor, at::Tensor> (*two_sided_backward)(
      const CallArgs& args, const at::Tensor& grad_row_lse, const at::Tensor& grad_col_lse,
      const at::Tensor& scale, const at::Tensor& row_lse, const at::Tensor& col_lse,
      bool need_dq, bool need_dk, bool need_dscale);
  // pairwise_sigmoid: row_loss per the op contract (labels in args whenever both are given).
  at::Tensor (*sigmoid_forward)(const CallArgs& args);
  // (dq, dk, dscale, dbias); dbias [M] in the accumulation dtype, or [0] when not needed.
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> (*sigmoid_backward)(
      const CallArgs& args, const at::Tensor& grad_row_loss, const at::Tensor& scale,
      bool need_dq, bool need_dk, bool need_dscale, bool need_dbias);
};

namespace baseline {
extern const KernelSet kKernelSet;
}
#if CK_CPU_AVX2_VARIANT
namespace avx2 {
extern const KernelSet kKernelSet;
}
#endif

// Kernel set names: "avx2+fma", "baseline".
inline constexpr char kAvx2Name[] = "avx2+fma";
inline constexpr char kBaselineName[] = "baseline";

// The kernel set the ops call. Chosen on first use: CONTRASTIVE_KERNELS_CPU_KERNEL
// ("baseline", "avx2+fma" or "auto"; unset means auto), else the fastest this CPU runs.
const KernelSet& kernel_set();

// Makes `name` ("auto", "baseline", "avx2+fma") the kernel set from now on and returns the
// name of the one it replaces; fails for an unknown name or one this CPU cannot run.
std::string set_kernel_set(const std::string& name);

// The names of the kernel sets this build has and this CPU can run, fastest first.
std::vector<std::string> runnable_kernel_sets();

}  // namespace cpu
}  // namespace ck
