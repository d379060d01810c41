/* test_cuda_deterministic: the CUDA backend's deterministic mode (es_backend_opts_t.deterministic, issue 9) makes
 * a row's result bit-identical whether it is computed alone or inside any batch. Compared with memcmp, never with
 * a tolerance; the default mode runs the same cases and only reports how many rows differ there (the mode is what
 * promises bits, the default does not).
 *
 *   GEMM (es_op_linear, bf16, with and without bias; es_op_logits, fp32 out): for several weight shapes and M in
 *     {1, 2, 3, 7, 16, 64, 300}, every row of Y computed in a batch of M equals the same row computed alone (the
 *     row copied to the start of an equally aligned buffer, M = 1). Also: no shape was moved to the plain kernel
 *     after its first choice (cuda_backend_det_stats).
 *   Paged attention (bf16, H = 2, D = 128 and H = 3, D = 64, random cache, contexts up to 2000 keys so rows have
 *     1..4 splits of 512): a target sequence's rows alone vs inside mixed steps of 1..33 sequences (decodes,
 *     small chunks, prefill chunks, other contexts longer and shorter than the target's) at different positions
 *     of the batch; and the same row computed as a decode (q_len 1), as the last row of a 3-token chunk and
 *     inside a 40-token chunk — in default mode those go to different kernels, in deterministic mode they must
 *     agree (a prefix-cache hit or a recomputation changes the chunking of a prompt).
 * Outputs are poisoned (NaN) before every run. The end-to-end check (engine, tiny-b, alone vs 32 concurrent
 * requests: tokens and log-probabilities bit for bit) is test_batching cuda deterministic.
 * Skips (exit 77) without the CUDA backend or without a GPU.
 */
#include "kernel_test.h"

#include "es_gpu.h"
#include "gpu_skip.h"
#ifdef ES_HAVE_CUDA_BACKEND
#include "cuda/cuda_hooks.h"
#endif

#ifdef ES_HAVE_CUDA_BACKEND

#define MAX_TOKENS 640
#define MAX_SEQS 40
#define MAX_BLOCKS 130 /* contexts up to 2080 */
#define NB 1200
#define L_LAYERS 2
#define LAYER 1

static es_backend_t *open_cuda(int deterministic) {
  es_backend_opts_t o = {.compute_dtype = ES_DT_BF16,
                         .max_tokens = MAX_TOKENS,
                         .max_seqs = MAX_SEQS,
                         .max_blocks = MAX_BLOCKS,
                         .deterministic = deterministic};
  es_backend_t *be = NULL;
  es_error_t err;
  T_CHECK(es_backend_create_cuda(&o, &be, &err) == 0, "cuda backend (deterministic %d): %s", deterministic, err.msg);
  return be;
}

/* ---- GEMM ---------------------------------------------------------------------------------------------------- */

static const int64_t GEMM_M[] = {1, 2, 3, 7, 16, 64, 300};
#define N_GEMM_M (sizeof GEMM_M / sizeof *GEMM_M)
#define GEMM_MAX_M 300

/* Rows of y (M rows of n values, read as floats: bf16 and fp32 both convert exactly) that differ from the
 * same row computed alone. logits: es_op_logits (fp32 out) instead of es_op_linear. fp8: the weight uploaded as
 * FP8 e4m3 (M <= 16 and larger M take different kernels in default mode: GEMV vs dequantise + GEMM). */
