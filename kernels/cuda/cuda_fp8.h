/* cuda_fp8: es_op_linear with an FP8 e4m3 weight (es_backend_upload_weight_fp8) on the CUDA backend.
 *   CUDA_FP8_MMA_MIN_M <= M <= CUDA_FP8_MMA_MAX_M (decode steps) in bf16 with K % 64 == 0: a
 *   weight-only GEMV on tensor cores
 *   (cuda_fp8_mma.cu) that reads each fp8 weight once;
 *   else M <= CUDA_FP8_GEMV_MAX_M: the same on CUDA cores (cuda_fp8.cu);
 *   else (prefill, fp32 compute, odd K) and always in deterministic mode: the weight dequantised into cb->fp8_scratch
 * (compute dtype, sized at upload for the largest fp8 weight) and the ordinary cuBLASLt GEMM (cuda_gemm.cu calls
 * cuda_fp8_dequant, then its gemm). The element math (decode, scale) is kernels/fp8_math.h's, tested on the CPU. Thread
 * safety: the driving thread (backend.h).
 */
#pragma once

#include "cuda_backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The largest M the GEMV kernel takes. Its work per weight grows with M (M FMAs and M activation loads per
 * weight: the kernel is bound by instruction issue, not by the weight bytes, already at M = 1), so past a few
 * rows dequantise + tensor-core GEMM (5 bytes moved per weight) wins. Measured with `earshot bench linear` on an
 * H200 (2026-11-27), the 7B q|k|v projection: GEMV 20 µs at M = 1, 42 at 4, 70 at 8, 125 at 16, 592 at 64;
 * dequantise + cuBLASLt ~67 µs at any M up to 64 (the dequantise's 150 MB + the bf16 GEMM's 30 µs). A former
 * path that ran the GEMV over 16-row chunks up to M = 64 was 10x slower than that at M = 64. */
#define CUDA_FP8_GEMV_MAX_M 8

/* The largest M the tensor-core fp8 GEMV takes (8 n-tiles of 8 rows: the decode batch of a step), and the most
 * rows of one launch by default (mode 1; more rows in launches of at most this many, fp8m_launch_rows; mode 2: one
 * launch). Every block reads all of x's rows, so the time grows faster than the rows: H100, 2026-11-28 (`bench
 * linear`), q|k|v 36.6 µs at 16 rows, 66.7 at 32, 188 at 64 in one launch (2 launches of 32: ~133); dequantise +
 * cuBLASLt 246 µs at any of these. */
#define CUDA_FP8_MMA_MAX_M 64
#define CUDA_FP8_MMA_DEFAULT_M 32
/* The fewest rows it takes: one row goes to the CUDA-core GEMV, measured faster there (H100, 2026-11-28): in
 * isolation (`bench linear`, fraction of the copy bandwidth, CUDA cores vs tensor cores) q|k|v 0.67 vs 0.65, o 0.49
 * vs 0.44, gate|up 0.80 vs 0.77, down 0.58 vs 0.56, and the 7B decode step at batch 1 3.710 vs 4.170 ms (`bench
 * model --quantization fp8`, the same run: this kernel's per-row scale pass over x comes after its PDL wait). From
 * 2 rows on it wins (q|k|v at M = 4: 0.63 vs 0.38). */
#define CUDA_FP8_MMA_MIN_M 2

/* y[M, N] = act(x[M, K] · (decode(w) · scale)ᵀ + bias) (+ y) on tensor cores (cuda_fp8_mma.cu) where
 * cuda_fp8_mma_ok: cb->fp8_mma (1: launches of at most CUDA_FP8_MMA_DEFAULT_M rows, 2: one launch), from
 * CUDA_FP8_MMA_MIN_M to CUDA_FP8_MMA_MAX_M rows, bf16 compute,
 * K % 64 == 0, 16-byte aligned weight and x rows. The products are exact for every x within 2^-28 of its row's largest
 * |x| (bf16 x scaled by a power of two is exact in f16 there; smaller ones land in f16 subnormals), so it agrees with
 * cuda_fp8_gemv (which takes the calls it does not) up to the fp32 summation order. */
