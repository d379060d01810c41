/* test_cuda_fusions: the CUDA backend's decode-step fusions and its GEMVs' two-rows-per-warp mode against their plain
 * forms on the same GPU (bit for bit: the fused kernels promise the plain kernels' bits) and against the CPU
 * reference backend (the GEMMs' tolerance), in both compute dtypes, with bf16 weights and with fp8 weights:
 *   - es_op_linear_silu_mul: CUDA_FUSE_GLU on (at one row one GEMV streams each gate row with its up row and writes
 *     silu(g) · u) and off (the GEMV into gu, then the SiLU·mul kernel); under every loads-in-flight and pipelining
 *     setting; several rows and K the vector GEMV cannot take (never fused);
 *   - es_op_linear_rms_norm: CUDA_FUSE_NORM on (the GEMV's last block adds the row to the residual and normalises it)
 *     and off (the GEMV, then the RMSNorm kernel) — y, the residual and o — with one and two weight rows per warp;
 *     the 7B row (4096 wide: 512 vectors, 4 per thread of the last block), a grid with idle warps (never fused);
 *   - es_op_linear_rope_kv_store: CUDA_FUSE_ROPE on (each warp of the q|k|v GEMV rotates one RoPE pair and stores
 *     k and v to the cache) and off (the GEMV, then the RoPE + KV store kernel) — the q|k|v row and the whole KV
 *     pool, poisoned before every run — under every loads-in-flight and pipelining setting, at positions 0 and 77;
 *   - two weight rows per warp (cuda_backend_set_gemv_rows 2): linears with bias + GELU and with accumulate, N even
 *     and odd (the last warp without a second row), and (bf16 weights) the logits.
 * Each case checks, through cuda_backend_fused_calls, that the fused kernel ran exactly where it should. Every
 * setting a case changes is put back as it found it. GPU outputs are poisoned (NaN) before every run. The split-KV
 * combine in the split kernel (CUDA_FUSE_COMBINE) is checked in test_cuda_attention.
 * Skips (exit 77) without the CUDA backend or without a GPU.
 */
#include "kernel_test.h"

#include "es_gpu.h"
#include "gpu_skip.h"
#ifdef ES_HAVE_CUDA_BACKEND
#include "cuda/attn_math.h" // attn_kv_offset: where the cache row of the token sits
#include "cuda/cuda_hooks.h"
#endif

#ifdef ES_HAVE_CUDA_BACKEND

typedef struct {
  es_backend_t *cpu, *gpu;
  es_dtype_t dt; /* the GPU's compute dtype */
  int fp8;       /* weights uploaded as fp8 (es_backend_upload_weight_fp8) */
  char name[48];
} pair_t;

typedef struct {
  int fusions, rows, loads, pipe;
} settings_t;

static settings_t settings_get(es_backend_t *gpu) {
  return (settings_t){cuda_backend_fusions(gpu), cuda_backend_gemv_rows(gpu), cuda_backend_gemv_loads(gpu),
                      cuda_backend_gemv_pipe(gpu)};
}

static void settings_put(es_backend_t *gpu, settings_t s) {
  es_error_t err;
  T_CHECK(cuda_backend_set_fusions(gpu, s.fusions, &err) == 0 && cuda_backend_set_gemv_rows(gpu, s.rows, &err) == 0 &&
              cuda_backend_set_gemv_loads(gpu, s.loads, &err) == 0 &&
              cuda_backend_set_gemv_pipe(gpu, s.pipe, &err) == 0,
          "settings: %s", err.msg);
}

static double atol_of(const pair_t *p) {
  return p->dt == ES_DT_BF16 ? 2e-2 : 1e-4;
}
static double rtol_of(const pair_t *p) {
  return p->dt == ES_DT_BF16 ? 1.6e-2 : 1e-4;
}

