// Operand layout for the CPU tile kernels (see operands.h). One pass over each input:
// a copy only when the rows are not already contiguous accumulation-dtype rows with a
// panel-multiple width, a K^T panel pack, and O(N + M) side arrays.
#include "cpu/isa.h"  // first: the library headers, then the ISA switch
#include "operands.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/zeros.h>
#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cmath>

#include "vec.h"

CK_CPU_NAMESPACE_BEGIN

int kernel_threads() { return at::in_parallel_region() ? 1 : std::max(1, at::get_num_threads()); }

template <class T>
void row_norms(const T* x, int64_t rows, int64_t d, int64_t stride, double* out) {
  at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* r = x + i * stride;
      double s = 0;
      for (int64_t c = 0; c < d; ++c) s += double(r[c]) * double(r[c]);
      out[i] = std::sqrt(s);
    }
  });
}

namespace {

// x itself when it already is [rows, dp] contiguous in T, else a zero-padded T copy.
at::Tensor padded_rows(const at::Tensor& x, at::ScalarType dtype, int64_t dp) {
  if (x.scalar_type() == dtype && x.size(1) == dp && x.is_contiguous()) return x;
  at::Tensor buf = at::zeros({x.size(0), dp}, x.options().dtype(dtype));
  if (x.numel() > 0) buf.narrow(1, 0, x.size(1)).copy_(x);
  return buf;
}

// Largest magnitude of a row left as it is under normalize: two such rows (and a scaled
// one, below 1) have dot products far from overflow for any d, and norms accumulated in
// double stay finite.
template <class T>
constexpr double huge_row_bound() {
  return sizeof(T) == sizeof(float) ? 0x1p32 : 0x1p200;
}

// Scales in place each row of x [rows, dp] (a buffer of our own) whose largest finite
// magnitude exceeds huge_row_bound by 2^-e, which brings it into [0.5, 1): exact, so the
// normalized row does not change. Returns the factors 2^-e (1 for other rows).
template <class T>
std::vector<double> scale_huge_rows(T* x, int64_t rows, int64_t d, int64_t dp,
                                    const std::vector<double>& max_abs) {
  std::vector<double> factor(rows, 1.0);
  for (int64_t i = 0; i < rows; ++i) {
    if (!(max_abs[i] > huge_row_bound<T>()) || !std::isfinite(max_abs[i])) continue;
    int e = 0;
    std::frexp(max_abs[i], &e);
    factor[i] = std::ldexp(1.0, -e);
    T* r = x + i * dp;
    for (int64_t c = 0; c < d; ++c) r[c] = T(std::ldexp(double(r[c]), -e));
  }
  return factor;
}

// max_j |x_ij| per row (NaN entries skipped), and whether any row exceeds huge_row_bound.
template <class T>
bool huge_rows(const T* x, int64_t rows, int64_t d, int64_t stride, std::vector<double>& max_abs) {
  max_abs.assign(rows, 0.0);
  at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* r = x + i * stride;
      T mx = T(0);
      for (int64_t c = 0; c < d; ++c) mx = std::max(mx, T(std::abs(r[c])));
      max_abs[i] = double(mx);
    }
  });
  for (int64_t i = 0; i < rows; ++i)
    if (max_abs[i] > huge_row_bound<T>() && std::isfinite(max_abs[i])) return true;
  return false;
}

template <class T>
at::Tensor inverse_norms(const T* x, int64_t rows, int64_t padded, int64_t d, int64_t stride,
                         bool normalize, double eps, at::TensorOptions opts) {
  at::Tensor out = at::empty({padded}, opts);
  T* r = out.data_ptr<T>();
  if (normalize) {
    std::vector<double> norms(rows);
    row_norms(x, rows, d, stride, norms.data());
    for (int64_t i = 0; i < rows; ++i) r[i] = T(1.0 / std::max(norms[i], eps));
  } else {
    std::fill(r, r + rows, T(1));
  }
  std::fill(r + rows, r + padded, T(0));  // padding keys: zero weight in every product
  return out;
}

}  // namespace

