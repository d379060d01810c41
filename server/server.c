/* server: the HTTP daemon, routes, uploads, decode workers, keep-alives and shutdown. See server.h.
 *
 * One libmicrohttpd request goes through the access handler several times (API-NOTES §B2): once after the
 * headers (route, method, key and Content-Length are checked, per-request state is made), once per body chunk
 * (appended, or fed to the multipart post processor), then with no data: GET routes answer at once; POST routes
 * hand a srv_gen_t to a decode worker and suspend the connection. The worker resumes it when the request is in
 * the engine (or failed), and the handler runs again: it queues the error, the SSE response, or (non-streamed)
 * suspends again until the engine's final event resumes it.
 * ref: libmicrohttpd 0.9.75 microhttpd.h; API-NOTES §B2 (pattern A); SERVING.md §1.
 */
#define _XOPEN_SOURCE 700 /* realpath */
#include "server.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <limits.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "audio_decode.h"
#include "es_build_info.h"
#include "gen.h"
#include "metrics.h"
#include "request.h"
#include "voice.h"
#include "ws.h"

#define MAX_WORKERS 16
#define FIELD_CAP (64u << 10) /* one multipart text field */

struct srv {
  srv_opts_t o;
  char host[256], model_name[256], api_key[512], version_info[128];
  char allowed_dir[PATH_MAX];
  int has_key;
  struct MHD_Daemon *d;
  int port;
  met_t *met;

  pthread_mutex_t mu; /* everything below */
  pthread_cond_t cv;  /* workers: a job or stop; shutdown: the live list changed */
  rt_t *rt;           /* NULL until srv_set_runtime */
  srv_req_ctx_t ctx;
  int stopping;    /* no new generation requests */
  srv_gen_t *live; /* every gen the server still tracks (listed until its connection completes) */
  int n_live;
  srv_gen_t *jobs, *jobs_tail; /* waiting for a decode worker */
  int n_jobs;
  int workers_stop, ticker_stop;
  pthread_t workers[MAX_WORKERS];
  int n_workers;
  pthread_t ticker;
  int ticker_started;
  struct voice_slot *voices; /* voice sessions whose thread has not been joined yet */
  int n_voices;              /* of them, the ones still running */
};

/* One live voice session: its thread, its connection and how the server asks it to stop. */
typedef struct voice_slot {
  struct voice_slot *next;
  srv_t *s;
  ws_conn_t *conn;
  struct MHD_UpgradeResponseHandle *urh;
  atomic_int stop; /* voice.h: 1 finish and close, 2 close now */
  pthread_t th;
  int released; /* (server mutex) the socket is being given back: no more aborts on it */
  int finished; /* (server mutex) the thread gave the socket back and is about to return: join it */
} voice_slot_t;

typedef enum {
  R_NONE = 0,
  R_CHAT,
  R_ANALYZE,
  R_TRANSCRIBE,
  R_MODELS,
  R_HEALTH,
  R_VERSION,
  R_METRICS,
  R_REALTIME,
} route_t;

static const struct {
  const char *path;
  route_t route;
  int post; /* 1: POST, 0: GET (and HEAD) */
} ROUTES[] = {
    {"/v1/chat/completions", R_CHAT, 1},
    {"/v1/audio/analyze", R_ANALYZE, 1},
    {"/v1/audio/transcriptions", R_TRANSCRIBE, 1},
    {"/v1/models", R_MODELS, 0},
    {"/health", R_HEALTH, 0},
    {"/version", R_VERSION, 0},
    {"/metrics", R_METRICS, 0},
    {"/v1/realtime", R_REALTIME, 0},
};

/* Per-request state (libmicrohttpd's *con_cls), owned by the HTTP thread. */
typedef struct {
  srv_t *s;
  route_t route;
  double t_arrival;
  int handed_off;   /* the gen went to a worker */
  srv_fail_t early; /* a failure found while receiving (sent once the body is in) */
  char *body;       /* chat JSON */
  size_t len, cap, received;
  struct MHD_PostProcessor *pp;
  srv_req_t *req; /* forms: fields and files as they arrive */
  /* the multipart part being received */
  char part_key[64], part_file[96];
  int part_open, part_is_file;
  char *part;
  size_t part_len, part_cap;
  int n_files;
  srv_gen_t *gen;
} conn_t;

/* ---- responses ------------------------------------------------------------------------------------------------ */

static enum MHD_Result send_body(srv_t *s, struct MHD_Connection *mc, int status, const char *ctype, char *body,
                                 size_t len, int retry_after) {
  struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
  if (!r) {
    free(body);
    return MHD_NO;
  }
  MHD_add_response_header(r, "Content-Type", ctype);
  if (retry_after > 0) {
    char ra[16];
    snprintf(ra, sizeof ra, "%d", retry_after);
    MHD_add_response_header(r, "Retry-After", ra);
  }
  if (status == 401) MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
  enum MHD_Result ret = MHD_queue_response(mc, (unsigned)status, r);
  MHD_destroy_response(r);
  met_http(s->met, status);
  return ret;
}

static enum MHD_Result send_error(srv_t *s, struct MHD_Connection *mc, int status, const char *msg, const char *param) {
  char *b = gen_error_json(status, msg, param);
  if (!b) return MHD_NO;
  return send_body(s, mc, status, "application/json", b, strlen(b), status == 429 || status == 503 ? 1 : 0);
}

