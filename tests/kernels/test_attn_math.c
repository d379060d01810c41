/* test_attn_math: the host/device helpers of the fast CUDA attention (kernels/cuda/attn_math.h) on the CPU, so
 * the index arithmetic and the softmax-state algebra of the GPU kernels are checked in CI without a GPU.
 *
 *   - merge: scores split at random into partitions (some empty, some fully masked), each absorbed tile by
 *     tile (random tile sizes) and the partial states merged in a random order, equals the one-pass softmax
 *     computed in double to 1e-6 of the weighted mean |v| (up to 1024 keys; sqrt(n / 1024) times that beyond);
 *   - empty and fully masked states and tiles are exact no-ops (bit for bit) and never make NaN;
 *   - the split plan's ranges over many (units, context, SM count, scratch cap, forced count) combinations,
 *     and the split ranges partition [0, n) exactly;
 *   - deterministic mode's fixed split size: the chunk fits the scratch and is minimal, a row's split ranges
 *     are the same under the plan of any step that contains it (and the heuristic's are not), and the
 *     rows one launch covers fit the scratch;
 *   - paged addressing through shuffled block tables at lengths 1, 15, 16, 17, 8191 against the test's own
 *     implementation of backend.h's layout (kernel_test.h: kt_kv_at), slots, rows -> sequences, causal limits.
 */
#include "kernel_test.h"

#include "cuda/attn_math.h"

/* ---- merge over random splits ---------------------------------------------------------------------------- */

/* out[D] = softmax(s · scale_log2, base 2) · v in double; masked keys (−inf) excluded. Also the weighted
 * absolute mean Σ w|v| / Σ w per column (the scale the float error is relative to). */
static void ref_softmax(double *out, double *absmean, const float *s, const float *v, int64_t n, int D, double sl) {
  double m = -INFINITY, sum = 0;
  for (int64_t j = 0; j < n; j++)
    if (s[j] != -INFINITY && s[j] * sl > m) m = s[j] * sl;
  for (int d = 0; d < D; d++) out[d] = absmean[d] = 0;
  for (int64_t j = 0; j < n; j++) {
    if (s[j] == -INFINITY) continue;
    double w = exp2(s[j] * sl - m);
    sum += w;
    for (int d = 0; d < D; d++) {
      out[d] += w * v[j * D + d];
      absmean[d] += w * fabs(v[j * D + d]);
    }
  }
  for (int d = 0; d < D; d++) {
    out[d] = sum > 0 ? out[d] / sum : 0;
    absmean[d] = sum > 0 ? absmean[d] / sum : 0;
  }
}

static double worst_merge; /* the largest relative error of any merge test, printed at the end */

/* One partition [k0, k1) absorbed in random tiles into (m, l, o). */
static void absorb_random_tiles(float *m, float *l, float *o, int D, const float *s, const float *v, int64_t k0,
                                int64_t k1, float sl) {
  for (int64_t j = k0; j < k1;) {
    int64_t t = 1 + kt_int(70);
    if (j + t > k1) t = k1 - j;
    attn_state_absorb(m, l, o, D, s + j, v + j * D, D, t, sl);
    j += t;
  }
}

