/* cpu_gemm: y[M, N] = act(A[M, K] · W[N, K]ᵀ + bias[N]) (+ y), for es_op_linear, es_op_conv1d and
 * es_op_logits. W stays in its stored dtype; each task widens one tile of GEMM_NB weight rows to fp32
 * in its own scratch and computes GEMM_MC rows of A against it.
 *
 * Batch invariance (backend.h): every output element is acc = 0; for k = 0..K-1: acc = acc + a[k]·w[k]
 * (one IEEE multiply, one IEEE add — no FMA, -ffp-contract=off), then + bias, act, + y. That order depends
 * on K only, so a row's result is the same alone or in any batch, on any thread count and with any of the
 * instruction-set variants below (they vectorise across 16 output columns, never across k).
 * The OpenBLAS path keeps the same promise differently: every sgemm call has the same fixed shape
 * (GEMM_MC × GEMM_NB × K, A zero-padded), so OpenBLAS always takes the same kernel, whatever M is
 * (it would otherwise route M = 1 through gemv, whose reduction order differs), and it runs
 * single-threaded inside our tasks. Its bits differ from the C path's (it uses FMA and K blocking).
 *
 * conv1d is an implicit im2col: with the weight's K axis permuted from (ci, j) to (j, ci) while it is
 * widened, output row (b, t) is the contiguous window x[b, t·stride − pad .. + kernel − 1, :], read in
 * place; only windows that touch the zero padding are copied into scratch.
 *
 * Napkin math (encoder, one 30 s audio): M = 1500, K = 1280, N = 1280 (q/k/v/o) or 5120 (fc1/fc2 as N or
 * K): 32 layers × 2·1500·1280·(4·1280 + 2·5120) ≈ 1.9 TFLOP (≈ 20 s at the 100 GFLOP/s below). A decode
 * step reads the decoder's ≈ 15 GB of bf16 weights once; at M = 1 the cost is widening them (≈ 4 GB/s on
 * the 2 threads below), so the CPU backend decodes the 7B at seconds per token: it is the reference.
 *
 * Which path is the default (cpu_backend.c: the C kernel). tests/kernels/bench_cpu_gemm.c, bf16 weights,
 * 2 threads on the shared 2-core AVX-512 (Zen 4) dev VM, load ≈ 4, best of 5, GFLOP/s, 2026-11-27:
 *                      C/generic  C/avx2  OpenBLAS 0.3.21 (fixed 128 × 64 tiles)
 *   M=1    K=1280 N=1280     8.3     8.6     0.9
 *   M=1    K=1280 N=5120     7.5     6.2     0.5
 *   M=1    K=4096 N=4096     3.8     2.7     0.4   (decode: widening the weight tile dominates)
 *   M=1500 K=1280 N=1280    41     109      78
 *   M=1500 K=1280 N=5120    23      97      78
 *   M=1500 K=5120 N=1280    41      65      82   (no K blocking in the C kernel: 320 KB panels)
 * The fixed sgemm shape costs OpenBLAS 128× the work at M = 1, and it is not faster at M = 1500 except
 * for the K = 5120 product, so the C kernel is the default; the OpenBLAS path stays, tested, for
 * comparison (cpu_backend_set_gemm_path). An AVX-512 (ymm, 8- and 12-row) build was no faster than AVX2.
 * Blocking K (keeping the accumulators in a per-task buffer between K blocks, which keeps the order) is
 * the known next step for the K = 5120 case.
 *
 * Thread safety: driving thread only; the tasks run on the pool.
 */
#include "cpu_gemm.h"

#include <math.h>
#include <stdlib.h>

#ifdef ES_HAVE_OPENBLAS
#include <cblas.h>
#endif

typedef float v4 __attribute__((vector_size(16)));
typedef float v8 __attribute__((vector_size(32)));

#define GEMM_NR 16 /* columns of a packed panel */
#define AI static inline __attribute__((always_inline))

/* ---- the register-blocked kernel ------------------------------------------------------------------------
 * out[r][0..15] = Σ_k a[r][k] · p[k][0..15] for r < MR, p one packed panel ([K][16] fp32, 64-byte aligned).
 * Written once per vector width (VT of VW lanes, 16 / VW vectors per row: v4 for the SSE2/NEON baseline,
 * where a wider generic vector would be lowered through memory, v8 for AVX); the wrappers below compile
 * it per instruction set with the row block MR that fits its registers. Each lane does acc = acc + a·w
 * over k in order: the same IEEE operations whatever VT and MR are. */
