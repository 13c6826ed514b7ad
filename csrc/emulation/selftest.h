// Kernels that exercise the emulation layer itself (tests/backends/test_emulation.py),
// written against csrc/cuda/device.cuh like the real kernels. Raw pointers only.
#pragma once

#include <cstdint>

namespace ck {
namespace emu_selftest {

// 3 blocks of 128 threads; out [3][2][128]: phase 0 thread t reads what thread t+1 wrote
// to shared memory before the barrier, phase 1 what thread 127-t wrote after the next.
void barrier(int64_t* out);
// 2 warps; out [64][8] floats per thread: shfl_xor 1, shfl_xor 16, shfl from lane 3,
// shfl_xor 2 of a double, ballot(lane % 3 == 0) (as float of the low 24 bits), any, all,
// and the lane's own value.
void shuffle(float* out);
// One warp: m [32][8] b16 (4 matrices of 8 x 8, row r at m + 8 r), staged in shared
// memory; ldmatrix.x{num}[.trans] with lane l addressing row l; out [32][4] registers.
void ldmatrix(const uint16_t* m, int num, bool trans, uint32_t* out);
// One warp: d [16][8] = a [16][16] b [16][8] + c via ldmatrix + mma.sync.m16n8k16;
// b_trans: B staged row-major [k][n] and loaded with ldmatrix.x2.trans, else staged as
// B^T [n][k] and loaded with ldmatrix.x2. a, b raw bf16 / fp16 bits.
void mma(const uint16_t* a, const uint16_t* b, const float* c, bool bf16, bool b_trans, float* d);
// One warp: d [16][8] = a [16][8] b [8][8] + c via mma.sync.m16n8k8 tf32, the fragments
// read straight from a, b (row-major [k][n]) and c, operands rounded by cvt.rna.tf32.f32.
void mma_tf32(const float* a, const float* b, const float* c, float* d);
// out[i] = cvt.rna.tf32.f32(x[i]) as a float.
void tf32_round(const float* x, int64_t n, float* out);
// A block whose threads skip a __syncthreads: must raise, not hang.
void deadlock();

}  // namespace emu_selftest
}  // namespace ck
