// The CUDA emulation layer: CUDA kernel source written against csrc/cuda/device.cuh
// compiles as host C++ and runs on the CPU (docs/cuda.md).
//
// - A launch runs the grid's blocks one after another. A block's threads are user-level
//   threads (fibers, ucontext) on the calling OS thread, scheduled round robin; a thread
//   runs until it waits at a barrier. Deterministic, and on a 2-core machine far cheaper
//   than 128 OS threads meeting at every warp-level barrier.
// - __syncthreads is a block barrier. Warp collectives (shuffles, votes, ldmatrix,
//   mma.sync) are a warp barrier around a per-warp exchange area (double-buffered, so one
//   barrier per collective): every lane deposits its operands, then reads what it needs.
// - mma.sync.m16n8k16 (bf16 / fp16 in, fp32 accumulate) and ldmatrix (x1 / x2 / x4,
//   .trans) follow the fragment layouts of the PTX ISA; products are exact in fp32 and
//   summed in fp32 in k order.
// - cp.async is an immediate copy (with the zero-fill of a short source); commit / wait
//   are no-ops. Shared memory (static and dynamic) is one buffer per block, filled with
//   0xFF bytes (NaN) at the start of every block so that a read before a write shows.
// - A barrier that can never complete (divergent __syncthreads, a warp collective some
//   lanes skip) is reported as an error, not a hang.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>

namespace ck_emu {

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct ThreadState {
  dim3 thread_idx;
  dim3 block_idx;
  int linear = 0;  // thread index within the block
  int lane = 0;
  int warp = 0;
  size_t static_smem_offset = 0;  // bump allocator of CK_SHARED arrays
  unsigned parity = 0;            // which half of the warp exchange area is next
};

struct Stats {
  uint64_t launches = 0, blocks = 0, block_barriers = 0, warp_collectives = 0;
};

// The state of the running emulated thread (valid inside a launch only).
ThreadState& self();
const dim3& block_dim();
const dim3& grid_dim();

// Runs body() on every thread of every block; rethrows the first error of a thread.
void launch(dim3 grid, dim3 block, size_t dynamic_smem_bytes, const std::function<void()>& body);

void sync_block();
void sync_warp();
unsigned char* dynamic_smem();
unsigned char* static_smem(size_t bytes, size_t align);
Stats& stats();

// Warp exchange area: 32 lanes x a few 64-bit words, two halves used alternately.
constexpr int kSlotWords = 12;
uint64_t* exchange_slots(unsigned parity);  // [32][kSlotWords] of the calling lane's warp

// Deposit `words` 64-bit words, wait for the warp, return the area to read from.
const uint64_t* warp_exchange(const uint64_t* mine, int words);

template <class V>
V shfl(V v, int src_lane, int width = 32) {
  static_assert(sizeof(V) <= 8, "shuffle of at most 64 bits");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(V));
  const uint64_t* all = warp_exchange(&bits, 1);
  const int lane = self().lane;
  const int base = lane & ~(width - 1);
  const int src = base + (src_lane & (width - 1));
  V out;
  std::memcpy(&out, &all[src * kSlotWords], sizeof(V));
  return out;
}

template <class V>
V shfl_xor(V v, int mask, int width = 32) {
  static_assert(sizeof(V) <= 8, "shuffle of at most 64 bits");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(V));
  const uint64_t* all = warp_exchange(&bits, 1);
  const int lane = self().lane;
  int src = lane ^ mask;
  if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;  // outside the segment
  V out;
  std::memcpy(&out, &all[src * kSlotWords], sizeof(V));
  return out;
}

unsigned ballot(bool pred);
inline bool any(bool pred) { return ballot(pred) != 0; }
inline bool all(bool pred) { return ballot(pred) == 0xffffffffu; }

// ldmatrix.sync.aligned.m8n8.x{num}[.trans].shared.b16: lane 8i + r gives the address of
// row r of matrix i; register i of every lane receives its two elements of matrix i.
void ldmatrix(uint32_t* regs, int num, bool trans, const void* row_address);

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32
void mma_m16n8k16(float* d, const uint32_t* a, const uint32_t* b, const float* c, bool bf16);

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32: A 16 x 8 (a0 (g, t), a1 (g + 8, t),
// a2 (g, t + 4), a3 (g + 8, t + 4)), B 8 x 8 (b0 (k = t, n = g), b1 (k = t + 4, n = g)),
// C / D as m16n8k16; operands are tf32 bit patterns (the low 13 bits are ignored).
void mma_m16n8k8_tf32(float* d, const uint32_t* a, const uint32_t* b, const float* c);

// cvt.rna.tf32.f32: round to nearest, ties away from zero, to 10 explicit mantissa bits
// (the low 13 bits of the result are zero); NaN and inf pass through.
inline uint32_t tf32_round_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return u;  // inf / NaN
  u += 0x1000u;  // half an ulp of tf32: ties carry away from zero (sign-magnitude)
  return u & ~0x1fffu;
}

// cp.async.{ca,cg}.shared.global [dst], [src], bytes, src_bytes: copy, zero-fill the rest.
inline void cp_async(void* dst, const void* src, int bytes, int src_bytes) {
  if (src_bytes > 0) std::memcpy(dst, src, static_cast<size_t>(src_bytes));
  if (src_bytes < bytes) std::memset(static_cast<char*>(dst) + src_bytes, 0, bytes - src_bytes);
}

// Bit conversions shared with the tests.
float half_bits_to_float(uint16_t h);
uint16_t float_to_half_bits(float f);  // round to nearest even
inline float bf16_bits_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace ck_emu
