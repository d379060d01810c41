// cuda_sample: es_op_sample on the GPU — one block of 1024 threads per logits row runs the passes of
// kernels/cpu/cpu_sample.h (the serial specification, tested against the host sampler in CI) with the helpers
// of kernels/sample_math.h; only token ids leave the device. Plus the slot state (sampler_init / reset) and the
// parameter upload (sample_prepare).
//
// Why it matches the CPU backend bit for bit: every value that decides something is computed by the shared
// helpers with the same fp32 operations (this file is compiled with --fmad=false, kernels/CMakeLists.txt, so
// nvcc does not contract smk_exp_neg's polynomial into FMAs), and every sum is an integer (counts, and
// fixed-point mass, smk_fx): atomics and tree reductions add integers in any order to the same total.
//
// The passes over a row (i strided by thread for coalescing, except where "chunks" says each thread owns a
// contiguous range of ids, which the id-order tie break and the id-order draw need):
//   0. suppress ids -> -inf;
//   1. NaN -> -inf, penalties (seen / gen_count of the slot, read only when a penalty is active), written back
//      where changed; block argmax (first index on ties) and count of finite logits; greedy ends here;
//   2. top-k: 4 radix passes over 8-bit digits of smk_key, count histograms in shared memory, the digit chosen
//      by one warp (each lane sums 8 bins, a suffix scan finds the lane, the lane walks its bins);
//   3. top-p: one pass for the total mass, 4 radix passes on the weights' bits with mass histograms, one
//      chunked pass that finds the last tie kept at the threshold (lowest ids first);
//   4. chunked: each thread sums the fixed-point mass of its kept ids, a block exclusive scan gives each chunk's
//      start, and the one thread whose chunk holds floor(u * mass) walks it to the token; it also counts the
//      token in the slot;
//   5. want_processed only: removed ids -> -inf.
//
// Napkin math (V = 151,680 fp32, one row = 607 KB; H100 SXM HBM3 3.35 TB/s, 50 MB L2). Not measured yet.
//   greedy: 1 read of the row (+ 759 KB of seen/gen_count with penalties)    -> 0.18 us of HBM time per row;
//   top-k + top-p + draw: up to 11 reads (1 + 4 + 1 + 4 + 1 + 1)               -> 2.0 us per row if all from HBM;
//   the passes after the first mostly hit L2 (a batch of 64 rows is 39 MB). The floor for a 64-row decode
//   batch is therefore ~12 us (one HBM read of the logits), and the real bound is one SM streaming its row
//   11 times from L2 (~100-200 GB/s per SM: 35-70 us, all rows in parallel when n <= the SM count). The
//   radix passes could be cut by filtering candidates into shared memory once few remain (vLLM/FlashInfer
//   style); left for when a measurement says the sampler matters next to a 7B decode step (~10 ms).
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"
#include "cuda_sample.h"
#include "sample_math.h"

#define SMP_THREADS 1024
#define SMP_WARPS (SMP_THREADS / 32)

// ---- block primitives (blockDim.x == SMP_THREADS; call from every thread) ----------------------------------

// Sum over the block, every thread gets it. sh: >= SMP_WARPS entries.
__device__ __forceinline__ uint64_t block_sum_u64(uint64_t v, uint64_t *sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads(); // sh may still be read by an earlier call
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  uint64_t r = lane < SMP_WARPS ? sh[lane] : 0;
  for (int o = 16; o > 0; o >>= 1) r += __shfl_xor_sync(0xffffffffu, r, o);
  return r;
}

// Exclusive prefix sum over the threads in order; *total = the block's sum. sh: >= SMP_WARPS entries.
__device__ __forceinline__ uint64_t block_excl_scan_u64(uint64_t v, uint64_t *sh, uint64_t *total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint64_t inc = v;
  for (int o = 1; o < 32; o <<= 1) {
    uint64_t u = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += u;
  }
  __syncthreads();
  if (lane == 31) sh[warp] = inc; // the warp's total
  __syncthreads();
  if (warp == 0) {
    uint64_t t = lane < SMP_WARPS ? sh[lane] : 0, ti = t;
    for (int o = 1; o < 32; o <<= 1) {
      uint64_t u = __shfl_up_sync(0xffffffffu, ti, o);
      if (lane >= o) ti += u;
    }
    if (lane < SMP_WARPS) sh[lane] = ti - t; // exclusive prefix of the warp totals
    if (lane == 31) sh[SMP_WARPS] = ti;      // SMP_WARPS == 32: lane 31 holds the block total
  }
  __syncthreads();
  *total = sh[SMP_WARPS];
  return sh[warp] + inc - v;
}

