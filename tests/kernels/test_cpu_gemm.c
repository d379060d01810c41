/* test_cpu_gemm: es_op_linear, es_op_conv1d and es_op_logits of the CPU backend against naive
 * double-precision references, for every GEMM path this build and CPU have (the C kernel in each
 * instruction-set variant, OpenBLAS when built with it), fp32/bf16/fp16 weights, odd sizes, bias, GELU,
 * accumulate and strided rows; outputs are poisoned (NaN) before each run. The C variants must agree bit
 * for bit (the kernel performs the same IEEE operations in each).
 *
 * Tolerance: |got − ref| <= 1e-6 + 1e-6·|ref| + 1.2 · 2K·2^-24 · Σ_k |x_k w_k| — the rounding-error bound of
 * a K-term fp32 sum (times GELU's largest slope), so a right answer never fails and a wrong one does.
 */
#include "kernel_test.h"

#include "cpu/cpu_backend.h"

static const es_dtype_t DTYPES[] = {ES_DT_F32, ES_DT_BF16, ES_DT_F16};

static double gelu_d(double v) {
  return v * 0.5 * (1.0 + erf(v / sqrt(2.0)));
}

/* One configuration of the GEMM: path + instruction set. */
typedef struct {
  cpu_gemm_path_t path;
  cpu_isa_t isa;
  char name[32];
} gemm_cfg_t;

static int set_cfg(es_backend_t *be, const gemm_cfg_t *c) {
  es_error_t err;
  int rc = cpu_backend_set_gemm_path(be, c->path, &err);
  if (!rc) rc = cpu_backend_set_isa(be, c->isa, &err);
  T_CHECK(rc == 0, "%s: %s", c->name, err.msg);
  return rc;
}

/* y = act(x·wᵀ + b) (+ y0) with strides; returns the result read back (M × ldy), caller frees. */
static float *run_linear(es_backend_t *be, const float *x, int64_t ldx, const es_weight_t *w, const es_weight_t *b,
                         const float *y0, int64_t ldy, int64_t M, es_act_t act, int accumulate) {
  void *dx = kt_act(be, x, M * ldx), *dy = kt_act(be, y0, M * ldy);
  es_error_t err;
  int rc = es_op_linear(be, dy, ldy, dx, ldx, w, b, M, act, accumulate, &err);
  T_CHECK(rc == 0, "linear: %s", err.msg);
  return kt_read(be, dy, M * ldy);
}

static void test_linear(es_backend_t *be, const gemm_cfg_t *cfg, es_dtype_t dt, int64_t M, int64_t K, int64_t N,
                        int with_bias, es_act_t act, int accumulate, float **keep) {
  int64_t ldx = K + (M % 3), ldy = N + (K % 2) * 3;
  kt_weight_t w = kt_weight(dt, N, K, -1, 1), b = kt_weight(dt, N, 1, -1, 1);
  float *x = malloc(sizeof(float) * (size_t)(M * ldx)), *y0 = malloc(sizeof(float) * (size_t)(M * ldy));
  kt_fill(x, M * ldx, -1, 1);
  if (accumulate)
    kt_fill(y0, M * ldy, -1, 1);
  else
    kt_poison(y0, M * ldy);
  es_weight_t dw = kt_upload(be, &w), db = kt_upload(be, &b);
  float *y = run_linear(be, x, ldx, &dw, with_bias ? &db : NULL, y0, ldy, M, act, accumulate);
  double *ref = calloc((size_t)(M * N), sizeof(double)), *tol = calloc((size_t)(M * N), sizeof(double));
  float *got = malloc(sizeof(float) * (size_t)(M * N));
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) {
      double s = 0, mag = 0;
      for (int64_t k = 0; k < K; k++) {
        double t = (double)x[m * ldx + k] * w.val[n * K + k];
        s += t;
        mag += fabs(t);
      }
      if (with_bias) s += b.val[n];
      if (act == ES_ACT_GELU) s = gelu_d(s);
      if (accumulate) s += y0[m * ldy + n];
      ref[m * N + n] = s;
      tol[m * N + n] = 1.2 * 2.0 * (double)K * 0x1p-24 * (mag + 1.0);
      got[m * N + n] = y[m * ldy + n];
    }
  char what[160];
  snprintf(what, sizeof what, "linear %s w=%s M=%lld K=%lld N=%lld bias=%d act=%d acc=%d", cfg->name, kt_dt(dt),
           (long long)M, (long long)K, (long long)N, with_bias, (int)act, accumulate);
  kt_close(what, got, ref, tol, M * N, 1e-6, 1e-6);
  /* columns past N (ldy padding) are untouched: still NaN, or y0 when accumulating */
  int pad_ok = 1;
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = N; n < ldy; n++)
      if (memcmp(&y[m * ldy + n], &y0[m * ldy + n], sizeof(float))) pad_ok = 0;
  T_CHECK(pad_ok, "%s: wrote past N into the row padding", what);
  if (keep) {
    *keep = got;
    got = NULL;
  }
  free(got);
  free(ref);
  free(tol);
  free(y);
  free(x);
  free(y0);
  kt_weight_free(&w);
  kt_weight_free(&b);
}

