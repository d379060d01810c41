/* cpu_backend: the fp32 reference backend (backend.h) — its state, its memory and its worker pool.
 *
 * What it owns: every block handed out by es_backend_alloc (tracked, freed at destroy), the KV pool
 * kv[L][n_blocks][2][H][16][D] fp32 (or fp8 codes and their scales), per-thread scratch (weight tiles widened to fp32,
 * conv windows, attention scores) and the worker pool. Weights are NOT owned: upload keeps the stored dtype
 * (bf16/fp16/fp32) and aliases the caller's memory (the checkpoint mmap, which must outlive the backend),
 * copying only when the host pointer is not aligned for its dtype.
 *
 * Numerics (the reference every other backend is tested against): fp32 activations and accumulation,
 * no fused multiply-add anywhere (kernels/cpu is compiled with -ffp-contract=off, and the vectorised and
 * scalar code paths perform the same IEEE operations in the same order), so results do not depend on the
 * instruction set chosen at run time, on the thread count or on the batch: each output element is
 * computed by one task whose arithmetic depends only on its own row and the problem's K/D/context.
 *
 * Thread safety: as backend.h — one driving thread; ops run their tasks on the pool and return when done.
 */
#pragma once

#include <stdint.h>
#include <string.h>

#include "backend_impl.h"
#include "cpu_pool.h"

/* Which GEMM implementation es_op_linear / conv1d / logits use. */
typedef enum {
  CPU_GEMM_C = 0,    /* the blocked C kernel (cpu_gemm.c) */
  CPU_GEMM_BLAS = 1, /* OpenBLAS sgemm on fixed-size tiles; only when built with ES_HAVE_OPENBLAS */
} cpu_gemm_path_t;

/* Instruction-set variant of the C kernel; all give identical bits (no FMA), they differ only in speed. */
typedef enum {
  CPU_ISA_GENERIC = 0, /* the compiler's baseline (SSE2 on x86-64) */
  CPU_ISA_AVX2 = 1,    /* an AVX-512 build of the same kernel measured no faster (ymm, 8 rows; zmm untried) */
  CPU_ISA_COUNT
} cpu_isa_t;

/* Per-thread scratch buffers, each grown on the driving thread outside the pool (never inside a task). */
enum {
  CPU_SCR_WPACK,  /* a weight tile widened to fp32: GEMM_NB * K */
  CPU_SCR_AROW,   /* conv windows that touch the zero padding: GEMM_MR_MAX * K */
  CPU_SCR_BLAS_A, /* OpenBLAS path: the fixed-height A tile, GEMM_MC * K */
  CPU_SCR_BLAS_C, /* OpenBLAS path: its output tile, GEMM_MC * GEMM_NB */
  CPU_SCR_ATT,    /* attention scores of one query row: context length */
  CPU_SCR_COUNT
};

typedef struct {
  float *buf[CPU_SCR_COUNT];
  size_t cap[CPU_SCR_COUNT]; /* floats */
} cpu_scratch_t;

typedef struct {
  es_backend_t base; /* first: the es_backend_t * handed out is this struct */
  cpu_pool_t *pool;
  int n_threads;
  cpu_scratch_t *scratch; /* [n_threads], indexed by the pool's tid */
  void **allocs;          /* es_backend_alloc blocks and weight copies, freed at destroy */
  size_t n_allocs, cap_allocs;
  void *kv;        /* (L, n_blocks, 2, H, 16, D) fp32, or e4m3 codes with an fp8 KV cache; owned */
  float *kv_scale; /* fp8 KV cache: (L, n_blocks, 2, H, 16) the scale of each stored row; owned; else NULL */
  int64_t max_k; /* largest n1 of any uploaded weight: the GEMM scratch is sized for it */
  cpu_gemm_path_t gemm_path;
  cpu_isa_t isa;
  /* ---- fp8 weights ---- */
  float fp8_lut[256]; /* the value of each e4m3 code (fp8_math.h), filled at create; read-only after */
  /* sampling (cpu_sample.c), tracked blocks from cpu_sampler_init; S = smp_slots, V = smp_vocab */
  uint8_t *smp_seen;         /* (S, V) 1 = seen in the prompt or generated */
  int32_t *smp_count;        /* (S, V) times generated */
  int32_t *smp_supp;         /* (S, ES_SAMPLE_MAX_SUPPRESS) suppress ids */
  int32_t *smp_n_supp;       /* (S) */
  es_sample_row_t *smp_rows; /* (S) the last prepare's rows */
  float *smp_w;              /* (V) weight scratch */
} cpu_backend_t;

static inline cpu_backend_t *cpu_be(es_backend_t *be) {
  return (cpu_backend_t *)be;
}

/* Makes every thread's scratch buffer `which` hold at least `floats` floats (driving thread only). */
int cpu_scratch_reserve(cpu_backend_t *cb, int which, size_t floats, es_error_t *err);

/* Test and benchmark hooks (the production choice is made at create: see cpu_gemm.c for the measurements).
 * ES_EUNSUPPORTED when the path or instruction set is not available in this build / on this CPU. */
int cpu_backend_set_gemm_path(es_backend_t *be, cpu_gemm_path_t path, es_error_t *err);
int cpu_backend_set_isa(es_backend_t *be, cpu_isa_t isa, es_error_t *err);
const char *cpu_isa_name(cpu_isa_t isa);

/* ---- dtype widening (exact: every bf16/fp16 value is an fp32 value) ------------------------------------ */

static inline float cpu_bf16_to_f32(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

static inline float cpu_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
  if (exp == 0) {
    float f = (float)man * 0x1p-24f; /* zero or subnormal: exact in fp32 */
    memcpy(&bits, &f, sizeof bits);
    bits |= sign;
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

/* dst[i] = src[i] for i < n, src in dtype dt. */
static inline void cpu_widen(float *dst, const void *src, es_dtype_t dt, int64_t n) {
  if (dt == ES_DT_F32) {
    memcpy(dst, src, (size_t)n * sizeof(float));
  } else if (dt == ES_DT_BF16) {
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = cpu_bf16_to_f32(s[i]);
  } else {
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = cpu_f16_to_f32(s[i]);
  }
}

/* Element i of a weight, widened. */
static inline float cpu_weight_at(const es_weight_t *w, int64_t i) {
  if (w->dtype == ES_DT_F32) return ((const float *)w->data)[i];
  uint16_t h = ((const uint16_t *)w->data)[i];
  return w->dtype == ES_DT_BF16 ? cpu_bf16_to_f32(h) : cpu_f16_to_f32(h);
}
