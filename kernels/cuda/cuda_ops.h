/* cuda_ops: the CUDA backend's row-wise and data-movement ops — LayerNorm, RMSNorm with the residual add,
 * add_rows, q/k RoPE + KV store, SiLU·mul, avg-pool, embed, gather/scatter rows, and the GELU applied after
 * a cuBLASLt GEMM. Math: SPEC §3–4; bf16 rounding points: SPEC §7 (see cuda_common.cuh).
 * Thread safety: the driving thread (backend.h).
 */
#pragma once

#include "cuda_backend.h"

#ifdef __cplusplus
extern "C" {
#endif

int cuda_op_layer_norm(es_backend_t *be, void *y, const void *x, const es_weight_t *gamma, const es_weight_t *beta,
                       int64_t M, int64_t C, float eps, es_error_t *err);
int cuda_op_rms_norm(es_backend_t *be, void *y, void *residual, const void *add, const es_weight_t *weight, int64_t M,
                     int64_t C, float eps, es_error_t *err);
/* 1 when the RMSNorm of rows of C elements of dtype dt runs as one pass with one thread per 16-byte vector (C a
 * multiple of the vector, at most 1024 vectors, every pointer 16-byte aligned; add may be NULL) — the arithmetic the
 * GEMVs' fused RMSNorm tail (CUDA_FUSE_NORM) shares, so it fuses only there. */
int cuda_rms_norm_vec_ok(es_dtype_t dt, int64_t C, const void *y, const void *residual, const void *add, const void *w);
int cuda_op_add_rows(es_backend_t *be, void *x, const void *rows, int64_t M, int64_t T, int64_t C, es_error_t *err);
int cuda_op_rope_kv_store(es_backend_t *be, int layer, void *q, int64_t ldq, void *k, int64_t ldk, const void *v,
                          int64_t ldv, int H, int D, float theta, es_error_t *err);
int cuda_op_silu_mul(es_backend_t *be, void *y, const void *gate, const void *up, int64_t ld, int64_t M, int64_t N,
                     es_error_t *err);
int cuda_op_avg_pool2(es_backend_t *be, void *y, const void *x, int64_t B, int64_t T, int64_t C, es_error_t *err);
int cuda_op_embed(es_backend_t *be, void *y, const es_weight_t *table, const int32_t *ids, int64_t M, es_error_t *err);
int cuda_op_gather_rows(es_backend_t *be, void *y, const void *x, const int32_t *idx, int64_t M, int64_t C,
                        es_error_t *err);
int cuda_op_scatter_rows(es_backend_t *be, void *y, const void *x, const int32_t *idx, int64_t M, int64_t C,
                         es_error_t *err);

/* y[m, n] = gelu(y[m, n]) in place for m < M, n < N, row stride ldy (after a GEMM without activation). */
int cuda_gelu_inplace(cuda_backend_t *cb, void *y, int64_t ldy, int64_t M, int64_t N, es_error_t *err);

#ifdef __cplusplus
}
#endif
