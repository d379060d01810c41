/* test_cpu_ops: the CPU backend's row-wise ops against naive double-precision references — LayerNorm,
 * RMSNorm with the residual add, add_rows, silu_mul, avg_pool2, embed, gather/scatter, and the RoPE +
 * KV store (rotated q, and k/v at their cache slots in the layout backend.h fixes). Odd sizes, strided
 * inputs, all weight dtypes; outputs poisoned before each run.
 */
#include "kernel_test.h"

#include "cpu/cpu_backend.h"

static const es_dtype_t DTYPES[] = {ES_DT_F32, ES_DT_BF16, ES_DT_F16};

static void test_layer_norm(es_backend_t *be, es_dtype_t dt, int64_t M, int64_t C, int in_place) {
  kt_weight_t g = kt_weight(dt, C, 1, 0.5f, 1.5f), b = kt_weight(dt, C, 1, -0.5f, 0.5f);
  float *x = malloc(sizeof(float) * (size_t)(M * C));
  for (int64_t i = 0; i < M * C; i++) x[i] = 4.0f + kt_uniform(-3, 3); /* a large mean: cancellation */
  es_weight_t dg = kt_upload(be, &g), db = kt_upload(be, &b);
  void *dx = kt_act(be, x, M * C), *dy = in_place ? dx : kt_act(be, NULL, M * C);
  es_error_t err;
  T_CHECK(es_op_layer_norm(be, dy, dx, &dg, &db, M, C, 1e-5f, &err) == 0, "layer_norm: %s", err.msg);
  float *y = kt_read(be, dy, M * C);
  double *ref = calloc((size_t)(M * C), sizeof(double));
  for (int64_t m = 0; m < M; m++) {
    double mu = 0, var = 0;
    for (int64_t c = 0; c < C; c++) mu += x[m * C + c];
    mu /= (double)C;
    for (int64_t c = 0; c < C; c++) var += (x[m * C + c] - mu) * (x[m * C + c] - mu);
    var /= (double)C;
    for (int64_t c = 0; c < C; c++) ref[m * C + c] = (x[m * C + c] - mu) / sqrt(var + 1e-5) * g.val[c] + b.val[c];
  }
  char what[96];
  snprintf(what, sizeof what, "layer_norm %s M=%lld C=%lld%s", kt_dt(dt), (long long)M, (long long)C,
           in_place ? " in place" : "");
  kt_close(what, y, ref, NULL, M * C, 2e-6, 2e-6);
  free(ref);
  free(y);
  free(x);
  kt_weight_free(&g);
  kt_weight_free(&b);
}

static void test_rms_norm(es_backend_t *be, es_dtype_t dt, int64_t M, int64_t C, int with_add) {
  kt_weight_t w = kt_weight(dt, C, 1, 0.5f, 1.5f);
  float *r = malloc(sizeof(float) * (size_t)(M * C)), *a = malloc(sizeof(float) * (size_t)(M * C));
  kt_fill(r, M * C, -2, 2);
  kt_fill(a, M * C, -2, 2);
  es_weight_t dw = kt_upload(be, &w);
  void *dr = kt_act(be, r, M * C), *da = kt_act(be, a, M * C), *dy = kt_act(be, NULL, M * C);
  es_error_t err;
  T_CHECK(es_op_rms_norm(be, dy, dr, with_add ? da : NULL, &dw, M, C, 1e-5f, &err) == 0, "rms_norm: %s", err.msg);
  float *y = kt_read(be, dy, M * C), *r2 = kt_read(be, dr, M * C);
  double *ref = calloc((size_t)(M * C), sizeof(double));
  int res_ok = 1;
  for (int64_t m = 0; m < M; m++) {
    double ss = 0;
    for (int64_t c = 0; c < C; c++) {
      float h = with_add ? r[m * C + c] + a[m * C + c] : r[m * C + c]; /* the residual stream is fp32 */
      if (memcmp(&h, &r2[m * C + c], sizeof h)) res_ok = 0;
      ss += (double)h * h;
    }
    double inv = 1.0 / sqrt(ss / (double)C + 1e-5);
    for (int64_t c = 0; c < C; c++) ref[m * C + c] = (double)w.val[c] * (double)r2[m * C + c] * inv;
  }
  char what[96];
  snprintf(what, sizeof what, "rms_norm %s M=%lld C=%lld add=%d", kt_dt(dt), (long long)M, (long long)C, with_add);
  T_CHECK(res_ok, "%s: residual is not residual + add in fp32", what);
  kt_close(what, y, ref, NULL, M * C, 2e-6, 2e-6);
  free(ref);
  free(y);
  free(r2);
  free(r);
  free(a);
  kt_weight_free(&w);
}

