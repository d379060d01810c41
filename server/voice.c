/* voice: the live voice session (OpenAI Realtime event protocol over a WebSocket). See voice.h.
 * ref: the OpenAI Realtime API's GA events (SERVING.md §5.1; openai-python 3.51 types/realtime: event and field
 * names, the session, item and response objects, status_details reasons); transformers' chat template through
 * prompt_render_chat (the conversation renders as a chat request would).
 */
#define _GNU_SOURCE /* vasprintf */
#include "voice.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "audio_stream.h"
#include "audio_vad.h"
#include "b64.h"
#include "es_clock.h"
#include "prompt.h"

#define SR 16000
#define MIN_COMMIT_SAMPLES (SR / 10)  /* 100 ms: OpenAI's minimum for a commit */
#define MAX_ITEMS 200                 /* conversation items kept (a message each, under SRV_MAX_MESSAGES) */
#define MAX_ITEM_PARTS 8              /* content parts per item */
#define AUDIO_TOKENS_PER_S 25         /* one audio token per 40 ms */
#define MAX_CONVERSATION_TEXT (1 << 20) /* text bytes the conversation keeps (the context holds ~30 KiB) */
#define DEFAULT_BUFFER_S 300.0

typedef enum { ROLE_USER = 0, ROLE_ASSISTANT, ROLE_SYSTEM } role_t;
static const char *const ROLE_NAMES[] = {"user", "assistant", "system"};

typedef struct {
  char *text;   /* a text part, or NULL */
  float *audio; /* an audio part (16 kHz), or NULL */
  size_t n_audio;
} part_t;

typedef struct {
  char id[40];
  role_t role;
  part_t parts[MAX_ITEM_PARTS];
  size_t n_parts;
  int incomplete;  /* an assistant reply cut short (length, cancel, error) */
  int in_progress; /* the reply of the response running now */
} item_t;

/* What a response shares with the engine thread's callback. */
typedef struct {
  pthread_mutex_t mu;
  int refs;       /* (mu) the session's and the engine's */
  ws_conn_t *c;   /* (mu) NULL once the session ended */
  tok_text_t out; /* (mu) released text not yet sent */
  int oom;        /* (mu) */
  int done;       /* (mu) the final event arrived */
  eng_finish_t finish;
  eng_usage_t usage;
  char error[ES_ERROR_MSG_MAX];
  /* engine thread only */
  met_t *met;
  double t_submit, t_last;
  int n_tokens;
} link_t;

typedef struct {
  char *instructions;    /* NULL: the chat template's default system prompt */
  int max_output_tokens; /* 0: "inf" */
  cJSON *sampling;       /* the session's sampling fields (an object) */
  audio_stream_format_t fmt;
  int rate;
  int vad; /* server_vad on */
  double threshold;
  int prefix_ms, silence_ms, create_response, interrupt_response;
  int truncation; /* 1: "auto", 0: "disabled" */
} cfg_t;

typedef struct {
  voice_opts_t o;
  ws_conn_t *c;
  atomic_int *stop;
  char id[40];
  uint64_t n_events, rng;
  cfg_t cfg;
  audio_stream_t *conv;
  audio_fbuf_t buf;   /* input audio not yet committed: samples [buf_start, buf_start + buf.n) of the session */
  uint64_t buf_start; /* samples before the buffer (committed, cleared or trimmed) */
  audio_vad_t vad;
  uint64_t vad_base; /* the session sample the detector's sample 0 is */
  int speaking;
  uint64_t turn_start;
  char turn_item[40];
  item_t *items[MAX_ITEMS];
  size_t n_items;
  size_t trunc_first; /* items before this were left out of the last prompt (truncation) */
  int auto_pending;   /* a turn ended while a response ran: respond when it is done */
  struct {
    int active;
    char id[40];
    item_t *item;
    link_t *link;
    uint64_t eng_id;
    tok_text_t text;
    const char *cancel_reason; /* status_details.reason when cancelled: "client_cancelled", "turn_detected" */
    int cancel_sent;
    int max_output_tokens;
    cJSON *metadata;
  } resp;
  int closing;
} voice_t;

/* ---- ids and events ------------------------------------------------------------------------------------------- */

static uint64_t next_rand(voice_t *v) {
  v->rng ^= v->rng << 13, v->rng ^= v->rng >> 7, v->rng ^= v->rng << 17;
  return v->rng;
}

static void new_id(voice_t *v, const char *prefix, char out[40]) {
  snprintf(out, 40, "%s%016llx", prefix, (unsigned long long)next_rand(v));
}

static cJSON *ev_new(voice_t *v, const char *type) {
  cJSON *o = cJSON_CreateObject();
  char id[40];
  snprintf(id, sizeof id, "event_%llu", (unsigned long long)++v->n_events);
  cJSON_AddStringToObject(o, "type", type);
  cJSON_AddStringToObject(o, "event_id", id);
  return o;
}

static void ev_send(voice_t *v, cJSON *o) {
  char *s = o ? cJSON_PrintUnformatted(o) : NULL;
  cJSON_Delete(o);
  if (!s) {
    ws_conn_close(v->c, 1011, "out of memory");
    return;
  }
  ws_conn_send_text(v->c, s, strlen(s));
  free(s);
}

/* Replaces every byte that is not part of valid UTF-8 with '?': messages quote client strings cut to a byte
 * count ("%.60s"), which can split a character, and a text frame must be valid UTF-8 (RFC 6455 §8.1). */
static void utf8_scrub(char *s) {
  size_t n = strlen(s), off = 0, bad = 0;
  while (off < n && !tok_utf8_valid(s + off, n - off, &bad)) {
    s[off + bad] = '?';
    off += bad + 1;
  }
}

