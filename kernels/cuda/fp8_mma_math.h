/* fp8_mma_math: the index arithmetic and the activation scaling of the tensor-core fp8 GEMV (cuda_fp8_mma.cu),
 * written once for the host and the device so that CI emulates the kernel's warps on the CPU
 * (tests/kernels/test_fp8_mma_emu.c) with the formulas the kernel uses.
 *
 * The kernel computes y[m, n] = Σ_k x[m, k] · w[n, k] for M <= 64 with mma.sync m16n8k16 (f16 inputs, f32
 * accumulation): A = 16 weight rows × 16 k (fp8 codes widened to f16, exact), B = x transposed (16 k × 8 rows of
 * x — n-tile nt holds rows 8nt .. 8nt + 7 —, f16 after a power-of-two scaling), C = 16 weight rows × 8 rows of x. A dot
 * product does not care in which order its k are paired, so the k of each mma step are a permutation chosen for the
 * loads: per "super step" of FP8M_KSTEP = 64 columns, lane 4g + t loads 16 contiguous codes of weight rows g and g + 8
 * (columns 16t .. 16t + 15) and 16 contiguous activations of x row g (the same columns); mma step s (0..3) takes from
 * each lane the 4 columns 16t + 4s .. + 3. In the fragment tables (PTX ISA, m16n8k16, the same layout for f16 and bf16)
 * lane 4g + t holds A (row g or g + 8, logical k 2t, 2t + 1, 2t + 8, 2t + 9) and B (logical k 2t, 2t + 1, 2t + 8, 2t +
 * 9, column g): logical k 2t + 8h + e is physical column 16t + 4s + 2h + e (fp8m_col), for A and B alike.
 *
 * Activation scaling: x is bf16 and f16 covers only ±65504, so each warp scales its rows of x by 2^e,
 * e from the largest |x| of the row over the warp's columns (fp8m_x_scale_exp: amax · 2^e in [2^14, 2^15)), and
 * scales the row's partial sums back by 2^−e before the cross-warp sum. Powers of two: bf16's 8-bit significand
 * fits f16's 11 bits, so x · 2^e is exact in f16 down to 2^−28 of the row's largest value (f16 subnormals below).
 * Per row of x, so a row's arithmetic never depends on the other rows (batch invariance for M <= 8).
 *
 * Compiled by nvcc every function is __host__ __device__; compiled as C11 it is plain static inline. Pure
 * functions: thread-safe.
 */
#pragma once

#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define FP8M_HD static __host__ __device__ __forceinline__
#else
#define FP8M_HD static inline
#endif

#define FP8M_WARPS 8  /* warps per block: each takes every 8th super step of the block's 16 rows */
#define FP8M_ROWS 16  /* weight rows per block (the mma's M) */
#define FP8M_KSTEP 64 /* columns per super step: 4 mma k-steps */
#define FP8M_MAX_M 8  /* rows of x per n-tile (the mma's N) */
#define FP8M_MAX_NT 8 /* n-tiles: up to 64 rows of x (the decode batch of a step) */

/* The physical column (0 .. 63, within the super step) of logical k = 2t + 8h + e of mma step s for lane
 * threadID_in_group t: A register 2h + (row half), B register h, element e (0 = low half). */
FP8M_HD int fp8m_col(int s, int t, int h, int e) {
  return 16 * t + 4 * s + 2 * h + e;
}

/* n-tiles the kernel is instantiated with for M rows of x: 1, 2, 4 or 8 (0 past FP8M_MAX_NT tiles). */
FP8M_HD int fp8m_n_tiles(int64_t M) {
  return M <= 8 ? 1 : M <= 16 ? 2 : M <= 32 ? 4 : M <= 64 ? 8 : 0;
}

/* Rows per launch when M >= 2 rows are run in launches of at most `most` rows (a multiple of FP8M_MAX_M): the
 * fewest launches; each a whole number of n-tiles and the last one the rest, unless that rest would be a single row
 * (under the kernel's CUDA_FP8_MMA_MIN_M): then as even as the rows allow. Every launch but the last takes this
 * many; 1 <= result <= most. */
FP8M_HD int64_t fp8m_launch_rows(int64_t M, int64_t most) {
  if (M < 1) return 1;
  const int64_t n = (M + most - 1) / most, per = (M + n - 1) / n;
  int64_t r = (per + FP8M_MAX_M - 1) / FP8M_MAX_M * FP8M_MAX_M;
  if (r > most) r = most;
  return M - (n - 1) * r < 2 ? per : r;
}

/* The exponent e of the power of two that scales a row of x whose largest magnitude is amax: amax · 2^e in
 * [2^14, 2^15) for normal amax; 0 for amax = 0 or subnormal (the row is ~0 anyway); finite for inf / NaN (which
 * then propagate as they would unscaled). Clamped to [−126, 126] so that 2^e and 2^−e are normal floats. */
FP8M_HD int fp8m_x_scale_exp(float amax) {
  uint32_t u;
  memcpy(&u, &amax, sizeof u);
  const int E = (int)((u >> 23) & 0xffu);
  if (E == 0) return 0;
  int e = 141 - E; /* amax in [2^(E−127), 2^(E−126)) */
  return e < -126 ? -126 : e > 126 ? 126 : e;
}

/* The largest magnitude of bf16 values, kept as 16-bit patterns: |x| orders like (bits & 0x7fff) as unsigned
 * integers (NaN above inf above every finite value). acc and word each hold two bf16; returns the per-half
 * maximum of acc and |word| (the kernel's pre-pass: one SIMD max per two values on the device). */
FP8M_HD uint32_t fp8m_bf16x2_absmax(uint32_t acc, uint32_t word) {
  const uint32_t a = word & 0x7fff7fffu;
#ifdef __CUDA_ARCH__
  return __vmaxu2(acc, a);
#else
  const uint32_t lo = (acc & 0xffffu) > (a & 0xffffu) ? acc & 0xffffu : a & 0xffffu;
  const uint32_t hi = (acc >> 16) > (a >> 16) ? acc >> 16 : a >> 16;
  return lo | hi << 16;
#endif
}

/* The float value of the larger half of fp8m_bf16x2_absmax's result. */
FP8M_HD float fp8m_bf16x2_amax_value(uint32_t acc) {
  const uint32_t lo = acc & 0xffffu, hi = acc >> 16, b = (lo > hi ? lo : hi) << 16;
  float f;
  memcpy(&f, &b, sizeof f);
  return f;
}

/* 2^e for e in [−126, 127], exactly. */
FP8M_HD float fp8m_pow2(int e) {
  const uint32_t u = (uint32_t)(e + 127) << 23;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* The output (weight row r of the block's 16, row m of x within the n-tile) that thread `tid` (0 .. 127) of the
 * epilogue sums, and where each warp's partial of it is: lane src_lane, accumulator i (C fragment: c0, c1 = row
 * g, columns 2t, 2t + 1; c2, c3 = row g + 8). */
FP8M_HD void fp8m_out(int tid, int *r, int *m, int *src_lane, int *i) {
  *r = tid / FP8M_MAX_M;
  *m = tid % FP8M_MAX_M;
  *src_lane = 4 * (*r % 8) + *m / 2;
  *i = 2 * (*r / 8) + *m % 2;
}
