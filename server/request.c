/* request: HTTP request bodies to engine requests. See request.h. */
#define _XOPEN_SOURCE 700 /* realpath */
#include "request.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audio_decode.h"
#include "audio_mel.h"
#include "b64.h"
#include "es_file.h"

int srv_fail(srv_fail_t *f, int status, const char *param, const char *fmt, ...) {
  f->status = status;
  snprintf(f->param, sizeof f->param, "%s", param ? param : "");
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(f->err.msg, sizeof f->err.msg, fmt, ap);
  va_end(ap);
  f->err.code = status >= 500 ? ES_EINTERNAL : ES_EINVAL;
  return f->err.code;
}

void srv_req_init(srv_req_t *r, srv_kind_t kind, const srv_req_ctx_t *ctx) {
  memset(r, 0, sizeof *r);
  r->kind = kind;
  rt_default_sampling(ctx->rt, &r->sampling);
  /* vLLM: without max_tokens a request may fill the context, unless generation_config sets max_new_tokens
   * (rt_default_sampling's 256 is the CLI's choice); srv_req_build clamps to what the context leaves */
  if (ctx->rt->cfg.max_new_tokens <= 0) r->sampling.max_tokens = INT_MAX;
  if (kind == SRV_KIND_TRANSCRIBE) r->sampling.temperature = 0.0; /* OpenAI's transcription default */
  r->long_audio = ctx->long_audio;
}

void srv_req_free(srv_req_t *r) {
  if (!r) return;
  cJSON_Delete(r->json);
  for (size_t i = 0; i < r->n_owned; i++) free(r->owned[i]);
  for (size_t i = 0; i < r->n_audio; i++) free(r->audio[i].data), free(r->audio[i].pcm);
  for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
  memset(r, 0, sizeof *r);
}

static char *own(srv_req_t *r, const char *s) {
  if (r->n_owned == sizeof r->owned / sizeof r->owned[0]) return NULL;
  size_t n = strlen(s);
  char *c = malloc(n + 1);
  if (!c) return NULL;
  memcpy(c, s, n + 1);
  r->owned[r->n_owned++] = c;
  return c;
}

/* ---- sampling fields, shared by the JSON and the form front ends ------------------------------------------- */

/* A numeric field with value v (already known to be a number). */
static int set_number(srv_req_t *r, const char *key, double v, srv_fail_t *f) {
  smp_params_t *p = &r->sampling;
  if (!isfinite(v)) return srv_fail(f, 400, key, "'%s' must be a finite number", key);
  int integral = v == floor(v);
#define NEED_INT(lo, hi)                                                                                               \
  if (!integral || v < (lo) || v > (hi))                                                                               \
  return srv_fail(f, 400, key, "'%s' must be an integer in [%lld, %lld], got %g", key, (long long)(lo),                \
                  (long long)(hi), v)
  if (!strcmp(key, "temperature"))
    p->temperature = v;
  else if (!strcmp(key, "top_p"))
    p->top_p = v;
  else if (!strcmp(key, "min_p"))
    p->min_p = v;
  else if (!strcmp(key, "repetition_penalty"))
    p->repetition_penalty = v;
  else if (!strcmp(key, "presence_penalty"))
    p->presence_penalty = v;
  else if (!strcmp(key, "frequency_penalty"))
    p->frequency_penalty = v;
  else if (!strcmp(key, "top_k")) {
    NEED_INT(-1, INT_MAX);
    p->top_k = (int)v;
  } else if (!strcmp(key, "max_completion_tokens")) { /* vLLM: wins over the deprecated max_tokens */
    NEED_INT(1, INT_MAX);
    p->max_tokens = (int)v;
    r->max_tokens_given = 2;
  } else if (!strcmp(key, "max_tokens")) {
    NEED_INT(1, INT_MAX);
    if (r->max_tokens_given != 2) {
      p->max_tokens = (int)v;
      r->max_tokens_given = 1;
    }
  } else if (!strcmp(key, "min_tokens")) {
    NEED_INT(0, INT_MAX);
    p->min_tokens = (int)v;
  } else if (!strcmp(key, "seed")) {
    /* JSON numbers arrive as doubles: integers are exact up to 2^53 */
    NEED_INT(-9007199254740992.0, 9007199254740992.0);
    p->has_seed = 1;
    p->seed = (uint64_t)(int64_t)v;
  } else if (!strcmp(key, "n")) {
    NEED_INT(1, 1);
  } else if (!strcmp(key, "best_of")) {
    NEED_INT(1, 1);
  } else if (!strcmp(key, "top_logprobs")) {
    NEED_INT(0, 20);
    r->top_logprobs = (int)v;
  } else {
    return srv_fail(f, 500, key, "internal: unknown numeric field '%s'", key);
  }
#undef NEED_INT
  return ES_OK;
}

