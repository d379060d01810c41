/* gemv_math: the index arithmetic and the validity conditions of the bf16 decode GEMV (cuda_gemv.cu), written
 * once for the host and the device so that CI tests them on the CPU (tests/kernels/test_gemv_math.c) where no
 * GPU exists.
 *
 * Layout: y[M, N] = x[M, K] · w[N, K]ᵀ, bf16 x (row stride ldx elements) and w (contiguous rows of K). One warp
 * per output row n; a row of w is K / 8 chunks of 8 bf16 (16 bytes, one uint4 load); lane j takes chunks
 * j, j + 32, ... The uint4 loads of w and of x rows are 16-byte aligned when x and w are and K, ldx are
 * multiples of 8 (gemv_shape_ok). Offsets are in elements, computed in 64-bit.
 *
 * Compiled by nvcc every function is __host__ __device__; compiled as C11 it is plain static inline. Pure
 * functions of their arguments: no state, thread-safe.
 */
#pragma once

#include <stdint.h>

#ifdef __CUDACC__
#define GEMV_HD static __host__ __device__ __forceinline__
#else
#define GEMV_HD static inline
#endif

#define GEMV_WARPS 4      /* warps (output rows) per block */
#define GEMV_CHUNK 8      /* bf16 per 16-byte load */
#define GEMV_MAX_M 4      /* the largest M the GEMV takes (cuda_gemv.h: CUDA_GEMV_MAX_M) */

/* 1 when the shape and pointers allow the kernel: 1 <= M <= GEMV_MAX_M, N >= 1 (a grid of 0 blocks is a launch
 * error) with at most 2^31 - 1 blocks, K a positive multiple of 8, ldx a multiple of 8 and >= K, x and w 16-byte
 * aligned. */
GEMV_HD int gemv_shape_ok(int64_t M, int64_t N, int64_t K, int64_t ldx, uintptr_t x, uintptr_t w) {
  return M >= 1 && M <= GEMV_MAX_M && N >= 1 && (N + GEMV_WARPS - 1) / GEMV_WARPS <= 0x7fffffff && K >= GEMV_CHUNK &&
         K % GEMV_CHUNK == 0 && ldx >= K && ldx % GEMV_CHUNK == 0 && (x & 15u) == 0 && (w & 15u) == 0;
}

/* Where the GEMV is used instead of cuBLASLt: every linear of one row. In isolation (`earshot bench linear`,
 * fraction of the copy bandwidth, GEMV with 4 loads in flight vs cuBLASLt) cuBLASLt wins some shapes at M = 1 —
 * H100, 2026-11-28: q|k|v 12288x4096 0.81 vs 0.84, down 4096x11008 0.69 vs 0.79; o 0.65 vs 0.59, gate|up 0.90 vs
 * 0.84, logits 1.02 vs 0.95 — but in a decode step the GEMV loads its first weights before it waits for the
 * kernel before it (PDL), so the whole step is faster with the GEMV for every linear: 5.914 against 6.177 ms per
 * token for the 7B model at batch 1 with cuBLASLt kept for q|k|v, gate|up and down (`bench model`, the same run).
 * At M = 2 to 4 cuBLASLt wins every shape (q|k|v at M = 4: 0.79 vs 0.48). */
GEMV_HD int gemv_preferred(int64_t M, int64_t N, int64_t K) {
  (void)N;
  (void)K;
  return M == 1;
}

/* Blocks for N rows. */
GEMV_HD int64_t gemv_grid(int64_t N) { return (N + GEMV_WARPS - 1) / GEMV_WARPS; }

/* The output row of warp `warp` of block `block` (>= N: the warp has nothing to do). */
GEMV_HD int64_t gemv_row(int64_t block, int warp) { return block * GEMV_WARPS + warp; }

/* Element offset of chunk c of w's row n, and of x's row m. */
GEMV_HD int64_t gemv_w_off(int64_t n, int64_t K, int64_t c) { return n * K + c * GEMV_CHUNK; }
GEMV_HD int64_t gemv_x_off(int64_t m, int64_t ldx, int64_t c) { return m * ldx + c * GEMV_CHUNK; }
