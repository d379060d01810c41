// cuda_fp8: linear layers with FP8 e4m3 weights and per-output-channel fp32 scales. See cuda_fp8.h.
//
// Napkin math (Qwen2-Audio-7B decoder: L = 32, E = 4096, I = 11008, 32 KV heads, V = 156032):
//   decoder linears 32 · (4·E² + 3·E·I) = 6.48 G weights: 12.95 GB in bf16, 6.48 GB in fp8 (+ 2 MB of scales);
//   lm_head (kept in bf16) 156032 · 4096 = 0.64 G weights = 1.28 GB.
//   Bytes a decode step streams: bf16 14.2 GB, fp8 7.8 GB -> at most 1.83x faster where decode is
//   weight-bound. Floors: H100 SXM (3.35 TB/s HBM3; ~3.0 TB/s reachable) 4.7 ms (bf16) vs 2.6 ms (fp8) per step;
//   H200 (4.8 TB/s) 3.3 ms vs 1.8 ms.
//   The GEMV kernel moves 1 byte per weight plus x (16·M activations per 16-weight chunk, from L1/L2).
//   Instructions, not bytes, bound it: per weight about one decode step, M activation loads and converts and M
//   FMAs — ~4 at M = 1, which at 4.2 TB/s of weights is most of an H200's issue rate. Measured with
//   `earshot bench linear` (H200, 2026-11-27), M = 1: 0.39–0.71 of the copy bandwidth (0.35–0.63 before the
//   sm_89 hardware conversion), where the bf16 GEMV reaches 0.56–0.87; at M = 16, 0.06–0.10. So this kernel
//   takes at most CUDA_FP8_GEMV_MAX_M = 8 rows, and only what the tensor-core GEMV (cuda_fp8_mma.cu, bf16, the
//   default) does not; past it the weight is dequantised to a bf16 copy and cuBLASLt runs the GEMM.
//
// The GEMV kernel (fp8_gemv_kernel): one warp per output row n (or per two rows: gemv_math.h GEMV_ROWS_*); lane j takes
// the 16-weight chunks j, j + 32, ... of the row (one 16-byte load each), decodes them two at a time through fp16
// (sm_89 and later: one cvt instruction, the exact value; sm_80: es_fp8x2_to_f16x2_bits, the value / 256, exact), and
// accumulates x·w in fp32 with FMA for all M rows; a fixed xor-shuffle tree sums the lanes, and lane m applies row m's
// epilogue:
//   v = rnd(acc · (256 · scale[n]) + bias[n]);  GELU: v = rnd(gelu(v));  accumulate: y = y + v
// (the plain GEMM kernel's rounding points, cuda_gemm.cu). A row's arithmetic depends only on K, never on M
// or the other rows, so the kernel is batch-invariant for M <= CUDA_FP8_GEMV_MAX_M; past it cuBLASLt's rules
// apply (cuda_gemm.cu). Rows whose K is not a multiple of 16 or whose x is not 16-byte aligned take the same
// loop a weight at a time.
#include <string.h>

#include "cuda_common.cuh"
#include "cuda_fp8.h"
#include "cuda_gemv.h" // cuda_fp8_gemv_loads, cuda_gemv_pipe
#include "cuda_ops.h"  // cuda_rms_norm_vec_ok
#include "fp8_cvt.cuh"
#include "fp8_math.h"
#include "gemv_epilogue.cuh"
#include "gemv_math.h" // GEMV_ROWS_*: a warp's weight rows
#include "rms_norm_row.cuh"

#define FP8_WARPS 4 // warps (output rows) per block
static_assert(CUDA_FP8_GEMV_MAX_M <= 8, "gemv() below instantiates the kernel for at most 8 rows");

// Two fp8 codes (low bytes of each 16-bit half of pair) -> their values / 256.
__device__ __forceinline__ float2 fp8x2_div256(uint32_t pair) {
  return f16x2_bits_to_f32(es_fp8x2_to_f16x2_bits(pair));
}

// 16 activations of row xr starting at element k (16-byte aligned) as fp32.
__device__ __forceinline__ void load16(const float *xr, float *out) {
  const float4 *p = reinterpret_cast<const float4 *>(xr);
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float4 v = p[i];
    out[4 * i] = v.x, out[4 * i + 1] = v.y, out[4 * i + 2] = v.z, out[4 * i + 3] = v.w;
  }
}
__device__ __forceinline__ void load16(const bf16 *xr, float *out) {
  const uint4 *p = reinterpret_cast<const uint4 *>(xr);
  bf16x8_to_f32(p[0], out);
  bf16x8_to_f32(p[1], out + 8);
}

