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
#include "fp8_math.h"

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

/* ---- the fp8 KV cache (backend.h) ----------------------------------------------------------------------------
 * 1. The store: one prefill step of es_op_rope_kv_store writes every position; each stored row's scale must be
 *    amax / 448 of the row as the op left it (k rotated in place, v as given) and each code e4m3(x / scale),
 *    computed here from the formula (the encoder itself is checked against torch in test_fp8_math).
 * 2. The read: test_paged's mixed step with fp8 = 1, over a pool of random codes and scales, against the double
 *    reference on decode(code) · scale. */

static double fp8_value(const cpu_backend_t *cb, size_t row, int D, int d) {
  return (double)es_fp8_decode(((const uint8_t *)cb->kv)[row * (size_t)D + (size_t)d]) * cb->kv_scale[row];
}

static es_backend_t *fp8_backend(int max_blocks) {
  es_backend_opts_t o = {.compute_dtype = ES_DT_F32,
                         .n_threads = 3,
                         .max_tokens = KT_MAX_TOKENS,
                         .max_seqs = 8,
                         .max_blocks = (size_t)max_blocks,
                         .kv_fp8 = 1};
  es_backend_t *be = NULL;
  es_error_t err;
  T_CHECK(es_backend_create_cpu(&o, &be, &err) == 0, "create cpu backend (fp8 KV cache): %s", err.msg);
  return be;
}

static void test_fp8_store(int H, int D) {
  const int L = 2, layer = 1, n_blocks = 12, max_blocks = 8;
  es_backend_t *be = fp8_backend(max_blocks);
  if (!be) return;
  es_error_t err;
  T_CHECK(es_backend_kv_init(be, L, n_blocks, H, D, &err) == 0, "kv_init: %s", err.msg);
  T_CHECK(es_backend_kv_block_bytes(be, L, H, D) == (size_t)L * 2 * H * ES_KV_BLOCK * ((size_t)D + 4),
          "fp8 kv_block_bytes: codes + one float per row");
  const cpu_backend_t *cb = (const cpu_backend_t *)be;
  int32_t order[16], q_len[2] = {37, 5}, ctx[2] = {37, 5};
  kt_shuffled_blocks(order, n_blocks);
  int next = 0;
  kt_batch_t kb;
  kt_batch(&kb, 2, q_len, ctx, max_blocks, order, &next);
  int64_t n = kb.b.n_tokens, HD = (int64_t)H * D, ld = 3 * HD;
  float *qkv = malloc(sizeof(float) * (size_t)(n * ld));
  kt_fill(qkv, n * ld, -3, 3);
  for (int64_t i = 0; i < n; i++) /* a row of zeros (scale 1, codes 0) and one with a tiny range (subnormals) */
    for (int64_t d = 0; d < HD; d++) {
      if (i == 3) qkv[i * ld + 2 * HD + d] = 0.0f;
      if (i == 4) qkv[i * ld + 2 * HD + d] *= 1e-5f;
    }
  void *dqkv = kt_act(be, qkv, n * ld);
  T_CHECK(es_backend_begin_step(be, &kb.b, &err) == 0, "begin_step: %s", err.msg);
  T_CHECK(es_op_rope_kv_store(be, layer, dqkv, ld, (float *)dqkv + HD, ld, (float *)dqkv + 2 * HD, ld, H, D, 10000.0f,
                              &err) == 0,
          "rope_kv_store: %s", err.msg);
  T_CHECK(es_backend_end_step(be, &err) == 0, "end_step: %s", err.msg);
  float *after = kt_read(be, dqkv, n * ld); /* k rotated in place */
  int bad_scale = 0, bad_code = 0;
  double worst = 0;
  for (int s = 0; s < 2; s++)
    for (int32_t i = kb.q_start[s]; i < kb.q_start[s + 1]; i++) {
      int32_t p = kb.pos[i], blk = kb.table[s * max_blocks + p / ES_KV_BLOCK];
      for (int kv = 0; kv < 2; kv++)
        for (int h = 0; h < H; h++) {
          const float *x = after + (int64_t)i * ld + (1 + kv) * HD + (int64_t)h * D;
          size_t row = kt_kv_row(n_blocks, H, layer, blk, kv, h, p % ES_KV_BLOCK);
          float amax = 0.0f;
          for (int d = 0; d < D; d++) amax = fabsf(x[d]) > amax ? fabsf(x[d]) : amax;
          float want_scale = amax > 0.0f ? amax / 448.0f : 1.0f;
          if (cb->kv_scale[row] != want_scale) bad_scale++;
          for (int d = 0; d < D; d++) {
            if (((const uint8_t *)cb->kv)[row * (size_t)D + (size_t)d] != es_fp8_encode(x[d] / want_scale)) bad_code++;
            double e = fabs(fp8_value(cb, row, D, d) - x[d]) / (amax > 0.0f ? amax : 1.0f);
            worst = e > worst ? e : worst;
          }
          if (i == 3 && kv == 1) T_CHECK(cb->kv_scale[row] == 1.0f, "a row of zeros has scale 1");
        }
    }
  T_CHECK(bad_scale == 0, "fp8 store H=%d D=%d: %d row scales are not amax / 448", H, D, bad_scale);
  T_CHECK(bad_code == 0, "fp8 store H=%d D=%d: %d codes are not e4m3(x / scale)", H, D, bad_code);
  /* e4m3 keeps 3 mantissa bits: |error| <= 2^-4 of the value's binade, so <= amax / 16 (1/32 for normals) */
  T_CHECK(worst <= 1.0 / 16, "fp8 store H=%d D=%d: worst error %.4f of the row's amax", H, D, worst);
  free(after);
  free(qkv);
  es_backend_free(be);
}

