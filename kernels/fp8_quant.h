/* fp8_quant: quantises a weight matrix to FP8 e4m3 with per-output-row scales on the host (fp8_math.h gives
 * the arithmetic), for the backends' es_backend_upload_weight_fp8. Rows are split over up to
 * ES_FP8_QUANT_THREADS threads; each row's scale and codes are a pure function of that row, so the result does
 * not depend on the thread count.
 * Thread safety: reentrant; the threads it starts are joined before it returns.
 */
#pragma once

#include <stdint.h>

#include "backend.h"
#include "es_error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ES_FP8_QUANT_THREADS 16

/* Rows [row0, row0 + rows) of src (n1 = K columns, row-major, src_dt bf16/fp16/fp32, the whole matrix's base
 * pointer) -> q[(n - row0) * K + k] codes and scale[n - row0]. ES_EINVAL naming the row when a row holds a
 * NaN or an infinity (its scale would be meaningless). threads <= 0: the online cores (capped). */
int es_fp8_quantize_rows(const void *src, es_dtype_t src_dt, int64_t row0, int64_t rows, int64_t K, uint8_t *q,
                         float *scale, int threads, es_error_t *err);

#ifdef __cplusplus
}
#endif
