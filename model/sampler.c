/* sampler: logits row -> token, and the finish reasons a token causes. See sampler.h for the pipeline,
 * the references and the differences from vLLM.
 *
 * Cost per step for V = 156,032 (bench_sampler prints the numbers): the penalties touch only the
 * distinct ids seen; the max is a vectorised reduction; top-k finds the k-th largest logit with a size-k
 * min-heap, skipping 16-id blocks wholly below its minimum, and exponentiates only the survivors; without
 * top-k the row is exponentiated once (a branch-free, vectorised exp); top-p then histograms the mass
 * per fp32 exponent to find the binade holding the boundary and runs a mass-weighted quickselect only
 * on the ids above it (no sort); the draw walks the kept ids, skipping 64-id blocks by their sums.
 */
#include "sampler.h"

#include "sample_math.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

void smp_params_default(smp_params_t *p) {
  memset(p, 0, sizeof *p);
  p->temperature = 1.0;
  p->top_k = 0;
  p->top_p = 1.0;
  p->min_p = 0.0;
  p->repetition_penalty = 1.0;
  p->max_tokens = 16; /* vLLM SamplingParams' default */
}

int smp_params_validate(const smp_params_t *p, int vocab, es_error_t *err) {
  /* The ranges are vLLM's SamplingParams._verify_args, with OpenAI's [-2, 2] for the two penalties.
   * The !(x op y) spellings reject NaN too. */
  if (!(p->temperature >= 0.0) || isinf(p->temperature))
    return es_fail(err, ES_EINVAL, "temperature must be a finite number >= 0, got %g", p->temperature);
  if (p->top_k < -1)
    return es_fail(err, ES_EINVAL, "top_k must be -1 or 0 (disabled) or >= 1, got %d", p->top_k);
  if (!(p->top_p > 0.0 && p->top_p <= 1.0))
    return es_fail(err, ES_EINVAL, "top_p must be in (0, 1], got %g", p->top_p);
  if (!(p->min_p >= 0.0 && p->min_p <= 1.0))
    return es_fail(err, ES_EINVAL, "min_p must be in [0, 1], got %g", p->min_p);
  if (!(p->repetition_penalty > 0.0) || isinf(p->repetition_penalty))
    return es_fail(err, ES_EINVAL, "repetition_penalty must be a finite number > 0, got %g", p->repetition_penalty);
  if (!(p->presence_penalty >= -2.0 && p->presence_penalty <= 2.0))
    return es_fail(err, ES_EINVAL, "presence_penalty must be in [-2, 2], got %g", p->presence_penalty);
  if (!(p->frequency_penalty >= -2.0 && p->frequency_penalty <= 2.0))
    return es_fail(err, ES_EINVAL, "frequency_penalty must be in [-2, 2], got %g", p->frequency_penalty);
  if (p->max_tokens < 1) return es_fail(err, ES_EINVAL, "max_tokens must be >= 1, got %d", p->max_tokens);
  if (p->min_tokens < 0) return es_fail(err, ES_EINVAL, "min_tokens must be >= 0, got %d", p->min_tokens);
  if (p->min_tokens > p->max_tokens)
    return es_fail(err, ES_EINVAL, "min_tokens (%d) must not exceed max_tokens (%d)", p->min_tokens, p->max_tokens);
  if (p->n_stop_ids < 0 || p->n_stop_ids > SMP_MAX_STOP_IDS)
    return es_fail(err, ES_ETOOBIG, "stop_token_ids: at most %d ids, got %d", SMP_MAX_STOP_IDS, p->n_stop_ids);
  for (int i = 0; i < p->n_stop_ids; i++)
    if (p->stop_ids[i] < 0 || p->stop_ids[i] >= vocab)
      return es_fail(err, ES_EINVAL, "stop_token_ids[%d] = %d is outside the vocabulary [0, %d)", i, p->stop_ids[i],
                     vocab);
  return ES_OK;
}

/* ---- penalty table: distinct ids of prompt + generated ---- */

static int32_t *slot_of(const smp_state_t *st, int32_t id) {
  uint32_t h = (uint32_t)id * 2654435761u; /* Knuth's multiplicative hash; ids are small and dense */
  h ^= h >> 15;
  uint32_t mask = (uint32_t)st->n_slots - 1;
  for (uint32_t i = h & mask;; i = (i + 1) & mask) {
    int32_t s = st->slots[i];
    if (s < 0 || st->counts[s].id == id) return &st->slots[i];
  }
}

