// cuda_backend: es_backend_create_cuda, the backend's memory and copies, the weight upload and the step's
// batch. See cuda_backend.h for what it owns; the ops live in cuda_gemm.cu, cuda_ops.cu, cuda_attention.cu.
//
// Weight upload (es_backend_upload_weight gets host pointers into the checkpoint mmap, in the stored dtype):
// the bytes go through two pinned staging buffers in CUDA_STAGE_BYTES chunks. Chunk i is read from the mmap
// into pinned buffer i % 2 on the host while chunk i - 1 is in flight on copy stream (i - 1) % 2; each chunk
// is copied to the device and, when the stored dtype is not the compute dtype, converted there by a kernel
// (fp16/fp32/bf16 -> bf16 or fp32). An event per buffer says when it may be refilled, and the compute stream
// waits on both events, so no op can read a weight before it is complete.
// Napkin math: 16.8 GB of bf16 weights at ~25 GB/s (PCIe 5 x16, pinned) ≈ 0.7 s when the mmap's pages are
// cached; reading the pages from disk is usually the bound.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_fast.h"
#include "attn_math.h"
#include "cuda_attention.h"
#include "cuda_check.h"
#include "cuda_convert.h"
#include "cuda_fp8.h"
#include "cuda_gemm.h"
#include "cuda_gemv.h"
#include "cuda_ops.h"
#include "cuda_sample.h"
#include "es_gpu.h"
#include "fp8_quant.h"

extern "C" int cuda_enter(cuda_backend_t *cb, es_error_t *err) {
  ES_CUDA_TRY(err, cudaSetDevice(cb->device));
  return ES_OK;
}

// Records p for release at destroy (p already allocated; freed here when the list cannot grow).
static int track(cuda_backend_t *cb, void *p, es_error_t *err) {
  if (cb->n_allocs == cb->cap_allocs) {
    size_t cap = cb->cap_allocs ? 2 * cb->cap_allocs : 256;
    void **a = (void **)realloc(cb->allocs, cap * sizeof *a);
    if (!a) {
      cudaFree(p);
      return es_fail(err, ES_ENOMEM, "%s: out of host memory tracking allocations", cb->base.name);
    }
    cb->allocs = a;
    cb->cap_allocs = cap;
  }
  cb->allocs[cb->n_allocs++] = p;
  return ES_OK;
}

// cudaMalloc of bytes (rounded up to 256), tracked. Running out of device memory is ES_ENOMEM with the
// numbers (not a device fault: the backend stays healthy); other failures are ES_EDEVICE.
static int dev_alloc(cuda_backend_t *cb, size_t bytes, const char *what, void **out, es_error_t *err) {
  *out = NULL;
  size_t n = bytes ? (bytes + 255) / 256 * 256 : 256;
  void *p = NULL;
  cudaError_t e = cudaMalloc(&p, n);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    return es_fail(err, ES_ENOMEM,
                   "%s: out of GPU memory allocating %.1f MiB for %s (%.1f MiB free of %.1f MiB; weights so far "
                   "%.1f MiB): the model does not fit this card at this dtype and size — try --dtype bfloat16 "
                   "or a smaller --max-model-len",
                   cb->base.name, (double)n / 1048576.0, what, (double)free_b / 1048576.0,
                   (double)total_b / 1048576.0, (double)cb->weight_bytes / 1048576.0);
  }
  if (e != cudaSuccess) return es_cuda_fail(err, e, "cudaMalloc", __FILE__, __LINE__);
  int rc = track(cb, p, err);
  if (rc) return rc;
  *out = p;
  return ES_OK;
}

static void cuda_destroy(es_backend_t *be) {
  cuda_backend_t *cb = cuda_be(be);
  if (cb->device >= 0) cudaSetDevice(cb->device);
  // freed while recording (an error path that skipped es_backend_graph_abort): end the capture first — a
  // cudaStreamSynchronize of a capturing stream is refused and invalidates the capture, and the stream would be
  // destroyed mid-capture
  if (be->recording) {
    be->recording = 0;
    cuda_graph_abort(be);
  }
  if (cb->stream) cudaStreamSynchronize(cb->stream);
  for (int i = 0; i < 2; i++)
    if (cb->copy[i]) cudaStreamSynchronize(cb->copy[i]);
  cuda_graphs_free(cb);
  cuda_gemm_free_plans(cb);
  cuda_sampler_free(be);
  if (cb->lt) cublasLtDestroy(cb->lt);
  for (size_t i = 0; i < cb->n_allocs; i++) cudaFree(cb->allocs[i]);
  free(cb->allocs);
  for (int i = 0; i < 2; i++) {
    if (cb->stage_host[i]) cudaFreeHost(cb->stage_host[i]);
    if (cb->copy_done[i]) cudaEventDestroy(cb->copy_done[i]);
    if (cb->copy[i]) cudaStreamDestroy(cb->copy[i]);
  }
  if (cb->batch_host) cudaFreeHost(cb->batch_host);
  if (cb->batch_done) cudaEventDestroy(cb->batch_done);
  if (cb->stream) cudaStreamDestroy(cb->stream);
  cudaGetLastError(); // nothing above may leave an error for the next backend on this thread
  es_backend_base_free(be);
  free(cb);
}