static void test_merge(int64_t n, int D, float spread, float mask_frac, int positive_v, int trial) {
  float *s = malloc(sizeof(float) * (size_t)n), *v = malloc(sizeof(float) * (size_t)(n * D));
  double *ref = malloc(sizeof(double) * (size_t)D), *am = malloc(sizeof(double) * (size_t)D);
  float *o = malloc(sizeof(float) * (size_t)D), *po = malloc(sizeof(float) * (size_t)D);
  int64_t live = 0;
  for (int64_t j = 0; j < n; j++) {
    s[j] = kt_uniform(-spread, spread);
    if (kt_uniform(0, 1) < mask_frac) s[j] = -INFINITY;
    live += s[j] != -INFINITY;
  }
  if (!live && n > 0 && trial % 2) s[kt_int((int)n)] = 0.5f; /* half of the all-masked draws keep one key */
  kt_fill(v, n * D, positive_v ? 0.0f : -1.0f, 1.0f);
  float sl = 0.125f * ATTN_LOG2E; /* 1/sqrt(64) */
  ref_softmax(ref, am, s, v, n, D, sl);

  /* random cut points, empty partitions allowed, merged in a random order */
  int n_parts = 1 + kt_int(9);
  int64_t cuts[11];
  cuts[0] = 0;
  cuts[n_parts] = n;
  for (int i = 1; i < n_parts; i++) cuts[i] = n ? kt_int((int)n + 1) : 0;
  for (int i = 1; i < n_parts; i++) /* sort the inner cuts */
    for (int k = i + 1; k < n_parts; k++)
      if (cuts[k] < cuts[i]) {
        int64_t t = cuts[k];
        cuts[k] = cuts[i];
        cuts[i] = t;
      }
  int order[10];
  for (int i = 0; i < n_parts; i++) order[i] = i;
  for (int i = n_parts - 1; i > 0; i--) {
    int k = kt_int(i + 1), t = order[i];
    order[i] = order[k];
    order[k] = t;
  }
  float m = -INFINITY, l = 0;
  for (int d = 0; d < D; d++) o[d] = 0;
  for (int pi = 0; pi < n_parts; pi++) {
    int p = order[pi];
    float pm = -INFINITY, pl = 0;
    for (int d = 0; d < D; d++) po[d] = 0;
    absorb_random_tiles(&pm, &pl, po, D, s, v, cuts[p], cuts[p + 1], sl);
    T_CHECK(!isnan(pm) && !isnan(pl), "merge n=%lld part %d: NaN state", (long long)n, p);
    attn_state_merge(&m, &l, o, pm, pl, po, D);
  }
  float inv = attn_inv_l(l);
  /* 1e-6 of the weighted mean |v| up to 1024 keys; beyond, float sums of n terms drift like sqrt(n) */
  double tol = 1e-6 * (n > 1024 ? sqrt((double)n / 1024.0) : 1.0);
  int bad = 0;
  double worst = 0;
  for (int d = 0; d < D; d++) {
    double got = (double)o[d] * inv, err = fabs(got - ref[d]);
    double rel = err / (am[d] > 0 ? am[d] : 1e-30);
    if (am[d] == 0 ? err != 0 : !(rel <= tol)) bad++;
    if (rel > worst && am[d] > 0) worst = rel;
  }
  if (worst > worst_merge) worst_merge = worst;
  T_CHECK(bad == 0, "merge n=%lld D=%d spread=%g masked=%g parts=%d: %d columns off (worst relative %.3g)",
          (long long)n, D, (double)spread, (double)mask_frac, n_parts, bad, worst);
  free(s);
  free(v);
  free(ref);
  free(am);
  free(o);
  free(po);
}

/* ---- empty and fully masked states -------------------------------------------------------------------------- */

