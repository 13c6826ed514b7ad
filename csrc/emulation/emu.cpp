// The emulation runtime of emu.h: fibers for a block's threads, barriers, warp exchange,
// ldmatrix and mma.sync per the PTX fragment layouts.
#include "emulation/emu.h"

#include <ucontext.h>

#include <cmath>
#include <cstdlib>
#include <exception>
#include <memory>
#include <vector>

namespace ck_emu {
namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kStaticSmemBytes = 64 * 1024;  // room for CK_SHARED arrays

struct Barrier {
  int expected = 0;
  int count = 0;
  uint64_t generation = 0;
};

struct Fiber {
  ucontext_t ctx;
  ThreadState st;
  bool done = false;
};

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

struct Launch {
  dim3 grid, block;
  int nthreads = 0;
  int nwarps = 0;
  std::vector<Fiber> fibers;
  std::unique_ptr<char, FreeDeleter> stacks;
  ucontext_t scheduler;
  Barrier block_barrier;
  std::vector<Barrier> warp_barriers;
  std::unique_ptr<unsigned char, FreeDeleter> smem;
  size_t dynamic_bytes = 0, smem_bytes = 0;
  std::vector<uint64_t> exchange;  // [nwarps][2][32][kSlotWords]
  const std::function<void()>* body = nullptr;
  std::exception_ptr error;
  uint64_t progress = 0;
  int current = -1;
};

thread_local Launch* g_launch = nullptr;
thread_local Stats g_stats;

Launch& active() {
  if (g_launch == nullptr || g_launch->current < 0)
    throw std::logic_error("ck_emu: a device function ran outside an emulated launch");
  return *g_launch;
}

void fiber_entry() {
  Launch& L = *g_launch;
  Fiber& f = L.fibers[L.current];
  try {
    (*L.body)();
  } catch (...) {
    if (!L.error) L.error = std::current_exception();
  }
  f.done = true;
  ++L.progress;
  // returning resumes uc_link: the scheduler
}

void yield() {
  Launch& L = *g_launch;
  swapcontext(&L.fibers[L.current].ctx, &L.scheduler);
}

void wait(Barrier& b) {
  Launch& L = *g_launch;
  const uint64_t gen = b.generation;
  ++L.progress;
  if (++b.count == b.expected) {
    b.count = 0;
    ++b.generation;
    return;
  }
  do {
    yield();
    if (L.error) throw std::runtime_error("ck_emu: aborting the block after an error");
  } while (b.generation == gen);
}

void run_block(Launch& L, dim3 block_idx) {
  for (int i = 0; i < L.nthreads; ++i) {
    Fiber& f = L.fibers[i];
    f.done = false;
    ThreadState& st = f.st;
    st.block_idx = block_idx;
    st.linear = i;
    st.thread_idx = dim3(i % L.block.x, (i / L.block.x) % L.block.y, i / (L.block.x * L.block.y));
    st.lane = i % 32;
    st.warp = i / 32;
    st.static_smem_offset = 0;
    st.parity = 0;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = L.stacks.get() + static_cast<size_t>(i) * kStackBytes;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &L.scheduler;
    makecontext(&f.ctx, fiber_entry, 0);
  }
  L.block_barrier.count = 0;
  for (Barrier& b : L.warp_barriers) b.count = 0;
  std::memset(L.smem.get(), 0xFF, L.smem_bytes);
  for (;;) {
    bool alive = false;
    const uint64_t before = L.progress;
    for (int i = 0; i < L.nthreads; ++i) {
      if (L.fibers[i].done) continue;
      alive = true;
      L.current = i;
      swapcontext(&L.scheduler, &L.fibers[i].ctx);
      L.current = -1;
    }
    if (!alive) break;
    if (L.error) break;
    if (L.progress == before) {
      throw std::runtime_error(
          "ck_emu: deadlock: threads of block (" + std::to_string(block_idx.x) + "," +
          std::to_string(block_idx.y) + "," + std::to_string(block_idx.z) +
          ") wait at barriers that can never complete (divergent __syncthreads or a warp "
          "collective some lanes skip)");
    }
  }
  if (L.error) std::rethrow_exception(L.error);
}

}  // namespace

ThreadState& self() { return active().fibers[g_launch->current].st; }
const dim3& block_dim() { return active().block; }
const dim3& grid_dim() { return active().grid; }
Stats& stats() { return g_stats; }