// Block argmax: the largest m, the smallest index among equal m; every thread gets it. NaN never occurs (the
// row is canonical). Threads with no candidate pass (-inf, INT_MAX).
// The warp's argmax of (v, i) under smk_argmax_better, in every lane (xor-shuffle tree).
__device__ __forceinline__ void warp_argmax(float *v, int *i) {
  for (int o = 16; o > 0; o >>= 1) {
    const float v2 = __shfl_xor_sync(0xffffffffu, *v, o);
    const int i2 = __shfl_xor_sync(0xffffffffu, *i, o);
    if (smk_argmax_better(v2, i2, *v, *i)) {
      *v = v2;
      *i = i2;
    }
  }
}

__device__ __forceinline__ void block_argmax(float *m, int *a, float *shm, int *sha) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float v = *m;
  int i = *a;
  warp_argmax(&v, &i);
  __syncthreads();
  if (lane == 0) {
    shm[warp] = v;
    sha[warp] = i;
  }
  __syncthreads();
  v = lane < SMP_WARPS ? shm[lane] : -INFINITY;
  i = lane < SMP_WARPS ? sha[lane] : 0x7fffffff;
  warp_argmax(&v, &i);
  *m = v;
  *a = i;
}

// The digit of a radix pass (smk_select_bins over 256 bins, from the top), by warp 0: lane L owns bins
// 8L .. 8L+7; a suffix sum over lanes finds the highest lane whose bins and those above reach target, and that
// lane walks its 8 bins with the amount above them (test_sample_math checks this split gives the serial answer).
// Writes *bin (0 if the bins cannot reach target, which the passes before rule out) and *above.
__device__ __forceinline__ void warp_select_digit(const uint64_t *hist, uint64_t target, int *bin, uint64_t *above) {
  const int lane = threadIdx.x & 31;
  uint64_t s = 0;
  for (int j = 0; j < 8; j++) s += hist[8 * lane + j];
  uint64_t suf = s; // sum of the bins of lanes >= lane
  for (int o = 1; o < 32; o <<= 1) {
    uint64_t u = __shfl_down_sync(0xffffffffu, suf, o);
    if (lane + o < 32) suf += u;
  }
  unsigned ballot = __ballot_sync(0xffffffffu, suf >= target);
  if (ballot == 0) {
    if (lane == 0) {
      *bin = 0;
      *above = 0;
    }
    return;
  }
  int L = 31 - __clz((int)ballot);
  if (lane == L) {
    uint64_t a = 0;
    int b = smk_select_bins(hist, 8 * L + 8, 8 * L, suf - s, target, &a);
    *bin = b < 0 ? 0 : b;
    *above = a;
  }
}

// ---- the kernel ----------------------------------------------------------------------------------------------

