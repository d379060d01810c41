/* test_voice: live voice chat over a WebSocket (GET /v1/realtime) end to end, against `earshot serve` on the
 * bundled tiny checkpoint (tiny-a, CPU), with a small WebSocket client written here (raw frames, so that broken
 * ones can be sent too):
 *   - the handshake: the RFC 6455 example key gets the RFC's accept value; no Upgrade / another version -> 426,
 *     a bad key or no "Connection: Upgrade" -> 400, no API key -> 401 (the key as OpenAI's browser subprotocol
 *     works), another model -> 404, POST / HEAD -> 405, too many sessions -> 429;
 *   - a turn committed by the client (turn_detection null) at 16 kHz, appended as base64 events, and at
 *     22.05 kHz, sent as binary messages in odd-sized pieces: the greedy reply equals `earshot run` on the same
 *     audio as a WAV file (the resampling is the decoder's, sample for sample), and the events come in the
 *     OpenAI Realtime order;
 *   - the conversation goes on: a text follow-up's reply equals /v1/chat/completions with the same three messages;
 *   - server VAD: silence, speech, silence -> speech_started / speech_stopped where the speech is (to 60 ms),
 *     committed, a response created by itself; speech during a response cancels it (turn_detected);
 *   - a conversation over the context: truncation "disabled" fails the response, "auto" leaves the oldest item
 *     out of the prompt; past what the context could ever hold, the oldest item is deleted;
 *   - errors are `error` events and the session goes on (bad JSON, unknown event, empty commit, nothing to
 *     cancel, audio output, bad format, unknown fields, a second response, bad base64, unknown item); ping ->
 *     pong; protocol violations close with 1002 / 1007 / 1009; a close is answered;
 *   - a client that vanishes mid-response: the response is cancelled and its KV blocks are freed;
 *   - limits a client could push past: 210 items while a reply runs (200 kept, never the running reply), 560
 *     content parts (the oldest left out), a flood of events from a client that never reads (dropped), a
 *     message quoting a string cut inside a UTF-8 character (still valid UTF-8: the client's frame check passes);
 *   - the official `openai` client's Realtime API (tests/server/openai_realtime.py) gets the same reply;
 *   - scripts/voice-latency.py (the voice latency benchmark) runs two VAD turns and reports consistent times;
 *   - SIGTERM with two sessions generating: the short reply is delivered within the grace, the long one is cut,
 *     both close with 1001 and the server exits 0.
 * argv: EARSHOT SCRATCH_DIR (the official client runs with build/test-venv's Python: scripts/test-venv.sh)
 */
#define _GNU_SOURCE /* strcasestr */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "serve_proc.h"
#include "test_util.h"

#define AUTH "-H 'Authorization: Bearer " KEY "' "
#define SPEECH DATA "/speech-espeak-22k.wav"
/* a user text item, for sessions that need something to answer */
#define HELLO_ITEM                                                                                                     \
  "{\"type\":\"conversation.item.create\",\"item\":{\"type\":\"message\",\"role\":\"user\",\"content\":"               \
  "[{\"type\":\"input_text\",\"text\":\"Hello\"}]}}"

#define PYTHON ES_SOURCE_DIR "/build/test-venv/bin/python"
static int16_t *speech; /* the espeak recording's samples (22.05 kHz) */
static size_t n_speech;

/* ---- a small WebSocket client ---------------------------------------------------------------------------------- */

typedef struct {
  int fd;
  char *events; /* the types of the events received, space-separated, for order checks */
  size_t n_events;
  int close_code; /* the server's close frame (-1 none yet) */
} wsc_t;

/* Connects and sends a handshake for path with these extra header lines ("" for none); the response's status
 * lands in *status and its head in head (cap bytes). Returns the socket (the upgrade succeeded or not) or -1. */
static int wsc_handshake(const server_t *s, const char *method, const char *path, const char *headers, int *status,
                         char *head, size_t cap) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s->port)};
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    close(fd);
    return -1;
  }
  char req[2048];
  int n = snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n", method, path, headers);
  if (write(fd, req, (size_t)n) != n) {
    close(fd);
    return -1;
  }
  size_t got = 0;
  head[0] = '\0';
  while (got + 1 < cap && !strstr(head, "\r\n\r\n")) { /* byte by byte: nothing past the head is consumed */
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 30000) != 1 || read(fd, head + got, 1) != 1) break;
    head[++got] = '\0';
  }
  *status = strncmp(head, "HTTP/1.1 ", 9) == 0 ? atoi(head + 9) : 0;
  return fd;
}

#define WS_HEADERS(extra)                                                                                              \
  "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"                                         \
  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" extra

static int wsc_open(const server_t *s, wsc_t *c) {
  char head[4096];
  int status = 0;
  memset(c, 0, sizeof *c);
  c->close_code = -1;
  c->fd = wsc_handshake(s, "GET", "/v1/realtime?model=" MODEL, WS_HEADERS("Authorization: Bearer " KEY "\r\n"), &status,
                        head, sizeof head);
  if (c->fd < 0 || status != 101) {
    fprintf(stderr, "handshake: %d %s\n", status, head);
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    return -1;
  }
  return 0;
}

static void wsc_free(wsc_t *c) {
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  free(c->events);
  c->events = NULL;
}

/* One frame; masked as a client must (masked = 0 breaks the rule on purpose). */
static int wsc_frame(wsc_t *c, int opcode, const void *data, size_t n, int masked) {
  uint8_t h[14];
  size_t k = 0;
  h[k++] = (uint8_t)(0x80 | opcode);
  uint8_t m = masked ? 0x80 : 0;
  if (n < 126) {
    h[k++] = (uint8_t)(m | n);
  } else if (n < 65536) {
    h[k++] = m | 126, h[k++] = (uint8_t)(n >> 8), h[k++] = (uint8_t)n;
  } else {
    h[k++] = m | 127;
    for (int i = 7; i >= 0; i--) h[k++] = (uint8_t)((uint64_t)n >> (8 * i));
  }
  static const uint8_t mask[4] = {0x37, 0xfa, 0x21, 0x3d};
  if (masked) memcpy(h + k, mask, 4), k += 4;
  uint8_t *f = malloc(k + n);
  memcpy(f, h, k);
  for (size_t i = 0; i < n; i++) f[k + i] = ((const uint8_t *)data)[i] ^ (masked ? mask[i & 3] : 0);
  size_t off = 0;
  while (off < k + n) {
    ssize_t w = send(c->fd, f + off, k + n - off, MSG_NOSIGNAL);
    if (w <= 0) break;
    off += (size_t)w;
  }
  free(f);
  return off == k + n ? 0 : -1;
}

static int wsc_text(wsc_t *c, const char *json) {
  return wsc_frame(c, 1, json, strlen(json), 1);
}

static int read_full(int fd, void *buf, size_t n, int timeout_ms) {
  size_t got = 0;
  while (got < n) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, timeout_ms) != 1) return -1;
    ssize_t r = read(fd, (char *)buf + got, n - got);
    if (r <= 0) return -1;
    got += (size_t)r;
  }
  return 0;
}

/* The next frame from the server: its opcode (-1 on timeout / EOF) and payload (malloc'd, NUL-terminated). */
static int wsc_read(wsc_t *c, char **payload, size_t *len, int timeout_ms) {
  uint8_t h[2];
  *payload = NULL;
  *len = 0;
  if (read_full(c->fd, h, 2, timeout_ms)) return -1;
  uint64_t n = h[1] & 0x7f;
  if (h[1] & 0x80) return -1; /* a server must not mask */
  if (n == 126) {
    uint8_t e[2];
    if (read_full(c->fd, e, 2, timeout_ms)) return -1;
    n = (uint64_t)e[0] << 8 | e[1];
  } else if (n == 127) {
    uint8_t e[8];
    if (read_full(c->fd, e, 8, timeout_ms)) return -1;
    n = 0;
    for (int i = 0; i < 8; i++) n = n << 8 | e[i];
  }
  char *p = malloc(n + 1);
  if (!p || read_full(c->fd, p, n, timeout_ms)) {
    free(p);
    return -1;
  }
  p[n] = '\0';
  *payload = p;
  *len = n;
  int op = h[0] & 0x0f;
  if (op == 8) c->close_code = n >= 2 ? ((uint8_t)p[0] << 8 | (uint8_t)p[1]) : 1005;
  return op;
}

