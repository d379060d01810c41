/* cpu_ops: row-wise ops of the CPU backend. See cpu_ops.h.
 *
 * Every op splits its rows into fixed ranges (a function of the row width only), so a row's result never
 * depends on M or the thread count. Row statistics (LayerNorm mean/variance, RMSNorm mean square) are
 * summed in double in index order: more accurate than torch's fp32 reductions, and order-independent of
 * the batch.
 */
#include "cpu_ops.h"

#include <math.h>

#include "fp8_math.h"

/* Rows per task: about 16 K elements of work each. */
static int64_t rows_per_task(int64_t C) {
  return C >= 16384 ? 1 : 16384 / C;
}

typedef struct {
  cpu_backend_t *cb;
  float *y, *res;
  const float *x, *add, *rows, *up;
  const es_weight_t *w0, *w1;
  const int32_t *idx;
  int64_t M, T, C, ld, rpt;
  float eps;
} row_job_t;

static void run_rows(row_job_t *j, int64_t M, cpu_pool_fn fn) {
  j->M = M;
  cpu_pool_run(j->cb->pool, (M + j->rpt - 1) / j->rpt, fn, j);
}

#define FOR_ROWS(j, task, i)                                                                                           \
  for (int64_t i = (task) * (j)->rpt, i##_end = i + (j)->rpt < (j)->M ? i + (j)->rpt : (j)->M; i < i##_end; i++)

/* ---- LayerNorm: y = (x − μ) / √(σ² + eps) · γ + β, biased σ² (SPEC §3.2) -------------------------------- */

static void layer_norm_task(void *ctx, int64_t task, int tid) {
  row_job_t *j = ctx;
  int64_t C = j->C;
  FOR_ROWS(j, task, i) {
    const float *x = j->x + i * C;
    float *y = j->y + i * C;
    double s = 0, ss = 0;
    for (int64_t c = 0; c < C; c++) s += x[c];
    double mean = s / (double)C;
    for (int64_t c = 0; c < C; c++) ss += ((double)x[c] - mean) * ((double)x[c] - mean);
    float mu = (float)mean, rstd = (float)(1.0 / sqrt(ss / (double)C + (double)j->eps));
    for (int64_t c = 0; c < C; c++) y[c] = (x[c] - mu) * rstd * cpu_weight_at(j->w0, c) + cpu_weight_at(j->w1, c);
  }
}

int cpu_op_layer_norm(es_backend_t *be, void *y, const void *x, const es_weight_t *gamma, const es_weight_t *beta,
                      int64_t M, int64_t C, float eps, es_error_t *err) {
  row_job_t j = {
      .cb = cpu_be(be), .y = y, .x = x, .w0 = gamma, .w1 = beta, .C = C, .eps = eps, .rpt = rows_per_task(C)};
  run_rows(&j, M, layer_norm_task);
  return ES_OK;
}

/* ---- Qwen2 RMSNorm with the residual add (SPEC §4) -------------------------------------------------------
 * residual += add; y = w · (r · rsqrt(mean(r²) + eps)); the rounding to the compute dtype before the
 * weight multiply is a no-op in fp32. */

static void rms_norm_task(void *ctx, int64_t task, int tid) {
  row_job_t *j = ctx;
  int64_t C = j->C;
  FOR_ROWS(j, task, i) {
    float *r = j->res + i * C, *y = j->y + i * C;
    if (j->add) {
      const float *a = j->add + i * C;
      for (int64_t c = 0; c < C; c++) r[c] += a[c];
    }
    double ss = 0;
    for (int64_t c = 0; c < C; c++) ss += (double)r[c] * (double)r[c];
    float inv = 1.0f / sqrtf((float)(ss / (double)C) + j->eps);
    for (int64_t c = 0; c < C; c++) y[c] = cpu_weight_at(j->w0, c) * (r[c] * inv);
  }
}

int cpu_op_rms_norm(es_backend_t *be, void *y, void *residual, const void *add, const es_weight_t *weight, int64_t M,
                    int64_t C, float eps, es_error_t *err) {
  row_job_t j = {
      .cb = cpu_be(be), .y = y, .res = residual, .add = add, .w0 = weight, .C = C, .eps = eps, .rpt = rows_per_task(C)};
  run_rows(&j, M, rms_norm_task);
  return ES_OK;
}

/* ---- x[b·T + t] += rows[t] ---------------------------------------------------------------------------- */

static void add_rows_task(void *ctx, int64_t task, int tid) {
  row_job_t *j = ctx;
  FOR_ROWS(j, task, i) {
    float *x = j->y + i * j->C;
    const float *r = j->rows + (i % j->T) * j->C;
    for (int64_t c = 0; c < j->C; c++) x[c] += r[c];
  }
}

int cpu_op_add_rows(es_backend_t *be, void *x, const void *rows, int64_t M, int64_t T, int64_t C, es_error_t *err) {
  row_job_t j = {.cb = cpu_be(be), .y = x, .rows = rows, .T = T, .C = C, .rpt = rows_per_task(C)};
  run_rows(&j, M, add_rows_task);
  return ES_OK;
}

/* ---- RoPE (half-split, SPEC §4) and the KV store -----------------------------------------------------------
 * As transformers computes it in float32: inv_freq[i] = 1 / theta^(2i/D) (the exponent an fp32 quotient,
 * the power rounded to fp32, then the fp32 reciprocal), freq = (float)pos · inv_freq[i] in fp32,
 * cos/sin of that fp32 value; out[i] = x[i]·cos − x[i+D/2]·sin, out[i+D/2] = x[i+D/2]·cos + x[i]·sin. */

#define ROPE_MAX_HALF 1024

typedef struct {
  cpu_backend_t *cb;
  int layer, H, D;
  float *q, *k;
  const float *v;
  int64_t ldq, ldk, ldv;
  float inv_freq[ROPE_MAX_HALF];
} rope_job_t;

static void rotate(float *x, const float *cs, const float *sn, int half) {
  for (int i = 0; i < half; i++) {
    float a = x[i], b = x[i + half];
    x[i] = a * cs[i] - b * sn[i];
    x[i + half] = b * cs[i] + a * sn[i];
  }
}

static void rope_task(void *ctx, int64_t i, int tid) {
  rope_job_t *j = ctx;
  const es_batch_t *b = &j->cb->base.batch;
  int half = j->D / 2;
  float cs[ROPE_MAX_HALF], sn[ROPE_MAX_HALF];
  float pos = (float)b->positions[i];
  for (int f = 0; f < half; f++) {
    float a = pos * j->inv_freq[f];
    cs[f] = cosf(a);
    sn[f] = sinf(a);
  }
  int32_t slot = b->slot[i], blk = slot / ES_KV_BLOCK, off = slot % ES_KV_BLOCK;
  for (int h = 0; h < j->H; h++) {
    float *q = j->q + i * j->ldq + (int64_t)h * j->D, *k = j->k + i * j->ldk + (int64_t)h * j->D;
    rotate(q, cs, sn, half);
    rotate(k, cs, sn, half);
    const float *v = j->v + i * j->ldv + (int64_t)h * j->D;
    if (j->cb->base.opts.kv_fp8) { /* fp8 KV cache: codes and the row's scale (fp8_math.h) */
      cpu_kv_scales(j->cb, j->layer, blk, 0, h)[off] =
          es_fp8_quantize_row(k, j->D, cpu_kv_codes(j->cb, j->layer, blk, 0, h) + (size_t)off * j->D);
      cpu_kv_scales(j->cb, j->layer, blk, 1, h)[off] =
          es_fp8_quantize_row(v, j->D, cpu_kv_codes(j->cb, j->layer, blk, 1, h) + (size_t)off * j->D);
      continue;
    }
    memcpy(cpu_kv_tile(j->cb, j->layer, blk, 0, h) + (size_t)off * j->D, k, (size_t)j->D * sizeof(float));
    memcpy(cpu_kv_tile(j->cb, j->layer, blk, 1, h) + (size_t)off * j->D, v, (size_t)j->D * sizeof(float));
  }
}

int cpu_op_rope_kv_store(es_backend_t *be, int layer, void *q, int64_t ldq, void *k, int64_t ldk, const void *v,
                         int64_t ldv, int H, int D, float theta, es_error_t *err) {
  if (D / 2 > ROPE_MAX_HALF)
    return es_fail(err, ES_EUNSUPPORTED, "rope_kv_store: head dim %d over %d", D, 2 * ROPE_MAX_HALF);
  if (!(theta > 1.0f)) return es_fail(err, ES_EINVAL, "rope_kv_store: theta %g must be > 1", (double)theta);
  rope_job_t j = {
      .cb = cpu_be(be), .layer = layer, .H = H, .D = D, .q = q, .k = k, .v = v, .ldq = ldq, .ldk = ldk, .ldv = ldv};
  for (int f = 0; f < D / 2; f++) {
    float e = (float)(2 * f) / (float)D;
    float p = (float)pow((double)theta, (double)e); /* torch: fp32 pow, correctly rounded here */
    j.inv_freq[f] = 1.0f / p;
  }
  cpu_pool_run(j.cb->pool, be->batch.n_tokens, rope_task, &j);
  return ES_OK;
}

/* ---- y = silu(gate) · up, silu(g) = g / (1 + e^−g) as torch ----------------------------------------------- */

static void silu_mul_task(void *ctx, int64_t task, int tid) {
  row_job_t *j = ctx;
  FOR_ROWS(j, task, i) {
    const float *g = j->x + i * j->ld, *u = j->up + i * j->ld;
    float *y = j->y + i * j->C;
    for (int64_t c = 0; c < j->C; c++) y[c] = g[c] / (1.0f + expf(-g[c])) * u[c];
  }
}

int cpu_op_silu_mul(es_backend_t *be, void *y, const void *gate, const void *up, int64_t ld, int64_t M, int64_t N,
                    es_error_t *err) {
  row_job_t j = {.cb = cpu_be(be), .y = y, .x = gate, .up = up, .ld = ld, .C = N, .rpt = rows_per_task(N)};
  run_rows(&j, M, silu_mul_task);
  return ES_OK;
}

/* ---- AvgPool1d(2, 2): y[b, t] = (x[b, 2t] + x[b, 2t+1]) / 2 ------------------------------------------------ */

static void avg_pool_task(void *ctx, int64_t task, int tid) {
  row_job_t *j = ctx;
  FOR_ROWS(j, task, i) { /* i = output row b·(T/2) + t; input rows 2i, 2i+1 (T even) */
    const float *a = j->x + 2 * i * j->C, *b = a + j->C;
    float *y = j->y + i * j->C;
    for (int64_t c = 0; c < j->C; c++) y[c] = (a[c] + b[c]) / 2.0f;
  }
}

int cpu_op_avg_pool2(es_backend_t *be, void *y, const void *x, int64_t B, int64_t T, int64_t C, es_error_t *err) {
  row_job_t j = {.cb = cpu_be(be), .y = y, .x = x, .C = C, .rpt = rows_per_task(C)};
  run_rows(&j, B * (T / 2), avg_pool_task);
  return ES_OK;
}

/* ---- embed, gather, scatter --------------------------------------------------------------------------- */

static void embed_task(void *ctx, int64_t task, int tid) {
  row_job_t *j = ctx;
  const es_weight_t *t = j->w0;
  FOR_ROWS(j, task, i) {
    const char *src = (const char *)t->data + (size_t)j->idx[i] * (size_t)t->n1 * es_dtype_size(t->dtype);
    cpu_widen(j->y + i * t->n1, src, t->dtype, t->n1);
  }
}

int cpu_op_embed(es_backend_t *be, void *y, const es_weight_t *table, const int32_t *ids, int64_t M, es_error_t *err) {
  for (int64_t i = 0; i < M; i++)
    if (ids[i] < 0 || ids[i] >= table->n0)
      return es_fail(err, ES_EINVAL, "embed: row %lld id %d outside the table's %lld rows", (long long)i, ids[i],
                     (long long)table->n0);
  row_job_t j = {.cb = cpu_be(be), .y = y, .w0 = table, .idx = ids, .rpt = rows_per_task(table->n1)};
  run_rows(&j, M, embed_task);
  return ES_OK;
}

static void gather_task(void *ctx, int64_t task, int tid) {
  row_job_t *j = ctx;
  FOR_ROWS(j, task, i) memcpy(j->y + i * j->C, j->x + (int64_t)j->idx[i] * j->C, (size_t)j->C * sizeof(float));
}

static void scatter_task(void *ctx, int64_t task, int tid) {
  row_job_t *j = ctx;
  FOR_ROWS(j, task, i) memcpy(j->y + (int64_t)j->idx[i] * j->C, j->x + i * j->C, (size_t)j->C * sizeof(float));
}

static int check_idx(const int32_t *idx, int64_t M, const char *op, es_error_t *err) {
  for (int64_t i = 0; i < M; i++)
    if (idx[i] < 0) return es_fail(err, ES_EINVAL, "%s: row %lld index %d is negative", op, (long long)i, idx[i]);
  return ES_OK;
}

int cpu_op_gather_rows(es_backend_t *be, void *y, const void *x, const int32_t *idx, int64_t M, int64_t C,
                       es_error_t *err) {
  int rc = check_idx(idx, M, "gather_rows", err);
  if (rc) return rc;
  row_job_t j = {.cb = cpu_be(be), .y = y, .x = x, .idx = idx, .C = C, .rpt = rows_per_task(C)};
  run_rows(&j, M, gather_task);
  return ES_OK;
}

/* idx must hold distinct rows (the audio placeholders): with duplicates, which source row lands is
 * unspecified. */
int cpu_op_scatter_rows(es_backend_t *be, void *y, const void *x, const int32_t *idx, int64_t M, int64_t C,
                        es_error_t *err) {
  int rc = check_idx(idx, M, "scatter_rows", err);
  if (rc) return rc;
  row_job_t j = {.cb = cpu_be(be), .y = y, .x = x, .idx = idx, .C = C, .rpt = rows_per_task(C)};
  run_rows(&j, M, scatter_task);
  return ES_OK;
}
