// The shared argument checks of common/contract.h. Every message names the op, the
// argument and what was expected: callers (and tests) match on those phrases.
#include "common/contract.h"

#include <c10/util/Exception.h>

#include <initializer_list>

namespace ck {
namespace contract {
namespace {

// Device type first, then q's device: for CUDA a second GPU is a different address space.
void check_device(const Site& site, const char* name, const at::Tensor& t, const at::Tensor& q) {
  TORCH_CHECK(t.device().type() == site.device, site.op, ": ", name, " must be a ",
              c10::DeviceTypeName(site.device), " tensor, got ", t.device());
  if (&t != &q)
    TORCH_CHECK(t.device() == q.device(), site.op, ": ", name, " must be on q's device ",
                q.device(), ", got ", t.device());
}

// Per-line vectors of one side: shape [rows] (`side` names it: "N" or "M"), floating point.
void check_line_vectors(const Site& site,
                        std::initializer_list<std::pair<const char*, const at::Tensor*>> vectors,
                        const at::Tensor& q, int64_t rows, const char* side) {
  for (auto [name, t] : vectors) {
    check_device(site, name, *t, q);
    TORCH_CHECK(t->dim() == 1 && t->size(0) == rows, site.op, ": ", name, " must have shape [",
                side, "] = [", rows, "], got ", t->sizes());
    TORCH_CHECK(t->is_floating_point(), site.op, ": ", name, " must be floating point, got ",
                t->scalar_type());
  }
}

}  // namespace

std::string declaration(const char* op, const char* schema) {
  return std::string(op) + schema;
}

std::string op_name(const OpDecl& op, const char* kernel_set, bool backward) {
  return std::string(op.name) + "_" + kernel_set + (backward ? "_backward" : "");
}

std::pair<std::optional<at::Tensor>, std::optional<at::Tensor>> active_labels(
    const std::optional<at::Tensor>& q_labels, const std::optional<at::Tensor>& k_labels,
    bool exclude_positives) {
  if (exclude_positives && q_labels.has_value() && k_labels.has_value())
    return {q_labels, k_labels};
  return {std::nullopt, std::nullopt};
}

void check_labels(const Site& site, const std::optional<at::Tensor>& labels, const char* name,
                  const at::Tensor& q, int64_t rows) {
  if (!labels.has_value()) return;
  const at::Tensor& t = *labels;
  check_device(site, name, t, q);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == rows, site.op, ": ", name, " must have shape [", rows,
              "], got ", t.sizes());
  TORCH_CHECK(at::isIntegralType(t.scalar_type(), /*includeBool=*/false), site.op, ": ", name,
              " must be an integer tensor, got ", t.scalar_type());
}

void check_inputs(const Site& site, const at::Tensor& q, const at::Tensor& k,
                  const at::Tensor& scale, const std::optional<at::Tensor>& bias,
                  const std::optional<at::Tensor>& q_labels,
                  const std::optional<at::Tensor>& k_labels, double eps, bool exclude_positives) {
  for (auto [name, t] : {std::pair<const char*, const at::Tensor*>{"q", &q}, {"k", &k}}) {
    check_device(site, name, *t, q);
    TORCH_CHECK(t->dim() == 2, site.op, ": ", name, " must be 2-D [rows, d], got shape ",
                t->sizes());
    TORCH_CHECK(t->is_floating_point(), site.op, ": ", name,
                " must be floating point (float16/bfloat16/float32/float64), got ",
                t->scalar_type());
  }
  TORCH_CHECK(q.scalar_type() == k.scalar_type(), site.op, ": q and k must share a dtype, got q ",
              q.scalar_type(), " and k ", k.scalar_type());
  TORCH_CHECK(q.size(1) == k.size(1), site.op,
              ": q and k must have the same feature size d, got q ", q.sizes(), " and k ",
              k.sizes());
  check_device(site, "scale", scale, q);
  TORCH_CHECK(scale.numel() == 1 && scale.is_floating_point(), site.op,
              ": scale must be a one-element floating tensor, got shape ", scale.sizes(), " ",
              scale.scalar_type());
  if (bias.has_value()) {
    check_device(site, "bias", *bias, q);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == k.size(0), site.op,
                ": bias must have shape [M] = [", k.size(0), "], got ", bias->sizes());
    TORCH_CHECK(bias->is_floating_point(), site.op, ": bias must be floating point, got ",
                bias->scalar_type());
  }
  TORCH_CHECK(eps > 0, site.op, ": eps must be > 0, got ", eps);
  // Labels passed without exclude_positives are ignored (active_labels), so not checked.
  if (exclude_positives) {
    TORCH_CHECK(q_labels.has_value() && k_labels.has_value(), site.op,
                ": exclude_positives=True needs both q_labels and k_labels");
    check_labels(site, q_labels, "q_labels", q, q.size(0));
    check_labels(site, k_labels, "k_labels", q, k.size(0));
  }
}

void check_row_vectors(const Site& site, const at::Tensor& grad_lse, const at::Tensor& lse,
                       const at::Tensor& q) {
  check_line_vectors(site, {{"grad_lse", &grad_lse}, {"lse", &lse}}, q, q.size(0), "N");
}

void check_backward_inputs(const Site& site, const at::Tensor& grad_lse, const at::Tensor& q,
                           const at::Tensor& k, const at::Tensor& scale,
                           const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& q_labels,
                           const std::optional<at::Tensor>& k_labels, double eps,
                           bool exclude_positives, const at::Tensor& lse) {
  check_inputs(site, q, k, scale, bias, q_labels, k_labels, eps, exclude_positives);
  check_row_vectors(site, grad_lse, lse, q);
}

void check_two_sided_backward_inputs(const Site& site, const at::Tensor& grad_row_lse,
                                     const at::Tensor& grad_col_lse, const at::Tensor& q,
                                     const at::Tensor& k, const at::Tensor& scale,
                                     const std::optional<at::Tensor>& bias,
                                     const std::optional<at::Tensor>& q_labels,
                                     const std::optional<at::Tensor>& k_labels, double eps,
                                     bool exclude_positives, const at::Tensor& row_lse,
                                     const at::Tensor& col_lse) {
  check_inputs(site, q, k, scale, bias, q_labels, k_labels, eps, exclude_positives);
  check_line_vectors(site, {{"grad_row_lse", &grad_row_lse}, {"row_lse", &row_lse}}, q, q.size(0),
                     "N");
  check_line_vectors(site, {{"grad_col_lse", &grad_col_lse}, {"col_lse", &col_lse}}, q, k.size(0),
                     "M");
}

void check_sigmoid_backward_inputs(const Site& site, const at::Tensor& grad_row_loss,
                                   const at::Tensor& q, const at::Tensor& k,
                                   const at::Tensor& scale, const std::optional<at::Tensor>& bias,
                                   const std::optional<at::Tensor>& q_labels,
                                   const std::optional<at::Tensor>& k_labels, double eps,
                                   const at::Tensor& row_loss) {
  check_inputs(site, q, k, scale, bias, q_labels, k_labels, eps,
               sigmoid_labels_active(q_labels, k_labels));
  check_line_vectors(site, {{"grad_row_loss", &grad_row_loss}, {"row_loss", &row_loss}}, q,
                     q.size(0), "N");
}

}  // namespace contract
}  // namespace ck
