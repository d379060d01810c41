// cuda_attention: the simple, obviously correct attention of the CUDA backend. See cuda_attention.h.
//
// One block (128 threads, 4 warps) per (query row, head). The block keeps q and all n scores of its row in
// shared memory: (1) warp w computes the scores of keys w, w + 4, …, each a dot product over D split across
// the 32 lanes and reduced by shuffles; (2) a block reduction gives the row max m, then e_j = exp(s_j − m)
// and their sum; p_j = e_j / Σ; (3) thread d accumulates out[d] = Σ_j p_j · v_j[d] over j in order. Every
// reduction has a fixed order, so a row's result does not depend on the rest of the batch. No tiling, no
// online softmax: the fast kernels of part 2 (flash prefill, split-KV decode) are tested against this one.
//
// bf16 rounding points as transformers' eager attention (SPEC §3.2, §4): the q·kᵀ product rounded, then
// times the scale rounded; softmax in fp32, probabilities rounded; p·v accumulated in fp32, rounded once.
// In fp32 mode all of these are identities.
//
// Shared memory: (D + n) floats per block, n = keys of the row: 8192 positions ≈ 33 KB; the limit is the
// device's opt-in maximum (227 KB on H100/H200: ≈ 58 K positions), checked at create and per call.
//
// Napkin math: the 30 s encoder, 20 heads × 1500 × 1500 × 64 × 2 (q·k and p·v) ≈ 5.8 GFLOP per layer, 184
// GFLOP for 32 layers, on CUDA cores at maybe 10–20 TFLOP/s effective: ≈ 10–20 ms; decode at context P reads
// 2·P·4096 bf16 per layer once (16 KB per position), ≈ 1.4 ms per token at P = 8192 on 3 TB/s — but this
// kernel uses only n_tokens × H blocks, so decode at batch 1 is latency-bound, not bandwidth-bound.
//
// Dispatch (part 2): each op call runs the fast kernels (attn_fast.h: flash prefill/encoder, split-KV decode)
// when cb->attn_path is CUDA_ATTN_FAST and they support the call (bf16, head dim 64 or 128, aligned rows), and
// this kernel otherwise — always in fp32 mode. The path comes from EARSHOT_ATTENTION=simple|fast at create
// (default fast) or cuda_backend_set_attention_path, so tests and device-check compare the two on one card.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn_fast.h"
#include "attn_math.h"
#include "cuda_attention.h"
#include "cuda_common.cuh"
#include "fp8_math.h"

#define ATT_THREADS 128
#define ATT_MAX_D 256       // head dims the shared-memory budget is sized for at create
#define ATT_LENS 256        // key lengths passed by value per dense launch

// The row's attention. q (D) T; element d of key j's K row is rows.key(j, d), of its V row rows.val(j, d) (fp32:
// the stored value, or with an fp8 KV cache decode(code) · scale as the CPU backend reads it); out (D) T.
// sm: (D + n) floats.
template <typename T, typename Rows>
__device__ void attend(T *out, const T *q, int D, int64_t n, float scale, const Rows &rows, float *sm) {
  __shared__ float red[32];
  float *qs = sm, *s = sm + D;
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int d = threadIdx.x; d < D; d += blockDim.x) qs[d] = to_f(q[d]);
  __syncthreads();
  for (int64_t j = warp; j < n; j += nw) {
    float acc = 0.0f;
    for (int d = lane; d < D; d += 32) acc = fmaf(qs[d], rows.key(j, d), acc);
    acc = warp_sum(acc);
    if (lane == 0) s[j] = rnd<T>(rnd<T>(acc) * scale);
  }
  __syncthreads();
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, s[j]);
  m = block_reduce(m, red, 1);
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    float e = expf(s[j] - m);
    s[j] = e;
    sum += e;
  }
  sum = block_reduce(sum, red, 0); // its barriers also publish every s[j] written above
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) s[j] = rnd<T>(s[j] / sum);
  __syncthreads();
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.0f;
    for (int64_t j = 0; j < n; j++) acc = fmaf(s[j], rows.val(j, d), acc);
    out[d] = from_f<T>(acc);
  }
}

// ---- paged: decoder rows over the KV pool ---------------------------------------------------------------

