/* bench_engine: `earshot bench engine --concurrency N[,N2,...]` (also `earshot bench --concurrency N`) — drives
 * the engine with N requests in flight at once and reports aggregate generated tokens/s, the steady decode rate
 * (tokens over the time of the steps that only decoded) and time-to-first-token percentiles, plus what the
 * scheduler did (decode batch sizes, preemptions). Several levels run one after another on one loaded model.
 *
 * Requests are synthetic and need no tokenizer: a deterministic S-second clip per request (different per
 * request, so no two share audio blocks), P text ids, the audio span, greedy decoding of exactly
 * --output-tokens with eos ignored. Time to first token is measured by the engine from submission (samples
 * in memory) to the first token id, mel and queueing included.
 * Exit codes: 0 ok, 1 failure, 2 usage.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "es_clock.h"
#include "model_flags.h"
#include "runtime.h"

int bench_engine(int argc, char **argv);

static void usage(FILE *out) {
  fprintf(out,
          "usage: earshot bench engine --concurrency N[,N...] (--model DIR | --dummy-weights --config FILE) [options]\n"
          "  --concurrency N     requests in flight at once (default 8); a list (1,8,32,64) runs each level\n"
          "  --waves W           requests per level = W x N (default 4)\n"
          "  --requests R        requests in all (one level only; default W x N)\n"
          "  --audio-seconds S   clip per request, <= 30 (default 30)\n"
          "  --prompt-tokens P   text tokens per request (default 32)\n"
          "  --output-tokens T   generated tokens per request, eos ignored (default 64)\n"
          "  --json              one JSON object last\n");
  mf_usage(out, MF_OPEN | MF_SIZING);
}

typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int in_flight, done, failed, total_tokens;
  double *ttft; /* [requests] */
  char error[ES_ERROR_MSG_MAX];
} bench_state_t;

typedef struct {
  bench_state_t *st;
  int index;
} req_ctx_t;

static void on_event(void *ctx, const eng_event_t *ev) {
  req_ctx_t *rc = ctx;
  bench_state_t *st = rc->st;
  if (ev->finish == ENG_FINISH_NONE) return;
  pthread_mutex_lock(&st->mu);
  if (ev->finish == ENG_FINISH_ERROR || ev->finish == ENG_FINISH_CANCELLED) {
    st->failed++;
    if (ev->error) snprintf(st->error, sizeof st->error, "%s", ev->error);
  }
  st->ttft[rc->index] = ev->usage.first_token_s;
  st->total_tokens += ev->usage.completion_tokens;
  st->in_flight--;
  st->done++;
  pthread_cond_broadcast(&st->cv);
  pthread_mutex_unlock(&st->mu);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double percentile(const double *sorted, int n, double p) {
  int i = (int)ceil(p / 100.0 * n) - 1;
  return sorted[i < 0 ? 0 : i >= n ? n - 1 : i];
}

#define MAX_LEVELS 16

/* "1,8,32,64" -> levels; 0 and a message on a bad list */
static int parse_levels(const char *s, int *levels) {
  int n = 0;
  while (*s) {
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (end == s || v < 1 || v > 4096 || n == MAX_LEVELS || (*end && *end != ',') || (*end == ',' && !end[1])) {
      fprintf(stderr, "earshot bench engine: --concurrency wants up to %d numbers 1..4096 separated by commas\n",
              MAX_LEVELS);
      return 0;
    }
    levels[n++] = (int)v;
    s = *end ? end + 1 : end;
  }
  if (!n) fprintf(stderr, "earshot bench engine: --concurrency needs a value\n");
  return n;
}

typedef struct {
  int prompt_tokens, output_tokens, json, deterministic, quiet;
  double seconds;
  int *next_clip; /* clips are numbered across levels: no request repeats an earlier one (the prefix cache would
                     serve it) */
} level_opts_t;

static int run_level(rt_t *rt, const level_opts_t *lo, int conc, int requests);

int bench_engine(int argc, char **argv) {
  rt_opts_t ro = {.device = RT_DEVICE_AUTO, .dtype = ES_DT_BF16, .verbose = 1, .max_queue = 1 << 20};
  long long requests_ll = 0, prompt_ll = 32, output_ll = 64, waves_ll = 4;
  int json = 0, levels[MAX_LEVELS] = {8}, n_levels = 1;
  double seconds = 30;
  es_error_t err;
  es_error_clear(&err);
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    }
    int mf = mf_parse("bench engine", MF_OPEN | MF_SIZING, argc, argv, &i, &ro);
    if (mf < 0) return 2;
    if (mf > 0) continue;
    if (!strcmp(a, "--json")) {
      json = 1;
      continue;
    }
    if (!strcmp(a, "--concurrency")) {
      if (i + 1 >= argc || !(n_levels = parse_levels(argv[++i], levels))) return 2;
      continue;
    }
    const mf_number_t numbers[] = {{"--waves", &waves_ll, NULL, 1, 1000},
                                   {"--requests", &requests_ll, NULL, 1, 1 << 20},
                                   {"--audio-seconds", NULL, &seconds, 0.021, 30},
                                   {"--prompt-tokens", &prompt_ll, NULL, 1, 1 << 16},
                                   {"--output-tokens", &output_ll, NULL, 1, 1 << 16}};
    int num = mf_parse_number("bench engine", numbers, (int)(sizeof numbers / sizeof *numbers), argc, argv, &i);
    if (num < 0) return 2;
    if (num == 0) {
      fprintf(stderr, "earshot bench engine: unknown or incomplete argument '%s'\n\n", a);
      usage(stderr);
      return 2;
    }
  }
  if (!ro.model && !(ro.dummy_weights && ro.config)) {
    fprintf(stderr, "earshot bench engine: need --model DIR or --dummy-weights --config FILE\n");
    return 2;
  }
  if (requests_ll > 0 && n_levels > 1) {
    fprintf(stderr, "earshot bench engine: --requests with several concurrency levels: use --waves\n");
    return 2;
  }
  int most = 0;
  for (int l = 0; l < n_levels; l++) most = levels[l] > most ? levels[l] : most;
  if (ro.max_num_seqs <= 0) ro.max_num_seqs = most > 256 ? 256 : most;

  rt_t rt;
  if (rt_open(&ro, &rt, &err)) {
    fprintf(stderr, "earshot bench engine: %s\n", err.msg);
    return 1;
  }
  int next_clip = 0;
  /* one request first, not reported: the first steps record graphs, plan GEMMs and load kernels */
  level_opts_t warm = {(int)prompt_ll, 4, 0, ro.deterministic, 1, seconds, &next_clip};
  int status = run_level(&rt, &warm, 1, 1);
  level_opts_t lo = {(int)prompt_ll, (int)output_ll, json, ro.deterministic, 0, seconds, &next_clip};
  for (int l = 0; l < n_levels && !status; l++)
    status = run_level(&rt, &lo, levels[l], requests_ll > 0 ? (int)requests_ll : (int)waves_ll * levels[l]);
  rt_close(&rt); /* stops the engine first: no callback runs after this */
  return status;
}

