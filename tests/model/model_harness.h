/* model_harness: loads a golden checkpoint onto a backend and runs a golden case through qa_encode/qa_step,
 * shared by the CPU golden test and (later) the GPU golden test. Header-only helpers for tests. */
#pragma once

#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "checkpoint.h"
#include "config.h"
#include "golden.h"
#include "kv_alloc.h"
#include "qwen2audio.h"

#define MH_MAX_TOKENS 2048
#define MH_MAX_WINDOWS 4

typedef struct {
  model_config_t cfg;
  ckpt_t *ck;
  es_backend_t *be;
  qa_model_t *m;
  kv_pool_t *kv;
} mh_model_t;

static inline void mh_close(mh_model_t *h) {
  qa_model_close(h->m);
  es_backend_free(h->be);
  ckpt_close(h->ck);
  kv_pool_free(h->kv);
  memset(h, 0, sizeof *h);
}

/* create(opts, &be, err) makes the backend (CPU or CUDA); quantization is qa_model_opts_t's, kv_fp8
 * es_backend_opts_t's (the fp8 KV cache). */
static inline int mh_open_quant(mh_model_t *h, const char *dir,
                                int (*create)(const es_backend_opts_t *, es_backend_t **, es_error_t *),
                                es_dtype_t dtype, int quantization, int kv_fp8, es_error_t *err) {
  memset(h, 0, sizeof *h);
  int rc = cfg_load_dir(dir, &h->cfg, err);
  if (!rc) rc = ckpt_open(dir, &h->cfg, 0, &h->ck, err);
  if (rc) return rc;
  int max_blocks = MH_MAX_TOKENS / ES_KV_BLOCK;
  es_backend_opts_t bo = {.compute_dtype = dtype,
                          .n_threads = 0,
                          .max_tokens = MH_MAX_TOKENS,
                          .max_seqs = 8,
                          .max_blocks = (size_t)max_blocks,
                          .kv_fp8 = kv_fp8};
  rc = create(&bo, &h->be, err);
  if (rc) return rc;
  qa_model_opts_t mo = {.max_tokens = MH_MAX_TOKENS, .max_seqs = 8, .max_logit_rows = 64,
                        .max_audio_batch = MH_MAX_WINDOWS, .audio_pool_rows = MH_MAX_WINDOWS * QA_MAX_WINDOW_TOKENS,
                        .kv_blocks = 2 * max_blocks + 1, .max_blocks_per_seq = max_blocks,
                        .quantization = quantization};
  rc = qa_model_open(h->be, &h->cfg, h->ck, &mo, &h->m, err);
  if (!rc) rc = kv_pool_init(mo.kv_blocks, &h->kv, err);
  return rc;
}

static inline int mh_open(mh_model_t *h, const char *dir,
                          int (*create)(const es_backend_opts_t *, es_backend_t **, es_error_t *), es_dtype_t dtype,
                          es_error_t *err) {
  return mh_open_quant(h, dir, create, dtype, QA_QUANT_NONE, 0, err);
}

/* Encodes every window of a case's audios (golden features) into the pool from row 0, audio after audio.
 * *rows = Σ N. */
static inline int mh_encode_case(mh_model_t *h, const golden_t *g, const cJSON *c, int *rows, es_error_t *err) {
  const char *policy = cJSON_GetObjectItemCaseSensitive(c, "long_audio")->valuestring;
  const cJSON *audios = cJSON_GetObjectItemCaseSensitive(g->manifest, "audios");
  const cJSON *aid;
  *rows = 0;
  float *mel = malloc(sizeof(float) * 128 * 3000);
  if (!mel) return es_fail(err, ES_ENOMEM, "out of memory");
  int rc = 0;
  cJSON_ArrayForEach(aid, cJSON_GetObjectItemCaseSensitive(c, "audios")) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(audios, aid->valuestring);
    const cJSON *ws = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(a, "windows"), policy);
    const cJSON *w;
    cJSON_ArrayForEach(w, ws) {
      int64_t frames;
      int written = 0;
      if ((rc = golden_get_int(w, "frames", &frames, err)) || (rc = golden_read_mel(g, w, mel, err))) break;
      int f = (int)frames;
      int dst = *rows;
      if ((rc = qa_encode(h->m, mel, &f, 1, &dst, &written, err))) break;
      *rows += written;
    }
    if (rc) break;
  }
  free(mel);
  return rc;
}

