/* cuda_check: one check macro per API family (STYLE.md): the CUDA runtime and cuBLASLt.
 * ES_CUDA_TRY(err, call) evaluates call once; on failure it records the call text, file, line, current
 * device and CUDA's message in *err and returns ES_EDEVICE from the enclosing function.
 * ES_CUBLAS_TRY(err, call) is its twin for cublasLt* calls (cublasStatus_t).
 * ES_CUDA_LAUNCHED(err) follows every kernel launch: cudaGetLastError, reported like ES_CUDA_TRY.
 * Include only from .cu files.
 */
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "es_error.h"

static inline int es_cuda_fail(es_error_t *err, cudaError_t e, const char *call, const char *file, int line) {
  int dev = -1;
  cudaGetDevice(&dev);
  return es_fail(err, ES_EDEVICE, "CUDA error on device %d at %s:%d: %s: %s (%s)", dev, file, line, call,
                 cudaGetErrorString(e), cudaGetErrorName(e));
}

#define ES_CUDA_TRY(err, call)                                                                                         \
  do {                                                                                                                 \
    cudaError_t es_cuda_e_ = (call);                                                                                   \
    if (es_cuda_e_ != cudaSuccess) return es_cuda_fail((err), es_cuda_e_, #call, __FILE__, __LINE__);                  \
  } while (0)

static inline int es_cublas_fail(es_error_t *err, cublasStatus_t st, const char *call, const char *file, int line) {
  int dev = -1;
  cudaGetDevice(&dev);
  return es_fail(err, ES_EDEVICE, "cuBLASLt error on device %d at %s:%d: %s: %s (%d)", dev, file, line, call,
                 cublasLtGetStatusString(st), (int)st);
}

#define ES_CUBLAS_TRY(err, call)                                                                                       \
  do {                                                                                                                 \
    cublasStatus_t es_cublas_s_ = (call);                                                                              \
    if (es_cublas_s_ != CUBLAS_STATUS_SUCCESS) return es_cublas_fail((err), es_cublas_s_, #call, __FILE__, __LINE__);  \
  } while (0)

#define ES_CUDA_LAUNCHED(err) ES_CUDA_TRY(err, cudaGetLastError())