/* 1 if the n bytes at p are valid UTF-8 (RFC 3629: no overlongs, no surrogates, at most U+10FFFF). */
static int utf8_ok(const unsigned char *p, size_t n) {
  for (size_t i = 0; i < n;) {
    unsigned c = p[i];
    size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (!k || i + k > n) return 0;
    unsigned cp = k == 1 ? c : k == 2 ? c & 0x1f : k == 3 ? c & 0x0f : c & 0x07;
    for (size_t j = 1; j < k; j++) {
      if ((p[i + j] & 0xc0) != 0x80) return 0;
      cp = cp << 6 | (p[i + j] & 0x3f);
    }
    static const unsigned MIN[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < MIN[k] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    i += k;
  }
  return 1;
}

/* The next event (a text frame, parsed); NULL on timeout, EOF or a close frame. Records its type. Every text
 * frame the server sends must be valid UTF-8 (RFC 6455 §8.1). */
static cJSON *wsc_event(wsc_t *c, int timeout_ms) {
  for (;;) {
    char *p;
    size_t n;
    int op = wsc_read(c, &p, &n, timeout_ms);
    if (op != 1) {
      free(p);
      if (op == 9 || op == 10) continue; /* ping / pong */
      return NULL;
    }
    if (!utf8_ok((const unsigned char *)p, n)) T_CHECK(0, "a text frame that is not UTF-8: %.200s", p);
    cJSON *j = cJSON_Parse(p);
    free(p);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "type");
    if (cJSON_IsString(t)) {
      size_t k = strlen(t->valuestring);
      c->events = realloc(c->events, c->n_events + k + 2);
      memcpy(c->events + c->n_events, t->valuestring, k);
      c->n_events += k;
      c->events[c->n_events++] = ' ';
      c->events[c->n_events] = '\0';
    }
    return j;
  }
}

static const char *ev_type(const cJSON *e) {
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(e, "type");
  return cJSON_IsString(t) ? t->valuestring : "";
}

/* Events up to the first of this type (returned; the caller frees) or an error event (returned too). */
static cJSON *wsc_until(wsc_t *c, const char *type, int timeout_ms) {
  for (;;) {
    cJSON *e = wsc_event(c, timeout_ms);
    if (!e) return NULL;
    if (!strcmp(ev_type(e), type) || !strcmp(ev_type(e), "error")) return e;
    cJSON_Delete(e);
  }
}

/* wsc_open, then the session.created event every session starts with; -1 if either is missing. */
static int wsc_session(const server_t *s, wsc_t *c) {
  if (wsc_open(s, c)) return -1;
  cJSON *e = wsc_until(c, "session.created", 30000);
  int ok = e && !strcmp(ev_type(e), "session.created");
  cJSON_Delete(e);
  return ok ? 0 : -1;
}

static const char *jstr(const cJSON *o, const char *a, const char *b) {
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, a);
  if (b) x = cJSON_GetObjectItemCaseSensitive(x, b);
  return cJSON_IsString(x) ? x->valuestring : NULL;
}

static double jnum(const cJSON *o, const char *a, const char *b, const char *c) {
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, a);
  if (b) x = cJSON_GetObjectItemCaseSensitive(x, b);
  if (c) x = cJSON_GetObjectItemCaseSensitive(x, c);
  return cJSON_IsNumber(x) ? x->valuedouble : -1;
}

/* Sends an event and expects an error event with this code back (the session goes on). */
static void expect_error(wsc_t *c, const char *event, const char *code) {
  T_CHECK(wsc_text(c, event) == 0, "send %s", event);
  cJSON *e = wsc_until(c, "error", 30000);
  const char *got = jstr(e, "error", "code");
  T_CHECK(e && !strcmp(ev_type(e), "error") && got && !strcmp(got, code), "%.80s: expected error %s, got %s %s", event,
          code, ev_type(e), got ? got : "-");
  if (strstr(event, "\"event_id\":\"client-7\""))
    T_CHECK(jstr(e, "error", "event_id") && !strcmp(jstr(e, "error", "event_id"), "client-7"), "event_id echoed");
  cJSON_Delete(e);
}

/* ---- audio ---------------------------------------------------------------------------------------------------- */

/* Writes a mono 16-bit WAV of these samples at rate. */
static void write_wav(const char *path, const int16_t *x, size_t n, int rate) {
  FILE *f = fopen(path, "wb");
  uint32_t data = (uint32_t)(2 * n), riff = 36 + data, fmt = 16, br = (uint32_t)rate * 2, r = (uint32_t)rate;
  uint16_t pcm = 1, ch = 1, align = 2, bits = 16;
  fwrite("RIFF", 1, 4, f), fwrite(&riff, 4, 1, f), fwrite("WAVEfmt ", 1, 8, f), fwrite(&fmt, 4, 1, f);
  fwrite(&pcm, 2, 1, f), fwrite(&ch, 2, 1, f), fwrite(&r, 4, 1, f), fwrite(&br, 4, 1, f), fwrite(&align, 2, 1, f);
  fwrite(&bits, 2, 1, f), fwrite("data", 1, 4, f), fwrite(&data, 4, 1, f), fwrite(x, 2, n, f);
  fclose(f);
}

static int load_speech(void) {
  size_t n = 0;
  char *w = slurp(SPEECH, &n);
  if (!w || n < 44 || memcmp(w + 36, "data", 4) != 0) return -1; /* a canonical 44-byte header */
  n_speech = (n - 44) / 2;
  speech = malloc(2 * n_speech);
  memcpy(speech, w + 44, 2 * n_speech);
  free(w);
  return 0;
}

static const char *GREEDY = "\"temperature\":0,\"repetition_penalty\":1,\"ignore_eos\":true";

/* session.update: turn detection off, PCM at rate, greedy. */
static void manual_session(wsc_t *c, int rate) {
  char ev[512];
  snprintf(ev, sizeof ev,
           "{\"type\":\"session.update\",\"session\":{\"type\":\"realtime\",\"output_modalities\":[\"text\"],"
           "\"audio\":{\"input\":{\"format\":{\"type\":\"audio/pcm\",\"rate\":%d},\"turn_detection\":null}},%s}}",
           rate, GREEDY);
  wsc_text(c, ev);
  cJSON *e = wsc_until(c, "session.updated", 30000);
  T_CHECK(e && !strcmp(ev_type(e), "session.updated"), "session.updated (%s)", e ? ev_type(e) : "timeout");
  T_CHECK(
      e && cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(
               cJSON_GetObjectItemCaseSensitive(
                   cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(e, "session"), "audio"), "input"),
               "turn_detection")),
      "turn_detection is null now");
  cJSON_Delete(e);
}

/* response.create (max 20 tokens unless extra says) and the reply's text; *done gets the response.done event. */
static char *respond(wsc_t *c, const char *extra, cJSON **done) {
  char ev[512];
  snprintf(ev, sizeof ev, "{\"type\":\"response.create\",\"response\":{\"max_output_tokens\":20%s}}", extra);
  wsc_text(c, ev);
  char *text = calloc(1, 1);
  size_t n = 0;
  *done = NULL;
  for (;;) {
    cJSON *e = wsc_event(c, 60000);
    if (!e) break;
    if (!strcmp(ev_type(e), "response.output_text.delta")) {
      const char *d = jstr(e, "delta", NULL);
      size_t k = d ? strlen(d) : 0;
      text = realloc(text, n + k + 1);
      memcpy(text + n, d, k);
      text[n += k] = '\0';
    }
    if (!strcmp(ev_type(e), "response.done") || !strcmp(ev_type(e), "error")) {
      *done = e;
      break;
    }
    cJSON_Delete(e);
  }
  return text;
}

/* ---- the checks ----------------------------------------------------------------------------------------------- */

