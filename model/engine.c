/* engine: queue, engine thread and the continuous-batching scheduler. See engine.h.
 *
 * Threads: callers of eng_submit/eng_cancel/eng_get_stats (any thread) touch only the incoming queue, the
 * registry of live requests, their cancel flags and the statistics, under e->mu. The engine thread owns
 * everything else: the model and backend, the KV block pool and prefix cache, the audio-embedding pool's
 * row allocation, the mel context, the backend's sampling slots and every request's scheduling state.
 *
 * Scheduling, one iteration of the engine loop:
 *   1. take newly submitted requests into the waiting list (FIFO; preempted requests go back to its front);
 *      finish cancelled ones;
 *   2. admit waiting requests in order while a sequence slot, the KV blocks for the whole known sequence
 *      (after prefix-cache hits) and audio-pool rows are free; encode the audio of everything admitted,
 *      several windows per encoder call;
 *   3. build one batched step: one row for every decoding sequence, then prefill chunks of prefilling
 *      sequences in admission order while rows remain. Chunk boundaries are multiples of the chunk size
 *      counted from position 0, so they depend only on the request, never on the load; a decoding
 *      sequence that needs a block when none is free preempts the most recently admitted sequence (its
 *      blocks are freed; it is recomputed later from prompt + generated ids, with identical results);
 *   4. run the step, sample every sequence that produced logits on the backend (es_op_sample on the device
 *      logits: only the token ids, and the rows of requests that want logprobs, come back; the host sampler
 *      state keeps the finish logic), deliver events, retire finished ones, publish newly completed full
 *      blocks to the prefix cache.
 * Results do not depend on the batch: the backends compute each row independently of the others (the CPU
 * backend bit for bit), chunking is fixed per request, and each request's random stream is keyed on its
 * seed and step.
 */
#include "engine.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "es_clock.h"
#include "kv_alloc.h"
#include "stop.h"

typedef enum { PH_WAITING = 0, PH_PREFILL, PH_DECODE } phase_t;

typedef struct req {
  uint64_t id;
  /* immutable after submit */
  int n_prompt;
  int audio_tokens;
  eng_audio_t audios[ENG_MAX_AUDIOS]; /* sample buffers owned until encoded for the last time */
  uint64_t audio_hash[ENG_MAX_AUDIOS];
  size_t n_audios;
  audio_long_policy_t policy;
  smp_params_t sampling;
  char *stop[ENG_MAX_STOPS]; /* owned copies */
  int n_stop;
  int skip_special;
  int logprobs, top_logprobs;
  eng_callback_t cb;
  void *cb_ctx;
  double t_submit;
  /* under eng.mu */
  int cancelled;
  int finished;               /* the final event is being or has been delivered */
  struct req *reg_prev, *reg_next; /* registry of live requests */
  struct req *in_next;        /* incoming queue */
  /* engine thread */
  int32_t *tokens;            /* [cap] prompt + sampled ids */
  uint64_t *ident;            /* [cap] identity for the prefix-cache hash: the id, or the audio content */
  int n_tokens, cap;
  int n_computed;             /* tokens whose KV is in the cache */
  phase_t phase;
  kv_seq_t seq;
  int published;              /* leading full blocks already published to the prefix cache */
  uint64_t chain;             /* prefix hash through block published - 1 */
  int pool_row, pool_rows;    /* audio-pool rows held [pool_row, pool_row + pool_rows), pool_rows 0 = none */
  int last_placeholder;       /* index of the last audio placeholder in tokens, -1 if none */
  smp_state_t st;             /* the host sampler state: parameters, counts, finish logic (smp_accept) */
  int have_st;
  int smp_slot;               /* the backend's sampling slot while running (es_backend_sampler_reset), else -1 */
  stop_matcher_t sm;
  int have_sm;
  tok_stream_t ts;
  double t_first;
  uint64_t admit_order;
  eng_usage_t usage;
  struct req *next;           /* waiting list / running list */
} req_t;


struct eng {
  eng_opts_t opts;
  pthread_t thread;
  int thread_started;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  /* under mu */
  req_t *in_head, *in_tail;   /* submitted, not yet seen by the engine thread */
  req_t *registry;            /* every live request */
  int n_incoming, n_waiting_engine, n_running_engine;
  int stopping;
  uint64_t next_id;
  eng_stats_t stats;
  /* engine thread */
  req_t *waiting;             /* FIFO, preempted requests at the front */
  req_t **running;            /* [max_seqs] in admission order */
  int n_running;
  uint64_t admit_counter;
  mel_ctx_t *mel;
  kv_pool_t *kv;
  float *logits;              /* [max_logit_rows][V] */
  float *mel_buf;             /* [max_audio_batch][128][3000] */
  int *frames, *dst_rows;     /* [max_audio_batch] */
  int32_t *ids, *pos, *slot, *arow, *lrows, *q_start, *ctx_len, *table; /* step arrays */
  req_t **row_owner;          /* [max_logit_rows] which request each logit row belongs to */
  tok_text_t evtext;          /* the text of the event being built */
  int max_seqs, chunk;
  /* sampling on the backend (backend.h, "sampling"): slot s of the backend's sampler state belongs to the running
   * request whose smp_slot is s; slot_used[max_seqs]; rows[max_seqs] the step's parameters; tokens_dev the
   * backend's int32 [max_seqs] output, tokens its host copy */
  uint8_t *slot_used;
  es_sample_row_t *srows;
  int32_t *tokens_dev, *tokens;
};

const char *eng_finish_name(eng_finish_t f) {
  switch (f) {
  case ENG_FINISH_STOP: return "stop";
  case ENG_FINISH_LENGTH: return "length";
  case ENG_FINISH_CANCELLED: return "cancelled";
  case ENG_FINISH_ERROR: return "error";
  default: return NULL;
  }
}

int eng_audio_tokens(size_t n_samples, audio_long_policy_t policy) {
  audio_window_t w[64];
  size_t n = 0;
  es_error_t err;
  if (n_samples == 0 || audio_windows(n_samples, policy, w, 64, &n, &err) != 0) return 0;
  int total = 0;
  for (size_t i = 0; i < n; i++) total += w[i].audio_tokens;
  return total;
}

