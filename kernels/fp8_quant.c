/* fp8_quant: host quantisation of weights to FP8 e4m3. See fp8_quant.h; the math is fp8_math.h's.
 *
 * Cost: two passes over each row (amax, then encode), ~2 ns per weight on one core; the 7B decoder's 6.5 G
 * linear weights take seconds over 16 threads, next to reading 13 GB of bf16 from the page cache.
 */
#include "fp8_quant.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu/cpu_backend.h" /* cpu_widen: the exact bf16 / fp16 -> fp32 widening */
#include "fp8_math.h"

typedef struct {
  const void *src;
  es_dtype_t dt;
  int64_t row0, begin, end, K; /* rows [begin, end) of this job, absolute */
  uint8_t *q;
  float *scale;
  float *tmp;      /* K floats (widened row) */
  int64_t bad_row; /* first row with a non-finite value, or -1 */
} quant_job_t;

static void *quant_run(void *arg) {
  quant_job_t *j = arg;
  for (int64_t n = j->begin; n < j->end; n++) {
    float *w = j->tmp;
    cpu_widen(w, (const char *)j->src + (size_t)n * (size_t)j->K * es_dtype_size(j->dt), j->dt, j->K);
    float amax = 0.0f;
    int finite = 1;
    for (int64_t k = 0; k < j->K; k++) {
      float a = fabsf(w[k]);
      finite &= a <= 3.4028235e38f; /* false for inf and NaN */
      amax = a > amax ? a : amax;
    }
    if (!finite) {
      if (j->bad_row < 0) j->bad_row = n;
      amax = 0.0f;
    }
    float s = es_fp8_scale(amax);
    uint8_t *q = j->q + (size_t)(n - j->row0) * (size_t)j->K;
    for (int64_t k = 0; k < j->K; k++) q[k] = es_fp8_encode(w[k] / s); /* a division, as the reference does */
    j->scale[n - j->row0] = s;
  }
  return NULL;
}

int es_fp8_quantize_rows(const void *src, es_dtype_t src_dt, int64_t row0, int64_t rows, int64_t K, uint8_t *q,
                         float *scale, int threads, es_error_t *err) {
  if (src_dt != ES_DT_BF16 && src_dt != ES_DT_F16 && src_dt != ES_DT_F32)
    return es_fail(err, ES_EINVAL, "fp8 quantisation: source dtype %s", es_dtype_name(src_dt));
  if (rows <= 0) return ES_OK;
  if (threads <= 0) {
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    threads = c < 1 ? 1 : (int)(c > ES_FP8_QUANT_THREADS ? ES_FP8_QUANT_THREADS : c);
  }
  if (threads > ES_FP8_QUANT_THREADS) threads = ES_FP8_QUANT_THREADS;
  if ((int64_t)threads > rows) threads = (int)rows;
  if (rows * K < (1 << 18)) threads = 1; /* not worth a thread */
  float *tmp = malloc(sizeof(float) * (size_t)K * (size_t)threads);
  if (!tmp) return es_fail(err, ES_ENOMEM, "fp8 quantisation: out of memory for %d rows of %lld", threads,
                           (long long)K);
  quant_job_t jobs[ES_FP8_QUANT_THREADS];
  pthread_t th[ES_FP8_QUANT_THREADS];
  int started[ES_FP8_QUANT_THREADS] = {0};
  for (int t = 0; t < threads; t++) {
    jobs[t] = (quant_job_t){.src = src, .dt = src_dt, .row0 = row0, .begin = row0 + rows * t / threads,
                            .end = row0 + rows * (t + 1) / threads, .K = K, .q = q, .scale = scale,
                            .tmp = tmp + (size_t)K * (size_t)t, .bad_row = -1};
    if (t > 0) started[t] = pthread_create(&th[t], NULL, quant_run, &jobs[t]) == 0;
  }
  quant_run(&jobs[0]);
  for (int t = 1; t < threads; t++) {
    if (started[t])
      pthread_join(th[t], NULL);
    else
      quant_run(&jobs[t]); /* no thread: do it here */
  }
  free(tmp);
  for (int t = 0; t < threads; t++)
    if (jobs[t].bad_row >= 0)
      return es_fail(err, ES_EINVAL, "fp8 quantisation: row %lld holds a NaN or an infinity",
                     (long long)jobs[t].bad_row);
  return ES_OK;
}