static void test_handshake(const server_t *s) {
  char head[4096];
  int st = 0, fd;
  fd = wsc_handshake(s, "GET", "/v1/realtime", WS_HEADERS("Authorization: Bearer " KEY "\r\n"), &st, head, sizeof head);
  T_CHECK(st == 101, "handshake: %d %s", st, head);
  T_CHECK(strcasestr(head, "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") != NULL, "RFC 6455 accept: %s", head);
  T_CHECK(strcasestr(head, "Upgrade: websocket") != NULL, "Upgrade header: %s", head);
  wsc_t c = {.fd = fd, .close_code = -1};
  cJSON *e = wsc_event(&c, 30000);
  T_CHECK(e && !strcmp(ev_type(e), "session.created"), "session.created first (%s)", e ? ev_type(e) : "timeout");
  const char *sid = jstr(cJSON_GetObjectItemCaseSensitive(e, "session"), "id", NULL);
  T_CHECK(sid && !strncmp(sid, "sess_", 5), "session id %s", sid ? sid : "-");
  char *txt = cJSON_PrintUnformatted(e);
  T_CHECK(txt && strstr(txt, "\"format\":{\"type\":\"audio/pcm\",\"rate\":24000}") &&
              strstr(txt, "\"turn_detection\":{\"type\":\"server_vad\",\"threshold\":0.5,\"prefix_padding_ms\":300,"
                          "\"silence_duration_ms\":500") &&
              strstr(txt, "\"output_modalities\":[\"text\"]") && strstr(txt, "\"model\":\"" MODEL "\""),
          "session defaults: %s", txt);
  free(txt);
  cJSON_Delete(e);
  /* the close handshake: ours is answered with the server's */
  wsc_frame(&c, 8, "\x03\xe8", 2, 1);
  char *p;
  size_t n;
  int op = wsc_read(&c, &p, &n, 10000);
  T_CHECK(op == 8 && c.close_code == 1000, "close answered: op %d code %d", op, c.close_code);
  free(p);
  wsc_free(&c);

  /* a browser cannot set headers: OpenAI's clients send the key as a subprotocol, and "realtime" is chosen */
  fd = wsc_handshake(s, "GET", "/v1/realtime",
                     WS_HEADERS("Sec-WebSocket-Protocol: realtime, openai-insecure-api-key." KEY "\r\n"), &st, head,
                     sizeof head);
  T_CHECK(st == 101 && strcasestr(head, "Sec-WebSocket-Protocol: realtime\r\n"), "subprotocol key: %d %s", st, head);
  if (fd >= 0) close(fd);

  struct {
    const char *method, *path, *headers;
    int status;
    const char *in_body;
  } bad[] = {
      {"GET", "/v1/realtime", "Authorization: Bearer " KEY "\r\n", 426, "WebSocket endpoint"},
      {"GET", "/v1/realtime",
       "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: "
       "dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer " KEY "\r\n",
       426, "version 13"},
      {"GET", "/v1/realtime",
       "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: abc\r\n"
       "Authorization: Bearer " KEY "\r\n",
       400, "Sec-WebSocket-Key"},
      {"GET", "/v1/realtime", WS_HEADERS(""), 401, "Unauthorized"},
      {"GET", "/v1/realtime?model=other", WS_HEADERS("Authorization: Bearer " KEY "\r\n"), 404, "other"},
      {"GET", "/v1/realtime?intent=transcription", WS_HEADERS("Authorization: Bearer " KEY "\r\n"), 400, "intent"},
      {"POST", "/v1/realtime", WS_HEADERS("Authorization: Bearer " KEY "\r\nContent-Length: 0\r\n"), 405, "GET"},
      {"HEAD", "/v1/realtime", WS_HEADERS("Authorization: Bearer " KEY "\r\n"), 405, ""},
      {"GET", "/v1/realtime",
       "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
       "Authorization: Bearer " KEY "\r\n",
       400, "Connection: Upgrade"},
      {"GET", "/v1/realtime", WS_HEADERS("Sec-WebSocket-Protocol: realtime, openai-insecure-api-key.wrong\r\n"), 401,
       "Unauthorized"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    fd = wsc_handshake(s, bad[i].method, bad[i].path, bad[i].headers, &st, head, sizeof head);
    char body[2048] = "";
    if (fd >= 0) {
      struct pollfd pf = {.fd = fd, .events = POLLIN};
      size_t got = 0;
      while (got + 1 < sizeof body && poll(&pf, 1, 2000) == 1) {
        ssize_t r = read(fd, body + got, sizeof body - 1 - got);
        if (r <= 0) break;
        got += (size_t)r;
        body[got] = '\0';
        if (strchr(body, '}') && body[got - 1] == '}') break;
      }
      close(fd);
    }
    T_CHECK(st == bad[i].status, "bad handshake %zu: %d, expected %d", i, st, bad[i].status);
    if (strcmp(bad[i].method, "HEAD") != 0) /* a HEAD answer has no body */
      T_CHECK(strstr(body, "\"error\"") && strstr(body, bad[i].in_body), "bad handshake %zu body: %s", i, body);
    if (bad[i].status == 426)
      T_CHECK(strcasestr(head, "Sec-WebSocket-Version: 13") != NULL, "426 names version 13: %s", head);
  }
}

static char *wav16, *wav22; /* the speech as 16 kHz (the samples as they are) and as the 22.05 kHz original */
static char *expect16, *expect22;

static void test_manual_turns(const server_t *s) {
  wsc_t c;
  T_REQUIRE(wsc_session(s, &c) == 0, "connect");
  manual_session(&c, 16000);
  /* 16 kHz, base64 appends of 0.2 s */
  for (size_t i = 0; i < n_speech; i += 3200) {
    size_t k = n_speech - i < 3200 ? n_speech - i : 3200;
    char *enc = b64((const unsigned char *)(speech + i), 2 * k);
    char *ev = malloc(strlen(enc) + 64);
    sprintf(ev, "{\"type\":\"input_audio_buffer.append\",\"audio\":\"%s\"}", enc);
    wsc_text(&c, ev);
    free(enc), free(ev);
  }
  wsc_text(&c, "{\"type\":\"input_audio_buffer.commit\"}");
  cJSON *e = wsc_until(&c, "conversation.item.done", 30000);
  T_CHECK(e && !strcmp(ev_type(e), "conversation.item.done"), "commit: %s", e ? ev_type(e) : "timeout");
  cJSON_Delete(e);
  cJSON *done = NULL;
  char *text = respond(&c, "", &done);
  T_CHECK(expect16 && !strcmp(text, expect16), "16 kHz turn: '%s' != earshot run '%s'", text, expect16);
  T_CHECK(done && !strcmp(ev_type(done), "response.done"), "response.done (%s)", done ? ev_type(done) : "timeout");
  const cJSON *r = cJSON_GetObjectItemCaseSensitive(done, "response");
  T_CHECK(jstr(r, "status", NULL) && !strcmp(jstr(r, "status", NULL), "incomplete") &&
              !strcmp(jstr(cJSON_GetObjectItemCaseSensitive(r, "status_details"), "reason", NULL), "max_output_tokens"),
          "20 tokens: incomplete / max_output_tokens");
  T_CHECK(jnum(r, "usage", "output_tokens", NULL) == 20 && jnum(r, "usage", "input_token_details", "audio_tokens") > 0,
          "usage");
  const cJSON *item = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r, "output"), 0);
  const char *itext = jstr(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(item, "content"), 0), "text", NULL);
  T_CHECK(itext && !strcmp(itext, text), "the output item holds the reply");
  T_CHECK(c.events &&
              strstr(c.events, "input_audio_buffer.committed conversation.item.added conversation.item.done "
                               "response.created response.output_item.added conversation.item.added "
                               "response.content_part.added response.output_text.delta") &&
              strstr(c.events, "response.output_text.done response.content_part.done response.output_item.done "
                               "conversation.item.done response.done"),
          "event order: %s", c.events);
  char *first = text;
  cJSON_Delete(done);

  /* the conversation goes on: a text question about the same audio, answered from all three messages */
  wsc_text(&c, "{\"type\":\"conversation.item.create\",\"item\":{\"type\":\"message\",\"role\":\"user\",\"content\":"
               "[{\"type\":\"input_text\",\"text\":\"Say it again.\"}]}}");
  cJSON_Delete(wsc_until(&c, "conversation.item.done", 30000));
  text = respond(&c, "", &done);
  cJSON_Delete(done);
  size_t wn = 0;
  char *wav = slurp(wav16, &wn);
  char *enc = b64((const unsigned char *)wav, wn);
  cJSON *msgs = cJSON_CreateArray(), *u = cJSON_CreateObject(), *ua = cJSON_CreateArray(), *p = cJSON_CreateObject();
  cJSON_AddStringToObject(p, "type", "input_audio");
  cJSON *ia = cJSON_AddObjectToObject(p, "input_audio");
  cJSON_AddStringToObject(ia, "data", enc), cJSON_AddStringToObject(ia, "format", "wav");
  cJSON_AddItemToArray(ua, p);
  cJSON_AddStringToObject(u, "role", "user"), cJSON_AddItemToObject(u, "content", ua), cJSON_AddItemToArray(msgs, u);
  cJSON *as = cJSON_CreateObject();
  cJSON_AddStringToObject(as, "role", "assistant"), cJSON_AddStringToObject(as, "content", first);
  cJSON_AddItemToArray(msgs, as);
  cJSON *u2 = cJSON_CreateObject();
  cJSON_AddStringToObject(u2, "role", "user"), cJSON_AddStringToObject(u2, "content", "Say it again.");
  cJSON_AddItemToArray(msgs, u2);
  cJSON *body = cJSON_CreateObject();
  cJSON_AddStringToObject(body, "model", MODEL), cJSON_AddItemToObject(body, "messages", msgs);
  cJSON_AddNumberToObject(body, "temperature", 0), cJSON_AddNumberToObject(body, "repetition_penalty", 1);
  cJSON_AddNumberToObject(body, "max_tokens", 20), cJSON_AddBoolToObject(body, "ignore_eos", 1);
  char path[1200], args[1400], *resp = NULL;
  snprintf(path, sizeof path, "%s/followup.json", SCRATCH);
  char *js = cJSON_PrintUnformatted(body);
  FILE *f = fopen(path, "wb");
  fputs(js, f), fclose(f);
  snprintf(args, sizeof args, AUTH "-d @%s", path);
  T_CHECK(http(s, "/v1/chat/completions", args, &resp, NULL) == 200, "follow-up chat: %s", resp);
  cJSON *rj = cJSON_Parse(resp);
  const char *want = jstr(cJSON_GetObjectItemCaseSensitive(
                              cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(rj, "choices"), 0), "message"),
                          "content", NULL);
  T_CHECK(want && !strcmp(text, want), "follow-up: voice '%s' != chat '%s'", text, want ? want : "-");
  cJSON_Delete(rj), cJSON_Delete(body), free(js), free(resp), free(enc), free(wav), free(text), free(first);
  wsc_free(&c);

  /* 22.05 kHz as binary messages of odd sizes (a sample split across two messages) */
  T_REQUIRE(wsc_session(s, &c) == 0, "connect");
  manual_session(&c, 22050);
  const uint8_t *bytes = (const uint8_t *)speech;
  for (size_t i = 0, k = 777; i < 2 * n_speech; i += k, k = k * 7 % 5003 + 1)
    wsc_frame(&c, 2, bytes + i, i + k > 2 * n_speech ? 2 * n_speech - i : k, 1);
  wsc_text(&c, "{\"type\":\"input_audio_buffer.commit\"}");
  cJSON_Delete(wsc_until(&c, "conversation.item.done", 30000));
  text = respond(&c, "", &done);
  T_CHECK(expect22 && !strcmp(text, expect22), "22.05 kHz turn: '%s' != earshot run '%s'", text, expect22);
  free(text), cJSON_Delete(done);
  wsc_free(&c);
}