/* n random values in [lo, hi) rounded to the compute dtype (both backends see the same ones). */
static float *rand_vals(const pair_t *p, int64_t n, float lo, float hi) {
  float *x = malloc(sizeof(float) * (size_t)n);
  kt_fill(x, n, lo, hi);
  if (p->dt == ES_DT_BF16)
    for (int64_t i = 0; i < n; i++) kt_to_bf16(x[i], &x[i]);
  return x;
}

/* A linear's weight on one backend: fp8 (quantised at upload) or the compute dtype's values. */
static es_weight_t upload_w(const pair_t *p, es_backend_t *be, const kt_weight_t *w) {
  if (!p->fp8) return kt_upload(be, w);
  es_weight_t out;
  memset(&out, 0, sizeof out);
  es_error_t err;
  T_CHECK(es_backend_upload_weight_fp8(be, w->host, w->dt, w->n0, w->n1, &out, &err) == 0, "upload fp8: %s", err.msg);
  return out;
}

static kt_weight_t rand_weight(const pair_t *p, int64_t n0, int64_t n1, float lo, float hi) {
  return kt_weight(p->dt == ES_DT_BF16 || p->fp8 ? ES_DT_BF16 : ES_DT_F32, n0, n1, lo, hi);
}

/* Whether the GPU runs a linear of one row at this K on a GEMV the fusions build on: bf16 weights need bf16 compute
 * and the GEMV on (EARSHOT_GEMV), K % 8 == 0; fp8 weights the vector CUDA-core GEMV, K % 16 == 0. (x rows come from
 * kt_act, 256-byte aligned, with strides that keep 16-byte alignment.) */
static int gemv_takes(const pair_t *p, int64_t K) {
  if (p->fp8) return K % 16 == 0;
  return p->dt == ES_DT_BF16 && cuda_backend_gemv_mode(p->gpu) != 0 && K % 8 == 0;
}

static int64_t fused_count(es_backend_t *gpu, int which) {
  int64_t c[4];
  cuda_backend_fused_calls(gpu, &c[0], &c[1], &c[2], &c[3]);
  return c[which];
}
enum { F_GLU, F_COMBINE, F_NORM, F_ROPE };

/* got[0 .. n) against the CPU's ref[0 .. n). */
static void vs_cpu(const pair_t *p, const char *what, const float *got, const float *ref, int64_t n) {
  double *r = malloc(sizeof(double) * (size_t)n);
  for (int64_t i = 0; i < n; i++) r[i] = ref[i];
  kt_close(what, got, r, NULL, n, atol_of(p), rtol_of(p));
  free(r);
}

/* ---- the gate|up linear with SiLU·mul ---------------------------------------------------------------------- */

