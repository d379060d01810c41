/* request: an HTTP request's body turned into an engine request.
 *
 *   srv_req_parse_chat      /v1/chat/completions JSON (OpenAI + the vLLM extras, SERVING.md §1.3, §1.5):
 *                           messages with string content or text / input_audio / audio_url parts, sampling
 *                           fields, stream options, long_audio.
 *   srv_req_parse_form      /v1/audio/analyze and /v1/audio/transcriptions multipart fields (the files are
 *                           added by the caller with srv_req_add_audio).
 *   srv_req_build           decodes every audio (FFmpeg, in memory), renders the prompt (chat template, raw
 *                           form or the speech-recognition prompt), tokenises it with each audio's placeholder
 *                           expanded to its windows' tokens (the way cmd_run.c builds a request), checks the
 *                           context limit and fills an eng_request_t.
 *
 * Sampling defaults come from the checkpoint's generation_config.json (rt_default_sampling), which is what vLLM
 * does with its default --generation-config auto; a field the request sets overrides its default.
 * Every failure fills srv_fail_t with the HTTP status it deserves, the OpenAI `param` it concerns and a message
 * a client can act on.
 * Thread safety: a srv_req_t belongs to one thread at a time (a decode worker); the context is read-only.
 */
#pragma once

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "es_error.h"
#include "prompt.h"
#include "runtime.h"

typedef enum { SRV_KIND_CHAT = 0, SRV_KIND_ANALYZE, SRV_KIND_TRANSCRIBE } srv_kind_t;
typedef enum { SRV_FMT_JSON = 0, SRV_FMT_TEXT, SRV_FMT_VERBOSE_JSON } srv_fmt_t;

typedef struct {
  int status;           /* HTTP status: 400, 404, 413, 415, 429, 500, 503 */
  char param[64];       /* the request field concerned, "" when none */
  es_error_t err;       /* the message */
  int context_overflow; /* srv_req_build: the prompt (or prompt + max_tokens) does not fit the context */
} srv_fail_t;

/* Records a failure; returns the matching ES_E* code (ES_EINVAL for 4xx, ES_EINTERNAL for 5xx). */
int srv_fail(srv_fail_t *f, int status, const char *param, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

/* What the server was started with that shapes requests. */
typedef struct {
  const rt_t *rt;                 /* model, tokenizer, special ids, context length */
  const char *served_model_name;  /* a request naming another model gets 404 */
  int raw_prompt;                 /* --prompt-format raw: the base model's form for chat and analyze */
  double max_audio_seconds;       /* decoded audio longer than this: 413 */
  size_t max_audio_bytes;         /* per audio input (base64-decoded, or a file://): 413 */
  audio_long_policy_t long_audio; /* the server's default */
  const char *allowed_media_dir;  /* realpath of --allowed-local-media-path, or NULL: file:// refused */
} srv_req_ctx_t;

typedef struct {
  unsigned char *data; /* owned: encoded audio (a file's bytes), decoded by srv_req_build */
  size_t len;
  float *pcm; /* owned: or samples already at 16 kHz (a voice session's turn), used as they are */
  size_t n_pcm;
  char label[112]; /* names it in errors: "messages[0].content[1] (input_audio)", "file 2 (x.wav)" */
} srv_blob_t;

#define SRV_MAX_MESSAGES 256
#define SRV_MAX_PARTS 512

typedef struct {
  srv_kind_t kind;
  cJSON *json; /* the parsed body; message strings point into it */
  prompt_message_t msgs[SRV_MAX_MESSAGES];
  size_t n_msgs;
  prompt_part_t parts[SRV_MAX_PARTS];
  size_t n_parts;
  char *owned[8]; /* strings the request owns (form fields) */
  size_t n_owned;
  srv_blob_t audio[ENG_MAX_AUDIOS]; /* in order of appearance */
  size_t n_audio;
  smp_params_t sampling; /* defaults, then the request's values */
  int max_tokens_given;
  char *stop[ENG_MAX_STOPS]; /* owned */
  int n_stop;
  int stream, include_usage;
  int logprobs, top_logprobs;
  audio_long_policy_t long_audio;
  char language[32];    /* transcription: "" = detect */
  srv_fmt_t fmt;        /* transcription response_format */
  double audio_seconds; /* set by srv_req_build: total decoded duration */
} srv_req_t;

/* Zeroes r and sets the defaults (generation_config sampling, the server's long-audio policy). */
void srv_req_init(srv_req_t *r, srv_kind_t kind, const srv_req_ctx_t *ctx);
void srv_req_free(srv_req_t *r);

int srv_req_parse_chat(srv_req_t *r, const srv_req_ctx_t *ctx, const char *body, size_t len, srv_fail_t *f);

/* One multipart text field of the analyze / transcription forms. Unknown fields are ignored (OpenAI's form
 * has more than this server uses); a known field with a bad value is a 400 naming it. */
int srv_req_form_field(srv_req_t *r, const srv_req_ctx_t *ctx, const char *key, const char *value, srv_fail_t *f);
/* After every field: the analyze form's conversation (optional system, the files, then the prompt), or the
 * transcription's checks. */
int srv_req_form_finish(srv_req_t *r, const srv_req_ctx_t *ctx, srv_fail_t *f);
/* Takes ownership of data (malloc'd) as the next audio. */
int srv_req_add_audio(srv_req_t *r, unsigned char *data, size_t len, const char *label, srv_fail_t *f);

/* Applies the sampling fields present in o (JSON null: absent) — temperature, top_p, top_k, min_p, the
 * penalties, seed, min_tokens, ignore_eos — with the same checks as a chat request; other keys are left alone.
 * For front ends that carry these fields in their own objects (the voice session). */
int srv_req_sampling_fields(srv_req_t *r, const cJSON *o, srv_fail_t *f);

/* Decodes the audios and fills q (prompt ids in *ids, which must outlive q until eng_submit returns). On
 * success q's sample buffers are owned by the caller until eng_submit accepts them; on failure they are
 * freed. Callback fields of q are left for the caller. */
int srv_req_build(srv_req_t *r, const srv_req_ctx_t *ctx, eng_request_t *q, tok_ids_t *ids, srv_fail_t *f);

/* Removes language tags ("<|en|>", "<|yue|>": '<|', 2-8 lowercase letters, '|>') from text in place; the
 * first one removed is copied to lang (without the brackets) when lang[0] is still empty. Leading spaces
 * right after a removed tag go too. Returns the new length. */
size_t srv_strip_lang_tags(char *text, size_t len, char *lang, size_t lang_cap);
/* How many bytes at the end of text could be the start of a language tag still arriving (0..9). */
size_t srv_lang_tag_tail(const char *text, size_t len);