static void test_empty(void) {
  enum { D = 5 };
  float sl = 0.3f * ATTN_LOG2E;
  float v[3 * D];
  kt_fill(v, 3 * D, -1, 1);
  float s_live[3] = {0.7f, -2.0f, 3.1f}, s_dead[3] = {-INFINITY, -INFINITY, -INFINITY};

  /* a fully masked tile into an empty state leaves it empty, with no NaN */
  float m = -INFINITY, l = 0, o[D] = {0};
  attn_state_absorb(&m, &l, o, D, s_dead, v, D, 3, sl);
  T_CHECK(m == -INFINITY && l == 0 && o[0] == 0 && !isnan(o[D - 1]), "masked tile into empty: m %g l %g", (double)m,
          (double)l);
  T_CHECK(attn_inv_l(l) == 0 && (float)(o[0] * attn_inv_l(l)) == 0, "empty row output is 0");

  /* a fully masked tile into a live state is a bit-exact no-op */
  float m1 = -INFINITY, l1 = 0, o1[D] = {0};
  attn_state_absorb(&m1, &l1, o1, D, s_live, v, D, 3, sl);
  float m2 = m1, l2 = l1, o2[D];
  memcpy(o2, o1, sizeof o2);
  attn_state_absorb(&m2, &l2, o2, D, s_dead, v, D, 3, sl);
  T_CHECK(m2 == m1 && l2 == l1 && memcmp(o1, o2, sizeof o1) == 0, "masked tile into a live state changed it");

  /* merging an empty state either way is a bit-exact no-op; two empties stay empty */
  float e_o[D] = {0};
  float ma = m1, la = l1, oa[D];
  memcpy(oa, o1, sizeof oa);
  attn_state_merge(&ma, &la, oa, -INFINITY, 0, e_o, D);
  T_CHECK(ma == m1 && la == l1 && memcmp(oa, o1, sizeof oa) == 0, "live <- empty changed the state");
  float mb = -INFINITY, lb = 0, ob[D] = {0};
  attn_state_merge(&mb, &lb, ob, m1, l1, o1, D);
  T_CHECK(mb == m1 && lb == l1 && memcmp(ob, o1, sizeof ob) == 0, "empty <- live is not the live state");
  float mc = -INFINITY, lc = 0, oc[D] = {0};
  attn_state_merge(&mc, &lc, oc, -INFINITY, 0, e_o, D);
  T_CHECK(mc == -INFINITY && lc == 0 && !isnan(oc[0]), "empty <- empty: m %g l %g", (double)mc, (double)lc);

  /* the scalar pieces the kernels use directly */
  float alpha = -1;
  float mn = attn_online_max(-INFINITY, -INFINITY, sl, &alpha);
  T_CHECK(mn == -INFINITY && alpha == 0, "online max of two empties: %g, alpha %g", (double)mn, (double)alpha);
  mn = attn_online_max(2.0f, -INFINITY, sl, &alpha);
  T_CHECK(mn == 2.0f && alpha == 1.0f, "a masked tile must not move the max: %g, alpha %g", (double)mn, (double)alpha);
  T_CHECK(attn_p(-INFINITY, sl, attn_safe_max(-INFINITY)) == 0, "masked score weight");
  T_CHECK(attn_p(-INFINITY, sl, attn_safe_max(5.0f)) == 0, "masked score weight under a live max");
  float wa, wb;
  float M = attn_merge_max(-INFINITY, -INFINITY, &wa, &wb);
  T_CHECK(M == -INFINITY && wa == 0 && wb == 0, "merge weights of two empties: %g %g", (double)wa, (double)wb);
  M = attn_merge_max(1.5f, -INFINITY, &wa, &wb);
  T_CHECK(M == 1.5f && wa == 1.0f && wb == 0, "merge weights live/empty: %g %g", (double)wa, (double)wb);
}

/* ---- the split plan ------------------------------------------------------------------------------------------ */

