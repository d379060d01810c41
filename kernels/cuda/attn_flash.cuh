// attn_flash.cuh: what the two flash-attention kernels share — the mma.sync kernel (attn_flash.cu, sm_80 and
// later) and the wgmma kernel (attn_wgmma.cu, sm_90a): a block's query tile, the key/value sources of the encoder
// (dense) and the prefill (paged cache), and how a block of the grid finds its tile. Include only from .cu files.
#pragma once

#include <stdint.h>

#include "attn_math.h"
#include "cuda_common.cuh"

#define FA_LENS 256 // encoder batch entries whose valid_len is passed by value per launch

// One block's query tile.
struct fa_rows_t {
  const bf16 *q; // row 0 of the tile at this head's columns; row stride ldq (elements)
  bf16 *out;     // row 0 of the tile's output at this head's columns; row stride ldo
  int64_t ldq, ldo;
  int n_rows; // valid rows (1 .. BR)
  int lim0;   // keys row 0 may see (>= 1)
  int causal; // 1: row r sees lim0 + r keys; 0: every row sees lim0
};

// Keys and values of the encoder: rows j of k and v, at this head's columns.
struct fa_dense_kv_t {
  static constexpr bool kFp8 = false; // rows are bf16, copied into shared memory as they are (cp.async)
  const bf16 *k, *v;
  int64_t ldk, ldv;
  __device__ const bf16 *krow(int j) const { return k + (int64_t)j * ldk; }
  __device__ const bf16 *vrow(int j) const { return v + (int64_t)j * ldv; }
};

// Keys and values of one sequence and head in the paged pool, through its block-table row.
struct fa_paged_kv_t {
  static constexpr bool kFp8 = false;
  const bf16 *kv;       // (L, n_blocks, 2, H, 16, D)
  const int32_t *table; // this sequence's block-table row
  int64_t layer, n_blocks, H, h, D;
  __device__ const bf16 *krow(int j) const { return kv + attn_kv_pos_offset(table, j, layer, n_blocks, 0, H, h, D); }
  __device__ const bf16 *vrow(int j) const { return kv + attn_kv_pos_offset(table, j, layer, n_blocks, 1, H, h, D); }
};
// The same keys and values in an fp8 KV cache (backend.h): krow/vrow give the index of position j's K or V row,
// whose D codes start at codes + index · D and whose scale is scale[index]. The mma kernel's tile loader converts
// them to bf16 (decode(code) · scale, rounded) on their way into shared memory.
struct fa_paged_fp8_kv_t {
  static constexpr bool kFp8 = true;
  const uint8_t *codes; // (L, n_blocks, 2, H, 16, D) e4m3
  const float *scale;   // (L, n_blocks, 2, H, 16)
  const int32_t *table; // this sequence's block-table row
  int64_t layer, n_blocks, H, h, D;
  __device__ int64_t krow(int j) const { return attn_kv_pos_offset(table, j, layer, n_blocks, 0, H, h, 1); }
  __device__ int64_t vrow(int j) const { return attn_kv_pos_offset(table, j, layer, n_blocks, 1, H, h, 1); }
};

// The valid lengths of up to FA_LENS encoder batch entries, passed by value.
struct fa_lens_t {
  int32_t n[FA_LENS];
};

// The launch of batch entries b0 .. of B: their valid lengths (host array valid_len) in *lens, zeros past B; returns
// how many entries it holds (the grid's z). The dense launchers loop b0 = 0, FA_LENS, ... < B.
static inline int64_t fa_lens_at(const int32_t *valid_len, int64_t B, int64_t b0, fa_lens_t *lens) {
  const int64_t nb = B - b0 < FA_LENS ? B - b0 : FA_LENS;
  for (int64_t i = 0; i < FA_LENS; i++) lens->n[i] = i < nb ? valid_len[b0 + i] : 0;
  return nb;
}

// Prefill block (qt, h, s) of a grid over (query tiles of br rows, heads, sequences): its query tile and keys.
// Returns false when the block has nothing to do (the sequence has fewer than min_q new tokens — it belongs to
// the decode kernel — or fewer than qt + 1 tiles); the answer is the same for every thread of the block.
// q (n_tokens, ldq), out (n_tokens, H, D), kv (L, n_blocks, 2, H, 16, D); the batch arrays on the device.
__device__ __forceinline__ bool fa_prefill_block(int D, int br, int qt, int h, int s, bf16 *out, const bf16 *q,
                                                 int64_t ldq, const bf16 *kv, int layer, int n_blocks, int H,
                                                 const int32_t *q_start, const int32_t *ctx_len,
                                                 const int32_t *block_table, int max_blocks, int min_q, fa_rows_t *t,
                                                 fa_paged_kv_t *src) {
  const int q0 = q_start[s], q_len = q_start[s + 1] - q0;
  if (q_len < min_q || qt * br >= q_len) return false;
  const int r0 = qt * br;
  t->q = q + (int64_t)(q0 + r0) * ldq + (int64_t)h * D;
  t->ldq = ldq;
  t->out = out + ((int64_t)(q0 + r0) * H + h) * D;
  t->ldo = (int64_t)H * D;
  t->n_rows = q_len - r0 < br ? q_len - r0 : br;
  t->lim0 = (int)attn_causal_keys(ctx_len[s], q_len, r0);
  t->causal = 1;
  *src = {kv, block_table + (int64_t)s * max_blocks, layer, n_blocks, H, h, D};
  return true;
}

// Encoder block (x, h, z) of a grid over (query tiles of br rows, heads, batch entries b0 + z): its query tile
// and keys. q/k/v (B, T, ld*), out (B, T, H, D).
__device__ __forceinline__ void fa_dense_block(int D, int br, int x, int h, int z, bf16 *out, const bf16 *q,
                                               int64_t ldq, const bf16 *k, int64_t ldk, const bf16 *v, int64_t ldv,
                                               int64_t T, int H, int64_t b0, const fa_lens_t &lens, fa_rows_t *t,
                                               fa_dense_kv_t *src) {
  const int64_t b = b0 + z, r0 = (int64_t)x * br, row0 = b * T + r0;
  t->q = q + row0 * ldq + (int64_t)h * D;
  t->ldq = ldq;
  t->out = out + (row0 * H + h) * D;
  t->ldo = (int64_t)H * D;
  t->n_rows = (int)(T - r0 < br ? T - r0 : br);
  t->lim0 = lens.n[z];
  t->causal = 0;
  *src = {k + b * T * ldk + (int64_t)h * D, v + b * T * ldv + (int64_t)h * D, ldk, ldv};
}
