/* test_tokenizer: the byte-level BPE tokenizer against Hugging Face `tokenizers`.
 *
 * Oracle: tests/golden/fixtures/tokenizer/corpus.json ([{name, text, ids, decoded}], ids from tokenizers on
 * tokenizer.json, cross-checked with transformers on vocab.json + merges.txt). The same corpus is encoded with
 * three loads of tests/data/qwen2-audio-tokenizer: tokenizer.json (["a","b"] merges), a copy with "a b" string
 * merges written to the build folder (argv[1]) at run time, and vocab.json + merges.txt +
 * tokenizer_config.json. Also: decode(encode(x)) == NFC(x), streaming decode == whole decode, ids past the
 * table decode to "", invalid UTF-8 is rejected, long inputs, and concurrent encoding with one tok_t.
 */
#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "es_file.h"
#include "test_util.h"
#include "tokenizer.h"

#define TOK_DIR ES_SOURCE_DIR "/tests/data/qwen2-audio-tokenizer"
#define CORPUS ES_SOURCE_DIR "/tests/golden/fixtures/tokenizer/corpus.json"

typedef struct {
  char *name;
  char *text, *decoded; /* may hold NUL bytes (cJSON strings cannot), hence the lengths */
  size_t text_len, decoded_len;
  int32_t *ids;
  size_t n_ids;
} entry_t;

static entry_t *g_entries;
static size_t g_n;

/* --- reading the corpus ------------------------------------------------------------------- */

static void put_utf8(char *o, size_t *k, uint32_t c) {
  utf8proc_ssize_t n = utf8proc_encode_char((utf8proc_int32_t)c, (utf8proc_uint8_t *)o + *k);
  *k += (size_t)n;
}

static unsigned hex4(const char *p) {
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    char c = p[i];
    v = v * 16 + (unsigned)(c <= '9' ? c - '0' : (c | 32) - 'a' + 10);
  }
  return v;
}

/* Decodes the JSON string literal starting at *p (at the opening quote) into a malloc'd buffer. */
static char *json_literal(const char **p, size_t *len) {
  const char *s = *p + 1;
  char *o = malloc(strlen(s) + 1);
  size_t k = 0;
  while (*s && *s != '"') {
    if (*s != '\\') {
      o[k++] = *s++;
      continue;
    }
    s++;
    switch (*s) {
    case 'n': o[k++] = '\n'; break;
    case 't': o[k++] = '\t'; break;
    case 'r': o[k++] = '\r'; break;
    case 'b': o[k++] = '\b'; break;
    case 'f': o[k++] = '\f'; break;
    case 'u': {
      uint32_t c = hex4(s + 1);
      s += 4;
      if (c >= 0xD800 && c < 0xDC00 && s[1] == '\\' && s[2] == 'u') {
        c = 0x10000 + ((c - 0xD800) << 10) + (hex4(s + 3) - 0xDC00);
        s += 6;
      }
      put_utf8(o, &k, c);
      break;
    }
    default: o[k++] = *s;
    }
    s++;
  }
  *p = *s ? s + 1 : s;
  o[k] = '\0';
  *len = k;
  return o;
}

/* The values of every "text" and "decoded" key, in file order, with their exact lengths. */
static void scan_strings(const char *json, char **texts, size_t *tl, char **decs, size_t *dl, size_t cap) {
  size_t nt = 0, nd = 0;
  const char *p = json;
  char *key = NULL;
  while (*p) {
    if (*p != '"') {
      p++;
      continue;
    }
    size_t len;
    char *s = json_literal(&p, &len);
    const char *q = p;
    while (*q == ' ' || *q == '\n' || *q == '\t' || *q == '\r') q++;
    if (*q == ':') {
      free(key);
      key = s;
      p = q + 1;
      continue;
    }
    if (key && strcmp(key, "text") == 0 && nt < cap) {
      texts[nt] = s;
      tl[nt++] = len;
    } else if (key && strcmp(key, "decoded") == 0 && nd < cap) {
      decs[nd] = s;
      dl[nd++] = len;
    } else {
      free(s);
    }
    free(key);
    key = NULL;
  }
  free(key);
}