static void test_glu(const pair_t *p, int64_t M, int64_t K, int64_t N) {
  es_error_t err;
  const settings_t saved = settings_get(p->gpu);
  const int64_t ldx = K + 16, ldgu = 2 * N + 1;
  kt_weight_t w = rand_weight(p, 2 * N, K, -0.4f, 0.4f);
  es_weight_t wc = upload_w(p, p->cpu, &w), wg = upload_w(p, p->gpu, &w);
  float *x = rand_vals(p, M * ldx, -1, 1);
  void *xc = kt_act(p->cpu, x, M * ldx), *xg = kt_act(p->gpu, x, M * ldx), *yc = kt_act(p->cpu, NULL, M * N),
       *guc = kt_act(p->cpu, NULL, M * ldgu), *gug = kt_act(p->gpu, NULL, M * ldgu);
  char what[200];
  snprintf(what, sizeof what, "[%s] linear_silu_mul M=%lld K=%lld N=%lld", p->name, (long long)M, (long long)K,
           (long long)N);
  T_CHECK(es_op_linear_silu_mul(p->cpu, yc, guc, ldgu, xc, ldx, &wc, M, &err) == 0, "%s: %s", what, err.msg);
  float *ref = kt_read(p->cpu, yc, M * N), *plain = NULL;
  const int fusable = M == 1 && gemv_takes(p, K) && (saved.fusions & CUDA_FUSE_GLU);
  /* run 0: unfused; 1: fused (as saved); 2..6: fused under each loads / pipelining setting */
  static const int loads[] = {4, 16, 8, 4, 0}, piped[] = {1, 1, 1, 0, 1};
  for (int run = 0; run < 7; run++) {
    settings_t s = saved;
    if (run == 0) s.fusions &= ~CUDA_FUSE_GLU;
    if (run >= 2) s.loads = loads[run - 2], s.pipe = piped[run - 2];
    settings_put(p->gpu, s);
    void *yg = kt_act(p->gpu, NULL, M * N);
    const int64_t f0 = fused_count(p->gpu, F_GLU);
    T_CHECK(es_op_linear_silu_mul(p->gpu, yg, gug, ldgu, xg, ldx, &wg, M, &err) == 0, "%s: %s", what, err.msg);
    const int64_t fused = fused_count(p->gpu, F_GLU) - f0, want = run > 0 && fusable;
    T_CHECK(fused == want, "%s run %d: %lld fused calls, expected %lld", what, run, (long long)fused, (long long)want);
    float *got = kt_read(p->gpu, yg, M * N);
    char w2[240];
    snprintf(w2, sizeof w2, "%s run %d vs cpu", what, run);
    vs_cpu(p, w2, got, ref, M * N);
    if (run == 0) {
      plain = got;
      continue;
    }
    T_CHECK(memcmp(plain, got, sizeof(float) * (size_t)(M * N)) == 0,
            "%s run %d (loads %d, %s): differs from the GEMV + SiLU·mul kernels'", what, run, s.loads,
            s.pipe ? "pipelined" : "not pipelined");
    free(got);
  }
  settings_put(p->gpu, saved);
  free(plain);
  free(ref);
  free(x);
  kt_weight_free(&w);
}

/* ---- the linear with the RMSNorm after it ------------------------------------------------------------------ */

