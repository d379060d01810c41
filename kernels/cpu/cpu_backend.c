/* cpu_backend: es_backend_create_cpu and the CPU backend's memory. See cpu_backend.h.
 *
 * Memory: es_backend_alloc hands out 256-byte-aligned, zeroed blocks tracked in cb->allocs and freed at
 * destroy; weights alias the caller's memory (a 16.8 GB bf16 checkpoint mmap stays one copy, so RSS is the
 * pages actually touched); the KV pool is one calloc. Scratch grows only on the driving thread: at weight
 * upload (GEMM tiles for the largest K), at create (paged scores for opts.max_blocks · 16 positions) and
 * on the first dense attention with a longer T — steady-state steps allocate nothing.
 */
#include "cpu_backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "cpu_attention.h"
#include "cpu_gemm.h"
#include "cpu_ops.h"
#include "fp8_math.h"
#include "fp8_quant.h"
#include "cpu_sample.h"

static int track(cpu_backend_t *cb, void *p, es_error_t *err) {
  if (cb->n_allocs == cb->cap_allocs) {
    size_t cap = cb->cap_allocs ? 2 * cb->cap_allocs : 64;
    void **a = realloc(cb->allocs, cap * sizeof *a);
    if (!a) {
      free(p);
      return es_fail(err, ES_ENOMEM, "cpu: out of memory tracking allocations");
    }
    cb->allocs = a;
    cb->cap_allocs = cap;
  }
  cb->allocs[cb->n_allocs++] = p;
  return ES_OK;
}

static void cpu_destroy(es_backend_t *be) {
  cpu_backend_t *cb = cpu_be(be);
  cpu_pool_free(cb->pool);
  if (cb->scratch)
    for (int t = 0; t < cb->n_threads; t++)
      for (int i = 0; i < CPU_SCR_COUNT; i++) free(cb->scratch[t].buf[i]);
  free(cb->scratch);
  for (size_t i = 0; i < cb->n_allocs; i++) free(cb->allocs[i]);
  free(cb->allocs);
  free(cb->kv);
  free(cb->kv_scale);
  es_backend_base_free(be);
  free(cb);
}

int cpu_scratch_reserve(cpu_backend_t *cb, int which, size_t floats, es_error_t *err) {
  if (floats == 0) floats = 1;
  for (int t = 0; t < cb->n_threads; t++) {
    cpu_scratch_t *s = &cb->scratch[t];
    if (s->cap[which] >= floats) continue;
    size_t bytes = (floats * sizeof(float) + 63) / 64 * 64; /* 64-byte aligned: the GEMM panels load v8 */
    float *p = aligned_alloc(64, bytes);
    if (!p)
      return es_fail(err, ES_ENOMEM, "cpu: out of memory for %zu bytes of scratch per thread (%d threads)", bytes,
                     cb->n_threads);
    free(s->buf[which]);
    s->buf[which] = p;
    s->cap[which] = floats;
  }
  return ES_OK;
}

static int cpu_alloc(es_backend_t *be, size_t bytes, void **out, es_error_t *err) {
  *out = NULL;
  if (bytes > ((size_t)1 << 46)) return es_fail(err, ES_ETOOBIG, "cpu: allocation of %zu bytes", bytes);
  size_t n = bytes ? (bytes + 255) / 256 * 256 : 256;
  void *p = aligned_alloc(256, n);
  if (!p) return es_fail(err, ES_ENOMEM, "cpu: cannot allocate %zu bytes", bytes);
  memset(p, 0, n);
  int rc = track(cpu_be(be), p, err);
  if (rc) return rc;
  *out = p;
  return ES_OK;
}

static int cpu_upload_weight(es_backend_t *be, const void *host, es_dtype_t dt, int64_t n0, int64_t n1,
                             es_weight_t *out, es_error_t *err) {
  cpu_backend_t *cb = cpu_be(be);
  if (dt != ES_DT_F32 && dt != ES_DT_BF16 && dt != ES_DT_F16)
    return es_fail(err, ES_EINVAL, "cpu: weight dtype %d unknown", (int)dt);
  if (!host) return es_fail(err, ES_EINVAL, "cpu: weight [%lld, %lld] has no data", (long long)n0, (long long)n1);
  size_t es = es_dtype_size(dt);
  const void *data = host;
  if ((uintptr_t)host % es) { /* a safetensors payload need not be aligned for its dtype: copy that one */
    void *copy;
    int rc = cpu_alloc(be, (size_t)n0 * (size_t)n1 * es, &copy, err);
    if (rc) return rc;
    memcpy(copy, host, (size_t)n0 * (size_t)n1 * es);
    data = copy;
  }
  int rc = cpu_gemm_reserve(cb, n1, err);
  if (rc) return rc;
  *out = (es_weight_t){.data = data, .dtype = dt, .n0 = n0, .n1 = n1};
  return ES_OK;
}

