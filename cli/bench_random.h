/* bench_random: the benchmarks' random inputs — a 32-bit LCG (fast, reproducible, good enough for timing data)
 * and uniform bf16 values from it. Never zeros: data that is all zeros can run faster than real data.
 * Thread safety: the caller owns the state. */
#pragma once

#include <stdint.h>
#include <string.h>

/* The next state of the LCG (Numerical Recipes constants). */
static inline uint32_t bench_lcg(uint32_t *state) {
  *state = *state * 1664525u + 1013904223u;
  return *state;
}

/* A bf16 uniform in [-amp, amp), rounded to nearest even. */
static inline uint16_t bench_rand_bf16(uint32_t *state, float amp) {
  float f = amp * ((float)(bench_lcg(state) >> 8) / 8388608.0f - 1.0f);
  uint32_t b;
  memcpy(&b, &f, 4);
  b += 0x7fffu + ((b >> 16) & 1u);
  return (uint16_t)(b >> 16);
}
