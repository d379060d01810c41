// cuda_gemv: the decode GEMM at M <= CUDA_GEMV_MAX_M rows with bf16 weights and activations, as a weight-
// streaming GEMV. See cuda_gemv.h.
//
// Napkin math (Qwen2-Audio-7B decode at batch 1): 14.2 GB of bf16 weights per step, 4.7 ms at a reachable
// 3.0 TB/s on an H100 SXM, 3.3 ms on an H200 — the issue's target is 80% of the copy rate measured in the same
// run. cuBLASLt at M = 1 treats the product as a thin GEMM; a GEMV that gives every warp whole weight rows and
// keeps several 16-byte loads per lane in flight streams closer to the copy rate (the same shape as the fp8 GEMV,
// cuda_fp8.cu, which the review found correct). At M <= 4 the activations (<= 4 · K · 2 bytes per row of W) are
// read from L1/L2 and cost far less than the weight row.
//
// Kernel: one warp per output row n (or per two rows: gemv_math.h GEMV_ROWS_TWO / _GLU, below); lane j takes the
// 8-weight chunks j, j + 32, ... of the row (one 16-byte load each, U = cuda_gemv_loads() of them issued before the
// first is used), accumulates x·w in fp32 with FMA for all M rows, then a fixed xor-shuffle tree sums the lanes and
// lane m applies row m's epilogue — the plain GEMM kernel's rounding points (cuda_gemm.cu): v = rnd(acc + bias[n]);
// GELU: v = rnd(gelu(v)); accumulate: y = y + v (in the output dtype's rounding). fp32 output (logits) is not rounded.
// Batch invariance: a row's arithmetic depends only on K, not on M, but the cuBLASLt path for larger M sums in
// another order, so deterministic mode never takes this path (cuda_gemm.cu).
#include <string.h>

#include "cuda_common.cuh"
#include "cuda_gemv.h"
#include "cuda_ops.h" // cuda_rms_norm_vec_ok
#include "gemv_epilogue.cuh"
#include "gemv_math.h" // the index math and the conditions, tested on the CPU (tests/kernels/test_gemv_math.c)
#include "rms_norm_row.cuh"

static_assert(GEMV_MAX_M == CUDA_GEMV_MAX_M, "gemv_math.h and cuda_gemv.h disagree on the largest M");

// The U 16-byte weight loads of one round of a lane: chunks c0, c0 + 32, ... of row n (zeros past the row).
// NC: through the read-only cache (the main loop); plain loads for the round before pdl_begin, because ptxas may
// move ld.global.nc below griddepcontrol.wait (seen in the sm_90 SASS of the fp8 tensor-core GEMV).
template <int U, bool NC>
__device__ __forceinline__ void gemv_load_w(uint4 *wv, const bf16 *w, int64_t n, int64_t K, int64_t c0,
                                            int64_t chunks) {
#pragma unroll
  for (int u = 0; u < U; u++) {
    const int64_t c = c0 + 32 * u;
    const uint4 *p = reinterpret_cast<const uint4 *>(w + gemv_w_off(n, K, c));
    wv[u] = c < chunks ? (NC ? __ldg(p) : *p) : make_uint4(0, 0, 0, 0);
  }
}