static smp_count_t *count_of(smp_state_t *st, int32_t id) {
  int32_t *slot = slot_of(st, id);
  if (*slot < 0) {
    /* cap_counts >= min(V, prompt + max_tokens) distinct ids, and the table is at most half full. */
    ES_ASSERT(st->n_counts < st->cap_counts);
    *slot = st->n_counts;
    st->counts[st->n_counts].id = id;
    st->counts[st->n_counts].gen_count = 0;
    st->n_counts++;
  }
  return &st->counts[*slot];
}

static uint64_t fresh_seed(void) {
  uint64_t s = 0;
  if (getrandom(&s, sizeof s, 0) == (ssize_t)sizeof s) return s;
  /* getrandom does not fail for 8 bytes once the pool is up; if it ever does, an unseeded request
   * needs variety, not secrecy: the clock, mixed by SplitMix64's finaliser. */
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  s = ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) + 0x9E3779B97F4A7C15ull;
  s = (s ^ (s >> 30)) * 0xBF58476D1CE4E5B9ull;
  s = (s ^ (s >> 27)) * 0x94D049BB133111EBull;
  return s ^ (s >> 31);
}

int smp_init(smp_state_t *st, const smp_params_t *p, int vocab, const int *eos_ids, int n_eos,
             const int32_t *prompt_ids, int n_prompt, es_error_t *err) {
  memset(st, 0, sizeof *st);
  st->last_stop_id = -1;
  if (vocab < 1) return es_fail(err, ES_EINVAL, "sampler: vocabulary size %d", vocab);
  if (n_eos < 0 || n_eos > SMP_MAX_EOS_IDS)
    return es_fail(err, ES_EINVAL, "sampler: %d eos ids (at most %d)", n_eos, SMP_MAX_EOS_IDS);
  if (n_eos > 0 && !eos_ids) return es_fail(err, ES_EINVAL, "sampler: %d eos ids and no array", n_eos);
  if (n_prompt < 0 || (n_prompt > 0 && !prompt_ids))
    return es_fail(err, ES_EINVAL, "sampler: bad prompt (%d ids)", n_prompt);
  int rc = smp_params_validate(p, vocab, err);
  if (rc) return rc;
  for (int i = 0; i < n_eos; i++)
    if (eos_ids[i] < 0 || eos_ids[i] >= vocab)
      return es_fail(err, ES_EINVAL, "sampler: eos id %d is outside the vocabulary [0, %d)", eos_ids[i], vocab);
  st->p = *p;
  st->vocab = vocab;
  if (n_eos > 0) memcpy(st->eos_ids, eos_ids, (size_t)n_eos * sizeof *eos_ids);
  st->n_eos = n_eos;
  st->seed = p->has_seed ? p->seed : fresh_seed();
  st->penalties = p->repetition_penalty != 1.0 || p->presence_penalty != 0.0 || p->frequency_penalty != 0.0;
  if (!st->penalties) return ES_OK;

  long long bound = (long long)n_prompt + p->max_tokens;
  st->cap_counts = bound < vocab ? (int)bound : vocab;
  st->n_slots = 16;
  while (st->n_slots < 2 * st->cap_counts) st->n_slots *= 2;
  st->counts = malloc((size_t)st->cap_counts * sizeof *st->counts);
  st->slots = malloc((size_t)st->n_slots * sizeof *st->slots);
  if (!st->counts || !st->slots) {
    rc = es_fail(err, ES_ENOMEM, "sampler: penalty table for %d ids", st->cap_counts);
    goto fail;
  }
  memset(st->slots, 0xff, (size_t)st->n_slots * sizeof *st->slots); /* all -1 */
  for (int i = 0; i < n_prompt; i++) {
    if (prompt_ids[i] < 0 || prompt_ids[i] >= vocab) {
      rc = es_fail(err, ES_EINVAL, "sampler: prompt id %d at position %d is outside the vocabulary [0, %d)",
                   prompt_ids[i], i, vocab);
      goto fail;
    }
    count_of(st, prompt_ids[i]);
  }
  return ES_OK;
fail:
  smp_free(st);
  return rc;
}