int cuda_fp8_mma_ok(const cuda_backend_t *cb, const void *x, int64_t ldx, const es_weight_t *w, int64_t M);
int cuda_fp8_mma(cuda_backend_t *cb, void *y, int64_t ldy, const void *x, int64_t ldx, const es_weight_t *w,
                 const es_weight_t *bias, int64_t M, es_act_t act, int accumulate, es_error_t *err);

/* y[M, N] = act(x[M, K] · (decode(w) · scale)ᵀ + bias) (+ y), for M <= CUDA_FP8_GEMV_MAX_M, on CUDA cores. */
int cuda_fp8_gemv(cuda_backend_t *cb, void *y, int64_t ldy, const void *x, int64_t ldx, const es_weight_t *w,
                  const es_weight_t *bias, int64_t M, es_act_t act, int accumulate, es_error_t *err);

/* es_op_linear_silu_mul with an fp8 gate|up weight (2N, K) at one row in one kernel: y[0, n] = silu(g) · u, g and
 * u rows n and n + N of the product, where the fusion is on (cb->fusions, CUDA_FUSE_GLU), outside deterministic mode,
 * where this GEMV would take the linear (one row: the tensor-core GEMV does not; cuda_fp8_mma_ok) and K % 16 == 0
 * with 16-byte aligned rows. The same bits as cuda_fp8_gemv into (1, 2N) and cuda_ops' SiLU·mul. */
int cuda_fp8_glu_ok(const cuda_backend_t *cb, const void *x, int64_t ldx, const es_weight_t *w, int64_t M);
int cuda_fp8_glu(cuda_backend_t *cb, void *y, int64_t ldy, const void *x, int64_t ldx, const es_weight_t *w, int64_t M,
                 es_error_t *err);

/* es_op_linear_rms_norm with an fp8 weight at one row in one kernel: o = x · wᵀ by this GEMV (where it would take the
 * linear: one row, K % 16 == 0, aligned rows, outside deterministic mode), then its last block to finish applies the
 * RMSNorm with the residual add as cuda_ops' RMSNorm does — the same bits — where the fusion is on (cb->fusions,
 * CUDA_FUSE_NORM), the RMSNorm takes its one-pass kernel (cuda_rms_norm_vec_ok) and the grid has no idle warp. */
int cuda_fp8_norm_ok(const cuda_backend_t *cb, const void *y, const void *residual, const void *o, const void *x,
                     int64_t ldx, const es_weight_t *w, const es_weight_t *norm_w, int64_t M);
int cuda_fp8_norm(cuda_backend_t *cb, void *y, void *residual, void *o, const void *x, int64_t ldx,
                  const es_weight_t *w, const es_weight_t *norm_w, int64_t M, float eps, es_error_t *err);

/* es_op_linear_rope_kv_store with an fp8 [q; k; v] weight (3·H·D rows) at one row in one kernel: the GEMV whose warps
 * each take one RoPE pair of rows, rotate q and k and store k and v to the cache (rope_math.cuh), where the fusion is
 * on (CUDA_FUSE_ROPE), this GEMV would take the linear (one row, K % 16 == 0, aligned, not deterministic), the cache
 * is in the compute dtype and the step has one token. The same bits as cuda_fp8_gemv and cuda_ops' RoPE kernel. */
int cuda_fp8_rope_ok(const cuda_backend_t *cb, const void *x, int64_t ldx, const es_weight_t *w, int64_t M, int H,
                     int D);
int cuda_fp8_rope(cuda_backend_t *cb, int layer, void *qkv, const void *x, int64_t ldx, const es_weight_t *w,
                  const es_weight_t *bias, int64_t M, int H, int D, float theta, es_error_t *err);

/* cb->fp8_scratch[n, k] = decode(w[n, k]) · scale[n] in the compute dtype (rounded to nearest even in bf16). */
int cuda_fp8_dequant(cuda_backend_t *cb, const es_weight_t *w, es_error_t *err);

#ifdef __cplusplus
}
#endif
