/* test_cuda_attention: the fast attention kernels of the CUDA backend (kernels/cuda/attn_*.cu) against the CPU
 * reference backend and against part 1's simple kernel on the same GPU (EARSHOT_ATTENTION=simple|fast through
 * cuda_backend_set_attention_path), on fresh inputs, bf16.
 *
 * Paged (decoder): a mixed step — decodes and small chunks (split-KV decode kernel) beside full prefills and
 * chunks over a cached prefix (flash prefill kernel) — with contexts 1 .. 8192, lengths off and on the 16-key
 * block and 64-key tile boundaries, single-token sequences, block tables in shuffled order; and a decode-only
 * step of 16 contexts under the split heuristic and forced split counts 1, 3, 7, 128, each with the splits merged
 * in the split kernel (CUDA_FUSE_COMBINE, the default) and by the separate combine kernel, bit for bit. Dense
 * (encoder): key padding (valid_len < T, down to 1), lengths not multiples of the 128-row tile, T = 1, the full 30 s
 * shape (T = 1500, 20 heads) against the simple kernel, an unaligned stride that must fall back to the simple kernel.
 *
 * Three input patterns, each chosen to expose a different mistake:
 *   random    q in [-2, 2], k, v in [-1, 1]: the arithmetic (also compared with the simple kernel);
 *   histogram k = 0 (every visible key weighs the same), v one-hot at column (position mod D): the output is the
 *             share of visible keys per residue class, so one key missed or counted twice (a split or tile
 *             boundary, a mask off by one) moves a column by >= 1.5% at 8k keys, far over bf16's 0.4%;
 *   needle    q constant, the sum of k's entries proportional to the position, so each key outweighs the one
 *             before it by e^8: every row's output is (almost exactly) the value of its last visible key — a
 *             future key leaking through the causal mask or the last key being dropped changes it completely.
 * Cache positions and key rows a kernel must not read hold NaN (unused cache slots, other layers, padded keys,
 * row padding of strided buffers), and every output buffer is poisoned (NaN) before a run, so reading or
 * skipping the wrong place fails loudly. Each run also checks which kernel ran (cuda_backend_attention_calls).
 * Everything that reaches a flash kernel (dense, and the mixed paged steps) runs twice where the device has both:
 * with the mma.sync kernel (attn_flash.cu) and with the Hopper wgmma kernel (attn_wgmma.cu, cuda_backend_set_flash).
 * Skips (exit 77) without the CUDA backend or without a GPU.
 */
#include <time.h>

#include "es_clock.h"
#include "kernel_test.h"

#include "cpu/cpu_backend.h"
#include "es_gpu.h"
#include "gpu_skip.h"
#ifdef ES_HAVE_CUDA_BACKEND
#include "cuda/attn_math.h"
#include "cuda/cuda_hooks.h"
#endif

#ifdef ES_HAVE_CUDA_BACKEND

enum { PAT_RANDOM, PAT_HIST, PAT_NEEDLE };
static const char *const PAT_NAME[] = {"random", "histogram", "needle"};

/* fast vs the fp32 CPU reference: bf16 probabilities (unnormalised) and the bf16 output are the only roundings */
#define TOL_FAST_ATOL 5e-3
#define TOL_FAST_RTOL 1e-2
/* histogram: exact counts, the output rounded once to bf16 — up to half its 2^-7 spacing, which is 2^-8 of the
 * value just above a power of two (seen on an H200: 1/15 -> 0.0668945, 3.4e-3 relative) */
#define TOL_HIST_ATOL 1e-6
#define TOL_HIST_RTOL 4e-3
/* fast vs simple: the simple kernel keeps transformers' bf16 rounding points (test_cuda_ops' attention tolerance) */
#define TOL_SIMPLE_ATOL 3e-2
#define TOL_SIMPLE_RTOL 2e-2

