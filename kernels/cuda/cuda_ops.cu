// cuda_ops: row-wise and data-movement ops of the CUDA backend. See cuda_ops.h.
//
// Each kernel computes in fp32 and rounds where transformers' bf16 eager forward rounds (SPEC §7; rnd<T> is
// the identity in fp32 mode):
//   LayerNorm      fp32 statistics, one rounding of the output            (torch's layer_norm on bf16)
//   RMSNorm        residual = round(residual + add); y = round(w · round(r · rsqrt(mean r² + eps)))  (SPEC §4)
//   RoPE           cos/sin computed in fp32 then rounded; round(round(q·cos) + round(rot(q)·sin))    (SPEC §4)
//   SiLU·mul       round(round(silu(g)) · u)                                (act_fn(gate) * up)
//   GELU           round(gelu(x)) on the rounded linear output
//   avg-pool       round((a + b) / 2)
//   add_rows       round(x + row)
// Row statistics are fixed-order block reductions (cuda_common.cuh): a row's bits do not depend on M.
//
// Napkin math: all memory-bound. Decode at batch 1 touches a few 4096-wide rows per op (8 KB: nothing to
// stream, so what counts is the number of dependent trips to memory — one per op is ~1–2 µs; the first versions
// of RMSNorm and RoPE made one per element and took 17 and 24 µs per call, 1.8 ms of a 6 ms step, measured with
// `earshot bench model --profile` on an H200); the encoder's 1500 × 1280 rows are 3.8 MB bf16 per pass, ≈ 2–3 µs
// each at 3 TB/s.
#include <math.h>

#include "attn_math.h"
#include "cuda_common.cuh"
#include "cuda_ops.h"
#include "fp8_math.h"
#include "rms_norm_row.cuh"
#include "rope_math.cuh"

#define ROW_THREADS 256

static inline bool aligned16(const void *p) {
  return ((uintptr_t)p & 15u) == 0;
}

// ---- LayerNorm: y = (x − μ) / √(σ² + eps) · γ + β, biased σ² -------------------------------------------------

// One block per row. x, y (M, C) T (y may alias x); gamma, beta (C) T.
template <typename T>
__global__ void layer_norm_kernel(T *y, const T *x, const T *gamma, const T *beta, int64_t C, float eps) {
  __shared__ float red[32];
  const T *xr = x + (int64_t)blockIdx.x * C;
  T *yr = y + (int64_t)blockIdx.x * C;
  float s = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += to_f(xr[c]);
  float mean = block_reduce(s, red, 0) / (float)C;
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float d = to_f(xr[c]) - mean;
    ss += d * d;
  }
  float rstd = rsqrtf(block_reduce(ss, red, 0) / (float)C + eps);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
    yr[c] = from_f<T>((to_f(xr[c]) - mean) * rstd * to_f(gamma[c]) + to_f(beta[c]));
}

template <typename T>
static int layer_norm(cuda_backend_t *cb, void *y, const void *x, const void *g, const void *b, int64_t M, int64_t C,
                      float eps, es_error_t *err) {
  layer_norm_kernel<T><<<(unsigned)M, ROW_THREADS, 0, cb->stream>>>((T *)y, (const T *)x, (const T *)g, (const T *)b,
                                                                    C, eps);
  ES_CUDA_LAUNCHED(err);
  return ES_OK;
}

extern "C" int cuda_op_layer_norm(es_backend_t *be, void *y, const void *x, const es_weight_t *gamma,
                                  const es_weight_t *beta, int64_t M, int64_t C, float eps, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  if (M > 0x7fffffff) return es_fail(err, ES_EUNSUPPORTED, "layer_norm: %lld rows", (long long)M);
  return CUDA_DISPATCH(cb, layer_norm, cb, y, x, gamma->data, beta->data, M, C, eps, err);
}

// ---- Qwen2 RMSNorm with the residual add -------------------------------------------------------------------