static void test_small_ops(es_backend_t *be) {
  es_error_t err;
  /* add_rows: B = 3 blocks of T = 5 rows, C = 7 */
  {
    int64_t T = 5, M = 15, C = 7;
    float x[15 * 7], rows[5 * 7];
    kt_fill(x, M * C, -1, 1);
    kt_fill(rows, T * C, -1, 1);
    void *dx = kt_act(be, x, M * C), *dr = kt_act(be, rows, T * C);
    T_CHECK(es_op_add_rows(be, dx, dr, M, T, C, &err) == 0, "add_rows: %s", err.msg);
    float *y = kt_read(be, dx, M * C);
    double ref[15 * 7];
    for (int64_t i = 0; i < M * C; i++) ref[i] = (double)x[i] + rows[(i / C % T) * C + i % C];
    kt_close("add_rows", y, ref, NULL, M * C, 0, 0x1p-24);
    free(y);
  }
  /* silu_mul on a fused gate|up buffer (ld = 2N) */
  {
    int64_t M = 7, N = 33, ld = 2 * N + 1;
    float *gu = malloc(sizeof(float) * (size_t)(M * ld));
    kt_fill(gu, M * ld, -6, 6);
    void *dgu = kt_act(be, gu, M * ld), *dy = kt_act(be, NULL, M * N);
    T_CHECK(es_op_silu_mul(be, dy, dgu, (float *)dgu + N, ld, M, N, &err) == 0, "silu_mul: %s", err.msg);
    float *y = kt_read(be, dy, M * N);
    double *ref = calloc((size_t)(M * N), sizeof(double));
    for (int64_t m = 0; m < M; m++)
      for (int64_t n = 0; n < N; n++) {
        double g = gu[m * ld + n], u = gu[m * ld + N + n];
        ref[m * N + n] = g / (1.0 + exp(-g)) * u;
      }
    kt_close("silu_mul", y, ref, NULL, M * N, 1e-6, 1e-6);
    free(ref);
    free(y);
    free(gu);
  }
  /* linear_silu_mul: the gate|up product and SiLU·mul in one op give the two ops' bits (the CPU runs them) */
  {
    int64_t M = 3, K = 24, N = 11, ldgu = 2 * N;
    kt_weight_t kw = kt_weight(ES_DT_BF16, 2 * N, K, -0.5f, 0.5f);
    es_weight_t w = kt_upload(be, &kw);
    float *x = malloc(sizeof(float) * (size_t)(M * K));
    kt_fill(x, M * K, -1, 1);
    void *dx = kt_act(be, x, M * K), *dgu = kt_act(be, NULL, M * ldgu), *dy = kt_act(be, NULL, M * N),
         *dy2 = kt_act(be, NULL, M * N);
    T_CHECK(es_op_linear_silu_mul(be, dy, dgu, ldgu, dx, K, &w, M, &err) == 0, "linear_silu_mul: %s", err.msg);
    T_CHECK(es_op_linear(be, dgu, ldgu, dx, K, &w, NULL, M, ES_ACT_NONE, 0, &err) == 0 &&
                es_op_silu_mul(be, dy2, dgu, (float *)dgu + N, ldgu, M, N, &err) == 0,
            "linear, silu_mul: %s", err.msg);
    float *y = kt_read(be, dy, M * N), *y2 = kt_read(be, dy2, M * N);
    T_CHECK(memcmp(y, y2, sizeof(float) * (size_t)(M * N)) == 0, "linear_silu_mul != linear then silu_mul");
    free(y);
    free(y2);
    free(x);
    kt_weight_free(&kw);
  }
  /* linear_rms_norm: the linear, the residual add and the RMSNorm in one op give the two ops' bits */
  {
    int64_t M = 2, K = 24, N = 13;
    kt_weight_t kw = kt_weight(ES_DT_BF16, N, K, -0.5f, 0.5f), kg = kt_weight(ES_DT_BF16, N, 1, 0.5f, 1.5f);
    es_weight_t w = kt_upload(be, &kw), g = kt_upload(be, &kg);
    float x[2 * 24], h[2 * 13];
    kt_fill(x, M * K, -1, 1);
    kt_fill(h, M * N, -2, 2);
    void *dx = kt_act(be, x, M * K), *dy = kt_act(be, NULL, M * N), *dr = kt_act(be, h, M * N),
         *dout = kt_act(be, NULL, M * N), *dy2 = kt_act(be, NULL, M * N), *dr2 = kt_act(be, h, M * N),
         *dout2 = kt_act(be, NULL, M * N);
    T_CHECK(es_op_linear_rms_norm(be, dy, dr, dout, dx, K, &w, &g, M, 1e-6f, &err) == 0, "linear_rms_norm: %s",
            err.msg);
    T_CHECK(es_op_linear(be, dout2, N, dx, K, &w, NULL, M, ES_ACT_NONE, 0, &err) == 0 &&
                es_op_rms_norm(be, dy2, dr2, dout2, &g, M, N, 1e-6f, &err) == 0,
            "linear, rms_norm: %s", err.msg);
    void *a[3] = {dy, dr, dout}, *b[3] = {dy2, dr2, dout2};
    for (int k = 0; k < 3; k++) {
      float *p = kt_read(be, a[k], M * N), *q = kt_read(be, b[k], M * N);
      T_CHECK(memcmp(p, q, sizeof(float) * (size_t)(M * N)) == 0, "linear_rms_norm != linear then rms_norm (%d)", k);
      free(p);
      free(q);
    }
    kt_weight_free(&kw);
    kt_weight_free(&kg);
  }
  /* avg_pool2: B = 2, T = 6, C = 5 */
  {
    int64_t B = 2, T = 6, C = 5;
    float x[2 * 6 * 5];
    kt_fill(x, B * T * C, -1, 1);
    void *dx = kt_act(be, x, B * T * C), *dy = kt_act(be, NULL, B * T / 2 * C);
    T_CHECK(es_op_avg_pool2(be, dy, dx, B, T, C, &err) == 0, "avg_pool2: %s", err.msg);
    float *y = kt_read(be, dy, B * T / 2 * C);
    double ref[2 * 3 * 5];
    for (int64_t b = 0; b < B; b++)
      for (int64_t t = 0; t < T / 2; t++)
        for (int64_t c = 0; c < C; c++)
          ref[(b * T / 2 + t) * C + c] = ((double)x[(b * T + 2 * t) * C + c] + x[(b * T + 2 * t + 1) * C + c]) / 2;
    kt_close("avg_pool2", y, ref, NULL, B * T / 2 * C, 0, 0x1p-24);
    free(y);
  }
  /* embed from each dtype; gather and scatter */
  for (size_t d = 0; d < 3; d++) {
    int64_t V = 11, C = 9, M = 6;
    kt_weight_t tab = kt_weight(DTYPES[d], V, C, -1, 1);
    es_weight_t dt = kt_upload(be, &tab);
    int32_t ids[6] = {3, 0, 10, 3, 7, 1};
    void *dids, *dy = kt_act(be, NULL, M * C);
    es_backend_alloc(be, sizeof ids, &dids, &err);
    es_backend_write(be, dids, ids, sizeof ids, &err);
    T_CHECK(es_op_embed(be, dy, &dt, dids, M, &err) == 0, "embed: %s", err.msg);
    float *y = kt_read(be, dy, M * C);
    double ref[6 * 9];
    for (int64_t i = 0; i < M * C; i++) ref[i] = tab.val[ids[i / C] * C + i % C];
    char what[64];
    snprintf(what, sizeof what, "embed %s", kt_dt(DTYPES[d]));
    kt_close(what, y, ref, NULL, M * C, 0, 0);
    int32_t bad[1] = {11};
    es_backend_write(be, dids, bad, sizeof bad, &err);
    T_CHECK(es_op_embed(be, dy, &dt, dids, 1, &err) == ES_EINVAL, "embed: id past the table accepted");
    free(y);
    kt_weight_free(&tab);
  }
  {
    int64_t R = 8, C = 5, M = 3;
    float x[8 * 5];
    kt_fill(x, R * C, -1, 1);
    int32_t idx[3] = {6, 0, 3};
    void *didx, *dx = kt_act(be, x, R * C), *dg = kt_act(be, NULL, M * C), *ds = kt_act(be, x, R * C);
    es_backend_alloc(be, sizeof idx, &didx, &err);
    es_backend_write(be, didx, idx, sizeof idx, &err);
    T_CHECK(es_op_gather_rows(be, dg, dx, didx, M, C, &err) == 0, "gather: %s", err.msg);
    float *g = kt_read(be, dg, M * C);
    double ref[8 * 5];
    for (int64_t i = 0; i < M * C; i++) ref[i] = x[idx[i / C] * C + i % C];
    kt_close("gather_rows", g, ref, NULL, M * C, 0, 0);
    /* scatter g back into a copy of x with the rows at idx overwritten by fresh values */
    float src[3 * 5];
    kt_fill(src, M * C, 5, 6);
    void *dsrc = kt_act(be, src, M * C);
    T_CHECK(es_op_scatter_rows(be, ds, dsrc, didx, M, C, &err) == 0, "scatter: %s", err.msg);
    float *s = kt_read(be, ds, R * C);
    for (int64_t i = 0; i < R * C; i++) ref[i] = x[i];
    for (int64_t i = 0; i < M * C; i++) ref[idx[i / C] * C + i % C] = src[i];
    kt_close("scatter_rows", s, ref, NULL, R * C, 0, 0);
    free(g);
    free(s);
  }
}

