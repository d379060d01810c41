// attn_wgmma: the flash-attention kernels of attn_flash.cu — the encoder's bidirectional attention with key
// padding and the decoder's causal prefill over the paged cache — on Hopper's warpgroup MMA (wgmma.mma_async,
// sm_90a only), for the same calls and the same numerics. Compiled for sm_90a alone (its own CMake target);
// attn_wgmma_init() finds out whether this device can run it (cb->wgmma_ok), and cuda_backend_set_flash() /
// EARSHOT_FLASH choose it (attn_fast.h, cuda_hooks.h).
//
// Napkin math: see attn_flash.cu (encoder 11.5 GFLOP per layer, target <= 1.5 ms for 32 layers, >= 246 TFLOP/s;
// prefill 2k, 34.4 GFLOP per layer, target >= 50% of the measured GEMM rate, ~400 TFLOP/s on an H200). mma.sync
// reached 206 and 161 TFLOP/s there (docs/PERF.md); wgmma is the instruction that feeds Hopper's tensor cores at
// their full rate (CUTLASS and FlashAttention-3 reach 60–75% of the datasheet with it).
//
// Structure: a block is WG_NWG warpgroups (128 threads each) over BR = 64·WG_NWG query rows; warpgroup w owns
// rows 64w .. 64w + 63, warp i of it rows 16i .. 16i + 15 of those. Q stays in registers for the whole kernel
// (the register A operand of wgmma has the mma.sync m16n8k16 A layout per warp). K and V tiles of BC = 64 keys
// are copied by cp.async (all threads of the block; WG_STAGES = 4 buffers, tiles i + 1 and i + 2 loading while
// tile i computes) into the 128-byte-swizzled layout of attn_wgmma_math.h, which serves as the K-major B operand
// of S = Q·Kᵀ and, with imm-trans-b, as the MN-major B operand of O = P·V. Per tile and warpgroup (wg_tile's
// pipeline): S_i = Q·K_iᵀ (D/16 wgmma k-steps) and O += P_{i−1}·V_{i−1} (BC/16 k-steps) issued back to back,
// the wait for S_i only, mask and online softmax on S_i's accumulators — whose layout per warp is the mma.sync C
// fragment repeated per 8 columns, so attn_mma_math.h's row, column and shuffle helpers apply unchanged — while
// the P·V runs, then the wait for it, the rescale of O and P_i rounded to bf16 into A registers.
// Shared memory written by cp.async (generic proxy) is fenced to the async proxy (fence.proxy.async) by each
// writing thread before the barrier that precedes the wgmmas that read it.
// Shared memory: K and V, 4 buffers of BC·D bf16 each (128 KB at D = 128: one block per SM, with 185–188
// registers; 64 KB at D = 64: two) + 1 KB to align the tiles to the 1024-byte swizzle atom.
//
// Masking, padding rows, the −inf-safe online softmax and the rounding points are those of attn_flash.cu (the
// same helpers): results agree with it to the tensor cores' accumulation order.
#include <math.h>

#include "attn_fast.h"
#include "attn_flash.cuh"
#include "attn_math.h"
#include "attn_mma.cuh"
#include "attn_mma_math.h"
#include "attn_wgmma_math.h"
#include "cuda_common.cuh"

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "attn_wgmma.cu is compiled for sm_90a only (kernels/CMakeLists.txt)"
#endif

#define WG_NWG 2                  // warpgroups per block
#define WG_THREADS (WG_NWG * 128) // threads per block
#define WG_STAGES 4               // K/V tile buffers: tile i in buffer i % 4 (wg_tile's pipeline)

template <int D> struct wg_cfg {
  static constexpr int BR = 64 * WG_NWG;                          // query rows per block
  static constexpr int BC = 64;                                   // keys per K/V tile
  static constexpr int TILE = BC * D * 2;                         // bytes of one K or V tile
  static constexpr size_t SMEM = 2 * WG_STAGES * (size_t)TILE + ATTN_WG_ATOM; // K, V × stages, + alignment
  static_assert(BC % 16 == 0 && D % 64 == 0 && (BC * D / 8) % WG_THREADS == 0, "tile shape");
  static_assert(TILE % ATTN_WG_ATOM == 0, "tiles stay atom-aligned");
};

