/* qwen2audio: the Qwen2-Audio forward pass against kernels/backend.h. See qwen2audio.h.
 *
 * Dimension letters: B audio windows, T time, C encoder width (d_model), F encoder FFN width,
 * E decoder width (hidden_size), I decoder FFN width, H heads, D head dim, V vocabulary, L layers.
 * ref: transformers modeling_qwen2_audio.py / modeling_qwen2.py, SPEC §3-§4.
 */
#include "qwen2audio.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ENC_FRAMES QA_MEL_FRAMES        /* 3000 mel frames in */
#define ENC_POS (QA_MEL_FRAMES / 2)     /* 1500 positions after conv2 */
#define ENC_TOKENS QA_MAX_WINDOW_TOKENS /* 750 after the avg-pool */

typedef struct {
  es_weight_t ln1_g, ln1_b;     /* self_attn_layer_norm [C] */
  es_weight_t wq, bq, wk, wv, bv; /* [C, C], [C]; k_proj has no bias */
  es_weight_t wo, bo;           /* out_proj [C, C], [C] */
  es_weight_t ln2_g, ln2_b;     /* final_layer_norm [C] */
  es_weight_t w1, b1, w2, b2;   /* fc1 [F, C], fc2 [C, F] */
} enc_layer_t;

typedef struct {
  es_weight_t in_norm;           /* input_layernorm [E] */
  es_weight_t wq, bq, wk, bk, wv, bv; /* [E, E], [E] */
  es_weight_t wo;                /* o_proj [E, E], no bias */
  es_weight_t post_norm;         /* post_attention_layernorm [E] */
  es_weight_t wg, wu, wd;        /* gate/up [I, E], down [E, I] */
  /* fused projections (fused below): q|k|v as one [E + 2·KV, E] weight with its [E + 2·KV] bias, gate|up as one
   * [2I, E]; then wq..bv, wg, wu are unused */
  es_weight_t wqkv, bqkv, wgu;
  int fused; /* 1: wqkv/bqkv/wgu hold this layer's projections */
} dec_layer_t;

struct qa_model {
  model_config_t cfg;
  qa_model_opts_t opts;
  es_backend_t *be;

  /* encoder + projector weights */
  es_weight_t conv1_w, conv1_b, conv2_w, conv2_b; /* [C, 128*3], [C], [C, C*3], [C] */
  es_weight_t pos;                                /* embed_positions [1500, C] (weight dtype) */
  void *pos_act;                                  /* the same table in the activation dtype, for add_rows */
  enc_layer_t *enc;                               /* [encoder_layers] */
  es_weight_t ln_post_g, ln_post_b;               /* audio_tower.layer_norm [C] */
  es_weight_t proj_w, proj_b;                     /* multi_modal_projector.linear [E, C], [E] */
  /* decoder weights */
  es_weight_t embed;   /* embed_tokens [V, E] */
  dec_layer_t *dec;    /* [num_hidden_layers] */
  es_weight_t norm;    /* model.norm [E] */
  es_weight_t lm_head; /* [V, E] */

  /* host memory the weights may alias (dummy weights, realigned checkpoint tensors); freed at close */
  void **host_blocks;
  int n_host_blocks, cap_host_blocks;

  /* encoder activations (device), for max_audio_batch windows; owned by the backend arena */
  void *enc_in;   /* [B*3000, 128] mel, time-major */
  void *enc_c1;   /* [B*3000, C] conv1 output */
  void *enc_h;    /* [B*1500, C] residual stream */
  void *enc_a;    /* [B*1500, C] LayerNorm output */
  void *enc_q, *enc_k, *enc_v, *enc_att; /* [B*1500, C] */
  void *enc_f;    /* [B*1500, F] fc1 output */
  void *enc_pool; /* [B*750, C] */
  void *enc_proj; /* [B*750, E] */
  int32_t *enc_idx; /* [max(B*750, 1500)] row indices: rows kept (first N_b of each window) */
  int32_t *enc_dst; /* [B*750] their destination rows in the audio pool */
  void *enc_rows;   /* [B*750, E] the kept rows, compacted */
  void *audio_pool; /* [audio_pool_rows, E] projected audio embeddings */

  /* decoder activations (device), for max_tokens rows */
  void *h, *x, *q, *k, *v, *att, *o; /* [T, E] */
  void *gate, *up, *act;             /* [T, I] */
  void *arows;                       /* [T, E] audio rows gathered for the step */
  int32_t *ids_dev, *asrc_dev, *adst_dev; /* [T] */
  int32_t *lrows_dev;                /* [max_logit_rows] */
  void *xl;                          /* [max_logit_rows, E] */
  float *logits_dev;                 /* [max_logit_rows, V] fp32 */

  /* host scratch */
  float *mel_t;     /* [B*3000*128] transposed mel */
  int32_t *idx_h;   /* [max(B*750, T, 1500)] */
  int32_t *idx2_h;  /* [max(B*750, T, 1500)] */

  /* decode buckets (see "decode steps as graphs" below): the padded batch, host copies; pad_cap = 0 when
   * decode steps are never padded */
  int pad_cap;                                        /* the largest bucket */
  int32_t *pad_q_start, *pad_ctx, *pad_pos, *pad_slot; /* [pad_cap + 1], [pad_cap] ... */
  int32_t *pad_ids, *pad_lrows;                       /* [pad_cap] */
  int32_t *pad_table;                                 /* [pad_cap][max_blocks_per_seq] */
  unsigned char warm[ES_GRAPH_MAX_KEYS];              /* bucket ran once eagerly: its GEMM plans exist */
  qa_graph_stats_t gstats;
};

/* ---- weights ------------------------------------------------------------------------------------------- */

static int keep_host_block(qa_model_t *m, void *p, es_error_t *err) {
  if (m->n_host_blocks == m->cap_host_blocks) {
    int cap = m->cap_host_blocks ? 2 * m->cap_host_blocks : 64;
    void **nb = realloc(m->host_blocks, sizeof(void *) * (size_t)cap);
    if (!nb) return es_fail(err, ES_ENOMEM, "model: out of memory");
    m->host_blocks = nb;
    m->cap_host_blocks = cap;
  }
  m->host_blocks[m->n_host_blocks++] = p;
  return ES_OK;
}

static es_dtype_t dtype_of(st_dtype_t d) {
  switch (d) {
  case ST_BF16: return ES_DT_BF16;
  case ST_F16: return ES_DT_F16;
  default: return ES_DT_F32;
  }
}

static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static uint16_t f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  u += 0x7FFFu + ((u >> 16) & 1u); /* round to nearest even (no NaNs here) */
  return (uint16_t)(u >> 16);
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* --dummy-weights: element i of a tensor is a pure function of (seed, tensor name, i) — a counter-based
 * hash, uniform in [-a, a) with a = std·√3 (std 0.02 for matrices, 0.002 for biases), norms 1 — so the
 * values do not depend on how many threads draw them. Filled by up to 16 threads: the 7B model has 8.4 G
 * parameters. */
