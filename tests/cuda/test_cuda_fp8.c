/* test_cuda_fp8: the CUDA backend's FP8 weights against the CPU backend's (test_cpu_fp8.c checks those against
 * a dequantised double reference), in both compute dtypes:
 *   - the uploaded codes and scales are byte-identical to the CPU backend's (the same host quantiser, staged
 *     in row chunks through the pinned buffers: one weight larger than a staging buffer);
 *   - es_op_linear with an fp8 weight for M = 1 .. 300 (the tensor-core GEMV from 2 to 64 rows where it fits, in
 *     launches of up to 32 rows or in one, the
 *     CUDA-core GEMV up to CUDA_FP8_GEMV_MAX_M = 8, the
 *     dequantise + cuBLASLt path above), odd K and N (the GEMV's byte-at-a-time loop), strided rows, bias,
 *     GELU and accumulate, GPU outputs poisoned first; tolerance as test_cuda_ops' GEMMs, plus, on the
 *     dequantise path in bf16, the rounding of each dequantised weight to bf16 (dequant_tol);
 *   - the GEMV is batch-invariant: a pair of rows alone equals (memcmp) the same rows among 8 (pairs: one row
 *     goes to the CUDA-core GEMV, which sums in another order, from two rows on the tensor-core one takes it).
 * Every case up to 8 rows runs twice (one row takes the CUDA-core GEMV both times): on the tensor-core GEMV
 * (cuda_fp8_mma.cu; where it takes the call — bf16,
 * 2 to 32 or 64 rows, K a multiple of 64, 16-byte aligned rows — which the test checks through
 * cuda_backend_fp8_mma_calls) and on the CUDA-core GEMV (cuda_backend_set_fp8_mma off), and up to 64 rows in its
 * mode 2 (one launch). The batch invariance is checked at 8 rows and at 32 and 40 (4 and 8 n-tiles of the
 * tensor-core GEMV in one launch; 40 also in mode 1's two launches of 24 and 16 rows).
 * Shapes include the 7B model's K (4096, 11008).
 * Skips (exit 77) without the CUDA backend or without a GPU.
 */
#include "kernel_test.h"

#include "es_gpu.h"
#include "fp8_math.h"
#include "gpu_skip.h"
#ifdef ES_HAVE_CUDA_BACKEND
#include "cuda/cuda_fp8.h"
#include "cuda/cuda_hooks.h"
#define DEQUANT_PAST_M CUDA_FP8_GEMV_MAX_M
#define GEMV_KIND(gpu) (cuda_backend_fp8_mma(gpu) ? "tensor-core where it fits" : "CUDA-core")
#else
#define GEMV_KIND(gpu) "no"
#define DEQUANT_PAST_M INT64_MAX /* no CUDA backend: the test skips */
#endif

static double atol_for(es_dtype_t dt) { return dt == ES_DT_BF16 ? 2e-2 : 1e-4; }
static double rtol_for(es_dtype_t dt) { return dt == ES_DT_BF16 ? 1.6e-2 : 1e-4; }

static void round_to(es_dtype_t dt, float *x, int64_t n) {
  if (dt == ES_DT_BF16)
    for (int64_t i = 0; i < n; i++) kt_to_bf16(x[i], &x[i]);
}

static int upload_fp8(es_backend_t *be, const kt_weight_t *w, es_weight_t *out) {
  es_error_t err;
  int rc = es_backend_upload_weight_fp8(be, w->host, w->dt, w->n0, w->n1, out, &err);
  T_CHECK(rc == 0, "%s: upload fp8 [%lld, %lld]: %s", es_backend_name(be), (long long)w->n0, (long long)w->n1,
          err.msg);
  return rc;
}

/* Codes and scales on the GPU equal the CPU backend's (whose memory is the host's). */
static void test_upload(es_backend_t *cpu, es_backend_t *gpu, int64_t N, int64_t K) {
  kt_weight_t w = kt_weight(ES_DT_BF16, N, K, -0.3f, 0.3f);
  es_weight_t wc, wg;
  es_error_t err;
  if (upload_fp8(cpu, &w, &wc) || upload_fp8(gpu, &w, &wg)) goto done;
  uint8_t *q = malloc((size_t)(N * K));
  float *s = malloc(sizeof(float) * (size_t)N);
  T_CHECK(es_backend_read(gpu, q, wg.data, (size_t)(N * K), &err) == 0, "read codes: %s", err.msg);
  T_CHECK(es_backend_read(gpu, s, wg.scale, sizeof(float) * (size_t)N, &err) == 0, "read scales: %s", err.msg);
  T_CHECK(memcmp(q, wc.data, (size_t)(N * K)) == 0, "[%lld, %lld]: GPU codes differ from the CPU's", (long long)N,
          (long long)K);
  T_CHECK(memcmp(s, wc.scale, sizeof(float) * (size_t)N) == 0, "[%lld, %lld]: GPU scales differ", (long long)N,
          (long long)K);
  free(q);
  free(s);
done:
  kt_weight_free(&w);
}

