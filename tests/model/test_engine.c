/* test_engine: the engine API on tiny-b (ids only, no tokenizer): events, cancellation, the bounded queue,
 * request validation, KV blocks returned, seeded reproducibility, and greedy output equal to transformers'
 * for a request submitted with golden samples (mel computed by the engine from the ffmpeg samples); a generated
 * <|AUDIO|> id is fed back like any token (transformers embeds it at decode), not an error. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "golden.h"
#include "runtime.h"
#include "test_util.h"

static golden_t G;

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done, n_tokens, cancel_after;
  eng_t *engine;
  uint64_t id;
  eng_finish_t finish;
  int32_t ids[256];
  char error[512];
  eng_usage_t usage;
} sink_t;

static void sink_init(sink_t *s) {
  memset(s, 0, sizeof *s);
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
}

static void on_event(void *ctx, const eng_event_t *ev) {
  sink_t *s = ctx;
  pthread_mutex_lock(&s->mu);
  if (ev->token >= 0 && s->n_tokens < 256) s->ids[s->n_tokens++] = ev->token;
  if (s->cancel_after && s->n_tokens == s->cancel_after) eng_cancel(s->engine, ev->id);
  if (ev->finish != ENG_FINISH_NONE) {
    s->finish = ev->finish;
    s->usage = ev->usage;
    if (ev->error) snprintf(s->error, sizeof s->error, "%s", ev->error);
    s->done = 1;
    pthread_cond_broadcast(&s->cv);
  }
  pthread_mutex_unlock(&s->mu);
}

static void sink_wait(sink_t *s) {
  pthread_mutex_lock(&s->mu);
  while (!s->done) pthread_cond_wait(&s->cv, &s->mu);
  pthread_mutex_unlock(&s->mu);
}

/* A request for golden case b-speech: prompt ids and the ffmpeg samples of its audio (malloc'd copy). */
static int make_request(eng_request_t *q, npy_array_t *prompt, sink_t *sink, es_error_t *err) {
  memset(q, 0, sizeof *q);
  const cJSON *c = NULL, *x;
  cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(G.manifest, "cases")) {
    if (!strcmp(cJSON_GetObjectItemCaseSensitive(x, "name")->valuestring, "b-speech")) c = x;
  }
  if (!c) return es_fail(err, ES_ENOTFOUND, "case b-speech");
  npy_free(prompt); /* the previous request's copy: eng_submit copied it */
  int rc = golden_read_npy(&G, cJSON_GetObjectItemCaseSensitive(c, "prompt_ids")->valuestring, prompt, err);
  if (rc) return rc;
  const char *aid = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(c, "audios"), 0)->valuestring;
  npy_array_t s;
  rc = golden_read_samples(&G, cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(G.manifest, "audios"),
                                                                aid),
                           &s, err);
  if (rc) return rc;
  q->prompt_ids = prompt->data;
  q->n_prompt = (size_t)prompt->count;
  q->audios[0].samples = s.data; /* ownership goes to the engine at submit */
  q->audios[0].n_samples = (size_t)s.count;
  q->n_audios = 1;
  q->long_audio = AUDIO_LONG_TRUNCATE;
  smp_params_default(&q->sampling);
  q->sampling.temperature = 0;
  q->sampling.max_tokens = 20;
  q->sampling.ignore_eos = 1;
  q->callback = on_event;
  q->callback_ctx = sink;
  return ES_OK;
}

