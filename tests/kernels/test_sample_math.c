/* test_sample_math: the sampling arithmetic shared by the host sampler and the backends' sample ops
 * (kernels/sample_math.h) and the CPU backend's serial sample algorithm (kernels/cpu/cpu_sample.c, the
 * specification the CUDA kernel parallelises), against the host sampler (model/sampler.c):
 *
 *   - helpers: the key map is monotone (and -0 ties +0), the digit selection on hand-made histograms, the
 *     top-p target, the draw target stays below the mass, the uniform is the host sampler's;
 *   - many random rows (V = 1, 2, 7, 64, 1000, 4099 and 151,680; smooth, peaked, heavily tied, masked with
 *     -inf and NaN, very wide, signed zeros), every filter combination (temperature incl. greedy, top-k,
 *     top-p, min-p), three penalty settings over prompt + generated ids, min_tokens suppression on and off:
 *     the kept set equals smp_distribution's exactly, every probability is within 1e-5 relative, the
 *     processed row (want_processed) is finite exactly on the kept set, without want_processed it equals
 *     the host sampler's processed row bit for bit (NaN read as -inf), greedy tokens are identical, and
 *     seeded tokens equal smp_sample's in >= 99% of draws (the rate is printed);
 *   - the CUDA kernel's parallel decomposition (strided argmax merged by warp butterflies, id chunks per thread
 *     and the exclusive scan that finds the chunk holding the draw's target or the top-p cut) with 1024
 *     simulated threads gives the serial answers, for V below, at and around multiples of 1024;
 *   - the backend ops end to end on the CPU backend: the slot state (sampler_reset, the counts es_op_sample
 *     adds) follows the host sampler's smp_accept over many steps, and the error rows.
 */
#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu_sample.h"
#include "sample_math.h"
#include "sample_test.h"
#include "sampler.h"
#include "test_util.h"

static es_error_t err;

/* ---- helpers ------------------------------------------------------------------------------------------- */

static void test_helpers(void) {
  /* the key map is monotone over a sorted list of floats, -0 and +0 share a key */
  const float xs[] = {-INFINITY, -FLT_MAX, -1e30f, -2.0f, -1.0f, -FLT_MIN, -1e-45f, 0.0f,
                      1e-45f,    FLT_MIN,  0.5f,   1.0f,  3.0f,  1e30f,    FLT_MAX, INFINITY};
  int n = (int)(sizeof xs / sizeof xs[0]);
  for (int i = 0; i + 1 < n; i++)
    T_CHECK(smk_key(xs[i]) < smk_key(xs[i + 1]), "key(%g) < key(%g)", (double)xs[i], (double)xs[i + 1]);
  T_CHECK(smk_key(-0.0f) == smk_key(0.0f), "-0 and +0 tie");
  for (int t = 0; t < 100000; t++) {
    float a = (float)(st_normal() * 100), b = (float)(st_normal() * 100);
    T_REQUIRE((a < b) == (smk_key(a) < smk_key(b)) && (a == b) == (smk_key(a) == smk_key(b)), "key order %g %g",
              (double)a, (double)b);
  }
  /* digit selection: bins 255 .. 0 hold 1 each; the 3rd from the top is bin 253 with 2 above */
  uint64_t h[256];
  for (int b = 0; b < 256; b++) h[b] = 1;
  uint64_t above = 0;
  T_CHECK(smk_select_bins(h, 256, 0, 0, 3, &above) == 253 && above == 2, "select 3rd: above %llu",
          (unsigned long long)above);
  memset(h, 0, sizeof h);
  h[7] = 5;
  h[200] = 2;
  T_CHECK(smk_select_bins(h, 256, 0, 0, 2, &above) == 200 && above == 0, "select within the top bin");
  T_CHECK(smk_select_bins(h, 256, 0, 0, 3, &above) == 7 && above == 2, "select past the top bin");
  T_CHECK(smk_select_bins(h, 256, 0, 0, 8, &above) == -1 && above == 7, "select past the end");
  /* split ranges, as the CUDA kernel's lanes do: same answer */
  for (int trial = 0; trial < 2000; trial++) {
    uint64_t tot = 0;
    for (int b = 0; b < 256; b++) tot += h[b] = st_uniform() < 0.3 ? (uint64_t)st_below(1000) : 0;
    if (!tot) continue;
    uint64_t target = 1 + (uint64_t)(st_uniform() * (double)tot);
    uint64_t a1, a2 = 0;
    int b1 = smk_select_bins(h, 256, 0, 0, target, &a1), b2 = -1;
    uint64_t acc = 0;
    for (int lane = 31; lane >= 0 && b2 < 0; lane--) {
      uint64_t s = 0;
      for (int b = 8 * lane; b < 8 * lane + 8; b++) s += h[b];
      if (acc + s >= target) b2 = smk_select_bins(h, 8 * lane + 8, 8 * lane, acc, target, &a2);
      acc += s;
    }
    T_REQUIRE(b1 == b2 && a1 == a2, "lane-split selection %d/%d", b1, b2);
  }
  /* targets */
  T_CHECK(smk_top_p_target(0.5f, 10) == 5 && smk_top_p_target(0.55f, 10) == 6 && smk_top_p_target(1.0f, 7) == 7,
          "top-p target rounds up");
  T_CHECK(smk_top_p_target(1e-30f, 7) == 1, "top-p target >= 1");
  T_CHECK(smk_ties_kept(10, 4, 3) == 2 && smk_ties_kept(10, 4, 2) == 3, "ties kept");
  uint64_t big = (uint64_t)1 << 62;
  T_CHECK(smk_draw_target(0.9999999999999999, big) < big && smk_draw_target(0.0, 5) == 0, "draw target < mass");
  for (int t = 0; t < 1000; t++) {
    uint64_t seed = (uint64_t)st_below(1 << 30) << 20, step = (uint64_t)st_below(100000);
    T_REQUIRE(smk_uniform(seed, step) == smp_uniform(seed, step), "uniform");
  }
  T_CHECK(smk_exp_neg(0.0f) == 1.0f && smk_exp_neg(-88.0f) == 0.0f && smk_exp_neg(NAN) == 0.0f, "exp_neg ends");
  for (int t = 0; t < 10000; t++) {
    float x = (float)(-87.0 * st_uniform());
    double e = exp((double)x);
    T_REQUIRE(fabs(smk_exp_neg(x) - e) <= 2e-7 * e, "exp_neg(%g)", (double)x);
  }
}