template <typename T> struct paged_rows_t {
  const T *kv;               // (L, n_blocks, 2, H, 16, D)
  const int32_t *table;      // this sequence's block-table row
  int64_t layer, n_blocks, H, h, D;
  __device__ const T *row(int64_t j, int which) const {
    int64_t blk = table[j / ES_KV_BLOCK]; // 64-bit before the strides (vLLM: int32 can overflow)
    int64_t tile = ((layer * n_blocks + blk) * 2 + which) * H + h;
    return kv + (tile * ES_KV_BLOCK + j % ES_KV_BLOCK) * D;
  }
  __device__ float key(int64_t j, int d) const { return to_f(row(j, 0)[d]); }
  __device__ float val(int64_t j, int d) const { return to_f(row(j, 1)[d]); }
};

// The same rows in an fp8 KV cache: e4m3 codes (L, n_blocks, 2, H, 16, D) and one scale per row (backend.h).
struct paged_fp8_rows_t {
  const uint8_t *codes;
  const float *scale;
  const int32_t *table;
  int64_t layer, n_blocks, H, h, D;
  __device__ float at(int64_t j, int which, int d) const {
    const int64_t r = attn_kv_pos_offset(table, j, layer, n_blocks, which, H, h, 1); // the row's index
    return es_fp8_decode(codes[r * D + d]) * scale[r];
  }
  __device__ float key(int64_t j, int d) const { return at(j, 0, d); }
  __device__ float val(int64_t j, int d) const { return at(j, 1, d); }
};

// Grid (n_tokens, H). q (n_tokens, ldq) T; out (n_tokens, H, D) T; kv the pool (T, or FP8: codes and kv_scale);
// batch arrays on the device.
template <typename T, bool FP8>
__global__ void attention_paged_kernel(T *out, const T *q, int64_t ldq, const void *kv, const float *kv_scale,
                                       int layer, int n_blocks, int H, int D, float scale, int n_seqs,
                                       const int32_t *q_start, const int32_t *ctx_len, const int32_t *block_table,
                                       int max_blocks) {
  extern __shared__ float sm[];
  int64_t i = blockIdx.x;
  int h = blockIdx.y;
  int lo = 0, hi = n_seqs - 1; // the sequence s with q_start[s] <= i < q_start[s + 1]
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (q_start[mid] <= i)
      lo = mid;
    else
      hi = mid - 1;
  }
  int64_t pos = ctx_len[lo] - (q_start[lo + 1] - i); // causal: keys 0 .. pos
  const int32_t *table = block_table + (int64_t)lo * max_blocks;
  if constexpr (FP8) {
    paged_fp8_rows_t rows = {(const uint8_t *)kv, kv_scale, table, layer, n_blocks, H, h, D};
    attend(out + (i * H + h) * D, q + i * ldq + (int64_t)h * D, D, pos + 1, scale, rows, sm);
  } else {
    paged_rows_t<T> rows = {(const T *)kv, table, layer, n_blocks, H, h, D};
    attend(out + (i * H + h) * D, q + i * ldq + (int64_t)h * D, D, pos + 1, scale, rows, sm);
  }
}

// ---- dense: encoder rows with key padding ------------------------------------------------------------------

template <typename T> struct dense_kv_t {
  const T *kb, *vb;
  int64_t ldk, ldv;
  __device__ float key(int64_t j, int d) const { return to_f(kb[j * ldk + d]); }
  __device__ float val(int64_t j, int d) const { return to_f(vb[j * ldv + d]); }
};

struct att_lens_t {
  int32_t n[ATT_LENS];
};

// Grid (T, H, nb) for batches b0 .. b0 + nb − 1. q/k/v (B, T, ld*) T; out (B, T, H, D) T.
template <typename T>
__global__ void attention_dense_kernel(T *out, const T *q, int64_t ldq, const T *k, int64_t ldk, const T *v,
                                       int64_t ldv, int64_t T_len, int H, int D, float scale, int64_t b0,
                                       att_lens_t lens) {
  extern __shared__ float sm[];
  int64_t t = blockIdx.x, b = b0 + blockIdx.z;
  int h = blockIdx.y;
  int64_t row0 = b * T_len, hd = (int64_t)h * D;
  dense_kv_t<T> rows = {k + row0 * ldk + hd, v + row0 * ldv + hd, ldk, ldv};
  attend(out + ((row0 + t) * H + h) * D, q + (row0 + t) * ldq + hd, D, (int64_t)lens.n[blockIdx.z], scale, rows, sm);
}

// ---- shared-memory budget ------------------------------------------------------------------------------------

