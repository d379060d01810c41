// cuda_fp8_mma: the decode-size fp8 linear (M <= 64 rows of x: a decode step's batch) on tensor cores — the
// weight-only GEMV of cuda_fp8.cu with its multiply-adds moved from the CUDA cores to mma.sync, and the dequantise
// + cuBLASLt path's place from 9 to 32 rows by default (that path writes and reads a bf16 copy of every weight).
// See cuda_fp8.h.
//
// Why: the CUDA-core fp8 GEMV issues ~4 instructions per weight at M = 1 (decode the code, convert, load and
// widen x, FMA) and M times the activation work at M rows; measured on an H200 it streams its 1-byte weights at
// 0.39–0.71 of the copy bandwidth (docs/PERF.md), so fp8 decode was 1.47x bf16 where the bytes allow 1.83x. Here
// one mma.sync m16n8k16 takes 256 weights and 8 rows of x; per weight a lane issues 1/8 of a conversion
// (cvt.rn.f16x2.e4m3x2 on sm_89+: 2 codes, exact) and ~1/64 of the rest, so the kernel is left to the bytes, and
// M = 2..8 cost what M = 1 costs; each further 8 rows (an n-tile) add their activation loads and 4 mma per 1 KB
// of weights. Every block reads all of x twice (the scale pre-pass, then the loop: 2 · M · K · 2 bytes from L2
// per 16 · K weight bytes): 4x the weight bytes at M = 16, 16x at M = 64, and each n-tile repeats the activation
// work in every block — so by default (cb->fp8_mma = 1) one launch takes at most CUDA_FP8_MMA_DEFAULT_M = 32 rows
// and 33 to 64 rows run in two launches (measured on an H100 in cuda_fp8.h: both beat dequantise + cuBLASLt, two
// launches of 32 beat one of 64); mode 2 runs up to 64 in one launch (bench linear, tests). One row goes to the
// CUDA-core GEMV (CUDA_FP8_MMA_MIN_M).
// Napkin math (Qwen2-Audio-7B, fp8 decoder linears 6.48 GB + bf16 lm_head 1.28 GB per step): at 4.2 TB/s copy
// (H200) 1.84 ms per step; the target (issue 9) is fp8 decode >= 1.6x bf16.
//
// Kernel: a block of FP8M_WARPS = 8 warps owns 16 weight rows n0 .. n0 + 15 (all of K); warp w takes super steps
// w, w + 8, ... of 64 columns (fp8_mma_math.h): per super step each lane loads 16 codes of two weight rows (two
// 16-byte loads, FP8M_U super steps in flight) and, per n-tile of 8 rows of x, 16 activations of one row, and the
// warp runs 4 mma steps per n-tile (f16 × f16 -> f32). x is scaled per row by a power of two into f16's range (a first
// pass over the warp's columns finds each row's largest |x|) and the partials scaled back; the 8 warps' partials are
// summed in warp order through shared memory, and the epilogue is the CUDA-core GEMV's (the plain GEMM kernel's
// rounding points):
//   v = rnd(acc · scale[n] (· 256 before sm_89) + bias[n]);  GELU: v = rnd(gelu(v));  accumulate: y = y + v.
// Batch invariance: a row of x is scaled by its own factor and a tensor-core column sums only its own products,
// in an order fixed by K alone (the same for every number of n-tiles), so a row's result does not depend on M or
// on the other rows (M <= 64).
// Needs bf16 compute (bf16 x · 2^e is exact in f16; fp32 x would be rounded to 11 bits), K % 64 == 0 and 16-byte
// aligned weight and x rows (cuda_fp8_mma_ok); the CUDA-core GEMV takes the rest.
#include <cuda_fp16.h>
#include <string.h>

#include "cuda_common.cuh"
#include "cuda_fp8.h"
#include "fp8_cvt.cuh"
#include "fp8_mma_math.h" // the index math and the scaling, emulated on the CPU (tests/kernels/test_fp8_mma_emu.c)

#define FP8M_U 4 // super steps whose weight loads a lane issues before it uses the first
static_assert(CUDA_FP8_MMA_MAX_M == FP8M_MAX_M * FP8M_MAX_NT, "cuda_fp8.h and fp8_mma_math.h disagree on the rows");

// d += a · b, one m16n8k16 tile in f16 with f32 accumulation (the bf16 form's fragment layout: attn_mma.cuh).
__device__ __forceinline__ void mma_f16_16816(float *d, const uint32_t *a, uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
               "{%0, %1, %2, %3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t f16x2_bits(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &v, sizeof u);
  return u;
}

// 16 activations (16-byte aligned) as floats.
__device__ __forceinline__ void fp8m_load_x(const bf16 *p, float *out) {
  const uint4 *q = reinterpret_cast<const uint4 *>(p);
  bf16x8_to_f32(q[0], out);
  bf16x8_to_f32(q[1], out + 8);
}

