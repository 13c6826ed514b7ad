// The entry points of one build of the CPU kernels (cpu/isa.h), as a KernelSet: output
// allocation per the op contract (lse, the two-sided lse, the pairwise sigmoid) and dispatch to the float /
// double kernels; one gradient epilogue (gradients) behind both backwards. The checks
// and the choice of the kernel set are in ops_cpu.cpp and dispatch.cpp, compiled once.
#include "cpu/isa.h"  // first: the library headers, then the ISA switch

#include "common/contract.h"
#include "kernels.h"
#include "lse_cpu.h"
#include "operands.h"
#include "sigmoid_cpu.h"
#include "two_sided_cpu.h"

CK_CPU_NAMESPACE_BEGIN

namespace {

using contract::accumulate_type;

template <class T>
Operands<T> operands(const CallArgs& a) {
  return prepare_operands<T>(a.q, a.k, a.scale, a.bias, a.q_labels, a.k_labels, a.self_offset,
                             a.normalize, a.eps, a.exclude_positives);
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

std::tuple<at::Tensor, at::Tensor> forward(const CallArgs& a, bool return_o) {
  if (accumulate_type(a.q.scalar_type()) == at::kDouble)
    return forward_impl<double>(operands<double>(a), a.q, return_o);
  return forward_impl<float>(operands<float>(a), a.q, return_o);
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

// (dq, dk, dscale) from run(u, v), which accumulates u~ and v~ (either null when not
// needed) into zeroed buffers: the epilogue shared by every core op's backward.
template <class T, class Run>
std::tuple<at::Tensor, at::Tensor, at::Tensor> gradients(const Operands<T>& op, const CallArgs& a,
                                                         const at::Tensor& scale, bool need_dq,
                                                         bool need_dk, bool need_dscale, Run&& run) {
  at::Tensor u, v;
  if (need_dq || need_dscale) u = accumulator<T>(a.q, op.dp);
  if (need_dk) v = accumulator<T>(a.k, op.dp);
  run(u.defined() ? u.data_ptr<T>() : nullptr, v.defined() ? v.data_ptr<T>() : nullptr);
  double dscale = 0;
  if (u.defined())
    dscale = finish_gradient<T>(op.q, op.n, op.d, op.dp, u.data_ptr<T>(), a.scale, op.normalize,
                                a.eps, need_dq, op.q_grad_factor);
  if (v.defined())
    finish_gradient<T>(op.k, op.m, op.d, op.dp, v.data_ptr<T>(), a.scale, op.normalize, a.eps,
                       true, op.k_grad_factor);
  at::Tensor dq = need_dq ? as_gradient(u, a.q) : at::empty({0}, a.q.options());
  at::Tensor dk = need_dk ? as_gradient(v, a.k) : at::empty({0}, a.k.options());
  at::Tensor ds = at::scalar_tensor(need_dscale ? dscale : 0.0, scale.options());
  return {dq, dk, ds};
}

// A per-line input (grad or saved lse) as a contiguous accumulation-dtype vector.
template <class T>
at::Tensor line_vector(const at::Tensor& x) {
  return x.to(c10::CppTypeToScalarType<T>::value).contiguous();
}

template <class T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_impl(
    const CallArgs& a, const at::Tensor& grad_lse, const at::Tensor& scale, const at::Tensor& lse,
    bool need_dq, bool need_dk, bool need_dscale) {
  const Operands<T> op = operands<T>(a);
  at::Tensor g = line_vector<T>(grad_lse), saved = line_vector<T>(lse);
  return gradients<T>(op, a, scale, need_dq, need_dk, need_dscale, [&](T* u, T* v) {
    lse_backward_kernel<T>(op, g.data_ptr<T>(), saved.data_ptr<T>(), u, v);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const CallArgs& a,
                                                        const at::Tensor& grad_lse,
                                                        const at::Tensor& scale,
                                                        const at::Tensor& lse, bool need_dq,
                                                        bool need_dk, bool need_dscale) {
  if (accumulate_type(a.q.scalar_type()) == at::kDouble)
    return backward_impl<double>(a, grad_lse, scale, lse, need_dq, need_dk, need_dscale);
  return backward_impl<float>(a, grad_lse, scale, lse, need_dq, need_dk, need_dscale);
}

template <class T>
std::tuple<at::Tensor, at::Tensor> two_sided_forward_impl(const CallArgs& a) {
  const Operands<T> op = operands<T>(a);
  const at::TensorOptions opts = a.q.options().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor row_lse = at::empty({op.n}, opts), col_lse = at::empty({op.m}, opts);
  two_sided_forward_kernel<T>(op, row_lse.data_ptr<T>(), col_lse.data_ptr<T>());
  return {row_lse, col_lse};
}

std::tuple<at::Tensor, at::Tensor> two_sided_forward(const CallArgs& a) {
  if (accumulate_type(a.q.scalar_type()) == at::kDouble) return two_sided_forward_impl<double>(a);
  return two_sided_forward_impl<float>(a);
}

template <class T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> two_sided_backward_impl(
    const CallArgs& a, const at::Tensor& grad_row_lse, const at::Tensor& grad_col_lse,
    const at::Tensor& scale, const at::Tensor& row_lse, const at::Tensor& col_lse, bool need_dq,
    bool need_dk, bool need_dscale) {
  const Operands<T> op = operands<T>(a);
  at::Tensor g = line_vector<T>(grad_row_lse), h = line_vector<T>(grad_col_lse);
  at::Tensor rl = line_vector<T>(row_lse), cl = line_vector<T>(col_lse);
  return gradients<T>(op, a, scale, need_dq, need_dk, need_dscale, [&](T* u, T* v) {
    two_sided_backward_kernel<T>(op, g.data_ptr<T>(), h.data_ptr<T>(), rl.data_ptr<T>(),
                                 cl.data_ptr<T>(), u, v);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> two_sided_backward(
    const CallArgs& a, const at::Tensor& grad_row_lse, const at::Tensor& grad_col_lse,
    const at::Tensor& scale, const at::Tensor& row_lse, const at::Tensor& col_lse, bool need_dq,
    bool need_dk, bool need_dscale) {
  if (accumulate_type(a.q.scalar_type()) == at::kDouble)
    return two_sided_backward_impl<double>(a, grad_row_lse, grad_col_lse, scale, row_lse, col_lse,
                                           need_dq, need_dk, need_dscale);
  return two_sided_backward_impl<float>(a, grad_row_lse, grad_col_lse, scale, row_lse, col_lse,
                                        need_dq, need_dk, need_dscale);
}

// The sigmoid's operands: its labels (active whenever both are given) and self pair are
// positives that flip a sign, not exclusions.
template <class T>
Operands<T> sigmoid_operands(const CallArgs& a) {
  Operands<T> op = operands<T>(a);
  op.signed_pairs = true;
  return op;
}

template <class T>
at::Tensor sigmoid_forward_impl(const CallArgs& a) {
  const Operands<T> op = sigmoid_operands<T>(a);
  at::Tensor row_loss = at::empty({op.n}, a.q.options().dtype(c10::CppTypeToScalarType<T>::value));
  sigmoid_forward_kernel<T>(op, row_loss.data_ptr<T>());
  return row_loss;
}

at::Tensor sigmoid_forward(const CallArgs& a) {
  if (accumulate_type(a.q.scalar_type()) == at::kDouble) return sigmoid_forward_impl<double>(a);
  return sigmoid_forward_impl<float>(a);
}

template <class T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sigmoid_backward_impl(
    const CallArgs& a, const at::Tensor& grad_row_loss, const at::Tensor& scale, bool need_dq,
    bool need_dk, bool need_dscale, bool need_dbias) {
  const Operands<T> op = sigmoid_operands<T>(a);
  at::Tensor g = line_vector<T>(grad_row_loss);
  const at::TensorOptions opts = a.q.options().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor dbias = need_dbias ? at::zeros({op.m}, opts) : at::empty({0}, opts);
  auto [dq, dk, ds] = gradients<T>(op, a, scale, need_dq, need_dk, need_dscale, [&](T* u, T* v) {
    sigmoid_backward_kernel<T>(op, g.data_ptr<T>(), u, v,
                               need_dbias ? dbias.data_ptr<T>() : nullptr);
  });
  return {dq, dk, ds, dbias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sigmoid_backward(
    const CallArgs& a, const at::Tensor& grad_row_loss, const at::Tensor& scale, bool need_dq,
    bool need_dk, bool need_dscale, bool need_dbias) {
  if (accumulate_type(a.q.scalar_type()) == at::kDouble)
    return sigmoid_backward_impl<double>(a, grad_row_loss, scale, need_dq, need_dk, need_dscale,
                                         need_dbias);
  return sigmoid_backward_impl<float>(a, grad_row_loss, scale, need_dq, need_dk, need_dscale,
                                      need_dbias);
}

}  // namespace

extern const KernelSet kKernelSet;
const KernelSet kKernelSet{CK_CPU_AVX2 ? kAvx2Name : kBaselineName, &forward, &backward,
                           &two_sided_forward, &two_sided_backward, &sigmoid_forward,
                           &sigmoid_backward};

CK_CPU_NAMESPACE_END