template <class T>
Operands<T> prepare_operands(const at::Tensor& q, const at::Tensor& k, double scale,
                             const std::optional<at::Tensor>& bias,
                             const std::optional<at::Tensor>& q_labels,
                             const std::optional<at::Tensor>& k_labels,
                             std::optional<int64_t> self_offset, bool normalize, double eps,
                             bool exclude_positives) {
  constexpr int64_t NR = panel_width<T>();
  const at::ScalarType dtype = c10::CppTypeToScalarType<T>::value;
  const at::TensorOptions opts = q.options().dtype(dtype);
  Operands<T> op;
  op.n = q.size(0);
  op.m = k.size(0);
  op.d = q.size(1);
  op.dp = round_up(op.d, NR);
  op.mp = round_up(op.m, NR);
  op.scale = scale;
  op.normalize = normalize;
  op.has_self = self_offset.has_value();
  op.self_offset = self_offset.value_or(0);

  const bool same_rows = q.data_ptr() == k.data_ptr() && q.sizes() == k.sizes() &&
                         q.strides() == k.strides() && q.scalar_type() == k.scalar_type();
  at::Tensor qrows = padded_rows(q, dtype, op.dp);
  at::Tensor krows = same_rows ? qrows : padded_rows(k, dtype, op.dp);
  if (normalize) {
    // Huge rows (rare): hold them scaled, in a copy when the buffer is the caller's tensor.
    auto tame = [&](at::Tensor& rows, const at::Tensor& input, const double*& grad_factor) {
      std::vector<double> max_abs;
      if (!huge_rows(rows.data_ptr<T>(), rows.size(0), op.d, op.dp, max_abs)) return;
      if (rows.data_ptr() == input.data_ptr()) rows = rows.clone();
      std::vector<double> f = scale_huge_rows(rows.data_ptr<T>(), rows.size(0), op.d, op.dp, max_abs);
      at::Tensor ft = at::empty({rows.size(0)}, q.options().dtype(at::kDouble));
      std::copy(f.begin(), f.end(), ft.data_ptr<double>());
      grad_factor = ft.data_ptr<double>();
      op.owned.push_back(ft);
    };
    tame(qrows, q, op.q_grad_factor);
    if (same_rows) {
      krows = qrows;
      op.k_grad_factor = op.q_grad_factor;
    } else {
      tame(krows, k, op.k_grad_factor);
    }
  }
  op.q = qrows.data_ptr<T>();
  op.k = krows.data_ptr<T>();
  op.owned.push_back(qrows);
  op.owned.push_back(krows);

  at::Tensor rk = inverse_norms(op.k, op.m, op.mp, op.d, op.dp, normalize, eps, opts);
  at::Tensor rq = same_rows ? rk : inverse_norms(op.q, op.n, op.n, op.d, op.dp, normalize, eps, opts);
  op.rq = rq.data_ptr<T>();
  op.rk = rk.data_ptr<T>();
  op.owned.push_back(rq);
  op.owned.push_back(rk);

  // K^T in panels of NR keys: the b operand of the logits micro-kernel reads NR keys of
  // one feature as one contiguous row. Padding keys are zero.
  at::Tensor kt = at::empty({op.mp * op.d}, opts);
  {
    T* dst = kt.data_ptr<T>();
    const T* src = op.k;
    const int64_t m = op.m, d = op.d, dp = op.dp;
    at::parallel_for(0, op.mp / NR, 16, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        T* panel = dst + p * d * NR;
        for (int64_t l = 0; l < NR; ++l) {
          const int64_t j = p * NR + l;
          if (j < m) {
            const T* row = src + j * dp;
            for (int64_t c = 0; c < d; ++c) panel[c * NR + l] = row[c];
          } else {
            for (int64_t c = 0; c < d; ++c) panel[c * NR + l] = T(0);
          }
        }
      }
    });
  }
  op.kt = kt.data_ptr<T>();
  op.owned.push_back(kt);

  at::Tensor cb = at::empty({op.mp}, opts);
  {
    T* c = cb.data_ptr<T>();
    if (bias.has_value()) {
      at::Tensor b = bias->to(dtype).contiguous();
      std::copy(b.data_ptr<T>(), b.data_ptr<T>() + op.m, c);
    } else {
      std::fill(c, c + op.m, T(0));
    }
    std::fill(c + op.m, c + op.mp, neg_inf<T>());  // padding keys never count
  }
  op.cb = cb.data_ptr<T>();
  op.owned.push_back(cb);

  bool labels_symmetric = true;
  if (exclude_positives) {
    at::Tensor ql = q_labels->to(at::kLong).contiguous();
    at::Tensor kl = k_labels->to(at::kLong).contiguous();
    op.ql = ql.data_ptr<int64_t>();
    op.kl = kl.data_ptr<int64_t>();
    op.owned.push_back(ql);
    op.owned.push_back(kl);
    labels_symmetric = ql.sizes() == kl.sizes() && at::equal(ql, kl);
  }
  op.symmetric = same_rows && !bias.has_value() && op.self_offset == 0 && labels_symmetric;
  return op;
}

template Operands<float> prepare_operands<float>(
    const at::Tensor&, const at::Tensor&, double, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, std::optional<int64_t>,
    bool, double, bool);
template Operands<double> prepare_operands<double>(
    const at::Tensor&, const at::Tensor&, double, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, std::optional<int64_t>,
    bool, double, bool);
template void row_norms<float>(const float*, int64_t, int64_t, int64_t, double*);
template void row_norms<double>(const double*, int64_t, int64_t, int64_t, double*);

CK_CPU_NAMESPACE_END
