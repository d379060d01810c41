/* metrics: Prometheus text exposition of the server's metrics. See metrics.h. */
#include "metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* vLLM's bucket boundaries (vllm/v1/metrics/loggers.py) */
static const double B_TTFT[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,  0.5,   0.75,
                                1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
static const double B_ITL[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
                               0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
static const double B_E2E[] = {0.3,  0.5,  0.8,  1.0,  1.5,   2.0,   2.5,   5.0,   10.0,   15.0,  20.0,
                               30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
static const double B_TOK[] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000};

#define MAX_BUCKETS 24

typedef struct {
  const char *name, *help;
  const double *bounds;
  int n;
  unsigned long long counts[MAX_BUCKETS]; /* per bucket (not cumulative); [n] = +Inf */
  unsigned long long total;
  double sum;
} hist_t;

#define N_FINISH 4
static const char *FINISH_NAMES[N_FINISH] = {"stop", "length", "abort", "error"};
#define N_STATUS 13
static const int STATUSES[N_STATUS] = {101, 200, 400, 401, 404, 405, 413, 415, 426, 429, 500, 503, 0};

struct met {
  pthread_mutex_t mu;
  hist_t h[MET_N_HIST];
  unsigned long long finished[N_FINISH];
  unsigned long long http[N_STATUS]; /* the last slot: any other status */
  long long voice_open;              /* voice (WebSocket) sessions open now */
  unsigned long long voice_total;    /* ever opened */
};

int met_init(met_t **out, es_error_t *err) {
  met_t *m = calloc(1, sizeof *m);
  if (!m) return es_fail(err, ES_ENOMEM, "metrics: out of memory");
  pthread_mutex_init(&m->mu, NULL);
#define H(i, nm, hp, b) m->h[i] = (hist_t){.name = nm, .help = hp, .bounds = b, .n = (int)(sizeof b / sizeof b[0])}
  H(MET_TTFT, "vllm:time_to_first_token_seconds", "Time from arrival to the first generated token.", B_TTFT);
  H(MET_ITL, "vllm:inter_token_latency_seconds", "Time between successive generated tokens.", B_ITL);
  H(MET_E2E, "vllm:e2e_request_latency_seconds", "Time from arrival to the final event.", B_E2E);
  H(MET_QUEUE, "vllm:request_queue_time_seconds", "Time a request waited in the engine queue.", B_E2E);
  H(MET_PROMPT_LEN, "vllm:request_prompt_tokens", "Prompt tokens per request (audio included).", B_TOK);
  H(MET_GEN_LEN, "vllm:request_generation_tokens", "Generated tokens per request.", B_TOK);
#undef H
  *out = m;
  return ES_OK;
}

void met_request_done(met_t *m, double e2e_s, const eng_event_t *final) {
  met_observe(m, MET_E2E, e2e_s);
  met_observe(m, MET_QUEUE, final->usage.queue_s);
  met_observe(m, MET_PROMPT_LEN, final->usage.prompt_tokens);
  met_observe(m, MET_GEN_LEN, final->usage.completion_tokens);
  met_finished(m, final->finish == ENG_FINISH_STOP        ? "stop"
                  : final->finish == ENG_FINISH_LENGTH    ? "length"
                  : final->finish == ENG_FINISH_CANCELLED ? "abort"
                                                          : "error");
}

void met_voice_session(met_t *m, int opened) {
  pthread_mutex_lock(&m->mu);
  m->voice_open += opened ? 1 : -1;
  if (opened) m->voice_total++;
  pthread_mutex_unlock(&m->mu);
}

void met_free(met_t *m) {
  if (!m) return;
  pthread_mutex_destroy(&m->mu);
  free(m);
}

void met_observe(met_t *m, met_hist_t which, double v) {
  hist_t *h = &m->h[which];
  int b = 0;
  while (b < h->n && v > h->bounds[b]) b++;
  pthread_mutex_lock(&m->mu);
  h->counts[b]++;
  h->total++;
  h->sum += v;
  pthread_mutex_unlock(&m->mu);
}

void met_finished(met_t *m, const char *finish) {
  for (int i = 0; i < N_FINISH; i++)
    if (!strcmp(finish, FINISH_NAMES[i])) {
      pthread_mutex_lock(&m->mu);
      m->finished[i]++;
      pthread_mutex_unlock(&m->mu);
    }
}

void met_http(met_t *m, int status) {
  int i = 0;
  while (i < N_STATUS - 1 && STATUSES[i] != status) i++;
  pthread_mutex_lock(&m->mu);
  m->http[i]++;
  pthread_mutex_unlock(&m->mu);
}

typedef struct {
  char *p;
  size_t len, cap;
  int oom;
} buf_t;

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void
bprintf(buf_t *b, const char *fmt, ...) {
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = b->oom ? 0 : vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (b->oom || n < 0) {
      b->oom = 1;
      return;
    }
    if ((size_t)n < b->cap - b->len) {
      b->len += (size_t)n;
      return;
    }
    size_t cap = (b->cap + (size_t)n + 1) * 2;
    char *q = realloc(b->p, cap);
    if (!q) {
      b->oom = 1;
      return;
    }
    b->p = q;
    b->cap = cap;
  }
}

static void gauge(buf_t *b, const char *name, const char *help, const char *type, const char *label, double v) {
  bprintf(b, "# HELP %s %s\n# TYPE %s %s\n%s{%s} %.17g\n", name, help, name, type, name, label, v);
}

int met_render(met_t *m, const char *model_name, const eng_stats_t *st, char **out, size_t *len, es_error_t *err) {
  *out = NULL;
  *len = 0;
  buf_t b = {.cap = 8192};
  b.p = malloc(b.cap);
  if (!b.p) return es_fail(err, ES_ENOMEM, "metrics: out of memory");
  b.p[0] = '\0';
  /* the label value escapes backslash, quote and newline (Prometheus text format) */
  char label[600];
  size_t k = 0;
  k += (size_t)snprintf(label, sizeof label, "model_name=\"");
  for (const char *c = model_name; *c && k < sizeof label - 4; c++) {
    if (*c == '\\' || *c == '"') label[k++] = '\\';
    if (*c == '\n') {
      label[k++] = '\\';
      label[k++] = 'n';
      continue;
    }
    label[k++] = *c;
  }
  label[k++] = '"';
  label[k] = '\0';

  eng_stats_t s;
  memset(&s, 0, sizeof s);
  if (st) s = *st;
  gauge(&b, "vllm:num_requests_running", "Requests in the engine's running batch.", "gauge", label, s.running);
  gauge(&b, "vllm:num_requests_waiting", "Requests waiting in the engine queue.", "gauge", label, s.waiting);
  double usage = s.kv_blocks_total > 0 ? 1.0 - (double)s.kv_blocks_free / s.kv_blocks_total : 0.0;
  gauge(&b, "vllm:kv_cache_usage_perc", "KV-cache usage: 1 = every block in use.", "gauge", label, usage);
  gauge(&b, "vllm:prompt_tokens_total", "Prompt tokens processed.", "counter", label, (double)s.prompt_tokens);
  gauge(&b, "vllm:generation_tokens_total", "Tokens generated.", "counter", label, (double)s.generated_tokens);
  gauge(&b, "earshot:kv_blocks_total", "KV-cache blocks the engine can hand out.", "gauge", label, s.kv_blocks_total);
  gauge(&b, "earshot:kv_blocks_free", "KV-cache blocks not held by any sequence.", "gauge", label, s.kv_blocks_free);
  gauge(&b, "earshot:engine_requests_submitted_total", "Requests the engine accepted.", "counter", label,
        (double)s.submitted);
  gauge(&b, "earshot:engine_requests_cancelled_total", "Requests cancelled (client gone, shutdown).", "counter", label,
        (double)s.cancelled);
  gauge(&b, "earshot:engine_requests_failed_total", "Requests that failed in the engine.", "counter", label,
        (double)s.failed);

  pthread_mutex_lock(&m->mu);
  bprintf(&b, "# HELP vllm:request_success_total Requests finished with stop or length.\n"
              "# TYPE vllm:request_success_total counter\n");
  for (int i = 0; i < 2; i++)
    bprintf(&b, "vllm:request_success_total{%s,finished_reason=\"%s\"} %llu\n", label, FINISH_NAMES[i], m->finished[i]);
  bprintf(&b, "# HELP earshot:requests_finished_total Requests finished, by reason.\n"
              "# TYPE earshot:requests_finished_total counter\n");
  for (int i = 0; i < N_FINISH; i++)
    bprintf(&b, "earshot:requests_finished_total{%s,finished_reason=\"%s\"} %llu\n", label, FINISH_NAMES[i],
            m->finished[i]);
  bprintf(&b,
          "# HELP earshot:voice_sessions Live voice (WebSocket /v1/realtime) sessions open now.\n"
          "# TYPE earshot:voice_sessions gauge\n"
          "earshot:voice_sessions{%s} %lld\n",
          label, m->voice_open);
  bprintf(&b,
          "# HELP earshot:voice_sessions_total Live voice sessions opened.\n"
          "# TYPE earshot:voice_sessions_total counter\n"
          "earshot:voice_sessions_total{%s} %llu\n",
          label, m->voice_total);
  bprintf(&b, "# HELP earshot:http_responses_total HTTP responses, by status.\n"
              "# TYPE earshot:http_responses_total counter\n");
  for (int i = 0; i < N_STATUS; i++) {
    if (i < N_STATUS - 1 && STATUSES[i] == 0) continue;
    if (i == N_STATUS - 1)
      bprintf(&b, "earshot:http_responses_total{status=\"other\"} %llu\n", m->http[i]);
    else
      bprintf(&b, "earshot:http_responses_total{status=\"%d\"} %llu\n", STATUSES[i], m->http[i]);
  }
  for (int i = 0; i < MET_N_HIST; i++) {
    const hist_t *h = &m->h[i];
    bprintf(&b, "# HELP %s %s\n# TYPE %s histogram\n", h->name, h->help, h->name);
    unsigned long long cum = 0;
    for (int j = 0; j < h->n; j++) {
      cum += h->counts[j];
      bprintf(&b, "%s_bucket{%s,le=\"%g\"} %llu\n", h->name, label, h->bounds[j], cum);
    }
    bprintf(&b, "%s_bucket{%s,le=\"+Inf\"} %llu\n%s_sum{%s} %.17g\n%s_count{%s} %llu\n", h->name, label, h->total,
            h->name, label, h->sum, h->name, label, h->total);
  }
  pthread_mutex_unlock(&m->mu);
  if (b.oom) {
    free(b.p);
    return es_fail(err, ES_ENOMEM, "metrics: out of memory");
  }
  *out = b.p;
  *len = b.len;
  return ES_OK;
}
