// attn_fast: which calls the fast attention kernels take, the split-KV scratch size, and the paged dispatch
// between the decode kernel (attn_decode.cu) and the flash prefill kernel (attn_flash.cu). See attn_fast.h.
#include <math.h>
#include <stdint.h>

#include "attn_fast.h"
#include "attn_math.h"
#include "cuda_common.cuh"

#define ATTN_PART_BUDGET ((size_t)64 << 20) // split-KV partial results: at most 64 MiB of device memory

static int aligned16(const void *p) {
  return ((uintptr_t)p & 15u) == 0;
}

static int fast_common(const cuda_backend_t *cb, int H, int D, float scale) {
  return cb->attn_path == CUDA_ATTN_FAST && cb->base.act_dtype == ES_DT_BF16 && (D == 64 || D == 128) && H >= 1 &&
         H <= 65535 && scale > 0.0f && isfinite(scale);
}

extern "C" int attn_fast_det_chunk(const es_backend_opts_t *o, int H, int D) {
  const size_t per_split = (size_t)H * (size_t)(D + 2) * sizeof(float); // one row, one split
  return attn_det_chunk((int64_t)o->max_blocks * ES_KV_BLOCK, (int64_t)(ATTN_PART_BUDGET / per_split));
}

extern "C" size_t attn_fast_part_bytes(const es_backend_opts_t *o, int H, int D) {
  if (D != 64 && D != 128) return 0;
  if (o->deterministic) { // rows of the longest context, as many as a step has, within the budget
    const int64_t max_ctx = (int64_t)o->max_blocks * ES_KV_BLOCK;
    const attn_split_t p = attn_det_split_plan(max_ctx, attn_fast_det_chunk(o, H, D));
    if (p.n_splits <= 1) return 0; // every row writes its output directly
    const size_t per_row = (size_t)H * (size_t)p.n_splits * (size_t)(D + 2) * sizeof(float);
    const size_t want = per_row * o->max_tokens;
    return want < ATTN_PART_BUDGET ? want : ATTN_PART_BUDGET;
  }
  const size_t per_split = o->max_seqs * ATTN_DECODE_MAX_Q * (size_t)H * (size_t)(D + 2) * sizeof(float);
  const size_t want = per_split * ATTN_MAX_SPLITS;
  return want < ATTN_PART_BUDGET ? want : ATTN_PART_BUDGET;
}

extern "C" int attn_fast_paged_ok(const cuda_backend_t *cb, const void *out, const void *q, int64_t ldq, int H, int D,
                                  float scale) {
  return fast_common(cb, H, D, scale) && aligned16(out) && aligned16(q) && ldq % 8 == 0 &&
         cb->base.batch.n_seqs <= 65535;
}

extern "C" int attn_fast_dense_ok(const cuda_backend_t *cb, const void *out, const void *q, int64_t ldq, const void *k,
                                  int64_t ldk, const void *v, int64_t ldv, int64_t B, int H, int D, float scale) {
  (void)B;
  return fast_common(cb, H, D, scale) && aligned16(out) && aligned16(q) && aligned16(k) && aligned16(v) &&
         ldq % 8 == 0 && ldk % 8 == 0 && ldv % 8 == 0;
}

extern "C" int attn_fast_paged(cuda_backend_t *cb, int layer, void *out, const void *q, int64_t ldq, int H, int D,
                               float scale, es_error_t *err) {
  if (cb->base.opts.deterministic) return attn_decode_det(cb, layer, out, q, ldq, H, D, scale, err);
  const es_batch_t *b = &cb->base.batch; // the host copy of the step's batch
  const int br = attn_flash_q_tile(cb, D);
  int max_q_tiles = 0; // the decode rows were counted with the batch (cuda_plan_decode: cb->dec_rows)
  for (int s = 0; s < b->n_seqs; s++) {
    const int q_len = b->q_start[s + 1] - b->q_start[s];
    const int tiles = (q_len + br - 1) / br;
    if (q_len > ATTN_DECODE_MAX_Q && tiles > max_q_tiles) max_q_tiles = tiles;
  }
  int rc = ES_OK;
  if (cb->dec_rows) rc = attn_decode(cb, layer, out, q, ldq, H, D, scale, err);
  if (!rc && max_q_tiles)
    rc = attn_flash_prefill(cb, layer, out, q, ldq, H, D, scale, ATTN_DECODE_MAX_Q + 1, max_q_tiles, err);
  return rc;
}
