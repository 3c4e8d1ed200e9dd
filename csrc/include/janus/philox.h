// Philox4x32-10 counter-based RNG for attention dropout, identical on every backend.
//
// The keep-mask of element (b, h, i, j) for a 64-bit seed is:
//   words = philox4x32_10(counter = (j >> 2, i, b * H + h, 0), key = (seed_lo, seed_hi))
//   u     = words[j & 3]
//   keep  = u >= drop_threshold(p)          (drop_threshold = floor(p * 2^32), clamped)
// so the backward regenerates the forward's mask without storing it, and the CPU, Triton
// and CUDA kernels (and janus_kernels/dropout.py) draw the same bits. The constants are the
// standard Philox ones (Salmon et al., SC'11), the same as triton.language.philox.
#pragma once
#include <stdint.h>
#include "janus/mask.h"  // JANUS_HD

namespace janus {

struct Philox4 { uint32_t w[4]; };

JANUS_HD uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t prod = (uint64_t)a * (uint64_t)b;
  *hi = (uint32_t)(prod >> 32);
  return (uint32_t)prod;
}

JANUS_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                               uint32_t k0, uint32_t k1) {
  const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo32(M0, c0, &hi0);
    const uint32_t lo1 = mulhilo32(M1, c2, &hi1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += W0; k1 += W1;
  }
  Philox4 r; r.w[0] = c0; r.w[1] = c1; r.w[2] = c2; r.w[3] = c3;
  return r;
}

// Elements u < threshold are dropped; p in [0, 1).
JANUS_HD uint32_t drop_threshold(float p) {
  if (p <= 0.f) return 0u;
  const double t = (double)p * 4294967296.0;
  return t >= 4294967295.0 ? 4294967295u : (uint32_t)t;
}

// Four consecutive keys j4*4 .. j4*4+3 of row i in head bh = b * H + h.
JANUS_HD Philox4 dropout_bits(uint64_t seed, int bh, int i, int j4) {
  return philox4x32_10((uint32_t)j4, (uint32_t)i, (uint32_t)bh, 0u,
                       (uint32_t)(seed & 0xffffffffu), (uint32_t)(seed >> 32));
}

JANUS_HD bool dropout_keep(uint64_t seed, uint32_t threshold, int bh, int i, int j) {
  return dropout_bits(seed, bh, i, j >> 2).w[j & 3] >= threshold;
}

}  // namespace janus
