/* tokenizer: building the tables, encode, decode and streaming decode. See tokenizer.h; file parsing is
 * in tok_load.c.
 */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "byte_unicode.h"
#include "tok_internal.h"

const char TOK_QWEN2_PATTERN[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

struct tok_encoder {
  const tok_t *tok;
  pcre2_match_data *md;
  bpe_work_t bpe;
  tok_text_t norm;           /* the NFC text of the current segment, when it differs */
  utf8proc_int32_t *nfc_buf; /* [nfc_cap] utf8proc's code point buffer */
  size_t nfc_cap;
};

/* --- small vectors ------------------------------------------------------------------------- */

int tok_ids_append(tok_ids_t *v, const int32_t *ids, size_t n, es_error_t *err) {
  if (v->n + n > v->cap) {
    size_t cap = v->cap ? v->cap : 64;
    while (cap < v->n + n) cap *= 2;
    int32_t *p = realloc(v->ids, cap * sizeof *p);
    if (!p) return es_fail(err, ES_ENOMEM, "token ids: out of memory (%zu ids)", cap);
    v->ids = p;
    v->cap = cap;
  }
  if (n) memcpy(v->ids + v->n, ids, n * sizeof *ids);
  v->n += n;
  return ES_OK;
}

int tok_ids_push(tok_ids_t *v, int32_t id, es_error_t *err) {
  return tok_ids_append(v, &id, 1, err);
}

void tok_ids_free(tok_ids_t *v) {
  if (!v) return;
  free(v->ids);
  memset(v, 0, sizeof *v);
}

static int text_reserve(tok_text_t *s, size_t extra, es_error_t *err) {
  if (s->len + extra + 1 <= s->cap) return ES_OK;
  size_t cap = s->cap ? s->cap : 64;
  while (cap < s->len + extra + 1) cap *= 2;
  char *p = realloc(s->data, cap);
  if (!p) return es_fail(err, ES_ENOMEM, "text: out of memory (%zu bytes)", cap);
  s->data = p;
  s->cap = cap;
  return ES_OK;
}

int tok_text_append(tok_text_t *s, const char *data, size_t len, es_error_t *err) {
  int rc = text_reserve(s, len, err);
  if (rc) return rc;
  if (len) memcpy(s->data + s->len, data, len);
  s->len += len;
  s->data[s->len] = '\0';
  return ES_OK;
}

void tok_text_free(tok_text_t *s) {
  if (!s) return;
  free(s->data);
  memset(s, 0, sizeof *s);
}

/* --- UTF-8 --------------------------------------------------------------------------------- */

/* The byte count of the sequence a lead byte starts (0 for a byte that cannot start one) and the range of
 * its first continuation byte (Unicode Table 3-7, which excludes overlongs and surrogates). */
static int utf8_lead(uint8_t b, uint8_t *lo, uint8_t *hi) {
  *lo = 0x80;
  *hi = 0xBF;
  if (b < 0x80) return 1;
  if (b < 0xC2) return 0;
  if (b < 0xE0) return 2;
  if (b == 0xE0) *lo = 0xA0;
  if (b == 0xED) *hi = 0x9F;
  if (b < 0xF0) return 3;
  if (b == 0xF0) *lo = 0x90;
  if (b == 0xF4) *hi = 0x8F;
  if (b < 0xF5) return 4;
  return 0;
}

int tok_utf8_valid(const char *str, size_t len, size_t *bad_offset) {
  const uint8_t *s = (const uint8_t *)str;
  size_t i = 0;
  while (i < len) {
    if (s[i] < 0x80) {
      i++;
      continue;
    }
    uint8_t lo, hi;
    int n = utf8_lead(s[i], &lo, &hi);
    int ok = n > 0 && i + (size_t)n <= len && s[i + 1] >= lo && s[i + 1] <= hi;
    for (int k = 2; ok && k < n; k++) ok = (s[i + k] & 0xC0) == 0x80;
    if (!ok) {
      if (bad_offset) *bad_offset = i;
      return 0;
    }
    i += (size_t)n;
  }
  return 1;
}

/* Decodes the code point at s[*i] of valid UTF-8 and advances *i. */
static uint32_t utf8_next(const uint8_t *s, size_t *i) {
  uint8_t b = s[*i];
  if (b < 0x80) {
    (*i)++;
    return b;
  }
  if (b < 0xE0) {
    uint32_t c = ((uint32_t)(b & 0x1F) << 6) | (s[*i + 1] & 0x3F);
    *i += 2;
    return c;
  }
  if (b < 0xF0) {
    uint32_t c = ((uint32_t)(b & 0x0F) << 12) | ((uint32_t)(s[*i + 1] & 0x3F) << 6) | (s[*i + 2] & 0x3F);
    *i += 3;
    return c;
  }
  uint32_t c = ((uint32_t)(b & 0x07) << 18) | ((uint32_t)(s[*i + 1] & 0x3F) << 12) |
               ((uint32_t)(s[*i + 2] & 0x3F) << 6) | (s[*i + 3] & 0x3F);
  *i += 4;
  return c;
}

/* The code point ending just before s[end] in valid UTF-8; *start gets where it begins. */
static uint32_t utf8_prev(const uint8_t *s, size_t end, size_t *start) {
  size_t i = end - 1;
  while (i > 0 && (s[i] & 0xC0) == 0x80) i--;
  *start = i;
  size_t j = i;
  return utf8_next(s, &j);
}

/* Appends s[0..n) to out with every maximal invalid subsequence replaced by U+FFFD (Rust's
 * String::from_utf8_lossy, which HF tokenizers' ByteLevel decoder ends with). When final is 0, a trailing
 * sequence that is incomplete but valid so far is not consumed: *consumed says how far it got. */
static int utf8_lossy_append(const uint8_t *s, size_t n, int final, tok_text_t *out, size_t *consumed,
                             es_error_t *err) {
  static const char REPLACEMENT[] = "\xEF\xBF\xBD";
  int rc = text_reserve(out, 3 * n, err); /* worst case: every byte becomes U+FFFD */
  if (rc) return rc;
  char *o = out->data + out->len;
  size_t i = 0;
  while (i < n) {
    if (s[i] < 0x80) {
      *o++ = (char)s[i++];
      continue;
    }
    uint8_t lo, hi;
    int need = utf8_lead(s[i], &lo, &hi);
    if (need == 0) {
      memcpy(o, REPLACEMENT, 3);
      o += 3;
      i++;
      continue;
    }
    int k = 1;
    for (; k < need; k++) {
      if (i + (size_t)k >= n) break;
      uint8_t c = s[i + (size_t)k];
      if (k == 1 ? (c < lo || c > hi) : (c & 0xC0) != 0x80) break;
    }
    if (k == need) {
      memcpy(o, s + i, (size_t)need);
      o += need;
      i += (size_t)need;
    } else if (i + (size_t)k >= n && !final) {
      break; /* incomplete, may still complete */
    } else {
      memcpy(o, REPLACEMENT, 3);
      o += 3;
      i += (size_t)k; /* the maximal subpart: the valid prefix read so far */
    }
  }
  out->len = (size_t)(o - out->data);
  out->data[out->len] = '\0';
  if (consumed) *consumed = i;
  return ES_OK;
}

/* Unicode White_Space (what Rust's char::is_whitespace tests; tokenizers' lstrip/rstrip use it). */
static int is_unicode_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Letter, number or '_' (tokenizers' single_word test uses char::is_alphanumeric || '_'). */
static int is_word_char(uint32_t c) {
  if (c == '_') return 1;
  utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)c);
  return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
         (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
}

/* --- building ------------------------------------------------------------------------------ */

/* Oniguruma's \s (what tokenizers' regexes use) is exactly Unicode White_Space. PCRE2's \s under
 * PCRE2_UCP is not: it leaves out U+0085 and takes U+180E (a space before Unicode 6.3). So \s and \S are
 * rewritten as the explicit White_Space set, which Unicode keeps stable (checked against tokenizers on every
 * White_Space character, U+180E, U+200B, U+FEFF and U+001C-U+001F). */
#define TOK_WHITE_SPACE                                                                                                \
  "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

static int translate_pattern(const char *src, char **out, es_error_t *err) {
  size_t n = strlen(src);
  char *dst = malloc(n * sizeof("[^" TOK_WHITE_SPACE "]") + 1);
  if (!dst) return es_fail(err, ES_ENOMEM, "tokenizer regex: out of memory");
  size_t o = 0;
  int in_class = 0;
  for (size_t i = 0; i < n; i++) {
    char c = src[i];
    if (c == '\\' && i + 1 < n) {
      char e = src[i + 1];
      if (e == 's') {
        const char *r = in_class ? TOK_WHITE_SPACE : "[" TOK_WHITE_SPACE "]";
        memcpy(dst + o, r, strlen(r));
        o += strlen(r);
      } else if (e == 'S') {
        if (in_class) {
          free(dst);
          return es_fail(err, ES_EUNSUPPORTED, "tokenizer regex: \\S inside a character class is not supported");
        }
        const char *r = "[^" TOK_WHITE_SPACE "]";
        memcpy(dst + o, r, strlen(r));
        o += strlen(r);
      } else {
        dst[o++] = c;
        dst[o++] = e;
      }
      i++;
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = 1;
      dst[o++] = c;
      if (i + 1 < n && src[i + 1] == '^') dst[o++] = src[++i];
      if (i + 1 < n && src[i + 1] == ']') dst[o++] = src[++i]; /* a leading ']' is literal */
      continue;
    }
    if (c == ']' && in_class) in_class = 0;
    dst[o++] = c;
  }
  dst[o] = '\0';
  *out = dst;
  return ES_OK;
}

static int compile_pattern(tok_t *t, const char *pattern, es_error_t *err) {
  char *translated = NULL;
  int rc = translate_pattern(pattern, &translated, err);
  if (rc) return rc;
  int code;
  PCRE2_SIZE off;
  t->re = pcre2_compile((PCRE2_SPTR)translated, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &code, &off, NULL);
  free(translated);
  if (!t->re) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(code, msg, sizeof msg);
    return es_fail(err, ES_EUNSUPPORTED, "tokenizer regex %s: PCRE2 cannot compile it at offset %zu: %s", pattern,
                   (size_t)off, (const char *)msg);
  }
  /* JIT is an optimisation: pcre2_match falls back to the interpreter when it is unavailable. */
  (void)pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE);
  t->pattern = strdup(pattern);
  if (!t->pattern) return es_fail(err, ES_ENOMEM, "tokenizer: out of memory");
  return ES_OK;
}