/* Past the GEMVs' rows the GPU dequantises the weight into the compute dtype and runs the ordinary
 * GEMM; in bf16 that rounds every weight decode(q)·scale once more, by up to half its spacing (at most 2^-8 of
 * itself), which the CPU's fp32 weights do not. Those errors are independent and uniform, so output (m, n) moves
 * by a sum with standard deviation at most 2^-8/√3 · sqrt(Σ_k (x[m,k] · w[n,k])²): allow six of them, per
 * element (simulated with torch's e4m3: the worst of 3 × 115,200 outputs reaches 0.5 of that). Elsewhere 0. */
static double *dequant_tol(es_dtype_t dt, const float *x, int64_t ldx, const es_weight_t *wc, int64_t M) {
  if (dt != ES_DT_BF16 || M <= DEQUANT_PAST_M) return NULL;
  const int64_t N = wc->n0, K = wc->n1;
  double *tol = malloc(sizeof(double) * (size_t)(M * N));
  if (!tol) return NULL;
  const uint8_t *q = wc->data; /* the CPU backend's weights live in host memory */
  for (int64_t n = 0; n < N; n++)
    for (int64_t m = 0; m < M; m++) {
      double s2 = 0;
      for (int64_t k = 0; k < K; k++) {
        double t = (double)x[m * ldx + k] * es_fp8_decode(q[n * K + k]) * wc->scale[n];
        s2 += t * t;
      }
      tol[m * N + n] = 6.0 * ldexp(1.0, -8) / sqrt(3.0) * sqrt(s2);
    }
  return tol;
}

static void test_linear(es_backend_t *cpu, es_backend_t *gpu, es_dtype_t dt, int64_t M, int64_t K, int64_t N,
                        int bias, es_act_t act, int acc, int strided) {
  es_error_t err;
  /* strided: odd (unaligned) x rows, or with K a multiple of 64 rows padded by 16 bytes (aligned) */
  int64_t ldx = strided ? (K % 64 == 0 ? K + 16 / (int64_t)es_dtype_size(dt) : K + 3) : K, ldy = strided ? N + 5 : N;
  kt_weight_t w = kt_weight(ES_DT_BF16, N, K, -0.5f, 0.5f);
  kt_weight_t b = kt_weight(dt == ES_DT_BF16 ? ES_DT_BF16 : ES_DT_F32, N, 1, -0.5f, 0.5f);
  es_weight_t wc, wg, bc = kt_upload(cpu, &b), bg = kt_upload(gpu, &b);
  float *x = malloc(sizeof(float) * (size_t)(M * ldx)), *y0 = malloc(sizeof(float) * (size_t)(M * ldy));
  kt_fill(x, M * ldx, -1, 1);
  kt_fill(y0, M * ldy, -1, 1);
  round_to(dt, x, M * ldx);
  round_to(dt, y0, M * ldy);
  char what[200];
  snprintf(what, sizeof what, "[%s] fp8 linear M=%lld K=%lld N=%lld bias=%d act=%d acc=%d ld=%lld/%lld (%s GEMV)",
           es_dtype_name(dt), (long long)M, (long long)K, (long long)N, bias, (int)act, acc, (long long)ldx,
           (long long)ldy, GEMV_KIND(gpu));
  if (upload_fp8(cpu, &w, &wc) || upload_fp8(gpu, &w, &wg)) goto done;
  void *xc = kt_act(cpu, x, M * ldx), *xg = kt_act(gpu, x, M * ldx);
  void *yc = kt_act(cpu, y0, M * ldy), *yg = kt_act(gpu, acc ? y0 : NULL, M * ldy);
  T_CHECK(es_op_linear(cpu, yc, ldy, xc, ldx, &wc, bias ? &bc : NULL, M, act, acc, &err) == 0, "%s: cpu: %s", what,
          err.msg);
  int mma_want = 0; /* the tensor-core GEMV takes exactly the calls it can: bf16, M 2..64, K % 64, aligned x */
#ifdef ES_HAVE_CUDA_BACKEND
  const int64_t mma0 = cuda_backend_fp8_mma_calls(gpu);
  mma_want = cuda_backend_fp8_mma(gpu) && dt == ES_DT_BF16 && M >= CUDA_FP8_MMA_MIN_M && M <= CUDA_FP8_MMA_MAX_M &&
             K % 64 == 0 && (ldx * (int64_t)es_dtype_size(dt)) % 16 == 0;
#endif
  T_CHECK(es_op_linear(gpu, yg, ldy, xg, ldx, &wg, bias ? &bg : NULL, M, act, acc, &err) == 0, "%s: gpu: %s", what,
          err.msg);
#ifdef ES_HAVE_CUDA_BACKEND
  T_CHECK(cuda_backend_fp8_mma_calls(gpu) - mma0 == mma_want, "%s: tensor-core GEMV ran %lld times, want %d", what,
          (long long)(cuda_backend_fp8_mma_calls(gpu) - mma0), mma_want);
#endif
  float *r = kt_read(cpu, yc, M * ldy), *g = kt_read(gpu, yg, M * ldy);
  double *ref = malloc(sizeof(double) * (size_t)(M * N));
  float *got = malloc(sizeof(float) * (size_t)(M * N));
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) {
      ref[m * N + n] = r[m * ldy + n];
      got[m * N + n] = g[m * ldy + n];
    }
  double *tol = mma_want ? NULL : dequant_tol(dt, x, ldx, &wc, M); /* the GEMVs never round a weight */
  kt_close(what, got, ref, tol, M * N, atol_for(dt), rtol_for(dt));
  free(tol);
  free(ref);
  free(got);
  free(r);
  free(g);
