/* test_cpu_invariance: batch invariance of the CPU backend (backend.h): a row's result is bit-identical
 * (memcmp) whether it is computed alone or among 37 mixed rows, and whatever the thread count — for
 * linear (each GEMM path: the C kernel, and OpenBLAS, which would route a one-row product through gemv
 * if we let it), conv1d, logits, both norms, dense attention with key padding, and the paged decoder
 * step (RoPE + KV store + attention, a chunked prefill sharing a step with prefills and decodes, its
 * blocks at different pool ids).
 */
#include "kernel_test.h"

#include "cpu/cpu_backend.h"

static const int THREADS[] = {1, 2, 5};
#define N_THREADS_CASES 3

static void fill_seeded(float *x, int64_t n, uint64_t seed) {
  uint64_t saved = kt_seed;
  kt_seed = seed;
  kt_fill(x, n, -1, 1);
  kt_seed = saved;
}

static int same(const float *a, const float *b, int64_t n) {
  return memcmp(a, b, sizeof(float) * (size_t)n) == 0;
}

/* ---- GEMM ops: rows alone vs in the batch ---------------------------------------------------------------- */

typedef enum { OP_LINEAR, OP_LOGITS, OP_LAYER_NORM, OP_RMS_NORM } row_op_t;

/* Runs op on M rows x (row stride K) on a backend with n_threads; returns M × N outputs. */
static float *run_row_op(row_op_t op, int n_threads, cpu_gemm_path_t path, const kt_weight_t *w, const kt_weight_t *b,
                         const float *x, int64_t M) {
  es_backend_t *be = kt_backend(n_threads, 64, 4, 4);
  if (!be) return NULL;
  es_error_t err;
  if (cpu_backend_set_gemm_path(be, path, &err)) {
    es_backend_free(be);
    return NULL;
  }
  es_weight_t dw = kt_upload(be, w), db = kt_upload(be, b);
  int64_t K = op == OP_LINEAR || op == OP_LOGITS ? w->n1 : w->n0, N = w->n0;
  void *dx = kt_act(be, x, M * K), *dy = kt_act(be, NULL, M * N);
  int rc = 0;
  if (op == OP_LINEAR) rc = es_op_linear(be, dy, N, dx, K, &dw, &db, M, ES_ACT_GELU, 0, &err);
  if (op == OP_LOGITS) rc = es_op_logits(be, dy, dx, &dw, M, &err);
  if (op == OP_LAYER_NORM) rc = es_op_layer_norm(be, dy, dx, &dw, &db, M, K, 1e-5f, &err);
  if (op == OP_RMS_NORM) rc = es_op_rms_norm(be, dy, dx, NULL, &dw, M, K, 1e-5f, &err);
  T_CHECK(rc == 0, "op %d: %s", (int)op, err.msg);
  float *y = kt_read(be, dy, M * N);
  es_backend_free(be);
  return y;
}

static void check_rows(const char *name, row_op_t op, cpu_gemm_path_t path, es_dtype_t dt, int64_t M, int64_t K,
                       int64_t N) {
  int gemm = op == OP_LINEAR || op == OP_LOGITS;
  kt_weight_t w = gemm ? kt_weight(dt, N, K, -1, 1) : kt_weight(dt, K, 1, 0.5f, 1.5f);
  kt_weight_t b = kt_weight(dt, gemm ? N : K, 1, -1, 1);
  if (!gemm) N = K;
  float *x = malloc(sizeof(float) * (size_t)(M * K));
  kt_fill(x, M * K, -1, 1);
  float *all[N_THREADS_CASES];
  for (int t = 0; t < N_THREADS_CASES; t++) all[t] = run_row_op(op, THREADS[t], path, &w, &b, x, M);
  if (!all[0]) goto done; /* path not built */
  for (int t = 1; t < N_THREADS_CASES; t++)
    T_CHECK(all[t] && same(all[0], all[t], M * N), "%s M=%lld: %d threads differ from 1", name, (long long)M,
            THREADS[t]);
  const int64_t rows[] = {0, 1, 5, M / 2, M - 1};
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
    int64_t r = rows[i];
    float *one = run_row_op(op, THREADS[i % N_THREADS_CASES], path, &w, &b, x + r * K, 1);
    T_CHECK(one && same(one, all[0] + r * N, N), "%s: row %lld alone differs from the same row among %lld", name,
            (long long)r, (long long)M);
    free(one);
  }
done:
  for (int t = 0; t < N_THREADS_CASES; t++) free(all[t]);
  free(x);
  kt_weight_free(&w);
  kt_weight_free(&b);
}

/* ---- conv1d and dense attention: one audio alone vs in a batch of three --------------------------------------- */

