/* cuda_convert: element conversions on the device between the storage dtypes (fp32, bf16, fp16) and the
 * backend's compute dtype (fp32 or bf16): weights converted on upload, activations on write_act/read_act.
 * Rounding is to nearest even (__float2bfloat16_rn); widening is exact.
 * Thread safety: launches on the given stream; the caller orders it.
 */
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* dst[i] = (dst_dt) src[i] for i < n; dst_dt is ES_DT_F32 or ES_DT_BF16, src_dt any es_dtype_t. */
int cuda_convert(void *dst, es_dtype_t dst_dt, const void *src, es_dtype_t src_dt, int64_t n, cudaStream_t stream,
                 es_error_t *err);

#ifdef __cplusplus
}
#endif
