/* fp8_math: the FP8 e4m3 (e4m3fn) weight format — element encode/decode, the per-output-channel scale, and the
 * two-at-a-time decode the CUDA kernels use — in one header for C (CPU backend, upload, tests) and CUDA
 * (__host__ __device__), so every piece of the arithmetic is tested on the CPU (tests/kernels/test_fp8_math.c).
 *
 * Format (OCP FP8 "E4M3", the e4m3fn of torch / __nv_fp8_e4m3): 1 sign, 4 exponent (bias 7), 3 mantissa bits.
 * No infinities; NaN is S.1111.111 (0x7f / 0xff); the largest finite value is ±448 (S.1111.110); subnormals
 * are m·2⁻⁹ for exponent field 0. Every e4m3 value is exact in fp32, bf16 and fp16.
 *
 * Quantisation of a weight W[N, K] (what es_backend_upload_weight_fp8 does):
 *   scale[n] = amax_k |W[n, k]| / 448      (fp32; a row of zeros gets scale 1)
 *   q[n, k]  = e4m3(W[n, k] / scale[n])    round to nearest even, saturated to ±448 (the "satfinite" mode of
 *                                          PTX cvt.rn.satfinite.e4m3x2; torch's .to(float8_e4m3fn) agrees on
 *                                          everything below 464 and turns larger values into NaN)
 *   W'[n, k] = decode(q[n, k]) · scale[n]  (what every backend multiplies by)
 * Per output channel, because a linear's output element n then needs one multiply by scale[n] after its
 * dot product (the epilogue), and a row with small weights keeps its own range.
 * ref: OCP 8-bit Floating Point Specification (OFP8) rev 1.0; vLLM's fp8 per-channel weight quantisation.
 *
 * Thread safety: pure functions.
 */
#pragma once

#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define ES_FP8_FN __host__ __device__ __forceinline__
#else
#define ES_FP8_FN static inline
#endif

#define ES_FP8_MAX 448.0f
#define ES_FP8_NAN 0x7fu /* | 0x80 for the negative one */

ES_FP8_FN uint32_t es_fp8_f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

ES_FP8_FN float es_fp8_bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* The value of an e4m3 code, exactly (NaN for 0x7f / 0xff). */
ES_FP8_FN float es_fp8_decode(uint8_t b) {
  uint32_t s = (uint32_t)(b & 0x80u) << 24, e = (b >> 3) & 0xfu, m = b & 7u;
  if ((b & 0x7fu) == 0x7fu) return es_fp8_bits_f32(s | 0x7fc00000u);
  if (e == 0) return es_fp8_bits_f32(s | es_fp8_f32_bits((float)m * 0.001953125f)); /* m·2⁻⁹, exact */
  return es_fp8_bits_f32(s | ((e + 120u) << 23) | (m << 20)); /* exponent bias 7 -> 127 */
}

/* x rounded to the nearest e4m3 value (ties to even), saturated to ±448 (±inf too); NaN -> 0x7f / 0xff.
 * Integer arithmetic only, so it gives the same bits on the host and the device whatever the FP modes. */
ES_FP8_FN uint8_t es_fp8_encode(float x) {
  uint32_t u = es_fp8_f32_bits(x), s = (u >> 24) & 0x80u, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint8_t)(s | ES_FP8_NAN);
  if (a >= 0x43e00000u) return (uint8_t)(s | 0x7eu); /* >= 448: saturate */
  if (a >= 0x3c800000u) {                              /* >= 2⁻⁶: normal; round the mantissa to 3 bits */
    uint32_t r = a + 0x7ffffu + ((a >> 20) & 1u);      /* a carry moves into the exponent, as it should */
    return (uint8_t)(s | ((r >> 20) - (120u << 3)));
  }
  /* subnormal: q = round(|x| · 2⁹) in 0..8 (8 is 2⁻⁶, the smallest normal code) */
  uint32_t exp = a >> 23;
  if (exp == 0) return (uint8_t)s; /* an fp32 subnormal is far below 2⁻¹⁰ */
  uint32_t mant = (a & 0x7fffffu) | 0x800000u, shift = 141u - exp; /* |x|·2⁹ = mant · 2^(exp − 141) */
  if (shift > 24u) return (uint8_t)s;                              /* < 2⁻¹⁰: rounds to 0 */
  uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u))) q++;
  return (uint8_t)(s | q);
}

