// attn_decode: split-KV decode attention over the paged cache (Flash-Decoding) — es_op_attention_paged for the
// sequences of a step with at most ATTN_DECODE_MAX_Q new tokens, any mix of context lengths. See attn_fast.h.
//
// Napkin math (Qwen2-7B: H = 32, D = 128, bf16): every visible cache position is read once per row, K and V:
// 2·H·D·2 B = 16 KB per position per layer, 4·H·D = 16 KFLOP (1 FLOP per byte: memory-bound, the tensor cores
// are of no use). Batch 8 at context 2k: 16,384 positions = 268 MB per layer: 80 µs at 3.35 TB/s (H100 SXM),
// 56 µs at 4.8 TB/s (H200); batch 1 at 8k: 134 MB, 40 µs / 28 µs. The partial results are (D + 2) floats per
// split, negligible. Issue target: >= 70% of the copy bandwidth measured in the same run, batch >= 8, ctx >= 2k.
//
// Work split: block (slot, head, split), slot = sequence · ATTN_DECODE_MAX_Q + its r-th new token; a row with n
// visible keys uses attn_split_count(n, chunk) splits of `chunk` keys (attn_split_plan chose chunk so the grid
// has about ATTN_TARGET_BLOCKS_PER_SM blocks per SM: few long rows are split many ways, many rows not at all);
// blocks past a row's last split, or on slots with no row, return at once.
// In a block: 4 warps; a warp reads KPW = 256 / D keys at a time (G = D / 8 lanes per key, 16 bytes of the key
// per lane, so the warp's loads are 512 contiguous bytes within a cache block), DEC_U such groups of keys
// issued before the first is used (8 independent 16-byte loads per lane in flight). Key j of the split goes to
// warp, step, unroll slot and lane group by j − k0 = ((step · 4 + warp) · DEC_U + u) · KPW + group: every key
// exactly once. Each lane group keeps its own softmax state (m, l, o[8] for its 8 columns) with q in registers;
// at the end the states merge — across the groups of a warp by shuffles, across the 4 warps in shared memory, in
// a fixed order — with attn_math.h's merge. A row with one split writes its output directly; otherwise each
// split writes its unnormalised (o, m, l) to cb->attn_part and the splits are merged in order (dec_combine_row):
// by default (CUDA_FUSE_COMBINE) in this kernel, by the row's last split block to finish — each split block
// fences its stores and counts itself in cb->attn_arrivals[(x, head)]; the one that brings the count to the row's
// split count merges them and zeroes the counter for the next launch — otherwise by dec_combine_kernel, a second
// launch. The same merge, so the same bits; the fused form saves a launch per layer (32 of a 7B decode step).
// (ptxas -v, sm_90: the fp8-cache variant keeps its 96 registers — 5 blocks per SM — and spills one 4-byte value
// for the fused tail: one store and two loads per thread, against its kilobytes of cache loads.)
// All arithmetic is fp32 on bf16 inputs (no intermediate rounding); the output is rounded once.
//
// fp8 KV cache (FP8 = true; backend.h): a key is read as D one-byte codes plus its K and V scales, so each lane
// loads 8 bytes of K and 8 of V (8 columns, as in bf16) and DEC_U8 = 8 key groups are in flight instead of 4 (the
// same 64 bytes of codes per lane in flight; the scales are 4-byte loads every lane of the group shares).
// score = (q · codes) · k_scale, and a value contributes p · v_scale · codes (p itself goes into l): the scales
// are folded into one multiply per key, the codes converted to fp32 exactly (fp8_cvt.cuh). Napkin math: 132 B per
// (position, head) instead of 256: a decode step at batch 64 and context ~900 on the 7B model reads 15.5 GB of
// cache instead of 30.2 GB (plus 14.2 GB of bf16 weights): the step's floor drops from 14.8 to 9.9 ms at 3 TB/s.
//
// The split count depends on the whole batch (how many rows share the GPU), so unlike the simple kernel a
// row's bits may depend on the other rows (backend.h's batch invariance; cuBLASLt has the same exception).
//
// Deterministic mode (es_backend_opts_t.deterministic, attn_decode_det): the same two kernels in "row mode" run
// EVERY row of the step — decode and prefill — with a fixed chunk of cb->attn_det_chunk keys per split
// (attn_math.h, attn_det_chunk), in launches of as many rows as the scratch holds. A row's splits, the key
// order inside each (a function of the split's [k0, k1) only) and the combine order then depend on nothing but
// its own number of keys, so its bits do not depend on the batch, nor on how the engine chunked its prompt (a
// prefix-cache hit or a recomputation after preemption can leave 1..4 tokens of a prompt for a step, which in
// default mode go to this kernel while the same rows computed alone would go to the flash prefill kernel, whose
// bf16 probabilities round differently). The price: prefill rows read their keys once per row instead of once
// per 64-row tile, on CUDA cores (measured by `earshot bench model --deterministic`).
#include <math.h>

