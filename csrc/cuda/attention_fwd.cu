// Structured-mask flash attention, forward (FlashAttention-2 style, tensor cores via
// mma.sync m16n8k16 + ldmatrix, cp.async loads). Torch-free: janus_cuda_attention_fwd() is
// called by the torch glue (attention_glue.cpp) and, compiled by g++ against the CPU
// emulation, by tests/test_cuda_emu.py.
//
// One block = 64 rows of ONE stream of one (batch, head) (a one-dimensional grid: B * H may
// pass grid.y's 65535); 4 warps x 16 rows. Each thread's two rows have their mask bounds
// hoisted into registers (RowMask) and the descriptor sits in shared memory. For the keys the
// rows may see ([0, pre) U [lo, hi) from janus/mask.h, in tiles of 64; dead tiles skipped):
//   S = Q K^T                       (fp32 accumulators; scale folded into the exp2 argument)
//   PARTIAL tiles: S_ij = -inf where !allowed(i, j); FULL tiles: no predicate at all
//   m_new = max(m, rowmax S);  P = exp2(S*scale*log2e - m_new);  l = l*alpha + rowsum P
//   O = O*alpha + (P o Z) V         (alpha = exp2(m - m_new); Z = keep/(1-p) dropout, Philox)
// out = O / l, lse = (m + log2 l) ln 2 in natural-log units; rows with no allowed key (l = 0)
// give out = 0 and lse = -inf. P is rounded to the input type before the P V product (as in
// FlashAttention); everything else accumulates in fp32.
#include "attention_common.cuh"

namespace janus {
namespace attn {

template <class T, int D>
__global__ void __launch_bounds__(kThreads, 1)
attention_fwd_kernel(const JanusAttnFwdArgs p) {
  using Cfg = FwdCfg<D>;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, PITCH = Cfg::PITCH;
  constexpr int NT_S = BN / 8;    // n-tiles of S per warp (16 x BN)
  constexpr int NT_O = D / 8;     // n-tiles of O per warp (16 x D)
  JANUS_DYN_SMEM(T, smem);
  T* sQ = smem;
  T* sK = sQ + BM * PITCH;
  T* sV = sK + BN * PITCH;
  int* sRank = reinterpret_cast<int*>(sV + BN * PITCH);   // key tile's ranks (permutation)
  int32_t* sParams = sRank + BN;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;
  const int nrb = num_row_blocks<BM>(p.Lq, p.q_split);
  const int64_t bh = blockIdx.x / nrb;   // b * H + h: B * H may pass 65535 (no grid.y/z)
  const int h = (int)(bh % p.H), b = (int)(bh / p.H);
  const int hk = h / (p.H / p.Hkv);
  int i0, i_end;
  row_block<BM>((int)(blockIdx.x % nrb), p.Lq, p.q_split, &i0, &i_end);
  const int i1 = i_end - 1;
  const bool perm = p.mask_kind == KIND_PERMUTATION;

  const SampleMask mask = block_sample_mask(sParams, p.mask_params, p.mask_rank, p.rank_stride,
                                            b, p.q_split, p.mask_kind, p.Lq, p.Lk);
  const KeyRanges kr = key_ranges<BN>(mask, i0, i1, p.Lk);

  const int row_a = i0 + warp * 16 + g;   // this thread's rows: row_a and row_a + 8
  float* lse_out = p.lse + bh * p.Lq;
  T* out = static_cast<T*>(p.out) + b * p.o_stride[0] + h * p.o_stride[1];

  int n = next_key_tile<BN>(mask, kr, 0, i0, i1, p.Lk);
  if (n >= kr.end_tile) {   // no row of the block sees any key (block-uniform exit)
    for (int c = tid; c < (i_end - i0) * (p.head_dim / 2); c += kThreads) {
      const int r = c / (p.head_dim / 2), k = (c % (p.head_dim / 2)) * 2;
      *reinterpret_cast<uint32_t*>(out + (i0 + r) * p.o_stride[2] + k) = 0u;
    }
    for (int r = i0 + tid; r < i_end; r += kThreads) lse_out[r] = -INFINITY;
    return;
  }

  const T* q = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
  const T* k = static_cast<const T*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1];
  const T* v = static_cast<const T*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[1];

