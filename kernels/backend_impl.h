/* backend_impl.h: what a backend implementation provides. Included by kernels/backend.c and by each
 * backend (kernels/cpu/, kernels/cuda/), never by the model.
 *
 * kernels/backend.c validates arguments that do not depend on the device (shapes, the batch description,
 * the step state) and then calls the implementation through es_backend_ops_t, so every backend gets the
 * same checks and the same error messages.
 */
#pragma once

#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  const char *kind; /* "cpu" or "cuda" */
  void (*destroy)(es_backend_t *be);
  int (*alloc)(es_backend_t *be, size_t bytes, void **out, es_error_t *err);
  int (*upload_weight)(es_backend_t *be, const void *host, es_dtype_t src_dtype, int64_t n0, int64_t n1,
                       es_weight_t *out, es_error_t *err);
  int (*write)(es_backend_t *be, void *dst, const void *src, size_t bytes, es_error_t *err);
  int (*read)(es_backend_t *be, void *dst, const void *src, size_t bytes, es_error_t *err);
  int (*write_act)(es_backend_t *be, void *dst, const float *src, size_t count, es_error_t *err);
  int (*read_act)(es_backend_t *be, float *dst, const void *src, size_t count, es_error_t *err);
  int (*sync)(es_backend_t *be, es_error_t *err);
  int (*kv_init)(es_backend_t *be, es_error_t *err); /* sizes in be->kv_* are set by the caller */
  int (*set_batch)(es_backend_t *be, const es_batch_t *batch, es_error_t *err);

  int (*linear)(es_backend_t *be, void *y, int64_t ldy, const void *x, int64_t ldx, const es_weight_t *w,
                const es_weight_t *bias, int64_t M, es_act_t act, int accumulate, es_error_t *err);
  int (*conv1d)(es_backend_t *be, void *y, const void *x, const es_weight_t *w, const es_weight_t *bias, int64_t B,
                int64_t T_in, int64_t C_in, int kernel, int stride, int pad, es_act_t act, es_error_t *err);
  int (*layer_norm)(es_backend_t *be, void *y, const void *x, const es_weight_t *gamma, const es_weight_t *beta,
                    int64_t M, int64_t C, float eps, es_error_t *err);
  int (*rms_norm)(es_backend_t *be, void *y, void *residual, const void *add, const es_weight_t *weight, int64_t M,
                  int64_t C, float eps, es_error_t *err);
  int (*add_rows)(es_backend_t *be, void *x, const void *rows, int64_t M, int64_t T, int64_t C, es_error_t *err);
  int (*rope_kv_store)(es_backend_t *be, int layer, void *q, int64_t ldq, void *k, int64_t ldk, const void *v,
                       int64_t ldv, int H, int D, float theta, es_error_t *err);
  int (*attention_paged)(es_backend_t *be, int layer, void *out, const void *q, int64_t ldq, int H, int D,
                         float scale, es_error_t *err);
  int (*attention_dense)(es_backend_t *be, void *out, const void *q, int64_t ldq, const void *k, int64_t ldk,
                         const void *v, int64_t ldv, int64_t B, int64_t T, int H, int D, float scale,
                         const int32_t *valid_len, es_error_t *err);
  int (*silu_mul)(es_backend_t *be, void *y, const void *gate, const void *up, int64_t ld, int64_t M, int64_t N,
                  es_error_t *err);
  int (*avg_pool2)(es_backend_t *be, void *y, const void *x, int64_t B, int64_t T, int64_t C, es_error_t *err);
  int (*embed)(es_backend_t *be, void *y, const es_weight_t *table, const int32_t *ids, int64_t M, es_error_t *err);
  int (*gather_rows)(es_backend_t *be, void *y, const void *x, const int32_t *idx, int64_t M, int64_t C,
                     es_error_t *err);
  int (*scatter_rows)(es_backend_t *be, void *y, const void *x, const int32_t *idx, int64_t M, int64_t C,
                      es_error_t *err);
  int (*logits)(es_backend_t *be, float *logits, const void *x, const es_weight_t *w, int64_t M, es_error_t *err);
  /* step graphs: NULL when the backend has none (the CPU) */
  int (*graphs_supported)(const es_backend_t *be);
  int (*graph_begin)(es_backend_t *be, es_error_t *err);
  int (*graph_end)(es_backend_t *be, int key, es_error_t *err);
  void (*graph_abort)(es_backend_t *be);
  int (*graph_has)(const es_backend_t *be, int key);
  int (*graph_launch)(es_backend_t *be, int key, es_error_t *err);
  /* ---- fp8 weights ---- (backend.h; arguments validated by backend.c) */
  int (*upload_weight_fp8)(es_backend_t *be, const void *host, es_dtype_t src_dtype, int64_t n0, int64_t n1,
                           es_weight_t *out, es_error_t *err);
  /* ---- sampling (issue 9): arguments validated by backend.c; sizes in be->smp_* ---- */
  int (*sampler_init)(es_backend_t *be, es_error_t *err);
  int (*sampler_reset)(es_backend_t *be, int slot, const int32_t *ids, int n_ids, const int32_t *gen_ids, int n_gen,
                       const int32_t *suppress_ids, int n_suppress, es_error_t *err);
  int (*sample_prepare)(es_backend_t *be, const es_sample_row_t *rows, int n, es_error_t *err);
  int (*sample)(es_backend_t *be, float *logits, int n, int32_t *tokens, es_error_t *err);
  /* ---- op profiles (backend.h): device timestamps; NULL on a backend whose ops finish before they return
   * (the CPU: backend_profile.c reads the host clock) ---- */
  int (*prof_init)(es_backend_t *be, int n_marks, es_error_t *err);            /* marks 0 .. n_marks - 1 */
  int (*prof_mark)(es_backend_t *be, int mark, es_error_t *err);               /* queue mark on the device */
  int (*prof_ms)(es_backend_t *be, int a, int b, double *ms, es_error_t *err); /* after both ran (syncs) */
  void (*prof_free)(es_backend_t *be);
  /* ---- fused ops: NULL where the backend has none (backend.c runs the parts) ---- */
  /* es_op_linear_silu_mul (backend.h) in one fused call, where linear_silu_mul_ok says the backend fuses it now;
   * elsewhere backend.c runs es_op_linear and es_op_silu_mul */
  int (*linear_silu_mul_ok)(const es_backend_t *be, const void *x, int64_t ldx, const es_weight_t *w, int64_t M);
  int (*linear_silu_mul)(es_backend_t *be, void *y, const void *x, int64_t ldx, const es_weight_t *w, int64_t M,
                         es_error_t *err);
  /* es_op_linear_rms_norm (backend.h) in one fused call where linear_rms_norm_ok says so; elsewhere backend.c runs
   * es_op_linear and es_op_rms_norm */
  int (*linear_rms_norm_ok)(const es_backend_t *be, const void *y, const void *residual, const void *o, const void *x,
                            int64_t ldx, const es_weight_t *w, const es_weight_t *norm_weight, int64_t M);
  int (*linear_rms_norm)(es_backend_t *be, void *y, void *residual, void *o, const void *x, int64_t ldx,
                         const es_weight_t *w, const es_weight_t *norm_weight, int64_t M, float eps, es_error_t *err);
  /* es_op_linear_rope_kv_store (backend.h) in one fused call where linear_rope_kv_store_ok says so; elsewhere
   * backend.c runs es_op_linear and es_op_rope_kv_store */
  int (*linear_rope_kv_store_ok)(const es_backend_t *be, const void *x, int64_t ldx, const es_weight_t *w,
                                 const es_weight_t *bias, int H, int D);
  int (*linear_rope_kv_store)(es_backend_t *be, int layer, void *qkv, int64_t ldqkv, const void *x, int64_t ldx,
                              const es_weight_t *w, const es_weight_t *bias, int H, int D, float theta,
                              es_error_t *err);
} es_backend_ops_t;

