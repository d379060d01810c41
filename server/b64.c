/* b64: base64 and data: URLs. See b64.h. */
#include "b64.h"

#include <stdlib.h>
#include <string.h>

static int b64_value(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+' || c == '-') return 62;
  if (c == '/' || c == '_') return 63;
  return -1;
}

static int is_space(unsigned char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

int b64_decode(const char *in, size_t len, const char *what, unsigned char **out, size_t *out_len, es_error_t *err) {
  *out = NULL;
  *out_len = 0;
  unsigned char *buf = malloc(len / 4 * 3 + 3);
  if (!buf) return es_fail(err, ES_ENOMEM, "%s: out of memory decoding %zu base64 characters", what, len);
  size_t n = 0, pad = 0;
  unsigned acc = 0;
  int bits = 0, quad = 0; /* characters in the current group of four */
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)in[i];
    if (is_space(c)) continue;
    if (c == '=') {
      pad++;
      continue;
    }
    int v = b64_value(c);
    if (v < 0 || pad) {
      free(buf);
      if (v < 0) return es_fail(err, ES_EINVAL, "%s is not valid base64: character 0x%02x at offset %zu", what, c, i);
      return es_fail(err, ES_EINVAL, "%s is not valid base64: data after '=' padding at offset %zu", what, i);
    }
    acc = acc << 6 | (unsigned)v;
    bits += 6;
    quad = (quad + 1) & 3;
    if (bits >= 8) {
      bits -= 8;
      buf[n++] = (unsigned char)(acc >> bits);
      acc &= (1u << bits) - 1;
    }
  }
  if (quad == 1 || pad > 2 || (pad && (quad + pad) % 4 != 0)) {
    free(buf);
    return es_fail(err, ES_EINVAL, "%s is not valid base64: its length does not fit whole bytes", what);
  }
  *out = buf;
  *out_len = n;
  return ES_OK;
}

int b64_data_url(const char *url, size_t len, const char **payload, size_t *payload_len, es_error_t *err) {
  if (len < 5 || strncmp(url, "data:", 5) != 0) return es_fail(err, ES_EINVAL, "not a data: URL");
  const char *comma = memchr(url, ',', len);
  if (!comma) return es_fail(err, ES_EINVAL, "data: URL without ',' before its payload");
  size_t head = (size_t)(comma - url);
  if (head < 12 || strncmp(comma - 7, ";base64", 7) != 0)
    return es_fail(err, ES_EINVAL, "data: URL is not base64-encoded (expected data:audio/...;base64,...)");
  *payload = comma + 1;
  *payload_len = len - head - 1;
  return ES_OK;
}