int main(void) {
  es_error_t err;
  es_error_clear(&err);
  if (golden_open(&G, ES_SOURCE_DIR, &err)) {
    fprintf(stderr, "%s\n", err.msg);
    return 1;
  }
  rt_opts_t ro = {.model = ES_SOURCE_DIR "/tests/golden/checkpoints/tiny-b", .device = RT_DEVICE_CPU,
                  .max_model_len = 1024, .prefill_chunk = 64, .max_queue = 2, .max_num_seqs = 1};
  rt_t rt;
  int rc = rt_open(&ro, &rt, &err);
  T_CHECK(rc == 0, "rt_open: %s", err.msg);
  if (rc) return t_finish();

  /* 1. greedy through the engine (chunked prefill of 64 rows, mel by the engine) = transformers */
  sink_t s1;
  sink_init(&s1);
  eng_request_t q;
  npy_array_t prompt = {0}, greedy = {0};
  uint64_t id;
  T_CHECK(make_request(&q, &prompt, &s1, &err) == 0, "%s", err.msg);
  T_CHECK(eng_submit(rt.engine, &q, &id, &err) == 0, "submit: %s", err.msg);
  sink_wait(&s1);
  T_CHECK(s1.finish == ENG_FINISH_LENGTH && s1.n_tokens == 20, "finish %d after %d tokens (%s)", s1.finish,
          s1.n_tokens, s1.error);
  golden_read_npy(&G, "tests/golden/fixtures/cases/b-speech/greedy_ids.npy", &greedy, &err);
  T_CHECK(greedy.count == 20 && memcmp(greedy.data, s1.ids, sizeof(int32_t) * 20) == 0,
          "engine greedy ids differ from transformers");
  T_CHECK(s1.usage.prompt_tokens == (int)prompt.count && s1.usage.audio_tokens == 146 &&
              s1.usage.completion_tokens == 20,
          "usage %d/%d/%d", s1.usage.prompt_tokens, s1.usage.audio_tokens, s1.usage.completion_tokens);
  T_CHECK(s1.usage.first_token_s > 0 && s1.usage.total_s >= s1.usage.first_token_s, "timings");

  /* 2. cancel from the callback after 3 tokens: a final CANCELLED event, nothing after it */
  sink_t s2;
  sink_init(&s2);
  s2.cancel_after = 3;
  s2.engine = rt.engine;
  T_CHECK(make_request(&q, &prompt, &s2, &err) == 0, "%s", err.msg);
  q.sampling.max_tokens = 100;
  T_CHECK(eng_submit(rt.engine, &q, &id, &err) == 0, "submit: %s", err.msg);
  sink_wait(&s2);
  T_CHECK(s2.finish == ENG_FINISH_CANCELLED && s2.n_tokens == 3, "cancel: finish %d after %d tokens", s2.finish,
          s2.n_tokens);
  T_CHECK(eng_cancel(rt.engine, id) == 0, "a finished id is unknown");

  /* 3. validation: placeholders that do not match the audio, N = 0 audio, bad sampling, no callback */
  sink_t s3;
  sink_init(&s3);
  T_CHECK(make_request(&q, &prompt, &s3, &err) == 0, "%s", err.msg);
  q.n_prompt -= 1; /* still fine: the last prompt id is text */
  int32_t *ids = prompt.data;
  int32_t saved = ids[5];
  ids[5] = 7; /* one placeholder fewer */
  rc = eng_submit(rt.engine, &q, &id, &err);
  T_CHECK(rc == ES_EINVAL && strstr(err.msg, "placeholders"), "placeholder mismatch: %d %s", rc, err.msg);
  ids[5] = saved;
  size_t n_saved = q.audios[0].n_samples;
  q.audios[0].n_samples = 300;
  rc = eng_submit(rt.engine, &q, &id, &err);
  T_CHECK(rc == ES_EINVAL && strstr(err.msg, "too short"), "N = 0 audio: %d %s", rc, err.msg);
  q.audios[0].n_samples = n_saved;
  q.sampling.top_p = 0;
  rc = eng_submit(rt.engine, &q, &id, &err);
  T_CHECK(rc == ES_EINVAL, "top_p 0 accepted");
  q.sampling.top_p = 1;
  q.sampling.max_tokens = 5000;
  rc = eng_submit(rt.engine, &q, &id, &err);
  T_CHECK(rc == ES_ETOOBIG, "a context over the limit accepted: %s", err.msg);
  q.sampling.max_tokens = 20;
  q.callback = NULL;
  T_CHECK(eng_submit(rt.engine, &q, &id, &err) == ES_EINVAL, "no callback accepted");
  free(q.audios[0].samples); /* failed submits leave the samples with the caller */

  /* 4. seeded sampling through the engine: same seed, same ids; another seed differs */
  sink_t a, b, c;
  sink_t *sinks[3] = {&a, &b, &c};
  uint64_t seeds[3] = {11, 11, 12};
  for (int i = 0; i < 3; i++) {
    sink_init(sinks[i]);
    T_CHECK(make_request(&q, &prompt, sinks[i], &err) == 0, "%s", err.msg);
    q.sampling.temperature = 1.0;
    q.sampling.has_seed = 1;
    q.sampling.seed = seeds[i];
    q.sampling.max_tokens = 16;
    T_CHECK(eng_submit(rt.engine, &q, &id, &err) == 0, "submit: %s", err.msg);
    sink_wait(sinks[i]);
  }
  T_CHECK(a.n_tokens == 16 && b.n_tokens == 16 && memcmp(a.ids, b.ids, sizeof a.ids) == 0, "same seed differs");
  T_CHECK(memcmp(a.ids, c.ids, sizeof a.ids) != 0, "seeds 11 and 12 agree");
  T_CHECK(a.usage.seed == 11, "the seed is reported");

  /* 5. the bounded queue: with one request running and two waiting, a fourth is refused */
  sink_t q1, q2, q3, q4;
  sink_t *qs[4] = {&q1, &q2, &q3, &q4};
  uint64_t qid[4];
  int refused = 0;
  for (int i = 0; i < 4; i++) {
    sink_init(qs[i]);
    T_CHECK(make_request(&q, &prompt, qs[i], &err) == 0, "%s", err.msg);
    q.sampling.max_tokens = 200;
    rc = eng_submit(rt.engine, &q, &qid[i], &err);
    if (rc == ES_ETOOBIG) {
      refused++;
      free(q.audios[0].samples);
      qs[i]->done = 1;
    }
    if (i == 0) sleep_ms(100); /* let the first one start running */
  }
  T_CHECK(refused >= 1, "a full queue accepted everything");
  for (int i = 0; i < 4; i++) eng_cancel(rt.engine, qid[i]);
  for (int i = 0; i < 4; i++) sink_wait(qs[i]);
  eng_stats_t st;
  sleep_ms(50);
  eng_get_stats(rt.engine, &st);
  T_CHECK(st.running == 0 && st.waiting == 0, "engine busy after everything finished: %d running %d waiting",
          st.running, st.waiting);
  T_CHECK(st.kv_blocks_free == st.kv_blocks_total, "KV blocks not all free: %d of %d", st.kv_blocks_free,
          st.kv_blocks_total);
  T_CHECK(st.cancelled >= 2, "cancelled count %llu", (unsigned long long)st.cancelled);

  /* 6. sampling that generates the audio placeholder id (tiny-b's vocabulary has 256 ids, so a seeded temperature-1
   * request meets it within a few hundred tokens): the id goes back into the next step as a plain token — the
   * request runs to its length, as transformers' generate() would (it merges audio only in the prefill) */
  int found = 0;
  for (uint64_t seed = 1; seed <= 40 && !found; seed++) {
    sink_t sa;
    sink_init(&sa);
    T_CHECK(make_request(&q, &prompt, &sa, &err) == 0, "%s", err.msg);
    q.sampling.temperature = 1.0;
    q.sampling.has_seed = 1;
    q.sampling.seed = seed;
    q.sampling.max_tokens = 200;
    T_CHECK(eng_submit(rt.engine, &q, &id, &err) == 0, "submit: %s", err.msg);
    sink_wait(&sa);
    T_CHECK(sa.finish == ENG_FINISH_LENGTH && sa.n_tokens == 200, "seed %llu: finish %d after %d tokens (%s)",
            (unsigned long long)seed, sa.finish, sa.n_tokens, sa.error);
    for (int i = 0; i + 1 < sa.n_tokens; i++) found |= sa.ids[i] == rt.cfg.audio_token_index;
  }
  T_CHECK(found, "no seed of 1..40 generated the placeholder id %d: the case is not exercised",
          rt.cfg.audio_token_index);

  rt_close(&rt);
  npy_free(&prompt);
  npy_free(&greedy);
  golden_close(&G);
  return t_finish();
}