static const char *const NUMBER_FIELDS[] = {"temperature",
                                            "top_p",
                                            "min_p",
                                            "repetition_penalty",
                                            "presence_penalty",
                                            "frequency_penalty",
                                            "top_k",
                                            "max_tokens",
                                            "max_completion_tokens",
                                            "min_tokens",
                                            "seed",
                                            "n",
                                            "best_of",
                                            "top_logprobs",
                                            NULL};

static int set_bool(srv_req_t *r, const char *key, int v, srv_fail_t *f) {
  if (!strcmp(key, "stream"))
    r->stream = v;
  else if (!strcmp(key, "ignore_eos"))
    r->sampling.ignore_eos = v;
  else if (!strcmp(key, "logprobs"))
    r->logprobs = v;
  else if (!strcmp(key, "stream_include_usage"))
    r->include_usage = v;
  else if (!strcmp(key, "use_beam_search")) {
    if (v) return srv_fail(f, 400, key, "beam search is not supported");
  } else if (!strcmp(key, "echo")) {
    if (v) return srv_fail(f, 400, key, "'echo' is not supported");
  } else if (!strcmp(key, "include_stop_str_in_output")) {
    if (v) return srv_fail(f, 400, key, "'include_stop_str_in_output' is not supported: stop strings are cut");
  } else if (!strcmp(key, "skip_special_tokens")) {
    if (!v) return srv_fail(f, 400, key, "'skip_special_tokens' false is not supported");
  }
  return ES_OK;
}

static const char *const BOOL_FIELDS[] = {
    "stream", "ignore_eos", "logprobs", "use_beam_search", "echo", "include_stop_str_in_output", "skip_special_tokens",
    NULL};

static int add_stop(srv_req_t *r, const char *s, const char *param, srv_fail_t *f) {
  if (r->n_stop == ENG_MAX_STOPS) return srv_fail(f, 400, param, "at most %d stop strings", ENG_MAX_STOPS);
  if (!s[0]) return srv_fail(f, 400, param, "a stop string is empty");
  size_t n = strlen(s);
  if (!tok_utf8_valid(s, n, NULL)) return srv_fail(f, 400, param, "a stop string is not valid UTF-8");
  char *c = malloc(n + 1);
  if (!c) return srv_fail(f, 500, param, "out of memory");
  memcpy(c, s, n + 1);
  r->stop[r->n_stop++] = c;
  return ES_OK;
}

static int set_long_audio(srv_req_t *r, const char *s, srv_fail_t *f) {
  es_error_t e;
  if (audio_long_policy_parse(s, &r->long_audio, &e)) return srv_fail(f, 400, "long_audio", "%s", e.msg);
  return ES_OK;
}

/* ---- /v1/chat/completions ------------------------------------------------------------------------------------- */

