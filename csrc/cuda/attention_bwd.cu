// Structured-mask flash attention, backward (FlashAttention-2 style). Torch-free; see
// attention_fwd.cu for the forward and attention_launch.h for the argument contract.
//
// Three kernels on the caller's stream, none with atomics, so the gradients are bitwise
// reproducible (torch.use_deterministic_algorithms, exact training resume):
//  1. delta_i = sum_c dO_ic O_ic (fp32).
//  2. dK, dV: one block per (key tile of 64, batch, kv head); 4 warps x 16 keys. For every
//     query head of the kv head's group (GQA) and every query tile of one stream with an
//     allowed entry (TILE_SKIP tiles never loaded; FULL tiles without the predicate), in
//     transposed form:
//        S^T = K Q^T,  P^T = exp2(S^T scale log2e - lse log2e)   (masked entries 0)
//        dV += (P^T o Z) dO                                      (Z = keep / (1-p))
//        dP^T = V dO^T,  dS^T = P^T o (dP^T o Z - delta),  dK += dS^T Q
//     dK (times scale) and dV are written once at the end.
//  3. dQ: one block per (row block of 64 of one stream, batch, head), the forward's key
//     tiles; 4 warps x 16 rows: S = Q K^T and dP = dO V^T recomputed, dS = P o (dP o Z -
//     delta), dQ += dS K in registers, dq = scale dQ written once. (The alternative, fp32
//     atomicAdd of dS K from every key-tile block of kernel 2, saves the S and dP GEMMs here
//     but makes dQ depend on the order in which blocks finish.)
// Rows whose forward saw no key (lse = -inf) get P = 0, hence zero gradients.
#include "attention_common.cuh"

namespace janus {
namespace attn {

// ---------------------------------------------------------------- 1. delta
template <class T>
__global__ void __launch_bounds__(kThreads)
attention_bwd_delta_kernel(const JanusAttnBwdArgs p) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t total = (int64_t)p.B * p.H * p.Lq;
  for (int64_t row = (int64_t)blockIdx.x * kWarps + warp; row < total;
       row += (int64_t)gridDim.x * kWarps) {
    const int i = (int)(row % p.Lq);
    const int h = (int)(row / p.Lq % p.H);
    const int64_t b = row / ((int64_t)p.Lq * p.H);
    const T* go = static_cast<const T*>(p.dout) + b * p.do_stride[0] + h * p.do_stride[1] +
                  i * p.do_stride[2];
    const T* o = static_cast<const T*>(p.out) + b * p.o_stride[0] + h * p.o_stride[1] +
                 i * p.o_stride[2];
    float acc = 0.f;
    for (int c = lane; c < p.head_dim; c += 32) acc += ptx::to_float(go[c]) * ptx::to_float(o[c]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) p.delta[row] = acc;
  }
}

// ---------------------------------------------------------------- 2. dK, dV
template <class T, int D>
__global__ void __launch_bounds__(kThreads, 1)
attention_bwd_dkdv_kernel(const JanusAttnBwdArgs p) {
  using Cfg = BwdCfg<D>;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, PITCH = Cfg::PITCH;
  constexpr int NT_Q = BM / 8;        // n-tiles of S^T per warp (16 keys x BM queries)
  constexpr int NT_D = D / 8;         // n-tiles of dK, dV per warp (16 keys x D)
  static_assert(BN == 16 * kWarps, "warp layout");
  JANUS_DYN_SMEM(T, smem);
  T* sK = smem;
  T* sV = sK + BN * PITCH;
  T* sQ = sV + BN * PITCH;
  T* sdO = sQ + BM * PITCH;
  float* sLse = reinterpret_cast<float*>(sdO + BM * PITCH);   // lse * log2e (+inf: P = 0)
  float* sDelta = sLse + BM;
  RowMask* sRow = reinterpret_cast<RowMask*>(sDelta + BM);    // the query tile's row masks
  int32_t* sParams = reinterpret_cast<int32_t*>(sRow + BM);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;
  const int n_key_tiles = (p.Lk + BN - 1) / BN;
  const int64_t bhk = blockIdx.x / n_key_tiles;   // b * Hkv + hk: B * Hkv may pass 65535
  const int hk = (int)(bhk % p.Hkv), b = (int)(bhk / p.Hkv);
  const int j0 = (int)(blockIdx.x % n_key_tiles) * BN, j1 = imin(j0 + BN, p.Lk) - 1;
  const int group = p.H / p.Hkv;
  const int nrb = num_row_blocks<BM>(p.Lq, p.q_split);
  const bool perm = p.mask_kind == KIND_PERMUTATION;

  const T* kg = static_cast<const T*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1];
  const T* vg = static_cast<const T*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[1];
  load_tile_async<BN, D>(sK, kg + (int64_t)j0 * p.k_stride[2], p.k_stride[2], p.Lk - j0,
                         p.head_dim, tid);
  load_tile_async<BN, D>(sV, vg + (int64_t)j0 * p.v_stride[2], p.v_stride[2], p.Lk - j0,
                         p.head_dim, tid);
  ptx::cp_async_commit();
  const SampleMask mask = block_sample_mask(sParams, p.mask_params, p.mask_rank, p.rank_stride,
                                            b, p.q_split, p.mask_kind, p.Lq, p.Lk);