// grid (n), block (SMP_THREADS). logits: (n, V) fp32, processed in place; rows: (n) parameters; tokens: (n) int32;
// seen / count: (S, V) slot state; supp: (S, ES_SAMPLE_MAX_SUPPRESS), n_supp: (S).
__global__ void __launch_bounds__(SMP_THREADS)
    sample_kernel(float *logits, int V, const es_sample_row_t *rows, int32_t *tokens, uint8_t *seen, int32_t *count,
                  const int32_t *supp, const int32_t *n_supp) {
  __shared__ uint64_t hist[256];
  __shared__ uint64_t scan[SMP_WARPS + 1];
  __shared__ float shm[SMP_WARPS];
  __shared__ int sha[SMP_WARPS];
  __shared__ int sh_bin;
  __shared__ uint64_t sh_above;
  __shared__ int sh_cut;

  const int tid = threadIdx.x;
  const es_sample_row_t p = rows[blockIdx.x];
  float *l = logits + (size_t)blockIdx.x * (size_t)V;
  const size_t off = (size_t)p.slot * (size_t)V;

  if (tid == 0) tokens[blockIdx.x] = -1; // until a step below writes the token (read after the block's syncs)
  // 0. suppression
  if (p.suppress) {
    const int ns = n_supp[p.slot];
    for (int s = tid; s < ns; s += SMP_THREADS) l[supp[(size_t)p.slot * ES_SAMPLE_MAX_SUPPRESS + s]] = -INFINITY;
  }
  __syncthreads();

  // 1. canonical NaN, penalties, argmax, finite count
  const bool pen = p.repetition_penalty != 1.0f || p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f;
  float m = -INFINITY;
  int arg = 0x7fffffff;
  uint64_t nfin = 0;
  for (int i = tid; i < V; i += SMP_THREADS) {
    const float x = l[i];
    float y = smk_canon(x);
    if (pen)
      y = smk_penalize(y, seen[off + i], count[off + i], p.repetition_penalty, p.presence_penalty, p.frequency_penalty);
    if (__float_as_uint(y) != __float_as_uint(x)) l[i] = y;
    if (y > m) { // strided: the first index of this thread holding its max
      m = y;
      arg = i;
    }
    nfin += y > -INFINITY && y < INFINITY;
  }
  block_argmax(&m, &arg, shm, sha);
  nfin = block_sum_u64(nfin, scan);
  if (m == -INFINITY || m == INFINITY) { // no finite logit, or +inf: the caller reports the row
    if (tid == 0) tokens[blockIdx.x] = -1;
    return;
  }
  const bool greedy = (double)p.temperature < SMK_GREEDY_EPS;
  if (greedy) {
    if (tid == 0) {
      tokens[blockIdx.x] = arg;
      count[off + arg]++;
      seen[off + arg] = 1;
    }
    if (p.want_processed)
      for (int i = tid; i < V; i += SMP_THREADS)
        if (i != arg) l[i] = -INFINITY;
    return;
  }
  const float inv_t = smk_inv_temperature(p.temperature);

  // 2. top-k: the key of the k-th largest finite logit
  const int topk_on = p.top_k > 0 && p.top_k < V && nfin >= (uint64_t)p.top_k;
  uint32_t kstar = 0;
  if (topk_on) {
    uint64_t target = (uint64_t)p.top_k;
    for (int pass = 0; pass < 4; pass++) {
      for (int b = tid; b < 256; b += SMP_THREADS) hist[b] = 0;
      __syncthreads();
      const uint32_t mask = smk_prefix_mask(pass);
      for (int i = tid; i < V; i += SMP_THREADS) {
        const float y = l[i];
        if (!(y > -INFINITY)) continue;
        const uint32_t key = smk_key(y);
        if ((key & mask) == kstar) atomicAdd((unsigned long long *)&hist[smk_digit(key, pass)], 1ull);
      }
      __syncthreads();
      if (tid < 32) warp_select_digit(hist, target, &sh_bin, &sh_above);
      __syncthreads();
      kstar |= (uint32_t)sh_bin << (24 - 8 * pass);
      target -= sh_above;
    }
  }

  // contiguous chunks of ids per thread, for the id-ordered steps
  int c0, c1;
  smk_chunk(V, SMP_THREADS, tid, &c0, &c1);

  // 3. top-p: the threshold weight wstar and the last tied id kept, cut
  const int topp_on = p.top_p < 1.0f;
  uint32_t wstar = 0;
  int cut = -1;
  if (topp_on) {
    uint64_t part = 0;
    for (int i = tid; i < V; i += SMP_THREADS) {
      const float y = l[i];
      if (smk_kept_topk(y, topk_on, kstar)) part += smk_fx(smk_weight(y, m, inv_t));
    }
    const uint64_t T = smk_top_p_target(p.top_p, block_sum_u64(part, scan));
    uint64_t target = T, above_all = 0;
    for (int pass = 0; pass < 4; pass++) {
      for (int b = tid; b < 256; b += SMP_THREADS) hist[b] = 0;
      __syncthreads();
      const uint32_t mask = smk_prefix_mask(pass);
      for (int i = tid; i < V; i += SMP_THREADS) {
        const float y = l[i];
        if (!smk_kept_topk(y, topk_on, kstar)) continue;
        const float w = smk_weight(y, m, inv_t);
        const uint32_t u = __float_as_uint(w);
        if (w > 0.0f && (u & mask) == wstar) atomicAdd((unsigned long long *)&hist[smk_digit(u, pass)], smk_fx(w));
      }
      __syncthreads();
      if (tid < 32) warp_select_digit(hist, target, &sh_bin, &sh_above);
      __syncthreads();
      wstar |= (uint32_t)sh_bin << (24 - 8 * pass);
      target -= sh_above;
      above_all += sh_above;
    }
    const uint64_t need = smk_ties_kept(T, above_all, smk_fx(__uint_as_float(wstar)));
    uint64_t ties = 0;
    for (int i = c0; i < c1; i++) {
      const float y = l[i];
      ties += smk_kept_topk(y, topk_on, kstar) && __float_as_uint(smk_weight(y, m, inv_t)) == wstar;
    }
    uint64_t all_ties;
    const uint64_t before = block_excl_scan_u64(ties, scan, &all_ties);
    if (tid == 0) sh_cut = V; // need > all_ties cannot happen (the selection reached T); keep every tie then
    __syncthreads();
    if (smk_chunk_holds(before, ties, need - 1)) { // need >= 1: the need-th tie, rank need - 1
      uint64_t k = before;
      for (int i = c0; i < c1; i++) {
        const float y = l[i];
        if (smk_kept_topk(y, topk_on, kstar) && __float_as_uint(smk_weight(y, m, inv_t)) == wstar && ++k == need) {
          sh_cut = i;
          break;
        }
      }
    }
    __syncthreads();
    cut = sh_cut;
  }

  // 4. the kept mass per chunk, the draw
  const smk_filter_t f = {topk_on, kstar, topp_on, wstar, cut, p.min_p > 0.0f, p.min_p};
  uint64_t cs = 0;
  for (int i = c0; i < c1; i++) {
    const float y = l[i], w = smk_weight(y, m, inv_t);
    if (smk_kept(&f, i, y, w)) cs += smk_fx(w);
  }
  uint64_t mass;
  const uint64_t start = block_excl_scan_u64(cs, scan, &mass);
  // mass > 0: the argmax has w = 1 and survives every filter
  const uint64_t target = smk_draw_target(smk_uniform(p.seed, (uint64_t)p.step), mass);
  if (smk_chunk_holds(start, cs, target)) {
    uint64_t acc = start;
    for (int i = c0; i < c1; i++) {
      const float y = l[i], w = smk_weight(y, m, inv_t);
      if (smk_kept(&f, i, y, w) && (acc += smk_fx(w)) > target) {
        tokens[blockIdx.x] = i;
        count[off + i]++;
        seen[off + i] = 1;
        break;
      }
    }
  }

  // 5. the support, for callers that read the processed row
  if (p.want_processed) {
    __syncthreads(); // every chunk walk above has read its logits
    for (int i = tid; i < V; i += SMP_THREADS) {
      const float y = l[i], w = smk_weight(y, m, inv_t);
      if (!(smk_kept(&f, i, y, w) && w > 0.0f)) l[i] = -INFINITY;
    }
  }
}