void launch(dim3 grid, dim3 block, size_t dynamic_smem_bytes, const std::function<void()>& body) {
  if (g_launch != nullptr) throw std::logic_error("ck_emu: nested launch");
  const size_t nthreads = size_t(block.x) * block.y * block.z;
  if (nthreads == 0 || nthreads > 1024 || nthreads % 32 != 0)
    throw std::invalid_argument("ck_emu: a block needs a multiple of 32 threads, at most 1024");
  if (size_t(grid.x) * grid.y * grid.z == 0) return;
  Launch L;
  L.grid = grid;
  L.block = block;
  L.nthreads = static_cast<int>(nthreads);
  L.nwarps = L.nthreads / 32;
  L.fibers.resize(nthreads);
  L.stacks.reset(static_cast<char*>(std::aligned_alloc(64, nthreads * kStackBytes)));
  L.block_barrier.expected = L.nthreads;
  L.warp_barriers.assign(L.nwarps, Barrier{32, 0, 0});
  L.dynamic_bytes = (dynamic_smem_bytes + 127) / 128 * 128;
  L.smem_bytes = L.dynamic_bytes + kStaticSmemBytes;
  L.smem.reset(static_cast<unsigned char*>(std::aligned_alloc(128, L.smem_bytes)));
  L.exchange.assign(size_t(L.nwarps) * 2 * 32 * kSlotWords, 0);
  L.body = &body;
  if (!L.stacks || !L.smem) throw std::bad_alloc();
  g_launch = &L;
  ++g_stats.launches;
  try {
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          ++g_stats.blocks;
          run_block(L, dim3(x, y, z));
        }
  } catch (...) {
    g_launch = nullptr;
    throw;
  }
  g_launch = nullptr;
}

void sync_block() {
  ++g_stats.block_barriers;
  wait(active().block_barrier);
}

void sync_warp() { wait(active().warp_barriers[self().warp]); }

unsigned char* dynamic_smem() { return active().smem.get(); }

unsigned char* static_smem(size_t bytes, size_t align) {
  Launch& L = active();
  ThreadState& st = self();
  size_t off = (L.dynamic_bytes + st.static_smem_offset + align - 1) / align * align;
  if (off + bytes > L.smem_bytes) throw std::runtime_error("ck_emu: static shared memory exhausted");
  st.static_smem_offset = off + bytes - L.dynamic_bytes;
  return L.smem.get() + off;
}

uint64_t* exchange_slots(unsigned parity) {
  Launch& L = active();
  return &L.exchange[(size_t(self().warp) * 2 + parity) * 32 * kSlotWords];
}

const uint64_t* warp_exchange(const uint64_t* mine, int words) {
  ThreadState& st = self();
  uint64_t* slots = exchange_slots(st.parity);
  st.parity ^= 1u;
  std::memcpy(&slots[st.lane * kSlotWords], mine, sizeof(uint64_t) * words);
  ++g_stats.warp_collectives;
  sync_warp();
  return slots;
}

unsigned ballot(bool pred) {
  uint64_t mine = pred ? 1 : 0;
  const uint64_t* all = warp_exchange(&mine, 1);
  unsigned out = 0;
  for (int l = 0; l < 32; ++l)
    if (all[l * kSlotWords]) out |= 1u << l;
  return out;
}

namespace {

void check_shared(const void* p, size_t bytes) {
  Launch& L = active();
  const unsigned char* c = static_cast<const unsigned char*>(p);
  if (c < L.smem.get() || c + bytes > L.smem.get() + L.smem_bytes)
    throw std::runtime_error("ck_emu: ldmatrix address outside shared memory");
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
    throw std::runtime_error("ck_emu: ldmatrix row address not 16-byte aligned");
}

}  // namespace

void ldmatrix(uint32_t* regs, int num, bool trans, const void* row_address) {
  uint64_t mine = reinterpret_cast<uintptr_t>(row_address);
  const int lane = self().lane;
  const uint64_t* all = warp_exchange(&mine, 1);
  auto row = [&](int i, int r) {
    const void* p = reinterpret_cast<const void*>(all[(8 * i + r) * kSlotWords]);
    check_shared(p, 16);
    return static_cast<const uint16_t*>(p);
  };
  for (int i = 0; i < num; ++i) {
    uint16_t lo, hi;
    if (!trans) {
      const uint16_t* r = row(i, lane / 4);
      lo = r[2 * (lane % 4)];
      hi = r[2 * (lane % 4) + 1];
    } else {
      lo = row(i, 2 * (lane % 4))[lane / 4];
      hi = row(i, 2 * (lane % 4) + 1)[lane / 4];
    }
    regs[i] = uint32_t(lo) | (uint32_t(hi) << 16);
  }
}