/* An `error` event: type "invalid_request_error" (the client's mistake) or "server_error". */
static void send_error(voice_t *v, const char *type, const char *code, const char *param, const char *client_event,
                       const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void send_error(voice_t *v, const char *type, const char *code, const char *param, const char *client_event,
                       const char *fmt, ...) {
  char msg[ES_ERROR_MSG_MAX + 64];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  utf8_scrub(msg);
  cJSON *o = ev_new(v, "error");
  cJSON *e = cJSON_AddObjectToObject(o, "error");
  cJSON_AddStringToObject(e, "type", type);
  code ? (void)cJSON_AddStringToObject(e, "code", code) : (void)cJSON_AddNullToObject(e, "code");
  cJSON_AddStringToObject(e, "message", msg);
  param ? (void)cJSON_AddStringToObject(e, "param", param) : (void)cJSON_AddNullToObject(e, "param");
  client_event ? (void)cJSON_AddStringToObject(e, "event_id", client_event)
               : (void)cJSON_AddNullToObject(e, "event_id");
  ev_send(v, o);
  if (v->o.verbose) fprintf(stderr, "earshot serve: voice %s: error %s: %s\n", v->id, code ? code : type, msg);
}

/* ---- the session object --------------------------------------------------------------------------------------- */

static void cfg_free(cfg_t *c) {
  free(c->instructions);
  cJSON_Delete(c->sampling);
  memset(c, 0, sizeof *c);
}

static int cfg_copy(cfg_t *dst, const cfg_t *src) {
  *dst = *src;
  dst->instructions = src->instructions ? strdup(src->instructions) : NULL;
  dst->sampling = cJSON_Duplicate(src->sampling, 1);
  if ((src->instructions && !dst->instructions) || !dst->sampling) {
    cfg_free(dst);
    return ES_ENOMEM;
  }
  return ES_OK;
}

static cJSON *format_json(const cfg_t *c) {
  cJSON *f = cJSON_CreateObject();
  cJSON_AddStringToObject(f, "type",
                          c->fmt == AUDIO_STREAM_PCM16   ? "audio/pcm"
                          : c->fmt == AUDIO_STREAM_MULAW ? "audio/pcmu"
                                                         : "audio/pcma");
  if (c->fmt == AUDIO_STREAM_PCM16) cJSON_AddNumberToObject(f, "rate", c->rate);
  return f;
}

static void add_max_tokens(cJSON *o, int max) {
  max ? (void)cJSON_AddNumberToObject(o, "max_output_tokens", max)
      : (void)cJSON_AddStringToObject(o, "max_output_tokens", "inf");
}

static cJSON *session_json(const voice_t *v) {
  const cfg_t *c = &v->cfg;
  cJSON *s = cJSON_CreateObject();
  cJSON_AddStringToObject(s, "type", "realtime");
  cJSON_AddStringToObject(s, "object", "realtime.session");
  cJSON_AddStringToObject(s, "id", v->id);
  cJSON_AddStringToObject(s, "model", v->o.ctx.served_model_name);
  cJSON_AddItemToArray(cJSON_AddArrayToObject(s, "output_modalities"), cJSON_CreateString("text"));
  c->instructions ? (void)cJSON_AddStringToObject(s, "instructions", c->instructions)
                  : (void)cJSON_AddStringToObject(s, "instructions", "You are a helpful assistant.");
  add_max_tokens(s, c->max_output_tokens);
  cJSON *in = cJSON_AddObjectToObject(cJSON_AddObjectToObject(s, "audio"), "input");
  cJSON_AddItemToObject(in, "format", format_json(c));
  if (c->vad) {
    cJSON *t = cJSON_AddObjectToObject(in, "turn_detection");
    cJSON_AddStringToObject(t, "type", "server_vad");
    cJSON_AddNumberToObject(t, "threshold", c->threshold);
    cJSON_AddNumberToObject(t, "prefix_padding_ms", c->prefix_ms);
    cJSON_AddNumberToObject(t, "silence_duration_ms", c->silence_ms);
    cJSON_AddBoolToObject(t, "create_response", c->create_response);
    cJSON_AddBoolToObject(t, "interrupt_response", c->interrupt_response);
    cJSON_AddNullToObject(t, "idle_timeout_ms");
  } else {
    cJSON_AddNullToObject(in, "turn_detection");
  }
  cJSON_AddNullToObject(in, "transcription");
  cJSON_AddNullToObject(in, "noise_reduction");
  cJSON_AddStringToObject(s, "truncation", c->truncation ? "auto" : "disabled");
  cJSON_AddArrayToObject(s, "tools");
  cJSON_AddStringToObject(s, "tool_choice", "auto");
  for (const cJSON *k = c->sampling->child; k; k = k->next) cJSON_AddItemToObject(s, k->string, cJSON_Duplicate(k, 1));
  return s;
}

/* A failure found while reading a client event: the param it concerns and why. */
typedef struct {
  char code[48];
  char param[96];
  char msg[ES_ERROR_MSG_MAX];
} bad_t;

static int bad(bad_t *b, const char *code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int bad(bad_t *b, const char *code, const char *param, const char *fmt, ...) {
  snprintf(b->code, sizeof b->code, "%s", code);
  snprintf(b->param, sizeof b->param, "%s", param);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(b->msg, sizeof b->msg, fmt, ap);
  va_end(ap);
  utf8_scrub(b->msg);
  return ES_EINVAL;
}

static const cJSON *present(const cJSON *o, const char *k) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return v && !cJSON_IsNull(v) ? v : NULL;
}

static int is_one_of(const char *k, const char *const *list) {
  for (; *list; list++)
    if (!strcmp(k, *list)) return 1;
  return 0;
}

static const char *const SAMPLING_KEYS[] = {
    "temperature", "top_p",      "top_k",      "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty",
    "seed",        "min_tokens", "ignore_eos", NULL};

/* Checks sampling fields by applying them to a scratch request. */
static int check_sampling(voice_t *v, const cJSON *o, const char *where, bad_t *b) {
  srv_req_t *r = calloc(1, sizeof *r);
  if (!r) return bad(b, "server_error", "", "out of memory");
  srv_req_init(r, SRV_KIND_CHAT, &v->o.ctx);
  srv_fail_t f;
  memset(&f, 0, sizeof f);
  int rc = srv_req_sampling_fields(r, o, &f);
  es_error_t e;
  if (!rc && smp_params_validate(&r->sampling, v->o.ctx.rt->cfg.vocab_size, &e))
    rc = srv_fail(&f, 400, "", "%s", e.msg);
  srv_req_free(r);
  free(r);
  if (rc) return bad(b, "invalid_value", f.param[0] ? f.param : where, "%s", f.err.msg);
  return ES_OK;
}

static int parse_max_tokens(const cJSON *m, const char *param, int *out, bad_t *b) {
  if (cJSON_IsString(m) && !strcmp(m->valuestring, "inf")) {
    *out = 0;
    return ES_OK;
  }
  if (!cJSON_IsNumber(m) || m->valuedouble != (double)(long long)m->valuedouble || m->valuedouble < 1 ||
      m->valuedouble > INT_MAX)
    return bad(b, "invalid_value", param, "'%s' must be a positive integer or \"inf\"", param);
  *out = (int)m->valuedouble;
  return ES_OK;
}

static int parse_modalities(const cJSON *m, const char *param, bad_t *b) {
  if (!cJSON_IsArray(m) || cJSON_GetArraySize(m) != 1 || !cJSON_IsString(m->child) ||
      strcmp(m->child->valuestring, "text") != 0)
    return bad(b, "invalid_value", param, "this model answers in text only: '%s' must be [\"text\"]", param);
  return ES_OK;
}

static int parse_format(const cJSON *f, cfg_t *c, bad_t *b) {
  const char *P = "session.audio.input.format";
  const char *type = cJSON_IsString(f) ? f->valuestring : NULL;
  const cJSON *t = cJSON_IsObject(f) ? present(f, "type") : NULL;
  if (t) type = cJSON_IsString(t) ? t->valuestring : NULL;
  if (!type)
    return bad(b, "invalid_value", P,
               "the audio format must be {\"type\": \"audio/pcm\", \"rate\": N}, "
               "{\"type\": \"audio/pcmu\"} or {\"type\": \"audio/pcma\"}");
  if (!strcmp(type, "audio/pcm") || !strcmp(type, "pcm16")) {
    const cJSON *r = cJSON_IsObject(f) ? present(f, "rate") : NULL;
    int rate = 24000;
    if (r) {
      if (!cJSON_IsNumber(r) || r->valuedouble != (double)(int)r->valuedouble ||
          r->valuedouble < AUDIO_STREAM_MIN_RATE || r->valuedouble > AUDIO_STREAM_MAX_RATE)
        return bad(b, "invalid_value", "session.audio.input.format.rate",
                   "the rate must be an integer from %d to %d Hz", AUDIO_STREAM_MIN_RATE, AUDIO_STREAM_MAX_RATE);
      rate = (int)r->valuedouble;
    }
    c->fmt = AUDIO_STREAM_PCM16;
    c->rate = rate;
  } else if (!strcmp(type, "audio/pcmu") || !strcmp(type, "g711_ulaw")) {
    c->fmt = AUDIO_STREAM_MULAW;
    c->rate = 8000;
  } else if (!strcmp(type, "audio/pcma") || !strcmp(type, "g711_alaw")) {
    c->fmt = AUDIO_STREAM_ALAW;
    c->rate = 8000;
  } else {
    return bad(b, "invalid_value", P, "unsupported audio format '%.40s' (audio/pcm, audio/pcmu, audio/pcma)", type);
  }
  return ES_OK;
}

static int parse_int_field(const cJSON *o, const char *k, int lo, int hi, int *out, bad_t *b) {
  const cJSON *x = present(o, k);
  if (!x) return ES_OK;
  char param[96];
  snprintf(param, sizeof param, "session.audio.input.turn_detection.%s", k);
  if (!cJSON_IsNumber(x) || x->valuedouble != (double)(int)x->valuedouble || x->valuedouble < lo || x->valuedouble > hi)
    return bad(b, "invalid_value", param, "'%s' must be an integer from %d to %d", k, lo, hi);
  *out = (int)x->valuedouble;
  return ES_OK;
}

static int parse_bool_field(const cJSON *o, const char *k, int *out, bad_t *b) {
  const cJSON *x = present(o, k);
  if (!x) return ES_OK;
  if (!cJSON_IsBool(x)) {
    char param[96];
    snprintf(param, sizeof param, "session.audio.input.turn_detection.%s", k);
    return bad(b, "invalid_value", param, "'%s' must be true or false", k);
  }
  *out = cJSON_IsTrue(x);
  return ES_OK;
}

static int parse_turn_detection(const cJSON *t, cfg_t *c, bad_t *b) {
  const char *P = "session.audio.input.turn_detection";
  if (cJSON_IsNull(t)) {
    c->vad = 0;
    return ES_OK;
  }
  const cJSON *type = cJSON_IsObject(t) ? present(t, "type") : NULL;
  if (!type || !cJSON_IsString(type))
    return bad(b, "invalid_value", P, "turn_detection must be null or {\"type\": \"server_vad\", ...}");
  if (strcmp(type->valuestring, "server_vad") != 0)
    return bad(b, "unsupported", P, "turn detection '%.40s' is not supported (server_vad or null)", type->valuestring);
  static const char *const KEYS[] = {"type",
                                     "threshold",
                                     "prefix_padding_ms",
                                     "silence_duration_ms",
                                     "create_response",
                                     "interrupt_response",
                                     "idle_timeout_ms",
                                     NULL};
  for (const cJSON *k = t->child; k; k = k->next)
    if (!is_one_of(k->string, KEYS))
      return bad(b, "unknown_parameter", P, "unknown turn_detection field '%.60s'", k->string);
  if (present(t, "idle_timeout_ms"))
    return bad(b, "unsupported", "session.audio.input.turn_detection.idle_timeout_ms",
               "idle_timeout_ms is not supported");
  if (!c->vad) { /* turning it on: OpenAI's defaults for what is not given */
    c->threshold = 0.5, c->prefix_ms = 300, c->silence_ms = 500, c->create_response = 1, c->interrupt_response = 1;
  }
  const cJSON *th = present(t, "threshold");
  if (th) {
    if (!cJSON_IsNumber(th) || !(th->valuedouble >= 0 && th->valuedouble <= 1))
      return bad(b, "invalid_value", "session.audio.input.turn_detection.threshold", "'threshold' must be from 0 to 1");
    c->threshold = th->valuedouble;
  }
  int rc = parse_int_field(t, "prefix_padding_ms", 0, 10000, &c->prefix_ms, b);
  if (!rc) rc = parse_int_field(t, "silence_duration_ms", 10, 10000, &c->silence_ms, b);
  if (!rc) rc = parse_bool_field(t, "create_response", &c->create_response, b);
  if (!rc) rc = parse_bool_field(t, "interrupt_response", &c->interrupt_response, b);
  if (rc) return rc;
  c->vad = 1;
  return ES_OK;
}

static int parse_audio(const cJSON *a, cfg_t *c, bad_t *b) {
  if (!cJSON_IsObject(a)) return bad(b, "invalid_value", "session.audio", "'audio' must be an object");
  for (const cJSON *k = a->child; k; k = k->next)
    if (strcmp(k->string, "input") != 0 && strcmp(k->string, "output") != 0) /* output (voice, ...): no speech out */
      return bad(b, "unknown_parameter", "session.audio", "unknown audio field '%.60s'", k->string);
  const cJSON *in = present(a, "input");
  if (!in) return ES_OK;
  if (!cJSON_IsObject(in)) return bad(b, "invalid_value", "session.audio.input", "'input' must be an object");
  for (const cJSON *k = in->child; k; k = k->next) {
    if (!strcmp(k->string, "format")) {
      int rc = parse_format(k, c, b);
      if (rc) return rc;
    } else if (!strcmp(k->string, "turn_detection")) {
      int rc = parse_turn_detection(k, c, b);
      if (rc) return rc;
    } else if (!strcmp(k->string, "transcription") || !strcmp(k->string, "noise_reduction")) {
      if (!cJSON_IsNull(k))
        return bad(b, "unsupported",
                   k->string[0] == 't' ? "session.audio.input.transcription" : "session.audio.input.noise_reduction",
                   "'%s' is not supported (the model hears the audio itself); send null", k->string);
    } else {
      return bad(b, "unknown_parameter", "session.audio.input", "unknown audio.input field '%.60s'", k->string);
    }
  }
  return ES_OK;
}

/* Applies a session.update's `session` to c (a copy of the session's settings). */
static int parse_session(voice_t *v, const cJSON *s, cfg_t *c, bad_t *b) {
  static const char *const IGNORED[] = {
      "id", "object", "expires_at", "tracing", "include", "parallel_tool_calls", "reasoning", NULL};
  if (!cJSON_IsObject(s)) return bad(b, "invalid_value", "session", "'session' must be an object");
  for (const cJSON *k = s->child; k; k = k->next) {
    const char *n = k->string;
    int rc = ES_OK;
    if (is_one_of(n, IGNORED) || is_one_of(n, SAMPLING_KEYS)) {
      continue;
    } else if (!strcmp(n, "type")) {
      if (!cJSON_IsString(k) || strcmp(k->valuestring, "realtime") != 0)
        return bad(b, "unsupported", "session.type",
                   "only \"realtime\" sessions are served (no transcription sessions)");
    } else if (!strcmp(n, "model")) {
      if (!cJSON_IsString(k) || strcmp(k->valuestring, v->o.ctx.served_model_name) != 0)
        return bad(b, "invalid_value", "session.model",
                   "the model `%.200s` does not exist here (this server serves `%s`)",
                   cJSON_IsString(k) ? k->valuestring : "?", v->o.ctx.served_model_name);
    } else if (!strcmp(n, "instructions")) {
      if (!cJSON_IsString(k) && !cJSON_IsNull(k))
        return bad(b, "invalid_value", "session.instructions", "'instructions' must be a string");
      if (cJSON_IsString(k) && !k->valuestring[0])
        return bad(b, "invalid_value", "session.instructions", "'instructions' must not be empty (null: the default)");
      free(c->instructions);
      c->instructions = cJSON_IsString(k) ? strdup(k->valuestring) : NULL;
      if (cJSON_IsString(k) && !c->instructions) return bad(b, "server_error", "", "out of memory");
    } else if (!strcmp(n, "max_output_tokens")) {
      rc = parse_max_tokens(k, "session.max_output_tokens", &c->max_output_tokens, b);
    } else if (!strcmp(n, "output_modalities")) {
      rc = parse_modalities(k, "session.output_modalities", b);
    } else if (!strcmp(n, "audio")) {
      rc = parse_audio(k, c, b);
    } else if (!strcmp(n, "truncation")) {
      if (!cJSON_IsString(k) || (strcmp(k->valuestring, "auto") != 0 && strcmp(k->valuestring, "disabled") != 0))
        return bad(b, "invalid_value", "session.truncation", "'truncation' must be \"auto\" or \"disabled\"");
      c->truncation = !strcmp(k->valuestring, "auto");
    } else if (!strcmp(n, "tools")) {
      if (!cJSON_IsNull(k) && (!cJSON_IsArray(k) || cJSON_GetArraySize(k) > 0))
        return bad(b, "unsupported", "session.tools", "tools are not supported by this server");
    } else if (!strcmp(n, "tool_choice")) {
      if (!cJSON_IsNull(k) &&
          (!cJSON_IsString(k) || (strcmp(k->valuestring, "auto") && strcmp(k->valuestring, "none"))))
        return bad(b, "unsupported", "session.tool_choice", "tools are not supported by this server");
    } else if (!strcmp(n, "prompt")) {
      if (!cJSON_IsNull(k)) return bad(b, "unsupported", "session.prompt", "prompt templates are not supported");
    } else {
      return bad(b, "unknown_parameter", "session", "unknown session field '%.60s'", n);
    }
    if (rc) return rc;
  }
  /* sampling fields: merged into the session's, then checked together */
  for (const char *const *k = SAMPLING_KEYS; *k; k++) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(s, *k);
    if (!x) continue;
    cJSON_DeleteItemFromObjectCaseSensitive(c->sampling, *k);
    if (!cJSON_IsNull(x)) cJSON_AddItemToObject(c->sampling, *k, cJSON_Duplicate(x, 1));
  }
  return check_sampling(v, c->sampling, "session", b);
}