// One 16-byte weight load: read-only cache (NC) in the main loop; a plain load for the round issued before
// pdl_begin, because ptxas moves ld.global.nc below griddepcontrol.wait (seen in the sm_90 SASS) and plain loads
// stay above it.
template <bool NC> __device__ __forceinline__ uint4 fp8m_ld(const uint8_t *p) {
  return NC ? __ldg(reinterpret_cast<const uint4 *>(p)) : *reinterpret_cast<const uint4 *>(p);
}

// The weight loads of one round: super steps j0, j0 + 8, ... (FP8M_U of them) of rows r0 (lo) and r0 + 8 (hi),
// this lane's 16 codes (columns 16t ..) of each; zeros past the last super step or the last row.
template <bool NC>
__device__ __forceinline__ void fp8m_load_w(uint4 (*a)[2], const uint8_t *lo, const uint8_t *hi, int64_t j0,
                                            int64_t n_ss, int t) {
#pragma unroll
  for (int u = 0; u < FP8M_U; u++) {
    const int64_t j = j0 + (int64_t)FP8M_WARPS * u, off = j * FP8M_KSTEP + 16 * t;
    a[u][0] = lo && j < n_ss ? fp8m_ld<NC>(lo + off) : make_uint4(0, 0, 0, 0);
    a[u][1] = hi && j < n_ss ? fp8m_ld<NC>(hi + off) : make_uint4(0, 0, 0, 0);
  }
}

// The largest |x| of row xr (NULL: none) over this warp's super steps (the 4 lanes of the row, 16 columns each; the
// bf16 bit patterns, one SIMD max per two values, 4 super steps' loads in flight), as its power-of-two exponent.
__device__ __forceinline__ int fp8m_row_exp(const bf16 *xr, int64_t n_ss, int warp, int t) {
  uint32_t am2 = 0;
  if (xr)
    for (int64_t j0 = warp; j0 < n_ss; j0 += 4 * FP8M_WARPS) {
      uint4 xq[4][2];
#pragma unroll
      for (int u = 0; u < 4; u++) {
        const int64_t j = j0 + (int64_t)FP8M_WARPS * u;
        const uint4 *p = reinterpret_cast<const uint4 *>(xr + j * FP8M_KSTEP + 16 * t);
        xq[u][0] = j < n_ss ? p[0] : make_uint4(0, 0, 0, 0);
        xq[u][1] = j < n_ss ? p[1] : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < 4; u++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
          am2 = fp8m_bf16x2_absmax(am2, xq[u][h].x);
          am2 = fp8m_bf16x2_absmax(am2, xq[u][h].y);
          am2 = fp8m_bf16x2_absmax(am2, xq[u][h].z);
          am2 = fp8m_bf16x2_absmax(am2, xq[u][h].w);
        }
    }
  am2 = fp8m_bf16x2_absmax(am2, __shfl_xor_sync(0xffffffffu, am2, 1));
  am2 = fp8m_bf16x2_absmax(am2, __shfl_xor_sync(0xffffffffu, am2, 2));
  return fp8m_x_scale_exp(fp8m_bf16x2_amax_value(am2));
}

