// The core-op contract in C++: the op pair every compiled kernel implements, one kernel
// per dispatch key (csrc/cpu/ops_cpu.cpp for CPU, csrc/cuda/ for CUDA). The Python side
// states the same contract in contrastive_kernels/core/contract.py; the schema strings
// below must stay textually equal to FORWARD_SCHEMA / BACKWARD_SCHEMA there, which
// tests/backends/test_native_build.py checks through _C.schemas().
//
// Kept free of anything host-compiler specific so that .cu files can include it; the
// checks are defined in contract.cpp, compiled once by the C++ compiler.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

namespace ck {
namespace contract {

// TORCH_LIBRARY takes the namespace as a bare token, so this copy is for messages and
// qualified lookups only; the macros must still spell `contrastive_kernels`.
inline constexpr char kNamespace[] = "contrastive_kernels";
inline constexpr char kForwardOp[] = "lse_native";
inline constexpr char kBackwardOp[] = "lse_native_backward";

inline constexpr char kForwardSchema[] =
    "(Tensor q, Tensor k, Tensor scale, Tensor? bias, Tensor? q_labels, Tensor? k_labels, "
    "int? self_offset, bool normalize, float eps, bool exclude_positives, bool return_o) "
    "-> (Tensor, Tensor)";
inline constexpr char kBackwardSchema[] =
    "(Tensor grad_lse, Tensor q, Tensor k, Tensor scale, Tensor? bias, Tensor? q_labels, "
    "Tensor? k_labels, int? self_offset, bool normalize, float eps, bool exclude_positives, "
    "Tensor lse, bool need_dq, bool need_dk, bool need_dscale) -> (Tensor, Tensor, Tensor)";

// What Library::def parses: the unqualified name followed by the signature.
std::string declaration(const char* op, const char* schema);

// lse and o are returned in this dtype and every product is summed in it: reduced
// precision inputs (fp16 / bf16) would lose the log-sum-exp to rounding.
inline at::ScalarType accumulate_type(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

// The labels a kernel must compare: both, and only under exclude_positives. Without it
// labels are ignored even when passed, so a kernel never reads (or checks) them.
std::pair<std::optional<at::Tensor>, std::optional<at::Tensor>> active_labels(
    const std::optional<at::Tensor>& q_labels, const std::optional<at::Tensor>& k_labels,
    bool exclude_positives);

// Where a check runs: messages start with the op name, and every tensor must be on a
// device of this type (and on q's device, so one kernel launch sees all operands).
struct Site {
  const char* op;
  c10::DeviceType device;
};

// Arguments shared by the forward and the backward op. Python validates once before any
// backend runs; these checks guard direct calls of torch.ops.contrastive_kernels.*,
// where a bad shape would otherwise become an out-of-bounds read in a kernel.
void check_inputs(const Site& site, const at::Tensor& q, const at::Tensor& k,
                  const at::Tensor& scale, const std::optional<at::Tensor>& bias,
                  const std::optional<at::Tensor>& q_labels,
                  const std::optional<at::Tensor>& k_labels, double eps, bool exclude_positives);

// One label vector: shape [rows], integer dtype, on the site's device.
void check_labels(const Site& site, const std::optional<at::Tensor>& labels, const char* name,
                  const at::Tensor& q, int64_t rows);

// The backward's extra per-row inputs grad_lse and lse: shape [N], floating point.
void check_row_vectors(const Site& site, const at::Tensor& grad_lse, const at::Tensor& lse,
                       const at::Tensor& q);

// Everything the backward op checks: check_inputs plus check_row_vectors.
void check_backward_inputs(const Site& site, const at::Tensor& grad_lse, const at::Tensor& q,
                           const at::Tensor& k, const at::Tensor& scale,
                           const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& q_labels,
                           const std::optional<at::Tensor>& k_labels, double eps,
                           bool exclude_positives, const at::Tensor& lse);

}  // namespace contract
}  // namespace ck
