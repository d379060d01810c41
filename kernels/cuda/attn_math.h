/* attn_math: the index arithmetic and the softmax-state algebra of the fast attention kernels
 * (attn_flash.cu, attn_decode.cu), written once for the host and the device so that CI tests it on the CPU
 * (tests/kernels/test_attn_math.c) where no GPU exists.
 *
 * Compiled by nvcc every function is __host__ __device__; compiled as C11 it is plain static inline. Pure
 * functions of their arguments: no state, thread-safe.
 *
 * Softmax state (API-NOTES §B4, FlashAttention-2; flashinfer's "attention state"): a set of keys seen so far is
 * summarised per query row by (m, l, o) — m the largest score, l = Σ 2^(s_j − m), o = Σ 2^(s_j − m)·v_j
 * (unnormalised) — and the output is o / l. Scores here are in log2 units, s = (q·k)·scale·log2(e), so every
 * exponential is one exp2f (the hardware's ex2); softmax is the same in any base. An empty state is
 * (−inf, 0, 0). Two states of disjoint key sets merge exactly: M = max(m_a, m_b), l = l_a·2^(m_a−M) +
 * l_b·2^(m_b−M), o likewise. The trap is −inf − (−inf) = NaN when a state or a whole tile is empty (a fully
 * masked row, an empty split): attn_safe_max() replaces a −inf running max by 0 before it is subtracted, so an
 * empty state gets weight 2^(−inf) = 0 instead of NaN, and a masked score (−inf) gets weight 0.
 *
 * Paged KV layout (backend.h): kv[L][n_blocks][2][H][16][D]; position j of a sequence lives in block
 * table[j / 16] at offset j % 16. Offsets are computed in 64-bit before any multiply by a stride (vLLM:
 * "int32 can lead to overflow").
 */
#pragma once

#include <math.h>
#include <stdint.h>

#include "backend.h" /* ES_KV_BLOCK */

#ifdef __CUDACC__
#define ATTN_HD static __host__ __device__ __forceinline__
#else
#define ATTN_HD static inline
#endif

#define ATTN_LOG2E 1.4426950408889634f

/* ---- split-KV decode: partition and split count ------------------------------------------------------ */

#define ATTN_DECODE_MAX_Q 4         /* sequences with at most this many new tokens take the split-KV decode path */
#define ATTN_SPLIT_ALIGN 64         /* a split's length is a multiple of this many keys */
#define ATTN_SPLIT_MIN_KEYS                                                                                             \
  64                                /* no more splits than leave each at least this many keys (of the longest):         \
                                     * two passes of a block's 4 warps over a bf16 cache at D = 128 (8 keys per warp    \
                                     * and pass), one over fp8. 256 gave a batch-1 decode at context 800 4 splits (128  \
                                     * blocks for 132 SMs): 20 µs per layer for 13 MB on an H200; 128 gave 7 splits of \
                                     * 4 passes: 15.0 µs on an H100, 64 13 splits: 11.8 µs (bench attention,          \
                                     * 2026-11-28: 0.29 and 0.37 of the copy bandwidth) */
#define ATTN_MAX_SPLITS 128         /* hard cap on splits per row */
#define ATTN_TARGET_BLOCKS_PER_SM 8 /* decode blocks (4 warps each) wanted per SM to keep enough loads in flight */

typedef struct {
  int n_splits; /* splits of the longest context (grid z); shorter contexts use fewer (attn_split_count) */
  int chunk;    /* keys per split, a multiple of ATTN_SPLIT_ALIGN */
} attn_split_t;

ATTN_HD int attn_ceil_div(int64_t a, int64_t b) {
  return (int)((a + b - 1) / b);
}

/* The split count attn_split_plan starts from (before the chunk is rounded): never decreasing in max_ctx,
 * and never below the plan's n_splits — so attn_split_bound over the longest context a backend allows bounds
 * the n_splits of every step of the same `units`, which a recorded step graph needs as its fixed grid. */
