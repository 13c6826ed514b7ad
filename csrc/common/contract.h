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
// The core ops, once: each op <name> is declared for the compiled kernels as the pair
// <name>_native / <name>_native_backward (register.cpp loops over kOps) and for the
// emulated CUDA kernels as <name>_cuda_emulated / _backward (emulation/ops_emulated.cpp).
// The schemas are what contrastive_kernels/core/ops/ derives from each op's spec (the
// shared pair prefix plus the op's own inputs, outputs and saved tensors);
// tests/core/test_op_specs.py compares them, per op, through _C.op_table().
struct OpDecl {
  const char* name;
  const char* forward_schema;
  const char* backward_schema;
};

#define CK_PAIR_PREFIX                                                                     \
  "Tensor q, Tensor k, Tensor scale, Tensor? bias, Tensor? q_labels, Tensor? k_labels, " \
  "int? self_offset, bool normalize, float eps"

inline constexpr OpDecl kLse{
    "lse",
    "(" CK_PAIR_PREFIX ", bool exclude_positives, bool return_o) -> (Tensor, Tensor)",
    "(Tensor grad_lse, " CK_PAIR_PREFIX ", bool exclude_positives, Tensor lse, "
    "bool need_dq, bool need_dk, bool need_dscale) -> (Tensor, Tensor, Tensor)"};
inline constexpr OpDecl kTwoSidedLse{
    "two_sided_lse",
    "(" CK_PAIR_PREFIX ", bool exclude_positives) -> (Tensor, Tensor)",
    "(Tensor grad_row_lse, Tensor grad_col_lse, " CK_PAIR_PREFIX ", bool exclude_positives, "
    "Tensor row_lse, Tensor col_lse, bool need_dq, bool need_dk, bool need_dscale) "
    "-> (Tensor, Tensor, Tensor)"};
// The bias is differentiable here: the backward returns dbias [M] too.
inline constexpr OpDecl kPairwiseSigmoid{
    "pairwise_sigmoid",
    "(" CK_PAIR_PREFIX ") -> (Tensor)",
    "(Tensor grad_row_loss, " CK_PAIR_PREFIX ", Tensor row_loss, bool need_dq, bool need_dk, "
    "bool need_dscale, bool need_dbias) -> (Tensor, Tensor, Tensor, Tensor)"};
#undef CK_PAIR_PREFIX

inline constexpr OpDecl kOps[] = {kLse, kTwoSidedLse, kPairwiseSigmoid};

// The op names of the compiled kernels (kernel set "native").
inline constexpr char kForwardOp[] = "lse_native";
inline constexpr char kBackwardOp[] = "lse_native_backward";
inline constexpr char kTwoSidedForwardOp[] = "two_sided_lse_native";
inline constexpr char kTwoSidedBackwardOp[] = "two_sided_lse_native_backward";
inline constexpr char kPairwiseSigmoidForwardOp[] = "pairwise_sigmoid_native";
inline constexpr char kPairwiseSigmoidBackwardOp[] = "pairwise_sigmoid_native_backward";

// <op>_<kernel_set> and <op>_<kernel_set>_backward.
std::string op_name(const OpDecl& op, const char* kernel_set, bool backward);

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

// Everything the two-sided backward op checks: check_inputs, then grad_row_lse and row_lse
// of shape [N] and grad_col_lse and col_lse of shape [M], floating point.
void check_two_sided_backward_inputs(const Site& site, const at::Tensor& grad_row_lse,
                                     const at::Tensor& grad_col_lse, const at::Tensor& q,
                                     const at::Tensor& k, const at::Tensor& scale,
                                     const std::optional<at::Tensor>& bias,
                                     const std::optional<at::Tensor>& q_labels,
                                     const std::optional<at::Tensor>& k_labels, double eps,
                                     bool exclude_positives, const at::Tensor& row_lse,
                                     const at::Tensor& col_lse);

// pairwise_sigmoid compares the labels whenever both are given (it has no
// exclude_positives): the flag that check_inputs and active_labels take for it.
inline bool sigmoid_labels_active(const std::optional<at::Tensor>& q_labels,
                                  const std::optional<at::Tensor>& k_labels) {
  return q_labels.has_value() && k_labels.has_value();
}

// Everything the pairwise sigmoid backward op checks: check_inputs (labels whenever both
// are given), then grad_row_loss and row_loss of shape [N], floating point.
void check_sigmoid_backward_inputs(const Site& site, const at::Tensor& grad_row_loss,
                                   const at::Tensor& q, const at::Tensor& k,
                                   const at::Tensor& scale, const std::optional<at::Tensor>& bias,
                                   const std::optional<at::Tensor>& q_labels,
                                   const std::optional<at::Tensor>& k_labels, double eps,
                                   const at::Tensor& row_loss);

}  // namespace contract
}  // namespace ck
