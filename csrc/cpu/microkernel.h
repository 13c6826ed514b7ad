// Register-blocked tile products, the only O(N M d) arithmetic of the CPU backend.
//
// One micro-tile is MR x NR outputs (MR <= 6 rows, NR = two SIMD registers = 16 floats /
// 8 doubles) held in 12 accumulator registers over the whole inner dimension:
//
//     c[i][:] += sum_kk a(i, kk) * b[kk][0:NR]
//
// per step 2 vector loads of b, MR broadcasts of a and 2 MR FMAs, so with MR = 6 the FMA
// units, not the loads, are the limit. The a operand is read in place, either row-wise
// (a(i, kk) = a[i lda + kk]) or column-wise (a(i, kk) = a[kk lda + i], used for the
// transposed product P^T Q); b rows are NR contiguous values: the K^T panels packed once
// per call (operands.h) for the logits, the tile's own rows packed into feature panels
// (pack_panels, one cheap pass per tile) for the two other products.
//
// Three uses (tile of rows I, keys J):
//   logits   s_IJ = Q_I K_J^T       a = Q rows,   b = packed K^T panel, epilogue = caller's
//   rows     C_I += X_IJ K_J        a = X rows,   b = K_J in feature panels  (dq side, o)
//   columns  C_J += X_IJ^T Q_I      a = X cols,   b = Q_I in feature panels  (dk side)
#pragma once

#include "cpu/isa.h"  // first: the library headers, then the ISA switch

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "vec.h"

CK_CPU_NAMESPACE_BEGIN

constexpr int kMR = 6;  // rows per micro-tile: 12 accumulators + 2 b + 1 broadcast = 15 of 16 ymm

enum class ALayout { Rows, Cols };

template <class T, int MR, ALayout L, class Epi>
CK_INLINE void micro_tile(const T* __restrict a, int64_t lda, const T* __restrict b, int64_t ldb,
                          int64_t kdim, Epi&& epi) {
  using VT = Vec<T>;
  using V = typename VT::V;
  constexpr int W = VT::W;
  V c[MR][2];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) c[i][0] = c[i][1] = VT::zero();
  if (L == ALayout::Rows) {
    const T* ar[MR];
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) ar[i] = a + i * lda;
#pragma GCC unroll 4
    for (int64_t kk = 0; kk < kdim; ++kk) {
      const V b0 = VT::load(b + kk * ldb), b1 = VT::load(b + kk * ldb + W);
#pragma GCC unroll 6
      for (int i = 0; i < MR; ++i) {
        const V ai = VT::set1(ar[i][kk]);
        c[i][0] = VT::fma(ai, b0, c[i][0]);
        c[i][1] = VT::fma(ai, b1, c[i][1]);
      }
    }
  } else {
#pragma GCC unroll 4
    for (int64_t kk = 0; kk < kdim; ++kk) {
      const V b0 = VT::load(b + kk * ldb), b1 = VT::load(b + kk * ldb + W);
      const T* ak = a + kk * lda;
#pragma GCC unroll 6
      for (int i = 0; i < MR; ++i) {
        const V ai = VT::set1(ak[i]);
        c[i][0] = VT::fma(ai, b0, c[i][0]);
        c[i][1] = VT::fma(ai, b1, c[i][1]);
      }
    }
  }
  epi(c);
}

// Calls body(std::integral_constant<int, MR>{}, i0) for row groups of kMR rows and one
// shorter tail group, so every micro-tile has a compile-time row count.
template <class Body>
CK_INLINE void for_row_groups(int64_t rows, Body&& body) {
  int64_t i0 = 0;
  for (; i0 + kMR <= rows; i0 += kMR) body(std::integral_constant<int, kMR>{}, i0);
  switch (rows - i0) {
    case 1: body(std::integral_constant<int, 1>{}, i0); break;
    case 2: body(std::integral_constant<int, 2>{}, i0); break;
    case 3: body(std::integral_constant<int, 3>{}, i0); break;
    case 4: body(std::integral_constant<int, 4>{}, i0); break;
    case 5: body(std::integral_constant<int, 5>{}, i0); break;
    default: break;
  }
}

