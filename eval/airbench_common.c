/* airbench_common: what the Foundation and the Chat scorers share — Python's whitespace and json semantics
 * on cJSON records, record error messages, uniq_id deduplication, report building. See airbench_common.h. */
#include "airbench_common.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Python's str semantics on UTF-8 ---- */

/* Byte length of the code point at s (n bytes left) when Python's str.isspace() holds for it, else 0:
 * \t..\r, \x1c..\x1f, space, U+0085, U+00A0, U+1680, U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000.
 * int() strips the same set less \x1c..\x1f (CPython maps non-ASCII spaces to ' ', then skips C isspace()):
 * seps = 0 gives that set. Invalid UTF-8 (Python would not have decoded the file) is never whitespace. */
static size_t py_space_at(const unsigned char *s, size_t n, int seps) {
  if (n >= 1 && ((s[0] >= 0x09 && s[0] <= 0x0d) || s[0] == 0x20 || (seps && s[0] >= 0x1c && s[0] <= 0x1f))) return 1;
  if (n >= 2 && s[0] == 0xc2 && (s[1] == 0x85 || s[1] == 0xa0)) return 2;
  if (n < 3) return 0;
  if (s[0] == 0xe1 && s[1] == 0x9a && s[2] == 0x80) return 3;
  if (s[0] == 0xe2 && s[1] == 0x80 && (s[2] <= 0x8a || s[2] == 0xa8 || s[2] == 0xa9 || s[2] == 0xaf)) return 3;
  if (s[0] == 0xe2 && s[1] == 0x81 && s[2] == 0x9f) return 3;
  if (s[0] == 0xe3 && s[1] == 0x80 && s[2] == 0x80) return 3;
  return 0;
}

/* The same for the code point that ends at s + b (a <= b). */
static size_t py_space_before(const unsigned char *s, size_t a, size_t b, int seps) {
  for (size_t k = 1; k <= 3 && k <= b - a; k++)
    if (py_space_at(s + b - k, k, seps) == k) return k;
  return 0;
}

/* Python's str.strip() on s[*a, *b) (seps = 1), or the whitespace int() ignores around a number (seps = 0). */
void ab_py_strip(const char *str, size_t *a, size_t *b, int seps) {
  const unsigned char *s = (const unsigned char *)str;
  size_t k;
  while (*a < *b && (k = py_space_at(s + *a, *b - *a, seps))) *a += k;
  while (*b > *a && (k = py_space_before(s, *a, *b, seps))) *b -= k;
}

/* ---- records ---- */

/* obj[key] as Python's json.loads gives it: case-sensitive, and the last of duplicate keys wins (cJSON's
 * own lookup returns the first). */
const cJSON *ab_get_key(const cJSON *obj, const char *key) {
  const cJSON *found = NULL;
  for (const cJSON *c = obj ? obj->child : NULL; c; c = c->next)
    if (c->string && !strcmp(c->string, key)) found = c;
  return found;
}

const char *ab_get_str(const cJSON *obj, const char *key) {
  const cJSON *v = ab_get_key(obj, key);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

const char *ab_type_name(const cJSON *v) {
  return !v                  ? "missing"
         : cJSON_IsNull(v)   ? "null"
         : cJSON_IsBool(v)   ? "a boolean"
         : cJSON_IsNumber(v) ? "a number"
         : cJSON_IsString(v) ? "a string"
         : cJSON_IsArray(v)  ? "an array"
                             : "an object";
}

/* jsonl gives every record of an array file line 1; name those by their element index instead. */
int ab_rec_fail(es_error_t *err, const char *path, const jsonl_t *j, size_t i, const char *fmt, ...) {
  char what[320];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  if (j->is_array) return es_fail(err, ES_EINVAL, "%s: element %zu of the array: %s", path, i, what);
  return es_fail(err, ES_EINVAL, "%s:%d: %s", path, j->line_numbers[i], what);
}

typedef struct {
  int is_str;
  double num;
  const char *str;
  size_t idx;
} idkey_t;

static int idkey_cmp(const void *pa, const void *pb) {
  const idkey_t *a = pa, *b = pb;
  if (a->is_str != b->is_str) return a->is_str - b->is_str;
  int c = a->is_str ? strcmp(a->str, b->str) : (a->num > b->num) - (a->num < b->num);
  return c ? c : (a->idx > b->idx) - (a->idx < b->idx);
}

/* keep[i] = 0 where a later record has the same uniq_id (a number or a string; records without one, or with
 * null, all count). *n_dup = how many were dropped. */
int ab_dedupe(const jsonl_t *j, const char *path, unsigned char *keep, size_t *n_dup, es_error_t *err) {
  *n_dup = 0;
  idkey_t *keys = malloc((j->n ? j->n : 1) * sizeof *keys);
  if (!keys) return es_fail(err, ES_ENOMEM, "%s: out of memory", path);
  size_t n = 0;
  for (size_t i = 0; i < j->n; i++) {
    keep[i] = 1;
    const cJSON *id = ab_get_key(j->records[i], "uniq_id");
    if (!id || cJSON_IsNull(id)) continue;
    if (!cJSON_IsNumber(id) && !cJSON_IsString(id)) {
      free(keys);
      return ab_rec_fail(err, path, j, i, "uniq_id is %s, not a number or a string", ab_type_name(id));
    }
    keys[n++] = (idkey_t){cJSON_IsString(id), id->valuedouble, id->valuestring, i};
  }
  qsort(keys, n, sizeof *keys, idkey_cmp);
  for (size_t k = 0; k + 1 < n; k++) {
    idkey_t next = keys[k + 1];
    next.idx = keys[k].idx;
    if (idkey_cmp(&keys[k], &next) == 0) {
      keep[keys[k].idx] = 0;
      (*n_dup)++;
    }
  }
  free(keys);
  return ES_OK;
}

/* ---- JSON building: every helper tolerates a NULL parent and records a failed allocation in *oom ---- */

void ab_jnum(cJSON *o, const char *k, double v, int *oom) {
  if (!o || !(isnan(v) ? cJSON_AddNullToObject(o, k) : cJSON_AddNumberToObject(o, k, v))) *oom = 1;
}
void ab_jstr(cJSON *o, const char *k, const char *v, int *oom) {
  if (!o || !(v ? cJSON_AddStringToObject(o, k, v) : cJSON_AddNullToObject(o, k))) *oom = 1;
}
cJSON *ab_jobj(cJSON *parent, const char *k, int *oom) {
  cJSON *o = parent ? (cJSON_IsArray(parent) ? cJSON_CreateObject() : cJSON_AddObjectToObject(parent, k)) : NULL;
  if (o && cJSON_IsArray(parent) && !cJSON_AddItemToArray(parent, o)) {
    cJSON_Delete(o);
    o = NULL;
  }
  if (!o) *oom = 1;
  return o;
}
cJSON *ab_jarr(cJSON *o, const char *k, int *oom) {
  cJSON *a = o ? cJSON_AddArrayToObject(o, k) : NULL;
  if (!a) *oom = 1;
  return a;
}

double ab_ratio(double num, long den) {
  return den ? num / (double)den : NAN;
}

/* v printed with fmt ("%.1f": percent as the leaderboard prints it), or "-" when undefined. */
const char *ab_fmt_num(char *buf, size_t cap, const char *fmt, double v) {
  if (isnan(v))
    snprintf(buf, cap, "-");
  else
    snprintf(buf, cap, fmt, v);
  return buf;
}
