/* engine: queue, engine thread and the one-request-at-a-time scheduler. See engine.h.
 *
 * Threads: callers of eng_submit/eng_cancel/eng_get_stats (any thread) touch only the queue, the flags and
 * the statistics, under e->mu. The engine thread owns everything else: the model and backend, the KV block
 * pool, the mel context, the sampler workspace, the logits buffer and the request being run.
 */
#include "engine.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kv_alloc.h"
#include "stop.h"

typedef struct req {
  uint64_t id;
  int32_t *prompt; /* (n_prompt) owned */
  size_t n_prompt;
  int audio_tokens;
  eng_audio_t audios[ENG_MAX_AUDIOS]; /* sample buffers owned */
  size_t n_audios;
  audio_long_policy_t policy;
  smp_params_t sampling;
  char *stop[ENG_MAX_STOPS]; /* owned copies */
  int n_stop;
  int skip_special;
  eng_callback_t cb;
  void *cb_ctx;
  double t_submit;
  int cancelled; /* under eng.mu */
  int finished;  /* under eng.mu: the final event is being or has been delivered */
  struct req *next;
} req_t;

struct eng {
  eng_opts_t opts;
  pthread_t thread;
  int thread_started;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  /* under mu */
  req_t *head, *tail;
  int n_waiting;
  req_t *running;
  int stopping;
  uint64_t next_id;
  eng_stats_t stats;
  /* engine thread only */
  mel_ctx_t *mel;
  smp_workspace_t ws;
  kv_pool_t *kv;
  float *logits;   /* [V] */
  float *mel_buf;  /* [max_audio_batch][128][3000] */
  int *frames;     /* [max_audio_batch] */
  int32_t *pos, *slot, *arow; /* [max_tokens] */
  tok_text_t evtext; /* the text of the event being built */
};

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

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

static void req_free(req_t *r) {
  if (!r) return;
  free(r->prompt);
  for (size_t i = 0; i < r->n_audios; i++) free(r->audios[i].samples);
  for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
  free(r);
}

/* ---- the request, on the engine thread ------------------------------------------------------------------ */

typedef struct {
  eng_t *e;
  req_t *r;
  eng_usage_t usage;
  double t_first;
} run_t;

static int is_cancelled(eng_t *e, req_t *r) {
  pthread_mutex_lock(&e->mu);
  int c = r->cancelled || e->stopping;
  pthread_mutex_unlock(&e->mu);
  return c;
}

static void finish_usage(run_t *run, int generated) {
  double t = now_s();
  run->usage.completion_tokens = generated;
  run->usage.total_s = t - run->r->t_submit;
  if (generated >= 2 && t > run->t_first) run->usage.decode_tokens_per_s = (generated - 1) / (t - run->t_first);
}

static void emit(run_t *run, int32_t token, const char *text, size_t len, eng_finish_t finish, int stop_index,
                 const char *error) {
  if (finish != ENG_FINISH_NONE) {
    pthread_mutex_lock(&run->e->mu);
    run->r->finished = 1;
    pthread_mutex_unlock(&run->e->mu);
  }
  eng_event_t ev = {.id = run->r->id, .token = token, .text = text ? text : "", .text_len = text ? len : 0,
                    .finish = finish, .stop_index = stop_index, .error = error, .usage = run->usage};
  run->r->cb(run->r->cb_ctx, &ev);
}

/* Log-mel features of every window of every audio, encoded in batches into the audio pool from row 0. */
static int encode_audios(eng_t *e, req_t *r, es_error_t *err) {
  const qa_model_opts_t *mo = qa_model_opts(e->opts.model);
  int B = 0, pool_row = 0, rc = 0;
  for (size_t a = 0; a < r->n_audios && !rc; a++) {
    audio_window_t w[64];
    size_t nw = 0;
    rc = audio_windows(r->audios[a].n_samples, r->policy, w, 64, &nw, err);
    for (size_t k = 0; k < nw && !rc; k++) {
      rc = mel_compute(e->mel, r->audios[a].samples + w[k].offset, w[k].count,
                       e->mel_buf + (size_t)B * 128 * QA_MEL_FRAMES, &e->frames[B], NULL, err);
      if (rc) break;
      B++;
      int last = a + 1 == r->n_audios && k + 1 == nw;
      if (B == mo->max_audio_batch || last) {
        int rows = 0;
        rc = qa_encode(e->opts.model, e->mel_buf, e->frames, B, pool_row, &rows, err);
        pool_row += rows;
        B = 0;
      }
    }
  }
  if (!rc && pool_row != r->audio_tokens)
    rc = es_fail(err, ES_EINTERNAL, "encoded %d audio rows for %d placeholders", pool_row, r->audio_tokens);
  /* the samples are no longer needed: give the memory back early */
  for (size_t a = 0; a < r->n_audios; a++) {
    free(r->audios[a].samples);
    r->audios[a].samples = NULL;
  }
  return rc;
}

