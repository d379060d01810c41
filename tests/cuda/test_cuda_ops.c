/* test_cuda_ops: every op of the CUDA backend against the CPU reference backend, in both compute dtypes.
 *
 * Each check draws fresh random inputs, rounds them to the GPU's compute dtype (so both backends see the same
 * values), runs the op on both, and compares the GPU's output with the CPU's: |gpu − cpu| <= atol + rtol·|cpu|,
 * tolerances by dtype (fp32: the GEMM/attention reduction order; bf16: the rounding points of transformers'
 * bf16 forward that the GPU keeps and the fp32 reference does not). GPU outputs are poisoned (NaN) before
 * every run. Shapes include odd sizes, strided rows, several sequences with shuffled block tables, chunked
 * prefill over a cached prefix and decode; GEMMs run through cuBLASLt and through the plain kernel.
 * Skips (exit 77) without the CUDA backend or without a GPU.
 */
#include "kernel_test.h"

#include "es_gpu.h"
#include "fp8_math.h"
#include "gpu_skip.h"
#ifdef ES_HAVE_CUDA_BACKEND
#include "cuda/cuda_hooks.h"
#include "cuda/gemv_math.h"
#endif

typedef struct {
  es_backend_t *be[2]; /* 0: CPU reference, 1: CUDA */
  es_dtype_t dt;       /* the CUDA backend's compute dtype */
  const char *name;
  int kv_fp8; /* both backends with the fp8 KV cache */
} duo_t;

/* Tolerances: elementwise ops, row ops (norms), GEMMs, attention. */
static double tol_atol(const duo_t *d, int kind) {
  static const double f32[4] = {1e-6, 2e-6, 1e-4, 2e-5}, b16[4] = {1e-3, 2e-2, 2e-2, 3e-2};
  return d->dt == ES_DT_BF16 ? b16[kind] : f32[kind];
}
static double tol_rtol(const duo_t *d, int kind) {
  static const double f32[4] = {1e-6, 2e-6, 1e-4, 2e-5}, b16[4] = {8e-3, 1.6e-2, 1.6e-2, 2e-2};
  return d->dt == ES_DT_BF16 ? b16[kind] : f32[kind];
}
enum { K_ELEM, K_ROW, K_GEMM, K_ATT };

/* x rounded in place to the compute dtype. */
static void round_to(const duo_t *d, float *x, int64_t n) {
  if (d->dt != ES_DT_BF16) return;
  for (int64_t i = 0; i < n; i++) kt_to_bf16(x[i], &x[i]);
}

static float *rand_act(const duo_t *d, int64_t n, float lo, float hi) {
  float *x = malloc(sizeof(float) * (size_t)n);
  kt_fill(x, n, lo, hi);
  round_to(d, x, n);
  return x;
}

/* The same host values on both backends (x NULL: poisoned). */
static void put(const duo_t *d, const float *x, int64_t n, void *out[2]) {
  for (int i = 0; i < 2; i++) out[i] = kt_act(d->be[i], x, n);
}

static void upload2(const duo_t *d, const kt_weight_t *w, es_weight_t out[2]) {
  for (int i = 0; i < 2; i++) out[i] = kt_upload(d->be[i], w);
}

/* A random weight whose values are representable in the compute dtype (bf16 storage in bf16 mode). */
static kt_weight_t rand_weight(const duo_t *d, int64_t n0, int64_t n1, float lo, float hi) {
  return kt_weight(d->dt == ES_DT_BF16 ? ES_DT_BF16 : ES_DT_F32, n0, n1, lo, hi);
}

/* Reads n values of p[0] (CPU) and p[1] (GPU) and compares them. */
static void cmp(const duo_t *d, const char *what, void *p[2], int64_t n, int kind) {
  float *ref_f = kt_read(d->be[0], p[0], n), *got = kt_read(d->be[1], p[1], n);
  double *ref = malloc(sizeof(double) * (size_t)n);
  for (int64_t i = 0; i < n; i++) ref[i] = ref_f[i];
  char w[200];
  snprintf(w, sizeof w, "[%s] %s", d->name, what);
  kt_close(w, got, ref, NULL, n, tol_atol(d, kind), tol_rtol(d, kind));
  free(ref);
  free(ref_f);
  free(got);
}

/* ---- GEMMs ------------------------------------------------------------------------------------------------- */

/* GEMM paths of the CUDA backend: the default (in bf16 the decode GEMV where cuda_gemv_ok — the shapes where it is
 * faster, gemv_preferred — else cuBLASLt), the plain kernel, and (bf16 only) the default with the GEMV off, so
 * cuBLASLt is compared at decode sizes too, and with the GEMV for every shape it takes (M <= 4). */
enum { P_AUTO, P_PLAIN, P_NO_GEMV, P_GEMV, P_COUNT };
static const char *const path_name[P_COUNT] = {"auto", "plain", "cublasLt (GEMV off)", "GEMV wherever it applies"};

/* Sets the CUDA backend's GEMM path; returns its GEMV count before the call (0 without the CUDA backend). */
static int64_t set_path(const duo_t *d, int path) {
#ifdef ES_HAVE_CUDA_BACKEND
  es_error_t err;
  cuda_backend_set_gemm_path(d->be[1], path == P_PLAIN ? CUDA_GEMM_PLAIN : CUDA_GEMM_AUTO, &err);
  T_CHECK(cuda_backend_set_gemv(d->be[1],
                                path == P_NO_GEMV ? 0
                                : path == P_GEMV  ? 2
                                                  : 1,
                                &err) == 0,
          "set_gemv: %s", err.msg);
  return cuda_backend_gemv_calls(d->be[1]);
#else
  (void)d, (void)path;
  return 0;
#endif
}

