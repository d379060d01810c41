/* cpu_ops: the CPU backend's row-wise and data-movement ops — norms, the RoPE + KV store, silu_mul,
 * avg_pool2, embed, gather/scatter rows, add_rows. Math: SPEC §3–4, as transformers computes it in fp32.
 *
 * Thread safety: driving thread only; parallel over rows, one task per fixed row range.
 */
#pragma once

#include "cpu_backend.h"

int cpu_op_layer_norm(es_backend_t *be, void *y, const void *x, const es_weight_t *gamma, const es_weight_t *beta,
                      int64_t M, int64_t C, float eps, es_error_t *err);
int cpu_op_rms_norm(es_backend_t *be, void *y, void *residual, const void *add, const es_weight_t *weight, int64_t M,
                    int64_t C, float eps, es_error_t *err);
int cpu_op_add_rows(es_backend_t *be, void *x, const void *rows, int64_t M, int64_t T, int64_t C, es_error_t *err);
int cpu_op_rope_kv_store(es_backend_t *be, int layer, void *q, int64_t ldq, void *k, int64_t ldk, const void *v,
                         int64_t ldv, int H, int D, float theta, es_error_t *err);
int cpu_op_silu_mul(es_backend_t *be, void *y, const void *gate, const void *up, int64_t ld, int64_t M, int64_t N,
                    es_error_t *err);
int cpu_op_avg_pool2(es_backend_t *be, void *y, const void *x, int64_t B, int64_t T, int64_t C, es_error_t *err);
int cpu_op_embed(es_backend_t *be, void *y, const es_weight_t *table, const int32_t *ids, int64_t M, es_error_t *err);
int cpu_op_gather_rows(es_backend_t *be, void *y, const void *x, const int32_t *idx, int64_t M, int64_t C,
                       es_error_t *err);
int cpu_op_scatter_rows(es_backend_t *be, void *y, const void *x, const int32_t *idx, int64_t M, int64_t C,
                        es_error_t *err);

/* The index of the KV cache tile of (layer, block, K|V, head) among all tiles (backend.h layout). */
static inline size_t cpu_kv_index(const cpu_backend_t *cb, int layer, int32_t block, int kv, int h) {
  const es_backend_t *b = &cb->base;
  return (((size_t)layer * (size_t)b->kv_blocks + (size_t)block) * 2 + (size_t)kv) * (size_t)b->kv_heads + (size_t)h;
}

/* The tile as [16][D] fp32 (the default KV cache). */
static inline float *cpu_kv_tile(const cpu_backend_t *cb, int layer, int32_t block, int kv, int h) {
  return (float *)cb->kv + cpu_kv_index(cb, layer, block, kv, h) * ES_KV_BLOCK * (size_t)cb->base.kv_head_dim;
}

/* The tile as [16][D] e4m3 codes and its [16] row scales (the fp8 KV cache). */
static inline uint8_t *cpu_kv_codes(const cpu_backend_t *cb, int layer, int32_t block, int kv, int h) {
  return (uint8_t *)cb->kv + cpu_kv_index(cb, layer, block, kv, h) * ES_KV_BLOCK * (size_t)cb->base.kv_head_dim;
}
static inline float *cpu_kv_scales(const cpu_backend_t *cb, int layer, int32_t block, int kv, int h) {
  return cb->kv_scale + cpu_kv_index(cb, layer, block, kv, h) * ES_KV_BLOCK;
}
