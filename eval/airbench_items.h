/* airbench_items: the items of an AIR-Bench track read from the official data layout, selected, and turned
 * into what the model is asked.
 *
 * Layout (AIRBENCH.md §1.1): ROOT/Foundation/Foundation_meta.json and ROOT/Chat/Chat_meta.json, each one JSON
 * array of items; an item's audio is ROOT/<Track>/<task_name>_<dataset_name>/<path>, except that the
 * Audio_Grounding items name ".wav" files that ship as ".flac" (the official script swaps the last three
 * characters, and so do we). Items are keyed by uniq_id, unique within a track.
 *
 * Selection, in this order: --task / --dataset (exact names, comma-separated lists), then the contiguous
 * shard i of N of what is left (Qwen's InferenceSampler slices), then the first `limit` items of the shard.
 *
 * The question (AIRBENCH.md §3.1–§3.2): Foundation items get the official instruction, byte for byte —
 * options A–D on their own lines, an absent choice_c / choice_d printed as Python prints None ("C. None"), as
 * the official script does; Chat items get the question alone.
 * ref: OFA-Sys/AIR-Bench Inference_Foundation.py, Inference_Chat.py.
 * Thread safety: an ab_meta_t is used by one thread at a time; the functions keep no other state.
 */
#pragma once

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "es_error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { AB_FOUNDATION = 0, AB_CHAT = 1 } ab_track_t;

const char *ab_track_dir(ab_track_t t);  /* "Foundation", "Chat" (the folder, and the result file's prefix) */
const char *ab_track_name(ab_track_t t); /* "foundation", "chat" (the command line's name) */

typedef struct {
  const char *tasks;    /* comma-separated task_name values; NULL or "" = every task */
  const char *datasets; /* comma-separated dataset_name values; NULL or "" = every dataset */
  int shard_index;      /* 0-based; with shard_count */
  int shard_count;      /* 0 or 1 = no sharding */
  long limit;           /* 0 = no limit */
  int unmatched_ok;     /* 1: a filter value that names nothing in this track is not an error (several tracks
                           are searched; ab_meta_check_filters checks them together) */
} ab_select_t;

typedef struct {
  ab_track_t track;
  char meta_path[4096];
  cJSON *root;         /* the whole meta array (owned) */
  const cJSON **items; /* the selected items, in file order (point into root) */
  size_t n_items;
  size_t n_total;      /* items in the meta file */
  uint64_t meta_fnv1a; /* FNV-1a 64 of the meta file's bytes (recorded in the run manifest) */
} ab_meta_t;

/* Reads ROOT/<Track>/<Track>_meta.json and selects items. Every item of the file is checked first (a bad item
 * anywhere is an error naming its index and uniq_id): an object with an integer uniq_id unique in the file,
 * and strings path, task_name, dataset_name, question; Foundation items also strings choice_a, choice_b and
 * answer_gt, and choice_c / choice_d absent, null or strings. A task or dataset filter naming nothing in the
 * file is an error too (a typo should not run zero items quietly). */
int ab_meta_load(const char *root, ab_track_t track, const ab_select_t *sel, ab_meta_t *out, es_error_t *err);
void ab_meta_free(ab_meta_t *m);

/* Every --task / --dataset value of sel names something in at least one of the n meta files (their whole
 * item lists, before selection); else an error naming the value. */
int ab_meta_check_filters(const ab_meta_t *const *metas, int n, const ab_select_t *sel, es_error_t *err);

int64_t ab_item_uniq_id(const cJSON *item); /* of a checked item (ab_meta_load) */

/* 1 and *id when record's uniq_id is an integer (|id| <= 9e15, exact in a double), else 0: the check that meta
 * items and result lines share. */
int ab_record_uniq_id(const cJSON *record, int64_t *id);

/* FNV-1a 64 over n bytes, continuing from h (start from AB_FNV1A64_BASIS): the meta file's checksum and the
 * result lines' settings fingerprint. */
#define AB_FNV1A64_BASIS 0xcbf29ce484222325ull
uint64_t ab_fnv1a64(uint64_t h, const void *data, size_t n);
const char *ab_item_string(const cJSON *item, const char *key); /* the string field, or NULL */

/* ROOT/<Track>/<task_name>_<dataset_name>/<path> (the Audio_Grounding .wav -> .flac swap applied). */
int ab_item_audio_path(const char *root, ab_track_t track, const cJSON *item, char *out, size_t cap, es_error_t *err);

/* The text that follows the audio in the user turn (malloc'd, NUL-terminated; the caller frees it). */
int ab_item_question(ab_track_t track, const cJSON *item, char **out, es_error_t *err);

/* Parses "I/N" (0 <= I < N). */
int ab_parse_shard(const char *s, int *index, int *count, es_error_t *err);

#ifdef __cplusplus
}
#endif