static void test_conv(es_backend_t *be, const gemm_cfg_t *cfg, es_dtype_t dt, int64_t B, int64_t T_in, int64_t C_in,
                      int64_t C_out, int kernel, int stride, int pad, es_act_t act) {
  int64_t T_out = (T_in + 2 * pad - kernel) / stride + 1, K = C_in * kernel;
  kt_weight_t w = kt_weight(dt, C_out, K, -1, 1), b = kt_weight(dt, C_out, 1, -1, 1);
  float *x = malloc(sizeof(float) * (size_t)(B * T_in * C_in));
  kt_fill(x, B * T_in * C_in, -1, 1);
  es_weight_t dw = kt_upload(be, &w), db = kt_upload(be, &b);
  void *dx = kt_act(be, x, B * T_in * C_in), *dy = kt_act(be, NULL, B * T_out * C_out);
  es_error_t err;
  int rc = es_op_conv1d(be, dy, dx, &dw, &db, B, T_in, C_in, kernel, stride, pad, act, &err);
  T_CHECK(rc == 0, "conv1d: %s", err.msg);
  float *y = kt_read(be, dy, B * T_out * C_out);
  double *ref = calloc((size_t)(B * T_out * C_out), sizeof(double)),
         *tol = calloc((size_t)(B * T_out * C_out), sizeof(double));
  for (int64_t bb = 0; bb < B; bb++)
    for (int64_t t = 0; t < T_out; t++)
      for (int64_t co = 0; co < C_out; co++) {
        double s = b.val[co], mag = 0;
        for (int64_t ci = 0; ci < C_in; ci++)
          for (int j = 0; j < kernel; j++) {
            int64_t ti = t * stride + j - pad;
            if (ti < 0 || ti >= T_in) continue;
            double v = (double)w.val[co * K + ci * kernel + j] * x[(bb * T_in + ti) * C_in + ci];
            s += v;
            mag += fabs(v);
          }
        if (act == ES_ACT_GELU) s = gelu_d(s);
        int64_t o = (bb * T_out + t) * C_out + co;
        ref[o] = s;
        tol[o] = 1.2 * 2.0 * (double)K * 0x1p-24 * (mag + 1.0);
      }
  char what[160];
  snprintf(what, sizeof what, "conv1d %s w=%s B=%lld T=%lld Cin=%lld Cout=%lld k=%d s=%d p=%d", cfg->name, kt_dt(dt),
           (long long)B, (long long)T_in, (long long)C_in, (long long)C_out, kernel, stride, pad);
  kt_close(what, y, ref, tol, B * T_out * C_out, 1e-6, 1e-6);
  free(ref);
  free(tol);
  free(y);
  free(x);
  kt_weight_free(&w);
  kt_weight_free(&b);
}

static void test_logits(es_backend_t *be, const gemm_cfg_t *cfg, es_dtype_t dt, int64_t M, int64_t C, int64_t V) {
  kt_weight_t w = kt_weight(dt, V, C, -1, 1);
  float *x = malloc(sizeof(float) * (size_t)(M * C));
  kt_fill(x, M * C, -1, 1);
  es_weight_t dw = kt_upload(be, &w);
  void *dx = kt_act(be, x, M * C), *dl = kt_act(be, NULL, M * V);
  es_error_t err;
  int rc = es_op_logits(be, dl, dx, &dw, M, &err);
  T_CHECK(rc == 0, "logits: %s", err.msg);
  float *l = kt_read(be, dl, M * V);
  double *ref = calloc((size_t)(M * V), sizeof(double)), *tol = calloc((size_t)(M * V), sizeof(double));
  for (int64_t m = 0; m < M; m++)
    for (int64_t v = 0; v < V; v++) {
      double s = 0, mag = 0;
      for (int64_t c = 0; c < C; c++) {
        double t = (double)x[m * C + c] * w.val[v * C + c];
        s += t;
        mag += fabs(t);
      }
      ref[m * V + v] = s;
      tol[m * V + v] = 2.0 * (double)C * 0x1p-24 * mag;
    }
  char what[128];
  snprintf(what, sizeof what, "logits %s w=%s M=%lld C=%lld V=%lld", cfg->name, kt_dt(dt), (long long)M, (long long)C,
           (long long)V);
  kt_close(what, l, ref, tol, M * V, 1e-6, 1e-6);
  free(ref);
  free(tol);
  free(l);
  free(x);
  kt_weight_free(&w);
}