static int cuda_alloc(es_backend_t *be, size_t bytes, void **out, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  if (bytes > ((size_t)1 << 46)) return es_fail(err, ES_ETOOBIG, "%s: allocation of %zu bytes", be->name, bytes);
  rc = dev_alloc(cb, bytes, "activations", out, err);
  if (rc) return rc;
  ES_CUDA_TRY(err, cudaMemsetAsync(*out, 0, bytes ? (bytes + 255) / 256 * 256 : 256, cb->stream));
  ES_CUDA_TRY(err, cudaStreamSynchronize(cb->stream));
  return ES_OK;
}

// Copies n elements of src_dt from host memory to dst (dst_dt) on the device through the staging buffers,
// converting on the device when the dtypes differ. Returns when the host memory has been read; the compute
// stream is made to wait for the copies.
static int upload(cuda_backend_t *cb, void *dst, es_dtype_t dst_dt, const void *host, es_dtype_t src_dt, int64_t n,
                  es_error_t *err) {
  size_t es = es_dtype_size(src_dt), ed = es_dtype_size(dst_dt);
  int64_t chunk = (int64_t)(CUDA_STAGE_BYTES / es);
  for (int64_t off = 0, i = 0; off < n; off += chunk, i++) {
    int b = (int)(i % 2);
    int64_t cnt = n - off < chunk ? n - off : chunk;
    ES_CUDA_TRY(err, cudaEventSynchronize(cb->copy_done[b])); // buffer b's previous chunk is done
    memcpy(cb->stage_host[b], (const char *)host + (size_t)off * es, (size_t)cnt * es);
    char *d = (char *)dst + (size_t)off * ed;
    if (src_dt == dst_dt) {
      ES_CUDA_TRY(err, cudaMemcpyAsync(d, cb->stage_host[b], (size_t)cnt * es, cudaMemcpyHostToDevice, cb->copy[b]));
    } else {
      ES_CUDA_TRY(err, cudaMemcpyAsync(cb->stage_dev[b], cb->stage_host[b], (size_t)cnt * es,
                                       cudaMemcpyHostToDevice, cb->copy[b]));
      int rc = cuda_convert(d, dst_dt, cb->stage_dev[b], src_dt, cnt, cb->copy[b], err);
      if (rc) return rc;
    }
    ES_CUDA_TRY(err, cudaEventRecord(cb->copy_done[b], cb->copy[b]));
  }
  for (int b = 0; b < 2; b++) ES_CUDA_TRY(err, cudaStreamWaitEvent(cb->stream, cb->copy_done[b], 0));
  return ES_OK;
}

static int cuda_upload_weight(es_backend_t *be, const void *host, es_dtype_t dt, int64_t n0, int64_t n1,
                              es_weight_t *out, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  if (dt != ES_DT_F32 && dt != ES_DT_BF16 && dt != ES_DT_F16)
    return es_fail(err, ES_EINVAL, "%s: weight dtype %d unknown", be->name, (int)dt);
  if (!host) return es_fail(err, ES_EINVAL, "%s: weight [%lld, %lld] has no data", be->name, (long long)n0,
                            (long long)n1);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  int64_t n = n0 * n1;
  size_t bytes = (size_t)n * cuda_act_size(cb);
  void *d = NULL;
  if ((rc = dev_alloc(cb, bytes, "a weight", &d, err))) return rc;
  cb->weight_bytes += bytes;
  if ((rc = upload(cb, d, be->act_dtype, host, dt, n, err))) return rc;
  out->data = d;
  out->dtype = be->act_dtype;
  out->n0 = n0;
  out->n1 = n1;
  return ES_OK;
}

/* ---- fp8 weights ----
 * Quantised on the host (fp8_quant.c, threaded) straight into the pinned staging buffers, whole rows at a time,
 * while the previous chunk copies; the scales go last. The host memory is only read. The dequantise scratch of
 * the GEMM path grows to the largest fp8 weight here, at load, so no op allocates. */
static void untrack_free(cuda_backend_t *cb, void *p) {
  for (size_t i = 0; i < cb->n_allocs; i++)
    if (cb->allocs[i] == p) {
      cb->allocs[i] = cb->allocs[--cb->n_allocs];
      cudaFree(p);
      return;
    }
}