static int chat_audio_part(srv_req_t *r, const srv_req_ctx_t *ctx, const cJSON *part, const char *type, size_t mi,
                           size_t pi, srv_fail_t *f) {
  char param[64];
  snprintf(param, sizeof param, "messages[%zu].content[%zu]", mi, pi);
  if (r->n_audio == ENG_MAX_AUDIOS) return srv_fail(f, 400, param, "at most %d audios per request", ENG_MAX_AUDIOS);
  srv_blob_t *b = &r->audio[r->n_audio];
  snprintf(b->label, sizeof b->label, "%s (%s)", param, type);
  es_error_t e;
  const char *b64 = NULL;
  size_t b64_len = 0;
  if (!strcmp(type, "input_audio")) {
    const cJSON *ia = cJSON_GetObjectItemCaseSensitive(part, "input_audio");
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(ia, "data");
    if (!cJSON_IsObject(ia) || !cJSON_IsString(data))
      return srv_fail(f, 400, param, "%s: input_audio must be an object with a base64 string 'data'", param);
    b64 = data->valuestring;
    b64_len = strlen(b64);
    if (b64_len >= 5 && !strncmp(b64, "data:", 5)) { /* some clients send a data: URL here */
      if (b64_data_url(b64, b64_len, &b64, &b64_len, &e)) return srv_fail(f, 400, param, "%s: %s", param, e.msg);
    }
  } else {
    const cJSON *au = cJSON_GetObjectItemCaseSensitive(part, "audio_url");
    const cJSON *url = cJSON_IsString(au) ? au : cJSON_GetObjectItemCaseSensitive(au, "url");
    if (!cJSON_IsString(url))
      return srv_fail(f, 400, param, "%s: audio_url must be an object with a string 'url'", param);
    const char *u = url->valuestring;
    size_t ul = strlen(u);
    if (!strncmp(u, "data:", 5)) {
      if (b64_data_url(u, ul, &b64, &b64_len, &e)) return srv_fail(f, 400, param, "%s: %s", param, e.msg);
    } else if (!strncmp(u, "file://", 7)) {
      if (!ctx->allowed_media_dir)
        return srv_fail(f, 400, param,
                        "%s: file:// URLs are refused: the server was started without --allowed-local-media-path",
                        param);
      char real[PATH_MAX];
      if (!realpath(u + 7, real)) return srv_fail(f, 400, param, "%s: %s: %s", param, u, strerror(errno));
      size_t dl = strlen(ctx->allowed_media_dir);
      if (strncmp(real, ctx->allowed_media_dir, dl) != 0 || (real[dl] != '/' && ctx->allowed_media_dir[dl - 1] != '/'))
        return srv_fail(f, 400, param, "%s: %s is outside --allowed-local-media-path", param, u);
      char *data = NULL;
      size_t n = 0;
      int rc = es_read_file(real, ctx->max_audio_bytes, &data, &n, &e);
      if (rc == ES_ETOOBIG) return srv_fail(f, 413, param, "%s: %s", param, e.msg);
      if (rc) return srv_fail(f, 400, param, "%s: %s", param, e.msg);
      b->data = (unsigned char *)data;
      b->len = n;
      r->n_audio++;
      return ES_OK;
    } else if (!strncmp(u, "http://", 7) || !strncmp(u, "https://", 8)) {
      return srv_fail(f, 400, param,
                      "%s: remote URLs are not fetched by this server; send the audio itself as input_audio "
                      "(base64) or as a data:audio/...;base64,... URL",
                      param);
    } else {
      return srv_fail(f, 400, param, "%s: unsupported URL scheme (expected data: or file://)", param);
    }
  }
  /* base64 is 4/3 of the bytes: refuse before decoding what would be too big anyway */
  if (b64_len / 4 * 3 > ctx->max_audio_bytes + 3)
    return srv_fail(f, 413, param, "%s: %zu bytes of base64 exceed the audio limit of %zu bytes", param, b64_len,
                    ctx->max_audio_bytes);
  if (b64_decode(b64, b64_len, b->label, &b->data, &b->len, &e)) {
    if (e.code == ES_ENOMEM) return srv_fail(f, 500, param, "%s", e.msg);
    return srv_fail(f, 400, param, "%s", e.msg);
  }
  r->n_audio++;
  if (b->len == 0) return srv_fail(f, 400, param, "%s: the audio is empty", param);
  return ES_OK;
}

static int chat_message(srv_req_t *r, const srv_req_ctx_t *ctx, const cJSON *m, size_t mi, srv_fail_t *f) {
  char param[64];
  snprintf(param, sizeof param, "messages[%zu]", mi);
  if (!cJSON_IsObject(m)) return srv_fail(f, 400, param, "%s must be an object", param);
  const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
  const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
  if (!cJSON_IsString(role)) return srv_fail(f, 400, param, "%s.role must be a string", param);
  prompt_message_t *pm = &r->msgs[r->n_msgs];
  const char *rs = role->valuestring;
  if (!strcmp(rs, "system") || !strcmp(rs, "developer"))
    pm->role = "system";
  else if (!strcmp(rs, "user"))
    pm->role = "user";
  else if (!strcmp(rs, "assistant"))
    pm->role = "assistant";
  else
    return srv_fail(f, 400, param, "%s.role '%.40s' is not supported (system, developer, user, assistant)", param, rs);
  if (cJSON_IsString(content)) {
    pm->content = content->valuestring;
  } else if (cJSON_IsArray(content)) {
    pm->parts = &r->parts[r->n_parts];
    size_t pi = 0;
    const cJSON *part;
    cJSON_ArrayForEach(part, content) {
      char pp[96];
      snprintf(pp, sizeof pp, "%s.content[%zu]", param, pi);
      if (r->n_parts == SRV_MAX_PARTS) return srv_fail(f, 400, pp, "at most %d content parts", SRV_MAX_PARTS);
      const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
      if (!cJSON_IsObject(part) || !cJSON_IsString(type))
        return srv_fail(f, 400, pp, "%s must be an object with a string 'type'", pp);
      const char *t = type->valuestring;
      prompt_part_t *pt = &r->parts[r->n_parts];
      if (!strcmp(t, "text")) {
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsString(text)) return srv_fail(f, 400, pp, "%s.text must be a string", pp);
        *pt = (prompt_part_t){.type = PROMPT_PART_TEXT, .text = text->valuestring};
      } else if (!strcmp(t, "input_audio") || !strcmp(t, "audio_url")) {
        int rc = chat_audio_part(r, ctx, part, t, mi, pi, f);
        if (rc) return rc;
        *pt = (prompt_part_t){.type = PROMPT_PART_AUDIO};
      } else {
        return srv_fail(f, 400, pp,
                        "%s: content part type '%.40s' is not supported: this model takes text, "
                        "input_audio and audio_url parts",
                        pp, t);
      }
      r->n_parts++;
      pm->n_parts++;
      pi++;
    }
    if (pi == 0) return srv_fail(f, 400, param, "%s.content is an empty list", param);
  } else {
    return srv_fail(f, 400, param, "%s.content must be a string or a list of content parts", param);
  }
  r->n_msgs++;
  return ES_OK;
}

