// Entry points of the CPU core-op kernels (lse_forward.cpp, lse_backward.cpp); the ops
// themselves (argument checks, outputs, dtype dispatch) are in ops_cpu.cpp.
#pragma once

#include "cpu/isa.h"  // first: the library headers, then the ISA switch

#include <cstdint>

#include "operands.h"
#include "vec.h"

CK_CPU_NAMESPACE_BEGIN

// lse [n] and, when o is not null, o [n, dp] (zero on entry, row stride dp).
template <class T>
void lse_forward_kernel(const Operands<T>& op, T* lse, T* o);

// Accumulates u~ [n, dp] (u~_i = rq_i u_i) and v~ [m, dp] (v~_j = rk_j v_j) into the
// given zeroed buffers; either may be null when not needed.
template <class T>
void lse_backward_kernel(const Operands<T>& op, const T* grad_lse, const T* lse, T* u, T* v);

// Returns sum_i <x_i, acc_i> (double); with apply, turns acc (rows of u~ or v~) into the
// input gradient: acc_i <- scale f_i (acc_i - [||x_i|| >= eps] <x_i, acc_i> x_i / ||x_i||^2),
// f_i = row_factor[i] (Operands::q_grad_factor / k_grad_factor), or 1 when it is null.
template <class T>
double finish_gradient(const T* x, int64_t rows, int64_t d, int64_t dp, T* acc, double scale,
                       bool normalize, double eps, bool apply, const double* row_factor);

CK_CPU_NAMESPACE_END