ATTN_HD int attn_split_bound(int64_t units, int64_t max_ctx, int sm_count, int max_splits, int want) {
  if (max_ctx < 1) return 1;
  if (units < 1) units = 1;
  int64_t s;
  if (want > 0) {
    s = want;
  } else {
    int64_t target = (int64_t)ATTN_TARGET_BLOCKS_PER_SM * (sm_count > 0 ? sm_count : 1);
    s = (target + units - 1) / units; /* ceil: the fewest splits that reach the target */
    int64_t by_len = (max_ctx + ATTN_SPLIT_MIN_KEYS - 1) / ATTN_SPLIT_MIN_KEYS;
    if (s > by_len) s = by_len;
  }
  if (s > ATTN_MAX_SPLITS) s = ATTN_MAX_SPLITS;
  if (s > max_splits) s = max_splits;
  if (s > max_ctx) s = max_ctx;
  if (s < 1) s = 1;
  return (int)s;
}

/* The split plan for one decode launch: `units` independent (row, head) pairs, the longest context max_ctx,
 * sm_count multiprocessors, at most max_splits splits (the partial-result scratch); want > 0 forces that many
 * splits (tests), 0 lets the heuristic choose.
 * Heuristic (after Dao-AILab flash_api.cpp num_splits_heuristic, simplified): split until the grid has about
 * ATTN_TARGET_BLOCKS_PER_SM blocks per SM, but never into pieces shorter than ATTN_SPLIT_MIN_KEYS keys of the
 * longest context. Then the chunk is rounded up to ATTN_SPLIT_ALIGN and the count recomputed, so the longest
 * context's last split is never empty. Results: 1 <= n_splits <= max(1, max_splits); n_splits · chunk >=
 * max_ctx > (n_splits − 1) · chunk; units · n_splits < target + units. */
ATTN_HD attn_split_t attn_split_plan(int64_t units, int64_t max_ctx, int sm_count, int max_splits, int want) {
  attn_split_t p = {1, ATTN_SPLIT_ALIGN};
  if (max_ctx < 1) return p;
  if (units < 1) units = 1;
  int64_t s = attn_split_bound(units, max_ctx, sm_count, max_splits, want);
  int64_t chunk = (max_ctx + s - 1) / s;
  chunk = (chunk + ATTN_SPLIT_ALIGN - 1) / ATTN_SPLIT_ALIGN * ATTN_SPLIT_ALIGN;
  p.chunk = (int)chunk;
  p.n_splits = attn_ceil_div(max_ctx, chunk);
  return p;
}

/* Splits a row with n >= 1 visible keys uses under a plan of `chunk` keys per split (>= 1). */
ATTN_HD int attn_split_count(int64_t n, int chunk) {
  return n < 1 ? 1 : attn_ceil_div(n, chunk);
}

/* Keys [*k0, *k1) of split `split` (< attn_split_count(n, chunk)); never empty. */
ATTN_HD void attn_split_range(int64_t n, int chunk, int split, int64_t *k0, int64_t *k1) {
  *k0 = (int64_t)split * chunk;
  *k1 = *k0 + chunk < n ? *k0 + chunk : n;
}

/* ---- deterministic mode: a fixed split size (issue 9) ------------------------------------------------------
 * Under es_backend_opts_t.deterministic every paged-attention row — decode and prefill alike — runs the split-KV
 * kernel with `chunk` keys per split, chunk fixed for the backend's life (never chosen from a batch), so a row's
 * splits, the key order inside each split and the merge order of the splits depend only on its own number of
 * visible keys. The heuristic above (attn_split_plan) stays for the default mode. */

#define ATTN_DET_CHUNK 512 /* keys per split in deterministic mode (a multiple of ATTN_SPLIT_ALIGN), as vLLM's
                              PagedAttention v2 partition */

/* Keys per split for a backend whose contexts reach max_ctx keys and whose scratch holds at most max_splits
 * splits of one row (>= 1; less is read as 1): ATTN_DET_CHUNK, or the smallest multiple of it that keeps
 * ceil(max_ctx / chunk) <= max_splits. A function of the backend's options only. */