static void test_split_plan(void) {
  static const int64_t units[] = {1, 2, 3, 7, 20, 32, 64, 100, 256, 640, 1024, 5000, 100000};
  static const int64_t ctxs[] = {1,   2,    15,   16,   17,   63,   64,   65,    255,   256,
                                 257, 1000, 1500, 2048, 4097, 8191, 8192, 32768, 100000};
  static const int sms[] = {1, 16, 108, 114, 132};
  static const int caps[] = {1, 2, 7, 40, 128, 1000};
  static const int wants[] = {0, 1, 3, 7, 200};
  int n_cases = 0, bad = 0;
  for (size_t ui = 0; ui < sizeof units / sizeof *units; ui++)
    for (size_t ci = 0; ci < sizeof ctxs / sizeof *ctxs; ci++)
      for (size_t si = 0; si < sizeof sms / sizeof *sms; si++)
        for (size_t ki = 0; ki < sizeof caps / sizeof *caps; ki++)
          for (size_t wi = 0; wi < sizeof wants / sizeof *wants; wi++) {
            int64_t u = units[ui], ctx = ctxs[ci];
            int sm = sms[si], cap = caps[ki], want = wants[wi];
            attn_split_t p = attn_split_plan(u, ctx, sm, cap, want);
            int64_t target = (int64_t)ATTN_TARGET_BLOCKS_PER_SM * sm;
            int64_t by_len = (ctx + ATTN_SPLIT_MIN_KEYS - 1) / ATTN_SPLIT_MIN_KEYS;
            int64_t limit = cap < ATTN_MAX_SPLITS ? cap : ATTN_MAX_SPLITS;
            int ok = p.n_splits >= 1 && p.n_splits <= (limit > 1 ? limit : 1) && p.chunk >= ATTN_SPLIT_ALIGN &&
                     p.chunk % ATTN_SPLIT_ALIGN == 0 && (int64_t)p.n_splits * p.chunk >= ctx &&
                     (int64_t)(p.n_splits - 1) * p.chunk < ctx;
            if (want > 0) {
              ok = ok && p.n_splits <= want;
            } else {
              ok = ok && u * p.n_splits < target + u && p.n_splits <= (by_len > 1 ? by_len : 1);
              if (u >= target) ok = ok && p.n_splits == 1;
              /* fills the GPU whenever neither the context nor the scratch limits it: rounding the chunk up to
               * ATTN_SPLIT_ALIGN keys costs at most a quarter of the splits where need · ALIGN <= ctx / 3 */
              int64_t need = (target + u - 1) / u;
              if (need <= by_len && need <= limit && 3 * need * ATTN_SPLIT_ALIGN <= ctx)
                ok = ok && u * p.n_splits >= target * 3 / 4;
            }
            /* the ranges of every context up to ctx partition [0, n) */
            static const int64_t ns[] = {1, 2, 15, 16, 17, 64, 65, 300, 1000, 2048, 8191};
            for (size_t k = 0; k < sizeof ns / sizeof *ns && ok; k++) {
              int64_t n = ns[k] < ctx ? ns[k] : ctx;
              int cnt = attn_split_count(n, p.chunk);
              ok = cnt >= 1 && cnt <= p.n_splits;
              int64_t next = 0;
              for (int sp = 0; sp < cnt && ok; sp++) {
                int64_t k0, k1;
                attn_split_range(n, p.chunk, sp, &k0, &k1);
                ok = k0 == next && k1 > k0 && k1 <= n;
                next = k1;
              }
              ok = ok && next == n;
            }
            if (!ok && bad++ < 5)
              fprintf(stderr, "  split plan units=%lld ctx=%lld sm=%d cap=%d want=%d -> %d splits of %d\n",
                      (long long)u, (long long)ctx, sm, cap, want, p.n_splits, p.chunk);
            n_cases++;
          }
  T_CHECK(bad == 0, "split plan: %d of %d combinations break its contract", bad, n_cases);

  /* the shapes of the issue on an H100 (132 SMs), with room for 128 splits */
  attn_split_t a = attn_split_plan(32, 8192, 132, 128, 0); /* batch 1, 32 heads, 8k */
  T_CHECK(a.n_splits >= 24 && a.n_splits <= 33, "batch 1 at 8k: %d splits of %d", a.n_splits, a.chunk);
  attn_split_t b = attn_split_plan(8 * 32, 2048, 132, 128, 0); /* batch 8 at 2k */
  T_CHECK(b.n_splits >= 3 && b.n_splits <= 8, "batch 8 at 2k: %d splits of %d", b.n_splits, b.chunk);
  attn_split_t c = attn_split_plan(64 * 32, 2048, 132, 128, 0); /* batch 64: the grid is full without splits */
  T_CHECK(c.n_splits == 1, "batch 64 at 2k: %d splits", c.n_splits);
  attn_split_t d = attn_split_plan(32, 60, 132, 128, 0); /* a short context is not split */
  T_CHECK(d.n_splits == 1 && d.chunk >= 60, "batch 1 at 60: %d splits of %d", d.n_splits, d.chunk);
}

/* ---- deterministic mode: the fixed split size --------------------------------------------------------------- */