static int set_smem(cuda_backend_t *cb, size_t bytes, es_error_t *err) {
  int b = (int)bytes;
  const cudaFuncAttribute smem = cudaFuncAttributeMaxDynamicSharedMemorySize;
  ES_CUDA_TRY(err, cudaFuncSetAttribute(attention_paged_kernel<float, false>, smem, b));
  ES_CUDA_TRY(err, cudaFuncSetAttribute(attention_paged_kernel<bf16, false>, smem, b));
  ES_CUDA_TRY(err, cudaFuncSetAttribute(attention_paged_kernel<float, true>, smem, b));
  ES_CUDA_TRY(err, cudaFuncSetAttribute(attention_paged_kernel<bf16, true>, smem, b));
  ES_CUDA_TRY(err, cudaFuncSetAttribute(attention_dense_kernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize, b));
  ES_CUDA_TRY(err, cudaFuncSetAttribute(attention_dense_kernel<bf16>, cudaFuncAttributeMaxDynamicSharedMemorySize, b));
  cb->attn_smem_max = bytes;
  return ES_OK;
}

// Makes sure rows of n keys at head dim D fit; raises the kernels' limit when needed (host-side only).
static int need_smem(cuda_backend_t *cb, int64_t n, int D, const char *op, es_error_t *err) {
  size_t bytes = (size_t)(D + n) * sizeof(float);
  if (bytes <= cb->attn_smem_max) return ES_OK;
  size_t limit = cb->smem_optin > 256 ? cb->smem_optin - 256 : 0; // the static reduction scratch
  if (bytes > limit)
    return es_fail(err, ES_EUNSUPPORTED, "%s: %lld keys at head dim %d need %zu bytes of shared memory (device: %zu)",
                   op, (long long)n, D, bytes, limit);
  return set_smem(cb, bytes, err);
}

extern "C" int cuda_attention_init(cuda_backend_t *cb, int64_t max_ctx, es_error_t *err) {
  cb->attn_smem_max = 48 * 1024; // the default every kernel may use without opting in
  const char *env = getenv("EARSHOT_ATTENTION");
  if (!env || !*env || strcmp(env, "fast") == 0)
    cb->attn_path = CUDA_ATTN_FAST;
  else if (strcmp(env, "simple") == 0)
    cb->attn_path = CUDA_ATTN_SIMPLE;
  else
    return es_fail(err, ES_EINVAL, "EARSHOT_ATTENTION=%.40s: expected simple or fast", env);
  int rc = attn_fast_init(cb, err);
  if (!rc) rc = attn_wgmma_init(cb, err);
  if (rc) return rc;
  // unset = auto: the wgmma kernel where the device has it — faster on an H100 (2026-11-28, bench attention: encoder
  // 48.8 against 55.3 µs per layer, prefill of 2k 0.151 against 0.213 ms), and every GPU test passed with it
  env = getenv("EARSHOT_FLASH");
  const int is_auto = !env || !*env || strcmp(env, "auto") == 0;
  if (env && strcmp(env, "mma") == 0)
    cb->flash = CUDA_FLASH_MMA;
  else if ((is_auto || strcmp(env, "wgmma") == 0) && cb->wgmma_ok)
    cb->flash = CUDA_FLASH_WGMMA;
  else if (is_auto)
    cb->flash = CUDA_FLASH_MMA;
  else if (strcmp(env, "wgmma") == 0)
    return es_fail(err, ES_EUNSUPPORTED,
                   "EARSHOT_FLASH=wgmma: this device (compute capability %d.%d) or build has no sm_90a flash kernels",
                   cb->cc_major, cb->cc_minor);
  else
    return es_fail(err, ES_EINVAL, "EARSHOT_FLASH=%.40s: expected mma, wgmma or auto", env);
  return need_smem(cb, max_ctx, ATT_MAX_D, "attention", err);
}

// ---- launchers --------------------------------------------------------------------------------------------