  const float sl2 = p.scale * kLog2e;
  const bool dropout = p.dropout_p > 0.f;
  const uint32_t drop_thr = drop_threshold(p.dropout_p);
  const float inv_keep = dropout ? 1.f / (1.f - p.dropout_p) : 1.f;
  const int key_a = j0 + warp * 16 + g;   // this thread's keys: key_a and key_a + 8
  int key_rank[2] = {0, 0};               // their ranks (permutation kind), loaded once
  if (perm) {
#pragma unroll
    for (int r = 0; r < 2; ++r)
      if (key_a + 8 * r < p.Lk) key_rank[r] = mask.rank[key_a + 8 * r];
  }

  float dk[NT_D][4], dv[NT_D][4];
  zero(dk);
  zero(dv);

  for (int h = hk * group; h < (hk + 1) * group; ++h) {
    const int64_t bh = (int64_t)b * p.H + h;
    const T* qg = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
    const T* dog = static_cast<const T*>(p.dout) + b * p.do_stride[0] + h * p.do_stride[1];
    for (int rb = 0; rb < nrb; ++rb) {
      int i0, i_end;
      row_block<BM>(rb, p.Lq, p.q_split, &i0, &i_end);
      const int cls = mask.tile_class(i0, i_end - 1, j0, j1);
      if (cls == TILE_SKIP) continue;   // block-uniform
      const bool partial = cls != TILE_FULL;

      load_tile_async<BM, D>(sQ, qg + (int64_t)i0 * p.q_stride[2], p.q_stride[2], i_end - i0,
                             p.head_dim, tid);
      load_tile_async<BM, D>(sdO, dog + (int64_t)i0 * p.do_stride[2], p.do_stride[2],
                             i_end - i0, p.head_dim, tid);
      ptx::cp_async_commit();
      for (int r = tid; r < BM; r += kThreads) {
        const int i = i0 + r;
        float l2 = INFINITY, dl = 0.f;
        if (i < i_end) {
          const float l = p.lse[bh * p.Lq + i];
          l2 = l == -INFINITY ? INFINITY : l * kLog2e;
          dl = p.delta[bh * p.Lq + i];
        }
        sLse[r] = l2;
        sDelta[r] = dl;
        if (partial) sRow[r] = row_mask(mask, i, i_end, p.Lk);
      }
      ptx::cp_async_wait<0>();
      __syncthreads();

      // ---- P^T (16 keys x BM queries per warp). Predicate and dropout decisions are bit
      // masks (bit 4*nt + e of the fragment) built in loops that are not unrolled.
      static_assert(NT_Q * 4 <= 32, "one bit per fragment element");
      uint32_t allow = 0xffffffffu, keep = 0xffffffffu;
      if (partial) {
        allow = 0u;
#pragma unroll 1
        for (int x = 0; x < NT_Q * 4; ++x) {
          const int ql = (x >> 2) * 8 + 2 * t + (x & 1), second = (x >> 1) & 1;
          const RowMask rm = sRow[ql];
          if (row_allows(rm, key_a + 8 * second, second ? key_rank[1] : key_rank[0], perm))
            allow |= 1u << x;
        }
      }
      if (dropout)
        keep = key_tile_keep_bits<NT_Q * 4>(p.seed, (int)bh, i0, j0 + warp * 16, lane, drop_thr);
      float pt[NT_Q][4];
      zero(pt);
      warp_gemm_abt<T, NT_Q, D, PITCH, PITCH>(pt, sK + warp * 16 * PITCH, sQ, lane);
#pragma unroll
      for (int nt = 0; nt < NT_Q; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int ql = nt * 8 + 2 * t + (e & 1);
          pt[nt][e] = ((allow >> (4 * nt + e)) & 1u) ? exp2f(pt[nt][e] * sl2 - sLse[ql]) : 0.f;
        }

      // ---- dV += (P^T o Z) dO
      {
        float pd[NT_Q][4];
#pragma unroll
        for (int nt = 0; nt < NT_Q; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            pd[nt][e] = ((keep >> (4 * nt + e)) & 1u) ? pt[nt][e] * inv_keep : 0.f;
        uint32_t pa[NT_Q / 2][4];
        acc_to_a<T, NT_Q>(pa, pd);
        warp_gemm_rb<T, NT_D, NT_Q / 2, PITCH>(dv, pa, sdO, lane);
      }

      // ---- dS^T = P^T o (dP^T o Z - delta); dK += dS^T Q
      {
        float ds[NT_Q][4];
        zero(ds);
        warp_gemm_abt<T, NT_Q, D, PITCH, PITCH>(ds, sV + warp * 16 * PITCH, sdO, lane);
#pragma unroll
        for (int nt = 0; nt < NT_Q; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int ql = nt * 8 + 2 * t + (e & 1);
            const float z = ((keep >> (4 * nt + e)) & 1u) ? inv_keep : 0.f;
            ds[nt][e] = pt[nt][e] * (ds[nt][e] * z - sDelta[ql]);
          }
        uint32_t da[NT_Q / 2][4];
        acc_to_a<T, NT_Q>(da, ds);
        warp_gemm_rb<T, NT_D, NT_Q / 2, PITCH>(dk, da, sQ, lane);
      }
      __syncthreads();   // every warp is done with sQ, sdO, sLse, sDelta, sRow before the
                         // next query tile's loads overwrite them
    }
  }
  ptx::cp_async_wait<0>();   // K, V loads when no tile was live

  // ---- dK = scale dS^T Q, dV: this warp's 16 keys, written once
  T* dkg = static_cast<T*>(p.dk) + b * p.dk_stride[0] + hk * p.dk_stride[1];
  T* dvg = static_cast<T*>(p.dv) + b * p.dv_stride[0] + hk * p.dv_stride[1];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int j = key_a + 8 * r;
    if (j >= p.Lk) continue;
#pragma unroll
    for (int nt = 0; nt < NT_D; ++nt) {
      const int c = nt * 8 + 2 * t;
      if (c >= p.head_dim) continue;
      *reinterpret_cast<uint32_t*>(dkg + j * p.dk_stride[2] + c) =
          ptx::pack2<T>(dk[nt][2 * r] * p.scale, dk[nt][2 * r + 1] * p.scale);
      *reinterpret_cast<uint32_t*>(dvg + j * p.dv_stride[2] + c) =
          ptx::pack2<T>(dv[nt][2 * r], dv[nt][2 * r + 1]);
    }
  }
}