typedef struct {
  uint16_t *dst;
  int64_t begin, end;
  uint64_t key;
  float amp; /* 0: constant 1 (norm weights) */
} dummy_job_t;

static void *dummy_fill(void *arg) {
  const dummy_job_t *j = arg;
  const uint16_t one = f32_to_bf16(1.0f);
  for (int64_t i = j->begin; i < j->end; i++) {
    if (j->amp == 0.0f) {
      j->dst[i] = one;
      continue;
    }
    uint64_t z = mix64(j->key + (uint64_t)i * 0x9E3779B97F4A7C15ull);
    float u = (float)(z >> 40) * (1.0f / 8388608.0f) - 1.0f; /* 24 bits -> [-1, 1) */
    j->dst[i] = f32_to_bf16(u * j->amp);
  }
  return NULL;
}

static int dummy_tensor(qa_model_t *m, const char *name, int64_t count, void **out, es_error_t *err) {
  uint16_t *p = malloc(sizeof(uint16_t) * (size_t)count);
  if (!p) return es_fail(err, ES_ENOMEM, "dummy weights: cannot allocate %s (%lld values)", name, (long long)count);
  uint64_t key = m->opts.dummy_seed;
  for (const char *c = name; *c; c++) key = (key ^ (uint64_t)(unsigned char)*c) * 1099511628211ull;
  key = mix64(key);
  int is_norm = ends_with(name, "norm.weight") || ends_with(name, "layernorm.weight") ||
                ends_with(name, "layer_norm.weight");
  float amp = is_norm ? 0.0f : (ends_with(name, ".bias") ? 0.002f : 0.02f) * 1.7320508f;
  enum { MAX_THREADS = 16 };
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  int n = count < (1 << 20) ? 1 : (int)(cores < 1 ? 1 : cores > MAX_THREADS ? MAX_THREADS : cores);
  dummy_job_t jobs[MAX_THREADS];
  pthread_t th[MAX_THREADS];
  int started = 0;
  for (int t = 0; t < n; t++) {
    jobs[t] = (dummy_job_t){p, count * t / n, count * (t + 1) / n, key, amp};
    if (t > 0 && pthread_create(&th[t], NULL, dummy_fill, &jobs[t]) == 0)
      started |= 1 << t;
    else if (t > 0)
      dummy_fill(&jobs[t]); /* no thread: do it here */
  }
  dummy_fill(&jobs[0]);
  for (int t = 1; t < n; t++)
    if (started & (1 << t)) pthread_join(th[t], NULL);
  *out = p;
  return ES_OK;
}

/* Binds one tensor by canonical name with shape [n0] (n1 == 0) or [n0, n1...] flattened to [n0, n1];
 * fp8: quantised on upload (es_backend_upload_weight_fp8), which copies, so the host memory is not kept. */
/* The host values of one tensor of count elements: the checkpoint's bytes in their stored dtype (*owned = NULL),
 * or fresh dummy bf16 values (*owned = the malloc'd block: the caller frees or keeps it). */
static int tensor_values(qa_model_t *m, const ckpt_t *ck, const char *name, int64_t count, const void **data,
                         es_dtype_t *dt, void **owned, es_error_t *err) {
  *owned = NULL;
  if (!ck) {
    int rc = dummy_tensor(m, name, count, owned, err);
    *data = *owned;
    *dt = ES_DT_BF16;
    return rc;
  }
  ckpt_tensor_t t;
  int rc = ckpt_get(ck, name, &t, err);
  if (rc) return rc;
  if ((int64_t)t.count != count)
    return es_fail(err, ES_EINVAL, "%s: %s has %llu elements, the config implies %lld", ckpt_dir(ck), name,
                   (unsigned long long)t.count, (long long)count);
  *data = t.data;
  *dt = dtype_of(t.dtype);
  return ES_OK;
}

static int bind_as(qa_model_t *m, const ckpt_t *ck, const char *name, int64_t n0, int64_t n1, int fp8,
                   es_weight_t *w, es_error_t *err) {
  const int64_t cols = n1 ? n1 : 1;
  const void *data;
  es_dtype_t dt;
  void *owned;
  int rc = tensor_values(m, ck, name, n0 * cols, &data, &dt, &owned, err);
  if (rc) return rc;
  const size_t nbytes = (size_t)(n0 * cols) * es_dtype_size(dt);
  if (!owned && (uintptr_t)data % es_dtype_size(dt) != 0) {
    /* safetensors does not promise alignment: realign so backends may read elements directly */
    void *copy = malloc(nbytes);
    if (!copy) return es_fail(err, ES_ENOMEM, "%s: cannot realign %s", ckpt_dir(ck), name);
    memcpy(copy, data, nbytes);
    rc = keep_host_block(m, copy, err);
    if (rc) {
      free(copy);
      return rc;
    }
    data = copy;
  }
  rc = fp8 ? es_backend_upload_weight_fp8(m->be, data, dt, n0, cols, w, err)
           : es_backend_upload_weight(m->be, data, dt, n0, cols, w, err);
  if (owned) { /* a backend that keeps host memory (the CPU one aliases it) needs the values for its lifetime */
    if (!rc && !fp8 && es_backend_aliases_host(m->be))
      rc = keep_host_block(m, owned, err);
    else
      free(owned);
  }
  if (rc) es_error_prefix(err, "%s: ", name);
  return rc;
}

static int bind(qa_model_t *m, const ckpt_t *ck, const char *name, int64_t n0, int64_t n1, es_weight_t *w,
                es_error_t *err) {
  return bind_as(m, ck, name, n0, n1, 0, w, err);
}

/* ---- fused projections --------------------------------------------------------------------------------------
 * On a backend that copies weights (CUDA), a decoder layer's q/k/v projections become one [E + 2·KV, E] linear
 * (and their biases one vector) and gate/up one [2I, E] linear: 4 GEMMs per layer instead of 7, each wider,
 * which a decode step (M = 1..64, bandwidth-bound) streams closer to the copy rate. The parts are stacked by
 * rows on the host, in their stored dtype, then uploaded as one weight (fp8: the per-row scales are the same
 * as the parts' would be). The CPU backend aliases the checkpoint instead and keeps them apart (stacking would
 * copy ~9 GB at 7B); EARSHOT_FUSE_PROJECTIONS=1 fuses there too (tests: the results must not change) and =0
 * turns fusion off on CUDA (bisecting). A layer whose parts have different dtypes stays unfused. */

static int fuse_projections(const qa_model_t *m) {
  const char *env = getenv("EARSHOT_FUSE_PROJECTIONS");
  if (env && strcmp(env, "1") == 0) return 1;
  if (env && strcmp(env, "0") == 0) return 0;
  return !es_backend_aliases_host(m->be);
}

/* Binds parts[0..n) (names, rows each, all with cols columns) stacked by rows as one weight. ES_EUNSUPPORTED
 * when the parts are stored in different dtypes (the caller binds them one by one). */
