/* airbench_common: helpers shared by the AIR-Bench scorers (airbench_score.c: Foundation, airbench_chat.c:
 * Chat), internal to eval/. They follow Python where the official scripts' results depend on it: str.strip()'s
 * whitespace, json.loads' duplicate keys (the last wins).
 * Thread safety: no shared state.
 */
#pragma once

#include <cjson/cJSON.h>
#include <stddef.h>

#include "es_error.h"
#include "jsonl.h"

#define AB_MAX_FILE_BYTES ((size_t)1 << 30) /* result and judge files read whole */

/* Python's str.strip() on str[*a, *b) (seps = 1: Python's whitespace, Unicode spaces included), or the
 * whitespace int() ignores around a number (seps = 0: the same less \x1c..\x1f). */
void ab_py_strip(const char *str, size_t *a, size_t *b, int seps);

/* obj[key] as Python's json.loads gives it: case-sensitive, the last of duplicate keys (NULL when absent). */
const cJSON *ab_get_key(const cJSON *obj, const char *key);
/* The string value of obj[key], or NULL. */
const char *ab_get_str(const cJSON *obj, const char *key);
/* "missing", "null", "a boolean", "a number", "a string", "an array", "an object". */
const char *ab_type_name(const cJSON *v);

/* Fails with ES_EINVAL naming record i of path: "path:LINE: what", or "path: element i of the array: what" for
 * a JSON array file. Returns ES_EINVAL. */
int ab_rec_fail(es_error_t *err, const char *path, const jsonl_t *j, size_t i, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 5, 6)))
#endif
    ;

/* keep[i] (j->n entries) = 0 where a later record has the same uniq_id (a number or a string; records without
 * one, or with null, all count); *n_dup = how many were dropped. A uniq_id of another type is an error. */
int ab_dedupe(const jsonl_t *j, const char *path, unsigned char *keep, size_t *n_dup, es_error_t *err);

/* Report building: each tolerates a NULL parent and sets *oom when an allocation fails. ab_jnum writes NAN as
 * null; ab_jstr writes NULL as null; ab_jobj appends to an array parent or adds key k to an object. */
void ab_jnum(cJSON *o, const char *k, double v, int *oom);
void ab_jstr(cJSON *o, const char *k, const char *v, int *oom);
cJSON *ab_jobj(cJSON *parent, const char *k, int *oom);
cJSON *ab_jarr(cJSON *o, const char *k, int *oom);

/* num / den, NAN when den is 0. */
double ab_ratio(double num, long den);
/* v printed with fmt ("%.1f"), or "-" when v is NAN; returns buf. */
const char *ab_fmt_num(char *buf, size_t cap, const char *fmt, double v);
