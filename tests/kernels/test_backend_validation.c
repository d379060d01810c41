/* test_backend_validation: the device-independent checks of kernels/backend.c, exercised through the CPU
 * backend — each bad call returns the documented code with a message, and a good call next to it succeeds
 * (so a check that rejects everything fails too). Also the CPU backend's own refusals and its life cycle
 * (create/free with several thread counts, free(NULL)).
 */
#include "kernel_test.h"

#include "cpu/cpu_backend.h"

#define EXPECT(call, code, what)                                                                                       \
  do {                                                                                                                 \
    es_error_t e_ = {0};                                                                                               \
    int rc_ = (call);                                                                                                  \
    T_CHECK(rc_ == (code), "%s: rc %d, want %d (%s)", what, rc_, (int)(code), e_.msg);                                 \
    if ((code) != 0) T_CHECK(e_.msg[0] != '\0', "%s: no error message", what);                                         \
  } while (0)
#define E (&e_)

static es_backend_opts_t opts(void) {
  return (es_backend_opts_t){
      .compute_dtype = ES_DT_F32, .n_threads = 2, .max_tokens = 32, .max_seqs = 4, .max_blocks = 4};
}

static void test_create(void) {
  es_backend_t *be = NULL;
  es_backend_opts_t o = opts();
  o.compute_dtype = ES_DT_BF16;
  EXPECT(es_backend_create_cpu(&o, &be, E), ES_EUNSUPPORTED, "bf16 compute on the CPU");
  T_CHECK(be == NULL, "failed create left a backend");
  o = opts();
  o.max_tokens = 0;
  EXPECT(es_backend_create_cpu(&o, &be, E), ES_EINVAL, "max_tokens 0");
  o = opts();
  o.n_threads = -1;
  EXPECT(es_backend_create_cpu(&o, &be, E), ES_EINVAL, "negative threads");
  for (int t = 0; t <= 4; t++) { /* 0 = online cores */
    o = opts();
    o.n_threads = t;
    EXPECT(es_backend_create_cpu(&o, &be, E), ES_OK, "create");
    if (be) T_CHECK(strncmp(es_backend_name(be), "cpu", 3) == 0 && es_backend_healthy(be), "name/health");
    es_backend_free(be);
    be = NULL;
  }
  es_backend_free(NULL);
}