// The U 16-byte code loads of one round of a lane: chunks c0, c0 + 32, ... of row wr (zeros past the row). NC:
// through the read-only cache (the main loop); plain loads for the round before pdl_begin (ptxas may move
// ld.global.nc below griddepcontrol.wait).
template <int U, bool NC>
__device__ __forceinline__ void fp8_load_w(uint4 *qv, const uint8_t *wr, int64_t c0, int64_t chunks) {
#pragma unroll
  for (int u = 0; u < U; u++) {
    const int64_t c = c0 + 32 * u;
    const uint4 *p = reinterpret_cast<const uint4 *>(wr) + c;
    qv[u] = c < chunks ? (NC ? __ldg(p) : *p) : make_uint4(0, 0, 0, 0);
  }
}

// y (M, N) row stride ldy; x (M, K) row stride ldx; w (N, K) fp8 codes, contiguous; scale (N) fp32; bias (N)
// or NULL. Block: FP8_WARPS warps, warp -> output row n = blockIdx.x · FP8_WARPS + warp. MT >= M rows are
// accumulated (compile-time, so acc stays in registers). VEC: K % 16 == 0, w and x rows 16-byte aligned; U
// 16-byte weight loads per lane in flight (cuda_fp8_gemv_loads); PIPE: the next round's loads issued before this
// round's arithmetic (cuda_gemv_pipe). Every U, PIPE and ROWS give a row the same bits.
// ROWS (VEC only for two rows; gemv_math.h: GEMV_ROWS_*): warp n < P streams row n, or rows n and n + P (U / 2 loads
// of each per round) sharing each x load and conversion; GEMV_ROWS_GLU (es_op_linear_silu_mul: w = [gate; up], 2P
// rows) writes y[m, n] = silu(g) · u from g and u rounded as the plain epilogue rounds them (no bias) — the bits of
// this kernel into (M, 2P) followed by cuda_ops.cu's SiLU·mul (silu_mul_value).
// NORM (CUDA_FUSE_NORM, es_op_linear_rms_norm at one row; P a multiple of FP8_WARPS, so no warp leaves early): after
// the stores, the last block to finish applies the RMSNorm with the residual add of y's row (rms_norm_row.cuh).
// GEMV_ROWS_ROPE (CUDA_FUSE_ROPE, es_op_linear_rope_kv_store at one row): w is [q; k; v], each warp a RoPE pair of
// rows; the epilogue rotates q and k and stores k and v to the cache (rope_math.cuh, rope).
template <typename T, int MT, bool VEC, int U, bool PIPE, int ROWS, bool NORM = false>
__global__ void __launch_bounds__(FP8_WARPS * 32)
    fp8_gemv_kernel(T *y, int64_t ldy, const T *x, int64_t ldx, const uint8_t *w, const float *scale, const T *bias,
                    int M, int64_t N, int64_t K, int act, int accumulate, int64_t P, gemv_norm_t nrm,
                    gemv_rope_t rope) {
  constexpr int R = ROWS == GEMV_ROWS_ONE ? 1 : 2, UR = U / R; // weight rows per warp, loads per row and round
  static_assert(UR >= 1 && UR * R == U && (VEC || R == 1), "two rows: the vector path, U split evenly");
  int lane = threadIdx.x & 31;
  int64_t n = (int64_t)blockIdx.x * FP8_WARPS + (threadIdx.x >> 5);
  static_assert(ROWS != GEMV_ROWS_ROPE || MT == 1, "the RoPE epilogue is for one row of x");
  int64_t row[R]; // a second row past N (two rows, N odd: the last warp) streams row n again, never stored
  const gemv_pair_t pr = gemv_rows<ROWS, R>(n, P, N, rope.D, row);
  const uint8_t *wr[R];
#pragma unroll
  for (int r = 0; r < R; r++) wr[r] = w + row[r] * K;
  const int64_t chunks = VEC ? K / 16 : 0;
  uint4 qv[R][UR];
  // The first round of weight loads before pdl_begin: the codes are never written during a step, so under PDL
  // they stream while the kernel before this one finishes (cuda_common.cuh, pdl_launch_next).
  if (VEC && n < P) {
#pragma unroll
    for (int r = 0; r < R; r++) fp8_load_w<UR, false>(qv[r], wr[r], lane, chunks);
  }
  pdl_begin();        // before x is read or y written: launched with cuda_launch
  if (n >= P) return; // a whole warp leaves; nothing below synchronises the block
  float acc[R][MT];
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int m = 0; m < MT; m++) acc[r][m] = 0.0f;
  if (VEC) {
    for (int64_t c0 = lane; c0 < chunks; c0 += 32 * UR) {
      uint4 qn[R][PIPE ? UR : 1];
#pragma unroll
      for (int r = 0; r < R; r++) {
        if constexpr (PIPE)
          fp8_load_w<UR, true>(qn[r], wr[r], c0 + 32 * UR, chunks); // streams during this round's arithmetic
        else if (c0 != lane)
          fp8_load_w<UR, true>(qv[r], wr[r], c0, chunks); // all loads of the round first; chunks still in order
      }
#pragma unroll
      for (int u = 0; u < UR; u++) {
        const int64_t c = c0 + 32 * u;
        if (c < chunks) {
          float wf[R][16];
#pragma unroll
          for (int r = 0; r < R; r++) {
            uint32_t h2[8];
            fp8x16_to_f16x2(qv[r][u], h2); // code order; exact values (sm_89+) or values / 256
#pragma unroll
            for (int p = 0; p < 8; p++) {
              const float2 f = f16x2_bits_to_f32(h2[p]);
              wf[r][2 * p] = f.x, wf[r][2 * p + 1] = f.y;
            }
          }
#pragma unroll
          for (int m = 0; m < MT; m++) {
            if (m < M) {
              float xf[16];
              load16(x + m * ldx + c * 16, xf);
#pragma unroll
              for (int r = 0; r < R; r++)
#pragma unroll
                for (int i = 0; i < 16; i++) acc[r][m] = fmaf(xf[i], wf[r][i], acc[r][m]);
            }
          }
        }
      }
      if constexpr (PIPE) {
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
          for (int u = 0; u < UR; u++) qv[r][u] = qn[r][u];
      }
    }
  } else {
    for (int64_t k = lane; k < K; k += 32) {
      float wv = fp8x2_div256((uint32_t)wr[0][k]).x;
#pragma unroll
      for (int m = 0; m < MT; m++)
        if (m < M) acc[0][m] = fmaf(to_f(x[m * ldx + k]), wv, acc[0][m]);
    }
  }
  // the software decode's 1/256 folded back: a power of two, so the sum is the hardware path's / 256 exactly and
  // both give the same bits
  const float f = VEC && FP8_HW_CVT ? 1.0f : 256.0f;
  // a row's output: rnd(sum · scale + bias), the plain GEMM kernel's rounding
  const auto value = [scale, f, bias](float sum, int64_t r) {
    return rnd<T>(sum * (scale[r] * f) + (bias ? to_f(bias[r]) : 0.0f));
  };
  gemv_epilogue<T, MT, R, ROWS>(acc, value, row, pr, n, P, N, y, ldy, M, act, accumulate, rope);
  if constexpr (NORM) gemv_norm_tail<T>(nrm, y, N);
}