// y (M, N) row stride ldy, TO = bf16 (linear) or float (logits); x (M, K) bf16 row stride ldx; w (N, K) bf16,
// contiguous; bias (N) bf16 or NULL. K % 8 == 0 and x, w rows 16-byte aligned (cuda_gemv_ok). Block: GEMV_WARPS
// warps, warp -> n = blockIdx.x · GEMV_WARPS + warp < P, its rows as ROWS says (gemv_math.h: GEMV_ROWS_*,
// gemv_warps, gemv_warp_row); MT >= M rows of x accumulated (compile-time).
// U: 16-byte weight loads each lane issues before it uses the first (loads in flight; with two weight rows U / 2 of
// each); PIPE: the next round of U is issued before this round's arithmetic (2·U in flight while it runs;
// cuda_gemv_pipe). The lane still adds its chunks j, j + 32, ... of a row in increasing order, so every U, PIPE and
// ROWS give a row the same bits.
// Two rows per warp share each x load and conversion (half the activation work per weight) and stream twice the
// bytes per warp. GEMV_ROWS_GLU's epilogue writes silu(g) · u from g and u rounded as the plain epilogue (no bias)
// rounds them — the bits of this kernel into (M, 2P) followed by cuda_ops.cu's SiLU·mul (silu_mul_value).
// NORM (CUDA_FUSE_NORM, es_op_linear_rms_norm at one row; P a multiple of GEMV_WARPS, so no warp leaves early): after
// the stores, the last block to finish applies the RMSNorm with the residual add of y's row (rms_norm_row.cuh).
// GEMV_ROWS_ROPE (CUDA_FUSE_ROPE, es_op_linear_rope_kv_store at one row, TO = bf16): w is [q; k; v], each warp a
// RoPE pair of rows; the epilogue rotates q and k and stores k and v to the cache (rope_math.cuh, rope).
template <typename TO, int MT, int U, bool PIPE, int ROWS, bool NORM = false>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
    bf16_gemv_kernel(TO *y, int64_t ldy, const bf16 *x, int64_t ldx, const bf16 *w, const bf16 *bias, int M, int64_t N,
                     int64_t K, int act, int accumulate, int64_t P, gemv_norm_t nrm, gemv_rope_t rope) {
  constexpr int R = ROWS == GEMV_ROWS_ONE ? 1 : 2, UR = U / R; // weight rows per warp, loads per row and round
  static_assert(UR >= 1 && UR * R == U, "the loads of a round split evenly between the rows");
  static_assert(ROWS != GEMV_ROWS_ROPE || MT == 1, "the RoPE epilogue is for one row of x");
  const int lane = threadIdx.x & 31;
  const int64_t n = gemv_row(blockIdx.x, threadIdx.x >> 5);
  const int64_t chunks = K / GEMV_CHUNK;
  int64_t row[R]; // a second row past N (GEMV_ROWS_TWO, N odd: the last warp) streams row n again, never stored
  const gemv_pair_t pr = gemv_rows<ROWS, R>(n, P, N, rope.D, row);
  uint4 wv[R][UR];
  // The first round of weight loads before pdl_begin: weights are never written during a step, so under PDL
  // they stream while the kernel before this one finishes (cuda_common.cuh, pdl_launch_next).
  if (n < P) {
#pragma unroll
    for (int r = 0; r < R; r++) gemv_load_w<UR, false>(wv[r], w, row[r], K, lane, chunks);
  }
  pdl_begin();        // before x is read or y written: launched with cuda_launch
  if (n >= P) return; // a whole warp leaves; nothing below synchronises the block
  float acc[R][MT];
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int m = 0; m < MT; m++) acc[r][m] = 0.0f;
  for (int64_t c0 = lane; c0 < chunks; c0 += 32 * UR) {
    uint4 wn[R][PIPE ? UR : 1];
#pragma unroll
    for (int r = 0; r < R; r++) {
      if constexpr (PIPE)
        gemv_load_w<UR, true>(wn[r], w, row[r], K, c0 + 32 * UR, chunks); // streams during this round's FMAs
      else if (c0 != lane)
        gemv_load_w<UR, true>(wv[r], w, row[r], K, c0, chunks); // all loads of the round first
    }
#pragma unroll
    for (int u = 0; u < UR; u++) {
      const int64_t c = c0 + 32 * u;
      if (c < chunks) {
        float wf[R][8];
#pragma unroll
        for (int r = 0; r < R; r++) bf16x8_to_f32(wv[r][u], wf[r]);
#pragma unroll
        for (int m = 0; m < MT; m++) {
          if (m < M) {
            float xf[8];
            bf16x8_to_f32(*reinterpret_cast<const uint4 *>(x + gemv_x_off(m, ldx, c)), xf);
#pragma unroll
            for (int r = 0; r < R; r++)
#pragma unroll
              for (int i = 0; i < 8; i++) acc[r][m] = fmaf(xf[i], wf[r][i], acc[r][m]);
          }
        }
      }
    }
    if constexpr (PIPE) {
#pragma unroll
      for (int r = 0; r < R; r++)
#pragma unroll
        for (int u = 0; u < UR; u++) wv[r][u] = wn[r][u];
    }
  }
  // a row's output: rnd(sum + bias), the plain GEMM kernel's rounding
  const auto value = [bias](float sum, int64_t r) { return rnd<TO>(sum + (bias ? to_f(bias[r]) : 0.0f)); };
  gemv_epilogue<TO, MT, R, ROWS>(acc, value, row, pr, n, P, N, y, ldy, M, act, accumulate, rope);
  if constexpr (NORM) gemv_norm_tail<TO>(nrm, y, N);
}