// One block per row. residual (M, C) T, updated in place; add (M, C) T or NULL; y (M, C) T; w (C) T.
template <typename T>
__global__ void rms_norm_kernel(T *y, T *residual, const T *add, const T *w, int64_t C, float eps) {
  __shared__ float red[32];
  T *r = residual + (int64_t)blockIdx.x * C;
  const T *a = add ? add + (int64_t)blockIdx.x * C : nullptr;
  T *yr = y + (int64_t)blockIdx.x * C;
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float h = to_f(r[c]);
    if (a) {
      h = rnd<T>(h + to_f(a[c])); // transformers: hidden = residual + hidden, in the model dtype
      r[c] = from_f<T>(h);
    }
    ss += h * h;
  }
  float inv = 1.0f / sqrtf(block_reduce(ss, red, 0) / (float)C + eps); // as the CPU reference
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x)               // each thread rereads its own r[c]
    yr[c] = from_f<T>(to_f(w[c]) * rnd<T>(to_f(r[c]) * inv));
}

// The same arithmetic in one pass for rows of at most 1024 16-byte vectors (C = 4096 in bf16: 512 threads): thread
// t holds vector t of the row in registers from its three loads (residual, add, weight, issued together) to its two
// stores. Decode runs it at M = 1, where the loop above waits on memory once per element (measured 16.8 µs per call
// on an H200, 1.1 ms of a 6 ms decode step). Its per-vector arithmetic and reduction order are rms_norm_row.cuh's,
// which the GEMVs' fused tail (CUDA_FUSE_NORM) shares: the same bits.
template <typename T>
__global__ void __launch_bounds__(1024) rms_norm_vec_kernel(T *y, T *residual, const T *add, const T *w, int64_t C,
                                                            float eps) {
  pdl_begin(); // first: launched with cuda_launch
  constexpr int N = vec16<T>::N;
  __shared__ float red[32];
  const int64_t off = (int64_t)blockIdx.x * C + (int64_t)threadIdx.x * N;
  const bool on = (int64_t)threadIdx.x * N < C;
  float h[N], a[N], wv[N];
  float ss = 0.0f;
  if (on) {
    load16_f(residual + off, h);
    if (add) load16_f(add + off, a);
    load16_f(w + (int64_t)threadIdx.x * N, wv);
    if (add) {
      rms_add_vec<T>(h, a);
      store16_f(residual + off, h);
    }
    ss = rms_ss_vec<T>(h);
  }
  const float inv = rms_inv(block_reduce(ss, red, 0), C, eps);
  if (on) {
    float o[N];
    rms_out_vec<T>(o, wv, h, inv);
    store16_f(y + off, o);
  }
}

extern "C" int cuda_rms_norm_vec_ok(es_dtype_t dt, int64_t C, const void *y, const void *residual, const void *add,
                                    const void *w) {
  const int64_t N = 16 / (int64_t)es_dtype_size(dt);
  return C % N == 0 && C / N <= 1024 && aligned16(y) && aligned16(residual) && (!add || aligned16(add)) && aligned16(w);
}

template <typename T>
static int rms_norm(cuda_backend_t *cb, void *y, void *res, const void *add, const void *w, int64_t M, int64_t C,
                    float eps, es_error_t *err) {
  constexpr int N = vec16<T>::N;
  if (cuda_rms_norm_vec_ok(cb->base.act_dtype, C, y, res, add, w)) {
    const unsigned threads = (unsigned)((C / N + 31) / 32 * 32);
    cuda_launch(cb, rms_norm_vec_kernel<T>, dim3((unsigned)M), dim3(threads), 0, (T *)y, (T *)res, (const T *)add,
                (const T *)w, C, eps);
    ES_CUDA_LAUNCHED(err);
    return ES_OK;
  }
  rms_norm_kernel<T><<<(unsigned)M, ROW_THREADS, 0, cb->stream>>>((T *)y, (T *)res, (const T *)add, (const T *)w, C,
                                                                  eps);
  ES_CUDA_LAUNCHED(err);
  return ES_OK;
}

extern "C" int cuda_op_rms_norm(es_backend_t *be, void *y, void *residual, const void *add, const es_weight_t *weight,
                                int64_t M, int64_t C, float eps, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  if (M > 0x7fffffff) return es_fail(err, ES_EUNSUPPORTED, "rms_norm: %lld rows", (long long)M);
  return CUDA_DISPATCH(cb, rms_norm, cb, y, residual, add, weight->data, M, C, eps, err);
}

