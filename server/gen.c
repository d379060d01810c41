/* gen: the generation object, the engine callback and the wire formats (OpenAI / vLLM). See gen.h.
 *
 * Chat (and /v1/audio/analyze) streams, as vLLM's chat_completion_stream_generator sends them (SERVING.md §1.6):
 *   data:
 * {"id","object":"chat.completion.chunk","created","model","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}
 *   data: {... "delta":{"content":"<text>"},"logprobs":null,"finish_reason":null}]}      (one per token with text)
 *   data: {... "delta":{"content":"<last text>"},"logprobs":null,"finish_reason":"stop","stop_reason":null}]}
 *   data: {... "choices":[],"usage":{"prompt_tokens","total_tokens","completion_tokens"}}   (include_usage)
 *   data: [DONE]
 * A request the engine fails mid-stream gets `data: {"error": {...}}` then `data: [DONE]`; a cancelled one
 * finishes with finish_reason "abort" (vLLM's name).
 * Transcription streams are vLLM's too: object "transcription.chunk", delta {"content"}, no role chunk.
 */
#include "gen.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

double gen_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

srv_gen_t *gen_new(srv_kind_t kind, const char *model, met_t *met, double t_arrival) {
  srv_gen_t *g = calloc(1, sizeof *g);
  if (!g) return NULL;
  pthread_mutex_init(&g->mu, NULL);
  g->refs = 1;
  g->kind = kind;
  g->model = model;
  g->met = met;
  g->t_arrival = t_arrival;
  g->created = (long long)time(NULL);
  g->last_token = -1;
  g->stop_index = -1;
  unsigned char rnd[16];
  if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) { /* ids need only be unique, not secret */
    static const unsigned char zero[16];
    memcpy(rnd, zero, sizeof rnd);
    uint64_t t = (uint64_t)(t_arrival * 1e9) ^ (uint64_t)(uintptr_t)g;
    memcpy(rnd, &t, sizeof t);
  }
  int k = snprintf(g->id, sizeof g->id, "%s", kind == SRV_KIND_TRANSCRIBE ? "trsc-" : "chatcmpl-");
  for (int i = 0; i < 16; i++) k += snprintf(g->id + k, sizeof g->id - (size_t)k, "%02x", rnd[i]);
  return g;
}

void gen_ref(srv_gen_t *g) {
  pthread_mutex_lock(&g->mu);
  g->refs++;
  pthread_mutex_unlock(&g->mu);
}

void gen_unref(srv_gen_t *g) {
  if (!g) return;
  pthread_mutex_lock(&g->mu);
  int left = --g->refs;
  pthread_mutex_unlock(&g->mu);
  if (left) return;
  free(g->body);
  if (g->req) {
    srv_req_free(g->req);
    free(g->req);
  }
  for (int i = 0; i < g->n_stops; i++) free(g->stops[i]);
  free(g->buf);
  tok_text_free(&g->text);
  cJSON_Delete(g->lp_all);
  pthread_mutex_destroy(&g->mu);
  free(g);
}

void gen_wake_locked(srv_gen_t *g) {
  if (g->suspended && g->mc) {
    g->suspended = 0;
    MHD_resume_connection(g->mc);
  }
}

void gen_suspend_locked(srv_gen_t *g) {
  if (!g->suspended && g->mc) {
    g->suspended = 1;
    MHD_suspend_connection(g->mc);
  }
}

/* ---- the stream buffer --------------------------------------------------------------------------------------- */

static void append(srv_gen_t *g, const char *p, size_t n) {
  if (g->oom) return;
  if (g->off && g->off == g->len) g->off = g->len = 0;
  if (g->len + n > g->cap) {
    if (g->off) { /* slide the unsent bytes down before growing */
      memmove(g->buf, g->buf + g->off, g->len - g->off);
      g->len -= g->off;
      g->off = 0;
    }
    if (g->len + n > g->cap) {
      size_t cap = (g->len + n) * 2 + 256;
      char *b = realloc(g->buf, cap);
      if (!b) {
        g->oom = 1;
        return;
      }
      g->buf = b;
      g->cap = cap;
    }
  }
  memcpy(g->buf + g->len, p, n);
  g->len += n;
}