#define L_LAYERS 2
#define LAYER 1 /* layer 0 stays NaN: a wrong layer offset reads it */
#define NB 1700 /* pool blocks (ids 1 .. NB - 1) */
#define MAX_BLOCKS 520
#define MAX_TOKENS 640
#define MAX_SEQS 24

static float bf(float x) {
  float r;
  kt_to_bf16(x, &r);
  return r;
}

/* ---- a step's batch, built here (contexts beyond kernel_test.h's KT_MAX_BLOCKS) ------------------------------- */

typedef struct {
  es_batch_t b;
  int32_t q_start[MAX_SEQS + 1], ctx[MAX_SEQS], pos[MAX_TOKENS], slot[MAX_TOKENS];
  int32_t table[MAX_SEQS * MAX_BLOCKS];
} batch_t;

/* Sequences s < n with q_len[s] new tokens and context ctx[s]; blocks taken in turn from a fresh shuffle. */
static void batch_make(batch_t *bt, int n, const int32_t *q_len, const int32_t *ctx) {
  static int32_t order[NB];
  kt_shuffled_blocks(order, NB);
  memset(bt, 0, sizeof *bt);
  int next = 0;
  for (int s = 0; s < n; s++)
    for (int j = 0; j < (ctx[s] + ES_KV_BLOCK - 1) / ES_KV_BLOCK; j++) bt->table[s * MAX_BLOCKS + j] = order[next++];
  int32_t row = kt_batch_rows(&bt->b, bt->q_start, bt->ctx, bt->pos, bt->slot, bt->table, MAX_BLOCKS, n, q_len, ctx);
  T_CHECK(next < NB && row <= MAX_TOKENS, "test batch too large: %d blocks, %d rows", next, row);
}

/* K (kv = 0) or V (kv = 1) entry d of key position p under a pattern. */
static float kv_value(int pattern, int kv, int64_t p, int d, int D) {
  if (pattern == PAT_HIST) return kv == 0 ? 0.0f : (d == (int)(p % D) ? 1.0f : 0.0f);
  if (pattern == PAT_NEEDLE && kv == 0) /* Σ_d k[d] = (D/2)·p exactly: 256·(p / 256) in half the columns */
    return d < D / 2 ? (float)(256 * (p / 256)) : (float)(p % 256);
  return bf(kt_uniform(-1, 1));
}

/* q entries: constant 16/sqrt(D) for the needle (score step (D/2)·q·scale = 8 per key), else random. */
static float q_value(int pattern, int D) {
  return pattern == PAT_NEEDLE ? bf(16.0f / sqrtf((float)D)) : bf(kt_uniform(-2, 2));
}

/* ---- backends ----------------------------------------------------------------------------------------------- */

typedef struct {
  es_backend_t *cpu, *gpu;
  int H, D;
  float *pool; /* the CPU backend's pool (fp32), filled here, then copied to the GPU's */
  size_t pool_n;
  void *q[2], *out[2]; /* [0] CPU, [1] GPU: q (MAX_TOKENS, ldq), out (MAX_TOKENS, H, D) */
  int64_t ldq;
} pair_t;

static cuda_flash_t g_flash = CUDA_FLASH_MMA; /* the flash kernel the pairs opened now use */
static const char *const FLASH_NAME[] = {"mma", "wgmma"};