done:
  free(x);
  free(y0);
  kt_weight_free(&w);
  kt_weight_free(&b);
}

/* GEMV rows alone vs among M (8: the CUDA-core GEMV's most; 32 and 40: 4 and 8 n-tiles of the tensor-core one):
 * the same bits. */
static void test_gemv_invariance(es_backend_t *gpu, es_dtype_t dt, int64_t M) {
  const int64_t K = 4672, N = 200; /* 64 · 73: 292 chunks of 16, three rounds of 4 per lane, the last partial */
  es_error_t err;
  kt_weight_t w = kt_weight(ES_DT_BF16, N, K, -0.5f, 0.5f);
  es_weight_t wg;
  float *x = malloc(sizeof(float) * (size_t)(M * K));
  kt_fill(x, M * K, -1, 1);
  round_to(dt, x, M * K);
  if (upload_fp8(gpu, &w, &wg)) goto done;
  void *xg = kt_act(gpu, x, M * K), *yg = kt_act(gpu, NULL, M * N);
  T_CHECK(es_op_linear(gpu, yg, N, xg, K, &wg, NULL, M, ES_ACT_NONE, 0, &err) == 0, "gemv: %s", err.msg);
  float *all = kt_read(gpu, yg, M * N);
  size_t es = es_dtype_size(dt);
  int bad = 0;
  for (int64_t m = 0; m + 1 < M; m += 2) { /* M is even */
    T_CHECK(es_op_linear(gpu, yg, N, (char *)xg + (size_t)(m * K) * es, K, &wg, NULL, 2, ES_ACT_NONE, 0, &err) == 0,
            "gemv rows: %s", err.msg);
    float *two = kt_read(gpu, yg, 2 * N);
    if (memcmp(two, all + m * N, sizeof(float) * (size_t)(2 * N)) != 0) bad++;
    free(two);
  }
  T_CHECK(bad == 0, "[%s] %d GEMV row pairs differ alone vs among %lld (%s GEMV)", es_dtype_name(dt), bad, (long long)M,
          GEMV_KIND(gpu));
#ifdef ES_HAVE_CUDA_BACKEND
  /* loads in flight per lane and the pipelining of their rounds change only the schedule: the same bits */
  static const int loads[] = {4, 16, 8, 4, 0};
  for (int i = 0; i < 5; i++) {
    T_CHECK(cuda_backend_set_gemv_loads(gpu, loads[i], &err) == 0, "set_gemv_loads: %s", err.msg);
    T_CHECK(cuda_backend_set_gemv_pipe(gpu, i != 3, &err) == 0, "set_gemv_pipe: %s", err.msg); /* 4 loads also off */
    T_CHECK(es_op_linear(gpu, yg, N, xg, K, &wg, NULL, M, ES_ACT_NONE, 0, &err) == 0, "gemv: %s", err.msg);
    float *again = kt_read(gpu, yg, M * N);
    T_CHECK(memcmp(again, all, sizeof(float) * (size_t)(M * N)) == 0, "[%s] fp8 GEMV with %d loads in flight differs",
            es_dtype_name(dt), loads[i]);
    free(again);
  }
#endif
  free(all);
done:
  free(x);
  kt_weight_free(&w);
}