/* 426 Upgrade Required (RFC 6455 §4.2.2, §4.4): names the protocol and the version this server speaks. */
static enum MHD_Result send_upgrade_required(srv_t *s, struct MHD_Connection *mc, const char *msg) {
  char *b = gen_error_json(426, msg, NULL);
  if (!b) return MHD_NO;
  struct MHD_Response *r = MHD_create_response_from_buffer(strlen(b), b, MHD_RESPMEM_MUST_FREE);
  if (!r) {
    free(b);
    return MHD_NO;
  }
  MHD_add_response_header(r, "Content-Type", "application/json");
  MHD_add_response_header(r, "Upgrade", "websocket");
  MHD_add_response_header(r, "Sec-WebSocket-Version", "13");
  enum MHD_Result ret = MHD_queue_response(mc, 426, r);
  MHD_destroy_response(r);
  met_http(s->met, 426);
  return ret;
}

static enum MHD_Result send_json(srv_t *s, struct MHD_Connection *mc, cJSON *o) {
  char *b = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  if (!b) return send_error(s, mc, 500, "out of memory", NULL);
  return send_body(s, mc, 200, "application/json", b, strlen(b), 0);
}

/* ---- the live list and the decode workers --------------------------------------------------------------------- */

static void live_add(srv_t *s, srv_gen_t *g) { /* caller holds s->mu */
  g->next = s->live;
  g->prev = NULL;
  if (s->live) s->live->prev = g;
  s->live = g;
  g->listed = 1;
  s->n_live++;
}

static void live_remove(srv_t *s, srv_gen_t *g) { /* caller holds s->mu */
  if (!g->listed) return;
  if (g->prev)
    g->prev->next = g->next;
  else
    s->live = g->next;
  if (g->next) g->next->prev = g->prev;
  g->listed = 0;
  s->n_live--;
  pthread_cond_broadcast(&s->cv);
}

/* Prepares one request on a worker thread: parse, decode, prompt, submit. */
static void prepare(srv_t *s, srv_gen_t *g) {
  srv_fail_t f;
  memset(&f, 0, sizeof f);
  eng_request_t q;
  memset(&q, 0, sizeof q);
  tok_ids_t ids = {0};
  srv_req_t *r = g->req;
  pthread_mutex_lock(&s->mu);
  int stopping = s->stopping;
  srv_req_ctx_t ctx = s->ctx;
  pthread_mutex_unlock(&s->mu);
  int rc = 0;
  if (stopping) rc = srv_fail(&f, 503, "", "the server is shutting down");
  if (!rc && g->kind == SRV_KIND_CHAT) {
    rc = srv_req_parse_chat(r, &ctx, g->body, g->body_len, &f);
    free(g->body);
    g->body = NULL;
  } else if (!rc) {
    rc = srv_req_form_finish(r, &ctx, &f);
  }
  if (!rc) rc = srv_req_build(r, &ctx, &q, &ids, &f);
  if (!rc) {
    g->stream = r->stream;
    g->include_usage = r->include_usage;
    g->logprobs = r->logprobs && g->kind != SRV_KIND_TRANSCRIBE;
    g->tok = ctx.rt->tok;
    g->fmt = r->fmt;
    g->audio_seconds = r->audio_seconds;
    snprintf(g->language, sizeof g->language, "%s", r->language);
    g->n_stop_ids = r->sampling.n_stop_ids;
    memcpy(g->stop_ids, r->sampling.stop_ids, sizeof g->stop_ids);
    for (int i = 0; i < r->n_stop; i++) { /* move the stop strings: q points at them until eng_submit returns */
      g->stops[i] = r->stop[i];
      g->n_stops = i + 1;
    }
    r->n_stop = 0;
    q.callback = gen_on_event;
    q.callback_ctx = g;
    gen_ref(g); /* the engine's reference, dropped by the final event */
    uint64_t id = 0;
    es_error_t e;
    es_error_clear(&e);
    int src = eng_submit(g->eng, &q, &id, &e);
    if (src) {
      gen_unref(g);
      for (size_t k = 0; k < q.n_audios; k++) free(q.audios[k].samples);
      if (src == ES_ETOOBIG && strstr(e.msg, "queue is full"))
        rc = srv_fail(&f, 429, "", "the server is busy: %s; retry later", e.msg);
      else if (src == ES_ETOOBIG)
        rc = srv_fail(&f, 400, "", "%s", e.msg);
      else if (strstr(e.msg, "shutting down"))
        rc = srv_fail(&f, 503, "", "the server is shutting down");
      else if (src == ES_ENOMEM || src == ES_EINTERNAL)
        rc = srv_fail(&f, 500, "", "%s", e.msg);
      else
        rc = srv_fail(&f, 400, "", "%s", e.msg);
    } else {
      pthread_mutex_lock(&g->mu);
      g->eng_id = id;
      g->submitted = 1;
      pthread_mutex_unlock(&g->mu);
    }
  }
  tok_ids_free(&ids);
  srv_req_free(r);
  pthread_mutex_lock(&g->mu);
  free(g->req);
  g->req = NULL;
  g->fail = f;
  g->prepared = 1;
  g->last_out = gen_now();
  gen_wake_locked(g);
  pthread_mutex_unlock(&g->mu);
  if (s->o.verbose && f.status) fprintf(stderr, "earshot serve: %s: %d %s\n", g->id, f.status, f.err.msg);
}

static void *worker_main(void *arg) {
  srv_t *s = arg;
  for (;;) {
    pthread_mutex_lock(&s->mu);
    while (!s->jobs && !s->workers_stop) pthread_cond_wait(&s->cv, &s->mu);
    srv_gen_t *g = s->jobs;
    if (!g) {
      pthread_mutex_unlock(&s->mu);
      return NULL;
    }
    s->jobs = g->job_next;
    if (!s->jobs) s->jobs_tail = NULL;
    s->n_jobs--;
    pthread_mutex_unlock(&s->mu);
    prepare(s, g);
    gen_unref(g); /* the worker's reference */
  }
}