static int bind_stacked(qa_model_t *m, const ckpt_t *ck, const char *const *names, const int64_t *rows, int n,
                        int64_t cols, int fp8, es_weight_t *w, es_error_t *err) {
  const void *data[3] = {NULL, NULL, NULL};
  void *owned[3] = {NULL, NULL, NULL};
  es_dtype_t dt[3] = {ES_DT_BF16, ES_DT_BF16, ES_DT_BF16};
  int64_t total = 0;
  int rc = ES_OK;
  for (int i = 0; i < n && !rc; i++) {
    total += rows[i];
    rc = tensor_values(m, ck, names[i], rows[i] * cols, &data[i], &dt[i], &owned[i], err);
    if (!rc && dt[i] != dt[0]) rc = ES_EUNSUPPORTED; /* no message: the caller falls back quietly */
  }
  char *buf = NULL;
  if (!rc) {
    const size_t es = es_dtype_size(dt[0]);
    buf = malloc((size_t)total * (size_t)cols * es);
    if (!buf) rc = es_fail(err, ES_ENOMEM, "cannot stack %s and the next %d projections", names[0], n - 1);
    for (int i = 0, row = 0; !rc && i < n; row += (int)rows[i], i++) /* unaligned sources are fine for memcpy */
      memcpy(buf + (size_t)row * (size_t)cols * es, data[i], (size_t)rows[i] * (size_t)cols * es);
  }
  for (int i = 0; i < n; i++) free(owned[i]);
  if (rc) {
    free(buf);
    return rc;
  }
  rc = fp8 ? es_backend_upload_weight_fp8(m->be, buf, dt[0], total, cols, w, err)
           : es_backend_upload_weight(m->be, buf, dt[0], total, cols, w, err);
  if (!rc && !fp8 && es_backend_aliases_host(m->be)) rc = keep_host_block(m, buf, err); /* the CPU reads it */
  else free(buf);
  if (rc) es_error_prefix(err, "%s (stacked): ", names[0]);
  return rc;
}

/* Binds layer l's q|k|v (weight, bias) and gate|up stacked; ES_EUNSUPPORTED leaves the layer for bind_weights
 * to bind part by part. */
static int bind_fused_layer(qa_model_t *m, const ckpt_t *ck, int l, es_error_t *err) {
  const model_config_t *c = &m->cfg;
  dec_layer_t *d = &m->dec[l];
  const int64_t E = c->hidden_size, I = c->intermediate_size, KV = (int64_t)c->num_key_value_heads * c->head_dim;
  const int fp8 = m->opts.quantization == QA_QUANT_FP8;
  char nq[160], nk[160], nv[160], bq[160], bk[160], bv[160], ng[160], nu[160];
  const char *pre = "language_model.model.layers";
  snprintf(nq, sizeof nq, "%s.%d.self_attn.q_proj.weight", pre, l);
  snprintf(nk, sizeof nk, "%s.%d.self_attn.k_proj.weight", pre, l);
  snprintf(nv, sizeof nv, "%s.%d.self_attn.v_proj.weight", pre, l);
  snprintf(bq, sizeof bq, "%s.%d.self_attn.q_proj.bias", pre, l);
  snprintf(bk, sizeof bk, "%s.%d.self_attn.k_proj.bias", pre, l);
  snprintf(bv, sizeof bv, "%s.%d.self_attn.v_proj.bias", pre, l);
  snprintf(ng, sizeof ng, "%s.%d.mlp.gate_proj.weight", pre, l);
  snprintf(nu, sizeof nu, "%s.%d.mlp.up_proj.weight", pre, l);
  const char *qkv[3] = {nq, nk, nv}, *qkv_b[3] = {bq, bk, bv}, *gu[2] = {ng, nu};
  const int64_t qkv_rows[3] = {E, KV, KV}, gu_rows[2] = {I, I};
  int rc;
  if ((rc = bind_stacked(m, ck, qkv, qkv_rows, 3, E, fp8, &d->wqkv, err)) ||
      (rc = bind_stacked(m, ck, qkv_b, qkv_rows, 3, 1, 0, &d->bqkv, err)) ||
      (rc = bind_stacked(m, ck, gu, gu_rows, 2, E, fp8, &d->wgu, err)))
    return rc;
  d->fused = 1;
  return ES_OK;
}

double qa_decode_weight_bytes(const model_config_t *c, size_t act_size, int quantization) {
  double E = c->hidden_size, I = c->intermediate_size, KV = (double)c->num_key_value_heads * c->head_dim,
         rows = 2 * E + 2 * KV + 2 * I + E, /* output channels: q, o; k, v; gate, up; down */
      params = 2 * E * E + 2 * KV * E + 3 * I * E;
  double per_layer = quantization == QA_QUANT_FP8 ? params + 4.0 * rows : params * (double)act_size;
  return c->num_hidden_layers * per_layer + (double)c->vocab_size * E * (double)act_size;
}