#define DEFINE_MK(name, VT, VW)                                                                                        \
  AI void name(const int MR, int64_t K, const float *const *a, const float *p, float *out) {                           \
    enum { NV = GEMM_NR / (VW) };                                                                                      \
    VT acc[GEMM_MR_MAX][NV];                                                                                           \
    for (int r = 0; r < MR; r++)                                                                                       \
      for (int v = 0; v < NV; v++) acc[r][v] = (VT){0};                                                                \
    for (int64_t k = 0; k < K; k++) {                                                                                  \
      VT w[NV];                                                                                                        \
      for (int v = 0; v < NV; v++) w[v] = *(const VT *)(p + k * GEMM_NR + v * (VW));                                   \
      for (int r = 0; r < MR; r++) {                                                                                   \
        float s = a[r][k];                                                                                             \
        for (int v = 0; v < NV; v++) acc[r][v] += w[v] * s;                                                            \
      }                                                                                                                \
    }                                                                                                                  \
    for (int r = 0; r < MR; r++)                                                                                       \
      for (int v = 0; v < NV; v++) *(VT *)(out + r * GEMM_NR + v * (VW)) = acc[r][v];                                  \
  }
DEFINE_MK(mk_rows_v4, v4, 4)
DEFINE_MK(mk_rows_v8, v8, 8)

/* rows <= GEMM_MR_MAX rows of A against one panel, in blocks of MRB (<= 6) rows, then the
 * remainder (cases past MRB - 1 are unreachable). */
#define TILE_BODY(MK, MRB)                                                                                             \
  int64_t r = 0;                                                                                                       \
  for (; r + (MRB) <= rows; r += (MRB)) MK((MRB), K, a + r, p, out + r * GEMM_NR);                                     \
  const float *const *ar = a + r;                                                                                      \
  float *o = out + r * GEMM_NR;                                                                                        \
  switch (rows - r) {                                                                                                  \
  case 5: MK(5, K, ar, p, o); break;                                                                                   \
  case 4: MK(4, K, ar, p, o); break;                                                                                   \
  case 3: MK(3, K, ar, p, o); break;                                                                                   \
  case 2: MK(2, K, ar, p, o); break;                                                                                   \
  case 1: MK(1, K, ar, p, o); break;                                                                                   \
  default: break;                                                                                                      \
  }

typedef void (*tile_fn)(int64_t K, int64_t rows, const float *const *a, const float *p, float *out);

static void tile_generic(int64_t K, int64_t rows, const float *const *a, const float *p, float *out) {
  TILE_BODY(mk_rows_v4, 2)
}

#if defined(__x86_64__) || defined(__i386__)
#define HAVE_X86_VARIANTS 1
__attribute__((target("avx2"))) static void tile_avx2(int64_t K, int64_t rows, const float *const *a, const float *p,
                                                      float *out) {
  TILE_BODY(mk_rows_v8, 6)
}
#endif

static tile_fn tile_for(cpu_isa_t isa) {
#ifdef HAVE_X86_VARIANTS
  if (isa == CPU_ISA_AVX2) return tile_avx2;
#endif
  (void)isa;
  return tile_generic;
}

cpu_isa_t cpu_gemm_best_isa(void) {
#ifdef HAVE_X86_VARIANTS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) return CPU_ISA_AVX2;
#endif
  return CPU_ISA_GENERIC;
}

int cpu_gemm_have_blas(void) {
#ifdef ES_HAVE_OPENBLAS
  return 1;
#else
  return 0;
#endif
}

void cpu_gemm_blas_init(void) {
#ifdef ES_HAVE_OPENBLAS
  openblas_set_num_threads(1);
#endif
}

int cpu_gemm_reserve(cpu_backend_t *cb, int64_t K, es_error_t *err) {
  if (K > cb->max_k) cb->max_k = K;
  size_t k = (size_t)cb->max_k;
  int rc = cpu_scratch_reserve(cb, CPU_SCR_WPACK, (size_t)GEMM_NB * k + k, err);
  if (!rc) rc = cpu_scratch_reserve(cb, CPU_SCR_AROW, (size_t)GEMM_MR_MAX * k, err);
  if (!rc && cb->gemm_path == CPU_GEMM_BLAS) {
    rc = cpu_scratch_reserve(cb, CPU_SCR_BLAS_A, (size_t)GEMM_MC * k, err);
    if (!rc) rc = cpu_scratch_reserve(cb, CPU_SCR_BLAS_C, (size_t)GEMM_MC * GEMM_NB, err);
  }
  return rc;
}

/* ---- one GEMM job ----------------------------------------------------------------------------------- */