static void check_conv(cpu_gemm_path_t path) {
  int64_t B = 3, T = 41, C_in = 12, C_out = 37, T_out = (T + 2 - 3) / 2 + 1;
  kt_weight_t w = kt_weight(ES_DT_BF16, C_out, C_in * 3, -1, 1), b = kt_weight(ES_DT_BF16, C_out, 1, -1, 1);
  float *x = malloc(sizeof(float) * (size_t)(B * T * C_in)), *ys[4] = {0};
  kt_fill(x, B * T * C_in, -1, 1);
  for (int c = 0; c < 4; c++) { /* c < 3: the batch on 1/2/5 threads; c = 3: audio 1 alone */
    es_backend_t *be = kt_backend(THREADS[c % N_THREADS_CASES], 64, 4, 4);
    es_error_t err;
    if (!be || cpu_backend_set_gemm_path(be, path, &err)) {
      es_backend_free(be);
      goto done;
    }
    es_weight_t dw = kt_upload(be, &w), db = kt_upload(be, &b);
    int64_t nb = c < 3 ? B : 1;
    void *dx = kt_act(be, c < 3 ? x : x + T * C_in, nb * T * C_in), *dy = kt_act(be, NULL, nb * T_out * C_out);
    T_CHECK(es_op_conv1d(be, dy, dx, &dw, &db, nb, T, C_in, 3, 2, 1, ES_ACT_GELU, &err) == 0, "conv1d: %s", err.msg);
    ys[c] = kt_read(be, dy, nb * T_out * C_out);
    es_backend_free(be);
  }
  for (int c = 1; c < 3; c++)
    T_CHECK(same(ys[0], ys[c], B * T_out * C_out), "conv1d: %d threads differ from 1", THREADS[c]);
  T_CHECK(same(ys[0] + T_out * C_out, ys[3], T_out * C_out), "conv1d: audio 1 alone differs from the batch");
done:
  for (int c = 0; c < 4; c++) free(ys[c]);
  free(x);
  kt_weight_free(&w);
  kt_weight_free(&b);
}

static void check_dense(void) {
  int64_t B = 3, T = 29, H = 2, D = 24, HD = H * D;
  int32_t valid[3] = {29, 11, 20};
  float *qkv = malloc(sizeof(float) * (size_t)(B * T * 3 * HD)), *outs[4] = {0};
  kt_fill(qkv, B * T * 3 * HD, -2, 2);
  for (int c = 0; c < 4; c++) {
    es_backend_t *be = kt_backend(THREADS[c % N_THREADS_CASES], 64, 4, 4);
    if (!be) goto done;
    int64_t nb = c < 3 ? B : 1;
    void *d = kt_act(be, c < 3 ? qkv : qkv + T * 3 * HD, nb * T * 3 * HD), *dout = kt_act(be, NULL, nb * T * HD);
    es_error_t err;
    T_CHECK(es_op_attention_dense(be, dout, d, 3 * HD, (float *)d + HD, 3 * HD, (float *)d + 2 * HD, 3 * HD, nb, T,
                                  (int)H, (int)D, 0.2f, c < 3 ? valid : valid + 1, &err) == 0,
            "attention_dense: %s", err.msg);
    outs[c] = kt_read(be, dout, nb * T * HD);
    es_backend_free(be);
  }
  for (int c = 1; c < 3; c++)
    T_CHECK(same(outs[0], outs[c], B * T * HD), "attention_dense: %d threads differ", THREADS[c]);
  T_CHECK(same(outs[0] + T * HD, outs[3], T * HD), "attention_dense: audio 1 alone differs from the batch");
done:
  for (int c = 0; c < 4; c++) free(outs[c]);
  free(qkv);
}

/* ---- the paged decoder step -------------------------------------------------------------------------------
 * Step 1 fills each sequence's prefix, step 2 runs its new tokens. Sequence X (prefix 33, chunk 7) runs alone
 * or in the middle of a step with a decode, a chunk and a fresh prefill: 7 + 1 + 12 + 17 = 37 rows. Every
 * token's q/k/v depend only on (sequence id, position). */

typedef struct {
  int id, prefix, chunk;
} seqspec_t;

enum { PH = 2, PD = 40, PHD = PH * PD, P_MAX_BLOCKS = 4, P_BLOCKS = 40 };