static int cuda_upload_weight_fp8(es_backend_t *be, const void *host, es_dtype_t dt, int64_t n0, int64_t n1,
                                  es_weight_t *out, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  if ((size_t)n1 > CUDA_STAGE_BYTES)
    return es_fail(err, ES_EUNSUPPORTED, "%s: fp8 weight row of %lld values exceeds the %u-byte staging buffer",
                   be->name, (long long)n1, CUDA_STAGE_BYTES);
  size_t n = (size_t)n0 * (size_t)n1;
  void *q = NULL, *scale = NULL;
  if ((rc = dev_alloc(cb, n, "an fp8 weight", &q, err)) ||
      (rc = dev_alloc(cb, (size_t)n0 * sizeof(float), "fp8 scales", &scale, err)))
    return rc;
  cb->weight_bytes += n + (size_t)n0 * sizeof(float);
  if (n > cb->fp8_scratch_elems) { /* the GEMM path's dequantised copy (weights arrive before any step) */
    void *scr = NULL;
    ES_CUDA_TRY(err, cudaStreamSynchronize(cb->stream)); /* no queued op still reads the old scratch */
    if ((rc = dev_alloc(cb, n * cuda_act_size(cb), "the fp8 dequantise scratch", &scr, err))) return rc;
    if (cb->fp8_scratch) untrack_free(cb, cb->fp8_scratch);
    cb->fp8_scratch = scr;
    cb->fp8_scratch_elems = n;
  }
  float *hs = (float *)malloc((size_t)n0 * sizeof(float));
  if (!hs) return es_fail(err, ES_ENOMEM, "%s: out of host memory for %lld fp8 scales", be->name, (long long)n0);
  int64_t rows_per = (int64_t)(CUDA_STAGE_BYTES / (size_t)n1);
  cudaError_t e = cudaSuccess;
  const char *call = "";
  for (int64_t r0 = 0, i = 0; r0 < n0 && !rc && e == cudaSuccess; r0 += rows_per, i++) {
    int b = (int)(i % 2);
    int64_t cnt = n0 - r0 < rows_per ? n0 - r0 : rows_per;
    call = "cudaEventSynchronize";
    if ((e = cudaEventSynchronize(cb->copy_done[b])) != cudaSuccess) break; /* buffer b's last chunk is done */
    rc = es_fp8_quantize_rows(host, dt, r0, cnt, n1, (uint8_t *)cb->stage_host[b], hs + r0, 0, err);
    if (rc) break;
    call = "cudaMemcpyAsync";
    e = cudaMemcpyAsync((uint8_t *)q + (size_t)r0 * (size_t)n1, cb->stage_host[b], (size_t)cnt * (size_t)n1,
                        cudaMemcpyHostToDevice, cb->copy[b]);
    if (e == cudaSuccess) {
      call = "cudaEventRecord";
      e = cudaEventRecord(cb->copy_done[b], cb->copy[b]);
    }
  }
  /* from pageable memory: returns once hs has been staged, so it may be freed below; ordered on the stream */
  if (!rc && e == cudaSuccess) {
    call = "cudaMemcpyAsync (scales)";
    e = cudaMemcpyAsync(scale, hs, (size_t)n0 * sizeof(float), cudaMemcpyHostToDevice, cb->stream);
  }
  free(hs);
  if (e != cudaSuccess) return es_cuda_fail(err, e, call, __FILE__, __LINE__);
  if (rc) return rc;
  for (int b = 0; b < 2; b++) ES_CUDA_TRY(err, cudaStreamWaitEvent(cb->stream, cb->copy_done[b], 0));
  *out = (es_weight_t){q, ES_DT_FP8E4M3, n0, n1, (const float *)scale};
  return ES_OK;
}

static int cuda_write(es_backend_t *be, void *dst, const void *src, size_t bytes, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  // From pageable memory: returns once src has been staged, so the caller may reuse it; ordered on the stream.
  ES_CUDA_TRY(err, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cb->stream));
  return ES_OK;
}

static int cuda_read(es_backend_t *be, void *dst, const void *src, size_t bytes, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  ES_CUDA_TRY(err, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cb->stream));
  ES_CUDA_TRY(err, cudaStreamSynchronize(cb->stream));
  return ES_OK;
}

static int cuda_write_act(es_backend_t *be, void *dst, const float *src, size_t count, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  if (be->act_dtype == ES_DT_F32) return cuda_write(be, dst, src, count * sizeof(float), err);
  // fp32 -> bf16 through the staging buffers; the stream waits for the copies (upload orders them)
  ES_CUDA_TRY(err, cudaStreamSynchronize(cb->stream)); // the copy streams are not ordered after earlier ops
  return upload(cb, dst, be->act_dtype, src, ES_DT_F32, (int64_t)count, err);
}

