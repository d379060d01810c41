/* cuda_gemv: es_op_linear / es_op_logits (and, fused at one row, es_op_linear_silu_mul and es_op_linear_rms_norm:
 * below) at decode sizes (M <= CUDA_GEMV_MAX_M rows) with bf16 weights and
 * bf16 activations, as a weight-streaming GEMV instead of cuBLASLt (cuda_gemm.cu's gemm() takes it first when
 * cuda_gemv_ok): by default for every linear of one row (gemv_math.h, gemv_preferred: measured faster there in a decode
 * step); every shape it takes under cuda_backend_set_gemv(be, 2). Off in deterministic mode (cuBLASLt sums larger
 * M in another order), under the plain-GEMM test path, and with EARSHOT_GEMV=0 at create or
 * cuda_backend_set_gemv(be, 0) (bisecting, and `bench model`'s side-by-side measurement).
 * Thread safety: the driving thread (backend.h).
 */
#pragma once

#include "cuda_backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The largest M the GEMV takes: the activations it reads per weight row grow with M; not yet measured. */
#define CUDA_GEMV_MAX_M 4

/* 16-byte weight loads each lane of the GEMVs (bf16 here, fp8 in cuda_fp8.cu) issues before using the first:
 * latency hiding for weight rows of a few KB. Any value gives the same bits (the lane's sum order is fixed).
 * 4: measured best on an H200 with `earshot bench linear` (o 4096x4096 at M = 1: 0.56 of the copy bandwidth
 * with 4, 0.52 with 8, 0.44 with 16; every shape the same order or a tie). */
#define CUDA_GEMV_LOADS_DEFAULT 4
static inline int cuda_gemv_loads(const cuda_backend_t *cb) {
  return cb->gemv_loads ? cb->gemv_loads : CUDA_GEMV_LOADS_DEFAULT;
}
/* The same for the CUDA-core fp8 GEMV (cuda_fp8.cu), whose rounds carry twice the weights per load and ~4
 * instructions per weight: its own default, the same setting (cuda_backend_set_gemv_loads) overrides both. */
#define CUDA_FP8_GEMV_LOADS_DEFAULT 4
static inline int cuda_fp8_gemv_loads(const cuda_backend_t *cb) {
  return cb->gemv_loads ? cb->gemv_loads : CUDA_FP8_GEMV_LOADS_DEFAULT;
}
/* 1: each lane of the GEMVs issues its next round of weight loads before the arithmetic on the current one
 * (software pipelining: the loads of a round no longer wait for the FMAs of the one before; not in the fp8 GEMV
 * with 16 loads in flight, which would spill); the same bits either way. Measured on an H100 (2026-11-28, the 7B
 * decode step at batch 1): bf16 5.799 against 5.888 ms unpipelined; fp8 3.747 against 3.716 — no gain there
 * (within noise), one setting for both. On by default; EARSHOT_GEMV_PIPE=0 at create
 * or cuda_backend_set_gemv_pipe turn it off (`bench model` and `bench linear` time both). */
static inline int cuda_gemv_pipe(const cuda_backend_t *cb) {
  return !cb->gemv_pipe_off;
}

/* Weight rows per warp of the bf16 and CUDA-core fp8 GEMVs at one row of x (gemv_math.h: GEMV_ROWS_ONE / _TWO): with
 * two, each x load and its conversion serve two weight rows (half the activation work per weight — the fp8 GEMV
 * issues ~4 instructions per weight byte) and a warp streams twice the bytes. The same bits either way. Not yet
 * measured on a GPU (2026-11-28): 1 by default; EARSHOT_GEMV_ROWS=2 at create or cuda_backend_set_gemv_rows turn it
 * on (`bench model` and `bench linear` time both). */
#define CUDA_GEMV_ROWS_DEFAULT 1
static inline int cuda_gemv_rows(const cuda_backend_t *cb) {
  return cb->gemv_rows == 2 ? 2 : 1;
}

/* 1 when the GEMV takes y[M, N] = x[M, K] · w[N, K]ᵀ on this backend now (see the file comment for when not). */
int cuda_gemv_ok(const cuda_backend_t *cb, es_dtype_t out_dt, const void *x, int64_t ldx, const void *w, int64_t N,
                 int64_t K, int64_t M);