static void test_steps(void) {
  es_backend_t *be = NULL;
  es_backend_opts_t o = opts();
  EXPECT(es_backend_create_cpu(&o, &be, E), ES_OK, "create");
  if (!be) return;
  /* a valid one-sequence batch: 3 tokens at positions 0..2 in block 1 */
  int32_t q_start[2] = {0, 3}, ctx[1] = {3}, pos[3] = {0, 1, 2}, slot[3] = {16, 17, 18}, table[4] = {1, 0, 0, 0};
  es_batch_t b = {.n_seqs = 1,
                  .n_tokens = 3,
                  .q_start = q_start,
                  .ctx_len = ctx,
                  .positions = pos,
                  .slot = slot,
                  .block_table = table,
                  .max_blocks = 4};
  EXPECT(es_backend_begin_step(be, &b, E), ES_EINTERNAL, "step before the KV cache");
  EXPECT(es_backend_kv_init(be, 2, 1, 2, 8, E), ES_EINVAL, "one block (block 0 is scratch)");
  EXPECT(es_backend_kv_init(be, 2, 6, 2, 8, E), ES_OK, "kv_init");
  EXPECT(es_backend_kv_init(be, 2, 6, 2, 8, E), ES_EINTERNAL, "second kv_init");
  T_CHECK(es_backend_kv_block_bytes(be, 2, 2, 8) == 2 * 2 * 2 * 16 * 8 * 4, "kv_block_bytes");

  es_batch_t bad = b;
  bad.n_seqs = 5;
  EXPECT(es_backend_begin_step(be, &bad, E), ES_EINVAL, "too many sequences");
  bad = b;
  bad.n_tokens = 33;
  EXPECT(es_backend_begin_step(be, &bad, E), ES_EINVAL, "too many tokens");
  bad = b;
  bad.max_blocks = 5;
  EXPECT(es_backend_begin_step(be, &bad, E), ES_EINVAL, "max_blocks over capacity");
  int32_t qs_bad[2] = {0, 2};
  bad = b;
  bad.q_start = qs_bad;
  EXPECT(es_backend_begin_step(be, &bad, E), ES_EINVAL, "q_start not ending at n_tokens");
  int32_t ctx_short[1] = {2};
  bad = b;
  bad.ctx_len = ctx_short;
  EXPECT(es_backend_begin_step(be, &bad, E), ES_EINVAL, "context shorter than the new tokens");
  int32_t ctx_long[1] = {65};
  bad = b;
  bad.ctx_len = ctx_long;
  EXPECT(es_backend_begin_step(be, &bad, E), ES_EINVAL, "context past max_blocks");
  int32_t table0[4] = {0, 0, 0, 0}, table_big[4] = {6, 0, 0, 0};
  bad = b;
  bad.block_table = table0;
  EXPECT(es_backend_begin_step(be, &bad, E), ES_EINVAL, "block 0 (scratch) in a table");
  bad.block_table = table_big;
  EXPECT(es_backend_begin_step(be, &bad, E), ES_EINVAL, "block id past the pool");
  int32_t slot_bad[3] = {16, 18, 17};
  bad = b;
  bad.slot = slot_bad;
  EXPECT(es_backend_begin_step(be, &bad, E), ES_EINVAL, "slots not matching the block table");
  int32_t pos_neg[3] = {-1, 1, 2};
  bad = b;
  bad.positions = pos_neg;
  EXPECT(es_backend_begin_step(be, &bad, E), ES_EINVAL, "negative position");

  void *buf = NULL;
  EXPECT(es_backend_alloc(be, 4096, &buf, E), ES_OK, "alloc before the step");
  T_CHECK(buf && ((uintptr_t)buf % 256) == 0, "alloc is 256-byte aligned");
  int zero = 1;
  for (int i = 0; buf && i < 4096; i++) zero &= ((unsigned char *)buf)[i] == 0;
  T_CHECK(zero, "alloc is zero-filled");
  void *dx = kt_act(be, NULL, 3 * 3 * 16);
  EXPECT(es_op_rope_kv_store(be, 0, dx, 48, (float *)dx + 16, 48, (float *)dx + 32, 48, 2, 8, 1e4f, E), ES_EINVAL,
         "rope outside a step");
  EXPECT(es_op_attention_paged(be, 0, buf, dx, 48, 2, 8, 0.3f, E), ES_EINVAL, "attention outside a step");
  /* the q|k|v linear with RoPE and the KV store: 3 sections of 2 heads x 8 (48 rows), K = 8 */
  static float wq[48 * 8];
  for (int i = 0; i < 48 * 8; i++) wq[i] = 0.01f * (float)(i % 7);
  es_weight_t wqkv, w47;
  EXPECT(es_backend_upload_weight(be, wq, ES_DT_F32, 48, 8, &wqkv, E), ES_OK, "q|k|v weight");
  EXPECT(es_backend_upload_weight(be, wq, ES_DT_F32, 47, 8, &w47, E), ES_OK, "a weight of 47 rows");
  void *qkv = kt_act(be, NULL, 4 * 56), *xin = kt_act(be, NULL, 4 * 8);
  EXPECT(es_op_linear_rope_kv_store(be, 0, qkv, 56, xin, 8, &wqkv, NULL, 2, 8, 1e4f, E), ES_EINVAL,
         "linear_rope_kv_store outside a step");
  EXPECT(es_backend_end_step(be, E), ES_EINTERNAL, "end_step without begin_step");

  EXPECT(es_backend_begin_step(be, &b, E), ES_OK, "begin_step");
  pos[0] = 99; /* the backend keeps its own copy of the batch */
  T_CHECK(be->batch.positions[0] == 0, "batch arrays were not copied");
  EXPECT(es_backend_begin_step(be, &b, E), ES_EINTERNAL, "begin_step inside a step");
  void *buf2 = NULL;
  EXPECT(es_backend_alloc(be, 64, &buf2, E), ES_EINTERNAL, "alloc inside a step");
  float w[4] = {1, 2, 3, 4};
  es_weight_t ww;
  EXPECT(es_backend_upload_weight(be, w, ES_DT_F32, 2, 2, &ww, E), ES_EINTERNAL, "weight upload inside a step");
  EXPECT(es_op_rope_kv_store(be, 2, dx, 48, (float *)dx + 16, 48, (float *)dx + 32, 48, 2, 8, 1e4f, E), ES_EINVAL,
         "rope on layer 2 of 2");
  EXPECT(es_op_rope_kv_store(be, 0, dx, 48, (float *)dx + 16, 48, (float *)dx + 32, 48, 3, 8, 1e4f, E), ES_EINVAL,
         "rope with 3 heads, cache has 2");
  EXPECT(es_op_rope_kv_store(be, 0, dx, 8, (float *)dx + 16, 48, (float *)dx + 32, 48, 2, 8, 1e4f, E), ES_EINVAL,
         "rope with ldq < H·D");
  EXPECT(es_op_rope_kv_store(be, 0, dx, 48, (float *)dx + 16, 48, (float *)dx + 32, 48, 2, 8, 1e4f, E), ES_OK, "rope");
  EXPECT(es_op_linear_rope_kv_store(be, 0, qkv, 56, xin, 8, &wqkv, NULL, 2, 8, 1e4f, E), ES_OK, "linear_rope_kv_store");
  EXPECT(es_op_linear_rope_kv_store(be, 0, qkv, 56, xin, 8, &w47, NULL, 2, 8, 1e4f, E), ES_EINVAL,
         "linear_rope_kv_store with 47 weight rows");
  EXPECT(es_op_linear_rope_kv_store(be, 0, qkv, 56, xin, 8, &wqkv, NULL, 2, 8, 1.0f, E), ES_EINVAL,
         "linear_rope_kv_store with theta 1");
  EXPECT(es_op_linear_rope_kv_store(be, 0, qkv, 40, xin, 8, &wqkv, NULL, 2, 8, 1e4f, E), ES_EINVAL,
         "linear_rope_kv_store with ldqkv < 3·H·D");
  EXPECT(es_op_linear_rope_kv_store(be, 2, qkv, 56, xin, 8, &wqkv, NULL, 2, 8, 1e4f, E), ES_EINVAL,
         "linear_rope_kv_store on layer 2 of 2");
  EXPECT(es_op_linear_rope_kv_store(be, 0, xin, 56, xin, 8, &wqkv, NULL, 2, 8, 1e4f, E), ES_EINVAL,
         "linear_rope_kv_store in place");
  EXPECT(es_op_attention_paged(be, 0, buf, dx, 48, 2, 7, 0.3f, E), ES_EINVAL, "attention with D 7, cache has 8");
  EXPECT(es_op_attention_paged(be, 0, buf, dx, 48, 2, 8, 0.3f, E), ES_OK, "attention");
  /* step graphs: the CPU has none, and says so */
  T_CHECK(!es_backend_graphs_supported(be), "the CPU backend reports step graphs");
  EXPECT(es_backend_graph_begin(be, E), ES_EUNSUPPORTED, "graph_begin on the CPU");
  EXPECT(es_backend_graph_launch(be, 0, E), ES_EINVAL, "graph_launch without a graph");
  T_CHECK(!es_backend_graph_has(be, 0) && !es_backend_graph_has(be, -1), "graph_has");
  es_backend_graph_abort(be); /* no recording: a no-op */
  EXPECT(es_backend_end_step(be, E), ES_OK, "end_step");
  EXPECT(es_backend_alloc(be, 64, &buf2, E), ES_OK, "alloc after the step");
  EXPECT(es_backend_graph_begin(be, E), ES_EUNSUPPORTED, "graph_begin outside a step");

  /* padding sequences (a graph's fixed batch size): one token at position 0 in the scratch slot 0 */
  int32_t pq[3] = {0, 3, 4}, pctx[2] = {3, 1}, ppos[4] = {0, 1, 2, 0}, pslot[4] = {16, 17, 18, 0};
  int32_t ptable[8] = {1, 0, 0, 0, 0, 0, 0, 0};
  es_batch_t pb = {.n_seqs = 2,
                   .n_tokens = 4,
                   .q_start = pq,
                   .ctx_len = pctx,
                   .positions = ppos,
                   .slot = pslot,
                   .block_table = ptable,
                   .max_blocks = 4,
                   .n_pad = 1};
  EXPECT(es_backend_begin_step(be, &pb, E), ES_OK, "a padded batch");
  EXPECT(es_backend_end_step(be, E), ES_OK, "end_step");
  es_batch_t pbad = pb;
  pbad.n_pad = 2;
  EXPECT(es_backend_begin_step(be, &pbad, E), ES_EINVAL, "every sequence padding");
  pbad.n_pad = -1;
  EXPECT(es_backend_begin_step(be, &pbad, E), ES_EINVAL, "negative padding");
  pbad = pb;
  pslot[3] = 1;
  EXPECT(es_backend_begin_step(be, &pbad, E), ES_EINVAL, "padding outside slot 0");
  pslot[3] = 0;
  ptable[5] = 2;
  EXPECT(es_backend_begin_step(be, &pbad, E), ES_EINVAL, "padding with a real block");
  ptable[5] = 0;
  pctx[1] = 2;
  EXPECT(es_backend_begin_step(be, &pbad, E), ES_EINVAL, "padding with a longer context");
  pctx[1] = 1;
  pbad.n_pad = 0;
  EXPECT(es_backend_begin_step(be, &pbad, E), ES_EINVAL, "block 0 in an unpadded sequence");
  es_backend_free(be);
}

