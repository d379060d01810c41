/* jsonl: JSON Lines or one JSON array of records. See jsonl.h. */
#include "jsonl.h"

#include <stdlib.h>
#include <string.h>

#include "es_file.h"

void jsonl_free(jsonl_t *j) {
  if (!j) return;
  for (size_t i = 0; i < j->n; i++) cJSON_Delete(j->records[i]);
  free(j->records);
  free(j->line_numbers);
  memset(j, 0, sizeof *j);
}

/* One JSON value spanning exactly [data, data + len) (trailing text is an error, which cJSON alone allows). */
static cJSON *parse_exact(const char *data, size_t len) {
  const char *end = NULL;
  cJSON *v = cJSON_ParseWithLengthOpts(data, len, &end, 0);
  if (!v) return NULL;
  while (end && end < data + len && (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n')) end++;
  if (end != data + len) {
    cJSON_Delete(v);
    return NULL;
  }
  return v;
}

static int push(jsonl_t *j, size_t *cap, cJSON *rec, int line, const char *name, es_error_t *err) {
  if (j->n == *cap) {
    size_t c = *cap ? *cap * 2 : 256;
    cJSON **r = realloc(j->records, c * sizeof *r);
    if (r) j->records = r;
    int *l = r ? realloc(j->line_numbers, c * sizeof *l) : NULL;
    if (l) j->line_numbers = l;
    if (!r || !l) {
      cJSON_Delete(rec);
      return es_fail(err, ES_ENOMEM, "%s: out of memory at line %d", name, line);
    }
    *cap = c;
  }
  j->records[j->n] = rec;
  j->line_numbers[j->n++] = line;
  return ES_OK;
}

static int parse_array(const char *name, const char *data, size_t len, jsonl_t *out, es_error_t *err) {
  cJSON *arr = parse_exact(data, len);
  if (!arr || !cJSON_IsArray(arr)) {
    cJSON_Delete(arr);
    return es_fail(err, ES_EINVAL, "%s: starts with '[' but is not a JSON array", name);
  }
  size_t cap = 0;
  int index = 0;
  while (arr->child) {
    cJSON *rec = cJSON_DetachItemViaPointer(arr, arr->child);
    if (!cJSON_IsObject(rec)) {
      cJSON_Delete(rec);
      cJSON_Delete(arr);
      jsonl_free(out);
      return es_fail(err, ES_EINVAL, "%s: element %d of the array is not an object", name, index);
    }
    int rc = push(out, &cap, rec, 1, name, err);
    if (rc) {
      cJSON_Delete(arr);
      jsonl_free(out);
      return rc;
    }
    index++;
  }
  cJSON_Delete(arr);
  return ES_OK;
}

int jsonl_parse(const char *name, const char *data, size_t len, jsonl_t *out, es_error_t *err) {
  memset(out, 0, sizeof *out);
  size_t i = 0;
  while (i < len && (data[i] == ' ' || data[i] == '\t' || data[i] == '\r' || data[i] == '\n')) i++;
  if (i < len && data[i] == '[') {
    int rc = parse_array(name, data + i, len - i, out, err);
    if (!rc) out->is_array = 1;
    return rc;
  }
  size_t cap = 0;
  int line = 1;
  for (size_t start = 0; start < len; line++) {
    const char *nl = memchr(data + start, '\n', len - start);
    size_t end = nl ? (size_t)(nl - data) : len;
    size_t a = start, b = end;
    while (a < b && (data[a] == ' ' || data[a] == '\t' || data[a] == '\r')) a++;
    while (b > a && (data[b - 1] == ' ' || data[b - 1] == '\t' || data[b - 1] == '\r')) b--;
    if (a < b) {
      cJSON *rec = parse_exact(data + a, b - a);
      if (!rec || !cJSON_IsObject(rec)) {
        cJSON_Delete(rec);
        if (!nl && data[a] == '{') { /* a partial last record: its writer stopped mid-line */
          out->truncated_tail = 1;
          break;
        }
        jsonl_free(out);
        return es_fail(err, ES_EINVAL, "%s:%d: not a JSON object", name, line);
      }
      int rc = push(out, &cap, rec, line, name, err);
      if (rc) {
        jsonl_free(out);
        return rc;
      }
    }
    start = nl ? end + 1 : len;
  }
  return ES_OK;
}

int jsonl_read(const char *path, size_t max_bytes, jsonl_t *out, es_error_t *err) {
  memset(out, 0, sizeof *out);
  char *data;
  size_t len;
  int rc = es_read_file(path, max_bytes, &data, &len, err);
  if (rc) return rc;
  rc = jsonl_parse(path, data, len, out, err);
  free(data);
  return rc;
}