/* y = act(x · wᵀ + bias) (+ y when accumulate), out_dt bf16 or fp32 (logits); bias bf16 [N] or NULL. */
int cuda_gemv(cuda_backend_t *cb, void *y, int64_t ldy, es_dtype_t out_dt, const void *x, int64_t ldx,
              const void *w, int64_t N, int64_t K, const void *bias, int64_t M, es_act_t act, int accumulate,
              es_error_t *err);

/* es_op_linear_silu_mul at one row in one kernel (cuda_gemm.cu: cuda_op_linear_silu_mul): y[0, n] = silu(g) · u
 * with g, u rows n and n + N of the (2N = N2, K) gate|up weight, where the fusion is on (cb->fusions, CUDA_FUSE_GLU)
 * and cuda_gemv_ok takes that linear at M = 1. The same bits as the GEMV into (1, 2N) and cuda_ops' SiLU·mul, and
 * also counted in cuda_backend_gemv_calls. */
int cuda_gemv_glu_ok(const cuda_backend_t *cb, const void *x, int64_t ldx, const void *w, int64_t N2, int64_t K,
                     int64_t M);
int cuda_gemv_glu(cuda_backend_t *cb, void *y, int64_t ldy, const void *x, int64_t ldx, const void *w, int64_t N2,
                  int64_t K, int64_t M, es_error_t *err);

/* What the fused RMSNorm tail (CUDA_FUSE_NORM) and the fused RoPE epilogue (CUDA_FUSE_ROPE) need of the fusion
 * setting, the step and the buffers, whichever GEMV (this one or cuda_fp8.h's) carries them:
 *   norm: the fusion on, its arrival counter, one row, a grid of P warps (the rows setting) that fills its blocks of
 *         warps_per_block (no warp leaves before the tail's barriers), and the RMSNorm's one-pass kernel
 *         (cuda_rms_norm_vec_ok) for rows of N;
 *   rope: the fusion on, one row, a step of one token, a KV cache in the compute dtype of H heads of D (D even), and
 *         N = 3·H·D stacked q|k|v rows. */
int cuda_gemv_norm_fusable(const cuda_backend_t *cb, const void *y, const void *residual, const void *o,
                           const void *norm_w, int64_t N, int64_t M, int warps_per_block);
int cuda_gemv_rope_fusable(const cuda_backend_t *cb, int64_t N, int64_t M, int H, int D);

/* es_op_linear_rms_norm at one row in one kernel (cuda_gemm.cu: cuda_op_linear_rms_norm): o = x · wᵀ (the GEMV,
 * N rows of K, written to o), then its last block to finish applies the RMSNorm with the residual add (y, residual,
 * norm_w of N) as cuda_ops' RMSNorm does, the same bits — where the fusion is on (CUDA_FUSE_NORM), cuda_gemv_ok takes
 * the linear at M = 1, the RMSNorm takes its one-pass kernel (cuda_rms_norm_vec_ok), and the grid has no idle warp.
 * Also counted in cuda_backend_gemv_calls. */
int cuda_gemv_norm_ok(const cuda_backend_t *cb, const void *y, const void *residual, const void *o, const void *x,
                      int64_t ldx, const void *w, const void *norm_w, int64_t N, int64_t K, int64_t M);
int cuda_gemv_norm(cuda_backend_t *cb, void *y, void *residual, void *o, const void *x, int64_t ldx, const void *w,
                   const void *norm_w, int64_t N, int64_t K, int64_t M, float eps, es_error_t *err);

/* es_op_linear_rope_kv_store at one row in one kernel (cuda_gemm.cu): the GEMV over the [q; k; v] weight (N = 3·H·D
 * rows of K) whose warps each take one RoPE pair of rows, rotate q and k and store k and v to the cache at the step's
 * slot (rope_math.cuh) — where the fusion is on (CUDA_FUSE_ROPE), cuda_gemv_ok takes the linear at M = 1, the step has
 * one token and the cache is bf16. The same bits as the GEMV and cuda_ops' RoPE kernel. Counted in
 * cuda_backend_gemv_calls. */
int cuda_gemv_rope_ok(const cuda_backend_t *cb, const void *x, int64_t ldx, const void *w, const void *bias, int64_t N,
                      int64_t K, int64_t M, int H, int D);
int cuda_gemv_rope(cuda_backend_t *cb, int layer, void *qkv, const void *x, int64_t ldx, const void *w,
                   const void *bias, int64_t N, int64_t K, int64_t M, int H, int D, float theta, es_error_t *err);

#ifdef __cplusplus
}
#endif