/* ---- items ---------------------------------------------------------------------------------------------------- */

static void item_free(item_t *it) {
  if (!it) return;
  for (size_t i = 0; i < it->n_parts; i++) free(it->parts[i].text), free(it->parts[i].audio);
  free(it);
}

static cJSON *item_json(const item_t *it) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "id", it->id);
  cJSON_AddStringToObject(o, "object", "realtime.item");
  cJSON_AddStringToObject(o, "type", "message");
  cJSON_AddStringToObject(o, "status", it->in_progress ? "in_progress" : it->incomplete ? "incomplete" : "completed");
  cJSON_AddStringToObject(o, "role", ROLE_NAMES[it->role]);
  cJSON *content = cJSON_AddArrayToObject(o, "content");
  for (size_t i = 0; i < it->n_parts; i++) {
    cJSON *p = cJSON_CreateObject();
    if (it->parts[i].audio) {
      cJSON_AddStringToObject(p, "type", "input_audio");
      cJSON_AddNullToObject(p, "transcript");
    } else {
      cJSON_AddStringToObject(p, "type", it->role == ROLE_ASSISTANT ? "output_text" : "input_text");
      cJSON_AddStringToObject(p, "text", it->parts[i].text ? it->parts[i].text : "");
    }
    cJSON_AddItemToArray(content, p);
  }
  return o;
}

static size_t find_item(const voice_t *v, const char *id) {
  for (size_t i = 0; i < v->n_items; i++)
    if (!strcmp(v->items[i]->id, id)) return i;
  return SIZE_MAX;
}

static void remove_item_at(voice_t *v, size_t i) {
  item_free(v->items[i]);
  memmove(v->items + i, v->items + i + 1, (v->n_items - i - 1) * sizeof v->items[0]);
  v->n_items--;
  if (v->trunc_first > i) v->trunc_first--;
}

static void send_deleted(voice_t *v, const char *id) {
  cJSON *o = ev_new(v, "conversation.item.deleted");
  cJSON_AddStringToObject(o, "item_id", id);
  ev_send(v, o);
}

/* What items hold, against the conversation's limits. */
typedef struct {
  size_t audio;  /* samples */
  size_t audios; /* audio parts */
  size_t text;   /* bytes */
} held_t;

static held_t item_held(const item_t *it) {
  held_t h = {0};
  for (size_t k = 0; k < it->n_parts; k++) {
    h.audio += it->parts[k].n_audio;
    h.audios += it->parts[k].audio != NULL;
    h.text += it->parts[k].text ? strlen(it->parts[k].text) : 0;
  }
  return h;
}

/* Audio the conversation keeps: what the context could hold (at least one 30 s window); more is never in a
 * prompt. */
static size_t max_audio_held(const voice_t *v) {
  size_t max = (size_t)v->o.ctx.rt->max_model_len / AUDIO_TOKENS_PER_S * SR;
  return max < 30 * SR ? 30 * SR : max;
}

/* Makes room for one more item holding `add`: the oldest items (never the reply being generated) go, each with
 * a deleted event. ES_ETOOBIG when the item alone is over a limit (nothing is deleted then). */
static int make_room(voice_t *v, held_t add, size_t *after) {
  if (add.audio > max_audio_held(v) || add.text > MAX_CONVERSATION_TEXT || add.audios > ENG_MAX_AUDIOS)
    return ES_ETOOBIG;
  for (;;) {
    held_t h = add;
    for (size_t i = 0; i < v->n_items; i++) {
      held_t x = item_held(v->items[i]);
      h.audio += x.audio, h.audios += x.audios, h.text += x.text;
    }
    if (v->n_items < MAX_ITEMS && h.audio <= max_audio_held(v) && h.audios <= ENG_MAX_AUDIOS &&
        h.text <= MAX_CONVERSATION_TEXT)
      return ES_OK;
    size_t i = 0;
    while (i < v->n_items && v->items[i]->in_progress) i++;
    if (i == v->n_items) return ES_ETOOBIG; /* only the running reply is left (cannot happen: it holds nothing) */
    char id[40];
    snprintf(id, sizeof id, "%s", v->items[i]->id);
    remove_item_at(v, i);
    send_deleted(v, id);
    if (*after != SIZE_MAX && i <= *after) /* the anchor moved down, or went: insert where it was */
      *after = *after == 0 ? SIZE_MAX : *after - 1;
  }
}

/* Inserts it after position `after` (SIZE_MAX: at the start, "root") and sends added + done; takes it. Fails
 * (ES_ETOOBIG, it freed) when the item alone is over the conversation's limits. */