/* A field that is present and not JSON null. */
static const cJSON *field(const cJSON *o, const char *k) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return v && !cJSON_IsNull(v) ? v : NULL;
}

int srv_req_parse_chat(srv_req_t *r, const srv_req_ctx_t *ctx, const char *body, size_t len, srv_fail_t *f) {
  const char *end = NULL;
  r->json = cJSON_ParseWithLengthOpts(body, len, &end, 0);
  if (!r->json)
    return srv_fail(f, 400, "", "the request body is not valid JSON (error near byte %zu)",
                    end && end >= body ? (size_t)(end - body) : (size_t)0);
  const cJSON *root = r->json;
  if (!cJSON_IsObject(root)) return srv_fail(f, 400, "", "the request body must be a JSON object");
  const cJSON *v;
  if ((v = field(root, "model"))) {
    if (!cJSON_IsString(v)) return srv_fail(f, 400, "model", "'model' must be a string");
    if (strcmp(v->valuestring, ctx->served_model_name) != 0)
      return srv_fail(f, 404, "model", "The model `%.200s` does not exist.", v->valuestring);
  }
  const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
  if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0)
    return srv_fail(f, 400, "messages", "'messages' must be a non-empty list");
  if (cJSON_GetArraySize(msgs) > SRV_MAX_MESSAGES)
    return srv_fail(f, 400, "messages", "at most %d messages", SRV_MAX_MESSAGES);
  size_t mi = 0;
  const cJSON *m;
  cJSON_ArrayForEach(m, msgs) {
    int rc = chat_message(r, ctx, m, mi++, f);
    if (rc) return rc;
  }
  for (const char *const *k = NUMBER_FIELDS; *k; k++) {
    if (!(v = field(root, *k))) continue;
    if (!cJSON_IsNumber(v)) return srv_fail(f, 400, *k, "'%s' must be a number", *k);
    if (!strcmp(*k, "n") && v->valuedouble != 1)
      return srv_fail(f, 400, "n", "n=%g: this server returns one choice per request; n must be 1", v->valuedouble);
    int rc = set_number(r, *k, v->valuedouble, f);
    if (rc) return rc;
  }
  for (const char *const *k = BOOL_FIELDS; *k; k++) {
    if (!(v = field(root, *k))) continue;
    if (!cJSON_IsBool(v)) return srv_fail(f, 400, *k, "'%s' must be true or false", *k);
    int rc = set_bool(r, *k, cJSON_IsTrue(v), f);
    if (rc) return rc;
  }
  if ((v = field(root, "stream_options"))) {
    if (!cJSON_IsObject(v)) return srv_fail(f, 400, "stream_options", "'stream_options' must be an object");
    if (!r->stream) return srv_fail(f, 400, "stream_options", "Stream options can only be defined when `stream=True`.");
    const cJSON *iu = field(v, "include_usage");
    if (iu && !cJSON_IsBool(iu))
      return srv_fail(f, 400, "stream_options.include_usage", "'include_usage' must be true or false");
    r->include_usage = iu && cJSON_IsTrue(iu);
  }
  if (field(root, "top_logprobs") && !r->logprobs && r->top_logprobs > 0)
    return srv_fail(f, 400, "top_logprobs", "when using `top_logprobs`, `logprobs` must be set to true");
  if ((v = field(root, "stop"))) {
    if (cJSON_IsString(v)) {
      int rc = add_stop(r, v->valuestring, "stop", f);
      if (rc) return rc;
    } else if (cJSON_IsArray(v)) {
      const cJSON *s;
      cJSON_ArrayForEach(s, v) {
        if (!cJSON_IsString(s)) return srv_fail(f, 400, "stop", "'stop' must be a string or a list of strings");
        int rc = add_stop(r, s->valuestring, "stop", f);
        if (rc) return rc;
      }
    } else {
      return srv_fail(f, 400, "stop", "'stop' must be a string or a list of strings");
    }
  }
  if ((v = field(root, "stop_token_ids"))) {
    if (!cJSON_IsArray(v)) return srv_fail(f, 400, "stop_token_ids", "'stop_token_ids' must be a list of integers");
    const cJSON *s;
    cJSON_ArrayForEach(s, v) {
      if (!cJSON_IsNumber(s) || s->valuedouble != floor(s->valuedouble) || s->valuedouble < 0 ||
          s->valuedouble > INT_MAX)
        return srv_fail(f, 400, "stop_token_ids", "'stop_token_ids' must be a list of non-negative integers");
      if (r->sampling.n_stop_ids == SMP_MAX_STOP_IDS)
        return srv_fail(f, 400, "stop_token_ids", "at most %d stop_token_ids", SMP_MAX_STOP_IDS);
      r->sampling.stop_ids[r->sampling.n_stop_ids++] = (int)s->valuedouble;
    }
  }
  if ((v = field(root, "long_audio"))) {
    if (!cJSON_IsString(v)) return srv_fail(f, 400, "long_audio", "'long_audio' must be \"truncate\" or \"split\"");
    int rc = set_long_audio(r, v->valuestring, f);
    if (rc) return rc;
  }
  if ((v = field(root, "response_format"))) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(v, "type");
    if (!cJSON_IsString(t) || strcmp(t->valuestring, "text") != 0)
      return srv_fail(f, 400, "response_format", "only response_format {\"type\": \"text\"} is supported");
  }
  if ((v = field(root, "tools")) && (!cJSON_IsArray(v) || cJSON_GetArraySize(v) > 0))
    return srv_fail(f, 400, "tools", "tools are not supported by this server");
  if ((v = field(root, "logit_bias")) && (!cJSON_IsObject(v) || v->child))
    return srv_fail(f, 400, "logit_bias", "logit_bias is not supported by this server");
  return ES_OK;
}