static int gemm_case_fp8(es_backend_t *be, int64_t N, int64_t K, int bias, int logits, int fp8, const char *mode) {
  es_error_t err;
  kt_weight_t w = kt_weight(ES_DT_BF16, N, K, -0.5f, 0.5f), b = kt_weight(ES_DT_BF16, N, 1, -1.0f, 1.0f);
  es_weight_t dw = {0}, db = kt_upload(be, &b);
  if (fp8)
    T_CHECK(es_backend_upload_weight_fp8(be, w.host, w.dt, N, K, &dw, &err) == 0, "fp8 upload: %s", err.msg);
  else
    dw = kt_upload(be, &w);
  float *xh = malloc(sizeof(float) * (size_t)(GEMM_MAX_M * K));
  kt_fill(xh, GEMM_MAX_M * K, -1.0f, 1.0f);
  void *x = kt_act(be, xh, GEMM_MAX_M * K), *x1 = kt_act(be, NULL, K);
  size_t ysz = sizeof(float) * (size_t)(GEMM_MAX_M * N); /* fp32 room in both cases */
  void *y = NULL, *y1 = NULL;
  T_CHECK(es_backend_alloc(be, ysz, &y, &err) == 0 && es_backend_alloc(be, ysz, &y1, &err) == 0, "alloc: %s",
          err.msg);
  float *alone = malloc(sizeof(float) * (size_t)(GEMM_MAX_M * N)), *got = malloc(ysz), *poison = malloc(ysz);
  kt_poison(poison, GEMM_MAX_M * N);
  /* each row alone, from the start of x1 (x's alignment) */
  for (int64_t i = 0; i < GEMM_MAX_M; i++) {
    es_backend_write_act(be, x1, xh + i * K, (size_t)K, &err);
    int rc;
    if (logits) {
      es_backend_write(be, y1, poison, sizeof(float) * (size_t)N, &err);
      rc = es_op_logits(be, y1, x1, &dw, 1, &err);
      if (!rc) rc = es_backend_read(be, alone + i * N, y1, sizeof(float) * (size_t)N, &err);
    } else {
      es_backend_write_act(be, y1, poison, (size_t)N, &err);
      rc = es_op_linear(be, y1, N, x1, K, &dw, bias ? &db : NULL, 1, ES_ACT_NONE, 0, &err);
      if (!rc) rc = es_backend_read_act(be, alone + i * N, y1, (size_t)N, &err);
    }
    T_CHECK(rc == 0, "gemm alone row %lld: %s", (long long)i, err.msg);
  }
  int bad_rows = 0, rows = 0;
  for (size_t mi = 0; mi < N_GEMM_M; mi++) {
    int64_t M = GEMM_M[mi];
    int rc;
    if (logits) {
      es_backend_write(be, y, poison, sizeof(float) * (size_t)(M * N), &err);
      rc = es_op_logits(be, y, x, &dw, M, &err);
      if (!rc) rc = es_backend_read(be, got, y, sizeof(float) * (size_t)(M * N), &err);
    } else {
      es_backend_write_act(be, y, poison, (size_t)(M * N), &err);
      rc = es_op_linear(be, y, N, x, K, &dw, bias ? &db : NULL, M, ES_ACT_NONE, 0, &err);
      if (!rc) rc = es_backend_read_act(be, got, y, (size_t)(M * N), &err);
    }
    T_CHECK(rc == 0, "gemm M=%lld: %s", (long long)M, err.msg);
    int bad = 0;
    for (int64_t i = 0; i < M; i++) {
      int nan = 0;
      for (int64_t j = 0; j < N; j++) nan |= isnan(got[i * N + j]);
      T_CHECK(!nan, "%s gemm N=%lld K=%lld M=%lld row %lld: NaN (not written)", mode, (long long)N, (long long)K,
              (long long)M, (long long)i);
      bad += memcmp(got + i * N, alone + i * N, sizeof(float) * (size_t)N) != 0;
    }
    if (bad)
      printf("  %s %s N=%lld K=%lld%s M=%lld: %d of %lld rows differ from the row alone\n", mode,
             logits ? "logits" : "linear", (long long)N, (long long)K, bias ? " +bias" : "", (long long)M, bad,
             (long long)M);
    bad_rows += bad;
    rows += (int)M;
  }
  printf("%s %s N=%lld K=%lld%s: %d of %d rows differ from alone\n", mode,
         logits ? "logits" : fp8 ? "fp8 linear" : "linear", (long long)N, (long long)K, bias ? " +bias" : "",
         bad_rows, rows);
  kt_weight_free(&w);
  kt_weight_free(&b);
  free(xh);
  free(alone);
  free(got);
  free(poison);
  return bad_rows;
}

static int gemm_case(es_backend_t *be, int64_t N, int64_t K, int bias, int logits, const char *mode) {
  return gemm_case_fp8(be, N, K, bias, logits, 0, mode);
}