static int bind_weights(qa_model_t *m, const ckpt_t *ck, es_error_t *err) {
  const model_config_t *c = &m->cfg;
  int64_t C = c->d_model, F = c->encoder_ffn_dim, E = c->hidden_size, I = c->intermediate_size,
          V = c->vocab_size, M = c->num_mel_bins;
  char n[160];
  int rc = 0;
#define B(name_, n0_, n1_, w_)                                   \
  do {                                                           \
    rc = bind(m, ck, name_, (n0_), (n1_), (w_), err);            \
    if (rc) return rc;                                           \
  } while (0)
  B("audio_tower.conv1.weight", C, M * 3, &m->conv1_w);
  B("audio_tower.conv1.bias", C, 0, &m->conv1_b);
  B("audio_tower.conv2.weight", C, C * 3, &m->conv2_w);
  B("audio_tower.conv2.bias", C, 0, &m->conv2_b);
  B("audio_tower.embed_positions.weight", c->max_source_positions, C, &m->pos);
  for (int l = 0; l < c->encoder_layers; l++) {
    enc_layer_t *e = &m->enc[l];
#define BE(suffix, n0_, n1_, w_)                                                  \
  do {                                                                            \
    snprintf(n, sizeof n, "audio_tower.layers.%d.%s", l, suffix);                 \
    B(n, n0_, n1_, w_);                                                           \
  } while (0)
    BE("self_attn_layer_norm.weight", C, 0, &e->ln1_g);
    BE("self_attn_layer_norm.bias", C, 0, &e->ln1_b);
    BE("self_attn.q_proj.weight", C, C, &e->wq);
    BE("self_attn.q_proj.bias", C, 0, &e->bq);
    BE("self_attn.k_proj.weight", C, C, &e->wk);
    BE("self_attn.v_proj.weight", C, C, &e->wv);
    BE("self_attn.v_proj.bias", C, 0, &e->bv);
    BE("self_attn.out_proj.weight", C, C, &e->wo);
    BE("self_attn.out_proj.bias", C, 0, &e->bo);
    BE("final_layer_norm.weight", C, 0, &e->ln2_g);
    BE("final_layer_norm.bias", C, 0, &e->ln2_b);
    BE("fc1.weight", F, C, &e->w1);
    BE("fc1.bias", F, 0, &e->b1);
    BE("fc2.weight", C, F, &e->w2);
    BE("fc2.bias", C, 0, &e->b2);
#undef BE
  }
  B("audio_tower.layer_norm.weight", C, 0, &m->ln_post_g);
  B("audio_tower.layer_norm.bias", C, 0, &m->ln_post_b);
  B("multi_modal_projector.linear.weight", E, C, &m->proj_w);
  B("multi_modal_projector.linear.bias", E, 0, &m->proj_b);

  B("language_model.model.embed_tokens.weight", V, E, &m->embed);
  const int fuse = fuse_projections(m); /* decided once for every layer */
  for (int l = 0; l < c->num_hidden_layers; l++) {
    dec_layer_t *d = &m->dec[l];
#define BD(suffix, n0_, n1_, w_)                                                  \
  do {                                                                            \
    snprintf(n, sizeof n, "language_model.model.layers.%d.%s", l, suffix);        \
    B(n, n0_, n1_, w_);                                                           \
  } while (0)
/* a decoder linear: fp8 under QA_QUANT_FP8 (qwen2audio.h says which weights and why) */
#define BQ(suffix, n0_, n1_, w_)                                                                  \
  do {                                                                                            \
    snprintf(n, sizeof n, "language_model.model.layers.%d.%s", l, suffix);                        \
    rc = bind_as(m, ck, n, (n0_), (n1_), m->opts.quantization == QA_QUANT_FP8, (w_), err);       \
    if (rc) return rc;                                                                            \
  } while (0)
    int64_t KV = (int64_t)c->num_key_value_heads * c->head_dim;
    BD("input_layernorm.weight", E, 0, &d->in_norm);
    if (fuse && (rc = bind_fused_layer(m, ck, l, err)) && rc != ES_EUNSUPPORTED) return rc;
    if (!d->fused) {
      BQ("self_attn.q_proj.weight", E, E, &d->wq);
      BD("self_attn.q_proj.bias", E, 0, &d->bq);
      BQ("self_attn.k_proj.weight", KV, E, &d->wk);
      BD("self_attn.k_proj.bias", KV, 0, &d->bk);
      BQ("self_attn.v_proj.weight", KV, E, &d->wv);
      BD("self_attn.v_proj.bias", KV, 0, &d->bv);
      BQ("mlp.gate_proj.weight", I, E, &d->wg);
      BQ("mlp.up_proj.weight", I, E, &d->wu);
    }
    BQ("self_attn.o_proj.weight", E, E, &d->wo);
    BD("post_attention_layernorm.weight", E, 0, &d->post_norm);
    BQ("mlp.down_proj.weight", E, I, &d->wd);
#undef BD
#undef BQ
  }
  B("language_model.model.norm.weight", E, 0, &m->norm);
  if (c->tie_word_embeddings)
    m->lm_head = m->embed;
  else
    B("language_model.lm_head.weight", V, E, &m->lm_head);
#undef B
  return ES_OK;
}

/* ---- buffers ------------------------------------------------------------------------------------------- */

static int alloc_buffers(qa_model_t *m, es_error_t *err) {
  const model_config_t *c = &m->cfg;
  es_backend_t *be = m->be;
  size_t a = es_dtype_size(es_backend_act_dtype(be));
  size_t Bw = (size_t)m->opts.max_audio_batch, T = (size_t)m->opts.max_tokens, R = (size_t)m->opts.max_logit_rows;
  size_t C = (size_t)c->d_model, F = (size_t)c->encoder_ffn_dim, E = (size_t)c->hidden_size,
         I = (size_t)c->intermediate_size, V = (size_t)c->vocab_size, Mel = (size_t)c->num_mel_bins;
  size_t KVW = (size_t)c->num_key_value_heads * (size_t)c->head_dim;
  struct {
    void **p;
    size_t bytes;
  } want[] = {
      {&m->pos_act, (size_t)ENC_POS * C * a},
      {&m->enc_in, Bw * ENC_FRAMES * Mel * a},
      {&m->enc_c1, Bw * ENC_FRAMES * C * a},
      {&m->enc_h, Bw * ENC_POS * C * a},
      {&m->enc_a, Bw * ENC_POS * C * a},
      {&m->enc_q, Bw * ENC_POS * C * a},
      {&m->enc_k, Bw * ENC_POS * C * a},
      {&m->enc_v, Bw * ENC_POS * C * a},
      {&m->enc_att, Bw * ENC_POS * C * a},
      {&m->enc_f, Bw * ENC_POS * F * a},
      {&m->enc_pool, Bw * ENC_TOKENS * C * a},
      {&m->enc_proj, Bw * ENC_TOKENS * E * a},
      {(void **)&m->enc_idx, (Bw * ENC_TOKENS > ENC_POS ? Bw * ENC_TOKENS : ENC_POS) * sizeof(int32_t)},
      {(void **)&m->enc_dst, Bw * ENC_TOKENS * sizeof(int32_t)},
      {&m->enc_rows, Bw * ENC_TOKENS * E * a},
      {&m->audio_pool, (size_t)m->opts.audio_pool_rows * E * a},
      {&m->h, T * E * a},
      {&m->x, T * E * a},
      {&m->q, T * (E + 2 * KVW) * a}, /* a fused layer's q|k|v */
      {&m->k, T * KVW * a},
      {&m->v, T * KVW * a},
      {&m->att, T * E * a},
      {&m->o, T * E * a},
      {&m->gate, T * 2 * I * a}, /* a fused layer's gate|up */
      {&m->up, T * I * a},
      {&m->act, T * I * a},
      {&m->arows, T * E * a},
      {(void **)&m->ids_dev, T * sizeof(int32_t)},
      {(void **)&m->asrc_dev, T * sizeof(int32_t)},
      {(void **)&m->adst_dev, T * sizeof(int32_t)},
      {(void **)&m->lrows_dev, R * sizeof(int32_t)},
      {&m->xl, R * E * a},
      {(void **)&m->logits_dev, R * V * sizeof(float)},
  };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    int rc = es_backend_alloc(be, want[i].bytes ? want[i].bytes : 1, want[i].p, err);
    if (rc) return es_error_prefix(err, "model activations: ");
  }
  size_t idx_n = Bw * ENC_TOKENS > T ? Bw * ENC_TOKENS : T;
  if (idx_n < ENC_POS) idx_n = ENC_POS;
  m->mel_t = malloc(sizeof(float) * Bw * ENC_FRAMES * Mel);
  m->idx_h = malloc(sizeof(int32_t) * idx_n);
  m->idx2_h = malloc(sizeof(int32_t) * idx_n);
  if (!m->mel_t || !m->idx_h || !m->idx2_h) return es_fail(err, ES_ENOMEM, "model: host scratch");
  if (es_backend_graphs_supported(be) || m->opts.decode_buckets) {
    int cap = QA_MAX_BUCKET;
    while (cap > m->opts.max_seqs || cap > m->opts.max_tokens || cap > m->opts.max_logit_rows) cap /= 2;
    size_t n = (size_t)cap;
    m->pad_cap = cap;
    m->pad_q_start = malloc(sizeof(int32_t) * (n + 1));
    m->pad_ctx = malloc(sizeof(int32_t) * n);
    m->pad_pos = malloc(sizeof(int32_t) * n);
    m->pad_slot = malloc(sizeof(int32_t) * n);
    m->pad_ids = malloc(sizeof(int32_t) * n);
    m->pad_lrows = malloc(sizeof(int32_t) * n);
    m->pad_table = malloc(sizeof(int32_t) * n * (size_t)m->opts.max_blocks_per_seq);
    if (!m->pad_q_start || !m->pad_ctx || !m->pad_pos || !m->pad_slot || !m->pad_ids || !m->pad_lrows ||
        !m->pad_table)
      return es_fail(err, ES_ENOMEM, "model: host scratch");
  }
  /* the positional table, widened once to the activation dtype by gathering its rows 0..1499 */
  for (int i = 0; i < ENC_POS; i++) m->idx_h[i] = i;
  int rc = es_backend_write(be, m->enc_idx, m->idx_h, sizeof(int32_t) * ENC_POS, err);
  if (!rc) rc = es_op_embed(be, m->pos_act, &m->pos, m->enc_idx, ENC_POS, err);
  if (!rc) rc = es_backend_sync(be, err);
  return rc;
}

