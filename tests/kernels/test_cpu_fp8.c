/* test_cpu_fp8: the CPU backend's FP8 weights (es_backend_upload_weight_fp8 + es_op_linear):
 *   - the stored codes and scales are exactly the per-row quantisation of fp8_math.h, computed here row by
 *     row (so the threaded host quantiser is checked), and the quantisation error is within e4m3's half ulp;
 *   - linear with an fp8 weight (bias, GELU, accumulate, odd shapes, strided rows) against a double-precision
 *     product with the dequantised weight decode(q)·scale (the same values: the difference is summation
 *     order and fp32 accumulation only);
 *   - batch invariance: each row alone equals (memcmp) the same row among 37, on 1, 2 and 5 threads;
 *   - rejections: a non-finite weight, an fp8 weight in ops other than linear.
 */
#include "kernel_test.h"

#include "cpu/cpu_backend.h"
#include "fp8_math.h"

/* The reference quantisation of row n (fp8_math.h applied directly). */
static float ref_row(const float *w, int64_t K, uint8_t *q) {
  float amax = 0;
  for (int64_t k = 0; k < K; k++) amax = fabsf(w[k]) > amax ? fabsf(w[k]) : amax;
  float s = es_fp8_scale(amax);
  for (int64_t k = 0; k < K; k++) q[k] = es_fp8_encode(w[k] / s);
  return s;
}

static void test_quantisation(es_dtype_t dt, int64_t N, int64_t K) {
  es_backend_t *be = kt_backend(2, 16, 2, 2);
  T_REQUIRE(be != NULL, "backend");
  kt_weight_t w = kt_weight(dt, N, K, -0.05f, 0.05f);
  for (int64_t k = 0; k < K; k++) { /* a zero row, and a row with one large value */
    if (dt == ES_DT_F32) ((float *)w.host)[k] = 0.0f;
    else ((uint16_t *)w.host)[k] = 0;
    w.val[k] = 0.0f;
  }
  es_weight_t dw;
  es_error_t err;
  int rc = es_backend_upload_weight_fp8(be, w.host, dt, N, K, &dw, &err);
  T_CHECK(rc == 0, "upload fp8: %s", err.msg);
  if (rc) goto done;
  T_CHECK(dw.dtype == ES_DT_FP8E4M3 && dw.n0 == N && dw.n1 == K && dw.scale, "weight description");
  uint8_t *q = malloc((size_t)K);
  int bad_codes = 0, bad_scale = 0, bad_err = 0;
  for (int64_t n = 0; n < N; n++) {
    float s = ref_row(w.val + n * K, K, q);
    if (memcmp(&s, &dw.scale[n], sizeof s) != 0) bad_scale++;
    if (memcmp(q, (const uint8_t *)dw.data + n * K, (size_t)K) != 0) bad_codes++;
    for (int64_t k = 0; k < K; k++) {
      double v = w.val[n * K + k], d = (double)es_fp8_decode(q[k]) * s;
      if (fabs(d - v) > fabs(v) * 0x1p-4 + (double)s * 0x1p-10) bad_err++;
    }
  }
  T_CHECK(dw.scale[0] == 1.0f, "zero row scale %g", dw.scale[0]);
  T_CHECK(bad_scale == 0 && bad_codes == 0, "%s [%lld, %lld]: %d scales, %d rows of codes differ from fp8_math",
          kt_dt(dt), (long long)N, (long long)K, bad_scale, bad_codes);
  T_CHECK(bad_err == 0, "%d weights off by more than half an e4m3 ulp", bad_err);
  free(q);
done:
  kt_weight_free(&w);
  es_backend_free(be);
}

/* y = act(x · W'ᵀ + b) (+ y0) in double, W' = decode(q)·scale from the uploaded weight. */
static void ref_linear(const float *x, int64_t ldx, const es_weight_t *w, const float *b, const float *y0, int64_t ldy,
                       int64_t M, es_act_t act, double *ref) {
  int64_t N = w->n0, K = w->n1;
  const uint8_t *q = w->data;
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) {
      double acc = 0;
      for (int64_t k = 0; k < K; k++)
        acc += (double)x[m * ldx + k] * (double)(es_fp8_decode(q[n * K + k]) * w->scale[n]);
      if (b) acc += b[n];
      if (act == ES_ACT_GELU) acc = acc * 0.5 * (1.0 + erf(acc / sqrt(2.0)));
      if (y0) acc += y0[m * ldy + n];
      ref[m * N + n] = acc;
    }
}