static void append_data(srv_gen_t *g, cJSON *obj) {
  char *s = cJSON_PrintUnformatted(obj);
  cJSON_Delete(obj);
  if (!s) {
    g->oom = 1;
    return;
  }
  append(g, "data: ", 6);
  append(g, s, strlen(s));
  append(g, "\n\n", 2);
  free(s);
}

static void append_done(srv_gen_t *g) {
  append(g, "data: [DONE]\n\n", 14);
  g->eof = 1;
}

/* ---- wire objects -------------------------------------------------------------------------------------------- */

char *gen_error_json(int status, const char *message, const char *param) {
  const char *type;
  switch (status) {
  case 400: type = "BadRequestError"; break;
  case 401: type = "AuthenticationError"; break;
  case 404: type = "NotFoundError"; break;
  case 405: type = "MethodNotAllowedError"; break;
  case 413: type = "RequestTooLargeError"; break;
  case 415: type = "UnsupportedMediaTypeError"; break;
  case 429: type = "RateLimitError"; break;
  case 503: type = "ServiceUnavailableError"; break;
  default: type = status >= 500 ? "InternalServerError" : "BadRequestError"; break;
  }
  cJSON *o = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(o, "error");
  cJSON_AddStringToObject(e, "message", message);
  cJSON_AddStringToObject(e, "type", type);
  if (param && param[0])
    cJSON_AddStringToObject(e, "param", param);
  else
    cJSON_AddNullToObject(e, "param");
  cJSON_AddNumberToObject(e, "code", status);
  char *s = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  return s;
}

static cJSON *chunk_head(const srv_gen_t *g) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "id", g->id);
  cJSON_AddStringToObject(o, "object",
                          g->kind == SRV_KIND_TRANSCRIBE ? "transcription.chunk" : "chat.completion.chunk");
  cJSON_AddNumberToObject(o, "created", (double)g->created);
  cJSON_AddStringToObject(o, "model", g->model);
  return o;
}

static void add_stop_reason(cJSON *choice, const srv_gen_t *g) {
  if (g->finish == ENG_FINISH_STOP && g->stop_index >= 0 && g->stop_index < g->n_stops) {
    cJSON_AddStringToObject(choice, "stop_reason", g->stops[g->stop_index]);
    return;
  }
  if (g->finish == ENG_FINISH_STOP && g->stop_index == -2)
    for (int i = 0; i < g->n_stop_ids; i++)
      if (g->stop_ids[i] == g->last_token) { /* a stop_token_ids id, not eos: vLLM reports the id */
        cJSON_AddNumberToObject(choice, "stop_reason", g->last_token);
        return;
      }
  cJSON_AddNullToObject(choice, "stop_reason");
}

static const char *finish_reason(eng_finish_t f) {
  switch (f) {
  case ENG_FINISH_STOP: return "stop";
  case ENG_FINISH_LENGTH: return "length";
  case ENG_FINISH_CANCELLED: return "abort";
  default: return "error";
  }
}

static cJSON *usage_obj(const eng_usage_t *u) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "prompt_tokens", u->prompt_tokens);
  cJSON_AddNumberToObject(o, "total_tokens", u->prompt_tokens + u->completion_tokens);
  cJSON_AddNumberToObject(o, "completion_tokens", u->completion_tokens);
  return o;
}

/* {"token", "logprob", "bytes"}: the id decoded alone (lossy UTF-8, special tokens as their text), as vLLM
 * reports it; -inf becomes -9999.0 (vLLM's stand-in, JSON has no infinity). */
static cJSON *lp_item(const tok_t *tok, int32_t id, float logprob) {
  cJSON *o = cJSON_CreateObject();
  tok_text_t t = {0};
  es_error_t e;
  if (tok_decode(tok, &id, 1, 0, &t, &e) != ES_OK) t.len = 0;
  char *s = malloc(t.len + 1);
  if (s) {
    if (t.len) memcpy(s, t.data, t.len);
    s[t.len] = '\0';
  }
  cJSON_AddStringToObject(o, "token", s ? s : "");
  cJSON_AddNumberToObject(o, "logprob", logprob > -9999.0f ? (double)logprob : -9999.0);
  cJSON *b = cJSON_AddArrayToObject(o, "bytes");
  for (size_t i = 0; s && i < t.len; i++) cJSON_AddItemToArray(b, cJSON_CreateNumber((unsigned char)s[i]));
  free(s);
  tok_text_free(&t);
  return o;
}