static int insert_item(voice_t *v, item_t *it, size_t after) {
  if (after != SIZE_MAX && after >= v->n_items) after = v->n_items ? v->n_items - 1 : SIZE_MAX;
  if (make_room(v, item_held(it), &after)) {
    item_free(it);
    return ES_ETOOBIG;
  }
  size_t pos = after == SIZE_MAX ? 0 : after + 1;
  memmove(v->items + pos + 1, v->items + pos, (v->n_items - pos) * sizeof v->items[0]);
  v->items[pos] = it;
  v->n_items++;
  if (v->trunc_first > pos) v->trunc_first++;
  int n_events = it->in_progress ? 1 : 2; /* an in-progress reply's done event comes with the response's end */
  for (int k = 0; k < n_events; k++) {
    cJSON *o = ev_new(v, k ? "conversation.item.done" : "conversation.item.added");
    pos ? (void)cJSON_AddStringToObject(o, "previous_item_id", v->items[pos - 1]->id)
        : (void)cJSON_AddNullToObject(o, "previous_item_id");
    cJSON_AddItemToObject(o, "item", item_json(it));
    ev_send(v, o);
  }
  return ES_OK;
}

/* The error event for an item over the conversation's limits. */
static void send_item_too_big(voice_t *v, const char *client_event) {
  send_error(v, "invalid_request_error", "item_too_large", "item", client_event,
             "the item is larger than a conversation may hold (%.0f s of audio, %d audios, %d KiB of text)",
             max_audio_held(v) / (double)SR, ENG_MAX_AUDIOS, MAX_CONVERSATION_TEXT >> 10);
}

/* ---- input audio ---------------------------------------------------------------------------------------------- */

/* Restarts the detector at the buffer's end (VAD turned on, a commit, a clear). A turn in progress ends there:
 * announced (speech_stopped, for a commit that follows at once) or dropped silently (a clear, VAD turned off). */
static void vad_reset(voice_t *v, int announce) {
  uint64_t end = v->buf_start + v->buf.n;
  if (v->speaking && announce) {
    cJSON *o = ev_new(v, "input_audio_buffer.speech_stopped");
    cJSON_AddNumberToObject(o, "audio_end_ms", (double)(end / 16));
    cJSON_AddStringToObject(o, "item_id", v->turn_item);
    ev_send(v, o);
  }
  audio_vad_init(&v->vad, &(audio_vad_opts_t){.threshold = v->cfg.threshold, .silence_duration_ms = v->cfg.silence_ms});
  v->vad_base = end;
  v->speaking = 0;
}

/* Drops buffered samples before session sample `upto`. */
static void buf_drop(voice_t *v, uint64_t upto) {
  if (upto <= v->buf_start) return;
  size_t k = (size_t)(upto - v->buf_start);
  if (k > v->buf.n) k = v->buf.n;
  memmove(v->buf.data, v->buf.data + k, (v->buf.n - k) * sizeof(float));
  v->buf.n -= k;
  v->buf_start += k;
}

/* The user item of samples [from, to) of the buffer; sends committed + added + done. Under 100 ms: an error
 * event (a commit), or nothing but dropping the samples (quiet: a blip the detector took for a turn). */
static int commit_range(voice_t *v, uint64_t from, uint64_t to, const char *item_id, const char *client_event,
                        int quiet) {
  if (from < v->buf_start) from = v->buf_start;
  if (to > v->buf_start + v->buf.n) to = v->buf_start + v->buf.n;
  size_t n = to > from ? (size_t)(to - from) : 0;
  if (n < MIN_COMMIT_SAMPLES) {
    if (quiet)
      buf_drop(v, to);
    else
      send_error(v, "invalid_request_error", "input_audio_buffer_commit_empty", NULL, client_event,
                 "buffer too small: %.0f ms of audio, at least 100 ms are needed", n / 16.0);
    return ES_EINVAL;
  }
  if (n > max_audio_held(v)) { /* longer than the conversation may hold: a context's worth of audio */
    buf_drop(v, to);
    send_item_too_big(v, client_event);
    return ES_ETOOBIG;
  }
  item_t *it = calloc(1, sizeof *it);
  float *a = it ? malloc(n * sizeof *a) : NULL;
  if (!a) {
    free(it);
    send_error(v, "server_error", "server_error", NULL, client_event, "out of memory");
    return ES_ENOMEM;
  }
  memcpy(a, v->buf.data + (from - v->buf_start), n * sizeof *a);
  buf_drop(v, to);
  it->role = ROLE_USER;
  it->parts[0] = (part_t){.audio = a, .n_audio = n};
  it->n_parts = 1;
  if (item_id && item_id[0])
    snprintf(it->id, sizeof it->id, "%s", item_id);
  else
    new_id(v, "item_", it->id);
  cJSON *o = ev_new(v, "input_audio_buffer.committed");
  v->n_items ? (void)cJSON_AddStringToObject(o, "previous_item_id", v->items[v->n_items - 1]->id)
             : (void)cJSON_AddNullToObject(o, "previous_item_id");
  cJSON_AddStringToObject(o, "item_id", it->id);
  ev_send(v, o);
  return insert_item(v, it, v->n_items ? v->n_items - 1 : SIZE_MAX); /* fits: checked above */
}

static int response_start(voice_t *v, const cJSON *params, const char *client_event);
static void response_cancel(voice_t *v, const char *reason);

/* A turn was committed: with create_response, answer it now, or when the running reply is done. */
static void answer_turn(voice_t *v) {
  if (!v->cfg.create_response) return;
  if (v->resp.active)
    v->auto_pending = 1;
  else
    response_start(v, NULL, NULL);
}

/* Runs the detector over the samples the buffer gained from `from` on. */
static void vad_feed(voice_t *v, size_t from) {
  audio_vad_event_t ev[64];
  for (size_t i = from; i < v->buf.n;) {
    size_t k = v->buf.n - i < 60 * AUDIO_VAD_FRAME ? v->buf.n - i : 60 * AUDIO_VAD_FRAME;
    size_t got = audio_vad_feed(&v->vad, v->buf.data + i, k, ev, 64);
    i += k;
    for (size_t e = 0; e < got; e++) {
      uint64_t at = v->vad_base + ev[e].at;
      if (ev[e].kind == AUDIO_VAD_START) {
        v->speaking = 1;
        uint64_t pad = (uint64_t)v->cfg.prefix_ms * SR / 1000;
        v->turn_start = at > pad ? at - pad : 0;
        if (v->turn_start < v->buf_start) v->turn_start = v->buf_start;
        new_id(v, "item_", v->turn_item);
        cJSON *o = ev_new(v, "input_audio_buffer.speech_started");
        cJSON_AddNumberToObject(o, "audio_start_ms", (double)(at / 16));
        cJSON_AddStringToObject(o, "item_id", v->turn_item);
        ev_send(v, o);
        if (v->cfg.interrupt_response && v->resp.active) response_cancel(v, "turn_detected");
      } else {
        v->speaking = 0;
        cJSON *o = ev_new(v, "input_audio_buffer.speech_stopped");
        cJSON_AddNumberToObject(o, "audio_end_ms", (double)(at / 16));
        cJSON_AddStringToObject(o, "item_id", v->turn_item);
        ev_send(v, o);
        /* samples the detector has not reached yet stay in the buffer (positions are kept by buf_start) */
        uint64_t buf_start_before = v->buf_start;
        if (commit_range(v, v->turn_start, v->vad_base + ev[e].cut_at, v->turn_item, NULL, 1) == ES_OK) answer_turn(v);
        i -= (size_t)(v->buf_start - buf_start_before); /* the buffer lost its front */
      }
    }
  }
  if (!v->speaking) { /* keep what a coming turn's padding may need (at most half the buffer) */
    uint64_t keep = (uint64_t)v->cfg.prefix_ms * SR / 1000 + (AUDIO_VAD_ONSET_FRAMES + 1) * AUDIO_VAD_FRAME;
    if (keep > v->buf.max / 2) keep = v->buf.max / 2;
    uint64_t end = v->buf_start + v->buf.n;
    if (end > keep) buf_drop(v, end - keep);
  }
}

/* Converts and appends audio bytes in the session's format. */
static void append_audio(voice_t *v, const uint8_t *bytes, size_t n, const char *client_event) {
  es_error_t e;
  size_t before = v->buf.n;
  int rc = audio_stream_push(v->conv, bytes, n, &v->buf, &e);
  if (rc == ES_ETOOBIG && v->cfg.vad && v->speaking) { /* a turn as long as the buffer: it ends here */
    uint64_t end = v->buf_start + v->buf.n;
    vad_reset(v, 1); /* speech_stopped at the buffer's end, then the commit */
    if (commit_range(v, v->turn_start, end, v->turn_item, client_event, 1) == ES_OK) answer_turn(v);
    before = v->buf.n;
    rc = audio_stream_push(v->conv, bytes, n, &v->buf, &e);
  }
  if (rc == ES_ETOOBIG) {
    send_error(v, "invalid_request_error", "input_audio_buffer_full", NULL, client_event,
               "the input audio buffer holds at most %.0f s: commit or clear it", v->buf.max / (double)SR);
    return;
  }
  if (rc) {
    send_error(v, "server_error", "server_error", NULL, client_event, "%s", e.msg);
    return;
  }
  if (v->cfg.vad) vad_feed(v, before);
}

/* Opens a converter for c's format, or fails (the event's error is sent). */
static int open_converter(voice_t *v, const cfg_t *c, audio_stream_t **out, const char *client_event) {
  es_error_t e;
  if (audio_stream_open(c->fmt, c->rate, out, &e)) {
    send_error(v, "invalid_request_error", "invalid_value", "session.audio.input.format", client_event, "%s", e.msg);
    return ES_EINVAL;
  }
  return ES_OK;
}