/* Marks the code points whose presence means NFC may change a string: anything with a canonical
 * decomposition (Hangul syllables aside: they recompose to themselves unless a trailing jamo follows, and
 * those jamo are marked), every non-first code point of a canonical decomposition (a possible second half of
 * a composition), and every combining mark. Text without any of them is already NFC (the Unicode quick check
 * with a conservative table), so most text skips utf8proc. */
static int build_nfc_table(tok_t *t, es_error_t *err) {
  t->nfc_may_change = calloc(TOK_NFC_TABLE_CPS / 8, 1);
  if (!t->nfc_may_change) return es_fail(err, ES_ENOMEM, "tokenizer: out of memory");
#define MARK(c) (t->nfc_may_change[(c) >> 3] |= (uint8_t)(1u << ((c)&7)))
  for (int32_t c = 0x300; c < TOK_NFC_TABLE_CPS; c++) {
    if (c >= 0xAC00 && c <= 0xD7A3) continue;
    if (c >= 0xD800 && c <= 0xDFFF) continue;
    const utf8proc_property_t *p = utf8proc_get_property(c);
    if (p->combining_class != 0) MARK(c);
    utf8proc_int32_t d[8];
    int last = 0;
    utf8proc_ssize_t n = utf8proc_decompose_char(c, d, 8, UTF8PROC_DECOMPOSE, &last);
    if (n == 1 && d[0] == c) continue;
    MARK(c);
    for (utf8proc_ssize_t k = 1; k < n && k < 8; k++)
      if (d[k] < TOK_NFC_TABLE_CPS) MARK(d[k]);
  }
  for (int32_t c = 0x1160; c <= 0x11FF; c++) MARK(c); /* Hangul medial vowels and final consonants */
#undef MARK
  return ES_OK;
}

