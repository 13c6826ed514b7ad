// The op wrappers shared by the CUDA kernels (ops_cuda.cpp, dispatch key CUDA) and their
// emulated instantiation (csrc/emulation/ops_emulated.cpp, dispatch key CPU): entry
// checks in the flash-attention style (the contract's checks, then dtype, sizes and
// strides), the outputs and workspaces, and the problem description for the runners of
// lse_params.h, for lse, two_sided_lse and pairwise_sigmoid. Host code only; the runner
// functions are passed in.
#pragma once

#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
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

// The outputs and workspaces of a forward call's row statistics: lse [n] (and o), the inverse
// norms, the key split and its partials. The tensors stay alive with the struct.
struct ForwardCall {
  at::Tensor lse, o, rq, rk, part_m, part_l, part_o;
  ForwardBuffers b;

  ForwardCall(const KernelProblem& p, const at::TensorOptions& acc, bool return_o) {
    lse = at::empty({p.n}, acc);
    o = return_o ? at::zeros({p.n, p.d}, acc) : at::empty({0}, acc);
    rq = at::empty({p.n}, acc);
    rk = at::empty({p.m}, acc);
    b.rq = rq.data_ptr();
    b.rk = rk.data_ptr();
    b.lse = lse.data_ptr();
    b.o = return_o ? o.data_ptr() : nullptr;
    b.splits = forced_splits(forward_key_splits(p.n, p.m), forced_split_count(), p.m);
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
  }
};

inline at::TensorOptions acc_options(const at::Tensor& q) {
  return q.options().dtype(contract::accumulate_type(q.scalar_type()));
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
  ForwardCall call(p, acc_options(q), return_o);
  const char* err = run(p, call.b);
  TORCH_CHECK(err == nullptr, site.op, ": kernel launch failed: ", err);
  return {call.lse, call.o};
}

// two_sided_lse: (row_lse [n], col_lse [m]) from one sweep; the column partials of every
// 64-row block are merged per key in block order.
inline std::tuple<at::Tensor, at::Tensor> two_sided_forward(
    ForwardRunner run, const contract::Site& site, void* stream, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& scale, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& q_labels, const std::optional<at::Tensor>& k_labels,
    std::optional<int64_t> self_offset, bool normalize, double eps, bool exclude_positives) {
  contract::check_inputs(site, q, k, scale, bias, q_labels, k_labels, eps, exclude_positives);
  Prepared prep = prepare(site, q, k, scale, bias, q_labels, k_labels, self_offset, normalize,
                          eps, exclude_positives, stream);
  const KernelProblem& p = prep.problem;
  const at::TensorOptions acc = acc_options(q);
  ForwardCall call(p, acc, /*return_o=*/false);
  const int64_t row_blocks = (p.n + 63) / 64;
  at::Tensor col_lse = at::full({p.m}, -std::numeric_limits<double>::infinity(), acc);
  at::Tensor col_part_m = at::empty({row_blocks, p.m}, acc);
  at::Tensor col_part_l = at::empty({row_blocks, p.m}, acc);
  call.b.col_lse = col_lse.data_ptr();
  call.b.col_part_m = col_part_m.data_ptr();
  call.b.col_part_l = col_part_l.data_ptr();
  const char* err = run(p, call.b);
  TORCH_CHECK(err == nullptr, site.op, ": kernel launch failed: ", err);
  return {call.lse, col_lse};
}

// The outputs and workspaces of a backward call: the inverse norms, the u / v slices of the
// split grids, dq / dk, the dscale partials. The statistics and their gradients are the
// caller's (BackwardBuffers::grad_lse / lse / grad_col / col_lse).
struct BackwardCall {
  at::Tensor rq, rk, u, v, dq, dk, rowdot, dscale;
  BackwardBuffers b;