/* Sends ms of silence (or of the speech from sample *at on) at 16 kHz, as binary messages of 100 ms. */
static void send_audio(wsc_t *c, int ms, int speak, size_t *at) {
  int16_t buf[1600];
  for (int sent = 0; sent < ms; sent += 100) {
    for (int i = 0; i < 1600; i++) buf[i] = speak && *at < n_speech ? speech[(*at)++] : 0;
    wsc_frame(c, 2, buf, sizeof buf, 1);
  }
}

static void test_vad(const server_t *s) {
  wsc_t c;
  T_REQUIRE(wsc_session(s, &c) == 0, "connect");
  char ev[512];
  snprintf(ev, sizeof ev,
           "{\"type\":\"session.update\",\"session\":{\"audio\":{\"input\":{\"format\":{\"type\":\"audio/pcm\","
           "\"rate\":16000},\"turn_detection\":{\"type\":\"server_vad\"}}},\"max_output_tokens\":5,%s}}",
           GREEDY);
  wsc_text(&c, ev);
  cJSON_Delete(wsc_until(&c, "session.updated", 30000));
  size_t at = 0;
  send_audio(&c, 1000, 0, &at);
  send_audio(&c, (int)(n_speech / 16 / 100 + 1) * 100, 1, &at); /* the recording, read as 16 kHz: 8.0 s */
  send_audio(&c, 1500, 0, &at);
  cJSON *st = wsc_until(&c, "input_audio_buffer.speech_started", 30000);
  cJSON *sp = wsc_until(&c, "input_audio_buffer.speech_stopped", 30000);
  double t0 = jnum(st, "audio_start_ms", NULL, NULL), t1 = jnum(sp, "audio_end_ms", NULL, NULL);
  /* the recording's speech runs from its start (its first 50 ms are quiet) to 5.417 s at 22.05 kHz: to 7.465 s
   * when read as 16 kHz */
  T_CHECK(t0 >= 1000 && t0 < 1100, "speech started at %.0f ms", t0);
  T_CHECK(fabs(t1 - (1000 + 7465)) < 60, "speech stopped at %.0f ms", t1);
  const char *id0 = jstr(st, "item_id", NULL), *id1 = jstr(sp, "item_id", NULL);
  T_CHECK(id0 && id1 && !strcmp(id0, id1), "one item id for the turn");
  cJSON *cm = wsc_until(&c, "input_audio_buffer.committed", 30000);
  T_CHECK(cm && id0 && jstr(cm, "item_id", NULL) && !strcmp(jstr(cm, "item_id", NULL), id0), "committed the turn");
  cJSON *done = wsc_until(&c, "response.done", 60000);
  const cJSON *r = cJSON_GetObjectItemCaseSensitive(done, "response");
  T_CHECK(done && !strcmp(ev_type(done), "response.done") && jnum(r, "usage", "output_tokens", NULL) == 5,
          "a response by itself (%s)", done ? ev_type(done) : "timeout");
  /* the turn's audio: from 300 ms before the start to 500 ms after the stop (to a 10 ms frame) */
  double turn_s = (t1 + 500 - (t0 - 300)) / 1000.0, tokens = jnum(r, "usage", "input_token_details", "audio_tokens");
  T_CHECK(fabs(tokens - turn_s * 25) <= 2, "%.0f audio tokens for a %.2f s turn", tokens, turn_s);
  cJSON_Delete(st), cJSON_Delete(sp), cJSON_Delete(cm), cJSON_Delete(done);

  /* barge-in: speech while a long response runs cancels it */
  wsc_text(&c, "{\"type\":\"response.create\",\"response\":{\"max_output_tokens\":3000}}");
  cJSON *cr = wsc_until(&c, "response.created", 30000);
  T_CHECK(cr && !strcmp(ev_type(cr), "response.created"), "long response created");
  cJSON_Delete(cr);
  at = 0;
  send_audio(&c, 300, 1, &at);
  done = wsc_until(&c, "response.done", 60000);
  r = cJSON_GetObjectItemCaseSensitive(done, "response");
  T_CHECK(jstr(r, "status", NULL) && !strcmp(jstr(r, "status", NULL), "cancelled") &&
              jstr(cJSON_GetObjectItemCaseSensitive(r, "status_details"), "reason", NULL) &&
              !strcmp(jstr(cJSON_GetObjectItemCaseSensitive(r, "status_details"), "reason", NULL), "turn_detected"),
          "barge-in cancels: %s", jstr(r, "status", NULL) ? jstr(r, "status", NULL) : "-");
  T_CHECK(jnum(r, "usage", "output_tokens", NULL) < 3000, "cancelled early");
  cJSON_Delete(done);
  wsc_free(&c);
}