// ---- wgmma (PTX ISA "Asynchronous Warpgroup Level Matrix Multiply-Accumulate") --------------------------------

// d (64 × 64, this thread's 32 floats) += a (64 × 16 bf16, registers) · b (16 × 64 bf16, descriptor); TB: b is
// MN-major (imm-trans-b).
template <int TB> __device__ __forceinline__ void wgmma_rs_n64(float *d, const uint32_t *a, uint64_t b, int sd) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %38, 0;\nwgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
               "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
               "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
               "}, {%32, %33, %34, %35}, %36, p, 1, 1, %37;\n}\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                 "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                 "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                 "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(TB), "r"(sd));
}

// d (64 × 128, this thread's 64 floats) += a (64 × 16 bf16, registers) · b (16 × 128 bf16, descriptor); TB: b is
// MN-major (imm-trans-b).
template <int TB> __device__ __forceinline__ void wgmma_rs_n128(float *d, const uint32_t *a, uint64_t b, int sd) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %70, 0;\nwgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
               "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
               "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
               "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
               "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
               "}, {%64, %65, %66, %67}, %68, p, 1, 1, %69;\n}\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                 "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                 "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                 "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
                 "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
                 "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
                 "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
                 "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(TB), "r"(sd));
}

template <int N, int TB> __device__ __forceinline__ void wgmma_rs(float *d, const uint32_t *a, uint64_t b, int sd = 1) {
  static_assert(N == 64 || N == 128, "wgmma widths instantiated here");
  if constexpr (N == 64)
    wgmma_rs_n64<TB>(d, a, b, sd);
  else
    wgmma_rs_n128<TB>(d, a, b, sd);
}

// Orders this thread's register writes (accumulators, A fragments) before the wgmmas that follow.
__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
// Waits until at most N of this warpgroup's committed wgmma groups are still running: the others' accumulators
// may be read and their A registers written.
template <int N> __device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accesses of a register a wgmma reads or writes (accumulator, A fragment) across
// the wgmma's issue and wait (CUTLASS warpgroup_fence_operand).
__device__ __forceinline__ void wgmma_pin(float &x) {
  asm volatile("" : "+f"(x)::"memory");
}
__device__ __forceinline__ void wgmma_pin(uint32_t &x) {
  asm volatile("" : "+r"(x)::"memory");
}
// Makes this thread's generic-proxy writes to shared memory (cp.async, st.shared) visible to the async proxy.
__device__ __forceinline__ void fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// ---- the kernel body -----------------------------------------------------------------------------------------

// Issues the copies of keys j0 .. j0 + BC − 1 into the swizzled tiles kt / vt; rows j >= kv_end are zero-filled.
template <int D, class KV>
__device__ __forceinline__ void wg_load_tile(unsigned char *kt, unsigned char *vt, const KV &src, int j0, int kv_end) {
  constexpr int CH = D / 8, BC = wg_cfg<D>::BC; // 16-byte chunks per key
#pragma unroll
  for (int i = 0; i < BC * CH / WG_THREADS; i++) {
    int r, col;
    attn_fa_chunk(threadIdx.x + i * WG_THREADS, CH, &r, &col);
    const int j = j0 + r;
    const bool ok = j < kv_end;
    const int js = ok ? j : 0; // a valid address; nothing is read from it when !ok
    const uint32_t off = attn_wg_tile_off(r, col, BC);
    cp_async_16(kt + off, src.krow(js) + col, ok);
    cp_async_16(vt + off, src.vrow(js) + col, ok);
  }
}

// S = Q·Kᵀ for one K tile (shared-memory address kb), issued and committed, not waited for. s: the accumulators
// (their old values are not read: the first k-step does not accumulate).
template <int D> __device__ __forceinline__ void wg_qk(float *s, const uint32_t (*qf)[4], uint32_t kb) {
  constexpr int BC = wg_cfg<D>::BC, KS = D / 16;
#pragma unroll
  for (int i = 0; i < BC / 2; i++) wgmma_pin(s[i]);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < KS; kk++)
    wgmma_rs<BC, 0>(s, qf[kk], attn_wg_desc(kb + attn_wg_k_start(kk, BC), ATTN_WG_K_LBO, ATTN_WG_K_SBO), kk > 0);
  wgmma_commit();
}