static void test_norm(const pair_t *p, int64_t K, int64_t N) {
  es_error_t err;
  const settings_t saved = settings_get(p->gpu);
  kt_weight_t w = rand_weight(p, N, K, -0.4f, 0.4f),
              g = kt_weight(p->dt == ES_DT_BF16 ? ES_DT_BF16 : ES_DT_F32, N, 1, 0.5f, 1.5f);
  es_weight_t wc = upload_w(p, p->cpu, &w), wg = upload_w(p, p->gpu, &w), gc = kt_upload(p->cpu, &g),
              gg = kt_upload(p->gpu, &g);
  float *x = rand_vals(p, K, -1, 1), *h0 = rand_vals(p, N, -2, 2);
  void *xc = kt_act(p->cpu, x, K), *xg = kt_act(p->gpu, x, K), *yc = kt_act(p->cpu, NULL, N),
       *rc = kt_act(p->cpu, h0, N), *oc = kt_act(p->cpu, NULL, N);
  char what[200];
  snprintf(what, sizeof what, "[%s] linear_rms_norm K=%lld N=%lld", p->name, (long long)K, (long long)N);
  T_CHECK(es_op_linear_rms_norm(p->cpu, yc, rc, oc, xc, K, &wc, &gc, 1, 1e-6f, &err) == 0, "%s: %s", what, err.msg);
  float *ref[3] = {kt_read(p->cpu, yc, N), kt_read(p->cpu, rc, N), kt_read(p->cpu, oc, N)};
  float *plain[3] = {NULL, NULL, NULL};
  static const char *const part[3] = {"y", "residual", "o"};
  const int64_t vec = p->dt == ES_DT_BF16 ? 8 : 4; /* elements per 16-byte vector of the RMSNorm */
  for (int run = 0; run < 3; run++) {              /* unfused, fused, fused with two weight rows per warp */
    settings_t s = saved;
    if (run == 0) s.fusions &= ~CUDA_FUSE_NORM;
    s.rows = run == 2 ? 2 : 1;
    settings_put(p->gpu, s);
    const int64_t P = s.rows == 2 ? (N + 1) / 2 : N; /* warps: the grid must have no idle one */
    const int fusable = run > 0 && (saved.fusions & CUDA_FUSE_NORM) && gemv_takes(p, K) && N % vec == 0 &&
                        N / vec <= 1024 && P % 4 == 0;
    void *yg = kt_act(p->gpu, NULL, N), *rg = kt_act(p->gpu, h0, N), *og = kt_act(p->gpu, NULL, N);
    const int64_t f0 = fused_count(p->gpu, F_NORM);
    T_CHECK(es_op_linear_rms_norm(p->gpu, yg, rg, og, xg, K, &wg, &gg, 1, 1e-6f, &err) == 0, "%s: %s", what, err.msg);
    const int64_t fused = fused_count(p->gpu, F_NORM) - f0;
    T_CHECK(fused == fusable, "%s run %d: %lld fused calls, expected %d", what, run, (long long)fused, fusable);
    float *got[3] = {kt_read(p->gpu, yg, N), kt_read(p->gpu, rg, N), kt_read(p->gpu, og, N)};
    for (int k = 0; k < 3; k++) {
      char w2[240];
      snprintf(w2, sizeof w2, "%s run %d: %s vs cpu", what, run, part[k]);
      vs_cpu(p, w2, got[k], ref[k], N);
      if (run == 0) {
        plain[k] = got[k];
        continue;
      }
      T_CHECK(memcmp(plain[k], got[k], sizeof(float) * (size_t)N) == 0,
              "%s run %d: %s differs from the GEMV + RMSNorm kernels'", what, run, part[k]);
      free(got[k]);
    }
  }
  settings_put(p->gpu, saved);
  for (int k = 0; k < 3; k++) {
    free(plain[k]);
    free(ref[k]);
  }
  free(x);
  free(h0);
  kt_weight_free(&w);
  kt_weight_free(&g);
}

/* ---- two weight rows per warp ---------------------------------------------------------------------------------- */

static void test_two_rows(const pair_t *p, int64_t K, int64_t N) {
  es_error_t err;
  const settings_t saved = settings_get(p->gpu);
  kt_weight_t w = rand_weight(p, N, K, -0.4f, 0.4f),
              b = kt_weight(p->dt == ES_DT_BF16 ? ES_DT_BF16 : ES_DT_F32, N, 1, -0.5f, 0.5f);
  const int logits = !p->fp8; /* the lm_head is never fp8 */
  es_weight_t wg = upload_w(p, p->gpu, &w), bg = kt_upload(p->gpu, &b), wl = logits ? wg : (es_weight_t){0};
  float *x = rand_vals(p, K, -1, 1), *y0 = rand_vals(p, N, -1, 1);
  void *xg = kt_act(p->gpu, x, K);
  float *got[2][3];
  for (int rows = 1; rows <= 2; rows++) {
    settings_t s = saved;
    s.rows = rows;
    settings_put(p->gpu, s);
    void *dy = kt_act(p->gpu, NULL, N), *dacc = kt_act(p->gpu, y0, N), *dl = NULL;
    T_CHECK(es_backend_alloc(p->gpu, sizeof(float) * (size_t)N, &dl, &err) == 0, "alloc: %s", err.msg);
    T_CHECK(es_op_linear(p->gpu, dy, N, xg, K, &wg, &bg, 1, ES_ACT_GELU, 0, &err) == 0 &&
                es_op_linear(p->gpu, dacc, N, xg, K, &wg, NULL, 1, ES_ACT_NONE, 1, &err) == 0 &&
                (!logits || es_op_logits(p->gpu, dl, xg, &wl, 1, &err) == 0),
            "[%s] linear / logits: %s", p->name, err.msg);
    got[rows - 1][0] = kt_read(p->gpu, dy, N);
    got[rows - 1][1] = kt_read(p->gpu, dacc, N);
    got[rows - 1][2] = calloc((size_t)N, sizeof(float));
    if (logits)
      T_CHECK(es_backend_read(p->gpu, got[rows - 1][2], dl, sizeof(float) * (size_t)N, &err) == 0, "read: %s", err.msg);
  }
  static const char *const what[3] = {"bias + GELU", "accumulate", "logits"};
  for (int k = 0; k < 3; k++) {
    T_CHECK(memcmp(got[0][k], got[1][k], sizeof(float) * (size_t)N) == 0,
            "[%s] GEMV N=%lld K=%lld %s: two weight rows per warp differ from one", p->name, (long long)N, (long long)K,
            what[k]);
    free(got[0][k]);
    free(got[1][k]);
  }
  settings_put(p->gpu, saved);
  free(x);
  free(y0);
  kt_weight_free(&w);
  kt_weight_free(&b);
}