int srv_req_sampling_fields(srv_req_t *r, const cJSON *o, srv_fail_t *f) {
  static const char *const NUMBERS[] = {
      "temperature",       "top_p", "top_k",      "min_p", "repetition_penalty", "presence_penalty",
      "frequency_penalty", "seed",  "min_tokens", NULL};
  const cJSON *v;
  for (const char *const *k = NUMBERS; *k; k++) {
    if (!(v = field(o, *k))) continue;
    if (!cJSON_IsNumber(v)) return srv_fail(f, 400, *k, "'%s' must be a number", *k);
    int rc = set_number(r, *k, v->valuedouble, f);
    if (rc) return rc;
  }
  if ((v = field(o, "ignore_eos"))) {
    if (!cJSON_IsBool(v)) return srv_fail(f, 400, "ignore_eos", "'ignore_eos' must be true or false");
    r->sampling.ignore_eos = cJSON_IsTrue(v);
  }
  return ES_OK;
}

/* ---- multipart forms ------------------------------------------------------------------------------------------- */

static int parse_form_number(const char *key, const char *s, double *out, srv_fail_t *f) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  while (*end == ' ') end++;
  if (errno || end == s || *end) return srv_fail(f, 400, key, "'%s' must be a number, got '%.40s'", key, s);
  *out = v;
  return ES_OK;
}