// O += P·V for one V tile (shared-memory address vb), P in A fragments; issued and committed, not waited for.
template <int D> __device__ __forceinline__ void wg_pv(float *o, uint32_t (*pa)[4], uint32_t vb) {
  constexpr int BC = wg_cfg<D>::BC, KC = BC / 16;
#pragma unroll
  for (int kc = 0; kc < KC; kc++)
#pragma unroll
    for (int reg = 0; reg < 4; reg++) wgmma_pin(pa[kc][reg]);
#pragma unroll
  for (int i = 0; i < D / 2; i++) wgmma_pin(o[i]);
  wgmma_fence();
#pragma unroll
  for (int kc = 0; kc < KC; kc++)
    wgmma_rs<D, 1>(o, pa[kc], attn_wg_desc(vb + attn_wg_v_start(kc), attn_wg_v_lbo(BC), ATTN_WG_V_SBO));
  wgmma_commit();
}

// Mask and online softmax of key tile j0 .. j0 + BC − 1 on this thread's S accumulators (float 4·nt + e: the
// C fragment float e of n-tile nt): updates m and l, turns s into p, and returns in alpha the factor O must be
// rescaled by (attn_flash.cu's arithmetic, the same helpers).
template <int D>
__device__ __forceinline__ void wg_softmax(float *s, int j0, int lim0, const int *lim, int lane, float sl, float *m,
                                           float *l, float *alpha) {
  constexpr int BC = wg_cfg<D>::BC, NS = BC / 8;
  const bool need_mask = attn_fa_tile_needs_mask(j0, BC, lim0);
#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    float mx = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < NS; nt++)
#pragma unroll
      for (int e = 0; e < 2; e++) {
        float &x = s[4 * nt + 2 * hf + e];
        if (need_mask && j0 + nt * 8 + attn_mma_c_col(lane, 2 * hf + e) >= lim[hf]) x = -INFINITY;
        mx = fmaxf(mx, x);
      }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, ATTN_MMA_ROW_XOR_A)); // the 4 lanes of a row
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, ATTN_MMA_ROW_XOR_B));
    const float mn = attn_online_max(m[hf], mx, sl, &alpha[hf]), mu = attn_safe_max(mn);
    m[hf] = mn;
    float ls = l[hf] * alpha[hf];
#pragma unroll
    for (int nt = 0; nt < NS; nt++)
#pragma unroll
      for (int e = 0; e < 2; e++) {
        float &x = s[4 * nt + 2 * hf + e];
        x = attn_p(x, sl, mu);
        ls += x;
      }
    l[hf] = ls;
  }
}

// o *= alpha (per row half), then P as bf16 A fragments: k-step kc packs n-tiles 2kc, 2kc + 1 of S.
template <int D>
__device__ __forceinline__ void wg_rescale_pack(float *o, const float *alpha, const float *s, uint32_t (*pa)[4]) {
  constexpr int BC = wg_cfg<D>::BC, NO = D / 8, KC = BC / 16;
#pragma unroll
  for (int dt = 0; dt < NO; dt++)
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
      o[4 * dt + 2 * hf] *= alpha[hf];
      o[4 * dt + 2 * hf + 1] *= alpha[hf];
    }
#pragma unroll
  for (int kc = 0; kc < KC; kc++)
#pragma unroll
    for (int reg = 0; reg < 4; reg++) {
      const float *sc = s + 4 * (2 * kc + attn_mma_p_ntile(reg));
      pa[kc][reg] = pack_bf16(sc[attn_mma_p_elem(reg)], sc[attn_mma_p_elem(reg) + 1]);
    }
}