/* ---- fp8 weights ----
 * The codes [n0, n1] and the scales [n0] live in backend memory (quantised from the caller's host memory,
 * which need not outlive the call); the GEMM widens them through fp8_lut times the row's scale. */
static int cpu_upload_weight_fp8(es_backend_t *be, const void *host, es_dtype_t dt, int64_t n0, int64_t n1,
                                 es_weight_t *out, es_error_t *err) {
  cpu_backend_t *cb = cpu_be(be);
  void *q = NULL, *scale = NULL;
  int rc = cpu_alloc(be, (size_t)n0 * (size_t)n1, &q, err);
  if (!rc) rc = cpu_alloc(be, (size_t)n0 * sizeof(float), &scale, err);
  if (!rc) rc = es_fp8_quantize_rows(host, dt, 0, n0, n1, q, scale, 0, err);
  if (!rc) rc = cpu_gemm_reserve(cb, n1, err);
  if (rc) return rc;
  *out = (es_weight_t){.data = q, .dtype = ES_DT_FP8E4M3, .n0 = n0, .n1 = n1, .scale = scale};
  return ES_OK;
}

static int cpu_write(es_backend_t *be, void *dst, const void *src, size_t bytes, es_error_t *err) {
  memcpy(dst, src, bytes);
  return ES_OK;
}
static int cpu_read(es_backend_t *be, void *dst, const void *src, size_t bytes, es_error_t *err) {
  memcpy(dst, src, bytes);
  return ES_OK;
}
static int cpu_write_act(es_backend_t *be, void *dst, const float *src, size_t count, es_error_t *err) {
  memcpy(dst, src, count * sizeof(float));
  return ES_OK;
}
static int cpu_read_act(es_backend_t *be, float *dst, const void *src, size_t count, es_error_t *err) {
  memcpy(dst, src, count * sizeof(float));
  return ES_OK;
}
static int cpu_sync(es_backend_t *be, es_error_t *err) {
  return ES_OK;
}

static int cpu_kv_init(es_backend_t *be, es_error_t *err) {
  cpu_backend_t *cb = cpu_be(be);
  const size_t rows = (size_t)be->kv_layers * 2 * (size_t)be->kv_heads * ES_KV_BLOCK; /* per block */
  const size_t per_block = rows * (size_t)be->kv_head_dim, elem = be->opts.kv_fp8 ? 1 : sizeof(float);
  if ((size_t)be->kv_blocks > (((size_t)1 << 46) / sizeof(float)) / per_block)
    return es_fail(err, ES_ETOOBIG, "cpu: KV cache of %d blocks x %zu values", be->kv_blocks, per_block);
  cb->kv = calloc((size_t)be->kv_blocks * per_block, elem);
  if (cb->kv && be->opts.kv_fp8) cb->kv_scale = calloc((size_t)be->kv_blocks * rows, sizeof(float));
  if (!cb->kv || (be->opts.kv_fp8 && !cb->kv_scale)) {
    free(cb->kv);
    free(cb->kv_scale);
    cb->kv = NULL;
    return es_fail(err, ES_ENOMEM, "cpu: cannot allocate the KV cache (%d blocks, %.1f MiB)", be->kv_blocks,
                   (double)be->kv_blocks *
                       (double)es_backend_kv_block_bytes(be, be->kv_layers, be->kv_heads, be->kv_head_dim) / 1048576.0);
  }
  return ES_OK;
}

/* The batch arrays already live on the host (backend.c's copy): nothing to upload. */
static int cpu_set_batch(es_backend_t *be, const es_batch_t *batch, es_error_t *err) {
  return ES_OK;
}