static void gemm_tests(es_backend_t *det, es_backend_t *def) {
  /* (N, K): decoder-like, encoder-like, odd sizes (the plain kernel's edges, unaligned K) */
  static const int64_t shapes[][2] = {{256, 256}, {768, 256}, {1024, 512}, {4096, 1024}, {100, 72}, {333, 200}};
  for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
    for (int bias = 0; bias < 2; bias++) {
      int bad = gemm_case(det, shapes[s][0], shapes[s][1], bias, 0, "deterministic");
      T_CHECK(bad == 0, "deterministic linear N=%lld K=%lld bias=%d: %d rows depend on M", (long long)shapes[s][0],
              (long long)shapes[s][1], bias, bad);
      gemm_case(def, shapes[s][0], shapes[s][1], bias, 0, "default"); /* reported, not checked */
    }
  static const int64_t lshapes[][2] = {{256, 256}, {32000, 512}};
  for (size_t s = 0; s < sizeof lshapes / sizeof *lshapes; s++) {
    int bad = gemm_case(det, lshapes[s][0], lshapes[s][1], 0, 1, "deterministic");
    T_CHECK(bad == 0, "deterministic logits V=%lld C=%lld: %d rows depend on M", (long long)lshapes[s][0],
            (long long)lshapes[s][1], bad);
    gemm_case(def, lshapes[s][0], lshapes[s][1], 0, 1, "default");
  }
  /* fp8 weights: M = 1..16 and 64, 300 must agree too (deterministic mode takes one path for every M) */
  static const int64_t fshapes[][2] = {{256, 256}, {4096, 1024}, {333, 200}};
  for (size_t s = 0; s < sizeof fshapes / sizeof *fshapes; s++)
    for (int bias = 0; bias < 2; bias++) {
      int bad = gemm_case_fp8(det, fshapes[s][0], fshapes[s][1], bias, 0, 1, "deterministic");
      T_CHECK(bad == 0, "deterministic fp8 linear N=%lld K=%lld bias=%d: %d rows depend on M",
              (long long)fshapes[s][0], (long long)fshapes[s][1], bias, bad);
      gemm_case_fp8(def, fshapes[s][0], fshapes[s][1], bias, 0, 1, "default"); /* reported, not checked */
    }
  int shapes_n = 0, plain = 0;
  int64_t switched = 0;
  cuda_backend_det_stats(det, &shapes_n, &plain, &switched);
  printf("deterministic GEMM shapes: %d (%d on the plain kernel), %lld switched after their first choice\n", shapes_n,
         plain, (long long)switched);
  T_CHECK(shapes_n > 0, "deterministic mode recorded no GEMM shape (is the mode on?)");
  T_CHECK(switched == 0, "%lld shapes moved to the plain kernel after their algorithm was refused at a new M",
          (long long)switched);
}

/* ---- paged attention ---------------------------------------------------------------------------------------- */

typedef struct {
  es_batch_t b;
  int32_t q_start[MAX_SEQS + 1], ctx[MAX_SEQS], pos[MAX_TOKENS], slot[MAX_TOKENS];
  int32_t table[MAX_SEQS * MAX_BLOCKS];
} batch_t;

/* The target's block table (fixed) and the others' (random ids: attention only reads the pool). */
static int32_t TARGET_TABLE[MAX_BLOCKS];

static void batch_make(batch_t *bt, int n, const int32_t *q_len, const int32_t *ctx, int target) {
  memset(bt, 0, sizeof *bt);
  for (int s = 0; s < n; s++)
    for (int j = 0; j < MAX_BLOCKS; j++)
      bt->table[s * MAX_BLOCKS + j] = s == target ? TARGET_TABLE[j] : 1 + kt_int(NB - 1);
  kt_batch_rows(&bt->b, bt->q_start, bt->ctx, bt->pos, bt->slot, bt->table, MAX_BLOCKS, n, q_len, ctx);
}

typedef struct {
  es_backend_t *be;
  int H, D;
  int64_t ldq;
  void *q, *out;
  float *tq; /* the target's q rows by position: TQ(p) = tq + p·H·D (the same in every run) */
} att_t;

static void att_open(att_t *a, es_backend_t *be, int H, int D, const float *pool, size_t pool_n) {
  es_error_t err;
  a->be = be;
  a->H = H;
  a->D = D;
  a->ldq = (int64_t)H * D;
  T_CHECK(es_backend_kv_init(be, L_LAYERS, NB, H, D, &err) == 0, "kv_init: %s", err.msg);
  T_CHECK(es_backend_write_act(be, cuda_backend_kv_pool(be), pool, pool_n, &err) == 0, "pool: %s", err.msg);
  a->q = kt_act(be, NULL, MAX_TOKENS * a->ldq);
  a->out = kt_act(be, NULL, MAX_TOKENS * a->ldq);
}

/* Runs a step whose sequence `target` has q_len[target] rows ending at ctx[target]; returns the target's output
 * rows (q_len[target] · H · D floats). The other rows get random q. */