static int cuda_read_act(es_backend_t *be, float *dst, const void *src, size_t count, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  if (be->act_dtype == ES_DT_F32) return cuda_read(be, dst, src, count * sizeof(float), err);
  size_t chunk = CUDA_STAGE_BYTES / sizeof(float);
  for (size_t off = 0; off < count; off += chunk) {
    size_t cnt = count - off < chunk ? count - off : chunk;
    if ((rc = cuda_convert(cb->stage_dev[0], ES_DT_F32, (const uint16_t *)src + off, ES_DT_BF16, (int64_t)cnt,
                           cb->stream, err)))
      return rc;
    ES_CUDA_TRY(err, cudaMemcpyAsync(cb->stage_host[0], cb->stage_dev[0], cnt * sizeof(float),
                                     cudaMemcpyDeviceToHost, cb->stream));
    ES_CUDA_TRY(err, cudaStreamSynchronize(cb->stream));
    memcpy(dst + off, cb->stage_host[0], cnt * sizeof(float));
  }
  return ES_OK;
}

static int cuda_sync(es_backend_t *be, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  ES_CUDA_TRY(err, cudaStreamSynchronize(cb->stream));
  return ES_OK;
}

static int cuda_kv_init(es_backend_t *be, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  size_t per_block = es_backend_kv_block_bytes(be, be->kv_layers, be->kv_heads, be->kv_head_dim);
  if ((size_t)be->kv_blocks > ((size_t)1 << 46) / per_block)
    return es_fail(err, ES_ETOOBIG, "%s: KV cache of %d blocks x %zu bytes", be->name, be->kv_blocks, per_block);
  size_t bytes = (size_t)be->kv_blocks * per_block;
  if ((rc = dev_alloc(cb, bytes, "the KV cache", &cb->kv, err))) return rc;
  if (be->opts.kv_fp8) // codes first (a multiple of 16 bytes: 16 rows per tile), then one float per row
    cb->kv_scale = (float *)((char *)cb->kv + (size_t)be->kv_blocks * (size_t)be->kv_layers * 2 * (size_t)be->kv_heads *
                                                  ES_KV_BLOCK * (size_t)be->kv_head_dim);
  size_t part = attn_fast_part_bytes(&be->opts, be->kv_heads, be->kv_head_dim); // split-KV decode scratch
  if (part && (rc = dev_alloc(cb, part, "the attention split scratch", (void **)&cb->attn_part, err))) return rc;
  cb->attn_part_bytes = part;
  // the split-KV decode kernel's arrival counters (attn_decode.cu, CUDA_FUSE_COMBINE): zero, and zeroed again by
  // the kernel after each use
  const int64_t arrivals = part ? attn_arrival_slots(part, be->kv_head_dim) : 0;
  if (arrivals > 0) {
    if ((rc = dev_alloc(cb, (size_t)arrivals * sizeof(int32_t), "the attention arrival counters",
                        (void **)&cb->attn_arrivals, err)))
      return rc;
    ES_CUDA_TRY(err, cudaMemsetAsync(cb->attn_arrivals, 0, (size_t)arrivals * sizeof(int32_t), cb->stream));
    cb->attn_arrivals_n = arrivals;
  }
  if (be->opts.deterministic) cb->attn_det_chunk = attn_fast_det_chunk(&be->opts, be->kv_heads, be->kv_head_dim);
  ES_CUDA_TRY(err, cudaMemsetAsync(cb->kv, 0, bytes, cb->stream));
  ES_CUDA_TRY(err, cudaStreamSynchronize(cb->stream));
  return ES_OK;
}

// The decode attention's plan for the step in cb->base.batch, made once here for every layer (attn_decode.cu
// launches with it): its rows, splits and keys per split; the chunk is sent to d_dec_chunk in stream order so
// that the kernels of a recorded step graph follow every replay's contexts. The caller has waited for
// batch_done (the pinned slot may be refilled) and records it after.
extern "C" int cuda_plan_decode(cuda_backend_t *cb, es_error_t *err) {
  const es_backend_t *be = &cb->base;
  const es_batch_t *b = &be->batch;
  const es_backend_opts_t *o = &be->opts;
  int64_t dec_rows = 0, dec_max_ctx = 0;
  for (int s = 0; s < b->n_seqs; s++) {
    const int q_len = b->q_start[s + 1] - b->q_start[s];
    if (q_len > ATTN_DECODE_MAX_Q) continue;
    dec_rows += q_len;
    if (b->ctx_len[s] > dec_max_ctx) dec_max_ctx = b->ctx_len[s];
  }
  attn_split_t p = {1, cb->attn_det_chunk > 0 ? cb->attn_det_chunk : ATTN_SPLIT_ALIGN}; /* deterministic mode */
  if (!o->deterministic) {
    const int cap = attn_decode_split_cap(cb, b->n_seqs, be->kv_heads, be->kv_head_dim);
    p = attn_split_plan(dec_rows * be->kv_heads, dec_max_ctx, cb->sm_count, cap, cb->attn_splits);
  }
  int32_t *hk = cb->batch_host + (o->max_seqs + 1) + o->max_seqs + 2 * o->max_tokens + o->max_seqs * o->max_blocks;
  *hk = p.chunk;
  cb->dec_chunk = p.chunk;
  cb->dec_splits = p.n_splits;
  cb->dec_rows = dec_rows;
  ES_CUDA_TRY(err, cudaMemcpyAsync(cb->d_dec_chunk, hk, sizeof(int32_t), cudaMemcpyHostToDevice, cb->stream));
  return ES_OK;
}