// s = Q_I K_J^T for nr rows and npanels key panels; epi(mr, i0, panel, c) gets each
// micro-tile of raw dot products (rows i0.., keys panel*NR..) still in registers.
// q: first row of the block (row stride ldq), kt: first panel of the tile, each panel
// [d][NR] contiguous.
template <class T, class Epi>
CK_INLINE void logits_tile(const T* q, int64_t ldq, int64_t nr, const T* kt, int64_t d,
                           int64_t npanels, Epi&& epi) {
  constexpr int64_t NR = panel_width<T>();
  constexpr int64_t kLine = 64 / sizeof(T);
  for (int64_t p = 0; p < npanels; ++p) {
    const T* panel = kt + p * d * NR;
    for_row_groups(nr, [&](auto mr, int64_t i0) {
      constexpr int MR = decltype(mr)::value;
      // The first panel meets each row of the block cold (a new block in the symmetric
      // schedule): fetch the next row group while this one computes. Then the next panel.
      if (p == 0) {
        for (int64_t i = i0 + kMR; i < std::min(nr, i0 + 2 * kMR); ++i)
          for (int64_t c = 0; c < d; c += kLine) __builtin_prefetch(q + i * ldq + c);
      } else if (i0 == 0 && p + 1 < npanels) {
        for (int64_t c = 0; c < d * NR; c += kLine) __builtin_prefetch(panel + d * NR + c);
      }
      micro_tile<T, MR, ALayout::Rows>(q + i0 * ldq, ldq, panel, NR, d,
                                       [&](typename Vec<T>::V(&c)[MR][2]) { epi(mr, i0, p, c); });
    });
  }
}

// C[m x dp] += A[m x kdim] B[kdim x dp], A read per L (Rows: a[i lda + kk], Cols:
// a[kk lda + i]), C row-major, dp a multiple of NR. B is panel-major (pack_panels): columns
// n0 .. n0 + NR of its row kk are the NR contiguous values at b + (n0 / NR) panel + kk NR,
// so a B panel (kdim x NR) is one contiguous block: it stays in L1 across all row groups,
// where rows of a row-major [*, 128] matrix, 512 bytes apart, would all map to a few L1
// sets and evict each other.
template <class T, ALayout L>
inline void accumulate_product(const T* a, int64_t lda, int64_t m, const T* b, int64_t panel,
                               int64_t kdim, int64_t dp, T* c, int64_t ldc) {
  using VT = Vec<T>;
  constexpr int W = VT::W;
  constexpr int64_t NR = panel_width<T>();
  if (m <= 0 || kdim <= 0) return;
  for (int64_t n0 = 0; n0 < dp; n0 += NR) {
    for_row_groups(m, [&](auto mr, int64_t i0) {
      constexpr int MR = decltype(mr)::value;
      const T* a0 = (L == ALayout::Rows) ? a + i0 * lda : a + i0;
      // The C rows are read only after the whole inner loop; they are usually cold (another
      // block's accumulator), so ask for them now and let the loop hide the latency.
#pragma GCC unroll 6
      for (int i = 0; i < MR; ++i) {
        __builtin_prefetch(c + (i0 + i) * ldc + n0, 1);
        __builtin_prefetch(c + (i0 + i) * ldc + n0 + NR - 1, 1);
      }
      micro_tile<T, MR, L>(a0, lda, b + (n0 / NR) * panel, NR, kdim, [&](typename VT::V(&acc)[MR][2]) {
#pragma GCC unroll 6
        for (int i = 0; i < MR; ++i) {
          T* row = c + (i0 + i) * ldc + n0;
          VT::store(row, VT::add(VT::load(row), acc[i][0]));
          VT::store(row + W, VT::add(VT::load(row + W), acc[i][1]));
        }
      });
    });
  }
}

// Copies rows x [count, dp] (row-major) to the panel-major layout above, [dp / NR][count][NR]:
// one cache line per row and panel, so it costs about one pass over the tile's rows.
template <class T>
inline void pack_panels(const T* x, int64_t count, int64_t dp, T* out) {
  using VT = Vec<T>;
  constexpr int W = VT::W;
  constexpr int64_t NR = panel_width<T>();
  for (int64_t i = 0; i < count; ++i) {
    const T* row = x + i * dp;
    for (int64_t f = 0; f < dp / NR; ++f) {
      T* dst = out + (f * count + i) * NR;
      VT::store(dst, VT::load(row + f * NR));
      VT::store(dst + W, VT::load(row + f * NR + W));
    }
  }
}

CK_CPU_NAMESPACE_END
