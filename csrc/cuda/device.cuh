// The portability layer the CUDA kernels are written against. Under nvcc every name maps
// to CUDA built-ins and inline PTX; under a host C++ compiler it maps to the emulation
// layer (csrc/emulation/emu.h), so the same kernel source runs on the CPU in tests.
//
//   CK_GLOBAL / CK_DEVICE          kernel / device-function qualifiers
//   CK_SYNC()                      __syncthreads()
//   CK_LAUNCH_BOUNDS(n), CK_UNROLL, CK_UNROLL_N(n)   launch bounds, #pragma unroll [n]
//   CK_LAUNCH(kernel, grid, block, smem, stream, args...)   kernel<<<...>>>(args...)
//   CK_SHARED(type, name, count)   a __shared__ array
//   ck_dynamic_smem()              the extern __shared__ buffer of the launch
//   ck_shfl_xor / ck_shfl          __shfl_xor_sync / __shfl_sync over the full warp
//   ck_any / ck_all / ck_ballot    warp votes
//   ck_ldmatrix_x1/x2/x4[_trans]   ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16
//   ck_mma_m16n8k16<BF16>          mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}...f32
//   ck_mma_m16n8k8_tf32            mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32
//   ck_cvt_tf32                    cvt.rna.tf32.f32 (fp32 -> tf32 bits in a b32 register)
//   ck_cp_async_16                 cp.async.cg.shared.global, 16 bytes, zero-fill
//   ck_cp_async_commit             cp.async.commit_group
//   ck_cp_async_wait<N> / _wait_all cp.async.wait_group N / 0
//   ck_exp / ck_log / ck_sqrt      math in the accumulation type (accurate, IEEE subnormals)
//   ck_log1p (fp64), ck_rcp        log(1 + x); 1 / x correctly rounded
//   ck_exp_approx                  the SFU's approximate exp (fp32; host: std::exp)
//   ck_half_to_float / ck_bf16_to_float, ck_float_to_half / ck_float_to_bf16  (raw bits)
#pragma once

#include <cstdint>

#if defined(__CUDACC__)

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#define CK_GLOBAL __global__
#define CK_DEVICE __device__ __forceinline__
#define CK_SYNC() __syncthreads()
#define CK_SHARED(type, name, count) __shared__ type name[count]
#define CK_LAUNCH_BOUNDS(n) __launch_bounds__(n, 1)
#define CK_UNROLL _Pragma("unroll")
#define CK_UNROLL_N(n) _Pragma(CK_STRINGIFY(unroll n))
#define CK_STRINGIFY(x) #x
#define CK_LAUNCH(kernel, grid, block, smem, stream, ...) \
  kernel<<<(grid), (block), (smem), static_cast<cudaStream_t>(stream)>>>(__VA_ARGS__)

namespace ck_dev {
using ::dim3;
}

CK_DEVICE unsigned char* ck_dynamic_smem() {
  extern __shared__ __align__(128) unsigned char ck_smem_buffer[];
  return ck_smem_buffer;
}

template <class V>
CK_DEVICE V ck_shfl_xor(V v, int mask) { return __shfl_xor_sync(0xffffffffu, v, mask); }
template <class V>
CK_DEVICE V ck_shfl(V v, int src) { return __shfl_sync(0xffffffffu, v, src); }
CK_DEVICE bool ck_any(bool p) { return __any_sync(0xffffffffu, p); }
CK_DEVICE bool ck_all(bool p) { return __all_sync(0xffffffffu, p); }
CK_DEVICE unsigned ck_ballot(bool p) { return __ballot_sync(0xffffffffu, p); }

CK_DEVICE unsigned ck_smem_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