#include "attn_fast.h"
#include "attn_math.h"
#include "cuda_common.cuh"
#include "fp8_cvt.cuh"

#define DEC_WARPS 4
#define DEC_THREADS (DEC_WARPS * 32)
#define DEC_U 4  // key groups per lane loaded before use (bf16: 16-byte loads)
#define DEC_U8 8 // the same with an fp8 KV cache (8-byte loads)

// The row block x of a launch works on: its sequence *s, its index *qi among the sequence's new tokens, and the
// sequence's first row *q0 and *q_len; false when x has no row (the block returns: block-uniform).
// Slot mode (row0 < 0, the default mode's decode launch): x = s · ATTN_DECODE_MAX_Q + qi over the sequences
// with at most ATTN_DECODE_MAX_Q new tokens. Row mode (row0 >= 0, deterministic mode): row row0 + x of the step,
// any sequence (the launcher covers rows < n_tokens only).
__device__ __forceinline__ bool dec_locate(int64_t x, int64_t row0, int n_seqs, const int32_t *q_start, int *s,
                                           int *qi, int *q0, int *q_len) {
  if (row0 < 0) {
    *s = (int)(x / ATTN_DECODE_MAX_Q);
    *qi = (int)(x % ATTN_DECODE_MAX_Q);
    *q0 = q_start[*s];
    *q_len = q_start[*s + 1] - *q0;
    return *q_len <= ATTN_DECODE_MAX_Q && *qi < *q_len;
  }
  const int64_t row = row0 + x;
  *s = attn_seq_of_row(q_start, n_seqs, row);
  *q0 = q_start[*s];
  *q_len = q_start[*s + 1] - *q0;
  *qi = (int)(row - *q0);
  return true;
}

// One key group's loads: 8 columns of K and of V (bf16: 16 bytes each; fp8: 8 bytes each and the row scales).
template <bool FP8> struct dec_load_t;
template <> struct dec_load_t<false> { uint4 k, v; };
template <> struct dec_load_t<true> {
  uint2 k, v;
  float ks, vs;
};

// Row i, head h: merges the row's n_used partial states (part index base .. base + n_used − 1) in split order
// and writes the normalised output; thread t takes columns t, t + blockDim.x, ... The partial states come from
// other blocks of this launch or the one before: read through L2 (__ldcg), never a stale L1 line.
__device__ __forceinline__ void dec_combine_row(bf16 *out, const float *part_o, const float *part_ml, int64_t base,
                                                int n_used, int64_t i, int H, int h, int D) {
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float M = -INFINITY, L = 0.0f, O = 0.0f;
    for (int sp = 0; sp < n_used; sp++) {
      float wa, wb;
      M = attn_merge_max(M, __ldcg(part_ml + 2 * (base + sp)), &wa, &wb);
      L = fmaf(__ldcg(part_ml + 2 * (base + sp) + 1), wb, L * wa); // explicit fma: one rounding order wherever inlined
      O = fmaf(__ldcg(part_o + (base + sp) * D + d), wb, O * wa);
    }
    out[(i * H + h) * D + d] = __float2bfloat16_rn(O * attn_inv_l(L));
  }
}