static void *ticker_main(void *arg) {
  srv_t *s = arg;
  pthread_mutex_lock(&s->mu);
  while (!s->ticker_stop) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 250 * 1000 * 1000;
    if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    double now = gen_now();
    for (srv_gen_t *g = s->live; g; g = g->next) gen_keepalive(g, now, s->o.keepalive_s);
  }
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

/* ---- uploads ----------------------------------------------------------------------------------------------------- */

static void part_close(conn_t *c) {
  if (!c->part_open) return;
  c->part_open = 0;
  if (c->early.status) return;
  srv_req_ctx_t ctx;
  pthread_mutex_lock(&c->s->mu);
  ctx = c->s->ctx;
  pthread_mutex_unlock(&c->s->mu);
  if (c->part_is_file) {
    char label[64];
    snprintf(label, sizeof label, "file %d (%.40s)", ++c->n_files, c->part_file);
    srv_req_add_audio(c->req, (unsigned char *)c->part, c->part_len, label, &c->early);
    c->part = NULL;
  } else {
    char *v = c->part ? c->part : "";
    if (c->part) c->part[c->part_len] = '\0';
    if (!tok_utf8_valid(v, strlen(v), NULL) || strlen(v) != c->part_len)
      srv_fail(&c->early, 400, c->part_key, "form field '%s' is not valid UTF-8 text", c->part_key);
    else
      srv_req_form_field(c->req, &ctx, c->part_key, v, &c->early);
    free(c->part);
    c->part = NULL;
  }
  c->part_len = c->part_cap = 0;
}

static enum MHD_Result post_iter(void *cls, enum MHD_ValueKind kind, const char *key, const char *filename,
                                 const char *content_type, const char *transfer_encoding, const char *data,
                                 uint64_t off, size_t size) {
  (void)kind, (void)content_type, (void)transfer_encoding;
  conn_t *c = cls;
  if (c->early.status) return MHD_NO;
  int is_file = filename != NULL || !strcmp(key, "file") || !strcmp(key, "file[]");
  if (off == 0 && (!c->part_open || c->part_len > 0 || strcmp(c->part_key, key) != 0)) {
    part_close(c);
    if (c->early.status) return MHD_NO;
    c->part_open = 1;
    c->part_is_file = is_file && (!strcmp(key, "file") || !strcmp(key, "file[]"));
    snprintf(c->part_key, sizeof c->part_key, "%s", key);
    snprintf(c->part_file, sizeof c->part_file, "%s", filename ? filename : "upload");
    if (is_file && !c->part_is_file) c->part_open = 2; /* another file part: ignored */
  }
  if (c->part_open == 2 || size == 0) return MHD_YES;
  size_t cap = c->part_is_file ? c->s->o.max_body_bytes : FIELD_CAP;
  if (c->part_len + size > cap) {
    srv_fail(&c->early, c->part_is_file ? 413 : 400, key, "form field '%s' is longer than %zu bytes", key, cap);
    return MHD_NO;
  }
  if (c->part_len + size + 1 > c->part_cap) {
    size_t nc = (c->part_len + size + 1) * 2;
    if (nc > cap + 1) nc = cap + 1;
    char *p = realloc(c->part, nc);
    if (!p) {
      srv_fail(&c->early, 500, key, "out of memory receiving form field '%s'", key);
      return MHD_NO;
    }
    c->part = p;
    c->part_cap = nc;
  }
  memcpy(c->part + c->part_len, data, size);
  c->part_len += size;
  return MHD_YES;
}

static void body_chunk(conn_t *c, const char *data, size_t n) {
  c->received += n;
  if (c->early.status) return;
  if (c->received > c->s->o.max_body_bytes) {
    srv_fail(&c->early, 413, "", "the request body is larger than --max-body-mb (%zu bytes)", c->s->o.max_body_bytes);
    return;
  }
  if (c->pp) {
    if (MHD_post_process(c->pp, data, n) != MHD_YES && !c->early.status)
      srv_fail(&c->early, 400, "", "the multipart/form-data body is malformed");
    return;
  }
  if (c->len + n + 1 > c->cap) {
    size_t nc = (c->len + n + 1) * 2;
    char *b = realloc(c->body, nc);
    if (!b) {
      srv_fail(&c->early, 500, "", "out of memory receiving the body");
      return;
    }
    c->body = b;
    c->cap = nc;
  }
  memcpy(c->body + c->len, data, n);
  c->len += n;
}

/* ---- routes --------------------------------------------------------------------------------------------------- */

/* 1 if the hn bytes at h are the API key; constant time in the key's length: every byte of the key is compared
 * whatever h holds. */
static int key_equal(const srv_t *s, const char *h, size_t hn) {
  size_t kn = strlen(s->api_key);
  unsigned diff = hn != kn;
  for (size_t i = 0; i < kn; i++) diff |= (unsigned)(unsigned char)(i < hn ? h[i] : 0) ^ (unsigned char)s->api_key[i];
  return diff == 0;
}

static int key_ok(const srv_t *s, struct MHD_Connection *mc) {
  if (!s->has_key) return 1;
  const char *h = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Authorization");
  if (!h || strncmp(h, "Bearer ", 7) != 0) return 0;
  return key_equal(s, h + 7, strlen(h + 7));
}