static int pair_open(pair_t *p, int H, int D) {
  memset(p, 0, sizeof *p);
  p->H = H;
  p->D = D;
  es_error_t err;
  es_backend_opts_t o = {.compute_dtype = ES_DT_F32,
                         .n_threads = 0,
                         .max_tokens = MAX_TOKENS,
                         .max_seqs = MAX_SEQS,
                         .max_blocks = MAX_BLOCKS};
  int rc = es_backend_create_cpu(&o, &p->cpu, &err);
  T_CHECK(rc == 0, "cpu backend: %s", err.msg);
  if (rc) return rc;
  o.compute_dtype = ES_DT_BF16;
  rc = es_backend_create_cuda(&o, &p->gpu, &err);
  T_CHECK(rc == 0, "cuda backend: %s", err.msg);
  if (rc) return rc;
  rc = cuda_backend_set_flash(p->gpu, g_flash, &err);
  T_CHECK(rc == 0, "flash kernel %s: %s", FLASH_NAME[g_flash], err.msg);
  if (rc) return rc;
  for (int i = 0; i < 2 && !rc; i++) {
    es_backend_t *be = i ? p->gpu : p->cpu;
    rc = es_backend_kv_init(be, L_LAYERS, NB, H, D, &err);
    T_CHECK(rc == 0, "kv_init: %s", err.msg);
  }
  if (rc) return rc;
  p->pool = ((cpu_backend_t *)p->cpu)->kv;
  p->pool_n = (size_t)L_LAYERS * NB * 2 * (size_t)H * ES_KV_BLOCK * (size_t)D;
  p->ldq = (int64_t)H * D + 8; /* padded rows (NaN), 16-byte aligned */
  for (int i = 0; i < 2; i++) {
    es_backend_t *be = i ? p->gpu : p->cpu;
    p->q[i] = kt_act(be, NULL, MAX_TOKENS * p->ldq);
    p->out[i] = kt_act(be, NULL, MAX_TOKENS * (int64_t)H * D);
  }
  printf("%s; H=%d D=%d; flash kernel %s\n", es_backend_name(p->gpu), H, D, FLASH_NAME[g_flash]);
  return 0;
}

static int64_t g_wgmma_launches; /* launches of the wgmma flash kernels by the pairs closed so far */

static void pair_close(pair_t *p) {
  if (p->gpu) g_wgmma_launches += cuda_backend_wgmma_launches(p->gpu);
  es_backend_free(p->cpu);
  es_backend_free(p->gpu);
}

static void compare(const char *what, const float *got, const float *ref, int64_t n, double atol, double rtol) {
  double *r = malloc(sizeof(double) * (size_t)n);
  for (int64_t i = 0; i < n; i++) r[i] = ref[i];
  kt_close(what, got, r, NULL, n, atol, rtol);
  free(r);
}

/* One attention_paged run on the GPU along `path` (splits forced when > 0): output poisoned first, the kernel that
 * ran checked; returns the output on the host. */
static float *gpu_paged(pair_t *p, const batch_t *bt, cuda_attn_path_t path, int splits, const char *what) {
  es_error_t err;
  int64_t n = (int64_t)bt->b.n_tokens * p->H * p->D, f0, s0, f1, s1;
  float *poison = malloc(sizeof(float) * (size_t)n);
  kt_poison(poison, n);
  es_backend_write_act(p->gpu, p->out[1], poison, (size_t)n, &err);
  free(poison);
  cuda_backend_set_attention_path(p->gpu, path, &err);
  cuda_backend_set_attention_splits(p->gpu, splits, &err);
  cuda_backend_attention_calls(p->gpu, &f0, &s0);
  T_CHECK(es_op_attention_paged(p->gpu, LAYER, p->out[1], p->q[1], p->ldq, p->H, p->D, 1.0f / sqrtf((float)p->D),
                                &err) == 0,
          "%s: %s", what, err.msg);
  cuda_backend_attention_calls(p->gpu, &f1, &s1);
  T_CHECK(path == CUDA_ATTN_FAST ? f1 == f0 + 1 && s1 == s0 : s1 == s0 + 1 && f1 == f0,
          "%s: the %s kernel did not run (fast %lld -> %lld, simple %lld -> %lld)", what,
          path == CUDA_ATTN_FAST ? "fast" : "simple", (long long)f0, (long long)f1, (long long)s0, (long long)s1);
  cuda_backend_set_attention_path(p->gpu, CUDA_ATTN_FAST, &err);
  cuda_backend_set_attention_splits(p->gpu, 0, &err);
  return kt_read(p->gpu, p->out[1], n);
}

