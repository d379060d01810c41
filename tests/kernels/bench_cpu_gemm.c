/* bench_cpu_gemm: GFLOP/s of the CPU backend's linear for the encoder's shapes, per GEMM path and
 * instruction-set variant, bf16 weights. A program, not a test: `bench_cpu_gemm [threads] [reps]`.
 * The numbers behind the default path in kernels/cpu/cpu_gemm.c come from here.
 */
#include <time.h>

#include "kernel_test.h"

#include "cpu/cpu_backend.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 0, reps = argc > 2 ? atoi(argv[2]) : 3;
  static const int64_t shapes[][3] = {{1, 1280, 1280},    {1, 1280, 5120},    {1, 4096, 4096},
                                      {1500, 1280, 1280}, {1500, 1280, 5120}, {1500, 5120, 1280}};
  es_backend_t *be = kt_backend(threads, 16, 1, 1);
  if (!be) return 1;
  printf("%s\n%-10s %-18s %12s %10s\n", es_backend_name(be), "path", "M x K x N", "ms", "GFLOP/s");
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    int64_t M = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
    kt_weight_t w = kt_weight(ES_DT_BF16, N, K, -1, 1);
    float *x = malloc(sizeof(float) * (size_t)(M * K));
    kt_fill(x, M * K, -1, 1);
    es_weight_t dw = kt_upload(be, &w);
    void *dx = kt_act(be, x, M * K), *dy = kt_act(be, NULL, M * N);
    for (int cfg = 0; cfg <= CPU_ISA_COUNT; cfg++) {
      es_error_t err;
      int blas = cfg == CPU_ISA_COUNT;
      if (cpu_backend_set_gemm_path(be, blas ? CPU_GEMM_BLAS : CPU_GEMM_C, &err)) continue;
      if (!blas && cpu_backend_set_isa(be, (cpu_isa_t)cfg, &err)) continue;
      es_op_linear(be, dy, N, dx, K, &dw, NULL, M, ES_ACT_NONE, 0, &err); /* warm-up */
      double best = 1e30;
      for (int r = 0; r < reps; r++) {
        double t0 = now();
        es_op_linear(be, dy, N, dx, K, &dw, NULL, M, ES_ACT_NONE, 0, &err);
        double dt = now() - t0;
        best = dt < best ? dt : best;
      }
      char shape[40];
      snprintf(shape, sizeof shape, "%lldx%lldx%lld", (long long)M, (long long)K, (long long)N);
      printf("%-10s %-18s %12.3f %10.1f\n", blas ? "openblas" : cpu_isa_name((cpu_isa_t)cfg), shape, best * 1e3,
             2.0 * (double)(M * K * N) / best * 1e-9);
    }
    free(x);
    kt_weight_free(&w);
  }
  es_backend_free(be);
  return t_failed ? 1 : 0;
}
