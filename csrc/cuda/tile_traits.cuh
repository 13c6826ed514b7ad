// The tile configuration shared by every kernel of lse_kernels.cuh: the dtype tags, the
// block and tile sizes, the shared-memory carve, conversions to and from the accumulation
// type, the tile math (exp, softplus, sigmoid) and the quad reductions of the mma.sync
// accumulator layout.
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

// softplus(x) = max(x, 0) + log1p(e), e = exp(-|x|) in (0, 1], the forward of
// pairwise_sigmoid: one exp (tile_exp) per logit, then log1p(e) = e q(e) by Horner, q of
// degree 9 fitted for relative error on [0, 1] (9 FMA + 1 MUL on the FMA pipe). Why not
// logf(1 + e): the rounding of 1 + e loses all relative accuracy for small e (trained logits
// sit at |x| ~ 10, e ~ 5e-5), and log1pf or lg2 with a correction is a second MUFU plus as
// many FMAs, while at d = 128 the per-logit tile math, not the matmul, bounds the kernel.
// Error of log1p(e) in fp32 (fused Horner, measured against a 40-digit log1p over 2e5 points
// of [0, 1] and e = 2^-k): at most 1.5 ulp, i.e. 1.3e-7 relative; the host build's unfused
// Horner (ck_fma) adds at most another ulp. fp64: libm log1p. NaN stays NaN (through e);
// x = +inf gives inf, x = -inf gives 0.
template <class Tag>
CK_DEVICE typename Tag::Acc tile_softplus(typename Tag::Acc x) {
  using Acc = typename Tag::Acc;
  const Acc e = tile_exp<Tag>(x < Acc(0) ? x : -x);
  const Acc pos = x > Acc(0) ? x : Acc(0);
  if constexpr (std::is_same_v<Acc, double>) {
    return pos + ck_log1p(e);
  } else {
    constexpr float c[10] = {1.0f,          -0.49999901652f, 0.33329963684f, -0.24954132735f,
                             0.19675931334f, -0.15305569768f, 0.10603617132f, -0.05695915967f,
                             0.01985126175f, -0.00324398070f};
    float q = c[9];
CK_UNROLL
    for (int i = 8; i >= 0; --i) q = ck_fma(q, e, c[i]);
    return pos + e * q;
  }
}

// sigmoid(x) = 1 / (1 + e) for x >= 0, e / (1 + e) for x < 0, e = exp(-|x|): one exp and
// one correctly rounded reciprocal of 1 + e in [1, 2] (rcp.rn: MUFU.RCP and a Newton step,
// not a division's slow path), the backward of pairwise_sigmoid; error: the exp's plus
// 1.5 ulp. x = +inf gives 1, x = -inf gives 0, NaN stays NaN.
template <class Tag>
CK_DEVICE typename Tag::Acc tile_sigmoid(typename Tag::Acc x) {
  using Acc = typename Tag::Acc;
  const Acc e = tile_exp<Tag>(x < Acc(0) ? x : -x);
  const Acc r = ck_rcp(Acc(1) + e);
  return x < Acc(0) ? e * r : r;
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