static const es_backend_ops_t cpu_ops = {
    .kind = "cpu",
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .upload_weight = cpu_upload_weight,
    .write = cpu_write,
    .read = cpu_read,
    .write_act = cpu_write_act,
    .read_act = cpu_read_act,
    .sync = cpu_sync,
    .kv_init = cpu_kv_init,
    .set_batch = cpu_set_batch,
    .linear = cpu_op_linear,
    .conv1d = cpu_op_conv1d,
    .layer_norm = cpu_op_layer_norm,
    .rms_norm = cpu_op_rms_norm,
    .add_rows = cpu_op_add_rows,
    .rope_kv_store = cpu_op_rope_kv_store,
    .attention_paged = cpu_op_attention_paged,
    .attention_dense = cpu_op_attention_dense,
    .silu_mul = cpu_op_silu_mul,
    .avg_pool2 = cpu_op_avg_pool2,
    .embed = cpu_op_embed,
    .gather_rows = cpu_op_gather_rows,
    .scatter_rows = cpu_op_scatter_rows,
    .logits = cpu_op_logits,
    .upload_weight_fp8 = cpu_upload_weight_fp8,
    .sampler_init = cpu_sampler_init,
    .sampler_reset = cpu_sampler_reset,
    .sample_prepare = cpu_sample_prepare,
    .sample = cpu_op_sample,
};

int es_backend_create_cpu(const es_backend_opts_t *opts, es_backend_t **out, es_error_t *err) {
  *out = NULL;
  if (opts->compute_dtype != ES_DT_F32)
    return es_fail(err, ES_EUNSUPPORTED, "cpu backend: compute dtype %s (only float32)",
                   es_dtype_name(opts->compute_dtype));
  int n_threads = opts->n_threads;
  if (n_threads < 0 || n_threads > 1024) return es_fail(err, ES_EINVAL, "cpu backend: %d threads", n_threads);
  if (n_threads == 0) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    n_threads = n < 1 ? 1 : n > 256 ? 256 : (int)n;
  }
  cpu_backend_t *cb = calloc(1, sizeof *cb);
  if (!cb) return es_fail(err, ES_ENOMEM, "cpu backend: out of memory");
  es_backend_t *be = &cb->base;
  be->ops = &cpu_ops;
  be->act_dtype = ES_DT_F32;
  be->opts = *opts;
  be->opts.n_threads = n_threads;
  cb->n_threads = n_threads;
  cb->isa = cpu_gemm_best_isa();
  cb->gemm_path = CPU_GEMM_C; /* see cpu_gemm.c for the measurement behind this default */
  for (int c = 0; c < 256; c++) cb->fp8_lut[c] = es_fp8_decode((uint8_t)c);
  snprintf(be->name, sizeof be->name, "cpu (%d threads, %s)", n_threads, cpu_isa_name(cb->isa));
  int rc = es_backend_base_init(be, err);
  if (rc) goto fail;
  cb->scratch = calloc((size_t)n_threads, sizeof *cb->scratch);
  if (!cb->scratch) {
    rc = es_fail(err, ES_ENOMEM, "cpu backend: out of memory");
    goto fail;
  }
  rc = cpu_pool_create(n_threads, &cb->pool, err);
  if (rc) goto fail;
  rc = cpu_scratch_reserve(cb, CPU_SCR_ATT, be->opts.max_blocks * ES_KV_BLOCK, err);
  if (rc) goto fail;
  cpu_gemm_blas_init();
  *out = be;
  return ES_OK;
fail:
  cpu_destroy(be);
  return rc;
}

const char *cpu_isa_name(cpu_isa_t isa) {
  switch (isa) {
  case CPU_ISA_GENERIC: return "generic";
  case CPU_ISA_AVX2: return "avx2";
  default: return "?";
  }
}

int cpu_backend_set_gemm_path(es_backend_t *be, cpu_gemm_path_t path, es_error_t *err) {
  cpu_backend_t *cb = cpu_be(be);
  if (path == CPU_GEMM_BLAS && !cpu_gemm_have_blas())
    return es_fail(err, ES_EUNSUPPORTED, "cpu: built without OpenBLAS");
  if (path != CPU_GEMM_C && path != CPU_GEMM_BLAS) return es_fail(err, ES_EINVAL, "cpu: GEMM path %d", (int)path);
  cb->gemm_path = path;
  return cpu_gemm_reserve(cb, cb->max_k, err); /* the BLAS path has its own tiles */
}

int cpu_backend_set_isa(es_backend_t *be, cpu_isa_t isa, es_error_t *err) {
  cpu_backend_t *cb = cpu_be(be);
  if ((int)isa < 0 || isa >= CPU_ISA_COUNT) return es_fail(err, ES_EINVAL, "cpu: instruction set %d", (int)isa);
  if (isa > cpu_gemm_best_isa())
    return es_fail(err, ES_EUNSUPPORTED, "cpu: %s not supported by this CPU", cpu_isa_name(isa));
  cb->isa = isa;
  return ES_OK;
}
