/* backend_profile.c: op profiles (backend.h, "op profiles") — two timestamps around every op call, summed by
 * (op, shape) when the profile stops.
 *
 * Record r owns marks 2r (before the op is queued) and 2r + 1 (after). On a backend with prof_mark (CUDA) the
 * marks are device events on the op stream, so a record measures the device time from the end of the work queued
 * before the op to the end of the op's own work; on the CPU, whose ops run to completion before returning, they
 * are host clock readings. Thread safety: the backend's driving thread (backend.h).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_impl.h"
#include "es_clock.h"

typedef struct {
  char op[sizeof(((es_profile_entry_t *)0)->op)];
  char shape[sizeof(((es_profile_entry_t *)0)->shape)];
  double bytes;
  int ok; /* 0: the op failed (not counted) */
} prof_record_t;

struct es_prof_state {
  int cap, n, dropped;
  prof_record_t *rec;
  double *host_t; /* 2·cap host timestamps when the backend has no device marks */
};

static void prof_drop(es_backend_t *be) {
  es_prof_state_t *p = be->prof;
  if (!p) return;
  if (be->ops->prof_free) be->ops->prof_free(be);
  free(p->rec);
  free(p->host_t);
  free(p);
  be->prof = NULL;
}

int es_backend_profile_start(es_backend_t *be, int max_records, es_error_t *err) {
  if (!es_backend_healthy(be)) return es_fail(err, ES_EDEVICE, "%s: backend unusable", be->name);
  if (be->recording) return es_fail(err, ES_EINTERNAL, "%s: profile_start while recording a graph", be->name);
  if (be->prof) return es_fail(err, ES_EINTERNAL, "%s: a profile is already running", be->name);
  if (max_records < 1 || max_records > (1 << 20))
    return es_fail(err, ES_EINVAL, "profile_start: max_records %d outside 1 .. 2^20", max_records);
  es_prof_state_t *p = calloc(1, sizeof *p);
  if (!p) return es_fail(err, ES_ENOMEM, "profile: out of memory");
  p->cap = max_records;
  p->rec = calloc((size_t)max_records, sizeof *p->rec);
  if (!be->ops->prof_mark) p->host_t = calloc(2 * (size_t)max_records, sizeof *p->host_t);
  be->prof = p;
  if (!p->rec || (!be->ops->prof_mark && !p->host_t)) {
    prof_drop(be);
    return es_fail(err, ES_ENOMEM, "profile: out of memory for %d records", max_records);
  }
  int rc = be->ops->prof_init ? be->ops->prof_init(be, 2 * max_records, err) : ES_OK;
  if (rc) {
    free(p->rec);
    free(p->host_t);
    free(p);
    be->prof = NULL;
  }
  return rc;
}

/* A failed mark leaves the record unusable; the op itself is unaffected. */
static int prof_mark(es_backend_t *be, int mark) {
  if (be->prof->host_t) {
    be->prof->host_t[mark] = es_now_s();
    return 0;
  }
  es_error_t err;
  return be->ops->prof_mark(be, mark, &err);
}

int es_prof_begin(es_backend_t *be) {
  es_prof_state_t *p = be->prof;
  if (!p || be->recording) return -1;
  if (p->n >= p->cap) {
    p->dropped++;
    return -1;
  }
  int r = p->n++;
  p->rec[r].ok = prof_mark(be, 2 * r) == 0;
  return r;
}

void es_prof_end(es_backend_t *be, int rec, int rc, const char *op, double bytes, const char *shape_fmt, ...) {
  if (rec < 0 || !be->prof) return;
  prof_record_t *r = &be->prof->rec[rec];
  r->ok = r->ok && rc == 0 && prof_mark(be, 2 * rec + 1) == 0;
  snprintf(r->op, sizeof r->op, "%s", op);
  va_list ap;
  va_start(ap, shape_fmt);
  vsnprintf(r->shape, sizeof r->shape, shape_fmt, ap);
  va_end(ap);
  r->bytes = bytes;
}

static int by_ms_desc(const void *a, const void *b) {
  double x = ((const es_profile_entry_t *)a)->ms, y = ((const es_profile_entry_t *)b)->ms;
  return x < y ? 1 : x > y ? -1 : 0;
}

static int marks_ms(es_backend_t *be, int a, int b, double *ms, es_error_t *err) {
  if (be->prof->host_t) {
    *ms = 1e3 * (be->prof->host_t[b] - be->prof->host_t[a]);
    return ES_OK;
  }
  return be->ops->prof_ms(be, a, b, ms, err);
}

int es_backend_profile_stop(es_backend_t *be, es_profile_t *out, es_error_t *err) {
  memset(out, 0, sizeof *out);
  es_prof_state_t *p = be->prof;
  if (!p) return es_fail(err, ES_EINTERNAL, "%s: profile_stop without profile_start", be->name);
  if (be->recording) return es_fail(err, ES_EINTERNAL, "%s: profile_stop while recording a graph", be->name);
  int rc = ES_OK, first = -1, last = -1;
  out->dropped = p->dropped;
  out->entries = calloc((size_t)(p->n > 0 ? p->n : 1), sizeof *out->entries);
  if (!out->entries) rc = es_fail(err, ES_ENOMEM, "profile: out of memory");
  for (int i = 0; !rc && i < p->n; i++) {
    const prof_record_t *r = &p->rec[i];
    if (!r->ok) continue;
    double ms = 0;
    if ((rc = marks_ms(be, 2 * i, 2 * i + 1, &ms, err))) break;
    if (first < 0) first = i;
    last = i;
    int e = 0;
    while (e < out->n && (strcmp(out->entries[e].op, r->op) || strcmp(out->entries[e].shape, r->shape))) e++;
    es_profile_entry_t *en = &out->entries[e];
    if (e == out->n) {
      out->n++;
      memcpy(en->op, r->op, sizeof en->op);
      memcpy(en->shape, r->shape, sizeof en->shape);
    }
    en->calls++;
    en->ms += ms;
    en->bytes += r->bytes;
    out->records++;
    out->ops_ms += ms;
  }
  if (!rc && first >= 0) rc = marks_ms(be, 2 * first, 2 * last + 1, &out->span_ms, err);
  prof_drop(be);
  if (rc) {
    es_profile_free(out);
    return rc;
  }
  qsort(out->entries, (size_t)out->n, sizeof *out->entries, by_ms_desc);
  return ES_OK;
}

void es_profile_free(es_profile_t *p) {
  if (!p) return;
  free(p->entries);
  memset(p, 0, sizeof *p);
}

void es_backend_prof_release(es_backend_t *be) {
  prof_drop(be);
}