/* After an op on path `path`: the GEMV ran iff the path allows it and the shape is the GEMV's. */
static void check_gemv_used(const duo_t *d, int path, int64_t before, int64_t M, int64_t N, int64_t K, int64_t ldx,
                            const void *x, const void *w, const char *what) {
#ifdef ES_HAVE_CUDA_BACKEND
  const int want = (path == P_GEMV || (path == P_AUTO && gemv_preferred(M, N, K))) && d->dt == ES_DT_BF16 &&
                   gemv_shape_ok(M, N, K, ldx, (uintptr_t)x, (uintptr_t)w);
  const int64_t got = cuda_backend_gemv_calls(d->be[1]) - before;
  T_CHECK(got == want, "[%s] %s %s: %lld GEMV launches, expected %d", d->name, what, path_name[path], (long long)got,
          want);
#else
  (void)d, (void)path, (void)before, (void)M, (void)N, (void)K, (void)ldx, (void)x, (void)w, (void)what;
#endif
}

/* strided: 0 contiguous rows; 1 ldx = K + 3, ldy = N + 5 (never the GEMV); 2 ldx = K + 8 (the GEMV's loads stay
 * aligned), ldy = N + 5. */
static void test_linear(const duo_t *d, int64_t M, int64_t K, int64_t N, int with_bias, es_act_t act, int acc,
                        int strided) {
  es_error_t err;
  int64_t ldx = strided == 1 ? K + 3 : strided == 2 ? K + 8 : K, ldy = strided ? N + 5 : N;
  kt_weight_t w = rand_weight(d, N, K, -0.5f, 0.5f), b = rand_weight(d, N, 1, -0.5f, 0.5f);
  es_weight_t dw[2], db[2];
  upload2(d, &w, dw);
  upload2(d, &b, db);
  float *x = rand_act(d, M * ldx, -1, 1), *y0 = rand_act(d, M * ldy, -1, 1);
  void *px[2];
  put(d, x, M * ldx, px);
  char what[160];
  snprintf(what, sizeof what, "linear M=%lld K=%lld N=%lld bias=%d act=%d acc=%d ld=%lld/%lld", (long long)M,
           (long long)K, (long long)N, with_bias, (int)act, acc, (long long)ldx, (long long)ldy);
  for (int path = 0; path < P_COUNT; path++) {
    if ((path == P_NO_GEMV || path == P_GEMV) && d->dt != ES_DT_BF16) continue; /* no GEMV in fp32 mode */
    const int64_t before = set_path(d, path);
    void *py[2];
    if (acc) {
      put(d, y0, M * ldy, py); /* the residual being accumulated into */
    } else {
      py[0] = kt_act(d->be[0], y0, M * ldy);
      py[1] = kt_act(d->be[1], NULL, M * ldy); /* poisoned rows; the gaps between rows are not compared */
    }
    for (int i = 0; i < 2; i++)
      T_CHECK(es_op_linear(d->be[i], py[i], ldy, px[i], ldx, &dw[i], with_bias ? &db[i] : NULL, M, act, acc, &err) == 0,
              "%s: %s", what, err.msg);
    check_gemv_used(d, path, before, M, N, K, ldx, px[1], dw[1].data, what);
    float *r = kt_read(d->be[0], py[0], M * ldy), *g = kt_read(d->be[1], py[1], M * ldy);
    double *ref = malloc(sizeof(double) * (size_t)(M * N));
    float *got = malloc(sizeof(float) * (size_t)(M * N));
    for (int64_t m = 0; m < M; m++)
      for (int64_t n = 0; n < N; n++) {
        ref[m * N + n] = r[m * ldy + n];
        got[m * N + n] = g[m * ldy + n];
      }
    char w2[240];
    snprintf(w2, sizeof w2, "[%s] %s %s", d->name, what, path_name[path]);
    kt_close(w2, got, ref, NULL, M * N, tol_atol(d, K_GEMM), tol_rtol(d, K_GEMM));
    free(ref);
    free(got);
    free(r);
    free(g);
  }
  set_path(d, P_AUTO);
  free(x);
  free(y0);
  kt_weight_free(&w);
  kt_weight_free(&b);
}

/* The plain kernel's rows do not depend on M: a row computed alone equals the same row in a batch. */
static void test_plain_invariance(const duo_t *d) {
#ifdef ES_HAVE_CUDA_BACKEND
  es_error_t err;
  int64_t M = 37, K = 70, N = 45;
  kt_weight_t w = rand_weight(d, N, K, -0.5f, 0.5f);
  es_weight_t dw = kt_upload(d->be[1], &w);
  float *x = rand_act(d, M * K, -1, 1);
  void *dx = kt_act(d->be[1], x, M * K), *dyb = kt_act(d->be[1], NULL, M * N), *dy1 = kt_act(d->be[1], NULL, N);
  cuda_backend_set_gemm_path(d->be[1], CUDA_GEMM_PLAIN, &err);
  es_op_linear(d->be[1], dyb, N, dx, K, &dw, NULL, M, ES_ACT_NONE, 0, &err);
  size_t e = es_dtype_size(d->dt);
  es_op_linear(d->be[1], dy1, N, (char *)dx + (size_t)(11 * K) * e, K, &dw, NULL, 1, ES_ACT_NONE, 0, &err);
  float *yb = kt_read(d->be[1], dyb, M * N), *y1 = kt_read(d->be[1], dy1, N);
  T_CHECK(memcmp(yb + 11 * N, y1, sizeof(float) * (size_t)N) == 0, "[%s] plain GEMM: row 11 alone != in a batch",
          d->name);
  cuda_backend_set_gemm_path(d->be[1], CUDA_GEMM_AUTO, &err);
  free(yb);
  free(y1);
  free(x);
  kt_weight_free(&w);
#else
  (void)d;
#endif
}