// ---- the ops -------------------------------------------------------------------------------------------------

// The host side of the sampling state: the pinned staging of the rows, its event, the slot build buffers.
static int sampler_init_host(cuda_backend_t *cb, size_t S, size_t V, es_error_t *err) {
  ES_CUDA_TRY(err, cudaHostAlloc((void **)&cb->smp_rows_host, S * sizeof(es_sample_row_t), cudaHostAllocDefault));
  ES_CUDA_TRY(err, cudaEventCreateWithFlags(&cb->smp_rows_done, cudaEventDisableTiming));
  ES_CUDA_TRY(err, cudaEventRecord(cb->smp_rows_done, cb->stream)); // "done" before the first use
  cb->smp_seen_host = (uint8_t *)malloc(V);
  cb->smp_count_host = (int32_t *)malloc(V * sizeof(int32_t));
  if (!cb->smp_seen_host || !cb->smp_count_host)
    return es_fail(err, ES_ENOMEM, "sampler_init: out of host memory for %zu ids", V);
  return ES_OK;
}

extern "C" int cuda_sampler_init(es_backend_t *be, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  const size_t S = (size_t)be->smp_slots, V = (size_t)be->smp_vocab;
  // device blocks: zeroed, tracked and freed with the backend
  if ((rc = be->ops->alloc(be, S * V, (void **)&cb->smp_seen, err)) ||
      (rc = be->ops->alloc(be, S * V * sizeof(int32_t), (void **)&cb->smp_count, err)) ||
      (rc = be->ops->alloc(be, S * ES_SAMPLE_MAX_SUPPRESS * sizeof(int32_t), (void **)&cb->smp_supp, err)) ||
      (rc = be->ops->alloc(be, S * sizeof(int32_t), (void **)&cb->smp_n_supp, err)) ||
      (rc = be->ops->alloc(be, S * sizeof(es_sample_row_t), (void **)&cb->smp_rows, err)))
    return es_error_prefix(err, "sampler_init: ");
  // host resources: released here on failure, so that a later sampler_init (backend.c clears the sizes when
  // this one fails) does not leak the pinned buffer and the event by overwriting them
  if ((rc = sampler_init_host(cb, S, V, err))) cuda_sampler_free(be);
  return rc;
}