int main(void) {
  int skip = t_need_gpu();
  if (skip) return skip;
  es_error_t err;
  static const es_dtype_t modes[2] = {ES_DT_F32, ES_DT_BF16};
  for (int mi = 0; mi < 2; mi++) {
    es_dtype_t dt = modes[mi];
    es_backend_opts_t o = {.compute_dtype = ES_DT_F32, .n_threads = 2, .max_tokens = 512, .max_seqs = 4,
                           .max_blocks = 4};
    es_backend_t *cpu = NULL, *gpu = NULL;
    int rc = es_backend_create_cpu(&o, &cpu, &err);
    T_CHECK(rc == 0, "cpu backend: %s", err.msg);
    o.compute_dtype = dt;
    if (!rc) rc = es_backend_create_cuda(&o, &gpu, &err);
    T_CHECK(rc == 0, "cuda backend (%s): %s", es_dtype_name(dt), err.msg);
    if (!rc) {
      if (mi == 0) test_upload(cpu, gpu, 8200, 4096); /* 33.6 MB: two staging chunks */
      test_upload(cpu, gpu, 37, 33);
      static const int64_t Ms[] = {1, 2, 3, 5, 8, 13, 16, 17, 64, 300};
      static const int64_t KN[][2] = {{64, 96}, {33, 65}, {1024, 384}, {208, 257}, {16, 1}, {4096, 40}, {11008, 17}};
      /* tensor-core GEMV modes: 1 (the default: launches of up to 32 rows), 2 (one launch: only where that differs,
       * 33 to 64 rows), 0 (off: the CUDA-core GEMV, and dequantise + cuBLASLt for the larger cases mode 1 took on
       * tensor cores) */
      static const int modes_mma[3] = {1, 2, 0};
      for (int pass = 0; pass < 3; pass++) {
        const int mma = modes_mma[pass];
#ifdef ES_HAVE_CUDA_BACKEND
        T_CHECK(cuda_backend_set_fp8_mma(gpu, mma, &err) == 0, "set_fp8_mma: %s", err.msg);
#endif
        for (size_t i = 0; i < sizeof Ms / sizeof Ms[0]; i++)
          for (size_t j = 0; j < sizeof KN / sizeof KN[0]; j++) {
            const int64_t M = Ms[i], K = KN[j][0];
            const int fits = dt == ES_DT_BF16 && K % 64 == 0; /* the tensor-core GEMV's shapes (strides aligned) */
            if (mma == 2 && !(fits && M > 32 && M <= 64)) continue;
            if (mma == 0 && M > DEQUANT_PAST_M && !(fits && M <= 64)) continue; /* dequantised in pass 0 */
            size_t v = i + j;
            test_linear(cpu, gpu, dt, M, K, KN[j][1], (int)(v % 2), v % 3 == 1 ? ES_ACT_GELU : ES_ACT_NONE, v % 3 == 2,
                        (int)(v % 4 == 3));
          }
        if (mma == 2) {
          if (dt == ES_DT_BF16) test_gemv_invariance(gpu, dt, 40); /* 8 n-tiles, 3 of them padding */
          continue;
        }
        test_linear(cpu, gpu, dt, 4, 128, 64, 1, ES_ACT_GELU, 1, 1);   /* act + accumulate, strided, in the GEMV */
        test_linear(cpu, gpu, dt, 8, 4096, 48, 1, ES_ACT_NONE, 1, 1);  /* the 7B K, aligned stride */
        test_linear(cpu, gpu, dt, 100, 128, 64, 1, ES_ACT_GELU, 1, 1); /* ... and through the plain GEMM */
        test_gemv_invariance(gpu, dt, 8);
        if (mma == 1 && dt == ES_DT_BF16) {
          test_gemv_invariance(gpu, dt, 32); /* 4 n-tiles */
          test_gemv_invariance(gpu, dt, 40); /* two launches: 24 + 16 rows */
        }
      }
    }
    es_backend_free(gpu);
    es_backend_free(cpu);
  }
  return t_finish();
}