/* RoPE as SPEC §4 defines it in float32: inv_freq = fp32(1 / fp32(theta^fp32(2i/D))), angle =
 * fp32(pos · inv_freq); the reference then rotates in double. */
static void test_rope_kv(int H, int D, float theta) {
  const int L = 3, n_blocks = 24, layer = 1, max_blocks = 8;
  es_backend_t *be = kt_backend(2, KT_MAX_TOKENS, 8, max_blocks);
  if (!be) return;
  es_error_t err;
  T_CHECK(es_backend_kv_init(be, L, n_blocks, H, D, &err) == 0, "kv_init: %s", err.msg);
  int32_t order[64];
  kt_shuffled_blocks(order, n_blocks);
  int next = 0;
  int32_t q_len[3] = {21, 1, 5}, ctx[3] = {21, 100, 37}; /* prefill, decode at 99, chunk over a prefix */
  kt_batch_t kb;
  kt_batch(&kb, 3, q_len, ctx, max_blocks, order, &next);
  int64_t n = kb.b.n_tokens, HD = (int64_t)H * D, ld = 3 * HD; /* a fused q|k|v row */
  float *qkv = malloc(sizeof(float) * (size_t)(n * ld));
  kt_fill(qkv, n * ld, -1, 1);
  void *d = kt_act(be, qkv, n * ld);
  T_CHECK(es_backend_begin_step(be, &kb.b, &err) == 0, "begin_step: %s", err.msg);
  T_CHECK(es_op_rope_kv_store(be, layer, d, ld, (float *)d + HD, ld, (float *)d + 2 * HD, ld, H, D, theta, &err) == 0,
          "rope_kv_store: %s", err.msg);
  T_CHECK(es_backend_end_step(be, &err) == 0, "end_step: %s", err.msg);
  float *out = kt_read(be, d, n * ld);
  double *ref = calloc((size_t)(n * ld), sizeof(double));
  float *kvq = malloc(sizeof(float) * (size_t)(n * 2 * HD));
  double *kvref = calloc((size_t)(n * 2 * HD), sizeof(double));
  float *pool = ((cpu_backend_t *)be)->kv;
  for (int64_t i = 0; i < n; i++) {
    for (int64_t c = 0; c < ld; c++) ref[i * ld + c] = qkv[i * ld + c];
    for (int part = 0; part < 2; part++)
      for (int h = 0; h < H; h++) {
        const float *x = qkv + i * ld + part * HD + (int64_t)h * D;
        for (int f = 0; f < D / 2; f++) {
          float e = (float)(2 * f) / (float)D, inv = 1.0f / (float)pow((double)theta, (double)e);
          float ang = (float)kb.pos[i] * inv;
          double cs = cos((double)ang), sn = sin((double)ang);
          ref[i * ld + part * HD + h * D + f] = x[f] * cs - x[f + D / 2] * sn;
          ref[i * ld + part * HD + h * D + f + D / 2] = x[f + D / 2] * cs + (double)x[f] * sn;
        }
      }
    int32_t blk = kb.slot[i] / ES_KV_BLOCK, off = kb.slot[i] % ES_KV_BLOCK;
    for (int kv = 0; kv < 2; kv++)
      for (int h = 0; h < H; h++) {
        memcpy(kvq + (i * 2 + kv) * HD + h * D, kt_kv_at(pool, n_blocks, H, D, layer, blk, kv, h, off),
               sizeof(float) * (size_t)D);
        for (int c = 0; c < D; c++) kvref[(i * 2 + kv) * HD + h * D + c] = ref[i * ld + (1 + kv) * HD + h * D + c];
      }
  }
  char what[96];
  snprintf(what, sizeof what, "rope q/k H=%d D=%d theta=%g", H, D, (double)theta);
  kt_close(what, out, ref, NULL, n * ld, 1e-6, 1e-6);
  snprintf(what, sizeof what, "kv store H=%d D=%d", H, D);
  kt_close(what, kvq, kvref, NULL, n * 2 * HD, 1e-6, 1e-6);
  /* nothing else in the pool was written: the other layers are still zero */
  size_t per_layer = (size_t)n_blocks * 2 * (size_t)HD * ES_KV_BLOCK, nonzero = 0;
  for (size_t i = 0; i < per_layer; i++) nonzero += pool[i] != 0.0f || pool[2 * per_layer + i] != 0.0f;
  T_CHECK(nonzero == 0, "%zu values written outside layer %d", nonzero, layer);
  free(kvq);
  free(kvref);
  free(ref);
  free(out);
  free(qkv);
  es_backend_free(be);
}

int main(void) {
  es_backend_t *be = kt_backend(3, 64, 4, 4);
  if (!be) return t_finish();
  for (size_t d = 0; d < 3; d++) {
    test_layer_norm(be, DTYPES[d], 1, 1, 0);
    test_layer_norm(be, DTYPES[d], 7, 33, 0);
    test_layer_norm(be, DTYPES[d], 37, 1280, 1);
    test_rms_norm(be, DTYPES[d], 1, 3, 1);
    test_rms_norm(be, DTYPES[d], 7, 129, 0);
    test_rms_norm(be, DTYPES[d], 37, 4096, 1);
  }
  test_small_ops(be);
  es_backend_free(be);
  test_rope_kv(3, 10, 10000.0f);
  test_rope_kv(2, 128, 10000.0f);
  test_rope_kv(1, 64, 1000000.0f);
  return t_finish();
}
