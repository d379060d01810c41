/* attn_mma_math: the per-lane index arithmetic of the flash-attention kernel (attn_flash.cu) — which elements
 * of the mma.m16n8k16 A/B/C fragments a lane holds, the shared-memory row addresses it hands to ldmatrix, the
 * cp.async chunk it copies, the lanes it shares a softmax row with, and the masking limits of its rows —
 * written once for the host and the device so that CI emulates a warp on the CPU
 * (tests/kernels/test_attn_mma_emu.c) with the very formulas the kernel uses.
 *
 * Compiled by nvcc every function is __host__ __device__; compiled as C11 it is plain static inline. Pure
 * functions of their arguments: no state, thread-safe.
 *
 * ref: PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type" (.bf16: A 4 × .b32 holding a0..a7,
 * B 2 × .b32 holding b0..b3, C/D 4 × .f32), with groupID = laneid >> 2, threadID_in_group = laneid % 4:
 *   A: row = groupID for a_i, i < 2 or 4 <= i < 6, else groupID + 8; col = 2·threadID_in_group + (i & 1), + 8
 *      for i >= 4.   B: row (k) = 2·threadID_in_group + (i & 1), + 8 for i >= 2; col (n) = groupID.
 *   C/D: row = groupID for c0, c1, groupID + 8 for c2, c3; col = 2·threadID_in_group + (i & 1).
 * Element 2r of a .b32 register r is its low 16 bits. The same tables as llama.cpp's ggml-cuda/mma.cuh
 * tile<16,8,nv_bfloat162>::get_i/get_j (A), tile<8,8>::get_i/get_j (B) and tile<16,8,float> (C), checked
 * against each other when this file was written.
 * ref: PTX ISA, ldmatrix: for .x4 lanes 8i .. 8i + 7 give the addresses of rows 0..7 of matrix i (16 bytes
 * each, 16-byte aligned); lane l receives in register i the elements (l / 4, 2(l % 4)) and (l / 4, 2(l % 4) + 1)
 * of matrix i, or with .trans the elements (2(l % 4), l / 4) and (2(l % 4) + 1, l / 4).
 */
#pragma once

#include "attn_math.h" /* ATTN_HD */

/* ---- mma.m16n8k16 fragments: lane = 4·g + t ------------------------------------------------------------ */

/* A (16 × 16, row-major): the row and column of the bf16 in half e (0 = low 16 bits) of register r (0..3). */
ATTN_HD int attn_mma_a_row(int lane, int r) {
  return (lane >> 2) + 8 * (r & 1);
}
ATTN_HD int attn_mma_a_col(int lane, int r, int e) {
  return 2 * (lane & 3) + e + 8 * (r >> 1);
}

/* B (16 × 8, k × n): the k (row) and n (column) of half e of register r (0..1). */
ATTN_HD int attn_mma_b_k(int lane, int r, int e) {
  return 2 * (lane & 3) + e + 8 * r;
}
ATTN_HD int attn_mma_b_n(int lane) {
  return lane >> 2;
}

/* C/D (16 × 8, fp32): the row and column of float i (0..3). */
ATTN_HD int attn_mma_c_row(int lane, int i) {
  return (lane >> 2) + 8 * (i >> 1);
}
ATTN_HD int attn_mma_c_col(int lane, int i) {
  return 2 * (lane & 3) + (i & 1);
}

/* The lanes holding the rest of a C row: lane ^ 1, lane ^ 2 (and lane ^ 3), the __shfl_xor_sync masks of the
 * row max and row sum (same groupID, the other threadID_in_group). */
#define ATTN_MMA_ROW_XOR_A 1
#define ATTN_MMA_ROW_XOR_B 2

/* The C fragments of two adjacent 8-key n-tiles of S are the A fragment of one 16-key k-step of P: register r
 * of P's A packs floats attn_mma_p_elem(r) (low) and attn_mma_p_elem(r) + 1 (high) of S n-tile
 * 2·kstep + attn_mma_p_ntile(r). */
ATTN_HD int attn_mma_p_ntile(int r) {
  return r >> 1;
}
ATTN_HD int attn_mma_p_elem(int r) {
  return 2 * (r & 1);
}

/* ---- shared-memory tiles of the flash kernel: K and V, FA_BC rows (keys) of `lds` bf16 each ------------ */

/* ldmatrix.x4 (plain) over the K tile: this lane's row address (element offset) so that registers 0, 1 are the
 * B fragment of Kᵀ for k-step kk (head dims 16·kk ..) and 2, 3 that of k-step kk + 1, for the 8 keys of n-tile
 * nt: matrix i = lane / 8 covers keys 8·nt .. + 7 and head dims 16·kk + 8·i .. + 7. */
ATTN_HD int attn_fa_k_ldsm_off(int lane, int nt, int kk, int lds) {
  return (nt * 8 + (lane & 7)) * lds + kk * 16 + (lane >> 3) * 8;
}

/* ldmatrix.x4.trans over the V tile: registers 0, 1 are the B fragment of V for k-step kc (keys 16·kc ..) and
 * the 8 head dims of n-tile 2·dp, registers 2, 3 for n-tile 2·dp + 1: matrix i covers keys 16·kc + 8·(i & 1)
 * .. + 7 and head dims 16·dp + 8·(i >> 1) .. + 7. */
ATTN_HD int attn_fa_v_ldsm_off(int lane, int kc, int dp, int lds) {
  return (kc * 16 + (lane & 15)) * lds + dp * 16 + (lane >> 4) * 8;
}

/* The 16-byte chunk c (0 .. rows·ch − 1) of a tile of ch chunks per row: its row and first column (elements). */
ATTN_HD void attn_fa_chunk(int c, int ch, int *row, int *col) {
  *row = c / ch;
  *col = (c % ch) * 8;
}

/* ---- rows and masks of one query tile ------------------------------------------------------------------- */

/* The first tile row of m-tile mt of warp w (each warp owns mt_per_warp m-tiles of 16 rows). */
ATTN_HD int attn_fa_warp_row(int warp, int mt, int mt_per_warp) {
  return warp * 16 * mt_per_warp + mt * 16;
}

/* Keys row r of a tile of n_rows valid rows may see (keys j < lim): causal, lim0 + r; else lim0. Padding rows
 * (r >= n_rows) take the last valid row's limit, so they never widen the tile's key range. */
ATTN_HD int attn_fa_row_lim(int causal, int lim0, int n_rows, int r) {
  int rc = r < n_rows ? r : n_rows - 1;
  return causal ? lim0 + rc : lim0;
}

/* The largest limit of the tile's rows: keys at or past it are never loaded (zero-filled) nor seen. */
ATTN_HD int attn_fa_kv_end(int causal, int lim0, int n_rows) {
  return causal ? lim0 + n_rows - 1 : lim0;
}

/* 1 when the key tile [j0, j0 + bc) holds a key some row may not see (every row sees at least lim0 keys). */
ATTN_HD int attn_fa_tile_needs_mask(int j0, int bc, int lim0) {
  return j0 + bc > lim0;
}