// ---------------------------------------------------------------- 3. dQ
template <class T, int D>
__global__ void __launch_bounds__(kThreads, 1)
attention_bwd_dq_kernel(const JanusAttnBwdArgs p) {
  using Cfg = DqCfg<D>;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, PITCH = Cfg::PITCH;
  constexpr int NT_S = BN / 8;    // n-tiles of S, dP per warp (16 x BN)
  constexpr int NT_D = D / 8;     // n-tiles of dQ per warp (16 x D)
  JANUS_DYN_SMEM(T, smem);
  T* sQ = smem;
  T* sdO = sQ + BM * PITCH;
  T* sK = sdO + BM * PITCH;
  T* sV = sK + BN * PITCH;
  int* sRank = reinterpret_cast<int*>(sV + BN * PITCH);
  int32_t* sParams = sRank + BN;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;
  const int nrb = num_row_blocks<BM>(p.Lq, p.q_split);
  const int64_t bh = blockIdx.x / nrb;   // b * H + h: B * H may pass 65535
  const int h = (int)(bh % p.H), b = (int)(bh / p.H);
  const int hk = h / (p.H / p.Hkv);
  int i0, i_end;
  row_block<BM>((int)(blockIdx.x % nrb), p.Lq, p.q_split, &i0, &i_end);
  const int i1 = i_end - 1;
  const bool perm = p.mask_kind == KIND_PERMUTATION;

  const SampleMask mask = block_sample_mask(sParams, p.mask_params, p.mask_rank, p.rank_stride,
                                            b, p.q_split, p.mask_kind, p.Lq, p.Lk);
  const KeyRanges kr = key_ranges<BN>(mask, i0, i1, p.Lk);
  T* dq = static_cast<T*>(p.dq) + b * p.dq_stride[0] + h * p.dq_stride[1];

  int n = next_key_tile<BN>(mask, kr, 0, i0, i1, p.Lk);
  if (n >= kr.end_tile) {   // no row of the block sees any key: dQ = 0 (block-uniform exit)
    for (int c = tid; c < (i_end - i0) * (p.head_dim / 2); c += kThreads) {
      const int r = c / (p.head_dim / 2), k = (c % (p.head_dim / 2)) * 2;
      *reinterpret_cast<uint32_t*>(dq + (i0 + r) * p.dq_stride[2] + k) = 0u;
    }
    return;
  }

  const T* qg = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
  const T* dog = static_cast<const T*>(p.dout) + b * p.do_stride[0] + h * p.do_stride[1];
  const T* kg = static_cast<const T*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1];
  const T* vg = static_cast<const T*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[1];
  load_tile_async<BM, D>(sQ, qg + (int64_t)i0 * p.q_stride[2], p.q_stride[2], i_end - i0,
                         p.head_dim, tid);
  load_tile_async<BM, D>(sdO, dog + (int64_t)i0 * p.do_stride[2], p.do_stride[2], i_end - i0,
                         p.head_dim, tid);
  load_tile_async<BN, D>(sK, kg + (int64_t)n * BN * p.k_stride[2], p.k_stride[2], p.Lk - n * BN,
                         p.head_dim, tid);
  load_tile_async<BN, D>(sV, vg + (int64_t)n * BN * p.v_stride[2], p.v_stride[2], p.Lk - n * BN,
                         p.head_dim, tid);
  ptx::cp_async_commit();
  load_key_ranks<BN>(sRank, mask, n * BN, p.Lk, tid);

  const float sl2 = p.scale * kLog2e;
  const bool dropout = p.dropout_p > 0.f;
  const uint32_t drop_thr = drop_threshold(p.dropout_p);
  const float inv_keep = dropout ? 1.f / (1.f - p.dropout_p) : 1.f;
  const int row_a = i0 + warp * 16 + g;   // this thread's rows: row_a and row_a + 8
  const RowMask rm0 = row_mask(mask, row_a, i_end, p.Lk);
  const RowMask rm1 = row_mask(mask, row_a + 8, i_end, p.Lk);
  float l2[2], dl[2];   // lse * log2e (+inf: P = 0) and delta of the two rows
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = row_a + 8 * r;
    const float l = i < i_end ? p.lse[bh * p.Lq + i] : -INFINITY;
    l2[r] = l == -INFINITY ? INFINITY : l * kLog2e;
    dl[r] = i < i_end ? p.delta[bh * p.Lq + i] : 0.f;
  }
  float acc[NT_D][4];
  zero(acc);

  while (n < kr.end_tile) {
    const int j0 = n * BN;
    ptx::cp_async_wait<0>();
    __syncthreads();   // K(n), V(n), ranks(n) (and Q, dO) are in shared memory

    float s[NT_S][4], dp[NT_S][4];
    zero(s);
    zero(dp);
    warp_gemm_abt<T, NT_S, D, PITCH, PITCH>(s, sQ + warp * 16 * PITCH, sK, lane);
    warp_gemm_abt<T, NT_S, D, PITCH, PITCH>(dp, sdO + warp * 16 * PITCH, sV, lane);
    // A FULL tile that sticks out past Lk still needs the predicate (zero-filled keys).
    const bool partial = j0 + BN > p.Lk ||
                         mask.tile_class(i0, i1, j0, imin(j0 + BN, p.Lk) - 1) != TILE_FULL;
    const uint32_t allow =
        partial ? row_tile_allow_bits<NT_S>(rm0, rm1, sRank, j0, t, perm) : 0xffffffffu;
    const int next = next_key_tile<BN>(mask, kr, n + 1, i0, i1, p.Lk);
    __syncthreads();   // every warp is done with sV and sRank: V(next) may overwrite them
    if (next < kr.end_tile) {
      load_tile_async<BN, D>(sV, vg + (int64_t)next * BN * p.v_stride[2], p.v_stride[2],
                             p.Lk - next * BN, p.head_dim, tid);
      load_key_ranks<BN>(sRank, mask, next * BN, p.Lk, tid);
    }
    ptx::cp_async_commit();

    const uint32_t keep = dropout ? row_tile_keep_bits<NT_S>(p.seed, (int)bh, row_a, j0, t,
                                                             drop_thr)
                                  : 0xffffffffu;
#pragma unroll
    for (int nt = 0; nt < NT_S; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int bit = 4 * nt + e;
        const float pe = ((allow >> bit) & 1u) ? exp2f(s[nt][e] * sl2 - l2[e >> 1]) : 0.f;
        const float z = ((keep >> bit) & 1u) ? inv_keep : 0.f;
        s[nt][e] = pe * (dp[nt][e] * z - dl[e >> 1]);   // dS
      }
    uint32_t da[NT_S / 2][4];
    acc_to_a<T, NT_S>(da, s);
    warp_gemm_rb<T, NT_D, NT_S / 2, PITCH>(acc, da, sK, lane);
    __syncthreads();   // every warp is done with sK: K(next) may overwrite it
    if (next < kr.end_tile)
      load_tile_async<BN, D>(sK, kg + (int64_t)next * BN * p.k_stride[2], p.k_stride[2],
                             p.Lk - next * BN, p.head_dim, tid);
    ptx::cp_async_commit();
    n = next;
  }
  ptx::cp_async_wait<0>();

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = row_a + 8 * r;
    if (i >= i_end) continue;
    T* row = dq + i * p.dq_stride[2];