template <typename T>
static int paged(cuda_backend_t *cb, int layer, void *out, const void *q, int64_t ldq, int H, int D, float scale,
                 int64_t max_ctx, es_error_t *err) {
  const es_backend_t *be = &cb->base;
  const es_batch_t *b = &be->batch;
  dim3 grid((unsigned)b->n_tokens, (unsigned)H);
  const size_t smem = (size_t)(D + max_ctx) * sizeof(float);
  if (be->opts.kv_fp8)
    attention_paged_kernel<T, true><<<grid, ATT_THREADS, smem, cb->stream>>>(
        (T *)out, (const T *)q, ldq, cb->kv, cb->kv_scale, layer, be->kv_blocks, H, D, scale, b->n_seqs, cb->d_q_start,
        cb->d_ctx_len, cb->d_block_table, b->max_blocks);
  else
    attention_paged_kernel<T, false><<<grid, ATT_THREADS, smem, cb->stream>>>(
        (T *)out, (const T *)q, ldq, cb->kv, (const float *)NULL, layer, be->kv_blocks, H, D, scale, b->n_seqs,
        cb->d_q_start, cb->d_ctx_len, cb->d_block_table, b->max_blocks);
  ES_CUDA_LAUNCHED(err);
  return ES_OK;
}

extern "C" int cuda_op_attention_paged(es_backend_t *be, int layer, void *out, const void *q, int64_t ldq, int H,
                                       int D, float scale, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  if (H > 65535) return es_fail(err, ES_EUNSUPPORTED, "attention_paged: %d heads", H);
  if (attn_fast_paged_ok(cb, out, q, ldq, H, D, scale)) {
    cb->attn_fast_calls++;
    return attn_fast_paged(cb, layer, out, q, ldq, H, D, scale, err);
  }
  if (be->recording) {
    // The simple kernel sizes its shared memory and reads its key count from this step's longest context (host
    // values a replay would keep while the contexts grow: keys past the recorded length would be read beyond
    // the shared buffer), and need_smem may call cudaFuncSetAttribute. So nothing is recorded: the recording is
    // refused at cuda_graph_end and the model runs the step op by op, where this path is correct.
    cb->graph_unsafe = "the simple attention kernel (the fast kernels do not take this call)";
    return ES_OK;
  }
  cb->attn_simple_calls++;
  int64_t max_ctx = 0;
  for (int s = 0; s < be->batch.n_seqs; s++) max_ctx = be->batch.ctx_len[s] > max_ctx ? be->batch.ctx_len[s] : max_ctx;
  if ((rc = need_smem(cb, max_ctx, D, "attention_paged", err))) return rc;
  return CUDA_DISPATCH(cb, paged, cb, layer, out, q, ldq, H, D, scale, max_ctx, err);
}

template <typename T>
static int dense(cuda_backend_t *cb, void *out, const void *q, int64_t ldq, const void *k, int64_t ldk, const void *v,
                 int64_t ldv, int64_t B, int64_t T_len, int H, int D, float scale, const int32_t *valid_len,
                 es_error_t *err) {
  for (int64_t b0 = 0; b0 < B; b0 += ATT_LENS) {
    int64_t nb = B - b0 < ATT_LENS ? B - b0 : ATT_LENS;
    att_lens_t lens;
    int64_t max_n = 1;
    for (int64_t i = 0; i < ATT_LENS; i++) {
      lens.n[i] = i < nb ? valid_len[b0 + i] : 0;
      max_n = lens.n[i] > max_n ? lens.n[i] : max_n;
    }
    dim3 grid((unsigned)T_len, (unsigned)H, (unsigned)nb);
    attention_dense_kernel<T><<<grid, ATT_THREADS, (size_t)(D + max_n) * sizeof(float), cb->stream>>>(
        (T *)out, (const T *)q, ldq, (const T *)k, ldk, (const T *)v, ldv, T_len, H, D, scale, b0, lens);
    ES_CUDA_LAUNCHED(err);
  }
  return ES_OK;
}

extern "C" int cuda_op_attention_dense(es_backend_t *be, void *out, const void *q, int64_t ldq, const void *k,
                                       int64_t ldk, const void *v, int64_t ldv, int64_t B, int64_t T, int H, int D,
                                       float scale, const int32_t *valid_len, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  if (T > 0x7fffffff || H > 65535)
    return es_fail(err, ES_EUNSUPPORTED, "attention_dense: T %lld, %d heads", (long long)T, H);
  if (attn_fast_dense_ok(cb, out, q, ldq, k, ldk, v, ldv, B, H, D, scale)) {
    cb->attn_fast_calls++;
    return attn_flash_dense(cb, out, q, ldq, k, ldk, v, ldv, B, T, H, D, scale, valid_len, err);
  }
  cb->attn_simple_calls++;
  if ((rc = need_smem(cb, T, D, "attention_dense", err))) return rc;
  return CUDA_DISPATCH(cb, dense, cb, out, q, ldq, k, ldk, v, ldv, B, T, H, D, scale, valid_len, err);
}

