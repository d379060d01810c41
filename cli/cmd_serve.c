/* cmd_serve: `earshot serve` — the OpenAI-compatible HTTP server (server/server.h).
 *
 * Order: bind and serve (/health answers 503), load the model, mark the server ready, then wait for SIGINT or
 * SIGTERM. Both signals are blocked in every thread and taken by sigwait here, so no handler runs inside the
 * engine or libmicrohttpd; a signal that arrives while the model loads is acted on once loading is done.
 * Shutdown: stop accepting, finish or cancel in-flight streams (bounded by --shutdown-grace), close the
 * model, exit 0.
 * Exit codes: 0 clean shutdown, 1 start-up failure (a message on stderr), 2 usage error.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audio_decode.h"
#include "model_flags.h"
#include "runtime.h"
#include "server.h"

int cmd_serve(int argc, char **argv);

static void usage(FILE *out) {
  fprintf(out, "usage: earshot serve --model DIR|ORG/NAME [options]\n"
               "\n"
               "  --host ADDR                 bind address (default 127.0.0.1: this machine only)\n"
               "  --port N                    (default 8080; 0 = any free port)\n"
               "  --api-key KEY               require 'Authorization: Bearer KEY' on /v1/* (default: none;\n"
               "                              also read from EARSHOT_API_KEY)\n"
               "  --served-model-name NAME    the model name clients use (default: the --model argument)\n"
               "  --prompt-format chat|raw    chat template (Instruct, default) or the base model's raw form\n"
               "  --max-audio-seconds S       longest decoded audio accepted (default 1200)\n"
               "  --max-body-mb MB            largest request body (default 25)\n"
               "  --long-audio truncate|split audio over 30 s: keep the first 30 s (default) or every window\n"
               "  --allowed-local-media-path DIR   audio_url file:// may read files under DIR (default: refused)\n"
               "  --max-queue N               requests waiting for the engine before 429 (default 64)\n"
               "  --keepalive S               SSE keep-alive comment after S seconds of silence (default 5)\n"
               "  --shutdown-grace S          on SIGINT/SIGTERM, let streams finish for S seconds (default 10)\n"
               "  --max-voice-sessions N      live voice sessions (WebSocket /v1/realtime) open at once (default 64)\n"
               "  --voice-buffer-seconds S    a voice session's input buffer, i.e. its longest turn (default 300)\n"
               "  --voice-idle-seconds S      close a voice session that sends nothing for S seconds (default 900)\n"
               "  --quiet                     no log line per request\n");
  mf_usage(out, MF_OPEN | MF_SIZING);
}

static int num(const char *flag, const char *v, double lo, double hi, double *out) {
  char *end;
  errno = 0;
  double d = strtod(v, &end);
  if (errno || end == v || *end || d < lo || d > hi) {
    fprintf(stderr, "earshot serve: %s '%s': expected a number in [%g, %g]\n", flag, v, lo, hi);
    return -1;
  }
  *out = d;
  return 0;
}

int cmd_serve(int argc, char **argv) {
  rt_opts_t ro = {.device = RT_DEVICE_AUTO, .dtype = ES_DT_BF16, .verbose = 1};
  srv_opts_t so = {.host = "127.0.0.1", .port = 8080, .verbose = 1};
  so.api_key = getenv("EARSHOT_API_KEY");
  double d;
  es_error_t err;
  es_error_clear(&err);
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    }
    if (!strcmp(a, "--quiet")) {
      so.verbose = 0;
      continue;
    }
    int mf = mf_parse("serve", MF_OPEN | MF_SIZING, argc, argv, &i, &ro);
    if (mf < 0) return 2;
    if (mf > 0) continue;
    if (!v) {
      fprintf(stderr, "earshot serve: %s needs a value (or is unknown)\n\n", a);
      usage(stderr);
      return 2;
    }
    i++;
    if (!strcmp(a, "--host"))
      so.host = v;
    else if (!strcmp(a, "--port")) {
      if (num(a, v, 0, 65535, &d)) return 2;
      so.port = (int)d;
    } else if (!strcmp(a, "--api-key"))
      so.api_key = v;
    else if (!strcmp(a, "--served-model-name"))
      so.served_model_name = v;
    else if (!strcmp(a, "--prompt-format")) {
      if (strcmp(v, "chat") && strcmp(v, "raw")) {
        fprintf(stderr, "earshot serve: --prompt-format '%s': expected chat or raw\n", v);
        return 2;
      }
      so.raw_prompt = !strcmp(v, "raw");
    } else if (!strcmp(a, "--max-audio-seconds")) {
      if (num(a, v, 0.1, 86400, &so.max_audio_seconds)) return 2;
    } else if (!strcmp(a, "--max-body-mb")) {
      if (num(a, v, 0.001, 4096, &d)) return 2;
      so.max_body_bytes = (size_t)(d * 1024 * 1024);
    } else if (!strcmp(a, "--long-audio")) {
      if (audio_long_policy_parse(v, &so.long_audio, &err)) {
        fprintf(stderr, "earshot serve: %s\n", err.msg);
        return 2;
      }
    } else if (!strcmp(a, "--allowed-local-media-path"))
      so.allowed_media_path = v;
    else if (!strcmp(a, "--max-queue")) {
      if (num(a, v, 1, 1 << 20, &d)) return 2;
      ro.max_queue = (int)d;
    } else if (!strcmp(a, "--keepalive")) {
      if (num(a, v, 0.05, 3600, &so.keepalive_s)) return 2;
    } else if (!strcmp(a, "--shutdown-grace")) {
      if (num(a, v, 0.01, 3600, &so.shutdown_grace_s)) return 2;
    } else if (!strcmp(a, "--max-voice-sessions")) {
      if (num(a, v, 1, 4096, &d)) return 2;
      so.max_voice_sessions = (int)d;
    } else if (!strcmp(a, "--voice-buffer-seconds")) {
      if (num(a, v, 1, 3600, &so.voice_buffer_s)) return 2;
    } else if (!strcmp(a, "--voice-idle-seconds")) {
      if (num(a, v, 0.1, 86400, &so.voice_idle_s)) return 2;
    } else {
      fprintf(stderr, "earshot serve: unknown argument '%s'\n\n", a);
      usage(stderr);
      return 2;
    }
  }
  if (!ro.model) {
    fprintf(stderr, "earshot serve: --model is required\n\n");
    usage(stderr);
    return 2;
  }
  if (!so.served_model_name) so.served_model_name = ro.model;

  /* every thread started from here on inherits the mask: only sigwait below sees the signals */
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);
  signal(SIGPIPE, SIG_IGN);
  audio_decode_global_init(1);

  srv_t *srv = NULL;
  rt_t rt;
  int rt_ok = 0, status = 1;
  if (srv_start(&so, &srv, &err)) goto fail;
  fprintf(stderr, "earshot serve: listening on http://%s:%d (loading the model; /health says 503 until ready)\n",
          so.host, srv_port(srv));
  if (rt_open(&ro, &rt, &err)) goto fail;
  rt_ok = 1;
  if (srv_set_runtime(srv, &rt, &err)) goto fail;
  fprintf(stderr, "earshot serve: ready: model '%s' at http://%s:%d/v1\n", so.served_model_name, so.host,
          srv_port(srv));
  int sig = 0;
  while (sigwait(&sigs, &sig) != 0) {
  }
  fprintf(stderr, "earshot serve: %s: shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  status = 0;
  goto out;
fail:
  fprintf(stderr, "earshot serve: %s\n", err.msg);
out:
  srv_shutdown(srv);
  if (rt_ok) rt_close(&rt); /* cancels whatever the engine still holds; its final events go to live gens */
  srv_free(srv);
  if (status == 0) fprintf(stderr, "earshot serve: stopped\n");
  return status;
}