// The block's attention for its query tile t over keys from src. sl = scale·log2(e) > 0.
//
// Pipeline (FlashAttention-3's overlap inside a warpgroup, with cp.async instead of TMA): WG_STAGES K/V buffers,
// tile i in buffer i % WG_STAGES, tiles i + 1 and i + 2 loading while tile i computes. Iteration i >= 1 of a
// warpgroup: wait for tile i (own copies, then the proxy fence, then the block barrier — which also proves every
// warpgroup finished iteration i − 1, so buffer (i − 2) % 4 is free), start loading tile i + 2 there, issue
// S_i = Q·K_iᵀ and then O += P_{i−1}·V_{i−1}, wait for S_i only, run the softmax of tile i (its exponentials
// overlap the P·V on the tensor cores), wait for the P·V, rescale O and pack P_i. After the loop, O += P_last·V_last.
template <int D, class KV> __device__ __forceinline__ void wg_tile(const fa_rows_t &t, const KV &src, float sl) {
  using C = wg_cfg<D>;
  constexpr int BC = C::BC, KS = D / 16, NS = BC / 8, NO = D / 8, KC = BC / 16;
  extern __shared__ unsigned char wg_smem_raw[];
  unsigned char *smem =
      wg_smem_raw + ((ATTN_WG_ATOM - (smem_u32(wg_smem_raw) & (ATTN_WG_ATOM - 1))) & (ATTN_WG_ATOM - 1));
  unsigned char *kt = smem, *vt = smem + WG_STAGES * C::TILE; // buffer b: kt + b·TILE, vt + b·TILE
  const uint32_t kt_s = smem_u32(kt), vt_s = smem_u32(vt);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5; // warp 4w + i: warpgroup w, rows 64w + 16i ..
  const int row_w = warp * 16;                                // this warp's first row of the tile
  const int kv_end = attn_fa_kv_end(t.causal, t.lim0, t.n_rows);
  const int n_tiles = (kv_end + BC - 1) / BC;

  // tiles 0 and 1 start loading before anything else (a commit group each, empty past the last tile)
#pragma unroll
  for (int i = 0; i < 2; i++) {
    if (i < n_tiles) wg_load_tile<D>(kt + i * C::TILE, vt + i * C::TILE, src, i * BC, kv_end);
    cp_async_commit();
  }

  // Q fragments (A layout, per warp as mma.sync) from global memory, zeros for padding rows; each row's lim.
  uint32_t qf[KS][4];
  int lim[2];
#pragma unroll
  for (int hf = 0; hf < 2; hf++)
    lim[hf] = attn_fa_row_lim(t.causal, t.lim0, t.n_rows, row_w + attn_mma_c_row(lane, 2 * hf));
#pragma unroll
  for (int kk = 0; kk < KS; kk++)
#pragma unroll
    for (int reg = 0; reg < 4; reg++) {
      const int r = row_w + attn_mma_a_row(lane, reg);
      qf[kk][reg] =
          r < t.n_rows
              ? *reinterpret_cast<const uint32_t *>(t.q + (int64_t)r * t.ldq + kk * 16 + attn_mma_a_col(lane, reg, 0))
              : 0u;
    }

  float o[NO * 4], m[2], l[2], s[NS * 4], alpha[2];
  uint32_t pa[KC][4];
#pragma unroll
  for (int i = 0; i < NO * 4; i++) o[i] = 0.0f;
  m[0] = m[1] = -INFINITY;
  l[0] = l[1] = 0.0f;

  for (int it = 0; it < n_tiles; it++) {
    const int buf = it % WG_STAGES;
    cp_async_wait<1>();       // this thread's copies of tile it have landed (tile it + 1 may still be loading)
    fence_proxy_async_smem(); // ... and are visible to the proxy the wgmmas read through
    __syncthreads();          // every thread's are; every warpgroup is past iteration it − 1
    if (it + 2 < n_tiles) {
      const int nb = (it + 2) % WG_STAGES; // last read in iteration it − 1 (the P·V of tile it − 2)
      wg_load_tile<D>(kt + nb * C::TILE, vt + nb * C::TILE, src, (it + 2) * BC, kv_end);
    }
    cp_async_commit(); // one group per iteration, empty or not, so that wait<1> above always means tile it

    wg_qk<D>(s, qf, kt_s + buf * C::TILE);
    if (it > 0) wg_pv<D>(o, pa, vt_s + ((it - 1) % WG_STAGES) * C::TILE);
    if (it > 0)
      wgmma_wait<1>(); // S_it done; the P·V of tile it − 1 may still run
    else
      wgmma_wait<0>();
#pragma unroll
    for (int i = 0; i < NS * 4; i++) wgmma_pin(s[i]);
    wg_softmax<D>(s, it * BC, t.lim0, lim, lane, sl, m, l, alpha);
    wgmma_wait<0>(); // the P·V of tile it − 1: o may be rescaled and pa rewritten
    // pa stays live (pinned) until here: otherwise ptxas may reuse its registers for the softmax while the P·V
    // still reads them, and then waits for the P·V before the softmax (no overlap)
#pragma unroll
    for (int kc = 0; kc < KC; kc++)
#pragma unroll
      for (int reg = 0; reg < 4; reg++) wgmma_pin(pa[kc][reg]);
#pragma unroll
    for (int i = 0; i < NO * 4; i++) wgmma_pin(o[i]);
    wg_rescale_pack<D>(o, alpha, s, pa);
  }
  if (n_tiles > 0) { // the last tile's P·V (its V buffer is not refilled: no load follows)
    wg_pv<D>(o, pa, vt_s + ((n_tiles - 1) % WG_STAGES) * C::TILE);
    wgmma_wait<0>();
#pragma unroll
    for (int i = 0; i < NO * 4; i++) wgmma_pin(o[i]);
  }
  cp_async_wait<0>(); // no copy (an empty group at most) outlives the block

  // l over the 4 lanes of each row, then O / l as bf16 pairs
#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    float L = l[hf];
    L += __shfl_xor_sync(0xffffffffu, L, ATTN_MMA_ROW_XOR_A);
    L += __shfl_xor_sync(0xffffffffu, L, ATTN_MMA_ROW_XOR_B);
    const float inv = attn_inv_l(L);
    const int r = row_w + attn_mma_c_row(lane, 2 * hf);
    if (r < t.n_rows) {
      bf16 *orow = t.out + (int64_t)r * t.ldo;
#pragma unroll
      for (int dt = 0; dt < NO; dt++)
        *reinterpret_cast<uint32_t *>(orow + dt * 8 + attn_mma_c_col(lane, 2 * hf)) =
            pack_bf16(o[4 * dt + 2 * hf] * inv, o[4 * dt + 2 * hf + 1] * inv);
    }
  }
}