/* Runs both steps; returns X's step-2 rotated q rows and attention rows (chunk × 2·HD). */
static float *paged_scenario(int n_threads, const seqspec_t *seqs, int n, int x_index, uint64_t block_seed) {
  es_backend_t *be = kt_backend(n_threads, 64, 8, P_MAX_BLOCKS);
  if (!be) return NULL;
  es_error_t err;
  T_CHECK(es_backend_kv_init(be, 2, P_BLOCKS, PH, PD, &err) == 0, "kv_init: %s", err.msg);
  int32_t order[P_BLOCKS], tables[8 * P_MAX_BLOCKS];
  uint64_t saved = kt_seed;
  kt_seed = block_seed;
  kt_shuffled_blocks(order, P_BLOCKS);
  kt_seed = saved;
  for (int s = 0; s < n * P_MAX_BLOCKS; s++) tables[s] = order[s];
  void *dqkv = kt_act(be, NULL, 64 * 3 * PHD), *dout = kt_act(be, NULL, 64 * PHD);
  float *result = NULL, *qkv = malloc(sizeof(float) * 64 * 3 * PHD);
  for (int step = 0; step < 2; step++) {
    int32_t q_len[8], ctx[8], tab[8 * P_MAX_BLOCKS];
    int m = 0, row = 0, x_row = -1;
    for (int s = 0; s < n; s++) {
      int q = step == 0 ? seqs[s].prefix : seqs[s].chunk;
      if (q == 0) continue;
      q_len[m] = q;
      ctx[m] = step == 0 ? seqs[s].prefix : seqs[s].prefix + seqs[s].chunk;
      memcpy(tab + m * P_MAX_BLOCKS, tables + s * P_MAX_BLOCKS, sizeof(int32_t) * P_MAX_BLOCKS);
      if (s == x_index) x_row = row;
      for (int i = 0; i < q; i++, row++)
        fill_seeded(qkv + (int64_t)row * 3 * PHD, 3 * PHD,
                    (uint64_t)seqs[s].id * 1000003u + (uint64_t)(ctx[m] - q + i));
      m++;
    }
    kt_batch_t kb;
    kt_batch_tables(&kb, m, q_len, ctx, P_MAX_BLOCKS, tab);
    es_backend_write_act(be, dqkv, qkv, (size_t)row * 3 * PHD, &err);
    T_CHECK(es_backend_begin_step(be, &kb.b, &err) == 0, "begin_step: %s", err.msg);
    T_CHECK(es_op_rope_kv_store(be, 1, dqkv, 3 * PHD, (float *)dqkv + PHD, 3 * PHD, (float *)dqkv + 2 * PHD, 3 * PHD,
                                PH, PD, 10000.0f, &err) == 0,
            "rope_kv_store: %s", err.msg);
    T_CHECK(es_op_attention_paged(be, 1, dout, dqkv, 3 * PHD, PH, PD, 0.15811388f, &err) == 0, "attention: %s",
            err.msg);
    T_CHECK(es_backend_end_step(be, &err) == 0, "end_step: %s", err.msg);
    if (step == 1 && x_row >= 0) {
      int c = seqs[x_index].chunk;
      float *q = kt_read(be, dqkv, (int64_t)row * 3 * PHD), *o = kt_read(be, dout, (int64_t)row * PHD);
      result = malloc(sizeof(float) * (size_t)(c * 2 * PHD));
      for (int i = 0; i < c; i++) {
        memcpy(result + i * 2 * PHD, q + (int64_t)(x_row + i) * 3 * PHD, sizeof(float) * PHD);
        memcpy(result + i * 2 * PHD + PHD, o + (int64_t)(x_row + i) * PHD, sizeof(float) * PHD);
      }
      free(q);
      free(o);
    }
  }
  free(qkv);
  es_backend_free(be);
  return result;
}

static void check_paged(void) {
  const seqspec_t alone[1] = {{7, 33, 7}};
  const seqspec_t mixed[4] = {{3, 20, 1}, {7, 33, 7}, {5, 5, 12}, {9, 0, 17}};
  float *ref = paged_scenario(1, alone, 1, 0, 1);
  T_CHECK(ref != NULL, "paged: no result");
  if (!ref) return;
  for (int t = 0; t < N_THREADS_CASES; t++) {
    float *a = paged_scenario(THREADS[t], alone, 1, 0, 2 + (uint64_t)t);
    float *b = paged_scenario(THREADS[t], mixed, 4, 1, 10 + (uint64_t)t);
    T_CHECK(a && same(ref, a, 7 * 2 * PHD), "paged: alone on %d threads / other blocks differs", THREADS[t]);
    T_CHECK(b && same(ref, b, 7 * 2 * PHD), "paged: in a 37-row step on %d threads differs from alone", THREADS[t]);
    free(a);
    free(b);
  }
  free(ref);
}

int main(void) {
  for (int p = 0; p < 2; p++) {
    cpu_gemm_path_t path = p ? CPU_GEMM_BLAS : CPU_GEMM_C;
    es_backend_t *probe = kt_backend(1, 1, 1, 1);
    es_error_t err;
    int ok = probe && cpu_backend_set_gemm_path(probe, path, &err) == 0;
    es_backend_free(probe);
    if (!ok) {
      printf("GEMM path %s not built: skipped\n", p ? "openblas" : "c");
      continue;
    }
    static const es_dtype_t dts[3] = {ES_DT_BF16, ES_DT_F16, ES_DT_F32};
    for (int d = 0; d < 3; d++) {
      check_rows(p ? "linear/openblas" : "linear/c", OP_LINEAR, path, dts[d], 37, 130, 67);
      check_rows(p ? "logits/openblas" : "logits/c", OP_LOGITS, path, dts[d], 37, 64, 333);
    }
    check_rows(p ? "linear/openblas" : "linear/c", OP_LINEAR, path, ES_DT_BF16, 300, 96, 150); /* > one M tile */
    check_conv(path);
  }
  check_rows("layer_norm", OP_LAYER_NORM, CPU_GEMM_C, ES_DT_BF16, 37, 1280, 0);
  check_rows("rms_norm", OP_RMS_NORM, CPU_GEMM_C, ES_DT_BF16, 37, 4096, 0);
  check_dense();
  check_paged();
  return t_finish();
}