/* The next comma-separated token of a header value at *p (spaces around it trimmed; NULL when none is left);
 * its length in *n, *p moved past it. */
static const char *header_token(const char **p, size_t *n) {
  const char *q = *p;
  while (*q == ' ' || *q == '\t' || *q == ',') q++;
  if (!*q) return NULL;
  const char *end = q;
  while (*end && *end != ',') end++;
  const char *e = end;
  while (e > q && (e[-1] == ' ' || e[-1] == '\t')) e--;
  *p = end;
  *n = (size_t)(e - q);
  return q;
}

#define WS_KEY_PROTOCOL "openai-insecure-api-key."

/* Browsers cannot set headers on a WebSocket: OpenAI's clients send the key as a subprotocol instead,
 * "Sec-WebSocket-Protocol: realtime, openai-insecure-api-key.KEY". 1 if that key is the API key. */
static int ws_protocol_key_ok(const srv_t *s, struct MHD_Connection *mc) {
  const char *h = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Sec-WebSocket-Protocol");
  size_t n, pn = strlen(WS_KEY_PROTOCOL);
  for (const char *t; h && (t = header_token(&h, &n));)
    if (n > pn && !strncmp(t, WS_KEY_PROTOCOL, pn) && key_equal(s, t + pn, n - pn)) return 1;
  return 0;
}

static enum MHD_Result route_get(srv_t *s, struct MHD_Connection *mc, route_t route) {
  pthread_mutex_lock(&s->mu);
  rt_t *rt = s->rt;
  pthread_mutex_unlock(&s->mu);
  if (route == R_HEALTH) {
    if (!rt) return send_error(s, mc, 503, "the model is loading", NULL);
    char *b = malloc(1);
    if (!b) return MHD_NO;
    return send_body(s, mc, 200, "text/plain", b, 0, 0);
  }
  if (route == R_VERSION) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "version", ES_VERSION);
    cJSON_AddStringToObject(o, "git", ES_GIT_DESCRIBE);
    cJSON_AddStringToObject(o, "device", rt ? rt->device_desc : "");
    return send_json(s, mc, o);
  }
  if (route == R_METRICS) {
    eng_stats_t st;
    if (rt) eng_get_stats(rt->engine, &st);
    char *b = NULL;
    size_t n = 0;
    es_error_t e;
    if (met_render(s->met, s->model_name, rt ? &st : NULL, &b, &n, &e)) return send_error(s, mc, 500, e.msg, NULL);
    return send_body(s, mc, 200, "text/plain; version=0.0.4; charset=utf-8", b, n, 0);
  }
  /* R_MODELS */
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "object", "list");
  cJSON *m = cJSON_CreateObject();
  cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "data"), m);
  cJSON_AddStringToObject(m, "id", s->model_name);
  cJSON_AddStringToObject(m, "object", "model");
  cJSON_AddNumberToObject(m, "created", (double)time(NULL));
  cJSON_AddStringToObject(m, "owned_by", "earshot");
  cJSON_AddStringToObject(m, "root", rt && rt->dir[0] ? rt->dir : s->model_name);
  cJSON_AddNullToObject(m, "parent");
  if (rt) cJSON_AddNumberToObject(m, "max_model_len", rt->max_model_len);
  return send_json(s, mc, o);
}

/* The final call of a POST: hand the request to a worker, or answer what the worker/engine produced. */
static enum MHD_Result route_post(srv_t *s, struct MHD_Connection *mc, conn_t *c) {
  srv_gen_t *g = c->gen;
  if (!c->handed_off) {
    if (c->pp) part_close(c);
    if (c->early.status)
      return send_error(s, mc, c->early.status, c->early.err.msg, c->early.param[0] ? c->early.param : NULL);
    pthread_mutex_lock(&s->mu);
    int ready = s->rt != NULL, stopping = s->stopping, full = s->n_jobs >= s->o.max_pending;
    pthread_mutex_unlock(&s->mu);
    if (stopping) return send_error(s, mc, 503, "the server is shutting down", NULL);
    if (!ready) return send_error(s, mc, 503, "the model is loading; retry shortly", NULL);
    if (full) return send_error(s, mc, 429, "the server is busy (too many requests being decoded); retry later", NULL);
    srv_kind_t kind = c->route == R_CHAT      ? SRV_KIND_CHAT
                      : c->route == R_ANALYZE ? SRV_KIND_ANALYZE
                                              : SRV_KIND_TRANSCRIBE;
    g = gen_new(kind, s->model_name, s->met, c->t_arrival);
    if (!g) return send_error(s, mc, 500, "out of memory", NULL);
    pthread_mutex_lock(&s->mu);
    g->eng = s->rt->engine;
    pthread_mutex_unlock(&s->mu);
    if (kind == SRV_KIND_CHAT) {
      g->body = c->body;
      g->body_len = c->len;
      c->body = NULL;
      g->req = calloc(1, sizeof *g->req);
      if (g->req) {
        pthread_mutex_lock(&s->mu);
        srv_req_init(g->req, kind, &s->ctx);
        pthread_mutex_unlock(&s->mu);
      }
    } else {
      g->req = c->req;
      c->req = NULL;
    }
    if (!g->req) {
      gen_unref(g);
      return send_error(s, mc, 500, "out of memory", NULL);
    }
    c->gen = g; /* the connection's reference */
    c->handed_off = 1;
    pthread_mutex_lock(&g->mu);
    g->mc = mc;
    gen_suspend_locked(g);
    g->refs++; /* the worker's */
    pthread_mutex_unlock(&g->mu);
    pthread_mutex_lock(&s->mu);
    live_add(s, g);
    g->job_next = NULL;
    if (s->jobs_tail)
      s->jobs_tail->job_next = g;
    else
      s->jobs = g;
    s->jobs_tail = g;
    s->n_jobs++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return MHD_YES;
  }