CK_DEVICE void ck_ldmatrix_x1(uint32_t (&r)[1], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
               : "=r"(r[0]) : "r"(ck_smem_address(row)));
}
CK_DEVICE void ck_ldmatrix_x2(uint32_t (&r)[2], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1]) : "r"(ck_smem_address(row)));
}
CK_DEVICE void ck_ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(ck_smem_address(row)));
}
CK_DEVICE void ck_ldmatrix_x1_trans(uint32_t (&r)[1], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
               : "=r"(r[0]) : "r"(ck_smem_address(row)));
}
CK_DEVICE void ck_ldmatrix_x2_trans(uint32_t (&r)[2], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1]) : "r"(ck_smem_address(row)));
}
CK_DEVICE void ck_ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(ck_smem_address(row)));
}

// d = a b + c, A 16 x 16 row-major, B 16 x 8 column-major, fp32 accumulators.
template <bool BF16>
CK_DEVICE void ck_mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                               const float (&c)[4]) {
  if constexpr (BF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
          "f"(c[1]), "f"(c[2]), "f"(c[3]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
          "f"(c[1]), "f"(c[2]), "f"(c[3]));
  }
}

// d = a b + c with tf32 operands (cvt.rna.tf32.f32 bits): A 16 x 8 row-major (a0 (g, t),
// a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4)), B 8 x 8 column-major (b0 (k = t, n = g),
// b1 (k = t + 4, n = g)), C / D as m16n8k16.
CK_DEVICE void ck_mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                   const float (&c)[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
}
CK_DEVICE uint32_t ck_cvt_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

// 16 bytes global -> shared, bypassing L1; bytes past src_bytes are zero-filled.
CK_DEVICE void ck_cp_async_16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(ck_smem_address(dst)),
               "l"(src), "r"(src_bytes));
}
CK_DEVICE void ck_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
CK_DEVICE void ck_cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
CK_DEVICE void ck_cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// without --use_fast_math these are the accurate libdevice functions (a few ulp, subnormals
// kept); ck_exp_approx is the SFU's ex2.approx (16-bit inputs only: lse_kernels.cuh tile_exp)
CK_DEVICE float ck_exp(float x) { return ::expf(x); }
CK_DEVICE double ck_exp(double x) { return ::exp(x); }
CK_DEVICE float ck_exp_approx(float x) { return __expf(x); }
CK_DEVICE float ck_log(float x) { return ::logf(x); }
CK_DEVICE double ck_log(double x) { return ::log(x); }
CK_DEVICE double ck_log1p(double x) { return ::log1p(x); }
// rcp.rn.f32: MUFU.RCP plus one Newton step, correctly rounded (not the fast-math rcp.approx)
CK_DEVICE float ck_rcp(float x) { return __frcp_rn(x); }
CK_DEVICE double ck_rcp(double x) { return 1.0 / x; }
CK_DEVICE float ck_sqrt(float x) { return ::sqrtf(x); }
CK_DEVICE double ck_sqrt(double x) { return ::sqrt(x); }
CK_DEVICE float ck_fma(float a, float b, float c) { return __fmaf_rn(a, b, c); }
CK_DEVICE double ck_fma(double a, double b, double c) { return __fma_rn(a, b, c); }
CK_DEVICE bool ck_isfinite(float x) { return ::isfinite(x); }
CK_DEVICE bool ck_isfinite(double x) { return ::isfinite(x); }
CK_DEVICE float ck_half_to_float(uint16_t h) { return __half2float(__ushort_as_half(h)); }
CK_DEVICE float ck_bf16_to_float(uint16_t h) { return __uint_as_float(uint32_t(h) << 16); }
CK_DEVICE uint16_t ck_float_to_half(float f) { return __half_as_ushort(__float2half_rn(f)); }
CK_DEVICE uint16_t ck_float_to_bf16(float f) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}

#else  // host compiler: the emulation layer

#include <cmath>

#include "emulation/emu.h"

#define CK_GLOBAL
#define CK_DEVICE inline
#define CK_SYNC() ::ck_emu::sync_block()
#define CK_SHARED(type, name, count) \
  type* name = reinterpret_cast<type*>(::ck_emu::static_smem(sizeof(type) * (count), alignof(type) < 16 ? 16 : alignof(type)))
#define CK_LAUNCH_BOUNDS(n)
#define CK_UNROLL
#define CK_UNROLL_N(n)
#define CK_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::ck_emu::launch((grid), (block), (smem), [&] { kernel(__VA_ARGS__); })