// N: the weight's rows; the warps' P as gemv_math.h's GEMV_ROWS_* says; NORM: nrm as the kernel's.
template <typename TO, int MT, int U, int ROWS = GEMV_ROWS_ONE, bool NORM = false>
static void launch_u(cuda_backend_t *cb, void *y, int64_t ldy, const void *x, int64_t ldx, const void *w, int64_t N,
                     int64_t K, const void *bias, int M, int act, int accumulate, gemv_norm_t nrm = gemv_norm_t{},
                     gemv_rope_t rope = gemv_rope_t{}) {
  const int64_t P = gemv_warps(N, ROWS);
  const unsigned grid = (unsigned)gemv_grid(P);
  if (cuda_gemv_pipe(cb))
    cuda_launch(cb, bf16_gemv_kernel<TO, MT, U, true, ROWS, NORM>, dim3(grid), dim3(GEMV_WARPS * 32), 0, (TO *)y, ldy,
                (const bf16 *)x, ldx, (const bf16 *)w, (const bf16 *)bias, M, N, K, act, accumulate, P, nrm, rope);
  else
    cuda_launch(cb, bf16_gemv_kernel<TO, MT, U, false, ROWS, NORM>, dim3(grid), dim3(GEMV_WARPS * 32), 0, (TO *)y, ldy,
                (const bf16 *)x, ldx, (const bf16 *)w, (const bf16 *)bias, M, N, K, act, accumulate, P, nrm, rope);
}

template <typename TO, int MT, int ROWS = GEMV_ROWS_ONE, bool NORM = false>
static void launch(cuda_backend_t *cb, void *y, int64_t ldy, const void *x, int64_t ldx, const void *w, int64_t N,
                   int64_t K, const void *bias, int M, int act, int accumulate, gemv_norm_t nrm = gemv_norm_t{},
                   gemv_rope_t rope = gemv_rope_t{}) {
  switch (cuda_gemv_loads(cb)) {
  case 4: launch_u<TO, MT, 4, ROWS, NORM>(cb, y, ldy, x, ldx, w, N, K, bias, M, act, accumulate, nrm, rope); break;
  case 16: launch_u<TO, MT, 16, ROWS, NORM>(cb, y, ldy, x, ldx, w, N, K, bias, M, act, accumulate, nrm, rope); break;
  default: launch_u<TO, MT, 8, ROWS, NORM>(cb, y, ldy, x, ldx, w, N, K, bias, M, act, accumulate, nrm, rope); break;
  }
}