// ROWS and NORM as fp8_gemv_kernel; N = the weight's rows. The two-row, gate|up and NORM kernels exist only for the
// vector path: they launch it whatever vec says — their entry points (gemv() below, cuda_fp8_glu, cuda_fp8_norm)
// take them only where the vector conditions hold (checked there, so a launch is never silently skipped).
template <typename T, int MT, int U, int ROWS = GEMV_ROWS_ONE, bool NORM = false>
static void launch_gemv_u(cuda_backend_t *cb, bool vec, void *y, int64_t ldy, const void *x, int64_t ldx,
                          const es_weight_t *w, const es_weight_t *bias, int M, int act, int accumulate,
                          gemv_norm_t nrm = gemv_norm_t{}, gemv_rope_t rope = gemv_rope_t{}) {
  int64_t N = w->n0, K = w->n1, P = gemv_warps(N, ROWS);
  unsigned grid = (unsigned)((P + FP8_WARPS - 1) / FP8_WARPS);
  const T *bp = bias ? (const T *)bias->data : NULL;
  constexpr bool PIPE_OK = U <= 8; // 16 loads pipelined spill at 8 rows (ptxas -v); 16 is a bench setting
  constexpr bool VEC_ONLY = ROWS != GEMV_ROWS_ONE || NORM;
  if ((vec || VEC_ONLY) && cuda_gemv_pipe(cb))
    cuda_launch(cb, fp8_gemv_kernel<T, MT, true, U, PIPE_OK, ROWS, NORM>, dim3(grid), dim3(FP8_WARPS * 32), 0, (T *)y,
                ldy, (const T *)x, ldx, (const uint8_t *)w->data, w->scale, bp, M, N, K, act, accumulate, P, nrm, rope);
  else if (vec || VEC_ONLY)
    cuda_launch(cb, fp8_gemv_kernel<T, MT, true, U, false, ROWS, NORM>, dim3(grid), dim3(FP8_WARPS * 32), 0, (T *)y,
                ldy, (const T *)x, ldx, (const uint8_t *)w->data, w->scale, bp, M, N, K, act, accumulate, P, nrm, rope);
  else if constexpr (!VEC_ONLY)
    cuda_launch(cb, fp8_gemv_kernel<T, MT, false, 1, false, GEMV_ROWS_ONE>, dim3(grid), dim3(FP8_WARPS * 32), 0, (T *)y,
                ldy, (const T *)x, ldx, (const uint8_t *)w->data, w->scale, bp, M, N, K, act, accumulate, P, nrm, rope);
}