ATTN_HD int attn_det_chunk(int64_t max_ctx, int64_t max_splits) {
  if (max_splits < 1) max_splits = 1;
  if (max_ctx < 1) max_ctx = 1;
  int64_t per = (max_ctx + max_splits - 1) / max_splits; /* the fewest keys per split that fit */
  int64_t k = (per + ATTN_DET_CHUNK - 1) / ATTN_DET_CHUNK;
  if (k < 1) k = 1;
  return (int)(k * ATTN_DET_CHUNK);
}

/* The launch plan for a step whose longest context is max_ctx under the fixed chunk: grid z = the splits of
 * the longest row; each row uses attn_split_count(n, chunk) of them, whatever else is in the step. */
ATTN_HD attn_split_t attn_det_split_plan(int64_t max_ctx, int chunk) {
  attn_split_t p;
  p.chunk = chunk;
  p.n_splits = max_ctx < 1 ? 1 : attn_ceil_div(max_ctx, chunk);
  return p;
}

/* Rows one launch may cover when each row of H heads writes n_splits partial states of D + 2 floats into a
 * scratch of part_bytes (rows with one split write their output directly: no limit, returned as `rows`).
 * At least 1 when the scratch holds one row; 0 when it does not (attn_det_chunk prevents that). */
ATTN_HD int64_t attn_det_rows_per_launch(int64_t rows, size_t part_bytes, int H, int D, int n_splits) {
  if (n_splits <= 1) return rows;
  size_t per_row = (size_t)H * (size_t)n_splits * (size_t)(D + 2) * sizeof(float);
  int64_t fit = (int64_t)(part_bytes / per_row);
  return fit < rows ? fit : rows;
}

/* (row, head) pairs the split-KV decode kernel's arrival counters must cover (its in-kernel combine, attn_decode.cu):
 * the most one launch can have among launches with two or more splits, each (row, head) writing n_splits · (D + 2)
 * floats of partial state into a scratch of part_bytes. 0 for D < 1. */
ATTN_HD int64_t attn_arrival_slots(size_t part_bytes, int D) {
  return D < 1 ? 0 : (int64_t)(part_bytes / (2 * (size_t)(D + 2) * sizeof(float)));
}

/* ---- rows, positions, causal limits ------------------------------------------------------------------- */