// Grid (n_x, H, n_splits), block x as dec_locate. out (n_tokens, H, D) bf16; part_o (n_x, H, n_splits, D) and
// part_ml (n_x, H, n_splits, 2) fp32 (written only for rows with more than one split); q (n_tokens, ldq) bf16;
// kv (L, n_blocks, 2, H, 16, D) bf16, or FP8: e4m3 codes with kv_scale (L, n_blocks, 2, H, 16); the batch arrays
// on the device. arrivals (n_x, H), zero at launch, or NULL: the splits are merged by dec_combine_kernel.
template <int D, bool FP8>
__global__ void __launch_bounds__(DEC_THREADS)
    dec_split_kernel(bf16 *out, float *part_o, float *part_ml, const bf16 *q, int64_t ldq, const void *kv,
                     const float *kv_scale, int layer, int n_blocks, int H, float sl, const int32_t *q_start,
                     const int32_t *ctx_len, const int32_t *block_table, int max_blocks, const int32_t *chunk_dev,
                     int n_splits, int64_t row0, int n_seqs, int32_t *arrivals) {
  constexpr int U = FP8 ? DEC_U8 : DEC_U;
  constexpr int G = D / 8, KPW = 32 / G, STEP = DEC_WARPS * KPW * U;
  __shared__ float sm_o[DEC_WARPS][D];
  __shared__ float sm_m[DEC_WARPS], sm_l[DEC_WARPS];
  pdl_begin(); // first: launched with cuda_launch
  const int slot = blockIdx.x, h = blockIdx.y, split = blockIdx.z;
  int s, qi, q0, q_len;
  if (!dec_locate(slot, row0, n_seqs, q_start, &s, &qi, &q0, &q_len)) return; // block-uniform
  const int chunk = *chunk_dev; // the step's plan, written with the batch (cuda_set_batch): graph replays follow it
  const int64_t n = attn_causal_keys(ctx_len[s], q_len, qi);
  const int n_used = attn_split_count(n, chunk);
  if (split >= n_used) return;
  int64_t k0, k1;
  attn_split_range(n, chunk, split, &k0, &k1);

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, grp = lane / G, gl = lane % G;
  const int64_t i = q0 + qi;
  const int32_t *table = block_table + (int64_t)s * max_blocks;
  float qv[8];
  bf16x8_to_f32(*reinterpret_cast<const uint4 *>(q + i * ldq + (int64_t)h * D + gl * 8), qv);

  float m = -INFINITY, l = 0.0f, o[8];
#pragma unroll
  for (int e = 0; e < 8; e++) o[e] = 0.0f;
  for (int64_t j0 = k0 + (int64_t)warp * KPW * U; j0 < k1; j0 += STEP) { // warp-uniform
    dec_load_t<FP8> ld[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int64_t j = j0 + u * KPW + grp;
      if constexpr (FP8) {
        if (j < k1) {
          const int64_t rk = attn_kv_pos_offset(table, j, layer, n_blocks, 0, H, h, 1); // the rows' indices
          const int64_t rv = attn_kv_pos_offset(table, j, layer, n_blocks, 1, H, h, 1);
          const uint8_t *codes = static_cast<const uint8_t *>(kv);
          ld[u].k = *reinterpret_cast<const uint2 *>(codes + rk * D + gl * 8);
          ld[u].v = *reinterpret_cast<const uint2 *>(codes + rv * D + gl * 8);
          ld[u].ks = kv_scale[rk];
          ld[u].vs = kv_scale[rv];
        } else {
          ld[u].k = ld[u].v = make_uint2(0u, 0u);
          ld[u].ks = ld[u].vs = 0.0f;
        }
      } else {
        const bf16 *pool = static_cast<const bf16 *>(kv);
        if (j < k1) {
          ld[u].k = *reinterpret_cast<const uint4 *>(pool + attn_kv_pos_offset(table, j, layer, n_blocks, 0, H, h, D) +
                                                     gl * 8);
          ld[u].v = *reinterpret_cast<const uint4 *>(pool + attn_kv_pos_offset(table, j, layer, n_blocks, 1, H, h, D) +
                                                     gl * 8);
        } else {
          ld[u].k = ld[u].v = make_uint4(0u, 0u, 0u, 0u);
        }
      }
    }
    float sc[U], mx = -INFINITY;
#pragma unroll
    for (int u = 0; u < U; u++) {
      float kf[8], d = 0.0f;
      if constexpr (FP8)
        fp8x8_to_f32(ld[u].k, kf);
      else
        bf16x8_to_f32(ld[u].k, kf);
#pragma unroll
      for (int e = 0; e < 8; e++) d = fmaf(qv[e], kf[e], d);
#pragma unroll
      for (int off = G / 2; off > 0; off >>= 1) d += __shfl_xor_sync(0xffffffffu, d, off); // within the group
      if constexpr (FP8) d *= ld[u].ks;
      sc[u] = j0 + u * KPW + grp < k1 ? d : -INFINITY;
      mx = fmaxf(mx, sc[u]);
    }
    float alpha;
    const float mn = attn_online_max(m, mx, sl, &alpha), mu = attn_safe_max(mn);
    l *= alpha;
#pragma unroll
    for (int e = 0; e < 8; e++) o[e] *= alpha;
#pragma unroll
    for (int u = 0; u < U; u++) {
      const float p = attn_p(sc[u], sl, mu);
      float vf[8], pv = p;
      if constexpr (FP8) {
        fp8x8_to_f32(ld[u].v, vf);
        pv = p * ld[u].vs;
      } else {
        bf16x8_to_f32(ld[u].v, vf);
      }
      l += p;
#pragma unroll
      for (int e = 0; e < 8; e++) o[e] = fmaf(pv, vf[e], o[e]);
    }
    m = mn;
  }

  // the groups of the warp (lanes gl, gl + G, ... hold the same columns): merge by shuffles
#pragma unroll
  for (int off = G; off < 32; off <<= 1) {
    const float mb = __shfl_xor_sync(0xffffffffu, m, off), lb = __shfl_xor_sync(0xffffffffu, l, off);
    float wa, wb;
    const float M = attn_merge_max(m, mb, &wa, &wb);
    l = l * wa + lb * wb;
#pragma unroll
    for (int e = 0; e < 8; e++) {
      const float ob = __shfl_xor_sync(0xffffffffu, o[e], off);
      o[e] = o[e] * wa + ob * wb;
    }
    m = M;
  }
  // the 4 warps: through shared memory, merged in warp order
  if (lane < G) {
#pragma unroll
    for (int e = 0; e < 8; e++) sm_o[warp][gl * 8 + e] = o[e];
  }
  if (lane == 0) {
    sm_m[warp] = m;
    sm_l[warp] = l;
  }
  __syncthreads();
  for (int d = threadIdx.x; d < D; d += DEC_THREADS) {
    float M = sm_m[0], L = sm_l[0], O = sm_o[0][d];
#pragma unroll
    for (int w = 1; w < DEC_WARPS; w++) {
      float wa, wb;
      M = attn_merge_max(M, sm_m[w], &wa, &wb);
      L = L * wa + sm_l[w] * wb;
      O = O * wa + sm_o[w][d] * wb;
    }
    if (n_used == 1) {
      out[(i * H + h) * D + d] = __float2bfloat16_rn(O * attn_inv_l(L));
    } else {
      const int64_t idx = ((int64_t)slot * H + h) * n_splits + split;
      part_o[idx * D + d] = O;
      if (d == 0) {
        part_ml[2 * idx] = M;
        part_ml[2 * idx + 1] = L;
      }
    }
  }
  if (n_used == 1 || !arrivals) return; // block-uniform
  // The row's last split block to finish merges them all (threadFenceReduction's pattern). The (row, head) pair is
  // read from blockIdx again: kept live through the loop above, it made the fp8 kernel spill.
  const int64_t pair = (int64_t)blockIdx.x * H + blockIdx.y;
  __shared__ int sm_last;
  __threadfence(); // each thread's part stores are visible device-wide before the block counts itself
  __syncthreads();
  if (threadIdx.x == 0) {
    // the blocks that exist count: a grid narrower than n_used (never planned) leaves no counter set
    const int arriving = n_used < (int)gridDim.z ? n_used : (int)gridDim.z;
    sm_last = atomicAdd(arrivals + pair, 1) == arriving - 1;
    if (sm_last) arrivals[pair] = 0; // every split has arrived and none touches it again in this launch
  }
  __syncthreads();
  if (!sm_last) return;
  __threadfence(); // the other blocks' stores, fenced before their arrivals, are read after ours (through L2)
  dec_combine_row(out, part_o, part_ml, pair * n_splits, n_used, i, H, (int)blockIdx.y, D);
}