/* One level: requests submitted with at most conc in flight; the figures of this level alone (engine statistics
 * are taken as differences). 0 ok, 1 failure. */
static int run_level(rt_t *rt, const level_opts_t *lo, int conc, int requests) {
  const model_config_t *cfg = &rt->cfg;
  const int prompt_tokens = lo->prompt_tokens, output_tokens = lo->output_tokens, json = lo->json;
  const double seconds = lo->seconds;
  es_error_t err;
  es_error_clear(&err);
  eng_stats_t before;
  eng_get_stats(rt->engine, &before);
  size_t n_samples = (size_t)(seconds * 16000);
  int n_audio = eng_audio_tokens(n_samples, AUDIO_LONG_TRUNCATE);
  int n_prompt = prompt_tokens + n_audio;
  int32_t *prompt = malloc(sizeof(int32_t) * (size_t)n_prompt);
  bench_state_t st = {.ttft = calloc((size_t)requests, sizeof(double))};
  req_ctx_t *ctxs = calloc((size_t)requests, sizeof(req_ctx_t));
  int status = 1;
  if (!prompt || !st.ttft || !ctxs) {
    fprintf(stderr, "earshot bench engine: out of memory\n");
    goto out;
  }
  pthread_mutex_init(&st.mu, NULL);
  pthread_cond_init(&st.cv, NULL);
  /* text ids away from the special ids at both ends of the vocabulary; the audio span in the middle */
  for (int i = 0; i < n_prompt; i++) {
    int t = i < prompt_tokens / 2 ? i : i - n_audio;
    prompt[i] = (i >= prompt_tokens / 2 && i < prompt_tokens / 2 + n_audio) ? cfg->audio_token_index
                                                                           : 10 + (t * 7919) % (cfg->vocab_size / 2);
  }
  double t0 = es_now_s();
  int submitted = 0;
  while (submitted < requests) {
    pthread_mutex_lock(&st.mu);
    while (st.in_flight >= conc) pthread_cond_wait(&st.cv, &st.mu);
    st.in_flight++;
    pthread_mutex_unlock(&st.mu);
    eng_request_t q;
    memset(&q, 0, sizeof q);
    float *x = malloc(sizeof(float) * n_samples);
    if (!x) { /* the requests already in flight still call back into st: wait for them */
      fprintf(stderr, "earshot bench engine: out of memory\n");
      pthread_mutex_lock(&st.mu);
      st.in_flight--;
      pthread_mutex_unlock(&st.mu);
      goto wait;
    }
    /* a different tone + noise per request */
    const int clip = (*lo->next_clip)++;
    uint32_t s = 2463534242u + (uint32_t)clip * 747796405u;
    for (size_t k = 0; k < n_samples; k++) {
      s ^= s << 13, s ^= s >> 17, s ^= s << 5;
      x[k] = 0.3f * sinf(6.2831853f * (200.0f + 10.0f * (float)(clip % 700)) * (float)k / 16000.0f) +
             0.05f * ((float)(s >> 8) / 16777216.0f - 0.5f);
    }
    q.audios[0] = (eng_audio_t){x, n_samples};
    q.n_audios = 1;
    q.prompt_ids = prompt;
    q.n_prompt = (size_t)n_prompt;
    smp_params_default(&q.sampling);
    q.sampling.temperature = 0;
    q.sampling.max_tokens = output_tokens;
    q.sampling.ignore_eos = 1;
    ctxs[submitted] = (req_ctx_t){&st, submitted};
    q.callback = on_event;
    q.callback_ctx = &ctxs[submitted];
    uint64_t id;
    if (eng_submit(rt->engine, &q, &id, &err)) {
      free(x);
      fprintf(stderr, "earshot bench engine: %s\n", err.msg);
      pthread_mutex_lock(&st.mu);
      st.in_flight--;
      pthread_mutex_unlock(&st.mu);
      goto wait;
    }
    submitted++;
  }
wait:
  pthread_mutex_lock(&st.mu);
  while (st.done < submitted) pthread_cond_wait(&st.cv, &st.mu);
  pthread_mutex_unlock(&st.mu);
  double wall = es_now_s() - t0;
  if (st.failed || submitted < requests) {
    fprintf(stderr, "earshot bench engine: %d of %d requests failed: %s\n", st.failed + requests - submitted,
            requests, st.error);
    goto out;
  }
  eng_stats_t es;
  eng_get_stats(rt->engine, &es);
  /* this level's share of the engine's running totals (the largest batch is the run's, across levels) */
  es.steps -= before.steps;
  es.preemptions -= before.preemptions;
  es.prefix_hits -= before.prefix_hits;
  for (int b = 0; b < ENG_HIST_BUCKETS; b++) es.decode_batch_hist[b] -= before.decode_batch_hist[b];
  es.decode_only_steps -= before.decode_only_steps;
  es.decode_only_tokens -= before.decode_only_tokens;
  es.decode_only_s -= before.decode_only_s;
  const double dec_tps = es.decode_only_s > 0 ? (double)es.decode_only_tokens / es.decode_only_s : 0;
  const double dec_batch = es.decode_only_steps ? (double)es.decode_only_tokens / (double)es.decode_only_steps : 0;
  if (lo->quiet) {
    status = 0;
    goto out;
  }
  qsort(st.ttft, (size_t)requests, sizeof(double), cmp_double);
  double tps = st.total_tokens / wall, p50 = percentile(st.ttft, requests, 50),
         p90 = percentile(st.ttft, requests, 90), p99 = percentile(st.ttft, requests, 99);
  printf("engine on %s: %d requests, %d in flight, %.1f s audio + %d text tokens each, %d output tokens, "
         "deterministic %s\n",
         rt->device_desc, requests, conc, seconds, prompt_tokens, output_tokens, lo->deterministic ? "on" : "off");
  printf("  aggregate %.1f generated tokens/s over %.2f s; time to first token p50 %.1f ms, p90 %.1f ms, "
         "p99 %.1f ms\n",
         tps, wall, 1e3 * p50, 1e3 * p90, 1e3 * p99);
  printf("  steady decode %.1f tokens/s (%llu decode-only steps, mean batch %.1f, %.3f ms per step)\n", dec_tps,
         (unsigned long long)es.decode_only_steps, dec_batch,
         es.decode_only_steps ? 1e3 * es.decode_only_s / (double)es.decode_only_steps : 0.0);
  printf(
      "  %llu steps, largest decode batch %d, preemptions %llu, prefix hits %llu, decode batch histogram (1, 2, 3-4, "
      "5-8, ..., 65+):",
      (unsigned long long)es.steps, es.max_decode_batch, (unsigned long long)es.preemptions,
      (unsigned long long)es.prefix_hits);
  for (int b = 0; b < ENG_HIST_BUCKETS; b++) printf(" %llu", (unsigned long long)es.decode_batch_hist[b]);
  printf("\n");
  if (json)
    printf(
        "{\"bench\":\"engine\",\"device\":\"%s\",\"concurrency\":%d,\"requests\":%d,\"tokens_per_s\":%.3f,"
        "\"ttft_p50_ms\":%.3f,\"ttft_p90_ms\":%.3f,\"ttft_p99_ms\":%.3f,\"max_decode_batch\":%d,\"preemptions\":%llu,"
        "\"decode_only_tokens_per_s\":%.3f,\"decode_only_mean_batch\":%.2f,\"output_tokens\":%d,\"prefix_hits\":%llu,"
        "\"deterministic\":%s}\n",
        rt->device_desc, conc, requests, tps, 1e3 * p50, 1e3 * p90, 1e3 * p99, es.max_decode_batch,
        (unsigned long long)es.preemptions, dec_tps, dec_batch, output_tokens, (unsigned long long)es.prefix_hits,
        lo->deterministic ? "true" : "false");
  status = 0;
out:
  free(prompt);
  free(st.ttft);
  free(ctxs);
  return status;
}
