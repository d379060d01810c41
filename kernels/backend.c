/* backend.c: the public entry points of backend.h. Device-independent validation, then dispatch.
 * Thread safety: as backend.h (one driving thread per backend).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend_impl.h"

size_t es_dtype_size(es_dtype_t dt) { return dt == ES_DT_F32 ? 4 : dt == ES_DT_FP8E4M3 ? 1 : 2; }

const char *es_dtype_name(es_dtype_t dt) {
  switch (dt) {
  case ES_DT_F32: return "float32";
  case ES_DT_BF16: return "bfloat16";
  case ES_DT_F16: return "float16";
  case ES_DT_FP8E4M3: return "fp8_e4m3";
  }
  return "?";
}

int es_backend_base_init(es_backend_t *be, es_error_t *err) {
  const es_backend_opts_t *o = &be->opts;
  if (o->max_tokens < 1 || o->max_seqs < 1 || o->max_blocks < 1)
    return es_fail(err, ES_EINVAL, "backend: max_tokens, max_seqs and max_blocks must be >= 1");
  if (o->max_tokens > (1u << 24) || o->max_seqs > (1u << 16) || o->max_blocks > (1u << 20))
    return es_fail(err, ES_ETOOBIG, "backend: batch capacity too large");
  size_t n = (o->max_seqs + 1) + o->max_seqs + 2 * o->max_tokens + o->max_seqs * o->max_blocks;
  be->batch_mem = calloc(n, sizeof(int32_t));
  if (!be->batch_mem) return es_fail(err, ES_ENOMEM, "backend: cannot allocate the batch description");
  be->healthy = 1;
  return ES_OK;
}

void es_backend_base_free(es_backend_t *be) {
  es_backend_prof_release(be);
  free(be->batch_mem);
  be->batch_mem = NULL;
}

void es_backend_free(es_backend_t *be) {
  if (be) be->ops->destroy(be);
}

const char *es_backend_name(const es_backend_t *be) { return be->name; }
es_dtype_t es_backend_act_dtype(const es_backend_t *be) { return be->act_dtype; }
int es_backend_healthy(const es_backend_t *be) { return be->healthy; }
int es_backend_aliases_host(const es_backend_t *be) { return strcmp(be->ops->kind, "cpu") == 0; }

/* A failed device call leaves the backend unusable; the engine checks es_backend_healthy. */
static int track(es_backend_t *be, int rc) {
  if (rc == ES_EDEVICE) be->healthy = 0;
  return rc;
}

#define CHECK_HEALTHY(be, err)                                                                                   \
  do {                                                                                                           \
    if (!(be)->healthy) return es_fail((err), ES_EDEVICE, "%s: backend unusable after an earlier device error", \
                                       (be)->name);                                                              \
  } while (0)

/* Host transfers, allocation and sync would not be part of a recorded graph: refused while recording. */
#define NOT_RECORDING(be, what, err)                                                                            \
  do {                                                                                                          \
    if ((be)->recording) return es_fail((err), ES_EINTERNAL, "%s: %s while recording a graph", (be)->name, what); \
  } while (0)

int es_backend_alloc(es_backend_t *be, size_t bytes, void **out, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NOT_RECORDING(be, "allocation", err);
  if (be->in_step) return es_fail(err, ES_EINTERNAL, "%s: allocation inside a step", be->name);
  return track(be, be->ops->alloc(be, bytes, out, err));
}

int es_backend_upload_weight(es_backend_t *be, const void *host, es_dtype_t src_dtype, int64_t n0, int64_t n1,
                             es_weight_t *out, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NOT_RECORDING(be, "weight upload", err);
  if (be->in_step) return es_fail(err, ES_EINTERNAL, "%s: weight upload inside a step", be->name);
  if (n0 < 1 || n1 < 1) return es_fail(err, ES_EINVAL, "%s: weight shape [%lld, %lld]", be->name, (long long)n0,
                                       (long long)n1);
  *out = (es_weight_t){0};
  return track(be, be->ops->upload_weight(be, host, src_dtype, n0, n1, out, err));
}

/* ---- fp8 weights ---- */

int es_backend_upload_weight_fp8(es_backend_t *be, const void *host, es_dtype_t src_dtype, int64_t n0, int64_t n1,
                                 es_weight_t *out, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  *out = (es_weight_t){0};
  if (be->in_step) return es_fail(err, ES_EINTERNAL, "%s: weight upload inside a step", be->name);
  if (n0 < 1 || n1 < 1 || n1 > ((int64_t)1 << 40) / n0)
    return es_fail(err, ES_EINVAL, "%s: fp8 weight shape [%lld, %lld]", be->name, (long long)n0, (long long)n1);
  if (src_dtype != ES_DT_BF16 && src_dtype != ES_DT_F16 && src_dtype != ES_DT_F32)
    return es_fail(err, ES_EINVAL, "%s: fp8 quantisation from %s (bfloat16, float16 or float32)", be->name,
                   es_dtype_name(src_dtype));
  if (!host) return es_fail(err, ES_EINVAL, "%s: fp8 weight [%lld, %lld] has no data", be->name, (long long)n0,
                            (long long)n1);
  if (!be->ops->upload_weight_fp8) return es_fail(err, ES_EUNSUPPORTED, "%s: no fp8 weights", be->name);
  return track(be, be->ops->upload_weight_fp8(be, host, src_dtype, n0, n1, out, err));
}

