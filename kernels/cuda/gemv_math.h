/* gemv_math: the index arithmetic and the validity conditions of the bf16 decode GEMV (cuda_gemv.cu), written
 * once for the host and the device so that CI tests them on the CPU (tests/kernels/test_gemv_math.c) where no
 * GPU exists.
 *
 * Layout: y[M, N] = x[M, K] · w[N, K]ᵀ, bf16 x (row stride ldx elements) and w (contiguous rows of K). One warp
 * per output row n (or two rows: GEMV_ROWS_* below, shared with the fp8 GEMV); a row of w is K / 8 chunks of 8 bf16 (16
 * bytes, one uint4 load); lane j takes chunks j, j + 32, ... The uint4 loads of w and of x rows are 16-byte aligned
 * when x and w are and K, ldx are multiples of 8 (gemv_shape_ok). Offsets are in elements, computed in 64-bit.
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

/* How a warp of the decode GEMVs (cuda_gemv.cu; cuda_fp8.cu's CUDA-core fp8 GEMV) chooses its weight rows:
 *   GEMV_ROWS_ONE  warp n < N: row n;
 *   GEMV_ROWS_TWO  warp n < P = ceil(N / 2): rows n and n + P, the second only where < N (a warp without one streams
 *                  row n twice and stores it once), one x load and conversion for both;
 *   GEMV_ROWS_GLU  (es_op_linear_silu_mul) w = [gate; up] of 2P rows: warp n < P: rows n and n + P, one output;
 *   GEMV_ROWS_ROPE (es_op_linear_rope_kv_store) w = [q; k; v], 3 sections of heads of D rows: warp n < P = N / 2 takes
 *                  the two rows one RoPE rotation pairs, f and f + D / 2 of a head (gemv_rope_rows).
 * A row's arithmetic is the same in every mode (its chunks in the same order), so its bits are too. */
enum { GEMV_ROWS_ONE = 0, GEMV_ROWS_TWO = 1, GEMV_ROWS_GLU = 2, GEMV_ROWS_ROPE = 3 };

/* GEMV_ROWS_ROPE: warp n's rows *r0 (column f < D / 2 of its head) and *r1 = *r0 + D / 2, for stacked sections of HD
 * = heads · D rows each (D even); *section: 0 q, 1 k, 2 v; *head and *f: where the pair sits in its section. */
GEMV_HD void gemv_rope_rows(int64_t n, int64_t HD, int D, int64_t *r0, int64_t *r1, int *section, int *head, int *f) {
  const int64_t half = D / 2, per_section = HD / 2, j = n % per_section;
  *section = (int)(n / per_section);
  *head = (int)(j / half);
  *f = (int)(j % half);
  *r0 = *section * HD + (int64_t)*head * D + *f;
  *r1 = *r0 + half;
}

/* The warps (P) a GEMV over a weight of N rows launches in mode `rows`. */
GEMV_HD int64_t gemv_warps(int64_t N, int rows) {
  return rows == GEMV_ROWS_ONE ? N : (N + 1) / 2;
}

/* Weight row r (0, or 1 in the two-row modes) of warp n < P: n + r·P, or n itself where that is past the N rows. */
GEMV_HD int64_t gemv_warp_row(int64_t n, int r, int64_t P, int64_t N) {
  return n + r * P < N ? n + r * P : n;
}

/* Whether warp n stores row r (the duplicate of row n in its place is not stored). */
GEMV_HD int gemv_warp_stores(int64_t n, int r, int64_t P, int64_t N) {
  return r == 0 || n + r * P < N;
}

/* Blocks for N rows. */
GEMV_HD int64_t gemv_grid(int64_t N) { return (N + GEMV_WARPS - 1) / GEMV_WARPS; }

/* The output row of warp `warp` of block `block` (>= N: the warp has nothing to do). */
GEMV_HD int64_t gemv_row(int64_t block, int warp) { return block * GEMV_WARPS + warp; }

/* Element offset of chunk c of w's row n, and of x's row m. */
GEMV_HD int64_t gemv_w_off(int64_t n, int64_t K, int64_t c) { return n * K + c * GEMV_CHUNK; }
GEMV_HD int64_t gemv_x_off(int64_t m, int64_t ldx, int64_t c) { return m * ldx + c * GEMV_CHUNK; }
