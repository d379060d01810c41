/* gpu_device: es_gpu on the CUDA runtime. See kernels/es_gpu.h.
 * The self-test kernel is deliberately trivial: it proves that the fatbinary has code for the card
 * (sm_80 / sm_90 SASS or PTX) and that a launch, a copy and a sync work end to end.
 */
#include <stdio.h>
#include <string.h>

#include "cuda_check.h"
#include "es_gpu.h"

#ifndef ES_CUDA_ARCHS
#define ES_CUDA_ARCHS ""
#endif

extern "C" int es_gpu_compiled(void) { return 1; }

extern "C" const char *es_gpu_architectures(void) { return ES_CUDA_ARCHS; }

extern "C" int es_gpu_count(int *count, char *why, size_t why_cap, es_error_t *err) {
  *count = 0;
  cudaError_t e = cudaGetDeviceCount(count);
  if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver || e == cudaErrorCallRequiresNewerDriver) {
    cudaGetLastError(); /* clear the sticky-free error state */
    *count = 0;
    if (why && why_cap)
      snprintf(why, why_cap, "%s", e == cudaErrorNoDevice ? "no CUDA device" : "no usable CUDA driver");
    return ES_OK;
  }
  if (e != cudaSuccess) return es_cuda_fail(err, e, "cudaGetDeviceCount", __FILE__, __LINE__);
  if (*count == 0 && why && why_cap) snprintf(why, why_cap, "no CUDA device");
  return ES_OK;
}

extern "C" int es_gpu_info(int idx, es_gpu_info_t *info, es_error_t *err) {
  memset(info, 0, sizeof *info);
  cudaDeviceProp prop;
  ES_CUDA_TRY(err, cudaGetDeviceProperties(&prop, idx));
  snprintf(info->name, sizeof info->name, "%s", prop.name);
  info->cc_major = prop.major;
  info->cc_minor = prop.minor;
  info->sm_count = prop.multiProcessorCount;
  ES_CUDA_TRY(err, cudaSetDevice(idx));
  ES_CUDA_TRY(err, cudaMemGetInfo(&info->mem_free_bytes, &info->mem_total_bytes));
  return ES_OK;
}

// out[i] = 2*i + 1 for i < n.  (n) int32
__global__ void selftest_kernel(int *out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = 2 * i + 1;
}

extern "C" int es_gpu_selftest(int idx, es_error_t *err) {
  enum { N = 4099 }; /* not a multiple of the block size: the tail guard is exercised */
  static int host[N];
  int *dev = NULL;
  int rc = ES_OK;
  ES_CUDA_TRY(err, cudaSetDevice(idx));
  ES_CUDA_TRY(err, cudaMalloc(&dev, N * sizeof(int)));
  cudaError_t e = cudaMemset(dev, 0xff, N * sizeof(int));
  if (e == cudaSuccess) {
    selftest_kernel<<<(N + 255) / 256, 256>>>(dev, N);
    e = cudaGetLastError();
  }
  if (e == cudaSuccess) e = cudaMemcpy(host, dev, sizeof host, cudaMemcpyDeviceToHost);
  if (e != cudaSuccess) rc = es_cuda_fail(err, e, "selftest_kernel", __FILE__, __LINE__);
  cudaFree(dev);
  if (rc) return rc;
  for (int i = 0; i < N; i++)
    if (host[i] != 2 * i + 1)
      return es_fail(err, ES_EDEVICE, "GPU %d self-test: out[%d] = %d, expected %d", idx, i, host[i], 2 * i + 1);
  return ES_OK;
}