// ---- elementwise ----------------------------------------------------------------------------------------

// x (M, C) T += rows (T_rows, C) T broadcast over blocks of T_rows rows.
template <typename T> __global__ void add_rows_kernel(T *x, const T *rows, int64_t M, int64_t Tr, int64_t C) {
  GRID_STRIDE(i, M * C) {
    int64_t m = i / C, c = i % C;
    x[i] = from_f<T>(to_f(x[i]) + to_f(rows[(m % Tr) * C + c]));
  }
}

template <typename T>
static int add_rows(cuda_backend_t *cb, void *x, const void *rows, int64_t M, int64_t Tr, int64_t C, es_error_t *err) {
  add_rows_kernel<T><<<cuda_grid_1d(M * C), 256, 0, cb->stream>>>((T *)x, (const T *)rows, M, Tr, C);
  ES_CUDA_LAUNCHED(err);
  return ES_OK;
}

extern "C" int cuda_op_add_rows(es_backend_t *be, void *x, const void *rows, int64_t M, int64_t T, int64_t C,
                                es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  return CUDA_DISPATCH(cb, add_rows, cb, x, rows, M, T, C, err);
}

// y (M, N) T = round(round(silu(gate)) · up); gate, up rows of stride ld. silu(g) = g / (1 + e^−g) as torch.
template <typename T> __global__ void silu_mul_kernel(T *y, const T *gate, const T *up, int64_t ld, int64_t M, int64_t N) {
  GRID_STRIDE(i, M * N) {
    int64_t m = i / N, n = i % N;
    float g = to_f(gate[m * ld + n]);
    y[i] = from_f<T>(silu_mul_value<T>(g, to_f(up[m * ld + n])));
  }
}

// The same with one 16-byte vector per thread (N and ld multiples of the vector, rows aligned): row m, vector j.
template <typename T>
__global__ void silu_mul_vec_kernel(T *y, const T *gate, const T *up, int64_t ld, int64_t M, int64_t N) {
  pdl_begin(); // first: launched with cuda_launch
  constexpr int V = vec16<T>::N;
  const int64_t nv = N / V;
  GRID_STRIDE(i, M * nv) {
    const int64_t m = i / nv, j = (i % nv) * V;
    float g[V], u[V], o[V];
    load16_f(gate + m * ld + j, g);
    load16_f(up + m * ld + j, u);
#pragma unroll
    for (int e = 0; e < V; e++) o[e] = silu_mul_value<T>(g[e], u[e]);
    store16_f(y + m * N + j, o);
  }
}

template <typename T>
static int silu_mul(cuda_backend_t *cb, void *y, const void *g, const void *u, int64_t ld, int64_t M, int64_t N,
                    es_error_t *err) {
  constexpr int V = vec16<T>::N;
  if (N % V == 0 && ld % V == 0 && aligned16(y) && aligned16(g) && aligned16(u)) {
    cuda_launch(cb, silu_mul_vec_kernel<T>, dim3(cuda_grid_1d(M * N / V)), dim3(256), 0, (T *)y, (const T *)g,
                (const T *)u, ld, M, N);
    ES_CUDA_LAUNCHED(err);
    return ES_OK;
  }
  silu_mul_kernel<T><<<cuda_grid_1d(M * N), 256, 0, cb->stream>>>((T *)y, (const T *)g, (const T *)u, ld, M, N);
  ES_CUDA_LAUNCHED(err);
  return ES_OK;
}

extern "C" int cuda_op_silu_mul(es_backend_t *be, void *y, const void *gate, const void *up, int64_t ld, int64_t M,
                                int64_t N, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  return CUDA_DISPATCH(cb, silu_mul, cb, y, gate, up, ld, M, N, err);
}

// y (B, T/2, C) T = round((x[b, 2t] + x[b, 2t+1]) / 2), x (B, T, C) T (T even: rows 2i, 2i+1 of x for row i).
template <typename T> __global__ void avg_pool2_kernel(T *y, const T *x, int64_t rows, int64_t C) {
  GRID_STRIDE(i, rows * C) {
    int64_t r = i / C, c = i % C;
    y[i] = from_f<T>((to_f(x[2 * r * C + c]) + to_f(x[(2 * r + 1) * C + c])) / 2.0f);
  }
}