template <typename T, int MT, int ROWS = GEMV_ROWS_ONE, bool NORM = false>
static void launch_gemv(cuda_backend_t *cb, bool vec, void *y, int64_t ldy, const void *x, int64_t ldx,
                        const es_weight_t *w, const es_weight_t *bias, int M, int act, int accumulate,
                        gemv_norm_t nrm = gemv_norm_t{}, gemv_rope_t rope = gemv_rope_t{}) {
  switch (cuda_fp8_gemv_loads(cb)) {
  case 4: launch_gemv_u<T, MT, 4, ROWS, NORM>(cb, vec, y, ldy, x, ldx, w, bias, M, act, accumulate, nrm, rope); break;
  case 16: launch_gemv_u<T, MT, 16, ROWS, NORM>(cb, vec, y, ldy, x, ldx, w, bias, M, act, accumulate, nrm, rope); break;
  default: launch_gemv_u<T, MT, 8, ROWS, NORM>(cb, vec, y, ldy, x, ldx, w, bias, M, act, accumulate, nrm, rope); break;
  }
}

// The vector path's conditions (16-byte loads of codes and of x rows): K % 16 == 0, w, x and the x rows aligned.
static bool fp8_vec_ok(const void *x, int64_t ldx, size_t x_elem, const es_weight_t *w) {
  return w->n1 % 16 == 0 && (uintptr_t)w->data % 16 == 0 && (uintptr_t)x % 16 == 0 && ((size_t)ldx * x_elem) % 16 == 0;
}

// 1 when this GEMV's vector path takes the linear of one row of x, as cuda_op_linear would route it (not the
// tensor-core GEMV, not deterministic mode) with warps of `rows_per_warp` weight rows: what each fused one-row
// variant (gate|up, RMSNorm, RoPE) builds on.
static bool fp8_takes_one_row(const cuda_backend_t *cb, const void *x, int64_t ldx, const es_weight_t *w, int64_t M,
                              int rows_per_warp) {
  return M == 1 && !cb->base.opts.deterministic && w->dtype == ES_DT_FP8E4M3 && !cuda_fp8_mma_ok(cb, x, ldx, w, M) &&
         fp8_vec_ok(x, ldx, cuda_act_size(cb), w) && (w->n0 / rows_per_warp + FP8_WARPS - 1) / FP8_WARPS <= 0x7fffffff;
}