/* fp8: the pool holds random codes (every one but the two NaNs) and row scales instead of fp32 values, and the
 * reference reads decode(code) · scale (the fp8 KV cache of backend.h). */
static void test_paged(int H, int D, int n_seqs, const int32_t *q_len, const int32_t *ctx_len, int fp8) {
  const int L = 2, layer = 1, n_blocks = 48, max_blocks = 12;
  es_backend_t *be = fp8 ? fp8_backend(max_blocks) : kt_backend(3, KT_MAX_TOKENS, 8, max_blocks);
  if (!be) return;
  es_error_t err;
  T_CHECK(es_backend_kv_init(be, L, n_blocks, H, D, &err) == 0, "kv_init: %s", err.msg);
  cpu_backend_t *cb = (cpu_backend_t *)be;
  float *pool = cb->kv;
  size_t rows = (size_t)L * n_blocks * 2 * (size_t)H * ES_KV_BLOCK;
  int32_t order[64];
  kt_shuffled_blocks(order, n_blocks);
  int next = 0;
  kt_batch_t kb;
  kt_batch(&kb, n_seqs, q_len, ctx_len, max_blocks, order, &next);
  if (fp8) {
    uint8_t *codes = cb->kv;
    unsigned r = 7;
    for (size_t i = 0; i < rows * (size_t)D; i++) {
      uint8_t c = (uint8_t)((r = r * 1103515245u + 12345u) >> 16);
      codes[i] = (c & 0x7f) == 0x7f ? (uint8_t)(c ^ 1u) : c;
    }
    for (size_t i = 0; i < rows; i++) cb->kv_scale[i] = (float)(1 + (i * 7919) % 13) / 1024.0f; /* 2^-10 .. 13·2^-10 */
  } else {
    kt_fill(pool, (int64_t)(rows * (size_t)D), 50, 60); /* garbage everywhere; the positions in use get real values */
    for (int s = 0; s < n_seqs; s++)
      for (int32_t p = 0; p < ctx_len[s]; p++) {
        int32_t blk = kb.table[s * max_blocks + p / ES_KV_BLOCK];
        for (int kv = 0; kv < 2; kv++)
          for (int h = 0; h < H; h++)
            kt_fill(kt_kv_at(pool, n_blocks, H, D, layer, blk, kv, h, p % ES_KV_BLOCK), D, -1, 1);
      }
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
  float *deq = fp8 ? malloc(sizeof(float) * (size_t)(2 * KT_MAX_BLOCKS * ES_KV_BLOCK * D)) : NULL;
  const float **kr = malloc(sizeof(float *) * KT_MAX_BLOCKS * ES_KV_BLOCK),
              **vr = malloc(sizeof(float *) * KT_MAX_BLOCKS * ES_KV_BLOCK);
  for (int s = 0; s < n_seqs; s++)
    for (int32_t i = kb.q_start[s]; i < kb.q_start[s + 1]; i++) {
      int32_t p = kb.pos[i];
      for (int h = 0; h < H; h++) {
        for (int32_t j = 0; j <= p; j++) {
          int32_t blk = kb.table[s * max_blocks + j / ES_KV_BLOCK];
          for (int kv = 0; kv < 2; kv++) {
            if (!fp8) {
              (kv ? vr : kr)[j] = kt_kv_at(pool, n_blocks, H, D, layer, blk, kv, h, j % ES_KV_BLOCK);
              continue;
            }
            size_t row = kt_kv_row(n_blocks, H, layer, blk, kv, h, j % ES_KV_BLOCK);
            float *dst = deq + ((size_t)(2 * j + kv)) * (size_t)D;
            for (int d = 0; d < D; d++) dst[d] = (float)fp8_value(cb, row, D, d);
            (kv ? vr : kr)[j] = dst;
          }
        }
        ref_attend(ref + (int64_t)i * HD + h * D, q + (int64_t)i * ldq + h * D, kr, vr, p + 1, D, scale);
      }
    }
  char what[112];
  snprintf(what, sizeof what, "attention_paged%s H=%d D=%d seqs=%d tokens=%lld", fp8 ? ", fp8 KV cache," : "", H, D,
           n_seqs, (long long)n);
  kt_close(what, out, ref, NULL, n * HD, 2e-6, 1e-5);
  free(kr);
  free(vr);
  free(deq);
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
  test_fp8_store(3, 10);
  test_fp8_store(2, 128);
  {
    int32_t q[4] = {21, 7, 1, 1}, c[4] = {21, 40, 17, 1};
    test_paged(3, 10, 4, q, c, 1);
    test_paged(2, 64, 4, q, c, 1);
  }
  {
    es_backend_t *be = fp8_backend(4); /* head dims past the dequantisation buffer are refused at kv_init */
    es_error_t err;
    if (be) T_CHECK(es_backend_kv_init(be, 1, 4, 1, ES_KV_FP8_MAX_D + 2, &err) == ES_EUNSUPPORTED, "fp8 head dim");
    es_backend_free(be);
  }
  {
    int32_t q[4] = {21, 7, 1, 1}, c[4] = {21, 40, 17, 1}; /* prefill, chunk over a 33-token prefix, decodes */
    test_paged(3, 10, 4, q, c, 0);
    test_paged(2, 64, 4, q, c, 0);
  }
  {
    int32_t q[1] = {1}, c[1] = {150}; /* one decode over ten blocks */
    test_paged(1, 128, 1, q, c, 0);
  }
  {
    int32_t q[3] = {16, 33, 2}, c[3] = {32, 33, 18};
    test_paged(4, 8, 3, q, c, 0);
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
