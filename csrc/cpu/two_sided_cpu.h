// Entry points of the CPU two-sided log-sum-exp kernels (two_sided_forward.cpp,
// two_sided_backward.cpp); the op itself (checks, outputs, dtype dispatch) is in
// ops_cpu.cpp and entry.cpp, the gradient epilogue (finish_gradient) in lse_cpu.h.
#pragma once

#include "cpu/isa.h"  // first: the library headers, then the ISA switch

#include <cstdint>

#include "operands.h"

CK_CPU_NAMESPACE_BEGIN

// row_lse [n] and col_lse [m] from one sweep over the tiles.
template <class T>
void two_sided_forward_kernel(const Operands<T>& op, T* row_lse, T* col_lse);

// Accumulates u~ [n, dp] (u~_i = rq_i u_i) and v~ [m, dp] (v~_j = rk_j v_j) into the
// given zeroed buffers, either null when not needed; g = dL/drow_lse [n], h = dL/dcol_lse [m].
template <class T>
void two_sided_backward_kernel(const Operands<T>& op, const T* g, const T* h, const T* row_lse,
                               const T* col_lse, T* u, T* v);

CK_CPU_NAMESPACE_END
