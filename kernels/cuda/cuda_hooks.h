/* cuda_hooks: test and benchmark hooks of the CUDA backend (C). Exist only in builds with the CUDA backend
 * (tests compile their use under ES_HAVE_CUDA_BACKEND). The production choices are made at create.
 * Thread safety: as backend.h (the driving thread).
 */
#pragma once

#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Which GEMM runs es_op_linear / conv1d / logits. */
typedef enum {
  CUDA_GEMM_AUTO = 0,  /* cuBLASLt with the heuristic's algorithm; the plain kernel for shapes it has none for */
  CUDA_GEMM_PLAIN = 1, /* always the plain tiled kernel (cuda_gemm.cu) */
} cuda_gemm_path_t;

int cuda_backend_set_gemm_path(es_backend_t *be, cuda_gemm_path_t path, es_error_t *err);

/* Number of cached cuBLASLt plans, and how many of them fell back to the plain kernel (no algorithm). */
void cuda_backend_gemm_stats(const es_backend_t *be, int *plans, int *fallbacks);

/* Device-to-device copy bandwidth (cudaMemcpyAsync of `bytes`, `repeats` times after a warm-up, timed with
 * events), counting bytes read plus bytes written, in *bytes_per_s. Allocates and frees its own two buffers
 * (benchmarks only, never inside a step). */
int cuda_backend_copy_bandwidth(es_backend_t *be, size_t bytes, int repeats, double *bytes_per_s, es_error_t *err);

#ifdef __cplusplus
}
#endif
