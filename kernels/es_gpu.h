/* es_gpu: which GPUs this process can use, and whether earshot's CUDA code runs on them.
 *
 * Built with or without CUDA: without it, es_gpu_count reports 0 devices and says why. The CUDA
 * implementation is kernels/cuda/gpu_device.cu; the fallback is kernels/gpu_none.c.
 * Thread safety: all functions may be called from any thread.
 */
#pragma once

#include <stddef.h>

#include "es_error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  char name[256];
  int cc_major, cc_minor; /* compute capability */
  int sm_count;
  size_t mem_total_bytes, mem_free_bytes;
} es_gpu_info_t;

/* 1 when this binary has the CUDA backend compiled in. */
int es_gpu_compiled(void);

/* The CUDA architectures compiled in, e.g. "80;90" ("" without CUDA). */
const char *es_gpu_architectures(void);

/* Number of usable GPUs in *count. No driver or no device is not an error: *count = 0 and, when why is
 * non-NULL, a reason ("built without CUDA", "no CUDA driver", "no CUDA device") is written there.
 * Other CUDA failures return ES_EDEVICE. */
int es_gpu_count(int *count, char *why, size_t why_cap, es_error_t *err);

/* Properties of device idx. */
int es_gpu_info(int idx, es_gpu_info_t *info, es_error_t *err);

/* Runs a small kernel on device idx and checks its output: proves the compiled code matches the card. */
int es_gpu_selftest(int idx, es_error_t *err);

#ifdef __cplusplus
}
#endif
