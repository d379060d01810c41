/* test_sampler: the sampler against hand-worked cases and a plain double-precision reference of the
 * transformers pipeline (sort, cumsum, mask), the Philox known answers, seeded reproducibility, and the
 * finish reasons. Sampling checks draw thousands of tokens with fixed seeds and compare frequencies to
 * the expected distribution with a chi-square bound at p = 1e-4 (fixed seeds: the outcome is
 * deterministic, the bound says how surprising a failure would be for a correct sampler).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sampler.h"
#include "test_util.h"

static es_error_t err;

/* ---- helpers ---- */

static uint64_t lcg_state = 0x1234567;
static double lcg_uniform(void) {
  lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
  return (double)(lcg_state >> 11) * 0x1.0p-53;
}
static double lcg_normal(void) {
  double u = lcg_uniform(), v = lcg_uniform();
  return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

static int init_state(smp_state_t *st, const smp_params_t *p, int V, const int *eos, int n_eos, const int32_t *prompt,
                      int n_prompt) {
  int rc = smp_init(st, p, V, eos, n_eos, prompt, n_prompt, &err);
  if (rc) fprintf(stderr, "smp_init: %s\n", err.msg);
  return rc;
}

/* Wilson-Hilferty upper quantile of chi-square(df) at p = 1e-4 (z = 3.719). */
static double chi2_bound(int df) {
  double a = 2.0 / (9.0 * df);
  double c = 1.0 - a + 3.719 * sqrt(a);
  return df * c * c * c;
}

/* Draws n tokens (steps 0..n-1 of one seeded request) from logits and checks that only ids with
 * expect[i] > 0 appear and that the frequencies fit expect (a distribution over V). */
static void check_sampling(const char *name, const float *logits, int V, smp_params_t p, const double *expect,
                           int n) {
  smp_state_t st;
  smp_workspace_t ws;
  p.has_seed = 1;
  p.seed = 0xC0FFEE;
  p.max_tokens = n + 1;
  T_REQUIRE(init_state(&st, &p, V, NULL, 0, NULL, 0) == 0, "%s: init", name);
  T_REQUIRE(smp_workspace_init(&ws, V, &err) == 0, "%s: workspace", name);
  int *hist = calloc((size_t)V, sizeof *hist);
  float *row = malloc((size_t)V * sizeof *row);
  int bad = -1;
  for (int t = 0; t < n; t++) {
    memcpy(row, logits, (size_t)V * sizeof *row);
    int32_t tok = -1;
    if (smp_sample(&st, &ws, row, &tok, &err)) {
      bad = -2;
      break;
    }
    hist[tok]++;
    if (expect[tok] <= 0.0) bad = tok;
    smp_accept(&st, tok);
  }
  T_CHECK(bad == -1, "%s: drew id %d, which the filters remove (or sampling failed: %s)", name, bad, err.msg);
  double chi2 = 0.0;
  int df = -1;
  for (int i = 0; i < V; i++) {
    if (expect[i] <= 0.0) continue;
    double e = expect[i] * n;
    chi2 += (hist[i] - e) * (hist[i] - e) / e;
    df++;
  }
  if (df > 0) T_CHECK(chi2 < chi2_bound(df), "%s: chi-square %.2f over %d dof (bound %.2f)", name, chi2, df, chi2_bound(df));
  free(hist);
  free(row);
  smp_workspace_free(&ws);
  smp_free(&st);
}

/* The transformers pipeline, literally, in double: penalties, min-tokens mask, temperature, top-k
 * (scores < k-th largest removed), top-p (ascending sort, cumsum of the softmax, remove <= 1 - top_p,
 * keep the last), min-p (p < min_p * p_max removed). gen_count: per-id generated counts; in_prompt:
 * prompt membership. Returns the final probabilities in out. */
static int cmp_asc(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}
typedef struct {
  double v;
  int i;
} vi_t;
static int cmp_vi_asc(const void *a, const void *b) {
  const vi_t *x = a, *y = b;
  return x->v < y->v ? -1 : x->v > y->v;
}
static void softmax(const double *l, int V, double *p) {
  double m = -INFINITY, z = 0.0;
  for (int i = 0; i < V; i++) m = l[i] > m ? l[i] : m;
  for (int i = 0; i < V; i++) z += p[i] = isinf(l[i]) ? 0.0 : exp(l[i] - m);
  for (int i = 0; i < V; i++) p[i] /= z;
}
static void reference(const float *logits, int V, const smp_params_t *p, const int *gen_count, const int *in_prompt,
                      double *out) {
  double *l = malloc((size_t)V * sizeof *l), *tmp = malloc((size_t)V * sizeof *tmp);
  vi_t *vi = malloc((size_t)V * sizeof *vi);
  for (int i = 0; i < V; i++) {
    l[i] = logits[i];
    if (in_prompt[i] || gen_count[i]) l[i] = l[i] < 0 ? l[i] * p->repetition_penalty : l[i] / p->repetition_penalty;
    if (gen_count[i]) l[i] -= p->frequency_penalty * gen_count[i] + p->presence_penalty;
  }
  for (int i = 0; i < V; i++) l[i] /= p->temperature;
  if (p->top_k > 0 && p->top_k < V) {
    memcpy(tmp, l, (size_t)V * sizeof *l);
    qsort(tmp, (size_t)V, sizeof *tmp, cmp_asc);
    double kth = tmp[V - p->top_k];
    for (int i = 0; i < V; i++)
      if (l[i] < kth) l[i] = -INFINITY;
  }
  if (p->top_p < 1.0) {
    softmax(l, V, tmp);
    for (int i = 0; i < V; i++) vi[i] = (vi_t){tmp[i], i};
    qsort(vi, (size_t)V, sizeof *vi, cmp_vi_asc);
    double cum = 0.0;
    for (int j = 0; j < V - 1; j++) { /* the last (most probable) is always kept */
      cum += vi[j].v;
      if (cum <= 1.0 - p->top_p) l[vi[j].i] = -INFINITY;
    }
  }
  if (p->min_p > 0.0) {
    softmax(l, V, tmp);
    double pmax = 0.0;
    for (int i = 0; i < V; i++) pmax = tmp[i] > pmax ? tmp[i] : pmax;
    for (int i = 0; i < V; i++)
      if (tmp[i] < p->min_p * pmax) l[i] = -INFINITY;
  }
  softmax(l, V, out);
  free(l);
  free(tmp);
  free(vi);
}

/* ---- tests ---- */

static void test_philox(void) {
  /* Random123 tests/kat_vectors, philox4x32 10: counter, key -> output */
  static const uint32_t kat[3][10] = {
      {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
      {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d, 0x41c83b0e, 0xa20bc7c6,
       0x6d5451fd},
      {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09, 0x94fdcceb, 0x5001e420,
       0x24126ea1},
  };
  for (int v = 0; v < 3; v++) {
    uint32_t out[4];
    smp_philox4x32_10(kat[v], kat[v] + 4, out);
    T_CHECK(memcmp(out, kat[v] + 6, sizeof out) == 0, "philox KAT %d: got %08x %08x %08x %08x", v, out[0], out[1],
            out[2], out[3]);
  }
  double u = smp_uniform(42, 7);
  T_CHECK(u >= 0.0 && u < 1.0, "uniform in [0,1): %g", u);
  T_CHECK(smp_uniform(42, 7) == u, "uniform is a pure function of (seed, step)");
  T_CHECK(smp_uniform(43, 7) != u && smp_uniform(42, 8) != u, "seed and step both change the draw");
  double mean = 0.0;
  for (int t = 0; t < 100000; t++) mean += smp_uniform(5, (uint64_t)t);
  mean /= 100000;
  T_CHECK(fabs(mean - 0.5) < 0.005, "mean of 1e5 uniforms %g", mean);
}

static void test_validation(void) {
  smp_params_t p;
  smp_params_default(&p);
  T_CHECK(smp_params_validate(&p, 100, &err) == 0, "defaults are valid: %s", err.msg);
  /* each case: mutate one field, expect ES_EINVAL/ES_ETOOBIG and the field named in the message */
#define CASE(field, stmt)                                                                         \
  do {                                                                                            \
    smp_params_default(&p);                                                                       \
    stmt;                                                                                         \
    int rc_ = smp_params_validate(&p, 100, &err);                                                 \
    T_CHECK(rc_ < 0 && strstr(err.msg, field), "%s: rc %d msg '%s'", #stmt, rc_, err.msg);        \
  } while (0)
  CASE("temperature", p.temperature = -0.1);
  CASE("temperature", p.temperature = NAN);
  CASE("top_k", p.top_k = -2);
  CASE("top_p", p.top_p = 0.0);
  CASE("top_p", p.top_p = 1.01);
  CASE("min_p", p.min_p = -0.01);
  CASE("min_p", p.min_p = 1.5);
  CASE("repetition_penalty", p.repetition_penalty = 0.0);
  CASE("presence_penalty", p.presence_penalty = 2.5);
  CASE("frequency_penalty", p.frequency_penalty = -2.01);
  CASE("max_tokens", p.max_tokens = 0);
  CASE("min_tokens", p.min_tokens = -1);
  CASE("min_tokens", (p.max_tokens = 4, p.min_tokens = 5));
  CASE("stop_token_ids", (p.n_stop_ids = 1, p.stop_ids[0] = 100));
  CASE("stop_token_ids", p.n_stop_ids = SMP_MAX_STOP_IDS + 1);
#undef CASE
  smp_params_default(&p);
  p.top_k = -1;
  T_CHECK(smp_params_validate(&p, 100, &err) == 0, "top_k -1 means disabled");
  p.top_k = 0;
  p.temperature = 0.0;
  p.presence_penalty = -2.0;
  p.frequency_penalty = 2.0;
  p.min_tokens = p.max_tokens;
  T_CHECK(smp_params_validate(&p, 100, &err) == 0, "edges of the ranges are valid: %s", err.msg);

  smp_state_t st;
  int32_t bad_prompt[] = {3, 100};
  p.repetition_penalty = 1.1;
  T_CHECK(smp_init(&st, &p, 100, NULL, 0, bad_prompt, 2, &err) == ES_EINVAL && strstr(err.msg, "prompt id 100"),
          "prompt id outside the vocabulary: %s", err.msg);
  int eos = 100;
  T_CHECK(smp_init(&st, &p, 100, &eos, 1, NULL, 0, &err) == ES_EINVAL, "eos outside the vocabulary");
  smp_free(&st);
  smp_free(NULL);
  smp_workspace_free(NULL);
}

static void test_greedy(void) {
  smp_params_t p;
  smp_params_default(&p);
  p.temperature = 0.0;
  p.top_k = 1; /* filters are ignored by greedy */
  p.top_p = 0.1;
  smp_state_t st;
  smp_workspace_t ws;
  T_REQUIRE(init_state(&st, &p, 5, NULL, 0, NULL, 0) == 0, "init");
  T_REQUIRE(smp_workspace_init(&ws, 5, &err) == 0, "ws");
  float l1[5] = {1, 3, 3, 2, -1};
  int32_t tok = -1;
  T_CHECK(smp_sample(&st, &ws, l1, &tok, &err) == 0 && tok == 1, "argmax, first index on ties: %d", tok);
  float l2[5] = {NAN, 1, 2, NAN, 0};
  T_CHECK(smp_sample(&st, &ws, l2, &tok, &err) == 0 && tok == 2, "NaN never wins: %d", tok);
  float l3[5] = {-INFINITY, -INFINITY, -INFINITY, NAN, -INFINITY};
  T_CHECK(smp_sample(&st, &ws, l3, &tok, &err) == ES_EINVAL && strstr(err.msg, "finite"), "no finite logit: %s",
          err.msg);
  float l4[5] = {0, INFINITY, 0, 0, 0};
  T_CHECK(smp_sample(&st, &ws, l4, &tok, &err) == ES_EINVAL && strstr(err.msg, "+inf"), "+inf logit: %s", err.msg);
  /* 1e-6 is below vLLM's epsilon: greedy too */
  st.p.temperature = 1e-6;
  float l5[5] = {0, 0, 0, 0, 0.001f};
  T_CHECK(smp_sample(&st, &ws, l5, &tok, &err) == 0 && tok == 4, "temperature < 1e-5 is greedy: %d", tok);
  smp_workspace_t ws_small;
  T_REQUIRE(smp_workspace_init(&ws_small, 4, &err) == 0, "ws");
  T_CHECK(smp_sample(&st, &ws_small, l5, &tok, &err) == ES_EINVAL, "workspace of another vocabulary is refused");
  smp_workspace_free(&ws_small);
  smp_workspace_free(&ws);
  smp_free(&st);
}

static void test_repetition_penalty(void) {
  /* prompt + generated ids, each distinct id once: l < 0 ? l * p : l / p (transformers) */
  smp_params_t p;
  smp_params_default(&p);
  p.temperature = 0.0;
  p.repetition_penalty = 2.0;
  p.max_tokens = 4;
  int32_t prompt[] = {0, 1, 0, 0, 1};
  smp_state_t st;
  smp_workspace_t ws;
  T_REQUIRE(init_state(&st, &p, 6, NULL, 0, prompt, 5) == 0, "init");
  T_REQUIRE(smp_workspace_init(&ws, 6, &err) == 0, "ws");
  float l[6] = {2, -2, 1, -1, 0.5f, 3};
  int32_t tok;
  T_REQUIRE(smp_sample(&st, &ws, l, &tok, &err) == 0, "sample");
  float want1[6] = {1, -4, 1, -1, 0.5f, 3}; /* repeated prompt ids penalised once */
  T_CHECK(memcmp(l, want1, sizeof l) == 0, "step 0: %g %g %g %g %g %g", l[0], l[1], l[2], l[3], l[4], l[5]);
  T_CHECK(tok == 5, "greedy after the penalty: %d", tok);
  smp_accept(&st, 2);
  smp_accept(&st, 2);
  smp_accept(&st, 3);
  float m[6] = {2, -2, 1, -1, 0.5f, 3};
  T_REQUIRE(smp_sample(&st, &ws, m, &tok, &err) == 0, "sample");
  float want2[6] = {1, -4, 0.5f, -2, 0.5f, 3}; /* generated ids join the set, counted once */
  T_CHECK(memcmp(m, want2, sizeof m) == 0, "step 3: %g %g %g %g %g %g", m[0], m[1], m[2], m[3], m[4], m[5]);
  smp_workspace_free(&ws);
  smp_free(&st);
}

static void test_presence_frequency(void) {
  /* OpenAI: l -= presence * (count > 0) + frequency * count, over GENERATED ids only (vLLM) */
  smp_params_t p;
  smp_params_default(&p);
  p.temperature = 0.0;
  p.presence_penalty = 0.5;
  p.frequency_penalty = 0.25;
  p.max_tokens = 10;
  int32_t prompt[] = {0, 4};
  smp_state_t st;
  smp_workspace_t ws;
  T_REQUIRE(init_state(&st, &p, 6, NULL, 0, prompt, 2) == 0, "init");
  T_REQUIRE(smp_workspace_init(&ws, 6, &err) == 0, "ws");
  float l[6] = {2, 2, 2, 2, 2, 2};
  int32_t tok;
  T_REQUIRE(smp_sample(&st, &ws, l, &tok, &err) == 0, "sample");
  T_CHECK(l[0] == 2 && l[4] == 2, "prompt ids are not penalised by presence/frequency: %g %g", l[0], l[4]);
  smp_accept(&st, 3);
  smp_accept(&st, 3);
  smp_accept(&st, 4);
  float m[6] = {2, 2, 2, 2, 2, 2};
  T_REQUIRE(smp_sample(&st, &ws, m, &tok, &err) == 0, "sample");
  T_CHECK(m[3] == 2 - 0.5f - 0.5f && m[4] == 2 - 0.25f - 0.5f && m[0] == 2 && m[1] == 2,
          "counts 3:2, 4:1: %g %g %g", m[3], m[4], m[0]);
  smp_workspace_free(&ws);
  smp_free(&st);

  /* order: repetition penalty first, then presence: 3 / 2 - 1 = 0.5 (the other order would give 1) */
  smp_params_default(&p);
  p.temperature = 0.0;
  p.repetition_penalty = 2.0;
  p.presence_penalty = 1.0;
  T_REQUIRE(init_state(&st, &p, 3, NULL, 0, NULL, 0) == 0, "init");
  T_REQUIRE(smp_workspace_init(&ws, 3, &err) == 0, "ws");
  smp_accept(&st, 1);
  float n[3] = {0, 3, 0};
  T_REQUIRE(smp_sample(&st, &ws, n, &tok, &err) == 0, "sample");
  T_CHECK(n[1] == 0.5f, "repetition then presence: %g", n[1]);
  smp_workspace_free(&ws);
  smp_free(&st);

  /* the table holds every distinct id up to the whole vocabulary */
  smp_params_default(&p);
  p.repetition_penalty = 1.3;
  p.max_tokens = 40;
  int32_t pr[5] = {0, 1, 2, 3, 4};
  T_REQUIRE(init_state(&st, &p, 8, NULL, 0, pr, 5) == 0, "init");
  for (int t = 0; t < 40; t++) smp_accept(&st, t % 8);
  T_CHECK(st.n_counts == 8 && st.finish == SMP_FINISH_LENGTH, "distinct ids %d, finish %d", st.n_counts, st.finish);
  smp_free(&st);
}

static void test_min_tokens_eos_length(void) {
  smp_params_t p;
  smp_params_default(&p);
  p.temperature = 0.0;
  p.min_tokens = 2;
  p.max_tokens = 5;
  p.n_stop_ids = 1;
  p.stop_ids[0] = 3;
  int eos[2] = {0, 1};
  smp_state_t st;
  smp_workspace_t ws;
  T_REQUIRE(init_state(&st, &p, 5, eos, 2, NULL, 0) == 0, "init");
  T_REQUIRE(smp_workspace_init(&ws, 5, &err) == 0, "ws");
  int32_t seq[5];
  int n = 0;
  smp_finish_t fin = SMP_FINISH_NONE;
  while (fin == SMP_FINISH_NONE && n < 5) {
    float l[5] = {9, 8, 1, 7, 2}; /* eos, eos, ..., stop id: masked for the first two tokens */
    T_REQUIRE(smp_sample(&st, &ws, l, &seq[n], &err) == 0, "sample");
    fin = smp_accept(&st, seq[n++]);
  }
  T_CHECK(n == 3 && seq[0] == 4 && seq[1] == 4 && seq[2] == 0 && fin == SMP_FINISH_STOP, "min_tokens: n %d, %d %d %d",
          n, seq[0], seq[1], seq[2]);
  T_CHECK(strcmp(smp_finish_name(fin), "stop") == 0 && st.last_stop_id == -1, "eos finishes with stop");
  int32_t tok;
  float l[5] = {0};
  T_CHECK(smp_sample(&st, &ws, l, &tok, &err) == ES_EINVAL, "sampling a finished request fails");
  smp_free(&st);

  /* a stop id finishes and is reported */
  p.min_tokens = 0;
  T_REQUIRE(init_state(&st, &p, 5, eos, 2, NULL, 0) == 0, "init");
  T_CHECK(smp_accept(&st, 2) == SMP_FINISH_NONE && smp_accept(&st, 3) == SMP_FINISH_STOP && st.last_stop_id == 3,
          "stop id");
  smp_free(&st);

  /* ignore_eos: eos neither finishes nor is masked; max_tokens gives "length" */
  p.ignore_eos = 1;
  p.min_tokens = 3;
  p.max_tokens = 4;
  p.n_stop_ids = 0;
  T_REQUIRE(init_state(&st, &p, 5, eos, 2, NULL, 0) == 0, "init");
  n = 0;
  fin = SMP_FINISH_NONE;
  while (fin == SMP_FINISH_NONE && n < 5) {
    float m[5] = {9, 8, 1, 7, 2};
    T_REQUIRE(smp_sample(&st, &ws, m, &seq[n], &err) == 0, "sample");
    fin = smp_accept(&st, seq[n++]);
  }
  T_CHECK(n == 4 && seq[0] == 0 && seq[3] == 0 && fin == SMP_FINISH_LENGTH, "ignore_eos: n %d first %d", n, seq[0]);
  T_CHECK(strcmp(smp_finish_name(fin), "length") == 0 && smp_finish_name(SMP_FINISH_NONE) == NULL, "length");
  T_CHECK(smp_accept(&st, 2) == SMP_FINISH_LENGTH && st.n_generated == 4, "accept after finish is a no-op");
  smp_free(&st);

  /* stop strings become active at min_tokens */
  p.ignore_eos = 0;
  p.min_tokens = 2;
  T_REQUIRE(init_state(&st, &p, 5, eos, 2, NULL, 0) == 0, "init");
  T_CHECK(!smp_stop_strings_active(&st), "inactive at 0");
  smp_accept(&st, 2);
  T_CHECK(!smp_stop_strings_active(&st), "inactive at 1");
  smp_accept(&st, 2);
  T_CHECK(smp_stop_strings_active(&st), "active at 2");
  /* and an eos accepted before min_tokens (forced) does not finish */
  smp_free(&st);
  T_REQUIRE(init_state(&st, &p, 5, eos, 2, NULL, 0) == 0, "init");
  T_CHECK(smp_accept(&st, 0) == SMP_FINISH_NONE && smp_accept(&st, 0) == SMP_FINISH_STOP, "eos counts from min_tokens");
  smp_free(&st);
  smp_workspace_free(&ws);
}

static void check_dist(const char *name, const float *logits, int V, smp_params_t p, const double *want) {
  smp_state_t st;
  smp_workspace_t ws;
  T_REQUIRE(init_state(&st, &p, V, NULL, 0, NULL, 0) == 0, "%s: init", name);
  T_REQUIRE(smp_workspace_init(&ws, V, &err) == 0, "ws");
  float *row = malloc((size_t)V * sizeof *row), *probs = malloc((size_t)V * sizeof *probs);
  memcpy(row, logits, (size_t)V * sizeof *row);
  T_REQUIRE(smp_distribution(&st, &ws, row, probs, &err) == 0, "%s: %s", name, err.msg);
  int ok = 1;
  for (int i = 0; i < V; i++)
    if ((want[i] > 0) != (probs[i] > 0) || fabs(want[i] - probs[i]) > 1e-5) ok = 0;
  T_CHECK(ok, "%s: distribution differs", name);
  if (!ok)
    for (int i = 0; i < V; i++) fprintf(stderr, "  id %d: want %.6f got %.6f\n", i, want[i], probs[i]);
  free(row);
  free(probs);
  smp_workspace_free(&ws);
  smp_free(&st);
}

static void test_filters_exact(void) {
  smp_params_t p;
  /* top-k: the k largest, and ties with the k-th are kept (transformers, vLLM) */
  float lk[6] = {1, 4, 2, 4, 3, 0};
  double z = exp(4) * 2;
  smp_params_default(&p);
  p.top_k = 2;
  double wk2[6] = {0, exp(4) / z, 0, exp(4) / z, 0, 0};
  check_dist("top_k 2", lk, 6, p, wk2);
  float lt[4] = {5, 3, 3, 1};
  p.top_k = 2;
  z = exp(5) + 2 * exp(3);
  double wt[4] = {exp(5) / z, exp(3) / z, exp(3) / z, 0};
  check_dist("top_k ties", lt, 4, p, wt);

  /* top-p over probabilities 0.1 0.4 0.2 0.3 (ids 0..3): ranked 1, 3, 2, 0 */
  float lp[4] = {logf(0.1f), logf(0.4f), logf(0.2f), logf(0.3f)};
  smp_params_default(&p);
  p.top_p = 0.65;
  double wp1[4] = {0, 0.4 / 0.7, 0, 0.3 / 0.7};
  check_dist("top_p 0.65", lp, 4, p, wp1);
  p.top_p = 0.75;
  double wp2[4] = {0, 0.4 / 0.9, 0.2 / 0.9, 0.3 / 0.9};
  check_dist("top_p 0.75", lp, 4, p, wp2);
  p.top_p = 0.3;
  double wp3[4] = {0, 1, 0, 0};
  check_dist("top_p 0.3 keeps one", lp, 4, p, wp3);
  /* equal probabilities: the lower id first */
  float le[4] = {0, 0, 0, 0};
  p.top_p = 0.4;
  double we[4] = {0.5, 0.5, 0, 0};
  check_dist("top_p ties by id", le, 4, p, we);

  /* min-p over 0.5 0.25 0.15 0.1: threshold 0.4 * 0.5 = 0.2 */
  float lm[4] = {logf(0.5f), logf(0.25f), logf(0.15f), logf(0.1f)};
  smp_params_default(&p);
  p.min_p = 0.4;
  double wm[4] = {0.5 / 0.75, 0.25 / 0.75, 0, 0};
  check_dist("min_p 0.4", lm, 4, p, wm);

  /* all three, transformers' order: top-k 3 -> {0,1,2} renormalised 0.47 0.35 0.18; top-p 0.8 -> {0,1};
   * min-p 0.7: 0.3 / 0.4 = 0.75 >= 0.7 keeps both */
  float lc[5] = {logf(0.4f), logf(0.3f), logf(0.15f), logf(0.1f), logf(0.05f)};
  smp_params_default(&p);
  p.top_k = 3;
  p.top_p = 0.8;
  p.min_p = 0.7;
  double wc[5] = {0.4 / 0.7, 0.3 / 0.7, 0, 0, 0};
  check_dist("top_k+top_p+min_p", lc, 5, p, wc);
  p.min_p = 0.8;
  double wc2[5] = {1, 0, 0, 0, 0};
  check_dist("min_p 0.8 after top_p", lc, 5, p, wc2);

  /* temperature 2 over logits 0, ln 2, ln 4: probabilities proportional to 1, sqrt 2, 2 */
  float ltemp[3] = {0, logf(2), logf(4)};
  smp_params_default(&p);
  p.temperature = 2.0;
  z = 1 + sqrt(2) + 2;
  double wtemp[3] = {1 / z, sqrt(2) / z, 2 / z};
  check_dist("temperature 2", ltemp, 3, p, wtemp);
}

static void test_filters_reference(void) {
  /* random rows and parameters against the literal transformers pipeline in double */
  enum { V = 97, CASES = 300 };
  float logits[V];
  double want[V];
  int gen[V], in_prompt[V];
  for (int c = 0; c < CASES; c++) {
    double scale = 0.5 + 4 * lcg_uniform();
    for (int i = 0; i < V; i++) logits[i] = (float)(scale * lcg_normal());
    smp_params_t p;
    smp_params_default(&p);
    p.temperature = 0.3 + 1.5 * lcg_uniform();
    if (c % 2) p.top_k = 1 + (int)(lcg_uniform() * 60);
    if (c % 3) p.top_p = 0.05 + 0.9 * lcg_uniform();
    if (c % 5 < 2) p.min_p = 0.3 * lcg_uniform();
    if (c % 4 == 0) {
      p.repetition_penalty = 0.7 + lcg_uniform();
      p.presence_penalty = 2 * lcg_uniform() - 1;
      p.frequency_penalty = 2 * lcg_uniform() - 1;
    }
    p.max_tokens = 64;
    int32_t prompt[12];
    memset(gen, 0, sizeof gen);
    memset(in_prompt, 0, sizeof in_prompt);
    for (int i = 0; i < 12; i++) in_prompt[prompt[i] = (int32_t)(lcg_uniform() * V)] = 1;
    smp_state_t st;
    smp_workspace_t ws;
    T_REQUIRE(init_state(&st, &p, V, NULL, 0, prompt, 12) == 0, "init");
    T_REQUIRE(smp_workspace_init(&ws, V, &err) == 0, "ws");
    for (int t = 0; t < 10; t++) {
      int id = (int)(lcg_uniform() * V);
      gen[id]++;
      smp_accept(&st, id);
    }
    reference(logits, V, &p, gen, in_prompt, want);
    float row[V], probs[V];
    memcpy(row, logits, sizeof row);
    T_REQUIRE(smp_distribution(&st, &ws, row, probs, &err) == 0, "distribution: %s", err.msg);
    int support = 1;
    double maxdiff = 0.0;
    for (int i = 0; i < V; i++) {
      if ((want[i] > 0) != (probs[i] > 0)) support = 0;
      maxdiff = fmax(maxdiff, fabs(want[i] - probs[i]));
    }
    T_CHECK(support && maxdiff < 2e-5, "case %d (T %.3f k %d p %.3f min_p %.3f rep %.3f): support %d maxdiff %g", c,
            p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty, support, maxdiff);
    smp_workspace_free(&ws);
    smp_free(&st);
  }
}

static void test_sampling_frequencies(void) {
  smp_params_t p;
  /* plain sampling at T = 1 over 6 ids */
  float l[6] = {0.1f, 1.2f, -0.5f, 0.7f, 2.0f, -3.0f};
  double want[6];
  double z = 0;
  for (int i = 0; i < 6; i++) z += exp(l[i]);
  for (int i = 0; i < 6; i++) want[i] = exp(l[i]) / z;
  smp_params_default(&p);
  check_sampling("T=1", l, 6, p, want, 20000);

  /* top-k 3 with a tie at the k-th: ids 4, 1 and both 0.7s */
  float lk[6] = {0.7f, 1.2f, -0.5f, 0.7f, 2.0f, -3.0f};
  z = exp(0.7) * 2 + exp(1.2) + exp(2.0);
  double wk[6] = {exp(0.7) / z, exp(1.2) / z, 0, exp(0.7) / z, exp(2.0) / z, 0};
  p.top_k = 3;
  check_sampling("top_k 3", lk, 6, p, wk, 20000);

  /* top-p 0.75 over 0.1 0.4 0.2 0.3 -> ids 1, 3, 2 */
  float lp[4] = {logf(0.1f), logf(0.4f), logf(0.2f), logf(0.3f)};
  double wp[4] = {0, 0.4 / 0.9, 0.2 / 0.9, 0.3 / 0.9};
  smp_params_default(&p);
  p.top_p = 0.75;
  check_sampling("top_p 0.75", lp, 4, p, wp, 20000);

  /* min-p 0.4 over 0.5 0.25 0.15 0.1 -> ids 0, 1 */
  float lm[4] = {logf(0.5f), logf(0.25f), logf(0.15f), logf(0.1f)};
  double wm[4] = {2.0 / 3, 1.0 / 3, 0, 0};
  smp_params_default(&p);
  p.min_p = 0.4;
  check_sampling("min_p 0.4", lm, 4, p, wm, 20000);

  /* a row longer than the draw's 64-id blocks: 16 groups of 16 ids, the frequencies of each group
   * against its mass (the grouping keeps expected counts large) */
  {
    enum { VB = 256, G = 16, N = 40000 };
    float lb[VB];
    double pb[VB], gw[G] = {0};
    z = 0;
    for (int i = 0; i < VB; i++) z += exp(lb[i] = (float)(1.5 * sin(0.37 * i) + (i % G == 3)));
    for (int i = 0; i < VB; i++) gw[i / G] += pb[i] = exp(lb[i]) / z;
    smp_params_default(&p);
    p.has_seed = 1;
    p.seed = 77;
    p.max_tokens = N;
    smp_state_t st;
    smp_workspace_t ws;
    T_REQUIRE(init_state(&st, &p, VB, NULL, 0, NULL, 0) == 0, "init");
    T_REQUIRE(smp_workspace_init(&ws, VB, &err) == 0, "ws");
    int hist[G] = {0};
    for (int t = 0; t < N; t++) {
      float row[VB];
      memcpy(row, lb, sizeof row);
      int32_t tok = 0;
      if (smp_sample(&st, &ws, row, &tok, &err)) break;
      hist[tok / G]++;
      smp_accept(&st, tok);
    }
    double chi2 = 0;
    for (int g = 0; g < G; g++) chi2 += (hist[g] - gw[g] * N) * (hist[g] - gw[g] * N) / (gw[g] * N);
    T_CHECK(chi2 < chi2_bound(G - 1), "V 256, 16 groups: chi-square %.2f (bound %.2f)", chi2, chi2_bound(G - 1));
    smp_workspace_free(&ws);
    smp_free(&st);
  }

  /* temperature 0.5 sharpens: probabilities proportional to exp(2 l) */
  float lt[3] = {0, 0.5f, 1.0f};
  z = 1 + exp(1.0) + exp(2.0);
  double wt[3] = {1 / z, exp(1.0) / z, exp(2.0) / z};
  smp_params_default(&p);
  p.temperature = 0.5;
  check_sampling("temperature 0.5", lt, 3, p, wt, 20000);
}

/* Draws n tokens of request st from the flat row and stores them. */
static void draw(smp_state_t *st, smp_workspace_t *ws, int V, int32_t *out, int n) {
  float row[64];
  for (int t = 0; t < n; t++) {
    for (int i = 0; i < V; i++) row[i] = 0.1f * (float)(i % 5);
    if (smp_sample(st, ws, row, &out[t], &err)) out[t] = -1;
    smp_accept(st, out[t] < 0 ? 0 : out[t]);
  }
}

static void test_seeds(void) {
  enum { V = 32, N = 60 };
  smp_params_t p;
  smp_params_default(&p);
  p.has_seed = 1;
  p.seed = 1234;
  p.max_tokens = 1000;
  p.top_p = 0.95;
  smp_state_t a, b, c, d;
  smp_workspace_t ws, ws2;
  T_REQUIRE(smp_workspace_init(&ws, V, &err) == 0 && smp_workspace_init(&ws2, V, &err) == 0, "ws");
  T_REQUIRE(init_state(&a, &p, V, NULL, 0, NULL, 0) == 0 && init_state(&b, &p, V, NULL, 0, NULL, 0) == 0, "init");
  smp_params_t q = p;
  q.seed = 99;
  T_REQUIRE(init_state(&c, &q, V, NULL, 0, NULL, 0) == 0, "init");
  int32_t sa[N], sb[N], sc[N];
  draw(&a, &ws, V, sa, N);
  /* b interleaved with c, one step each, c drawing from a different row and workspace between b's steps,
   * and b's steps computed in uneven "batches" */
  for (int t = 0; t < N;) {
    int chunk = 1 + t % 3;
    if (t + chunk > N) chunk = N - t;
    draw(&b, &ws2, V, sb + t, chunk);
    float other[V];
    for (int i = 0; i < V; i++) other[i] = (float)i * 0.01f;
    int32_t junk;
    smp_sample(&c, &ws, other, &junk, &err);
    smp_accept(&c, junk);
    t += chunk;
  }
  T_CHECK(memcmp(sa, sb, sizeof sa) == 0, "same seed, same tokens whatever else is drawn in between");
  smp_free(&c);
  T_REQUIRE(init_state(&c, &q, V, NULL, 0, NULL, 0) == 0, "init");
  draw(&c, &ws, V, sc, N);
  int same = 0;
  for (int t = 0; t < N; t++) same += sa[t] == sc[t];
  T_CHECK(same < N / 2, "different seeds differ: %d of %d equal", same, N);
  int distinct = 0;
  for (int i = 0; i < V; i++) {
    int seen = 0;
    for (int t = 0; t < N; t++) seen |= sa[t] == i;
    distinct += seen;
  }
  T_CHECK(distinct > 10, "a seeded request still samples: %d distinct ids", distinct);

  /* no seed: one is drawn and reported, and two requests get different ones */
  p.has_seed = 0;
  T_REQUIRE(init_state(&d, &p, V, NULL, 0, NULL, 0) == 0, "init");
  smp_state_t e;
  T_REQUIRE(init_state(&e, &p, V, NULL, 0, NULL, 0) == 0, "init");
  T_CHECK(d.seed != e.seed, "unseeded requests get different seeds: %llu", (unsigned long long)d.seed);
  /* the reported seed reproduces the request */
  smp_params_t r = p;
  r.has_seed = 1;
  r.seed = d.seed;
  smp_state_t f;
  T_REQUIRE(init_state(&f, &r, V, NULL, 0, NULL, 0) == 0, "init");
  int32_t sd[N], sf[N];
  draw(&d, &ws, V, sd, N);
  draw(&f, &ws, V, sf, N);
  T_CHECK(memcmp(sd, sf, sizeof sd) == 0, "the reported seed reproduces an unseeded request");
  smp_free(&a);
  smp_free(&b);
  smp_free(&c);
  smp_free(&d);
  smp_free(&e);
  smp_free(&f);
  smp_workspace_free(&ws);
  smp_workspace_free(&ws2);
}

int main(void) {
  test_philox();
  test_validation();
  test_greedy();
  test_repetition_penalty();
  test_presence_frequency();
  test_min_tokens_eos_length();
  test_filters_exact();
  test_filters_reference();
  test_sampling_frequencies();
  test_seeds();
  return t_finish();
}
