/* metrics: the server's Prometheus metrics, under vLLM's names where vLLM has one (SERVING.md §1.8), so
 * dashboards and `vllm bench`-style tooling read earshot unchanged.
 *
 * Request-level histograms are observed by the server (TTFT and end-to-end from the request's arrival at the
 * HTTP layer, as vLLM measures from frontend arrival); gauges and token counters come from the engine's
 * statistics at scrape time. Every vLLM series carries the label model_name.
 * ref: vLLM docs/design/metrics.md and vllm/v1/metrics/loggers.py (names, bucket boundaries).
 * Thread safety: observe/count from any thread (one mutex); render from any thread.
 */
#pragma once

#include <stddef.h>

#include "engine.h"
#include "es_error.h"

typedef struct met met_t;

typedef enum {
  MET_TTFT = 0,   /* vllm:time_to_first_token_seconds */
  MET_ITL,        /* vllm:inter_token_latency_seconds */
  MET_E2E,        /* vllm:e2e_request_latency_seconds */
  MET_QUEUE,      /* vllm:request_queue_time_seconds */
  MET_PROMPT_LEN, /* vllm:request_prompt_tokens */
  MET_GEN_LEN,    /* vllm:request_generation_tokens */
  MET_N_HIST
} met_hist_t;

int met_init(met_t **out, es_error_t *err);
void met_free(met_t *m);

void met_observe(met_t *m, met_hist_t h, double v);
/* A finished request: finish is "stop", "length", "abort" or "error" (vllm:request_success_total counts the
 * first two, as vLLM does; earshot:requests_finished_total all). */
void met_finished(met_t *m, const char *finish);
/* A request's final engine event, e2e_s after the request arrived: E2E, queue time, prompt and generation
 * lengths, and met_finished with the finish as vLLM names it (cancelled = "abort"). */
void met_request_done(met_t *m, double e2e_s, const eng_event_t *final);
/* One HTTP response with this status (earshot:http_responses_total{status}). */
void met_http(met_t *m, int status);

/* A voice session opened (1) or ended (0): earshot:voice_sessions (gauge), earshot:voice_sessions_total. */
void met_voice_session(met_t *m, int opened);

/* Renders the exposition text (malloc'd, *len bytes). stats may be NULL (model not loaded yet). */
int met_render(met_t *m, const char *model_name, const eng_stats_t *stats, char **out, size_t *len, es_error_t *err);