/* A paged step under one pattern: the CPU reference once, then the fast kernels under each forced split count
 * (0 = heuristic), and the simple kernel for the random pattern. */
static void paged_case(pair_t *p, const char *label, int n_seqs, const int32_t *q_len, const int32_t *ctx, int pattern,
                       const int *splits, int n_splits) {
  es_error_t err;
  batch_t *bt = malloc(sizeof *bt);
  batch_make(bt, n_seqs, q_len, ctx);
  int H = p->H, D = p->D;
  int64_t rows = bt->b.n_tokens, n = rows * H * D;

  /* the cache: NaN everywhere, the positions in use of layer LAYER per pattern; the GPU gets the same values */
  kt_poison(p->pool, (int64_t)p->pool_n);
  for (int s = 0; s < n_seqs; s++)
    for (int32_t pos = 0; pos < ctx[s]; pos++) {
      int32_t blk = bt->table[s * MAX_BLOCKS + pos / ES_KV_BLOCK];
      for (int kv = 0; kv < 2; kv++)
        for (int h = 0; h < H; h++) {
          float *row = kt_kv_at(p->pool, NB, H, D, LAYER, blk, kv, h, pos % ES_KV_BLOCK);
          for (int d = 0; d < D; d++) row[d] = kv_value(pattern, kv, pos, d, D);
        }
    }
  T_CHECK(es_backend_write_act(p->gpu, cuda_backend_kv_pool(p->gpu), p->pool, p->pool_n, &err) == 0, "pool: %s",
          err.msg);
  float *q = malloc(sizeof(float) * (size_t)(rows * p->ldq));
  kt_poison(q, rows * p->ldq);
  for (int64_t i = 0; i < rows; i++)
    for (int64_t c = 0; c < (int64_t)H * D; c++) q[i * p->ldq + c] = q_value(pattern, D);
  es_backend_write_act(p->cpu, p->q[0], q, (size_t)(rows * p->ldq), &err);
  es_backend_write_act(p->gpu, p->q[1], q, (size_t)(rows * p->ldq), &err);

  T_CHECK(es_backend_begin_step(p->cpu, &bt->b, &err) == 0, "begin_step: %s", err.msg);
  T_CHECK(es_backend_begin_step(p->gpu, &bt->b, &err) == 0, "begin_step: %s", err.msg);
  T_CHECK(es_op_attention_paged(p->cpu, LAYER, p->out[0], p->q[0], p->ldq, H, D, 1.0f / sqrtf((float)D), &err) == 0,
          "cpu: %s", err.msg);
  float *ref = kt_read(p->cpu, p->out[0], n);
  double atol = pattern == PAT_HIST ? TOL_HIST_ATOL : TOL_FAST_ATOL;
  double rtol = pattern == PAT_HIST ? TOL_HIST_RTOL : TOL_FAST_RTOL;
  char what[200];
  for (int k = 0; k < n_splits; k++) {
    snprintf(what, sizeof what, "paged %s (%s) H=%d D=%d splits=%d: fast vs cpu", label, PAT_NAME[pattern], H, D,
             splits[k]);
    const int fusions = cuda_backend_fusions(p->gpu); /* the default unless EARSHOT_FUSE says otherwise */
    int64_t glu, comb0, comb1, nrm_calls, rope_calls;
    cuda_backend_fused_calls(p->gpu, &glu, &comb0, &nrm_calls, &rope_calls);
    float *got = gpu_paged(p, bt, CUDA_ATTN_FAST, splits[k], what);
    cuda_backend_fused_calls(p->gpu, &glu, &comb1, &nrm_calls, &rope_calls);
    compare(what, got, ref, n, atol, rtol);
    /* rows split several ways (forced splits > 1 always split the longer contexts of these steps) are merged by
     * the split kernel's last block (CUDA_FUSE_COMBINE, on by default); with the fusion off by a second kernel:
     * the same merge, the same bits */
    const int fused = fusions & CUDA_FUSE_COMBINE;
    T_CHECK(fused && splits[k] > 1     ? comb1 > comb0
            : !fused || splits[k] == 1 ? comb1 == comb0
                                       : 1,
            "%s: %lld decode launches merged their splits themselves", what, (long long)(comb1 - comb0));
    T_CHECK(cuda_backend_set_fusions(p->gpu, fusions & ~CUDA_FUSE_COMBINE, &err) == 0, "fusions: %s", err.msg);
    float *sep = gpu_paged(p, bt, CUDA_ATTN_FAST, splits[k], what);
    T_CHECK(cuda_backend_set_fusions(p->gpu, fusions, &err) == 0, "fusions: %s", err.msg);
    T_CHECK(memcmp(got, sep, sizeof(float) * (size_t)n) == 0,
            "%s: the splits merged in the split kernel differ from the combine kernel's merge", what);
    free(sep);
    free(got);
  }
  if (pattern == PAT_RANDOM) {
    snprintf(what, sizeof what, "paged %s (%s) H=%d D=%d: simple vs cpu", label, PAT_NAME[pattern], H, D);
    float *simple = gpu_paged(p, bt, CUDA_ATTN_SIMPLE, 0, what);
    float *fast = gpu_paged(p, bt, CUDA_ATTN_FAST, 0, what);
    snprintf(what, sizeof what, "paged %s (%s) H=%d D=%d: fast vs simple", label, PAT_NAME[pattern], H, D);
    compare(what, fast, simple, n, TOL_SIMPLE_ATOL, TOL_SIMPLE_RTOL);
    free(simple);
    free(fast);
  }
  T_CHECK(es_backend_end_step(p->cpu, &err) == 0 && es_backend_end_step(p->gpu, &err) == 0, "end_step: %s", err.msg);
  free(ref);
  free(q);
  free(bt);
}