/* The OpenAI ChatCompletionTokenLogprob of one event's token. */
static cJSON *lp_entry(const srv_gen_t *g, const eng_event_t *ev) {
  cJSON *o = lp_item(g->tok, ev->token, ev->logprobs->logprob);
  cJSON *top = cJSON_AddArrayToObject(o, "top_logprobs");
  for (int i = 0; i < ev->logprobs->n_top; i++)
    cJSON_AddItemToArray(top, lp_item(g->tok, ev->logprobs->top_ids[i], ev->logprobs->top_logprobs[i]));
  return o;
}

/* One content chunk; final makes it the finishing chunk; lp (taken) is its logprobs content list or NULL. */
static void append_chunk(srv_gen_t *g, const char *text, size_t len, int role, int final, cJSON *lp) {
  cJSON *o = chunk_head(g);
  cJSON *choices = cJSON_AddArrayToObject(o, "choices"), *c = cJSON_CreateObject();
  cJSON_AddItemToArray(choices, c);
  if (g->kind != SRV_KIND_TRANSCRIBE) cJSON_AddNumberToObject(c, "index", 0);
  cJSON *d = cJSON_AddObjectToObject(c, "delta");
  if (role) cJSON_AddStringToObject(d, "role", "assistant");
  char *t = malloc(len + 1);
  if (t) {
    memcpy(t, text, len);
    t[len] = '\0';
  }
  cJSON_AddStringToObject(d, "content", t ? t : "");
  free(t);
  if (lp)
    cJSON_AddItemToObject(cJSON_AddObjectToObject(c, "logprobs"), "content", lp);
  else if (g->kind != SRV_KIND_TRANSCRIBE)
    cJSON_AddNullToObject(c, "logprobs");
  if (final) {
    cJSON_AddStringToObject(c, "finish_reason", finish_reason(g->finish));
    add_stop_reason(c, g);
  } else {
    cJSON_AddNullToObject(c, "finish_reason");
    if (g->kind == SRV_KIND_TRANSCRIBE) cJSON_AddNullToObject(c, "stop_reason");
  }
  append_data(g, o);
}

static void append_usage(srv_gen_t *g) {
  cJSON *o = chunk_head(g);
  cJSON_AddArrayToObject(o, "choices");
  cJSON_AddItemToObject(o, "usage", usage_obj(&g->usage));
  append_data(g, o);
}

static void append_error(srv_gen_t *g, int status, const char *msg) {
  char *e = gen_error_json(status, msg, NULL);
  if (!e) {
    g->oom = 1;
    return;
  }
  append(g, "data: ", 6);
  append(g, e, strlen(e));
  append(g, "\n\n", 2);
  free(e);
}

/* Text of a transcription stream event with language tags removed; a tag that may still be arriving stays in
 * g->carry. Writes into out (cap >= len + sizeof carry). */
static size_t strip_stream(srv_gen_t *g, const char *text, size_t len, int final, char *out) {
  memcpy(out, g->carry, g->n_carry);
  memcpy(out + g->n_carry, text, len);
  size_t n = g->n_carry + len;
  g->n_carry = 0;
  n = srv_strip_lang_tags(out, n, g->language, sizeof g->language);
  if (!final) {
    size_t tail = srv_lang_tag_tail(out, n);
    memcpy(g->carry, out + n - tail, tail);
    g->n_carry = tail;
    n -= tail;
  }
  return n;
}

/* ---- the engine callback ----------------------------------------------------------------------------------- */

