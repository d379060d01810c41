// gemv_epilogue: what the decode GEMVs (cuda_gemv.cu: bf16 weights; cuda_fp8.cu: fp8 weights) share around their
// main loops — a warp's weight rows and the epilogue of each row mode (gemv_math.h GEMV_ROWS_*) — so both give a
// row the same arithmetic once its sum is known. Include only from .cu files.
#pragma once

#include "cuda_common.cuh"
#include "gemv_math.h"
#include "rope_math.cuh"

// Where a GEMV_ROWS_ROPE warp's pair sits: section (0 q, 1 k, 2 v), head and column f < D / 2.
struct gemv_pair_t {
  int sec, head, f;
};

// The R weight rows of warp n (a warp past P takes warp 0's: it only loads before it leaves) as gemv_math.h's row
// mode ROWS says; for GEMV_ROWS_ROPE (D: the head dim) also the pair's place.
template <int ROWS, int R>
__device__ __forceinline__ gemv_pair_t gemv_rows(int64_t n, int64_t P, int64_t N, int D, int64_t *row) {
  gemv_pair_t pr = {0, 0, 0};
  const int64_t wn = n < P ? n : 0;
  if constexpr (ROWS == GEMV_ROWS_ROPE)
    gemv_rope_rows(wn, N / 3, D, &row[0], &row[R - 1], &pr.sec, &pr.head, &pr.f);
  else
#pragma unroll
    for (int r = 0; r < R; r++) row[r] = gemv_warp_row(wn, r, P, N);
  return pr;
}

// The epilogue of warp n's lane sums acc[r][m] (weight rows row[r], rows m < M of x). value(sum, row) is a row's
// output as the plain GEMM kernel rounds it (cuda_gemm.cu: rnd(sum [· scale] + bias)). Then GEMV_ROWS_GLU writes
// silu(g) · u to y[m, n] (silu_mul_value, as cuda_ops.cu's SiLU·mul), GEMV_ROWS_ROPE rotates the pair and stores it
// and the cache rows (rope_math.cuh; one row of x), and the other modes store every row the warp owns, with GELU
// and the residual accumulate as asked. A fixed xor-shuffle tree sums the lanes; lane m stores row m of x.
template <typename T, int MT, int R, int ROWS, typename Value>
__device__ __forceinline__ void gemv_epilogue(const float (&acc)[R][MT], const Value &value, const int64_t *row,
                                              gemv_pair_t pr, int64_t n, int64_t P, int64_t N, T *y, int64_t ldy, int M,
                                              int act, int accumulate, const gemv_rope_t &rope) {
  const int lane = threadIdx.x & 31;
  if constexpr (ROWS == GEMV_ROWS_GLU) {
#pragma unroll
    for (int m = 0; m < MT; m++) {
      const float g = warp_sum(acc[0][m]), u = warp_sum(acc[1][m]);
      if (m < M && lane == m)
        y[(int64_t)m * ldy + n] = from_f<T>(silu_mul_value<T>(value(g, row[0]), value(u, row[1])));
    }
  } else if constexpr (ROWS == GEMV_ROWS_ROPE) {
    const float a = warp_sum(acc[0][0]), b = warp_sum(acc[R - 1][0]);
    if (lane == 0)
      rope_pair_store<T>(rope, y, row[0], row[R - 1], pr.sec, pr.head, pr.f, value(a, row[0]), value(b, row[R - 1]));
  } else {
#pragma unroll
    for (int r = 0; r < R; r++) {
      if (!gemv_warp_stores(n, r, P, N)) break; // warp-uniform
#pragma unroll
      for (int m = 0; m < MT; m++) {
        float v = warp_sum(acc[r][m]); // every lane gets the same fixed-order sum
        if (m < M && lane == m) {
          v = value(v, row[r]);
          if (act == ES_ACT_GELU) v = rnd<T>(gelu_erf(v));
          T *yp = y + (int64_t)m * ldy + row[r];
          if (accumulate) v = to_f(*yp) + v;
          *yp = from_f<T>(v);
        }
      }
    }
  }
}
