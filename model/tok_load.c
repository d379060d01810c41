/* tok_load: reading a checkpoint's tokenizer files into a tok_builder_t (then tok_build, tokenizer.c).
 *
 * tokenizer.json: model.vocab, model.merges ("a b" strings, or ["a", "b"] pairs as newer tokenizers write),
 * added_tokens, normalizer (NFC or none), pre_tokenizer (Split regex + ByteLevel without its own regex).
 * vocab.json + merges.txt ("#version" header line allowed) + tokenizer_config.json (added_tokens_decoder)
 * + added_tokens.json (older checkpoints: {"content": id}): Qwen2's NFC and pattern are implied.
 * Anything these files may say that we do not implement (dropout, byte fallback, subword prefixes, another
 * normalizer or pre-tokenizer) is refused with ES_EUNSUPPORTED rather than silently ignored.
 * ref: HF tokenizers' tokenizer.json serialisation; transformers' Qwen2Tokenizer file loading.
 * Thread safety: no shared state.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "es_file.h"
#include "tok_internal.h"

#define TOK_MAX_FILE_BYTES ((size_t)256 << 20)

/* --- builder ------------------------------------------------------------------------------- */

int tok_builder_add_string(tok_builder_t *b, const char *s, size_t len, uint64_t *ref, es_error_t *err) {
  if (len > UINT32_MAX) return es_fail(err, ES_ETOOBIG, "%s: a token of %zu bytes", b->source, len);
  if (b->strs_len + len > b->strs_cap) {
    size_t cap = b->strs_cap ? b->strs_cap * 2 : 1 << 20;
    while (cap < b->strs_len + len) cap *= 2;
    char *p = realloc(b->strs, cap);
    if (!p) return es_fail(err, ES_ENOMEM, "%s: out of memory", b->source);
    b->strs = p;
    b->strs_cap = cap;
  }
  memcpy(b->strs + b->strs_len, s, len);
  *ref = (uint64_t)b->strs_len << 32 | len;
  b->strs_len += len;
  return ES_OK;
}

int tok_builder_add_vocab(tok_builder_t *b, const char *s, size_t len, int32_t id, es_error_t *err) {
  if (b->n_vocab == b->vocab_cap) {
    size_t cap = b->vocab_cap ? b->vocab_cap * 2 : 1024;
    uint64_t *o = realloc(b->vocab_off, cap * sizeof *o);
    if (o) b->vocab_off = o;
    int32_t *i = realloc(b->vocab_id, cap * sizeof *i);
    if (i) b->vocab_id = i;
    if (!o || !i) return es_fail(err, ES_ENOMEM, "%s: out of memory", b->source);
    b->vocab_cap = cap;
  }
  int rc = tok_builder_add_string(b, s, len, &b->vocab_off[b->n_vocab], err);
  if (rc) return rc;
  b->vocab_id[b->n_vocab++] = id;
  return ES_OK;
}

int tok_builder_add_merge(tok_builder_t *b, const char *l, size_t ll, const char *r, size_t rl, es_error_t *err) {
  if (b->n_merges == b->merges_cap) {
    size_t cap = b->merges_cap ? b->merges_cap * 2 : 1024;
    uint64_t *x = realloc(b->merge_left, cap * sizeof *x);
    if (x) b->merge_left = x;
    uint64_t *y = realloc(b->merge_right, cap * sizeof *y);
    if (y) b->merge_right = y;
    if (!x || !y) return es_fail(err, ES_ENOMEM, "%s: out of memory", b->source);
    b->merges_cap = cap;
  }
  int rc = tok_builder_add_string(b, l, ll, &b->merge_left[b->n_merges], err);
  if (rc == ES_OK) rc = tok_builder_add_string(b, r, rl, &b->merge_right[b->n_merges], err);
  if (rc == ES_OK) b->n_merges++;
  return rc;
}

int tok_builder_add_added(tok_builder_t *b, const tok_added_t *a, es_error_t *err) {
  if (b->n_added == b->added_cap) {
    size_t cap = b->added_cap ? b->added_cap * 2 : 64;
    tok_added_t *p = realloc(b->added, cap * sizeof *p);
    if (!p) return es_fail(err, ES_ENOMEM, "%s: out of memory", b->source);
    b->added = p;
    b->added_cap = cap;
  }
  tok_added_t c = *a;
  c.content = malloc(a->content_len + 1);
  if (!c.content) return es_fail(err, ES_ENOMEM, "%s: out of memory", b->source);
  memcpy(c.content, a->content, a->content_len);
  c.content[a->content_len] = '\0';
  b->added[b->n_added++] = c;
  return ES_OK;
}

