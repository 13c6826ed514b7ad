// Entry points of the CPU pairwise sigmoid kernels (sigmoid_forward.cpp,
// sigmoid_backward.cpp); the op itself (checks, outputs, dtype dispatch) is in ops_cpu.cpp
// and entry.cpp, the gradient epilogue (finish_gradient) in lse_cpu.h. The operands have
// signed_pairs set: the pairs of E are the positives.
#pragma once

#include "cpu/isa.h"  // first: the library headers, then the ISA switch

#include <cstdint>

#include "operands.h"

CK_CPU_NAMESPACE_BEGIN

// row_loss [n] = sum_j softplus(-z_ij s_ij).
template <class T>
void sigmoid_forward_kernel(const Operands<T>& op, T* row_loss);

// Accumulates u~ [n, dp], v~ [m, dp] (as two_sided_backward_kernel) and dbias [m] = sum_i
// dL/ds_ij into the given zeroed buffers, any of them null when not needed;
// g = dL/drow_loss [n].
template <class T>
void sigmoid_backward_kernel(const Operands<T>& op, const T* g, T* u, T* v, T* dbias);

CK_CPU_NAMESPACE_END