static void test_logits(const duo_t *d, int64_t M, int64_t C, int64_t V) {
  es_error_t err;
  kt_weight_t w = rand_weight(d, V, C, -0.5f, 0.5f);
  es_weight_t dw[2];
  upload2(d, &w, dw);
  float *x = rand_act(d, M * C, -1, 1), *out[2];
  void *px[2], *pl[2];
  put(d, x, M * C, px);
  for (int i = 0; i < 2; i++) es_backend_alloc(d->be[i], sizeof(float) * (size_t)(M * V), &pl[i], &err);
  for (int path = 0; path < P_COUNT; path++) {
    if ((path == P_NO_GEMV || path == P_GEMV) && d->dt != ES_DT_BF16) continue; /* no GEMV in fp32 mode */
    const int64_t before = set_path(d, path);
    for (int i = 0; i < 2; i++) {
      float *poison = malloc(sizeof(float) * (size_t)(M * V));
      kt_poison(poison, M * V);
      es_backend_write(d->be[i], pl[i], poison, sizeof(float) * (size_t)(M * V), &err);
      free(poison);
      T_CHECK(es_op_logits(d->be[i], pl[i], px[i], &dw[i], M, &err) == 0, "logits: %s", err.msg);
      out[i] = malloc(sizeof(float) * (size_t)(M * V));
      es_backend_sync(d->be[i], &err);
      T_CHECK(es_backend_read(d->be[i], out[i], pl[i], sizeof(float) * (size_t)(M * V), &err) == 0, "read: %s",
              err.msg);
    }
    char what[160];
    snprintf(what, sizeof what, "logits M=%lld C=%lld V=%lld", (long long)M, (long long)C, (long long)V);
    check_gemv_used(d, path, before, M, V, C, C, px[1], dw[1].data, what);
    double *ref = malloc(sizeof(double) * (size_t)(M * V));
    for (int64_t i = 0; i < M * V; i++) ref[i] = out[0][i];
    char w2[240];
    snprintf(w2, sizeof w2, "[%s] %s %s", d->name, what, path_name[path]);
    /* fp32 outputs, but from compute-dtype inputs: the only difference is the summation order */
    kt_close(w2, out[1], ref, NULL, M * V, 1e-4, 1e-4);
    free(ref);
    free(out[0]);
    free(out[1]);
  }
  set_path(d, P_AUTO);
  free(x);
  kt_weight_free(&w);
}

/* The GEMV's rows do not depend on M (M <= 4): every run of 1..4 consecutive rows of a batch of 4 gives the batch's
 * rows bit for bit (bf16 mode; the GEMV for every shape it takes, cuda_backend_set_gemv(be, 2)). */
static void test_gemv_invariance(const duo_t *d) {
#ifdef ES_HAVE_CUDA_BACKEND
  if (d->dt != ES_DT_BF16) return;
  es_error_t err;
  /* K = 8 · 293: lanes 0..4 take 10 chunks, the others 9 — three rounds of 4 loads, the last one partial */
  const int64_t M = 4, K = 2344, N = 70, ldx = K + 8, ldy = N + 5;
  kt_weight_t w = rand_weight(d, N, K, -0.5f, 0.5f), b = rand_weight(d, N, 1, -0.5f, 0.5f);
  es_weight_t dw = kt_upload(d->be[1], &w), db = kt_upload(d->be[1], &b);
  float *x = rand_act(d, M * ldx, -1, 1);
  void *dx = kt_act(d->be[1], x, M * ldx), *dyb = kt_act(d->be[1], NULL, M * ldy), *dys = kt_act(d->be[1], NULL, M * ldy);
  const size_t e = es_dtype_size(d->dt);
  const int64_t before = set_path(d, P_GEMV);
  T_CHECK(es_op_linear(d->be[1], dyb, ldy, dx, ldx, &dw, &db, M, ES_ACT_GELU, 0, &err) == 0, "linear: %s", err.msg);
  float *yb = kt_read(d->be[1], dyb, M * ldy);
  int runs = 1;
  for (int64_t m0 = 0; m0 < M; m0++)
    for (int64_t cnt = 1; m0 + cnt <= M; cnt++) {
      T_CHECK(es_op_linear(d->be[1], (char *)dys + (size_t)(m0 * ldy) * e, ldy, (char *)dx + (size_t)(m0 * ldx) * e,
                           ldx, &dw, &db, cnt, ES_ACT_GELU, 0, &err) == 0,
              "linear: %s", err.msg);
      runs++;
      float *ys = kt_read(d->be[1], dys, M * ldy);
      for (int64_t m = m0; m < m0 + cnt; m++)
        T_CHECK(memcmp(yb + m * ldy, ys + m * ldy, sizeof(float) * (size_t)N) == 0,
                "[%s] GEMV: row %lld of rows %lld..%lld != the same row in a batch of %lld", d->name, (long long)m,
                (long long)m0, (long long)(m0 + cnt - 1), (long long)M);
      free(ys);
    }
  T_CHECK(cuda_backend_gemv_calls(d->be[1]) - before == runs, "[%s] GEMV invariance: %lld GEMV launches of %d",
          d->name, (long long)(cuda_backend_gemv_calls(d->be[1]) - before), runs);
  /* loads in flight per lane (cuda_backend_set_gemv_loads) and the pipelining of their rounds
   * (cuda_backend_set_gemv_pipe) change only the schedule: the same bits */
  static const int loads[] = {4, 16, 8, 4, 0};
  for (int i = 0; i < 5; i++) {
    const int piped = i != 3; /* 4 loads also unpipelined; the default (0) last, pipelined as by default */
    T_CHECK(cuda_backend_set_gemv_loads(d->be[1], loads[i], &err) == 0, "set_gemv_loads: %s", err.msg);
    T_CHECK(cuda_backend_set_gemv_pipe(d->be[1], piped, &err) == 0, "set_gemv_pipe: %s", err.msg);
    T_CHECK(es_op_linear(d->be[1], dys, ldy, dx, ldx, &dw, &db, M, ES_ACT_GELU, 0, &err) == 0, "linear: %s", err.msg);
    float *ys = kt_read(d->be[1], dys, M * ldy);
    for (int64_t m = 0; m < M; m++)
      T_CHECK(memcmp(yb + m * ldy, ys + m * ldy, sizeof(float) * (size_t)N) == 0,
              "[%s] GEMV with %d loads in flight (%s): row %lld differs from the default's", d->name, loads[i],
              piped ? "pipelined" : "not pipelined", (long long)m);
    free(ys);
  }
  set_path(d, P_AUTO);
  free(yb);
  free(x);
  kt_weight_free(&w);
  kt_weight_free(&b);
#else
  (void)d;
#endif
}

