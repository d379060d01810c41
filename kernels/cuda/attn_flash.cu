// attn_flash: FlashAttention-2-style attention on bf16 tensor cores — the encoder's bidirectional attention
// with key padding (es_op_attention_dense) and the decoder's causal prefill over the paged cache, cached prefix
// included (es_op_attention_paged for sequences with more than ATTN_DECODE_MAX_Q new tokens). See attn_fast.h.
//
// Napkin math (H100 SXM: 989 TFLOP/s dense bf16 by the datasheet, ~750-800 measured through cuBLASLt, 3.35 TB/s
// HBM3; H200: the same tensor cores, 4.8 TB/s; mma.sync, which this file uses, tops out well below the wgmma
// rate on Hopper):
//   encoder, 30 s clip: T = 1500, H = 20, D = 64: 4·T²·H·D = 11.5 GFLOP per layer, 369 GFLOP for 32 layers;
//     q, k, v, out = 4·T·H·D·2 B = 15.4 MB per layer (0.49 GB for 32: 0.15 ms at 3.35 TB/s) — compute-bound.
//     Floor at 800 TFLOP/s: 0.46 ms for 32 layers. Issue target: <= 1.5 ms, i.e. >= 246 TFLOP/s (~31%).
//   prefill at 2k tokens (Qwen2-7B: H = 32, D = 128), causal: 4·D·H·T(T+1)/2 = 34.4 GFLOP per layer; q, k, v,
//     out = 67 MB per layer (20 µs at 3.35 TB/s) against 43 µs of FLOPs at 800 TFLOP/s — compute-bound.
//     Issue target: >= 50% of the measured bf16 GEMM rate, i.e. <= ~86 µs per layer.
//
// Structure (API-NOTES §B4, FA2 loop order): one block of 4 warps per (query tile, head, sequence). Each warp
// owns 16·MT query rows (MT = 2 at D = 64, 1 at D = 128: 128 or 64 rows per block), holds their Q fragments
// and the fp32 output accumulators in registers for the whole kernel and loops over KV tiles of 64 keys. K and
// V tiles are staged in shared memory by cp.async, double-buffered (tile t + 1 loads while tile t computes),
// rows zero-filled past the last key. Per tile: S = Q·Kᵀ (mma m16n8k16, fp32), mask, online softmax per row
// (row max over the 4 lanes sharing a row by shuffles; attn_math.h's helpers, −inf safe), P rounded to bf16 and
// fed from registers straight into O += P·V (the C fragment of S is the A fragment of P). l is summed per lane
// and reduced across the 4 lanes at the end; O / l is written as bf16. The score matrix never leaves registers.
// Every per-lane index (fragment rows/columns, ldmatrix row addresses, tile-copy chunks, shuffle partners, row
// limits) comes from attn_mma_math.h, which test_attn_mma_emu runs in an emulated warp on the CPU.
// Shared memory: K and V, 2 buffers, 64 rows of D + 8 bf16 (the 16-byte pad makes every ldmatrix phase hit 8
// distinct 16-byte bank groups): 36 KB at D = 64, 68 KB at D = 128 (opt-in above 48 KB, attn_fast_init).
//
// Masking: row r may see keys j < lim(r) — causal: lim(r) = its position + 1; encoder: lim = valid_len[b] for
// every row. A tile entirely below the block's smallest lim needs no mask; the loop stops at the block's largest
// lim. Rows of the tile past the end of the sequence (padding) read zero Q, see the last valid row's keys and
// are not written. A tile fully masked for a row is an exact no-op for it (alpha = 2^0 = 1, p = 0), so a row's
// result does not depend on which other rows share its tile.
//
// Numerics, against the simple kernel (cuda_attention.cu, transformers' eager rounding points): scores stay
// fp32 (not rounded to bf16 before and after the scale), the scale is applied inside exp2 (one FFMA), and the
// probabilities are rounded to bf16 unnormalised (P·V on tensor cores) while l sums them in fp32 — as
// FlashAttention does; the output is rounded once. Closer to the fp32 reference than the simple kernel.
#include <math.h>

#include "attn_fast.h"
#include "attn_flash.cuh"
#include "attn_math.h"
#include "attn_mma.cuh"
#include "attn_mma_math.h"
#include "cuda_common.cuh"
#include "fp8_cvt.cuh"

#define FA_WARPS 4
#define FA_THREADS (FA_WARPS * 32)
#define FA_BC 64    // keys per KV tile
#define FA_PAD 8    // bf16 of padding per shared-memory row (16 bytes)