void tok_builder_free(tok_builder_t *b) {
  if (!b) return;
  free(b->strs);
  free(b->vocab_off);
  free(b->vocab_id);
  free(b->merge_left);
  free(b->merge_right);
  for (size_t i = 0; i < b->n_added; i++) free(b->added[i].content);
  free(b->added);
  free(b->pattern);
  memset(b, 0, sizeof *b);
}

/* --- JSON helpers -------------------------------------------------------------------------- */

static int read_json(const char *path, cJSON **out, es_error_t *err) {
  char *buf = NULL;
  size_t len = 0;
  int rc = es_read_file(path, TOK_MAX_FILE_BYTES, &buf, &len, err);
  if (rc) return rc;
  *out = cJSON_ParseWithLength(buf, len);
  free(buf);
  if (!*out) return es_fail(err, ES_EINVAL, "%s: not valid JSON", path);
  return ES_OK;
}

static int json_bool(const cJSON *obj, const char *key, int dflt) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
  return dflt;
}

/* A JSON number that is an id in [0, INT32_MAX). */
static int json_id(const cJSON *v, int32_t *id) {
  if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= 2147483647.0 ||
      v->valuedouble != (double)(int64_t)v->valuedouble)
    return 0;
  *id = (int32_t)v->valuedouble;
  return 1;
}

static int parse_vocab_object(tok_builder_t *b, const cJSON *vocab, const char *where, es_error_t *err) {
  if (!cJSON_IsObject(vocab)) return es_fail(err, ES_EINVAL, "%s: %s is not an object", b->source, where);
  for (const cJSON *e = vocab->child; e; e = e->next) {
    int32_t id;
    if (!json_id(e, &id))
      return es_fail(err, ES_EINVAL, "%s: %s entry \"%s\" has no valid id", b->source, where, e->string);
    int rc = tok_builder_add_vocab(b, e->string, strlen(e->string), id, err);
    if (rc) return rc;
  }
  return ES_OK;
}

/* One added token from a tokenizer.json added_tokens entry or a tokenizer_config.json added_tokens_decoder
 * value (id given separately for the latter). */
static int parse_added(tok_builder_t *b, const cJSON *obj, int32_t id, es_error_t *err) {
  const cJSON *content = cJSON_GetObjectItemCaseSensitive(obj, "content");
  if (!cJSON_IsString(content) || !content->valuestring[0])
    return es_fail(err, ES_EINVAL, "%s: added token %d has no content", b->source, (int)id);
  tok_added_t a = {
      .content = content->valuestring,
      .content_len = strlen(content->valuestring),
      .id = id,
      .special = (uint8_t)json_bool(obj, "special", 0),
      .lstrip = (uint8_t)json_bool(obj, "lstrip", 0),
      .rstrip = (uint8_t)json_bool(obj, "rstrip", 0),
      .single_word = (uint8_t)json_bool(obj, "single_word", 0),
  };
  /* tokenizers' default: special tokens are not normalized, others are */
  a.normalized = (uint8_t)json_bool(obj, "normalized", !a.special);
  return tok_builder_add_added(b, &a, err);
}

/* --- tokenizer.json ------------------------------------------------------------------------ */

static int is_type(const cJSON *obj, const char *type) {
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "type");
  return cJSON_IsString(t) && strcmp(t->valuestring, type) == 0;
}

static int check_normalizer(tok_builder_t *b, const cJSON *n, es_error_t *err) {
  if (!n || cJSON_IsNull(n)) return ES_OK;
  if (is_type(n, "NFC")) {
    b->nfc = 1;
    return ES_OK;
  }
  if (is_type(n, "Sequence")) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
    for (const cJSON *e = cJSON_IsArray(list) ? list->child : NULL; e; e = e->next) {
      int rc = check_normalizer(b, e, err);
      if (rc) return rc;
    }
    return ES_OK;
  }
  char *s = cJSON_PrintUnformatted(n);
  int rc = es_fail(err, ES_EUNSUPPORTED, "%s: normalizer %.200s is not supported (only NFC)", b->source, s ? s : "?");
  free(s);
  return rc;
}