// Grid (n_x, H), block x as dec_locate: merges the splits of rows that have more than one, in split order.
__global__ void __launch_bounds__(DEC_THREADS)
    dec_combine_kernel(bf16 *out, const float *part_o, const float *part_ml, int H, int D, const int32_t *q_start,
                       const int32_t *ctx_len, const int32_t *chunk_dev, int n_splits, int64_t row0, int n_seqs) {
  pdl_begin(); // first: launched with cuda_launch
  const int slot = blockIdx.x, h = blockIdx.y;
  int s, qi, q0, q_len;
  if (!dec_locate(slot, row0, n_seqs, q_start, &s, &qi, &q0, &q_len)) return;
  const int chunk = *chunk_dev;
  const int n_used = attn_split_count(attn_causal_keys(ctx_len[s], q_len, qi), chunk);
  if (n_used <= 1) return; // written by dec_split_kernel
  dec_combine_row(out, part_o, part_ml, ((int64_t)slot * H + h) * n_splits, n_used, q0 + qi, H, h, D);
}

// One launch of n_x blocks in x (slot mode: row0 = -1, n_x = n_seqs · ATTN_DECODE_MAX_Q; row mode: rows
// row0 .. row0 + n_x − 1); where rows may have several splits, they are merged by the split kernel's last block
// (CUDA_FUSE_COMBINE) or by a second launch, the combine kernel.
template <int D>
static int dec_launch(cuda_backend_t *cb, int layer, void *out, const void *q, int64_t ldq, int H, float sl,
                      attn_split_t p, int64_t row0, int64_t n_x, es_error_t *err) {
  const es_backend_t *be = &cb->base;
  // one split: every row writes its output directly and the scratch (possibly absent) is not touched
  float *part_o = p.n_splits > 1 ? cb->attn_part : NULL;
  float *part_ml = p.n_splits > 1 ? part_o + n_x * H * p.n_splits * D : NULL;
  dim3 grid((unsigned)n_x, (unsigned)H, (unsigned)p.n_splits);
  // merged in the split kernel (CUDA_FUSE_COMBINE) where the arrival counters cover the launch's (row, head) pairs
  // (attn_arrival_slots: always, for launches the scratch holds)
  const bool fuse = p.n_splits > 1 && (cb->fusions & CUDA_FUSE_COMBINE) && cb->attn_arrivals &&
                    n_x * (int64_t)H <= cb->attn_arrivals_n;
  int32_t *arrivals = fuse ? cb->attn_arrivals : NULL;
  if (be->opts.kv_fp8)
    cuda_launch(cb, dec_split_kernel<D, true>, grid, dim3(DEC_THREADS), 0, (bf16 *)out, part_o, part_ml,
                (const bf16 *)q, ldq, (const void *)cb->kv, (const float *)cb->kv_scale, layer, be->kv_blocks, H, sl,
                cb->d_q_start, cb->d_ctx_len, cb->d_block_table, be->batch.max_blocks, cb->d_dec_chunk, p.n_splits,
                row0, be->batch.n_seqs, arrivals);
  else
    cuda_launch(cb, dec_split_kernel<D, false>, grid, dim3(DEC_THREADS), 0, (bf16 *)out, part_o, part_ml,
                (const bf16 *)q, ldq, (const void *)cb->kv, (const float *)NULL, layer, be->kv_blocks, H, sl,
                cb->d_q_start, cb->d_ctx_len, cb->d_block_table, be->batch.max_blocks, cb->d_dec_chunk, p.n_splits,
                row0, be->batch.n_seqs, arrivals);
  ES_CUDA_LAUNCHED(err);
  if (fuse) cb->combine_fused++;
  if (p.n_splits > 1 && !fuse) {
    cuda_launch(cb, dec_combine_kernel, dim3((unsigned)n_x, (unsigned)H), dim3(DEC_THREADS), 0, (bf16 *)out, part_o,
                part_ml, H, D, cb->d_q_start, cb->d_ctx_len, cb->d_dec_chunk, p.n_splits, row0, be->batch.n_seqs);
    ES_CUDA_LAUNCHED(err);
  }
  return ES_OK;
}

