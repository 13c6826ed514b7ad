// The CPU instantiation of the CUDA kernel source (csrc/cuda/lse_kernels.cuh) through the
// emulation layer (emu.h): the same kernels, run by ck_emu::launch. No ATen in this
// translation unit: the emulation defines threadIdx / blockIdx / blockDim / gridDim as
// macros, which must not reach other headers.
#define CK_KERNEL_NAMESPACE emulated_kernels
#include "cuda/lse_kernels.cuh"

namespace ck {
namespace emulated_kernels {
CK_DEFINE_RUNNERS
}  // namespace emulated_kernels
}  // namespace ck
