// The emulation layer's own test kernels (selftest.h).
#include "emulation/selftest.h"

#include "cuda/device.cuh"

namespace ck {
namespace emu_selftest {
namespace {

CK_GLOBAL void barrier_kernel(int64_t* out) {
  CK_SHARED(int64_t, buf, 128);
  const int t = threadIdx.x;
  const int64_t base = int64_t(blockIdx.x) * 1000;
  buf[t] = base + t;
  CK_SYNC();
  const int64_t first = buf[(t + 1) % 128];
  CK_SYNC();
  buf[t] = base + 500 + t;
  CK_SYNC();
  out[(blockIdx.x * 2 + 0) * 128 + t] = first;
  out[(blockIdx.x * 2 + 1) * 128 + t] = buf[127 - t];
}

CK_GLOBAL void shuffle_kernel(float* out) {
  const int t = threadIdx.x, lane = t % 32;
  const float v = float(t) + 0.5f;
  float* o = out + t * 8;
  o[0] = ck_shfl_xor(v, 1);
  o[1] = ck_shfl_xor(v, 16);
  o[2] = ck_shfl(v, 3);
  o[3] = float(ck_shfl_xor(double(v) * 2.0, 2));
  o[4] = float(ck_ballot(lane % 3 == 0) & 0xffffffu);
  o[5] = ck_any(t == 40) ? 1.f : 0.f;
  o[6] = ck_all(lane < 32) ? 1.f : 0.f;
  o[7] = v;
}

CK_GLOBAL void ldmatrix_kernel(const uint16_t* m, int num, bool trans, uint32_t* out) {
  CK_SHARED(uint16_t, tile, 32 * 8);
  const int lane = threadIdx.x % 32;
  for (int i = lane; i < 32 * 8; i += 32) tile[i] = m[i];
  CK_SYNC();
  uint32_t r[4] = {0, 0, 0, 0};
  const uint16_t* row = tile + (lane % (8 * num)) * 8;
  if (num == 1) {
    uint32_t x[1];
    trans ? ck_ldmatrix_x1_trans(x, row) : ck_ldmatrix_x1(x, row);
    r[0] = x[0];
  } else if (num == 2) {
    uint32_t x[2];
    trans ? ck_ldmatrix_x2_trans(x, row) : ck_ldmatrix_x2(x, row);
    r[0] = x[0];
    r[1] = x[1];
  } else {
    trans ? ck_ldmatrix_x4_trans(r, row) : ck_ldmatrix_x4(r, row);
  }
  for (int i = 0; i < 4; ++i) out[lane * 4 + i] = r[i];
}

template <bool BF16>
CK_GLOBAL void mma_kernel(const uint16_t* a, const uint16_t* b, const float* c, bool b_trans,
                          float* d) {
  constexpr int LD = 24;  // 48-byte rows: 16-byte aligned
  CK_SHARED(uint16_t, as, 16 * LD);
  CK_SHARED(uint16_t, bs, 16 * LD);
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  for (int i = lane; i < 256; i += 32) as[(i / 16) * LD + i % 16] = a[i];
  for (int i = lane; i < 128; i += 32) {
    const int k = i / 8, n = i % 8;  // b is [16][8] row-major
    if (b_trans) bs[k * LD + n] = b[i];
    else bs[n * LD + k] = b[i];
  }
  CK_SYNC();
  uint32_t af[4], bf[2];
  ck_ldmatrix_x4(af, as + (lane % 16) * LD + (lane / 16) * 8);
  if (b_trans) ck_ldmatrix_x2_trans(bf, bs + (lane % 16) * LD);           // rows k
  else ck_ldmatrix_x2(bf, bs + (lane % 8) * LD + ((lane / 8) % 2) * 8);   // rows n
  float acc[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t],
                  c[(g + 8) * 8 + 2 * t + 1]};
  ck_mma_m16n8k16<BF16>(acc, af, bf, acc);
  d[g * 8 + 2 * t] = acc[0];
  d[g * 8 + 2 * t + 1] = acc[1];
  d[(g + 8) * 8 + 2 * t] = acc[2];
  d[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

// One warp: the m16n8k8 tf32 fragments read straight from a [16][8], b [8][8] (row-major
// [k][n]) and c [16][8], each operand rounded by cvt.rna.tf32.f32.
CK_GLOBAL void mma_tf32_kernel(const float* a, const float* b, const float* c, float* d) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const uint32_t af[4] = {ck_cvt_tf32(a[g * 8 + t]), ck_cvt_tf32(a[(g + 8) * 8 + t]),
                          ck_cvt_tf32(a[g * 8 + t + 4]), ck_cvt_tf32(a[(g + 8) * 8 + t + 4])};
  const uint32_t bf[2] = {ck_cvt_tf32(b[t * 8 + g]), ck_cvt_tf32(b[(t + 4) * 8 + g])};
  float acc[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t],
                  c[(g + 8) * 8 + 2 * t + 1]};
  ck_mma_m16n8k8_tf32(acc, af, bf, acc);
  d[g * 8 + 2 * t] = acc[0];
  d[g * 8 + 2 * t + 1] = acc[1];
  d[(g + 8) * 8 + 2 * t] = acc[2];
  d[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

CK_GLOBAL void tf32_round_kernel(const float* x, int64_t n, float* out) {
  for (int64_t i = threadIdx.x; i < n; i += 32) {
    const uint32_t u = ck_cvt_tf32(x[i]);
    std::memcpy(&out[i], &u, 4);
  }
}

CK_GLOBAL void deadlock_kernel() {
  if (threadIdx.x < 64) CK_SYNC();
}

}  // namespace

void barrier(int64_t* out) { CK_LAUNCH(barrier_kernel, ck_dev::dim3(3), ck_dev::dim3(128), 0, nullptr, out); }
void shuffle(float* out) { CK_LAUNCH(shuffle_kernel, ck_dev::dim3(1), ck_dev::dim3(64), 0, nullptr, out); }
void ldmatrix(const uint16_t* m, int num, bool trans, uint32_t* out) {
  CK_LAUNCH(ldmatrix_kernel, ck_dev::dim3(1), ck_dev::dim3(32), 0, nullptr, m, num, trans, out);
}
void mma(const uint16_t* a, const uint16_t* b, const float* c, bool bf16, bool b_trans, float* d) {
  if (bf16) CK_LAUNCH(mma_kernel<true>, ck_dev::dim3(1), ck_dev::dim3(32), 0, nullptr, a, b, c, b_trans, d);
  else CK_LAUNCH(mma_kernel<false>, ck_dev::dim3(1), ck_dev::dim3(32), 0, nullptr, a, b, c, b_trans, d);
}
void mma_tf32(const float* a, const float* b, const float* c, float* d) {
  CK_LAUNCH(mma_tf32_kernel, ck_dev::dim3(1), ck_dev::dim3(32), 0, nullptr, a, b, c, d);
}
void tf32_round(const float* x, int64_t n, float* out) {
  CK_LAUNCH(tf32_round_kernel, ck_dev::dim3(1), ck_dev::dim3(32), 0, nullptr, x, n, out);
}
void deadlock() { CK_LAUNCH(deadlock_kernel, ck_dev::dim3(1), ck_dev::dim3(128), 0, nullptr); }

}  // namespace emu_selftest
}  // namespace ck