static int load_corpus(void) {
  char *buf = NULL;
  size_t len = 0;
  es_error_t err;
  if (es_read_file(CORPUS, 64 << 20, &buf, &len, &err)) {
    fprintf(stderr, "%s\n", err.msg);
    return -1;
  }
  cJSON *root = cJSON_Parse(buf);
  g_n = (size_t)cJSON_GetArraySize(root);
  g_entries = calloc(g_n ? g_n : 1, sizeof *g_entries);
  char **texts = calloc(g_n + 1, sizeof *texts), **decs = calloc(g_n + 1, sizeof *decs);
  size_t *tl = calloc(g_n + 1, sizeof *tl), *dl = calloc(g_n + 1, sizeof *dl);
  scan_strings(buf, texts, tl, decs, dl, g_n);
  size_t i = 0;
  for (cJSON *e = root ? root->child : NULL; e; e = e->next, i++) {
    entry_t *x = &g_entries[i];
    x->name = strdup(cJSON_GetObjectItem(e, "name")->valuestring);
    x->text = texts[i];
    x->text_len = tl[i];
    x->decoded = decs[i];
    x->decoded_len = dl[i];
    cJSON *ids = cJSON_GetObjectItem(e, "ids");
    x->n_ids = (size_t)cJSON_GetArraySize(ids);
    x->ids = malloc((x->n_ids + 1) * sizeof *x->ids);
    size_t k = 0;
    for (cJSON *v = ids->child; v; v = v->next) x->ids[k++] = (int32_t)v->valuedouble;
    /* the literal scan must agree with cJSON wherever cJSON can represent the string */
    const char *ct = cJSON_GetObjectItem(e, "text")->valuestring;
    T_CHECK(x->text && strncmp(ct, x->text, x->text_len) == 0, "corpus entry %zu text scan", i);
  }
  free(texts);
  free(decs);
  free(tl);
  free(dl);
  cJSON_Delete(root);
  free(buf);
  return g_n > 0 ? 0 : -1;
}

static void free_corpus(void) {
  for (size_t i = 0; i < g_n; i++) {
    free(g_entries[i].name);
    free(g_entries[i].text);
    free(g_entries[i].decoded);
    free(g_entries[i].ids);
  }
  free(g_entries);
}

/* --- helpers ------------------------------------------------------------------------------ */

static int ids_equal(const int32_t *a, size_t na, const int32_t *b, size_t nb, const char *what, const char *name) {
  size_t i = 0;
  while (i < na && i < nb && a[i] == b[i]) i++;
  if (i == na && na == nb) return 1;
  fprintf(stderr, "  %s %s: first difference at %zu (ours %d, ref %d; lengths %zu vs %zu)\n", what, name, i,
          i < na ? a[i] : -1, i < nb ? b[i] : -1, na, nb);
  return 0;
}

/* The "a b" string form of the merges, as older tokenizers versions (and possibly the real checkpoint) write. */
static int write_string_merges(const char *src, const char *dst) {
  char *buf = NULL;
  size_t len = 0;
  es_error_t err;
  if (es_read_file(src, 64 << 20, &buf, &len, &err)) return -1;
  cJSON *root = cJSON_Parse(buf);
  free(buf);
  cJSON *model = cJSON_GetObjectItem(root, "model"), *merges = cJSON_GetObjectItem(model, "merges");
  int rc = merges && cJSON_IsArray(merges->child) ? 0 : -1; /* the source must be the array form */
  cJSON *strings = cJSON_CreateArray();
  for (cJSON *m = rc == 0 ? merges->child : NULL; m; m = m->next) {
    char pair[1024];
    snprintf(pair, sizeof pair, "%s %s", m->child->valuestring, m->child->next->valuestring);
    cJSON_AddItemToArray(strings, cJSON_CreateString(pair));
  }
  cJSON_ReplaceItemInObject(model, "merges", strings);
  char *out = rc == 0 ? cJSON_PrintUnformatted(root) : NULL;
  if (out)
    rc = es_write_file(dst, out, strlen(out), &err);
  else
    rc = -1;
  free(out);
  cJSON_Delete(root);
  return rc;
}

static void nfc(const char *s, size_t len, char **out, size_t *olen) {
  utf8proc_uint8_t *d = NULL;
  utf8proc_ssize_t n =
      utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len, &d, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
  *out = (char *)d;
  *olen = n < 0 ? 0 : (size_t)n;
}

/* --- tests -------------------------------------------------------------------------------- */