/* The splits of a row with n visible keys under a launch plan, as the kernels derive them: count and ranges. */
static int row_splits(int64_t n, attn_split_t p, int64_t *k0s, int64_t *k1s, int cap) {
  int cnt = attn_split_count(n, p.chunk);
  for (int sp = 0; sp < cnt && sp < cap; sp++) attn_split_range(n, p.chunk, sp, &k0s[sp], &k1s[sp]);
  return cnt;
}

/* A recorded step graph launches attn_split_bound(units, longest allowed context) splits in z; every later step
 * of the bucket (same units, any shorter context, same scratch and forced count) must fit in that grid. */
static void test_split_bound(void) {
  uint64_t r = 0x9e3779b97f4a7c15ull;
  int bad = 0, cases = 0;
  for (int t = 0; t < 20000; t++) {
    r = r * 6364136223846793005ull + 1442695040888963407ull;
    int64_t units = 1 + (int64_t)((r >> 33) % 4096);
    int64_t max_ctx = 1 + (int64_t)((r >> 17) % 70000);
    int sm = 1 + (int)((r >> 7) % 160), cap = (int)((r >> 45) % 140), want = (r >> 60) & 1 ? (int)((r >> 3) % 40) : 0;
    int bound = attn_split_bound(units, max_ctx, sm, cap, want);
    for (int k = 0; k < 8; k++) {
      r = r * 6364136223846793005ull + 1442695040888963407ull;
      int64_t ctx = 1 + (int64_t)((r >> 20) % (uint64_t)max_ctx);
      attn_split_t p = attn_split_plan(units, ctx, sm, cap, want);
      int b2 = attn_split_bound(units, ctx, sm, cap, want);
      cases++;
      if (p.n_splits > bound || b2 > bound || p.n_splits > b2) {
        if (bad++ < 5)
          fprintf(stderr, "units %lld ctx %lld <= %lld sm %d cap %d want %d: plan %d, bound %d (own %d)\n",
                  (long long)units, (long long)ctx, (long long)max_ctx, sm, cap, want, p.n_splits, bound, b2);
      }
    }
  }
  T_CHECK(bad == 0, "split bound: %d of %d plans exceed the bound of the longest context", bad, cases);
  /* the bound is tight where it matters: one sequence of 32 heads on 132 SMs at 8k splits 33 ways (8 blocks per SM:
   * 1056 / 32; the 64-key minimum would allow 128) */
  T_CHECK(attn_split_bound(32, 8192, 132, 128, 0) == 33, "bound at batch 1, 8k: %d",
          attn_split_bound(32, 8192, 132, 128, 0));
  /* a batch-1 decode at the context of a 30 s clip (~800 keys) is split 13 ways (64 keys each: two passes of a
   * block), not 4 or 7 */
  T_CHECK(attn_split_plan(32, 800, 132, 128, 0).n_splits == 13 && attn_split_plan(32, 800, 132, 128, 0).chunk == 64,
          "batch 1 at 800: %d splits", attn_split_plan(32, 800, 132, 128, 0).n_splits);
}