static void test_linear(int64_t M, int64_t K, int64_t N, int bias, es_act_t act, int accumulate, int64_t pad) {
  es_backend_t *be = kt_backend(3, 512, 2, 2);
  T_REQUIRE(be != NULL, "backend");
  int64_t ldx = K + pad, ldy = N + pad;
  kt_weight_t w = kt_weight(ES_DT_BF16, N, K, -0.1f, 0.1f), b = kt_weight(ES_DT_BF16, N, 1, -0.5f, 0.5f);
  float *x = malloc(sizeof(float) * (size_t)(M * ldx)), *y0 = malloc(sizeof(float) * (size_t)(M * ldy));
  double *ref = malloc(sizeof(double) * (size_t)(M * N));
  kt_fill(x, M * ldx, -1, 1);
  kt_fill(y0, M * ldy, -1, 1);
  es_weight_t dw, db = kt_upload(be, &b);
  es_error_t err;
  int rc = es_backend_upload_weight_fp8(be, w.host, ES_DT_BF16, N, K, &dw, &err);
  T_CHECK(rc == 0, "upload: %s", err.msg);
  void *dx = kt_act(be, x, M * ldx), *dy = kt_act(be, accumulate ? y0 : NULL, M * ldy);
  if (!rc) rc = es_op_linear(be, dy, ldy, dx, ldx, &dw, bias ? &db : NULL, M, act, accumulate, &err);
  T_CHECK(rc == 0, "linear: %s", err.msg);
  if (!rc) {
    ref_linear(x, ldx, &dw, bias ? b.val : NULL, accumulate ? y0 : NULL, ldy, M, act, ref);
    float *y = kt_read(be, dy, M * ldy), *yc = malloc(sizeof(float) * (size_t)(M * N));
    for (int64_t m = 0; m < M; m++) memcpy(yc + m * N, y + m * ldy, sizeof(float) * (size_t)N);
    char what[160];
    snprintf(what, sizeof what, "fp8 linear M=%lld K=%lld N=%lld bias=%d act=%d acc=%d pad=%lld", (long long)M,
             (long long)K, (long long)N, bias, (int)act, accumulate, (long long)pad);
    kt_close(what, yc, ref, NULL, M * N, 1e-5 * sqrt((double)K), 1e-5); /* fp32 sums of K terms of size <~0.1 */
    int pad_ok = 1; /* columns past N keep their values */
    for (int64_t m = 0; m < M && pad; m++)
      for (int64_t c = N; c < ldy; c++)
        if (!(accumulate ? y[m * ldy + c] == y0[m * ldy + c] : isnan(y[m * ldy + c]))) pad_ok = 0;
    T_CHECK(pad_ok, "%s: wrote past N", what);
    free(y);
    free(yc);
  }
  free(x);
  free(y0);
  free(ref);
  kt_weight_free(&w);
  kt_weight_free(&b);
  es_backend_free(be);
}