/* ---- the CUDA kernel's decomposition ---------------------------------------------------------------------
 * The kernel (kernels/cuda/cuda_sample.cu, one block of 1024 threads per row) splits the serial steps with
 * these helpers: a strided per-thread first argmax merged by warp butterflies, contiguous id chunks per thread
 * whose exclusive scan finds the one chunk holding the draw's target (or the top-p cut's tie rank). Run here
 * with 1024 simulated threads, they must give the serial answers for every V (V < 1024, not a multiple). */

enum { DEC_THREADS = 1024 };

/* One warp's xor butterfly as __shfl_xor_sync runs it: every lane reads its partner's value of the round. */
static void dec_butterfly(float *v, int32_t *a) {
  for (int o = 16; o > 0; o >>= 1) {
    float nv[32];
    int32_t na[32];
    for (int l = 0; l < 32; l++) {
      nv[l] = v[l], na[l] = a[l];
      if (smk_argmax_better(v[l ^ o], a[l ^ o], v[l], a[l])) nv[l] = v[l ^ o], na[l] = a[l ^ o];
    }
    memcpy(v, nv, sizeof nv);
    memcpy(a, na, sizeof na);
  }
}

static void test_decomposition(void) {
  static const int Vs[] = {1, 2, 7, 1000, 1023, 1024, 1025, 2047, 2048, 4099, 151680, 1 << 20};
  const int nV = (int)(sizeof Vs / sizeof Vs[0]);
  int vmax = 0;
  for (int k = 0; k < nV; k++) vmax = Vs[k] > vmax ? Vs[k] : vmax;
  float *l = malloc(sizeof(float) * (size_t)vmax);
  uint64_t *fx = malloc(sizeof(uint64_t) * (size_t)vmax), *cs = malloc(sizeof(uint64_t) * DEC_THREADS),
           *start = malloc(sizeof(uint64_t) * DEC_THREADS);
  T_REQUIRE(l && fx && cs && start, "memory");
  for (int k = 0; k < nV; k++) {
    const int V = Vs[k];
    /* the chunks tile [0, V) in thread order */
    int prev = 0, bad = 0;
    for (int t = 0; t < DEC_THREADS; t++) {
      int c0, c1;
      smk_chunk(V, DEC_THREADS, t, &c0, &c1);
      bad += c0 != prev || c1 < c0 || c1 - c0 > (V + DEC_THREADS - 1) / DEC_THREADS;
      prev = c1;
    }
    T_CHECK(!bad && prev == V, "V %d: the chunks do not tile the ids (%d bad, end %d)", V, bad, prev);
    for (int trial = 0; trial < (V > 200000 ? 2 : 12); trial++) {
      /* argmax: few distinct values (ties everywhere, -0 and +0, -inf), strided per thread then merged */
      static const float vals[] = {-INFINITY, -1.0f, -0.0f, 0.0f, 0.5f, 2.0f};
      const int nvals = trial % 3 == 0 ? 2 : 6;
      for (int i = 0; i < V; i++) l[i] = vals[st_below(nvals)];
      float m = -INFINITY;
      int32_t arg = -1;
      for (int i = 0; i < V; i++)
        if (l[i] > m) m = l[i], arg = i;
      float tv[DEC_THREADS], wv[32];
      int32_t ta[DEC_THREADS], wa[32];
      for (int t = 0; t < DEC_THREADS; t++) {
        tv[t] = -INFINITY, ta[t] = 0x7fffffff;
        for (int i = t; i < V; i += DEC_THREADS)
          if (l[i] > tv[t]) tv[t] = l[i], ta[t] = i;
      }
      for (int w = 0; w < 32; w++) {
        dec_butterfly(tv + 32 * w, ta + 32 * w);
        wv[w] = tv[32 * w + st_below(32)], wa[w] = ta[32 * w + st_below(32)]; /* every lane holds the result */
      }
      dec_butterfly(wv, wa);
      const int lane = st_below(32);
      T_REQUIRE(arg < 0 ? wv[lane] == -INFINITY
                        : wa[lane] == arg && smk_f2u(wv[lane]) == smk_f2u(m) && wv[0] == wv[31] && wa[0] == wa[31],
                "V %d: block argmax %d (%g), serial %d (%g)", V, wa[lane], (double)wv[lane], arg, (double)m);

      /* the draw: fixed-point masses (many zero: removed ids and weights under 2^-43), chunk sums, exclusive
       * scan, the one chunk holding the target walks its ids; and the top-p cut: the need-th tie by rank */
      uint64_t mass = 0;
      for (int i = 0; i < V; i++) {
        double u = st_uniform();
        fx[i] = u < 0.5 ? 0 : u < 0.6 ? (uint64_t)1 << 43 : (uint64_t)(st_uniform() * 1e12);
        mass += fx[i];
      }
      if (!mass) fx[V - 1] = 1, mass = 1;
      for (int t = 0; t < DEC_THREADS; t++) {
        int c0, c1;
        smk_chunk(V, DEC_THREADS, t, &c0, &c1);
        cs[t] = 0;
        for (int i = c0; i < c1; i++) cs[t] += fx[i];
        start[t] = t ? start[t - 1] + cs[t - 1] : 0;
      }
      T_REQUIRE(start[DEC_THREADS - 1] + cs[DEC_THREADS - 1] == mass, "V %d: the scan's total", V);
      for (int q = 0; q < 16; q++) {
        /* targets: the ends, chunk starts and the id just before one, random */
        const int t = st_below(DEC_THREADS);
        uint64_t target = q == 0   ? 0
                          : q == 1 ? mass - 1
                          : q < 6  ? (start[t] < mass ? start[t] : mass - 1)
                          : q < 9  ? (start[t] ? start[t] - 1 : 0)
                                   : smk_draw_target(st_uniform(), mass);
        int32_t serial = -1, chunked = -1, owners = 0;
        uint64_t acc = 0;
        for (int i = 0; i < V && serial < 0; i++)
          if ((acc += fx[i]) > target) serial = i;
        for (int th = 0; th < DEC_THREADS; th++) {
          if (!smk_chunk_holds(start[th], cs[th], target)) continue;
          owners++;
          int c0, c1;
          smk_chunk(V, DEC_THREADS, th, &c0, &c1);
          uint64_t a = start[th];
          for (int i = c0; i < c1; i++)
            if ((a += fx[i]) > target) {
              chunked = i;
              break;
            }
        }
        T_REQUIRE(owners == 1 && chunked == serial, "V %d: target %llu: %d owners, chunked %d, serial %d", V,
                  (unsigned long long)target, owners, chunked, serial);
      }
      /* the tie cut: ties are the ids with fx == 2^43 here; the need-th of them in id order */
      uint64_t n_ties = 0;
      for (int t = 0; t < DEC_THREADS; t++) {
        int c0, c1;
        smk_chunk(V, DEC_THREADS, t, &c0, &c1);
        cs[t] = 0;
        for (int i = c0; i < c1; i++) cs[t] += fx[i] == (uint64_t)1 << 43;
        start[t] = t ? start[t - 1] + cs[t - 1] : 0;
        n_ties += cs[t];
      }
      for (int q = 0; q < 4 && n_ties; q++) {
        const uint64_t need = q == 0 ? 1 : q == 1 ? n_ties : 1 + (uint64_t)(st_uniform() * (double)n_ties);
        int32_t serial = -1, chunked = -1, owners = 0;
        uint64_t k2 = 0;
        for (int i = 0; i < V && serial < 0; i++)
          if (fx[i] == (uint64_t)1 << 43 && ++k2 == need) serial = i;
        for (int th = 0; th < DEC_THREADS; th++) {
          if (!smk_chunk_holds(start[th], cs[th], need - 1)) continue;
          owners++;
          int c0, c1;
          smk_chunk(V, DEC_THREADS, th, &c0, &c1);
          uint64_t kk = start[th];
          for (int i = c0; i < c1; i++)
            if (fx[i] == (uint64_t)1 << 43 && ++kk == need) {
              chunked = i;
              break;
            }
        }
        T_REQUIRE(owners == 1 && chunked == serial, "V %d: tie %llu of %llu: %d owners, chunked %d, serial %d", V,
                  (unsigned long long)need, (unsigned long long)n_ties, owners, chunked, serial);
      }
    }
  }
  free(l), free(fx), free(cs), free(start);
}