static void test_corpus(const tok_t *t, const char *layout) {
  es_error_t err;
  tok_encoder_t *enc = NULL;
  T_REQUIRE(tok_encoder_new(t, &enc, &err) == ES_OK, "%s", err.msg);
  size_t ok = 0;
  for (size_t i = 0; i < g_n; i++) {
    const entry_t *e = &g_entries[i];
    tok_ids_t ids = {0};
    int rc = tok_encoder_encode(enc, e->text, e->text_len, &ids, &err);
    T_CHECK(rc == ES_OK, "%s %s: %s", layout, e->name, err.msg);
    int same = rc == ES_OK && ids_equal(ids.ids, ids.n, e->ids, e->n_ids, layout, e->name);
    T_CHECK(same, "%s: encode(%s) differs from tokenizers", layout, e->name);
    ok += (size_t)same;
    tok_ids_free(&ids);
  }
  printf("%s: %zu/%zu corpus entries identical to tokenizers\n", layout, ok, g_n);
  tok_encoder_free(enc);
}

static void test_decode_and_stream(const tok_t *t) {
  es_error_t err;
  for (size_t i = 0; i < g_n; i++) {
    const entry_t *e = &g_entries[i];
    tok_text_t whole = {0}, skip = {0};
    T_CHECK(tok_decode(t, e->ids, e->n_ids, 0, &whole, &err) == ES_OK, "%s", err.msg);
    T_CHECK(whole.len == e->decoded_len && memcmp(whole.data, e->decoded, whole.len) == 0,
            "decode(%s) differs from transformers' decode", e->name);
    /* decode(encode(x)) == NFC(x): the golden ids are encode(x) (checked above) */
    char *n = NULL;
    size_t nl = 0;
    nfc(e->text, e->text_len, &n, &nl);
    T_CHECK(n && whole.len == nl && memcmp(whole.data, n, nl) == 0, "decode(encode(%s)) != NFC(text)", e->name);
    free(n);
    T_CHECK(tok_decode(t, e->ids, e->n_ids, 1, &skip, &err) == ES_OK, "%s", err.msg);
    for (int sk = 0; sk < 2; sk++) {
      tok_stream_t st;
      tok_stream_init(&st, t, sk);
      tok_text_t s = {0};
      int rc = ES_OK;
      for (size_t k = 0; k < e->n_ids && rc == ES_OK; k++) {
        size_t before = s.len;
        rc = tok_stream_push(&st, e->ids[k], &s, &err);
        /* whatever a push emits is complete UTF-8 on its own */
        T_CHECK(tok_utf8_valid(s.data ? s.data + before : "", s.len - before, NULL), "stream %s emitted a partial",
                e->name);
      }
      if (rc == ES_OK) rc = tok_stream_flush(&st, &s, &err);
      const tok_text_t *ref = sk ? &skip : &whole;
      T_CHECK(rc == ES_OK && s.len == ref->len && (s.len == 0 || memcmp(s.data, ref->data, s.len) == 0),
              "stream decode(%s, skip_special=%d) != whole decode", e->name, sk);
      tok_text_free(&s);
    }
    tok_text_free(&whole);
    tok_text_free(&skip);
  }
}