/* Only es_op_linear reads fp8 weights. */
#define NO_FP8(w, op)                                                                                              \
  do {                                                                                                             \
    if ((w) && (w)->dtype == ES_DT_FP8E4M3)                                                                       \
      return es_fail(err, ES_EINVAL, "%s: fp8 weights are supported by linear only", (op));                        \
  } while (0)

int es_backend_write(es_backend_t *be, void *dst, const void *src, size_t bytes, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NOT_RECORDING(be, "es_backend_write", err);
  return track(be, be->ops->write(be, dst, src, bytes, err));
}
int es_backend_read(es_backend_t *be, void *dst, const void *src, size_t bytes, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NOT_RECORDING(be, "es_backend_read", err);
  return track(be, be->ops->read(be, dst, src, bytes, err));
}
int es_backend_write_act(es_backend_t *be, void *dst, const float *src, size_t count, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NOT_RECORDING(be, "es_backend_write_act", err);
  return track(be, be->ops->write_act(be, dst, src, count, err));
}
int es_backend_read_act(es_backend_t *be, float *dst, const void *src, size_t count, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NOT_RECORDING(be, "es_backend_read_act", err);
  return track(be, be->ops->read_act(be, dst, src, count, err));
}
int es_backend_sync(es_backend_t *be, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NOT_RECORDING(be, "es_backend_sync", err);
  return track(be, be->ops->sync(be, err));
}

size_t es_backend_kv_block_bytes(const es_backend_t *be, int n_layers, int n_heads, int head_dim) {
  const size_t rows = (size_t)n_layers * 2 * (size_t)n_heads * ES_KV_BLOCK; /* (token, head) rows of K and V */
  if (be->opts.kv_fp8) return rows * ((size_t)head_dim + sizeof(float));    /* codes + one scale per row */
  return rows * (size_t)head_dim * es_dtype_size(be->act_dtype);
}

int es_backend_kv_init(es_backend_t *be, int n_layers, int n_blocks, int n_heads, int head_dim, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  if (be->kv_blocks) return es_fail(err, ES_EINTERNAL, "%s: KV cache already initialised", be->name);
  if (n_layers < 1 || n_blocks < 2 || n_heads < 1 || head_dim < 1)
    return es_fail(err, ES_EINVAL, "%s: KV cache needs >= 1 layer, >= 2 blocks (block 0 is scratch), heads, dims",
                   be->name);
  if (be->opts.kv_fp8 && head_dim > ES_KV_FP8_MAX_D)
    return es_fail(err, ES_EUNSUPPORTED, "%s: fp8 KV cache with head dim %d (at most %d)", be->name, head_dim,
                   ES_KV_FP8_MAX_D);
  be->kv_layers = n_layers;
  be->kv_blocks = n_blocks;
  be->kv_heads = n_heads;
  be->kv_head_dim = head_dim;
  int rc = track(be, be->ops->kv_init(be, err));
  if (rc) be->kv_blocks = 0;
  return rc;
}

