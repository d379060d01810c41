/* test_fp8_math: kernels/fp8_math.h against torch.float8_e4m3fn (the known-answer table
 * tests/kernels/data/fp8_e4m3_kat.txt, written by gen_fp8_kat.py beside it) and against the format's
 * definition: all 256 codes decode as torch decodes them, encode(decode(c)) = c for every finite code,
 * torch's roundings of values, midpoints and their neighbours, saturation where torch gives NaN, the
 * two-at-a-time fp16 decode of the CUDA kernels for all 65536 code pairs, and the scale's promise that a
 * row's largest weight becomes ±448.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fp8_math.h"
#include "test_util.h"

/* fp16 bits -> float, from the IEEE definition (independent of the code under test). */
static float half_value(uint32_t h) {
  int s = (h >> 15) & 1, e = (h >> 10) & 31, m = h & 1023;
  double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
  return (float)(s ? -v : v);
}

static void test_table(void) {
  char path[1200];
  snprintf(path, sizeof path, "%s/tests/kernels/data/fp8_e4m3_kat.txt", ES_SOURCE_DIR);
  FILE *f = fopen(path, "r");
  T_REQUIRE(f != NULL, "cannot open %s", path);
  char line[128];
  int n_dec = 0, n_enc = 0, bad_dec = 0, bad_enc = 0;
  while (fgets(line, sizeof line, f)) {
    unsigned a, b;
    if (sscanf(line, "dec %x %x", &a, &b) == 2) {
      n_dec++;
      float want = es_fp8_bits_f32(b), got = es_fp8_decode((uint8_t)a);
      int ok = isnan(want) ? isnan(got) && signbit(got) == signbit(want) : es_fp8_f32_bits(got) == b;
      if (!ok && bad_dec++ < 5) fprintf(stderr, "decode %02x: got %08x want %08x\n", a, es_fp8_f32_bits(got), b);
    } else if (sscanf(line, "enc %x %x", &a, &b) == 2) {
      n_enc++;
      uint8_t got = es_fp8_encode(es_fp8_bits_f32(a));
      if (got != b && bad_enc++ < 5)
        fprintf(stderr, "encode %.9g (%08x): got %02x want %02x\n", es_fp8_bits_f32(a), a, got, b);
    }
  }
  fclose(f);
  T_CHECK(n_dec == 256, "%d decode lines", n_dec);
  T_CHECK(n_enc > 2000, "%d encode lines", n_enc);
  T_CHECK(bad_dec == 0, "%d of %d codes decode differently from torch", bad_dec, n_dec);
  T_CHECK(bad_enc == 0, "%d of %d values encode differently from torch", bad_enc, n_enc);
}

static void test_round_trip_and_specials(void) {
  int bad = 0;
  for (int c = 0; c < 256; c++) {
    if ((c & 0x7f) == 0x7f) continue;
    if (es_fp8_encode(es_fp8_decode((uint8_t)c)) != c) bad++;
  }
  T_CHECK(bad == 0, "%d finite codes do not round-trip", bad);
  T_CHECK(es_fp8_decode(0x7e) == 448.0f && es_fp8_decode(0xfe) == -448.0f, "max finite");
  T_CHECK(es_fp8_decode(0x01) == 0x1p-9f && es_fp8_decode(0x08) == 0x1p-6f, "smallest subnormal / normal");
  /* saturation (torch: NaN above 464; PTX satfinite and earshot: ±448) */
  const float big[] = {448.0f, 463.99f, 464.0f, 480.0f, 1e6f, 3e38f, INFINITY};
  for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
    T_CHECK(es_fp8_encode(big[i]) == 0x7e, "encode(%g) = %02x, want 7e", big[i], es_fp8_encode(big[i]));
    T_CHECK(es_fp8_encode(-big[i]) == 0xfe, "encode(%g) = %02x, want fe", -big[i], es_fp8_encode(-big[i]));
  }
  T_CHECK(es_fp8_encode(NAN) == 0x7f && es_fp8_encode(-NAN) == 0xff, "NaN");
  T_CHECK(es_fp8_encode(0.0f) == 0x00 && es_fp8_encode(-0.0f) == 0x80, "signed zeros");
  T_CHECK(es_fp8_encode(0x1p-10f) == 0x00 && es_fp8_encode(0x1.000002p-10f) == 0x01, "the tie below 2^-9");
  T_CHECK(es_fp8_encode(0x1p-130f) == 0x00, "fp32 subnormal");
}

static void test_pair_decode(void) {
  int bad = 0;
  for (uint32_t b0 = 0; b0 < 256; b0++)
    for (uint32_t b1 = 0; b1 < 256; b1++) {
      uint32_t h = es_fp8x2_to_f16x2_bits(b0 | b1 << 16);
      float lo = half_value(h & 0xffffu) * 256.0f, hi = half_value(h >> 16) * 256.0f;
      float want_lo = (b0 & 0x7f) == 0x7f ? (b0 & 0x80 ? -480.0f : 480.0f) : es_fp8_decode((uint8_t)b0);
      float want_hi = (b1 & 0x7f) == 0x7f ? (b1 & 0x80 ? -480.0f : 480.0f) : es_fp8_decode((uint8_t)b1);
      if (es_fp8_f32_bits(lo) != es_fp8_f32_bits(want_lo) || es_fp8_f32_bits(hi) != es_fp8_f32_bits(want_hi)) {
        if (bad++ < 5) fprintf(stderr, "pair %02x %02x: %g %g want %g %g\n", b0, b1, lo, hi, want_lo, want_hi);
      }
    }
  T_CHECK(bad == 0, "%d code pairs decode wrongly through fp16", bad);
}

