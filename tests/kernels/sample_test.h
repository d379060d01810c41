/* sample_test: random logits rows and sampling parameters for the sample-op tests (tests/kernels/
 * test_sample_math.c on the CPU, tests/cuda/test_cuda_sample.c on the GPU). Header-only, deterministic
 * (a private LCG), no global state besides the generator.
 */
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "backend.h"

static uint64_t st_rng = 0x5EED5A3Bull;
static inline double st_uniform(void) {
  st_rng = st_rng * 6364136223846793005ull + 1442695040888963407ull;
  return (double)(st_rng >> 11) * (1.0 / 9007199254740992.0);
}
static inline int st_below(int n) {
  return (int)(st_uniform() * n);
}
static inline double st_normal(void) {
  double u = st_uniform(), v = st_uniform();
  return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

/* Row kinds: smooth (gaussian), peaked (one id far above), ties (a handful of distinct values, so radix
 * selections end on long runs of equal keys), masked (most ids -inf, some NaN), tiny (weights at the
 * exp floor, where fixed point truncates), signed zeros. */
enum { ST_SMOOTH, ST_PEAKED, ST_TIES, ST_MASKED, ST_WIDE, ST_ZEROS, ST_KINDS };

static inline void st_fill_row(float *l, int V, int kind) {
  for (int i = 0; i < V; i++) {
    switch (kind) {
    case ST_SMOOTH: l[i] = (float)(3.0 * st_normal()); break;
    case ST_PEAKED: l[i] = (float)st_normal(); break;
    case ST_TIES: l[i] = (float)(st_below(6) * 0.5 - 1.0); break;
    case ST_MASKED: {
      double u = st_uniform();
      l[i] = u < 0.7 ? -INFINITY : u < 0.75 ? NAN : (float)(2.0 * st_normal());
      break;
    }
    case ST_WIDE: l[i] = (float)(40.0 * st_normal()); break;
    default: l[i] = st_uniform() < 0.5 ? -0.0f : (st_uniform() < 0.5 ? 0.0f : (float)st_normal()); break;
    }
  }
  if (kind == ST_PEAKED) l[st_below(V)] = 12.0f;
  if (kind == ST_MASKED) { /* keep at least one finite id */
    int any = 0;
    for (int i = 0; i < V; i++) any |= l[i] > -INFINITY;
    if (!any) l[st_below(V)] = 0.5f;
  }
}

/* One of the filter combinations, indexed 0 .. ST_COMBOS-1: temperature x top_k x top_p x min_p. Values are
 * fp32-representable, so a double host-sampler parameter and the fp32 row parameter are the same number. */
#define ST_COMBOS (4 * 4 * 3 * 2)
static inline void st_combo(int c, es_sample_row_t *r) {
  static const float temp[4] = {0.0f, 0.75f, 1.0f, 1.5f};
  static const int32_t topk[4] = {0, 1, 5, 40};
  static const float topp[3] = {1.0f, 0.875f, 0.5f};
  static const float minp[2] = {0.0f, 0.0625f};
  memset(r, 0, sizeof *r);
  r->temperature = temp[c % 4];
  r->top_k = topk[(c / 4) % 4];
  r->top_p = topp[(c / 16) % 3];
  r->min_p = minp[(c / 48) % 2];
  r->repetition_penalty = 1.0f;
}