/* conversation.item.create with n seconds of the speech (tiled) as a user audio item. */
static void create_audio_item(wsc_t *c, const char *id, int seconds) {
  size_t n = (size_t)seconds * 16000;
  int16_t *x = malloc(2 * n);
  for (size_t i = 0; i < n; i++) x[i] = speech[i % n_speech];
  char *enc = b64((const unsigned char *)x, 2 * n);
  char *ev = malloc(strlen(enc) + 256);
  sprintf(ev,
          "{\"type\":\"conversation.item.create\",\"item\":{\"id\":\"%s\",\"type\":\"message\",\"role\":\"user\","
          "\"content\":[{\"type\":\"input_audio\",\"audio\":\"%s\"}]}}",
          id, enc);
  wsc_text(c, ev);
  free(x), free(enc), free(ev);
}

/* The context (--max-model-len 2048) holds 81 s of audio: three 27 s items overflow it (2025 audio tokens). */
static void test_context_limits(const server_t *s) {
  wsc_t c;
  T_REQUIRE(wsc_session(s, &c) == 0, "connect");
  manual_session(&c, 16000);
  const char *ids[] = {"item_a", "item_b", "item_c"};
  for (int i = 0; i < 3; i++) {
    create_audio_item(&c, ids[i], 27);
    cJSON *e = wsc_until(&c, "conversation.item.done", 30000);
    T_CHECK(e && !strcmp(ev_type(e), "conversation.item.done"), "item %s: %s", ids[i], e ? ev_type(e) : "timeout");
    cJSON_Delete(e);
  }
  wsc_text(&c, "{\"type\":\"session.update\",\"session\":{\"truncation\":\"disabled\"}}");
  cJSON_Delete(wsc_until(&c, "session.updated", 30000));
  expect_error(&c, "{\"type\":\"response.create\",\"response\":{\"max_output_tokens\":5}}", "context_length_exceeded");
  wsc_text(&c, "{\"type\":\"session.update\",\"session\":{\"truncation\":\"auto\"}}");
  cJSON_Delete(wsc_until(&c, "session.updated", 30000));
  cJSON *done = NULL;
  free(respond(&c, ",\"max_output_tokens\":5", &done));
  const cJSON *r = cJSON_GetObjectItemCaseSensitive(done, "response");
  T_CHECK(jnum(r, "usage", "input_token_details", "audio_tokens") == 2 * 675,
          "truncation auto: the oldest audio left out (%.0f audio tokens)",
          jnum(r, "usage", "input_token_details", "audio_tokens"));
  cJSON_Delete(done);
  /* a fourth 27 s item: the conversation keeps at most what the context could hold, the oldest item goes */
  create_audio_item(&c, "item_d", 27);
  cJSON *del = wsc_until(&c, "conversation.item.deleted", 30000);
  T_CHECK(del && jstr(del, "item_id", NULL) && !strcmp(jstr(del, "item_id", NULL), "item_a"), "item_a deleted: %s",
          del ? ev_type(del) : "timeout");
  cJSON_Delete(del);
  wsc_free(&c);
}

static void test_errors(const server_t *s) {
  wsc_t c;
  T_REQUIRE(wsc_session(s, &c) == 0, "connect");
  expect_error(&c, "{not json", "invalid_json");
  expect_error(&c, "{\"type\":\"no.such.event\",\"event_id\":\"client-7\"}", "unknown_event");
  expect_error(&c, "{\"event_id\":\"x\"}", "invalid_event");
  expect_error(&c, "{\"type\":\"input_audio_buffer.commit\"}", "input_audio_buffer_commit_empty");
  expect_error(&c, "{\"type\":\"response.cancel\"}", "response_cancel_not_active");
  expect_error(&c, "{\"type\":\"session.update\",\"session\":{\"output_modalities\":[\"audio\"]}}", "invalid_value");
  expect_error(&c,
               "{\"type\":\"session.update\",\"session\":{\"audio\":{\"input\":{\"format\":{\"type\":\"audio/pcm\","
               "\"rate\":96000}}}}}",
               "invalid_value");
  expect_error(&c,
               "{\"type\":\"session.update\",\"session\":{\"audio\":{\"input\":{\"turn_detection\":{\"type\":"
               "\"semantic_vad\"}}}}}",
               "unsupported");
  expect_error(&c, "{\"type\":\"session.update\",\"session\":{\"voicee\":1}}", "unknown_parameter");
  expect_error(&c, "{\"type\":\"session.update\",\"session\":{\"temperature\":-1}}", "invalid_value");
  expect_error(&c, "{\"type\":\"session.update\",\"session\":{\"model\":\"other\"}}", "invalid_value");
  expect_error(&c, "{\"type\":\"input_audio_buffer.append\",\"audio\":\"@@@\"}", "invalid_value");
  expect_error(&c, "{\"type\":\"conversation.item.delete\",\"item_id\":\"nope\"}", "item_not_found");
  expect_error(&c, "{\"type\":\"conversation.item.create\",\"item\":{\"type\":\"function_call\"}}", "unsupported");
  expect_error(&c, "{\"type\":\"response.create\",\"response\":{\"conversation\":\"none\"}}", "unsupported");
  /* a failed update changed nothing: the format is still 24 kHz */
  wsc_text(&c, "{\"type\":\"session.update\",\"session\":{}}");
  cJSON *e = wsc_until(&c, "session.updated", 30000);
  char *txt = cJSON_PrintUnformatted(e);
  T_CHECK(txt && strstr(txt, "\"rate\":24000") && strstr(txt, "server_vad"), "unchanged session: %s", txt);
  free(txt), cJSON_Delete(e);
  /* one response at a time; then cancel it */
  wsc_text(&c, HELLO_ITEM);
  cJSON_Delete(wsc_until(&c, "conversation.item.done", 30000));
  wsc_text(&c, "{\"type\":\"response.create\",\"response\":{\"max_output_tokens\":3000,\"ignore_eos\":true}}");
  cJSON_Delete(wsc_until(&c, "response.created", 30000));
  expect_error(&c, "{\"type\":\"response.create\"}", "conversation_already_has_active_response");
  wsc_text(&c, "{\"type\":\"response.cancel\"}");
  e = wsc_until(&c, "response.done", 60000);
  const cJSON *r = cJSON_GetObjectItemCaseSensitive(e, "response");
  T_CHECK(jstr(r, "status", NULL) && !strcmp(jstr(r, "status", NULL), "cancelled") &&
              !strcmp(jstr(cJSON_GetObjectItemCaseSensitive(r, "status_details"), "reason", NULL), "client_cancelled"),
          "response.cancel: %s", jstr(r, "status", NULL) ? jstr(r, "status", NULL) : "-");
  cJSON_Delete(e);
  /* a reply cancelled before its first token (create and cancel in one write, usually): an empty reply is not
   * kept as an empty assistant message; its item is deleted after response.done */
  int empties = 0;
  for (int round = 0; round < 5; round++) {
    static const char *both[] = {"{\"type\":\"response.create\",\"response\":{\"max_output_tokens\":3000}}",
                                 "{\"type\":\"response.cancel\"}"};
    char buf[512];
    size_t k = 0;
    for (int m = 0; m < 2; m++) { /* two masked frames, one send */
      size_t n = strlen(both[m]);
      buf[k++] = (char)0x81, buf[k++] = (char)(0x80 | n), buf[k++] = 0, buf[k++] = 0, buf[k++] = 0, buf[k++] = 0;
      memcpy(buf + k, both[m], n), k += n; /* a zero mask: the payload as it is */
    }
    T_CHECK(send(c.fd, buf, k, MSG_NOSIGNAL) == (ssize_t)k, "send create+cancel");
    e = wsc_until(&c, "response.done", 60000);
    const cJSON *out = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(e, "response"), "output");
    const cJSON *item = cJSON_GetArrayItem(out, 0);
    const char *reply = jstr(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(item, "content"), 0), "text", NULL);
    char id[64];
    snprintf(id, sizeof id, "%s", jstr(item, "id", NULL) ? jstr(item, "id", NULL) : "");
    int empty = reply && !reply[0];
    cJSON_Delete(e);
    if (empty) {
      empties++;
      e = wsc_until(&c, "conversation.item.deleted", 30000);
      T_CHECK(jstr(e, "item_id", NULL) && !strcmp(jstr(e, "item_id", NULL), id), "the empty reply %s is deleted", id);
      cJSON_Delete(e);
    }
  }
  if (!empties) fprintf(stderr, "note: every cancelled reply had a token already; the empty-reply path did not run\n");
  /* ping -> pong with the same payload */
  wsc_frame(&c, 9, "abc", 3, 1);
  char *p = NULL;
  size_t n;
  int op;
  while ((op = wsc_read(&c, &p, &n, 10000)) == 1) free(p); /* events still arriving */
  T_CHECK(op == 10 && n == 3 && !memcmp(p, "abc", 3), "pong: op %d", op);
  free(p);
  wsc_free(&c);

  /* protocol violations close the connection with the right code */
  struct {
    int opcode, masked;
    size_t len;
    int code;
  } viol[] = {{1, 0, 10, 1002}, {1, 1, 4, 1007}, {2, 1, (size_t)17 << 20, 1009}};
  for (size_t i = 0; i < sizeof viol / sizeof viol[0]; i++) {
    T_REQUIRE(wsc_session(s, &c) == 0, "connect");
    char *data = calloc(1, viol[i].len);
    if (viol[i].code == 1007) memcpy(data, "\xc3\x28\xa0\xa1", 4);
    wsc_frame(&c, viol[i].opcode, data, viol[i].len, viol[i].masked);
    free(data);
    while ((op = wsc_read(&c, &p, &n, 20000)) >= 0 && op != 8) free(p);
    free(p);
    T_CHECK(op == 8 && c.close_code == viol[i].code, "violation %zu: close %d, expected %d", i, c.close_code,
            viol[i].code);
    wsc_free(&c);
  }
}