static void paged_tests(int H, int D, int decode_too) {
  pair_t p;
  if (pair_open(&p, H, D) == 0) {
    double t0 = es_now_s();
    /* mixed: q_len <= 4 goes to the split-KV decode kernel, longer chunks to the flash prefill kernel */
    static const int32_t mq[17] = {1, 1, 1, 1, 1, 1, 1, 2, 3, 4, 5, 17, 64, 65, 130, 200, 129};
    static const int32_t mc[17] = {1, 15, 16, 17, 100, 1000, 8191, 8192, 40, 4, 5, 17, 64, 1000, 8000, 200, 129};
    static const int mixed_splits[2] = {0, 3};
    for (int pat = 0; pat < 3; pat++) paged_case(&p, "mixed", 17, mq, mc, pat, mixed_splits, 2);
    /* decode only: many context lengths, every split regime */
    static const int32_t dq[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    static const int32_t dc[16] = {1, 2, 15, 16, 17, 63, 64, 65, 127, 128, 129, 1000, 2047, 2048, 4097, 8191};
    static const int dec_splits[5] = {0, 1, 3, 7, 128};
    for (int pat = 0; pat < 3 && decode_too; pat++) paged_case(&p, "decode", 16, dq, dc, pat, dec_splits, 5);
    printf("paged H=%d D=%d: %.1f s\n", H, D, es_now_s() - t0);
  }
  pair_close(&p);
}

/* ---- dense (encoder) -------------------------------------------------------------------------------------------- */

/* q, k, v from one fused buffer (B·T, ld), ld = 3·H·D + pad; keys past valid_len and the row padding are NaN.
 * Compares fast with the CPU (cpu_too) and, for the random pattern, with the simple kernel. expect_fast: whether
 * the fast kernel must take the call (an unaligned stride must not). */
static void dense_case(pair_t *p, int64_t B, int64_t T, int H, int D, const int32_t *valid, int pattern, int pad,
                       int cpu_too, int expect_fast) {
  es_error_t err;
  int64_t HD = (int64_t)H * D, ld = 3 * HD + pad, n = B * T * HD;
  float *x = malloc(sizeof(float) * (size_t)(B * T * ld));
  kt_poison(x, B * T * ld);
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0; t < T; t++) {
      float *row = x + (b * T + t) * ld;
      for (int64_t c = 0; c < HD; c++) {
        int d = (int)(c % D);
        row[c] = q_value(pattern, D);
        if (t < valid[b]) { /* keys past valid_len stay NaN: no kernel may read them */
          row[HD + c] = kv_value(pattern, 0, t, d, D);
          row[2 * HD + c] = kv_value(pattern, 1, t, d, D);
        }
      }
    }
  float scale = 1.0f / sqrtf((float)D);
  void *px[2] = {NULL, NULL}, *po[2] = {NULL, NULL};
  float *res[3] = {NULL, NULL, NULL}; /* cpu, fast (or the expected fallback), simple */
  size_t e = es_dtype_size(ES_DT_BF16);
  char what[200];
  snprintf(what, sizeof what, "dense (%s) B=%lld T=%lld H=%d D=%d valid[0]=%d ld=%lld", PAT_NAME[pattern], (long long)B,
           (long long)T, H, D, valid[0], (long long)ld);
  if (cpu_too) {
    px[0] = kt_act(p->cpu, x, B * T * ld);
    po[0] = kt_act(p->cpu, NULL, n);
    char *q = px[0];
    T_CHECK(es_op_attention_dense(p->cpu, po[0], q, ld, q + HD * sizeof(float), ld, q + 2 * HD * sizeof(float), ld, B,
                                  T, H, D, scale, valid, &err) == 0,
            "%s: cpu: %s", what, err.msg);
    res[0] = kt_read(p->cpu, po[0], n);
  }
  px[1] = kt_act(p->gpu, x, B * T * ld);
  po[1] = kt_act(p->gpu, NULL, n);
  for (int path = 0; path < 2; path++) {
    if (path == 1 && pattern != PAT_RANDOM) break;
    int64_t f0, s0, f1, s1;
    float *poison = malloc(sizeof(float) * (size_t)n);
    kt_poison(poison, n);
    es_backend_write_act(p->gpu, po[1], poison, (size_t)n, &err);
    free(poison);
    cuda_backend_set_attention_path(p->gpu, path ? CUDA_ATTN_SIMPLE : CUDA_ATTN_FAST, &err);
    cuda_backend_attention_calls(p->gpu, &f0, &s0);
    char *q = px[1];
    T_CHECK(es_op_attention_dense(p->gpu, po[1], q, ld, q + HD * e, ld, q + 2 * HD * e, ld, B, T, H, D, scale, valid,
                                  &err) == 0,
            "%s: gpu: %s", what, err.msg);
    cuda_backend_attention_calls(p->gpu, &f1, &s1);
    int fast_ran = f1 == f0 + 1 && s1 == s0, simple_ran = s1 == s0 + 1 && f1 == f0;
    T_CHECK(path == 0 && expect_fast ? fast_ran : simple_ran, "%s: path %d: wrong kernel (fast %lld -> %lld)", what,
            path, (long long)f0, (long long)f1);
    res[1 + path] = kt_read(p->gpu, po[1], n);
  }
  cuda_backend_set_attention_path(p->gpu, CUDA_ATTN_FAST, &err);
  char w2[260];
  if (cpu_too) {
    snprintf(w2, sizeof w2, "%s: %s vs cpu", what, expect_fast ? "fast" : "fallback");
    int hist = pattern == PAT_HIST && expect_fast;
    compare(w2, res[1], res[0], n,
            hist          ? TOL_HIST_ATOL
            : expect_fast ? TOL_FAST_ATOL
                          : TOL_SIMPLE_ATOL,
            hist          ? TOL_HIST_RTOL
            : expect_fast ? TOL_FAST_RTOL
                          : TOL_SIMPLE_RTOL);
  }
  if (res[2]) {
    snprintf(w2, sizeof w2, "%s: fast vs simple", what);
    compare(w2, res[1], res[2], n, TOL_SIMPLE_ATOL, TOL_SIMPLE_RTOL);
  }
  for (int i = 0; i < 3; i++) free(res[i]);
  free(x);
}