template <int D> struct fa_cfg {
  static constexpr int MT = D == 64 ? 2 : 1;                      // 16-row m-tiles per warp
  static constexpr int BR = FA_WARPS * 16 * MT;                   // query rows per block
  static constexpr int LDS = D + FA_PAD;                          // shared-memory row stride (elements)
  static constexpr int TILE = FA_BC * LDS;                        // elements of one K or V tile buffer
  static constexpr size_t SMEM = 4 * (size_t)TILE * sizeof(bf16); // K, V × 2 buffers
  static_assert(D % 32 == 0 && (FA_BC * D / 8) % FA_THREADS == 0, "tile loads must divide evenly");
};

// 8 e4m3 codes (one 8-byte load) times their row's scale, as 8 bf16 in one 16-byte word (column order).
__device__ __forceinline__ uint4 fa_fp8x8_to_bf16x8(const uint8_t *codes, float scale) {
  float f[8];
  fp8x8_to_f32(*reinterpret_cast<const uint2 *>(codes), f);
  return make_uint4(pack_bf16(f[0] * scale, f[1] * scale), pack_bf16(f[2] * scale, f[3] * scale),
                    pack_bf16(f[4] * scale, f[5] * scale), pack_bf16(f[6] * scale, f[7] * scale));
}

// Issues the copies of keys j0 .. j0 + 63 into ks / vs (row stride LDS); rows j >= kv_end are zero-filled.
// From an fp8 KV cache the chunks are loaded, converted and stored by the thread itself (not asynchronous: the
// wait for the next tile's loads happens here, before the current tile's mma, hidden only by the other blocks
// on the SM — a prefill over an fp8 cache is expected to run somewhat slower than over bf16; measured by
// `earshot bench attention`).
template <int D, class KV>
__device__ __forceinline__ void fa_load_tile(bf16 *ks, bf16 *vs, const KV &src, int j0, int kv_end) {
  constexpr int CH = D / 8, LDS = fa_cfg<D>::LDS; // 16-byte chunks per row
#pragma unroll
  for (int i = 0; i < FA_BC * CH / FA_THREADS; i++) {
    int r, col;
    attn_fa_chunk(threadIdx.x + i * FA_THREADS, CH, &r, &col);
    const int j = j0 + r;
    bool ok = j < kv_end;
    int js = ok ? j : 0; // a valid address; nothing is read from it when !ok
    if constexpr (KV::kFp8) {
      uint4 kw = make_uint4(0u, 0u, 0u, 0u), vw = kw;
      if (ok) {
        const int64_t rk = src.krow(js), rv = src.vrow(js);
        kw = fa_fp8x8_to_bf16x8(src.codes + rk * D + col, src.scale[rk]);
        vw = fa_fp8x8_to_bf16x8(src.codes + rv * D + col, src.scale[rv]);
      }
      *reinterpret_cast<uint4 *>(ks + r * LDS + col) = kw;
      *reinterpret_cast<uint4 *>(vs + r * LDS + col) = vw;
    } else {
      cp_async_16(ks + r * LDS + col, src.krow(js) + col, ok);
      cp_async_16(vs + r * LDS + col, src.vrow(js) + col, ok);
    }
  }
}