/* ---- responses ------------------------------------------------------------------------------------------------ */

static void link_unref(link_t *l) {
  pthread_mutex_lock(&l->mu);
  int left = --l->refs;
  pthread_mutex_unlock(&l->mu);
  if (left) return;
  tok_text_free(&l->out);
  pthread_mutex_destroy(&l->mu);
  free(l);
}

/* The engine thread's callback. */
static void on_engine_event(void *ctx, const eng_event_t *ev) {
  link_t *l = ctx;
  double now = es_now_s();
  int final = ev->finish != ENG_FINISH_NONE;
  if (ev->token >= 0) {
    met_observe(l->met, l->n_tokens ? MET_ITL : MET_TTFT, now - (l->n_tokens ? l->t_last : l->t_submit));
    l->n_tokens++;
    l->t_last = now;
  }
  pthread_mutex_lock(&l->mu);
  es_error_t e;
  if (ev->text_len && tok_text_append(&l->out, ev->text, ev->text_len, &e)) l->oom = 1;
  if (final) {
    l->done = 1;
    l->finish = ev->finish;
    l->usage = ev->usage;
    if (ev->error) snprintf(l->error, sizeof l->error, "%s", ev->error);
  }
  if (l->c) ws_conn_wake(l->c);
  pthread_mutex_unlock(&l->mu);
  if (final) {
    met_request_done(l->met, now - l->t_submit, ev);
    link_unref(l); /* the engine's reference */
  }
}

static cJSON *response_json(voice_t *v, const char *status, const char *reason, const char *error,
                            const eng_usage_t *u) {
  cJSON *r = cJSON_CreateObject();
  cJSON_AddStringToObject(r, "id", v->resp.id);
  cJSON_AddStringToObject(r, "object", "realtime.response");
  cJSON_AddStringToObject(r, "status", status);
  if (!strcmp(status, "in_progress") || !strcmp(status, "completed")) {
    cJSON_AddNullToObject(r, "status_details");
  } else {
    cJSON *d = cJSON_AddObjectToObject(r, "status_details");
    cJSON_AddStringToObject(d, "type", status);
    reason ? (void)cJSON_AddStringToObject(d, "reason", reason) : (void)cJSON_AddNullToObject(d, "reason");
    if (error) {
      cJSON *e = cJSON_AddObjectToObject(d, "error");
      cJSON_AddStringToObject(e, "type", "server_error");
      cJSON_AddStringToObject(e, "message", error);
    }
  }
  cJSON *out = cJSON_AddArrayToObject(r, "output");
  if (u && v->resp.item) cJSON_AddItemToArray(out, item_json(v->resp.item));
  char conv[48];
  snprintf(conv, sizeof conv, "conv_%s", v->id + 5);
  cJSON_AddStringToObject(r, "conversation_id", conv);
  cJSON_AddItemToArray(cJSON_AddArrayToObject(r, "output_modalities"), cJSON_CreateString("text"));
  add_max_tokens(r, v->resp.max_output_tokens);
  v->resp.metadata ? (void)cJSON_AddItemToObject(r, "metadata", cJSON_Duplicate(v->resp.metadata, 1))
                   : (void)cJSON_AddNullToObject(r, "metadata");
  if (u) {
    cJSON *us = cJSON_AddObjectToObject(r, "usage");
    cJSON_AddNumberToObject(us, "total_tokens", u->prompt_tokens + u->completion_tokens);
    cJSON_AddNumberToObject(us, "input_tokens", u->prompt_tokens);
    cJSON_AddNumberToObject(us, "output_tokens", u->completion_tokens);
    cJSON *in = cJSON_AddObjectToObject(us, "input_token_details");
    cJSON_AddNumberToObject(in, "text_tokens", u->prompt_tokens - u->audio_tokens);
    cJSON_AddNumberToObject(in, "audio_tokens", u->audio_tokens);
    cJSON_AddNumberToObject(in, "cached_tokens", 0);
    cJSON *ot = cJSON_AddObjectToObject(us, "output_token_details");
    cJSON_AddNumberToObject(ot, "text_tokens", u->completion_tokens);
    cJSON_AddNumberToObject(ot, "audio_tokens", 0);
  } else {
    cJSON_AddNullToObject(r, "usage");
  }
  return r;
}

/* The part/ids of an event about the response's one text part. */
static cJSON *part_event(voice_t *v, const char *type) {
  cJSON *o = ev_new(v, type);
  cJSON_AddStringToObject(o, "response_id", v->resp.id);
  cJSON_AddStringToObject(o, "item_id", v->resp.item->id);
  cJSON_AddNumberToObject(o, "output_index", 0);
  cJSON_AddNumberToObject(o, "content_index", 0);
  return o;
}

/* response.output_item.added / .done: the response's one output item. */
static void send_output_item(voice_t *v, const char *type, const item_t *it) {
  cJSON *o = ev_new(v, type);
  cJSON_AddStringToObject(o, "response_id", v->resp.id);
  cJSON_AddNumberToObject(o, "output_index", 0);
  cJSON_AddItemToObject(o, "item", item_json(it));
  ev_send(v, o);
}

/* The engine's final event arrived: the closing events, in OpenAI's order. */
static void response_finish(voice_t *v, eng_finish_t finish, const eng_usage_t *u, const char *error) {
  item_t *it = v->resp.item;
  const char *text = v->resp.text.data ? v->resp.text.data : "";
  free(it->parts[0].text);
  it->parts[0].text = strdup(text); /* NULL (out of memory): an empty reply */
  it->in_progress = 0;
  it->incomplete = finish != ENG_FINISH_STOP;
  cJSON *o = part_event(v, "response.output_text.done");
  cJSON_AddStringToObject(o, "text", text);
  ev_send(v, o);
  o = part_event(v, "response.content_part.done");
  cJSON *p = cJSON_AddObjectToObject(o, "part");
  cJSON_AddStringToObject(p, "type", "text");
  cJSON_AddStringToObject(p, "text", text);
  ev_send(v, o);
  send_output_item(v, "response.output_item.done", it);
  size_t pos = find_item(v, it->id);
  o = ev_new(v, "conversation.item.done");
  pos != SIZE_MAX &&pos > 0 ? (void)cJSON_AddStringToObject(o, "previous_item_id", v->items[pos - 1]->id)
                            : (void)cJSON_AddNullToObject(o, "previous_item_id");
  cJSON_AddItemToObject(o, "item", item_json(it));
  ev_send(v, o);
  const char *status = finish == ENG_FINISH_STOP        ? "completed"
                       : finish == ENG_FINISH_LENGTH    ? "incomplete"
                       : finish == ENG_FINISH_CANCELLED ? "cancelled"
                                                        : "failed";
  const char *reason = finish == ENG_FINISH_LENGTH      ? "max_output_tokens"
                       : finish == ENG_FINISH_CANCELLED ? v->resp.cancel_reason
                                                        : NULL;
  o = ev_new(v, "response.done");
  cJSON_AddItemToObject(o, "response", response_json(v, status, reason, finish == ENG_FINISH_ERROR ? error : NULL, u));
  ev_send(v, o);
  if (v->o.verbose)
    fprintf(stderr, "earshot serve: voice %s %s: %d prompt (%d audio) + %d completion tokens, %s\n", v->id, v->resp.id,
            u->prompt_tokens, u->audio_tokens, u->completion_tokens, status);
  if (pos != SIZE_MAX &&
      (!it->parts[0].text || !it->parts[0].text[0])) { /* an empty reply would be an empty message in the next prompt */
    char id[40];
    snprintf(id, sizeof id, "%s", it->id);
    remove_item_at(v, pos); /* frees it */
    send_deleted(v, id);
  }
  tok_text_free(&v->resp.text);
  cJSON_Delete(v->resp.metadata);
  link_unref(v->resp.link);
  memset(&v->resp, 0, sizeof v->resp);
}

/* Response parameters (response.create's `response`). */
typedef struct {
  char *instructions; /* override, or NULL */
  int has_max, max_output_tokens;
  const cJSON *sampling; /* the object holding sampling fields (the response itself), or NULL */
  cJSON *metadata;
} rparams_t;