/* ---- open / close -------------------------------------------------------------------------------------- */

int qa_model_open(es_backend_t *be, const model_config_t *cfg, const ckpt_t *ck, const qa_model_opts_t *opts,
                  qa_model_t **out, es_error_t *err) {
  *out = NULL;
  if (opts->max_tokens < 1 || opts->max_seqs < 1 || opts->max_logit_rows < 1 || opts->max_audio_batch < 1 ||
      opts->audio_pool_rows < ENC_TOKENS || opts->kv_blocks < 2 || opts->max_blocks_per_seq < 1)
    return es_fail(err, ES_EINVAL, "model options: every capacity must be positive, the audio pool must hold one "
                                   "window (750 rows) and the KV pool at least 2 blocks");
  if (cfg->num_mel_bins < 1 || cfg->max_source_positions != ENC_POS)
    return es_fail(err, ES_EUNSUPPORTED, "model: max_source_positions %d (earshot runs 30 s windows: 1500)",
                   cfg->max_source_positions);
  if (opts->quantization != QA_QUANT_NONE && opts->quantization != QA_QUANT_FP8)
    return es_fail(err, ES_EINVAL, "model options: quantization %d unknown", opts->quantization);
  qa_model_t *m = calloc(1, sizeof *m);
  if (!m) return es_fail(err, ES_ENOMEM, "model: out of memory");
  m->cfg = *cfg;
  m->opts = *opts;
  m->be = be;
  const char *buckets = getenv("EARSHOT_DECODE_BUCKETS"); /* "1": as opts.decode_buckets (tests of the padding) */
  if (buckets && strcmp(buckets, "1") == 0) m->opts.decode_buckets = 1;
  m->enc = calloc((size_t)cfg->encoder_layers, sizeof(enc_layer_t));
  m->dec = calloc((size_t)cfg->num_hidden_layers, sizeof(dec_layer_t));
  int rc;
  if (!m->enc || !m->dec) {
    rc = es_fail(err, ES_ENOMEM, "model: out of memory");
    goto fail;
  }
  rc = bind_weights(m, ck, err);
  if (rc) goto fail;
  rc = alloc_buffers(m, err);
  if (rc) goto fail;
  rc = es_backend_kv_init(be, cfg->num_hidden_layers, opts->kv_blocks, cfg->num_key_value_heads, cfg->head_dim, err);
  if (rc) goto fail;
  *out = m;
  return ES_OK;
fail:
  qa_model_close(m);
  return rc;
}

void qa_model_close(qa_model_t *m) {
  if (!m) return;
  for (int i = 0; i < m->n_host_blocks; i++) free(m->host_blocks[i]);
  free(m->host_blocks);
  free(m->enc);
  free(m->dec);
  free(m->mel_t);
  free(m->idx_h);
  free(m->idx2_h);
  free(m->pad_q_start);
  free(m->pad_ctx);
  free(m->pad_pos);
  free(m->pad_slot);
  free(m->pad_ids);
  free(m->pad_lrows);
  free(m->pad_table);
  free(m);
}

const model_config_t *qa_model_config(const qa_model_t *m) { return &m->cfg; }
es_backend_t *qa_model_backend(const qa_model_t *m) { return m->be; }
const qa_model_opts_t *qa_model_opts(const qa_model_t *m) { return &m->opts; }
void qa_model_graph_stats(const qa_model_t *m, qa_graph_stats_t *out) { *out = m->gstats; }
void qa_model_forget_graphs(qa_model_t *m) { memset(m->warm, 0, sizeof m->warm); }
int qa_model_fused_layers(const qa_model_t *m) {
  int n = 0;
  for (int l = 0; l < m->cfg.num_hidden_layers; l++) n += m->dec[l].fused;
  return n;
}

int qa_audio_tokens_for_frames(int frames) {
  if (frames <= 0) return 0;
  int t1 = (frames - 1) / 2 + 1; /* conv2 (stride 2) output length */
  return t1 / 2;                 /* avg-pool (2, 2): floor */
}

/* ---- encoder ------------------------------------------------------------------------------------------- */

