/* test_cuda_sample: the CUDA backend's sample op (kernels/cuda/cuda_sample.cu) against the CPU backend's
 * (kernels/cpu/cpu_sample.c, itself checked against the host sampler by tests/kernels/test_sample_math.c), and
 * its distribution against the host sampler's smp_distribution. Skips (77) without CUDA or a GPU.
 *
 *   - V = 1, 7, 1025, 4099 and 151,680; batches of 8 rows over 8 slots, random rows of every kind (ties, -inf,
 *     NaN, signed zeros, ...), error rows (all -inf, all NaN, a +inf), every filter combination, penalties
 *     over prompt + generated ids, min_tokens suppression; each slot sampled for several steps between
 *     resets, so the counts es_op_sample adds are part of the next step's penalties: the processed rows are
 *     identical bit for bit (with want_processed their -inf pattern is the kept set), greedy and seeded
 *     tokens identical (integer mass sums make the kept set and the draw exact; the rate is printed), error
 *     rows give -1 on both;
 *   - distribution: 20,000 draws (steps 0..19,999) of one row (T 0.8, top-k 50, top-p 0.875) against
 *     smp_distribution: no id outside the kept set, chi-square at p = 1e-4, total variation < 0.02.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "es_gpu.h"
#include "gpu_skip.h"
#include "sample_test.h"
#include "sampler.h"
#include "test_util.h"

static es_error_t err;

typedef struct {
  es_backend_t *cpu, *gpu;
  float *lc, *lg;   /* device logits (S, V) of each */
  int32_t *tc, *tg; /* device tokens (S) */
  int S, V;
} pair_t;

static int open_pair(pair_t *d, int S, int V) {
  memset(d, 0, sizeof *d);
  d->S = S;
  d->V = V;
  es_backend_opts_t o = {.compute_dtype = ES_DT_F32, .n_threads = 2, .max_tokens = 4, .max_seqs = 4, .max_blocks = 4};
  if (es_backend_create_cpu(&o, &d->cpu, &err) || es_backend_create_cuda(&o, &d->gpu, &err) ||
      es_backend_sampler_init(d->cpu, S, V, &err) || es_backend_sampler_init(d->gpu, S, V, &err) ||
      es_backend_alloc(d->cpu, sizeof(float) * (size_t)S * V, (void **)&d->lc, &err) ||
      es_backend_alloc(d->gpu, sizeof(float) * (size_t)S * V, (void **)&d->lg, &err) ||
      es_backend_alloc(d->cpu, sizeof(int32_t) * (size_t)S, (void **)&d->tc, &err) ||
      es_backend_alloc(d->gpu, sizeof(int32_t) * (size_t)S, (void **)&d->tg, &err)) {
    T_CHECK(0, "open V %d: %s", V, err.msg);
    return -1;
  }
  return 0;
}

static void close_pair(pair_t *d) {
  es_backend_free(d->cpu);
  es_backend_free(d->gpu);
}

/* ---- GPU against CPU ------------------------------------------------------------------------------------ */