int srv_req_form_field(srv_req_t *r, const srv_req_ctx_t *ctx, const char *key, const char *value, srv_fail_t *f) {
  for (const char *const *k = NUMBER_FIELDS; *k; k++)
    if (!strcmp(key, *k)) {
      double v = 0;
      int rc = parse_form_number(key, value, &v, f);
      if (!rc && !strcmp(key, "n") && v != 1)
        return srv_fail(f, 400, "n", "n=%g: this server returns one choice per request; n must be 1", v);
      return rc ? rc : set_number(r, key, v, f);
    }
  for (const char *const *k = BOOL_FIELDS; *k; k++)
    if (!strcmp(key, *k) || (!strcmp(key, "stream_include_usage") && !strcmp(*k, "stream"))) {
      int b;
      if (!strcmp(value, "true") || !strcmp(value, "True") || !strcmp(value, "1"))
        b = 1;
      else if (!strcmp(value, "false") || !strcmp(value, "False") || !strcmp(value, "0"))
        b = 0;
      else
        return srv_fail(f, 400, key, "'%s' must be true or false, got '%.40s'", key, value);
      return set_bool(r, key, b, f);
    }
  if (!strcmp(key, "model")) {
    if (strcmp(value, ctx->served_model_name) != 0)
      return srv_fail(f, 404, "model", "The model `%.200s` does not exist.", value);
  } else if (!strcmp(key, "stop")) {
    return add_stop(r, value, "stop", f);
  } else if (!strcmp(key, "long_audio")) {
    return set_long_audio(r, value, f);
  } else if (!strcmp(key, "prompt") || !strcmp(key, "system")) {
    if (!tok_utf8_valid(value, strlen(value), NULL)) return srv_fail(f, 400, key, "'%s' is not valid UTF-8", key);
    if (r->kind == SRV_KIND_ANALYZE) {
      char *c = own(r, value);
      if (!c) return srv_fail(f, 400, key, "too many text fields");
      /* remembered in msgs[0] (system) and msgs[1] (prompt) until srv_req_form_finish builds the turn */
      if (!strcmp(key, "system"))
        r->msgs[0].content = c;
      else
        r->msgs[1].content = c;
    }
    /* transcription: OpenAI's `prompt` (style hint / previous text) has no slot in Qwen2-Audio's fixed
     * speech-recognition prompt; it is accepted and not used */
  } else if (!strcmp(key, "language")) {
    if (strlen(value) >= sizeof r->language) return srv_fail(f, 400, key, "'language' is too long");
    snprintf(r->language, sizeof r->language, "%s", value);
  } else if (!strcmp(key, "response_format")) {
    if (!strcmp(value, "json"))
      r->fmt = SRV_FMT_JSON;
    else if (!strcmp(value, "text"))
      r->fmt = SRV_FMT_TEXT;
    else if (!strcmp(value, "verbose_json"))
      r->fmt = SRV_FMT_VERBOSE_JSON;
    else
      return srv_fail(f, 400, key, "response_format '%.40s' is not supported (json, text, verbose_json)", value);
  }
  return ES_OK;
}

int srv_req_add_audio(srv_req_t *r, unsigned char *data, size_t len, const char *label, srv_fail_t *f) {
  if (r->n_audio == ENG_MAX_AUDIOS) {
    free(data);
    return srv_fail(f, 400, "file", "at most %d files per request", ENG_MAX_AUDIOS);
  }
  srv_blob_t *b = &r->audio[r->n_audio++];
  b->data = data;
  b->len = len;
  snprintf(b->label, sizeof b->label, "%s", label);
  if (len == 0) return srv_fail(f, 400, "file", "%s is empty", label);
  return ES_OK;
}

int srv_req_form_finish(srv_req_t *r, const srv_req_ctx_t *ctx, srv_fail_t *f) {
  (void)ctx;
  if (r->n_audio == 0) return srv_fail(f, 400, "file", "the form has no 'file' part (the audio to process)");
  if (r->kind == SRV_KIND_TRANSCRIBE) {
    if (r->n_audio > 1) return srv_fail(f, 400, "file", "one 'file' per transcription request");
    return ES_OK;
  }
  const char *system = r->msgs[0].content, *prompt = r->msgs[1].content;
  memset(r->msgs, 0, 2 * sizeof r->msgs[0]);
  size_t nm = 0;
  if (system) r->msgs[nm++] = (prompt_message_t){.role = "system", .content = system};
  for (size_t k = 0; k < r->n_audio; k++) r->parts[r->n_parts++] = (prompt_part_t){.type = PROMPT_PART_AUDIO};
  if (prompt && prompt[0]) r->parts[r->n_parts++] = (prompt_part_t){.type = PROMPT_PART_TEXT, .text = prompt};
  r->msgs[nm++] = (prompt_message_t){.role = "user", .parts = r->parts, .n_parts = r->n_parts};
  r->n_msgs = nm;
  return ES_OK;
}

/* ---- building the engine request --------------------------------------------------------------------------- */

