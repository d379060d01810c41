/* cpu_attention: attention for the CPU backend. See cpu_attention.h.
 *
 * One task computes one (query row, head): scores s_j = (q · k_j) · scale for the keys it may see, then
 * m = max s_j, e_j = exp(s_j − m), Σ = Σ_j e_j in key order, out = (Σ_j e_j · v_j) / Σ. The dot product
 * uses 8 fixed partial sums reduced in a fixed order, so every number depends only on D and the keys of
 * its own row: alone or in a batch, on any thread count, the bits are the same.
 *
 * Napkin math: encoder, T = 1500, 20 heads × 64: 4·T²·H·D ≈ 11.5 GFLOP per layer; decode at context P,
 * 32 heads × 128: reads 2·P·4096 fp32 per layer (32 KiB per position).
 */
#include "cpu_attention.h"

#include <math.h>

#include "cpu_ops.h"

typedef float v4 __attribute__((vector_size(16)));

/* q · k with 8 fixed partial sums (lanes d mod 8) reduced pairwise, then the scalar tail for D mod 8. */
static float dot(const float *a, const float *b, int D) {
  v4 lo = {0}, hi = {0}, x, y;
  int d = 0;
  for (; d + 8 <= D; d += 8) {
    memcpy(&x, a + d, sizeof x);
    memcpy(&y, b + d, sizeof y);
    lo += x * y;
    memcpy(&x, a + d + 4, sizeof x);
    memcpy(&y, b + d + 4, sizeof y);
    hi += x * y;
  }
  float tail = 0.0f;
  for (; d < D; d++) tail += a[d] * b[d];
  return (((lo[0] + hi[0]) + (lo[1] + hi[1])) + ((lo[2] + hi[2]) + (lo[3] + hi[3]))) + tail;
}

/* out[D] = Σ_j softmax(s)_j · v_j for n keys; s (n scores) is overwritten with e_j. */
static void softmax_v(float *out, float *s, int64_t n, const float *(*vrow)(const void *, int64_t), const void *vctx,
                      int D) {
  float m = -INFINITY;
  for (int64_t j = 0; j < n; j++) m = s[j] > m ? s[j] : m;
  float sum = 0.0f;
  for (int64_t j = 0; j < n; j++) {
    s[j] = expf(s[j] - m);
    sum += s[j];
  }
  for (int d = 0; d < D; d++) out[d] = 0.0f;
  for (int64_t j = 0; j < n; j++) {
    const float *v = vrow(vctx, j);
    float e = s[j];
    for (int d = 0; d < D; d++) out[d] += e * v[d];
  }
  for (int d = 0; d < D; d++) out[d] /= sum;
}

/* ---- paged, causal ---------------------------------------------------------------------------------- */

typedef struct {
  cpu_backend_t *cb;
  int layer, H, D, h, kv;
  int32_t seq;
  float *out;
  const float *q;
  int64_t ldq;
  float scale;
  float *row; /* fp8 KV cache: the task's buffer for one dequantised row (D floats) */
} paged_job_t;

/* Key or value j of the task's sequence and head. With an fp8 KV cache the row is dequantised into p->row,
 * decode(code) · scale for each element (backend.h), so the arithmetic below is the fp32 one on those values. */
static const float *paged_row(const void *ctx, int64_t j) {
  const paged_job_t *p = ctx;
  const es_batch_t *b = &p->cb->base.batch;
  int32_t blk = b->block_table[(int64_t)p->seq * b->max_blocks + j / ES_KV_BLOCK];
  const int off = (int)(j % ES_KV_BLOCK);
  if (!p->cb->base.opts.kv_fp8) return cpu_kv_tile(p->cb, p->layer, blk, p->kv, p->h) + (int64_t)off * p->D;
  const uint8_t *codes = cpu_kv_codes(p->cb, p->layer, blk, p->kv, p->h) + (int64_t)off * p->D;
  const float sc = cpu_kv_scales(p->cb, p->layer, blk, p->kv, p->h)[off];
  for (int d = 0; d < p->D; d++) p->row[d] = p->cb->fp8_lut[codes[d]] * sc;
  return p->row;
}