// y (M, N) row stride ldy; x (M, K) row stride ldx; w (N, K) fp8 codes, contiguous; scale (N); bias (N) or NULL;
// bf16 (x · 2^e is exact in f16 for bf16 x, not for fp32: the fp32 compute mode keeps the CUDA-core GEMV).
// NT n-tiles of 8 rows of x (M <= 8·NT); n-tile nt's arithmetic is the same for every NT, so a row's result does
// not depend on how many rows came with it. Grid: ceil(N / 16) blocks of FP8M_WARPS warps.
template <int NT>
__global__ void __launch_bounds__(FP8M_WARPS * 32)
    fp8_mma_kernel(bf16 *y, int64_t ldy, const bf16 *x, int64_t ldx, const uint8_t *w, const float *scale,
                   const bf16 *bias, int M, int64_t N, int64_t K, int act, int accumulate) {
  using T = bf16;
  __shared__ float part[FP8M_WARPS][32][4];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int64_t n0 = (int64_t)blockIdx.x * FP8M_ROWS, n_ss = K / FP8M_KSTEP;
  const uint8_t *w_lo = n0 + g < N ? w + (n0 + g) * K : NULL, *w_hi = n0 + g + 8 < N ? w + (n0 + g + 8) * K : NULL;
  uint4 a[FP8M_U][2];
  // The first round of weight loads before pdl_begin: the codes are never written during a step, so under PDL
  // they stream while the kernel before this one finishes (cuda_common.cuh, pdl_launch_next).
  fp8m_load_w<false>(a, w_lo, w_hi, warp, n_ss, t);
  pdl_begin(); // before x is read or y written: launched with cuda_launch

  // row 8nt + g of x for each n-tile, and its power-of-two scale
  const T *xr[NT];
  int ex[NT];
  float xs[NT];
#pragma unroll
  for (int nt = 0; nt < NT; nt++) {
    xr[nt] = 8 * nt + g < M ? x + (int64_t)(8 * nt + g) * ldx : NULL;
    ex[nt] = fp8m_row_exp(xr[nt], n_ss, warp, t);
    xs[nt] = fp8m_pow2(ex[nt]);
  }

  float c[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; nt++) c[nt][0] = c[nt][1] = c[nt][2] = c[nt][3] = 0.0f;
  for (int64_t j0 = warp; j0 < n_ss; j0 += (int64_t)FP8M_WARPS * FP8M_U) {
    if (j0 != warp) fp8m_load_w<true>(a, w_lo, w_hi, j0, n_ss, t); // all FP8M_U rounds' loads first
#pragma unroll
    for (int u = 0; u < FP8M_U; u++) {
      const int64_t j = j0 + (int64_t)FP8M_WARPS * u;
      if (j >= n_ss) break;    // warp-uniform
      uint32_t hlo[8], hhi[8]; // codes 16t .. 16t + 15 of rows g and g + 8, as f16 pairs in code order
      fp8x16_to_f16x2(a[u][0], hlo);
      fp8x16_to_f16x2(a[u][1], hhi);
#pragma unroll
      for (int nt = 0; nt < NT; nt++) {
        if (8 * nt >= M) break; // a tile of padding rows (NT is M rounded up): block-uniform, no arithmetic
        float xv[16];
        if (xr[nt]) {
          fp8m_load_x(xr[nt] + j * FP8M_KSTEP + 16 * t, xv);
        } else {
#pragma unroll
          for (int i = 0; i < 16; i++) xv[i] = 0.0f;
        }
#pragma unroll
        for (int s = 0; s < 4; s++) { // mma step s: columns 16t + 4s + 2h + e (fp8m_col), h = register pair
          const uint32_t af[4] = {hlo[2 * s], hhi[2 * s], hlo[2 * s + 1], hhi[2 * s + 1]};
          mma_f16_16816(c[nt], af, f16x2_bits(xv[4 * s] * xs[nt], xv[4 * s + 1] * xs[nt]),
                        f16x2_bits(xv[4 * s + 2] * xs[nt], xv[4 * s + 3] * xs[nt]));
        }
      }
    }
  }
  // per n-tile: columns 2t, 2t + 1 of C are its rows 2t, 2t + 1: undo their scales (held by lanes 4·(2t),
  // 4·(2t + 1)); the 8 warps' partials summed in warp order by 128 threads, then the epilogue
  const float ws = FP8_HW_CVT ? 1.0f : 256.0f; // the software decode's 1/256, folded back
#pragma unroll
  for (int nt = 0; nt < NT; nt++) {
    const float inv0 = fp8m_pow2(-__shfl_sync(0xffffffffu, ex[nt], 8 * t)),
                inv1 = fp8m_pow2(-__shfl_sync(0xffffffffu, ex[nt], 8 * t + 4));
    if (nt) __syncthreads(); // the previous n-tile's partials are read
    part[warp][lane][0] = c[nt][0] * inv0;
    part[warp][lane][1] = c[nt][1] * inv1;
    part[warp][lane][2] = c[nt][2] * inv0;
    part[warp][lane][3] = c[nt][3] * inv1;
    __syncthreads();
    if (threadIdx.x < FP8M_ROWS * FP8M_MAX_M) {
      int r, ml, src, i;
      fp8m_out(threadIdx.x, &r, &ml, &src, &i);
      const int m = 8 * nt + ml;
      const int64_t n = n0 + r;
      if (m < M && n < N) {
        float v = 0.0f;
#pragma unroll
        for (int k = 0; k < FP8M_WARPS; k++) v += part[k][src][i]; // warp order: fixed
        v = rnd<T>(v * (scale[n] * ws) + (bias ? to_f(bias[n]) : 0.0f));
        if (act == ES_ACT_GELU) v = rnd<T>(gelu_erf(v));
        T *yp = y + (int64_t)m * ldy + n;
        if (accumulate) v = to_f(*yp) + v;
        *yp = from_f<T>(v);
      }
    }
  }
}