  /* resumed */
  pthread_mutex_lock(&g->mu);
  if (!g->prepared || (!g->stream && !g->done && !g->fail.status)) {
    gen_suspend_locked(g); /* woken early (the engine resumed before the worker finished): wait again */
    pthread_mutex_unlock(&g->mu);
    return MHD_YES;
  }
  if (g->fail.status) {
    srv_fail_t f = g->fail;
    pthread_mutex_unlock(&g->mu);
    return send_error(s, mc, f.status, f.err.msg, f.param[0] ? f.param : NULL);
  }
  if (g->stream) {
    if (g->response_queued) { /* cannot happen: a queued response is not handed back to the handler */
      pthread_mutex_unlock(&g->mu);
      return MHD_YES;
    }
    g->response_queued = 1;
    g->last_out = gen_now();
    pthread_mutex_unlock(&g->mu);
    struct MHD_Response *r = gen_sse_response(g);
    if (!r) return MHD_NO;
    enum MHD_Result ret = MHD_queue_response(mc, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    met_http(s->met, 200);
    return ret;
  }
  char *body = NULL;
  size_t len = 0;
  const char *ctype;
  int status;
  gen_final_body(g, &body, &len, &ctype, &status);
  pthread_mutex_unlock(&g->mu);
  if (!body) return send_error(s, mc, 500, "out of memory", NULL);
  return send_body(s, mc, status, ctype, body, len, status == 503 ? 1 : 0);
}

/* ---- voice sessions (WebSocket) --------------------------------------------------------------------------------- */

static void *voice_main(void *arg) {
  voice_slot_t *v = arg;
  srv_t *s = v->s;
  pthread_mutex_lock(&s->mu);
  voice_opts_t o = {
      .ctx = s->ctx, .eng = s->rt->engine, .met = s->met, .max_buffer_s = s->o.voice_buffer_s, .verbose = s->o.verbose};
  pthread_mutex_unlock(&s->mu);
  voice_session_run(v->conn, &o, &v->stop);
  pthread_mutex_lock(&s->mu);
  v->released = 1; /* stop_voices must not shut down a descriptor libmicrohttpd may close and reuse */
  pthread_mutex_unlock(&s->mu);
  MHD_upgrade_action(v->urh, MHD_UPGRADE_ACTION_CLOSE); /* the socket goes back to libmicrohttpd, which closes it */
  met_voice_session(s->met, 0);
  pthread_mutex_lock(&s->mu);
  v->finished = 1;
  s->n_voices--;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  return NULL; /* the slot and the connection are freed by whoever joins the thread (reap_voices) */
}

/* Joins the threads of finished sessions and frees their slots (all = 1: every session, waiting for each). */
static void reap_voices(srv_t *s, int all) {
  voice_slot_t *done = NULL;
  pthread_mutex_lock(&s->mu);
  for (voice_slot_t **p = &s->voices; *p;) {
    voice_slot_t *v = *p;
    if (v->finished || all) {
      *p = v->next;
      v->next = done;
      done = v;
    } else {
      p = &v->next;
    }
  }
  pthread_mutex_unlock(&s->mu);
  while (done) {
    voice_slot_t *v = done;
    done = v->next;
    pthread_join(v->th, NULL);
    ws_conn_free(v->conn);
    free(v);
  }
}

/* libmicrohttpd sent the 101: the socket is ours until MHD_upgrade_action. Runs on the polling thread: starts
 * the session's thread and returns. */
static void on_upgrade(void *cls, struct MHD_Connection *mc, void *con_cls, const char *extra_in, size_t extra_in_size,
                       MHD_socket sock, struct MHD_UpgradeResponseHandle *urh) {
  (void)mc, (void)con_cls;
  srv_t *s = cls;
  voice_slot_t *v = calloc(1, sizeof *v);
  es_error_t e;
  ws_opts_t wo = {.idle_timeout_s = s->o.voice_idle_s};
  if (!v || ws_conn_new(sock, extra_in, extra_in_size, &wo, &v->conn, &e)) {
    free(v);
    MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);
    return;
  }
  v->s = s;
  v->urh = urh;
  atomic_init(&v->stop, 0);
  reap_voices(s, 0);
  met_voice_session(s->met, 1); /* before the thread can end and count itself out */
  pthread_mutex_lock(&s->mu);
  int started = 0;
  if (!s->stopping && s->n_voices < s->o.max_voice_sessions) {
    started = pthread_create(&v->th, NULL, voice_main, v) == 0;
    if (started) {
      v->next = s->voices;
      s->voices = v;
      s->n_voices++;
    }
  }
  pthread_mutex_unlock(&s->mu);
  if (!started) { /* raced past the limit or shutdown (or no thread): the client sees the upgrade, then a close */
    met_voice_session(s->met, 0);
    ws_conn_free(v->conn);
    free(v);
    MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);
  }
}

/* 1 if the comma-separated header value h holds token (case-insensitive). */
static int header_has(const char *h, const char *token) {
  size_t n, tn = strlen(token);
  for (const char *t; h && (t = header_token(&h, &n));)
    if (n == tn && !strncasecmp(t, token, n)) return 1;
  return 0;
}