/* ---- the q|k|v linear with RoPE and the KV store ------------------------------------------------------------- */

#define ROPE_LAYERS 2
#define ROPE_BLOCKS 8
#define ROPE_LAYER 1

/* One decode token at position pos (its cache slot in table[pos / 16] of a shuffled table) through
 * es_op_linear_rope_kv_store (bias NULL or not):
 * the q|k|v row against the CPU, and with CUDA_FUSE_ROPE on (the GEMV's warps rotate the pairs and store k and v) bit
 * for bit against it off (the GEMV, then the RoPE + KV store kernel) — the q|k|v row and the whole KV pool (poisoned
 * with NaN before every run) — under every loads-in-flight and pipelining setting. The pair's pool: H heads of D. */
static void test_rope(const pair_t *p, int H, int D, int64_t K, int32_t pos, int with_bias) {
  es_error_t err;
  const settings_t saved = settings_get(p->gpu);
  const int64_t HD = (int64_t)H * D, N = 3 * HD, ld = N + 8;
  const float theta = 1e6f;
  int32_t table[ROPE_BLOCKS] = {5, 2, 7, 1, 3, 6, 4, 5}, q_start[2], ctx[1], pos_a[1], slot[1];
  const int32_t q_len = 1, ctx_len = pos + 1;
  es_batch_t b;
  kt_batch_rows(&b, q_start, ctx, pos_a, slot, table, ROPE_BLOCKS, 1, &q_len, &ctx_len);
  kt_weight_t w = rand_weight(p, N, K, -0.4f, 0.4f),
              bias = kt_weight(p->dt == ES_DT_BF16 ? ES_DT_BF16 : ES_DT_F32, N, 1, -0.5f, 0.5f);
  es_weight_t wc = upload_w(p, p->cpu, &w), wg = upload_w(p, p->gpu, &w), bc = kt_upload(p->cpu, &bias),
              bg = kt_upload(p->gpu, &bias);
  float *x = rand_vals(p, K, -1, 1);
  void *xc = kt_act(p->cpu, x, K), *xg = kt_act(p->gpu, x, K), *qc = kt_act(p->cpu, NULL, ld);
  const size_t pool_n = (size_t)ROPE_LAYERS * ROPE_BLOCKS * 2 * (size_t)HD * ES_KV_BLOCK;
  float *poison = malloc(sizeof(float) * pool_n);
  kt_poison(poison, (int64_t)pool_n);
  char what[200];
  snprintf(what, sizeof what, "[%s] linear_rope_kv_store H=%d D=%d K=%lld pos=%d", p->name, H, D, (long long)K, pos);
  T_CHECK(es_backend_begin_step(p->cpu, &b, &err) == 0 && es_backend_begin_step(p->gpu, &b, &err) == 0,
          "begin_step: %s", err.msg);
  T_CHECK(es_op_linear_rope_kv_store(p->cpu, ROPE_LAYER, qc, ld, xc, K, &wc, with_bias ? &bc : NULL, H, D, theta,
                                     &err) == 0,
          "%s: %s", what, err.msg);
  float *ref = kt_read(p->cpu, qc, N), *plain_q = NULL, *plain_pool = NULL;
  const int fusable = (saved.fusions & CUDA_FUSE_ROPE) && gemv_takes(p, K);
  static const int loads[] = {4, 16, 8, 4, 0}, piped[] = {1, 1, 1, 0, 1};
  for (int run = 0; run < 7; run++) { /* 0: unfused; 1: fused; 2..6: fused under each loads / pipelining setting */
    settings_t s = saved;
    if (run == 0) s.fusions &= ~CUDA_FUSE_ROPE;
    if (run >= 2) s.loads = loads[run - 2], s.pipe = piped[run - 2];
    settings_put(p->gpu, s);
    T_CHECK(es_backend_write_act(p->gpu, cuda_backend_kv_pool(p->gpu), poison, pool_n, &err) == 0, "pool: %s", err.msg);
    void *qg = kt_act(p->gpu, NULL, ld);
    const int64_t f0 = fused_count(p->gpu, F_ROPE);
    T_CHECK(es_op_linear_rope_kv_store(p->gpu, ROPE_LAYER, qg, ld, xg, K, &wg, with_bias ? &bg : NULL, H, D, theta,
                                       &err) == 0,
            "%s: %s", what, err.msg);
    const int64_t fused = fused_count(p->gpu, F_ROPE) - f0, want = run > 0 && fusable;
    T_CHECK(fused == want, "%s run %d: %lld fused calls, expected %lld", what, run, (long long)fused, (long long)want);
    float *got = kt_read(p->gpu, qg, N), *pool = kt_read(p->gpu, cuda_backend_kv_pool(p->gpu), (int64_t)pool_n);
    char w2[240];
    snprintf(w2, sizeof w2, "%s run %d: q|k|v vs cpu", what, run);
    vs_cpu(p, w2, got, ref, N);
    /* independently of the other path: the token's k (rotated) and v rows of layer ROPE_LAYER at its slot hold the
     * q|k|v row's k and v sections, and nothing else of the pool was written */
    int64_t stored = 0, wrong = 0;
    for (size_t i = 0; i < pool_n; i++) stored += pool[i] == pool[i];
    for (int kv = 0; kv < 2; kv++)
      for (int h = 0; h < H; h++)
        for (int d = 0; d < D; d++) {
          const float want_v = got[(1 + kv) * HD + (int64_t)h * D + d];
          const float have =
              pool[attn_kv_offset(ROPE_LAYER, ROPE_BLOCKS, slot[0] / ES_KV_BLOCK, kv, H, h, D, slot[0] % ES_KV_BLOCK) +
                   d];
          wrong += memcmp(&want_v, &have, sizeof have) != 0;
        }
    T_CHECK(stored == 2 * HD && wrong == 0,
            "%s run %d: %lld pool values stored (expected %lld), %lld not the k / v row", what, run, (long long)stored,
            (long long)(2 * HD), (long long)wrong);
    if (run == 0) {
      plain_q = got;
      plain_pool = pool;
      continue;
    }
    T_CHECK(memcmp(plain_q, got, sizeof(float) * (size_t)N) == 0,
            "%s run %d: the q|k|v row differs from the GEMV + RoPE kernels'", what, run);
    T_CHECK(memcmp(plain_pool, pool, sizeof(float) * pool_n) == 0,
            "%s run %d: the KV cache differs from the GEMV + RoPE kernels' (NaN where a store is missing)", what, run);
    free(got);
    free(pool);
  }
  T_CHECK(es_backend_end_step(p->cpu, &err) == 0 && es_backend_end_step(p->gpu, &err) == 0, "end_step: %s", err.msg);
  settings_put(p->gpu, saved);
  free(plain_q);
  free(plain_pool);
  free(poison);
  free(ref);
  free(x);
  kt_weight_free(&w);
  kt_weight_free(&bias);
}