template <typename TO>
static void dispatch(cuda_backend_t *cb, void *y, int64_t ldy, const void *x, int64_t ldx, const void *w,
                     int64_t N, int64_t K, const void *bias, int M, int act, int accumulate) {
  if (M <= 1 && cuda_gemv_rows(cb) == 2) // one row of x: two weight rows per warp share its loads
    launch<TO, 1, GEMV_ROWS_TWO>(cb, y, ldy, x, ldx, w, N, K, bias, M, act, accumulate);
  else if (M <= 1)
    launch<TO, 1>(cb, y, ldy, x, ldx, w, N, K, bias, M, act, accumulate);
  else if (M <= 2)
    launch<TO, 2>(cb, y, ldy, x, ldx, w, N, K, bias, M, act, accumulate);
  else
    launch<TO, 4>(cb, y, ldy, x, ldx, w, N, K, bias, M, act, accumulate);
}

extern "C" int cuda_gemv_ok(const cuda_backend_t *cb, es_dtype_t out_dt, const void *x, int64_t ldx, const void *w,
                            int64_t N, int64_t K, int64_t M) {
  // never the fp8 dequantise scratch: it is written in the step (the GEMV loads its first weights before it waits
  // for the kernel before it, which is right only for weights no kernel of the step writes)
  return w != cb->fp8_scratch && cb->gemv_mode && !cb->base.opts.deterministic && cb->gemm_path == CUDA_GEMM_AUTO &&
         (cb->gemv_mode == 2 || gemv_preferred(M, N, K)) && cb->base.act_dtype == ES_DT_BF16 &&
         (out_dt == ES_DT_BF16 || out_dt == ES_DT_F32) && gemv_shape_ok(M, N, K, ldx, (uintptr_t)x, (uintptr_t)w);
}

extern "C" int cuda_gemv(cuda_backend_t *cb, void *y, int64_t ldy, es_dtype_t out_dt, const void *x, int64_t ldx,
                         const void *w, int64_t N, int64_t K, const void *bias, int64_t M, es_act_t act,
                         int accumulate, es_error_t *err) {
  if (!cuda_gemv_ok(cb, out_dt, x, ldx, w, N, K, M))
    return es_fail(err, ES_EINTERNAL, "%s: GEMV called outside its conditions (M %lld, K %lld)", cb->base.name,
                   (long long)M, (long long)K);
  if (out_dt == ES_DT_F32)
    dispatch<float>(cb, y, ldy, x, ldx, w, N, K, bias, (int)M, (int)act, accumulate);
  else
    dispatch<bf16>(cb, y, ldy, x, ldx, w, N, K, bias, (int)M, (int)act, accumulate);
  ES_CUDA_LAUNCHED(err);
  cb->gemv_calls++;
  return ES_OK;
}

extern "C" int cuda_gemv_glu_ok(const cuda_backend_t *cb, const void *x, int64_t ldx, const void *w, int64_t N2,
                                int64_t K, int64_t M) {
  return (cb->fusions & CUDA_FUSE_GLU) && M == 1 && N2 % 2 == 0 && cb->base.act_dtype == ES_DT_BF16 &&
         cuda_gemv_ok(cb, ES_DT_BF16, x, ldx, w, N2, K, M);
}

extern "C" int cuda_gemv_glu(cuda_backend_t *cb, void *y, int64_t ldy, const void *x, int64_t ldx, const void *w,
                             int64_t N2, int64_t K, int64_t M, es_error_t *err) {
  if (!cuda_gemv_glu_ok(cb, x, ldx, w, N2, K, M))
    return es_fail(err, ES_EINTERNAL, "%s: fused gate|up GEMV called outside its conditions (M %lld, K %lld)",
                   cb->base.name, (long long)M, (long long)K);
  launch<bf16, 1, GEMV_ROWS_GLU>(cb, y, ldy, x, ldx, w, N2, K, NULL, 1, ES_ACT_NONE, 0);
  ES_CUDA_LAUNCHED(err);
  cb->gemv_calls++;
  cb->glu_calls++;
  return ES_OK;
}

extern "C" int cuda_backend_gemv_mode(const es_backend_t *be) {
  return strcmp(be->ops->kind, "cuda") == 0 ? ((const cuda_backend_t *)be)->gemv_mode : 0;
}