static void test_conv1d(const duo_t *d, int64_t B, int64_t T_in, int64_t C_in, int64_t C_out, int stride) {
  es_error_t err;
  int kernel = 3, pad = 1;
  int64_t T_out = (T_in + 2 * pad - kernel) / stride + 1;
  kt_weight_t w = rand_weight(d, C_out, C_in * kernel, -0.5f, 0.5f), b = rand_weight(d, C_out, 1, -0.5f, 0.5f);
  es_weight_t dw[2], db[2];
  upload2(d, &w, dw);
  upload2(d, &b, db);
  float *x = rand_act(d, B * T_in * C_in, -1, 1);
  void *px[2], *py[2];
  put(d, x, B * T_in * C_in, px);
  put(d, NULL, B * T_out * C_out, py);
  for (int i = 0; i < 2; i++)
    T_CHECK(es_op_conv1d(d->be[i], py[i], px[i], &dw[i], &db[i], B, T_in, C_in, kernel, stride, pad, ES_ACT_GELU,
                         &err) == 0,
            "conv1d: %s", err.msg);
  char what[120];
  snprintf(what, sizeof what, "conv1d B=%lld T=%lld C_in=%lld C_out=%lld stride=%d", (long long)B, (long long)T_in,
           (long long)C_in, (long long)C_out, stride);
  cmp(d, what, py, B * T_out * C_out, K_GEMM);
  free(x);
  kt_weight_free(&w);
  kt_weight_free(&b);
}

/* ---- row-wise ops ---------------------------------------------------------------------------------------- */

static void test_layer_norm(const duo_t *d, int64_t M, int64_t C, int in_place) {
  es_error_t err;
  kt_weight_t g = rand_weight(d, C, 1, 0.5f, 1.5f), b = rand_weight(d, C, 1, -0.5f, 0.5f);
  es_weight_t dg[2], db[2];
  upload2(d, &g, dg);
  upload2(d, &b, db);
  float *x = rand_act(d, M * C, 1, 7); /* a large mean: cancellation */
  void *px[2], *py[2];
  put(d, x, M * C, px);
  if (in_place)
    py[0] = px[0], py[1] = px[1];
  else
    put(d, NULL, M * C, py);
  for (int i = 0; i < 2; i++)
    T_CHECK(es_op_layer_norm(d->be[i], py[i], px[i], &dg[i], &db[i], M, C, 1e-5f, &err) == 0, "layer_norm: %s",
            err.msg);
  char what[96];
  snprintf(what, sizeof what, "layer_norm M=%lld C=%lld%s", (long long)M, (long long)C, in_place ? " in place" : "");
  cmp(d, what, py, M * C, K_ROW);
  free(x);
  kt_weight_free(&g);
  kt_weight_free(&b);
}

static void test_rms_norm(const duo_t *d, int64_t M, int64_t C, int with_add) {
  es_error_t err;
  kt_weight_t w = rand_weight(d, C, 1, 0.5f, 1.5f);
  es_weight_t dw[2];
  upload2(d, &w, dw);
  float *r = rand_act(d, M * C, -2, 2), *a = rand_act(d, M * C, -2, 2);
  void *pr[2], *pa[2], *py[2];
  put(d, r, M * C, pr);
  put(d, a, M * C, pa);
  put(d, NULL, M * C, py);
  for (int i = 0; i < 2; i++)
    T_CHECK(es_op_rms_norm(d->be[i], py[i], pr[i], with_add ? pa[i] : NULL, &dw[i], M, C, 1e-5f, &err) == 0,
            "rms_norm: %s", err.msg);
  char what[96];
  snprintf(what, sizeof what, "rms_norm M=%lld C=%lld add=%d", (long long)M, (long long)C, with_add);
  cmp(d, what, py, M * C, K_ROW);
  snprintf(what, sizeof what, "rms_norm residual M=%lld C=%lld add=%d", (long long)M, (long long)C, with_add);
  cmp(d, what, pr, M * C, K_ELEM);
  free(r);
  free(a);
  kt_weight_free(&w);
}