#define threadIdx (::ck_emu::self().thread_idx)
#define blockIdx (::ck_emu::self().block_idx)
#define blockDim (::ck_emu::block_dim())
#define gridDim (::ck_emu::grid_dim())

namespace ck_dev {
using dim3 = ::ck_emu::dim3;
}

inline unsigned char* ck_dynamic_smem() { return ::ck_emu::dynamic_smem(); }

template <class V>
inline V ck_shfl_xor(V v, int mask) { return ::ck_emu::shfl_xor(v, mask); }
template <class V>
inline V ck_shfl(V v, int src) { return ::ck_emu::shfl(v, src); }
inline bool ck_any(bool p) { return ::ck_emu::any(p); }
inline bool ck_all(bool p) { return ::ck_emu::all(p); }
inline unsigned ck_ballot(bool p) { return ::ck_emu::ballot(p); }

inline void ck_ldmatrix_x1(uint32_t (&r)[1], const void* row) { ::ck_emu::ldmatrix(r, 1, false, row); }
inline void ck_ldmatrix_x2(uint32_t (&r)[2], const void* row) { ::ck_emu::ldmatrix(r, 2, false, row); }
inline void ck_ldmatrix_x4(uint32_t (&r)[4], const void* row) { ::ck_emu::ldmatrix(r, 4, false, row); }
inline void ck_ldmatrix_x1_trans(uint32_t (&r)[1], const void* row) { ::ck_emu::ldmatrix(r, 1, true, row); }
inline void ck_ldmatrix_x2_trans(uint32_t (&r)[2], const void* row) { ::ck_emu::ldmatrix(r, 2, true, row); }
inline void ck_ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) { ::ck_emu::ldmatrix(r, 4, true, row); }

template <bool BF16>
inline void ck_mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                            const float (&c)[4]) {
  ::ck_emu::mma_m16n8k16(d, a, b, c, BF16);
}

inline void ck_mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                const float (&c)[4]) {
  ::ck_emu::mma_m16n8k8_tf32(d, a, b, c);
}
inline uint32_t ck_cvt_tf32(float x) { return ::ck_emu::tf32_round_bits(x); }

inline void ck_cp_async_16(void* dst, const void* src, int src_bytes) {
  ::ck_emu::cp_async(dst, src, 16, src_bytes);
}
inline void ck_cp_async_commit() {}
inline void ck_cp_async_wait_all() {}
template <int N>
inline void ck_cp_async_wait() {}

inline float ck_exp(float x) { return std::exp(x); }
inline double ck_exp(double x) { return std::exp(x); }
// the host has no SFU: the approximate exp of the device is within the 16-bit tolerances
inline float ck_exp_approx(float x) { return std::exp(x); }
inline float ck_log(float x) { return std::log(x); }
inline double ck_log(double x) { return std::log(x); }
inline double ck_log1p(double x) { return std::log1p(x); }
inline float ck_rcp(float x) { return 1.f / x; }
inline double ck_rcp(double x) { return 1.0 / x; }
inline float ck_sqrt(float x) { return std::sqrt(x); }
inline double ck_sqrt(double x) { return std::sqrt(x); }
// a * b + c: the host build targets baseline x86-64, where std::fma is a library call
inline float ck_fma(float a, float b, float c) { return a * b + c; }
inline double ck_fma(double a, double b, double c) { return a * b + c; }
inline bool ck_isfinite(float x) { return std::isfinite(x); }
inline bool ck_isfinite(double x) { return std::isfinite(x); }
inline float ck_half_to_float(uint16_t h) { return ::ck_emu::half_bits_to_float(h); }
inline float ck_bf16_to_float(uint16_t h) { return ::ck_emu::bf16_bits_to_float(h); }
inline uint16_t ck_float_to_half(float f) { return ::ck_emu::float_to_half_bits(f); }
inline uint16_t ck_float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return uint16_t(u >> 16);
}

#endif