/* The batch description is checked completely here, so backends can index with it unchecked. */
static int validate_batch(const es_backend_t *be, const es_batch_t *b, es_error_t *err) {
  const es_backend_opts_t *o = &be->opts;
  if (b->n_seqs < 1 || (size_t)b->n_seqs > o->max_seqs)
    return es_fail(err, ES_EINVAL, "batch: %d sequences (capacity %zu)", b->n_seqs, o->max_seqs);
  if (b->n_tokens < 1 || (size_t)b->n_tokens > o->max_tokens)
    return es_fail(err, ES_EINVAL, "batch: %d tokens (capacity %zu)", b->n_tokens, o->max_tokens);
  if (b->max_blocks < 1 || (size_t)b->max_blocks > o->max_blocks)
    return es_fail(err, ES_EINVAL, "batch: max_blocks %d (capacity %zu)", b->max_blocks, o->max_blocks);
  if (b->q_start[0] != 0 || b->q_start[b->n_seqs] != b->n_tokens)
    return es_fail(err, ES_EINVAL, "batch: q_start must run from 0 to n_tokens");
  int64_t slots = (int64_t)be->kv_blocks * ES_KV_BLOCK;
  if (b->n_pad < 0 || b->n_pad >= b->n_seqs)
    return es_fail(err, ES_EINVAL, "batch: %d padding sequences of %d", b->n_pad, b->n_seqs);
  for (int s = b->n_seqs - b->n_pad; s < b->n_seqs; s++) {
    int32_t q0 = b->q_start[s];
    if (b->q_start[s + 1] != q0 + 1 || b->ctx_len[s] != 1 || b->positions[q0] != 0 || b->slot[q0] != 0)
      return es_fail(err, ES_EINVAL, "batch: padding sequence %d must be one token at position 0 in slot 0", s);
    for (int32_t j = 0; j < b->max_blocks; j++)
      if (b->block_table[(int64_t)s * b->max_blocks + j] != 0)
        return es_fail(err, ES_EINVAL, "batch: padding sequence %d must use only the scratch block 0", s);
  }
  for (int s = 0; s < b->n_seqs - b->n_pad; s++) {
    int32_t q0 = b->q_start[s], q1 = b->q_start[s + 1], ctx = b->ctx_len[s];
    if (q1 <= q0) return es_fail(err, ES_EINVAL, "batch: sequence %d has no new tokens", s);
    if (ctx < q1 - q0 || (int64_t)ctx > (int64_t)b->max_blocks * ES_KV_BLOCK)
      return es_fail(err, ES_EINVAL, "batch: sequence %d context %d for %d new tokens and %d blocks", s, ctx,
                     q1 - q0, b->max_blocks);
    int32_t nblk = (ctx + ES_KV_BLOCK - 1) / ES_KV_BLOCK;
    for (int32_t j = 0; j < nblk; j++) {
      int32_t blk = b->block_table[(int64_t)s * b->max_blocks + j];
      if (blk < 1 || blk >= be->kv_blocks)
        return es_fail(err, ES_EINVAL, "batch: sequence %d block %d = %d outside 1..%d", s, j, blk, be->kv_blocks - 1);
    }
    for (int32_t i = q0; i < q1; i++) {
      int32_t pos = ctx - (q1 - i);
      if (b->positions[i] < 0)
        return es_fail(err, ES_EINVAL, "batch: row %d has a negative position", i);
      int32_t want = b->block_table[(int64_t)s * b->max_blocks + pos / ES_KV_BLOCK] * ES_KV_BLOCK + pos % ES_KV_BLOCK;
      if (b->slot[i] != want || (int64_t)b->slot[i] >= slots)
        return es_fail(err, ES_EINVAL, "batch: row %d (sequence %d, position %d) slot %d, block table says %d", i, s,
                       pos, b->slot[i], want);
    }
  }
  return ES_OK;
}

int es_backend_begin_step(es_backend_t *be, const es_batch_t *batch, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NOT_RECORDING(be, "begin_step", err);
  if (be->in_step) return es_fail(err, ES_EINTERNAL, "%s: begin_step inside a step", be->name);
  if (!be->kv_blocks) return es_fail(err, ES_EINTERNAL, "%s: step before the KV cache exists", be->name);
  int rc = validate_batch(be, batch, err);
  if (rc) return rc;
  /* keep a host copy, so the caller's arrays may change after this call */
  const es_backend_opts_t *o = &be->opts;
  int32_t *p = be->batch_mem;
  es_batch_t *b = &be->batch;
  *b = *batch;
  int32_t *q_start = p, *ctx = p + o->max_seqs + 1, *pos = ctx + o->max_seqs, *slot = pos + o->max_tokens,
          *table = slot + o->max_tokens;
  memcpy(q_start, batch->q_start, sizeof(int32_t) * (size_t)(batch->n_seqs + 1));
  memcpy(ctx, batch->ctx_len, sizeof(int32_t) * (size_t)batch->n_seqs);
  memcpy(pos, batch->positions, sizeof(int32_t) * (size_t)batch->n_tokens);
  memcpy(slot, batch->slot, sizeof(int32_t) * (size_t)batch->n_tokens);
  memcpy(table, batch->block_table, sizeof(int32_t) * (size_t)batch->n_seqs * (size_t)batch->max_blocks);
  b->q_start = q_start;
  b->ctx_len = ctx;
  b->positions = pos;
  b->slot = slot;
  b->block_table = table;
  rc = track(be, be->ops->set_batch(be, b, err));
  if (rc) return rc;
  be->in_step = 1;
  return ES_OK;
}

int es_backend_end_step(es_backend_t *be, es_error_t *err) {
  if (!be->in_step) return es_fail(err, ES_EINTERNAL, "%s: end_step without begin_step", be->name);
  if (be->recording) {
    es_backend_graph_abort(be);
    return es_fail(err, ES_EINTERNAL, "%s: end_step while recording a graph (discarded)", be->name);
  }
  be->in_step = 0;
  return ES_OK;
}

/* ---- ops: shape checks, then dispatch ------------------------------------------------------------------ */

#define NEED(cond, ...)                                       \
  do {                                                        \
    if (!(cond)) return es_fail(err, ES_EINVAL, __VA_ARGS__); \
  } while (0)

#define NEED_STEP(be, op) NEED((be)->in_step, "%s: %s outside a step", (be)->name, op)

/* Dispatches an op and returns its status; while a profile runs (backend_profile.c) the call is timed and
 * recorded under the op's name, the bytes it must move (evaluated only then) and a shape label. */
#define PROFILED(be, call, op, bytes, ...)                                                                             \
  do {                                                                                                                 \
    int rec_ = es_prof_begin(be);                                                                                      \
    int rc_ = track((be), (call));                                                                                     \
    if (rec_ >= 0) es_prof_end((be), rec_, rc_, (op), (bytes), __VA_ARGS__);                                           \
    return rc_;                                                                                                        \
  } while (0)