static void test_det_split(void) {
  /* the chunk: a multiple of ATTN_DET_CHUNK, the smallest that fits the scratch */
  static const int64_t ctxs[] = {1, 15, 16, 511, 512, 513, 1000, 2048, 8191, 8192, 8193, 32768, 131072};
  static const int64_t caps[] = {-3, 0, 1, 2, 3, 7, 15, 16, 17, 128, 100000};
  int bad = 0, n_cases = 0;
  for (size_t ci = 0; ci < sizeof ctxs / sizeof *ctxs; ci++)
    for (size_t ki = 0; ki < sizeof caps / sizeof *caps; ki++) {
      int64_t ctx = ctxs[ci], cap = caps[ki] < 1 ? 1 : caps[ki];
      int c = attn_det_chunk(ctx, caps[ki]);
      int64_t splits = (ctx + c - 1) / c;
      int ok = c >= ATTN_DET_CHUNK && c % ATTN_DET_CHUNK == 0 && c % ATTN_SPLIT_ALIGN == 0 && splits <= cap;
      /* minimal: one ATTN_DET_CHUNK less would not fit */
      if (c > ATTN_DET_CHUNK) ok = ok && (ctx + (c - ATTN_DET_CHUNK) - 1) / (c - ATTN_DET_CHUNK) > cap;
      if (!ok && bad++ < 5) fprintf(stderr, "  det chunk ctx=%lld cap=%lld -> %d\n", (long long)ctx, (long long)cap, c);
      n_cases++;
    }
  T_CHECK(bad == 0, "det chunk: %d of %d combinations break its contract", bad, n_cases);
  T_CHECK(attn_det_chunk(8192, 128) == 512 && attn_det_chunk(8192, 16) == 512 && attn_det_chunk(8192, 15) == 1024 &&
              attn_det_chunk(8192, 1) == 8192 && attn_det_chunk(8193, 1) == 8704,
          "det chunk examples: %d %d %d %d %d", attn_det_chunk(8192, 128), attn_det_chunk(8192, 16),
          attn_det_chunk(8192, 15), attn_det_chunk(8192, 1), attn_det_chunk(8193, 1));

  /* a row's splits depend only on its own length: the same ranges under the plan of any step whose longest
   * context is >= its own (the batch's composition), for several chunks */
  static const int chunks[] = {512, 1024, 8704};
  static const int64_t ns[] = {1, 2, 63, 64, 65, 511, 512, 513, 1023, 1024, 1025, 4000, 8191, 8192};
  static const int64_t maxes[] = {8192, 8193, 9000, 20000};
  bad = 0;
  n_cases = 0;
  for (size_t ci = 0; ci < sizeof chunks / sizeof *chunks; ci++)
    for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++) {
      int64_t n = ns[ni];
      int64_t a0[64], a1[64], b0[64], b1[64];
      attn_split_t alone = attn_det_split_plan(n, chunks[ci]);
      int ca = row_splits(n, alone, a0, a1, 64);
      int ok = ca == alone.n_splits && ca <= 64; /* alone, the row is the longest: it uses every split */
      int64_t next = 0;
      for (int sp = 0; sp < ca && ok; sp++) {
        ok = a0[sp] == next && a1[sp] > a0[sp] && a0[sp] == (int64_t)sp * chunks[ci] &&
             (a1[sp] == n || a1[sp] - a0[sp] == chunks[ci]);
        next = a1[sp];
      }
      ok = ok && next == n;
      for (size_t mi = 0; mi < sizeof maxes / sizeof *maxes && ok; mi++) {
        attn_split_t in_batch = attn_det_split_plan(maxes[mi], chunks[ci]);
        int cb = row_splits(n, in_batch, b0, b1, 64);
        ok = in_batch.chunk == alone.chunk && cb == ca && cb <= in_batch.n_splits &&
             !memcmp(a0, b0, sizeof(int64_t) * (size_t)ca) && !memcmp(a1, b1, sizeof(int64_t) * (size_t)ca);
      }
      if (!ok && bad++ < 5) fprintf(stderr, "  det splits n=%lld chunk=%d differ with the batch\n", (long long)n, chunks[ci]);
      n_cases++;
    }
  T_CHECK(bad == 0, "det splits: %d of %d rows change with the batch", bad, n_cases);
  attn_split_t z = attn_det_split_plan(0, 512);
  T_CHECK(z.n_splits == 1 && z.chunk == 512, "det plan of an empty step: %d splits of %d", z.n_splits, z.chunk);

  /* the heuristic (default mode) does change a row's splits with the batch: what deterministic mode fixes */
  attn_split_t h1 = attn_split_plan(32, 8192, 132, 128, 0), h64 = attn_split_plan(64 * 32, 8192, 132, 128, 0);
  T_CHECK(h1.chunk != h64.chunk, "heuristic: batch 1 and batch 64 at 8k split alike (%d / %d keys)", h1.chunk,
          h64.chunk);

  /* rows per launch through a fixed scratch */
  static const int64_t rows[] = {1, 7, 64, 1000};
  static const size_t parts[] = {0, 1000, (size_t)1 << 20, (size_t)64 << 20};
  static const int splitss[] = {1, 2, 16, 300};
  bad = 0;
  n_cases = 0;
  for (size_t ri = 0; ri < sizeof rows / sizeof *rows; ri++)
    for (size_t pi = 0; pi < sizeof parts / sizeof *parts; pi++)
      for (size_t si = 0; si < sizeof splitss / sizeof *splitss; si++)
        for (int D = 64; D <= 128; D += 64) {
          int H = 32, ns_ = splitss[si];
          int64_t g = attn_det_rows_per_launch(rows[ri], parts[pi], H, D, ns_);
          size_t per_row = (size_t)H * (size_t)ns_ * (size_t)(D + 2) * sizeof(float);
          int ok = g >= 0 && g <= rows[ri];
          if (ns_ == 1)
            ok = ok && g == rows[ri];
          else
            ok = ok && (size_t)g * per_row <= parts[pi] && (g == rows[ri] || (size_t)(g + 1) * per_row > parts[pi]);
          if (!ok && bad++ < 5)
            fprintf(stderr, "  rows per launch rows=%lld part=%zu splits=%d D=%d -> %lld\n", (long long)rows[ri],
                    parts[pi], ns_, D, (long long)g);
          n_cases++;
        }
  T_CHECK(bad == 0, "rows per launch: %d of %d combinations wrong", bad, n_cases);

  /* the arrival counters of the in-kernel combine cover every launch with >= 2 splits that the scratch holds:
   * n_x (row or slot) x H pairs, each writing n_splits (D + 2) floats */
  bad = 0;
  n_cases = 0;
  for (size_t pi = 0; pi < sizeof parts / sizeof *parts; pi++)
    for (int D = 64; D <= 128; D += 64)
      for (int H = 1; H <= 32; H += 31)
        for (int ns_ = 2; ns_ <= 128; ns_ *= 4) {
          const int64_t slots = attn_arrival_slots(parts[pi], D);
          const size_t per_x = (size_t)H * (size_t)ns_ * (size_t)(D + 2) * sizeof(float);
          const int64_t n_x = (int64_t)(parts[pi] / per_x); /* the most rows such a launch can have */
          if (n_x * H > slots && bad++ < 5)
            fprintf(stderr, "  arrivals part=%zu D=%d H=%d splits=%d: %lld pairs > %lld counters\n", parts[pi], D, H,
                    ns_, (long long)(n_x * H), (long long)slots);
          n_cases++;
        }
  T_CHECK(bad == 0, "arrival counters: %d of %d launches not covered", bad, n_cases);
  T_CHECK(attn_arrival_slots((size_t)1 << 20, 0) == 0 && attn_arrival_slots(0, 128) == 0 &&
              attn_arrival_slots(2 * 130 * 4 * 10, 128) == 10,
          "arrival counters: the edge cases");
}