static void test_elementwise(const duo_t *d) {
  es_error_t err;
  { /* add_rows: B = 3 blocks of T = 5 rows, C = 77 */
    int64_t T = 5, M = 15, C = 77;
    float *x = rand_act(d, M * C, -1, 1), *rows = rand_act(d, T * C, -1, 1);
    void *px[2], *pr[2];
    put(d, x, M * C, px);
    put(d, rows, T * C, pr);
    for (int i = 0; i < 2; i++) T_CHECK(es_op_add_rows(d->be[i], px[i], pr[i], M, T, C, &err) == 0, "%s", err.msg);
    cmp(d, "add_rows", px, M * C, K_ELEM);
    free(x);
    free(rows);
  }
  { /* silu_mul on a fused gate|up buffer (ld = 2N + 1) */
    int64_t M = 7, N = 333, ld = 2 * N + 1;
    float *gu = rand_act(d, M * ld, -6, 6);
    void *pg[2], *py[2];
    put(d, gu, M * ld, pg);
    put(d, NULL, M * N, py);
    size_t e[2] = {sizeof(float), es_dtype_size(d->dt)};
    for (int i = 0; i < 2; i++)
      T_CHECK(es_op_silu_mul(d->be[i], py[i], pg[i], (char *)pg[i] + (size_t)N * e[i], ld, M, N, &err) == 0, "%s",
              err.msg);
    cmp(d, "silu_mul", py, M * N, K_ROW);
    free(gu);
  }
  { /* avg_pool2: B = 2, T = 6, C = 129 */
    int64_t B = 2, T = 6, C = 129;
    float *x = rand_act(d, B * T * C, -1, 1);
    void *px[2], *py[2];
    put(d, x, B * T * C, px);
    put(d, NULL, B * T / 2 * C, py);
    for (int i = 0; i < 2; i++) T_CHECK(es_op_avg_pool2(d->be[i], py[i], px[i], B, T, C, &err) == 0, "%s", err.msg);
    cmp(d, "avg_pool2", py, B * T / 2 * C, K_ELEM);
    free(x);
  }
  /* embed from every stored dtype: the GPU converts on upload (bf16 mode: round to nearest even) */
  static const es_dtype_t dts[3] = {ES_DT_F32, ES_DT_BF16, ES_DT_F16};
  for (int t = 0; t < 3; t++) {
    int64_t V = 11, C = 9, M = 6;
    kt_weight_t tab = kt_weight(dts[t], V, C, -1, 1);
    es_weight_t dtab = kt_upload(d->be[1], &tab);
    int32_t ids[6] = {3, 0, 10, 3, 7, 1};
    void *dids = NULL, *dy = kt_act(d->be[1], NULL, M * C);
    es_backend_alloc(d->be[1], sizeof ids, &dids, &err);
    es_backend_write(d->be[1], dids, ids, sizeof ids, &err);
    T_CHECK(es_op_embed(d->be[1], dy, &dtab, dids, M, &err) == 0, "embed: %s", err.msg);
    float *y = kt_read(d->be[1], dy, M * C);
    double ref[6 * 9];
    for (int64_t i = 0; i < M * C; i++) {
      float v = tab.val[ids[i / C] * C + i % C];
      if (d->dt == ES_DT_BF16) kt_to_bf16(v, &v);
      ref[i] = v;
    }
    char what[80];
    snprintf(what, sizeof what, "[%s] embed from %s", d->name, es_dtype_name(dts[t]));
    kt_close(what, y, ref, NULL, M * C, 0, 0);
    free(y);
    kt_weight_free(&tab);
  }
  { /* gather and scatter */
    int64_t R = 8, C = 65, M = 3;
    float *x = rand_act(d, R * C, -1, 1);
    int32_t idx[3] = {6, 0, 3};
    void *pidx[2], *px[2], *pg[2], *ps[2];
    put(d, x, R * C, px);
    put(d, NULL, M * C, pg);
    put(d, x, R * C, ps);
    for (int i = 0; i < 2; i++) {
      es_backend_alloc(d->be[i], sizeof idx, &pidx[i], &err);
      es_backend_write(d->be[i], pidx[i], idx, sizeof idx, &err);
      T_CHECK(es_op_gather_rows(d->be[i], pg[i], px[i], pidx[i], M, C, &err) == 0, "gather: %s", err.msg);
      T_CHECK(es_op_scatter_rows(d->be[i], ps[i], pg[i], pidx[i], M, C, &err) == 0, "scatter: %s", err.msg);
    }
    cmp(d, "gather_rows", pg, M * C, K_ELEM);
    cmp(d, "scatter_rows", ps, R * C, K_ELEM);
    free(x);
  }
}

/* ---- RoPE + KV store + paged attention over two steps ---------------------------------------------------- */

#define P_BLOCKS 48
#define P_MAXB 12

#ifdef ES_HAVE_CUDA_BACKEND
/* The fp8 KV cache on the GPU, checked against its own contents (the CPU quantises its fp32 RoPE output, the GPU
 * the output rounded to its compute dtype, so their codes may differ by a step near e4m3 rounding boundaries):
 * 1. every row stored by this step is bit-for-bit es_fp8_quantize_row of the GPU's rotated k (read back) and of v;
 * 2. the attention equals a double-precision attention over the GPU's dequantised rows, with the GPU's rotated q,
 *    within the attention tolerance (the simple kernel's bf16 rounding points; the fast kernels' bf16 P). */