// The block's attention for its query tile t over keys from src. sl = scale·log2(e) > 0.
template <int D, class KV> __device__ __forceinline__ void fa_tile(const fa_rows_t &t, const KV &src, float sl) {
  using C = fa_cfg<D>;
  constexpr int MT = C::MT, LDS = C::LDS, KS = D / 16, NT = FA_BC / 8, DT = D / 8;
  extern __shared__ __align__(16) unsigned char fa_smem[];
  bf16 *ks = reinterpret_cast<bf16 *>(fa_smem), *vs = ks + 2 * C::TILE;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int kv_end = attn_fa_kv_end(t.causal, t.lim0, t.n_rows); // the largest lim of the tile

  // Q fragments (A layout, attn_mma.cuh) straight from global memory, zeros for padding rows; each row's lim.
  uint32_t qf[MT][KS][4];
  int lim[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
    const int rw = attn_fa_warp_row(warp, mt, MT);
#pragma unroll
    for (int hf = 0; hf < 2; hf++) // C floats 2hf, 2hf + 1 are row attn_mma_c_row(lane, 2hf)
      lim[mt][hf] = attn_fa_row_lim(t.causal, t.lim0, t.n_rows, rw + attn_mma_c_row(lane, 2 * hf));
#pragma unroll
    for (int kk = 0; kk < KS; kk++)
#pragma unroll
      for (int reg = 0; reg < 4; reg++) {
        const int r = rw + attn_mma_a_row(lane, reg);
        qf[mt][kk][reg] =
            r < t.n_rows
                ? *reinterpret_cast<const uint32_t *>(t.q + (int64_t)r * t.ldq + kk * 16 + attn_mma_a_col(lane, reg, 0))
                : 0u;
      }
  }

  float o[MT][DT][4], m[MT][2], l[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
#pragma unroll
    for (int dt = 0; dt < DT; dt++) o[mt][dt][0] = o[mt][dt][1] = o[mt][dt][2] = o[mt][dt][3] = 0.0f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.0f;
  }

  const int n_tiles = (kv_end + FA_BC - 1) / FA_BC;
  fa_load_tile<D>(ks, vs, src, 0, kv_end);
  cp_async_commit();
  for (int it = 0; it < n_tiles; it++) {
    const int cur = it & 1;
    if (it + 1 < n_tiles) { // the next tile goes to the other buffer, last read in iteration it − 1
      fa_load_tile<D>(ks + (cur ^ 1) * C::TILE, vs + (cur ^ 1) * C::TILE, src, (it + 1) * FA_BC, kv_end);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads(); // tile it is in shared memory for every thread
    const bf16 *kb = ks + cur * C::TILE, *vb = vs + cur * C::TILE;

    // S = Q·Kᵀ: ldmatrix x4 gives the B fragments of two k-steps (kk, kk + 1) of one 8-key n-tile.
    float s[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
      for (int nt = 0; nt < NT; nt++) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KS; kk += 2)
#pragma unroll
      for (int nt = 0; nt < NT; nt++) {
        uint32_t b[4];
        ldmatrix_x4(b, kb + attn_fa_k_ldsm_off(lane, nt, kk, LDS));
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
          mma_bf16_16816(s[mt][nt], qf[mt][kk], b[0], b[1]);
          mma_bf16_16816(s[mt][nt], qf[mt][kk + 1], b[2], b[3]);
        }
      }

    // mask, online softmax; s becomes p
    const int j0 = it * FA_BC;
    const bool need_mask = attn_fa_tile_needs_mask(j0, FA_BC, t.lim0);
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
      for (int hf = 0; hf < 2; hf++) {
        float mx = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
          for (int e = 0; e < 2; e++) {
            float &x = s[mt][nt][2 * hf + e];
            if (need_mask && j0 + nt * 8 + attn_mma_c_col(lane, 2 * hf + e) >= lim[mt][hf]) x = -INFINITY;
            mx = fmaxf(mx, x);
          }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, ATTN_MMA_ROW_XOR_A)); // the 4 lanes of a row
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, ATTN_MMA_ROW_XOR_B));
        float alpha;
        const float mn = attn_online_max(m[mt][hf], mx, sl, &alpha), mu = attn_safe_max(mn);
        m[mt][hf] = mn;
        float ls = l[mt][hf] * alpha;
#pragma unroll
        for (int dt = 0; dt < DT; dt++) {
          o[mt][dt][2 * hf] *= alpha;
          o[mt][dt][2 * hf + 1] *= alpha;
        }
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
          for (int e = 0; e < 2; e++) {
            float p = attn_p(s[mt][nt][2 * hf + e], sl, mu);
            s[mt][nt][2 * hf + e] = p;
            ls += p;
          }
        l[mt][hf] = ls;
      }

      // O += P·V: the C fragments of n-tiles 2kc, 2kc + 1 of S are the A fragment of k-step kc of P; ldmatrix
      // x4.trans gives the B fragments of two 8-column n-tiles (2dp, 2dp + 1) of V.
#pragma unroll
    for (int kc = 0; kc < FA_BC / 16; kc++) {
      uint32_t pa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int reg = 0; reg < 4; reg++) {
          const float *sc = s[mt][2 * kc + attn_mma_p_ntile(reg)];
          pa[mt][reg] = pack_bf16(sc[attn_mma_p_elem(reg)], sc[attn_mma_p_elem(reg) + 1]);
        }
#pragma unroll
      for (int dp = 0; dp < D / 16; dp++) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, vb + attn_fa_v_ldsm_off(lane, kc, dp, LDS));
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
          mma_bf16_16816(o[mt][2 * dp], pa[mt], b[0], b[1]);
          mma_bf16_16816(o[mt][2 * dp + 1], pa[mt], b[2], b[3]);
        }
      }
    }
    __syncthreads(); // every warp is done with buffer cur before iteration it + 1 refills it
  }

  // l over the 4 lanes of each row, then O / l as bf16 pairs (columns 2tq, 2tq + 1 of each 8-column n-tile)
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
      float L = l[mt][hf];
      L += __shfl_xor_sync(0xffffffffu, L, ATTN_MMA_ROW_XOR_A);
      L += __shfl_xor_sync(0xffffffffu, L, ATTN_MMA_ROW_XOR_B);
      const float inv = attn_inv_l(L);
      const int r = attn_fa_warp_row(warp, mt, MT) + attn_mma_c_row(lane, 2 * hf);
      if (r < t.n_rows) {
        bf16 *orow = t.out + (int64_t)r * t.ldo;
#pragma unroll
        for (int dt = 0; dt < DT; dt++)
          *reinterpret_cast<uint32_t *>(orow + dt * 8 + attn_mma_c_col(lane, 2 * hf)) =
              pack_bf16(o[mt][dt][2 * hf] * inv, o[mt][dt][2 * hf + 1] * inv);
      }
    }
}