/* ---- random rows against the host sampler ------------------------------------------------------------- */

typedef struct {
  int rows, kept_mismatch, prob_mismatch, proc_mismatch, greedy, greedy_same, draws, draws_same, errors;
} tally_t;

enum { MAXP = 24, MAXG = 12, N_EOS = 2, N_STOP = 3 };

/* One random row under combo c and penalty setting pv, compared in every way the header lists. */
static void compare_case(int V, int kind, int c, int pv, int min_tok, int n_draws, float *base, float *lr, float *lm,
                         float *l0, float *pr, float *pm, uint8_t *seen, int32_t *cnt, float *wscr, smp_workspace_t *ws,
                         tally_t *t) {
  st_fill_row(base, V, kind);
  es_sample_row_t row;
  st_combo(c, &row);
  static const float rep[3] = {1.0f, 1.25f, 0.75f}, pres[3] = {0.0f, 0.5f, -0.5f}, freq[3] = {0.0f, 0.25f, 1.0f};
  row.repetition_penalty = rep[pv];
  row.presence_penalty = pres[pv];
  row.frequency_penalty = freq[pv];
  /* prompt and generated ids (repeats among the generated ones); eos / stop ids outside them */
  int eos[N_EOS], stop[N_STOP], supp[N_EOS + N_STOP];
  for (int i = 0; i < N_EOS; i++) supp[i] = eos[i] = V - 1 - i < 0 ? 0 : V - 1 - i;
  for (int i = 0; i < N_STOP; i++) supp[N_EOS + i] = stop[i] = st_below(V);
  int n_p = st_below(MAXP + 1), n_g = st_below(MAXG + 1);
  int32_t prompt[MAXP], gen[MAXG];
  for (int i = 0; i < n_p; i++) prompt[i] = st_below(V);
  for (int i = 0; i < n_g; i++) {
    int32_t g = st_below(V < 8 ? V : 8) * (V / 8 > 0 ? V / 8 : 1) % V; /* few distinct: counts above 1 */
    int clash = 0;
    for (int e = 0; e < N_EOS + N_STOP; e++) clash |= supp[e] == g;
    gen[i] = clash ? -1 : g;
  }
  int k = 0;
  for (int i = 0; i < n_g; i++)
    if (gen[i] >= 0) gen[k++] = gen[i];
  n_g = k;
  smp_params_t p;
  smp_params_default(&p);
  p.temperature = row.temperature;
  p.top_k = row.top_k;
  p.top_p = row.top_p;
  p.min_p = row.min_p;
  p.repetition_penalty = row.repetition_penalty;
  p.presence_penalty = row.presence_penalty;
  p.frequency_penalty = row.frequency_penalty;
  p.has_seed = 1;
  p.seed = ((uint64_t)st_below(1 << 30) << 32) | (uint64_t)st_below(1 << 30);
  p.max_tokens = 1000;
  p.min_tokens = min_tok ? n_g + 1 : 0;
  p.n_stop_ids = N_STOP;
  for (int i = 0; i < N_STOP; i++) p.stop_ids[i] = stop[i];
  smp_state_t st;
  if (smp_init(&st, &p, V, eos, N_EOS, prompt, n_p, &err)) {
    T_CHECK(0, "smp_init: %s", err.msg);
    return;
  }
  for (int i = 0; i < n_g; i++) smp_accept(&st, gen[i]);
  memset(seen, 0, (size_t)V);
  memset(cnt, 0, (size_t)V * sizeof *cnt);
  for (int i = 0; i < n_p; i++) seen[prompt[i]] = 1;
  for (int i = 0; i < n_g; i++) {
    seen[gen[i]] = 1;
    cnt[gen[i]]++;
  }
  row.seed = st.seed;
  row.step = st.n_generated;
  row.suppress = st.n_generated < p.min_tokens;
  cpu_sample_ctx_t ctx = {seen, cnt, supp, N_EOS + N_STOP, wscr};
  t->rows++;

  memcpy(lr, base, (size_t)V * sizeof *lr);
  int rc_ref = smp_distribution(&st, ws, lr, pr, &err);
  row.want_processed = 1;
  memcpy(lm, base, (size_t)V * sizeof *lm);
  int32_t tok1, tok0, bad;
  int rc_m = cpu_sample_row(&row, lm, V, &ctx, pm, &tok1, &bad);
  if (rc_ref != ES_OK || rc_m != CPU_SAMPLE_OK) {
    t->errors++;
    T_CHECK((rc_ref != ES_OK) == (rc_m != CPU_SAMPLE_OK) && tok1 == -1, "V %d kind %d combo %d: errors %d / %d", V,
            kind, c, rc_ref, rc_m);
    smp_free(&st);
    return;
  }
  int km = 0, pmis = 0, proc = 0;
  for (int i = 0; i < V; i++) {
    km += (pr[i] > 0.0f) != (pm[i] > 0.0f);
    pmis += !(fabsf(pm[i] - pr[i]) <= 1e-5f * pr[i] + FLT_MIN);
    proc += (lm[i] > -INFINITY) != (pr[i] > 0.0f);
  }
  if (km || pmis || proc)
    fprintf(stderr, "V %d kind %d combo %d (T %g k %d p %g minp %g) pen %d: %d kept, %d probs, %d processed differ\n",
            V, kind, c, (double)row.temperature, row.top_k, (double)row.top_p, (double)row.min_p, pv, km, pmis, proc);
  t->kept_mismatch += km > 0;
  t->prob_mismatch += pmis > 0;
  t->proc_mismatch += proc > 0;
  /* without want_processed: the host sampler's processed row, bit for bit (NaN as -inf), and the same token */
  row.want_processed = 0;
  memcpy(l0, base, (size_t)V * sizeof *l0);
  cpu_sample_row(&row, l0, V, &ctx, NULL, &tok0, &bad);
  int same_row = 1;
  for (int i = 0; i < V; i++) {
    float a = lr[i] != lr[i] ? -INFINITY : lr[i];
    same_row &= memcmp(&a, &l0[i], sizeof a) == 0;
  }
  T_CHECK(same_row && tok0 == tok1, "V %d kind %d combo %d: the processed row or the token depends on want_processed",
          V, kind, c);
  /* draws: the host sampler's token for the same seed and step */
  for (int d = 0; d < n_draws; d++) {
    st.seed = row.seed = p.seed + (uint64_t)d * 7919u;
    memcpy(lr, base, (size_t)V * sizeof *lr);
    memcpy(l0, base, (size_t)V * sizeof *l0);
    int32_t th = -1, tb = -1;
    if (smp_sample(&st, ws, lr, &th, &err) || cpu_sample_row(&row, l0, V, &ctx, NULL, &tb, &bad)) {
      T_CHECK(0, "draw failed");
      break;
    }
    if (row.temperature < SMK_GREEDY_EPS) {
      t->greedy++;
      t->greedy_same += th == tb;
    } else {
      t->draws++;
      t->draws_same += th == tb;
    }
    T_CHECK(tb >= 0 && pm[tb] > 0.0f, "V %d combo %d: drew id %d outside the kept set", V, c, tb);
  }
  smp_free(&st);
}