/* Prefills the prompt in chunks; leaves the last row's logits in e->logits. */
static int prefill(eng_t *e, req_t *r, kv_seq_t *seq, es_error_t *err) {
  const qa_model_opts_t *mo = qa_model_opts(e->opts.model);
  int n = (int)r->n_prompt, chunk = e->opts.prefill_chunk;
  int audio_id = qa_model_config(e->opts.model)->audio_token_index;
  int rc = kv_seq_reserve(e->kv, seq, n, mo->max_blocks_per_seq, err);
  int next_audio = 0;
  for (int start = 0; !rc && start < n; start += chunk) {
    if (is_cancelled(e, r)) return ES_OK; /* the caller notices */
    int len = n - start < chunk ? n - start : chunk;
    for (int i = 0; i < len; i++) {
      e->pos[i] = start + i;
      e->slot[i] = kv_seq_slot(seq, start + i);
      e->arow[i] = r->prompt[start + i] == audio_id ? next_audio++ : -1;
    }
    int32_t q_start[2] = {0, len}, ctx = start + len, lrow = len - 1;
    es_batch_t b = {.n_seqs = 1, .n_tokens = len, .q_start = q_start, .ctx_len = &ctx, .positions = e->pos,
                    .slot = e->slot, .block_table = seq->blocks, .max_blocks = seq->n_blocks};
    int last = start + len == n;
    rc = qa_step(e->opts.model, &b, r->prompt + start, e->arow, &lrow, last ? 1 : 0, e->logits, err);
  }
  return rc;
}

/* Copies the KV pool's free count into the statistics (the pool itself is the engine thread's). */
static void publish_kv(eng_t *e) {
  int free_blocks = kv_pool_free_count(e->kv);
  pthread_mutex_lock(&e->mu);
  e->stats.kv_blocks_free = free_blocks;
  pthread_mutex_unlock(&e->mu);
}

static int decode_one(eng_t *e, kv_seq_t *seq, int pos, int32_t token, es_error_t *err) {
  const qa_model_opts_t *mo = qa_model_opts(e->opts.model);
  int rc = kv_seq_reserve(e->kv, seq, pos + 1, mo->max_blocks_per_seq, err);
  if (rc) return rc;
  int32_t q_start[2] = {0, 1}, ctx = pos + 1, p = pos, slot = kv_seq_slot(seq, pos), arow = -1, lrow = 0;
  es_batch_t b = {.n_seqs = 1, .n_tokens = 1, .q_start = q_start, .ctx_len = &ctx, .positions = &p, .slot = &slot,
                  .block_table = seq->blocks, .max_blocks = seq->n_blocks};
  return qa_step(e->opts.model, &b, &token, &arow, &lrow, 1, e->logits, err);
}