template <typename T>
static int avg_pool2(cuda_backend_t *cb, void *y, const void *x, int64_t rows, int64_t C, es_error_t *err) {
  avg_pool2_kernel<T><<<cuda_grid_1d(rows * C), 256, 0, cb->stream>>>((T *)y, (const T *)x, rows, C);
  ES_CUDA_LAUNCHED(err);
  return ES_OK;
}

extern "C" int cuda_op_avg_pool2(es_backend_t *be, void *y, const void *x, int64_t B, int64_t T, int64_t C,
                                 es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  return CUDA_DISPATCH(cb, avg_pool2, cb, y, x, B * (T / 2), C, err);
}

// y (M, N) T, row stride ldy: y = round(gelu(y)), exact erf GELU.
template <typename T> __global__ void gelu_kernel(T *y, int64_t ldy, int64_t M, int64_t N) {
  GRID_STRIDE(i, M * N) {
    T *p = y + (i / N) * ldy + i % N;
    float v = to_f(*p);
    *p = from_f<T>(gelu_erf(v));
  }
}

template <typename T> static int gelu(cuda_backend_t *cb, void *y, int64_t ldy, int64_t M, int64_t N, es_error_t *err) {
  gelu_kernel<T><<<cuda_grid_1d(M * N), 256, 0, cb->stream>>>((T *)y, ldy, M, N);
  ES_CUDA_LAUNCHED(err);
  return ES_OK;
}

extern "C" int cuda_gelu_inplace(cuda_backend_t *cb, void *y, int64_t ldy, int64_t M, int64_t N, es_error_t *err) {
  return CUDA_DISPATCH(cb, gelu, cb, y, ldy, M, N, err);
}

// ---- rows: embed, gather, scatter ----------------------------------------------------------------------------
// Indices are device data the host cannot check without a round trip; the model validates ids before
// writing them. An index outside [0, n_rows) writes NaN rows (gather/embed) or is skipped (scatter), so a
// bad index shows up in the outputs instead of reading or writing outside a buffer.

// y (M, C) T = src[idx[i]] rows (n_rows, C) T.
template <typename T>
__global__ void gather_kernel(T *y, const T *src, const int32_t *idx, int64_t M, int64_t C, int64_t n_rows) {
  GRID_STRIDE(i, M * C) {
    int64_t r = idx[i / C];
    y[i] = (r >= 0 && r < n_rows) ? src[r * C + i % C] : from_f<T>(NAN);
  }
}

// y[idx[i]] (rows of C) = x[i], i < M.
template <typename T> __global__ void scatter_kernel(T *y, const T *x, const int32_t *idx, int64_t M, int64_t C) {
  GRID_STRIDE(i, M * C) {
    int64_t r = idx[i / C];
    if (r >= 0) y[r * C + i % C] = x[i];
  }
}

template <typename T>
static int gather(cuda_backend_t *cb, void *y, const void *x, const int32_t *idx, int64_t M, int64_t C, int64_t n_rows,
                  es_error_t *err) {
  gather_kernel<T><<<cuda_grid_1d(M * C), 256, 0, cb->stream>>>((T *)y, (const T *)x, idx, M, C, n_rows);
  ES_CUDA_LAUNCHED(err);
  return ES_OK;
}

template <typename T>
static int scatter(cuda_backend_t *cb, void *y, const void *x, const int32_t *idx, int64_t M, int64_t C,
                   es_error_t *err) {
  scatter_kernel<T><<<cuda_grid_1d(M * C), 256, 0, cb->stream>>>((T *)y, (const T *)x, idx, M, C);
  ES_CUDA_LAUNCHED(err);
  return ES_OK;
}

extern "C" int cuda_op_embed(es_backend_t *be, void *y, const es_weight_t *table, const int32_t *ids, int64_t M,
                             es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  return CUDA_DISPATCH(cb, gather, cb, y, table->data, ids, M, table->n1, table->n0, err);
}

extern "C" int cuda_op_gather_rows(es_backend_t *be, void *y, const void *x, const int32_t *idx, int64_t M, int64_t C,
                                   es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  return CUDA_DISPATCH(cb, gather, cb, y, x, idx, M, C, (int64_t)INT32_MAX + 1, err);
}