/* FNV-1a over bytes, then a final mix: identities of audio content and of blocks. */
static uint64_t hash_bytes(uint64_t h, const void *data, size_t n) {
  const unsigned char *p = data;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static void req_free(req_t *r) {
  if (!r) return;
  for (size_t i = 0; i < r->n_audios; i++) free(r->audios[i].samples);
  for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
  if (r->have_st) smp_free(&r->st);
  if (r->have_sm) stop_free(&r->sm);
  free(r->tokens);
  free(r->ident);
  free(r);
}

/* ---- statistics (engine thread writes, under mu) ------------------------------------------------------ */

static void publish_counts(eng_t *e) {
  int free_blocks = kv_pool_free_count(e->kv);
  pthread_mutex_lock(&e->mu);
  e->stats.kv_blocks_free = free_blocks;
  e->stats.running = e->n_running;
  int w = 0;
  for (req_t *r = e->waiting; r; r = r->next) w++;
  e->n_waiting_engine = w;
  e->stats.waiting = w + e->n_incoming;
  pthread_mutex_unlock(&e->mu);
}

/* ---- events ------------------------------------------------------------------------------------------- */

static void finish_usage(req_t *r) {
  double t = es_now_s();
  r->usage.completion_tokens = r->have_st ? r->st.n_generated : 0;
  r->usage.total_s = t - r->t_submit;
  if (r->usage.completion_tokens >= 2 && t > r->t_first)
    r->usage.decode_tokens_per_s = (r->usage.completion_tokens - 1) / (t - r->t_first);
}

static void emit(eng_t *e, req_t *r, int32_t token, const eng_logprobs_t *lp, const char *text, size_t len,
                 eng_finish_t finish, int stop_index, const char *error) {
  if (finish != ENG_FINISH_NONE) {
    pthread_mutex_lock(&e->mu);
    r->finished = 1;
    pthread_mutex_unlock(&e->mu);
    finish_usage(r);
  } else {
    r->usage.completion_tokens = r->st.n_generated;
  }
  eng_event_t ev = {.id = r->id, .token = token, .logprobs = lp, .text = text ? text : "",
                    .text_len = text ? len : 0, .finish = finish, .stop_index = stop_index, .error = error,
                    .usage = r->usage};
  r->cb(r->cb_ctx, &ev);
}

/* Frees a request's KV blocks and audio-pool rows (it stays alive). */
static void release_resources(eng_t *e, req_t *r) {
  kv_seq_release(e->kv, &r->seq);
  r->pool_rows = 0;
  if (r->smp_slot >= 0) e->slot_used[r->smp_slot] = 0;
  r->smp_slot = -1;
}

/* Gives r (just admitted) a sampling slot and loads it: the prompt, the ids generated before a preemption, and
 * while min_tokens is not reached the ids it suppresses (eos unless ignore_eos, the stop ids). */
static int claim_sampling_slot(eng_t *e, req_t *r, es_error_t *err) {
  int s = 0;
  while (s < e->max_seqs && e->slot_used[s]) s++;
  ES_ASSERT(s < e->max_seqs); /* one slot per running request, at most max_seqs run */
  int32_t supp[ES_SAMPLE_MAX_SUPPRESS];
  int n_supp = 0;
  if (r->st.p.min_tokens > 0) {
    if (!r->st.p.ignore_eos)
      for (int i = 0; i < r->st.n_eos; i++) supp[n_supp++] = r->st.eos_ids[i];
    for (int i = 0; i < r->st.p.n_stop_ids; i++) supp[n_supp++] = r->st.p.stop_ids[i];
  }
  int rc = es_backend_sampler_reset(qa_model_backend(e->opts.model), s, r->tokens, r->n_prompt,
                                    r->tokens + r->n_prompt, r->n_tokens - r->n_prompt, supp, n_supp, err);
  if (rc) return rc;
  e->slot_used[s] = 1;
  r->smp_slot = s;
  return ES_OK;
}

static void remove_running(eng_t *e, req_t *r) {
  for (int i = 0; i < e->n_running; i++)
    if (e->running[i] == r) {
      memmove(&e->running[i], &e->running[i + 1], sizeof(req_t *) * (size_t)(e->n_running - i - 1));
      e->n_running--;
      return;
    }
}

/* Delivers the final event (unless already done by the caller), frees everything, forgets the request. */
static void retire(eng_t *e, req_t *r, eng_finish_t finish, const char *error, int emit_final) {
  if (emit_final) emit(e, r, -1, NULL, NULL, 0, finish, -1, error);
  release_resources(e, r);
  remove_running(e, r);
  pthread_mutex_lock(&e->mu);
  e->stats.finished++;
  if (finish == ENG_FINISH_CANCELLED) e->stats.cancelled++;
  if (finish == ENG_FINISH_ERROR) e->stats.failed++;
  e->stats.generated_tokens += (uint64_t)r->usage.completion_tokens;
  e->stats.prompt_tokens += (uint64_t)r->n_prompt;
  if (r->reg_prev) r->reg_prev->reg_next = r->reg_next; else e->registry = r->reg_next;
  if (r->reg_next) r->reg_next->reg_prev = r->reg_prev;
  pthread_mutex_unlock(&e->mu);
  req_free(r);
}

/* ---- admission ---------------------------------------------------------------------------------------- */

/* First fit in the audio pool among the rows held by running requests. Returns the start row or -1. */
static int pool_alloc(eng_t *e, int n) {
  const qa_model_opts_t *mo = qa_model_opts(e->opts.model);
  int start = 0;
  for (;;) {
    int moved = 0;
    for (int i = 0; i < e->n_running; i++) {
      req_t *o = e->running[i];
      if (o->pool_rows && start < o->pool_row + o->pool_rows && o->pool_row < start + n) {
        start = o->pool_row + o->pool_rows;
        moved = 1;
      }
    }
    if (!moved) break;
  }
  return start + n <= mo->audio_pool_rows ? start : -1;
}

/* The prefix-cache hash of block j of r, chained on the previous block's. */
static uint64_t block_hash(const req_t *r, int j, uint64_t prev) {
  uint64_t h = mix64(prev ^ 0x9E3779B97F4A7C15ull);
  return mix64(hash_bytes(h, r->ident + (size_t)j * ES_KV_BLOCK, sizeof(uint64_t) * ES_KV_BLOCK));
}

/* Shares the cached full blocks of r's known tokens (keeping at least the last token to compute); returns
 * how many full blocks were looked up (*hits of them found). */
static int match_prefix(eng_t *e, req_t *r, int *hits_out) {
  int max_hit = (r->n_tokens - 1) / ES_KV_BLOCK;
  uint64_t h = 0;
  int hits = 0;
  es_error_t err;
  for (int j = 0; j < max_hit; j++) {
    uint64_t bh = block_hash(r, j, h);
    int32_t b = kv_pool_lookup(e->kv, bh);
    if (b < 0 || kv_seq_share(e->kv, &r->seq, b, &err) != ES_OK) break;
    h = bh;
    hits++;
  }
  r->n_computed = hits * ES_KV_BLOCK;
  r->published = hits;
  r->chain = h;
  *hits_out = hits;
  return max_hit;
}

/* Encodes the audio of the requests in list (all admitted, rows allocated), several windows per call. */
static int encode_admitted(eng_t *e, req_t **list, int n, es_error_t *err) {
  const qa_model_opts_t *mo = qa_model_opts(e->opts.model);
  int B = 0, rc = 0;
  for (int i = 0; i < n && !rc; i++) {
    req_t *r = list[i];
    int row = r->pool_row;
    for (size_t a = 0; a < r->n_audios && !rc; a++) {
      audio_window_t w[64];
      size_t nw = 0;
      rc = audio_windows(r->audios[a].n_samples, r->policy, w, 64, &nw, err);
      for (size_t k = 0; k < nw && !rc; k++) {
        rc = mel_compute(e->mel, r->audios[a].samples + w[k].offset, w[k].count,
                         e->mel_buf + (size_t)B * 128 * QA_MEL_FRAMES, &e->frames[B], NULL, err);
        if (rc) break;
        e->dst_rows[B++] = row;
        row += w[k].audio_tokens;
        if (B == mo->max_audio_batch) {
          int written;
          rc = qa_encode(e->opts.model, e->mel_buf, e->frames, B, e->dst_rows, &written, err);
          B = 0;
        }
      }
    }
  }
  if (!rc && B) {
    int written;
    rc = qa_encode(e->opts.model, e->mel_buf, e->frames, B, e->dst_rows, &written, err);
  }
  return rc;
}

/* Admits waiting requests while resources allow; encodes their audio. */
static void admit(eng_t *e) {
  const qa_model_opts_t *mo = qa_model_opts(e->opts.model);
  req_t *admitted[64];
  int n_adm = 0;
  while (e->waiting && e->n_running < e->max_seqs && n_adm < 64) {
    req_t *r = e->waiting;
    int hits = 0, queried = match_prefix(e, r, &hits);
    int need_audio = r->audio_tokens > 0 && r->n_computed <= r->last_placeholder;
    int blocks = kv_seq_blocks_needed(&r->seq, r->n_tokens);
    int row = need_audio ? pool_alloc(e, r->audio_tokens) : 0;
    es_error_t err;
    if (row < 0 || blocks > kv_pool_free_count(e->kv) ||
        kv_seq_reserve(e->kv, &r->seq, r->n_tokens, mo->max_blocks_per_seq, &err) != ES_OK) {
      kv_seq_release(e->kv, &r->seq); /* give the shared prefix back; try again next iteration */
      r->n_computed = 0;
      break;
    }
    e->waiting = r->next;
    r->next = NULL;
    pthread_mutex_lock(&e->mu); /* counted once per admission, not per attempt */
    e->stats.prefix_queries += (uint64_t)queried;
    e->stats.prefix_hits += (uint64_t)hits;
    pthread_mutex_unlock(&e->mu);
    r->pool_row = row;
    r->pool_rows = need_audio ? r->audio_tokens : 0;
    r->phase = PH_PREFILL;
    r->admit_order = ++e->admit_counter;
    e->running[e->n_running++] = r;
    if (claim_sampling_slot(e, r, &err) != ES_OK) {
      retire(e, r, ENG_FINISH_ERROR, err.msg, 1);
      continue;
    }
    if (need_audio) admitted[n_adm++] = r;
  }
  if (n_adm) {
    es_error_t err;
    if (encode_admitted(e, admitted, n_adm, &err) != ES_OK)
      for (int i = 0; i < n_adm; i++) retire(e, admitted[i], ENG_FINISH_ERROR, err.msg, 1);
  }
}

/* Sends the most recently admitted running request back to the front of the waiting list. */
static req_t *preempt_latest(eng_t *e) {
  req_t *victim = NULL;
  for (int i = 0; i < e->n_running; i++)
    if (!victim || e->running[i]->admit_order > victim->admit_order) victim = e->running[i];
  if (!victim) return NULL;
  release_resources(e, victim);
  remove_running(e, victim);
  victim->n_computed = 0;
  victim->published = 0;
  victim->chain = 0;
  victim->phase = PH_WAITING;
  victim->next = e->waiting;
  e->waiting = victim;
  pthread_mutex_lock(&e->mu);
  e->stats.preemptions++;
  pthread_mutex_unlock(&e->mu);
  return victim;
}

/* ---- one step ----------------------------------------------------------------------------------------- */

/* Log-softmax of a processed logits row at token, and the n_top most likely ids (ties: lower id first).
 * O(V * n_top); only for requests that ask. */
static void compute_logprobs(const float *logits, int V, int32_t token, int n_top, eng_logprobs_t *lp) {
  float m = -INFINITY;
  for (int i = 0; i < V; i++) m = logits[i] > m ? logits[i] : m;
  double sum = 0.0;
  for (int i = 0; i < V; i++)
    if (logits[i] > -INFINITY) sum += exp((double)logits[i] - m);
  double lse = (double)m + log(sum);
  lp->logprob = (float)((double)logits[token] - lse);
  lp->n_top = 0;
  for (int i = 0; i < V && n_top > 0; i++) {
    float l = logits[i];
    if (!(l > -INFINITY)) continue;
    int n = lp->n_top;
    if (n == n_top && l <= lp->top_logprobs[n - 1]) continue; /* no better than the last kept */
    int j = n < n_top ? n++ : n - 1;                           /* insertion into the sorted kept list */
    for (; j > 0 && lp->top_logprobs[j - 1] < l; j--) {
      lp->top_logprobs[j] = lp->top_logprobs[j - 1];
      lp->top_ids[j] = lp->top_ids[j - 1];
    }
    lp->top_logprobs[j] = l;
    lp->top_ids[j] = i;
    lp->n_top = n;
  }
  for (int j = 0; j < lp->n_top; j++) lp->top_logprobs[j] = (float)((double)lp->top_logprobs[j] - lse);
}

/* Takes token (drawn by the backend's sample op; -1 when the row could not be sampled) as r's next token and
 * delivers its event; logits is the processed row when r asked for logprobs. Returns 1 when r finished. */
static int take_token(eng_t *e, req_t *r, int32_t token, const float *logits) {
  es_error_t err;
  if (token < 0 || token >= r->st.vocab) {
    es_fail(&err, ES_EINVAL, "sampler: no id has a finite logit, or one is +inf (step %d)", r->st.n_generated);
    retire(e, r, ENG_FINISH_ERROR, err.msg, 1);
    return 1;
  }
  eng_logprobs_t lp_buf, *lp = NULL;
  if (r->logprobs) { /* the processed row: penalties and masks applied by the sample op (as smp_sample does) */
    compute_logprobs(logits, r->st.vocab, token, r->top_logprobs, &lp_buf);
    lp = &lp_buf;
  }
  if (r->t_first == 0) {
    r->t_first = es_now_s();
    r->usage.first_token_s = r->t_first - r->t_submit;
  }
  smp_finish_t sf = smp_accept(&r->st, token);
  r->tokens[r->n_tokens] = token;
  r->ident[r->n_tokens] = (uint64_t)(uint32_t)token;
  r->n_tokens++;
  e->evtext.len = 0;
  stop_result_t res = {.stop_index = -1};
  int stop_index = sf == SMP_FINISH_STOP ? -2 : -1;
  if (sf != SMP_FINISH_STOP && e->opts.tok) {
    /* eos and stop ids emit no text (vLLM); everything else goes through the UTF-8 stream and the stop-string
     * matcher, which holds back what could still start a stop string */
    tok_text_t piece = {0};
    int rc = tok_stream_push(&r->ts, token, &piece, &err);
    if (!rc && sf != SMP_FINISH_NONE) rc = tok_stream_flush(&r->ts, &piece, &err);
    if (!rc) rc = stop_feed(&r->sm, piece.data ? piece.data : "", piece.len, smp_stop_strings_active(&r->st), &res,
                            &err);
    if (!rc) rc = tok_text_append(&e->evtext, res.text, res.len, &err);
    tok_text_free(&piece);
    if (rc) {
      retire(e, r, ENG_FINISH_ERROR, err.msg, 1);
      return 1;
    }
    if (res.stopped) {
      sf = SMP_FINISH_STOP;
      stop_index = res.stop_index;
    }
  }
  if (sf == SMP_FINISH_LENGTH) {
    stop_result_t tail;
    stop_flush(&r->sm, &tail);
    if (tok_text_append(&e->evtext, tail.text, tail.len, &err) != ES_OK) {
      retire(e, r, ENG_FINISH_ERROR, err.msg, 1);
      return 1;
    }
  }
  if (sf != SMP_FINISH_NONE) {
    eng_finish_t f = sf == SMP_FINISH_STOP ? ENG_FINISH_STOP : ENG_FINISH_LENGTH;
    emit(e, r, token, lp, e->evtext.data, e->evtext.len, f, stop_index, NULL);
    retire(e, r, f, NULL, 0);
    return 1;
  }
  emit(e, r, token, lp, e->evtext.data, e->evtext.len, ENG_FINISH_NONE, -1, NULL);
  r->phase = PH_DECODE;
  return 0;
}

/* Publishes r's newly completed full blocks to the prefix cache. */
static void publish_blocks(eng_t *e, req_t *r) {
  while ((r->published + 1) * ES_KV_BLOCK <= r->n_computed && r->published < r->seq.n_blocks) {
    r->chain = block_hash(r, r->published, r->chain);
    kv_pool_publish(e->kv, r->seq.blocks[r->published], r->chain);
    r->published++;
  }
}

static void fail_all_running(eng_t *e, const char *msg) {
  while (e->n_running) retire(e, e->running[0], ENG_FINISH_ERROR, msg, 1);
}

/* Samples the step's n logit rows on the backend: only the token ids (and the rows of requests that want
 * logprobs) come back, into e->tokens and e->logits. A row that cannot be sampled gets -1 (take_token fails its
 * request); the CPU backend also says so with ES_EINVAL, which fails nothing else here. */
static int sample_rows(eng_t *e, float *logits_dev, int n, es_error_t *err) {
  es_backend_t *be = qa_model_backend(e->opts.model);
  const int V = qa_model_config(e->opts.model)->vocab_size;
  for (int l = 0; l < n; l++) {
    const req_t *r = e->row_owner[l];
    const smp_params_t *p = &r->st.p;
    es_sample_row_t *w = &e->srows[l];
    memset(w, 0, sizeof *w);
    /* greedy is decided here, in double as the host sampler does; a sampled temperature whose float rounds
     * below the threshold is kept just above it, so the backend samples too */
    w->temperature = p->temperature < SMP_GREEDY_EPS ? 0.0f : (float)p->temperature;
    if (w->temperature > 0.0f && (double)w->temperature < SMP_GREEDY_EPS)
      w->temperature = nextafterf((float)SMP_GREEDY_EPS, INFINITY);
    w->top_p = (float)p->top_p;
    w->min_p = (float)p->min_p;
    w->repetition_penalty = (float)p->repetition_penalty;
    w->presence_penalty = (float)p->presence_penalty;
    w->frequency_penalty = (float)p->frequency_penalty;
    w->top_k = p->top_k;
    w->suppress = r->st.n_generated < p->min_tokens;
    w->seed = r->st.seed;
    w->step = r->st.n_generated;
    w->slot = r->smp_slot;
  }
  int rc = es_backend_sample_prepare(be, e->srows, n, err);
  if (!rc) {
    es_error_t serr;
    rc = es_op_sample(be, logits_dev, n, e->tokens_dev, &serr);
    if (rc && rc != ES_EINVAL) *err = serr;
    else rc = ES_OK; /* bad rows are -1 in the tokens */
  }
  if (!rc) rc = es_backend_read(be, e->tokens, e->tokens_dev, sizeof(int32_t) * (size_t)n, err);
  for (int l = 0; l < n && !rc; l++)
    if (e->row_owner[l]->logprobs)
      rc = es_backend_read(be, e->logits + (size_t)l * (size_t)V, logits_dev + (size_t)l * (size_t)V,
                           sizeof(float) * (size_t)V, err);
  return rc;
}

/* Builds and runs one batched step. Returns 0 when there was nothing to run. */
static int run_step(eng_t *e) {
  const qa_model_opts_t *mo = qa_model_opts(e->opts.model);
  const model_config_t *cfg = qa_model_config(e->opts.model);
  es_error_t err;
  /* decode rows need their next block: preempt the newest sequences until everyone fits */
  for (int i = 0; i < e->n_running; i++) {
    req_t *r = e->running[i];
    if (r->phase != PH_DECODE) continue;
    while (kv_seq_reserve(e->kv, &r->seq, r->n_computed + 1, mo->max_blocks_per_seq, &err) != ES_OK) {
      req_t *v = preempt_latest(e);
      if (v == r || !v) {
        i--; /* r left the running list: the next entry moved into slot i */
        break;
      }
      if (i >= e->n_running || e->running[i] != r) { /* the list shifted: find r again */
        for (i = 0; i < e->n_running && e->running[i] != r; i++) {}
      }
    }
  }
  if (!e->n_running) return 0;

  int n_rows = 0, n_seqs = 0, n_logits = 0, n_decode = 0, max_blocks = 1;
  req_t *in_step[256];
  int q_len[256];
  for (int pass = 0; pass < 2; pass++) { /* decode rows first, then prefill chunks */
    for (int i = 0; i < e->n_running; i++) {
      req_t *r = e->running[i];
      int start = r->n_computed, len;
      if (pass == 0 && r->phase == PH_DECODE) {
        len = 1;
      } else if (pass == 1 && r->phase == PH_PREFILL) {
        int end = (start / e->chunk + 1) * e->chunk;
        if (end > r->n_tokens) end = r->n_tokens;
        len = end - start;
        if (n_rows + len > mo->max_tokens) continue; /* the next step takes it, boundaries unchanged */
      } else {
        continue;
      }
      for (int k = 0; k < len; k++) {
        int p = start + k;
        e->ids[n_rows + k] = r->tokens[p];
        e->pos[n_rows + k] = p;
        e->slot[n_rows + k] = kv_seq_slot(&r->seq, p);
        /* placeholder rows read their audio row: the k-th placeholder of r is pool row pool_row + k */
        e->arow[n_rows + k] = -1;
      }
      if (r->pool_rows) {
        int seen = 0; /* placeholders before start */
        for (int p = 0; p < start; p++) seen += r->tokens[p] == cfg->audio_token_index && p < r->n_prompt;
        for (int k = 0; k < len; k++)
          if (start + k < r->n_prompt && r->tokens[start + k] == cfg->audio_token_index)
            e->arow[n_rows + k] = r->pool_row + seen++;
      } else {
        /* a prompt placeholder must have its audio (qa_step embeds a placeholder id without an audio row as a
         * plain token, which is right only for a generated one) */
        for (int k = 0; k < len; k++)
          if (start + k < r->n_prompt && r->tokens[start + k] == cfg->audio_token_index) {
            fail_all_running(e, "engine: internal error: a prompt's audio placeholder has no audio row");
            return 1;
          }
      }
      e->q_start[n_seqs] = n_rows;
      e->ctx_len[n_seqs] = start + len;
      q_len[n_seqs] = len;
      in_step[n_seqs] = r;
      if (r->seq.n_blocks > max_blocks) max_blocks = r->seq.n_blocks;
      if (start + len == r->n_tokens) { /* the last known token: its logits give the next token */
        e->lrows[n_logits] = n_rows + len - 1;
        e->row_owner[n_logits++] = r;
      }
      n_rows += len;
      n_seqs++;
      n_decode += r->phase == PH_DECODE;
    }
  }
  if (!n_seqs) return 0;
  e->q_start[n_seqs] = n_rows;
  for (int s = 0; s < n_seqs; s++) {
    req_t *r = in_step[s];
    for (int j = 0; j < max_blocks; j++)
      e->table[(size_t)s * (size_t)max_blocks + j] = j < r->seq.n_blocks ? r->seq.blocks[j] : 0;
  }
  es_batch_t b = {.n_seqs = n_seqs, .n_tokens = n_rows, .q_start = e->q_start, .ctx_len = e->ctx_len,
                  .positions = e->pos, .slot = e->slot, .block_table = e->table, .max_blocks = max_blocks};
  float *logits_dev = NULL;
  const double t_step = es_now_s();
  int rc = qa_step_device(e->opts.model, &b, e->ids, e->arow, e->lrows, n_logits, &logits_dev, &err);
  if (!rc && n_logits) rc = sample_rows(e, logits_dev, n_logits, &err);
  const double step_s = es_now_s() - t_step;
  if (rc) {
    fail_all_running(e, err.msg);
    return 1;
  }
  pthread_mutex_lock(&e->mu);
  e->stats.steps++;
  if (n_decode) {
    int bucket = 0;
    while (bucket < ENG_HIST_BUCKETS - 1 && n_decode > (1 << bucket)) bucket++;
    e->stats.decode_batch_hist[bucket]++;
    if (n_decode > e->stats.max_decode_batch) e->stats.max_decode_batch = n_decode;
  }
  if (n_decode && n_decode == n_rows) {
    e->stats.decode_only_steps++;
    e->stats.decode_only_tokens += (uint64_t)n_decode;
    e->stats.decode_only_s += step_s;
  }
  pthread_mutex_unlock(&e->mu);
  for (int s = 0; s < n_seqs; s++) in_step[s]->n_computed += q_len[s];
  for (int s = 0; s < n_seqs; s++) {
    req_t *r = in_step[s];
    /* audio rows are no longer needed once the prefill has passed the last placeholder */
    if (r->pool_rows && r->n_computed > r->last_placeholder) r->pool_rows = 0;
    publish_blocks(e, r);
  }
  for (int l = 0; l < n_logits; l++)
    take_token(e, e->row_owner[l], e->tokens[l], e->logits + (size_t)l * (size_t)cfg->vocab_size);
  return 1;
}

/* ---- the engine thread -------------------------------------------------------------------------------- */

/* Prepares a newly seen request's sampler and stream state; 0 on success (else it was retired). */
static int start_request(eng_t *e, req_t *r) {
  const model_config_t *cfg = qa_model_config(e->opts.model);
  es_error_t err;
  r->usage.queue_s = es_now_s() - r->t_submit;
  if (smp_init(&r->st, &r->sampling, cfg->vocab_size, cfg->eos_ids, cfg->n_eos, r->tokens, r->n_prompt, &err)) {
    retire(e, r, ENG_FINISH_ERROR, err.msg, 1);
    return -1;
  }
  r->have_st = 1;
  r->usage.seed = r->st.seed;
  if (stop_init(&r->sm, (const char *const *)r->stop, r->n_stop, 0, &err)) {
    retire(e, r, ENG_FINISH_ERROR, err.msg, 1);
    return -1;
  }
  r->have_sm = 1;
  if (e->opts.tok) tok_stream_init(&r->ts, e->opts.tok, r->skip_special);
  return 0;
}

static void *engine_main(void *arg) {
  eng_t *e = arg;
  for (;;) {
    /* 1. new arrivals, cancellations, shutdown */
    pthread_mutex_lock(&e->mu);
    while (!e->in_head && !e->stopping && !e->waiting && !e->n_running) pthread_cond_wait(&e->cv, &e->mu);
    req_t *incoming = e->in_head;
    e->in_head = e->in_tail = NULL;
    e->n_incoming = 0;
    int stopping = e->stopping;
    pthread_mutex_unlock(&e->mu);
    req_t **tail = &e->waiting;
    while (*tail) tail = &(*tail)->next;
    while (incoming) {
      req_t *r = incoming;
      incoming = r->in_next;
      r->in_next = NULL;
      if (start_request(e, r) == 0) {
        *tail = r;
        tail = &r->next;
      }
    }
    /* cancelled (or everything, when stopping): waiting ones first, then running ones */
    for (req_t **pp = &e->waiting; *pp;) {
      req_t *r = *pp;
      pthread_mutex_lock(&e->mu);
      int c = r->cancelled || stopping;
      pthread_mutex_unlock(&e->mu);
      if (c) {
        *pp = r->next;
        retire(e, r, ENG_FINISH_CANCELLED, NULL, 1);
      } else {
        pp = &r->next;
      }
    }
    for (int i = 0; i < e->n_running;) {
      req_t *r = e->running[i];
      pthread_mutex_lock(&e->mu);
      int c = r->cancelled || stopping;
      pthread_mutex_unlock(&e->mu);
      if (c)
        retire(e, r, ENG_FINISH_CANCELLED, NULL, 1);
      else
        i++;
    }
    if (stopping) {
      publish_counts(e);
      pthread_mutex_lock(&e->mu);
      int done = !e->in_head;
      pthread_mutex_unlock(&e->mu);
      if (done) break;
      continue;
    }
    if (!es_backend_healthy(qa_model_backend(e->opts.model))) fail_all_running(e, "the device failed");
    /* 2. admission, 3-4. one step */
    admit(e);
    publish_counts(e);
    int ran = run_step(e);
    publish_counts(e);
    if (!ran && e->waiting && !e->n_running) {
      /* nothing runs and the head cannot be admitted even into an empty engine: it never will be */
      req_t *h = e->waiting;
      e->waiting = h->next;
      retire(e, h, ENG_FINISH_ERROR, "the request does not fit the KV cache or the audio pool", 1);
    }
  }
  return NULL;
}

/* ---- public API --------------------------------------------------------------------------------------- */

int eng_start(const eng_opts_t *opts, eng_t **out, es_error_t *err) {
  *out = NULL;
  if (!opts->model) return es_fail(err, ES_EINVAL, "engine: no model");
  const qa_model_opts_t *mo = qa_model_opts(opts->model);
  const model_config_t *cfg = qa_model_config(opts->model);
  eng_t *e = calloc(1, sizeof *e);
  if (!e) return es_fail(err, ES_ENOMEM, "engine: out of memory");
  e->opts = *opts;
  e->max_seqs = mo->max_seqs < mo->max_logit_rows ? mo->max_seqs : mo->max_logit_rows;
  if (e->max_seqs > 256) e->max_seqs = 256;
  if (e->opts.max_num_seqs > 0 && e->opts.max_num_seqs < e->max_seqs) e->max_seqs = e->opts.max_num_seqs;
  /* a step holds every decode row plus one full prefill chunk */
  e->chunk = e->opts.prefill_chunk > 0 ? e->opts.prefill_chunk : mo->max_tokens - e->max_seqs;
  if (e->chunk > mo->max_tokens - e->max_seqs) e->chunk = mo->max_tokens - e->max_seqs;
  if (e->chunk < 1) {
    int seqs = e->max_seqs;
    free(e);
    return es_fail(err, ES_EINVAL, "engine: the model's step capacity (%d rows) must exceed max_num_seqs (%d)",
                   mo->max_tokens, seqs);
  }
  if (e->opts.max_queue <= 0) e->opts.max_queue = 64;
  if (e->opts.mel_threads <= 0) e->opts.mel_threads = 1;
  e->next_id = 1;
  pthread_mutex_init(&e->mu, NULL);
  pthread_cond_init(&e->cv, NULL);
  int rc = mel_ctx_init(&e->mel, e->opts.mel_threads, err);
  if (!rc) rc = kv_pool_init(mo->kv_blocks, &e->kv, err);
  if (rc) goto fail;
  size_t T = (size_t)mo->max_tokens, S = (size_t)e->max_seqs;
  e->running = calloc(S, sizeof(req_t *));
  e->logits = malloc(sizeof(float) * (size_t)cfg->vocab_size * S);
  e->mel_buf = malloc(sizeof(float) * (size_t)mo->max_audio_batch * 128 * QA_MEL_FRAMES);
  e->frames = malloc(sizeof(int) * (size_t)mo->max_audio_batch);
  e->dst_rows = malloc(sizeof(int) * (size_t)mo->max_audio_batch);
  e->ids = malloc(sizeof(int32_t) * T);
  e->pos = malloc(sizeof(int32_t) * T);
  e->slot = malloc(sizeof(int32_t) * T);
  e->arow = malloc(sizeof(int32_t) * T);
  e->lrows = malloc(sizeof(int32_t) * S);
  e->q_start = malloc(sizeof(int32_t) * (S + 1));
  e->ctx_len = malloc(sizeof(int32_t) * S);
  e->table = malloc(sizeof(int32_t) * S * (size_t)mo->max_blocks_per_seq);
  e->row_owner = malloc(sizeof(req_t *) * S);
  e->slot_used = calloc(S, 1);
  e->srows = malloc(sizeof(es_sample_row_t) * S);
  e->tokens = malloc(sizeof(int32_t) * S);
  if (!e->running || !e->logits || !e->mel_buf || !e->frames || !e->dst_rows || !e->ids || !e->pos || !e->slot ||
      !e->arow || !e->lrows || !e->q_start || !e->ctx_len || !e->table || !e->row_owner || !e->slot_used ||
      !e->srows || !e->tokens) {
    rc = es_fail(err, ES_ENOMEM, "engine: out of memory");
    goto fail;
  }
  { /* the backend's sampler: one slot per running request, and the device token buffer */
    es_backend_t *be = qa_model_backend(e->opts.model);
    if ((rc = es_backend_sampler_init(be, (int)S, cfg->vocab_size, err)) ||
        (rc = es_backend_alloc(be, sizeof(int32_t) * S, (void **)&e->tokens_dev, err))) {
      es_error_prefix(err, "engine: ");
      goto fail;
    }
  }
  e->stats.kv_blocks_total = kv_pool_total(e->kv);
  e->stats.kv_blocks_free = kv_pool_free_count(e->kv);
  e->stats.max_num_seqs = e->max_seqs;
  if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
    rc = es_fail(err, ES_EINTERNAL, "engine: cannot start the engine thread");
    goto fail;
  }
  e->thread_started = 1;
  *out = e;
  return ES_OK;
fail:
  eng_stop(e);
  return rc;
}