static void run_request(eng_t *e, req_t *r) {
  const model_config_t *cfg = qa_model_config(e->opts.model);
  run_t run = {.e = e, .r = r};
  run.usage.prompt_tokens = (int)r->n_prompt;
  run.usage.audio_tokens = r->audio_tokens;
  run.usage.queue_s = now_s() - r->t_submit;
  es_error_t err;
  es_error_clear(&err);
  smp_state_t st;
  stop_matcher_t sm;
  tok_stream_t ts;
  kv_seq_t seq = {0};
  int have_st = 0, have_sm = 0, rc;
  eng_finish_t finish = ENG_FINISH_NONE;

  if (is_cancelled(e, r)) {
    finish = ENG_FINISH_CANCELLED;
    goto out;
  }
  rc = smp_init(&st, &r->sampling, cfg->vocab_size, cfg->eos_ids, cfg->n_eos, r->prompt, (int)r->n_prompt, &err);
  if (rc) goto fail;
  have_st = 1;
  run.usage.seed = st.seed;
  rc = stop_init(&sm, (const char *const *)r->stop, r->n_stop, 0, &err);
  if (rc) goto fail;
  have_sm = 1;
  if (e->opts.tok) tok_stream_init(&ts, e->opts.tok, r->skip_special);

  if (r->n_audios && (rc = encode_audios(e, r, &err))) goto fail;
  rc = prefill(e, r, &seq, &err);
  publish_kv(e);
  if (rc) goto fail;

  for (int pos = (int)r->n_prompt;; pos++) {
    if (is_cancelled(e, r)) {
      finish = ENG_FINISH_CANCELLED;
      break;
    }
    int32_t token;
    if ((rc = smp_sample(&st, &e->ws, e->logits, &token, &err))) goto fail;
    if (run.t_first == 0) {
      run.t_first = now_s();
      run.usage.first_token_s = run.t_first - r->t_submit;
    }
    smp_finish_t sf = smp_accept(&st, token);
    e->evtext.len = 0;
    stop_result_t res = {.stop_index = -1};
    int stop_index = sf == SMP_FINISH_STOP ? -2 : -1;
    if (sf != SMP_FINISH_STOP && e->opts.tok) {
      /* eos and stop ids emit no text (vLLM); everything else goes through the UTF-8 stream and the
       * stop-string matcher, which holds back what could still start a stop string */
      tok_text_t piece = {0};
      if ((rc = tok_stream_push(&ts, token, &piece, &err)) ||
          (sf != SMP_FINISH_NONE && (rc = tok_stream_flush(&ts, &piece, &err))) ||
          (rc = stop_feed(&sm, piece.data ? piece.data : "", piece.len, smp_stop_strings_active(&st), &res, &err)) ||
          (rc = tok_text_append(&e->evtext, res.text, res.len, &err))) {
        tok_text_free(&piece);
        goto fail;
      }
      tok_text_free(&piece);
      if (res.stopped) {
        sf = SMP_FINISH_STOP;
        stop_index = res.stop_index;
      }
    }
    if (sf == SMP_FINISH_LENGTH || (sf == SMP_FINISH_STOP && !res.stopped)) {
      stop_result_t tail;
      stop_flush(&sm, &tail);
      if (sf == SMP_FINISH_LENGTH && (rc = tok_text_append(&e->evtext, tail.text, tail.len, &err))) goto fail;
    }
    if (sf != SMP_FINISH_NONE) {
      finish = sf == SMP_FINISH_STOP ? ENG_FINISH_STOP : ENG_FINISH_LENGTH;
      finish_usage(&run, st.n_generated);
      emit(&run, token, e->evtext.data, e->evtext.len, finish, stop_index, NULL);
      goto done;
    }
    run.usage.completion_tokens = st.n_generated;
    emit(&run, token, e->evtext.data, e->evtext.len, ENG_FINISH_NONE, -1, NULL);
    if ((rc = decode_one(e, &seq, pos, token, &err))) goto fail;
  }
out:
  finish_usage(&run, have_st ? st.n_generated : 0);
  emit(&run, -1, NULL, 0, finish, -1, NULL);
  goto done;
fail:
  finish = ENG_FINISH_ERROR;
  finish_usage(&run, have_st ? st.n_generated : 0);
  emit(&run, -1, NULL, 0, ENG_FINISH_ERROR, -1, err.msg);
done:
  kv_seq_release(e->kv, &seq);
  publish_kv(e);
  if (have_st) smp_free(&st);
  if (have_sm) stop_free(&sm);
  pthread_mutex_lock(&e->mu);
  e->stats.finished++;
  if (finish == ENG_FINISH_CANCELLED) e->stats.cancelled++;
  if (finish == ENG_FINISH_ERROR) e->stats.failed++;
  e->stats.generated_tokens += (uint64_t)run.usage.completion_tokens;
  e->stats.prompt_tokens += r->n_prompt;
  pthread_mutex_unlock(&e->mu);
}

static void *engine_main(void *arg) {
  eng_t *e = arg;
  for (;;) {
    pthread_mutex_lock(&e->mu);
    while (!e->head && !e->stopping) pthread_cond_wait(&e->cv, &e->mu);
    req_t *r = e->head;
    if (!r) { /* stopping and drained */
      pthread_mutex_unlock(&e->mu);
      break;
    }
    e->head = r->next;
    if (!e->head) e->tail = NULL;
    e->n_waiting--;
    e->running = r;
    pthread_mutex_unlock(&e->mu);

    run_request(e, r);

    pthread_mutex_lock(&e->mu);
    e->running = NULL;
    pthread_mutex_unlock(&e->mu);
    req_free(r);
  }
  return NULL;
}

/* ---- public API ----------------------------------------------------------------------------------------- */