static int32_t seq_of_row(const es_batch_t *b, int64_t i) {
  int32_t lo = 0, hi = b->n_seqs - 1; /* the s with q_start[s] <= i < q_start[s+1] */
  while (lo < hi) {
    int32_t mid = (lo + hi + 1) / 2;
    if (b->q_start[mid] <= i)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

static void paged_task(void *ctx, int64_t task, int tid) {
  const paged_job_t *job = ctx;
  const es_batch_t *b = &job->cb->base.batch;
  int64_t i = task / job->H;
  paged_job_t p = *job;
  float row[ES_KV_FP8_MAX_D]; /* backend.c refuses an fp8 KV cache with a larger head dim */
  p.row = row;
  p.h = (int)(task % job->H);
  p.seq = seq_of_row(b, i);
  int64_t pos = b->ctx_len[p.seq] - (b->q_start[p.seq + 1] - i), n = pos + 1;
  const float *q = p.q + i * p.ldq + (int64_t)p.h * p.D;
  float *s = job->cb->scratch[tid].buf[CPU_SCR_ATT];
  p.kv = 0;
  for (int64_t j = 0; j < n; j++) s[j] = dot(q, paged_row(&p, j), p.D) * p.scale;
  p.kv = 1;
  softmax_v(p.out + (i * p.H + p.h) * p.D, s, n, paged_row, &p, p.D);
}

int cpu_op_attention_paged(es_backend_t *be, int layer, void *out, const void *q, int64_t ldq, int H, int D,
                           float scale, es_error_t *err) {
  cpu_backend_t *cb = cpu_be(be);
  const es_batch_t *b = &be->batch;
  int32_t max_ctx = 0;
  for (int32_t s = 0; s < b->n_seqs; s++) max_ctx = b->ctx_len[s] > max_ctx ? b->ctx_len[s] : max_ctx;
  if ((size_t)max_ctx > cb->scratch[0].cap[CPU_SCR_ATT])
    return es_fail(err, ES_EINTERNAL, "attention_paged: context %d over the reserved %zu", max_ctx,
                   cb->scratch[0].cap[CPU_SCR_ATT]);
  paged_job_t p = {.cb = cb, .layer = layer, .H = H, .D = D, .out = out, .q = q, .ldq = ldq, .scale = scale};
  cpu_pool_run(cb->pool, (int64_t)b->n_tokens * H, paged_task, &p);
  return ES_OK;
}

/* ---- dense, key padding -------------------------------------------------------------------------------- */

typedef struct {
  cpu_backend_t *cb;
  float *out;
  const float *q, *k, *v;
  int64_t ldq, ldk, ldv, B, T;
  int H, D;
  float scale;
  const int32_t *valid_len;
} dense_job_t;

typedef struct {
  const float *base;
  int64_t ld;
} rows_t;

static const float *dense_row(const void *ctx, int64_t j) {
  const rows_t *r = ctx;
  return r->base + j * r->ld;
}

static void dense_task(void *ctx, int64_t task, int tid) {
  const dense_job_t *g = ctx;
  int64_t t = task % g->T, bh = task / g->T, b = bh / g->H;
  int h = (int)(bh % g->H);
  int64_t n = g->valid_len[b], hd = (int64_t)h * g->D, row0 = b * g->T;
  const float *q = g->q + (row0 + t) * g->ldq + hd;
  float *s = g->cb->scratch[tid].buf[CPU_SCR_ATT];
  for (int64_t j = 0; j < n; j++) s[j] = dot(q, g->k + (row0 + j) * g->ldk + hd, g->D) * g->scale;
  rows_t vr = {g->v + row0 * g->ldv + hd, g->ldv};
  softmax_v(g->out + ((row0 + t) * g->H + h) * g->D, s, n, dense_row, &vr, g->D);
}

int cpu_op_attention_dense(es_backend_t *be, void *out, const void *q, int64_t ldq, const void *k, int64_t ldk,
                           const void *v, int64_t ldv, int64_t B, int64_t T, int H, int D, float scale,
                           const int32_t *valid_len, es_error_t *err) {
  cpu_backend_t *cb = cpu_be(be);
  /* grows once to the longest T seen (start-up, or the first audio of that length), then never again */
  int rc = cpu_scratch_reserve(cb, CPU_SCR_ATT, (size_t)T, err);
  if (rc) return rc;
  dense_job_t g = {.cb = cb,
                   .out = out,
                   .q = q,
                   .k = k,
                   .v = v,
                   .ldq = ldq,
                   .ldk = ldk,
                   .ldv = ldv,
                   .B = B,
                   .T = T,
                   .H = H,
                   .D = D,
                   .scale = scale,
                   .valid_len = valid_len};
  cpu_pool_run(cb->pool, B * H * T, dense_task, &g);
  return ES_OK;
}
