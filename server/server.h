/* server: earshot's OpenAI-compatible HTTP server (libmicrohttpd).
 *
 * Routes: POST /v1/chat/completions, POST /v1/audio/analyze, POST /v1/audio/transcriptions, GET /v1/models,
 * GET /health, GET /version, GET /metrics, and GET /v1/realtime: live voice chat over a WebSocket (voice.h). Wire
 * formats follow vLLM (SERVING.md §1); errors are OpenAI error objects with the status they deserve (400, 401, 404,
 * 405, 413, 415, 429/503 with Retry-After, 500).
 *
 * Threads (docs/ARCHITECTURE.md, "Server"):
 *   - libmicrohttpd's one internal polling thread parses headers, accumulates bodies (multipart through its
 *     post processor), answers the GET routes and relays streamed bytes. It never decodes audio or waits.
 *   - a few decode workers turn a complete body into an engine request: JSON parse, base64, FFmpeg decode,
 *     prompt rendering and tokenisation, then eng_submit. A 25 MB upload can take a second or more to decode;
 *     on the polling thread that would stall every other stream.
 *   - the engine thread's callbacks format chunks into per-request buffers and resume suspended connections.
 *   - a ticker thread sends SSE keep-alive comments to idle streams, so a client that vanished while its
 *     request waited in the queue is noticed (the next write fails) and the request is cancelled.
 *   - one thread per voice session (WebSocket): the upgrade hands it the socket; it reads the client's events,
 *     converts audio, detects turns, submits responses and writes the events (voice.h, ws.h).
 * The server starts before the model is loaded: /health answers 503 until srv_set_runtime.
 *
 * Thread safety: srv_start / srv_set_runtime / srv_shutdown / srv_free from one (the main) thread.
 */
#pragma once

#include <stddef.h>

#include "audio_mel.h"
#include "es_error.h"
#include "runtime.h"

typedef struct {
  const char *host;               /* bind address (default "127.0.0.1": loopback only) */
  int port;                       /* 0: any free port (srv_port says which) */
  const char *api_key;            /* NULL/"": no authentication; else /v1 routes need "Authorization: Bearer KEY" */
  const char *served_model_name;  /* the name /v1/models lists and requests must use */
  int raw_prompt;                 /* --prompt-format raw */
  double max_audio_seconds;       /* per decoded audio; <= 0: audio_decode's default (20 minutes) */
  size_t max_body_bytes;          /* per request body; 0 = 25 MiB */
  audio_long_policy_t long_audio; /* default for requests that do not say */
  const char *allowed_media_path; /* directory file:// audio_url may read from; NULL: file:// refused */
  int workers;                    /* decode workers (0 = 2) */
  int max_pending;                /* requests waiting for a decode worker before 429 (0 = 64) */
  double keepalive_s;             /* SSE keep-alive comment after this much silence (0 = 5 s) */
  double shutdown_grace_s;        /* srv_shutdown waits this long for streams to finish (0 = 10 s) */
  int max_voice_sessions;         /* open WebSocket voice sessions before 429 (0 = 64) */
  double voice_buffer_s;          /* a voice session's input audio buffer / longest turn (0 = 300 s) */
  double voice_idle_s;            /* a voice session that sends no message for this long is closed (0 = 900 s) */
  const char *version_info;       /* /version's "git" field */
  int verbose;                    /* 1: one line per request on stderr */
} srv_opts_t;

typedef struct srv srv_t;

/* Binds and starts serving (/health says 503 until srv_set_runtime). */
int srv_start(const srv_opts_t *opts, srv_t **out, es_error_t *err);
/* The port actually bound. */
int srv_port(const srv_t *s);
/* The model is loaded: requests are served from now on. rt must outlive the server's use of it (srv_shutdown). */
int srv_set_runtime(srv_t *s, rt_t *rt, es_error_t *err);
/* Stops accepting connections, lets in-flight requests finish for up to shutdown_grace_s, cancels what is left,
 * waits (bounded) for the cancellations, and stops the HTTP daemon. The engine may still deliver final events
 * afterwards: call rt_close before srv_free. */
void srv_shutdown(srv_t *s);
void srv_free(srv_t *s);
