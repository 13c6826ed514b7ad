// The op wrappers shared by the CUDA kernels (ops_cuda.cpp, dispatch key CUDA) and their
// emulated instantiation (csrc/emulation/ops_emulated.cpp, dispatch key CPU): entry
// checks in the flash-attention style (the contract's checks, then dtype, sizes and
// strides), the outputs and workspaces, and the problem description for the runners of
// lse_params.h. Host code only; the runner functions are passed in.
#pragma once

#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdlib>
#include <limits>
#include <optional>
#include <tuple>

#include "common/contract.h"
#include "cuda/lse_params.h"

namespace ck {
namespace cuda_ops {

using ForwardRunner = const char* (*)(const KernelProblem&, const ForwardBuffers&);
using BackwardRunner = const char* (*)(const KernelProblem&, const BackwardBuffers&);

inline KernelDType kernel_dtype(const contract::Site& site, at::ScalarType t) {
  switch (t) {
    case at::kHalf: return KernelDType::F16;
    case at::kBFloat16: return KernelDType::BF16;
    case at::kFloat: return KernelDType::F32;
    case at::kDouble: return KernelDType::F64;
    default: break;
  }
  TORCH_CHECK(false, site.op, ": q and k must be float16, bfloat16, float32 or float64, got ", t);
}

// 16-byte aligned rows with a unit inner stride: the kernels stage them with cp.async.
inline bool rows_vectorizable(const at::Tensor& x) {
  if (x.numel() == 0) return false;
  const int64_t es = x.element_size();
  return x.stride(1) == 1 && (x.stride(0) * es) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0;
}

// CONTRASTIVE_KERNELS_CUDA_SPLITS=<s> forces s ranges (clamped to the tiles there are) on
// the forward's key split and both backward grids, whatever the shapes: tests use it to run
// the split paths on small inputs. Unset, empty or not a positive integer: the shape rule.
inline int64_t forced_split_count() {
  const char* v = std::getenv("CONTRASTIVE_KERNELS_CUDA_SPLITS");
  if (v == nullptr || *v == '\0') return 0;
  char* end = nullptr;
  const long long s = std::strtoll(v, &end, 10);
  return (end != nullptr && *end == '\0' && s > 0) ? int64_t(s) : 0;
}

// Everything a kernel reads, converted once: scale / bias in the accumulation dtype,
// labels as int64. The tensors stay alive with the struct.
struct Prepared {
  KernelProblem problem;
  at::Tensor scale, bias, q_labels, k_labels;
};

inline Prepared prepare(const contract::Site& site, const at::Tensor& q, const at::Tensor& k,
                        const at::Tensor& scale, const std::optional<at::Tensor>& bias,
                        const std::optional<at::Tensor>& q_labels_in,
                        const std::optional<at::Tensor>& k_labels_in,
                        std::optional<int64_t> self_offset, bool normalize, double eps,
                        bool exclude_positives, void* stream) {
  const auto [q_labels, k_labels] =
      contract::active_labels(q_labels_in, k_labels_in, exclude_positives);
  const at::ScalarType acc = contract::accumulate_type(q.scalar_type());
  Prepared out;
  KernelProblem& p = out.problem;
  p.dtype = kernel_dtype(site, q.scalar_type());
  // Rows index with 64-bit offsets; grid.x counts blocks of 4 rows (the per-row kernels)
  // in 31 bits.
  constexpr int64_t kMaxRows = int64_t(std::numeric_limits<int32_t>::max()) * 4;
  TORCH_CHECK(q.size(0) <= kMaxRows && k.size(0) <= kMaxRows, site.op,
              ": at most ", kMaxRows, " rows in q and k, got ", q.size(0), " and ", k.size(0));
  p.n = q.size(0);
  p.m = k.size(0);
  p.d = q.size(1);
  p.q = q.data_ptr();
  p.q_s0 = q.stride(0);
  p.q_s1 = q.stride(1);
  p.k = k.data_ptr();
  p.k_s0 = k.stride(0);
  p.k_s1 = k.stride(1);
  // fp32 logits on tf32 tensor cores exactly when torch's fp32 matmuls may use tf32
  // (torch.get_float32_matmul_precision() != "highest"), read at every call
  p.tf32 = q.scalar_type() == at::kFloat &&
           at::globalContext().float32MatmulPrecision() != at::Float32MatmulPrecision::HIGHEST;
  p.q_vec = rows_vectorizable(q);
  p.k_vec = rows_vectorizable(k);
  out.scale = scale.reshape({}).to(acc).contiguous();
  p.scale = out.scale.data_ptr();
  if (bias.has_value()) {
    out.bias = bias->to(acc).contiguous();
    p.bias = out.bias.data_ptr();
  }
  if (q_labels.has_value()) {
    out.q_labels = q_labels->to(at::kLong).contiguous();
    out.k_labels = k_labels->to(at::kLong).contiguous();
    p.q_labels = out.q_labels.data_ptr<int64_t>();
    p.k_labels = out.k_labels.data_ptr<int64_t>();
  }
  p.has_self = self_offset.has_value();
  p.self_offset = self_offset.value_or(0);
  p.normalize = normalize;
  p.eps = eps;
  p.stream = stream;
  return out;
}

inline std::tuple<at::Tensor, at::Tensor> forward(
    ForwardRunner run, const contract::Site& site, void* stream, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& scale, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& q_labels, const std::optional<at::Tensor>& k_labels,
    std::optional<int64_t> self_offset, bool normalize, double eps, bool exclude_positives,
    bool return_o) {
  contract::check_inputs(site, q, k, scale, bias, q_labels, k_labels, eps, exclude_positives);
  Prepared prep = prepare(site, q, k, scale, bias, q_labels, k_labels, self_offset, normalize,
                          eps, exclude_positives, stream);
  const KernelProblem& p = prep.problem;
  const auto acc = q.options().dtype(contract::accumulate_type(q.scalar_type()));
  at::Tensor lse = at::empty({p.n}, acc);
  at::Tensor o = return_o ? at::zeros({p.n, p.d}, acc) : at::empty({0}, acc);
  at::Tensor rq = at::empty({p.n}, acc), rk = at::empty({p.m}, acc);
  ForwardBuffers b;
  b.rq = rq.data_ptr();
  b.rk = rk.data_ptr();
  b.lse = lse.data_ptr();
  b.o = return_o ? o.data_ptr() : nullptr;
  b.splits = forced_splits(forward_key_splits(p.n, p.m), forced_split_count(), p.m);
  at::Tensor part_m, part_l, part_o;
  if (b.splits > 1) {
    part_m = at::empty({b.splits, p.n}, acc);
    part_l = at::empty({b.splits, p.n}, acc);
    b.part_m = part_m.data_ptr();
    b.part_l = part_l.data_ptr();
    if (return_o) {
      part_o = at::zeros({b.splits, p.n, p.d}, acc);
      b.part_o = part_o.data_ptr();
    }
  }
  const char* err = run(p, b);
  TORCH_CHECK(err == nullptr, site.op, ": kernel launch failed: ", err);
  return {lse, o};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    BackwardRunner run, const contract::Site& site, void* stream, const at::Tensor& grad_lse,
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& scale,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& q_labels,
    const std::optional<at::Tensor>& k_labels, std::optional<int64_t> self_offset,
    bool normalize, double eps, bool exclude_positives, const at::Tensor& lse_in, bool need_dq,
    bool need_dk, bool need_dscale) {
  contract::check_backward_inputs(site, grad_lse, q, k, scale, bias, q_labels, k_labels, eps,
                                  exclude_positives, lse_in);
  Prepared prep = prepare(site, q, k, scale, bias, q_labels, k_labels, self_offset, normalize,
                          eps, exclude_positives, stream);
  const KernelProblem& p = prep.problem;
  const at::ScalarType acc_type = contract::accumulate_type(q.scalar_type());
  const auto acc = q.options().dtype(acc_type);
  const at::Tensor g = grad_lse.to(acc_type).contiguous();
  const at::Tensor lse = lse_in.to(acc_type).contiguous();
  at::Tensor rq = at::empty({p.n}, acc), rk = at::empty({p.m}, acc);
  const bool need_u = need_dq || need_dscale;
  const int64_t forced = forced_split_count();
  const int64_t u_splits = forced_splits(backward_splits(p.n, p.m), forced, p.m);
  const int64_t v_splits = forced_splits(backward_splits(p.m, p.n), forced, p.n);
  // one [rows, d] slice per range of the split grid, summed in order by the epilogue
  at::Tensor u = need_u ? at::zeros({u_splits, p.n, p.d}, acc) : at::Tensor();
  at::Tensor v = need_dk ? at::zeros({v_splits, p.m, p.d}, acc) : at::Tensor();
  at::Tensor dq = need_dq ? at::empty({p.n, p.d}, q.options()) : at::empty({0}, q.options());
  at::Tensor dk = need_dk ? at::empty({p.m, p.d}, k.options()) : at::empty({0}, k.options());
  // the dscale partial of every (key range, row) of the dq grid, summed in a fixed order
  at::Tensor rowdot = need_dscale ? at::empty({u_splits, p.n}, acc) : at::Tensor();
  at::Tensor dscale = at::zeros({}, acc);
  BackwardBuffers b;
  b.grad_lse = g.data_ptr();
  b.lse = lse.data_ptr();
  b.rq = rq.data_ptr();
  b.rk = rk.data_ptr();
  b.u = need_u ? u.data_ptr() : nullptr;
  b.v = need_dk ? v.data_ptr() : nullptr;
  b.u_splits = u_splits;
  b.v_splits = v_splits;
  b.dq = need_dq ? dq.data_ptr() : nullptr;
  b.dk = need_dk ? dk.data_ptr() : nullptr;
  b.rowdot = need_dscale ? rowdot.data_ptr() : nullptr;
  b.dscale = need_dscale ? dscale.data_ptr() : nullptr;
  const char* err = run(p, b);
  TORCH_CHECK(err == nullptr, site.op, ": kernel launch failed: ", err);
  return {dq, dk, dscale.to(scale.scalar_type())};
}

}  // namespace cuda_ops
}  // namespace ck