static void test_against_cpu(int V, int batches, int *greedy, int *greedy_same, int *draws, int *draws_same) {
  enum { S = 8, STEPS = 4, NP = 20, NG = 6 };
  pair_t d;
  if (open_pair(&d, S, V)) return;
  float *rows = malloc(sizeof(float) * S * V), *rc = malloc(sizeof(float) * S * V), *rg = malloc(sizeof(float) * S * V);
  T_REQUIRE(rows && rc && rg, "memory");
  es_sample_row_t p[S];
  int step[S], combo = 0, row_diffs = 0;
  for (int b = 0; b < batches; b++) {
    if (b % STEPS == 0) /* new requests in every slot: prompt, some generated ids, a suppress list */
      for (int s = 0; s < S; s++) {
        int32_t prompt[NP], gen[NG], supp[3] = {V - 1, st_below(V), st_below(V)};
        int np = st_below(NP + 1), ng = st_below(NG + 1);
        for (int i = 0; i < np; i++) prompt[i] = st_below(V);
        for (int i = 0; i < ng; i++) gen[i] = st_below(V < 5 ? V : 5);
        T_REQUIRE(es_backend_sampler_reset(d.cpu, s, prompt, np, gen, ng, supp, 3, &err) == 0 &&
                      es_backend_sampler_reset(d.gpu, s, prompt, np, gen, ng, supp, 3, &err) == 0,
                  "reset: %s", err.msg);
        st_combo(combo++ % ST_COMBOS, &p[s]);
        static const float rep[3] = {1.0f, 1.25f, 0.75f}, pres[3] = {0.0f, 0.5f, -0.5f}, freq[3] = {0.0f, 0.25f, 1.0f};
        int pv = st_below(3);
        p[s].repetition_penalty = rep[pv];
        p[s].presence_penalty = pres[pv];
        p[s].frequency_penalty = freq[pv];
        p[s].seed = ((uint64_t)st_below(1 << 30) << 32) ^ (uint64_t)b;
        p[s].slot = s;
        step[s] = ng;
      }
    for (int s = 0; s < S; s++) {
      float *row = rows + (size_t)s * V;
      st_fill_row(row, V, st_below(ST_KINDS));
      switch (st_below(24)) { /* error rows (token -1 on both), and +inf / NaN beside finite logits */
      case 0:
        for (int i = 0; i < V; i++) row[i] = -INFINITY;
        break;
      case 1:
        for (int i = 0; i < V; i++) row[i] = NAN;
        break;
      case 2: row[st_below(V)] = INFINITY; break;
      case 3: row[st_below(V)] = NAN; break;
      default: break;
      }
      p[s].step = step[s]++;
      p[s].suppress = st_below(4) == 0;
      p[s].want_processed = b % 2;
    }
    es_error_t ec;
    int rcc;
    int32_t tc[S], tg[S];
    T_REQUIRE(es_backend_write(d.cpu, d.lc, rows, sizeof(float) * S * V, &err) == 0 &&
                  es_backend_write(d.gpu, d.lg, rows, sizeof(float) * S * V, &err) == 0 &&
                  es_backend_sample_prepare(d.cpu, p, S, &err) == 0 &&
                  es_backend_sample_prepare(d.gpu, p, S, &err) == 0,
              "prepare: %s", err.msg);
    rcc = es_op_sample(d.cpu, d.lc, S, d.tc, &ec);
    T_REQUIRE(rcc == 0 || rcc == ES_EINVAL, "cpu sample: %s", ec.msg);
    T_REQUIRE(es_op_sample(d.gpu, d.lg, S, d.tg, &err) == 0 && es_backend_sync(d.gpu, &err) == 0, "gpu sample: %s",
              err.msg);
    T_REQUIRE(es_backend_read(d.cpu, tc, d.tc, sizeof tc, &err) == 0 &&
                  es_backend_read(d.gpu, tg, d.tg, sizeof tg, &err) == 0 &&
                  es_backend_read(d.cpu, rc, d.lc, sizeof(float) * S * V, &err) == 0 &&
                  es_backend_read(d.gpu, rg, d.lg, sizeof(float) * S * V, &err) == 0,
              "read: %s", err.msg);
    for (int s = 0; s < S; s++) {
      if (tc[s] < 0 || tg[s] < 0) {
        T_CHECK(tc[s] == tg[s], "V %d batch %d row %d: error on one backend only (cpu %d, gpu %d)", V, b, s, tc[s],
                tg[s]);
        continue;
      }
      int diff = memcmp(rc + (size_t)s * V, rg + (size_t)s * V, sizeof(float) * V) != 0;
      if (diff) {
        int first = 0;
        while (memcmp(rc + (size_t)s * V + first, rg + (size_t)s * V + first, sizeof(float)) == 0) first++;
        fprintf(stderr,
                "V %d batch %d row %d (T %g k %d p %g minp %g): processed rows differ first at id %d: cpu %g gpu %g\n",
                V, b, s, (double)p[s].temperature, p[s].top_k, (double)p[s].top_p, (double)p[s].min_p, first,
                (double)rc[(size_t)s * V + first], (double)rg[(size_t)s * V + first]);
      }
      row_diffs += diff;
      if (p[s].temperature < SMP_GREEDY_EPS) {
        (*greedy)++;
        *greedy_same += tc[s] == tg[s];
      } else {
        (*draws)++;
        *draws_same += tc[s] == tg[s];
      }
      if (tc[s] != tg[s]) /* the slots' counts now differ: restart them at the next batch */
        b += STEPS - 1 - b % STEPS;
    }
  }
  T_CHECK(row_diffs == 0, "V %d: %d processed rows differ between the CPU and the GPU", V, row_diffs);
  free(rows), free(rc), free(rg);
  close_pair(&d);
}

/* ---- the GPU's draws against smp_distribution -------------------------------------------------------------- */

static double chi2_bound(int df) { /* Wilson-Hilferty upper quantile at p = 1e-4 */
  double a = 2.0 / (9.0 * df), c = 1.0 - a + 3.719 * sqrt(a);
  return df * c * c * c;
}

