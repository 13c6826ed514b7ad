// The launchers (host side of either build): inverse norms, the tile kernels of a reduction,
// the merges and epilogues, each launch checked; and the runners of lse_params.h.
#pragma once

#include "cuda/backward.cuh"
#include "cuda/forward.cuh"
#include "cuda/row_norms.cuh"

namespace ck {
namespace CK_KERNEL_NAMESPACE {

#if defined(__CUDACC__)
#define CK_ALLOW_SMEM(kernel, bytes)                                                        \
  do {                                                                                      \
    if ((bytes) > 48 * 1024)                                                                \
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (bytes));   \
  } while (0)
#define CK_CHECK_LAUNCH(name)                                                          \
  do {                                                                                 \
    const cudaError_t err_ = cudaGetLastError();                                       \
    if (err_ != cudaSuccess) return launch_error(name, cudaGetErrorString(err_));      \
  } while (0)
#else
#define CK_ALLOW_SMEM(kernel, bytes) ((void)0)
#define CK_CHECK_LAUNCH(name) ((void)0)
#endif

inline const char* launch_error(const char* kernel, const char* what) {
  static thread_local char message[256];
  int i = 0;
  for (const char* part : {kernel, ": ", what})
    for (; *part != '\0' && i < 255; ++part) message[i++] = *part;
  message[i] = '\0';
  return message;
}

inline unsigned blocks_for(int64_t count, int64_t per_block) {
  return unsigned((count + per_block - 1) / per_block);
}

template <class Tag>
const char* inverse_norms(const KernelProblem& p, void* rq, void* rk) {
  using S = typename Tag::S;
  using Acc = typename Tag::Acc;
  const ck_dev::dim3 block(kThreads);
  if (p.n > 0) {
    CK_LAUNCH(inverse_norms_kernel<Tag>, ck_dev::dim3(blocks_for(p.n, kWarps)), block, 0, p.stream,
              static_cast<const S*>(p.q), p.n, p.d, p.q_s0, p.q_s1, p.normalize, p.eps,
              static_cast<Acc*>(rq));
    CK_CHECK_LAUNCH("inverse_norms_kernel(q)");
  }
  if (p.m > 0) {
    CK_LAUNCH(inverse_norms_kernel<Tag>, ck_dev::dim3(blocks_for(p.m, kWarps)), block, 0, p.stream,
              static_cast<const S*>(p.k), p.m, p.d, p.k_s0, p.k_s1, p.normalize, p.eps,
              static_cast<Acc*>(rk));
    CK_CHECK_LAUNCH("inverse_norms_kernel(k)");
  }
  return nullptr;
}

// The tile kernels of a reduction, with the names their launch checks report.
template <class Tag, class Reduction>
struct TileKernels {
  static constexpr auto forward = &two_sided_forward_kernel<Tag>;
  static constexpr auto rows = &two_sided_backward_rows_kernel<Tag>;
  static constexpr auto keys = &two_sided_backward_keys_kernel<Tag>;
  static constexpr const char* kForward = "two_sided_forward_kernel";
  static constexpr const char* kRows = "two_sided_backward_rows_kernel";
  static constexpr const char* kKeys = "two_sided_backward_keys_kernel";
};
template <class Tag>
struct TileKernels<Tag, SigmoidRows> {
  static constexpr auto forward = &sigmoid_forward_kernel<Tag>;
  static constexpr auto rows = &sigmoid_backward_rows_kernel<Tag>;
  static constexpr auto keys = &sigmoid_backward_keys_kernel<Tag>;
  static constexpr const char* kForward = "sigmoid_forward_kernel";
  static constexpr const char* kRows = "sigmoid_backward_rows_kernel";
  static constexpr const char* kKeys = "sigmoid_backward_keys_kernel";
};
template <class Tag>
struct TileKernels<Tag, LseRows> {
  static constexpr auto rows = &lse_backward_rows_kernel<Tag>;
  static constexpr auto keys = &lse_backward_keys_kernel<Tag>;
  static constexpr const char* kForward = "lse_forward_kernel";
  static constexpr const char* kRows = "lse_backward_rows_kernel";
  static constexpr const char* kKeys = "lse_backward_keys_kernel";
};

template <class Tag, class Reduction>
const char* forward_t(const KernelProblem& p, const ForwardBuffers& b) {
  using Acc = typename Tag::Acc;
  using K = TileKernels<Tag, Reduction>;
  if (p.n == 0) return nullptr;  // the op wrapper fills col_lse with -inf
  if (const char* err = inverse_norms<Tag>(p, b.rq, b.rk)) return err;
  constexpr int smem = smem_bytes<Tag>();
  const ck_dev::dim3 grid(blocks_for(p.n, kBM), unsigned(b.splits));
  if constexpr (!std::is_same_v<Reduction, LseRows>) {
    CK_ALLOW_SMEM(K::forward, smem);
    CK_LAUNCH(K::forward, grid, ck_dev::dim3(kThreads), smem, p.stream, p, b);
  } else if (b.o != nullptr && p.d > 0) {
    // o in its own instantiation: its state would cost the lse-only kernel registers
    CK_ALLOW_SMEM((lse_forward_kernel<Tag, true>), smem);
    CK_LAUNCH((lse_forward_kernel<Tag, true>), grid, ck_dev::dim3(kThreads), smem, p.stream, p, b);
  } else {
    CK_ALLOW_SMEM((lse_forward_kernel<Tag, false>), smem);
    CK_LAUNCH((lse_forward_kernel<Tag, false>), grid, ck_dev::dim3(kThreads), smem, p.stream, p, b);
  }
  CK_CHECK_LAUNCH(K::kForward);
  if (Reduction::kRowSums && b.splits > 1) {
    CK_LAUNCH(sum_splits_kernel<Acc>, ck_dev::dim3(blocks_for(p.n, kThreads)),
              ck_dev::dim3(kThreads), 0, p.stream, p.n, b.splits,
              static_cast<const Acc*>(b.part_l), static_cast<Acc*>(b.lse));
    CK_CHECK_LAUNCH("sum_splits_kernel");
  } else if (b.splits > 1) {
    CK_LAUNCH(merge_splits_kernel<Acc>, ck_dev::dim3(blocks_for(p.n, kWarps)),
              ck_dev::dim3(kThreads), 0, p.stream, p.n, p.d, b.splits,
              static_cast<const Acc*>(b.part_m), static_cast<const Acc*>(b.part_l),
              static_cast<const Acc*>(b.part_o), static_cast<Acc*>(b.lse), static_cast<Acc*>(b.o));
    CK_CHECK_LAUNCH("merge_splits_kernel");
  }
  if constexpr (Reduction::kCols) {
    if (p.m > 0) {  // the row blocks' partials per key, in block order
      CK_LAUNCH(merge_splits_kernel<Acc>, ck_dev::dim3(blocks_for(p.m, kWarps)),
                ck_dev::dim3(kThreads), 0, p.stream, p.m, int64_t(0),
                int64_t(blocks_for(p.n, kBM)), static_cast<const Acc*>(b.col_part_m),
                static_cast<const Acc*>(b.col_part_l), static_cast<const Acc*>(nullptr),
                static_cast<Acc*>(b.col_lse), static_cast<Acc*>(nullptr));
      CK_CHECK_LAUNCH("merge_splits_kernel(columns)");
    }
  }
  return nullptr;
}

template <class Tag, class Reduction>
const char* backward_t(const KernelProblem& p, const BackwardBuffers& b) {
  using S = typename Tag::S;
  using Acc = typename Tag::Acc;
  using K = TileKernels<Tag, Reduction>;
  if (p.n == 0 && p.m == 0) return nullptr;
  if (const char* err = inverse_norms<Tag>(p, b.rq, b.rk)) return err;
  constexpr int smem = smem_bytes<Tag>();
  const ck_dev::dim3 block(kThreads);
  const Acc* scale = static_cast<const Acc*>(p.scale);
  if (b.u != nullptr && p.n > 0) {  // dq (and the dscale partials)
    CK_ALLOW_SMEM(K::rows, smem);
    CK_LAUNCH(K::rows, ck_dev::dim3(blocks_for(p.n, kBM), unsigned(b.u_splits)), block, smem,
              p.stream, p, b);
    CK_CHECK_LAUNCH(K::kRows);
    if (b.dq != nullptr)
      CK_LAUNCH(row_epilogue_kernel<Tag>, ck_dev::dim3(blocks_for(p.n, kWarps)), block, 0,
                p.stream, static_cast<const S*>(p.q), p.n, p.d, p.q_s0, p.q_s1,
                static_cast<const Acc*>(b.rq), static_cast<const Acc*>(b.u), b.u_splits, scale,
                p.normalize, p.eps, static_cast<S*>(b.dq));
    CK_CHECK_LAUNCH("row_epilogue_kernel(q)");
  }
  if (b.dscale != nullptr) {
    CK_LAUNCH(fixed_order_sum_kernel<Acc>, ck_dev::dim3(1), ck_dev::dim3(32), 0, p.stream,
              static_cast<const Acc*>(b.rowdot), p.n * b.u_splits, static_cast<Acc*>(b.dscale));
    CK_CHECK_LAUNCH("fixed_order_sum_kernel");
  }
  if ((b.v != nullptr || b.dbias_part != nullptr) && p.m > 0) {  // dk and / or dbias
    CK_ALLOW_SMEM(K::keys, smem);
    CK_LAUNCH(K::keys, ck_dev::dim3(blocks_for(p.m, kBN), unsigned(b.v_splits)), block, smem,
              p.stream, p, b);
    CK_CHECK_LAUNCH(K::kKeys);
  }
  if (b.dbias != nullptr && p.m > 0) {
    CK_LAUNCH(sum_splits_kernel<Acc>, ck_dev::dim3(blocks_for(p.m, kThreads)),
              ck_dev::dim3(kThreads), 0, p.stream, p.m, b.v_splits,
              static_cast<const Acc*>(b.dbias_part), static_cast<Acc*>(b.dbias));
    CK_CHECK_LAUNCH("sum_splits_kernel(dbias)");
  }
  if (b.v != nullptr && p.m > 0) {
    CK_LAUNCH(row_epilogue_kernel<Tag>, ck_dev::dim3(blocks_for(p.m, kWarps)), block, 0, p.stream,
              static_cast<const S*>(p.k), p.m, p.d, p.k_s0, p.k_s1, static_cast<const Acc*>(b.rk),
              static_cast<const Acc*>(b.v), b.v_splits, scale, p.normalize, p.eps,
              static_cast<S*>(b.dk));
    CK_CHECK_LAUNCH("row_epilogue_kernel(k)");
  }
  return nullptr;
}

// One instantiation per input dtype: fn(Tag{}).
template <class Fn>
const char* by_dtype(KernelDType dtype, Fn fn) {
  switch (dtype) {
    case KernelDType::F16: return fn(TagF16{});
    case KernelDType::BF16: return fn(TagBF16{});
    case KernelDType::F32: return fn(TagF32{});
    case KernelDType::F64: return fn(TagF64{});
  }
  return "unknown dtype";
}

// The runners of lse_params.h for this namespace.
#define CK_DEFINE_RUNNERS                                                                   \
  const char* forward(const KernelProblem& p, const ForwardBuffers& b) {                    \
    return by_dtype(p.dtype, [&](auto tag) { return forward_t<decltype(tag), LseRows>(p, b); }); \
  }                                                                                         \
  const char* backward(const KernelProblem& p, const BackwardBuffers& b) {                  \
    return by_dtype(p.dtype, [&](auto tag) { return backward_t<decltype(tag), LseRows>(p, b); }); \
  }                                                                                         \
  const char* two_sided_forward(const KernelProblem& p, const ForwardBuffers& b) {          \
    return by_dtype(p.dtype,                                                                \
                    [&](auto tag) { return forward_t<decltype(tag), LseRowsCols>(p, b); }); \
  }                                                                                         \
  const char* two_sided_backward(const KernelProblem& p, const BackwardBuffers& b) {        \
    return by_dtype(p.dtype,                                                                \
                    [&](auto tag) { return backward_t<decltype(tag), LseRowsCols>(p, b); }); \
  }                                                                                         \
  const char* sigmoid_forward(const KernelProblem& p, const ForwardBuffers& b) {            \
    return by_dtype(p.dtype,                                                                \
                    [&](auto tag) { return forward_t<decltype(tag), SigmoidRows>(p, b); }); \
  }                                                                                         \
  const char* sigmoid_backward(const KernelProblem& p, const BackwardBuffers& b) {          \
    return by_dtype(p.dtype,                                                                \
                    [&](auto tag) { return backward_t<decltype(tag), SigmoidRows>(p, b); }); \
  }

}  // namespace CK_KERNEL_NAMESPACE
}  // namespace ck
