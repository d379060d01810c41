// fp8_cvt: e4m3 codes to fp16 on the device, shared by the fp8 GEMVs (cuda_fp8.cu: CUDA cores; cuda_fp8_mma.cu:
// tensor cores). Include only from .cu files.
#pragma once

#include <cuda_fp16.h>
#include <stdint.h>
#include <string.h>

#include "fp8_math.h"

// fp16x2 bits -> two floats.
__device__ __forceinline__ float2 f16x2_bits_to_f32(uint32_t h) {
  __half2 v;
  memcpy(&v, &h, sizeof v);
  return __half22float2(v);
}

// sm_89 and later convert two e4m3 codes to fp16x2 in one instruction (exact values; e4m3 is a subset of fp16):
// the GEMV's 16-byte chunks take 8 conversions instead of ~32 integer operations, which matters because at M = 1
// the kernel issues ~5 instructions per weight — near the SMs' issue rate at the copy bandwidth (measured on an
// H200 before this: 0.54–0.64 of the copy bandwidth where the bf16 GEMV reaches 0.76–0.86).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
#define FP8_HW_CVT 1
// codes (low byte -> low half, high byte -> high half) -> fp16x2 bits of their values
__device__ __forceinline__ uint32_t fp8x2_cvt_f16x2(uint32_t two_codes) {
  uint32_t h;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h) : "h"((unsigned short)two_codes));
  return h;
}
#else
#define FP8_HW_CVT 0
#endif

// The 16 codes of one 16-byte load as eight fp16x2 words in code order: h[2j] = codes 4j (low half), 4j + 1 of
// word j, h[2j + 1] = codes 4j + 2, 4j + 3. sm_89 and later: the exact values (8 conversions); before: the values
// / 256 (es_fp8x16_to_f16x2_bits, the same order, CPU-tested in test_fp8_math), which the caller's scale undoes
// (FP8_HW_CVT says which).
__device__ __forceinline__ void fp8x16_to_f16x2(const uint4 &q, uint32_t *h) {
  const uint32_t qw[4] = {q.x, q.y, q.z, q.w};
#if FP8_HW_CVT
#pragma unroll
  for (int j = 0; j < 4; j++) {
    h[2 * j] = fp8x2_cvt_f16x2(qw[j] & 0xffffu);
    h[2 * j + 1] = fp8x2_cvt_f16x2(qw[j] >> 16);
  }
#else
  es_fp8x16_to_f16x2_bits(qw, h);
#endif
}

// The 8 codes of one 8-byte load (code i is byte i % 4 of word i / 4, little-endian: the order they are stored in
// the fp8 KV cache) as their exact values, in code order. sm_89 and later: 4 hardware conversions; before: the bit
// trick (values / 256) and a multiply by 256, exact.
__device__ __forceinline__ void fp8x8_to_f32(const uint2 &q, float *out) {
  const uint32_t qw[2] = {q.x, q.y};
#pragma unroll
  for (int j = 0; j < 2; j++) {
#if FP8_HW_CVT
    const float2 a = f16x2_bits_to_f32(fp8x2_cvt_f16x2(qw[j] & 0xffffu)); // codes 4j, 4j + 1
    const float2 b = f16x2_bits_to_f32(fp8x2_cvt_f16x2(qw[j] >> 16));     // codes 4j + 2, 4j + 3
    out[4 * j] = a.x, out[4 * j + 1] = a.y, out[4 * j + 2] = b.x, out[4 * j + 3] = b.y;
#else
    const uint32_t w = qw[j];
    const float2 a = f16x2_bits_to_f32(es_fp8x2_to_f16x2_bits((w & 0xffu) | ((w & 0xff00u) << 8)));
    const float2 b = f16x2_bits_to_f32(es_fp8x2_to_f16x2_bits(((w >> 16) & 0xffu) | ((w >> 8) & 0xff0000u)));
    out[4 * j] = a.x * 256.0f, out[4 * j + 1] = a.y * 256.0f, out[4 * j + 2] = b.x * 256.0f,
            out[4 * j + 3] = b.y * 256.0f;
#endif
  }
}