void eng_stop(eng_t *e) {
  if (!e) return;
  pthread_mutex_lock(&e->mu);
  e->stopping = 1;
  pthread_cond_broadcast(&e->cv);
  pthread_mutex_unlock(&e->mu);
  if (e->thread_started) pthread_join(e->thread, NULL);
  mel_ctx_free(&e->mel);
  kv_pool_free(e->kv);
  free(e->running);
  free(e->logits);
  free(e->mel_buf);
  free(e->frames);
  free(e->dst_rows);
  free(e->ids);
  free(e->pos);
  free(e->slot);
  free(e->arow);
  free(e->lrows);
  free(e->q_start);
  free(e->ctx_len);
  free(e->table);
  free(e->row_owner);
  free(e->slot_used);
  free(e->srows);
  free(e->tokens);
  tok_text_free(&e->evtext);
  pthread_mutex_destroy(&e->mu);
  pthread_cond_destroy(&e->cv);
  free(e);
}

/* Checks a request; *audio_tokens gets the total and per_audio[a] each audio's tokens. */
static int validate(eng_t *e, const eng_request_t *q, int *audio_tokens, int *per_audio, es_error_t *err) {
  const model_config_t *cfg = qa_model_config(e->opts.model);
  const qa_model_opts_t *mo = qa_model_opts(e->opts.model);
  if (!q->callback) return es_fail(err, ES_EINVAL, "request: no callback");
  if (q->n_prompt == 0) return es_fail(err, ES_EINVAL, "request: empty prompt");
  if (q->n_audios > ENG_MAX_AUDIOS) return es_fail(err, ES_EINVAL, "request: more than %d audios", ENG_MAX_AUDIOS);
  if (q->n_stop < 0 || q->n_stop > ENG_MAX_STOPS)
    return es_fail(err, ES_EINVAL, "request: at most %d stop strings", ENG_MAX_STOPS);
  size_t placeholders = 0;
  for (size_t i = 0; i < q->n_prompt; i++) {
    if (q->prompt_ids[i] < 0 || q->prompt_ids[i] >= cfg->vocab_size)
      return es_fail(err, ES_EINVAL, "request: prompt id %d at %zu outside the vocabulary (%d)", q->prompt_ids[i], i,
                     cfg->vocab_size);
    placeholders += q->prompt_ids[i] == cfg->audio_token_index;
  }
  int total = 0;
  for (size_t a = 0; a < q->n_audios; a++) {
    if (!q->audios[a].samples || q->audios[a].n_samples == 0)
      return es_fail(err, ES_EINVAL, "audio %zu: no samples", a + 1);
    int n = per_audio[a] = eng_audio_tokens(q->audios[a].n_samples, q->long_audio);
    if (n == 0)
      return es_fail(err, ES_EINVAL,
                     "audio %zu is too short: %zu samples (%.1f ms) give no audio token; at least 321 samples "
                     "(20 ms at 16 kHz) are needed",
                     a + 1, q->audios[a].n_samples, q->audios[a].n_samples / 16.0);
    total += n;
  }
  if (placeholders != (size_t)total)
    return es_fail(err, ES_EINVAL, "request: %zu audio placeholders in the prompt, the audios give %d tokens",
                   placeholders, total);
  if (total > mo->audio_pool_rows)
    return es_fail(err, ES_ETOOBIG, "request: %d audio tokens, the engine holds at most %d per request", total,
                   mo->audio_pool_rows);
  if (q->top_logprobs < 0 || q->top_logprobs > ENG_MAX_TOP_LOGPROBS || (q->top_logprobs && !q->logprobs))
    return es_fail(err, ES_EINVAL, "request: top_logprobs %d: expected 0..%d, and only with logprobs",
                   q->top_logprobs, ENG_MAX_TOP_LOGPROBS);
  int rc = smp_params_validate(&q->sampling, cfg->vocab_size, err);
  if (rc) return rc;
  long long ctx = (long long)mo->max_blocks_per_seq * ES_KV_BLOCK;
  if ((long long)q->n_prompt + q->sampling.max_tokens > ctx)
    return es_fail(err, ES_ETOOBIG, "request: the prompt (%zu tokens) plus max_tokens (%d) exceed the context of %lld",
                   q->n_prompt, q->sampling.max_tokens, ctx);
  int blocks = kv_blocks_for((int)q->n_prompt + q->sampling.max_tokens);
  if (blocks > kv_pool_total(e->kv))
    return es_fail(err, ES_ETOOBIG, "request: needs %d KV blocks, the cache has %d", blocks, kv_pool_total(e->kv));
  *audio_tokens = total;
  return ES_OK;
}