/* GET /v1/realtime: the WebSocket handshake (RFC 6455 §4.2), then the voice session. */
static enum MHD_Result route_realtime(srv_t *s, struct MHD_Connection *mc) {
  pthread_mutex_lock(&s->mu);
  int ready = s->rt != NULL, stopping = s->stopping, full = s->n_voices >= s->o.max_voice_sessions;
  pthread_mutex_unlock(&s->mu);
  const char *up = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Upgrade");
  const char *ver = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Sec-WebSocket-Version");
  const char *key = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Sec-WebSocket-Key");
  const char *model = MHD_lookup_connection_value(mc, MHD_GET_ARGUMENT_KIND, "model");
  const char *intent = MHD_lookup_connection_value(mc, MHD_GET_ARGUMENT_KIND, "intent");
  const char *conn = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Connection");
  const char *protocols = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Sec-WebSocket-Protocol");
  if (!up || !header_has(up, "websocket"))
    return send_upgrade_required(s, mc, "/v1/realtime is a WebSocket endpoint: connect with 'Upgrade: websocket'");
  if (!conn || !header_has(conn, "upgrade"))
    return send_error(s, mc, 400, "a WebSocket handshake needs 'Connection: Upgrade' (RFC 6455 4.2.1)", NULL);
  if (!ver || strcmp(ver, "13") != 0)
    return send_upgrade_required(s, mc, "only WebSocket version 13 (RFC 6455) is supported");
  char accept[29];
  es_error_t e;
  if (ws_accept_key(key, accept, &e)) return send_error(s, mc, 400, e.msg, NULL);
  if (model && strcmp(model, s->model_name) != 0) {
    char msg[400];
    snprintf(msg, sizeof msg, "The model `%.200s` does not exist.", model);
    return send_error(s, mc, 404, msg, "model");
  }
  if (intent && strcmp(intent, "conversation") != 0 && strcmp(intent, "realtime") != 0)
    return send_error(s, mc, 400, "only conversation sessions are served (no transcription intent)", "intent");
  if (stopping) return send_error(s, mc, 503, "the server is shutting down", NULL);
  if (!ready) return send_error(s, mc, 503, "the model is loading; retry shortly", NULL);
  if (full) return send_error(s, mc, 429, "too many voice sessions are open (--max-voice-sessions); retry later", NULL);
  struct MHD_Response *r = MHD_create_response_for_upgrade(on_upgrade, s);
  if (!r) return MHD_NO;
  /* not "Connection: Upgrade": libmicrohttpd 0.9.75 adds it itself (API-NOTES §B2) */
  MHD_add_response_header(r, "Upgrade", "websocket");
  MHD_add_response_header(r, "Sec-WebSocket-Accept", accept);
  if (protocols && header_has(protocols, "realtime")) /* OpenAI's browser clients offer it (and the key) */
    MHD_add_response_header(r, "Sec-WebSocket-Protocol", "realtime");
  enum MHD_Result ret = MHD_queue_response(mc, MHD_HTTP_SWITCHING_PROTOCOLS, r);
  MHD_destroy_response(r);
  met_http(s->met, 101);
  return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *mc, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
  (void)version;
  srv_t *s = cls;
  conn_t *c = *con_cls;
  if (!c) { /* headers: route, method, key, size */
    route_t route = R_NONE;
    int post = 0;
    for (size_t i = 0; i < sizeof ROUTES / sizeof ROUTES[0]; i++)
      if (!strcmp(url, ROUTES[i].path)) {
        route = ROUTES[i].route;
        post = ROUTES[i].post;
      }
    if (route == R_NONE) return send_error(s, mc, 404, "Not Found", NULL);
    int is_post = !strcmp(method, "POST"), is_get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    if ((post && !is_post) || (!post && !is_get)) {
      char msg[128];
      snprintf(msg, sizeof msg, "Method Not Allowed: %s takes %s", url, post ? "POST" : "GET");
      return send_error(s, mc, 405, msg, NULL);
    }
    if (route == R_REALTIME && strcmp(method, "GET") != 0)
      return send_error(s, mc, 405, "Method Not Allowed: /v1/realtime takes GET (a WebSocket upgrade)", NULL);
    if (!strncmp(url, "/v1/", 4) && !key_ok(s, mc) && !(route == R_REALTIME && ws_protocol_key_ok(s, mc)))
      return send_error(s, mc, 401, "Unauthorized: a valid 'Authorization: Bearer <key>' header is required", NULL);
    if (post) {
      const char *cl = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Content-Length");
      if (cl && strtoull(cl, NULL, 10) > s->o.max_body_bytes) {
        char msg[160];
        snprintf(msg, sizeof msg, "the request body (%s bytes) is larger than --max-body-mb (%zu bytes)", cl,
                 s->o.max_body_bytes);
        return send_error(s, mc, 413, msg, NULL);
      }
    }
    c = calloc(1, sizeof *c);
    if (!c) return MHD_NO;
    c->s = s;
    c->route = route;
    c->t_arrival = gen_now();
    *con_cls = c;
    if (route == R_ANALYZE || route == R_TRANSCRIBE) {
      const char *ct = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Content-Type");
      if (!ct || strncasecmp(ct, "multipart/form-data", 19) != 0) {
        srv_fail(&c->early, 400, "", "%s takes a multipart/form-data body (got %s)", url, ct ? ct : "none");
      } else {
        c->req = calloc(1, sizeof *c->req);
        c->pp = c->req ? MHD_create_post_processor(mc, 64 * 1024, post_iter, c) : NULL;
        if (!c->pp)
          srv_fail(&c->early, 400, "", "cannot parse this multipart/form-data body (no boundary?)");
        else {
          pthread_mutex_lock(&s->mu);
          if (s->rt)
            srv_req_init(c->req, route == R_ANALYZE ? SRV_KIND_ANALYZE : SRV_KIND_TRANSCRIBE, &s->ctx);
          else
            srv_fail(&c->early, 503, "", "the model is loading; retry shortly"); /* no defaults to start from */
          pthread_mutex_unlock(&s->mu);
        }
      }
    }
    return MHD_YES;
  }
  if (*upload_data_size) {
    body_chunk(c, upload_data, *upload_data_size);
    *upload_data_size = 0;
    return MHD_YES;
  }
  if (c->route == R_CHAT || c->route == R_ANALYZE || c->route == R_TRANSCRIBE) return route_post(s, mc, c);
  if (c->route == R_REALTIME) return route_realtime(s, mc);
  return route_get(s, mc, c->route);
}