// ---- hooks (cuda_hooks.h) -------------------------------------------------------------------------------------

extern "C" int cuda_backend_set_attention_path(es_backend_t *be, cuda_attn_path_t path, es_error_t *err) {
  cuda_backend_t *cb = cuda_hook_backend(be, "attention path", err);
  if (!cb) return ES_EINVAL;
  if (path != CUDA_ATTN_FAST && path != CUDA_ATTN_SIMPLE)
    return es_fail(err, ES_EINVAL, "attention path %d unknown", (int)path);
  cb->attn_path = path;
  return ES_OK;
}

extern "C" int cuda_backend_set_flash(es_backend_t *be, cuda_flash_t kind, es_error_t *err) {
  cuda_backend_t *cb = cuda_hook_backend(be, "flash kernel", err);
  if (!cb) return ES_EINVAL;
  if (kind != CUDA_FLASH_MMA && kind != CUDA_FLASH_WGMMA)
    return es_fail(err, ES_EINVAL, "flash kernel %d unknown", (int)kind);
  if (kind == CUDA_FLASH_WGMMA && !cb->wgmma_ok)
    return es_fail(err, ES_EUNSUPPORTED, "flash kernel wgmma: not available on this device (compute capability %d.%d)",
                   cb->cc_major, cb->cc_minor);
  int rc = cuda_hook_change(cb, "flash kernel", (int)kind != cb->flash, err);
  if (rc) return rc;
  cb->flash = kind;
  return ES_OK;
}

extern "C" cuda_flash_t cuda_backend_flash(const es_backend_t *be) {
  return strcmp(be->ops->kind, "cuda") == 0 ? (cuda_flash_t)((const cuda_backend_t *)be)->flash : CUDA_FLASH_MMA;
}

extern "C" cuda_attn_path_t cuda_backend_attention_path(const es_backend_t *be) {
  return strcmp(be->ops->kind, "cuda") == 0 ? (cuda_attn_path_t)((const cuda_backend_t *)be)->attn_path
                                            : CUDA_ATTN_SIMPLE;
}

extern "C" int cuda_backend_flash_available(const es_backend_t *be, cuda_flash_t kind) {
  if (strcmp(be->ops->kind, "cuda") != 0) return 0;
  return kind == CUDA_FLASH_MMA || (kind == CUDA_FLASH_WGMMA && ((const cuda_backend_t *)be)->wgmma_ok);
}

extern "C" int cuda_backend_set_attention_splits(es_backend_t *be, int n_splits, es_error_t *err) {
  cuda_backend_t *cb = cuda_hook_backend(be, "attention splits", err);
  if (!cb) return ES_EINVAL;
  if (n_splits < 0) return es_fail(err, ES_EINVAL, "attention splits %d < 0", n_splits);
  // A recorded decode graph's grid z is attn_split_bound(..., want = the old count): a new count may plan more
  // splits than that grid has, and the splits past it would silently never run (their partial results garbage
  // in the combine). Drop the recordings; the model records again at the bucket's next step.
  int rc = cuda_hook_change(cb, "attention splits", n_splits != cb->attn_splits, err);
  if (rc) return rc;
  cb->attn_splits = n_splits;
  if (!be->in_step) return ES_OK;
  // inside a step (tests): the step's decode plan, already on the device, is made again with the new count
  if ((rc = cuda_enter(cb, err))) return rc;
  ES_CUDA_TRY(err, cudaEventSynchronize(cb->batch_done));
  if ((rc = cuda_plan_decode(cb, err))) return rc;
  ES_CUDA_TRY(err, cudaEventRecord(cb->batch_done, cb->stream));
  return ES_OK;
}

extern "C" int64_t cuda_backend_wgmma_launches(const es_backend_t *be) {
  return strcmp(be->ops->kind, "cuda") == 0 ? ((const cuda_backend_t *)be)->wgmma_launches : 0;
}

extern "C" void cuda_backend_attention_calls(const es_backend_t *be, int64_t *fast, int64_t *simple) {
  const cuda_backend_t *cb = (const cuda_backend_t *)be;
  int cuda = strcmp(be->ops->kind, "cuda") == 0;
  *fast = cuda ? cb->attn_fast_calls : 0;
  *simple = cuda ? cb->attn_simple_calls : 0;
}

extern "C" void *cuda_backend_kv_pool(es_backend_t *be) {
  return strcmp(be->ops->kind, "cuda") == 0 ? cuda_be(be)->kv : NULL;
}