static void run_cases(es_backend_t *be, const gemm_cfg_t *cfg) {
  static const int64_t Ms[] = {1, 7, 37, 130}, Ks[] = {3, 33, 130}, Ns[] = {1, 17, 67, 129};
  uint64_t saved = kt_seed;
  for (size_t d = 0; d < 3; d++)
    for (size_t mi = 0; mi < 4; mi++)
      for (size_t ki = 0; ki < 3; ki++) {
        int64_t N = Ns[(mi + ki + d) % 4];
        int bias = (int)((mi + ki) % 2), acc = (int)(ki == 1);
        es_act_t act = (mi + d) % 2 ? ES_ACT_GELU : ES_ACT_NONE;
        test_linear(be, cfg, DTYPES[d], Ms[mi], Ks[ki], N, bias, act, acc, NULL);
      }
  test_linear(be, cfg, ES_DT_BF16, 300, 257, 200, 1, ES_ACT_GELU, 1, NULL); /* several row and column tiles */
  for (size_t d = 0; d < 3; d++) {
    test_conv(be, cfg, DTYPES[d], 2, 31, 5, 19, 3, 1, 1, ES_ACT_GELU);  /* conv1's geometry, small */
    test_conv(be, cfg, DTYPES[d], 3, 30, 17, 33, 3, 2, 1, ES_ACT_GELU); /* conv2's */
    test_conv(be, cfg, DTYPES[d], 1, 9, 4, 7, 1, 1, 0, ES_ACT_NONE);
    test_conv(be, cfg, DTYPES[d], 2, 7, 3, 5, 5, 2, 3, ES_ACT_NONE); /* windows wider than the input's edge */
  }
  test_conv(be, cfg, ES_DT_BF16, 2, 300, 24, 70, 3, 2, 1, ES_ACT_GELU);
  for (size_t d = 0; d < 3; d++) {
    test_logits(be, cfg, DTYPES[d], 1, 33, 301);
    test_logits(be, cfg, DTYPES[d], 5, 64, 1000);
  }
  kt_seed = saved;
}

/* The C kernel's instruction-set variants perform the same IEEE operations: identical bits. */
static void test_isa_bits(es_backend_t *be) {
  float *ref = NULL;
  int n = 0;
  for (int i = 0; i < CPU_ISA_COUNT; i++) {
    gemm_cfg_t c = {CPU_GEMM_C, (cpu_isa_t)i, ""};
    snprintf(c.name, sizeof c.name, "c/%s", cpu_isa_name((cpu_isa_t)i));
    es_error_t err;
    if (cpu_backend_set_gemm_path(be, CPU_GEMM_C, &err) || cpu_backend_set_isa(be, (cpu_isa_t)i, &err)) continue;
    uint64_t saved = kt_seed;
    float *got = NULL;
    test_linear(be, &c, ES_DT_BF16, 37, 131, 45, 1, ES_ACT_GELU, 0, &got);
    kt_seed = saved;
    n++;
    if (!ref) {
      ref = got;
      continue;
    }
    T_CHECK(got && ref && memcmp(got, ref, sizeof(float) * 37 * 45) == 0, "%s differs from generic", c.name);
    free(got);
  }
  free(ref);
  printf("%d instruction-set variants compared bit for bit\n", n);
}

int main(void) {
  es_backend_t *be = kt_backend(3, 64, 4, 4);
  if (!be) return t_finish();
  printf("%s\n", es_backend_name(be));
  gemm_cfg_t cfgs[CPU_ISA_COUNT + 1];
  int n = 0;
  for (int i = 0; i < CPU_ISA_COUNT; i++) {
    es_error_t err;
    if (cpu_backend_set_isa(be, (cpu_isa_t)i, &err)) continue;
    cfgs[n] = (gemm_cfg_t){CPU_GEMM_C, (cpu_isa_t)i, ""};
    snprintf(cfgs[n].name, sizeof cfgs[n].name, "c/%s", cpu_isa_name((cpu_isa_t)i));
    n++;
  }
  es_error_t err;
  if (cpu_backend_set_gemm_path(be, CPU_GEMM_BLAS, &err) == 0) {
    cfgs[n] = (gemm_cfg_t){CPU_GEMM_BLAS, CPU_ISA_GENERIC, "openblas"};
    n++;
  } else {
    printf("OpenBLAS path not built: %s\n", err.msg);
  }
  for (int i = 0; i < n; i++) {
    if (set_cfg(be, &cfgs[i])) continue;
    printf("path %s\n", cfgs[i].name);
    run_cases(be, &cfgs[i]);
  }
  test_isa_bits(be);
  es_backend_free(be);
  return t_finish();
}