// ---- kernels ---------------------------------------------------------------------------------------------------

// Grid (max query tiles, H, n_seqs); the highest tile index first (the longest causal rows start earliest).
// Sequences with fewer than min_q new tokens belong to the decode kernel. out (n_tokens, H, D); q (n_tokens, ldq);
// kv (L, n_blocks, 2, H, 16, D); the batch arrays on the device. All bf16.
template <int D>
__global__ void __launch_bounds__(FA_THREADS)
    fa_prefill_kernel(bf16 *out, const bf16 *q, int64_t ldq, const bf16 *kv, int layer, int n_blocks, int H, float sl,
                      const int32_t *q_start, const int32_t *ctx_len, const int32_t *block_table, int max_blocks,
                      int min_q) {
  fa_rows_t t;
  fa_paged_kv_t src;
  if (!fa_prefill_block(D, fa_cfg<D>::BR, gridDim.x - 1 - blockIdx.x, blockIdx.y, blockIdx.z, out, q, ldq, kv, layer,
                        n_blocks, H, q_start, ctx_len, block_table, max_blocks, min_q, &t, &src))
    return; // block-uniform: no barrier is skipped by part of the block
  fa_tile<D>(t, src, sl);
}

// The same over an fp8 KV cache: codes (L, n_blocks, 2, H, 16, D) e4m3 and scales (L, n_blocks, 2, H, 16).
template <int D>
__global__ void __launch_bounds__(FA_THREADS)
    fa_prefill_fp8_kernel(bf16 *out, const bf16 *q, int64_t ldq, const uint8_t *codes, const float *scales, int layer,
                          int n_blocks, int H, float sl, const int32_t *q_start, const int32_t *ctx_len,
                          const int32_t *block_table, int max_blocks, int min_q) {
  fa_rows_t t;
  fa_paged_kv_t where; // the tile and the sequence's block-table row; its kv pointer is not used
  if (!fa_prefill_block(D, fa_cfg<D>::BR, gridDim.x - 1 - blockIdx.x, blockIdx.y, blockIdx.z, out, q, ldq, NULL, layer,
                        n_blocks, H, q_start, ctx_len, block_table, max_blocks, min_q, &t, &where))
    return; // block-uniform
  const fa_paged_fp8_kv_t src = {codes, scales, where.table, where.layer, where.n_blocks, where.H, where.h, where.D};
  fa_tile<D>(t, src, sl);
}

// Grid (ceil(T / BR), H, nb) for batch entries b0 .. b0 + nb − 1. q/k/v (B, T, ld*); out (B, T, H, D). bf16.
template <int D>
__global__ void __launch_bounds__(FA_THREADS)
    fa_dense_kernel(bf16 *out, const bf16 *q, int64_t ldq, const bf16 *k, int64_t ldk, const bf16 *v, int64_t ldv,
                    int64_t T, int H, float sl, int64_t b0, fa_lens_t lens) {
  fa_rows_t t;
  fa_dense_kv_t src;
  fa_dense_block(D, fa_cfg<D>::BR, blockIdx.x, blockIdx.y, blockIdx.z, out, q, ldq, k, ldk, v, ldv, T, H, b0, lens, &t,
                 &src);
  fa_tile<D>(t, src, sl);
}

// ---- launchers ----------------------------------------------------------------------------------------------------