void smp_free(smp_state_t *st) {
  if (!st) return;
  free(st->counts);
  st->counts = NULL;
  free(st->slots);
  st->slots = NULL;
  st->n_counts = st->cap_counts = st->n_slots = 0;
}

int smp_workspace_init(smp_workspace_t *ws, int vocab, es_error_t *err) {
  memset(ws, 0, sizeof *ws);
  if (vocab < 1) return es_fail(err, ES_EINVAL, "sampler workspace: vocabulary size %d", vocab);
  ws->w = malloc((size_t)vocab * sizeof *ws->w);
  ws->ids = malloc((size_t)vocab * sizeof *ws->ids);
  ws->dense = malloc((size_t)vocab * sizeof *ws->dense);
  if (!ws->w || !ws->ids || !ws->dense) {
    smp_workspace_free(ws);
    return es_fail(err, ES_ENOMEM, "sampler workspace for %d ids", vocab);
  }
  ws->vocab = vocab;
  return ES_OK;
}

void smp_workspace_free(smp_workspace_t *ws) {
  if (!ws) return;
  free(ws->w);
  ws->w = NULL;
  free(ws->ids);
  ws->ids = NULL;
  free(ws->dense);
  ws->dense = NULL;
  ws->vocab = 0;
}

/* ---- the random stream: one definition, shared with the backends' sample ops (kernels/sample_math.h) ---- */

void smp_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
  smk_philox4x32_10(ctr, key, out);
}

double smp_uniform(uint64_t seed, uint64_t step) { return smk_uniform(seed, step); }

/* ---- selection helpers ---- */

/* The k-th largest finite logit, with heap (k floats) as a min-heap; -inf when fewer than k are finite.
 * NaN and -inf never enter. */
static inline void heap_offer(float *heap, int k, int *h, float x) {
  if (*h < k) {
    int j = (*h)++;
    while (j > 0 && heap[(j - 1) / 2] > x) {
      heap[j] = heap[(j - 1) / 2];
      j = (j - 1) / 2;
    }
    heap[j] = x;
  } else if (x > heap[0]) {
    int j = 0;
    for (;;) {
      int c = 2 * j + 1;
      if (c >= k) break;
      if (c + 1 < k && heap[c + 1] < heap[c]) c++;
      if (heap[c] >= x) break;
      heap[j] = heap[c];
      j = c;
    }
    heap[j] = x;
  }
}

static float kth_largest(const float *l, int V, int k, float *heap) {
  int h = 0, i = 0;
  /* Once the heap is full, almost every block of 16 lies wholly below its minimum: a vectorised
   * any-greater test skips it. */
  for (; i + 16 <= V; i += 16) {
    if (h == k) {
      const float thr = heap[0];
      int any = 0;
      for (int j = 0; j < 16; j++) any |= l[i + j] > thr;
      if (!any) continue;
    }
    for (int j = 0; j < 16; j++)
      if (l[i + j] > -INFINITY) heap_offer(heap, k, &h, l[i + j]); /* NaN and -inf never enter */
  }
  for (; i < V; i++)
    if (l[i] > -INFINITY) heap_offer(heap, k, &h, l[i]);
  return h < k ? -INFINITY : heap[0];
}

/* Ranking for top-p: more probable first, and the lower id first among equal probabilities, so the
 * nucleus is the same set whatever order the candidates arrive in. */
static inline int ranks_above(float wa, int32_t ia, float wb, int32_t ib) { return wa > wb || (wa == wb && ia < ib); }

static inline void swap_at(float *w, int32_t *ids, int a, int b) {
  float tw = w[a];
  w[a] = w[b];
  w[b] = tw;
  int32_t ti = ids[a];
  ids[a] = ids[b];
  ids[b] = ti;
}

/* Reorders (w, ids)[0, n) so that its first K entries are the top-p nucleus: the minimal prefix of the
 * ranking whose mass reaches target (= top_p * total mass). A quickselect on mass instead of rank:
 * partition around a pivot, and descend into whichever side holds the boundary. Returns K >= 1 and
 * stores the nucleus mass in *kept. */
