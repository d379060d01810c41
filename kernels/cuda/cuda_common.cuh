// cuda_common: device-side helpers shared by the kernels/cuda .cu files — the two activation types, their
// conversions and rounding, fixed-order block reductions, launch sizes and the dtype dispatch.
//
// Numerics: every kernel computes in fp32 and stores in the activation type T (float or bf16). rnd<T>(x)
// is "round x to T and widen it back": the places where transformers' bf16 eager forward rounds an
// intermediate to bf16 (SPEC §7) call it, and in fp32 mode it is the identity, so one kernel serves both
// modes. Reductions use a fixed tree (warp shuffles by xor, then warp 0 over the per-warp partials), so a
// row's result never depends on other rows or on the launch size (batch invariance, backend.h).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "cuda_backend.h"
#include "cuda_check.h"

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16_rn(x); }

// x rounded to T (round to nearest even) and widened back to fp32.
template <typename T> __device__ __forceinline__ float rnd(float x) { return to_f(from_f<T>(x)); }

// SiLU·mul of one element as transformers computes act_fn(gate) * up in the compute dtype T: round(silu(g)) · u with
// silu(g) = g / (1 + e^−g), g and u already in T; the caller rounds the product (from_f<T>). One definition for
// cuda_ops.cu's SiLU·mul and the GEMVs' fused gate|up epilogue, so both give the same bits.
template <typename T> __device__ __forceinline__ float silu_mul_value(float g, float u) {
  return rnd<T>(g / (1.0f + expf(-g))) * u;
}

// 16-byte vectors of T (8 bf16 or 4 floats) as floats: the row kernels' loads, one per thread, all issued before
// any result is needed (a row of 4096 in one round trip to memory instead of one per element).
template <typename T> struct vec16 { static constexpr int N = 16 / (int)sizeof(T); };
template <typename T> __device__ __forceinline__ void load16_f(const T *p, float *f) {
  const uint4 u = *reinterpret_cast<const uint4 *>(p);
  const T *e = reinterpret_cast<const T *>(&u);
#pragma unroll
  for (int i = 0; i < vec16<T>::N; i++) f[i] = to_f(e[i]);
}
template <typename T> __device__ __forceinline__ void store16_f(T *p, const float *f) {
  uint4 u;
  T *e = reinterpret_cast<T *>(&u);
#pragma unroll
  for (int i = 0; i < vec16<T>::N; i++) e[i] = from_f<T>(f[i]);
  *reinterpret_cast<uint4 *>(p) = u;
}

// The exact-erf GELU of torch's nn.functional.gelu (backend.h ES_ACT_GELU), in fp32.
__device__ __forceinline__ float gelu_erf(float v) { return v * 0.5f * (1.0f + erff(v * 0.70710678118654752440f)); }

// 8 bf16 (one 16-byte load) -> 8 floats, exactly: bf16 is the high half of an fp32.
__device__ __forceinline__ void bf16x8_to_f32(const uint4 &u, float *f) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

// ---- programmatic dependent launch (sm_90) ----
// A decode step is ~300 short kernels; between two of them the GPU drains the first grid, then launches and
// schedules the second. Kernels started with cuda_launch (when cb->pdl) may be launched while the kernel before
// them on the stream is still running; each such kernel calls pdl_begin() before it reads or writes anything
// the kernels before it may write, which returns once that kernel has completed and its writes are visible —
// so only the launch, and the weight loads the GEMVs issue before it, overlap. A no-op for a normal launch and before
// sm_90. (cuBLASLt kernels are launched normally and wait as usual; a kernel of ours after one of them still overlaps
// its own launch with their tail.)
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel on the stream, when it was launched with PDL, be scheduled from now on instead of from
// this grid's end. It still waits in its own pdl_wait() until this whole grid has completed and its writes are
// visible, so only its launch and what it does before that wait move earlier — the GEMVs load their first
// weights there (cuda_gemv.cu, cuda_fp8.cu): weights are never written during a step. The next grid is
// scheduled once every block of this one has executed this or exited (PTX ISA: griddepcontrol), so its blocks
// never take SM room from a block of this grid that has not started; at most two grids are resident, since the
// next one triggers only after its own wait. A no-op without a PDL launch after this kernel, and before sm_90.
__device__ __forceinline__ void pdl_launch_next() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// The start of every per-step kernel launched with cuda_launch: wait for the kernel before, then let the next
// one be scheduled.
__device__ __forceinline__ void pdl_begin() {
  pdl_wait();
  pdl_launch_next();
}

// kernel<<<grid, block, smem, stream>>>(args), with the programmatic-serialization attribute when pdl.
// Launch errors are left for ES_CUDA_LAUNCHED (cudaGetLastError), as with <<<>>>.
template <typename... Exp, typename... Act>
static inline void cuda_launch_on(cudaStream_t stream, int pdl, void (*kernel)(Exp...), dim3 grid, dim3 block,
                                  size_t smem, Act... args) {
  if (!pdl) {
    kernel<<<grid, block, smem, stream>>>(args...);
    return;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  (void)cudaLaunchKernelEx(&cfg, kernel, args...); // its error stays the thread's last error
}

// The backend's kernels: on cb->stream, PDL when cb->pdl.
template <typename... Exp, typename... Act>
static inline void cuda_launch(const cuda_backend_t *cb, void (*kernel)(Exp...), dim3 grid, dim3 block, size_t smem,
                               Act... args) {
  cuda_launch_on(cb->stream, cb->pdl, kernel, grid, block, smem, args...);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum (is_max = 0) or max (is_max = 1) of v over the block; every thread gets the result. red: >= 32 floats
// of shared memory. blockDim.x must be a multiple of 32. Contains __syncthreads: call from all threads.
__device__ __forceinline__ float block_reduce(float v, float *red, int is_max) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = is_max ? warp_max(v) : warp_sum(v);
  __syncthreads(); // red may still be read by an earlier reduction
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float r = lane < nw ? red[lane] : (is_max ? -INFINITY : 0.0f);
  r = is_max ? warp_max(r) : warp_sum(r);
  return r;
}

// Grid for n independent elements with 256-thread blocks, capped (kernels loop with a grid stride).
static inline unsigned cuda_grid_1d(int64_t n) {
  int64_t b = (n + 255) / 256;
  if (b < 1) b = 1;
  return (unsigned)(b > 65535 * 16 ? 65535 * 16 : b);
}

#define GRID_STRIDE(i, n) \
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

// Calls FN<float>(args) or FN<bf16>(args) for the backend's compute dtype.
#define CUDA_DISPATCH(cb, FN, ...) \
  ((cb)->base.act_dtype == ES_DT_BF16 ? FN<bf16>(__VA_ARGS__) : FN<float>(__VA_ARGS__))