static void on_completed(void *cls, struct MHD_Connection *mc, void **con_cls, enum MHD_RequestTerminationCode toe) {
  (void)mc, (void)toe;
  srv_t *s = cls;
  conn_t *c = *con_cls;
  if (!c) return;
  *con_cls = NULL;
  if (c->pp) MHD_destroy_post_processor(c->pp);
  free(c->part);
  free(c->body);
  if (c->req) {
    srv_req_free(c->req);
    free(c->req);
  }
  srv_gen_t *g = c->gen;
  if (g) {
    pthread_mutex_lock(&g->mu);
    g->mc = NULL;
    g->suspended = 0;
    int cancel = g->submitted && !g->done;
    if (!g->eof) g->client_gone = 1;
    uint64_t id = g->eng_id;
    pthread_mutex_unlock(&g->mu);
    if (cancel) eng_cancel(g->eng, id);
    if (s->o.verbose && g->submitted) {
      pthread_mutex_lock(&g->mu);
      fprintf(stderr, "earshot serve: %s %s: %d prompt + %d completion tokens, %s, %.3f s%s\n", g->id,
              g->kind == SRV_KIND_CHAT      ? "chat"
              : g->kind == SRV_KIND_ANALYZE ? "analyze"
                                            : "transcription",
              g->usage.prompt_tokens, g->usage.completion_tokens,
              g->done ? (eng_finish_name(g->finish) ? eng_finish_name(g->finish) : "?") : "client gone",
              gen_now() - g->t_arrival, g->stream ? ", streamed" : "");
      pthread_mutex_unlock(&g->mu);
    }
    pthread_mutex_lock(&s->mu);
    live_remove(s, g);
    pthread_mutex_unlock(&s->mu);
    gen_unref(g);
  }
  free(c);
}

/* ---- life cycle ----------------------------------------------------------------------------------------------- */

int srv_start(const srv_opts_t *opts, srv_t **out, es_error_t *err) {
  *out = NULL;
  srv_t *s = calloc(1, sizeof *s);
  if (!s) return es_fail(err, ES_ENOMEM, "server: out of memory");
  s->o = *opts;
  snprintf(s->host, sizeof s->host, "%s", opts->host && opts->host[0] ? opts->host : "127.0.0.1");
  snprintf(s->model_name, sizeof s->model_name, "%s", opts->served_model_name ? opts->served_model_name : "earshot");
  if (opts->api_key && opts->api_key[0]) {
    if (strlen(opts->api_key) >= sizeof s->api_key) {
      free(s);
      return es_fail(err, ES_EINVAL, "--api-key: longer than %zu bytes", sizeof s->api_key - 1);
    }
    snprintf(s->api_key, sizeof s->api_key, "%s", opts->api_key);
    s->has_key = 1;
  }
  s->o.host = s->host;
  s->o.api_key = NULL;
  if (!s->o.max_body_bytes) s->o.max_body_bytes = (size_t)25 << 20;
  if (s->o.workers <= 0) s->o.workers = 2;
  if (s->o.workers > MAX_WORKERS) s->o.workers = MAX_WORKERS;
  if (s->o.max_pending <= 0) s->o.max_pending = 64;
  if (s->o.keepalive_s <= 0) s->o.keepalive_s = 5.0;
  if (s->o.shutdown_grace_s <= 0) s->o.shutdown_grace_s = 10.0;
  if (s->o.max_voice_sessions <= 0) s->o.max_voice_sessions = 64;
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  int rc = met_init(&s->met, err);
  if (rc) goto fail;
  if (opts->allowed_media_path) {
    if (!realpath(opts->allowed_media_path, s->allowed_dir)) {
      rc = es_fail(err, ES_ENOTFOUND, "--allowed-local-media-path %s: no such directory", opts->allowed_media_path);
      goto fail;
    }
  }
  s->ctx = (srv_req_ctx_t){.served_model_name = s->model_name,
                           .raw_prompt = s->o.raw_prompt,
                           .max_audio_seconds = s->o.max_audio_seconds,
                           .max_audio_bytes = s->o.max_body_bytes,
                           .long_audio = s->o.long_audio,
                           .allowed_media_dir = s->allowed_dir[0] ? s->allowed_dir : NULL};

  struct addrinfo hints = {.ai_flags = AI_PASSIVE | AI_NUMERICSERV, .ai_socktype = SOCK_STREAM}, *ai = NULL;
  char port[16];
  snprintf(port, sizeof port, "%d", s->o.port);
  int gai = getaddrinfo(s->host, port, &hints, &ai);
  if (gai || !ai) {
    rc = es_fail(err, ES_EINVAL, "--host %s: %s", s->host, gai_strerror(gai));
    goto fail;
  }
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_ALLOW_SUSPEND_RESUME | MHD_ALLOW_UPGRADE;
  if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
  s->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                          MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
                          MHD_OPTION_CONNECTION_LIMIT, (unsigned)512, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
                          (size_t)(256 * 1024), MHD_OPTION_END);
  freeaddrinfo(ai);
  if (!s->d) {
    rc =
        es_fail(err, ES_EIO, "cannot listen on %s:%d (in use, or not an address of this machine?)", s->host, s->o.port);
    goto fail;
  }
  const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
  s->port = di ? di->port : s->o.port;
  for (int i = 0; i < s->o.workers; i++) {
    if (pthread_create(&s->workers[i], NULL, worker_main, s) != 0) {
      rc = es_fail(err, ES_EINTERNAL, "server: cannot start a decode worker");
      goto fail;
    }
    s->n_workers++;
  }
  if (pthread_create(&s->ticker, NULL, ticker_main, s) != 0) {
    rc = es_fail(err, ES_EINTERNAL, "server: cannot start the keep-alive thread");
    goto fail;
  }
  s->ticker_started = 1;
  *out = s;
  return ES_OK;