static int cmp_u32_desc(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? 1 : x > y ? -1 : 0;
}

static int build_matcher(tok_t *t, tok_matcher_t *m, int normalized, es_error_t *err) {
  for (size_t i = 0; i < t->n_added; i++) {
    const tok_added_t *a = &t->added[i];
    if (!!a->normalized != normalized || a->content_len == 0) continue;
    const char *key = a->content;
    size_t len = a->content_len;
    char *norm = NULL;
    if (normalized && t->nfc) {
      /* tokenizers matches a normalized token by its normalized content */
      utf8proc_uint8_t *nfc = NULL;
      utf8proc_ssize_t nl =
          utf8proc_map((const utf8proc_uint8_t *)key, (utf8proc_ssize_t)len, &nfc, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
      if (nl < 0) return es_fail(err, ES_EINVAL, "added token %d: content is not valid UTF-8", (int)a->id);
      norm = (char *)nfc;
      key = norm;
      len = (size_t)nl;
    }
    uint64_t prev;
    int rc = ES_OK;
    /* the first token listed wins when two have the same content, as in tokenizers' trie */
    if (!tok_strmap_get(&m->map, key, len, &prev)) rc = tok_strmap_put(&m->map, key, len, i, err);
    if (rc == ES_OK) {
      m->first[(uint8_t)key[0]] = 1;
      size_t j = 0;
      while (j < m->n_lens && m->lens[j] != len) j++;
      if (j == m->n_lens) {
        uint32_t *nl = realloc(m->lens, (m->n_lens + 1) * sizeof *nl);
        if (!nl)
          rc = es_fail(err, ES_ENOMEM, "tokenizer: out of memory");
        else {
          m->lens = nl;
          m->lens[m->n_lens++] = (uint32_t)len;
        }
      }
    }
    free(norm);
    if (rc) return rc;
  }
  if (m->n_lens) qsort(m->lens, m->n_lens, sizeof *m->lens, cmp_u32_desc);
  return ES_OK;
}

static void matcher_free(tok_matcher_t *m) {
  tok_strmap_free(&m->map);
  free(m->lens);
  memset(m, 0, sizeof *m);
}

static int cmp_added_id(const void *a, const void *b) {
  int32_t x = ((const tok_added_t *)a)->id, y = ((const tok_added_t *)b)->id;
  return x < y ? -1 : x > y;
}

/* *buf holds at least need bytes afterwards (grown with realloc, contents kept); -1 when out of memory. */
static int grow_bytes(uint8_t **buf, size_t *cap, size_t need) {
  if (need <= *cap) return 0;
  uint8_t *nb = realloc(*buf, need);
  if (!nb) return -1;
  *buf = nb;
  *cap = need;
  return 0;
}

int tok_build(const tok_builder_t *b, tok_t **out, es_error_t *err) {
  *out = NULL;
  int rc = ES_OK;
  uint8_t *raw = NULL;
  int32_t *aid = NULL; /* [n_added] the id each added token gets */
  tok_t *t = calloc(1, sizeof *t);
  if (!t) return es_fail(err, ES_ENOMEM, "%s: out of memory", b->source);
  t->nfc = b->nfc;
  t->ignore_merges = b->ignore_merges;

  raw = malloc(4096);
  aid = malloc((b->n_added ? b->n_added : 1) * sizeof *aid);
  if (!raw || !aid) {
    rc = es_fail(err, ES_ENOMEM, "%s: out of memory", b->source);
    goto fail;
  }
  size_t raw_cap = 4096;
  /* the BPE vocabulary, raw bytes -> id */
  for (size_t i = 0; i < b->n_vocab; i++) {
    const char *s = b->strs + (b->vocab_off[i] >> 32);
    size_t len = (uint32_t)b->vocab_off[i];
    if (grow_bytes(&raw, &raw_cap, len)) {
      rc = es_fail(err, ES_ENOMEM, "%s: out of memory", b->source);
      goto fail;
    }
    long n = bu_decode_token(s, len, raw);
    if (n > 0 && (rc = tok_strmap_put(&t->vocab, raw, (size_t)n, (uint64_t)b->vocab_id[i], err))) goto fail;
  }

  /* Added token ids as tokenizers assigns them (AddedVocabulary::add_tokens; transformers agrees): in file
   * order, a content that is already a vocabulary entry takes that entry's id, any other the next id from
   * max(vocabulary size, largest added id so far + 1). The "id" written in the file is not consulted; for
   * files tokenizers wrote itself the two agree. A repeated content is skipped (aid = -1). */
  int32_t next = (int32_t)b->n_vocab;
  for (size_t i = 0; i < b->n_added; i++) {
    const tok_added_t *a = &b->added[i];
    aid[i] = -1;
    int dup = 0;
    for (size_t j = 0; j < i && !dup; j++)
      dup = aid[j] >= 0 && b->added[j].content_len == a->content_len &&
            memcmp(b->added[j].content, a->content, a->content_len) == 0;
    if (dup) continue;
    uint64_t vid;
    if (a->content_len > raw_cap) {
      uint8_t *nr = realloc(raw, a->content_len);
      if (!nr) {
        rc = es_fail(err, ES_ENOMEM, "%s: out of memory", b->source);
        goto fail;
      }
      raw = nr;
      raw_cap = a->content_len;
    }
    long n = bu_decode_token(a->content, a->content_len, raw);
    if (n > 0 && tok_strmap_get(&t->vocab, raw, (size_t)n, &vid)) {
      aid[i] = (int32_t)vid;
    } else {
      aid[i] = next;
      next++;
    }
    if (aid[i] >= next) next = aid[i] + 1;
  }

  /* ids: the larger of the vocabulary's and the added tokens' */
  int32_t max_id = -1;
  size_t bytes_total = 0;
  for (size_t i = 0; i < b->n_vocab; i++) {
    if (b->vocab_id[i] > max_id) max_id = b->vocab_id[i];
    bytes_total += (uint32_t)b->vocab_off[i];
  }
  for (size_t i = 0; i < b->n_added; i++) {
    if (aid[i] > max_id) max_id = aid[i];
    bytes_total += b->added[i].content_len;
  }
  if (max_id < 0) {
    rc = es_fail(err, ES_EINVAL, "%s: the vocabulary is empty", b->source);
    goto fail;
  }
  t->n_ids = max_id + 1;
  t->id_off = calloc((size_t)t->n_ids, sizeof *t->id_off);
  t->id_len = calloc((size_t)t->n_ids, sizeof *t->id_len);
  t->id_flags = calloc((size_t)t->n_ids, 1);
  t->id_bytes = malloc(bytes_total + 1);
  if (!t->id_off || !t->id_len || !t->id_flags || !t->id_bytes) {
    rc = es_fail(err, ES_ENOMEM, "%s: out of memory for %d ids", b->source, (int)t->n_ids);
    goto fail;
  }
  size_t bytes_len = 0;

  /* vocabulary: byte-level strings -> raw bytes. A string with code points outside the byte map cannot come
   * out of BPE on bytes; it keeps its UTF-8 for decoding, as the ByteLevel decoder does. */
  for (size_t i = 0; i < b->n_vocab; i++) {
    const char *s = b->strs + (b->vocab_off[i] >> 32);
    size_t len = (uint32_t)b->vocab_off[i];
    int32_t id = b->vocab_id[i];
    if (grow_bytes(&raw, &raw_cap, len)) {
      rc = es_fail(err, ES_ENOMEM, "%s: out of memory", b->source);
      goto fail;
    }
    long n = bu_decode_token(s, len, raw);
    const char *bytes = n >= 0 ? (const char *)raw : s;
    size_t blen = n >= 0 ? (size_t)n : len;
    memcpy(t->id_bytes + bytes_len, bytes, blen);
    t->id_off[id] = bytes_len;
    t->id_len[id] = (uint32_t)blen;
    t->id_flags[id] = TOK_ID_PRESENT;
    bytes_len += blen;
  }
  for (int c = 0; c < 256; c++) {
    uint8_t byte = (uint8_t)c;
    uint64_t id;
    if (!tok_strmap_get(&t->vocab, &byte, 1, &id)) {
      rc = es_fail(err, ES_EUNSUPPORTED, "%s: not a byte-level vocabulary: byte 0x%02x has no token", b->source, c);
      goto fail;
    }
    t->bpe.byte_ids[c] = (int32_t)id;
  }

  /* merges: rank = position in the list; the merged token must be in the vocabulary (tokenizers refuses
   * to load otherwise) */
  uint8_t *pair = NULL;
  size_t pair_cap = 0;
  for (size_t r = 0; r < b->n_merges; r++) {
    const char *ls = b->strs + (b->merge_left[r] >> 32), *rs = b->strs + (b->merge_right[r] >> 32);
    size_t ll = (uint32_t)b->merge_left[r], rl = (uint32_t)b->merge_right[r];
    if (ll + rl > pair_cap) {
      pair_cap = (ll + rl) * 2;
      uint8_t *np = realloc(pair, pair_cap);
      if (!np) {
        free(pair);
        rc = es_fail(err, ES_ENOMEM, "%s: out of memory", b->source);
        goto fail;
      }
      pair = np;
    }
    long ln = bu_decode_token(ls, ll, pair), rn = ln >= 0 ? bu_decode_token(rs, rl, pair + ln) : -1;
    uint64_t lid, rid, mid;
    if (ln <= 0 || rn <= 0 || !tok_strmap_get(&t->vocab, pair, (size_t)ln, &lid) ||
        !tok_strmap_get(&t->vocab, pair + ln, (size_t)rn, &rid) ||
        !tok_strmap_get(&t->vocab, pair, (size_t)(ln + rn), &mid)) {
      free(pair);
      rc = es_fail(err, ES_EINVAL, "%s: merge %zu (\"%.*s %.*s\"): a part or the merged token is not in the vocabulary",
                   b->source, r, (int)ll, ls, (int)rl, rs);
      goto fail;
    }
    rc = bpe_add_merge(&t->bpe, (int32_t)lid, (int32_t)rid, (uint32_t)r, (int32_t)mid, err);
    if (rc) {
      free(pair);
      goto fail;
    }
  }
  free(pair);

  /* added tokens, in id order; their decoded bytes follow the ByteLevel decoder too */
  t->added = calloc(b->n_added ? b->n_added : 1, sizeof *t->added);
  if (!t->added) {
    rc = es_fail(err, ES_ENOMEM, "%s: out of memory", b->source);
    goto fail;
  }
  for (size_t i = 0; i < b->n_added; i++) {
    if (aid[i] < 0) continue;
    tok_added_t a = b->added[i];
    a.id = aid[i];
    a.content = malloc(a.content_len + 1);
    if (!a.content) {
      rc = es_fail(err, ES_ENOMEM, "%s: out of memory", b->source);
      goto fail;
    }
    memcpy(a.content, b->added[i].content, a.content_len + 1);
    t->added[t->n_added++] = a;
    if (!tok_utf8_valid(a.content, a.content_len, NULL)) {
      rc = es_fail(err, ES_EINVAL, "%s: added token %d is not valid UTF-8", b->source, (int)a.id);
      goto fail;
    }
    if (a.content_len > raw_cap) {
      uint8_t *nr = realloc(raw, a.content_len);
      if (!nr) {
        rc = es_fail(err, ES_ENOMEM, "%s: out of memory", b->source);
        goto fail;
      }
      raw = nr;
      raw_cap = a.content_len;
    }
    long n = bu_decode_token(a.content, a.content_len, raw);
    const char *bytes = n >= 0 ? (const char *)raw : a.content;
    size_t blen = n >= 0 ? (size_t)n : a.content_len;
    memcpy(t->id_bytes + bytes_len, bytes, blen);
    t->id_off[a.id] = bytes_len;
    t->id_len[a.id] = (uint32_t)blen;
    t->id_flags[a.id] = TOK_ID_PRESENT | TOK_ID_ADDED | (a.special ? TOK_ID_SPECIAL : 0);
    bytes_len += blen;
  }
  qsort(t->added, t->n_added, sizeof *t->added, cmp_added_id);
  for (size_t i = 1; i < t->n_added; i++)
    if (t->added[i].id == t->added[i - 1].id) {
      rc = es_fail(err, ES_EINVAL, "%s: two added tokens have id %d", b->source, (int)t->added[i].id);
      goto fail;
    }
  if ((rc = build_matcher(t, &t->match_raw, 0, err)) || (rc = build_matcher(t, &t->match_norm, 1, err))) goto fail;
  if (t->nfc && (rc = build_nfc_table(t, err))) goto fail;
  if ((rc = compile_pattern(t, b->pattern ? b->pattern : TOK_QWEN2_PATTERN, err))) {
    es_error_prefix(err, "%s: ", b->source);
    goto fail;
  }
  free(raw);
  free(aid);
  *out = t;
  return ES_OK;
fail:
  free(raw);
  free(aid);
  tok_free(t);
  return rc;
}

void tok_free(tok_t *t) {
  if (!t) return;
  bpe_free(&t->bpe);
  tok_strmap_free(&t->vocab);
  free(t->id_off);
  free(t->id_len);
  free(t->id_flags);
  free(t->id_bytes);
  for (size_t i = 0; i < t->n_added; i++) free(t->added[i].content);
  free(t->added);
  matcher_free(&t->match_raw);
  matcher_free(&t->match_norm);
  free(t->nfc_may_change);
  pcre2_code_free(t->re);
  free(t->pattern);
  free(t);
}

/* --- queries ------------------------------------------------------------------------------- */

int32_t tok_n_ids(const tok_t *t) {
  return t->n_ids;
}

unsigned tok_id_flags(const tok_t *t, int32_t id) {
  return id >= 0 && id < t->n_ids ? t->id_flags[id] : 0;
}

const char *tok_id_bytes(const tok_t *t, int32_t id, size_t *len) {
  if (!tok_id_flags(t, id)) {
    *len = 0;
    return NULL;
  }
  *len = t->id_len[id];
  return t->id_bytes + t->id_off[id];
}

int32_t tok_token_id(const tok_t *t, const char *token) {
  size_t len = strlen(token);
  for (size_t i = 0; i < t->n_added; i++)
    if (t->added[i].content_len == len && memcmp(t->added[i].content, token, len) == 0) return t->added[i].id;
  uint8_t buf[256];
  if (len > sizeof buf) return -1;
  long n = bu_decode_token(token, len, buf);
  uint64_t id;
  if (n > 0 && tok_strmap_get(&t->vocab, buf, (size_t)n, &id)) return (int32_t)id;
  return -1;
}

size_t tok_n_added(const tok_t *t) {
  return t->n_added;
}

const char *tok_added_content(const tok_t *t, size_t i, int32_t *id) {
  if (i >= t->n_added) return NULL;
  if (id) *id = t->added[i].id;
  return t->added[i].content;
}

/* --- encode -------------------------------------------------------------------------------- */

int tok_encoder_new(const tok_t *t, tok_encoder_t **out, es_error_t *err) {
  tok_encoder_t *e = calloc(1, sizeof *e);
  if (!e) return es_fail(err, ES_ENOMEM, "tokenizer: out of memory");
  e->tok = t;
  e->md = pcre2_match_data_create_from_pattern(t->re, NULL);
  if (!e->md) {
    free(e);
    return es_fail(err, ES_ENOMEM, "tokenizer: out of memory for regex match data");
  }
  *out = e;
  return ES_OK;
}

void tok_encoder_free(tok_encoder_t *e) {
  if (!e) return;
  pcre2_match_data_free(e->md);
  bpe_work_free(&e->bpe);
  tok_text_free(&e->norm);
  free(e->nfc_buf);
  free(e);
}

static int encode_piece(tok_encoder_t *e, const char *s, size_t len, tok_ids_t *out, es_error_t *err) {
  const tok_t *t = e->tok;
  uint64_t id;
  if (t->ignore_merges && tok_strmap_get(&t->vocab, s, len, &id)) return tok_ids_push(out, (int32_t)id, err);
  const int32_t *ids;
  size_t n;
  int rc = bpe_encode_word(&t->bpe, &e->bpe, (const uint8_t *)s, len, &ids, &n, err);
  if (rc) return rc;
  return tok_ids_append(out, ids, n, err);
}

/* Pre-tokenises NFC text with the regex and BPE-encodes each piece. Text the pattern does not cover (none
 * for Qwen2's, whose last branch takes any whitespace and whose others take everything else) still becomes
 * pieces of its own, as tokenizers' Split with Isolated behaviour does. */
static int encode_normalized(tok_encoder_t *e, const char *s, size_t len, tok_ids_t *out, es_error_t *err) {
  const tok_t *t = e->tok;
  size_t off = 0;
  while (off < len) {
    int m = pcre2_match(t->re, (PCRE2_SPTR)s, len, off, PCRE2_NO_UTF_CHECK, e->md, NULL);
    if (m == PCRE2_ERROR_NOMATCH) return encode_piece(e, s + off, len - off, out, err);
    if (m < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(m, msg, sizeof msg);
      return es_fail(err, m == PCRE2_ERROR_NOMEMORY || m == PCRE2_ERROR_JIT_STACKLIMIT ? ES_ETOOBIG : ES_EINTERNAL,
                     "tokenizer regex at byte %zu of a %zu-byte text: %s", off, len, (const char *)msg);
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
    size_t ms = ov[0], me = ov[1];
    int rc;
    if (ms > off && (rc = encode_piece(e, s + off, ms - off, out, err))) return rc;
    if (me == ms) { /* an empty match (not possible with Qwen2's pattern): step over one character */
      size_t i = ms;
      if (i >= len) break;
      utf8_next((const uint8_t *)s, &i);
      if ((rc = encode_piece(e, s + ms, i - ms, out, err))) return rc;
      off = i;
      continue;
    }
    if ((rc = encode_piece(e, s + ms, me - ms, out, err))) return rc;
    off = me;
  }
  return ES_OK;
}

/* The next match of m in s[from..len) under tokenizers' AddedVocabulary rules: leftmost, then longest;
 * single_word tokens are dropped when glued to a word character (the scan still resumes after them);
 * lstrip/rstrip widen the match over neighbouring whitespace (lstrip never before floor, the end of the
 * previous match). Returns 1 with [*ms, *me) the span to replace (*resume: where scanning continues),
 * *idx the added token, or 0 when there is none. */
static int next_added(const tok_t *t, const tok_matcher_t *m, const char *s, size_t len, size_t from, size_t floor,
                      size_t *ms, size_t *me, size_t *resume, size_t *idx) {
  const uint8_t *u = (const uint8_t *)s;
  for (size_t i = from; i < len; i++) {
    if (!m->first[u[i]]) continue;
    for (size_t k = 0; k < m->n_lens; k++) {
      size_t l = m->lens[k];
      uint64_t v;
      if (l > len - i || !tok_strmap_get(&m->map, s + i, l, &v)) continue;
      const tok_added_t *a = &t->added[v];
      size_t start = i, stop = i + l, p;
      *resume = stop;
      if (a->single_word && ((start > 0 && is_word_char(utf8_prev(u, start, &p))) ||
                             (stop < len && (p = stop, is_word_char(utf8_next(u, &p)))))) {
        i = stop - 1; /* the match is consumed without a split; go on after it */
        goto next_position;
      }
      if (a->lstrip)
        while (start > floor) {
          uint32_t c = utf8_prev(u, start, &p);
          if (!is_unicode_space(c)) break;
          start = p;
        }
      if (a->rstrip)
        while (stop < len) {
          p = stop;
          uint32_t c = utf8_next(u, &p);
          if (!is_unicode_space(c)) break;
          stop = p;
        }
      *ms = start;
      *me = stop;
      *idx = v;
      return 1;
    }
  next_position:;
  }
  return 0;
}

/* 1 when NFC leaves any text holding c, and text around it, unchanged: then a normalisation boundary lies
 * before c (c has NFC_Quick_Check=Yes and combining class 0), so the text can be normalised piecewise. */
static inline int nfc_inert(const tok_t *t, uint32_t c) {
  if (c < 0x300) return 1;
  if (c < TOK_NFC_TABLE_CPS) return !((t->nfc_may_change[c >> 3] >> (c & 7)) & 1);
  return utf8proc_get_property((utf8proc_int32_t)c)->combining_class == 0;
}

/* Appends NFC(s[0..len)) to e->norm, through e->nfc_buf (utf8proc_map would malloc per call). */
static int nfc_append(tok_encoder_t *e, const char *s, size_t len, es_error_t *err) {
  const utf8proc_option_t opt = UTF8PROC_STABLE | UTF8PROC_COMPOSE;
  for (;;) {
    utf8proc_ssize_t n = utf8proc_decompose((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len, e->nfc_buf,
                                            (utf8proc_ssize_t)e->nfc_cap, opt);
    if (n < 0) return es_fail(err, ES_EINVAL, "tokenizer: NFC failed: %s", utf8proc_errmsg(n));
    if ((size_t)n <= e->nfc_cap) {
      n = utf8proc_reencode(e->nfc_buf, n, opt); /* composes, then writes UTF-8 over the buffer */
      if (n < 0) return es_fail(err, ES_EINVAL, "tokenizer: NFC failed: %s", utf8proc_errmsg(n));
      return tok_text_append(&e->norm, (const char *)e->nfc_buf, (size_t)n, err);
    }
    size_t cap = e->nfc_cap ? e->nfc_cap : 256;
    while (cap < (size_t)n) cap *= 2;
    utf8proc_int32_t *nb = realloc(e->nfc_buf, cap * sizeof *nb);
    if (!nb) return es_fail(err, ES_ENOMEM, "tokenizer: out of memory for NFC");
    e->nfc_buf = nb;
    e->nfc_cap = cap;
  }
}

/* NFC of s, normalising only the stretches that can change: from the last inert code point before a
 * non-inert one to the next inert one. *out is s itself when nothing can change, else e->norm's data. */
static int normalize(tok_encoder_t *e, const char *s, size_t len, const char **out, size_t *out_len, es_error_t *err) {
  const tok_t *t = e->tok;
  const uint8_t *u = (const uint8_t *)s;
  size_t i = 0, seg = 0, copied = 0, region = 0;
  int in_region = 0, changed = 0, rc = ES_OK;
  e->norm.len = 0;
  while (i < len && rc == ES_OK) {
    if (u[i] < 0x80 && !in_region) { /* ASCII: inert; only the last one can start a region */
      while (i < len && u[i] < 0x80) i++;
      seg = i - 1;
      continue;
    }
    size_t at = i;
    uint32_t c = utf8_next(u, &i);
    if (!nfc_inert(t, c)) {
      if (!in_region) region = seg;
      in_region = 1;
      continue;
    }
    if (in_region) {
      rc = tok_text_append(&e->norm, s + copied, region - copied, err);
      if (rc == ES_OK) rc = nfc_append(e, s + region, at - region, err);
      copied = at;
      in_region = 0;
      changed = 1;
    }
    seg = at;
  }
  if (rc == ES_OK && in_region) {
    rc = tok_text_append(&e->norm, s + copied, region - copied, err);
    if (rc == ES_OK) rc = nfc_append(e, s + region, len - region, err);
    copied = len;
    changed = 1;
  }
  if (rc) return rc;
  if (!changed) {
    *out = s;
    *out_len = len;
    return ES_OK;
  }
  rc = tok_text_append(&e->norm, s + copied, len - copied, err);
  *out = e->norm.data;
  *out_len = e->norm.len;
  return rc;
}

static int encode_text(tok_encoder_t *e, const char *s, size_t len, tok_ids_t *out, es_error_t *err) {
  const tok_t *t = e->tok;
  if (!len) return ES_OK;
  if (t->nfc) {
    int rc = normalize(e, s, len, &s, &len, err);
    if (rc) return rc;
  }
  int rc = ES_OK;
  if (!t->match_norm.n_lens) {
    rc = encode_normalized(e, s, len, out, err);
  } else {
    size_t pos = 0, from = 0, ms, me, resume, idx;
    while (rc == ES_OK && next_added(t, &t->match_norm, s, len, from, pos, &ms, &me, &resume, &idx)) {
      if (ms > pos) rc = encode_normalized(e, s + pos, ms - pos, out, err);
      if (rc == ES_OK) rc = tok_ids_push(out, t->added[idx].id, err);
      pos = me;
      from = resume > me ? resume : me;
    }
    if (rc == ES_OK && pos < len) rc = encode_normalized(e, s + pos, len - pos, out, err);
  }
  return rc;
}

int tok_encoder_encode(tok_encoder_t *e, const char *text, size_t len, tok_ids_t *out, es_error_t *err) {
  const tok_t *t = e->tok;
  size_t bad;
  if (!tok_utf8_valid(text, len, &bad))
    return es_fail(err, ES_EINVAL, "tokenizer: the text is not valid UTF-8 (byte 0x%02x at offset %zu)",
                   (unsigned)(uint8_t)text[bad], bad);
  size_t n0 = out->n, pos = 0, from = 0, ms, me, resume, idx;
  int rc = ES_OK;
  while (rc == ES_OK && next_added(t, &t->match_raw, text, len, from, pos, &ms, &me, &resume, &idx)) {
    if (ms > pos) rc = encode_text(e, text + pos, ms - pos, out, err);
    if (rc == ES_OK) rc = tok_ids_push(out, t->added[idx].id, err);
    pos = me;
    from = resume > me ? resume : me;
  }
  if (rc == ES_OK && pos < len) rc = encode_text(e, text + pos, len - pos, out, err);
  if (rc) out->n = n0;
  return rc;
}

int tok_encode(const tok_t *t, const char *text, size_t len, tok_ids_t *out, es_error_t *err) {
  tok_encoder_t *e = NULL;
  int rc = tok_encoder_new(t, &e, err);
  if (rc) return rc;
  rc = tok_encoder_encode(e, text, len, out, err);
  tok_encoder_free(e);
  return rc;
}

/* --- decode -------------------------------------------------------------------------------- */

int tok_decode(const tok_t *t, const int32_t *ids, size_t n, int skip_special, tok_text_t *out, es_error_t *err) {
  out->len = 0;
  size_t total = 0;
  for (size_t i = 0; i < n; i++) {
    if (ids[i] < 0) return es_fail(err, ES_EINVAL, "decode: id %d at position %zu is negative", (int)ids[i], i);
    unsigned f = tok_id_flags(t, ids[i]);
    if (f && !(skip_special && (f & TOK_ID_SPECIAL))) total += t->id_len[ids[i]];
  }
  uint8_t *bytes = malloc(total ? total : 1);
  if (!bytes) return es_fail(err, ES_ENOMEM, "decode: out of memory (%zu bytes)", total);
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned f = tok_id_flags(t, ids[i]);
    if (!f || (skip_special && (f & TOK_ID_SPECIAL))) continue;
    memcpy(bytes + k, t->id_bytes + t->id_off[ids[i]], t->id_len[ids[i]]);
    k += t->id_len[ids[i]];
  }
  int rc = utf8_lossy_append(bytes, k, 1, out, NULL, err);
  if (rc == ES_OK && !out->data) rc = tok_text_append(out, "", 0, err);
  free(bytes);
  return rc;
}

void tok_stream_init(tok_stream_t *s, const tok_t *t, int skip_special) {
  memset(s, 0, sizeof *s);
  s->tok = t;
  s->skip_special = skip_special;
}

int tok_stream_push(tok_stream_t *s, int32_t id, tok_text_t *out, es_error_t *err) {
  const tok_t *t = s->tok;
  if (id < 0) return es_fail(err, ES_EINVAL, "stream decode: id %d is negative", (int)id);
  unsigned f = tok_id_flags(t, id);
  if (!f || (s->skip_special && (f & TOK_ID_SPECIAL))) return ES_OK;
  size_t tl = t->id_len[id], n = (size_t)s->n_pending + tl;
  uint8_t local[256], *buf = n <= sizeof local ? local : malloc(n);
  if (!buf) return es_fail(err, ES_ENOMEM, "stream decode: out of memory");
  memcpy(buf, s->pending, (size_t)s->n_pending);
  memcpy(buf + s->n_pending, t->id_bytes + t->id_off[id], tl);
  size_t used = 0;
  int rc = utf8_lossy_append(buf, n, 0, out, &used, err);
  if (rc == ES_OK) {
    ES_ASSERT(n - used <= 3);
    s->n_pending = (int)(n - used);
    memcpy(s->pending, buf + used, n - used);
  }
  if (buf != local) free(buf);
  return rc;
}

int tok_stream_flush(tok_stream_t *s, tok_text_t *out, es_error_t *err) {
  int rc = utf8_lossy_append(s->pending, (size_t)s->n_pending, 1, out, NULL, err);
  s->n_pending = 0;
  return rc;
}
