/* jsonl: reads a file of JSON records — JSON Lines (one object per line) or one JSON array — as the
 * AIR-Bench tools write them (the inference scripts write JSONL, cal_score.py reads an array).
 *
 * A JSONL file that was being appended to when its writer stopped may end in a partial line: a last line
 * with no newline that starts like a record ('{') but does not parse is dropped and reported
 * (truncated_tail), not an error, so that a resumed run and a scorer read what was completed. Any other line
 * that does not parse as a JSON object is an error naming its line number (so a file that is not JSON at all
 * is an error, not an empty list). Blank lines are skipped.
 *
 * Thread safety: no shared state.
 */
#pragma once

#include <cjson/cJSON.h>
#include <stddef.h>

#include "es_error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  cJSON **records;   /* n parsed objects, in file order (owned; jsonl_free deletes them) */
  int *line_numbers; /* 1-based line of each record (1 for every record of an array file) */
  size_t n;
  int truncated_tail; /* 1: the last line had no newline and did not parse; it was dropped */
  int is_array;       /* 1: the file was one JSON array (every record's line number is then 1) */
} jsonl_t;

/* Reads path (at most max_bytes). A file that does not exist is ES_ENOTFOUND. */
int jsonl_read(const char *path, size_t max_bytes, jsonl_t *out, es_error_t *err);
/* Same, from a buffer (name is used in messages). */
int jsonl_parse(const char *name, const char *data, size_t len, jsonl_t *out, es_error_t *err);
void jsonl_free(jsonl_t *j);

#ifdef __cplusplus
}
#endif