fail:
  srv_shutdown(s);
  srv_free(s);
  return rc;
}

int srv_port(const srv_t *s) {
  return s->port;
}

int srv_set_runtime(srv_t *s, rt_t *rt, es_error_t *err) {
  if (!rt->tok) return es_fail(err, ES_EINVAL, "%s has no tokenizer: the server needs one", rt->dir);
  pthread_mutex_lock(&s->mu);
  s->rt = rt;
  s->ctx.rt = rt;
  pthread_mutex_unlock(&s->mu);
  return ES_OK;
}

/* Asks every running voice session to stop (1: after its response, 2: now, 3: drop the connection at once);
 * caller holds s->mu. */
static void stop_voices(srv_t *s, int how) {
  for (voice_slot_t *v = s->voices; v; v = v->next) {
    if (v->released) continue;
    atomic_store(&v->stop, how < 3 ? how : 2);
    if (how == 3)
      ws_conn_abort(v->conn);
    else
      ws_conn_wake(v->conn);
  }
}

/* Waits until *count (a field under s->mu: live gens, running voice sessions) is 0 or the deadline passes;
 * caller holds s->mu. */
static void wait_zero(srv_t *s, const int *count, double deadline) {
  while (*count > 0 && gen_now() < deadline) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 50 * 1000 * 1000;
    if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&s->cv, &s->mu, &ts);
  }
}

void srv_shutdown(srv_t *s) {
  if (!s) return;
  pthread_mutex_lock(&s->mu);
  s->stopping = 1;
  pthread_mutex_unlock(&s->mu);
  if (s->d) {
    MHD_socket ls = MHD_quiesce_daemon(s->d); /* no new connections; in-flight ones go on */
    if (ls != MHD_INVALID_SOCKET) close(ls);
  }
  /* 1. let in-flight requests finish, 2. cancel what is left and wait for the final events, 3. give up on
   * any the engine has not finished (a long step) so that no connection stays suspended */
  pthread_mutex_lock(&s->mu);
  double grace_end = gen_now() + s->o.shutdown_grace_s;
  stop_voices(s, 1); /* voice sessions finish the reply in flight, then close with 1001 */
  wait_zero(s, &s->n_live, grace_end);
  wait_zero(s, &s->n_voices, grace_end);
  stop_voices(s, 2);
  wait_zero(s, &s->n_voices,
            gen_now() + 6.5);      /* a close: 2 s for queued events, 2 s for the peer's close, 2 s lingering */
  stop_voices(s, 3);               /* whatever is left: the socket is shut down under it */
  for (srv_gen_t *g = s->live; g; g = g->next) {
    pthread_mutex_lock(&g->mu);
    int cancel = g->submitted && !g->done;
    uint64_t id = g->eng_id;
    pthread_mutex_unlock(&g->mu);
    if (cancel) eng_cancel(g->eng, id); /* not under g->mu: the engine may be inside g's callback */
  }
  wait_zero(s, &s->n_live, gen_now() + 2.0);
  s->workers_stop = 1;
  s->ticker_stop = 1;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  for (int i = 0; i < s->n_workers; i++) pthread_join(s->workers[i], NULL); /* queued jobs: 503 (stopping) */
  s->n_workers = 0;
  if (s->ticker_started) pthread_join(s->ticker, NULL);
  s->ticker_started = 0;
  pthread_mutex_lock(&s->mu);
  for (srv_gen_t *g = s->live; g; g = g->next) {
    pthread_mutex_lock(&g->mu);
    gen_abandon_locked(g, "the server is shutting down");
    pthread_mutex_unlock(&g->mu);
  }
  wait_zero(s, &s->n_live, gen_now() + 1.0); /* the abandoned responses are written */
  /* whatever is still suspended now (a peer that stopped reading) must be resumed before the daemon stops */
  for (srv_gen_t *g = s->live; g; g = g->next) {
    pthread_mutex_lock(&g->mu);
    g->eof = 1;
    gen_wake_locked(g);
    pthread_mutex_unlock(&g->mu);
  }
  pthread_mutex_unlock(&s->mu);
  reap_voices(s, 1); /* every voice thread has given its socket back: only then may the daemon stop */
  if (s->d) MHD_stop_daemon(s->d);
  s->d = NULL;
}

void srv_free(srv_t *s) {
  if (!s) return;
  met_free(s->met);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
  free(s);
}
