/* cpu_sample: the CPU backend's sampling ops and the serial sampling algorithm. See cpu_sample.h for the
 * algorithm (the specification the CUDA kernel parallelises) and backend.h for the ops' contract.
 *
 * Memory: the slot state (seen, gen_count, suppress lists), the prepared rows and one V-float weight scratch,
 * all allocated by cpu_sampler_init and freed with the backend (tracked blocks). The op allocates nothing.
 * Cost per row at V = 151,680: ~10 passes over the row (1 + 4 top-k + 1 + 4 top-p + 1 filter/draw), each a
 * few hundred microseconds; only the passes of the active filters run.
 */
#include "cpu_sample.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_backend.h"
#include "sample_math.h"

/* ---- the serial algorithm ------------------------------------------------------------------------------ */

/* Step 3: the key of the k-th largest finite logit (count radix select; at least k are finite). */
static uint32_t topk_threshold(const float *l, int V, uint32_t k) {
  uint32_t prefix = 0;
  uint64_t target = k;
  for (int pass = 0; pass < 4; pass++) {
    uint64_t hist[256];
    memset(hist, 0, sizeof hist);
    const uint32_t mask = smk_prefix_mask(pass);
    for (int i = 0; i < V; i++) {
      if (!(l[i] > -INFINITY)) continue;
      uint32_t key = smk_key(l[i]);
      if ((key & mask) == prefix) hist[smk_digit(key, pass)]++;
    }
    uint64_t above;
    int b = smk_select_bins(hist, 256, 0, 0, target, &above);
    ES_ASSERT(b >= 0); /* at least target candidates match the prefix, by the previous pass */
    prefix |= (uint32_t)b << (24 - 8 * pass);
    target -= above;
  }
  return prefix;
}

int cpu_sample_row(const es_sample_row_t *p, float *logits, int V, const cpu_sample_ctx_t *c, float *probs,
                   int32_t *token, int32_t *bad_id) {
  *token = -1;
  *bad_id = -1;
  /* 0. suppression (before the penalties or after: -inf stays -inf under both) */
  if (p->suppress)
    for (int s = 0; s < c->n_suppress; s++) logits[c->suppress[s]] = -INFINITY;
  /* 1. canonical NaN, penalties, max / first argmax, finite count */
  const int pen = p->repetition_penalty != 1.0f || p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f;
  float m = -INFINITY;
  int32_t arg = -1;
  int64_t n_finite = 0;
  for (int i = 0; i < V; i++) {
    float l = smk_canon(logits[i]);
    if (pen && c->seen)
      l = smk_penalize(l, c->seen[i], c->gen_count ? c->gen_count[i] : 0, p->repetition_penalty, p->presence_penalty,
                       p->frequency_penalty);
    logits[i] = l;
    if (l > m) {
      m = l;
      arg = i;
    }
    n_finite += l > -INFINITY && l < INFINITY;
  }
  if (arg < 0) return CPU_SAMPLE_NO_FINITE;
  if (isinf(m)) {
    *bad_id = arg;
    return CPU_SAMPLE_POS_INF;
  }
  /* 2. greedy */
  if ((double)p->temperature < SMK_GREEDY_EPS) {
    if (p->want_processed)
      for (int i = 0; i < V; i++)
        if (i != arg) logits[i] = -INFINITY;
    if (probs) {
      memset(probs, 0, (size_t)V * sizeof *probs);
      probs[arg] = 1.0f;
    }
    *token = arg;
    return CPU_SAMPLE_OK;
  }
  const float inv_t = smk_inv_temperature(p->temperature);
  float *w = c->w;
  for (int i = 0; i < V; i++) w[i] = smk_weight(logits[i], m, inv_t);
  /* 3. top-k */
  const int topk_on = p->top_k > 0 && p->top_k < V && n_finite >= p->top_k;
  const uint32_t kstar = topk_on ? topk_threshold(logits, V, (uint32_t)p->top_k) : 0;
  /* 4. top-p */
  const int topp_on = p->top_p < 1.0f;
  uint32_t wstar = 0;
  int64_t id_cut = -1;
  if (topp_on) {
    uint64_t total = 0;
    for (int i = 0; i < V; i++)
      if (smk_kept_topk(logits[i], topk_on, kstar)) total += smk_fx(w[i]);
    const uint64_t T = smk_top_p_target(p->top_p, total);
    uint64_t target = T, above_all = 0;
    for (int pass = 0; pass < 4; pass++) {
      uint64_t hist[256];
      memset(hist, 0, sizeof hist);
      const uint32_t mask = smk_prefix_mask(pass);
      for (int i = 0; i < V; i++) {
        if (!smk_kept_topk(logits[i], topk_on, kstar) || !(w[i] > 0.0f)) continue;
        uint32_t u = smk_f2u(w[i]);
        if ((u & mask) == wstar) hist[smk_digit(u, pass)] += smk_fx(w[i]);
      }
      uint64_t above;
      int b = smk_select_bins(hist, 256, 0, 0, target, &above);
      ES_ASSERT(b >= 0); /* the mass matching the prefix reaches the target, by the previous pass */
      wstar |= (uint32_t)b << (24 - 8 * pass);
      target -= above;
      above_all += above;
    }
    /* the lowest ids among the ties at W* until the target is reached */
    uint64_t ties = smk_ties_kept(T, above_all, smk_fx(smk_u2f(wstar)));
    for (int i = 0; i < V && ties > 0; i++)
      if (smk_kept_topk(logits[i], topk_on, kstar) && smk_f2u(w[i]) == wstar && --ties == 0) id_cut = i;
    ES_ASSERT(id_cut >= 0);
  }
  /* 5. min-p, the kept mass, the draw */
  const smk_filter_t f = {topk_on, kstar, topp_on, wstar, id_cut, p->min_p > 0.0f, p->min_p};
#define KEPT(i) smk_kept(&f, (i), logits[i], w[i])
  uint64_t mass = 0;
  for (int i = 0; i < V; i++)
    if (KEPT(i)) mass += smk_fx(w[i]);
  ES_ASSERT(mass > 0); /* the argmax (w = 1) survives every filter */
  const uint64_t target = smk_draw_target(smk_uniform(p->seed, (uint64_t)p->step), mass);
  uint64_t acc = 0;
  int32_t tok = -1;
  for (int i = 0; i < V && tok < 0; i++)
    if (KEPT(i) && (acc += smk_fx(w[i])) > target) tok = i;
  ES_ASSERT(tok >= 0); /* acc reaches mass > target */
  if (probs || p->want_processed) {
    const double scale = (double)mass * (1.0 / 8796093022208.0); /* the kept mass in units of w */
    for (int i = 0; i < V; i++) {
      int keep = KEPT(i) && w[i] > 0.0f;
      if (probs) probs[i] = keep ? (float)((double)w[i] / scale) : 0.0f;
      if (p->want_processed && !keep) logits[i] = -INFINITY;
    }
  }
#undef KEPT
  *token = tok;
  return CPU_SAMPLE_OK;
}