int eng_start(const eng_opts_t *opts, eng_t **out, es_error_t *err) {
  *out = NULL;
  if (!opts->model) return es_fail(err, ES_EINVAL, "engine: no model");
  const qa_model_opts_t *mo = qa_model_opts(opts->model);
  const model_config_t *cfg = qa_model_config(opts->model);
  eng_t *e = calloc(1, sizeof *e);
  if (!e) return es_fail(err, ES_ENOMEM, "engine: out of memory");
  e->opts = *opts;
  if (e->opts.prefill_chunk <= 0 || e->opts.prefill_chunk > mo->max_tokens) e->opts.prefill_chunk = mo->max_tokens;
  if (e->opts.max_queue <= 0) e->opts.max_queue = 64;
  if (e->opts.mel_threads <= 0) e->opts.mel_threads = 1;
  e->next_id = 1;
  pthread_mutex_init(&e->mu, NULL);
  pthread_cond_init(&e->cv, NULL);
  int rc = mel_ctx_init(&e->mel, e->opts.mel_threads, err);
  if (!rc) rc = smp_workspace_init(&e->ws, cfg->vocab_size, err);
  if (!rc) rc = kv_pool_init(mo->kv_blocks, &e->kv, err);
  if (rc) goto fail;
  e->logits = malloc(sizeof(float) * (size_t)cfg->vocab_size);
  e->mel_buf = malloc(sizeof(float) * (size_t)mo->max_audio_batch * 128 * QA_MEL_FRAMES);
  e->frames = malloc(sizeof(int) * (size_t)mo->max_audio_batch);
  e->pos = malloc(sizeof(int32_t) * (size_t)mo->max_tokens);
  e->slot = malloc(sizeof(int32_t) * (size_t)mo->max_tokens);
  e->arow = malloc(sizeof(int32_t) * (size_t)mo->max_tokens);
  if (!e->logits || !e->mel_buf || !e->frames || !e->pos || !e->slot || !e->arow) {
    rc = es_fail(err, ES_ENOMEM, "engine: out of memory");
    goto fail;
  }
  e->stats.kv_blocks_total = kv_pool_total(e->kv);
  e->stats.kv_blocks_free = kv_pool_free_count(e->kv);
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
  smp_workspace_free(&e->ws);
  kv_pool_free(e->kv);
  free(e->logits);
  free(e->mel_buf);
  free(e->frames);
  free(e->pos);
  free(e->slot);
  free(e->arow);
  tok_text_free(&e->evtext);
  pthread_mutex_destroy(&e->mu);
  pthread_cond_destroy(&e->cv);
  free(e);
}

static int validate(eng_t *e, const eng_request_t *q, int *audio_tokens, es_error_t *err) {
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
    int n = eng_audio_tokens(q->audios[a].n_samples, q->long_audio);
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
  int rc = smp_params_validate(&q->sampling, cfg->vocab_size, err);
  if (rc) return rc;
  long long ctx = (long long)mo->max_blocks_per_seq * 16;
  if ((long long)q->n_prompt + q->sampling.max_tokens > ctx)
    return es_fail(err, ES_ETOOBIG, "request: the prompt (%zu tokens) plus max_tokens (%d) exceed the context of %lld",
                   q->n_prompt, q->sampling.max_tokens, ctx);
  *audio_tokens = total;
  return ES_OK;
}

int eng_submit(eng_t *e, const eng_request_t *q, uint64_t *id, es_error_t *err) {
  int audio_tokens = 0;
  int rc = validate(e, q, &audio_tokens, err);
  if (rc) return rc;
  req_t *r = calloc(1, sizeof *r);
  if (!r) return es_fail(err, ES_ENOMEM, "request: out of memory");
  r->prompt = malloc(sizeof(int32_t) * q->n_prompt);
  if (!r->prompt) {
    free(r);
    return es_fail(err, ES_ENOMEM, "request: out of memory");
  }
  memcpy(r->prompt, q->prompt_ids, sizeof(int32_t) * q->n_prompt);
  r->n_prompt = q->n_prompt;
  r->audio_tokens = audio_tokens;
  r->policy = q->long_audio;
  r->sampling = q->sampling;
  r->skip_special = q->skip_special;
  r->cb = q->callback;
  r->cb_ctx = q->callback_ctx;
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
  pthread_mutex_lock(&e->mu);
  if (e->stopping || e->n_waiting >= e->opts.max_queue) {
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
  r->t_submit = now_s();
  if (e->tail)
    e->tail->next = r;
  else
    e->head = r;
  e->tail = r;
  e->n_waiting++;
  e->stats.submitted++;
  *id = r->id;
  pthread_cond_signal(&e->cv);
  pthread_mutex_unlock(&e->mu);
  return ES_OK;
}

int eng_cancel(eng_t *e, uint64_t id) {
  int found = 0;
  pthread_mutex_lock(&e->mu);
  if (e->running && e->running->id == id && !e->running->finished) {
    e->running->cancelled = 1;
    found = 1;
  }
  for (req_t *r = e->head; r && !found; r = r->next)
    if (r->id == id) {
      r->cancelled = 1;
      found = 1;
    }
  pthread_mutex_unlock(&e->mu);
  return found;
}

void eng_get_stats(eng_t *e, eng_stats_t *out) {
  pthread_mutex_lock(&e->mu);
  *out = e->stats;
  out->running = e->running != NULL;
  out->waiting = e->n_waiting;
  pthread_mutex_unlock(&e->mu);
}
