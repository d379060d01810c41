/* test_cpu_attention: es_op_attention_paged and es_op_attention_dense of the CPU backend against naive
 * double-precision references.
 *
 * Paged: several sequences in one step — a full prefill, a chunked prefill over a cached prefix
 * (ctx_len > q_len), decodes — with shuffled block tables, contexts that are not multiples of 16, head
 * dims that are and are not multiples of 8, strided q; the cache is filled directly in the pool layout
 * of backend.h (other layers with garbage). Dense: key padding (valid_len < T), every row t < T checked,
 * strided q/k/v from a fused buffer. Outputs poisoned before each run.
 */
#include "kernel_test.h"

#include "cpu/cpu_backend.h"

static void ref_attend(double *out, const float *q, const float *const *krows, const float *const *vrows, int64_t n,
                       int D, double scale) {
  double *s = calloc((size_t)n, sizeof(double)), m = -INFINITY, sum = 0;
  for (int64_t j = 0; j < n; j++) {
    double d = 0;
    for (int c = 0; c < D; c++) d += (double)q[c] * krows[j][c];
    s[j] = d * scale;
    m = s[j] > m ? s[j] : m;
  }
  for (int64_t j = 0; j < n; j++) sum += (s[j] = exp(s[j] - m));
  for (int c = 0; c < D; c++) {
    double o = 0;
    for (int64_t j = 0; j < n; j++) o += s[j] * vrows[j][c];
    out[c] = o / sum;
  }
  free(s);
}

static void test_paged(int H, int D, int n_seqs, const int32_t *q_len, const int32_t *ctx_len) {
  const int L = 2, layer = 1, n_blocks = 48, max_blocks = 12;
  es_backend_t *be = kt_backend(3, KT_MAX_TOKENS, 8, max_blocks);
  if (!be) return;
  es_error_t err;
  T_CHECK(es_backend_kv_init(be, L, n_blocks, H, D, &err) == 0, "kv_init: %s", err.msg);
  float *pool = ((cpu_backend_t *)be)->kv;
  size_t pool_n = (size_t)L * n_blocks * 2 * (size_t)H * ES_KV_BLOCK * (size_t)D;
  kt_fill(pool, (int64_t)pool_n, 50, 60); /* garbage everywhere; the positions in use get real values below */
  int32_t order[64];
  kt_shuffled_blocks(order, n_blocks);
  int next = 0;
  kt_batch_t kb;
  kt_batch(&kb, n_seqs, q_len, ctx_len, max_blocks, order, &next);
  for (int s = 0; s < n_seqs; s++)
    for (int32_t p = 0; p < ctx_len[s]; p++) {
      int32_t blk = kb.table[s * max_blocks + p / ES_KV_BLOCK];
      for (int kv = 0; kv < 2; kv++)
        for (int h = 0; h < H; h++)
          kt_fill(kt_kv_at(pool, n_blocks, H, D, layer, blk, kv, h, p % ES_KV_BLOCK), D, -1, 1);
    }
  int64_t n = kb.b.n_tokens, HD = (int64_t)H * D, ldq = HD + 5;
  float *q = malloc(sizeof(float) * (size_t)(n * ldq));
  kt_fill(q, n * ldq, -2, 2);
  void *dq = kt_act(be, q, n * ldq), *dout = kt_act(be, NULL, n * HD);
  float scale = 1.0f / sqrtf((float)D);
  T_CHECK(es_backend_begin_step(be, &kb.b, &err) == 0, "begin_step: %s", err.msg);
  T_CHECK(es_op_attention_paged(be, layer, dout, dq, ldq, H, D, scale, &err) == 0, "attention_paged: %s", err.msg);
  T_CHECK(es_backend_end_step(be, &err) == 0, "end_step: %s", err.msg);
  float *out = kt_read(be, dout, n * HD);
  double *ref = calloc((size_t)(n * HD), sizeof(double));
  const float **kr = malloc(sizeof(float *) * KT_MAX_BLOCKS * ES_KV_BLOCK),
              **vr = malloc(sizeof(float *) * KT_MAX_BLOCKS * ES_KV_BLOCK);
  for (int s = 0; s < n_seqs; s++)
    for (int32_t i = kb.q_start[s]; i < kb.q_start[s + 1]; i++) {
      int32_t p = kb.pos[i];
      for (int h = 0; h < H; h++) {
        for (int32_t j = 0; j <= p; j++) {
          int32_t blk = kb.table[s * max_blocks + j / ES_KV_BLOCK];
          kr[j] = kt_kv_at(pool, n_blocks, H, D, layer, blk, 0, h, j % ES_KV_BLOCK);
          vr[j] = kt_kv_at(pool, n_blocks, H, D, layer, blk, 1, h, j % ES_KV_BLOCK);
        }
        ref_attend(ref + (int64_t)i * HD + h * D, q + (int64_t)i * ldq + h * D, kr, vr, p + 1, D, scale);
      }
    }
  char what[96];
  snprintf(what, sizeof what, "attention_paged H=%d D=%d seqs=%d tokens=%lld", H, D, n_seqs, (long long)n);
  kt_close(what, out, ref, NULL, n * HD, 2e-6, 1e-5);
  free(kr);
  free(vr);
  free(ref);
  free(out);
  free(q);
  es_backend_free(be);
}