static int pair_open(pair_t *p, es_dtype_t dt, int fp8) {
  memset(p, 0, sizeof *p);
  p->dt = dt;
  p->fp8 = fp8;
  snprintf(p->name, sizeof p->name, "%s, %s weights", es_dtype_name(dt), fp8 ? "fp8" : "compute-dtype");
  es_backend_opts_t o = {
      .compute_dtype = ES_DT_F32, .n_threads = 2, .max_tokens = 64, .max_seqs = 4, .max_blocks = ROPE_BLOCKS};
  es_error_t err;
  int rc = es_backend_create_cpu(&o, &p->cpu, &err);
  T_CHECK(rc == 0, "cpu backend: %s", err.msg);
  o.compute_dtype = dt;
  if (!rc) rc = es_backend_create_cuda(&o, &p->gpu, &err);
  T_CHECK(rc == 0, "cuda backend (%s): %s", es_dtype_name(dt), err.msg);
  return rc;
}

int main(void) {
  int skip = t_need_gpu();
  if (skip) return skip;
  static const es_dtype_t modes[2] = {ES_DT_F32, ES_DT_BF16};
  for (int mi = 0; mi < 2; mi++)
    for (int fp8 = 0; fp8 < 2; fp8++) {
      pair_t p;
      if (pair_open(&p, modes[mi], fp8) == 0) {
        printf("[%s] %s\n", p.name, es_backend_name(p.gpu));
        /* gate|up: the 7B K, a lane-wrapping K (chunks not a multiple of 32), one chunk, N odd; 3 rows; K = 40
         * (the bf16 GEMV takes it, the vector fp8 GEMV does not) */
        test_glu(&p, 1, 4096, 37);
        test_glu(&p, 1, 2352, 70);
        test_glu(&p, 1, 16, 5);
        test_glu(&p, 3, 1024, 20);
        test_glu(&p, 1, 40, 9);
        /* the RMSNorm: the 7B row; two vectors; one; 68 (two rows per warp: 34 warps, an idle one per block) */
        test_norm(&p, 4096, 4096);
        test_norm(&p, 1040, 16);
        test_norm(&p, 16, 8);
        test_norm(&p, 48, 68);
        test_norm(&p, 40, 16);
        /* two rows per warp: N even, odd, 1; logits-like N */
        test_two_rows(&p, 2352, 70);
        test_two_rows(&p, 4096, 37);
        test_two_rows(&p, 16, 1);
        test_two_rows(&p, 64, 517);
      }
      es_backend_free(p.gpu);
      es_backend_free(p.cpu);
      /* RoPE + KV store: a fresh pair per cache geometry (a backend sizes its pool once): the 7B layer's shape
       * (32 heads of 128, K = 4096), small heads of 64, and a K the vector fp8 GEMV does not take */
      static const int geo[3][3] = {{32, 128, 4096}, {3, 64, 1040}, {2, 128, 40}};
      for (int g = 0; g < 3; g++) {
        if (pair_open(&p, modes[mi], fp8) == 0) {
          es_error_t err;
          int rc = 0;
          for (int i = 0; i < 2 && !rc; i++)
            rc = es_backend_kv_init(i ? p.gpu : p.cpu, ROPE_LAYERS, ROPE_BLOCKS, geo[g][0], geo[g][1], &err);
          T_CHECK(rc == 0, "kv_init: %s", err.msg);
          if (!rc) {
            test_rope(&p, geo[g][0], geo[g][1], geo[g][2], 0, 1);
            test_rope(&p, geo[g][0], geo[g][1], geo[g][2], 77, g != 1); /* and once without a bias */
          }
        }
        es_backend_free(p.gpu);
        es_backend_free(p.cpu);
      }
    }
  return t_finish();
}

#else /* built without the CUDA backend */

int main(void) {
  return t_skip("built without the CUDA backend");
}

#endif