static int parse_response(voice_t *v, const cJSON *r, rparams_t *p, bad_t *b) {
  static const char *const IGNORED[] = {"tool_choice",         "tools", "audio", "prompt", "reasoning",
                                        "parallel_tool_calls", NULL};
  if (!r) return ES_OK;
  if (!cJSON_IsObject(r)) return bad(b, "invalid_value", "response", "'response' must be an object");
  for (const cJSON *k = r->child; k; k = k->next) {
    const char *n = k->string;
    int rc = ES_OK;
    if (is_one_of(n, SAMPLING_KEYS)) continue;
    if (!strcmp(n, "tools")) {
      if (!cJSON_IsNull(k) && (!cJSON_IsArray(k) || cJSON_GetArraySize(k) > 0))
        return bad(b, "unsupported", "response.tools", "tools are not supported by this server");
    } else if (!strcmp(n, "prompt")) {
      if (!cJSON_IsNull(k)) return bad(b, "unsupported", "response.prompt", "prompt templates are not supported");
    } else if (is_one_of(n, IGNORED)) {
      continue;
    } else if (!strcmp(n, "instructions")) {
      if (!cJSON_IsString(k) || !k->valuestring[0])
        return bad(b, "invalid_value", "response.instructions", "'instructions' must be a non-empty string");
      free(p->instructions);
      p->instructions = strdup(k->valuestring);
    } else if (!strcmp(n, "max_output_tokens")) {
      rc = parse_max_tokens(k, "response.max_output_tokens", &p->max_output_tokens, b);
      p->has_max = 1;
    } else if (!strcmp(n, "output_modalities")) {
      rc = parse_modalities(k, "response.output_modalities", b);
    } else if (!strcmp(n, "conversation")) {
      if (!cJSON_IsString(k) || strcmp(k->valuestring, "auto") != 0)
        return bad(b, "unsupported", "response.conversation",
                   "only the default conversation (\"auto\") is supported: out-of-band responses are not");
    } else if (!strcmp(n, "input")) {
      if (!cJSON_IsNull(k)) return bad(b, "unsupported", "response.input", "'input' is not supported");
    } else if (!strcmp(n, "metadata")) {
      if (!cJSON_IsObject(k) && !cJSON_IsNull(k))
        return bad(b, "invalid_value", "response.metadata", "'metadata' must be an object");
      cJSON_Delete(p->metadata);
      p->metadata = cJSON_IsObject(k) ? cJSON_Duplicate(k, 1) : NULL;
    } else {
      return bad(b, "unknown_parameter", "response", "unknown response field '%.60s'", n);
    }
    if (rc) return rc;
  }
  p->sampling = r;
  return check_sampling(v, r, "response", b);
}

/* Fills r with the conversation from item `first` on; ES_ETOOBIG when it holds more audios, parts or messages than
 * a request may. */
static int conversation_request(voice_t *v, srv_req_t *r, size_t first, const char *instructions, srv_fail_t *f) {
  const char *sys = instructions ? instructions : v->cfg.instructions;
  if (sys) r->msgs[r->n_msgs++] = (prompt_message_t){.role = "system", .content = sys};
  for (size_t i = first; i < v->n_items; i++) {
    const item_t *it = v->items[i];
    if (it->in_progress) continue;
    size_t p0 = r->n_parts;
    if (r->n_parts + it->n_parts > SRV_MAX_PARTS || r->n_msgs == SRV_MAX_MESSAGES) return ES_ETOOBIG;
    for (size_t k = 0; k < it->n_parts; k++) {
      const part_t *p = &it->parts[k];
      if (p->audio) {
        if (r->n_audio == ENG_MAX_AUDIOS) return ES_ETOOBIG;
        srv_blob_t *b = &r->audio[r->n_audio];
        b->pcm = malloc(p->n_audio * sizeof(float));
        if (!b->pcm) return srv_fail(f, 500, "", "out of memory");
        memcpy(b->pcm, p->audio, p->n_audio * sizeof(float));
        b->n_pcm = p->n_audio;
        snprintf(b->label, sizeof b->label, "item %s", it->id);
        r->n_audio++;
        r->parts[r->n_parts++] = (prompt_part_t){.type = PROMPT_PART_AUDIO, .text = NULL};
      } else if (p->text && p->text[0]) {
        r->parts[r->n_parts++] = (prompt_part_t){.type = PROMPT_PART_TEXT, .text = p->text};
      }
    }
    if (r->n_parts == p0) continue; /* nothing to say */
    r->msgs[r->n_msgs++] =
        (prompt_message_t){.role = ROLE_NAMES[it->role], .parts = r->parts + p0, .n_parts = r->n_parts - p0};
  }
  return ES_OK;
}

/* The index of the last item a prompt must keep (the newest item that is not an in-progress reply). */
static size_t last_item(const voice_t *v) {
  for (size_t i = v->n_items; i-- > 0;)
    if (!v->items[i]->in_progress) return i;
  return 0;
}

/* One prompt from item `first` on: ES_OK with q and ids filled (r holds what they point to), or the failure in
 * f (r and ids emptied); *overflow: leaving older items out could make it fit. */
static int build_from(voice_t *v, srv_req_t *r, size_t first, const rparams_t *p, int max_out, eng_request_t *q,
                      tok_ids_t *ids, srv_fail_t *f, int *overflow) {
  memset(f, 0, sizeof *f);
  *overflow = 0;
  srv_req_init(r, SRV_KIND_CHAT, &v->o.ctx);
  int rc = srv_req_sampling_fields(r, v->cfg.sampling, f);
  if (!rc && p->sampling) rc = srv_req_sampling_fields(r, p->sampling, f);
  if (!rc && max_out) r->sampling.max_tokens = max_out; /* a cap: srv_req_build clamps it to the context left */
  if (!rc && (rc = conversation_request(v, r, first, p->instructions, f)) == ES_ETOOBIG) {
    *overflow = 1;
    rc = srv_fail(f, 400, "", "the conversation holds more than a request may (%d audios, %d messages, %d parts)",
                  ENG_MAX_AUDIOS, SRV_MAX_MESSAGES, SRV_MAX_PARTS);
  }
  if (!rc) rc = srv_req_build(r, &v->o.ctx, q, ids, f);
  if (rc) {
    *overflow = *overflow || f->context_overflow;
    srv_req_free(r);
    tok_ids_free(ids);
  }
  return rc;
}

/* Frees a successful build that will not be submitted. */
static void release_build(srv_req_t *r, eng_request_t *q, tok_ids_t *ids) {
  for (size_t k = 0; k < q->n_audios; k++) free(q->audios[k].samples);
  memset(q, 0, sizeof *q);
  srv_req_free(r);
  tok_ids_free(ids);
}

/* Builds the prompt from the conversation and submits it; sends created / added events. */
static int response_start(voice_t *v, const cJSON *params, const char *client_event) {
  if (v->resp.active) {
    send_error(v, "invalid_request_error", "conversation_already_has_active_response", NULL, client_event,
               "Conversation already has an active response in progress: %s", v->resp.id);
    return ES_EINVAL;
  }
  v->auto_pending = 0; /* this response answers the turns so far */
  if (atomic_load(v->stop)) {
    send_error(v, "server_error", "server_shutting_down", NULL, client_event, "the server is shutting down");
    return ES_EINVAL;
  }
  rparams_t p = {0};
  bad_t b;
  if (parse_response(v, params, &p, &b)) {
    send_error(v, "invalid_request_error", b.code, b.param, client_event, "%s", b.msg);
    free(p.instructions);
    cJSON_Delete(p.metadata);
    return ES_EINVAL;
  }
  int max_out = p.has_max ? p.max_output_tokens : v->cfg.max_output_tokens;
  srv_fail_t f;
  memset(&f, 0, sizeof f);
  /* two build slots: the best build so far, and a probe */
  eng_request_t qs[2];
  tok_ids_t idss[2] = {{0}, {0}};
  srv_req_t *rs[2] = {calloc(1, sizeof(srv_req_t)), calloc(1, sizeof(srv_req_t))};
  int cur = 0, overflow = 0;
  size_t first = v->trunc_first < v->n_items ? v->trunc_first : 0, last = last_item(v);
  int rc = rs[0] && rs[1] ? ES_OK : srv_fail(&f, 500, "", "out of memory");
  if (!rc) rc = build_from(v, rs[0], first, &p, max_out, &qs[0], &idss[0], &f, &overflow);
  if (rc && overflow && v->cfg.truncation && first < last) {
    /* truncation "auto": the fewest oldest items to leave out, by bisection (a prompt from a later item is never
     * longer); each probe is a whole build, so about log2(items) of them rather than one per item */
    size_t bad = first, good = last;
    rc = build_from(v, rs[0], good, &p, max_out, &qs[0], &idss[0], &f, &overflow); /* the newest item alone */
    while (!rc && good - bad > 1) {
      size_t mid = bad + (good - bad) / 2;
      int o = 0, k = 1 - cur;
      srv_fail_t fm;
      if (build_from(v, rs[k], mid, &p, max_out, &qs[k], &idss[k], &fm, &o) == ES_OK) {
        release_build(rs[cur], &qs[cur], &idss[cur]);
        cur = k;
        good = mid;
      } else if (o) {
        bad = mid;
      } else { /* not a matter of length: report it */
        release_build(rs[cur], &qs[cur], &idss[cur]);
        f = fm;
        rc = ES_EINVAL;
      }
    }
    first = good;
  }
  srv_req_t *r = rs[cur];
  eng_request_t q = qs[cur];
  tok_ids_t ids = idss[cur];
  free(rs[1 - cur]); /* the probe slot holds nothing now */
  rs[1 - cur] = NULL;
  if (rc) {
    send_error(v, f.status >= 500 || !r ? "server_error" : "invalid_request_error",
               f.context_overflow      ? "context_length_exceeded"
               : f.status >= 500 || !r ? "server_error"
                                       : "invalid_value",
               f.param[0] ? f.param : NULL, client_event, "%s", r ? f.err.msg : "out of memory");
    goto out;
  }
  v->trunc_first = first;
  link_t *l = calloc(1, sizeof *l);
  item_t *it = calloc(1, sizeof *it);
  if (!l || !it) {
    free(l), free(it);
    for (size_t k = 0; k < q.n_audios; k++) free(q.audios[k].samples);
    send_error(v, "server_error", "server_error", NULL, client_event, "out of memory");
    rc = ES_ENOMEM;
    goto out;
  }
  pthread_mutex_init(&l->mu, NULL);
  l->refs = 2;
  l->c = v->c;
  l->met = v->o.met;
  l->t_submit = es_now_s();
  q.callback = on_engine_event;
  q.callback_ctx = l;
  uint64_t id = 0;
  es_error_t e;
  if ((rc = eng_submit(v->o.eng, &q, &id, &e))) {
    for (size_t k = 0; k < q.n_audios; k++) free(q.audios[k].samples);
    link_unref(l), link_unref(l);
    free(it);
    send_error(v, rc == ES_ETOOBIG && strstr(e.msg, "queue is full") ? "server_error" : "invalid_request_error",
               rc == ES_ETOOBIG && strstr(e.msg, "queue is full") ? "server_busy" : "invalid_value", NULL, client_event,
               "%s", e.msg);
    goto out;
  }
  v->resp.active = 1;
  v->resp.link = l;
  v->resp.eng_id = id;
  v->resp.item = it;
  v->resp.max_output_tokens = max_out;
  v->resp.metadata = p.metadata;
  p.metadata = NULL;
  new_id(v, "resp_", v->resp.id);
  new_id(v, "item_", it->id);
  it->role = ROLE_ASSISTANT;
  it->n_parts = 1;
  it->in_progress = 1;
  cJSON *o = ev_new(v, "response.created");
  cJSON_AddItemToObject(o, "response", response_json(v, "in_progress", NULL, NULL, NULL));
  ev_send(v, o);
  send_output_item(v, "response.output_item.added", it);
  insert_item(v, it, v->n_items ? v->n_items - 1 : SIZE_MAX); /* holds nothing yet: always fits */
  o = part_event(v, "response.content_part.added");
  cJSON *part = cJSON_AddObjectToObject(o, "part");
  cJSON_AddStringToObject(part, "type", "text");
  cJSON_AddStringToObject(part, "text", "");
  ev_send(v, o);
out:
  if (r) srv_req_free(r);
  free(r);
  tok_ids_free(&ids);
  free(p.instructions);
  cJSON_Delete(p.metadata);
  return rc;
}