extern "C" void cuda_sampler_free(es_backend_t *be) {
  cuda_backend_t *cb = cuda_be(be);
  if (cb->smp_rows_host) cudaFreeHost(cb->smp_rows_host);
  if (cb->smp_rows_done) cudaEventDestroy(cb->smp_rows_done);
  free(cb->smp_seen_host);
  free(cb->smp_count_host);
  cb->smp_rows_host = NULL;
  cb->smp_rows_done = NULL;
  cb->smp_seen_host = NULL;
  cb->smp_count_host = NULL;
}

// The slot is built on the host and copied whole (5 bytes per id: ~760 KB at V = 151,680, once per admission).
// Copies from pageable memory return once the source has been staged, so the host buffers may be reused.
extern "C" int cuda_sampler_reset(es_backend_t *be, int slot, const int32_t *ids, int n_ids, const int32_t *gen_ids,
                                  int n_gen, const int32_t *suppress_ids, int n_suppress, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  const size_t V = (size_t)be->smp_vocab, off = (size_t)slot * V;
  memset(cb->smp_seen_host, 0, V);
  memset(cb->smp_count_host, 0, V * sizeof(int32_t));
  for (int i = 0; i < n_ids; i++) cb->smp_seen_host[ids[i]] = 1;
  for (int i = 0; i < n_gen; i++) {
    cb->smp_seen_host[gen_ids[i]] = 1;
    cb->smp_count_host[gen_ids[i]]++;
  }
  ES_CUDA_TRY(err, cudaMemcpyAsync(cb->smp_seen + off, cb->smp_seen_host, V, cudaMemcpyHostToDevice, cb->stream));
  ES_CUDA_TRY(err, cudaMemcpyAsync(cb->smp_count + off, cb->smp_count_host, V * sizeof(int32_t), cudaMemcpyHostToDevice,
                                   cb->stream));
  if (n_suppress)
    ES_CUDA_TRY(err, cudaMemcpyAsync(cb->smp_supp + (size_t)slot * ES_SAMPLE_MAX_SUPPRESS, suppress_ids,
                                     (size_t)n_suppress * sizeof(int32_t), cudaMemcpyHostToDevice, cb->stream));
  ES_CUDA_TRY(err,
              cudaMemcpyAsync(cb->smp_n_supp + slot, &n_suppress, sizeof(int32_t), cudaMemcpyHostToDevice, cb->stream));
  return ES_OK;
}

// Through the pinned staging buffer into the fixed device buffer the op (or a graph replaying it) reads; the
// previous copy out of the staging buffer must have finished before it is refilled.
extern "C" int cuda_sample_prepare(es_backend_t *be, const es_sample_row_t *rows, int n, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  ES_CUDA_TRY(err, cudaEventSynchronize(cb->smp_rows_done));
  memcpy(cb->smp_rows_host, rows, (size_t)n * sizeof *rows);
  ES_CUDA_TRY(err, cudaMemcpyAsync(cb->smp_rows, cb->smp_rows_host, (size_t)n * sizeof *rows, cudaMemcpyHostToDevice,
                                   cb->stream));
  ES_CUDA_TRY(err, cudaEventRecord(cb->smp_rows_done, cb->stream));
  return ES_OK;
}

// Device only (graph-capturable): the grid depends on n alone, every parameter comes from device buffers.
extern "C" int cuda_op_sample(es_backend_t *be, float *logits, int n, int32_t *tokens, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  sample_kernel<<<n, SMP_THREADS, 0, cb->stream>>>(logits, be->smp_vocab, cb->smp_rows, tokens, cb->smp_seen,
                                                   cb->smp_count, cb->smp_supp, cb->smp_n_supp);
  ES_CUDA_LAUNCHED(err);
  return ES_OK;
}