static void test_vanish(const server_t *s) {
  double cancelled0 = metric(s, "earshot:engine_requests_cancelled_total");
  wsc_t c;
  T_REQUIRE(wsc_session(s, &c) == 0, "connect");
  wsc_text(&c, HELLO_ITEM);
  wsc_text(&c, "{\"type\":\"response.create\",\"response\":{\"max_output_tokens\":3000,\"ignore_eos\":true}}");
  cJSON *d = wsc_until(&c, "response.output_text.delta", 30000);
  T_CHECK(d && !strcmp(ev_type(d), "response.output_text.delta"), "generating");
  cJSON_Delete(d);
  wsc_free(&c); /* gone without a close frame */
  int ok = 0;
  for (double t0 = es_now_s(); es_now_s() - t0 < 30 && !ok; usleep(100000))
    ok = metric(s, "earshot:engine_requests_cancelled_total") >= cancelled0 + 1 &&
         metric(s, "vllm:num_requests_running") == 0 && metric(s, "vllm:kv_cache_usage_perc") == 0 &&
         metric(s, "earshot:voice_sessions") == 0;
  T_CHECK(ok, "a vanished client's response is cancelled, its KV blocks freed, its session gone");
  T_CHECK(metric(s, "earshot:voice_sessions_total") >= 5, "sessions counted");
}

static void test_openai_client(const server_t *s) {
  char pcm[1200], cmd[4096], out[1 << 16];
  if (access(PYTHON, X_OK) != 0) {
    T_CHECK(0, "%s is missing: run scripts/test-venv.sh (scripts/test.sh does, stage venv)", PYTHON);
    return;
  }
  snprintf(pcm, sizeof pcm, "%s/speech16k.pcm", SCRATCH);
  FILE *f = fopen(pcm, "wb");
  fwrite(speech, 2, n_speech, f);
  fclose(f);
  snprintf(cmd, sizeof cmd, "%s %s/tests/server/openai_realtime.py http://127.0.0.1:%d/v1 %s %s %s 2>&1", PYTHON,
           ES_SOURCE_DIR, s->port, KEY, MODEL, pcm);
  int rc = sh(cmd, out, sizeof out);
  T_CHECK(rc == 0, "openai_realtime.py: %s", out);
  cJSON *j = cJSON_Parse(strrchr(out, '{') ? out : "{}");
  for (char *p = out; !j && (p = strchr(p + 1, '{'));) j = cJSON_Parse(p);
  const char *t = jstr(j, "text", NULL), *second = jstr(j, "second_status", NULL);
  T_CHECK(t && expect16 && !strcmp(t, expect16), "openai realtime '%s' != earshot run '%s'", t ? t : "-", expect16);
  T_CHECK(second && (!strcmp(second, "cancelled") || !strcmp(second, "incomplete")), "second response: %s",
          second ? second : "-");
  cJSON_Delete(j);
}

/* Reads frames until the server's close; *done_status gets the last response.done's status ("" if none). */
static int read_to_close(wsc_t *c, char *done_status, size_t cap) {
  char *p;
  size_t n;
  int op;
  done_status[0] = '\0';
  while ((op = wsc_read(c, &p, &n, 30000)) >= 0 && op != 8) {
    cJSON *j = op == 1 ? cJSON_Parse(p) : NULL;
    if (j && !strcmp(ev_type(j), "response.done"))
      snprintf(done_status, cap, "%s", jstr(cJSON_GetObjectItemCaseSensitive(j, "response"), "status", NULL));
    cJSON_Delete(j);
    free(p);
  }
  free(p);
  return op;
}

/* scripts/voice-latency.py (the voice-chat latency benchmark) runs two VAD turns against the server and reports
 * sane numbers: every turn answered, events in order, the second prompt holding the first turn too. */
static void test_latency_script(const server_t *s) {
  char cmd[4096], out[1 << 16];
  snprintf(cmd, sizeof cmd,
           "%s %s/scripts/voice-latency.py --url ws://127.0.0.1:%d/v1/realtime --api-key %s --audio %s --turns 2 "
           "--speed 0 --max-output-tokens 8 --json 2>&1",
           PYTHON, ES_SOURCE_DIR, s->port, KEY, wav16);
  T_CHECK(sh(cmd, out, sizeof out) == 0, "voice-latency.py: %s", out);
  cJSON *j = cJSON_Parse(out);
  const cJSON *turns = cJSON_GetObjectItemCaseSensitive(j, "turns");
  T_CHECK(cJSON_GetArraySize(turns) == 2, "two turns: %s", out);
  double in_prev = 0;
  for (int i = 0; i < cJSON_GetArraySize(turns); i++) {
    const cJSON *t = cJSON_GetArrayItem(turns, i);
    double stop = jnum(t, "stop_ms", NULL, NULL), first = jnum(t, "first_ms", NULL, NULL),
           done = jnum(t, "done_ms", NULL, NULL), in = jnum(t, "input_tokens", NULL, NULL),
           outk = jnum(t, "output_tokens", NULL, NULL);
    T_CHECK(stop >= 0 && first >= stop && done >= first && outk >= 1 && outk <= 8 && in > in_prev,
            "turn %d: stop %.0f first %.0f done %.0f ms, %.0f in / %.0f out", i + 1, stop, first, done, in, outk);
    in_prev = in;
  }
  cJSON_Delete(j);
}

/* A second server: two sessions at most; SIGTERM while both generate. The short reply (20 tokens) finishes within
 * the grace (8 s, ample on a loaded sanitizer build) and is delivered before the 1001 close; the long one (8000
 * tokens) is cut at the grace. */