static void check_fp8_cache(const duo_t *d, const kt_batch_t *kb, int H, int D, int layer, int64_t ld, void *dqkv,
                            const float *host_qkv, void *dout, const char *label) {
  es_error_t err;
  const int L = 2;
  const int64_t n = kb->b.n_tokens, HD = (int64_t)H * D;
  const size_t rows = (size_t)P_BLOCKS * L * 2 * (size_t)H * ES_KV_BLOCK;
  uint8_t *pool = malloc(rows * ((size_t)D + sizeof(float)));
  float *qkv = kt_read(d->be[1], dqkv, n * ld), *out = kt_read(d->be[1], dout, n * HD);
  T_CHECK(es_backend_read(d->be[1], pool, cuda_backend_kv_pool(d->be[1]), rows * ((size_t)D + 4), &err) == 0,
          "read the fp8 pool: %s", err.msg);
  const float *sc = (const float *)(pool + rows * (size_t)D);
  uint8_t want[256];
  int bad = 0;
  for (int64_t i = 0; i < n; i++) {
    const int32_t slot = kb->b.slot[i], blk = slot / ES_KV_BLOCK, off = slot % ES_KV_BLOCK;
    for (int h = 0; h < H; h++)
      for (int which = 0; which < 2; which++) {
        const float *x = which ? host_qkv + i * ld + 2 * HD + (int64_t)h * D : qkv + i * ld + HD + (int64_t)h * D;
        const float s = es_fp8_quantize_row(x, D, want);
        const size_t r = kt_kv_row(P_BLOCKS, H, layer, blk, which, h, off);
        if (sc[r] != s || memcmp(pool + r * (size_t)D, want, (size_t)D) != 0) bad++;
      }
  }
  T_CHECK(bad == 0, "[%s] fp8 KV (%s) H=%d D=%d: %d stored rows are not es_fp8_quantize_row of the GPU's k / v",
          d->name, label, H, D, bad);
  double *ref = calloc((size_t)(n * HD), sizeof(double));
  for (int s = 0; s < kb->b.n_seqs; s++)
    for (int32_t i = kb->b.q_start[s]; i < kb->b.q_start[s + 1]; i++) {
      const int32_t p = kb->b.positions[i];
      for (int h = 0; h < H; h++) {
        double *sco = malloc(sizeof(double) * (size_t)(p + 1)), m = -INFINITY, sum = 0;
        for (int32_t j = 0; j <= p; j++) {
          const int32_t bj = kb->b.block_table[s * kb->b.max_blocks + j / ES_KV_BLOCK];
          const size_t r = kt_kv_row(P_BLOCKS, H, layer, bj, 0, h, j % ES_KV_BLOCK);
          double acc = 0;
          for (int c = 0; c < D; c++) acc += (double)qkv[i * ld + h * D + c] * es_fp8_decode(pool[r * D + c]) * sc[r];
          sco[j] = acc / sqrt((double)D);
          m = sco[j] > m ? sco[j] : m;
        }
        for (int32_t j = 0; j <= p; j++) sum += (sco[j] = exp(sco[j] - m));
        for (int32_t j = 0; j <= p; j++) {
          const int32_t bj = kb->b.block_table[s * kb->b.max_blocks + j / ES_KV_BLOCK];
          const size_t r = kt_kv_row(P_BLOCKS, H, layer, bj, 1, h, j % ES_KV_BLOCK);
          for (int c = 0; c < D; c++) ref[i * HD + h * D + c] += sco[j] / sum * es_fp8_decode(pool[r * D + c]) * sc[r];
        }
        free(sco);
      }
    }
  char what[160];
  snprintf(what, sizeof what, "[%s] attention_paged over the GPU's fp8 cache (%s) H=%d D=%d", d->name, label, H, D);
  kt_close(what, out, ref, NULL, n * HD, tol_atol(d, K_ATT), tol_rtol(d, K_ATT));
  free(ref);
  free(out);
  free(qkv);
  free(pool);
}
#endif

