// rms_norm_row: Qwen2's RMSNorm with the residual add over one row of C elements held as C / N 16-byte vectors
// (N = vec16<T>::N), written once for the two kernels that run it at decode sizes: cuda_ops.cu's RMSNorm (a block
// of one thread per vector) and the tail of the GEMVs whose last block normalises the row they just produced
// (cuda_gemv.cu, cuda_fp8.cu under CUDA_FUSE_NORM: a block of GEMV_WARPS warps, several vectors per thread). Both
// give the same bits: each vector's arithmetic is the same functions below, and the sum of squares is reduced in
// the order of a block of one thread per vector whatever the block really is ("virtual threads": vector v is
// virtual thread v, its lane v % 32 of virtual warp v / 32; each virtual warp is summed by the xor tree of
// warp_sum, the virtual warps' sums in order by one more). Include only from .cu files.
//
//   residual = round(residual + add);  y = round(w · round(residual · 1 / sqrt(mean(residual²) + eps)))
// (SPEC §4; round() is the compute dtype's, the identity in fp32).
#pragma once

#include "cuda_common.cuh"

// Vector h of the residual plus vector a of add, rounded (transformers: residual + hidden in the model dtype).
template <typename T> __device__ __forceinline__ void rms_add_vec(float *h, const float *a) {
#pragma unroll
  for (int i = 0; i < vec16<T>::N; i++) h[i] = rnd<T>(h[i] + a[i]);
}

// The squares of one vector summed in order (one fused multiply-add each: the same instructions in every kernel).
template <typename T> __device__ __forceinline__ float rms_ss_vec(const float *h) {
  float ss = 0.0f;
#pragma unroll
  for (int i = 0; i < vec16<T>::N; i++) ss = fmaf(h[i], h[i], ss);
  return ss;
}

// 1 / sqrt(mean + eps) from the row's sum of squares (as the CPU reference).
__device__ __forceinline__ float rms_inv(float total, int64_t C, float eps) {
  return 1.0f / sqrtf(total / (float)C + eps);
}

// Output vector o = w · round(h · inv).
template <typename T>
__device__ __forceinline__ void rms_out_vec(float *o, const float *wv, const float *h, float inv) {
#pragma unroll
  for (int i = 0; i < vec16<T>::N; i++) o[i] = wv[i] * rnd<T>(h[i] * inv);
}

// 16 bytes of T read through L2 (ld.global.cg), as floats: for data other blocks of the running kernel wrote.
template <typename T> __device__ __forceinline__ void load16_f_cg(const T *p, float *f) {
  const uint4 u = __ldcg(reinterpret_cast<const uint4 *>(p));
  const T *e = reinterpret_cast<const T *>(&u);
#pragma unroll
  for (int i = 0; i < vec16<T>::N; i++) f[i] = to_f(e[i]);
}

// The whole row by the calling block (all its threads; blockDim.x a multiple of 32; C a multiple of N, C / N <=
// 1024; every pointer 16-byte aligned): thread t takes vectors t, t + blockDim.x, ... In two passes over memory —
// the residual is stored by the first and read back by the same thread in the second — so it keeps no row in
// registers. add (may be NULL) is read through L2: other blocks of the running kernel may have written it.
// red: >= 32 floats of shared memory. Contains __syncthreads.
template <typename T>
__device__ void rms_norm_row_block(T *y, T *residual, const T *add, const T *w, int64_t C, float eps, float *red) {
  constexpr int N = vec16<T>::N;
  const int V = (int)(C / N), lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int VW = (V + 31) / 32;                      // virtual warps
  __syncthreads();                                   // red may still be read by an earlier reduction
  for (int v0 = 0; v0 < VW * 32; v0 += blockDim.x) { // rounds of blockDim.x virtual threads (block-uniform)
    const int v = v0 + threadIdx.x;
    float ss = 0.0f;
    if (v < V) {
      float h[N];
      load16_f(residual + (int64_t)v * N, h);
      if (add) {
        float a[N];
        load16_f_cg(add + (int64_t)v * N, a);
        rms_add_vec<T>(h, a);
        store16_f(residual + (int64_t)v * N, h);
      }
      ss = rms_ss_vec<T>(h);
    }
    ss = warp_sum(ss); // virtual warp v0 / 32 + warp
    if (lane == 0 && v0 / 32 + warp < VW) red[v0 / 32 + warp] = ss;
  }
  __syncthreads();
  float total = lane < VW ? red[lane] : 0.0f;
  total = warp_sum(total);
  const float inv = rms_inv(total, C, eps);
  for (int v = threadIdx.x; v < V; v += blockDim.x) {
    float h[N], wv[N], o[N];
    load16_f(residual + (int64_t)v * N, h); // this thread's own store (or the untouched row)
    load16_f(w + (int64_t)v * N, wv);
    rms_out_vec<T>(o, wv, h, inv);
    store16_f(y + (int64_t)v * N, o);
  }
}

// The RMSNorm a GEMV's last block applies to the row it completes (CUDA_FUSE_NORM; cuda_gemv.cu, cuda_fp8.cu): y and
// residual (C) in the compute dtype, w the norm weight, arrivals one device counter, zero between launches.
struct gemv_norm_t {
  void *y, *residual;
  const void *w;
  float eps;
  int32_t *arrivals;
};

// The tail of such a GEMV, after every block's output stores (all threads of every block reach it: the grid has no
// idle warps): each block counts itself; the last to arrive zeroes the counter for the next launch and normalises
// the row — add = out, the linear's (C) output the other blocks wrote (threadFenceReduction's pattern).
template <typename T> __device__ __forceinline__ void gemv_norm_tail(const gemv_norm_t &nrm, const T *out, int64_t C) {
  __shared__ float red[32];
  __shared__ int last;
  __threadfence(); // this block's output stores are visible device-wide before it counts itself
  __syncthreads();
  if (threadIdx.x == 0) {
    last = atomicAdd(nrm.arrivals, 1) == (int)gridDim.x - 1;
    if (last) *nrm.arrivals = 0; // every block has arrived and none touches it again in this launch
  }
  __syncthreads();
  if (!last) return;
  __threadfence(); // the other blocks' stores, fenced before their arrivals, are read after ours (through L2)
  rms_norm_row_block<T>((T *)nrm.y, (T *)nrm.residual, out, (const T *)nrm.w, C, nrm.eps, red);
}
