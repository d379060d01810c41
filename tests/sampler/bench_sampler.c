/* bench_sampler: microseconds per smp_sample call for V = 156,032 (Qwen2-Audio's vocabulary) under the
 * parameter sets users send, against a naive reference in the same run: a full qsort of the row for
 * top-k/top-p (what a straightforward port of transformers' sort + cumsum costs). A program, not a test.
 *
 * Logits: a Gaussian row (sd 3) with a few peaked ids, roughly the spread of an LLM's logits; prompt of
 * 800 ids (an audio clip's placeholders plus text) for the penalties.
 * usage: bench_sampler [steps]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sampler.h"

enum { V = 156032 };

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec * 1e-3;
}

typedef struct {
  float v;
  int i;
} vi_t;
static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}
static int cmp_desc(const void *a, const void *b) {
  const vi_t *x = a, *y = b;
  return x->v > y->v ? -1 : x->v < y->v;
}

/* the naive way: softmax, full sort, cumsum, draw */
static int naive_top_p(const float *l, vi_t *tmp, double top_p, double u) {
  float m = -INFINITY;
  for (int i = 0; i < V; i++) m = l[i] > m ? l[i] : m;
  double z = 0;
  for (int i = 0; i < V; i++) {
    tmp[i].v = expf(l[i] - m);
    tmp[i].i = i;
    z += tmp[i].v;
  }
  qsort(tmp, V, sizeof *tmp, cmp_desc);
  double acc = 0;
  int n = 0;
  while (n < V && acc < top_p * z) acc += tmp[n++].v;
  double t = u * acc, a = 0;
  for (int j = 0; j < n; j++)
    if ((a += tmp[j].v) > t) return tmp[j].i;
  return tmp[n - 1].i;
}

int main(int argc, char **argv) {
  int steps = argc > 1 ? atoi(argv[1]) : 200;
  if (steps < 1) steps = 1;
  float *base = malloc(V * sizeof *base), *row = malloc(V * sizeof *row);
  vi_t *tmp = malloc(V * sizeof *tmp);
  double *times = malloc((size_t)(steps > 21 ? steps : 21) * sizeof *times);
  uint64_t x = 42;
  for (int i = 0; i < V; i++) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    double u1 = ((x >> 11) + 1) * 0x1.0p-53;
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    double u2 = (x >> 11) * 0x1.0p-53;
    base[i] = (float)(3.0 * sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2));
  }
  for (int i = 0; i < 8; i++) base[(i * 7919) % V] += 12.0f;
  int32_t prompt[800];
  for (int i = 0; i < 800; i++) prompt[i] = i < 750 ? 151646 : (int32_t)((i * 104729) % V);

  es_error_t err;
  smp_workspace_t ws;
  if (smp_workspace_init(&ws, V, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
  struct {
    const char *name;
    double temperature, top_p, min_p, rep;
    int top_k;
  } cases[] = {
      {"greedy", 0, 1, 0, 1, 0},
      {"greedy + rep 1.1 (800 prompt ids)", 0, 1, 0, 1.1, 0},
      {"T 1 (full softmax)", 1, 1, 0, 1, 0},
      {"T 1, top_k 50", 1, 1, 0, 1, 50},
      {"T 0.7, top_k 20, top_p 0.5, rep 1.1 (Qwen2-Audio)", 0.7, 0.5, 0, 1.1, 20},
      {"T 1, top_p 0.9", 1, 0.9, 0, 1, 0},
      {"T 1.5, top_p 0.95 (flat: large nucleus)", 1.5, 0.95, 0, 1, 0},
      {"T 1, min_p 0.05", 1, 1, 0.05, 1, 0},
  };
  printf("bench_sampler: V = %d, %d steps per case, median us per step\n", V, steps);
  for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
    smp_params_t p;
    smp_params_default(&p);
    p.temperature = cases[c].temperature;
    p.top_p = cases[c].top_p;
    p.min_p = cases[c].min_p;
    p.top_k = cases[c].top_k;
    p.repetition_penalty = cases[c].rep;
    p.has_seed = 1;
    p.seed = 7;
    p.max_tokens = steps + 1;
    smp_state_t st;
    if (smp_init(&st, &p, V, NULL, 0, prompt, 800, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    for (int t = 0; t < steps; t++) {
      memcpy(row, base, V * sizeof *row);
      int32_t tok;
      double t0 = now_us();
      if (smp_sample(&st, &ws, row, &tok, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
      times[t] = now_us() - t0;
      smp_accept(&st, tok);
    }
    qsort(times, (size_t)steps, sizeof *times, cmp_double);
    printf("  %-52s %9.1f us  (min %.1f)\n", cases[c].name, times[steps / 2], times[0]);
    smp_free(&st);
  }
  int reps = steps < 21 ? steps : 21;
  for (int t = 0; t < reps; t++) {
    double t0 = now_us();
    volatile int tok = naive_top_p(base, tmp, 0.9, smp_uniform(7, (uint64_t)t));
    (void)tok;
    times[t] = now_us() - t0;
  }
  qsort(times, (size_t)reps, sizeof *times, cmp_double);
  printf("  %-52s %9.1f us  (min %.1f; reference: glibc expf + full qsort)\n", "naive T 1, top_p 0.9",
         times[reps / 2], times[0]);
  free(times);
  smp_workspace_free(&ws);
  free(base);
  free(row);
  free(tmp);
  return 0;
}