static int nucleus(float *w, int32_t *ids, int n, double target, double *kept) {
  int lo = 0, hi = n; /* undecided range; [0, lo) is in the nucleus, [hi, n) is out */
  double acc = 0.0;   /* mass of [0, lo); always < target */
  while (lo < hi) {
    /* median of three as pivot, moved to hi - 1 */
    int mid = lo + (hi - lo) / 2, last = hi - 1;
    if (ranks_above(w[mid], ids[mid], w[lo], ids[lo])) swap_at(w, ids, mid, lo);
    if (ranks_above(w[last], ids[last], w[lo], ids[lo])) swap_at(w, ids, last, lo);
    if (ranks_above(w[mid], ids[mid], w[last], ids[last])) swap_at(w, ids, mid, last);
    float pw = w[last];
    int32_t pi = ids[last];
    int store = lo;
    double above = 0.0;
    for (int j = lo; j < last; j++) {
      if (ranks_above(w[j], ids[j], pw, pi)) {
        above += w[j];
        swap_at(w, ids, j, store++);
      }
    }
    swap_at(w, ids, store, last); /* pivot at store; [lo, store) ranks above it */
    if (acc + above >= target) {
      hi = store; /* the boundary is strictly above the pivot; [lo, store) is not empty since acc < target */
      continue;
    }
    acc += above + pw;
    lo = store + 1;
    if (acc >= target) break; /* the pivot is the last id of the nucleus */
  }
  /* lo == hi without reaching target only by rounding; everything up to lo is kept then. */
  *kept = acc;
  return lo > 0 ? lo : 1;
}

/* ---- the step ---- */

/* Sum of w[0, n) in double, four independent chains (a single chain is latency-bound). */
static double sum_weights(const float *w, int n) {
  double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  int i = 0;
  for (; i + 4 <= n; i += 4) {
    a0 += w[i];
    a1 += w[i + 1];
    a2 += w[i + 2];
    a3 += w[i + 3];
  }
  for (; i < n; i++) a0 += w[i];
  return (a0 + a1) + (a2 + a3);
}

/* Inverse CDF: the first j whose running sum of w[0..j] exceeds target, skipping whole blocks whose sum
 * keeps it below; the last positive weight if rounding runs off the end; -1 if none is positive. */
static int walk(const float *w, int n, double target) {
  enum { BLOCK = 64 };
  double acc = 0.0;
  int j = 0, last = -1;
  for (; j + BLOCK <= n; j += BLOCK) {
    double bs = sum_weights(w + j, BLOCK);
    if (acc + bs > target) break;
    acc += bs;
    if (bs > 0.0)
      for (int q = j + BLOCK - 1; q >= j; q--)
        if (w[q] > 0.0f) {
          last = q;
          break;
        }
  }
  for (; j < n; j++) {
    if (w[j] <= 0.0f) continue;
    last = j;
    acc += w[j];
    if (acc > target) break;
  }
  return last;
}

static void apply_penalties(const smp_state_t *st, float *logits) {
  const float rep = (float)st->p.repetition_penalty;
  const float presence = (float)st->p.presence_penalty, frequency = (float)st->p.frequency_penalty;
  for (int i = 0; i < st->n_counts; i++) {
    const smp_count_t *c = &st->counts[i];
    logits[c->id] = smk_penalize(logits[c->id], 1, c->gen_count, rep, presence, frequency);
  }
}

static int is_eos(const smp_state_t *st, int32_t id) {
  for (int i = 0; i < st->n_eos; i++)
    if (st->eos_ids[i] == id) return 1;
  return 0;
}

static int is_stop_id(const smp_state_t *st, int32_t id) {
  for (int i = 0; i < st->p.n_stop_ids; i++)
    if (st->p.stop_ids[i] == id) return 1;
  return 0;
}

/* Steps 1-8 of the pipeline. Greedy: *greedy = the argmax. Otherwise *greedy = -1 and either *dense = 0 and
 * (ws->w, ws->ids)[0, *n) hold the kept ids with their unnormalised weights, or *dense = 1 and ws->w[0, V)
 * is indexed by id (0 for removed ids); the weights sum to *mass. */
