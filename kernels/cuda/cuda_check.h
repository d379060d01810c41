/* cuda_check: the one check macro for the CUDA runtime (STYLE.md: one per API family).
 * ES_CUDA_TRY(err, call) evaluates call once; on failure it records the call text, file, line, current
 * device and CUDA's message in *err and returns ES_EDEVICE from the enclosing function.
 * Include only from .cu files.
 */
#pragma once

#include <cuda_runtime.h>

#include "es_error.h"

static inline int es_cuda_fail(es_error_t *err, cudaError_t e, const char *call, const char *file, int line) {
  int dev = -1;
  cudaGetDevice(&dev);
  return es_fail(err, ES_EDEVICE, "CUDA error on device %d at %s:%d: %s: %s (%s)", dev, file, line, call,
                 cudaGetErrorString(e), cudaGetErrorName(e));
}

#define ES_CUDA_TRY(err, call)                                                                     \
  do {                                                                                             \
    cudaError_t es_cuda_e_ = (call);                                                               \
    if (es_cuda_e_ != cudaSuccess) return es_cuda_fail((err), es_cuda_e_, #call, __FILE__, __LINE__); \
  } while (0)
