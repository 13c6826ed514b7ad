// contrastive_kernels::lse_cuda_emulated / lse_cuda_emulated_backward,
// two_sided_lse_cuda_emulated / _backward and pairwise_sigmoid_cuda_emulated / _backward:
// the CUDA kernels (csrc/cuda/lse_kernels.cuh)
// instantiated for the host through the emulation layer and run on CPU tensors, with the
// schemas of the core ops (common/contract.h kOps) and the same wrappers as the CUDA kernels
// (csrc/cuda/ops_impl.h). Backend "cuda" calls them when CONTRASTIVE_KERNELS_CUDA_EMULATE=1
// (contrastive_kernels/backends/cuda.py).
//
// The emulation layer's own test kernels (selftest.h) are ops of a private namespace,
// torch.ops._contrastive_kernels_emulation.*, so that the public namespace holds only the
// core ops (each with its fake kernel and autograd).
#include <torch/library.h>

#include <ATen/ops/empty.h>

#include "cuda/ops_impl.h"
#include "emulation/selftest.h"

namespace ck {
namespace cuda_ops {
namespace {

constexpr char kEmulatedForward[] = "lse_cuda_emulated";
constexpr char kEmulatedBackward[] = "lse_cuda_emulated_backward";
constexpr char kTwoSidedForward[] = "two_sided_lse_cuda_emulated";
constexpr char kTwoSidedBackward[] = "two_sided_lse_cuda_emulated_backward";
constexpr contract::Site kForwardSite{kEmulatedForward, c10::DeviceType::CPU};
constexpr contract::Site kBackwardSite{kEmulatedBackward, c10::DeviceType::CPU};
constexpr contract::Site kTwoSidedForwardSite{kTwoSidedForward, c10::DeviceType::CPU};
constexpr contract::Site kTwoSidedBackwardSite{kTwoSidedBackward, c10::DeviceType::CPU};
constexpr char kSigmoidForward[] = "pairwise_sigmoid_cuda_emulated";
constexpr char kSigmoidBackward[] = "pairwise_sigmoid_cuda_emulated_backward";
constexpr contract::Site kSigmoidForwardSite{kSigmoidForward, c10::DeviceType::CPU};
constexpr contract::Site kSigmoidBackwardSite{kSigmoidBackward, c10::DeviceType::CPU};

std::tuple<at::Tensor, at::Tensor> lse_emulated(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& scale,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& q_labels,
    const std::optional<at::Tensor>& k_labels, std::optional<int64_t> self_offset,
    bool normalize, double eps, bool exclude_positives, bool return_o) {
  return forward(&emulated_kernels::forward, kForwardSite, nullptr, q, k, scale, bias, q_labels,
                 k_labels, self_offset, normalize, eps, exclude_positives, return_o);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lse_emulated_backward(
    const at::Tensor& grad_lse, const at::Tensor& q, const at::Tensor& k, const at::Tensor& scale,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& q_labels,
    const std::optional<at::Tensor>& k_labels, std::optional<int64_t> self_offset,
    bool normalize, double eps, bool exclude_positives, const at::Tensor& lse, bool need_dq,
    bool need_dk, bool need_dscale) {
  return backward(&emulated_kernels::backward, kBackwardSite, nullptr, grad_lse, q, k, scale,
                  bias, q_labels, k_labels, self_offset, normalize, eps, exclude_positives, lse,
                  need_dq, need_dk, need_dscale);
}

std::tuple<at::Tensor, at::Tensor> two_sided_lse_emulated(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& scale,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& q_labels,
    const std::optional<at::Tensor>& k_labels, std::optional<int64_t> self_offset,
    bool normalize, double eps, bool exclude_positives) {
  return two_sided_forward(&emulated_kernels::two_sided_forward, kTwoSidedForwardSite, nullptr,
                           q, k, scale, bias, q_labels, k_labels, self_offset, normalize, eps,
                           exclude_positives);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> two_sided_lse_emulated_backward(
    const at::Tensor& grad_row_lse, const at::Tensor& grad_col_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& scale, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& q_labels, const std::optional<at::Tensor>& k_labels,
    std::optional<int64_t> self_offset, bool normalize, double eps, bool exclude_positives,
    const at::Tensor& row_lse, const at::Tensor& col_lse, bool need_dq, bool need_dk,
    bool need_dscale) {
  return two_sided_backward(&emulated_kernels::two_sided_backward, kTwoSidedBackwardSite,
                            nullptr, grad_row_lse, grad_col_lse, q, k, scale, bias, q_labels,
                            k_labels, self_offset, normalize, eps, exclude_positives, row_lse,
                            col_lse, need_dq, need_dk, need_dscale);
}

at::Tensor pairwise_sigmoid_emulated(const at::Tensor& q, const at::Tensor& k,
                                     const at::Tensor& scale,
                                     const std::optional<at::Tensor>& bias,
                                     const std::optional<at::Tensor>& q_labels,
                                     const std::optional<at::Tensor>& k_labels,
                                     std::optional<int64_t> self_offset, bool normalize,
                                     double eps) {
  return sigmoid_forward(&emulated_kernels::sigmoid_forward, kSigmoidForwardSite, nullptr, q, k,
                         scale, bias, q_labels, k_labels, self_offset, normalize, eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pairwise_sigmoid_emulated_backward(
    const at::Tensor& grad_row_loss, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& scale, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& q_labels, const std::optional<at::Tensor>& k_labels,
    std::optional<int64_t> self_offset, bool normalize, double eps, const at::Tensor& row_loss,
    bool need_dq, bool need_dk, bool need_dscale, bool need_dbias) {
  return sigmoid_backward(&emulated_kernels::sigmoid_backward, kSigmoidBackwardSite, nullptr,
                          grad_row_loss, q, k, scale, bias, q_labels, k_labels, self_offset,
                          normalize, eps, row_loss, need_dq, need_dk, need_dscale, need_dbias);
}

// The emulation layer's own tests (selftest.h), as ops without a dispatch key.
at::Tensor selftest_barrier() {
  at::Tensor out = at::empty({3, 2, 128}, at::kLong);
  emu_selftest::barrier(out.data_ptr<int64_t>());
  return out;
}

at::Tensor selftest_shuffle() {
  at::Tensor out = at::empty({64, 8}, at::kFloat);
  emu_selftest::shuffle(out.data_ptr<float>());
  return out;
}

at::Tensor selftest_ldmatrix(const at::Tensor& m, int64_t num, bool trans) {
  TORCH_CHECK(m.numel() == 256 && m.element_size() == 2, "m: 256 16-bit values");
  TORCH_CHECK(num == 1 || num == 2 || num == 4, "num: 1, 2 or 4");
  const at::Tensor mc = m.contiguous();
  at::Tensor out = at::zeros({32, 4}, at::kInt);
  emu_selftest::ldmatrix(static_cast<const uint16_t*>(mc.data_ptr()), int(num), trans,
                         reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>()));
  return out;
}

at::Tensor selftest_mma(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, bool bf16,
                        bool b_trans) {
  TORCH_CHECK(a.numel() == 256 && b.numel() == 128 && c.numel() == 128 &&
                  a.element_size() == 2 && b.element_size() == 2 && c.scalar_type() == at::kFloat,
              "a [16, 16], b [16, 8] 16-bit, c [16, 8] float");
  const at::Tensor ac = a.contiguous(), bc = b.contiguous(), cc = c.contiguous();
  at::Tensor out = at::empty({16, 8}, at::kFloat);
  emu_selftest::mma(static_cast<const uint16_t*>(ac.data_ptr()),
                    static_cast<const uint16_t*>(bc.data_ptr()), cc.data_ptr<float>(), bf16,
                    b_trans, out.data_ptr<float>());
  return out;
}

at::Tensor selftest_mma_tf32(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c) {
  TORCH_CHECK(a.numel() == 128 && b.numel() == 64 && c.numel() == 128 &&
                  a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat &&
                  c.scalar_type() == at::kFloat,
              "a [16, 8], b [8, 8], c [16, 8] float");
  const at::Tensor ac = a.contiguous(), bc = b.contiguous(), cc = c.contiguous();
  at::Tensor out = at::empty({16, 8}, at::kFloat);
  emu_selftest::mma_tf32(ac.data_ptr<float>(), bc.data_ptr<float>(), cc.data_ptr<float>(),
                         out.data_ptr<float>());
  return out;
}

at::Tensor selftest_tf32_round(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "x: float");
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty(xc.sizes(), at::kFloat);
  emu_selftest::tf32_round(xc.data_ptr<float>(), xc.numel(), out.data_ptr<float>());
  return out;
}

void selftest_deadlock() { emu_selftest::deadlock(); }

}  // namespace
}  // namespace cuda_ops
}  // namespace ck

TORCH_LIBRARY_FRAGMENT(contrastive_kernels, m) {
  namespace c = ck::contract;
  for (const c::OpDecl& op : c::kOps) {
    m.def(c::declaration(c::op_name(op, "cuda_emulated", false).c_str(), op.forward_schema).c_str());
    m.def(c::declaration(c::op_name(op, "cuda_emulated", true).c_str(), op.backward_schema).c_str());
  }
}

// Private: test kernels of the emulation layer, kept out of the public op namespace.
TORCH_LIBRARY(_contrastive_kernels_emulation, m) {
  m.def("barrier() -> Tensor", &ck::cuda_ops::selftest_barrier);
  m.def("shuffle() -> Tensor", &ck::cuda_ops::selftest_shuffle);
  m.def("ldmatrix(Tensor m, int num, bool trans) -> Tensor", &ck::cuda_ops::selftest_ldmatrix);
  m.def("mma(Tensor a, Tensor b, Tensor c, bool bf16, bool b_trans) -> Tensor",
        &ck::cuda_ops::selftest_mma);
  m.def("mma_tf32(Tensor a, Tensor b, Tensor c) -> Tensor", &ck::cuda_ops::selftest_mma_tf32);
  m.def("tf32_round(Tensor x) -> Tensor", &ck::cuda_ops::selftest_tf32_round);
  m.def("deadlock() -> ()", &ck::cuda_ops::selftest_deadlock);
}

TORCH_LIBRARY_IMPL(contrastive_kernels, CPU, m) {
  m.impl(ck::cuda_ops::kEmulatedForward, &ck::cuda_ops::lse_emulated);
  m.impl(ck::cuda_ops::kEmulatedBackward, &ck::cuda_ops::lse_emulated_backward);
  m.impl(ck::cuda_ops::kTwoSidedForward, &ck::cuda_ops::two_sided_lse_emulated);
  m.impl(ck::cuda_ops::kTwoSidedBackward, &ck::cuda_ops::two_sided_lse_emulated_backward);
  m.impl(ck::cuda_ops::kSigmoidForward, &ck::cuda_ops::pairwise_sigmoid_emulated);
  m.impl(ck::cuda_ops::kSigmoidBackward, &ck::cuda_ops::pairwise_sigmoid_emulated_backward);
}