// The batch arrays go to fixed device buffers (a captured graph reads them on replay), through one pinned
// host buffer; the previous step's copy must be done before that buffer is refilled.
static int cuda_set_batch(es_backend_t *be, const es_batch_t *b, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  const es_backend_opts_t *o = &be->opts;
  ES_CUDA_TRY(err, cudaEventSynchronize(cb->batch_done));
  int32_t *h = cb->batch_host;
  size_t n_q = (size_t)b->n_seqs + 1, n_s = (size_t)b->n_seqs, n_t = (size_t)b->n_tokens,
         n_tab = (size_t)b->n_seqs * (size_t)b->max_blocks;
  int32_t *hq = h, *hc = hq + o->max_seqs + 1, *hp = hc + o->max_seqs, *hs = hp + o->max_tokens,
          *ht = hs + o->max_tokens;
  memcpy(hq, b->q_start, n_q * sizeof(int32_t));
  memcpy(hc, b->ctx_len, n_s * sizeof(int32_t));
  memcpy(hp, b->positions, n_t * sizeof(int32_t));
  memcpy(hs, b->slot, n_t * sizeof(int32_t));
  memcpy(ht, b->block_table, n_tab * sizeof(int32_t));
  ES_CUDA_TRY(err, cudaMemcpyAsync(cb->d_q_start, hq, n_q * sizeof(int32_t), cudaMemcpyHostToDevice, cb->stream));
  ES_CUDA_TRY(err, cudaMemcpyAsync(cb->d_ctx_len, hc, n_s * sizeof(int32_t), cudaMemcpyHostToDevice, cb->stream));
  ES_CUDA_TRY(err, cudaMemcpyAsync(cb->d_positions, hp, n_t * sizeof(int32_t), cudaMemcpyHostToDevice, cb->stream));
  ES_CUDA_TRY(err, cudaMemcpyAsync(cb->d_slot, hs, n_t * sizeof(int32_t), cudaMemcpyHostToDevice, cb->stream));
  ES_CUDA_TRY(err, cudaMemcpyAsync(cb->d_block_table, ht, n_tab * sizeof(int32_t), cudaMemcpyHostToDevice,
                                   cb->stream));
  if ((rc = cuda_plan_decode(cb, err))) return rc;
  ES_CUDA_TRY(err, cudaEventRecord(cb->batch_done, cb->stream));
  return ES_OK;
}

/* ---- op profiles: one timing event per mark, recorded on the op stream ---- */

static void cuda_prof_free(es_backend_t *be) {
  cuda_backend_t *cb = cuda_be(be);
  for (int i = 0; i < cb->prof_n; i++) cudaEventDestroy(cb->prof_ev[i]);
  free(cb->prof_ev);
  cb->prof_ev = NULL;
  cb->prof_n = 0;
}

static int cuda_prof_init(es_backend_t *be, int n_marks, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  cb->prof_ev = (cudaEvent_t *)calloc((size_t)n_marks, sizeof *cb->prof_ev);
  if (!cb->prof_ev) return es_fail(err, ES_ENOMEM, "%s: out of memory for %d profile events", be->name, n_marks);
  for (; cb->prof_n < n_marks; cb->prof_n++) {
    cudaError_t e = cudaEventCreate(&cb->prof_ev[cb->prof_n]);
    if (e != cudaSuccess) {
      cuda_prof_free(be);
      return es_fail(err, ES_EDEVICE, "%s: cudaEventCreate: %s", be->name, cudaGetErrorString(e));
    }
  }
  return ES_OK;
}

static int cuda_prof_mark(es_backend_t *be, int mark, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  ES_CUDA_TRY(err, cudaEventRecord(cb->prof_ev[mark], cb->stream));
  return ES_OK;
}

static int cuda_prof_ms(es_backend_t *be, int a, int b, double *ms, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  float f = 0;
  ES_CUDA_TRY(err, cudaEventSynchronize(cb->prof_ev[b]));
  ES_CUDA_TRY(err, cudaEventElapsedTime(&f, cb->prof_ev[a], cb->prof_ev[b]));
  *ms = f;
  return ES_OK;
}