static void test_dense(int64_t B, int64_t T, int H, int D, const int32_t *valid_len) {
  es_backend_t *be = kt_backend(3, 16, 1, 1);
  if (!be) return;
  int64_t HD = (int64_t)H * D, ld = 3 * HD + 1;
  float *qkv = malloc(sizeof(float) * (size_t)(B * T * ld));
  kt_fill(qkv, B * T * ld, -2, 2);
  void *d = kt_act(be, qkv, B * T * ld), *dout = kt_act(be, NULL, B * T * HD);
  float scale = 1.0f / sqrtf((float)D);
  es_error_t err;
  T_CHECK(es_op_attention_dense(be, dout, d, ld, (float *)d + HD, ld, (float *)d + 2 * HD, ld, B, T, H, D, scale,
                                valid_len, &err) == 0,
          "attention_dense: %s", err.msg);
  float *out = kt_read(be, dout, B * T * HD);
  double *ref = calloc((size_t)(B * T * HD), sizeof(double));
  const float **kr = malloc(sizeof(float *) * (size_t)T), **vr = malloc(sizeof(float *) * (size_t)T);
  for (int64_t b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      for (int64_t j = 0; j < valid_len[b]; j++) {
        kr[j] = qkv + (b * T + j) * ld + HD + h * D;
        vr[j] = qkv + (b * T + j) * ld + 2 * HD + h * D;
      }
      for (int64_t t = 0; t < T; t++)
        ref_attend(ref + (b * T + t) * HD + h * D, qkv + (b * T + t) * ld + h * D, kr, vr, valid_len[b], D, scale);
    }
  char what[96];
  snprintf(what, sizeof what, "attention_dense B=%lld T=%lld H=%d D=%d", (long long)B, (long long)T, H, D);
  kt_close(what, out, ref, NULL, B * T * HD, 2e-6, 1e-5);
  free(kr);
  free(vr);
  free(ref);
  free(out);
  free(qkv);
  es_backend_free(be);
}

int main(void) {
  {
    int32_t q[4] = {21, 7, 1, 1}, c[4] = {21, 40, 17, 1}; /* prefill, chunk over a 33-token prefix, decodes */
    test_paged(3, 10, 4, q, c);
    test_paged(2, 64, 4, q, c);
  }
  {
    int32_t q[1] = {1}, c[1] = {150}; /* one decode over ten blocks */
    test_paged(1, 128, 1, q, c);
  }
  {
    int32_t q[3] = {16, 33, 2}, c[3] = {32, 33, 18};
    test_paged(4, 8, 3, q, c);
  }
  {
    int32_t v[3] = {13, 5, 1};
    test_dense(3, 13, 2, 12, v);
  }
  {
    int32_t v[2] = {37, 20};
    test_dense(2, 37, 3, 64, v);
  }
  {
    int32_t v[1] = {7};
    test_dense(1, 7, 1, 5, v);
  }
  return t_finish();
}