static void test_limit_and_shutdown(void) {
  server_t s;
  if (server_start(&s, "serve-voice-2", "--max-voice-sessions 2 --shutdown-grace 8 --quiet") != 0) {
    T_CHECK(0, "second server start");
    if (s.pid > 0) server_stop(&s, 10, NULL);
    return;
  }
  wsc_t a, b;
  T_REQUIRE(wsc_session(&s, &a) == 0 && wsc_session(&s, &b) == 0, "connect two");
  char head[4096];
  int st = 0;
  int fd =
      wsc_handshake(&s, "GET", "/v1/realtime", WS_HEADERS("Authorization: Bearer " KEY "\r\n"), &st, head, sizeof head);
  T_CHECK(st == 429 && strcasestr(head, "Retry-After"), "a third session: %d %s", st, head);
  if (fd >= 0) close(fd);
  wsc_text(&a, HELLO_ITEM), wsc_text(&b, HELLO_ITEM);
  wsc_text(&a, "{\"type\":\"response.create\",\"response\":{\"max_output_tokens\":8000,\"ignore_eos\":true}}");
  wsc_text(&b, "{\"type\":\"response.create\",\"response\":{\"max_output_tokens\":20,\"ignore_eos\":true}}");
  cJSON_Delete(wsc_until(&a, "response.output_text.delta", 30000));
  cJSON_Delete(wsc_until(&b, "response.created", 30000));
  double took = 0;
  kill(s.pid, SIGTERM);
  char sa[32], sb[32];
  int opb = read_to_close(&b, sb, sizeof sb);
  T_CHECK(opb == 8 && b.close_code == 1001, "short reply's session closes with 1001: op %d code %d", opb, b.close_code);
  T_CHECK(!strcmp(sb, "incomplete"), "the short reply finished within the grace (response.done '%s')", sb);
  int opa = read_to_close(&a, sa, sizeof sa);
  T_CHECK(opa == 8 && a.close_code == 1001, "long reply's session closes with 1001: op %d code %d", opa, a.close_code);
  T_CHECK(!strcmp(sa, "cancelled"), "the long reply was cut at the grace, and told so: response.done '%s'", sa);
  wsc_frame(&a, 8, "\x03\xe9", 2, 1), wsc_frame(&b, 8, "\x03\xe9", 2, 1);
  int status = -1; /* no second SIGTERM: that one would mean "quit now" */
  for (double t0 = es_now_s(); es_now_s() - t0 < 30 && status < 0; usleep(20000)) {
    int w = 0;
    if (waitpid(s.pid, &w, WNOHANG) == s.pid) status = WIFEXITED(w) ? WEXITSTATUS(w) : 128 + WTERMSIG(w);
    took = es_now_s() - t0;
  }
  if (status < 0) server_stop(&s, 5, NULL);
  T_CHECK(status == 0, "exit status %d after SIGTERM (%.1f s more)", status, took);
  wsc_free(&a), wsc_free(&b);
}

/* Limits a client could push past: many items while a reply runs, items with many parts, a flood of events
 * from a client that never reads, strings cut inside a UTF-8 character. */