static float *att_run(att_t *a, const float *tq, int n, const int32_t *q_len, const int32_t *ctx, int target) {
  es_error_t err;
  batch_t *bt = malloc(sizeof *bt);
  batch_make(bt, n, q_len, ctx, target);
  int64_t rows = bt->b.n_tokens, HD = a->ldq;
  float *q = malloc(sizeof(float) * (size_t)(rows * HD)), *poison = malloc(sizeof(float) * (size_t)(rows * HD));
  kt_fill(q, rows * HD, -2.0f, 2.0f);
  for (int64_t i = 0; i < rows * HD; i++) {
    float r;
    kt_to_bf16(q[i], &r);
    q[i] = r;
  }
  for (int i = 0; i < q_len[target]; i++) {
    int32_t p = ctx[target] - q_len[target] + i;
    memcpy(q + (bt->q_start[target] + i) * HD, tq + (int64_t)p * HD, sizeof(float) * (size_t)HD);
  }
  kt_poison(poison, rows * HD);
  es_backend_write_act(a->be, a->q, q, (size_t)(rows * HD), &err);
  es_backend_write_act(a->be, a->out, poison, (size_t)(rows * HD), &err);
  T_CHECK(es_backend_begin_step(a->be, &bt->b, &err) == 0, "begin_step: %s", err.msg);
  T_CHECK(es_op_attention_paged(a->be, LAYER, a->out, a->q, a->ldq, a->H, a->D, 1.0f / sqrtf((float)a->D), &err) == 0,
          "attention: %s", err.msg);
  T_CHECK(es_backend_end_step(a->be, &err) == 0, "end_step: %s", err.msg);
  float *all = kt_read(a->be, a->out, rows * HD);
  float *t = malloc(sizeof(float) * (size_t)(q_len[target] * HD));
  memcpy(t, all + bt->q_start[target] * HD, sizeof(float) * (size_t)(q_len[target] * HD));
  int nan = 0;
  for (int64_t i = 0; i < q_len[target] * HD; i++) nan |= isnan(t[i]);
  T_CHECK(!nan, "attention: the target's output has NaN (not written)");
  free(all);
  free(q);
  free(poison);
  free(bt);
  return t;
}

/* Mixed steps of 1..33 sequences around a target of q_len tq_len at context tctx; returns how many differ. */
static int att_batches(att_t *a, const float *tq, int tq_len, int32_t tctx, const char *mode) {
  int32_t q1[1] = {tq_len}, c1[1] = {tctx};
  float *alone = att_run(a, tq, 1, q1, c1, 0);
  int64_t n_out = (int64_t)tq_len * a->ldq;
  static const int sizes[] = {1, 2, 3, 5, 8, 13, 21, 33};
  int bad = 0, runs = 0;
  for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
    int n = sizes[si], target = kt_int(n), rows = 0;
    int32_t q_len[MAX_SEQS], ctx[MAX_SEQS];
    for (int s = 0; s < n; s++) {
      if (s == target) {
        q_len[s] = tq_len;
        ctx[s] = tctx;
      } else {
        int kind = kt_int(4); /* decode, small chunk, prefill chunk, long decode */
        q_len[s] = kind == 0 || kind == 3 ? 1 : kind == 1 ? 1 + kt_int(4) : 5 + kt_int(40);
        ctx[s] = kind == 3 ? 1500 + kt_int(500) : q_len[s] + kt_int(1200);
      }
      if (rows + q_len[s] > MAX_TOKENS - 64) q_len[s] = s == target ? q_len[s] : 1;
      rows += q_len[s];
    }
    float *got = att_run(a, tq, n, q_len, ctx, target);
    int differ = memcmp(got, alone, sizeof(float) * (size_t)n_out) != 0;
    if (differ) printf("  %s attention H=%d D=%d: target (q_len %d, ctx %d) differs in a step of %d\n", mode, a->H,
                       a->D, tq_len, tctx, n);
    bad += differ;
    runs++;
    free(got);
  }
  printf("%s attention H=%d D=%d target q_len %d ctx %d: %d of %d mixed steps differ from alone\n", mode, a->H, a->D,
         tq_len, tctx, bad, runs);
  free(alone);
  return bad;
}

