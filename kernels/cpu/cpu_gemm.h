/* cpu_gemm: the CPU backend's matrix products — es_op_linear, es_op_conv1d (implicit im2col) and
 * es_op_logits — and the tile geometry the backend sizes its scratch by.
 *
 * Thread safety: called on the backend's driving thread; parallel over fixed (N tile, M chunk) tasks.
 */
#pragma once

#include "cpu_backend.h"

/* Tile geometry. Fixed constants, so no element's arithmetic can depend on M or the thread count. */
#define GEMM_NB 64     /* output columns per task (4 panels of 16) */
#define GEMM_MC 128    /* rows per task; also the fixed sgemm row count of the OpenBLAS path */
#define GEMM_MR_MAX 12 /* rows handed to the kernel at once: a multiple of each variant's register block */

/* Sizes the per-thread GEMM scratch for weights with up to K = n1 columns (called at weight upload). */
int cpu_gemm_reserve(cpu_backend_t *cb, int64_t K, es_error_t *err);
/* Fastest available instruction-set variant on this CPU. */
cpu_isa_t cpu_gemm_best_isa(void);
int cpu_gemm_have_blas(void);
/* One-time OpenBLAS set-up (its own threading off: the pool parallelises). */
void cpu_gemm_blas_init(void);

int cpu_op_linear(es_backend_t *be, void *y, int64_t ldy, const void *x, int64_t ldx, const es_weight_t *w,
                  const es_weight_t *bias, int64_t M, es_act_t act, int accumulate, es_error_t *err);
int cpu_op_conv1d(es_backend_t *be, void *y, const void *x, const es_weight_t *w, const es_weight_t *bias, int64_t B,
                  int64_t T_in, int64_t C_in, int kernel, int stride, int pad, es_act_t act, es_error_t *err);
int cpu_op_logits(es_backend_t *be, float *logits, const void *x, const es_weight_t *w, int64_t M, es_error_t *err);