template <int NT>
static void launch_nt(cuda_backend_t *cb, void *y, int64_t ldy, const void *x, int64_t ldx, const es_weight_t *w,
                      const es_weight_t *bias, int64_t M, es_act_t act, int accumulate) {
  const int64_t N = w->n0, K = w->n1;
  cuda_launch(cb, fp8_mma_kernel<NT>, dim3((unsigned)((N + FP8M_ROWS - 1) / FP8M_ROWS)), dim3(FP8M_WARPS * 32), 0,
              (bf16 *)y, ldy, (const bf16 *)x, ldx, (const uint8_t *)w->data, w->scale,
              bias ? (const bf16 *)bias->data : (const bf16 *)NULL, (int)M, N, K, (int)act, accumulate);
}

static int launch(cuda_backend_t *cb, void *y, int64_t ldy, const void *x, int64_t ldx, const es_weight_t *w,
                  const es_weight_t *bias, int64_t M, es_act_t act, int accumulate, es_error_t *err) {
  switch (fp8m_n_tiles(M)) {
  case 1: launch_nt<1>(cb, y, ldy, x, ldx, w, bias, M, act, accumulate); break;
  case 2: launch_nt<2>(cb, y, ldy, x, ldx, w, bias, M, act, accumulate); break;
  case 4: launch_nt<4>(cb, y, ldy, x, ldx, w, bias, M, act, accumulate); break;
  case 8: launch_nt<8>(cb, y, ldy, x, ldx, w, bias, M, act, accumulate); break;
  default: return es_fail(err, ES_EINTERNAL, "%s: fp8 MMA GEMV with %lld rows", cb->base.name, (long long)M);
  }
  ES_CUDA_LAUNCHED(err);
  return ES_OK;
}

extern "C" int cuda_fp8_mma_ok(const cuda_backend_t *cb, const void *x, int64_t ldx, const es_weight_t *w, int64_t M) {
  const size_t e = cuda_act_size(cb);
  return cb->fp8_mma && cb->base.act_dtype == ES_DT_BF16 && M >= CUDA_FP8_MMA_MIN_M && M <= CUDA_FP8_MMA_MAX_M &&
         w->n1 % FP8M_KSTEP == 0 && (uintptr_t)w->data % 16 == 0 && (uintptr_t)x % 16 == 0 &&
         ((size_t)ldx * e) % 16 == 0 && (w->n0 + FP8M_ROWS - 1) / FP8M_ROWS <= 0x7fffffff;
}

extern "C" int cuda_fp8_mma(cuda_backend_t *cb, void *y, int64_t ldy, const void *x, int64_t ldx, const es_weight_t *w,
                            const es_weight_t *bias, int64_t M, es_act_t act, int accumulate, es_error_t *err) {
  if (!cuda_fp8_mma_ok(cb, x, ldx, w, M))
    return es_fail(err, ES_EINTERNAL, "%s: fp8 MMA GEMV called outside its conditions (M %lld, K %lld)", cb->base.name,
                   (long long)M, (long long)w->n1);
  // mode 1: launches of at most CUDA_FP8_MMA_DEFAULT_M rows (cuda_fp8.h says why); a row's result does not depend on
  // the other rows of its launch, so the split changes no bits
  const int64_t per = cb->fp8_mma == 2 ? M : fp8m_launch_rows(M, CUDA_FP8_MMA_DEFAULT_M);
  const size_t e = cuda_act_size(cb);
  int rc = ES_OK;
  for (int64_t m0 = 0; m0 < M && !rc; m0 += per)
    rc = launch(cb, (char *)y + (size_t)(m0 * ldy) * e, ldy, (const char *)x + (size_t)(m0 * ldx) * e, ldx, w, bias,
                M - m0 < per ? M - m0 : per, act, accumulate, err);
  if (!rc) cb->fp8_mma_calls++;
  return rc;
}

extern "C" int cuda_backend_set_fp8_mma(es_backend_t *be, int mode, es_error_t *err) {
  cuda_backend_t *cb = cuda_hook_backend(be, "fp8 MMA", err);
  if (!cb) return ES_EINVAL;
  if (mode < 0 || mode > 2)
    return es_fail(err, ES_EINVAL, "fp8 MMA mode %d (0 off, 1 launches of up to 32 rows, 2 one launch)", mode);
  int rc = cuda_hook_change(cb, "fp8 MMA", cb->fp8_mma != mode, err);
  if (rc) return rc;
  cb->fp8_mma = mode;
  return ES_OK;
}

extern "C" int cuda_backend_fp8_mma(const es_backend_t *be) {
  return strcmp(be->ops->kind, "cuda") == 0 ? ((const cuda_backend_t *)be)->fp8_mma : 0;
}

extern "C" int64_t cuda_backend_fp8_mma_calls(const es_backend_t *be) {
  return strcmp(be->ops->kind, "cuda") == 0 ? ((const cuda_backend_t *)be)->fp8_mma_calls : 0;
}