/* The per-channel scale for a row whose largest |w| is amax (amax >= 0, finite): amax / 448, or 1 for a row
 * of zeros (any scale represents it; 1 keeps W / scale well defined). */
ES_FP8_FN float es_fp8_scale(float amax) {
  return amax > 0.0f ? amax / ES_FP8_MAX : 1.0f;
}

/* The fp8 KV cache's form of one stored row x[0..D) (one token's K or V of one head; backend.h, "The fp8 KV
 * cache"): codes[d] = e4m3(x[d] / scale) with scale = es_fp8_scale(amax|x|); returns scale. The row is read back
 * as decode(codes[d]) · scale. Per row rather than per channel: a key's largest element sets its own range.
 * A NaN element gives a NaN code; an infinite one an infinite scale (garbage in, garbage out: NaN on the CPU and
 * on sm_89+, finite values on sm_80, whose software decode reads the NaN codes as ±480). */
ES_FP8_FN float es_fp8_quantize_row(const float *x, int D, uint8_t *codes) {
  float amax = 0.0f;
  for (int d = 0; d < D; d++) {
    const float a = x[d] < 0.0f ? -x[d] : x[d];
    if (a > amax) amax = a;
  }
  const float scale = es_fp8_scale(amax);
  for (int d = 0; d < D; d++) codes[d] = es_fp8_encode(x[d] / scale);
  return scale;
}

/* Two codes at once as fp16, for kernels without FP8 hardware (sm_80) — the bit trick of FasterTransformer's
 * and Marlin's fp8 dequantisation, written here from the formats:
 *   in:  w = b0 | b1 << 16 (two codes in the low byte of each 16-bit half)
 *   out: two fp16 bit patterns (low half from b0) holding decode(b) / 256, exactly.
 * Moving e4m3's E.MMM bits up to fp16's exponent/mantissa position (<< 7) keeps the exponent field, so the
 * value is 2^(e − 15)·(1.m) = decode(b)·2⁻⁸ for normals, and for e = 0 the fp16 subnormal (m << 7)·2⁻²⁴
 * = m·2⁻⁹·2⁻⁸ agrees too; the caller multiplies by 256 (or folds it into the scale: a power of two changes
 * no rounding). NaN codes give ±1.875 (= 480 / 256): the quantiser never writes them for
 * finite weights, and the upload rejects non-finite ones. */
ES_FP8_FN uint32_t es_fp8x2_to_f16x2_bits(uint32_t w) {
  return ((w & 0x007f007fu) << 7) | ((w & 0x00800080u) << 8);
}

/* The 16 codes of one 16-byte load (q[0..3], little-endian words: code i is byte i % 4 of q[i / 4]) as eight
 * fp16x2 bit patterns in code order: h[p] holds codes 2p (low half) and 2p + 1 (high half), each decode / 256.
 * The GEMV kernel (cuda_fp8.cu) takes its 16 weights of a chunk in this order, so the byte order of the
 * unpacking is tested on the CPU with the decode (tests/kernels/test_fp8_math.c). */
ES_FP8_FN void es_fp8x16_to_f16x2_bits(const uint32_t q[4], uint32_t h[8]) {
  for (int j = 0; j < 4; j++) {
    uint32_t w = q[j];
    h[2 * j] = es_fp8x2_to_f16x2_bits((w & 0xffu) | ((w & 0xff00u) << 8));             /* codes 4j, 4j + 1 */
    h[2 * j + 1] = es_fp8x2_to_f16x2_bits(((w >> 16) & 0xffu) | ((w >> 8) & 0xff0000u)); /* 4j + 2, 4j + 3 */
  }
}