void mma_m16n8k16(float* d, const uint32_t* a, const uint32_t* b, const float* c, bool bf16) {
  const uint64_t mine[3] = {uint64_t(a[0]) | (uint64_t(a[1]) << 32),
                            uint64_t(a[2]) | (uint64_t(a[3]) << 32),
                            uint64_t(b[0]) | (uint64_t(b[1]) << 32)};
  const int lane = self().lane;
  const uint64_t* all = warp_exchange(mine, 3);
  auto reg = [&](int l, int j) {  // register j of lane l: a0..a3 = 0..3, b0, b1 = 4, 5
    return uint32_t(all[l * kSlotWords + j / 2] >> (32 * (j % 2)));
  };
  auto value = [&](uint32_t r, int half) {
    const uint16_t h = uint16_t(r >> (16 * half));
    return bf16 ? bf16_bits_to_float(h) : half_bits_to_float(h);
  };
  // A (16 x 16, row): a_j of lane 4 (r % 8) + (k % 8) / 2, j = (r >= 8) + 2 (k >= 8)
  auto A = [&](int r, int k) {
    return value(reg((r % 8) * 4 + (k % 8) / 2, (r >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)), k % 2);
  };
  // B (16 x 8, col): b_j of lane 4 n + (k % 8) / 2, j = (k >= 8)
  auto B = [&](int k, int n) { return value(reg(n * 4 + (k % 8) / 2, 4 + (k >= 8 ? 1 : 0)), k % 2); };
  const int g = lane / 4, t = lane % 4;
  for (int e = 0; e < 4; ++e) {
    const int r = g + 8 * (e / 2), n = 2 * t + e % 2;
    double sum = 0;  // products of 16-bit floats are exact in fp32 (and in double)
    for (int k = 0; k < 16; ++k) sum += double(A(r, k)) * double(B(k, n));
    d[e] = float(double(c[e]) + sum);
  }
}

void mma_m16n8k8_tf32(float* d, const uint32_t* a, const uint32_t* b, const float* c) {
  const uint64_t mine[3] = {uint64_t(a[0]) | (uint64_t(a[1]) << 32),
                            uint64_t(a[2]) | (uint64_t(a[3]) << 32),
                            uint64_t(b[0]) | (uint64_t(b[1]) << 32)};
  const int lane = self().lane;
  const uint64_t* all = warp_exchange(mine, 3);
  auto value = [&](int l, int j) {  // register j of lane l as a tf32 value: a0..a3, b0, b1
    uint32_t u = uint32_t(all[l * kSlotWords + j / 2] >> (32 * (j % 2))) & ~0x1fffu;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  };
  // A (16 x 8, row): a_j of lane 4 (r % 8) + k % 4, j = (r >= 8) + 2 (k >= 4)
  auto A = [&](int r, int k) { return value((r % 8) * 4 + k % 4, (r >= 8 ? 1 : 0) + (k >= 4 ? 2 : 0)); };
  // B (8 x 8, col): b_j of lane 4 n + k % 4, j = (k >= 4)
  auto B = [&](int k, int n) { return value(n * 4 + k % 4, 4 + (k >= 4 ? 1 : 0)); };
  const int g = lane / 4, t = lane % 4;
  for (int e = 0; e < 4; ++e) {
    const int r = g + 8 * (e / 2), n = 2 * t + e % 2;
    double sum = 0;  // products of tf32 values are exact in double
    for (int k = 0; k < 8; ++k) sum += double(A(r, k)) * double(B(k, n));
    d[e] = float(double(c[e]) + sum);
  }
}

float half_bits_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h >> 15) << 31;
  const int exp = (h >> 10) & 0x1f;
  const uint32_t man = h & 0x3ff;
  float f;
  if (exp == 0x1f) {
    const uint32_t u = sign | 0x7f800000u | (man << 13);
    std::memcpy(&f, &u, 4);
    return f;
  }
  if (exp == 0) {
    f = std::ldexp(float(man), -24);
    return sign ? -f : f;
  }
  const uint32_t u = sign | (uint32_t(exp - 15 + 127) << 23) | (man << 13);
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t float_to_half_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000);
  const float a = std::fabs(f);
  if (std::isnan(f)) return sign | 0x7e00;
  if (a >= 65520.0f) return sign | 0x7c00;
  if (a < 6.103515625e-05f) {  // subnormal: multiples of 2^-24, nearest even
    const float q = std::nearbyint(a * 16777216.0f);
    return sign | uint16_t(q);
  }
  int e;
  const float m = std::frexp(a, &e);  // a = m 2^e, m in [0.5, 1)
  float mant = std::nearbyint((m * 2 - 1) * 1024.0f);
  int exp = e - 1 + 15;
  if (mant >= 1024) {
    mant = 0;
    ++exp;
  }
  if (exp >= 31) return sign | 0x7c00;
  return sign | uint16_t(exp << 10) | uint16_t(mant);
}

}  // namespace ck_emu