template <int D> static int fa_set_smem(es_error_t *err) {
  const int bytes = (int)fa_cfg<D>::SMEM;
  ES_CUDA_TRY(err, cudaFuncSetAttribute(fa_prefill_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  ES_CUDA_TRY(err, cudaFuncSetAttribute(fa_prefill_fp8_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  ES_CUDA_TRY(err, cudaFuncSetAttribute(fa_dense_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  return ES_OK;
}

extern "C" int attn_fast_init(cuda_backend_t *cb, es_error_t *err) {
  if (cb->smem_optin < fa_cfg<128>::SMEM)
    return es_fail(err, ES_EUNSUPPORTED,
                   "attention: the flash kernel needs %zu bytes of shared memory per block "
                   "(device: %zu)",
                   fa_cfg<128>::SMEM, cb->smem_optin);
  int rc = fa_set_smem<64>(err);
  return rc ? rc : fa_set_smem<128>(err);
}

extern "C" int attn_flash_q_tile(const cuda_backend_t *cb, int D) {
  if (cb->flash == CUDA_FLASH_WGMMA && !cb->base.opts.kv_fp8) return attn_wgmma_q_tile(D);
  return D == 64 ? fa_cfg<64>::BR : fa_cfg<128>::BR;
}

template <int D>
static int fa_prefill(cuda_backend_t *cb, int layer, void *out, const void *q, int64_t ldq, int H, float sl, int min_q,
                      int max_q_tiles, es_error_t *err) {
  const es_backend_t *be = &cb->base;
  dim3 grid((unsigned)max_q_tiles, (unsigned)H, (unsigned)be->batch.n_seqs);
  if (be->opts.kv_fp8)
    fa_prefill_fp8_kernel<D><<<grid, FA_THREADS, fa_cfg<D>::SMEM, cb->stream>>>(
        (bf16 *)out, (const bf16 *)q, ldq, (const uint8_t *)cb->kv, cb->kv_scale, layer, be->kv_blocks, H, sl,
        cb->d_q_start, cb->d_ctx_len, cb->d_block_table, be->batch.max_blocks, min_q);
  else
    fa_prefill_kernel<D><<<grid, FA_THREADS, fa_cfg<D>::SMEM, cb->stream>>>(
        (bf16 *)out, (const bf16 *)q, ldq, (const bf16 *)cb->kv, layer, be->kv_blocks, H, sl, cb->d_q_start,
        cb->d_ctx_len, cb->d_block_table, be->batch.max_blocks, min_q);
  ES_CUDA_LAUNCHED(err);
  return ES_OK;
}

extern "C" int attn_flash_prefill(cuda_backend_t *cb, int layer, void *out, const void *q, int64_t ldq, int H, int D,
                                  float scale, int min_q, int max_q_tiles, es_error_t *err) {
  const float sl = scale * ATTN_LOG2E;
  if (cb->flash == CUDA_FLASH_WGMMA && !cb->base.opts.kv_fp8) // the wgmma kernel reads bf16 caches only
    return attn_wgmma_prefill(cb, layer, out, q, ldq, H, D, sl, min_q, max_q_tiles, err);
  return D == 64 ? fa_prefill<64>(cb, layer, out, q, ldq, H, sl, min_q, max_q_tiles, err)
                 : fa_prefill<128>(cb, layer, out, q, ldq, H, sl, min_q, max_q_tiles, err);
}

template <int D>
static int fa_dense(cuda_backend_t *cb, void *out, const void *q, int64_t ldq, const void *k, int64_t ldk,
                    const void *v, int64_t ldv, int64_t B, int64_t T, int H, float sl, const int32_t *valid_len,
                    es_error_t *err) {
  constexpr int BR = fa_cfg<D>::BR;
  for (int64_t b0 = 0; b0 < B; b0 += FA_LENS) {
    fa_lens_t lens;
    const int64_t nb = fa_lens_at(valid_len, B, b0, &lens);
    dim3 grid((unsigned)((T + BR - 1) / BR), (unsigned)H, (unsigned)nb);
    fa_dense_kernel<D><<<grid, FA_THREADS, fa_cfg<D>::SMEM, cb->stream>>>(
        (bf16 *)out, (const bf16 *)q, ldq, (const bf16 *)k, ldk, (const bf16 *)v, ldv, T, H, sl, b0, lens);
    ES_CUDA_LAUNCHED(err);
  }
  return ES_OK;
}

extern "C" int attn_flash_dense(cuda_backend_t *cb, void *out, const void *q, int64_t ldq, const void *k, int64_t ldk,
                                const void *v, int64_t ldv, int64_t B, int64_t T, int H, int D, float scale,
                                const int32_t *valid_len, es_error_t *err) {
  const float sl = scale * ATTN_LOG2E;
  if (cb->flash == CUDA_FLASH_WGMMA)
    return attn_wgmma_dense(cb, out, q, ldq, k, ldk, v, ldv, B, T, H, D, sl, valid_len, err);
  return D == 64 ? fa_dense<64>(cb, out, q, ldq, k, ldk, v, ldv, B, T, H, sl, valid_len, err)
                 : fa_dense<128>(cb, out, q, ldq, k, ldk, v, ldv, B, T, H, sl, valid_len, err);
}