extern "C" int64_t cuda_backend_gemv_calls(const es_backend_t *be) {
  return strcmp(be->ops->kind, "cuda") == 0 ? ((const cuda_backend_t *)be)->gemv_calls : 0;
}

extern "C" int cuda_backend_set_gemv_loads(es_backend_t *be, int loads, es_error_t *err) {
  cuda_backend_t *cb = cuda_hook_backend(be, "GEMV loads", err);
  if (!cb) return ES_EINVAL;
  if (loads != 0 && loads != 4 && loads != 8 && loads != 16)
    return es_fail(err, ES_EINVAL, "GEMV loads in flight: %d (0 = default, 4, 8 or 16)", loads);
  int rc = cuda_hook_change(cb, "GEMV loads", cb->gemv_loads != loads, err);
  if (rc) return rc;
  cb->gemv_loads = loads;
  return ES_OK;
}

extern "C" int cuda_backend_gemv_loads(const es_backend_t *be) {
  return strcmp(be->ops->kind, "cuda") == 0 ? ((const cuda_backend_t *)be)->gemv_loads : 0;
}

extern "C" int cuda_backend_set_gemv_pipe(es_backend_t *be, int on, es_error_t *err) {
  cuda_backend_t *cb = cuda_hook_backend(be, "GEMV pipelining", err);
  if (!cb) return ES_EINVAL;
  if (on != 0 && on != 1) return es_fail(err, ES_EINVAL, "GEMV pipelining: %d (0 off, 1 on)", on);
  int rc = cuda_hook_change(cb, "GEMV pipelining", cb->gemv_pipe_off != !on, err);
  if (rc) return rc;
  cb->gemv_pipe_off = !on;
  return ES_OK;
}

extern "C" int cuda_backend_gemv_pipe(const es_backend_t *be) {
  return strcmp(be->ops->kind, "cuda") == 0 ? cuda_gemv_pipe((const cuda_backend_t *)be) : 0;
}

extern "C" int cuda_gemv_norm_fusable(const cuda_backend_t *cb, const void *y, const void *residual, const void *o,
                                      const void *norm_w, int64_t N, int64_t M, int warps_per_block) {
  const int64_t P = gemv_warps(N, cuda_gemv_rows(cb) == 2 ? GEMV_ROWS_TWO : GEMV_ROWS_ONE);
  return (cb->fusions & CUDA_FUSE_NORM) && cb->norm_arrivals && M == 1 && P % warps_per_block == 0 &&
         cuda_rms_norm_vec_ok(cb->base.act_dtype, N, y, residual, o, norm_w);
}

extern "C" int cuda_gemv_rope_fusable(const cuda_backend_t *cb, int64_t N, int64_t M, int H, int D) {
  const es_backend_t *be = &cb->base;
  return (cb->fusions & CUDA_FUSE_ROPE) && M == 1 && !be->opts.kv_fp8 && cb->kv && be->in_step &&
         be->batch.n_tokens == 1 && H == be->kv_heads && D == be->kv_head_dim && D % 2 == 0 && N == 3 * (int64_t)H * D;
}

extern "C" int cuda_gemv_norm_ok(const cuda_backend_t *cb, const void *y, const void *residual, const void *o,
                                 const void *x, int64_t ldx, const void *w, const void *norm_w, int64_t N, int64_t K,
                                 int64_t M) {
  return cuda_gemv_norm_fusable(cb, y, residual, o, norm_w, N, M, GEMV_WARPS) && cb->base.act_dtype == ES_DT_BF16 &&
         cuda_gemv_ok(cb, ES_DT_BF16, x, ldx, w, N, K, M);
}