/* The row at position p computed as a decode, as the last row of a 3-token chunk and inside a 40-token chunk. */
static int att_chunking(att_t *a, const float *tq, int32_t p, const char *mode) {
  int32_t q_a[1] = {1}, c_a[1] = {p + 1}, q_b[1] = {3}, c_b[1] = {p + 1}, q_c[1] = {40}, c_c[1] = {p + 21};
  float *ra = att_run(a, tq, 1, q_a, c_a, 0), *rb = att_run(a, tq, 1, q_b, c_b, 0), *rc = att_run(a, tq, 1, q_c, c_c, 0);
  int64_t HD = a->ldq;
  int bad = (memcmp(ra, rb + 2 * HD, sizeof(float) * (size_t)HD) != 0) +
            (memcmp(ra, rc + 19 * HD, sizeof(float) * (size_t)HD) != 0); /* row p of the chunk [p-19, p+21) */
  printf("%s attention H=%d D=%d position %d: decode vs 3-token chunk vs 40-token chunk: %d of 2 differ\n", mode,
         a->H, a->D, p, bad);
  free(ra);
  free(rb);
  free(rc);
  return bad;
}

static void attention_tests(es_backend_t *det, es_backend_t *def, int H, int D) {
  size_t pool_n = (size_t)L_LAYERS * NB * 2 * (size_t)H * ES_KV_BLOCK * (size_t)D;
  float *pool = malloc(sizeof(float) * pool_n);
  kt_fill(pool, (int64_t)pool_n, -1.0f, 1.0f);
  int32_t order[NB];
  kt_shuffled_blocks(order, NB);
  for (int j = 0; j < MAX_BLOCKS; j++) TARGET_TABLE[j] = order[j];
  int64_t HD = (int64_t)H * D;
  float *tq = malloc(sizeof(float) * (size_t)(MAX_BLOCKS * ES_KV_BLOCK * HD));
  kt_fill(tq, MAX_BLOCKS * ES_KV_BLOCK * HD, -2.0f, 2.0f);
  for (int64_t i = 0; i < MAX_BLOCKS * ES_KV_BLOCK * HD; i++) {
    float r;
    kt_to_bf16(tq[i], &r);
    tq[i] = r;
  }
  att_t ad, af;
  att_open(&ad, det, H, D, pool, pool_n);
  att_open(&af, def, H, D, pool, pool_n);
  printf("deterministic decode split: %d keys\n", cuda_backend_det_attn_chunk(det));
  T_CHECK(cuda_backend_det_attn_chunk(det) == 512, "deterministic split of %d keys (512 expected)",
          cuda_backend_det_attn_chunk(det));
  /* decode targets with 1..4 splits, a small chunk, a prefill chunk */
  static const int targets[][2] = {{1, 1}, {1, 511}, {1, 513}, {1, 1300}, {1, 2000}, {3, 700}, {24, 1030}};
  for (size_t t = 0; t < sizeof targets / sizeof *targets; t++) {
    int bad = att_batches(&ad, tq, targets[t][0], targets[t][1], "deterministic");
    T_CHECK(bad == 0, "deterministic attention H=%d D=%d (q_len %d, ctx %d): %d steps change the target", H, D,
            targets[t][0], targets[t][1], bad);
    att_batches(&af, tq, targets[t][0], targets[t][1], "default");
  }
  static const int32_t positions[] = {30, 600, 1500};
  for (size_t k = 0; k < sizeof positions / sizeof *positions; k++) {
    int bad = att_chunking(&ad, tq, positions[k], "deterministic");
    T_CHECK(bad == 0, "deterministic attention H=%d D=%d: position %d depends on the chunking", H, D, positions[k]);
    att_chunking(&af, tq, positions[k], "default");
  }
  free(pool);
  free(tq);
}

int main(void) {
  int skip = t_need_gpu();
  if (skip) return skip;
  unsetenv("EARSHOT_ATTENTION"); /* the fast kernels: the ones whose splits depend on the batch by default */
  for (int hd = 0; hd < 2; hd++) {
    es_backend_t *det = open_cuda(1), *def = open_cuda(0);
    if (!det || !def) {
      es_backend_free(det);
      es_backend_free(def);
      return t_finish();
    }
    printf("%s\n", es_backend_name(det));
    if (hd == 0) gemm_tests(det, def);
    attention_tests(det, def, hd == 0 ? 2 : 3, hd == 0 ? 128 : 64);
    es_backend_free(det);
    es_backend_free(def);
  }
  return t_finish();
}

#else /* built without the CUDA backend */

int main(void) {
  return t_skip("built without the CUDA backend");
}

#endif