int qa_encode(qa_model_t *m, const float *mel, const int *frames, int B, const int *dst_row, int *rows_written,
              es_error_t *err) {
  const model_config_t *c = &m->cfg;
  es_backend_t *be = m->be;
  *rows_written = 0;
  if (B < 1 || B > m->opts.max_audio_batch)
    return es_fail(err, ES_EINVAL, "encode: %d windows (capacity %d)", B, m->opts.max_audio_batch);
  int32_t valid[64];
  if (B > 64) return es_fail(err, ES_EINVAL, "encode: at most 64 windows per call");
  int total = 0;
  for (int b = 0; b < B; b++) {
    if (frames[b] < 1 || frames[b] > ENC_FRAMES)
      return es_fail(err, ES_EINVAL, "encode: window %d has %d frames (1..3000)", b, frames[b]);
    valid[b] = (frames[b] - 1) / 2 + 1; /* T1: key positions after conv2 that hold audio (SPEC §3.3) */
    int n = qa_audio_tokens_for_frames(frames[b]);
    if (n == 0) return es_fail(err, ES_EINVAL, "encode: window %d is too short to produce any audio token", b);
    if (dst_row[b] < 0 || dst_row[b] + n > m->opts.audio_pool_rows)
      return es_fail(err, ES_ETOOBIG, "encode: rows %d..%d outside the audio pool (%d rows)", dst_row[b],
                     dst_row[b] + n, m->opts.audio_pool_rows);
    for (int i = 0; i < n; i++) {
      m->idx_h[total + i] = b * ENC_TOKENS + i; /* source row in the projector output */
      m->idx2_h[total + i] = dst_row[b] + i;   /* destination row in the pool */
    }
    total += n;
  }

  int64_t C = c->d_model, Mel = c->num_mel_bins, E = c->hidden_size, F = c->encoder_ffn_dim;
  int H = c->encoder_attention_heads, D = (int)(C / H);
  int64_t rows = (int64_t)B * ENC_POS;

  /* features [B][128][3000] -> time-major [B][3000][128], the layout conv1d reads */
  for (int b = 0; b < B; b++)
    for (int64_t f = 0; f < Mel; f++)
      for (int t = 0; t < ENC_FRAMES; t++)
        m->mel_t[((size_t)b * ENC_FRAMES + t) * Mel + f] = mel[((size_t)b * Mel + f) * ENC_FRAMES + t];
  int rc = es_backend_write_act(be, m->enc_in, m->mel_t, (size_t)B * ENC_FRAMES * Mel, err);
  if (rc) return rc;

  /* conv1 (k3 s1 p1) + GELU, conv2 (k3 s2 p1) + GELU, + stored positions. Every one of the 3000 frames goes
   * in, padding included: conv1 at the last valid frame reads the first padding frame (SPEC §3.2). */
  if ((rc = es_op_conv1d(be, m->enc_c1, m->enc_in, &m->conv1_w, &m->conv1_b, B, ENC_FRAMES, Mel, 3, 1, 1,
                         ES_ACT_GELU, err)) ||
      (rc = es_op_conv1d(be, m->enc_h, m->enc_c1, &m->conv2_w, &m->conv2_b, B, ENC_FRAMES, C, 3, 2, 1, ES_ACT_GELU,
                         err)) ||
      (rc = es_op_add_rows(be, m->enc_h, m->pos_act, rows, ENC_POS, C, err)))
    return rc;

  float scale = 1.0f / sqrtf((float)D); /* 64^-0.5 = 0.125 exactly */
  for (int l = 0; l < c->encoder_layers; l++) {
    const enc_layer_t *e = &m->enc[l];
    if ((rc = es_op_layer_norm(be, m->enc_a, m->enc_h, &e->ln1_g, &e->ln1_b, rows, C, 1e-5f, err)) ||
        (rc = es_op_linear(be, m->enc_q, C, m->enc_a, C, &e->wq, &e->bq, rows, ES_ACT_NONE, 0, err)) ||
        (rc = es_op_linear(be, m->enc_k, C, m->enc_a, C, &e->wk, NULL, rows, ES_ACT_NONE, 0, err)) ||
        (rc = es_op_linear(be, m->enc_v, C, m->enc_a, C, &e->wv, &e->bv, rows, ES_ACT_NONE, 0, err)) ||
        (rc = es_op_attention_dense(be, m->enc_att, m->enc_q, C, m->enc_k, C, m->enc_v, C, B, ENC_POS, H, D, scale,
                                    valid, err)) ||
        (rc = es_op_linear(be, m->enc_h, C, m->enc_att, C, &e->wo, &e->bo, rows, ES_ACT_NONE, 1, err)) ||
        (rc = es_op_layer_norm(be, m->enc_a, m->enc_h, &e->ln2_g, &e->ln2_b, rows, C, 1e-5f, err)) ||
        (rc = es_op_linear(be, m->enc_f, F, m->enc_a, C, &e->w1, &e->b1, rows, ES_ACT_GELU, 0, err)) ||
        (rc = es_op_linear(be, m->enc_h, C, m->enc_f, F, &e->w2, &e->b2, rows, ES_ACT_NONE, 1, err)))
      return es_error_prefix(err, "encoder layer %d: ", l);
  }
  int64_t prow = (int64_t)B * ENC_TOKENS;
  if ((rc = es_op_avg_pool2(be, m->enc_pool, m->enc_h, B, ENC_POS, C, err)) ||
      (rc = es_op_layer_norm(be, m->enc_pool, m->enc_pool, &m->ln_post_g, &m->ln_post_b, prow, C, 1e-5f, err)) ||
      (rc = es_op_linear(be, m->enc_proj, E, m->enc_pool, C, &m->proj_w, &m->proj_b, prow, ES_ACT_NONE, 0, err)))
    return rc;
  /* keep the first N_b rows of each window: gather them compactly, then scatter them to their pool rows */
  if ((rc = es_backend_write(be, m->enc_idx, m->idx_h, sizeof(int32_t) * (size_t)total, err)) ||
      (rc = es_backend_write(be, m->enc_dst, m->idx2_h, sizeof(int32_t) * (size_t)total, err)) ||
      (rc = es_op_gather_rows(be, m->enc_rows, m->enc_proj, m->enc_idx, total, E, err)) ||
      (rc = es_op_scatter_rows(be, m->audio_pool, m->enc_rows, m->enc_dst, total, E, err)))
    return rc;
  *rows_written = total;
  return ES_OK;
}

int qa_read_audio_rows(qa_model_t *m, int row, int n, float *out, es_error_t *err) {
  if (row < 0 || n < 0 || row + n > m->opts.audio_pool_rows)
    return es_fail(err, ES_EINVAL, "audio rows %d..%d outside the pool", row, row + n);
  size_t E = (size_t)m->cfg.hidden_size, a = es_dtype_size(es_backend_act_dtype(m->be));
  int rc = es_backend_sync(m->be, err);
  if (rc) return rc;
  return es_backend_read_act(m->be, out, (const char *)m->audio_pool + (size_t)row * E * a, (size_t)n * E, err);
}

/* ---- decoder step -------------------------------------------------------------------------------------- */

/* ---- the decoder step ----------------------------------------------------------------------------------- */

/* The decoder ops of one step, from ids already on the device (ids_dev; audio rows in asrc_dev/adst_dev,
 * logit rows in lrows_dev) to fp32 logits in logits_dev. Host arguments depend only on (T, n_audio,
 * n_logits): a recorded graph of this function stays valid for every step with the same three. */
