/* serve_proc: `earshot serve` as a child process for the server tests (test_server, test_voice): start it on a
 * free loopback port (the port is read from its log), stop it with SIGTERM, talk to it with curl, read a metric;
 * and what both compare with: `earshot run`'s greedy text, and base64 for audio sent inside JSON.
 * The including test's main calls sp_init, which sets EARSHOT (the binary) and SCRATCH (a folder for logs and
 * bodies) from its arguments.
 * Header-only: each test binary has one copy; every function is static and marked unused-ok.
 */
#pragma once

#include <cjson/cJSON.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "es_clock.h"

#define SP_UNUSED __attribute__((unused))

#define KEY "test-key-7d1f"
#define CK ES_SOURCE_DIR "/tests/golden/checkpoints/tiny-a"
#define DATA ES_SOURCE_DIR "/tests/data/audio"
#define MODEL "tiny"

static const char *EARSHOT, *SCRATCH;

/* A server test's arguments, EARSHOT SCRATCH_DIR: sets EARSHOT, makes SCRATCH = SCRATCH_DIR/name, ignores SIGPIPE
 * (a server that hangs up must not kill the test). 0, or 2 after a usage message. */
static SP_UNUSED int sp_init(int argc, char **argv, const char *name) {
  if (argc < 3) {
    fprintf(stderr, "usage: test_%s EARSHOT SCRATCH_DIR\n", name);
    return 2;
  }
  EARSHOT = argv[1];
  static char scratch[1024];
  snprintf(scratch, sizeof scratch, "%s/%s", argv[2], name);
  mkdir(scratch, 0755);
  SCRATCH = scratch;
  signal(SIGPIPE, SIG_IGN);
  return 0;
}

typedef struct {
  pid_t pid;
  int port;
  char log[1024];
} server_t;

static SP_UNUSED char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 1 << 16, n = 0;
  char *b = malloc(cap);
  size_t k;
  while (b && (k = fread(b + n, 1, cap - n - 1, f)) > 0) {
    n += k;
    if (n + 1 == cap) b = realloc(b, cap *= 2);
  }
  fclose(f);
  if (b) b[n] = '\0';
  if (len) *len = n;
  return b;
}