static double act_bytes(const es_backend_t *be, double elems) {
  return elems * (double)es_dtype_size(be->act_dtype);
}

static double weight_bytes(const es_weight_t *w) {
  return (double)w->n0 * (double)w->n1 * (double)es_dtype_size(w->dtype) + (w->scale ? 4.0 * (double)w->n0 : 0.0);
}

/* Keys and values of every sequence's context, plus the queries and outputs of the step's tokens. */
static double paged_attention_bytes(const es_backend_t *be, int H, int D) {
  double keys = 0;
  for (int s = 0; s < be->batch.n_seqs; s++) keys += be->batch.ctx_len[s];
  return act_bytes(be, (2.0 * keys + 2.0 * be->batch.n_tokens) * H * D);
}

int es_op_linear(es_backend_t *be, void *y, int64_t ldy, const void *x, int64_t ldx, const es_weight_t *w,
                 const es_weight_t *bias, int64_t M, es_act_t act, int accumulate, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NEED(M >= 1 && ldx >= w->n1 && ldy >= w->n0, "linear: M %lld, ldx %lld < K %lld or ldy %lld < N %lld",
       (long long)M, (long long)ldx, (long long)w->n1, (long long)ldy, (long long)w->n0);
  NEED(!bias || (bias->n0 == w->n0 && bias->n1 == 1), "linear: bias shape does not match N %lld", (long long)w->n0);
  NO_FP8(bias, "linear (bias)");
  PROFILED(be, be->ops->linear(be, y, ldy, x, ldx, w, bias, M, act, accumulate, err), "linear",
           weight_bytes(w) + (bias ? weight_bytes(bias) : 0) +
               act_bytes(be, (double)M * (double)(w->n1 + (accumulate ? 2 : 1) * w->n0)),
           "M=%lld N=%lld K=%lld %s%s%s", (long long)M, (long long)w->n0, (long long)w->n1, es_dtype_name(w->dtype),
           act == ES_ACT_GELU ? " gelu" : "", accumulate ? " +=" : "");
}

int es_op_conv1d(es_backend_t *be, void *y, const void *x, const es_weight_t *w, const es_weight_t *bias, int64_t B,
                 int64_t T_in, int64_t C_in, int kernel, int stride, int pad, es_act_t act, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NEED(B >= 1 && kernel >= 1 && stride >= 1 && pad >= 0 && T_in + 2 * pad >= kernel, "conv1d: bad geometry");
  NEED(w->n1 == C_in * kernel, "conv1d: weight [%lld, %lld] for C_in %lld x kernel %d", (long long)w->n0,
       (long long)w->n1, (long long)C_in, kernel);
  NEED(!bias || (bias->n0 == w->n0 && bias->n1 == 1), "conv1d: bias shape");
  NO_FP8(w, "conv1d");
  NO_FP8(bias, "conv1d");
  PROFILED(be, be->ops->conv1d(be, y, x, w, bias, B, T_in, C_in, kernel, stride, pad, act, err), "conv1d",
           weight_bytes(w) + act_bytes(be, (double)B * (double)T_in * (double)C_in),
           "B=%lld T=%lld C=%lld->%lld k=%d s=%d", (long long)B, (long long)T_in, (long long)C_in, (long long)w->n0,
           kernel, stride);
}

int es_op_layer_norm(es_backend_t *be, void *y, const void *x, const es_weight_t *gamma, const es_weight_t *beta,
                     int64_t M, int64_t C, float eps, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NEED(M >= 1 && gamma->n0 == C && beta->n0 == C, "layer_norm: gamma/beta length != C %lld", (long long)C);
  NO_FP8(gamma, "layer_norm");
  NO_FP8(beta, "layer_norm");
  PROFILED(be, be->ops->layer_norm(be, y, x, gamma, beta, M, C, eps, err), "layer_norm",
           act_bytes(be, 2.0 * (double)M * (double)C), "M=%lld C=%lld", (long long)M, (long long)C);
}

int es_op_rms_norm(es_backend_t *be, void *y, void *residual, const void *add, const es_weight_t *weight, int64_t M,
                   int64_t C, float eps, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NEED(M >= 1 && weight->n0 == C, "rms_norm: weight length != C %lld", (long long)C);
  NO_FP8(weight, "rms_norm");
  PROFILED(be, be->ops->rms_norm(be, y, residual, add, weight, M, C, eps, err), "rms_norm",
           act_bytes(be, (add ? 4.0 : 2.0) * (double)M * (double)C), "M=%lld C=%lld%s", (long long)M, (long long)C,
           add ? " +add" : "");
}

int es_op_add_rows(es_backend_t *be, void *x, const void *rows, int64_t M, int64_t T, int64_t C, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NEED(T >= 1 && M >= T && M % T == 0 && C >= 1, "add_rows: M %lld is not a multiple of T %lld", (long long)M,
       (long long)T);
  PROFILED(be, be->ops->add_rows(be, x, rows, M, T, C, err), "add_rows",
           act_bytes(be, (2.0 * (double)M + (double)T) * (double)C), "M=%lld T=%lld C=%lld", (long long)M, (long long)T,
           (long long)C);
}