static int decoder_forward(qa_model_t *m, int T, int n_audio, int n_logits, es_error_t *err) {
  const model_config_t *c = &m->cfg;
  es_backend_t *be = m->be;
  int64_t E = c->hidden_size, I = c->intermediate_size;
  int H = c->num_attention_heads, D = c->head_dim, KVH = c->num_key_value_heads;
  int64_t KVW = (int64_t)KVH * D;
  float eps = (float)c->rms_norm_eps, theta = (float)c->rope_theta;
  float scale = 1.0f / sqrtf((float)D);
  int rc;
  /* token embeddings, then the audio rows over the placeholders (the embedding row of <|AUDIO|> itself is
   * never used, as in transformers' masked_scatter) */
  if ((rc = es_op_embed(be, m->h, &m->embed, m->ids_dev, T, err))) return rc;
  if (n_audio) {
    if ((rc = es_op_gather_rows(be, m->arows, m->audio_pool, m->asrc_dev, n_audio, E, err)) ||
        (rc = es_op_scatter_rows(be, m->h, m->arows, m->adst_dev, n_audio, E, err)))
      return rc;
  }
  /* The first layer's input norm; every later norm runs with the linear before it (es_op_linear_rms_norm: o = the
   * linear's output; residual h += o; x = norm(h)), which the backend may run as one kernel. */
  const int L = c->num_hidden_layers;
  if ((rc = es_op_rms_norm(be, m->x, m->h, NULL, L > 0 ? &m->dec[0].in_norm : &m->norm, T, E, eps, err)))
    return es_error_prefix(err, "decoder layer 0: ");
  /* with fused projections q, k, v are column slices of one [T, E + 2·KV] output, gate and up of one [T, 2I] */
  const size_t a = es_dtype_size(es_backend_act_dtype(be));
  for (int l = 0; l < L; l++) {
    const dec_layer_t *d = &m->dec[l];
    const int fused = d->fused;
    const int qkv_rope = fused && KVH == H && E == (int64_t)H * D; /* q|k|v stacked as es_op_linear_rope_kv_store's */
    const int64_t ldqkv = fused ? E + 2 * KVW : E, ldkv = fused ? ldqkv : KVW, ldgu = fused ? 2 * I : I;
    void *q = m->q, *k = fused ? (char *)m->q + (size_t)E * a : m->k,
         *v = fused ? (char *)m->q + (size_t)(E + KVW) * a : m->v;
    void *gate = m->gate, *up = fused ? (char *)m->gate + (size_t)I * a : m->up;
    const es_weight_t *next_norm = l + 1 < L ? &m->dec[l + 1].in_norm : &m->norm; /* after the MLP */
    if (qkv_rope) /* one op: the backend may apply RoPE and store k, v in the linear's epilogue */
      rc = es_op_linear_rope_kv_store(be, l, q, ldqkv, m->x, E, &d->wqkv, &d->bqkv, H, D, theta, err);
    else if (fused)
      rc = es_op_linear(be, q, ldqkv, m->x, E, &d->wqkv, &d->bqkv, T, ES_ACT_NONE, 0, err);
    else if (!(rc = es_op_linear(be, q, E, m->x, E, &d->wq, &d->bq, T, ES_ACT_NONE, 0, err)) &&
             !(rc = es_op_linear(be, k, KVW, m->x, E, &d->wk, &d->bk, T, ES_ACT_NONE, 0, err)))
      rc = es_op_linear(be, v, KVW, m->x, E, &d->wv, &d->bv, T, ES_ACT_NONE, 0, err);
    if (rc || (!qkv_rope && (rc = es_op_rope_kv_store(be, l, q, ldqkv, k, ldkv, v, ldkv, H, D, theta, err))) ||
        (rc = es_op_attention_paged(be, l, m->att, q, ldqkv, H, D, scale, err)) ||
        (rc = es_op_linear_rms_norm(be, m->x, m->h, m->o, m->att, E, &d->wo, &d->post_norm, T, eps, err)))
      goto layer_failed;
    if (fused) /* one op: the backend may apply silu(gate) · up in the linear's epilogue (backend.h) */
      rc = es_op_linear_silu_mul(be, m->act, gate, ldgu, m->x, E, &d->wgu, T, err);
    else if (!(rc = es_op_linear(be, gate, I, m->x, E, &d->wg, NULL, T, ES_ACT_NONE, 0, err)) &&
             !(rc = es_op_linear(be, up, I, m->x, E, &d->wu, NULL, T, ES_ACT_NONE, 0, err)))
      rc = es_op_silu_mul(be, m->act, gate, up, ldgu, T, I, err);
    if (rc || (rc = es_op_linear_rms_norm(be, m->x, m->h, m->o, m->act, I, &d->wd, next_norm, T, eps, err)))
      goto layer_failed;
    continue;
  layer_failed:
    return es_error_prefix(err, "decoder layer %d: ", l);
  }
  if (n_logits > 0 && ((rc = es_op_gather_rows(be, m->xl, m->x, m->lrows_dev, n_logits, E, err)) ||
                       (rc = es_op_logits(be, m->logits_dev, m->xl, &m->lm_head, n_logits, err))))
    return rc;
  return ES_OK;
}

/* ---- decode steps as graphs -----------------------------------------------------------------------------
 * A step in which every sequence decodes one token, with no audio rows and one logit row per sequence in
 * order, is padded to the next bucket (1, 2, 4 ... QA_MAX_BUCKET sequences): the padding sequences decode
 * token 0 at position 0 into the scratch block (es_batch_t.n_pad) and their logits are never read. Every op
 * of a padded step then has the same host arguments for every step of its bucket, so on a backend with step
 * graphs the bucket's ops are recorded once and replayed (backend.h). The first step of a bucket runs
 * eagerly (creating the GEMM plans the recording needs), the second records and replays, later ones replay.
 * The block-table stride of a padded step is always max_blocks_per_seq (a recorded kernel's argument).
 * With opts.decode_buckets and no graph support the padding alone runs (tests: padding must not change a
 * real row's result, bit for bit on the batch-invariant CPU backend). */

static int bucket_of(const qa_model_t *m, const es_batch_t *b, int n_audio, const int32_t *logit_rows, int n_logits) {
  if (!m->pad_cap || n_audio || b->n_pad || b->n_tokens != b->n_seqs || n_logits != b->n_seqs ||
      b->n_seqs > m->pad_cap || b->max_blocks > m->opts.max_blocks_per_seq)
    return 0;
  for (int i = 0; i < n_logits; i++)
    if (logit_rows[i] != i) return 0;
  int B = 1;
  while (B < b->n_seqs) B *= 2;
  return B;
}

static int key_of_bucket(int B) {
  int k = 0;
  while ((1 << k) < B) k++;
  return k;
}

/* The padded copy of a decode step's batch, in the model's pad_* arrays. */
static es_batch_t pad_batch(qa_model_t *m, const es_batch_t *b, const int32_t *ids, int B) {
  const int n = b->n_seqs, stride = m->opts.max_blocks_per_seq;
  for (int s = 0; s < B; s++) {
    const int real = s < n;
    m->pad_q_start[s] = s;
    m->pad_ctx[s] = real ? b->ctx_len[s] : 1;
    m->pad_pos[s] = real ? b->positions[s] : 0;
    m->pad_slot[s] = real ? b->slot[s] : 0;
    m->pad_ids[s] = real ? ids[s] : 0;
    m->pad_lrows[s] = s;
    int32_t *row = m->pad_table + (size_t)s * (size_t)stride;
    memset(row, 0, sizeof(int32_t) * (size_t)stride);
    if (real) memcpy(row, b->block_table + (size_t)s * (size_t)b->max_blocks, sizeof(int32_t) * (size_t)b->max_blocks);
  }
  m->pad_q_start[B] = B;
  es_batch_t p = {.n_seqs = B,
                  .n_tokens = B,
                  .q_start = m->pad_q_start,
                  .ctx_len = m->pad_ctx,
                  .positions = m->pad_pos,
                  .slot = m->pad_slot,
                  .block_table = m->pad_table,
                  .max_blocks = stride,
                  .n_pad = B - n};
  return p;
}