static void test_abuse(const server_t *s) {
  wsc_t c;
  T_REQUIRE(wsc_session(s, &c) == 0, "connect");
  /* a long reply, then 210 items: the conversation keeps 200, the running reply is never the one deleted */
  wsc_text(&c, HELLO_ITEM);
  wsc_text(&c, "{\"type\":\"response.create\",\"response\":{\"max_output_tokens\":3000,\"ignore_eos\":true}}");
  cJSON *e = wsc_until(&c, "response.created", 30000);
  const char *rid = jstr(cJSON_GetObjectItemCaseSensitive(e, "response"), "id", NULL);
  char resp_id[64];
  snprintf(resp_id, sizeof resp_id, "%s", rid ? rid : "");
  cJSON_Delete(e);
  for (int i = 0; i < 210; i++)
    wsc_text(&c, "{\"type\":\"conversation.item.create\",\"item\":{\"type\":\"message\",\"role\":\"user\","
                 "\"content\":[{\"type\":\"input_text\",\"text\":\"more\"}]}}");
  wsc_text(&c, "{\"type\":\"response.cancel\"}");
  int deleted = 0, errors = 0;
  cJSON *done = NULL;
  while (!done && (e = wsc_event(&c, 60000))) {
    if (!strcmp(ev_type(e), "conversation.item.deleted")) deleted++;
    if (!strcmp(ev_type(e), "error")) errors++;
    if (!strcmp(ev_type(e), "response.done"))
      done = e;
    else
      cJSON_Delete(e);
  }
  T_CHECK(deleted == 12 && errors == 0, "200 items kept of 212: %d deleted, %d errors", deleted, errors);
  const cJSON *r = cJSON_GetObjectItemCaseSensitive(done, "response");
  T_CHECK(jstr(r, "id", NULL) && !strcmp(jstr(r, "id", NULL), resp_id) && !strcmp(jstr(r, "status", NULL), "cancelled"),
          "the running reply survived and was cancelled");
  cJSON_Delete(done);
  wsc_free(&c);

  /* 70 items of 8 text parts (560 parts, more than one request may carry, 512): the oldest are left out, exactly
   * as many as needed: the prompt is the one of a session holding the newest 64 (all items are alike) */
  double tokens[2] = {-1, -1};
  const int n_items[2] = {70, 64};
  for (int round = 0; round < 2; round++) {
    T_REQUIRE(wsc_session(s, &c) == 0, "connect");
    for (int i = 0; i < n_items[round]; i++) {
      char ev[1024];
      int k = snprintf(ev, sizeof ev,
                       "{\"type\":\"conversation.item.create\",\"item\":{\"type\":\"message\",\"role\":\"user\","
                       "\"content\":[");
      for (int j = 0; j < 8; j++)
        k += snprintf(ev + k, sizeof ev - (size_t)k, "%s{\"type\":\"input_text\",\"text\":\"w%d \"}", j ? "," : "", j);
      snprintf(ev + k, sizeof ev - (size_t)k, "]}}");
      wsc_text(&c, ev);
    }
    free(respond(&c, ",\"max_output_tokens\":3", &done));
    r = cJSON_GetObjectItemCaseSensitive(done, "response");
    T_CHECK(done && !strcmp(ev_type(done), "response.done") && jnum(r, "usage", "output_tokens", NULL) == 3,
            "%d items of 8 parts: a reply (%s)", n_items[round], done ? ev_type(done) : "timeout");
    tokens[round] = jnum(r, "usage", "input_tokens", NULL);
    cJSON_Delete(done);
    if (round == 0) wsc_free(&c); /* the second session goes on below */
  }
  T_CHECK(tokens[0] > 0 && tokens[0] == tokens[1], "560 parts: the newest 64 items kept (%.0f tokens, 64 alone %.0f)",
          tokens[0], tokens[1]);

  /* an error message quoting a client string cut inside a character is still valid UTF-8 */
  char ev[512] = "{\"type\":\"a";
  for (int i = 0; i < 40; i++) strcat(ev, "\xe6\x97\xa5");
  strcat(ev, "\"}");
  wsc_text(&c, ev);
  e = wsc_until(&c, "error", 30000);
  T_CHECK(e && !strcmp(ev_type(e), "error"), "a long unknown type: error event (the frame was valid UTF-8: %s)",
          e ? "yes" : "no");
  cJSON_Delete(e);
  wsc_frame(&c, 9, "x", 1, 1);
  char *p = NULL;
  size_t n;
  int op;
  while ((op = wsc_read(&c, &p, &n, 10000)) == 1) free(p);
  T_CHECK(op == 10, "the session goes on after it (pong: op %d)", op);
  free(p);
  wsc_free(&c);

  /* a client that floods events and never reads what they answer: dropped, not buffered without end */
  T_REQUIRE(wsc_open(s, &c) == 0, "connect");
  const char *msg = "{\"type\":\"session.update\",\"session\":{}}";
  size_t one = strlen(msg) + 6, batch = 2000;
  uint8_t *frames = malloc(one * batch), *q = frames;
  static const uint8_t mask[4] = {1, 2, 3, 4};
  for (size_t i = 0; i < batch; i++) {
    *q++ = 0x81, *q++ = (uint8_t)(0x80 | strlen(msg));
    memcpy(q, mask, 4), q += 4;
    for (size_t j = 0; j < strlen(msg); j++) *q++ = (uint8_t)msg[j] ^ mask[j & 3];
  }
  /* blocking sends (a frame is never split between two sends that could each fail): the server answers every
   * event, the answers pile up unread, and past 32 MiB queued it drops us. It reads at most 256 KiB between two
   * looks at its queue, so that happens after a few MB of events, not after everything we could send. */
  struct timeval tv = {.tv_sec = 20};
  setsockopt(c.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  size_t sent = 0, limit = (size_t)64 << 20;
  double t0 = es_now_s();
  int dropped = 0;
  while (!dropped && sent < limit) {
    for (size_t off = 0; off < one * batch && !dropped;) {
      ssize_t w = send(c.fd, frames + off, one * batch - off, MSG_NOSIGNAL);
      if (w > 0)
        off += (size_t)w, sent += (size_t)w;
      else if (!(w < 0 && errno == EINTR))
        dropped = 1; /* EPIPE / ECONNRESET, or the timeout: the server stopped reading */
    }
  }
  free(frames);
  T_CHECK(dropped && sent < limit / 2, "a flooding client that does not read is dropped after %zu MB (%.1f s)",
          sent >> 20, es_now_s() - t0);
  wsc_free(&c);
  int gone = 0;
  for (double t1 = es_now_s(); es_now_s() - t1 < 30 && !gone; usleep(100000))
    gone = metric(s, "earshot:voice_sessions") == 0;
  T_CHECK(gone, "its session ended");
}

/* A third server: --voice-idle-seconds 1 closes a session that sends nothing (pings answered or not). */
static void test_idle(void) {
  server_t s;
  if (server_start(&s, "serve-voice-idle", "--voice-idle-seconds 1 --quiet") != 0) {
    T_CHECK(0, "idle server start");
    if (s.pid > 0) server_stop(&s, 10, NULL);
    return;
  }
  wsc_t c;
  if (wsc_open(&s, &c) == 0) {
    char st[32];
    double t0 = es_now_s();
    int op = read_to_close(&c, st, sizeof st);
    double took = es_now_s() - t0;
    T_CHECK(op == 8 && c.close_code == 1000 && took > 0.8 && took < 10,
            "idle session closed: op %d code %d after %.1f s", op, c.close_code, took);
    wsc_free(&c);
  }
  T_CHECK(server_stop(&s, 30, NULL) == 0, "idle server exit");
}

/* Items a conversation cannot hold, items placed by previous_item_id, and a VAD setting changed mid-turn. */
static void test_items(const server_t *s) {
  wsc_t c;
  T_REQUIRE(wsc_session(s, &c) == 0, "connect");
  manual_session(&c, 16000);
  /* --max-model-len 2048 holds 81.9 s of audio: a 90 s item alone is refused, and nothing is deleted for it */
  create_audio_item(&c, "big", 90);
  cJSON *e = wsc_until(&c, "error", 30000);
  T_CHECK(jstr(e, "error", "code") && !strcmp(jstr(e, "error", "code"), "item_too_large"), "90 s item: %s",
          jstr(e, "error", "code") ? jstr(e, "error", "code") : "-");
  cJSON_Delete(e);
  /* previous_item_id: after an item, or "root" for the start */
  const char *mk = "{\"type\":\"conversation.item.create\",%s\"item\":{\"id\":\"%s\",\"type\":\"message\","
                   "\"role\":\"user\",\"content\":[{\"type\":\"input_text\",\"text\":\"x\"}]}}";
  char ev[512];
  const char *prev[][2] = {
      {"", "i1"}, {"", "i2"}, {"\"previous_item_id\":\"i1\",", "i3"}, {"\"previous_item_id\":\"root\",", "i0"}};
  const char *want_prev[] = {NULL, "i1", "i1", NULL};
  for (int i = 0; i < 4; i++) {
    snprintf(ev, sizeof ev, mk, prev[i][0], prev[i][1]);
    wsc_text(&c, ev);
    e = wsc_until(&c, "conversation.item.added", 30000);
    const cJSON *pv = cJSON_GetObjectItemCaseSensitive(e, "previous_item_id");
    int ok = want_prev[i] ? cJSON_IsString(pv) && !strcmp(pv->valuestring, want_prev[i]) : cJSON_IsNull(pv);
    T_CHECK(ok, "item %s placed after %s", prev[i][1], want_prev[i] ? want_prev[i] : "nothing");
    cJSON_Delete(e);
  }
  wsc_free(&c);

  /* server VAD: a threshold changed in the middle of a turn leaves the turn going: one start, one stop, and the
   * committed item has the started item's id */
  T_REQUIRE(wsc_session(s, &c) == 0, "connect");
  snprintf(ev, sizeof ev,
           "{\"type\":\"session.update\",\"session\":{\"audio\":{\"input\":{\"format\":{\"type\":\"audio/pcm\","
           "\"rate\":16000},\"turn_detection\":{\"type\":\"server_vad\",\"create_response\":false}}}}}");
  wsc_text(&c, ev);
  cJSON_Delete(wsc_until(&c, "session.updated", 30000));
  size_t at = 0;
  send_audio(&c, 500, 0, &at);
  send_audio(&c, 1000, 1, &at);
  wsc_text(&c, "{\"type\":\"session.update\",\"session\":{\"audio\":{\"input\":{\"turn_detection\":{\"type\":"
               "\"server_vad\",\"threshold\":0.55}}}}}");
  send_audio(&c, 1000, 1, &at);
  send_audio(&c, 1000, 0, &at);
  char started[64] = "", committed[64] = "";
  int n_start = 0, n_stop = 0;
  while ((e = wsc_event(&c, 10000))) {
    if (!strcmp(ev_type(e), "input_audio_buffer.speech_started"))
      n_start++, snprintf(started, sizeof started, "%s", jstr(e, "item_id", NULL));
    if (!strcmp(ev_type(e), "input_audio_buffer.speech_stopped")) n_stop++;
    int last = !strcmp(ev_type(e), "input_audio_buffer.committed");
    if (last) snprintf(committed, sizeof committed, "%s", jstr(e, "item_id", NULL));
    cJSON_Delete(e);
    if (last) break;
  }
  T_CHECK(n_start == 1 && n_stop == 1 && started[0] && !strcmp(started, committed),
          "threshold changed mid-turn: %d starts, %d stops, started %s, committed %s", n_start, n_stop, started,
          committed);
  wsc_free(&c);
}

int main(int argc, char **argv) {
  if (sp_init(argc, argv, "voice")) return 2;
  if (load_speech()) {
    T_CHECK(0, "cannot read %s", SPEECH);
    return t_finish();
  }
  static char w16[1200], w22[1200];
  snprintf(w16, sizeof w16, "%s/speech-16k.wav", SCRATCH);
  snprintf(w22, sizeof w22, "%s", SPEECH);
  write_wav(w16, speech, n_speech, 16000);
  wav16 = w16, wav22 = w22;
  char args[1300];
  snprintf(args, sizeof args, "--audio %s", wav16);
  expect16 = run_text(args);
  snprintf(args, sizeof args, "--audio %s", wav22);
  expect22 = run_text(args);
  T_CHECK(expect16 && expect22 && strlen(expect16) > 0, "earshot run gave no text");

  server_t s;
  if (server_start(&s, "serve-voice", "--max-model-len 2048 --shutdown-grace 1") != 0) {
    char *log = slurp(s.log, NULL);
    T_CHECK(0, "the server did not start: %s", log ? log : "(no log)");
    free(log);
    if (s.pid > 0) server_stop(&s, 10, NULL);
    return t_finish();
  }
  test_handshake(&s);
  test_manual_turns(&s);
  test_vad(&s);
  test_context_limits(&s);
  test_errors(&s);
  test_abuse(&s);
  test_items(&s);
  test_openai_client(&s);
  test_latency_script(&s);
  test_vanish(&s);
  T_CHECK(http(&s, "/health", "", NULL, NULL) == 200, "still healthy after everything");
  T_CHECK(server_stop(&s, 30, NULL) == 0, "clean exit");
  test_limit_and_shutdown();
  test_idle();
  free(speech), free(expect16), free(expect22);
  return t_finish();
}