extern "C" int attn_decode_split_cap(const cuda_backend_t *cb, int n_seqs, int H, int D) {
  const int64_t slots = (int64_t)n_seqs * ATTN_DECODE_MAX_Q;
  const size_t per_split = (size_t)slots * (size_t)H * (size_t)(D + 2) * sizeof(float);
  const size_t fit = cb->attn_part ? cb->attn_part_bytes / per_split : 0; // splits the scratch can hold
  return fit > ATTN_MAX_SPLITS ? ATTN_MAX_SPLITS : (int)fit;              // 0 or 1: no split (no scratch used)
}

extern "C" int attn_decode(cuda_backend_t *cb, int layer, void *out, const void *q, int64_t ldq, int H, int D,
                           float scale, es_error_t *err) {
  const int64_t slots = (int64_t)cb->base.batch.n_seqs * ATTN_DECODE_MAX_Q, n_rows = cb->dec_rows;
  const int cap = attn_decode_split_cap(cb, cb->base.batch.n_seqs, H, D);
  attn_split_t p = {cb->dec_splits, cb->dec_chunk}; // planned with the batch (cuda_plan_decode)
  // While recording a step graph the grid must hold every later replay of this bucket: as many splits as the
  // longest context the backend allows could need (attn_split_bound); the kernels read the step's chunk from
  // d_dec_chunk and the blocks past a row's last split return at once.
  if (cb->base.recording)
    p.n_splits = attn_split_bound(n_rows * H, (int64_t)cb->base.opts.max_blocks * ES_KV_BLOCK, cb->sm_count, cap,
                                  cb->attn_splits);
  const float sl = scale * ATTN_LOG2E;
  return D == 64 ? dec_launch<64>(cb, layer, out, q, ldq, H, sl, p, -1, slots, err)
                 : dec_launch<128>(cb, layer, out, q, ldq, H, sl, p, -1, slots, err);
}