static void test_rows(void) {
  static const int sizes[] = {1, 2, 7, 64, 1000, 4099, 151680};
  const int vmax = 151680;
  float *base = malloc(vmax * sizeof(float)), *lr = malloc(vmax * sizeof(float)), *lm = malloc(vmax * sizeof(float)),
        *l0 = malloc(vmax * sizeof(float)), *pr = malloc(vmax * sizeof(float)), *pm = malloc(vmax * sizeof(float)),
        *w = malloc(vmax * sizeof(float));
  uint8_t *seen = malloc(vmax);
  int32_t *cnt = malloc(vmax * sizeof(int32_t));
  T_REQUIRE(base && lr && lm && l0 && pr && pm && w && seen && cnt, "memory");
  tally_t t = {0};
  for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
    int V = sizes[si];
    smp_workspace_t ws;
    T_REQUIRE(smp_workspace_init(&ws, V, &err) == 0, "workspace");
    int big = V > 10000;
    for (int kind = 0; kind < ST_KINDS; kind++)
      for (int c = 0; c < ST_COMBOS; c++) {
        if (big && st_below(8) != 0) continue; /* the largest V: a random eighth of the combinations */
        for (int pv = 0; pv < 3; pv++) {
          if (big && pv != (c + kind) % 3) continue;
          compare_case(V, kind, c, pv, (c + pv) % 2, big ? 2 : 6, base, lr, lm, l0, pr, pm, seen, cnt, w, &ws, &t);
        }
      }
    smp_workspace_free(&ws);
  }
  printf("rows %d (errors %d): kept sets differ %d, probabilities differ %d, processed rows differ %d; greedy same "
         "%d/%d; seeded same %d/%d (%.3f%%)\n",
         t.rows, t.errors, t.kept_mismatch, t.prob_mismatch, t.proc_mismatch, t.greedy_same, t.greedy, t.draws_same,
         t.draws, 100.0 * t.draws_same / (t.draws ? t.draws : 1));
  T_CHECK(t.kept_mismatch == 0, "%d rows keep other ids than smp_distribution", t.kept_mismatch);
  T_CHECK(t.prob_mismatch == 0, "%d rows have probabilities off by more than 1e-5 relative", t.prob_mismatch);
  T_CHECK(t.proc_mismatch == 0, "%d processed rows are not finite exactly on the kept set", t.proc_mismatch);
  T_CHECK(t.greedy_same == t.greedy, "greedy differs in %d of %d", t.greedy - t.greedy_same, t.greedy);
  T_CHECK(t.draws > 1000 && t.draws_same >= 0.99 * t.draws, "seeded tokens agree in %d of %d", t.draws_same, t.draws);
  free(base), free(lr), free(lm), free(l0), free(pr), free(pm), free(w), free(seen), free(cnt);
}