static void stream_event(srv_gen_t *g, const eng_event_t *ev, int final) {
  const char *text = ev->text;
  size_t len = ev->text_len;
  char *tmp = NULL;
  if (g->kind == SRV_KIND_TRANSCRIBE && (len || final)) {
    tmp = malloc(len + sizeof g->carry + 1);
    if (!tmp) {
      g->oom = 1;
      return;
    }
    len = strip_stream(g, text, len, final, tmp);
    text = tmp;
  }
  if (g->kind != SRV_KIND_TRANSCRIBE && !g->role_sent) {
    append_chunk(g, "", 0, 1, 0, NULL);
    g->role_sent = 1;
  }
  cJSON *lp = NULL;
  if (g->logprobs && ev->logprobs && ev->token >= 0) {
    lp = cJSON_CreateArray();
    cJSON_AddItemToArray(lp, lp_entry(g, ev));
  }
  if (!final) {
    if (len || lp) append_chunk(g, text, len, 0, 0, lp);
  } else if (ev->finish == ENG_FINISH_ERROR) {
    if (len || lp) append_chunk(g, text, len, 0, 0, lp);
    append_error(g, 500, ev->error ? ev->error : "the request failed");
    append_done(g);
  } else {
    append_chunk(g, text, len, 0, 1, lp);
    if (g->include_usage) append_usage(g);
    append_done(g);
  }
  free(tmp);
}

void gen_on_event(void *ctx, const eng_event_t *ev) {
  srv_gen_t *g = ctx;
  double now = gen_now();
  int final = ev->finish != ENG_FINISH_NONE;
  if (ev->token >= 0) { /* engine-thread-only fields */
    if (g->n_tokens == 0)
      met_observe(g->met, MET_TTFT, now - g->t_arrival);
    else
      met_observe(g->met, MET_ITL, now - g->t_last_token);
    g->n_tokens++;
    g->t_last_token = now;
  }
  pthread_mutex_lock(&g->mu);
  if (final) {
    g->done = 1;
    g->finish = ev->finish;
    g->stop_index = ev->stop_index;
    g->usage = ev->usage;
    if (ev->error) snprintf(g->error, sizeof g->error, "%s", ev->error);
  }
  if (ev->token >= 0) g->last_token = ev->token;
  if (g->stream) {
    if (!g->client_gone && !g->eof && !g->abandoned) stream_event(g, ev, final);
  } else if (!g->abandoned) {
    es_error_t e;
    if (ev->text_len && tok_text_append(&g->text, ev->text, ev->text_len, &e)) g->oom = 1;
    if (g->logprobs && ev->logprobs && ev->token >= 0) {
      if (!g->lp_all) g->lp_all = cJSON_CreateArray();
      cJSON_AddItemToArray(g->lp_all, lp_entry(g, ev));
    }
  }
  gen_wake_locked(g);
  pthread_mutex_unlock(&g->mu);
  if (final) {
    met_request_done(g->met, now - g->t_arrival, ev);
    gen_unref(g); /* the engine's reference */
  }
}

int gen_keepalive(srv_gen_t *g, double now, double idle_s) {
  int sent = 0;
  pthread_mutex_lock(&g->mu);
  if (g->stream && g->response_queued && !g->eof && !g->client_gone && g->len == g->off &&
      now - g->last_out >= idle_s) {
    append(g, ": keep-alive\n\n", 14);
    g->last_out = now;
    gen_wake_locked(g);
    sent = 1;
  }
  pthread_mutex_unlock(&g->mu);
  return sent;
}

void gen_abandon_locked(srv_gen_t *g, const char *why) {
  if (g->done && (!g->stream || g->eof)) return;
  g->abandoned = 1;
  if (g->stream && g->response_queued && !g->eof) {
    append_error(g, 503, why);
    append_done(g);
  } else if (!g->stream && g->prepared && !g->fail.status) {
    g->done = 1;
    g->finish = ENG_FINISH_ERROR;
    snprintf(g->error, sizeof g->error, "%s", why);
  }
  gen_wake_locked(g);
}

/* ---- the streamed response ---------------------------------------------------------------------------------- */

static ssize_t sse_read(void *cls, uint64_t pos, char *out, size_t max) {
  (void)pos;
  srv_gen_t *g = cls;
  ssize_t r;
  pthread_mutex_lock(&g->mu);
  if (g->oom) {
    r = MHD_CONTENT_READER_END_WITH_ERROR;
  } else if (g->len > g->off) {
    size_t n = g->len - g->off < max ? g->len - g->off : max;
    memcpy(out, g->buf + g->off, n);
    g->off += n;
    g->last_out = gen_now();
    r = (ssize_t)n;
  } else if (g->eof) {
    r = MHD_CONTENT_READER_END_OF_STREAM;
  } else {
    gen_suspend_locked(g);
    r = 0;
  }
  pthread_mutex_unlock(&g->mu);
  return r;
}