extern "C" int cuda_gemv_norm(cuda_backend_t *cb, void *y, void *residual, void *o, const void *x, int64_t ldx,
                              const void *w, const void *norm_w, int64_t N, int64_t K, int64_t M, float eps,
                              es_error_t *err) {
  if (!cuda_gemv_norm_ok(cb, y, residual, o, x, ldx, w, norm_w, N, K, M))
    return es_fail(err, ES_EINTERNAL, "%s: GEMV with the RMSNorm called outside its conditions (M %lld, N %lld)",
                   cb->base.name, (long long)M, (long long)N);
  const gemv_norm_t nrm = {y, residual, norm_w, eps, cb->norm_arrivals};
  if (cuda_gemv_rows(cb) == 2)
    launch<bf16, 1, GEMV_ROWS_TWO, true>(cb, o, N, x, ldx, w, N, K, NULL, 1, ES_ACT_NONE, 0, nrm);
  else
    launch<bf16, 1, GEMV_ROWS_ONE, true>(cb, o, N, x, ldx, w, N, K, NULL, 1, ES_ACT_NONE, 0, nrm);
  ES_CUDA_LAUNCHED(err);
  cb->gemv_calls++;
  cb->norm_calls++;
  return ES_OK;
}

extern "C" int cuda_gemv_rope_ok(const cuda_backend_t *cb, const void *x, int64_t ldx, const void *w, const void *bias,
                                 int64_t N, int64_t K, int64_t M, int H, int D) {
  (void)bias;
  return cuda_gemv_rope_fusable(cb, N, M, H, D) && cb->base.act_dtype == ES_DT_BF16 &&
         cuda_gemv_ok(cb, ES_DT_BF16, x, ldx, w, N, K, M);
}

extern "C" int cuda_gemv_rope(cuda_backend_t *cb, int layer, void *qkv, const void *x, int64_t ldx, const void *w,
                              const void *bias, int64_t N, int64_t K, int64_t M, int H, int D, float theta,
                              es_error_t *err) {
  if (!cuda_gemv_rope_ok(cb, x, ldx, w, bias, N, K, M, H, D))
    return es_fail(err, ES_EINTERNAL, "%s: q|k|v GEMV with RoPE called outside its conditions (M %lld, N %lld)",
                   cb->base.name, (long long)M, (long long)N);
  const gemv_rope_t rope = {cb->d_positions, cb->d_slot, cb->kv, layer, cb->base.kv_blocks, H, D, theta};
  launch<bf16, 1, GEMV_ROWS_ROPE>(cb, qkv, N, x, ldx, w, N, K, bias, 1, ES_ACT_NONE, 0, gemv_norm_t{}, rope);
  ES_CUDA_LAUNCHED(err);
  cb->gemv_calls++;
  cb->rope_calls++;
  return ES_OK;
}

extern "C" int cuda_backend_set_gemv_rows(es_backend_t *be, int rows, es_error_t *err) {
  cuda_backend_t *cb = cuda_hook_backend(be, "GEMV rows per warp", err);
  if (!cb) return ES_EINVAL;
  if (rows != 1 && rows != 2) return es_fail(err, ES_EINVAL, "GEMV weight rows per warp: %d (1 or 2)", rows);
  int rc = cuda_hook_change(cb, "GEMV rows per warp", cuda_gemv_rows(cb) != rows, err);
  if (rc) return rc;
  cb->gemv_rows = rows;
  return ES_OK;
}

extern "C" int cuda_backend_gemv_rows(const es_backend_t *be) {
  return strcmp(be->ops->kind, "cuda") == 0 ? cuda_gemv_rows((const cuda_backend_t *)be) : 0;
}

extern "C" int cuda_backend_set_gemv(es_backend_t *be, int mode, es_error_t *err) {
  cuda_backend_t *cb = cuda_hook_backend(be, "GEMV", err);
  if (!cb) return ES_EINVAL;
  if (mode < 0 || mode > 2) return es_fail(err, ES_EINVAL, "GEMV mode %d (0 off, 1 where faster, 2 always)", mode);
  int rc = cuda_hook_change(cb, "GEMV", cb->gemv_mode != mode, err);
  if (rc) return rc;
  cb->gemv_mode = mode;
  return ES_OK;
}
