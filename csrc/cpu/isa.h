// The instruction set one translation unit's kernels are compiled for.
//
// The kernel sources (lse_forward.cpp, lse_backward.cpp, operands.cpp, entry.cpp and the
// headers they include) are compiled twice: as they are, for the baseline of the target
// (x86-64: SSE2), and through the one-line wrappers in cpu/avx2/, which define
// CK_CPU_AVX2=1 first, for AVX2 + FMA. dispatch.cpp picks one at run time (cpuid), so the
// extension runs on any x86-64 CPU and uses AVX2 + FMA where there is one.
//
// Two rules keep the AVX2 code out of the baseline path:
// - Every declaration of the kernel sources sits in the namespace ck::cpu::CK_CPU_ISA
//   (CK_CPU_NAMESPACE_BEGIN / _END), so the two builds share no symbol of ours: no inline
//   function or template instantiation of one can stand in for the other's at link time.
// - The AVX2 instruction set is switched on here with `#pragma GCC target`, after every
//   library header the kernels use has been read, instead of with -mavx2 for the whole
//   file: the library's inline functions (ATen, the standard library) stay baseline code,
//   whichever copy the linker keeps. Library templates instantiated for our AVX2 code
//   (at::parallel_for of an AVX2 lambda) are baseline code too, calling into it.
//   tests/backends/test_native_numerics.py checks the built module: no AVX / VEX
//   instruction outside ck::cpu::avx2.
//
// So this header is the first project header every kernel source includes; it brings in
// the library headers itself.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/core/ScalarType.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>  // GCC declares every intrinsic whatever the flags; each has its target
#endif

#ifndef CK_CPU_AVX2
#define CK_CPU_AVX2 0
#endif

#if CK_CPU_AVX2
#if !CK_CPU_AVX2_VARIANT
#error "the AVX2 + FMA kernels are built for x86-64 with GCC only (cpu/kernels.h)"
#endif
#define CK_CPU_ISA avx2
#pragma GCC target("avx2,fma")
#else
#define CK_CPU_ISA baseline
#endif

#define CK_CPU_NAMESPACE_BEGIN \
  namespace ck {               \
  namespace cpu {              \
  namespace CK_CPU_ISA {
#define CK_CPU_NAMESPACE_END \
  }                          \
  }                          \
  }