/* The raw form's task: the text of every user message, in order, joined by newlines. */
static int raw_task(const srv_req_t *r, tok_text_t *task, es_error_t *e) {
  int rc = 0;
  for (size_t i = 0; i < r->n_msgs && !rc; i++) {
    const prompt_message_t *m = &r->msgs[i];
    if (strcmp(m->role, "user") != 0) continue;
    if (m->content) {
      if (task->len) rc = tok_text_append(task, "\n", 1, e);
      if (!rc) rc = tok_text_append(task, m->content, strlen(m->content), e);
    }
    for (size_t j = 0; j < m->n_parts && !rc; j++)
      if (m->parts[j].type == PROMPT_PART_TEXT) {
        if (task->len) rc = tok_text_append(task, "\n", 1, e);
        if (!rc) rc = tok_text_append(task, m->parts[j].text, strlen(m->parts[j].text), e);
      }
  }
  return rc;
}

#define MAX_WINDOWS 64

int srv_req_build(srv_req_t *r, const srv_req_ctx_t *ctx, eng_request_t *q, tok_ids_t *ids, srv_fail_t *f) {
  const rt_t *rt = ctx->rt;
  memset(q, 0, sizeof *q);
  tok_text_t text = {0}, task = {0};
  es_error_t e;
  es_error_clear(&e);
  int rc = ES_OK;
  const char *audio_param = r->kind == SRV_KIND_CHAT ? "messages" : "file";

  audio_decode_opts_t dopts;
  audio_decode_opts_default(&dopts);
  if (ctx->max_audio_bytes) dopts.max_input_bytes = ctx->max_audio_bytes;
  if (ctx->max_audio_seconds > 0) dopts.max_duration_s = ctx->max_audio_seconds;
  static const int32_t no_windows[1];
  int32_t(*wt)[MAX_WINDOWS] = calloc(ENG_MAX_AUDIOS, sizeof *wt);
  prompt_audio_t pa[ENG_MAX_AUDIOS];
  if (!wt) {
    rc = srv_fail(f, 500, "", "out of memory");
    goto fail;
  }
  r->audio_seconds = 0;
  for (size_t k = 0; k < r->n_audio; k++) {
    audio_pcm_t pcm;
    if (r->audio[k].pcm) { /* already 16 kHz samples: moved as they are */
      pcm = (audio_pcm_t){.samples = r->audio[k].pcm, .n = r->audio[k].n_pcm};
      r->audio[k].pcm = NULL;
    } else if ((rc = audio_decode_memory(r->audio[k].data, r->audio[k].len, r->audio[k].label, &dopts, &pcm, &e))) {
      if (rc == ES_ETOOBIG)
        rc = srv_fail(f, 413, audio_param, "%s", e.msg);
      else if (rc == ES_ENOMEM)
        rc = srv_fail(f, 500, audio_param, "%s", e.msg);
      else
        rc = srv_fail(f, 415, audio_param, "%s", e.msg);
      goto fail;
    }
    free(r->audio[k].data); /* the encoded bytes are no longer needed */
    r->audio[k].data = NULL;
    q->audios[k] = (eng_audio_t){.samples = pcm.samples, .n_samples = pcm.n};
    q->n_audios = k + 1;
    r->audio_seconds += (double)pcm.n / AUDIO_SAMPLE_RATE;
    audio_window_t w[MAX_WINDOWS];
    size_t nw = 0;
    if (audio_windows(pcm.n, r->long_audio, w, MAX_WINDOWS, &nw, &e)) {
      rc = srv_fail(f, 413, audio_param, "%s: %s", r->audio[k].label, e.msg);
      goto fail;
    }
    for (size_t j = 0; j < nw; j++) wt[k][j] = w[j].audio_tokens;
    if (nw == 1 && w[0].audio_tokens == 0) {
      rc = srv_fail(f, 400, audio_param,
                    "%s is too short: %zu samples (%.1f ms) give no audio token; at least 321 samples (20 ms at "
                    "16 kHz) are needed",
                    r->audio[k].label, pcm.n, pcm.n / 16.0);
      goto fail;
    }
    pa[k] = (prompt_audio_t){.window_tokens = nw ? wt[k] : no_windows, .n_windows = nw};
  }

  if (r->kind == SRV_KIND_TRANSCRIBE) {
    rc = prompt_render_asr(rt->tok, r->n_audio, r->language[0] ? r->language : NULL, &text, NULL, &e);
  } else if (ctx->raw_prompt) {
    rc = raw_task(r, &task, &e);
    if (!rc) rc = prompt_render_raw(r->n_audio, task.data ? task.data : "", &text, &e);
  } else {
    size_t n_aud = 0;
    rc = prompt_render_chat(r->msgs, r->n_msgs, 1, &text, &n_aud, &e);
  }
  if (rc) {
    rc = srv_fail(f, rc == ES_ENOMEM ? 500 : 400, r->kind == SRV_KIND_CHAT ? "messages" : "", "%s", e.msg);
    goto fail;
  }
  if ((rc = prompt_encode(rt->tok, &rt->special, text.data, text.len, pa, r->n_audio, ids, &e))) {
    rc = srv_fail(f, rc == ES_ENOMEM ? 500 : 400, r->kind == SRV_KIND_CHAT ? "messages" : "", "%s", e.msg);
    goto fail;
  }

  int L = rt->max_model_len, n = (int)ids->n;
  if (n >= L) {
    rc = srv_fail(f, 400, r->kind == SRV_KIND_CHAT ? "messages" : audio_param,
                  "This model's maximum context length is %d tokens. However, your request has %d input tokens "
                  "(audio included). Please reduce the length of the input.",
                  L, n);
    f->context_overflow = 1;
    goto fail;
  }
  if (r->max_tokens_given && n + r->sampling.max_tokens > L) {
    rc = srv_fail(f, 400, "max_tokens",
                  "This model's maximum context length is %d tokens. However, you requested %d tokens (%d in the "
                  "messages, %d in the completion). Please reduce the length of the messages or completion.",
                  L, n + r->sampling.max_tokens, n, r->sampling.max_tokens);
    f->context_overflow = 1;
    goto fail;
  }
  if (!r->max_tokens_given && r->sampling.max_tokens > L - n) r->sampling.max_tokens = L - n;
  if (r->sampling.min_tokens > r->sampling.max_tokens) {
    rc = srv_fail(f, 400, "min_tokens", "min_tokens (%d) is larger than max_tokens (%d)", r->sampling.min_tokens,
                  r->sampling.max_tokens);
    goto fail;
  }
  if (smp_params_validate(&r->sampling, rt->cfg.vocab_size, &e)) {
    rc = srv_fail(f, 400, "", "%s", e.msg);
    goto fail;
  }

  q->prompt_ids = ids->ids;
  q->n_prompt = ids->n;
  q->long_audio = r->long_audio;
  q->sampling = r->sampling;
  for (int i = 0; i < r->n_stop; i++) q->stop[i] = r->stop[i];
  q->n_stop = r->n_stop;
  q->skip_special = 1;
  q->logprobs = r->logprobs;
  q->top_logprobs = r->logprobs ? r->top_logprobs : 0;
  free(wt);
  tok_text_free(&text);
  tok_text_free(&task);
  return ES_OK;
fail:
  for (size_t k = 0; k < q->n_audios; k++) free(q->audios[k].samples);
  memset(q, 0, sizeof *q);
  free(wt);
  tok_text_free(&text);
  tok_text_free(&task);
  return rc;
}