static int prepare(smp_state_t *st, smp_workspace_t *ws, float *logits, int32_t *greedy, int *dense, int *n_out,
                   double *mass_out, es_error_t *err) {
  const int V = st->vocab;
  if (st->finish != SMP_FINISH_NONE)
    return es_fail(err, ES_EINVAL, "sampler: the request already finished (%s)", smp_finish_name(st->finish));
  if (ws->vocab != V)
    return es_fail(err, ES_EINVAL, "sampler: workspace for %d ids, request for %d", ws->vocab, V);

  if (st->penalties) apply_penalties(st, logits);
  if (st->n_generated < st->p.min_tokens) {
    if (!st->p.ignore_eos)
      for (int i = 0; i < st->n_eos; i++) logits[st->eos_ids[i]] = -INFINITY;
    for (int i = 0; i < st->p.n_stop_ids; i++) logits[st->p.stop_ids[i]] = -INFINITY;
  }

  /* argmax, first index on ties (torch.argmax and vLLM's greedy_sample agree); NaN never compares >.
   * The max first (a branch-free reduction that vectorises), then the first id holding it. */
  float m8[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
  int i8 = 0;
  for (; i8 + 8 <= V; i8 += 8)
    for (int j = 0; j < 8; j++) m8[j] = logits[i8 + j] > m8[j] ? logits[i8 + j] : m8[j];
  float m = -INFINITY;
  for (int j = 0; j < 8; j++) m = m8[j] > m ? m8[j] : m;
  for (; i8 < V; i8++) m = logits[i8] > m ? logits[i8] : m;
  int arg = -1;
  if (m > -INFINITY)
    for (arg = 0; logits[arg] != m; arg++) {
    }
  if (arg < 0) return es_fail(err, ES_EINVAL, "sampler: no id has a finite logit (step %d)", st->n_generated);
  if (isinf(m)) return es_fail(err, ES_EINVAL, "sampler: logit of id %d is +inf (step %d)", arg, st->n_generated);
  *greedy = arg;
  *dense = 0;
  *n_out = 0;
  *mass_out = 0.0;
  if (st->p.temperature < SMP_GREEDY_EPS) return ES_OK;
  *greedy = -1;

  /* Candidates (ids, w): w = exp((l - m) / T), the unnormalised tempered probability; w = 1 at the max. */
  const float inv_t = (float)(1.0 / st->p.temperature);
  float *w = ws->w;
  int32_t *ids = ws->ids;
  int n = 0;
  double mass = 0.0;
  const int k = st->p.top_k;
  const int top_p = st->p.top_p < 1.0;
  if (k > 0 && k < V) {
    float kth = kth_largest(logits, V, k, w);
    int i = 0;
    for (; i + 16 <= V; i += 16) {
      int any = 0;
      for (int j = 0; j < 16; j++) any |= logits[i + j] >= kth;
      if (!any) continue;
      for (int j = 0; j < 16; j++)
        if (logits[i + j] >= kth && logits[i + j] > -INFINITY) ids[n++] = i + j; /* ties at the k-th are kept */
    }
    for (; i < V; i++)
      if (logits[i] >= kth && logits[i] > -INFINITY) ids[n++] = i;
    for (int j = 0; j < n; j++) {
      w[j] = smk_exp_neg((logits[ids[j]] - m) * inv_t);
      mass += w[j];
    }
    if (top_p) n = nucleus(w, ids, n, st->p.top_p * mass, &mass);
  } else {
    for (int i = 0; i < V; i++) w[i] = smk_exp_neg((logits[i] - m) * inv_t); /* vectorised */
    if (top_p) {
      /* The nucleus is a prefix of the ranking, so it lies in the binades (fp32 exponents) from the top
       * down to the one where the mass reaches the target: histogram the mass per exponent (w <= 1, so
       * exponents 0..127; four interleaved histograms so neighbours in one binade do not serialise on
       * one counter), then run the quickselect only on ids in or above that binade. */
      double hist[4][128];
      memset(hist, 0, sizeof hist);
      for (int i = 0; i < V; i++) {
        uint32_t bits;
        memcpy(&bits, &w[i], sizeof bits);
        hist[i & 3][bits >> 23] += w[i];
      }
      double total = 0.0, acc = 0.0;
      for (int e = 0; e < 128; e++) total += hist[0][e] + hist[1][e] + hist[2][e] + hist[3][e];
      double target = st->p.top_p * total;
      int b = 127;
      while (b > 0 && (acc += hist[0][b] + hist[1][b] + hist[2][b] + hist[3][b]) < target) b--;
      uint32_t keep_bits = (uint32_t)b << 23;
      float keep_min;
      memcpy(&keep_min, &keep_bits, sizeof keep_min); /* 2^(b - 127), the bottom of binade b; 0 if b = 0 */
      for (int i = 0; i < V; i++)
        if (w[i] >= keep_min && w[i] > 0.0f) {
          w[n] = w[i];
          ids[n++] = i;
        }
      n = nucleus(w, ids, n, target, &mass);
    } else {
      /* Dense: w[i] is id i's weight; no compaction. min-p alone zeroes what it removes. */
      if (st->p.min_p > 0.0) {
        const float thr = (float)st->p.min_p;
        for (int i = 0; i < V; i++) w[i] = w[i] >= thr ? w[i] : 0.0f;
      }
      mass = sum_weights(w, V);
      *dense = 1;
      *n_out = V;
      *mass_out = mass;
      return ES_OK;
    }
  }

  if (st->p.min_p > 0.0) {
    /* p_i >= min_p * p_max  <=>  w_i >= min_p, since w_max = 1 and the max always survives top-k/top-p.
     * Renormalising after top-k/top-p (transformers' order) scales both sides alike. */
    const float thr = (float)st->p.min_p;
    int kept = 0;
    mass = 0.0;
    for (int j = 0; j < n; j++)
      if (w[j] >= thr) {
        w[kept] = w[j];
        ids[kept++] = ids[j];
        mass += w[j];
      }
    n = kept;
  }

  *n_out = n;
  *mass_out = mass;
  return ES_OK;
}

int smp_sample(smp_state_t *st, smp_workspace_t *ws, float *logits, int32_t *token, es_error_t *err) {
  int32_t greedy;
  int dense, n;
  double mass;
  int rc = prepare(st, ws, logits, &greedy, &dense, &n, &mass, err);
  if (rc) return rc;
  if (greedy >= 0) {
    *token = greedy;
    return ES_OK;
  }
  /* The walk goes over the kept ids in ascending id order (the contract in sampler.h, shared with the
   * backends' sample ops): a compacted candidate list (top-k / top-p reorder it) is scattered back into a
   * dense row first. */
  const float *wd = ws->w;
  if (!dense) {
    memset(ws->dense, 0, (size_t)st->vocab * sizeof *ws->dense);
    for (int j = 0; j < n; j++) ws->dense[ws->ids[j]] = ws->w[j];
    wd = ws->dense;
    n = st->vocab;
  }
  int pick = walk(wd, n, smp_uniform(st->seed, (uint64_t)st->n_generated) * mass);
  /* pick < 0 cannot happen: the max has w = 1 and every filter keeps it. */
  ES_ASSERT(pick >= 0);
  *token = pick;
  return ES_OK;
}

int smp_distribution(smp_state_t *st, smp_workspace_t *ws, float *logits, float *probs, es_error_t *err) {
  int32_t greedy;
  int dense, n;
  double mass;
  int rc = prepare(st, ws, logits, &greedy, &dense, &n, &mass, err);
  if (rc) return rc;
  memset(probs, 0, (size_t)st->vocab * sizeof *probs);
  if (greedy >= 0) {
    probs[greedy] = 1.0f;
    return ES_OK;
  }
  for (int j = 0; j < n; j++) probs[dense ? j : ws->ids[j]] = (float)(ws->w[j] / mass);
  return ES_OK;
}

smp_finish_t smp_accept(smp_state_t *st, int32_t token) {
  if (st->finish != SMP_FINISH_NONE) return st->finish;
  ES_ASSERT(token >= 0 && token < st->vocab);
  if (st->penalties) count_of(st, token)->gen_count++;
  st->n_generated++;
  /* vLLM StopChecker: nothing stops before min_tokens; then eos / stop ids ("stop") before the length. */
  if (st->n_generated >= st->p.min_tokens) {
    if (!st->p.ignore_eos && is_eos(st, token)) {
      st->finish = SMP_FINISH_STOP;
    } else if (is_stop_id(st, token)) {
      st->finish = SMP_FINISH_STOP;
      st->last_stop_id = token;
    }
  }
  if (st->finish == SMP_FINISH_NONE && st->n_generated >= st->p.max_tokens) st->finish = SMP_FINISH_LENGTH;
  return st->finish;
}

const char *smp_finish_name(smp_finish_t f) {
  switch (f) {
  case SMP_FINISH_STOP: return "stop";
  case SMP_FINISH_LENGTH: return "length";
  default: return NULL;
  }
}