/* ---- paged addressing ------------------------------------------------------------------------------------------ */

static void test_addressing(void) {
  enum { L = 2, NB = 600, H = 3, D = 8 };
  static const int32_t lens[] = {1, 15, 16, 17, 8191};
  const int n_seqs = 5, max_blocks = 520;
  size_t pool_n = (size_t)L * NB * 2 * H * ES_KV_BLOCK * D;
  float *pool = malloc(sizeof(float) * pool_n);
  int32_t *table = calloc((size_t)n_seqs * max_blocks, sizeof(int32_t)), order[NB];
  kt_shuffled_blocks(order, NB);
  int next = 0, bad = 0;
  for (int s = 0; s < n_seqs; s++)
    for (int j = 0; j < (lens[s] + ES_KV_BLOCK - 1) / ES_KV_BLOCK; j++) table[s * max_blocks + j] = order[next++];
  for (int s = 0; s < n_seqs; s++) {
    const int32_t *row = table + s * max_blocks;
    for (int64_t j = 0; j < lens[s]; j++) {
      int32_t blk = row[j / ES_KV_BLOCK];
      for (int layer = 0; layer < L; layer++)
        for (int which = 0; which < 2; which++)
          for (int h = 0; h < H; h++) {
            int64_t want = kt_kv_at(pool, NB, H, D, layer, blk, which, h, (int)(j % ES_KV_BLOCK)) - pool;
            if (attn_kv_pos_offset(row, j, layer, NB, which, H, h, D) != want && bad++ < 5)
              fprintf(stderr, "  seq %d pos %lld layer %d kv %d head %d: offset %lld, want %lld\n", s, (long long)j,
                      layer, which, h, (long long)attn_kv_pos_offset(row, j, layer, NB, which, H, h, D),
                      (long long)want);
            /* the fp8 KV cache's scale of that row: index want / D in the [L][NB][2][H][16] scale pool */
            if (attn_kv_pos_offset(row, j, layer, NB, which, H, h, 1) * D != want && bad++ < 5)
              fprintf(stderr, "  seq %d pos %lld layer %d kv %d head %d: scale index %lld, want %lld\n", s,
                      (long long)j, layer, which, h, (long long)attn_kv_pos_offset(row, j, layer, NB, which, H, h, 1),
                      (long long)(want / D));
          }
      if (attn_slot(row, j) != (int64_t)blk * ES_KV_BLOCK + j % ES_KV_BLOCK && bad++ < 5)
        fprintf(stderr, "  seq %d pos %lld: slot %lld\n", s, (long long)j, (long long)attn_slot(row, j));
    }
  }
  T_CHECK(bad == 0, "paged addressing: %d mismatches", bad);
  /* offsets past 2^31 elements stay exact (64-bit before the strides) */
  int64_t big = attn_kv_offset(79, 60000, 59999, 1, 32, 31, 128, 15);
  T_CHECK(big == ((((79LL * 60000 + 59999) * 2 + 1) * 32 + 31) * 16 + 15) * 128, "64-bit offset %lld", (long long)big);

  /* rows -> sequences and causal limits, against kt_batch's positions */
  int32_t q_len[6] = {1, 7, 1, 16, 3, 17}, ctx[6] = {1, 40, 17, 16, 300, 17};
  kt_batch_t kb;
  int next2 = 0;
  kt_batch(&kb, 6, q_len, ctx, KT_MAX_BLOCKS, order, &next2);
  int bad2 = 0;
  for (int64_t i = 0; i < kb.b.n_tokens; i++) {
    int s = attn_seq_of_row(kb.q_start, 6, i);
    int lin = 0;
    while (!(kb.q_start[lin] <= i && i < kb.q_start[lin + 1])) lin++;
    if (s != lin || attn_causal_keys(ctx[s], q_len[s], i - kb.q_start[s]) != kb.pos[i] + 1 ||
        attn_slot(kb.table + s * KT_MAX_BLOCKS, kb.pos[i]) != kb.slot[i])
      bad2++;
  }
  T_CHECK(bad2 == 0, "rows -> sequences / causal limits / slots: %d mismatches", bad2);
  free(pool);
  free(table);
}

int main(void) {
  static const int64_t ns[] = {1, 2, 15, 16, 17, 64, 65, 100, 1000, 8191};
  int trial = 0;
  for (size_t i = 0; i < sizeof ns / sizeof *ns; i++)
    for (int k = 0; k < 6; k++, trial++) {
      float spread = k % 3 == 0 ? 1.0f : k % 3 == 1 ? 20.0f : 200.0f; /* 200: scores far apart (one key wins) */
      float masked = k < 3 ? 0.0f : (k == 3 ? 0.5f : (k == 4 ? 0.95f : 1.0f));
      test_merge(ns[i], 16, spread, masked, k % 2, trial);
    }
  printf("merge over random splits: worst error %.3g relative to the weighted mean |v|\n", worst_merge);
  test_empty();
  test_split_plan();
  test_split_bound();
  test_det_split();
  test_addressing();
  return t_finish();
}