/* ---- the ops ------------------------------------------------------------------------------------------- */

static int alloc_tracked(cpu_backend_t *cb, size_t bytes, void **out, es_error_t *err) {
  return cb->base.ops->alloc(&cb->base, bytes, out, err); /* zeroed, tracked, freed at destroy */
}

int cpu_sampler_init(es_backend_t *be, es_error_t *err) {
  cpu_backend_t *cb = cpu_be(be);
  size_t S = (size_t)be->smp_slots, V = (size_t)be->smp_vocab;
  int rc;
  if ((rc = alloc_tracked(cb, S * V, (void **)&cb->smp_seen, err)) ||
      (rc = alloc_tracked(cb, S * V * sizeof(int32_t), (void **)&cb->smp_count, err)) ||
      (rc = alloc_tracked(cb, S * ES_SAMPLE_MAX_SUPPRESS * sizeof(int32_t), (void **)&cb->smp_supp, err)) ||
      (rc = alloc_tracked(cb, S * sizeof(int32_t), (void **)&cb->smp_n_supp, err)) ||
      (rc = alloc_tracked(cb, S * sizeof(es_sample_row_t), (void **)&cb->smp_rows, err)) ||
      (rc = alloc_tracked(cb, V * sizeof(float), (void **)&cb->smp_w, err)))
    return es_error_prefix(err, "sampler_init: ");
  return ES_OK;
}

int cpu_sampler_reset(es_backend_t *be, int slot, const int32_t *ids, int n_ids, const int32_t *gen_ids, int n_gen,
                      const int32_t *suppress_ids, int n_suppress, es_error_t *err) {
  (void)err;
  cpu_backend_t *cb = cpu_be(be);
  size_t V = (size_t)be->smp_vocab, off = (size_t)slot * V;
  uint8_t *seen = cb->smp_seen + off;
  int32_t *count = cb->smp_count + off;
  memset(seen, 0, V);
  memset(count, 0, V * sizeof *count);
  for (int i = 0; i < n_ids; i++) seen[ids[i]] = 1;
  for (int i = 0; i < n_gen; i++) {
    seen[gen_ids[i]] = 1;
    count[gen_ids[i]]++;
  }
  if (n_suppress)
    memcpy(cb->smp_supp + (size_t)slot * ES_SAMPLE_MAX_SUPPRESS, suppress_ids, (size_t)n_suppress * sizeof(int32_t));
  cb->smp_n_supp[slot] = n_suppress;
  return ES_OK;
}

int cpu_sample_prepare(es_backend_t *be, const es_sample_row_t *rows, int n, es_error_t *err) {
  (void)err;
  memcpy(cpu_be(be)->smp_rows, rows, (size_t)n * sizeof *rows);
  return ES_OK;
}

int cpu_op_sample(es_backend_t *be, float *logits, int n, int32_t *tokens, es_error_t *err) {
  cpu_backend_t *cb = cpu_be(be);
  const int V = be->smp_vocab;
  int rc = ES_OK;
  for (int r = 0; r < n; r++) {
    const es_sample_row_t *p = &cb->smp_rows[r];
    size_t off = (size_t)p->slot * (size_t)V;
    cpu_sample_ctx_t c = {cb->smp_seen + off, cb->smp_count + off,
                          cb->smp_supp + (size_t)p->slot * ES_SAMPLE_MAX_SUPPRESS, cb->smp_n_supp[p->slot], cb->smp_w};
    int32_t tok, bad;
    int st = cpu_sample_row(p, logits + (size_t)r * (size_t)V, V, &c, NULL, &tok, &bad);
    tokens[r] = tok;
    if (st == CPU_SAMPLE_OK) {
      cb->smp_seen[off + (size_t)tok] = 1;
      cb->smp_count[off + (size_t)tok]++;
    } else if (rc == ES_OK) { /* the first bad row names the error; the other rows are still sampled */
      rc = st == CPU_SAMPLE_NO_FINITE
               ? es_fail(err, ES_EINVAL, "sample: row %d (step %lld) has no finite logit", r, (long long)p->step)
               : es_fail(err, ES_EINVAL, "sample: row %d (step %lld): the logit of id %d is +inf", r,
                         (long long)p->step, bad);
    }
  }
  return rc;
}