extern "C" int cuda_op_scatter_rows(es_backend_t *be, void *y, const void *x, const int32_t *idx, int64_t M,
                                    int64_t C, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  return CUDA_DISPATCH(cb, scatter, cb, y, x, idx, M, C, err);
}

// ---- RoPE (half-split, SPEC §4) and the KV store ------------------------------------------------------------
// The arithmetic (cos/sin, the rotation and its rounding points) is rope_math.cuh's, shared with the q|k|v GEMVs'
// fused epilogue (CUDA_FUSE_ROPE).

// Block (token i, group of ROPE_HEADS heads); thread (f, y) rotates pair (f, f + D/2) of head
// blockIdx.y · ROPE_HEADS + y, of q and of k, and stores k and v at the token's cache slot. q (n_tokens, ldq),
// k (n_tokens, ldk) T rotated in place; v (n_tokens, ldv) T; kv pool (L, n_blocks, 2, H, 16, D) T; positions,
// slot [n_tokens] int32. Dynamic shared: D floats (the token's cos and sin, computed once per block by the
// threads of y = 0). Every thread issues its six loads before any store: one round trip to memory per step at
// decode (a block per token walking the heads in turn waited on memory once per pair: 24 µs per call on an H200).
// With an fp8 KV cache (FP8: kv holds e4m3 codes, kv_scale the row scales) the K and V rows are stored as
// es_fp8_quantize_row stores them (fp8_math.h: the same integer encode as the CPU backend): the row's amax over
// its D/2 threads through shared memory (every thread of row y reads the D/2 partial maxima: a max is exact in any
// order), then each thread encodes its two values of K and of V; thread 0 of the row writes the two scales.
// Dynamic shared memory then also holds 2 · ROPE_HEADS · D/2 floats of partial maxima.
#define ROPE_HEADS 4
template <typename T, bool FP8>
__global__ void rope_kv_kernel(T *q, int64_t ldq, T *k, int64_t ldk, const T *v, int64_t ldv, void *kv, float *kv_scale,
                               int layer, int n_blocks, int H, int D, float theta, const int32_t *positions,
                               const int32_t *slot) {
  pdl_begin();                  // first: launched with cuda_launch
  extern __shared__ float cs[]; // [half] cos, then [half] sin (then, FP8: the K and V partial maxima of each row)
  const int half = D / 2, f = threadIdx.x, h = blockIdx.y * ROPE_HEADS + threadIdx.y;
  const int64_t i = blockIdx.x;
  const bool on = h < H;
  float qa = 0, qb = 0, ka = 0, kb = 0;
  T va = from_f<T>(0.0f), vb = va;
  T *qh = q + i * ldq + (int64_t)h * D, *kh = k + i * ldk + (int64_t)h * D;
  const T *vh = v + i * ldv + (int64_t)h * D;
  if (on) { // the loads first: nothing below waits on a store
    qa = to_f(qh[f]), qb = to_f(qh[f + half]);
    ka = to_f(kh[f]), kb = to_f(kh[f + half]);
    va = vh[f], vb = vh[f + half];
  }
  if (threadIdx.y == 0) rope_cos_sin<T>(positions[i], f, D, theta, &cs[f], &cs[half + f]); // rope_math.cuh
  __syncthreads();
  if (!FP8 && !on) return; // FP8: every thread reaches the barrier of the maxima below
  const float c = cs[f], sn = cs[half + f];
  // out[f] = a·cos − b·sin; out[f + half] = b·cos + a·sin, each product and the sum rounded (rope_math.cuh)
  if (on) rope_rotate<T>(qa, qb, c, sn, &qh[f], &qh[f + half]);
  T k0, k1;
  rope_rotate<T>(ka, kb, c, sn, &k0, &k1);
  if (on) {
    kh[f] = k0;
    kh[f + half] = k1;
  }
  // the same CPU-tested addressing the attention kernels read with (attn_math.h, test_attn_math)
  const int32_t s = slot[i], blk = s / ES_KV_BLOCK, off = s % ES_KV_BLOCK;
  if constexpr (FP8) {
    float *kmax = cs + D + threadIdx.y * half, *vmax = cs + D + (ROPE_HEADS + threadIdx.y) * half;
    const float k0f = to_f(k0), k1f = to_f(k1), v0f = to_f(va), v1f = to_f(vb);
    kmax[f] = fmaxf(fabsf(k0f), fabsf(k1f)); // fmaxf drops a NaN: the NaN element still encodes as NaN
    vmax[f] = fmaxf(fabsf(v0f), fabsf(v1f));
    __syncthreads();
    if (!on) return;
    float ka_max = 0.0f, va_max = 0.0f;
    for (int x = 0; x < half; x++) {
      ka_max = fmaxf(ka_max, kmax[x]);
      va_max = fmaxf(va_max, vmax[x]);
    }
    const float ks = es_fp8_scale(ka_max), vs = es_fp8_scale(va_max);
    uint8_t *codes = (uint8_t *)kv;
    uint8_t *kc = codes + attn_kv_offset(layer, n_blocks, blk, 0, H, h, D, off);
    uint8_t *vc = codes + attn_kv_offset(layer, n_blocks, blk, 1, H, h, D, off);
    kc[f] = es_fp8_encode(__fdiv_rn(k0f, ks));
    kc[f + half] = es_fp8_encode(__fdiv_rn(k1f, ks));
    vc[f] = es_fp8_encode(__fdiv_rn(v0f, vs));
    vc[f + half] = es_fp8_encode(__fdiv_rn(v1f, vs));
    if (f == 0) {
      kv_scale[attn_kv_offset(layer, n_blocks, blk, 0, H, h, 1, off)] = ks;
      kv_scale[attn_kv_offset(layer, n_blocks, blk, 1, H, h, 1, off)] = vs;
    }
  } else {
    T *kc = (T *)kv + attn_kv_offset(layer, n_blocks, blk, 0, H, h, D, off); // K of (blk, h), row off
    T *vc = (T *)kv + attn_kv_offset(layer, n_blocks, blk, 1, H, h, D, off); // V of (blk, h), row off
    kc[f] = k0;
    kc[f + half] = k1;
    vc[f] = va;
    vc[f + half] = vb;
  }
}