static void dense_tests(void) {
  pair_t p; /* its KV pool is not used here */
  if (pair_open(&p, 1, 64) == 0) {
    double t0 = es_now_s();
    for (int pat = 0; pat < 3; pat++) {
      static const int32_t v3[3] = {200, 77, 1}, v2[2] = {1500, 1123}, v1[2] = {1, 1}, v64[1] = {64},
                           v130[2] = {130, 65};
      dense_case(&p, 3, 200, 3, 64, v3, pat, 8, 1, 1);
      dense_case(&p, 2, 1500, 2, 64, v2, pat, 8, 1, 1);
      dense_case(&p, 2, 1, 2, 64, v1, pat, 8, 1, 1);      /* single-token sequences */
      dense_case(&p, 1, 129, 1, 64, v64, pat, 0, 1, 1);   /* one row past a 128-row tile; half the keys padded */
      dense_case(&p, 2, 130, 2, 128, v130, pat, 8, 1, 1); /* head dim 128 */
    }
    static const int32_t full[1] = {1500}, odd[1] = {40};
    dense_case(&p, 1, 1500, 20, 64, full, PAT_RANDOM, 8, 0, 1); /* the 30 s encoder shape: against simple only */
    dense_case(&p, 1, 40, 2, 64, odd, PAT_RANDOM, 1, 1, 0);     /* odd stride: the simple kernel must run */
    printf("dense: %.1f s\n", es_now_s() - t0);
  }
  pair_close(&p);
}