/* ---- language tags ------------------------------------------------------------------------------------------- */

static int is_lower(char c) {
  return c >= 'a' && c <= 'z';
}

/* Length of a complete tag at s (0 if none). */
static size_t tag_at(const char *s, size_t n) {
  if (n < 6 || s[0] != '<' || s[1] != '|') return 0;
  size_t i = 2;
  while (i < n && i < 11 && is_lower(s[i])) i++;
  if (i - 2 < 2 || i + 1 >= n || s[i] != '|' || s[i + 1] != '>') return 0;
  return i + 2;
}

size_t srv_strip_lang_tags(char *text, size_t len, char *lang, size_t lang_cap) {
  size_t o = 0;
  for (size_t i = 0; i < len;) {
    size_t t = tag_at(text + i, len - i);
    if (t) {
      if (lang && lang_cap && !lang[0]) snprintf(lang, lang_cap, "%.*s", (int)(t - 4), text + i + 2);
      i += t;
      while (i < len && text[i] == ' ' && o == 0) i++; /* "<|en|> Hello" at the start: no leading space */
      continue;
    }
    text[o++] = text[i++];
  }
  if (o < len) text[o] = '\0';
  return o;
}

size_t srv_lang_tag_tail(const char *text, size_t len) {
  /* the longest suffix that is a proper prefix of "<|" + 2..8 lowercase letters + "|>" */
  for (size_t k = len < 11 ? len : 11; k > 0; k--) {
    const char *s = text + len - k;
    if (s[0] != '<') continue;
    if (k == 1) return 1;
    if (s[1] != '|') continue;
    size_t i = 2;
    while (i < k && is_lower(s[i])) i++;
    if (i - 2 > 8) continue;
    if (i == k) return k;                                  /* "<|en" */
    if (s[i] == '|' && i + 1 == k && i - 2 >= 2) return k; /* "<|en|" */
  }
  return 0;
}