static void response_cancel(voice_t *v, const char *reason) {
  if (!v->resp.active || v->resp.cancel_sent) return;
  v->resp.cancel_reason = reason;
  v->resp.cancel_sent = 1;
  eng_cancel(v->o.eng, v->resp.eng_id); /* the final event (cancelled) finishes it */
}

/* Sends what the engine released and, after its final event, the closing events. */
static void response_drain(voice_t *v) {
  if (!v->resp.active) return;
  link_t *l = v->resp.link;
  pthread_mutex_lock(&l->mu);
  tok_text_t got = l->out;
  memset(&l->out, 0, sizeof l->out);
  int done = l->done, oom = l->oom;
  eng_finish_t fin = l->finish;
  eng_usage_t u = l->usage;
  char error[ES_ERROR_MSG_MAX];
  snprintf(error, sizeof error, "%s", l->error);
  pthread_mutex_unlock(&l->mu);
  es_error_t e;
  if (got.len) {
    cJSON *o = part_event(v, "response.output_text.delta");
    char *d = malloc(got.len + 1);
    if (d) {
      memcpy(d, got.data, got.len);
      d[got.len] = '\0';
      cJSON_AddStringToObject(o, "delta", d);
      free(d);
    }
    ev_send(v, o);
    if (tok_text_append(&v->resp.text, got.data, got.len, &e)) oom = 1;
  }
  tok_text_free(&got);
  if (oom && !done) response_cancel(v, NULL);
  if (done) {
    if (oom && fin != ENG_FINISH_ERROR) {
      fin = ENG_FINISH_ERROR;
      snprintf(error, sizeof error, "out of memory holding the reply");
    }
    response_finish(v, fin, &u, error);
    if (v->auto_pending) response_start(v, NULL, NULL);
  }
}

/* ---- client events -------------------------------------------------------------------------------------------- */

static void on_session_update(voice_t *v, const cJSON *ev, const char *cid) {
  cfg_t c;
  if (cfg_copy(&c, &v->cfg)) {
    send_error(v, "server_error", "server_error", NULL, cid, "out of memory");
    return;
  }
  bad_t b;
  const cJSON *s = cJSON_GetObjectItemCaseSensitive(ev, "session");
  if (!s) {
    cfg_free(&c);
    send_error(v, "invalid_request_error", "missing_required_parameter", "session", cid, "'session' is required");
    return;
  }
  if (parse_session(v, s, &c, &b)) {
    cfg_free(&c);
    send_error(v, "invalid_request_error", b.code, b.param, cid, "%s", b.msg);
    return;
  }
  if (c.fmt != v->cfg.fmt || c.rate != v->cfg.rate) { /* the new format applies to audio appended from now on */
    audio_stream_t *conv = NULL;
    if (open_converter(v, &c, &conv, cid)) {
      cfg_free(&c);
      return;
    }
    es_error_t e;
    size_t before = v->buf.n;
    audio_stream_flush(v->conv, &v->buf, &e); /* the old format's last samples (a full buffer: dropped) */
    audio_stream_free(v->conv);
    v->conv = conv;
    if (v->cfg.vad) vad_feed(v, before);
  }
  int vad_changed = c.vad != v->cfg.vad || c.threshold != v->cfg.threshold || c.silence_ms != v->cfg.silence_ms;
  int was_vad = v->cfg.vad;
  cfg_free(&v->cfg);
  v->cfg = c;
  if (vad_changed && v->cfg.vad && was_vad) /* new threshold / silence: a turn in progress goes on */
    audio_vad_set(&v->vad,
                  &(audio_vad_opts_t){.threshold = v->cfg.threshold, .silence_duration_ms = v->cfg.silence_ms});
  else if (vad_changed) /* turned on: from here; turned off: a turn in progress stays in the buffer, uncommitted */
    vad_reset(v, 0);
  cJSON *o = ev_new(v, "session.updated");
  cJSON_AddItemToObject(o, "session", session_json(v));
  ev_send(v, o);
}

static void on_append(voice_t *v, const cJSON *ev, const char *cid) {
  const cJSON *a = cJSON_GetObjectItemCaseSensitive(ev, "audio");
  if (!cJSON_IsString(a)) {
    send_error(v, "invalid_request_error", "missing_required_parameter", "audio", cid,
               "'audio' (base64 audio in the session's input format) is required");
    return;
  }
  unsigned char *bytes = NULL;
  size_t n = 0;
  es_error_t e;
  if (b64_decode(a->valuestring, strlen(a->valuestring), "audio", &bytes, &n, &e)) {
    send_error(v, "invalid_request_error", "invalid_value", "audio", cid, "%s", e.msg);
    return;
  }
  append_audio(v, bytes, n, cid);
  free(bytes);
}

static void on_commit(voice_t *v, const char *cid) {
  es_error_t e;
  if (!v->cfg.vad) audio_stream_flush(v->conv, &v->buf, &e); /* with VAD on, the stream goes on across turns */
  char item[40];
  snprintf(item, sizeof item, "%s", v->speaking ? v->turn_item : "");
  /* a turn in progress ends here: speech_stopped, then committed with its item id (a commit that is refused
   * leaves the turn going on) */
  if (v->cfg.vad && v->buf.n >= MIN_COMMIT_SAMPLES && v->buf.n <= max_audio_held(v)) vad_reset(v, 1);
  if (commit_range(v, v->buf_start, v->buf_start + v->buf.n, item, cid, 0) == ES_OK && v->cfg.vad) answer_turn(v);
}

static void on_clear(voice_t *v) {
  es_error_t e;
  audio_stream_flush(v->conv, &v->buf, &e);
  buf_drop(v, v->buf_start + v->buf.n);
  vad_reset(v, 0);
  ev_send(v, ev_new(v, "input_audio_buffer.cleared"));
}

