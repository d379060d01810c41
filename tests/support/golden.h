/* golden: reads the transformers oracle in tests/golden/fixtures (format: tests/golden/README.md).
 *
 * The manifest stays a cJSON tree; these helpers resolve repository-relative paths and rebuild the
 * stored arrays (samples shared as prefixes, mel features whose constant padding tail is not stored).
 * Thread safety: a golden_t is used by one thread.
 */
#pragma once

#include <cjson/cJSON.h>
#include <stdint.h>

#include "es_error.h"
#include "npy.h"

#define GOLDEN_MEL_BINS 128
#define GOLDEN_MEL_FRAMES 3000

typedef struct {
  char root[1024]; /* repository root */
  cJSON *manifest; /* owned */
} golden_t;

/* Opens the manifest under root (the repository root; ES_SOURCE_DIR in tests). */
int golden_open(golden_t *g, const char *root, es_error_t *err);
void golden_close(golden_t *g);

/* Repository-relative path -> absolute path in out. */
int golden_path(const golden_t *g, const char *rel, char *out, size_t cap, es_error_t *err);

/* Reads the npy named by a repository-relative path. */
int golden_read_npy(const golden_t *g, const char *rel, npy_array_t *out, es_error_t *err);

/* The 16 kHz samples of an audio entry (manifest.audios[ID]): float32 [count], prefix-shared files resolved. */
int golden_read_samples(const golden_t *g, const cJSON *audio, npy_array_t *out, es_error_t *err);

/* The full float32 [128, 3000] features of a window entry, padding tail rebuilt. out has 128*3000 floats. */
int golden_read_mel(const golden_t *g, const cJSON *window, float *out, es_error_t *err);

/* Small accessors: a member that must exist with the right JSON type, else an error naming it. */
int golden_get_string(const cJSON *obj, const char *key, const char **out, es_error_t *err);
int golden_get_int(const cJSON *obj, const char *key, int64_t *out, es_error_t *err);
int golden_get_number(const cJSON *obj, const char *key, double *out, es_error_t *err);