/* Runs rows [0, n) of ids as one new sequence in chunks of at most chunk rows, placeholders taking audio
 * pool rows in order; returns the logits of the rows listed in want (ascending, < n) into logits. */
static inline int mh_prefill(mh_model_t *h, kv_seq_t *seq, const int32_t *ids, int n, int chunk,
                             const int *want, int n_want, float *logits, es_error_t *err) {
  int audio_id = h->cfg.audio_token_index, max_blocks = MH_MAX_TOKENS / ES_KV_BLOCK;
  int32_t *arow = malloc(sizeof(int32_t) * (size_t)n);
  int32_t pos[MH_MAX_TOKENS], slot[MH_MAX_TOKENS], lrows[64];
  if (!arow) return es_fail(err, ES_ENOMEM, "out of memory");
  int next_audio = 0, rc = 0, done_logits = 0;
  for (int i = 0; i < n; i++) arow[i] = ids[i] == audio_id ? next_audio++ : -1;
  rc = kv_seq_reserve(h->kv, seq, n, max_blocks, err);
  for (int start = 0; !rc && start < n; start += chunk) {
    int len = n - start < chunk ? n - start : chunk;
    for (int i = 0; i < len; i++) {
      pos[i] = start + i;
      slot[i] = kv_seq_slot(seq, start + i);
    }
    int nl = 0;
    while (done_logits + nl < n_want && want[done_logits + nl] < start + len) {
      lrows[nl] = want[done_logits + nl] - start;
      nl++;
    }
    int32_t q_start[2] = {0, len}, ctx = start + len;
    es_batch_t b = {.n_seqs = 1, .n_tokens = len, .q_start = q_start, .ctx_len = &ctx, .positions = pos,
                    .slot = slot, .block_table = seq->blocks, .max_blocks = seq->n_blocks};
    rc = qa_step(h->m, &b, ids + start, arow + start, lrows, nl,
                 logits + (size_t)done_logits * (size_t)h->cfg.vocab_size, err);
    done_logits += nl;
  }
  free(arow);
  return rc;
}

/* One decode step for seq at position pos with input token id; logits of that row. */
static inline int mh_decode(mh_model_t *h, kv_seq_t *seq, int pos, int32_t id, float *logits, es_error_t *err) {
  int rc = kv_seq_reserve(h->kv, seq, pos + 1, MH_MAX_TOKENS / ES_KV_BLOCK, err);
  if (rc) return rc;
  int32_t q_start[2] = {0, 1}, ctx = pos + 1, p = pos, slot = kv_seq_slot(seq, pos), arow = -1, lrow = 0;
  es_batch_t b = {.n_seqs = 1, .n_tokens = 1, .q_start = q_start, .ctx_len = &ctx, .positions = &p,
                  .slot = &slot, .block_table = seq->blocks, .max_blocks = seq->n_blocks};
  return qa_step(h->m, &b, &id, &arow, &lrow, 1, logits, err);
}

static inline int mh_argmax(const float *x, int n) {
  int best = 0;
  for (int i = 1; i < n; i++)
    if (x[i] > x[best]) best = i;
  return best;
}

/* max |a - b| / max |b| */
static inline double mh_rel_err(const float *a, const float *b, size_t n) {
  double md = 0, mr = 0;
  for (size_t i = 0; i < n; i++) {
    double d = a[i] - (double)b[i];
    if (d < 0) d = -d;
    if (d > md || d != d) md = d != d ? 1e30 : d;
    double r = b[i] < 0 ? -b[i] : b[i];
    if (r > mr) mr = r;
  }
  return mr > 0 ? md / mr : md;
}