static void run_step(const duo_t *d, const kt_batch_t *kb, int H, int D, int layer, const char *label) {
  es_error_t err;
  /* a fused q|k|v buffer with padded rows; with the fp8 cache padded to a multiple of 8 elements so that the fast
   * kernels take the call in bf16 (they need 16-byte rows) */
  int64_t n = kb->b.n_tokens, HD = (int64_t)H * D, ld = 3 * HD + (d->kv_fp8 ? 8 : 2);
#ifdef ES_HAVE_CUDA_BACKEND
  int64_t fast_before = 0, simple_before = 0;
  cuda_backend_attention_calls(d->be[1], &fast_before, &simple_before);
#endif
  float *qkv = rand_act(d, n * ld, -2, 2);
  void *pqkv[2], *pout[2];
  put(d, qkv, n * ld, pqkv);
  put(d, NULL, n * HD, pout);
  size_t e[2] = {sizeof(float), es_dtype_size(d->dt)};
  float scale = 1.0f / sqrtf((float)D);
  for (int i = 0; i < 2; i++) {
    char *q = pqkv[i], *k = q + (size_t)HD * e[i], *v = q + (size_t)(2 * HD) * e[i];
    T_CHECK(es_backend_begin_step(d->be[i], &kb->b, &err) == 0, "begin_step: %s", err.msg);
    T_CHECK(es_op_rope_kv_store(d->be[i], layer, q, ld, k, ld, v, ld, H, D, 10000.0f, &err) == 0, "rope: %s", err.msg);
    T_CHECK(es_op_attention_paged(d->be[i], layer, pout[i], q, ld, H, D, scale, &err) == 0, "attention: %s", err.msg);
    T_CHECK(es_backend_end_step(d->be[i], &err) == 0, "end_step: %s", err.msg);
  }
  char what[120];
  snprintf(what, sizeof what, "rope q|k (%s) H=%d D=%d%s", label, H, D, d->kv_fp8 ? " fp8 KV" : "");
  /* rotated q and k (the v columns and row padding come back unchanged on both) */
  cmp(d, what, pqkv, n * ld, K_ROW);
  snprintf(what, sizeof what, "attention_paged (%s) H=%d D=%d%s", label, H, D, d->kv_fp8 ? " fp8 KV" : "");
  if (!d->kv_fp8) cmp(d, what, pout, n * HD, K_ATT);
#ifdef ES_HAVE_CUDA_BACKEND
  if (d->kv_fp8) check_fp8_cache(d, kb, H, D, layer, ld, pqkv[1], qkv, pout[1], label);
  if (d->kv_fp8 && d->dt == ES_DT_BF16 && (D == 64 || D == 128)) {
    int64_t fast_after, simple_after;
    cuda_backend_attention_calls(d->be[1], &fast_after, &simple_after);
    T_CHECK(fast_after == fast_before + 1 && simple_after == simple_before,
            "[%s] fp8 KV (%s): the fast kernels took "
            "the call (%lld fast, %lld simple)",
            d->name, label, (long long)(fast_after - fast_before), (long long)(simple_after - simple_before));
    /* the same codes read by the fast kernels (split-KV decode, flash prefill) and by the simple kernel: only the
     * arithmetic differs, so the attention tolerance applies between the two */
    void *simple[2] = {pout[1], kt_act(d->be[1], NULL, n * HD)};
    int64_t fast0, simple0, fast1, simple1;
    cuda_backend_attention_calls(d->be[1], &fast0, &simple0);
    char *q1 = pqkv[1];
    T_CHECK(cuda_backend_set_attention_path(d->be[1], CUDA_ATTN_SIMPLE, &err) == 0, "simple path: %s", err.msg);
    T_CHECK(es_backend_begin_step(d->be[1], &kb->b, &err) == 0, "begin_step: %s", err.msg);
    T_CHECK(es_op_attention_paged(d->be[1], layer, simple[1], q1, ld, H, D, scale, &err) == 0, "attention: %s",
            err.msg);
    T_CHECK(es_backend_end_step(d->be[1], &err) == 0, "end_step: %s", err.msg);
    T_CHECK(cuda_backend_set_attention_path(d->be[1], CUDA_ATTN_FAST, &err) == 0, "fast path: %s", err.msg);
    cuda_backend_attention_calls(d->be[1], &fast1, &simple1);
    T_CHECK(simple1 == simple0 + 1 && fast1 == fast0, "the simple kernel ran (%lld, %lld)",
            (long long)(simple1 - simple0), (long long)(fast1 - fast0));
    float *a = kt_read(d->be[1], simple[0], n * HD), *b = kt_read(d->be[1], simple[1], n * HD);
    double *ref = malloc(sizeof(double) * (size_t)(n * HD));
    for (int64_t i = 0; i < n * HD; i++) ref[i] = b[i];
    snprintf(what, sizeof what, "[%s] fp8 KV: fast kernels vs simple (%s) H=%d D=%d", d->name, label, H, D);
    kt_close(what, a, ref, NULL, n * HD, tol_atol(d, K_ATT), tol_rtol(d, K_ATT));
    free(ref);
    free(a);
    free(b);
  }
#endif
  free(qkv);
}

static void test_paged(const duo_t *d, int H, int D, int n_seqs, const int32_t *q2, const int32_t *ctx2) {
  es_error_t err;
  const int L = 2;
  for (int i = 0; i < 2; i++) T_CHECK(es_backend_kv_init(d->be[i], L, P_BLOCKS, H, D, &err) == 0, "kv: %s", err.msg);
  /* block tables sized for the final contexts, from one shuffled pool */
  int32_t order[P_BLOCKS], tables[8 * P_MAXB] = {0}, q1[8], c1[8];
  kt_shuffled_blocks(order, P_BLOCKS);
  int next = 0;
  for (int s = 0; s < n_seqs; s++) {
    for (int j = 0; j < (ctx2[s] + ES_KV_BLOCK - 1) / ES_KV_BLOCK; j++) tables[s * P_MAXB + j] = order[next++];
    c1[s] = q1[s] = ctx2[s] - q2[s]; /* step 1: prefill the prefix (at least one token) */
    if (c1[s] < 1) c1[s] = q1[s] = 1;
  }
  kt_batch_t kb;
  kt_batch_tables(&kb, n_seqs, q1, c1, P_MAXB, tables);
  run_step(d, &kb, H, D, 1, "prefill");
  kt_batch_tables(&kb, n_seqs, q2, ctx2, P_MAXB, tables);
  run_step(d, &kb, H, D, 1, "chunk + decode");
}

static void test_dense(const duo_t *d, int64_t B, int64_t T, int H, int D, const int32_t *valid) {
  es_error_t err;
  int64_t HD = (int64_t)H * D, ld = 3 * HD + 1;
  float *qkv = rand_act(d, B * T * ld, -2, 2);
  void *p[2], *pout[2];
  put(d, qkv, B * T * ld, p);
  put(d, NULL, B * T * HD, pout);
  size_t e[2] = {sizeof(float), es_dtype_size(d->dt)};
  for (int i = 0; i < 2; i++) {
    char *q = p[i];
    T_CHECK(es_op_attention_dense(d->be[i], pout[i], q, ld, q + (size_t)HD * e[i], ld, q + (size_t)(2 * HD) * e[i], ld,
                                  B, T, H, D, 1.0f / sqrtf((float)D), valid, &err) == 0,
            "attention_dense: %s", err.msg);
  }
  char what[96];
  snprintf(what, sizeof what, "attention_dense B=%lld T=%lld H=%d D=%d", (long long)B, (long long)T, H, D);
  cmp(d, what, pout, B * T * HD, K_ATT);
  free(qkv);
}

/* ---- driver ---------------------------------------------------------------------------------------------- */

