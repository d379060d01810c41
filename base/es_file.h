/* es_file: whole-file reads with a size cap, and path helpers.
 * Thread safety: no shared state; every call is independent.
 */
#pragma once

#include <stddef.h>

#include "es_error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Reads the whole file at path into a malloc'd buffer (*out, NUL-terminated for convenience; *len excludes
 * the NUL). Fails with ES_ETOOBIG when the file exceeds max_bytes, ES_ENOTFOUND when it does not exist.
 * The caller frees *out. */
int es_read_file(const char *path, size_t max_bytes, char **out, size_t *len, es_error_t *err);

/* Writes len bytes to path (created or truncated). */
int es_write_file(const char *path, const void *data, size_t len, es_error_t *err);

/* 1 when path names an existing regular file or directory (following links), else 0. */
int es_path_exists(const char *path);

/* Joins dir and name with one '/' into out (size cap). Fails with ES_ETOOBIG when it does not fit. */
int es_path_join(char *out, size_t cap, const char *dir, const char *name, es_error_t *err);

#ifdef __cplusplus
}
#endif