/* The sequence s with q_start[s] <= row < q_start[s + 1] (q_start ascending, n_seqs >= 1). */
ATTN_HD int attn_seq_of_row(const int32_t *q_start, int n_seqs, int64_t row) {
  int lo = 0, hi = n_seqs - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (q_start[mid] <= row)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

/* Keys visible to the r-th new token (0-based) of a sequence with q_len new tokens and context ctx_len: its
 * position ctx_len − q_len + r, plus one (causal, itself included). */
ATTN_HD int64_t attn_causal_keys(int64_t ctx_len, int64_t q_len, int64_t r) {
  return ctx_len - q_len + r + 1;
}

/* ---- paged KV addressing ------------------------------------------------------------------------------- */

/* Element offset of row `off` (< ES_KV_BLOCK) of the [16][D] tile (layer, block, which: 0 = K, 1 = V, head h). */
ATTN_HD int64_t attn_kv_offset(int64_t layer, int64_t n_blocks, int64_t block, int which, int64_t H, int64_t h,
                               int64_t D, int64_t off) {
  return ((((layer * n_blocks + block) * 2 + which) * H + h) * ES_KV_BLOCK + off) * D;
}

/* Element offset of position j's K (which = 0) or V (which = 1) row, through a sequence's block-table row.
 * With D = 1 both give the index of the row's scale in an fp8 KV cache's scale pool (backend.h): the codes of
 * a row start at D times that index. */
ATTN_HD int64_t attn_kv_pos_offset(const int32_t *table_row, int64_t j, int64_t layer, int64_t n_blocks, int which,
                                   int64_t H, int64_t h, int64_t D) {
  return attn_kv_offset(layer, n_blocks, (int64_t)table_row[j / ES_KV_BLOCK], which, H, h, D, j % ES_KV_BLOCK);
}

/* Cache slot (block · 16 + offset) of position j (backend.h, es_batch_t.slot). */
ATTN_HD int64_t attn_slot(const int32_t *table_row, int64_t j) {
  return (int64_t)table_row[j / ES_KV_BLOCK] * ES_KV_BLOCK + j % ES_KV_BLOCK;
}

/* ---- softmax state --------------------------------------------------------------------------------------- */

/* The running max as it may be subtracted: 0 for an empty state (−inf), so 2^(x − it) is 0, not NaN, for x = −inf. */
ATTN_HD float attn_safe_max(float m) {
  return m == -INFINITY ? 0.0f : m;
}

/* 2^(x − M): the weight of a state or score x (log2 units) under a running max M >= x; 0 when x = −inf. */
ATTN_HD float attn_weight(float x, float M) {
  return exp2f(x - attn_safe_max(M));
}

/* One online-softmax step: the running max after a tile whose largest raw score (q·k, before scale) is
 * tile_max_raw (−inf for a tile with every key masked), with scale_log2 = scale·log2(e) > 0. *alpha is the
 * factor the old l and o are multiplied by (0 when the old state was empty, 1 when the max did not move). */
ATTN_HD float attn_online_max(float m, float tile_max_raw, float scale_log2, float *alpha) {
  float m_new = fmaxf(m, tile_max_raw * scale_log2);
  *alpha = attn_weight(m, m_new);
  return m_new;
}

/* The weight 2^(s·scale_log2 − mu) of raw score s under mu = attn_safe_max(running max); 0 for s = −inf. */
ATTN_HD float attn_p(float s_raw, float scale_log2, float mu) {
  return exp2f(fmaf(s_raw, scale_log2, -mu));
}

/* Merging two states of disjoint key sets: returns M and sets the weights w_a, w_b that l and o of each are
 * multiplied by before adding (l = l_a·w_a + l_b·w_b, o = o_a·w_a + o_b·w_b). Empty states get weight 0. */
ATTN_HD float attn_merge_max(float m_a, float m_b, float *w_a, float *w_b) {
  float M = fmaxf(m_a, m_b);
  *w_a = attn_weight(m_a, M);
  *w_b = attn_weight(m_b, M);
  return M;
}

/* The normalisation 1 / l, 0 for an empty state (its o is 0: the output of a row with no key is 0). */
ATTN_HD float attn_inv_l(float l) {
  return l > 0.0f ? 1.0f / l : 0.0f;
}

/* Host/device reference forms over whole arrays, as the kernels apply the scalar helpers above element by
 * element (used by the CPU tests; cheap enough for the combine kernel's loop too). */

/* (m, l, o[D]) absorbs n keys: raw scores s[j] (−inf = masked), value rows v + j·ldv. */
ATTN_HD void attn_state_absorb(float *m, float *l, float *o, int D, const float *s, const float *v, int64_t ldv,
                               int64_t n, float scale_log2) {
  float tmax = -INFINITY;
  for (int64_t j = 0; j < n; j++) tmax = fmaxf(tmax, s[j]);
  float alpha;
  float m_new = attn_online_max(*m, tmax, scale_log2, &alpha);
  float mu = attn_safe_max(m_new);
  *l *= alpha;
  for (int d = 0; d < D; d++) o[d] *= alpha;
  for (int64_t j = 0; j < n; j++) {
    float p = attn_p(s[j], scale_log2, mu);
    *l += p;
    for (int d = 0; d < D; d++) o[d] = fmaf(p, v[j * ldv + d], o[d]);
  }
  *m = m_new;
}

/* (m_a, l_a, o_a) absorbs the disjoint state (m_b, l_b, o_b). */
ATTN_HD void attn_state_merge(float *m_a, float *l_a, float *o_a, float m_b, float l_b, const float *o_b, int D) {
  float wa, wb;
  *m_a = attn_merge_max(*m_a, m_b, &wa, &wb);
  *l_a = *l_a * wa + l_b * wb;
  for (int d = 0; d < D; d++) o_a[d] = o_a[d] * wa + o_b[d] * wb;
}
