// The CPU backend's core ops, contrastive_kernels::lse_cpu and lse_cpu_backward: schemas
// (the same strings as ops.py FORWARD_SCHEMA / BACKWARD_SCHEMA), argument checks, output
// allocation per the op contract of ops.py, and dispatch to the float / double kernels.
// Python (contrastive_kernels/_cpu.py) attaches the fake implementations and autograd.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "lse_cpu.h"
#include "operands.h"

namespace ck {
namespace cpu {
namespace {

void check_labels(const std::optional<at::Tensor>& labels, const char* name, int64_t rows) {
  if (!labels.has_value()) return;
  const at::Tensor& t = *labels;
  TORCH_CHECK(t.device().is_cpu(), "lse_cpu: ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == rows, "lse_cpu: ", name, " must have shape [", rows,
              "], got ", t.sizes());
  TORCH_CHECK(at::isIntegralType(t.scalar_type(), /*includeBool=*/false), "lse_cpu: ", name,
              " must be an integer tensor, got ", t.scalar_type());
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& scale,
                  const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& q_labels,
                  const std::optional<at::Tensor>& k_labels, double eps, bool exclude_positives) {
  for (auto [name, t] : {std::pair<const char*, const at::Tensor*>{"q", &q}, {"k", &k}}) {
    TORCH_CHECK(t->device().is_cpu(), "lse_cpu: ", name, " must be a CPU tensor, got ", t->device());
    TORCH_CHECK(t->dim() == 2, "lse_cpu: ", name, " must be 2-D [rows, d], got shape ", t->sizes());
    TORCH_CHECK(t->is_floating_point(), "lse_cpu: ", name,
                " must be floating point (float16/bfloat16/float32/float64), got ", t->scalar_type());
  }
  TORCH_CHECK(q.scalar_type() == k.scalar_type(), "lse_cpu: q and k must share a dtype, got q ",
              q.scalar_type(), " and k ", k.scalar_type());
  TORCH_CHECK(q.size(1) == k.size(1), "lse_cpu: q and k must have the same feature size d, got q ",
              q.sizes(), " and k ", k.sizes());
  TORCH_CHECK(scale.device().is_cpu() && scale.numel() == 1 && scale.is_floating_point(),
              "lse_cpu: scale must be a one-element floating CPU tensor, got shape ", scale.sizes(),
              " ", scale.scalar_type(), " on ", scale.device());
  if (bias.has_value()) {
    TORCH_CHECK(bias->device().is_cpu(), "lse_cpu: bias must be a CPU tensor, got ", bias->device());
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == k.size(0), "lse_cpu: bias must have shape [M] = [",
                k.size(0), "], got ", bias->sizes());
    TORCH_CHECK(bias->is_floating_point(), "lse_cpu: bias must be floating point, got ",
                bias->scalar_type());
  }
  TORCH_CHECK(eps > 0, "lse_cpu: eps must be > 0, got ", eps);
  if (exclude_positives) {
    TORCH_CHECK(q_labels.has_value() && k_labels.has_value(),
                "lse_cpu: exclude_positives=True needs both q_labels and k_labels");
    check_labels(q_labels, "q_labels", q.size(0));
    check_labels(k_labels, "k_labels", k.size(0));
  }
}

at::ScalarType accumulate_type(const at::Tensor& q) {
  return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

template <class T>
std::tuple<at::Tensor, at::Tensor> forward_impl(const Operands<T>& op, const at::Tensor& q,
                                                bool return_o) {
  const at::TensorOptions opts = q.options().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor lse = at::empty({op.n}, opts);
  if (!return_o) {
    lse_forward_kernel<T>(op, lse.data_ptr<T>(), nullptr);
    return {lse, at::empty({0}, opts)};
  }
  // o accumulates in place when its rows already have the padded width
  at::Tensor o_acc = at::zeros({op.n, op.dp}, opts);
  lse_forward_kernel<T>(op, lse.data_ptr<T>(), o_acc.data_ptr<T>());
  at::Tensor o = op.dp == op.d ? o_acc : o_acc.narrow(1, 0, op.d).contiguous();
  return {lse, o};
}

std::tuple<at::Tensor, at::Tensor> lse_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& scale,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& q_labels,
    const std::optional<at::Tensor>& k_labels, std::optional<int64_t> self_offset, bool normalize,
    double eps, bool exclude_positives, bool return_o) {
  check_inputs(q, k, scale, bias, q_labels, k_labels, eps, exclude_positives);
  const double lam = scale.item<double>();
  if (accumulate_type(q) == at::kDouble) {
    auto op = prepare_operands<double>(q, k, lam, bias, q_labels, k_labels, self_offset, normalize,
                                       eps, exclude_positives);
    return forward_impl<double>(op, q, return_o);
  }
  auto op = prepare_operands<float>(q, k, lam, bias, q_labels, k_labels, self_offset, normalize, eps,
                                    exclude_positives);
  return forward_impl<float>(op, q, return_o);
}

// A zeroed [rows, dp] accumulator in the accumulation dtype. When x has that dtype and
// d == dp, it becomes the gradient output itself (as_gradient), with no copy at the end.
template <class T>
at::Tensor accumulator(const at::Tensor& like, int64_t dp) {
  return at::zeros({like.size(0), dp}, like.options().dtype(c10::CppTypeToScalarType<T>::value));
}

// The [rows, d] gradient in x's dtype from a finished accumulator.
at::Tensor as_gradient(const at::Tensor& acc, const at::Tensor& x) {
  if (acc.scalar_type() == x.scalar_type() && acc.size(1) == x.size(1)) return acc;
  at::Tensor out = at::empty(x.sizes(), x.options());
  out.copy_(acc.narrow(1, 0, x.size(1)));
  return out;
}

template <class T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_impl(
    const Operands<T>& op, const at::Tensor& grad_lse, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& scale, double lam, double eps, const at::Tensor& lse, bool need_dq,
    bool need_dk, bool need_dscale) {
  const at::ScalarType acc = c10::CppTypeToScalarType<T>::value;
  at::Tensor g = grad_lse.to(acc).contiguous();
  at::Tensor saved = lse.to(acc).contiguous();
  at::Tensor u, v;
  if (need_dq || need_dscale) u = accumulator<T>(q, op.dp);
  if (need_dk) v = accumulator<T>(k, op.dp);
  lse_backward_kernel<T>(op, g.data_ptr<T>(), saved.data_ptr<T>(),
                         u.defined() ? u.data_ptr<T>() : nullptr,
                         v.defined() ? v.data_ptr<T>() : nullptr);
  double dscale = 0;
  if (u.defined())
    dscale = finish_gradient<T>(op.q, op.n, op.d, op.dp, u.data_ptr<T>(), lam, op.normalize, eps,
                                need_dq);
  if (v.defined())
    finish_gradient<T>(op.k, op.m, op.d, op.dp, v.data_ptr<T>(), lam, op.normalize, eps, true);
  at::Tensor dq = need_dq ? as_gradient(u, q) : at::empty({0}, q.options());
  at::Tensor dk = need_dk ? as_gradient(v, k) : at::empty({0}, k.options());
  at::Tensor ds = at::scalar_tensor(need_dscale ? dscale : 0.0, scale.options());
  return {dq, dk, ds};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lse_cpu_backward(
    const at::Tensor& grad_lse, const at::Tensor& q, const at::Tensor& k, const at::Tensor& scale,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& q_labels,
    const std::optional<at::Tensor>& k_labels, std::optional<int64_t> self_offset, bool normalize,
    double eps, bool exclude_positives, const at::Tensor& lse, bool need_dq, bool need_dk,
    bool need_dscale) {
  check_inputs(q, k, scale, bias, q_labels, k_labels, eps, exclude_positives);
  for (auto [name, t] : {std::pair<const char*, const at::Tensor*>{"grad_lse", &grad_lse}, {"lse", &lse}}) {
    TORCH_CHECK(t->device().is_cpu(), "lse_cpu_backward: ", name, " must be a CPU tensor, got ",
                t->device());
    TORCH_CHECK(t->dim() == 1 && t->size(0) == q.size(0), "lse_cpu_backward: ", name,
                " must have shape [N] = [", q.size(0), "], got ", t->sizes());
    TORCH_CHECK(t->is_floating_point(), "lse_cpu_backward: ", name, " must be floating point, got ",
                t->scalar_type());
  }
  const double lam = scale.item<double>();
  if (accumulate_type(q) == at::kDouble) {
    auto op = prepare_operands<double>(q, k, lam, bias, q_labels, k_labels, self_offset, normalize,
                                       eps, exclude_positives);
    return backward_impl<double>(op, grad_lse, q, k, scale, lam, eps, lse, need_dq, need_dk, need_dscale);
  }
  auto op = prepare_operands<float>(q, k, lam, bias, q_labels, k_labels, self_offset, normalize, eps,
                                    exclude_positives);
  return backward_impl<float>(op, grad_lse, q, k, scale, lam, eps, lse, need_dq, need_dk, need_dscale);
}

}  // namespace
}  // namespace cpu
}  // namespace ck

// FRAGMENT: other backends (and Python) add ops to the same namespace.
TORCH_LIBRARY_FRAGMENT(contrastive_kernels, m) {
  m.def(
      "lse_cpu(Tensor q, Tensor k, Tensor scale, Tensor? bias, Tensor? q_labels, Tensor? k_labels, "
      "int? self_offset, bool normalize, float eps, bool exclude_positives, bool return_o) "
      "-> (Tensor, Tensor)");
  m.def(
      "lse_cpu_backward(Tensor grad_lse, Tensor q, Tensor k, Tensor scale, Tensor? bias, "
      "Tensor? q_labels, Tensor? k_labels, int? self_offset, bool normalize, float eps, "
      "bool exclude_positives, Tensor lse, bool need_dq, bool need_dk, bool need_dscale) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(contrastive_kernels, CPU, m) {
  m.impl("lse_cpu", &ck::cpu::lse_cpu);
  m.impl("lse_cpu_backward", &ck::cpu::lse_cpu_backward);
}