int eng_submit(eng_t *e, const eng_request_t *q, uint64_t *id, es_error_t *err) {
  int audio_tokens = 0, per_audio[ENG_MAX_AUDIOS];
  int rc = validate(e, q, &audio_tokens, per_audio, err);
  if (rc) return rc;
  const model_config_t *cfg = qa_model_config(e->opts.model);
  req_t *r = calloc(1, sizeof *r);
  if (r) r->smp_slot = -1;
  if (!r) return es_fail(err, ES_ENOMEM, "request: out of memory");
  r->cap = (int)q->n_prompt + q->sampling.max_tokens + 1;
  r->tokens = malloc(sizeof(int32_t) * (size_t)r->cap);
  r->ident = malloc(sizeof(uint64_t) * (size_t)r->cap);
  if (!r->tokens || !r->ident) {
    req_free(r);
    return es_fail(err, ES_ENOMEM, "request: out of memory");
  }
  memcpy(r->tokens, q->prompt_ids, sizeof(int32_t) * q->n_prompt);
  r->n_prompt = r->n_tokens = (int)q->n_prompt;
  r->audio_tokens = audio_tokens;
  r->policy = q->long_audio;
  r->sampling = q->sampling;
  r->skip_special = q->skip_special;
  r->logprobs = q->logprobs != 0;
  r->top_logprobs = q->top_logprobs;
  r->cb = q->callback;
  r->cb_ctx = q->callback_ctx;
  /* identities for the prefix cache: a placeholder is its audio's content hash and its index in that audio */
  for (size_t a = 0; a < q->n_audios; a++) {
    uint64_t h = hash_bytes(1469598103934665603ull, &q->long_audio, sizeof q->long_audio);
    r->audio_hash[a] = mix64(hash_bytes(h, q->audios[a].samples, sizeof(float) * q->audios[a].n_samples));
  }
  /* the p-th placeholder (in prompt order) belongs to the audio whose tokens cover p — the same mapping the
   * audio rows use — so adjacent audios without separator tokens still get their own identities */
  size_t audio = 0;
  int k = 0, left = q->n_audios ? per_audio[0] : 0;
  r->last_placeholder = -1;
  for (int i = 0; i < r->n_tokens; i++) {
    if (r->tokens[i] == cfg->audio_token_index) {
      while (left == 0 && audio + 1 < q->n_audios) {
        audio++;
        k = 0;
        left = per_audio[audio];
      }
      left--;
      r->ident[i] = mix64(r->audio_hash[audio] + (uint64_t)k++);
      r->last_placeholder = i;
    } else {
      r->ident[i] = (uint64_t)(uint32_t)r->tokens[i];
    }
  }
  for (int i = 0; i < q->n_stop; i++) {
    size_t n = strlen(q->stop[i]);
    r->stop[i] = malloc(n + 1);
    if (!r->stop[i]) {
      req_free(r);
      return es_fail(err, ES_ENOMEM, "request: out of memory");
    }
    memcpy(r->stop[i], q->stop[i], n + 1);
    r->n_stop = i + 1;
  }
  r->usage.prompt_tokens = r->n_prompt;
  r->usage.audio_tokens = audio_tokens;
  pthread_mutex_lock(&e->mu);
  int backlog = e->n_incoming + e->n_waiting_engine;
  if (e->stopping || backlog >= e->opts.max_queue) {
    int stopping = e->stopping;
    pthread_mutex_unlock(&e->mu);
    req_free(r);
    return stopping ? es_fail(err, ES_EINVAL, "engine: shutting down")
                    : es_fail(err, ES_ETOOBIG, "engine: the queue is full (%d waiting)", e->opts.max_queue);
  }
  /* the samples change hands only once the request is certain to be queued */
  for (size_t a = 0; a < q->n_audios; a++) r->audios[a] = q->audios[a];
  r->n_audios = q->n_audios;
  r->id = e->next_id++;
  r->t_submit = es_now_s();
  if (e->in_tail) e->in_tail->in_next = r; else e->in_head = r;
  e->in_tail = r;
  e->n_incoming++;
  r->reg_next = e->registry;
  if (e->registry) e->registry->reg_prev = r;
  e->registry = r;
  e->stats.submitted++;
  e->stats.waiting = e->n_incoming + e->n_waiting_engine;
  *id = r->id;
  pthread_cond_signal(&e->cv);
  pthread_mutex_unlock(&e->mu);
  return ES_OK;
}

int eng_cancel(eng_t *e, uint64_t id) {
  int found = 0;
  pthread_mutex_lock(&e->mu);
  for (req_t *r = e->registry; r; r = r->reg_next)
    if (r->id == id && !r->finished) {
      r->cancelled = 1;
      found = 1;
      break;
    }
  if (found) pthread_cond_signal(&e->cv);
  pthread_mutex_unlock(&e->mu);
  return found;
}

void eng_get_stats(eng_t *e, eng_stats_t *out) {
  pthread_mutex_lock(&e->mu);
  *out = e->stats;
  pthread_mutex_unlock(&e->mu);
}
