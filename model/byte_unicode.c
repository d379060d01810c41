/* byte_unicode: GPT-2's byte <-> unicode map. See byte_unicode.h. */
#include "byte_unicode.h"

static int is_self_mapped(uint32_t b) {
  return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
}

uint32_t bu_byte_to_cp(uint8_t b) {
  if (is_self_mapped(b)) return b;
  if (b <= 0x20) return 0x100u + b;           /* 33 bytes -> U+0100..U+0120 */
  if (b <= 0xA0) return 0x121u + (b - 0x7Fu); /* 34 bytes -> U+0121..U+0142 */
  return 0x143u;                              /* 0xAD */
}

int bu_cp_to_byte(uint32_t cp) {
  if (cp < 0x100) return is_self_mapped(cp) ? (int)cp : -1;
  if (cp <= 0x120) return (int)(cp - 0x100);
  if (cp <= 0x142) return (int)(cp - 0x121 + 0x7F);
  if (cp == 0x143) return 0xAD;
  return -1;
}

long bu_decode_token(const char *s, size_t len, uint8_t *out) {
  const uint8_t *p = (const uint8_t *)s, *end = p + len;
  long n = 0;
  while (p < end) {
    uint32_t cp;
    if (p[0] < 0x80) {
      cp = p[0];
      p += 1;
    } else if ((p[0] & 0xE0) == 0xC0 && p + 1 < end && (p[1] & 0xC0) == 0x80) {
      /* every mapped code point is below U+0800, so 2-byte sequences suffice */
      cp = ((uint32_t)(p[0] & 0x1F) << 6) | (p[1] & 0x3F);
      if (cp < 0x80) return -1;
      p += 2;
    } else {
      return -1;
    }
    int b = bu_cp_to_byte(cp);
    if (b < 0) return -1;
    out[n++] = (uint8_t)b;
  }
  return n;
}

size_t bu_encode_bytes(const uint8_t *bytes, size_t len, char *out) {
  size_t n = 0;
  for (size_t i = 0; i < len; i++) {
    uint32_t cp = bu_byte_to_cp(bytes[i]);
    if (cp < 0x80) {
      out[n++] = (char)cp;
    } else {
      out[n++] = (char)(0xC0 | (cp >> 6));
      out[n++] = (char)(0x80 | (cp & 0x3F));
    }
  }
  return n;
}