// ---- kernels (grids as attn_flash.cu's, with BR = wg_cfg<D>::BR) ---------------------------------------------

template <int D>
__global__ void __launch_bounds__(WG_THREADS, 1)
    wg_prefill_kernel(bf16 *out, const bf16 *q, int64_t ldq, const bf16 *kv, int layer, int n_blocks, int H, float sl,
                      const int32_t *q_start, const int32_t *ctx_len, const int32_t *block_table, int max_blocks,
                      int min_q) {
  fa_rows_t t;
  fa_paged_kv_t src;
  if (!fa_prefill_block(D, wg_cfg<D>::BR, gridDim.x - 1 - blockIdx.x, blockIdx.y, blockIdx.z, out, q, ldq, kv, layer,
                        n_blocks, H, q_start, ctx_len, block_table, max_blocks, min_q, &t, &src))
    return; // block-uniform
  wg_tile<D>(t, src, sl);
}

template <int D>
__global__ void __launch_bounds__(WG_THREADS, 1)
    wg_dense_kernel(bf16 *out, const bf16 *q, int64_t ldq, const bf16 *k, int64_t ldk, const bf16 *v, int64_t ldv,
                    int64_t T, int H, float sl, int64_t b0, fa_lens_t lens) {
  fa_rows_t t;
  fa_dense_kv_t src;
  fa_dense_block(D, wg_cfg<D>::BR, blockIdx.x, blockIdx.y, blockIdx.z, out, q, ldq, k, ldk, v, ldv, T, H, b0, lens, &t,
                 &src);
  wg_tile<D>(t, src, sl);
}

// ---- launchers ----------------------------------------------------------------------------------------------------

