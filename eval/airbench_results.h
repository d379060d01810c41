/* airbench_results: the result files of an AIR-Bench run — one JSONL file per track that the official
 * scorers read unchanged, written append-only so that a stopped run loses nothing it finished, and resumed
 * by uniq_id.
 *
 * A line holds the official keys in the official order (AIRBENCH.md §3.3: the item's fields, with response
 * before uniq_id), then our own keys: error (null or the message), error_kind (null, "input": the item itself
 * cannot be answered — undecodable or too short audio, a prompt over the context — or "run": the engine
 * failed), finish_reason, n_prompt_tokens, n_audio_tokens, n_gen_tokens, audio_seconds, latency_ms,
 * first_token_ms, settings (a fingerprint of what shapes the answers: model name, prompt format, system
 * prompt, max new tokens, quantization / compute dtype / random weights; lines without one — other tools'
 * files — are not checked). response is a string, "" for a failed Foundation item
 * (score_foundation.py strips it and counts it unparsed) and null for a failed Chat item (score_chat.py skips
 * null responses instead of sending an empty answer to the judge). The official scorers ignore extra keys.
 *
 * Resume: an id is done when its last line succeeded, or failed on its input (unless those are retried);
 * run failures run again (their new line comes later in the file and wins). Lines made with other settings
 * make the open fail (resuming would mix two runs in one file). A partial last line (the writer was killed
 * mid-line, or the machine lost the tail: NUL bytes) is cut off before appending. Each line is written with
 * one write() and fdatasync(); a failed write is undone (the file cut back to its last whole line) and the
 * file refuses further appends. At the end of a run the file is rewritten sorted by uniq_id with one line
 * per id (the last), via a locked temporary file renamed over it (and the folder synced), so that a crash
 * during the rewrite leaves the old file whole.
 * Locking: flock on the file under its name; after taking it the descriptor is checked to still be the file
 * at the path (a rewrite by the lock's previous holder may have replaced it), else the open retries.
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
  const char *response;      /* the model's text; NULL is written as "" (ignored when error is set) */
  const char *error;         /* NULL on success */
  int input_error;           /* with error: 1 = the item's input (error_kind "input"), 0 = the run ("run") */
  const char *settings;      /* the run's settings fingerprint (ab_settings_fingerprint); NULL -> null */
  const char *finish_reason; /* "stop", "length", ...; NULL -> null */
  int n_prompt_tokens, n_audio_tokens, n_gen_tokens;
  double audio_seconds; /* of the decoded audio (before any 30 s cut) */
  double latency_s;     /* submit -> last token */
  double first_token_s; /* submit -> first token */
} ab_outcome_t;

/* The line for item (no trailing newline; cJSON_free it). NULL when out of memory. */
char *ab_result_line(ab_track_t track, const cJSON *item, const ab_outcome_t *o);

typedef struct {
  const char *settings;   /* this run's fingerprint: lines with another one make the open fail (NULL: no check) */
  int retry_input_errors; /* 1: items whose last line failed on its input run again too */
} ab_results_opts_t;

typedef struct {
  char path[4096];
  int fd;        /* open for appending, locked (flock); -1 when closed */
  int broken;    /* a write failed: no more appends */
  int64_t *done; /* sorted ids already done */
  size_t n_done;
  size_t n_failed;       /* ids whose last line failed and that run again */
  size_t n_input_failed; /* ids whose last line failed on its input and stay done (not retried) */
  size_t n_lines;        /* complete lines found */
  int truncated_tail;    /* a partial last line was cut off */
} ab_results_t;

/* Opens (creating) path for appending after reading what it holds. Fails when another process holds the
 * file (ES_EIO, naming it), a line is not a JSON object with an integer uniq_id (naming the line), or lines
 * carry another settings fingerprint (ES_EINVAL, saying how many). */
int ab_results_open(const char *path, const ab_results_opts_t *opts, ab_results_t *r, es_error_t *err);
/* 1 when id is done (see above). */
int ab_results_done(const ab_results_t *r, int64_t id);
/* Appends one line ('\n' added) with one write() and fdatasync(); on failure the file is cut back to where it
 * was and r->broken is set. */
int ab_results_append(ab_results_t *r, const char *line, es_error_t *err);
/* Rewrites the file sorted by uniq_id, one line per id (the last), and keeps it open for appending. */
int ab_results_compact(ab_results_t *r, es_error_t *err);
void ab_results_close(ab_results_t *r);

/* The settings fingerprint of a run: FNV-1a 64 (16 hex digits) of the canonical text of the fields given. */
void ab_settings_fingerprint(const char *model_name, const char *prompt_format, const char *system, int max_new_tokens,
                             const char *quantization, char out[17]);

/* The official result file name: "<Track>_result_<model>.jsonl", or "..._shard<I>of<N>.jsonl" for a shard
 * (N > 1); characters of model other than [A-Za-z0-9._-] become '_'. */
int ab_result_file_name(ab_track_t track, const char *model, int shard_index, int shard_count, char *out, size_t cap,
                        es_error_t *err);

#ifdef __cplusplus
}
#endif