  load_tile_async<BM, D>(sQ, q + i0 * p.q_stride[2], p.q_stride[2], i_end - i0, p.head_dim, tid);
  load_tile_async<BN, D>(sK, k + (int64_t)n * BN * p.k_stride[2], p.k_stride[2],
                         p.Lk - n * BN, p.head_dim, tid);
  ptx::cp_async_commit();
  load_key_ranks<BN>(sRank, mask, n * BN, p.Lk, tid);
  // The two rows' mask bounds, once per block: the per-element predicate below reads only
  // registers and the shared key ranks.
  const RowMask rm0 = row_mask(mask, row_a, i_end, p.Lk);
  const RowMask rm1 = row_mask(mask, row_a + 8, i_end, p.Lk);

  const float sl2 = p.scale * kLog2e;
  const bool dropout = p.dropout_p > 0.f;
  const uint32_t drop_thr = drop_threshold(p.dropout_p);
  const float inv_keep = dropout ? 1.f / (1.f - p.dropout_p) : 1.f;

  float m_run[2] = {-INFINITY, -INFINITY};   // running max of S*scale*log2e per row
  float l_run[2] = {0.f, 0.f};               // this thread's part of the row sums
  float acc[NT_O][4];
  zero(acc);

  while (n < kr.end_tile) {
    const int j0 = n * BN;
    // V(n) loads behind S = Q K(n)^T; the group before it (Q, K(n)) must be complete.
    load_tile_async<BN, D>(sV, v + (int64_t)j0 * p.v_stride[2], p.v_stride[2], p.Lk - j0,
                           p.head_dim, tid);
    ptx::cp_async_commit();
    ptx::cp_async_wait<1>();
    __syncthreads();

    float s[NT_S][4];
    zero(s);
    warp_gemm_abt<T, NT_S, D, PITCH, PITCH>(s, sQ + warp * 16 * PITCH, sK, lane);
    __syncthreads();   // every warp is done with sK: K(next) may overwrite it

    const int next = next_key_tile<BN>(mask, kr, n + 1, i0, i1, p.Lk);
    if (next < kr.end_tile)
      load_tile_async<BN, D>(sK, k + (int64_t)next * BN * p.k_stride[2], p.k_stride[2],
                             p.Lk - next * BN, p.head_dim, tid);
    ptx::cp_async_commit();   // possibly empty group: keeps the wait<1> below uniform

    // ---- mask, online softmax (log2 domain), dropout
    // Per-element decisions go into bit masks (bit 4*nt + e of this thread's S fragment) in
    // loops that are not unrolled: the predicate and Philox stay out of the register-heavy
    // unrolled code.
    static_assert(NT_S * 4 <= 32, "one bit per fragment element");
    // A FULL tile that sticks out past Lk still needs the predicate: its zero-filled keys
    // would otherwise enter the softmax with S = 0.
    const bool partial = j0 + BN > p.Lk ||
                         mask.tile_class(i0, i1, j0, imin(j0 + BN, p.Lk) - 1) != TILE_FULL;
    const uint32_t allow =
        partial ? row_tile_allow_bits<NT_S>(rm0, rm1, sRank, j0, t, perm) : 0xffffffffu;
    const uint32_t keep = dropout ? row_tile_keep_bits<NT_S>(p.seed, (int)bh, row_a, j0, t,
                                                             drop_thr)
                                  : 0xffffffffu;
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < NT_S; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float x = ((allow >> (4 * nt + e)) & 1u) ? s[nt][e] * sl2 : -INFINITY;
        s[nt][e] = x;
        mx[e >> 1] = fmaxf(mx[e >> 1], x);
      }
    float alpha[2], m_use[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float m_new = fmaxf(m_run[r], quad_max(mx[r]));
      m_use[r] = m_new == -INFINITY ? 0.f : m_new;   // no key yet: exp2(-inf - 0) = 0
      alpha[r] = exp2f(m_run[r] - m_use[r]);
      m_run[r] = m_new;
      l_run[r] *= alpha[r];
    }
#pragma unroll
    for (int nt = 0; nt < NT_O; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[nt][e] *= alpha[e >> 1];
#pragma unroll
    for (int nt = 0; nt < NT_S; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float pe = exp2f(s[nt][e] - m_use[e >> 1]);
        l_run[e >> 1] += pe;   // the normalizer uses P before dropout
        s[nt][e] = ((keep >> (4 * nt + e)) & 1u) ? pe * inv_keep : 0.f;
      }
    uint32_t pa[NT_S / 2][4];
    acc_to_a<T, NT_S>(pa, s);

    ptx::cp_async_wait<1>();   // V(n) landed (K(next) may still be in flight)
    __syncthreads();   // (also: every warp is done with sRank)
    if (next < kr.end_tile) load_key_ranks<BN>(sRank, mask, next * BN, p.Lk, tid);
    warp_gemm_rb<T, NT_O, NT_S / 2, PITCH>(acc, pa, sV, lane);
    __syncthreads();   // every warp is done with sV before V(next) overwrites it
    n = next;
  }
  ptx::cp_async_wait<0>();