int es_op_rope_kv_store(es_backend_t *be, int layer, void *q, int64_t ldq, void *k, int64_t ldk, const void *v,
                        int64_t ldv, int H, int D, float theta, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NEED_STEP(be, "rope_kv_store");
  NEED(layer >= 0 && layer < be->kv_layers && H == be->kv_heads && D == be->kv_head_dim && D % 2 == 0,
       "rope_kv_store: layer %d, H %d, D %d do not match the KV cache (%d layers, %d heads, %d dims)", layer, H, D,
       be->kv_layers, be->kv_heads, be->kv_head_dim);
  NEED(ldq >= (int64_t)H * D && ldk >= (int64_t)H * D && ldv >= (int64_t)H * D, "rope_kv_store: row strides");
  PROFILED(be, be->ops->rope_kv_store(be, layer, q, ldq, k, ldk, v, ldv, H, D, theta, err), "rope_kv_store",
           act_bytes(be, 6.0 * be->batch.n_tokens * H * D), "tokens=%d H=%d D=%d", be->batch.n_tokens, H, D);
}

int es_op_attention_paged(es_backend_t *be, int layer, void *out, const void *q, int64_t ldq, int H, int D,
                          float scale, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NEED_STEP(be, "attention_paged");
  NEED(layer >= 0 && layer < be->kv_layers && H == be->kv_heads && D == be->kv_head_dim && ldq >= (int64_t)H * D,
       "attention_paged: layer %d, H %d, D %d do not match the KV cache", layer, H, D);
  PROFILED(be, be->ops->attention_paged(be, layer, out, q, ldq, H, D, scale, err), "attention_paged",
           paged_attention_bytes(be, H, D), "seqs=%d tokens=%d H=%d D=%d", be->batch.n_seqs, be->batch.n_tokens, H, D);
}

int es_op_attention_dense(es_backend_t *be, void *out, const void *q, int64_t ldq, const void *k, int64_t ldk,
                          const void *v, int64_t ldv, int64_t B, int64_t T, int H, int D, float scale,
                          const int32_t *valid_len, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NEED(B >= 1 && T >= 1 && H >= 1 && D >= 1, "attention_dense: bad shape");
  NEED(ldq >= (int64_t)H * D && ldk >= (int64_t)H * D && ldv >= (int64_t)H * D, "attention_dense: row strides");
  for (int64_t b = 0; b < B; b++)
    NEED(valid_len[b] >= 1 && valid_len[b] <= T, "attention_dense: valid_len[%lld] = %d outside 1..%lld",
         (long long)b, valid_len[b], (long long)T);
  PROFILED(be, be->ops->attention_dense(be, out, q, ldq, k, ldk, v, ldv, B, T, H, D, scale, valid_len, err),
           "attention_dense", act_bytes(be, 4.0 * (double)B * (double)T * H * D), "B=%lld T=%lld H=%d D=%d",
           (long long)B, (long long)T, H, D);
}

int es_op_silu_mul(es_backend_t *be, void *y, const void *gate, const void *up, int64_t ld, int64_t M, int64_t N,
                   es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NEED(M >= 1 && N >= 1 && ld >= N, "silu_mul: bad shape");
  PROFILED(be, be->ops->silu_mul(be, y, gate, up, ld, M, N, err), "silu_mul",
           act_bytes(be, 3.0 * (double)M * (double)N), "M=%lld N=%lld", (long long)M, (long long)N);
}

int es_op_linear_silu_mul(es_backend_t *be, void *y, void *gu, int64_t ldgu, const void *x, int64_t ldx,
                          const es_weight_t *w, int64_t M, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  const int64_t N = w->n0 / 2, K = w->n1;
  NEED(M >= 1 && w->n0 >= 2 && w->n0 % 2 == 0 && ldx >= K && ldgu >= 2 * N,
       "linear_silu_mul: M %lld, weight [%lld, %lld] (an even number of rows: gate, then up), ldx %lld, ldgu %lld",
       (long long)M, (long long)w->n0, (long long)K, (long long)ldx, (long long)ldgu);
  const size_t a = es_dtype_size(be->act_dtype);
  const uintptr_t yb = (uintptr_t)y, ye = yb + (size_t)(M * N) * a;
  const uintptr_t xb = (uintptr_t)x, xe = xb + (size_t)((M - 1) * ldx + K) * a;
  const uintptr_t gb = (uintptr_t)gu, ge = gb + (size_t)((M - 1) * ldgu + 2 * N) * a;
  NEED((ye <= xb || xe <= yb) && (ye <= gb || ge <= yb), "linear_silu_mul: y overlaps x or the gate|up scratch");
  if (be->ops->linear_silu_mul_ok && be->ops->linear_silu_mul_ok(be, x, ldx, w, M))
    PROFILED(be, be->ops->linear_silu_mul(be, y, x, ldx, w, M, err), "linear_silu_mul",
             weight_bytes(w) + act_bytes(be, (double)M * (double)(K + N)), "M=%lld N=%lld K=%lld %s", (long long)M,
             (long long)N, (long long)K, es_dtype_name(w->dtype));
  int rc = es_op_linear(be, gu, ldgu, x, ldx, w, NULL, M, ES_ACT_NONE, 0, err);
  if (rc) return rc;
  return es_op_silu_mul(be, y, gu, (char *)gu + (size_t)N * a, ldgu, M, N, err);
}