template <typename T>
static int rope_kv(cuda_backend_t *cb, int layer, void *q, int64_t ldq, void *k, int64_t ldk, const void *v,
                   int64_t ldv, int H, int D, float theta, es_error_t *err) {
  const es_backend_t *be = &cb->base;
  const dim3 grid((unsigned)be->batch.n_tokens, (unsigned)((H + ROPE_HEADS - 1) / ROPE_HEADS)),
      block((unsigned)(D / 2), ROPE_HEADS);
  if (be->opts.kv_fp8)
    cuda_launch(cb, rope_kv_kernel<T, true>, grid, block, (size_t)D * (1 + ROPE_HEADS) * sizeof(float), (T *)q, ldq,
                (T *)k, ldk, (const T *)v, ldv, cb->kv, cb->kv_scale, layer, be->kv_blocks, H, D, theta,
                cb->d_positions, cb->d_slot);
  else
    cuda_launch(cb, rope_kv_kernel<T, false>, grid, block, (size_t)D * sizeof(float), (T *)q, ldq, (T *)k, ldk,
                (const T *)v, ldv, cb->kv, (float *)NULL, layer, be->kv_blocks, H, D, theta, cb->d_positions,
                cb->d_slot);
  ES_CUDA_LAUNCHED(err);
  return ES_OK;
}

extern "C" int cuda_op_rope_kv_store(es_backend_t *be, int layer, void *q, int64_t ldq, void *k, int64_t ldk,
                                     const void *v, int64_t ldv, int H, int D, float theta, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  if (!(theta > 1.0f)) return es_fail(err, ES_EINVAL, "rope_kv_store: theta %g must be > 1", (double)theta);
  if (D / 2 * ROPE_HEADS > 1024) /* a block is D/2 x ROPE_HEADS threads */
    return es_fail(err, ES_EUNSUPPORTED, "rope_kv_store: head dim %d too large", D);
  return CUDA_DISPATCH(cb, rope_kv, cb, layer, q, ldq, k, ldk, v, ldv, H, D, theta, err);
}