/* Runs decoder_forward for a padded bucket of B rows: replayed, recorded, or eagerly (see above). */
static int forward_bucket(qa_model_t *m, int B, es_error_t *err) {
  es_backend_t *be = m->be;
  const int key = key_of_bucket(B);
  int rc;
  if (!es_backend_graphs_supported(be) || key >= ES_GRAPH_MAX_KEYS) {
    m->gstats.padded_eager++;
    return decoder_forward(m, B, 0, B, err);
  }
  if (es_backend_graph_has(be, key)) {
    m->gstats.replays++;
    return es_backend_graph_launch(be, key, err);
  }
  if (!m->warm[key]) {
    m->warm[key] = 1;
    m->gstats.padded_eager++;
    return decoder_forward(m, B, 0, B, err);
  }
  if ((rc = es_backend_graph_begin(be, err))) return rc;
  if ((rc = decoder_forward(m, B, 0, B, err))) {
    es_backend_graph_abort(be);
    return es_error_prefix(err, "recording the decode graph of %d sequences: ", B);
  }
  if ((rc = es_backend_graph_end(be, key, err))) {
    if (rc != ES_EUNSUPPORTED) return rc;
    /* the backend refused the recording and switched graphs off; nothing ran: run the step op by op */
    m->gstats.record_failures++;
    m->gstats.padded_eager++;
    return decoder_forward(m, B, 0, B, err);
  }
  m->gstats.records++;
  m->gstats.replays++;
  return es_backend_graph_launch(be, key, err);
}

/* The step; logits, when not NULL, get the logit rows on the host, else they stay in m->logits_dev. */
static int step(qa_model_t *m, const es_batch_t *batch, const int32_t *ids, const int32_t *audio_row,
                const int32_t *logit_rows, int n_logits, float *logits, es_error_t *err) {
  const model_config_t *c = &m->cfg;
  es_backend_t *be = m->be;
  int T = batch->n_tokens;
  if (T < 1 || T > m->opts.max_tokens || batch->n_seqs > m->opts.max_seqs)
    return es_fail(err, ES_EINVAL, "step: %d rows / %d sequences over the capacity (%d / %d)", T, batch->n_seqs,
                   m->opts.max_tokens, m->opts.max_seqs);
  if (n_logits < 0 || n_logits > m->opts.max_logit_rows)
    return es_fail(err, ES_EINVAL, "step: %d logit rows (capacity %d)", n_logits, m->opts.max_logit_rows);
  int n_audio = 0;
  for (int i = 0; i < T; i++) {
    if (ids[i] < 0 || ids[i] >= c->vocab_size)
      return es_fail(err, ES_EINVAL, "step: token id %d outside the vocabulary (%d)", ids[i], c->vocab_size);
    /* A row holding the placeholder id without an audio row takes the embedding table's row like any token: that
     * is a generated <|AUDIO|> (transformers embeds it at decode: SPEC §3.6 — only the prefill merges audio). The
     * prompt's placeholders all get audio rows (the engine checks their count at submit). */
    if (audio_row[i] >= 0) {
      if (audio_row[i] >= m->opts.audio_pool_rows)
        return es_fail(err, ES_EINVAL, "step: audio row %d outside the pool", audio_row[i]);
      m->idx_h[n_audio] = audio_row[i];
      m->idx2_h[n_audio] = i;
      n_audio++;
    }
  }
  for (int r = 0; r < n_logits; r++)
    if (logit_rows[r] < 0 || logit_rows[r] >= T)
      return es_fail(err, ES_EINVAL, "step: logit row %d outside the step's %d rows", logit_rows[r], T);

  const int64_t V = c->vocab_size;
  if (c->num_key_value_heads != c->num_attention_heads)
    return es_fail(err, ES_EUNSUPPORTED, "step: grouped-query attention is not supported");

  int B = bucket_of(m, batch, n_audio, logit_rows, n_logits);
  int rc;
  if (B) {
    es_batch_t padded = pad_batch(m, batch, ids, B);
    rc = es_backend_begin_step(be, &padded, err);
    if (rc) return rc;
    if (!(rc = es_backend_write(be, m->ids_dev, m->pad_ids, sizeof(int32_t) * (size_t)B, err)) &&
        !(rc = es_backend_write(be, m->lrows_dev, m->pad_lrows, sizeof(int32_t) * (size_t)B, err)))
      rc = forward_bucket(m, B, err);
  } else {
    rc = es_backend_begin_step(be, batch, err);
    if (rc) return rc;
    m->gstats.eager++;
    if (!(rc = es_backend_write(be, m->ids_dev, ids, sizeof(int32_t) * (size_t)T, err)) && n_audio)
      if (!(rc = es_backend_write(be, m->asrc_dev, m->idx_h, sizeof(int32_t) * (size_t)n_audio, err)))
        rc = es_backend_write(be, m->adst_dev, m->idx2_h, sizeof(int32_t) * (size_t)n_audio, err);
    if (!rc && n_logits > 0)
      rc = es_backend_write(be, m->lrows_dev, logit_rows, sizeof(int32_t) * (size_t)n_logits, err);
    if (!rc) rc = decoder_forward(m, T, n_audio, n_logits, err);
  }
  /* the first n_logits rows of logits_dev are the wanted ones either way (a padded step's real rows come first) */
  if (!rc && logits && n_logits > 0 && !(rc = es_backend_sync(be, err)))
    rc = es_backend_read(be, logits, m->logits_dev, sizeof(float) * (size_t)n_logits * (size_t)V, err);
  es_error_t end_err;
  int rc2 = es_backend_end_step(be, &end_err);
  if (!rc && rc2) {
    *err = end_err;
    rc = rc2;
  }
  return rc;
}

int qa_step(qa_model_t *m, const es_batch_t *batch, const int32_t *ids, const int32_t *audio_row,
            const int32_t *logit_rows, int n_logits, float *logits, es_error_t *err) {
  return step(m, batch, ids, audio_row, logit_rows, n_logits, logits, err);
}

int qa_step_device(qa_model_t *m, const es_batch_t *batch, const int32_t *ids, const int32_t *audio_row,
                   const int32_t *logit_rows, int n_logits, float **logits_dev, es_error_t *err) {
  *logits_dev = NULL;
  int rc = step(m, batch, ids, audio_row, logit_rows, n_logits, NULL, err);
  if (!rc) *logits_dev = m->logits_dev;
  return rc;
}