/* ---- path selection ---------------------------------------------------------------------------------------------- */

static void path_tests(void) {
  es_error_t err;
  es_backend_opts_t o = {.compute_dtype = ES_DT_BF16, .max_tokens = 16, .max_seqs = 2, .max_blocks = 4};
  es_backend_t *be = NULL;
  setenv("EARSHOT_ATTENTION", "bogus", 1);
  int rc = es_backend_create_cuda(&o, &be, &err);
  T_CHECK(rc == ES_EINVAL && strstr(err.msg, "EARSHOT_ATTENTION"), "EARSHOT_ATTENTION=bogus: rc %d (%s)", rc,
          rc ? err.msg : "created");
  es_backend_free(be);
  be = NULL;

  /* simple from the environment; float32 never takes the fast path */
  static const es_dtype_t dts[2] = {ES_DT_BF16, ES_DT_F32};
  static const char *const env[2] = {"simple", "fast"};
  for (int i = 0; i < 2; i++) {
    setenv("EARSHOT_ATTENTION", env[i], 1);
    o.compute_dtype = dts[i];
    rc = es_backend_create_cuda(&o, &be, &err);
    T_CHECK(rc == 0, "create (%s, %s): %s", env[i], es_dtype_name(dts[i]), err.msg);
    if (!rc) {
      int64_t T = 8, HD = 64, f, s;
      int32_t valid[1] = {8};
      float x[8 * 64];
      kt_fill(x, T * HD, -1, 1);
      void *q = kt_act(be, x, T * HD), *out = kt_act(be, NULL, T * HD);
      T_CHECK(es_op_attention_dense(be, out, q, HD, q, HD, q, HD, 1, T, 1, 64, 0.125f, valid, &err) == 0, "%s",
              err.msg);
      cuda_backend_attention_calls(be, &f, &s);
      T_CHECK(f == 0 && s == 1, "EARSHOT_ATTENTION=%s, %s: fast %lld, simple %lld calls (want the simple kernel)",
              env[i], es_dtype_name(dts[i]), (long long)f, (long long)s);
    }
    es_backend_free(be);
    be = NULL;
  }
  unsetenv("EARSHOT_ATTENTION");

  /* EARSHOT_FLASH: unset = auto (wgmma where the device runs it, else mma); wgmma where the device runs it, a clear
   * refusal elsewhere */
  o.compute_dtype = ES_DT_BF16;
  setenv("EARSHOT_FLASH", "bogus", 1);
  rc = es_backend_create_cuda(&o, &be, &err);
  T_CHECK(rc == ES_EINVAL && strstr(err.msg, "EARSHOT_FLASH"), "EARSHOT_FLASH=bogus: rc %d (%s)", rc,
          rc ? err.msg : "created");
  es_backend_free(be);
  be = NULL;
  setenv("EARSHOT_FLASH", "wgmma", 1);
  rc = es_backend_create_cuda(&o, &be, &err);
  if (rc == 0) {
    T_CHECK(cuda_backend_flash_available(be, CUDA_FLASH_WGMMA), "EARSHOT_FLASH=wgmma created without the kernels");
    T_CHECK(cuda_backend_set_flash(be, CUDA_FLASH_MMA, &err) == 0, "back to mma: %s", err.msg);
  } else {
    T_CHECK(rc == ES_EUNSUPPORTED && strstr(err.msg, "sm_90a"), "EARSHOT_FLASH=wgmma: rc %d (%s)", rc, err.msg);
  }
  es_backend_free(be);
  be = NULL;
  unsetenv("EARSHOT_FLASH");
  rc = es_backend_create_cuda(&o, &be, &err);
  T_CHECK(rc == 0, "create: %s", err.msg);
  if (!rc && !cuda_backend_flash_available(be, CUDA_FLASH_WGMMA)) {
    rc = cuda_backend_set_flash(be, CUDA_FLASH_WGMMA, &err);
    T_CHECK(rc == ES_EUNSUPPORTED, "set_flash(wgmma) without the kernels: rc %d", rc);
  }
  es_backend_free(be);
}