typedef struct {
  cpu_backend_t *cb;
  float *y;
  int64_t ldy;
  const float *x; /* linear: row m at x + m·ldx; conv: [B, T_in, C_in] */
  int64_t ldx;
  int conv; /* conv geometry below is used only when set */
  int64_t T_in, T_out, C_in;
  int kernel, stride, pad;
  const es_weight_t *w, *bias;
  es_act_t act;
  int accumulate;
  int64_t M, N, K, n_tiles;
  tile_fn tile;
} gemm_job_t;

static float gelu(float v) {
  return v * 0.5f * (1.0f + erff(v * 0.70710678118654752440f));
}

/* acc[r][c] (row stride ldacc) -> y rows m0.., columns n0.. */
static void epilogue(const gemm_job_t *g, int64_t m0, int64_t rows, int64_t n0, int64_t cols, const float *acc,
                     int64_t ldacc) {
  for (int64_t r = 0; r < rows; r++) {
    float *yr = g->y + (m0 + r) * g->ldy + n0;
    const float *ar = acc + r * ldacc;
    for (int64_t c = 0; c < cols; c++) {
      float v = ar[c];
      if (g->bias) v += cpu_weight_at(g->bias, n0 + c);
      if (g->act == ES_ACT_GELU) v = gelu(v);
      yr[c] = g->accumulate ? yr[c] + v : v;
    }
  }
}

/* ---- fp8 weights ----
 * Columns [k0, k0 + n) of weight row r widened to fp32: the stored dtype as is, or for fp8 the code's value
 * times the row's scale — one IEEE multiply of two fp32 values, so each widened weight is exactly
 * fp32(decode(q) · scale[r]) whatever the tile, the thread or M (batch invariance is untouched). */
static void widen_w(const gemm_job_t *g, int64_t r, int64_t k0, int64_t n, float *dst) {
  const es_weight_t *w = g->w;
  size_t off = (size_t)r * (size_t)g->K + (size_t)k0;
  if (w->dtype != ES_DT_FP8E4M3) {
    cpu_widen(dst, (const char *)w->data + off * es_dtype_size(w->dtype), w->dtype, n);
    return;
  }
  const uint8_t *q = (const uint8_t *)w->data + off;
  const float *lut = g->cb->fp8_lut;
  float s = w->scale[r];
  for (int64_t k = 0; k < n; k++) dst[k] = lut[q[k]] * s;
}

/* Weight row n widened to fp32 with the K axis in the order A's rows use (conv: (j, ci) from (ci, j)).
 * tmp: K floats of scratch for the conv permutation. */
static void widen_weight_row(const gemm_job_t *g, int64_t n, float *dst, int64_t dst_stride, float *tmp) {
  if (!g->conv || g->kernel == 1) {
    if (dst_stride == 1) {
      widen_w(g, n, 0, g->K, dst);
      return;
    }
    widen_w(g, n, 0, g->K, tmp);
    for (int64_t k = 0; k < g->K; k++) dst[k * dst_stride] = tmp[k];
    return;
  }
  widen_w(g, n, 0, g->K, tmp);
  for (int j = 0; j < g->kernel; j++)
    for (int64_t ci = 0; ci < g->C_in; ci++) dst[(j * g->C_in + ci) * dst_stride] = tmp[ci * g->kernel + j];
}

/* Row m of A: a pointer into x, or (conv windows over the padding) a zero-padded copy in buf. */
static const float *a_row(const gemm_job_t *g, int64_t m, float *buf) {
  if (!g->conv) return g->x + m * g->ldx;
  int64_t b = m / g->T_out, t = m % g->T_out, start = t * g->stride - g->pad;
  const float *xb = g->x + b * g->T_in * g->C_in;
  if (start >= 0 && start + g->kernel <= g->T_in) return xb + start * g->C_in;
  for (int j = 0; j < g->kernel; j++) {
    int64_t ti = start + j;
    if (ti >= 0 && ti < g->T_in)
      memcpy(buf + j * g->C_in, xb + ti * g->C_in, (size_t)g->C_in * sizeof(float));
    else
      memset(buf + j * g->C_in, 0, (size_t)g->C_in * sizeof(float));
  }
  return buf;
}

/* The tile of weight rows n0 .. n0 + ncols − 1 as n_panels panels [K][16] fp32 (columns past N zero).
 * Linear weights are widened 64 k at a time so that the 16 strided writes of a k range stay in L1;
 * conv weights (K axis permuted) go a row at a time through tmp. */