static const es_backend_ops_t cuda_ops = {
    "cuda",
    cuda_destroy,
    cuda_alloc,
    cuda_upload_weight,
    cuda_write,
    cuda_read,
    cuda_write_act,
    cuda_read_act,
    cuda_sync,
    cuda_kv_init,
    cuda_set_batch,
    cuda_op_linear,
    cuda_op_conv1d,
    cuda_op_layer_norm,
    cuda_op_rms_norm,
    cuda_op_add_rows,
    cuda_op_rope_kv_store,
    cuda_op_attention_paged,
    cuda_op_attention_dense,
    cuda_op_silu_mul,
    cuda_op_avg_pool2,
    cuda_op_embed,
    cuda_op_gather_rows,
    cuda_op_scatter_rows,
    cuda_op_logits,
    cuda_graphs_supported,
    cuda_graph_begin,
    cuda_graph_end,
    cuda_graph_abort,
    cuda_graph_has,
    cuda_graph_launch,
    cuda_upload_weight_fp8,
    cuda_sampler_init,
    cuda_sampler_reset,
    cuda_sample_prepare,
    cuda_op_sample,
    cuda_prof_init,
    cuda_prof_mark,
    cuda_prof_ms,
    cuda_prof_free,
    cuda_op_linear_silu_mul_ok,
    cuda_op_linear_silu_mul,
    cuda_op_linear_rms_norm_ok,
    cuda_op_linear_rms_norm,
    cuda_op_linear_rope_kv_store_ok,
    cuda_op_linear_rope_kv_store,
};

static int create_resources(cuda_backend_t *cb, es_error_t *err) {
  es_backend_t *be = &cb->base;
  const es_backend_opts_t *o = &be->opts;
  ES_CUDA_TRY(err, cudaStreamCreateWithFlags(&cb->stream, cudaStreamNonBlocking));
  for (int i = 0; i < 2; i++) {
    ES_CUDA_TRY(err, cudaStreamCreateWithFlags(&cb->copy[i], cudaStreamNonBlocking));
    ES_CUDA_TRY(err, cudaEventCreateWithFlags(&cb->copy_done[i], cudaEventDisableTiming));
    ES_CUDA_TRY(err, cudaEventRecord(cb->copy_done[i], cb->copy[i])); // "done" before the first use
    ES_CUDA_TRY(err, cudaHostAlloc(&cb->stage_host[i], CUDA_STAGE_BYTES, cudaHostAllocDefault));
  }
  ES_CUDA_TRY(err, cudaEventCreateWithFlags(&cb->batch_done, cudaEventDisableTiming));
  ES_CUDA_TRY(err, cudaEventRecord(cb->batch_done, cb->stream));
  int rc;
  for (int i = 0; i < 2; i++)
    if ((rc = dev_alloc(cb, CUDA_STAGE_BYTES, "staging buffers", &cb->stage_dev[i], err))) return rc;
  if ((rc = dev_alloc(cb, CUDA_IM2COL_BYTES, "the conv1d scratch", &cb->im2col, err))) return rc;
  // the GEMVs' fused RMSNorm (CUDA_FUSE_NORM): one arrival counter, zero, and zeroed again by each launch's last block
  if ((rc = dev_alloc(cb, sizeof(int32_t), "the RMSNorm arrival counter", (void **)&cb->norm_arrivals, err))) return rc;
  ES_CUDA_TRY(err, cudaMemsetAsync(cb->norm_arrivals, 0, sizeof(int32_t), cb->stream));
  ES_CUBLAS_TRY(err, cublasLtCreate(&cb->lt));
  if ((rc = dev_alloc(cb, CUDA_LT_WORKSPACE, "the cuBLASLt workspace", &cb->lt_ws, err))) return rc;
  size_t n_batch = (o->max_seqs + 1) + o->max_seqs + 2 * o->max_tokens + o->max_seqs * o->max_blocks + 1;
  ES_CUDA_TRY(err, cudaHostAlloc((void **)&cb->batch_host, n_batch * sizeof(int32_t), cudaHostAllocDefault));
  void *p;
  if ((rc = dev_alloc(cb, n_batch * sizeof(int32_t), "the batch description", &p, err))) return rc;
  cb->d_q_start = (int32_t *)p;
  cb->d_ctx_len = cb->d_q_start + o->max_seqs + 1;
  cb->d_positions = cb->d_ctx_len + o->max_seqs;
  cb->d_slot = cb->d_positions + o->max_tokens;
  cb->d_block_table = cb->d_slot + o->max_tokens;
  cb->d_dec_chunk = cb->d_block_table + o->max_seqs * o->max_blocks;
  return cuda_attention_init(cb, (int64_t)o->max_blocks * ES_KV_BLOCK, err);
}