/* The GEMV kernel's unpacking of one 16-byte load: code i of the load (byte i in memory) must come out as weight
 * i, for random loads and for the load holding codes 0..15 in order. */
static void test_x16_order(void) {
  uint64_t z = 777;
  int bad = 0;
  for (int it = 0; it < 20000; it++) {
    uint8_t bytes[16];
    for (int i = 0; i < 16; i++) {
      z = z * 6364136223846793005ull + 1442695040888963407ull;
      bytes[i] = it == 0 ? (uint8_t)(i + 8) : (uint8_t)(z >> 56);
      if ((bytes[i] & 0x7f) == 0x7f) bytes[i] ^= 1; /* NaN codes never occur in uploaded weights */
    }
    uint32_t q[4], h[8];
    memcpy(q, bytes, sizeof q); /* the words a little-endian 16-byte load gives (x86 and the GPU agree) */
    es_fp8x16_to_f16x2_bits(q, h);
    for (int i = 0; i < 16; i++) {
      uint32_t half = i % 2 ? h[i / 2] >> 16 : h[i / 2] & 0xffffu;
      float got = half_value(half) * 256.0f, want = es_fp8_decode(bytes[i]);
      if (es_fp8_f32_bits(got) != es_fp8_f32_bits(want) && bad++ < 5)
        fprintf(stderr, "load %d weight %d (code %02x): %g, want %g\n", it, i, bytes[i], got, want);
    }
  }
  T_CHECK(bad == 0, "%d weights of 16-byte loads unpacked out of order or wrongly", bad);
}

static void test_scale(void) {
  T_CHECK(es_fp8_scale(0.0f) == 1.0f, "zero row");
  T_CHECK(es_fp8_scale(448.0f) == 1.0f, "amax 448");
  /* the row maximum lands on ±448 and nothing overflows, for amax over many magnitudes */
  uint64_t z = 12345;
  int bad = 0;
  for (int i = 0; i < 100000; i++) {
    z = z * 6364136223846793005ull + 1442695040888963407ull;
    float amax = ldexpf(1.0f + (float)(z >> 41) * 0x1p-23f, (int)((z >> 20) % 60) - 40);
    float s = es_fp8_scale(amax);
    if (es_fp8_encode(amax / s) != 0x7e || es_fp8_encode(-amax / s) != 0xfe) bad++;
    float w = amax * (float)((z >> 8) & 0xfff) / 4096.0f; /* an element below the max: never saturates */
    if (fabsf(es_fp8_decode(es_fp8_encode(w / s))) > 448.0f) bad++;
  }
  T_CHECK(bad == 0, "%d row maxima did not quantise to +-448", bad);
}

/* es_fp8_quantize_row, the fp8 KV cache's row form: the scale is the row's amax / 448, the largest element
 * lands on ±448, every code is e4m3(x / scale); a row of zeros gets scale 1; a NaN element a NaN code. */
static void test_quantize_row(void) {
  float x[96], zero[5] = {0};
  uint8_t c[96];
  uint64_t z = 99;
  int bad = 0;
  for (int t = 0; t < 2000; t++) {
    const int D = 1 + t % 96;
    float amax = 0.0f;
    for (int d = 0; d < D; d++) {
      z = z * 6364136223846793005ull + 1442695040888963407ull;
      x[d] = ldexpf((float)(int32_t)(z >> 32) * 0x1p-31f, (int)(t % 40) - 20);
      amax = fabsf(x[d]) > amax ? fabsf(x[d]) : amax;
    }
    const float s = es_fp8_quantize_row(x, D, c);
    if (s != es_fp8_scale(amax)) bad++;
    for (int d = 0; d < D; d++) {
      if (c[d] != es_fp8_encode(x[d] / s)) bad++;
      if (fabsf(x[d]) == amax && amax > 0.0f && (c[d] & 0x7f) != 0x7e) bad++;
    }
  }
  T_CHECK(bad == 0, "quantize_row: %d scales or codes differ from amax / 448 and e4m3(x / scale)", bad);
  T_CHECK(es_fp8_quantize_row(zero, 5, c) == 1.0f && c[0] == 0 && c[4] == 0, "a row of zeros: scale 1, codes 0");
  float with_nan[3] = {1.0f, NAN, -2.0f};
  T_CHECK(es_fp8_quantize_row(with_nan, 3, c) == 2.0f / 448.0f && (c[1] & 0x7f) == 0x7f && c[2] == 0xfe,
          "a NaN element: its code is NaN, the others keep their scale");
}

int main(void) {
  test_quantize_row();
  test_table();
  test_round_trip_and_specials();
  test_pair_decode();
  test_x16_order();
  test_scale();
  return t_finish();
}