int es_op_linear_rms_norm(es_backend_t *be, void *y, void *residual, void *o, const void *x, int64_t ldx,
                          const es_weight_t *w, const es_weight_t *norm_weight, int64_t M, float eps, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  const int64_t N = w->n0, K = w->n1;
  NEED(M >= 1 && ldx >= K && norm_weight->n0 == N,
       "linear_rms_norm: M %lld, weight [%lld, %lld], ldx %lld, norm weight length %lld", (long long)M, (long long)N,
       (long long)K, (long long)ldx, (long long)norm_weight->n0);
  NO_FP8(norm_weight, "linear_rms_norm (norm weight)");
  const size_t a = es_dtype_size(be->act_dtype);
  const uintptr_t ob = (uintptr_t)o, oe = ob + (size_t)(M * N) * a, xb = (uintptr_t)x,
                  xe = xb + (size_t)((M - 1) * ldx + K) * a, yb = (uintptr_t)y, ye = yb + (size_t)(M * N) * a,
                  rb = (uintptr_t)residual, re = rb + (size_t)(M * N) * a;
  NEED((oe <= xb || xe <= ob) && (oe <= yb || ye <= ob) && (oe <= rb || re <= ob),
       "linear_rms_norm: o overlaps x, y or the residual");
  if (be->ops->linear_rms_norm_ok && be->ops->linear_rms_norm_ok(be, y, residual, o, x, ldx, w, norm_weight, M))
    PROFILED(be, be->ops->linear_rms_norm(be, y, residual, o, x, ldx, w, norm_weight, M, eps, err), "linear_rms_norm",
             weight_bytes(w) + act_bytes(be, (double)M * (double)(K + 5 * N)), "M=%lld N=%lld K=%lld %s +norm",
             (long long)M, (long long)N, (long long)K, es_dtype_name(w->dtype));
  int rc = es_op_linear(be, o, N, x, ldx, w, NULL, M, ES_ACT_NONE, 0, err);
  if (rc) return rc;
  return es_op_rms_norm(be, y, residual, o, norm_weight, M, N, eps, err);
}

int es_op_linear_rope_kv_store(es_backend_t *be, int layer, void *qkv, int64_t ldqkv, const void *x, int64_t ldx,
                               const es_weight_t *w, const es_weight_t *bias, int H, int D, float theta,
                               es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NEED_STEP(be, "linear_rope_kv_store");
  const int64_t HD = (int64_t)H * D, K = w->n1, T = be->batch.n_tokens;
  NEED(H >= 1 && D >= 2 && w->n0 == 3 * HD && ldqkv >= 3 * HD && ldx >= K,
       "linear_rope_kv_store: weight [%lld, %lld] for 3 x %d heads x %d, ldqkv %lld, ldx %lld", (long long)w->n0,
       (long long)K, H, D, (long long)ldqkv, (long long)ldx);
  NEED(theta > 1.0f, "linear_rope_kv_store: theta %g must be > 1", (double)theta);
  const size_t a = es_dtype_size(be->act_dtype);
  const uintptr_t qb = (uintptr_t)qkv, qe = qb + (size_t)((T - 1) * ldqkv + 3 * HD) * a, xb = (uintptr_t)x,
                  xe = xb + (size_t)((T - 1) * ldx + K) * a;
  NEED(T < 1 || qe <= xb || xe <= qb, "linear_rope_kv_store: qkv overlaps x (in-place is not supported)");
  if (be->ops->linear_rope_kv_store_ok && be->ops->linear_rope_kv_store_ok(be, x, ldx, w, bias, H, D)) {
    NEED(layer >= 0 && layer < be->kv_layers && H == be->kv_heads && D == be->kv_head_dim && D % 2 == 0 &&
             (!bias || (bias->n0 == w->n0 && bias->n1 == 1)),
         "linear_rope_kv_store: layer %d, H %d, D %d do not match the KV cache, or the bias's shape", layer, H, D);
    NO_FP8(bias, "linear_rope_kv_store (bias)");
    PROFILED(be, be->ops->linear_rope_kv_store(be, layer, qkv, ldqkv, x, ldx, w, bias, H, D, theta, err),
             "linear_rope_kv_store",
             weight_bytes(w) + (bias ? weight_bytes(bias) : 0) + act_bytes(be, (double)T * (double)(K + 5 * HD)),
             "M=%lld N=%lld K=%lld %s +rope", (long long)T, (long long)w->n0, (long long)K, es_dtype_name(w->dtype));
  }
  int rc = es_op_linear(be, qkv, ldqkv, x, ldx, w, bias, T, ES_ACT_NONE, 0, err);
  if (rc) return rc;
  return es_op_rope_kv_store(be, layer, qkv, ldqkv, (char *)qkv + (size_t)HD * a, ldqkv,
                             (char *)qkv + (size_t)(2 * HD) * a, ldqkv, H, D, theta, err);
}