static int check_byte_level(tok_builder_t *b, const cJSON *p, const char *what, es_error_t *err) {
  if (json_bool(p, "add_prefix_space", 0))
    return es_fail(err, ES_EUNSUPPORTED, "%s: %s with add_prefix_space is not supported", b->source, what);
  if (json_bool(p, "use_regex", 1))
    return es_fail(err, ES_EUNSUPPORTED, "%s: %s with its own GPT-2 regex (use_regex) is not supported", b->source,
                   what);
  return ES_OK;
}

/* Qwen2: Sequence[Split{Regex, Isolated, invert=false}, ByteLevel{use_regex=false}] */
static int parse_pre_tokenizer(tok_builder_t *b, const cJSON *p, es_error_t *err) {
  const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
  const cJSON *split = NULL, *bl = NULL;
  if (p && is_type(p, "Sequence") && cJSON_GetArraySize(list) == 2) {
    split = cJSON_GetArrayItem(list, 0);
    bl = cJSON_GetArrayItem(list, 1);
  }
  if (!split || !is_type(split, "Split") || !is_type(bl, "ByteLevel")) {
    char *s = p ? cJSON_PrintUnformatted(p) : NULL;
    int rc = es_fail(err, ES_EUNSUPPORTED,
                     "%s: pre_tokenizer %.200s is not supported (expected Qwen2's Split regex + ByteLevel)", b->source,
                     s ? s : "null");
    free(s);
    return rc;
  }
  const cJSON *pat = cJSON_GetObjectItemCaseSensitive(split, "pattern");
  const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
  const cJSON *behavior = cJSON_GetObjectItemCaseSensitive(split, "behavior");
  if (!cJSON_IsString(re) || !cJSON_IsString(behavior) || strcmp(behavior->valuestring, "Isolated") != 0 ||
      json_bool(split, "invert", 0))
    return es_fail(err, ES_EUNSUPPORTED, "%s: only an Isolated, non-inverted Split with a Regex pattern is supported",
                   b->source);
  int rc = check_byte_level(b, bl, "pre_tokenizer ByteLevel", err);
  if (rc) return rc;
  b->pattern = strdup(re->valuestring);
  if (!b->pattern) return es_fail(err, ES_ENOMEM, "%s: out of memory", b->source);
  return ES_OK;
}

static int parse_model(tok_builder_t *b, const cJSON *m, es_error_t *err) {
  if (!cJSON_IsObject(m)) return es_fail(err, ES_EINVAL, "%s: no \"model\" object", b->source);
  const cJSON *type = cJSON_GetObjectItemCaseSensitive(m, "type");
  if (cJSON_IsString(type) && strcmp(type->valuestring, "BPE") != 0)
    return es_fail(err, ES_EUNSUPPORTED, "%s: model type %s is not supported (only BPE)", b->source, type->valuestring);
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(m, "dropout");
  if (v && !cJSON_IsNull(v) && !(cJSON_IsNumber(v) && v->valuedouble == 0.0))
    return es_fail(err, ES_EUNSUPPORTED, "%s: BPE dropout is not supported", b->source);
  if (json_bool(m, "byte_fallback", 0))
    return es_fail(err, ES_EUNSUPPORTED, "%s: BPE byte_fallback is not supported", b->source);
  static const char *const affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
  for (int i = 0; i < 2; i++) {
    v = cJSON_GetObjectItemCaseSensitive(m, affixes[i]);
    if (cJSON_IsString(v) && v->valuestring[0])
      return es_fail(err, ES_EUNSUPPORTED, "%s: BPE %s is not supported", b->source, affixes[i]);
  }
  b->ignore_merges = json_bool(m, "ignore_merges", 0);
  int rc = parse_vocab_object(b, cJSON_GetObjectItemCaseSensitive(m, "vocab"), "model.vocab", err);
  if (rc) return rc;
  const cJSON *merges = cJSON_GetObjectItemCaseSensitive(m, "merges");
  if (!cJSON_IsArray(merges)) return es_fail(err, ES_EINVAL, "%s: model.merges is not an array", b->source);
  size_t i = 0;
  for (const cJSON *e = merges->child; e; e = e->next, i++) {
    if (cJSON_IsString(e)) { /* "a b": tokens never hold a space (byte-level maps it to U+0120) */
      const char *s = e->valuestring, *sp = strchr(s, ' ');
      if (!sp || !sp[1] || sp == s || strchr(sp + 1, ' '))
        return es_fail(err, ES_EINVAL, "%s: merge %zu \"%s\" is not two tokens separated by one space", b->source, i,
                       s);
      rc = tok_builder_add_merge(b, s, (size_t)(sp - s), sp + 1, strlen(sp + 1), err);
    } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(e->child) &&
               cJSON_IsString(e->child->next)) {
      const char *l = e->child->valuestring, *r = e->child->next->valuestring;
      rc = tok_builder_add_merge(b, l, strlen(l), r, strlen(r), err);
    } else {
      return es_fail(err, ES_EINVAL, "%s: merge %zu is neither \"a b\" nor [\"a\", \"b\"]", b->source, i);
    }
    if (rc) return rc;
  }
  return ES_OK;
}