template <typename T>
static int gemv(cuda_backend_t *cb, void *y, int64_t ldy, const void *x, int64_t ldx, const es_weight_t *w,
                const es_weight_t *bias, int64_t M, es_act_t act, int accumulate, es_error_t *err) {
  const bool vec = fp8_vec_ok(x, ldx, sizeof(T), w);
  int m = (int)M, a = (int)act;
  if (M <= 1 && vec && cuda_gemv_rows(cb) == 2) // one row of x: two weight rows per warp share its loads
    launch_gemv<T, 1, GEMV_ROWS_TWO>(cb, vec, y, ldy, x, ldx, w, bias, m, a, accumulate);
  else if (M <= 1)
    launch_gemv<T, 1>(cb, vec, y, ldy, x, ldx, w, bias, m, a, accumulate);
  else if (M <= 2)
    launch_gemv<T, 2>(cb, vec, y, ldy, x, ldx, w, bias, m, a, accumulate);
  else if (M <= 4)
    launch_gemv<T, 4>(cb, vec, y, ldy, x, ldx, w, bias, m, a, accumulate);
  else
    launch_gemv<T, 8>(cb, vec, y, ldy, x, ldx, w, bias, m, a, accumulate);
  ES_CUDA_LAUNCHED(err);
  return ES_OK;
}

extern "C" int cuda_fp8_gemv(cuda_backend_t *cb, void *y, int64_t ldy, const void *x, int64_t ldx,
                             const es_weight_t *w, const es_weight_t *bias, int64_t M, es_act_t act, int accumulate,
                             es_error_t *err) {
  if (M < 1 || M > CUDA_FP8_GEMV_MAX_M)
    return es_fail(err, ES_EINTERNAL, "%s: fp8 GEMV with M = %lld", cb->base.name, (long long)M);
  if ((w->n0 + FP8_WARPS - 1) / FP8_WARPS > 0x7fffffff)
    return es_fail(err, ES_EUNSUPPORTED, "%s: fp8 weight with %lld rows", cb->base.name, (long long)w->n0);
  return CUDA_DISPATCH(cb, gemv, cb, y, ldy, x, ldx, w, bias, M, act, accumulate, err);
}

// ---- the gate|up linear with SiLU·mul in its epilogue (es_op_linear_silu_mul at one row) ----------------------

template <typename T>
static int glu(cuda_backend_t *cb, void *y, int64_t ldy, const void *x, int64_t ldx, const es_weight_t *w,
               es_error_t *err) {
  launch_gemv<T, 1, GEMV_ROWS_GLU>(cb, true, y, ldy, x, ldx, w, NULL, 1, (int)ES_ACT_NONE, 0);
  ES_CUDA_LAUNCHED(err);
  return ES_OK;
}

extern "C" int cuda_fp8_glu_ok(const cuda_backend_t *cb, const void *x, int64_t ldx, const es_weight_t *w, int64_t M) {
  return (cb->fusions & CUDA_FUSE_GLU) && w->n0 % 2 == 0 && fp8_takes_one_row(cb, x, ldx, w, M, 2);
}

extern "C" int cuda_fp8_glu(cuda_backend_t *cb, void *y, int64_t ldy, const void *x, int64_t ldx, const es_weight_t *w,
                            int64_t M, es_error_t *err) {
  if (!cuda_fp8_glu_ok(cb, x, ldx, w, M))
    return es_fail(err, ES_EINTERNAL, "%s: fused fp8 gate|up GEMV called outside its conditions (M %lld, K %lld)",
                   cb->base.name, (long long)M, (long long)w->n1);
  int rc = CUDA_DISPATCH(cb, glu, cb, y, ldy, x, ldx, w, err);
  if (rc == ES_OK) cb->glu_calls++;
  return rc;
}

// ---- the linear with the RMSNorm after it (es_op_linear_rms_norm at one row) --------------------------------------

template <typename T>
static int norm(cuda_backend_t *cb, void *y, void *residual, void *o, const void *x, int64_t ldx, const es_weight_t *w,
                const es_weight_t *norm_w, float eps, es_error_t *err) {
  const gemv_norm_t nrm = {y, residual, norm_w->data, eps, cb->norm_arrivals};
  if (cuda_gemv_rows(cb) == 2)
    launch_gemv<T, 1, GEMV_ROWS_TWO, true>(cb, true, o, w->n0, x, ldx, w, NULL, 1, (int)ES_ACT_NONE, 0, nrm);
  else
    launch_gemv<T, 1, GEMV_ROWS_ONE, true>(cb, true, o, w->n0, x, ldx, w, NULL, 1, (int)ES_ACT_NONE, 0, nrm);
  ES_CUDA_LAUNCHED(err);
  return ES_OK;
}

extern "C" int cuda_fp8_norm_ok(const cuda_backend_t *cb, const void *y, const void *residual, const void *o,
                                const void *x, int64_t ldx, const es_weight_t *w, const es_weight_t *norm_w,
                                int64_t M) {
  return cuda_gemv_norm_fusable(cb, y, residual, o, norm_w->data, w->n0, M, FP8_WARPS) &&
         fp8_takes_one_row(cb, x, ldx, w, M, cuda_gemv_rows(cb));
}

