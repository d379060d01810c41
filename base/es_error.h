/* es_error: the caller-owned error message every fallible earshot function fills.
 *
 * Convention (STYLE.md, "Errors and ownership"): a function that can fail because of its input, a file
 * or a client returns an int status, 0 on success or a negative ES_E* code, and writes a message naming
 * the input and the problem into an es_error_t the caller owns. Only start-up failures and broken
 * invariants abort (ES_ASSERT).
 *
 * Thread safety: an es_error_t belongs to one caller; the functions here keep no global state.
 */
#pragma once

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  ES_OK = 0,
  ES_EINVAL = -1,       /* malformed input: bad file contents, bad argument, bad request field */
  ES_EIO = -2,          /* a file or stream could not be read or written */
  ES_ENOMEM = -3,       /* an allocation failed */
  ES_EUNSUPPORTED = -4, /* valid input we do not handle (format, dtype, feature not built in) */
  ES_ETOOBIG = -5,      /* input over a configured limit */
  ES_ENOTFOUND = -6,    /* a named file, tensor, key or device does not exist */
  ES_EDEVICE = -7,      /* an accelerator or accelerator library failed */
  ES_EINTERNAL = -8,    /* a bug: an invariant that should hold did not */
};

#define ES_ERROR_MSG_MAX 512

typedef struct {
  int code;                   /* the ES_E* code of the last failure, ES_OK if none */
  char msg[ES_ERROR_MSG_MAX]; /* NUL-terminated, human-readable; names the input and the problem */
} es_error_t;

/* Clears *err (err may be NULL). */
void es_error_clear(es_error_t *err);

/* Records a failure in *err (err may be NULL) and returns code, so callers write
 * `return es_fail(err, ES_EINVAL, "%s: bad header", path);`. */
int es_fail(es_error_t *err, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Prefixes the message already in *err with more context ("loading X: " + old message). Returns err->code. */
int es_error_prefix(es_error_t *err, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* A short name for a code: "invalid input", "i/o error", ... */
const char *es_error_code_name(int code);

/* Broken invariant: prints file:line and the condition, then aborts. Never for request-caused failures. */
void es_assert_fail(const char *cond, const char *file, int line);
#define ES_ASSERT(cond) ((cond) ? (void)0 : es_assert_fail(#cond, __FILE__, __LINE__))

#ifdef __cplusplus
}
#endif
