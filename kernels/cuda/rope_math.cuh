// rope_math: Qwen2's rotary position embedding of one (f, f + D/2) pair and its store to the paged KV cache, written
// once for the two kernels that run it: cuda_ops.cu's RoPE + KV store kernel and the q|k|v GEMVs' epilogue at one
// row (cuda_gemv.cu, cuda_fp8.cu under CUDA_FUSE_ROPE), so both give the same bits. Include only from .cu files.
//
// As transformers computes it (SPEC §4): inv_freq[f] = 1 / theta^(2f/D) (fp32 exponent, the power rounded to fp32,
// the fp32 reciprocal — as the CPU reference, with the power taken in double), freq = (float)pos · inv_freq[f] in
// fp32, cos/sin of that fp32 value (taken in double and rounded: as close to correctly rounded as the CPU's libm),
// then rounded to the model dtype before use; out[f] = a·cos − b·sin, out[f + D/2] = b·cos + a·sin, each product and
// the sum rounded (bf16 eager), with __fmul_rn / __fadd_rn so nothing contracts into an FMA.
#pragma once

#include "attn_math.h"
#include "cuda_common.cuh"

// cos and sin of position pos for pair f of a head of D, rounded to T.
template <typename T>
__device__ __forceinline__ void rope_cos_sin(int32_t pos, int f, int D, float theta, float *c, float *s) {
  const float e = (float)(2 * f) / (float)D;
  const float inv = 1.0f / (float)pow((double)theta, (double)e);
  const float ang = (float)pos * inv;
  double sn, cn;
  sincos((double)ang, &sn, &cn);
  *c = rnd<T>((float)cn);
  *s = rnd<T>((float)sn);
}

// The rotated pair (a, b) = (x[f], x[f + D/2]) -> (*o0, *o1).
template <typename T> __device__ __forceinline__ void rope_rotate(float a, float b, float c, float s, T *o0, T *o1) {
  *o0 = from_f<T>(__fadd_rn(rnd<T>(__fmul_rn(a, c)), rnd<T>(-__fmul_rn(b, s))));
  *o1 = from_f<T>(__fadd_rn(rnd<T>(__fmul_rn(b, c)), rnd<T>(__fmul_rn(a, s))));
}

// What the q|k|v GEMV's RoPE epilogue needs of the step (CUDA_FUSE_ROPE, one token): its position and cache slot
// (device, the step's batch arrays), the layer's cache (compute dtype, backend.h's layout) and the geometry.
struct gemv_rope_t {
  const int32_t *positions, *slot;
  void *kv;
  int layer, n_blocks, H, D;
  float theta;
};

// The epilogue of one pair of rows of the stacked [q; k; v] product (gemv_math.h gemv_rope_rows: section sec, head
// h, column f), a and b their values already rounded to T as the plain GEMV stores them: q and k are rotated and
// stored to y (the q|k|v row) as cuda_ops' RoPE kernel rotates them in place; k and v go to the cache at the token's
// slot; v is stored to y unrotated.
template <typename T>
__device__ __forceinline__ void rope_pair_store(const gemv_rope_t &rp, T *y, int64_t r0, int64_t r1, int sec, int h,
                                                int f, float a, float b) {
  T o0 = from_f<T>(a), o1 = from_f<T>(b);
  if (sec < 2) {
    float c, s;
    rope_cos_sin<T>(rp.positions[0], f, rp.D, rp.theta, &c, &s);
    rope_rotate<T>(a, b, c, s, &o0, &o1);
  }
  y[r0] = o0;
  y[r1] = o1;
  if (sec == 0) return;
  const int32_t sl = rp.slot[0], blk = sl / ES_KV_BLOCK, off = sl % ES_KV_BLOCK;
  T *row = (T *)rp.kv + attn_kv_offset(rp.layer, rp.n_blocks, blk, sec - 1, rp.H, h, rp.D, off);
  row[f] = o0;
  row[f + rp.D / 2] = o1;
}