extern "C" int cuda_fp8_norm(cuda_backend_t *cb, void *y, void *residual, void *o, const void *x, int64_t ldx,
                             const es_weight_t *w, const es_weight_t *norm_w, int64_t M, float eps, es_error_t *err) {
  if (!cuda_fp8_norm_ok(cb, y, residual, o, x, ldx, w, norm_w, M))
    return es_fail(err, ES_EINTERNAL, "%s: fp8 GEMV with the RMSNorm called outside its conditions (M %lld, N %lld)",
                   cb->base.name, (long long)M, (long long)w->n0);
  int rc = CUDA_DISPATCH(cb, norm, cb, y, residual, o, x, ldx, w, norm_w, eps, err);
  if (rc == ES_OK) cb->norm_calls++;
  return rc;
}

// ---- the q|k|v linear with RoPE and the KV store after it (es_op_linear_rope_kv_store at one row) ---------------

extern "C" int cuda_fp8_rope_ok(const cuda_backend_t *cb, const void *x, int64_t ldx, const es_weight_t *w, int64_t M,
                                int H, int D) {
  return cuda_gemv_rope_fusable(cb, w->n0, M, H, D) && fp8_takes_one_row(cb, x, ldx, w, M, 2);
}

template <typename T>
static int rope(cuda_backend_t *cb, int layer, void *qkv, const void *x, int64_t ldx, const es_weight_t *w,
                const es_weight_t *bias, int H, int D, float theta, es_error_t *err) {
  const gemv_rope_t rp = {cb->d_positions, cb->d_slot, cb->kv, layer, cb->base.kv_blocks, H, D, theta};
  launch_gemv<T, 1, GEMV_ROWS_ROPE>(cb, true, qkv, w->n0, x, ldx, w, bias, 1, (int)ES_ACT_NONE, 0, gemv_norm_t{}, rp);
  ES_CUDA_LAUNCHED(err);
  return ES_OK;
}

extern "C" int cuda_fp8_rope(cuda_backend_t *cb, int layer, void *qkv, const void *x, int64_t ldx, const es_weight_t *w,
                             const es_weight_t *bias, int64_t M, int H, int D, float theta, es_error_t *err) {
  if (!cuda_fp8_rope_ok(cb, x, ldx, w, M, H, D))
    return es_fail(err, ES_EINTERNAL, "%s: fp8 q|k|v GEMV with RoPE called outside its conditions (M %lld)",
                   cb->base.name, (long long)M);
  int rc = CUDA_DISPATCH(cb, rope, cb, layer, qkv, x, ldx, w, bias, H, D, theta, err);
  if (rc == ES_OK) cb->rope_calls++;
  return rc;
}

// ---- dequantise into the scratch, for the GEMM path --------------------------------------------------------

// out (N, K) T = decode(q) · scale[row]; the product rounded to fp32 (as the CPU backend computes the weight),
// then once more to T.
template <typename T> __global__ void fp8_dequant_kernel(T *out, const uint8_t *q, const float *scale, int64_t N,
                                                         int64_t K) {
  GRID_STRIDE(i, N * K) out[i] = from_f<T>(es_fp8_decode(q[i]) * scale[i / K]);
}

template <typename T> static int dequant(cuda_backend_t *cb, const es_weight_t *w, es_error_t *err) {
  fp8_dequant_kernel<T><<<cuda_grid_1d(w->n0 * w->n1), 256, 0, cb->stream>>>(
      (T *)cb->fp8_scratch, (const uint8_t *)w->data, w->scale, w->n0, w->n1);
  ES_CUDA_LAUNCHED(err);
  return ES_OK;
}

extern "C" int cuda_fp8_dequant(cuda_backend_t *cb, const es_weight_t *w, es_error_t *err) {
  if ((size_t)(w->n0 * w->n1) > cb->fp8_scratch_elems)
    return es_fail(err, ES_EINTERNAL, "%s: fp8 weight [%lld, %lld] larger than the dequantise scratch (%zu)",
                   cb->base.name, (long long)w->n0, (long long)w->n1, cb->fp8_scratch_elems);
  return CUDA_DISPATCH(cb, dequant, cb, w, err);
}