extern "C" int es_backend_create_cuda(const es_backend_opts_t *opts, es_backend_t **out, es_error_t *err) {
  *out = NULL;
  if (opts->compute_dtype != ES_DT_BF16 && opts->compute_dtype != ES_DT_F32)
    return es_fail(err, ES_EUNSUPPORTED, "cuda backend: compute dtype %s (bfloat16 or float32)",
                   es_dtype_name(opts->compute_dtype));
  int count = 0;
  char why[128] = "";
  int rc = es_gpu_count(&count, why, sizeof why, err);
  if (rc) return rc;
  if (count == 0) return es_fail(err, ES_EUNSUPPORTED, "cuda backend: no GPU available (%s)", why);
  if (opts->device < 0 || opts->device >= count)
    return es_fail(err, ES_ENOTFOUND, "cuda backend: device %d does not exist (%d GPU%s)", opts->device, count,
                   count == 1 ? "" : "s");
  es_gpu_info_t info;
  if ((rc = es_gpu_info(opts->device, &info, err))) return rc;
  if (info.cc_major < 8)
    return es_fail(err, ES_EUNSUPPORTED, "cuda backend: %s is sm_%d%d; earshot needs sm_80 or newer (bf16)",
                   info.name, info.cc_major, info.cc_minor);
  const char *fm = getenv("EARSHOT_FP8_MMA"); // 0 / 1 / 2: the tensor-core fp8 GEMV's mode (cuda_hooks.h)
  if (fm && *fm && strcmp(fm, "0") != 0 && strcmp(fm, "1") != 0 && strcmp(fm, "2") != 0)
    return es_fail(err, ES_EINVAL, "cuda backend: EARSHOT_FP8_MMA=%.40s: expected 0, 1 or 2", fm);
  const char *gr = getenv("EARSHOT_GEMV_ROWS"); // 1 or 2 weight rows per warp of the GEMVs at one row (cuda_gemv.h)
  if (gr && *gr && strcmp(gr, "1") != 0 && strcmp(gr, "2") != 0)
    return es_fail(err, ES_EINVAL, "cuda backend: EARSHOT_GEMV_ROWS=%.40s: expected 1 or 2", gr);
  const char *fu = getenv("EARSHOT_FUSE"); // a CUDA_FUSE_* mask, 0 to 15 (cuda_hooks.h); unset: every fusion
  char *fu_end = NULL;
  const long fu_mask = fu && *fu ? strtol(fu, &fu_end, 10) : (long)CUDA_FUSE_ALL;
  if (fu && *fu && (*fu_end != '\0' || fu_mask < 0 || fu_mask > CUDA_FUSE_ALL))
    return es_fail(err, ES_EINVAL,
                   "cuda backend: EARSHOT_FUSE=%.40s: expected a mask from 0 to 15 (1: the gate|up GEMV applies "
                   "SiLU·mul, 2: the decode attention merges its splits itself, 4: the GEMV before an RMSNorm "
                   "applies it, 8: the q|k|v GEMV applies RoPE and stores the KV cache)",
                   fu);
  cuda_backend_t *cb = (cuda_backend_t *)calloc(1, sizeof *cb);
  if (!cb) return es_fail(err, ES_ENOMEM, "cuda backend: out of memory");
  es_backend_t *be = &cb->base;
  be->ops = &cuda_ops;
  be->act_dtype = opts->compute_dtype;
  be->opts = *opts;
  cb->device = opts->device;
  cb->cc_major = info.cc_major;
  cb->cc_minor = info.cc_minor;
  cb->sm_count = info.sm_count;
  {
    const char *g = getenv("EARSHOT_CUDA_GRAPHS"); // "0" turns step graphs off (backend.h)
    cb->graphs_off = g && strcmp(g, "0") == 0;
    const char *gv = getenv("EARSHOT_GEMV"); // "0": decode GEMMs through cuBLASLt only (cuda_gemv.h)
    cb->gemv_mode = gv && strcmp(gv, "0") == 0 ? 0 : 1;
    const char *gp = getenv("EARSHOT_GEMV_PIPE"); // "0": the GEMVs without software pipelining (cuda_gemv.h)
    cb->gemv_pipe_off = gp && strcmp(gp, "0") == 0;
    cb->fp8_mma = fm && *fm ? fm[0] - '0' : 1;
    cb->fusions = (int)fu_mask;
    cb->gemv_rows = gr && *gr ? gr[0] - '0' : CUDA_GEMV_ROWS_DEFAULT;
    const char *pd = getenv("EARSHOT_PDL");  // "0": every kernel launched normally (cuda_common.cuh, cuda_launch)
    cb->pdl = !(pd && strcmp(pd, "0") == 0); // and only if the probe below passes
  }
  snprintf(be->name, sizeof be->name, "cuda:%d (%.120s, sm_%d%d, %s)", opts->device, info.name, info.cc_major,
           info.cc_minor, es_dtype_name(opts->compute_dtype));
  if ((rc = es_backend_base_init(be, err))) goto fail;
  if ((rc = cuda_enter(cb, err))) goto fail;
  {
    int optin = 0;
    cudaError_t e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, cb->device);
    if (e != cudaSuccess) {
      rc = es_cuda_fail(err, e, "cudaDeviceGetAttribute", __FILE__, __LINE__);
      goto fail;
    }
    cb->smem_optin = (size_t)optin;
  }
  // first: a build without code for this card fails here with a clear message, not in a kernel attribute call
  if ((rc = es_gpu_selftest(cb->device, err))) goto fail;
  if ((rc = create_resources(cb, err))) goto fail;
  cb->pdl_ok = cb->pdl && cb->cc_major >= 9 && cuda_pdl_probe(); // EARSHOT_PDL=0: not even probed
  cb->pdl = cb->pdl && cb->pdl_ok;
  *out = be;
  return ES_OK;