template <int D> static int wg_prepare(es_error_t *err) {
  const int bytes = (int)wg_cfg<D>::SMEM;
  ES_CUDA_TRY(err, cudaFuncSetAttribute(wg_prefill_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  ES_CUDA_TRY(err, cudaFuncSetAttribute(wg_dense_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  return ES_OK;
}

extern "C" int attn_wgmma_init(cuda_backend_t *cb, es_error_t *err) {
  cb->wgmma_ok = 0;
  if (cb->cc_major != 9 || cb->cc_minor != 0 || cb->smem_optin < wg_cfg<128>::SMEM) return ES_OK;
  cudaFuncAttributes attr;
  if (cudaFuncGetAttributes(&attr, wg_dense_kernel<64>) != cudaSuccess) { // no sm_90a code in this binary
    (void)cudaGetLastError();
    return ES_OK;
  }
  // a device that refuses the kernels' shared memory only loses them (EARSHOT_FLASH=wgmma then fails at create)
  es_error_t ignored;
  if (wg_prepare<64>(&ignored) || wg_prepare<128>(&ignored)) {
    (void)cudaGetLastError();
    return ES_OK;
  }
  cb->wgmma_ok = 1;
  (void)err;
  return ES_OK;
}

extern "C" int attn_wgmma_q_tile(int D) {
  return D == 64 ? wg_cfg<64>::BR : wg_cfg<128>::BR;
}

template <int D>
static int wg_prefill(cuda_backend_t *cb, int layer, void *out, const void *q, int64_t ldq, int H, float sl, int min_q,
                      int max_q_tiles, es_error_t *err) {
  const es_backend_t *be = &cb->base;
  dim3 grid((unsigned)max_q_tiles, (unsigned)H, (unsigned)be->batch.n_seqs);
  wg_prefill_kernel<D><<<grid, WG_THREADS, wg_cfg<D>::SMEM, cb->stream>>>(
      (bf16 *)out, (const bf16 *)q, ldq, (const bf16 *)cb->kv, layer, be->kv_blocks, H, sl, cb->d_q_start,
      cb->d_ctx_len, cb->d_block_table, be->batch.max_blocks, min_q);
  ES_CUDA_LAUNCHED(err);
  cb->wgmma_launches++;
  return ES_OK;
}

extern "C" int attn_wgmma_prefill(cuda_backend_t *cb, int layer, void *out, const void *q, int64_t ldq, int H, int D,
                                  float sl, int min_q, int max_q_tiles, es_error_t *err) {
  return D == 64 ? wg_prefill<64>(cb, layer, out, q, ldq, H, sl, min_q, max_q_tiles, err)
                 : wg_prefill<128>(cb, layer, out, q, ldq, H, sl, min_q, max_q_tiles, err);
}

template <int D>
static int wg_dense(cuda_backend_t *cb, void *out, const void *q, int64_t ldq, const void *k, int64_t ldk,
                    const void *v, int64_t ldv, int64_t B, int64_t T, int H, float sl, const int32_t *valid_len,
                    es_error_t *err) {
  constexpr int BR = wg_cfg<D>::BR;
  for (int64_t b0 = 0; b0 < B; b0 += FA_LENS) {
    fa_lens_t lens;
    const int64_t nb = fa_lens_at(valid_len, B, b0, &lens);
    dim3 grid((unsigned)((T + BR - 1) / BR), (unsigned)H, (unsigned)nb);
    wg_dense_kernel<D><<<grid, WG_THREADS, wg_cfg<D>::SMEM, cb->stream>>>(
        (bf16 *)out, (const bf16 *)q, ldq, (const bf16 *)k, ldk, (const bf16 *)v, ldv, T, H, sl, b0, lens);
    ES_CUDA_LAUNCHED(err);
    cb->wgmma_launches++;
  }
  return ES_OK;
}

extern "C" int attn_wgmma_dense(cuda_backend_t *cb, void *out, const void *q, int64_t ldq, const void *k, int64_t ldk,
                                const void *v, int64_t ldv, int64_t B, int64_t T, int H, int D, float sl,
                                const int32_t *valid_len, es_error_t *err) {
  return D == 64 ? wg_dense<64>(cb, out, q, ldq, k, ldk, v, ldv, B, T, H, sl, valid_len, err)
                 : wg_dense<128>(cb, out, q, ldq, k, ldk, v, ldv, B, T, H, sl, valid_len, err);
}