static void pack_tile(const gemm_job_t *g, int64_t n0, int64_t ncols, int64_t n_panels, float *pack, float *tmp) {
  int64_t K = g->K;
  for (int64_t p = 0; p < n_panels; p++) {
    float *panel = pack + p * K * GEMM_NR;
    if (g->conv && g->kernel > 1) {
      for (int64_t c = 0; c < GEMM_NR; c++) {
        int64_t n = p * GEMM_NR + c;
        if (n < ncols)
          widen_weight_row(g, n0 + n, panel + c, GEMM_NR, tmp);
        else
          for (int64_t k = 0; k < K; k++) panel[k * GEMM_NR + c] = 0.0f;
      }
      continue;
    }
    for (int64_t k0 = 0; k0 < K; k0 += 64) {
      int64_t kn = K - k0 < 64 ? K - k0 : 64;
      for (int64_t c = 0; c < GEMM_NR; c++) {
        int64_t n = p * GEMM_NR + c;
        float *dst = panel + k0 * GEMM_NR + c;
        if (n >= ncols) {
          for (int64_t k = 0; k < kn; k++) dst[k * GEMM_NR] = 0.0f;
          continue;
        }
        float row[64];
        widen_w(g, n0 + n, k0, kn, row);
        for (int64_t k = 0; k < kn; k++) dst[k * GEMM_NR] = row[k];
      }
    }
  }
}

static void gemm_task_c(void *ctx, int64_t task, int tid) {
  const gemm_job_t *g = ctx;
  cpu_scratch_t *s = &g->cb->scratch[tid];
  int64_t K = g->K, n0 = (task % g->n_tiles) * GEMM_NB, m0 = (task / g->n_tiles) * GEMM_MC;
  int64_t ncols = g->N - n0 < GEMM_NB ? g->N - n0 : GEMM_NB, m1 = m0 + GEMM_MC < g->M ? m0 + GEMM_MC : g->M;
  int64_t n_panels = (ncols + GEMM_NR - 1) / GEMM_NR;
  float *pack = s->buf[CPU_SCR_WPACK], *tmp = pack + GEMM_NB * K;
  pack_tile(g, n0, ncols, n_panels, pack, tmp);
  float out[GEMM_MR_MAX * GEMM_NR] __attribute__((aligned(32)));
  const float *a[GEMM_MR_MAX];
  for (int64_t r0 = m0; r0 < m1; r0 += GEMM_MR_MAX) {
    int64_t rows = m1 - r0 < GEMM_MR_MAX ? m1 - r0 : GEMM_MR_MAX;
    for (int64_t r = 0; r < rows; r++) a[r] = a_row(g, r0 + r, s->buf[CPU_SCR_AROW] + r * K);
    for (int64_t p = 0; p < n_panels; p++) {
      g->tile(K, rows, a, pack + p * K * GEMM_NR, out);
      int64_t c0 = p * GEMM_NR, cols = ncols - c0 < GEMM_NR ? ncols - c0 : GEMM_NR;
      epilogue(g, r0, rows, n0 + c0, cols, out, GEMM_NR);
    }
  }
}

#ifdef ES_HAVE_OPENBLAS
static void gemm_task_blas(void *ctx, int64_t task, int tid) {
  const gemm_job_t *g = ctx;
  cpu_scratch_t *s = &g->cb->scratch[tid];
  int64_t K = g->K, n0 = (task % g->n_tiles) * GEMM_NB, m0 = (task / g->n_tiles) * GEMM_MC;
  int64_t ncols = g->N - n0 < GEMM_NB ? g->N - n0 : GEMM_NB, rows = g->M - m0 < GEMM_MC ? g->M - m0 : GEMM_MC;
  float *wt = s->buf[CPU_SCR_WPACK], *tmp = wt + GEMM_NB * K, *A = s->buf[CPU_SCR_BLAS_A], *C = s->buf[CPU_SCR_BLAS_C];
  for (int64_t c = 0; c < GEMM_NB; c++) {
    if (c < ncols)
      widen_weight_row(g, n0 + c, wt + c * K, 1, tmp);
    else
      memset(wt + c * K, 0, (size_t)K * sizeof(float));
  }
  /* Always the same A tile shape: rows copied (or built, for conv) and zero-padded to GEMM_MC. */
  for (int64_t r = 0; r < GEMM_MC; r++) {
    float *dst = A + r * K;
    if (r < rows) {
      const float *src = a_row(g, m0 + r, dst);
      if (src != dst) memcpy(dst, src, (size_t)K * sizeof(float));
    } else {
      memset(dst, 0, (size_t)K * sizeof(float));
    }
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, GEMM_MC, GEMM_NB, (blasint)K, 1.0f, A, (blasint)K, wt,
              (blasint)K, 0.0f, C, GEMM_NB);
  epilogue(g, m0, rows, n0, ncols, C, GEMM_NB);
}
#endif