  // ---- finalize: full row sums across the quad, normalize, store
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float l = quad_sum(l_run[r]);
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const int i = row_a + 8 * r;
    if (i < i_end) {
      T* orow = out + i * p.o_stride[2];
#pragma unroll
      for (int nt = 0; nt < NT_O; ++nt) {
        const int c = nt * 8 + 2 * t;
        if (c < p.head_dim)
          *reinterpret_cast<uint32_t*>(orow + c) =
              ptx::pack2<T>(acc[nt][2 * r] * inv, acc[nt][2 * r + 1] * inv);
      }
      if (t == 0) lse_out[i] = l > 0.f ? (m_run[r] + log2f(l)) * kLn2 : -INFINITY;
    }
  }
}

template <class T, int D>
cudaError_t launch_fwd(const JanusAttnFwdArgs& a, cudaStream_t stream) {
  auto kernel = attention_fwd_kernel<T, D>;
  const int smem = FwdCfg<D>::kSmemBytes;
  cudaError_t e = cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return e;
  const int64_t blocks = (int64_t)a.B * a.H * num_row_blocks<FwdCfg<D>::BM>(a.Lq, a.q_split);
  if (blocks > kGridXMax) return cudaErrorInvalidValue;
  JANUS_LAUNCH(kernel, dim3((unsigned)blocks), dim3(kThreads), smem, stream, a);
  return cudaGetLastError();
}

}  // namespace attn
}  // namespace janus

using namespace janus::attn;

extern "C" cudaError_t janus_cuda_attention_fwd(const JanusAttnFwdArgs* a, cudaStream_t stream) {
  if (!a || a->B < 0 || a->H <= 0 || a->Hkv <= 0 || a->H % a->Hkv != 0 || a->Lq < 0 ||
      a->Lk < 0 || a->q_split < 0 || a->q_split > a->Lq || a->head_dim < 8 ||
      a->head_dim > 128 || a->head_dim % 8 != 0 ||
      !janus::kind_valid(a->mask_kind) ||
      (a->mask_kind != janus::KIND_WINDOW && !a->mask_rank) || !(a->dropout_p >= 0.f) ||
      !(a->dropout_p < 1.f))
    return cudaErrorInvalidValue;
  for (int d = 0; d < 3; ++d)
    if (a->q_stride[d] % 8 || a->k_stride[d] % 8 || a->v_stride[d] % 8 || a->o_stride[d] % 8)
      return cudaErrorInvalidValue;
  if (!aligned16(a->q) || !aligned16(a->k) || !aligned16(a->v) || !aligned16(a->out))
    return cudaErrorInvalidValue;
  if (a->B == 0 || a->Lq == 0) return cudaSuccess;
  const bool d64 = a->head_dim <= 64;
  if (a->dtype == JANUS_DTYPE_F16)
    return d64 ? launch_fwd<__half, 64>(*a, stream) : launch_fwd<__half, 128>(*a, stream);
  if (a->dtype == JANUS_DTYPE_BF16)
    return d64 ? launch_fwd<__nv_bfloat16, 64>(*a, stream)
               : launch_fwd<__nv_bfloat16, 128>(*a, stream);
  return cudaErrorInvalidValue;
}