/* Runs a shell command, captures stdout (at most cap - 1 bytes); returns the exit status. */
static SP_UNUSED int sh(const char *cmd, char *out, size_t cap) {
  FILE *p = popen(cmd, "r");
  if (!p) return -1;
  size_t n = out ? fread(out, 1, cap - 1, p) : 0;
  if (out)
    out[n] = '\0';
  else {
    char tmp[4096];
    while (fread(tmp, 1, sizeof tmp, p) > 0) {
    }
  }
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static SP_UNUSED int server_start(server_t *s, const char *name, const char *extra) {
  snprintf(s->log, sizeof s->log, "%s/%s.log", SCRATCH, name);
  char cmd[4096];
  snprintf(cmd, sizeof cmd,
           "exec %s serve --model %s --served-model-name " MODEL " --port 0 --api-key " KEY
           " --device cpu --threads 2 --keepalive 0.2 %s >%s 2>&1",
           EARSHOT, CK, extra, s->log);
  unlink(s->log); /* a previous run's log would give a stale port */
  s->pid = fork();
  if (s->pid == 0) {
    execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
    _exit(127);
  }
  s->port = 0;
  for (double t0 = es_now_s(); es_now_s() - t0 < 120 && !s->port; usleep(50000)) {
    char *log = slurp(s->log, NULL);
    const char *p = log ? strstr(log, "listening on http://127.0.0.1:") : NULL;
    if (p) s->port = atoi(p + strlen("listening on http://127.0.0.1:"));
    free(log);
    if (waitpid(s->pid, NULL, WNOHANG) == s->pid) return -1;
  }
  if (!s->port) return -1;
  char url[256], out[64];
  snprintf(url, sizeof url, "curl -s -o /dev/null -w '%%{http_code}' http://127.0.0.1:%d/health", s->port);
  for (double t0 = es_now_s(); es_now_s() - t0 < 120; usleep(100000))
    if (sh(url, out, sizeof out) == 0 && !strcmp(out, "200")) return 0;
  return -1;
}

/* SIGTERM; returns the exit status (-1: did not exit within limit_s, then killed). */
static SP_UNUSED int server_stop(server_t *s, double limit_s, double *took) {
  double t0 = es_now_s();
  kill(s->pid, SIGTERM);
  int st = 0;
  while (es_now_s() - t0 < limit_s) {
    pid_t r = waitpid(s->pid, &st, WNOHANG);
    if (r == s->pid) {
      if (took) *took = es_now_s() - t0;
      return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    usleep(20000);
  }
  kill(s->pid, SIGKILL);
  waitpid(s->pid, NULL, 0);
  return -1;
}

/* curl with args; the body lands in *body (malloc'd), response headers in *hdrs (malloc'd, may be NULL).
 * Returns the HTTP status (0 when curl failed). */
static SP_UNUSED int http(const server_t *s, const char *path, const char *args, char **body, char **hdrs) {
  static int seq;
  char bf[1200], hf[1200], cmd[8192], out[64];
  int k = seq++;
  snprintf(bf, sizeof bf, "%s/resp-%d.body", SCRATCH, k);
  snprintf(hf, sizeof hf, "%s/resp-%d.hdr", SCRATCH, k);
  snprintf(cmd, sizeof cmd, "curl -s --max-time 300 -o %s -D %s -w '%%{http_code}' %s http://127.0.0.1:%d%s", bf, hf,
           args, s->port, path);
  int status = sh(cmd, out, sizeof out) == 0 ? atoi(out) : 0;
  if (body) *body = slurp(bf, NULL);
  if (hdrs) *hdrs = slurp(hf, NULL);
  return status;
}

static SP_UNUSED double metric(const server_t *s, const char *name) {
  char *body = NULL;
  http(s, "/metrics", "", &body, NULL);
  double v = -1;
  const char *p = body ? strstr(body, name) : NULL;
  while (p && p[strlen(name)] != '{') p = strstr(p + 1, name);
  if (p && (p = strchr(p, '}'))) v = atof(p + 1);
  free(body);
  return v;
}

/* `earshot run --json` greedy text for these arguments. */
static SP_UNUSED char *run_text(const char *args) {
  static char out[1 << 20];
  char cmd[4096];
  snprintf(cmd, sizeof cmd,
           "%s run --model %s --device cpu --temperature 0 --repetition-penalty 1 --max-tokens 20 --ignore-eos "
           "--json %s 2>/dev/null",
           EARSHOT, CK, args);
  if (sh(cmd, out, sizeof out) != 0) return NULL;
  cJSON *j = cJSON_Parse(out);
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "text");
  char *r = cJSON_IsString(t) ? strdup(t->valuestring) : NULL;
  cJSON_Delete(j);
  return r;
}

static SP_UNUSED char *b64(const unsigned char *p, size_t n) {
  static const char A[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  char *o = malloc(n / 3 * 4 + 5), *q = o;
  size_t i = 0;
  for (; i + 3 <= n; i += 3, q += 4) {
    unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8 | p[i + 2];
    q[0] = A[v >> 18], q[1] = A[v >> 12 & 63], q[2] = A[v >> 6 & 63], q[3] = A[v & 63];
  }
  if (n - i == 1) {
    unsigned v = (unsigned)p[i] << 16;
    q[0] = A[v >> 18], q[1] = A[v >> 12 & 63], q[2] = '=', q[3] = '=', q += 4;
  } else if (n - i == 2) {
    unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8;
    q[0] = A[v >> 18], q[1] = A[v >> 12 & 63], q[2] = A[v >> 6 & 63], q[3] = '=', q += 4;
  }
  *q = '\0';
  return o;
}