/* ---- the ops on the CPU backend: slot state over steps, a preemption, errors, validation --------------- */

static void test_ops_steps(void) {
  enum { V = 3000, S = 3, STEPS = 48, NP = 30 };
  es_backend_opts_t o = {.compute_dtype = ES_DT_F32, .n_threads = 1, .max_tokens = 4, .max_seqs = 4, .max_blocks = 4};
  es_backend_t *be = NULL;
  T_REQUIRE(es_backend_create_cpu(&o, &be, &err) == 0, "cpu backend: %s", err.msg);
  T_REQUIRE(es_backend_sampler_init(be, S, V, &err) == 0, "sampler_init: %s", err.msg);
  T_CHECK(es_backend_sampler_init(be, S - 1, V, &err) == 0, "a second sampler_init that fits keeps the state");
  T_CHECK(es_backend_sampler_init(be, S + 1, V, &err) == ES_EINTERNAL, "a second sampler_init that does not fit");
  float *dev_logits = NULL;
  int32_t *dev_tok = NULL;
  T_REQUIRE(es_backend_alloc(be, sizeof(float) * S * V, (void **)&dev_logits, &err) == 0 &&
                es_backend_alloc(be, sizeof(int32_t) * S, (void **)&dev_tok, &err) == 0,
            "alloc");
  static float base[S][V], row[V];
  smp_params_t p[S];
  smp_state_t st[S];
  es_sample_row_t rows[S];
  int32_t prompt[S][NP], gen[S][STEPS];
  int eos[1] = {7}, diverged[S] = {0}, same = 0, total = 0;
  smp_workspace_t ws;
  T_REQUIRE(smp_workspace_init(&ws, V, &err) == 0, "workspace");
  for (int s = 0; s < S; s++) {
    smp_params_default(&p[s]);
    p[s].has_seed = 1;
    p[s].seed = 100 + (uint64_t)s;
    p[s].max_tokens = STEPS + 1;
    for (int i = 0; i < V; i++) base[s][i] = (float)(2.0 * st_normal());
    for (int i = 0; i < NP; i++) prompt[s][i] = st_below(V);
  }
  base[0][eos[0]] = 9.0f; /* the greedy request would stop at once without min_tokens */
  p[0].temperature = 0.0; /* greedy: the penalties move the argmax step after step */
  p[0].repetition_penalty = 1.25;
  p[0].frequency_penalty = 0.5;
  p[0].presence_penalty = 0.25;
  p[0].min_tokens = 6;
  p[0].ignore_eos = 1; /* no suppression of eos then, but the stop id is */
  p[0].stop_ids[0] = 11;
  p[0].n_stop_ids = 1;
  p[1].temperature = 1.0;
  p[1].top_k = 40;
  p[1].top_p = 0.875;
  p[1].frequency_penalty = 0.25;
  p[1].min_tokens = 5;
  p[2].temperature = 0.75;
  p[2].min_p = 0.0625;
  p[2].presence_penalty = 1.0;
  p[2].repetition_penalty = 0.75;
  for (int s = 0; s < S; s++) {
    T_REQUIRE(smp_init(&st[s], &p[s], V, eos, 1, prompt[s], NP, &err) == 0, "smp_init: %s", err.msg);
    int32_t supp[8];
    int ns = 0;
    if (!p[s].ignore_eos) supp[ns++] = eos[0];
    for (int i = 0; i < p[s].n_stop_ids; i++) supp[ns++] = p[s].stop_ids[i];
    T_REQUIRE(es_backend_sampler_reset(be, s, prompt[s], NP, NULL, 0, supp, p[s].min_tokens > 0 ? ns : 0, &err) == 0,
              "reset: %s", err.msg);
  }
  for (int t = 0; t < STEPS; t++) {
    if (t == STEPS / 2) { /* a preemption: slot 1 restarts from prompt + generated (and moves to nothing else) */
      int32_t supp[1] = {eos[0]};
      T_CHECK(es_backend_sampler_reset(be, 1, prompt[1], NP, gen[1], t, supp, 1, &err) == 0, "re-reset: %s", err.msg);
    }
    for (int s = 0; s < S; s++) {
      for (int i = 0; i < V; i++) row[i] = base[s][i] + (float)(0.05 * st_normal());
      T_REQUIRE(es_backend_write(be, dev_logits + (size_t)s * V, row, sizeof row, &err) == 0, "write");
      int32_t th;
      T_REQUIRE(smp_sample(&st[s], &ws, row, &th, &err) == 0, "smp_sample: %s", err.msg);
      gen[s][t] = th;
      memset(&rows[s], 0, sizeof rows[s]);
      rows[s].temperature = (float)p[s].temperature;
      rows[s].top_k = p[s].top_k;
      rows[s].top_p = (float)p[s].top_p;
      rows[s].min_p = (float)p[s].min_p;
      rows[s].repetition_penalty = (float)p[s].repetition_penalty;
      rows[s].presence_penalty = (float)p[s].presence_penalty;
      rows[s].frequency_penalty = (float)p[s].frequency_penalty;
      rows[s].suppress = st[s].n_generated < p[s].min_tokens;
      rows[s].seed = st[s].seed;
      rows[s].step = st[s].n_generated;
      rows[s].slot = s;
    }
    T_REQUIRE(es_backend_sample_prepare(be, rows, S, &err) == 0, "prepare: %s", err.msg);
    T_REQUIRE(es_op_sample(be, dev_logits, S, dev_tok, &err) == 0, "sample: %s", err.msg);
    int32_t tb[S];
    T_REQUIRE(es_backend_read(be, tb, dev_tok, sizeof tb, &err) == 0, "read");
    for (int s = 0; s < S; s++) {
      if (diverged[s]) continue;
      if (s == 0) {
        T_CHECK(tb[0] == gen[0][t], "greedy with penalties, step %d: backend %d, host %d", t, tb[0], gen[0][t]);
      } else {
        total++;
        same += tb[s] == gen[s][t];
      }
      if (tb[s] != gen[s][t]) diverged[s] = 1; /* the slot counted another token: the states part here */
      T_CHECK(smp_accept(&st[s], gen[s][t]) == SMP_FINISH_NONE, "request %d finished early at step %d", s, t);
    }
  }
  printf("ops over %d steps: sampled requests agree with the host sampler in %d of %d steps\n", STEPS, same, total);
  T_CHECK(same >= total - 1, "the backend's slot state drifts from the host sampler's: %d of %d", same, total);
  int distinct = 0;
  for (int t = 1; t < STEPS; t++) distinct += gen[0][t] != gen[0][t - 1];
  T_CHECK(distinct > 3, "the penalties changed the greedy argmax only %d times", distinct);

  /* error rows: the bad row gets -1 and an ES_EINVAL naming it; the other rows are sampled and counted */
  for (int i = 0; i < V; i++) row[i] = -INFINITY;
  T_REQUIRE(es_backend_write(be, dev_logits + V, row, sizeof row, &err) == 0, "write");
  row[5] = INFINITY;
  T_REQUIRE(es_backend_write(be, dev_logits + 2 * V, row, sizeof row, &err) == 0, "write");
  for (int i = 0; i < V; i++) row[i] = (float)st_normal();
  T_REQUIRE(es_backend_write(be, dev_logits, row, sizeof row, &err) == 0, "write");
  for (int s = 0; s < S; s++) rows[s].suppress = 0;
  T_REQUIRE(es_backend_sample_prepare(be, rows, S, &err) == 0, "prepare: %s", err.msg);
  int rc = es_op_sample(be, dev_logits, S, dev_tok, &err);
  int32_t tb[S];
  T_REQUIRE(es_backend_read(be, tb, dev_tok, sizeof tb, &err) == 0, "read");
  T_CHECK(rc == ES_EINVAL && strstr(err.msg, "row 1") && strstr(err.msg, "no finite"), "error message: %s", err.msg);
  T_CHECK(tb[0] >= 0 && tb[1] == -1 && tb[2] == -1, "tokens %d %d %d", tb[0], tb[1], tb[2]);
  T_CHECK(es_backend_healthy(be), "a bad row does not make the backend unusable");

  /* validation */
  rows[1].slot = 0;
  T_CHECK(es_backend_sample_prepare(be, rows, S, &err) == ES_EINVAL && strstr(err.msg, "share slot"), "shared slots");
  rows[1].slot = 1;
  T_CHECK(es_op_sample(be, dev_logits, 2, dev_tok, &err) == ES_EINVAL, "n differs from the prepare");
  rows[2].top_p = 0.0f;
  T_CHECK(es_backend_sample_prepare(be, rows, S, &err) == ES_EINVAL && strstr(err.msg, "top_p"), "top_p 0: %s",
          err.msg);
  T_CHECK(es_op_sample(be, dev_logits, S, dev_tok, &err) == ES_EINVAL, "no sample after a failed prepare");
  rows[2].top_p = 1.0f;
  rows[2].slot = S;
  T_CHECK(es_backend_sample_prepare(be, rows, S, &err) == ES_EINVAL, "slot out of range");
  int32_t bad_id[1] = {V};
  T_CHECK(es_backend_sampler_reset(be, 0, bad_id, 1, NULL, 0, NULL, 0, &err) == ES_EINVAL && strstr(err.msg, "3000"),
          "reset id outside V: %s", err.msg);
  int32_t many[ES_SAMPLE_MAX_SUPPRESS + 1] = {0};
  T_CHECK(es_backend_sampler_reset(be, 0, NULL, 0, NULL, 0, many, ES_SAMPLE_MAX_SUPPRESS + 1, &err) == ES_EINVAL,
          "too many suppress ids");
  for (int s = 0; s < S; s++) smp_free(&st[s]);
  smp_workspace_free(&ws);
  es_backend_free(be);
}

int main(void) {
  test_helpers();
  test_decomposition();
  test_rows();
  test_ops_steps();
  return t_finish();
}