#pragma unroll
    for (int nt = 0; nt < NT_D; ++nt) {
      const int c = nt * 8 + 2 * t;
      if (c < p.head_dim)
        *reinterpret_cast<uint32_t*>(row + c) =
            ptx::pack2<T>(acc[nt][2 * r] * p.scale, acc[nt][2 * r + 1] * p.scale);
    }
  }
}

inline int grid_stride_blocks(int64_t work, int per_block) {
  const int64_t n = (work + per_block - 1) / per_block;
  return (int)(n < 1 ? 1 : (n > 4096 ? 4096 : n));
}

template <class T, int D>
cudaError_t launch_bwd(const JanusAttnBwdArgs& a, cudaStream_t stream) {
  const int64_t rows = (int64_t)a.B * a.H * a.Lq;
  const int64_t dkdv_blocks = (int64_t)a.B * a.Hkv * ((a.Lk + BwdCfg<D>::BN - 1) / BwdCfg<D>::BN);
  const int64_t dq_blocks = (int64_t)a.B * a.H * num_row_blocks<DqCfg<D>::BM>(a.Lq, a.q_split);
  if (dkdv_blocks > kGridXMax || dq_blocks > kGridXMax) return cudaErrorInvalidValue;
  if (rows > 0) {
    auto delta = attention_bwd_delta_kernel<T>;
    JANUS_LAUNCH(delta, dim3(grid_stride_blocks(rows, kWarps)), dim3(kThreads), 0, stream, a);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  if (dkdv_blocks > 0) {
    auto kernel = attention_bwd_dkdv_kernel<T, D>;
    const int smem = BwdCfg<D>::kSmemBytes;
    cudaError_t e = cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return e;
    JANUS_LAUNCH(kernel, dim3((unsigned)dkdv_blocks), dim3(kThreads), smem, stream, a);
    e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  if (dq_blocks > 0) {
    auto kernel = attention_bwd_dq_kernel<T, D>;
    const int smem = DqCfg<D>::kSmemBytes;
    cudaError_t e = cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return e;
    JANUS_LAUNCH(kernel, dim3((unsigned)dq_blocks), dim3(kThreads), smem, stream, a);
    return cudaGetLastError();
  }
  return cudaSuccess;
}

}  // namespace attn
}  // namespace janus