int es_op_avg_pool2(es_backend_t *be, void *y, const void *x, int64_t B, int64_t T, int64_t C, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NEED(B >= 1 && T >= 2 && T % 2 == 0 && C >= 1, "avg_pool2: T %lld must be even", (long long)T);
  PROFILED(be, be->ops->avg_pool2(be, y, x, B, T, C, err), "avg_pool2", act_bytes(be, 1.5 * (double)B * T * C),
           "B=%lld T=%lld C=%lld", (long long)B, (long long)T, (long long)C);
}

int es_op_embed(es_backend_t *be, void *y, const es_weight_t *table, const int32_t *ids, int64_t M,
                es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NEED(M >= 1, "embed: no rows");
  NO_FP8(table, "embed");
  PROFILED(be, be->ops->embed(be, y, table, ids, M, err), "embed",
           (double)M * (double)table->n1 * (double)es_dtype_size(table->dtype) + act_bytes(be, (double)M * table->n1),
           "M=%lld C=%lld", (long long)M, (long long)table->n1);
}

int es_op_gather_rows(es_backend_t *be, void *y, const void *x, const int32_t *idx, int64_t M, int64_t C,
                      es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NEED(M >= 1 && C >= 1, "gather_rows: bad shape");
  PROFILED(be, be->ops->gather_rows(be, y, x, idx, M, C, err), "gather_rows", act_bytes(be, 2.0 * (double)M * C),
           "M=%lld C=%lld", (long long)M, (long long)C);
}

int es_op_scatter_rows(es_backend_t *be, void *y, const void *x, const int32_t *idx, int64_t M, int64_t C,
                       es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NEED(M >= 1 && C >= 1, "scatter_rows: bad shape");
  PROFILED(be, be->ops->scatter_rows(be, y, x, idx, M, C, err), "scatter_rows", act_bytes(be, 2.0 * (double)M * C),
           "M=%lld C=%lld", (long long)M, (long long)C);
}

int es_op_logits(es_backend_t *be, float *logits, const void *x, const es_weight_t *w, int64_t M, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NEED(M >= 1, "logits: no rows");
  NO_FP8(w, "logits");
  PROFILED(be, be->ops->logits(be, logits, x, w, M, err), "logits",
           weight_bytes(w) + act_bytes(be, (double)M * (double)w->n1) + 4.0 * (double)M * (double)w->n0,
           "M=%lld V=%lld K=%lld %s", (long long)M, (long long)w->n0, (long long)w->n1, es_dtype_name(w->dtype));
}

/* ---- step graphs --------------------------------------------------------------------------------------- */

int es_backend_graphs_supported(const es_backend_t *be) {
  return be->healthy && be->ops->graphs_supported && be->ops->graphs_supported(be);
}

int es_backend_graph_begin(es_backend_t *be, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  if (!es_backend_graphs_supported(be)) return es_fail(err, ES_EUNSUPPORTED, "%s: no step graphs", be->name);
  NEED_STEP(be, "graph_begin");
  NOT_RECORDING(be, "graph_begin", err);
  int rc = track(be, be->ops->graph_begin(be, err));
  if (!rc) be->recording = 1;
  return rc;
}

int es_backend_graph_end(es_backend_t *be, int key, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  if (!be->recording) return es_fail(err, ES_EINTERNAL, "%s: graph_end without graph_begin", be->name);
  if (key < 0 || key >= ES_GRAPH_MAX_KEYS) {
    es_backend_graph_abort(be);
    return es_fail(err, ES_EINVAL, "%s: graph key %d outside [0, %d)", be->name, key, ES_GRAPH_MAX_KEYS);
  }
  be->recording = 0;
  return track(be, be->ops->graph_end(be, key, err));
}

void es_backend_graph_abort(es_backend_t *be) {
  if (!be->recording) return;
  be->recording = 0;
  if (be->ops->graph_abort) be->ops->graph_abort(be);
}

int es_backend_graph_has(const es_backend_t *be, int key) {
  return key >= 0 && key < ES_GRAPH_MAX_KEYS && es_backend_graphs_supported(be) && be->ops->graph_has(be, key);
}

int es_backend_graph_launch(es_backend_t *be, int key, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NEED_STEP(be, "graph_launch");
  NOT_RECORDING(be, "graph_launch", err);
  if (!es_backend_graph_has(be, key)) return es_fail(err, ES_EINVAL, "%s: no graph %d recorded", be->name, key);
  PROFILED(be, be->ops->graph_launch(be, key, err), "graph", 0.0, "replay of graph %d", key);
}

/* ---- sampling (issue 9) -------------------------------------------------------------------------------- */