/* 1 when this device runs the wgmma flash kernels. */
static int wgmma_available(void) {
  es_error_t err;
  es_backend_opts_t o = {.compute_dtype = ES_DT_BF16, .max_tokens = 16, .max_seqs = 2, .max_blocks = 4};
  es_backend_t *be = NULL;
  int ok = es_backend_create_cuda(&o, &be, &err) == 0 && cuda_backend_flash_available(be, CUDA_FLASH_WGMMA);
  es_backend_free(be);
  return ok;
}

int main(void) {
  int skip = t_need_gpu();
  if (skip) return skip;
  unsetenv("EARSHOT_ATTENTION"); /* the default (fast) unless a test sets it */
  unsetenv("EARSHOT_FLASH");
  path_tests();
  dense_tests();
  paged_tests(2, 128, 1);
  paged_tests(3, 64, 1);
  T_CHECK(g_wgmma_launches == 0, "the mma pass launched the wgmma kernels %lld times", (long long)g_wgmma_launches);
  if (wgmma_available()) { /* the flash cases again on Hopper's kernel */
    g_flash = CUDA_FLASH_WGMMA;
    dense_tests();
    paged_tests(2, 128, 0);
    paged_tests(3, 64, 0);
    T_CHECK(g_wgmma_launches >= 20, "the wgmma pass launched the wgmma kernels only %lld times",
            (long long)g_wgmma_launches);
  } else {
    printf("flash kernel wgmma: not available on this device; only mma tested\n");
  }
  return t_finish();
}

#else /* built without the CUDA backend */

int main(void) {
  return t_skip("built without the CUDA backend");
}

#endif