static void gemm_run(gemm_job_t *g) {
  g->n_tiles = (g->N + GEMM_NB - 1) / GEMM_NB;
  g->tile = tile_for(g->cb->isa);
  int64_t n_tasks = g->n_tiles * ((g->M + GEMM_MC - 1) / GEMM_MC);
  cpu_pool_fn fn = gemm_task_c;
#ifdef ES_HAVE_OPENBLAS
  if (g->cb->gemm_path == CPU_GEMM_BLAS) fn = gemm_task_blas;
#endif
  cpu_pool_run(g->cb->pool, n_tasks, fn, g);
}

/* Byte ranges [p, p + n) overlap? */
static int overlaps(const void *p, size_t n, const void *q, size_t m) {
  uintptr_t a = (uintptr_t)p, b = (uintptr_t)q;
  return a < b + m && b < a + n;
}

static int check_scratch(cpu_backend_t *cb, int64_t K, const char *op, es_error_t *err) {
  if (K <= cb->max_k) return ES_OK;
  return es_fail(err, ES_EINVAL, "%s: weight with K = %lld was not uploaded to this backend", op, (long long)K);
}

int cpu_op_linear(es_backend_t *be, void *y, int64_t ldy, const void *x, int64_t ldx, const es_weight_t *w,
                  const es_weight_t *bias, int64_t M, es_act_t act, int accumulate, es_error_t *err) {
  cpu_backend_t *cb = cpu_be(be);
  int64_t N = w->n0, K = w->n1;
  int rc = check_scratch(cb, K, "linear", err);
  if (rc) return rc;
  size_t xbytes = (size_t)((M - 1) * ldx + K) * sizeof(float), ybytes = (size_t)((M - 1) * ldy + N) * sizeof(float);
  if (overlaps(x, xbytes, y, ybytes))
    return es_fail(err, ES_EINVAL, "linear: y overlaps x (in-place is not supported)");
  gemm_job_t g = {.cb = cb,
                  .y = y,
                  .ldy = ldy,
                  .x = x,
                  .ldx = ldx,
                  .w = w,
                  .bias = bias,
                  .act = act,
                  .accumulate = accumulate,
                  .M = M,
                  .N = N,
                  .K = K};
  gemm_run(&g);
  return ES_OK;
}

int cpu_op_conv1d(es_backend_t *be, void *y, const void *x, const es_weight_t *w, const es_weight_t *bias, int64_t B,
                  int64_t T_in, int64_t C_in, int kernel, int stride, int pad, es_act_t act, es_error_t *err) {
  cpu_backend_t *cb = cpu_be(be);
  int64_t T_out = (T_in + 2 * pad - kernel) / stride + 1, N = w->n0, K = w->n1;
  int rc = check_scratch(cb, K, "conv1d", err);
  if (rc) return rc;
  if (overlaps(x, (size_t)(B * T_in * C_in) * sizeof(float), y, (size_t)(B * T_out * N) * sizeof(float)))
    return es_fail(err, ES_EINVAL, "conv1d: y overlaps x");
  gemm_job_t g = {.cb = cb,
                  .y = y,
                  .ldy = N,
                  .x = x,
                  .conv = 1,
                  .T_in = T_in,
                  .T_out = T_out,
                  .C_in = C_in,
                  .kernel = kernel,
                  .stride = stride,
                  .pad = pad,
                  .w = w,
                  .bias = bias,
                  .act = act,
                  .M = B * T_out,
                  .N = N,
                  .K = K};
  gemm_run(&g);
  return ES_OK;
}

int cpu_op_logits(es_backend_t *be, float *logits, const void *x, const es_weight_t *w, int64_t M, es_error_t *err) {
  cpu_backend_t *cb = cpu_be(be);
  int64_t V = w->n0, C = w->n1;
  int rc = check_scratch(cb, C, "logits", err);
  if (rc) return rc;
  if (overlaps(x, (size_t)(M * C) * sizeof(float), logits, (size_t)(M * V) * sizeof(float)))
    return es_fail(err, ES_EINVAL, "logits: output overlaps x");
  gemm_job_t g = {.cb = cb, .y = logits, .ldy = V, .x = x, .ldx = C, .w = w, .M = M, .N = V, .K = C};
  gemm_run(&g);
  return ES_OK;
}