using namespace janus::attn;

extern "C" cudaError_t janus_cuda_attention_bwd(const JanusAttnBwdArgs* a, cudaStream_t stream) {
  if (!a || a->B < 0 || a->H <= 0 || a->Hkv <= 0 || a->H % a->Hkv != 0 || a->Lq < 0 ||
      a->Lk < 0 || a->q_split < 0 || a->q_split > a->Lq || a->head_dim < 8 ||
      a->head_dim > 128 || a->head_dim % 8 != 0 ||
      !janus::kind_valid(a->mask_kind) ||
      (a->mask_kind != janus::KIND_WINDOW && !a->mask_rank) || !(a->dropout_p >= 0.f) ||
      !(a->dropout_p < 1.f))
    return cudaErrorInvalidValue;
  const int64_t* strides[] = {a->do_stride, a->q_stride, a->k_stride, a->v_stride,
                              a->o_stride, a->dq_stride, a->dk_stride, a->dv_stride};
  for (const int64_t* s : strides)
    for (int d = 0; d < 3; ++d)
      if (s[d] % 8) return cudaErrorInvalidValue;
  const void* ptrs[] = {a->dout, a->q, a->k, a->v, a->out, a->dq, a->dk, a->dv};
  for (const void* ptr : ptrs)
    if (!aligned16(ptr)) return cudaErrorInvalidValue;
  if (a->B == 0) return cudaSuccess;
  const bool d64 = a->head_dim <= 64;
  if (a->dtype == JANUS_DTYPE_F16)
    return d64 ? launch_bwd<__half, 64>(*a, stream) : launch_bwd<__half, 128>(*a, stream);
  if (a->dtype == JANUS_DTYPE_BF16)
    return d64 ? launch_bwd<__nv_bfloat16, 64>(*a, stream)
               : launch_bwd<__nv_bfloat16, 128>(*a, stream);
  return cudaErrorInvalidValue;
}

