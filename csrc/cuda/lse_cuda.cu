// The CUDA instantiation of the core-op kernels (lse_kernels.cuh): one per input dtype
// (fp16, bf16, fp32, fp64). No ATen here, so that this file also compiles on its own
// with nvcc for the compile report (docs/cuda_compile_report.md).
#define CK_KERNEL_NAMESPACE cuda_kernels
#include "cuda/lse_kernels.cuh"

namespace ck {
namespace cuda_kernels {
CK_DEFINE_RUNNERS
}  // namespace cuda_kernels
}  // namespace ck