  BackwardCall(const KernelProblem& p, const at::Tensor& q, const at::Tensor& k, bool need_dq,
               bool need_dk, bool need_dscale) {
    const at::TensorOptions acc = acc_options(q);
    rq = at::empty({p.n}, acc);
    rk = at::empty({p.m}, acc);
    const bool need_u = need_dq || need_dscale;
    const int64_t forced = forced_split_count();
    const int64_t u_splits = forced_splits(backward_splits(p.n, p.m), forced, p.m);
    const int64_t v_splits = forced_splits(backward_splits(p.m, p.n), forced, p.n);
    // one [rows, d] slice per range of the split grid, summed in order by the epilogue
    if (need_u) u = at::zeros({u_splits, p.n, p.d}, acc);
    if (need_dk) v = at::zeros({v_splits, p.m, p.d}, acc);
    dq = need_dq ? at::empty({p.n, p.d}, q.options()) : at::empty({0}, q.options());
    dk = need_dk ? at::empty({p.m, p.d}, k.options()) : at::empty({0}, k.options());
    // the dscale partial of every (key range, row) of the dq grid, summed in a fixed order
    // zeros: with d = 0 the dq grid does not run (u is empty) and dscale is 0
    if (need_dscale) rowdot = at::zeros({u_splits, p.n}, acc);
    dscale = at::zeros({}, acc);
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
  }

  std::tuple<at::Tensor, at::Tensor, at::Tensor> run(BackwardRunner runner,
                                                     const contract::Site& site,
                                                     const KernelProblem& p,
                                                     const at::Tensor& scale) {
    const char* err = runner(p, b);
    TORCH_CHECK(err == nullptr, site.op, ": kernel launch failed: ", err);
    return {dq, dk, dscale.to(scale.scalar_type())};
  }
};

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
  const at::Tensor g = grad_lse.to(acc_type).contiguous();
  const at::Tensor lse = lse_in.to(acc_type).contiguous();
  BackwardCall call(p, q, k, need_dq, need_dk, need_dscale);
  call.b.grad_lse = g.data_ptr();
  call.b.lse = lse.data_ptr();
  return call.run(run, site, p, scale);
}

// A statistic of the two-sided backward or its gradient: [rows], floating point, on q's
// device (the contract's check_row_vectors covers lse's [N] pair under its own names).
inline void check_statistic(const contract::Site& site, const char* name, const at::Tensor& t,
                            const at::Tensor& q, int64_t rows, const char* dim) {
  TORCH_CHECK(t.device() == q.device(), site.op, ": ", name, " must be on q's device ",
              q.device(), ", got ", t.device());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == rows, site.op, ": ", name, " must have shape [", dim,
              "] = [", rows, "], got ", t.sizes());
  TORCH_CHECK(t.is_floating_point(), site.op, ": ", name, " must be floating point, got ",
              t.scalar_type());
}

// two_sided_lse's backward: both grids with w_ij = g_i p_ij + h_j p'_ij.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> two_sided_backward(
    BackwardRunner run, const contract::Site& site, void* stream, const at::Tensor& grad_row_lse,
    const at::Tensor& grad_col_lse, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& scale, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& q_labels, const std::optional<at::Tensor>& k_labels,
    std::optional<int64_t> self_offset, bool normalize, double eps, bool exclude_positives,
    const at::Tensor& row_lse_in, const at::Tensor& col_lse_in, bool need_dq, bool need_dk,
    bool need_dscale) {
  contract::check_inputs(site, q, k, scale, bias, q_labels, k_labels, eps, exclude_positives);
  check_statistic(site, "grad_row_lse", grad_row_lse, q, q.size(0), "N");
  check_statistic(site, "row_lse", row_lse_in, q, q.size(0), "N");
  check_statistic(site, "grad_col_lse", grad_col_lse, q, k.size(0), "M");
  check_statistic(site, "col_lse", col_lse_in, q, k.size(0), "M");
  Prepared prep = prepare(site, q, k, scale, bias, q_labels, k_labels, self_offset, normalize,
                          eps, exclude_positives, stream);
  const KernelProblem& p = prep.problem;
  const at::ScalarType acc_type = contract::accumulate_type(q.scalar_type());
  const at::Tensor g = grad_row_lse.to(acc_type).contiguous();
  const at::Tensor row_lse = row_lse_in.to(acc_type).contiguous();
  const at::Tensor h = grad_col_lse.to(acc_type).contiguous();
  const at::Tensor col_lse = col_lse_in.to(acc_type).contiguous();
  BackwardCall call(p, q, k, need_dq, need_dk, need_dscale);
  call.b.grad_lse = g.data_ptr();
  call.b.lse = row_lse.data_ptr();
  call.b.grad_col = h.data_ptr();
  call.b.col_lse = col_lse.data_ptr();
  return call.run(run, site, p, scale);
}