static void sse_free(void *cls) {
  srv_gen_t *g = cls;
  pthread_mutex_lock(&g->mu);
  int cancel = !g->done && g->submitted;
  g->client_gone = 1;
  uint64_t id = g->eng_id;
  pthread_mutex_unlock(&g->mu);
  if (cancel) eng_cancel(g->eng, id); /* a vanished client: its KV blocks go back at the next step */
  gen_unref(g);
}

struct MHD_Response *gen_sse_response(srv_gen_t *g) {
  struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, sse_read, g, sse_free);
  if (!r) return NULL;
  gen_ref(g);
  MHD_add_response_header(r, "Content-Type", "text/event-stream; charset=utf-8");
  MHD_add_response_header(r, "Cache-Control", "no-cache");
  return r;
}

/* ---- non-streamed bodies ------------------------------------------------------------------------------------- */

static char *print_delete(cJSON *o) {
  char *s = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  return s;
}

int gen_final_body(srv_gen_t *g, char **body, size_t *len, const char **content_type, int *status) {
  *content_type = "application/json";
  *status = 200;
  *body = NULL;
  if (g->oom) {
    *status = 500;
    *body = gen_error_json(500, "out of memory collecting the output", NULL);
  } else if (g->finish == ENG_FINISH_ERROR) {
    *status = g->abandoned ? 503 : 500;
    *body = gen_error_json(*status, g->error[0] ? g->error : "the request failed", NULL);
  } else if (g->kind == SRV_KIND_TRANSCRIBE) {
    char *t = g->text.data ? g->text.data : "";
    size_t n = srv_strip_lang_tags(t, g->text.len, g->language, sizeof g->language);
    if (g->text.data) g->text.len = n;
    if (g->fmt == SRV_FMT_TEXT) {
      *content_type = "text/plain; charset=utf-8";
      *body = malloc(n + 1);
      if (*body) {
        memcpy(*body, t, n + 1);
        *len = n;
        return ES_OK;
      }
    } else {
      cJSON *o = cJSON_CreateObject();
      if (g->fmt == SRV_FMT_VERBOSE_JSON) {
        cJSON_AddStringToObject(o, "task", "transcribe");
        cJSON_AddStringToObject(o, "language", g->language);
        cJSON_AddNumberToObject(o, "duration", g->audio_seconds);
      }
      cJSON_AddStringToObject(o, "text", t);
      cJSON *u = cJSON_AddObjectToObject(o, "usage");
      cJSON_AddStringToObject(u, "type", "duration");
      cJSON_AddNumberToObject(u, "seconds", (double)(long long)(g->audio_seconds + 0.999999));
      *body = print_delete(o);
    }
  } else {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", g->id);
    cJSON_AddStringToObject(o, "object", "chat.completion");
    cJSON_AddNumberToObject(o, "created", (double)g->created);
    cJSON_AddStringToObject(o, "model", g->model);
    cJSON *c = cJSON_CreateObject();
    cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "choices"), c);
    cJSON_AddNumberToObject(c, "index", 0);
    cJSON *m = cJSON_AddObjectToObject(c, "message");
    cJSON_AddStringToObject(m, "role", "assistant");
    cJSON_AddStringToObject(m, "content", g->text.data ? g->text.data : "");
    cJSON_AddArrayToObject(m, "tool_calls");
    if (g->logprobs) {
      cJSON_AddItemToObject(cJSON_AddObjectToObject(c, "logprobs"), "content",
                            g->lp_all ? g->lp_all : cJSON_CreateArray());
      g->lp_all = NULL;
    } else {
      cJSON_AddNullToObject(c, "logprobs");
    }
    cJSON_AddStringToObject(c, "finish_reason", finish_reason(g->finish));
    add_stop_reason(c, g);
    cJSON_AddItemToObject(o, "usage", usage_obj(&g->usage));
    *body = print_delete(o);
  }
  if (!*body) {
    *status = 500;
    return ES_ENOMEM;
  }
  *len = strlen(*body);
  return ES_OK;
}
