/* cuda_sample: the CUDA backend's sampling ops (backend.h, "sampling"): the vtable entries of cuda_backend.cu.
 * The algorithm is kernels/cpu/cpu_sample.h's, run by one 1024-thread block per row (cuda_sample.cu).
 * Thread safety: as backend.h (the driving thread).
 */
#pragma once

#include "backend_impl.h"

#ifdef __cplusplus
extern "C" {
#endif

int cuda_sampler_init(es_backend_t *be, es_error_t *err);
int cuda_sampler_reset(es_backend_t *be, int slot, const int32_t *ids, int n_ids, const int32_t *gen_ids, int n_gen,
                       const int32_t *suppress_ids, int n_suppress, es_error_t *err);
int cuda_sample_prepare(es_backend_t *be, const es_sample_row_t *rows, int n, es_error_t *err);
int cuda_op_sample(es_backend_t *be, float *logits, int n, int32_t *tokens, es_error_t *err);
/* Releases the host-side buffers of the sampling state (device memory goes with the backend's allocations). */
void cuda_sampler_free(es_backend_t *be);

#ifdef __cplusplus
}
#endif