static void test_op_shapes(void) {
  es_backend_t *be = NULL;
  es_backend_opts_t o = opts();
  EXPECT(es_backend_create_cpu(&o, &be, E), ES_OK, "create");
  if (!be) return;
  kt_weight_t kw = kt_weight(ES_DT_BF16, 6, 4, -1, 1), kb = kt_weight(ES_DT_BF16, 6, 1, -1, 1),
              kb5 = kt_weight(ES_DT_BF16, 5, 1, -1, 1), kc = kt_weight(ES_DT_F32, 6, 9, -1, 1);
  es_weight_t w = kt_upload(be, &kw), bias = kt_upload(be, &kb), bias5 = kt_upload(be, &kb5), wc = kt_upload(be, &kc);
  es_weight_t w_unknown = w;
  w_unknown.n1 = 4096; /* never uploaded: the scratch was not sized for it */
  void *x = kt_act(be, NULL, 256), *y = kt_act(be, NULL, 256);
  EXPECT(es_op_linear(be, y, 6, x, 4, &w, &bias, 3, ES_ACT_NONE, 0, E), ES_OK, "linear");
  EXPECT(es_op_linear(be, y, 6, x, 4, &w, &bias, 0, ES_ACT_NONE, 0, E), ES_EINVAL, "linear M 0");
  EXPECT(es_op_linear(be, y, 6, x, 3, &w, &bias, 3, ES_ACT_NONE, 0, E), ES_EINVAL, "linear ldx < K");
  EXPECT(es_op_linear(be, y, 5, x, 4, &w, &bias, 3, ES_ACT_NONE, 0, E), ES_EINVAL, "linear ldy < N");
  EXPECT(es_op_linear(be, y, 6, x, 4, &w, &bias5, 3, ES_ACT_NONE, 0, E), ES_EINVAL, "linear bias length");
  EXPECT(es_op_linear(be, x, 6, x, 4, &w, &bias, 3, ES_ACT_NONE, 0, E), ES_EINVAL, "linear in place");
  EXPECT(es_op_linear(be, y, 4096, x, 4096, &w_unknown, NULL, 1, ES_ACT_NONE, 0, E), ES_EINVAL,
         "linear with a weight never uploaded");
  EXPECT(es_op_conv1d(be, y, x, &wc, NULL, 1, 5, 3, 3, 1, 1, ES_ACT_GELU, E), ES_OK, "conv1d");
  EXPECT(es_op_conv1d(be, y, x, &wc, NULL, 1, 5, 4, 3, 1, 1, ES_ACT_GELU, E), ES_EINVAL, "conv1d C_in·kernel != K");
  EXPECT(es_op_conv1d(be, y, x, &wc, NULL, 1, 1, 3, 3, 1, 0, ES_ACT_GELU, E), ES_EINVAL, "conv1d input too short");
  EXPECT(es_op_conv1d(be, y, x, &wc, NULL, 1, 5, 3, 3, 0, 1, ES_ACT_GELU, E), ES_EINVAL, "conv1d stride 0");
  EXPECT(es_op_layer_norm(be, y, x, &bias, &bias, 2, 6, 1e-5f, E), ES_OK, "layer_norm");
  EXPECT(es_op_layer_norm(be, y, x, &bias, &bias5, 2, 6, 1e-5f, E), ES_EINVAL, "layer_norm beta length");
  EXPECT(es_op_rms_norm(be, y, x, NULL, &bias5, 2, 6, 1e-5f, E), ES_EINVAL, "rms_norm weight length");
  EXPECT(es_op_add_rows(be, x, y, 10, 4, 3, E), ES_EINVAL, "add_rows M not a multiple of T");
  EXPECT(es_op_add_rows(be, x, y, 8, 4, 3, E), ES_OK, "add_rows");
  EXPECT(es_op_avg_pool2(be, y, x, 1, 5, 3, E), ES_EINVAL, "avg_pool2 odd T");
  EXPECT(es_op_silu_mul(be, y, x, x, 3, 2, 4, E), ES_EINVAL, "silu_mul ld < N");
  /* the gate|up linear with SiLU·mul: w (6, 4) is gate rows 0..2, up rows 3..5 */
  void *gu = kt_act(be, NULL, 256);
  EXPECT(es_op_linear_silu_mul(be, y, gu, 6, x, 4, &w, 2, E), ES_OK, "linear_silu_mul");
  EXPECT(es_op_linear_silu_mul(be, y, gu, 6, x, 4, &w, 0, E), ES_EINVAL, "linear_silu_mul M 0");
  EXPECT(es_op_linear_silu_mul(be, y, gu, 5, x, 4, &w, 2, E), ES_EINVAL, "linear_silu_mul ldgu < 2N");
  EXPECT(es_op_linear_silu_mul(be, y, gu, 6, x, 3, &w, 2, E), ES_EINVAL, "linear_silu_mul ldx < K");
  EXPECT(es_op_linear_silu_mul(be, y, gu, 6, x, 4, &bias5, 2, E), ES_EINVAL, "linear_silu_mul an odd row count");
  EXPECT(es_op_linear_silu_mul(be, x, gu, 6, x, 4, &w, 2, E), ES_EINVAL, "linear_silu_mul y overlaps x");
  EXPECT(es_op_linear_silu_mul(be, gu, gu, 6, x, 4, &w, 2, E), ES_EINVAL, "linear_silu_mul y overlaps gu");
  /* the linear with the RMSNorm after it: w (6, 4), the norm weight of 6 (bias serves: a [6] vector) */
  void *res = kt_act(be, NULL, 64), *lo = kt_act(be, NULL, 64);
  EXPECT(es_op_linear_rms_norm(be, y, res, lo, x, 4, &w, &bias, 2, 1e-6f, E), ES_OK, "linear_rms_norm");
  EXPECT(es_op_linear_rms_norm(be, y, res, lo, x, 4, &w, &bias, 0, 1e-6f, E), ES_EINVAL, "linear_rms_norm M 0");
  EXPECT(es_op_linear_rms_norm(be, y, res, lo, x, 3, &w, &bias, 2, 1e-6f, E), ES_EINVAL, "linear_rms_norm ldx < K");
  EXPECT(es_op_linear_rms_norm(be, y, res, lo, x, 4, &w, &bias5, 2, 1e-6f, E), ES_EINVAL,
         "linear_rms_norm norm weight length != N");
  EXPECT(es_op_linear_rms_norm(be, y, res, x, x, 4, &w, &bias, 2, 1e-6f, E), ES_EINVAL, "linear_rms_norm o overlaps x");
  EXPECT(es_op_linear_rms_norm(be, y, res, y, x, 4, &w, &bias, 2, 1e-6f, E), ES_EINVAL, "linear_rms_norm o overlaps y");
  EXPECT(es_op_linear_rms_norm(be, y, lo, lo, x, 4, &w, &bias, 2, 1e-6f, E), ES_EINVAL,
         "linear_rms_norm o overlaps the residual");
  int32_t valid[2] = {3, 5};
  EXPECT(es_op_attention_dense(be, y, x, 8, x, 8, x, 8, 2, 4, 2, 4, 0.5f, valid, E), ES_EINVAL, "dense valid_len > T");
  valid[1] = 0;
  EXPECT(es_op_attention_dense(be, y, x, 8, x, 8, x, 8, 2, 4, 2, 4, 0.5f, valid, E), ES_EINVAL, "dense valid_len 0");
  valid[1] = 4;
  EXPECT(es_op_attention_dense(be, y, x, 8, x, 8, x, 8, 2, 4, 2, 4, 0.5f, valid, E), ES_OK, "dense");
  EXPECT(es_op_attention_dense(be, y, x, 7, x, 8, x, 8, 2, 4, 2, 4, 0.5f, valid, E), ES_EINVAL, "dense ldq < H·D");
  int32_t ids[2] = {0, 6};
  EXPECT(es_op_embed(be, y, &w, ids, 2, E), ES_EINVAL, "embed id past the table");
  ids[1] = 5;
  EXPECT(es_op_embed(be, y, &w, ids, 2, E), ES_OK, "embed");
  ids[0] = -1;
  EXPECT(es_op_gather_rows(be, y, x, ids, 2, 4, E), ES_EINVAL, "gather negative index");
  EXPECT(es_op_scatter_rows(be, y, x, ids, 2, 4, E), ES_EINVAL, "scatter negative index");
  EXPECT(es_op_logits(be, y, x, &w, 0, E), ES_EINVAL, "logits M 0");
  EXPECT(es_backend_upload_weight(be, kw.host, ES_DT_BF16, 0, 4, &w, E), ES_EINVAL, "weight with 0 rows");
  EXPECT(es_backend_upload_weight(be, kw.host, (es_dtype_t)7, 6, 4, &w, E), ES_EINVAL, "weight of unknown dtype");
  /* weights alias the host memory in their dtype; an unaligned host pointer is copied */
  es_weight_t wa;
  EXPECT(es_backend_upload_weight(be, kw.host, ES_DT_BF16, 6, 4, &wa, E), ES_OK, "upload");
  T_CHECK(wa.data == kw.host && wa.dtype == ES_DT_BF16, "bf16 weight was not aliased");
  char *raw = malloc(6 * 4 * 4 + 1);
  memcpy(raw + 1, kc.host, 6 * 4 * 4);
  EXPECT(es_backend_upload_weight(be, raw + 1, ES_DT_F32, 6, 4, &wa, E), ES_OK, "unaligned upload");
  T_CHECK(wa.data != raw + 1 && ((uintptr_t)wa.data % 4) == 0 && memcmp(wa.data, kc.host, 6 * 4 * 4) == 0,
          "unaligned fp32 weight not copied faithfully");
  free(raw);
  es_backend_free(be);
  kt_weight_free(&kw);
  kt_weight_free(&kb);
  kt_weight_free(&kb5);
  kt_weight_free(&kc);
}

int main(void) {
  test_create();
  test_steps();
  test_op_shapes();
  return t_finish();
}
