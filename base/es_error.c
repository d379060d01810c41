/* es_error: caller-owned error messages. See es_error.h. */
#include "es_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void es_error_clear(es_error_t *err) {
  if (!err) return;
  err->code = ES_OK;
  err->msg[0] = '\0';
}

int es_fail(es_error_t *err, int code, const char *fmt, ...) {
  if (!err) return code;
  err->code = code;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->msg, sizeof err->msg, fmt, ap);
  va_end(ap);
  return code;
}

int es_error_prefix(es_error_t *err, const char *fmt, ...) {
  if (!err) return ES_EINTERNAL;
  char prefix[ES_ERROR_MSG_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  /* Messages are truncated to fit, never overflowed: keep as much of the prefix and old text as fits. */
  char old[ES_ERROR_MSG_MAX];
  memcpy(old, err->msg, sizeof old);
  old[sizeof old - 1] = '\0';
  size_t pl = strlen(prefix), ol = strlen(old), cap = sizeof err->msg - 1;
  if (pl > cap) pl = cap;
  if (ol > cap - pl) ol = cap - pl;
  memcpy(err->msg, prefix, pl);
  memcpy(err->msg + pl, old, ol);
  err->msg[pl + ol] = '\0';
  return err->code;
}

const char *es_error_code_name(int code) {
  switch (code) {
  case ES_OK: return "ok";
  case ES_EINVAL: return "invalid input";
  case ES_EIO: return "i/o error";
  case ES_ENOMEM: return "out of memory";
  case ES_EUNSUPPORTED: return "unsupported";
  case ES_ETOOBIG: return "over the limit";
  case ES_ENOTFOUND: return "not found";
  case ES_EDEVICE: return "device error";
  case ES_EINTERNAL: return "internal error";
  default: return "unknown error";
  }
}

void es_assert_fail(const char *cond, const char *file, int line) {
  fprintf(stderr, "earshot: internal error at %s:%d: assertion `%s` failed\n", file, line, cond);
  abort();
}
