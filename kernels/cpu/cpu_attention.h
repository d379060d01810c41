/* cpu_attention: the CPU backend's attention — paged causal decoder attention through block tables, and
 * dense bidirectional encoder attention with key padding. fp32, two-pass softmax with max subtraction.
 *
 * Thread safety: driving thread only; parallel over (row, head) tasks.
 */
#pragma once

#include "cpu_backend.h"

int cpu_op_attention_paged(es_backend_t *be, int layer, void *out, const void *q, int64_t ldq, int H, int D,
                           float scale, es_error_t *err);
int cpu_op_attention_dense(es_backend_t *be, void *out, const void *q, int64_t ldq, const void *k, int64_t ldk,
                           const void *v, int64_t ldv, int64_t B, int64_t T, int H, int D, float scale,
                           const int32_t *valid_len, es_error_t *err);