// pairwise_sigmoid: row_loss [n] = sum_j softplus(-z_ij s_ij), the key ranges' partial sums
// added in range order.
inline at::Tensor sigmoid_forward(ForwardRunner run, const contract::Site& site, void* stream,
                                  const at::Tensor& q, const at::Tensor& k,
                                  const at::Tensor& scale, const std::optional<at::Tensor>& bias,
                                  const std::optional<at::Tensor>& q_labels,
                                  const std::optional<at::Tensor>& k_labels,
                                  std::optional<int64_t> self_offset, bool normalize, double eps) {
  // the labels are compared whenever both are given: the marked pairs are the positives
  const bool labels = contract::sigmoid_labels_active(q_labels, k_labels);
  contract::check_inputs(site, q, k, scale, bias, q_labels, k_labels, eps, labels);
  Prepared prep = prepare(site, q, k, scale, bias, q_labels, k_labels, self_offset, normalize,
                          eps, labels, stream);
  const KernelProblem& p = prep.problem;
  ForwardCall call(p, acc_options(q), /*return_o=*/false);
  const char* err = run(p, call.b);
  TORCH_CHECK(err == nullptr, site.op, ": kernel launch failed: ", err);
  return call.lse;
}

// pairwise_sigmoid's backward: both grids with w_ij = -z_ij sigmoid(-z_ij s_ij) g_i, and
// dbias [m] (acc dtype; empty [0] when not needed) from the dk grid's partials.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sigmoid_backward(
    BackwardRunner run, const contract::Site& site, void* stream, const at::Tensor& grad_row_loss,
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& scale,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& q_labels,
    const std::optional<at::Tensor>& k_labels, std::optional<int64_t> self_offset,
    bool normalize, double eps, const at::Tensor& row_loss, bool need_dq, bool need_dk,
    bool need_dscale, bool need_dbias) {
  contract::check_sigmoid_backward_inputs(site, grad_row_loss, q, k, scale, bias, q_labels,
                                          k_labels, eps, row_loss);
  const bool labels = contract::sigmoid_labels_active(q_labels, k_labels);
  TORCH_CHECK(!need_dbias || bias.has_value(), site.op, ": need_dbias without a bias");
  Prepared prep = prepare(site, q, k, scale, bias, q_labels, k_labels, self_offset, normalize,
                          eps, labels, stream);
  const KernelProblem& p = prep.problem;
  const at::TensorOptions acc = acc_options(q);
  const at::Tensor g = grad_row_loss.to(acc.dtype()).contiguous();
  BackwardCall call(p, q, k, need_dq, need_dk, need_dscale);
  call.b.grad_lse = g.data_ptr();
  at::Tensor dbias = at::empty({need_dbias ? p.m : 0}, acc), dbias_part;
  if (need_dbias) {
    dbias_part = at::zeros({call.b.v_splits, p.m}, acc);
    call.b.dbias_part = dbias_part.data_ptr();
    call.b.dbias = dbias.data_ptr();
  }
  auto [dq, dk, dscale] = call.run(run, site, p, scale);
  return {dq, dk, dscale, dbias};
}

}  // namespace cuda_ops
}  // namespace ck