/* Rows alone vs among 37, threads 1 / 2 / 5: identical bits. */
static void test_invariance(void) {
  const int64_t M = 37, K = 200, N = 77;
  kt_weight_t w = kt_weight(ES_DT_BF16, N, K, -0.1f, 0.1f), b = kt_weight(ES_DT_BF16, N, 1, -1, 1);
  float *x = malloc(sizeof(float) * (size_t)(M * K));
  kt_fill(x, M * K, -1, 1);
  float *first = NULL;
  const int threads[] = {1, 2, 5};
  for (int t = 0; t < 3; t++) {
    es_backend_t *be = kt_backend(threads[t], 64, 2, 2);
    T_REQUIRE(be != NULL, "backend");
    es_weight_t dw, db = kt_upload(be, &b);
    es_error_t err;
    T_CHECK(es_backend_upload_weight_fp8(be, w.host, ES_DT_BF16, N, K, &dw, &err) == 0, "upload: %s", err.msg);
    void *dx = kt_act(be, x, M * K), *dy = kt_act(be, NULL, M * N);
    T_CHECK(es_op_linear(be, dy, N, dx, K, &dw, &db, M, ES_ACT_GELU, 0, &err) == 0, "linear: %s", err.msg);
    float *all = kt_read(be, dy, M * N);
    int bad = 0;
    for (int64_t m = 0; m < M; m++) {
      void *dx1 = (char *)dx + (size_t)(m * K) * sizeof(float);
      T_CHECK(es_op_linear(be, dy, N, dx1, K, &dw, &db, 1, ES_ACT_GELU, 0, &err) == 0, "linear: %s", err.msg);
      float *one = kt_read(be, dy, N);
      if (memcmp(one, all + m * N, sizeof(float) * (size_t)N) != 0) bad++;
      free(one);
    }
    T_CHECK(bad == 0, "%d threads: %d rows differ alone vs in the batch", threads[t], bad);
    if (!first)
      first = all;
    else {
      T_CHECK(memcmp(first, all, sizeof(float) * (size_t)(M * N)) == 0, "%d threads differ from 1", threads[t]);
      free(all);
    }
    es_backend_free(be);
  }
  free(first);
  free(x);
  kt_weight_free(&w);
  kt_weight_free(&b);
}

static void test_rejections(void) {
  es_backend_t *be = kt_backend(1, 16, 2, 2);
  T_REQUIRE(be != NULL, "backend");
  es_error_t err;
  es_weight_t dw;
  float bad[6] = {1, 2, 3, 4, NAN, 6};
  T_CHECK(es_backend_upload_weight_fp8(be, bad, ES_DT_F32, 2, 3, &dw, &err) == ES_EINVAL &&
              strstr(err.msg, "row 1"),
          "NaN weight: %s", err.msg);
  bad[4] = INFINITY;
  T_CHECK(es_backend_upload_weight_fp8(be, bad, ES_DT_F32, 3, 2, &dw, &err) == ES_EINVAL, "inf weight");
  bad[4] = 5;
  T_CHECK(es_backend_upload_weight_fp8(be, bad, ES_DT_FP8E4M3, 2, 3, &dw, &err) == ES_EINVAL, "fp8 source");
  T_REQUIRE(es_backend_upload_weight_fp8(be, bad, ES_DT_F32, 2, 3, &dw, &err) == 0, "upload: %s", err.msg);
  void *dx = kt_act(be, bad, 6), *dy = kt_act(be, NULL, 16);
  T_CHECK(es_op_logits(be, dy, dx, &dw, 1, &err) == ES_EINVAL && strstr(err.msg, "fp8"), "logits: %s", err.msg);
  int32_t *ids = NULL;
  T_CHECK(es_backend_alloc(be, 4, (void **)&ids, &err) == 0, "alloc");
  T_CHECK(es_op_embed(be, dy, &dw, ids, 1, &err) == ES_EINVAL, "embed accepted an fp8 table");
  T_CHECK(es_op_conv1d(be, dy, dx, &dw, NULL, 1, 2, 1, 3, 1, 1, ES_ACT_NONE, &err) == ES_EINVAL,
          "conv1d accepted an fp8 weight");
  T_CHECK(es_op_linear(be, dy, 2, dx, 3, &dw, &dw, 1, ES_ACT_NONE, 0, &err) == ES_EINVAL, "fp8 bias accepted");
  es_backend_free(be);
}

int main(void) {
  test_quantisation(ES_DT_BF16, 300, 1000); /* > 2^18 weights: the threaded quantiser */
  test_quantisation(ES_DT_F16, 17, 33);
  test_quantisation(ES_DT_F32, 5, 7);
  const int64_t shapes[][3] = {{1, 64, 64}, {1, 33, 17}, {3, 100, 129}, {16, 256, 64}, {130, 70, 65}, {300, 48, 40}};
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
    test_linear(shapes[i][0], shapes[i][1], shapes[i][2], (int)(i % 2), i % 3 == 1 ? ES_ACT_GELU : ES_ACT_NONE,
                i % 3 == 2, i == 4 ? 3 : 0);
  test_linear(5, 64, 48, 1, ES_ACT_GELU, 1, 5);
  test_invariance();
  test_rejections();
  return t_finish();
}
