/* stop: stop strings over streamed text, one KMP automaton per stop string. See stop.h for the contract.
 * ref: vLLM vllm/v1/engine/detokenizer.py and StopChecker (stop strings, min_tokens); OpenAI API `stop`.
 */
#include "stop.h"

#include <stdlib.h>
#include <string.h>

/* Well-formed UTF-8 (RFC 3629: no overlongs, no surrogates, nothing past U+10FFFF). */
static int utf8_valid(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned c = s[i];
    size_t k;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80) {
      i++;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      k = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      k = 2;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      k = 3;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return 0;
    }
    if (i + k >= n) return 0; /* truncated sequence */
    for (size_t j = 1; j <= k; j++) {
      unsigned d = s[i + j];
      if (d < (j == 1 ? lo : 0x80) || d > (j == 1 ? hi : 0xBF)) return 0;
    }
    i += k + 1;
  }
  return 1;
}

int stop_init(stop_matcher_t *sm, const char *const *stops, int n, int include_stop, es_error_t *err) {
  int rc = ES_OK;
  memset(sm, 0, sizeof *sm);
  sm->include_stop = include_stop ? 1 : 0;
  if (n < 0 || n > STOP_MAX_STRINGS)
    return es_fail(err, ES_ETOOBIG, "stop: at most %d stop strings, got %d", STOP_MAX_STRINGS, n);
  size_t longest = 0;
  for (int s = 0; s < n; s++) {
    size_t len = stops[s] ? strlen(stops[s]) : 0;
    if (len == 0) return es_fail(err, ES_EINVAL, "stop[%d]: empty stop string", s);
    if (len > STOP_MAX_BYTES)
      return es_fail(err, ES_ETOOBIG, "stop[%d]: %zu bytes, at most %d", s, len, STOP_MAX_BYTES);
    if (!utf8_valid((const unsigned char *)stops[s], len))
      return es_fail(err, ES_EINVAL, "stop[%d]: not valid UTF-8", s);
    if (len > longest) longest = len;
  }
  sm->cap = longest + 64; /* held text (< longest) plus a typical piece */
  sm->buf = malloc(sm->cap);
  if (n > 0) {
    sm->str = calloc((size_t)n, sizeof *sm->str);
    sm->fail = calloc((size_t)n, sizeof *sm->fail);
    sm->len = calloc((size_t)n, sizeof *sm->len);
    sm->state = calloc((size_t)n, sizeof *sm->state);
  }
  if (!sm->buf || (n > 0 && (!sm->str || !sm->fail || !sm->len || !sm->state))) goto nomem;
  sm->n = n;
  for (int s = 0; s < n; s++) {
    int len = (int)strlen(stops[s]);
    sm->len[s] = len;
    sm->str[s] = malloc((size_t)len + 1);
    sm->fail[s] = malloc(((size_t)len + 1) * sizeof **sm->fail);
    if (!sm->str[s] || !sm->fail[s]) goto nomem;
    memcpy(sm->str[s], stops[s], (size_t)len + 1);
    /* fail[q]: the longest proper border of the first q bytes (a prefix that is also a suffix) */
    const char *p = sm->str[s];
    int *f = sm->fail[s];
    f[0] = 0;
    f[1] = 0;
    for (int i = 1; i < len; i++) {
      int q = f[i];
      while (q > 0 && p[q] != p[i]) q = f[q];
      if (p[q] == p[i]) q++;
      f[i + 1] = q;
    }
  }
  return ES_OK;
nomem:
  rc = es_fail(err, ES_ENOMEM, "stop: %d stop strings", n);
  stop_free(sm);
  return rc;
}

void stop_free(stop_matcher_t *sm) {
  if (!sm) return;
  for (int s = 0; s < sm->n; s++) {
    if (sm->str) free(sm->str[s]);
    if (sm->fail) free(sm->fail[s]);
  }
  free(sm->str);
  free(sm->fail);
  free(sm->len);
  free(sm->state);
  free(sm->buf);
  memset(sm, 0, sizeof *sm);
}

int stop_feed(stop_matcher_t *sm, const char *piece, size_t len, int active, stop_result_t *res, es_error_t *err) {
  res->text = sm->buf;
  res->len = 0;
  res->stopped = sm->stopped;
  res->stop_index = -1;
  if (sm->stopped) return ES_OK;
  if (sm->consumed) {
    memmove(sm->buf, sm->buf + sm->consumed, sm->held);
    sm->consumed = 0;
  }
  if (len > sm->cap - sm->held) {
    size_t cap = sm->cap * 2 > sm->held + len ? sm->cap * 2 : sm->held + len;
    char *b = realloc(sm->buf, cap);
    if (!b) return es_fail(err, ES_ENOMEM, "stop: text buffer of %zu bytes", cap);
    sm->buf = b;
    sm->cap = cap;
  }
  if (len) memcpy(sm->buf + sm->held, piece, len);

  int match = -1;
  size_t end = 0;
  for (size_t i = 0; i < len && match < 0; i++) {
    char c = piece[i];
    for (int s = 0; s < sm->n; s++) {
      const char *p = sm->str[s];
      int q = sm->state[s];
      while (q > 0 && p[q] != c) q = sm->fail[s][q];
      if (p[q] == c) q++;
      if (q == sm->len[s]) {
        if (active && (match < 0 || sm->len[s] > sm->len[match])) match = s;
        q = sm->fail[s][q]; /* inactive: a complete match is ordinary text; keep its longest border */
      }
      sm->state[s] = q;
    }
    end = sm->held + i + 1;
  }
  res->text = sm->buf;
  if (match >= 0) {
    size_t start = end - (size_t)sm->len[match]; /* the whole match lies in buf: held covers every state */
    res->len = sm->include_stop ? end : start;
    res->stopped = 1;
    res->stop_index = match;
    sm->stopped = 1;
    sm->held = 0;
    return ES_OK;
  }
  size_t total = sm->held + len;
  size_t hold = 0;
  for (int s = 0; s < sm->n; s++)
    if ((size_t)sm->state[s] > hold) hold = (size_t)sm->state[s];
  res->len = total - hold;
  sm->held = hold;
  sm->consumed = res->len;
  return ES_OK;
}

void stop_flush(stop_matcher_t *sm, stop_result_t *res) {
  res->text = sm->buf ? sm->buf + sm->consumed : NULL;
  res->len = sm->stopped ? 0 : sm->held;
  res->stopped = sm->stopped;
  res->stop_index = -1;
  sm->consumed += res->len;
  sm->held = 0;
  for (int s = 0; s < sm->n; s++) sm->state[s] = 0; /* nothing is held, so no prefix is pending */
}