/* A user / system / assistant message item from conversation.item.create. */
static int parse_item(voice_t *v, const cJSON *j, item_t *it, bad_t *b) {
  if (!cJSON_IsObject(j)) return bad(b, "invalid_value", "item", "'item' must be an object");
  const cJSON *t = present(j, "type"), *role = present(j, "role"), *content = present(j, "content"),
              *id = present(j, "id");
  if (!t || !cJSON_IsString(t) || strcmp(t->valuestring, "message") != 0)
    return bad(b, "unsupported", "item.type", "only items of type \"message\" are supported (no function calls)");
  if (!role || !cJSON_IsString(role))
    return bad(b, "invalid_value", "item.role", "'role' must be user, assistant or system");
  if (!strcmp(role->valuestring, "user"))
    it->role = ROLE_USER;
  else if (!strcmp(role->valuestring, "assistant"))
    it->role = ROLE_ASSISTANT;
  else if (!strcmp(role->valuestring, "system"))
    it->role = ROLE_SYSTEM;
  else
    return bad(b, "invalid_value", "item.role", "'role' must be user, assistant or system");
  if (id) {
    if (!cJSON_IsString(id) || !id->valuestring[0] || strlen(id->valuestring) >= sizeof it->id)
      return bad(b, "invalid_value", "item.id", "'id' must be a string of 1 to %zu characters", sizeof it->id - 1);
    if (find_item(v, id->valuestring) != SIZE_MAX)
      return bad(b, "invalid_value", "item.id", "an item with id '%s' already exists", id->valuestring);
    snprintf(it->id, sizeof it->id, "%s", id->valuestring);
  } else {
    new_id(v, "item_", it->id);
  }
  if (!cJSON_IsArray(content) || cJSON_GetArraySize(content) == 0)
    return bad(b, "invalid_value", "item.content", "'content' must be a non-empty list");
  if (cJSON_GetArraySize(content) > MAX_ITEM_PARTS)
    return bad(b, "invalid_value", "item.content", "at most %d content parts per item", MAX_ITEM_PARTS);
  size_t k = 0;
  const cJSON *p;
  cJSON_ArrayForEach(p, content) {
    char param[48];
    snprintf(param, sizeof param, "item.content[%zu]", k);
    const cJSON *pt = cJSON_IsObject(p) ? present(p, "type") : NULL;
    const char *ptype = pt && cJSON_IsString(pt) ? pt->valuestring : "";
    if (!strcmp(ptype, "input_audio") && it->role == ROLE_USER) {
      const cJSON *a = present(p, "audio");
      if (!a || !cJSON_IsString(a))
        return bad(b, "missing_required_parameter", param,
                   "an input_audio part needs 'audio' (base64, the session's format)");
      unsigned char *bytes = NULL;
      size_t n = 0;
      es_error_t e;
      if (b64_decode(a->valuestring, strlen(a->valuestring), param, &bytes, &n, &e))
        return bad(b, "invalid_value", param, "%s", e.msg);
      audio_stream_t *conv = NULL;
      audio_fbuf_t out = {.max = v->buf.max};
      int rc = audio_stream_open(v->cfg.fmt, v->cfg.rate, &conv, &e);
      if (!rc) rc = audio_stream_push(conv, bytes, n, &out, &e);
      if (!rc) rc = audio_stream_flush(conv, &out, &e);
      audio_stream_free(conv);
      free(bytes);
      if (!rc && out.n < MIN_COMMIT_SAMPLES) rc = es_fail(&e, ES_EINVAL, "the audio is shorter than 100 ms");
      if (rc) {
        free(out.data);
        return bad(b, "invalid_value", param, "%s", e.msg);
      }
      it->parts[k] = (part_t){.audio = out.data, .n_audio = out.n};
    } else if ((!strcmp(ptype, "input_text") && it->role != ROLE_ASSISTANT) ||
               ((!strcmp(ptype, "output_text") || !strcmp(ptype, "text")) && it->role == ROLE_ASSISTANT)) {
      const cJSON *tx = present(p, "text");
      if (!tx || !cJSON_IsString(tx) || !tx->valuestring[0])
        return bad(b, "invalid_value", param, "a text part needs a non-empty 'text'");
      it->parts[k].text = strdup(tx->valuestring);
      if (!it->parts[k].text) return bad(b, "server_error", param, "out of memory");
    } else {
      return bad(b, "invalid_value", param, "content part type '%.40s' does not fit a %s message", ptype,
                 ROLE_NAMES[it->role]);
    }
    it->n_parts = ++k;
  }
  return ES_OK;
}

static void on_item_create(voice_t *v, const cJSON *ev, const char *cid) {
  item_t *it = calloc(1, sizeof *it);
  bad_t b;
  if (!it) {
    send_error(v, "server_error", "server_error", NULL, cid, "out of memory");
    return;
  }
  if (parse_item(v, cJSON_GetObjectItemCaseSensitive(ev, "item"), it, &b)) {
    item_free(it);
    send_error(v, "invalid_request_error", b.code, b.param, cid, "%s", b.msg);
    return;
  }
  const cJSON *prev = present(ev, "previous_item_id");
  size_t after = v->n_items ? v->n_items - 1 : SIZE_MAX;
  if (prev) {
    if (!cJSON_IsString(prev)) {
      item_free(it);
      send_error(v, "invalid_request_error", "invalid_value", "previous_item_id", cid,
                 "'previous_item_id' must be a string");
      return;
    }
    if (!strcmp(prev->valuestring, "root")) {
      after = SIZE_MAX;
    } else if ((after = find_item(v, prev->valuestring)) == SIZE_MAX) {
      item_free(it);
      send_error(v, "invalid_request_error", "item_not_found", "previous_item_id", cid, "no item with id '%.60s'",
                 prev->valuestring);
      return;
    }
  }
  if (insert_item(v, it, after)) send_item_too_big(v, cid);
}

static void on_item_delete(voice_t *v, const cJSON *ev, const char *cid) {
  const cJSON *id = cJSON_GetObjectItemCaseSensitive(ev, "item_id");
  size_t i = cJSON_IsString(id) ? find_item(v, id->valuestring) : SIZE_MAX;
  if (i == SIZE_MAX) {
    send_error(v, "invalid_request_error", "item_not_found", "item_id", cid, "no item with id '%.60s'",
               cJSON_IsString(id) ? id->valuestring : "");
    return;
  }
  if (v->items[i]->in_progress) {
    send_error(v, "invalid_request_error", "invalid_value", "item_id", cid,
               "item '%s' is the reply being generated: cancel the response first", id->valuestring);
    return;
  }
  char copy[40];
  snprintf(copy, sizeof copy, "%s", v->items[i]->id);
  remove_item_at(v, i);
  send_deleted(v, copy);
}

static void on_message(void *ctx, ws_conn_t *c, int binary, const uint8_t *data, size_t len) {
  (void)c;
  voice_t *v = ctx;
  if (binary) { /* raw audio in the session's format */
    append_audio(v, data, len, NULL);
    return;
  }
  cJSON *ev = cJSON_ParseWithLength((const char *)data, len);
  if (!cJSON_IsObject(ev)) {
    send_error(v, "invalid_request_error", "invalid_json", NULL, NULL, "the message is not a JSON object");
    cJSON_Delete(ev);
    return;
  }
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(ev, "type"),
              *eid = cJSON_GetObjectItemCaseSensitive(ev, "event_id");
  const char *cid = cJSON_IsString(eid) ? eid->valuestring : NULL;
  const char *type = cJSON_IsString(t) ? t->valuestring : "";
  if (!strcmp(type, "session.update"))
    on_session_update(v, ev, cid);
  else if (!strcmp(type, "input_audio_buffer.append"))
    on_append(v, ev, cid);
  else if (!strcmp(type, "input_audio_buffer.commit"))
    on_commit(v, cid);
  else if (!strcmp(type, "input_audio_buffer.clear"))
    on_clear(v);
  else if (!strcmp(type, "conversation.item.create"))
    on_item_create(v, ev, cid);
  else if (!strcmp(type, "conversation.item.delete"))
    on_item_delete(v, ev, cid);
  else if (!strcmp(type, "response.create"))
    response_start(v, present(ev, "response"), cid);
  else if (!strcmp(type, "response.cancel")) {
    if (!v->resp.active)
      send_error(v, "invalid_request_error", "response_cancel_not_active", NULL, cid, "there is no active response");
    else
      response_cancel(v, "client_cancelled");
  } else if (!type[0])
    send_error(v, "invalid_request_error", "invalid_event", "type", cid, "the event has no 'type'");
  else
    send_error(v, "invalid_request_error", "unknown_event", "type", cid, "event type '%.60s' is not supported", type);
  cJSON_Delete(ev);
}

static void on_wake(void *ctx, ws_conn_t *c) {
  voice_t *v = ctx;
  response_drain(v);
  int st = atomic_load(v->stop);
  if (st >= 2 && v->resp.active) response_cancel(v, NULL); /* its final event wakes us again: done, then close */
  if (st >= 1 && !v->resp.active && !v->closing) {
    v->closing = 1;
    ws_conn_close(c, 1001, "the server is shutting down");
  }
}

void voice_session_run(ws_conn_t *c, const voice_opts_t *o, atomic_int *stop) {
  voice_t *v = calloc(1, sizeof *v);
  if (!v) {
    ws_conn_close(c, 1011, "out of memory");
    ws_conn_run(c, &(ws_handlers_t){0});
    return;
  }
  v->o = *o;
  v->c = c;
  v->stop = stop;
  if (getrandom(&v->rng, sizeof v->rng, 0) != (ssize_t)sizeof v->rng || !v->rng)
    v->rng = (uint64_t)(uintptr_t)v ^ (uint64_t)(es_now_s() * 1e9) ^ 0x9e3779b97f4a7c15ull;
  new_id(v, "sess_", v->id);
  v->cfg = (cfg_t){.fmt = AUDIO_STREAM_PCM16,
                   .rate = 24000,
                   .vad = 1,
                   .threshold = 0.5,
                   .prefix_ms = 300,
                   .silence_ms = 500,
                   .create_response = 1,
                   .interrupt_response = 1,
                   .truncation = 1,
                   .sampling = cJSON_CreateObject()};
  v->buf.max = (size_t)((o->max_buffer_s > 0 ? o->max_buffer_s : DEFAULT_BUFFER_S) * SR);
  es_error_t e;
  if (!v->cfg.sampling || audio_stream_open(v->cfg.fmt, v->cfg.rate, &v->conv, &e)) {
    ws_conn_close(c, 1011, "out of memory");
  } else {
    vad_reset(v, 0);
    cJSON *ev = ev_new(v, "session.created");
    cJSON_AddItemToObject(ev, "session", session_json(v));
    ev_send(v, ev);
    if (o->verbose) fprintf(stderr, "earshot serve: voice %s: session started\n", v->id);
  }
  ws_conn_run(c, &(ws_handlers_t){.ctx = v, .on_message = on_message, .on_wake = on_wake});
  if (v->resp.active) { /* the peer left: the engine stops the reply; its record outlives the session */
    eng_cancel(v->o.eng, v->resp.eng_id);
    link_t *l = v->resp.link;
    pthread_mutex_lock(&l->mu);
    l->c = NULL;
    pthread_mutex_unlock(&l->mu);
    link_unref(l);
    tok_text_free(&v->resp.text);
    cJSON_Delete(v->resp.metadata);
  }
  if (o->verbose) fprintf(stderr, "earshot serve: voice %s: session ended (%zu items)\n", v->id, v->n_items);
  for (size_t i = 0; i < v->n_items; i++) item_free(v->items[i]);
  audio_stream_free(v->conv);
  free(v->buf.data);
  cfg_free(&v->cfg);
  free(v);
}