int tok_load_tokenizer_json(const char *path, tok_t **out, es_error_t *err) {
  *out = NULL;
  tok_builder_t b = {.source = path};
  cJSON *root = NULL;
  int rc = read_json(path, &root, err);
  if (rc) return rc;
  if ((rc = parse_model(&b, cJSON_GetObjectItemCaseSensitive(root, "model"), err))) goto done;
  if ((rc = check_normalizer(&b, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), err))) goto done;
  if ((rc = parse_pre_tokenizer(&b, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), err))) goto done;
  const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "decoder");
  if (dec && !cJSON_IsNull(dec) && !is_type(dec, "ByteLevel")) {
    rc = es_fail(err, ES_EUNSUPPORTED, "%s: only the ByteLevel decoder is supported", path);
    goto done;
  }
  const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
  for (const cJSON *e = cJSON_IsArray(added) ? added->child : NULL; e; e = e->next) {
    int32_t id;
    if (!json_id(cJSON_GetObjectItemCaseSensitive(e, "id"), &id)) {
      rc = es_fail(err, ES_EINVAL, "%s: an added_tokens entry has no valid id", path);
      goto done;
    }
    if ((rc = parse_added(&b, e, id, err))) goto done;
  }
  rc = tok_build(&b, out, err);
done:
  cJSON_Delete(root);
  tok_builder_free(&b);
  return rc;
}

/* --- vocab.json + merges.txt + tokenizer_config.json ---------------------------------------- */

static int parse_merges_txt(tok_builder_t *b, const char *path, es_error_t *err) {
  char *buf = NULL;
  size_t len = 0;
  int rc = es_read_file(path, TOK_MAX_FILE_BYTES, &buf, &len, err);
  if (rc) return rc;
  size_t line = 0;
  for (char *p = buf, *end = buf + len; p < end && rc == ES_OK;) {
    char *nl = memchr(p, '\n', (size_t)(end - p));
    char *le = nl ? nl : end;
    line++;
    if (le > p && le[-1] == '\r') le--;
    /* the "#version: 0.2" header, and blank lines, are not merges (transformers skips them too) */
    if (!(line == 1 && le - p >= 8 && memcmp(p, "#version", 8) == 0) && le > p) {
      char *sp = memchr(p, ' ', (size_t)(le - p));
      if (!sp || sp == p || sp + 1 == le || memchr(sp + 1, ' ', (size_t)(le - sp - 1)))
        rc = es_fail(err, ES_EINVAL, "%s:%zu: not two tokens separated by one space", path, line);
      else
        rc = tok_builder_add_merge(b, p, (size_t)(sp - p), sp + 1, (size_t)(le - sp - 1), err);
    }
    p = nl ? nl + 1 : end;
  }
  free(buf);
  return rc;
}

static int cmp_added_file_id(const void *a, const void *b) {
  int32_t x = ((const tok_added_t *)a)->id, y = ((const tok_added_t *)b)->id;
  return x < y ? -1 : x > y;
}