static void test_partial_utf8(const tok_t *t) {
  es_error_t err;
  /* byte-level tokens for the four bytes of U+1F600 (F0 9F 98 80) and for 'A' */
  int32_t f0 = tok_token_id(t, "ð"), x9f = tok_token_id(t, "Ł"), x98 = tok_token_id(t, "ĺ"), x80 = tok_token_id(t, "Ģ"),
          a = tok_token_id(t, "A");
  T_REQUIRE(f0 >= 0 && x9f >= 0 && x98 >= 0 && x80 >= 0 && a >= 0, "byte tokens missing");
  tok_stream_t st;
  tok_stream_init(&st, t, 0);
  tok_text_t s = {0};
  int32_t seq[4] = {f0, x9f, x98, x80};
  for (int i = 0; i < 3; i++) {
    T_CHECK(tok_stream_push(&st, seq[i], &s, &err) == ES_OK, "%s", err.msg);
    T_CHECK(s.len == 0, "stream emitted %zu bytes after %d of 4 bytes of an emoji", s.len, i + 1);
  }
  T_CHECK(tok_stream_push(&st, seq[3], &s, &err) == ES_OK && s.len == 4 && memcmp(s.data, "\xF0\x9F\x98\x80", 4) == 0,
          "stream did not emit the completed emoji");
  tok_text_free(&s);
  /* what transformers decodes: a truncated sequence is one U+FFFD, a surrogate's bytes three */
  tok_text_t d = {0};
  int32_t bad1[3] = {f0, x9f, a};
  T_CHECK(tok_decode(t, bad1, 3, 0, &d, &err) == ES_OK && strcmp(d.data, "\xEF\xBF\xBD"
                                                                         "A") == 0,
          "decode(F0 9F 'A') = \"%s\"", d.data);
  int32_t ed = tok_token_id(t, "í"), a0 = tok_token_id(t, "ł");
  int32_t bad2[3] = {ed, a0, x80};
  T_CHECK(tok_decode(t, bad2, 3, 0, &d, &err) == ES_OK && strcmp(d.data, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD") == 0,
          "decode(ED A0 80) = \"%s\"", d.data);
  /* a special token in the middle of a split character, then skipped: the bytes join up again */
  int32_t audio = tok_token_id(t, "<|AUDIO|>");
  int32_t mid[5] = {f0, x9f, audio, x98, x80};
  T_CHECK(tok_decode(t, mid, 5, 1, &d, &err) == ES_OK && strcmp(d.data, "\xF0\x9F\x98\x80") == 0,
          "skip_special decode across a split character");
  T_CHECK(tok_decode(t, mid, 5, 0, &d, &err) == ES_OK &&
              strcmp(d.data, "\xEF\xBF\xBD<|AUDIO|>\xEF\xBF\xBD\xEF\xBF\xBD") == 0,
          "decode across a split character = \"%s\"", d.data);
  tok_stream_init(&st, t, 0);
  tok_text_t s2 = {0};
  for (int i = 0; i < 5; i++) tok_stream_push(&st, mid[i], &s2, &err);
  tok_stream_flush(&st, &s2, &err);
  T_CHECK(s2.len == d.len && memcmp(s2.data, d.data, d.len) == 0, "stream across a split character");
  /* an unfinished character at the end of the stream becomes U+FFFD on flush */
  tok_stream_init(&st, t, 0);
  s2.len = 0;
  tok_stream_push(&st, f0, &s2, &err);
  tok_stream_flush(&st, &s2, &err);
  T_CHECK(s2.len == 3 && memcmp(s2.data, "\xEF\xBF\xBD", 3) == 0, "flush of a partial character");
  tok_text_free(&s2);
  tok_text_free(&d);
}

static void test_ids_without_string(const tok_t *t) {
  es_error_t err;
  tok_text_t d = {0};
  int32_t n = tok_n_ids(t);
  T_CHECK(n == 151649, "tok_n_ids = %d (151643 vocabulary + 6 added tokens)", (int)n);
  int32_t ids[4] = {16, n, 156031, 17}; /* rows of the 156032-row model past the tokenizer's table */
  T_CHECK(tok_decode(t, ids, 4, 0, &d, &err) == ES_OK && strcmp(d.data, "12") == 0, "decode = \"%s\"", d.data);
  T_CHECK(tok_decode(t, ids + 1, 1, 0, &d, &err) == ES_OK && d.len == 0, "an id without a string decodes to \"\"");
  tok_stream_t st;
  tok_stream_init(&st, t, 0);
  d.len = 0;
  T_CHECK(tok_stream_push(&st, n + 5, &d, &err) == ES_OK && d.len == 0, "stream: an id without a string");
  int32_t neg = -1;
  T_CHECK(tok_decode(t, &neg, 1, 0, &d, &err) == ES_EINVAL, "negative id accepted");
  T_CHECK(tok_stream_push(&st, -3, &d, &err) == ES_EINVAL, "stream: negative id accepted");
  tok_text_free(&d);
  T_CHECK(tok_id_flags(t, n) == 0 && tok_id_flags(t, -1) == 0, "flags of ids without strings");
  int32_t audio = tok_token_id(t, "<|AUDIO|>");
  T_CHECK(audio >= 0 && (tok_id_flags(t, audio) & (TOK_ID_ADDED | TOK_ID_SPECIAL)) == (TOK_ID_ADDED | TOK_ID_SPECIAL),
          "<|AUDIO|> is a special added token");
  T_CHECK(tok_token_id(t, "Ġthe") >= 0 && tok_token_id(t, "<|no such token|>") == -1, "tok_token_id");
}

static void test_invalid_utf8(const tok_t *t) {
  /* A Python str cannot hold invalid UTF-8, so transformers has no behaviour to copy: we reject it. */
  static const char *const bad[] = {"\xFF",     "ab\xC3",  "\xC0\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80",
                                    "ok\x80ok", "\xE4\xBD"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    es_error_t err;
    es_error_clear(&err);
    tok_ids_t ids = {0};
    int rc = tok_encode(t, bad[i], strlen(bad[i]), &ids, &err);
    T_CHECK(rc == ES_EINVAL && strstr(err.msg, "not valid UTF-8") && strstr(err.msg, "offset") && ids.n == 0,
            "invalid UTF-8 case %zu: rc %d, \"%s\"", i, rc, err.msg);
    tok_ids_free(&ids);
  }
}

static void check_roundtrip(const tok_t *t, const char *text, size_t len, const char *what) {
  es_error_t err;
  tok_ids_t ids = {0};
  tok_text_t d = {0};
  int rc = tok_encode(t, text, len, &ids, &err);
  T_CHECK(rc == ES_OK, "%s: %s", what, err.msg);
  T_CHECK(rc == ES_OK && ids.n > 0 && ids.n < len, "%s: %zu ids for %zu bytes", what, ids.n, len);
  T_CHECK(tok_decode(t, ids.ids, ids.n, 0, &d, &err) == ES_OK && d.len == len && memcmp(d.data, text, len) == 0,
          "%s: decode(encode(x)) != x", what);
  tok_ids_free(&ids);
  tok_text_free(&d);
}

static void test_long_inputs(const tok_t *t) {
  size_t n = 1 << 20;
  char *s = malloc(n * 3 + 1);
  memset(s, 'a', n); /* one 1 MiB piece: BPE must not be quadratic */
  check_roundtrip(t, s, n, "1 MiB of 'a'");
  memset(s, ' ', n); /* one whitespace run: the regex's \s+(?!\S) backtracks over it */
  check_roundtrip(t, s, n, "1 MiB of spaces");
  for (size_t i = 0; i < n; i++) memcpy(s + 3 * i, "\xE4\xBD\xA0", 3); /* 你 x 1M, no spaces */
  check_roundtrip(t, s, 3 * n, "1M Chinese characters");
  free(s);
}

typedef struct {
  const tok_t *t;
  int mismatches;
} thread_arg_t;

static void *encode_thread(void *p) {
  thread_arg_t *a = p;
  es_error_t err;
  for (int round = 0; round < 20; round++)
    for (size_t i = 0; i < g_n; i++) {
      tok_ids_t ids = {0};
      int rc = tok_encode(a->t, g_entries[i].text, g_entries[i].text_len, &ids, &err);
      if (rc || ids.n != g_entries[i].n_ids || (ids.n && memcmp(ids.ids, g_entries[i].ids, ids.n * 4) != 0))
        a->mismatches++;
      tok_ids_free(&ids);
    }
  return NULL;
}

static void test_threads(const tok_t *t) {
  enum { N = 4 };
  pthread_t th[N];
  thread_arg_t args[N];
  for (int i = 0; i < N; i++) {
    args[i] = (thread_arg_t){.t = t};
    T_REQUIRE(pthread_create(&th[i], NULL, encode_thread, &args[i]) == 0, "pthread_create");
  }
  int bad = 0;
  for (int i = 0; i < N; i++) {
    pthread_join(th[i], NULL);
    bad += args[i].mismatches;
  }
  T_CHECK(bad == 0, "%d mismatches encoding from %d threads at once", bad, N);
}

static void test_layouts_agree(const tok_t *a, const tok_t *b, const char *what) {
  T_REQUIRE(tok_n_ids(a) == tok_n_ids(b), "%s: %d vs %d ids", what, (int)tok_n_ids(a), (int)tok_n_ids(b));
  int32_t diff = -1;
  for (int32_t id = 0; id < tok_n_ids(a) && diff < 0; id++) {
    size_t la, lb;
    const char *x = tok_id_bytes(a, id, &la), *y = tok_id_bytes(b, id, &lb);
    if (tok_id_flags(a, id) != tok_id_flags(b, id) || la != lb || (la && memcmp(x, y, la) != 0)) diff = id;
  }
  T_CHECK(diff < 0, "%s: id %d differs", what, (int)diff);
  T_CHECK(tok_n_added(a) == tok_n_added(b), "%s: added token counts", what);
}

static void test_load_errors(const char *build_dir) {
  es_error_t err;
  tok_t *t = NULL;
  T_CHECK(tok_load(ES_SOURCE_DIR "/tests/no-such-dir", &t, &err) == ES_ENOTFOUND && !t, "missing dir: %s", err.msg);
  char path[4096];
  snprintf(path, sizeof path, "%s/tokenizer-bad-merge.json", build_dir);
  const char *bad = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"abc\"]},"
                    "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":"
                    "{\"Regex\":\"\\\\s+\"},\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\","
                    "\"use_regex\":false}]}}";
  T_REQUIRE(es_write_file(path, bad, strlen(bad), &err) == ES_OK, "%s", err.msg);
  int rc = tok_load_tokenizer_json(path, &t, &err);
  T_CHECK(rc == ES_EINVAL && strstr(err.msg, "merge 0"), "bad merge: rc %d, %s", rc, err.msg);
  const char *nobytes = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
                        "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":"
                        "{\"Regex\":\"\\\\s+\"},\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\","
                        "\"use_regex\":false}]}}";
  T_REQUIRE(es_write_file(path, nobytes, strlen(nobytes), &err) == ES_OK, "%s", err.msg);
  rc = tok_load_tokenizer_json(path, &t, &err);
  T_CHECK(rc == ES_EUNSUPPORTED && strstr(err.msg, "byte-level"), "no byte tokens: rc %d, %s", rc, err.msg);
  const char *wordpiece = "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}";
  T_REQUIRE(es_write_file(path, wordpiece, strlen(wordpiece), &err) == ES_OK, "%s", err.msg);
  rc = tok_load_tokenizer_json(path, &t, &err);
  T_CHECK(rc == ES_EUNSUPPORTED && strstr(err.msg, "WordPiece"), "WordPiece: rc %d, %s", rc, err.msg);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_tokenizer BUILD_DIR\n");
    return 2;
  }
  if (load_corpus() != 0) {
    T_CHECK(0, "cannot read %s", CORPUS);
    return t_finish();
  }
  es_error_t err;
  tok_t *tj = NULL, *vm = NULL, *ab = NULL;
  T_CHECK(tok_load_tokenizer_json(TOK_DIR "/tokenizer.json", &tj, &err) == ES_OK, "%s", err.msg);
  T_CHECK(tok_load_vocab_merges(TOK_DIR "/vocab.json", TOK_DIR "/merges.txt", TOK_DIR "/tokenizer_config.json", NULL,
                                &vm, &err) == ES_OK,
          "%s", err.msg);
  char ab_path[4096];
  snprintf(ab_path, sizeof ab_path, "%s/tokenizer-string-merges.json", argv[1]);
  T_CHECK(write_string_merges(TOK_DIR "/tokenizer.json", ab_path) == 0, "cannot write %s", ab_path);
  T_CHECK(tok_load_tokenizer_json(ab_path, &ab, &err) == ES_OK, "%s", err.msg);
  tok_t *dir = NULL;
  T_CHECK(tok_load(TOK_DIR, &dir, &err) == ES_OK, "%s", err.msg);
  if (tj && vm && ab && dir) {
    test_corpus(tj, "tokenizer.json");
    test_corpus(ab, "tokenizer.json with \"a b\" merges");
    test_corpus(vm, "vocab.json + merges.txt");
    test_layouts_agree(tj, vm, "tokenizer.json vs vocab/merges");
    test_layouts_agree(tj, ab, "array vs string merges");
    test_layouts_agree(tj, dir, "tok_load(dir)");
    test_decode_and_stream(tj);
    test_decode_and_stream(vm);
    test_partial_utf8(tj);
    test_ids_without_string(tj);
    test_invalid_utf8(tj);
    test_long_inputs(tj);
    test_threads(tj);
  }
  test_load_errors(argv[1]);
  tok_free(tj);
  tok_free(vm);
  tok_free(ab);
  tok_free(dir);
  free_corpus();
  return t_finish();
}
