// The CUDA kernels of the core ops lse, two_sided_lse and pairwise_sigmoid (docs/design.md
// section 1, docs/cuda.md), written against device.cuh so that the same source compiles with nvcc
// (lse_cuda.cu) and with the host compiler through the emulation layer
// (csrc/emulation/lse_emulated.cpp). This header is the overview and includes the parts:
//
//   tile_traits.cuh      dtype tags, tile sizes, shared memory, conversions, quad reductions
//   mainloop.cuh         the cp.async pipeline over chunks of d, the chunk's MMA / FMA
//   score_tile.cuh       the logits tile (scale, inverse norms, bias, masks)
//   second_products.cuh  o = P K, u = X K, v = X^T Q from a weight tile
//   reductions.cuh       the policies: LseRows (lse), LseRowsCols (two_sided_lse),
//                        SigmoidRows (pairwise_sigmoid)
//   row_norms.cuh        inverse norms
//   forward.cuh          the forward tile loop and kernels, the merge of partials
//   backward.cuh         the backward tile loops, kernels, epilogues
//   launch.cuh           launchers and runners
//
// The includer defines CK_KERNEL_NAMESPACE (cuda_kernels or emulated_kernels): the two
// instantiations link into one library and must not share a symbol.
//
// Tiles: a block of 128 threads (4 warps) owns kBM = 64 rows; key tiles of kBN = 64;
// the feature dimension streams through shared memory in chunks of kBK (32 for 16- and
// 32-bit inputs, 16 for fp64), loaded with cp.async when rows are 16-byte aligned, two
// stages deep (chunk c + 1 in flight while chunk c is multiplied). The
// logits tile S = Q K^T lives in registers in the m16n8 accumulator layout of mma.sync:
// warp w holds rows 16 w .. 16 w + 15; lane (g = lane / 4, t = lane % 4) holds, for key
// sub-tile nt (8 keys), s[nt] = {S[g][2t], S[g][2t+1], S[g+8][2t], S[g+8][2t+1]}.
//   - bf16 / fp16: ldmatrix.x4 fragments of Q and K, mma.sync.m16n8k16, fp32 accumulate;
//   - fp32: mma.sync.m16n8k8 tf32 (operands rounded by cvt.rna.tf32.f32) when torch's fp32
//     matmul precision is not "highest" (KernelProblem::tf32, set per call by the op
//     wrapper), else FMA (exact IEEE products and sums); fp64: FMA.
// Masks, scale, inverse norms, bias and the online log-sum-exp are applied in registers
// by row and column; row statistics are reduced over the 4 lanes of a quad by shuffles.
//
// The second products o = P K, u = X K (rows own the output) and v = X^T Q (keys own it):
//   - bf16 / fp16: on tensor cores. The weight tile never leaves registers: the
//     accumulator layout of two adjacent 8-key sub-tiles is the A-fragment layout of one
//     16-key step of mma.sync.m16n8k16, so the fp32 weights are rounded to the input dtype
//     and packed in place (weight_fragments; fp16 rows scaled by their largest weight in
//     the tile, the scale undone on the fp32 products; only the factors that vary along the
//     reduction are rounded, the row factors g_i rq_i (dq) and rk_j (dk) multiply the fp32
//     products; bf16 o adds a second A operand, the rounding residue). The B operand, the
//     staged K (Q) chunk [64 keys][kBK], k-major over the keys, comes by ldmatrix.x4.trans.
//     Per chunk of d the 16 x kBK products of a warp start at zero in registers and are
//     added to an fp32 buffer in global memory that the block owns (each element one
//     lane's): d is arbitrary, so a register accumulator over all of d does not fit.
//   - fp32 with tf32 allowed: mma.sync.m16n8k8 tf32, weights from registers too
//     (tf32_weight_fragments: the key order inside an 8-key step is chosen so that the
//     accumulator registers are the A fragment as they are), B by 32-bit shared loads.
//   - fp32 under "highest", fp64: the weight tile through shared memory, FMA in the
//     accumulation type (exact).
// The key grid of the backward computes the transposed tile S^T = K Q^T (logits_tile<kT>),
// so that its own keys are the warps' rows and v = X^T Q has the same shape as u = X K.
//
// Split grids when the own grid is small (forward_key_splits / backward_splits,
// lse_params.h; CONTRASTIVE_KERNELS_CUDA_SPLITS forces a count): grid.y ranges of whole
// tiles of the other side. Forward: partial (max, sum, o) per key range, merged per row in
// range order by merge_splits_kernel. Backward: the dq grid splits the keys, the dk grid the
// rows; range r writes slice r of a zero-filled workspace [S, rows, d] and the per-row
// epilogue adds the S slices in range order (deterministic, bitwise repeatable).
//
// Backward (deterministic, two grids): the dq kernel (row grid) recomputes each tile and
// accumulates u~_i = sum_j x_ij k_j, x_ij = g_i rq_i rk_j exp(s_ij - lse_i); the dk kernel
// (key grid) recomputes the same tiles and accumulates v~_j = sum_i x_ij q_i; a per-row
// epilogue applies scale and the normalization Jacobian,
//     dq_i = scale (u~_i - [normalize, ||q_i|| >= eps] rq_i^2 <q_i, u~_i> q_i),
// and dscale = sum_ij x_ij <q_i, k_j> (= sum_i <q_i, u~_i>), summed by the dq kernel per
// (range, row) from the fp32 weights and the raw dot products of the tile, then by one warp
// in a fixed order.
//
// two_sided_lse (LseRowsCols): the same forward sweep also keeps, per key tile, each key's
// partial (max, sum) over the block's 64 rows, written to [row_blocks, M] and merged per key
// in block order by merge_splits_kernel (deterministic); its backward runs the same two
// grids with x_ij = rq_i rk_j (g_i exp(s_ij - row_lse_i) + h_j exp(s_ij - col_lse_j)).
//
// pairwise_sigmoid (SigmoidRows): the score tile flips the sign of the marked pairs (the
// positives) instead of excluding them, x_ij = -z_ij s_ij; the forward sums softplus(x) per
// row (partial sums of key ranges added in range order), the backward runs the same two grids
// with w_ij = -z_ij sigmoid(x_ij) g_i, and its key grid also sums dbias_j = sum_i w_ij per
// (row range, key), added in range order.
#pragma once

#include "cuda/launch.cuh"
