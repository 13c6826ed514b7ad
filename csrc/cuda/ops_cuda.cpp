// The CUDA kernels of the core ops contrastive_kernels::lse_native / lse_native_backward
// (declared once, for every device, in csrc/register.cpp): a device guard on q's device,
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

std::tuple<at::Tensor, at::Tensor> lse_native_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& scale,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& q_labels,
    const std::optional<at::Tensor>& k_labels, std::optional<int64_t> self_offset,
    bool normalize, double eps, bool exclude_positives, bool return_o) {
  TORCH_CHECK(q.is_cuda(), kForwardSite.op, ": q must be a CUDA tensor, got ", q.device());
  const c10::cuda::CUDAGuard guard(q.device());
  void* stream = c10::cuda::getCurrentCUDAStream(q.device().index()).stream();
  return forward(&cuda_kernels::forward, kForwardSite, stream, q, k, scale, bias, q_labels,
                 k_labels, self_offset, normalize, eps, exclude_positives, return_o);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lse_native_cuda_backward(
    const at::Tensor& grad_lse, const at::Tensor& q, const at::Tensor& k, const at::Tensor& scale,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& q_labels,
    const std::optional<at::Tensor>& k_labels, std::optional<int64_t> self_offset,
    bool normalize, double eps, bool exclude_positives, const at::Tensor& lse, bool need_dq,
    bool need_dk, bool need_dscale) {
  TORCH_CHECK(q.is_cuda(), kBackwardSite.op, ": q must be a CUDA tensor, got ", q.device());
  const c10::cuda::CUDAGuard guard(q.device());
  void* stream = c10::cuda::getCurrentCUDAStream(q.device().index()).stream();
  return backward(&cuda_kernels::backward, kBackwardSite, stream, grad_lse, q, k, scale, bias,
                  q_labels, k_labels, self_offset, normalize, eps, exclude_positives, lse,
                  need_dq, need_dk, need_dscale);
}

}  // namespace
}  // namespace cuda_ops
}  // namespace ck

TORCH_LIBRARY_IMPL(contrastive_kernels, CUDA, m) {
  m.impl(ck::contract::kForwardOp, &ck::cuda_ops::lse_native_cuda);
  m.impl(ck::contract::kBackwardOp, &ck::cuda_ops::lse_native_cuda_backward);
}
