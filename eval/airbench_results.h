/* airbench_results: the result files of an AIR-Bench run — one JSONL file per track that the official
 * scorers read unchanged, written append-only so that a stopped run loses nothing it finished, and resumed
 * by uniq_id.
 *
 * A line holds the official keys in the official order (AIRBENCH.md §3.3: the item's fields, with response
 * before uniq_id), response always a string ("" when the generation failed), then our own keys: error (null
 * or the message), finish_reason, n_prompt_tokens, n_audio_tokens, n_gen_tokens, audio_seconds, latency_ms,
 * first_token_ms. The official scorers ignore extra keys.
 *
 * Resume: the ids whose last line has a null error are done; failed ones run again (their new line comes
 * later in the file and wins). A partial last line (the writer was killed mid-line) is cut off before
 * appending. At the end of a run the file is rewritten sorted by uniq_id with one line per id (the last), via a
 * temporary file renamed over it, so that a crash during the rewrite leaves the old file whole.
 * Thread safety: an ab_results_t is used by one thread.
 */
#pragma once

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>

#include "airbench_items.h"
#include "es_error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What one generation gave (the extra keys of its line). */
typedef struct {
  const char *response;      /* the model's text; NULL is written as "" */
  const char *error;         /* NULL on success */
  const char *finish_reason; /* "stop", "length", ...; NULL -> null */
  int n_prompt_tokens, n_audio_tokens, n_gen_tokens;
  double audio_seconds; /* of the decoded audio (before any 30 s cut) */
  double latency_s;     /* submit -> last token */
  double first_token_s; /* submit -> first token */
} ab_outcome_t;

/* The line for item (no trailing newline; cJSON_free it). NULL when out of memory. */
char *ab_result_line(ab_track_t track, const cJSON *item, const ab_outcome_t *o);

typedef struct {
  char path[4096];
  FILE *f;       /* open for appending, locked (flock) against a second run on the same file */
  int64_t *done; /* sorted ids already done (last line without error) */
  size_t n_done;
  size_t n_failed;    /* ids whose last line has an error: they run again */
  size_t n_lines;     /* complete lines found */
  int truncated_tail; /* a partial last line was cut off */
} ab_results_t;

/* Opens (creating) path for appending after reading what it holds. Fails when another process holds the
 * file (ES_EIO, naming it), or a line is not a JSON object with an integer uniq_id (naming the line). */
int ab_results_open(const char *path, ab_results_t *r, es_error_t *err);
/* 1 when id's last line is a success. */
int ab_results_done(const ab_results_t *r, int64_t id);
/* Appends one line and flushes it to the kernel. */
int ab_results_append(ab_results_t *r, const char *line, es_error_t *err);
/* Rewrites the file sorted by uniq_id, one line per id (the last), and keeps it open for appending. */
int ab_results_compact(ab_results_t *r, es_error_t *err);
void ab_results_close(ab_results_t *r);

/* The official result file name: "<Track>_result_<model>.jsonl", or "..._shard<I>of<N>.jsonl" for a shard
 * (N > 1); characters of model other than [A-Za-z0-9._-] become '_'. */
int ab_result_file_name(ab_track_t track, const char *model, int shard_index, int shard_count, char *out, size_t cap,
                        es_error_t *err);

#ifdef __cplusplus
}
#endif