extern "C" int janus_cuda_attention_config(int which, int head_dim, int* block_m, int* block_n,
                                           int* threads, int* smem_bytes) {
  if (head_dim < 8 || head_dim > 128 || head_dim % 8) return -1;
  const bool d64 = padded_head_dim(head_dim) == 64;
  if (which == 0) {
    *block_m = d64 ? FwdCfg<64>::BM : FwdCfg<128>::BM;
    *block_n = d64 ? FwdCfg<64>::BN : FwdCfg<128>::BN;
    *smem_bytes = d64 ? FwdCfg<64>::kSmemBytes : FwdCfg<128>::kSmemBytes;
  } else if (which == 1) {
    *block_m = d64 ? BwdCfg<64>::BM : BwdCfg<128>::BM;
    *block_n = d64 ? BwdCfg<64>::BN : BwdCfg<128>::BN;
    *smem_bytes = d64 ? BwdCfg<64>::kSmemBytes : BwdCfg<128>::kSmemBytes;
  } else if (which == 2) {
    *block_m = d64 ? DqCfg<64>::BM : DqCfg<128>::BM;
    *block_n = d64 ? DqCfg<64>::BN : DqCfg<128>::BN;
    *smem_bytes = d64 ? DqCfg<64>::kSmemBytes : DqCfg<128>::kSmemBytes;
  } else {
    return -1;
  }
  *threads = kThreads;
  return 0;
}