static int open_duo(duo_t *d, es_dtype_t dt, int kv_fp8) {
  memset(d, 0, sizeof *d);
  d->dt = dt;
  d->name = es_dtype_name(dt);
  d->kv_fp8 = kv_fp8;
  es_backend_opts_t o = {.compute_dtype = ES_DT_F32,
                         .n_threads = 2,
                         .max_tokens = KT_MAX_TOKENS,
                         .max_seqs = 8,
                         .max_blocks = P_MAXB,
                         .kv_fp8 = kv_fp8};
  es_error_t err;
  int rc = es_backend_create_cpu(&o, &d->be[0], &err);
  T_CHECK(rc == 0, "cpu backend: %s", err.msg);
  if (rc) return rc;
  o.compute_dtype = dt;
  rc = es_backend_create_cuda(&o, &d->be[1], &err);
  T_CHECK(rc == 0, "cuda backend (%s): %s", d->name, err.msg);
  if (!rc) printf("[%s] %s\n", d->name, es_backend_name(d->be[1]));
  return rc;
}

static void close_duo(duo_t *d) {
  es_backend_free(d->be[0]);
  es_backend_free(d->be[1]);
}

/* A fresh pair of backends per paged test: the KV pool is sized once per backend. */
static void paged_case(es_dtype_t dt, int kv_fp8, int H, int D, int n_seqs, const int32_t *q2, const int32_t *c2) {
  duo_t d;
  if (open_duo(&d, dt, kv_fp8) == 0) test_paged(&d, H, D, n_seqs, q2, c2);
  close_duo(&d);
}

int main(void) {
  int skip = t_need_gpu();
  if (skip) return skip;
  static const es_dtype_t modes[2] = {ES_DT_F32, ES_DT_BF16};
  for (int mi = 0; mi < 2; mi++) {
    duo_t d;
    if (open_duo(&d, modes[mi], 0) == 0) {
      static const int64_t shapes[][3] = {{1, 64, 96}, {7, 33, 65}, {37, 128, 257}, {300, 256, 512}, {3, 8, 151}};
      for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t M = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
        test_linear(&d, M, K, N, 1, ES_ACT_NONE, 0, 0);
        test_linear(&d, M, K, N, 0, ES_ACT_NONE, 1, 1);
        test_linear(&d, M, K, N, 1, ES_ACT_GELU, 0, s % 2);
        if (s == 2) test_linear(&d, M, K, N, 1, ES_ACT_GELU, 1, 1); /* act + accumulate: the plain kernel */
      }
      /* decode sizes (M <= 4; K = 8 · odd, K > 256 so lanes wrap; ldx = K + 8): in bf16 the GEMV, compared with
       * the CPU like cuBLASLt (GEMV off) and the plain kernel — bias, GELU, accumulate, both together, strided */
      static const int64_t dec[][3] = {{2, 24, 45}, {4, 296, 70}, {1, 8, 1}, {4, 40, 33}, {3, 520, 129}};
      for (size_t s = 0; s < sizeof dec / sizeof dec[0]; s++) {
        int64_t M = dec[s][0], K = dec[s][1], N = dec[s][2];
        test_linear(&d, M, K, N, 1, ES_ACT_NONE, 0, 0);
        test_linear(&d, M, K, N, 0, ES_ACT_NONE, 1, 2);
        test_linear(&d, M, K, N, 1, ES_ACT_GELU, 0, 2);
        test_linear(&d, M, K, N, 1, ES_ACT_GELU, 1, s % 2 ? 2 : 0);
        test_linear(&d, M, K, N, 0, ES_ACT_GELU, 1, 1); /* ldx % 8 != 0: never the GEMV */
      }
      test_plain_invariance(&d);
      test_gemv_invariance(&d);
      test_logits(&d, 3, 64, 1001);
      test_logits(&d, 1, 40, 77);
      test_logits(&d, 2, 24, 33);
      test_logits(&d, 4, 296, 517);
      test_logits(&d, 5, 64, 77); /* past the GEMV's rows */
      test_conv1d(&d, 2, 37, 5, 12, 1);
      test_conv1d(&d, 2, 38, 24, 16, 2);
      test_conv1d(&d, 1, 3000, 128, 64, 1);
      test_layer_norm(&d, 5, 1280, 0);
      test_layer_norm(&d, 3, 37, 1);
      test_rms_norm(&d, 4, 4096, 1);
      test_rms_norm(&d, 3, 33, 0);
      test_elementwise(&d);
      {
        int32_t v[3] = {13, 5, 1};
        test_dense(&d, 3, 13, 2, 12, v);
      }
      {
        int32_t v[2] = {37, 20};
        test_dense(&d, 2, 37, 3, 64, v);
      }
      {
        int32_t v[1] = {300};
        test_dense(&d, 1, 300, 2, 64, v);
      }
    }
    close_duo(&d);
    /* prefill + (chunk over a cached prefix, decodes); contexts off and on block boundaries */
    /* each with the compute dtype's KV cache and with the fp8 one (the simple kernel at D = 10 and in fp32, the
     * split-KV decode and flash prefill kernels at D = 64 and 128 in bf16) */
    for (int kv_fp8 = 0; kv_fp8 < 2; kv_fp8++) {
      {
        int32_t q[4] = {7, 1, 1, 16}, c[4] = {40, 17, 1, 32};
        paged_case(modes[mi], kv_fp8, 3, 10, 4, q, c);
        paged_case(modes[mi], kv_fp8, 2, 64, 4, q, c);
        paged_case(modes[mi], kv_fp8, 2, 128, 4, q, c);
      }
      {
        int32_t q[1] = {1}, c[1] = {150};
        paged_case(modes[mi], kv_fp8, 1, 128, 1, q, c);
      }
      {
        int32_t q[2] = {70, 1}, c[2] = {150, 190}; /* flash prefill tiles over a cached prefix; a decode */
        paged_case(modes[mi], kv_fp8, 2, 128, 2, q, c);
      }
    }
  }
  return t_finish();
}
