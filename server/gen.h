/* gen: one generation request as the server tracks it, from the end of its upload to its last byte on the wire.
 *
 * A srv_gen_t is shared by up to four owners, each holding one reference: the HTTP connection (until
 * libmicrohttpd's completion callback), the decode worker (while it prepares the request), the engine (until
 * the request's final event) and, for a streamed response, libmicrohttpd's response object (until its free
 * callback). Whoever drops the last reference frees it.
 *
 * Suspend/resume (API-NOTES §B2, pattern A): the connection is suspended while the worker prepares the request,
 * while a non-streamed request generates, and while a stream has nothing to send. `suspended` is set under `mu`
 * right where MHD_suspend_connection is called (the access handler or the SSE reader, the only safe places), and
 * gen_wake resumes only a connection so marked, under the same mutex; so resume is never called on a connection
 * that is not suspended.
 *
 * The engine callback formats OpenAI / vLLM wire objects (SERVING.md §1.6) into the stream buffer, or keeps the
 * text for the final JSON; it never blocks beyond `mu`.
 * Thread safety: fields marked (mu) are read and written under mu; the rest are set before the request is
 * submitted to the engine and read-only afterwards.
 */
#pragma once

#include <cjson/cJSON.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "engine.h"
#include "metrics.h"
#include "request.h"

typedef struct srv_gen {
  pthread_mutex_t mu;
  int refs; /* (mu) */

  /* set at creation, on the HTTP thread */
  srv_kind_t kind;
  char id[48];       /* "chatcmpl-…" / "trsc-…" */
  long long created; /* unix seconds */
  const char *model; /* the served model name (the server outlives every gen) */
  double t_arrival;  /* monotonic seconds when the request's headers arrived */
  met_t *met;
  eng_t *eng;
  char *body; /* chat: the JSON body (worker input; freed by the worker) */
  size_t body_len;
  srv_req_t *req; /* the parsed request (worker input; freed by the worker) */

  /* set by the worker before eng_submit */
  int stream, include_usage;
  int logprobs;     /* chat: OpenAI logprobs requested (entries per token) */
  const tok_t *tok; /* decodes the logprobs' token strings */
  srv_fmt_t fmt;
  double audio_seconds;
  char language[32]; /* requested, or detected from the first language tag */
  int stop_ids[SMP_MAX_STOP_IDS];
  int n_stop_ids;
  char *stops[ENG_MAX_STOPS]; /* owned copies, for stop_reason */
  int n_stops;

  /* (mu) */
  struct MHD_Connection *mc; /* NULL once libmicrohttpd completed the request */
  int suspended;
  int prepared; /* the worker finished: fail.status != 0, or submitted */
  srv_fail_t fail;
  int submitted;
  uint64_t eng_id;
  int response_queued; /* a streamed response is on the wire */
  int client_gone;     /* the response ended early (disconnect, error) */
  int done;            /* the engine's final event arrived */
  int eof;             /* the stream's last byte ("data: [DONE]") is in buf */
  int abandoned;       /* shutdown gave up waiting for the engine */
  char *buf;           /* stream bytes not yet sent: [off, len) */
  size_t len, off, cap;
  double last_out; /* when bytes last left (keep-alive timing) */
  int role_sent;
  tok_text_t text; /* non-stream: the whole text */
  cJSON *lp_all;   /* non-stream with logprobs: every token's entry */
  char carry[16];  /* transcription stream: a language tag that may be arriving */
  size_t n_carry;
  eng_finish_t finish;
  int stop_index;
  int32_t last_token;
  eng_usage_t usage;
  char error[ES_ERROR_MSG_MAX];
  int oom;

  /* engine thread only */
  int n_tokens;
  double t_last_token;

  /* the server's list of live gens (server mutex) */
  struct srv_gen *prev, *next, *job_next;
  int listed;
} srv_gen_t;

srv_gen_t *gen_new(srv_kind_t kind, const char *model, met_t *met, double t_arrival);
void gen_ref(srv_gen_t *g);
void gen_unref(srv_gen_t *g);

/* Resumes the connection if it is suspended (caller holds g->mu). */
void gen_wake_locked(srv_gen_t *g);
/* Marks the connection suspended and suspends it (caller holds g->mu; only from the access handler or the
 * SSE reader). */
void gen_suspend_locked(srv_gen_t *g);

/* The engine callback (engine thread); callback_ctx = the gen, which holds a reference for the engine. */
void gen_on_event(void *ctx, const eng_event_t *ev);

/* Appends an SSE comment (keep-alive) when the stream has been idle for idle_s; returns 1 if it did. */
int gen_keepalive(srv_gen_t *g, double now, double idle_s);

/* Shutdown: ends a stream or a waiting non-stream request that the engine will not finish in time, with an
 * error (caller holds g->mu). */
void gen_abandon_locked(srv_gen_t *g, const char *why);

/* The streamed response (content reader + free callback); takes a reference. */
struct MHD_Response *gen_sse_response(srv_gen_t *g);

/* The final body of a non-streamed request (malloc'd), its content type and HTTP status. */
int gen_final_body(srv_gen_t *g, char **body, size_t *len, const char **content_type, int *status);

/* An OpenAI error object {"error": {"message", "type", "param", "code"}} (malloc'd). */
char *gen_error_json(int status, const char *message, const char *param);

double gen_now(void);
