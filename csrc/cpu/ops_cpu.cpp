// The CPU kernels of the core ops contrastive_kernels::lse_native / lse_native_backward,
// two_sided_lse_native / _backward and pairwise_sigmoid_native / _backward (declared once, for every device, in csrc/register.cpp from common/contract.h): the
// shared argument checks, then the kernel set this CPU runs (kernels.h, dispatch.cpp).
// Python (contrastive_kernels/_extension.py) attaches the fake implementations and
// autograd. Compiled once, for the baseline: no kernel code here.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "common/contract.h"
#include "cpu/kernels.h"

namespace ck {
namespace cpu {
namespace {

constexpr contract::Site kForwardSite{contract::kForwardOp, c10::DeviceType::CPU};
constexpr contract::Site kBackwardSite{contract::kBackwardOp, c10::DeviceType::CPU};

std::tuple<at::Tensor, at::Tensor> lse_native_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& scale,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& q_labels_in,
    const std::optional<at::Tensor>& k_labels_in, std::optional<int64_t> self_offset,
    bool normalize, double eps, bool exclude_positives, bool return_o) {
  contract::check_inputs(kForwardSite, q, k, scale, bias, q_labels_in, k_labels_in, eps,
                         exclude_positives);
  const auto [q_labels, k_labels] =
      contract::active_labels(q_labels_in, k_labels_in, exclude_positives);
  const CallArgs args{q, k, scale.item<double>(), bias, q_labels, k_labels, self_offset,
                      normalize, eps, exclude_positives};
  return kernel_set().forward(args, return_o);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lse_native_cpu_backward(
    const at::Tensor& grad_lse, const at::Tensor& q, const at::Tensor& k, const at::Tensor& scale,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& q_labels_in,
    const std::optional<at::Tensor>& k_labels_in, std::optional<int64_t> self_offset,
    bool normalize, double eps, bool exclude_positives, const at::Tensor& lse, bool need_dq,
    bool need_dk, bool need_dscale) {
  contract::check_backward_inputs(kBackwardSite, grad_lse, q, k, scale, bias, q_labels_in,
                                  k_labels_in, eps, exclude_positives, lse);
  const auto [q_labels, k_labels] =
      contract::active_labels(q_labels_in, k_labels_in, exclude_positives);
  const CallArgs args{q, k, scale.item<double>(), bias, q_labels, k_labels, self_offset,
                      normalize, eps, exclude_positives};
  return kernel_set().backward(args, grad_lse, scale, lse, need_dq, need_dk, need_dscale);
}

constexpr contract::Site kTwoSidedForwardSite{contract::kTwoSidedForwardOp,
                                              c10::DeviceType::CPU};
constexpr contract::Site kTwoSidedBackwardSite{contract::kTwoSidedBackwardOp,
                                               c10::DeviceType::CPU};

std::tuple<at::Tensor, at::Tensor> two_sided_lse_native_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& scale,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& q_labels_in,
    const std::optional<at::Tensor>& k_labels_in, std::optional<int64_t> self_offset,
    bool normalize, double eps, bool exclude_positives) {
  contract::check_inputs(kTwoSidedForwardSite, q, k, scale, bias, q_labels_in, k_labels_in, eps,
                         exclude_positives);
  const auto [q_labels, k_labels] =
      contract::active_labels(q_labels_in, k_labels_in, exclude_positives);
  const CallArgs args{q, k, scale.item<double>(), bias, q_labels, k_labels, self_offset,
                      normalize, eps, exclude_positives};
  return kernel_set().two_sided_forward(args);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> two_sided_lse_native_cpu_backward(
    const at::Tensor& grad_row_lse, const at::Tensor& grad_col_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& scale, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& q_labels_in, const std::optional<at::Tensor>& k_labels_in,
    std::optional<int64_t> self_offset, bool normalize, double eps, bool exclude_positives,
    const at::Tensor& row_lse, const at::Tensor& col_lse, bool need_dq, bool need_dk,
    bool need_dscale) {
  contract::check_two_sided_backward_inputs(kTwoSidedBackwardSite, grad_row_lse, grad_col_lse, q,
                                            k, scale, bias, q_labels_in, k_labels_in, eps,
                                            exclude_positives, row_lse, col_lse);
  const auto [q_labels, k_labels] =
      contract::active_labels(q_labels_in, k_labels_in, exclude_positives);
  const CallArgs args{q, k, scale.item<double>(), bias, q_labels, k_labels, self_offset,
                      normalize, eps, exclude_positives};
  return kernel_set().two_sided_backward(args, grad_row_lse, grad_col_lse, scale, row_lse,
                                         col_lse, need_dq, need_dk, need_dscale);
}

constexpr contract::Site kSigmoidForwardSite{contract::kPairwiseSigmoidForwardOp,
                                             c10::DeviceType::CPU};
constexpr contract::Site kSigmoidBackwardSite{contract::kPairwiseSigmoidBackwardOp,
                                              c10::DeviceType::CPU};

// The sigmoid's call arguments: labels whenever both are given.
CallArgs sigmoid_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& scale,
                      const std::optional<at::Tensor>& bias,
                      const std::optional<at::Tensor>& q_labels,
                      const std::optional<at::Tensor>& k_labels,
                      std::optional<int64_t> self_offset, bool normalize, double eps) {
  const bool labels = contract::sigmoid_labels_active(q_labels, k_labels);
  return CallArgs{q, k, scale.item<double>(), bias, labels ? q_labels : std::nullopt,
                  labels ? k_labels : std::nullopt, self_offset, normalize, eps, labels};
}

at::Tensor pairwise_sigmoid_native_cpu(const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& scale,
                                       const std::optional<at::Tensor>& bias,
                                       const std::optional<at::Tensor>& q_labels,
                                       const std::optional<at::Tensor>& k_labels,
                                       std::optional<int64_t> self_offset, bool normalize,
                                       double eps) {
  contract::check_inputs(kSigmoidForwardSite, q, k, scale, bias, q_labels, k_labels, eps,
                         contract::sigmoid_labels_active(q_labels, k_labels));
  return kernel_set().sigmoid_forward(
      sigmoid_args(q, k, scale, bias, q_labels, k_labels, self_offset, normalize, eps));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pairwise_sigmoid_native_cpu_backward(
    const at::Tensor& grad_row_loss, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& scale, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& q_labels, const std::optional<at::Tensor>& k_labels,
    std::optional<int64_t> self_offset, bool normalize, double eps, const at::Tensor& row_loss,
    bool need_dq, bool need_dk, bool need_dscale, bool need_dbias) {
  contract::check_sigmoid_backward_inputs(kSigmoidBackwardSite, grad_row_loss, q, k, scale, bias,
                                          q_labels, k_labels, eps, row_loss);
  return kernel_set().sigmoid_backward(
      sigmoid_args(q, k, scale, bias, q_labels, k_labels, self_offset, normalize, eps),
      grad_row_loss, scale, need_dq, need_dk, need_dscale, need_dbias);
}

}  // namespace
}  // namespace cpu
}  // namespace ck

// No def here: register.cpp declares the pair once, so the CUDA kernels attach to the
// same ops and the dispatch key alone picks the device.
TORCH_LIBRARY_IMPL(contrastive_kernels, CPU, m) {
  m.impl(ck::contract::kForwardOp, &ck::cpu::lse_native_cpu);
  m.impl(ck::contract::kBackwardOp, &ck::cpu::lse_native_cpu_backward);
  m.impl(ck::contract::kTwoSidedForwardOp, &ck::cpu::two_sided_lse_native_cpu);
  m.impl(ck::contract::kTwoSidedBackwardOp, &ck::cpu::two_sided_lse_native_cpu_backward);
  m.impl(ck::contract::kPairwiseSigmoidForwardOp, &ck::cpu::pairwise_sigmoid_native_cpu);
  m.impl(ck::contract::kPairwiseSigmoidBackwardOp, &ck::cpu::pairwise_sigmoid_native_cpu_backward);
}
