// Layout-exact emulation of the tensor-core and async-copy PTX used by the kernels:
//   mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32
//   ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16
//   cp.async.cg.shared.global [dst], [src], 16, src_bytes;  commit_group;  wait_group N
//
// Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k16 with floating point type"),
// with g = lane >> 2 (groupID) and t = lane & 3 (threadID_in_group); every .b32 register
// holds two 16-bit elements, the lower-numbered one in the low half:
//   A (16x16, row-major): a0 = A[g][2t..2t+1]    a1 = A[g+8][2t..2t+1]
//                         a2 = A[g][2t+8..2t+9]  a3 = A[g+8][2t+8..2t+9]
//   B (16x8, k x n):      b0 = B[2t..2t+1][g]    b1 = B[2t+8..2t+9][g]
//   C, D (16x8, fp32):    c0 = C[g][2t]  c1 = C[g][2t+1]  c2 = C[g+8][2t]  c3 = C[g+8][2t+1]
// Each lane passes the registers it would hold on the GPU; the warp exchanges them, rebuilds
// the matrices from the table, multiplies once per warp and each lane receives exactly its own
// D elements. A kernel that puts the wrong value in a register gets wrong numbers, as on the
// hardware.
//
// ldmatrix .x4: lane j supplies the address of row (j % 8) of matrix (j / 8) (16 bytes, 16-byte
// aligned). Result register r[m] of lane L holds matrix m's elements (row L/4, cols 2(L%4),
// 2(L%4)+1); with .trans it holds (rows 2(L%4), 2(L%4)+1; col L/4), i.e. the transpose.
//
// cp.async: copies are queued per thread and performed at wait_group (strictly later than on
// the GPU: a missing wait reads stale or poisoned shared memory), or with EMU_CP_ASYNC=1 at
// issue (strictly earlier: a prefetch into a buffer other warps still read corrupts them).
#pragma once
#include "cuda_emu.h"

namespace emu {

// fp16 -> fp32 by table (decoding every fragment element is the emulator's hot loop).
inline const float* half_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t u = 0; u < 65536; ++u) {
      __half_raw r;
      r.x = (unsigned short)u;
      t[u] = __half2float(__half(r));
    }
    return t;
  }();
  return table.data();
}

inline float bf16_bits_to_float(uint16_t b) {
  const uint32_t u = (uint32_t)b << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

struct MmaIn {
  uint32_t a[4];
  uint32_t b[2];
  float c[4];
};

template <bool BF16>
inline void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                         const float (&c)[4]) {
  MmaIn in;
  for (int i = 0; i < 4; ++i) { in.a[i] = a[i]; in.c[i] = c[i]; }
  in.b[0] = b[0];
  in.b[1] = b[1];
  const Collective k = warp_collective(0xffffffffu, &in, sizeof in);
  auto compute = [](unsigned char (*slots)[kSlotBytes], unsigned char* out) {
    const float* h = BF16 ? nullptr : half_table();
    auto cvt = [h](uint32_t bits16) {
      return BF16 ? bf16_bits_to_float((uint16_t)bits16) : h[bits16];
    };
    float A[16][16], B[16][8], C[16][8];
    for (int lane = 0; lane < 32; ++lane) {
      MmaIn v;
      std::memcpy(&v, slots[lane], sizeof v);
      const int g = lane >> 2, t = lane & 3;
      for (int e = 0; e < 2; ++e) {
        A[g][2 * t + e] = cvt((v.a[0] >> (16 * e)) & 0xffffu);
        A[g + 8][2 * t + e] = cvt((v.a[1] >> (16 * e)) & 0xffffu);
        A[g][2 * t + 8 + e] = cvt((v.a[2] >> (16 * e)) & 0xffffu);
        A[g + 8][2 * t + 8 + e] = cvt((v.a[3] >> (16 * e)) & 0xffffu);
        B[2 * t + e][g] = cvt((v.b[0] >> (16 * e)) & 0xffffu);
        B[2 * t + 8 + e][g] = cvt((v.b[1] >> (16 * e)) & 0xffffu);
      }
      C[g][2 * t] = v.c[0];
      C[g][2 * t + 1] = v.c[1];
      C[g + 8][2 * t] = v.c[2];
      C[g + 8][2 * t + 1] = v.c[3];
    }
    float* Dout = reinterpret_cast<float*>(out);
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 8; ++n) {
        float acc = C[m][n];
        for (int kk = 0; kk < 16; ++kk) acc += A[m][kk] * B[kk][n];
        Dout[m * 8 + n] = acc;
      }
  };
  const float* D = reinterpret_cast<const float*>(once_per_warp(k, compute));
  const int g = k.lane >> 2, t = k.lane & 3;
  d[0] = D[g * 8 + 2 * t];
  d[1] = D[g * 8 + 2 * t + 1];
  d[2] = D[(g + 8) * 8 + 2 * t];
  d[3] = D[(g + 8) * 8 + 2 * t + 1];
}

template <bool TRANS>
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row_addr) {
  if (reinterpret_cast<uintptr_t>(row_addr) & 15u)
    fail("ldmatrix: row address not 16-byte aligned");
  const Collective k = warp_collective(0xffffffffu, &row_addr, sizeof row_addr);
  const int L = k.lane;
  for (int m = 0; m < 4; ++m) {
    uint16_t e[2];
    for (int h = 0; h < 2; ++h) {
      if (!TRANS) {
        const uint16_t* row = slot_value<const uint16_t*>(k, m * 8 + L / 4);
        e[h] = row[2 * (L % 4) + h];
      } else {
        const uint16_t* row = slot_value<const uint16_t*>(k, m * 8 + 2 * (L % 4) + h);
        e[h] = row[L / 4];
      }
    }
    r[m] = (uint32_t)e[0] | ((uint32_t)e[1] << 16);
  }
}

inline void cp_async_16(void* smem, const void* gmem, int src_bytes) {
  if (reinterpret_cast<uintptr_t>(smem) & 15u) fail("cp.async: shared address not 16-byte aligned");
  if (src_bytes > 0 && (reinterpret_cast<uintptr_t>(gmem) & 15u))
    fail("cp.async: global address not 16-byte aligned");
  if (src_bytes < 0 || src_bytes > 16) fail("cp.async: src_bytes outside [0, 16]");
  Fiber& f = current_fiber();
  f.cp.push_back(CpOp{smem, gmem, src_bytes, f.cp_groups});
  if (cp_eager_mode()) run_cp_ops(f, 1 << 30);
}

inline void cp_async_commit() { ++current_fiber().cp_groups; }

// Completes every committed group except the newest n.
inline void cp_async_wait(int n) {
  Fiber& f = current_fiber();
  run_cp_ops(f, f.cp_groups - n);
}

}  // namespace emu
