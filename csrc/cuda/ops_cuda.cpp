// The CUDA kernels of the core ops contrastive_kernels::lse_native / lse_native_backward,
// two_sided_lse_native / _backward and pairwise_sigmoid_native / _backward (declared once, for
// every device, in csrc/register.cpp from common/contract.h kOps): a device guard on q's device,
// the current stream, the shared entry checks (ops_impl.h), the kernels of lse_cuda.cu
// with a launch check after each.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/ops_impl.h"

namespace ck {
namespace cuda_ops {
namespace {

constexpr contract::Site kForwardSite{contract::kForwardOp, c10::DeviceType::CUDA};
constexpr contract::Site kBackwardSite{contract::kBackwardOp, c10::DeviceType::CUDA};
constexpr contract::Site kTwoSidedForwardSite{contract::kTwoSidedForwardOp, c10::DeviceType::CUDA};
constexpr contract::Site kTwoSidedBackwardSite{contract::kTwoSidedBackwardOp,
                                               c10::DeviceType::CUDA};
constexpr contract::Site kSigmoidForwardSite{contract::kPairwiseSigmoidForwardOp,
                                             c10::DeviceType::CUDA};
constexpr contract::Site kSigmoidBackwardSite{contract::kPairwiseSigmoidBackwardOp,
                                              c10::DeviceType::CUDA};

// Before the device guard, which needs a CUDA device.
void check_cuda(const contract::Site& site, const at::Tensor& q) {
  TORCH_CHECK(q.is_cuda(), site.op, ": q must be a CUDA tensor, got ", q.device());
}

void* current_stream(const at::Tensor& q) {
  return c10::cuda::getCurrentCUDAStream(q.device().index()).stream();
}

std::tuple<at::Tensor, at::Tensor> lse_native_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& scale,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& q_labels,
    const std::optional<at::Tensor>& k_labels, std::optional<int64_t> self_offset,
    bool normalize, double eps, bool exclude_positives, bool return_o) {
  check_cuda(kForwardSite, q);
  const c10::cuda::CUDAGuard guard(q.device());
  void* stream = current_stream(q);
  return forward(&cuda_kernels::forward, kForwardSite, stream, q, k, scale, bias, q_labels,
                 k_labels, self_offset, normalize, eps, exclude_positives, return_o);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lse_native_cuda_backward(
    const at::Tensor& grad_lse, const at::Tensor& q, const at::Tensor& k, const at::Tensor& scale,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& q_labels,
    const std::optional<at::Tensor>& k_labels, std::optional<int64_t> self_offset,
    bool normalize, double eps, bool exclude_positives, const at::Tensor& lse, bool need_dq,
    bool need_dk, bool need_dscale) {
  check_cuda(kBackwardSite, q);
  const c10::cuda::CUDAGuard guard(q.device());
  void* stream = current_stream(q);
  return backward(&cuda_kernels::backward, kBackwardSite, stream, grad_lse, q, k, scale, bias,
                  q_labels, k_labels, self_offset, normalize, eps, exclude_positives, lse,
                  need_dq, need_dk, need_dscale);
}

std::tuple<at::Tensor, at::Tensor> two_sided_lse_native_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& scale,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& q_labels,
    const std::optional<at::Tensor>& k_labels, std::optional<int64_t> self_offset,
    bool normalize, double eps, bool exclude_positives) {
  check_cuda(kTwoSidedForwardSite, q);
  const c10::cuda::CUDAGuard guard(q.device());
  void* stream = current_stream(q);
  return two_sided_forward(&cuda_kernels::two_sided_forward, kTwoSidedForwardSite, stream, q, k,
                           scale, bias, q_labels, k_labels, self_offset, normalize, eps,
                           exclude_positives);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> two_sided_lse_native_cuda_backward(
    const at::Tensor& grad_row_lse, const at::Tensor& grad_col_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& scale, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& q_labels, const std::optional<at::Tensor>& k_labels,
    std::optional<int64_t> self_offset, bool normalize, double eps, bool exclude_positives,
    const at::Tensor& row_lse, const at::Tensor& col_lse, bool need_dq, bool need_dk,
    bool need_dscale) {
  check_cuda(kTwoSidedBackwardSite, q);
  const c10::cuda::CUDAGuard guard(q.device());
  void* stream = current_stream(q);
  return two_sided_backward(&cuda_kernels::two_sided_backward, kTwoSidedBackwardSite, stream,
                            grad_row_lse, grad_col_lse, q, k, scale, bias, q_labels, k_labels,
                            self_offset, normalize, eps, exclude_positives, row_lse, col_lse,
                            need_dq, need_dk, need_dscale);
}

at::Tensor pairwise_sigmoid_native_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& scale,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& q_labels,
    const std::optional<at::Tensor>& k_labels, std::optional<int64_t> self_offset,
    bool normalize, double eps) {
  check_cuda(kSigmoidForwardSite, q);
  const c10::cuda::CUDAGuard guard(q.device());
  return sigmoid_forward(&cuda_kernels::sigmoid_forward, kSigmoidForwardSite, current_stream(q),
                         q, k, scale, bias, q_labels, k_labels, self_offset, normalize, eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pairwise_sigmoid_native_cuda_backward(
    const at::Tensor& grad_row_loss, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& scale, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& q_labels, const std::optional<at::Tensor>& k_labels,
    std::optional<int64_t> self_offset, bool normalize, double eps, const at::Tensor& row_loss,
    bool need_dq, bool need_dk, bool need_dscale, bool need_dbias) {
  check_cuda(kSigmoidBackwardSite, q);
  const c10::cuda::CUDAGuard guard(q.device());
  return sigmoid_backward(&cuda_kernels::sigmoid_backward, kSigmoidBackwardSite,
                          current_stream(q), grad_row_loss, q, k, scale, bias, q_labels, k_labels,
                          self_offset, normalize, eps, row_loss, need_dq, need_dk, need_dscale,
                          need_dbias);
}

}  // namespace
}  // namespace cuda_ops
}  // namespace ck

TORCH_LIBRARY_IMPL(contrastive_kernels, CUDA, m) {
  m.impl(ck::contract::kForwardOp, &ck::cuda_ops::lse_native_cuda);
  m.impl(ck::contract::kBackwardOp, &ck::cuda_ops::lse_native_cuda_backward);
  m.impl(ck::contract::kTwoSidedForwardOp, &ck::cuda_ops::two_sided_lse_native_cuda);
  m.impl(ck::contract::kTwoSidedBackwardOp, &ck::cuda_ops::two_sided_lse_native_cuda_backward);
  m.impl(ck::contract::kPairwiseSigmoidForwardOp, &ck::cuda_ops::pairwise_sigmoid_native_cuda);
  m.impl(ck::contract::kPairwiseSigmoidBackwardOp,
         &ck::cuda_ops::pairwise_sigmoid_native_cuda_backward);
}
