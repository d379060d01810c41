/* cuda_fp8: es_op_linear with an FP8 e4m3 weight (es_backend_upload_weight_fp8) on the CUDA backend.
 *   M <= CUDA_FP8_GEMV_MAX_M (decode): a weight-only GEMV kernel that reads each fp8 weight once (up to
 *   CUDA_FP8_CHUNKED_MAX_M: once per chunk of CUDA_FP8_GEMV_MAX_M rows);
 *   larger M (prefill): the weight dequantised into cb->fp8_scratch (compute dtype, sized at upload for the
 *   largest fp8 weight) and the ordinary cuBLASLt GEMM (cuda_gemm.cu calls cuda_fp8_dequant, then its gemm).
 * The element math (decode, scale) is kernels/fp8_math.h's, tested on the CPU.
 * Thread safety: the driving thread (backend.h).
 */
#pragma once

#include "cuda_backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The largest M the GEMV kernel takes: its x traffic grows with M (see the napkin math in cuda_fp8.cu), and
 * past this the dequantise + tensor-core GEMM wins. 16 = the brief's starting point; not yet measured. */
#define CUDA_FP8_GEMV_MAX_M 16
/* Up to this M the GEMV runs over chunks of CUDA_FP8_GEMV_MAX_M rows (cuda_gemm.cu says why); past it, the
 * dequantise + GEMM path. 64 = the largest decode bucket; not yet measured. */
#define CUDA_FP8_CHUNKED_MAX_M 64

/* y[M, N] = act(x[M, K] · (decode(w) · scale)ᵀ + bias) (+ y), for M <= CUDA_FP8_GEMV_MAX_M. */
int cuda_fp8_gemv(cuda_backend_t *cb, void *y, int64_t ldy, const void *x, int64_t ldx, const es_weight_t *w,
                  const es_weight_t *bias, int64_t M, es_act_t act, int accumulate, es_error_t *err);

/* cb->fp8_scratch[n, k] = decode(w[n, k]) · scale[n] in the compute dtype (rounded to nearest even in bf16). */
int cuda_fp8_dequant(cuda_backend_t *cb, const es_weight_t *w, es_error_t *err);

#ifdef __cplusplus
}
#endif
