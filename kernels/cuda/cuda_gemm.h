/* cuda_gemm: the CUDA backend's matrix products — es_op_linear, es_op_conv1d (im2col + GEMM) and
 * es_op_logits — through cuBLASLt (bf16 or fp32 in, fp32 accumulate, bias in the epilogue), with the plans
 * cached per problem shape, and a plain tiled kernel for shapes the heuristic has no algorithm for.
 * Thread safety: the driving thread (backend.h).
 */
#pragma once

#include "cuda_backend.h"

#ifdef __cplusplus
extern "C" {
#endif

int cuda_op_linear(es_backend_t *be, void *y, int64_t ldy, const void *x, int64_t ldx, const es_weight_t *w,
                   const es_weight_t *bias, int64_t M, es_act_t act, int accumulate, es_error_t *err);
/* es_op_linear_silu_mul where it runs as one kernel (backend_impl.h): the gate|up GEMV with SiLU·mul in its epilogue
 * at one row, bf16 (cuda_gemv.h: cuda_gemv_glu) or fp8 weights (cuda_fp8.h: cuda_fp8_glu). */
int cuda_op_linear_silu_mul_ok(const es_backend_t *be, const void *x, int64_t ldx, const es_weight_t *w, int64_t M);
int cuda_op_linear_silu_mul(es_backend_t *be, void *y, const void *x, int64_t ldx, const es_weight_t *w, int64_t M,
                            es_error_t *err);
/* es_op_linear_rms_norm where it runs as one kernel (backend_impl.h): the GEMV whose last block applies the RMSNorm,
 * at one row, bf16 (cuda_gemv.h: cuda_gemv_norm) or fp8 weights (cuda_fp8.h: cuda_fp8_norm). */
int cuda_op_linear_rms_norm_ok(const es_backend_t *be, const void *y, const void *residual, const void *o,
                               const void *x, int64_t ldx, const es_weight_t *w, const es_weight_t *norm_weight,
                               int64_t M);
int cuda_op_linear_rms_norm(es_backend_t *be, void *y, void *residual, void *o, const void *x, int64_t ldx,
                            const es_weight_t *w, const es_weight_t *norm_weight, int64_t M, float eps,
                            es_error_t *err);
/* es_op_linear_rope_kv_store where it runs as one kernel (backend_impl.h): the q|k|v GEMV whose warps apply RoPE and
 * store the KV cache, at one token, bf16 (cuda_gemv.h: cuda_gemv_rope) or fp8 weights (cuda_fp8.h: cuda_fp8_rope). */
int cuda_op_linear_rope_kv_store_ok(const es_backend_t *be, const void *x, int64_t ldx, const es_weight_t *w,
                                    const es_weight_t *bias, int H, int D);
int cuda_op_linear_rope_kv_store(es_backend_t *be, int layer, void *qkv, int64_t ldqkv, const void *x, int64_t ldx,
                                 const es_weight_t *w, const es_weight_t *bias, int H, int D, float theta,
                                 es_error_t *err);
int cuda_op_conv1d(es_backend_t *be, void *y, const void *x, const es_weight_t *w, const es_weight_t *bias, int64_t B,
                   int64_t T_in, int64_t C_in, int kernel, int stride, int pad, es_act_t act, es_error_t *err);
int cuda_op_logits(es_backend_t *be, float *logits, const void *x, const es_weight_t *w, int64_t M, es_error_t *err);

/* Destroys the cached cuBLASLt plans (at backend destroy). */
void cuda_gemm_free_plans(cuda_backend_t *cb);

#ifdef __cplusplus
}
#endif
