// The tile configuration shared by every kernel of lse_kernels.cuh: the dtype tags, the
// block and tile sizes, the shared-memory carve, conversions to and from the accumulation
// type, the tile exp and the quad reductions of the mma.sync accumulator layout.
//
// The includer defines CK_KERNEL_NAMESPACE (cuda_kernels or emulated_kernels): the two
// instantiations link into one library and must not share a symbol.
#pragma once

#include <cstdint>
#include <type_traits>

#include "cuda/device.cuh"
#include "cuda/lse_params.h"

#ifndef CK_KERNEL_NAMESPACE
#error "define CK_KERNEL_NAMESPACE before including the CUDA kernel headers"
#endif

namespace ck {
namespace CK_KERNEL_NAMESPACE {

struct TagF16 {
  using S = uint16_t;
  using Acc = float;
  static constexpr bool kMma = true, kBF16 = false;
  static constexpr int kBK = 32;
};
struct TagBF16 {
  using S = uint16_t;
  using Acc = float;
  static constexpr bool kMma = true, kBF16 = true;
  static constexpr int kBK = 32;
};
struct TagF32 {
  using S = float;
  using Acc = float;
  static constexpr bool kMma = false, kBF16 = false;
  static constexpr int kBK = 32;
};
struct TagF64 {
  using S = double;
  using Acc = double;
  static constexpr bool kMma = false, kBF16 = false;
  static constexpr int kBK = 16;
};

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kBM = 64;
constexpr int kBN = 64;
constexpr int kLdp = kBN + 1;  // row stride of the probability / weight tile
constexpr int kStages = 2;     // cp.async pipeline depth over the chunks of d

// Row stride of a staged chunk: kBK plus 16 bytes, so rows stay 16-byte aligned (cp.async,
// ldmatrix) and consecutive rows start in different banks.
template <class Tag>
inline constexpr int kLds = Tag::kBK + 16 / int(sizeof(typename Tag::S));

template <class Tag>
constexpr int smem_bytes() {
  using S = typename Tag::S;
  using Acc = typename Tag::Acc;
  return kStages * (kBM + kBN) * kLds<Tag> * int(sizeof(S)) + kBM * kLdp * int(sizeof(Acc)) +
         kBM * int(sizeof(Acc));
}

template <class Tag>
CK_DEVICE typename Tag::Acc to_acc(typename Tag::S x) {
  if constexpr (std::is_same_v<Tag, TagF16>) return ck_half_to_float(x);
  else if constexpr (std::is_same_v<Tag, TagBF16>) return ck_bf16_to_float(x);
  else return x;
}

template <class Tag>
CK_DEVICE typename Tag::S from_acc(typename Tag::Acc x) {
  if constexpr (std::is_same_v<Tag, TagF16>) return ck_float_to_half(x);
  else if constexpr (std::is_same_v<Tag, TagBF16>) return ck_float_to_bf16(x);
  else return x;
}

template <class Acc>
CK_DEVICE Acc neg_inf() { return -Acc(INFINITY); }

// The exp of the tile loops: the SFU's approximate exp (ex2.approx, a few ulp) for 16-bit
// inputs, whose own rounding (2^-8 bf16, 2^-11 fp16) dwarfs it; the accurate expf / exp for
// fp32 and fp64, so that their IEEE path on the device is the one the emulation proves (no
// --use_fast_math: csrc/cuda/nvcc_flags.py). The merge of split partials uses ck_exp.
template <class Tag>
CK_DEVICE typename Tag::Acc tile_exp(typename Tag::Acc x) {
  if constexpr (Tag::kMma) return ck_exp_approx(x);
  else return ck_exp(x);
}

template <class Acc>
CK_DEVICE Acc fmax_nan_skip(Acc a, Acc b) {  // fmax: a NaN operand is ignored
  return (a > b || b != b) ? a : b;
}

// Shared memory of the tile kernels: kStages staged chunks of Q and of K, the weight tile,
// a row vector.
template <class Tag>
struct Smem {
  typename Tag::S* qs;  // [kStages][kBM][kLds]
  typename Tag::S* ks;  // [kStages][kBN][kLds]
  typename Tag::Acc* ps;
  typename Tag::Acc* rowv;
  CK_DEVICE typename Tag::S* q_stage(int i) const { return qs + i * kBM * kLds<Tag>; }
  CK_DEVICE typename Tag::S* k_stage(int i) const { return ks + i * kBN * kLds<Tag>; }
  CK_DEVICE static Smem carve() {
    using S = typename Tag::S;
    using Acc = typename Tag::Acc;
    unsigned char* base = ck_dynamic_smem();
    Smem s;
    s.qs = reinterpret_cast<S*>(base);
    s.ks = s.qs + kStages * kBM * kLds<Tag>;
    s.ps = reinterpret_cast<Acc*>(s.ks + kStages * kBN * kLds<Tag>);
    s.rowv = s.ps + kBM * kLdp;
    return s;
  }
};

// Sum over the 4 lanes of a quad (the lanes holding one row).
template <class Acc>
CK_DEVICE Acc quad_sum(Acc v) {
  v += ck_shfl_xor(v, 1);
  v += ck_shfl_xor(v, 2);
  return v;
}

template <class Acc>
CK_DEVICE Acc quad_max(Acc v) {
  v = fmax_nan_skip(v, ck_shfl_xor(v, 1));
  v = fmax_nan_skip(v, ck_shfl_xor(v, 2));
  return v;
}

}  // namespace CK_KERNEL_NAMESPACE
}  // namespace ck