typedef struct es_prof_state es_prof_state_t; /* backend_profile.c */

/* The common part of every backend; implementations embed it as their first member. */
struct es_backend {
  const es_backend_ops_t *ops;
  char name[192];
  es_dtype_t act_dtype;
  es_backend_opts_t opts;
  int healthy;
  int in_step;
  es_batch_t batch; /* the current step's batch; arrays point into host copies owned by backend.c */
  int32_t *batch_mem; /* host storage for the arrays of batch, sized from opts */
  /* KV pool geometry, set by es_backend_kv_init */
  int kv_layers, kv_blocks, kv_heads, kv_head_dim;
  int recording; /* between es_backend_graph_begin and graph_end / graph_abort */
  /* sampling state geometry, set by es_backend_sampler_init; smp_prepared = n of the last sample_prepare */
  int smp_slots, smp_vocab, smp_prepared;
  es_prof_state_t *prof; /* non-NULL between es_backend_profile_start and _stop */
};

/* Called by implementations' create functions after filling ops/name/act_dtype/opts. */
int es_backend_base_init(es_backend_t *be, es_error_t *err);
/* Called by implementations' destroy (also drops an unfinished profile). */
void es_backend_base_free(es_backend_t *be);

/* backend.c's op wrappers around each dispatch: es_prof_begin returns the record's index, or -1 when nothing
 * is being profiled (or while recording, or past max_records: counted as dropped); es_prof_end closes it with
 * the op's name, the bytes it must move and a printf-style shape label (a failed op, rc != 0, is dropped). */
int es_prof_begin(es_backend_t *be);
/* Drops an unfinished profile (es_backend_base_free). */
void es_backend_prof_release(es_backend_t *be);
void es_prof_end(es_backend_t *be, int rec, int rc, const char *op, double bytes, const char *shape_fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 6, 7)))
#endif
    ;

#ifdef __cplusplus
}
#endif