static void test_distribution(void) {
  enum { V = 1000, S = 64, N = 20000 };
  pair_t d;
  if (open_pair(&d, S, V)) return;
  float *base = malloc(sizeof(float) * V), *rows = malloc(sizeof(float) * S * V), *probs = malloc(sizeof(float) * V);
  int *hist = calloc(V, sizeof(int));
  T_REQUIRE(base && rows && probs && hist, "memory");
  for (int i = 0; i < V; i++) base[i] = (float)(1.5 * st_normal());
  smp_params_t sp;
  smp_params_default(&sp);
  sp.temperature = 0.8f;
  sp.top_k = 50;
  sp.top_p = 0.875f;
  sp.has_seed = 1;
  sp.seed = 2024;
  smp_state_t st;
  smp_workspace_t ws;
  T_REQUIRE(smp_init(&st, &sp, V, NULL, 0, NULL, 0, &err) == 0 && smp_workspace_init(&ws, V, &err) == 0, "host");
  memcpy(rows, base, sizeof(float) * V);
  T_REQUIRE(smp_distribution(&st, &ws, rows, probs, &err) == 0, "distribution");
  es_sample_row_t p[S];
  for (int s = 0; s < S; s++) {
    memset(&p[s], 0, sizeof p[s]);
    p[s].temperature = 0.8f;
    p[s].top_k = 50;
    p[s].top_p = 0.875f;
    p[s].repetition_penalty = 1.0f;
    p[s].seed = 2024;
    p[s].slot = s;
    memcpy(rows + (size_t)s * V, base, sizeof(float) * V);
  }
  int outside = 0;
  for (int t0 = 0; t0 < N; t0 += S) {
    int n = N - t0 < S ? N - t0 : S;
    for (int s = 0; s < n; s++) p[s].step = t0 + s;
    int32_t tok[S];
    T_REQUIRE(es_backend_write(d.gpu, d.lg, rows, sizeof(float) * (size_t)n * V, &err) == 0 &&
                  es_backend_sample_prepare(d.gpu, p, n, &err) == 0 && es_op_sample(d.gpu, d.lg, n, d.tg, &err) == 0 &&
                  es_backend_read(d.gpu, tok, d.tg, sizeof(int32_t) * (size_t)n, &err) == 0,
              "gpu: %s", err.msg);
    for (int s = 0; s < n; s++) {
      if (tok[s] < 0 || tok[s] >= V || probs[tok[s]] <= 0.0f)
        outside++;
      else
        hist[tok[s]]++;
    }
  }
  double chi2 = 0, tv = 0, pooled_e = 0, pooled_o = 0;
  int df = -1;
  for (int i = 0; i < V; i++) {
    double e = probs[i] * (double)N;
    tv += fabs(hist[i] / (double)N - probs[i]);
    if (e >= 5) {
      chi2 += (hist[i] - e) * (hist[i] - e) / e;
      df++;
    } else {
      pooled_e += e;
      pooled_o += hist[i];
    }
  }
  if (pooled_e >= 5) {
    chi2 += (pooled_o - pooled_e) * (pooled_o - pooled_e) / pooled_e;
    df++;
  }
  tv *= 0.5;
  printf("distribution: %d draws, chi2 %.1f (df %d, bound %.1f), total variation %.4f, %d outside the kept set\n", N,
         chi2, df, df > 0 ? chi2_bound(df) : 0.0, tv, outside);
  T_CHECK(outside == 0, "%d draws outside the kept set", outside);
  T_CHECK(df > 5 && chi2 < chi2_bound(df), "chi2 %.1f over %d degrees of freedom", chi2, df);
  T_CHECK(tv < 0.02, "total variation %.4f", tv);
  smp_free(&st);
  smp_workspace_free(&ws);
  free(base), free(rows), free(probs), free(hist);
  close_pair(&d);
}

int main(void) {
  int skip = t_need_gpu();
  if (skip) return skip;
  int greedy = 0, greedy_same = 0, draws = 0, draws_same = 0;
  test_against_cpu(1, 32, &greedy, &greedy_same, &draws, &draws_same);
  test_against_cpu(7, 64, &greedy, &greedy_same, &draws, &draws_same);
  test_against_cpu(1025, 48, &greedy, &greedy_same, &draws, &draws_same); /* one id past a multiple of 1024 */
  test_against_cpu(4099, 96, &greedy, &greedy_same, &draws, &draws_same);
  test_against_cpu(151680, 24, &greedy, &greedy_same, &draws, &draws_same);
  printf("GPU vs CPU backend: greedy same %d/%d, seeded same %d/%d (%.3f%%)\n", greedy_same, greedy, draws_same, draws,
         100.0 * draws_same / (draws ? draws : 1));
  T_CHECK(greedy_same == greedy, "greedy tokens differ in %d of %d rows", greedy - greedy_same, greedy);
  /* integer mass sums: the kept set and the draw are the CPU backend's exactly, not just nearly */
  T_CHECK(draws > 100 && draws_same == draws, "seeded tokens agree in %d of %d rows", draws_same, draws);
  test_distribution();
  return t_finish();
}