fail:
  es_error_prefix(err, "cuda backend: ");
  cuda_destroy(be);
  return rc;
}

// ---- hooks ------------------------------------------------------------------------------------------------

static int copy_bw(cuda_backend_t *cb, void *a, void *b, size_t bytes, int repeats, cudaEvent_t e0, cudaEvent_t e1,
                   double *bytes_per_s, es_error_t *err) {
  ES_CUDA_TRY(err, cudaMemsetAsync(a, 0x5a, bytes, cb->stream)); // not zeros (METHOD.md); the copy is blind anyway
  ES_CUDA_TRY(err, cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, cb->stream)); // warm-up
  ES_CUDA_TRY(err, cudaEventRecord(e0, cb->stream));
  for (int i = 0; i < repeats; i++)
    ES_CUDA_TRY(err, cudaMemcpyAsync(i % 2 ? a : b, i % 2 ? b : a, bytes, cudaMemcpyDeviceToDevice, cb->stream));
  ES_CUDA_TRY(err, cudaEventRecord(e1, cb->stream));
  ES_CUDA_TRY(err, cudaEventSynchronize(e1));
  float ms = 0.0f;
  ES_CUDA_TRY(err, cudaEventElapsedTime(&ms, e0, e1));
  *bytes_per_s = ms > 0 ? 2.0 * (double)bytes * repeats / (ms * 1e-3) : 0.0;
  return ES_OK;
}

extern "C" int cuda_backend_copy_bandwidth(es_backend_t *be, size_t bytes, int repeats, double *bytes_per_s,
                                           es_error_t *err) {
  *bytes_per_s = 0.0;
  cuda_backend_t *cb = cuda_hook_backend(be, "copy bandwidth", err);
  if (!cb) return ES_EINVAL;
  if (be->in_step) return es_fail(err, ES_EINTERNAL, "%s: copy bandwidth inside a step", be->name);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  void *a = NULL, *b = NULL;
  cudaEvent_t e0 = NULL, e1 = NULL;
  cudaError_t e = cudaMalloc(&a, bytes);
  if (e == cudaSuccess) e = cudaMalloc(&b, bytes);
  if (e == cudaSuccess) e = cudaEventCreate(&e0);
  if (e == cudaSuccess) e = cudaEventCreate(&e1);
  if (e != cudaSuccess) {
    rc = es_cuda_fail(err, e, "copy bandwidth buffers", __FILE__, __LINE__);
    // a failed cudaMalloc/cudaEventCreate stays in the thread's last-error state: clear it, or the next op's
    // ES_CUDA_LAUNCHED (cudaGetLastError) reports it as that op's launch failure (as dev_alloc does)
    cudaGetLastError();
  } else
    rc = copy_bw(cb, a, b, bytes, repeats < 1 ? 1 : repeats, e0, e1, bytes_per_s, err);
  cudaStreamSynchronize(cb->stream);
  cudaFree(a);
  cudaFree(b);
  if (e0) cudaEventDestroy(e0);
  if (e1) cudaEventDestroy(e1);
  return rc;
}

extern "C" int cuda_backend_det_attn_chunk(const es_backend_t *be) {
  return ((const cuda_backend_t *)be)->attn_det_chunk;
}

extern "C" int cuda_backend_set_fusions(es_backend_t *be, int mask, es_error_t *err) {
  cuda_backend_t *cb = cuda_hook_backend(be, "fusions", err);
  if (!cb) return ES_EINVAL;
  if (mask < 0 || mask > CUDA_FUSE_ALL)
    return es_fail(err, ES_EINVAL,
                   "fusions: mask %d (0 to %d: CUDA_FUSE_GLU | CUDA_FUSE_COMBINE | CUDA_FUSE_NORM | CUDA_FUSE_ROPE)",
                   mask, CUDA_FUSE_ALL);
  int rc = cuda_hook_change(cb, "fusions", cb->fusions != mask, err);
  if (rc) return rc;
  cb->fusions = mask;
  return ES_OK;
}

extern "C" int cuda_backend_fusions(const es_backend_t *be) {
  return strcmp(be->ops->kind, "cuda") == 0 ? ((const cuda_backend_t *)be)->fusions : 0;
}

extern "C" void cuda_backend_fused_calls(const es_backend_t *be, int64_t *glu, int64_t *combine, int64_t *norm,
                                         int64_t *rope) {
  const int cuda = strcmp(be->ops->kind, "cuda") == 0;
  *glu = cuda ? ((const cuda_backend_t *)be)->glu_calls : 0;
  *combine = cuda ? ((const cuda_backend_t *)be)->combine_fused : 0;
  *norm = cuda ? ((const cuda_backend_t *)be)->norm_calls : 0;
  *rope = cuda ? ((const cuda_backend_t *)be)->rope_calls : 0;
}
