/* cuda_attention: the attention ops of the CUDA backend — encoder self-attention with key padding and decoder
 * attention over the paged KV cache (prefill, chunked prefill over a cached prefix, decode): the dispatch to the
 * fast kernels (attn_fast.h) and the simple reference kernel, one for all three, that they are tested against.
 * Thread safety: the driving thread (backend.h).
 */
#pragma once

#include "cuda_backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Sizes the kernels' shared memory for contexts up to max_ctx positions; ES_EUNSUPPORTED when the device
 * cannot hold that many scores in one block. Reads EARSHOT_ATTENTION (simple|fast; ES_EINVAL otherwise) and
 * prepares the fast kernels (attn_fast.h). Called at create (paged: max_blocks * 16). */
int cuda_attention_init(cuda_backend_t *cb, int64_t max_ctx, es_error_t *err);

int cuda_op_attention_paged(es_backend_t *be, int layer, void *out, const void *q, int64_t ldq, int H, int D,
                            float scale, es_error_t *err);
int cuda_op_attention_dense(es_backend_t *be, void *out, const void *q, int64_t ldq, const void *k, int64_t ldk,
                            const void *v, int64_t ldv, int64_t B, int64_t T, int H, int D, float scale,
                            const int32_t *valid_len, es_error_t *err);

#ifdef __cplusplus
}
#endif
