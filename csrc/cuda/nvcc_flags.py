"""The nvcc flags of the CUDA kernels, read by setup.py and by csrc/cuda/compile_report.py
(one list, so that the report describes what the extension ships; the arch flags come
from TORCH_CUDA_ARCH_LIST).

No ``--use_fast_math``: it flushes fp32 subnormals to zero and approximates every exp,
log, division and square root in every kernel, so the IEEE fp32 path would not be the one
the emulation proves (a row of fp32 subnormals lost its gradient). The approximate exp is
chosen in the source where the tolerance allows it: ``tile_exp`` in lse_kernels.cuh, the
kernels of 16-bit inputs only (docs/cuda.md, "Numerics on the device").
"""

NVCC_FLAGS = ["-O3", "-std=c++20", "-lineinfo"]