extern "C" int attn_decode_det(cuda_backend_t *cb, int layer, void *out, const void *q, int64_t ldq, int H, int D,
                               float scale, es_error_t *err) {
  const es_batch_t *b = &cb->base.batch; // the host copy of the step's batch
  int64_t max_ctx = 0;
  for (int s = 0; s < b->n_seqs; s++)
    if (b->ctx_len[s] > max_ctx) max_ctx = b->ctx_len[s];
  if (cb->attn_det_chunk <= 0)
    return es_fail(err, ES_EINTERNAL, "%s: deterministic attention before the KV pool exists", cb->base.name);
  // recording a step graph: the grid of the longest context allowed (the chunk is fixed in this mode)
  if (cb->base.recording) max_ctx = (int64_t)cb->base.opts.max_blocks * ES_KV_BLOCK;
  const attn_split_t p = attn_det_split_plan(max_ctx, cb->attn_det_chunk);
  const int64_t rows = b->n_tokens;
  const int64_t g = attn_det_rows_per_launch(rows, cb->attn_part ? cb->attn_part_bytes : 0, H, D, p.n_splits);
  if (g < 1) // attn_fast_det_chunk sized the chunk so that one row of the longest context fits
    return es_fail(err, ES_EINTERNAL, "%s: the attention scratch (%zu bytes) cannot hold %d splits of one row",
                   cb->base.name, cb->attn_part_bytes, p.n_splits);
  const float sl = scale * ATTN_LOG2E;
  for (int64_t r0 = 0; r0 < rows; r0 += g) { // launches in stream order share the scratch
    const int64_t n_x = rows - r0 < g ? rows - r0 : g;
    int rc = D == 64 ? dec_launch<64>(cb, layer, out, q, ldq, H, sl, p, r0, n_x, err)
                     : dec_launch<128>(cb, layer, out, q, ldq, H, sl, p, r0, n_x, err);
    if (rc) return rc;
  }
  return ES_OK;
}