/* tokenizer_config.json: added_tokens_decoder {"<id>": {content, special, lstrip, rstrip, ...}} */
static int parse_tokenizer_config(tok_builder_t *b, const char *path, es_error_t *err) {
  cJSON *root = NULL;
  int rc = read_json(path, &root, err);
  if (rc) return rc;
  const char *saved = b->source;
  size_t first = b->n_added;
  b->source = path;
  const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "added_tokens_decoder");
  for (const cJSON *e = cJSON_IsObject(dec) ? dec->child : NULL; e && rc == ES_OK; e = e->next) {
    char *endp = NULL;
    long id = strtol(e->string, &endp, 10);
    if (!e->string[0] || *endp || id < 0 || id >= 2147483647L || !cJSON_IsObject(e))
      rc = es_fail(err, ES_EINVAL, "%s: added_tokens_decoder key \"%s\" is not an id", path, e->string);
    else
      rc = parse_added(b, e, (int32_t)id, err);
  }
  /* in id order, as transformers adds them (ids are then assigned in this order, see tok_build) */
  if (rc == ES_OK && b->n_added > first)
    qsort(b->added + first, b->n_added - first, sizeof *b->added, cmp_added_file_id);
  b->source = saved;
  cJSON_Delete(root);
  return rc;
}

/* added_tokens.json: {"content": id}; entries already known from tokenizer_config.json are skipped. */
static int parse_added_tokens_json(tok_builder_t *b, const char *path, es_error_t *err) {
  cJSON *root = NULL;
  int rc = read_json(path, &root, err);
  if (rc) return rc;
  for (const cJSON *e = cJSON_IsObject(root) ? root->child : NULL; e && rc == ES_OK; e = e->next) {
    int32_t id;
    if (!json_id(e, &id) || !e->string[0]) {
      rc = es_fail(err, ES_EINVAL, "%s: entry \"%s\" has no valid id", path, e->string);
      break;
    }
    int known = 0;
    for (size_t i = 0; i < b->n_added && !known; i++) known = b->added[i].id == id;
    if (known) continue;
    /* transformers adds these as plain (non-special, normalized) added tokens */
    tok_added_t a = {.content = e->string, .content_len = strlen(e->string), .id = id, .normalized = 1};
    rc = tok_builder_add_added(b, &a, err);
  }
  cJSON_Delete(root);
  return rc;
}

int tok_load_vocab_merges(const char *vocab_json, const char *merges_txt, const char *config_json,
                          const char *added_tokens_json, tok_t **out, es_error_t *err) {
  *out = NULL;
  tok_builder_t b = {.source = vocab_json, .nfc = 1};
  cJSON *vocab = NULL;
  int rc = read_json(vocab_json, &vocab, err);
  if (rc) return rc;
  rc = parse_vocab_object(&b, vocab, "the vocabulary", err);
  cJSON_Delete(vocab);
  if (rc == ES_OK) {
    b.source = merges_txt;
    rc = parse_merges_txt(&b, merges_txt, err);
    b.source = vocab_json;
  }
  if (rc == ES_OK && config_json) rc = parse_tokenizer_config(&b, config_json, err);
  if (rc == ES_OK && added_tokens_json) rc = parse_added_tokens_json(&b, added_tokens_json, err);
  if (rc == ES_OK) rc = tok_build(&b, out, err);
  tok_builder_free(&b);
  return rc;
}

int tok_load(const char *dir, tok_t **out, es_error_t *err) {
  char tj[4096], vj[4096], mt[4096], cfg[4096], at[4096];
  int rc;
  if ((rc = es_path_join(tj, sizeof tj, dir, "tokenizer.json", err))) return rc;
  if (es_path_exists(tj)) return tok_load_tokenizer_json(tj, out, err);
  if ((rc = es_path_join(vj, sizeof vj, dir, "vocab.json", err)) ||
      (rc = es_path_join(mt, sizeof mt, dir, "merges.txt", err)) ||
      (rc = es_path_join(cfg, sizeof cfg, dir, "tokenizer_config.json", err)) ||
      (rc = es_path_join(at, sizeof at, dir, "added_tokens.json", err)))
    return rc;
  if (!es_path_exists(vj) || !es_path_exists(mt))
    return es_fail(err, ES_ENOTFOUND, "%s: no tokenizer.json, and no vocab.json + merges.txt", dir);
  return tok_load_vocab_merges(vj, mt, es_path_exists(cfg) ? cfg : NULL, es_path_exists(at) ? at : NULL, out, err);
}