int es_backend_sampler_init(es_backend_t *be, int n_slots, int vocab, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  if (be->in_step) return es_fail(err, ES_EINTERNAL, "%s: sampler_init inside a step", be->name);
  if (be->smp_slots) { /* a later engine over the same backend: the state fits, keep it */
    if (vocab == be->smp_vocab && n_slots <= be->smp_slots) return ES_OK;
    return es_fail(err, ES_EINTERNAL, "%s: sampler initialised for %d slots x %d ids, asked for %d x %d", be->name,
                   be->smp_slots, be->smp_vocab, n_slots, vocab);
  }
  NEED(n_slots >= 1 && n_slots <= (1 << 16), "sampler_init: %d slots (1..65536)", n_slots);
  NEED(vocab >= 1 && vocab <= (1 << 20), "sampler_init: vocabulary of %d ids (1..2^20)", vocab);
  be->smp_slots = n_slots;
  be->smp_vocab = vocab;
  be->smp_prepared = 0;
  int rc = track(be, be->ops->sampler_init(be, err));
  if (rc) be->smp_slots = be->smp_vocab = 0;
  return rc;
}

static int check_ids(const es_backend_t *be, const char *what, const int32_t *ids, int n, es_error_t *err) {
  NEED(n >= 0 && (n == 0 || ids), "sampler_reset: %s: %d ids", what, n);
  for (int i = 0; i < n; i++)
    NEED(ids[i] >= 0 && ids[i] < be->smp_vocab, "sampler_reset: %s[%d] = %d is outside the vocabulary [0, %d)", what,
         i, ids[i], be->smp_vocab);
  return ES_OK;
}

int es_backend_sampler_reset(es_backend_t *be, int slot, const int32_t *ids, int n_ids, const int32_t *gen_ids,
                             int n_gen, const int32_t *suppress_ids, int n_suppress, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NEED(be->smp_slots, "%s: sampler_reset before sampler_init", be->name);
  NOT_RECORDING(be, "sampler_reset", err); /* host copies: not capturable, and a graph would replay stale ones */
  NEED(slot >= 0 && slot < be->smp_slots, "sampler_reset: slot %d outside [0, %d)", slot, be->smp_slots);
  NEED(n_suppress <= ES_SAMPLE_MAX_SUPPRESS, "sampler_reset: %d suppress ids (at most %d)", n_suppress,
       ES_SAMPLE_MAX_SUPPRESS);
  int rc;
  if ((rc = check_ids(be, "ids", ids, n_ids, err)) || (rc = check_ids(be, "gen_ids", gen_ids, n_gen, err)) ||
      (rc = check_ids(be, "suppress_ids", suppress_ids, n_suppress, err)))
    return rc;
  return track(be, be->ops->sampler_reset(be, slot, ids, n_ids, gen_ids, n_gen, suppress_ids, n_suppress, err));
}

int es_backend_sample_prepare(es_backend_t *be, const es_sample_row_t *rows, int n, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NEED(be->smp_slots, "%s: sample_prepare before sampler_init", be->name);
  NOT_RECORDING(be, "sample_prepare", err); /* host work before the (recordable) es_op_sample (backend.h) */
  NEED(n >= 1 && n <= be->smp_slots, "sample_prepare: %d rows (1..%d slots)", n, be->smp_slots);
  be->smp_prepared = 0;
  for (int r = 0; r < n; r++) {
    const es_sample_row_t *w = &rows[r];
    /* the ranges of smp_params_validate; the !(x op y) spellings reject NaN */
    NEED(w->temperature >= 0.0f && !isinf(w->temperature), "sample_prepare: row %d: temperature %g", r,
         (double)w->temperature);
    NEED(w->top_p > 0.0f && w->top_p <= 1.0f, "sample_prepare: row %d: top_p %g outside (0, 1]", r, (double)w->top_p);
    NEED(w->min_p >= 0.0f && w->min_p <= 1.0f, "sample_prepare: row %d: min_p %g outside [0, 1]", r, (double)w->min_p);
    NEED(w->repetition_penalty > 0.0f && !isinf(w->repetition_penalty), "sample_prepare: row %d: repetition_penalty %g",
         r, (double)w->repetition_penalty);
    NEED(isfinite(w->presence_penalty) && isfinite(w->frequency_penalty),
         "sample_prepare: row %d: presence/frequency penalties must be finite", r);
    NEED(w->top_k >= -1, "sample_prepare: row %d: top_k %d", r, w->top_k);
    NEED(w->step >= 0, "sample_prepare: row %d: step %lld", r, (long long)w->step);
    NEED(w->slot >= 0 && w->slot < be->smp_slots, "sample_prepare: row %d: slot %d outside [0, %d)", r, w->slot,
         be->smp_slots);
    for (int q = 0; q < r; q++)
      NEED(rows[q].slot != w->slot, "sample_prepare: rows %d and %d share slot %d", q, r, w->slot);
  }
  int rc = track(be, be->ops->sample_prepare(be, rows, n, err));
  if (!rc) be->smp_prepared = n;
  return rc;
}

int es_op_sample(es_backend_t *be, float *logits, int n, int32_t *tokens, es_error_t *err) {
  CHECK_HEALTHY(be, err);
  NEED(be->smp_slots, "%s: sample before sampler_init", be->name);
  NEED(n >= 1 && n == be->smp_prepared, "sample: %d rows, the last sample_prepare had %d", n, be->smp_prepared);
  PROFILED(be, be->ops->sample(be, logits, n, tokens, err), "sample", 4.0 * (double)n * (double)be->smp_vocab,
           "n=%d V=%d", n, be->smp_vocab);
}
