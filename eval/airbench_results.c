/* airbench_results: append-only, resumable AIR-Bench result files. See airbench_results.h. */
#include "airbench_results.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jsonl.h"

#define AB_MAX_RESULTS_BYTES ((size_t)4 << 30)

/* ---- lines ---- */

/* The official scripts' keys, in the order they write them (response is added before uniq_id). */
static const char *const FOUNDATION_KEYS[] = {"path",     "question",  "choice_a",  "choice_b",    "choice_c",
                                              "choice_d", "answer_gt", "task_name", "dataset_name"};
static const char *const CHAT_KEYS[] = {"meta_info", "question", "answer_gt", "path", "task_name", "dataset_name"};

static int add_copy(cJSON *o, const cJSON *item, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(item, key);
  cJSON *c = v ? cJSON_Duplicate(v, 1) : cJSON_CreateNull();
  return c && cJSON_AddItemToObject(o, key, c);
}

static int add_number_or_null(cJSON *o, const char *key, double v) {
  return isfinite(v) ? cJSON_AddNumberToObject(o, key, v) != NULL : cJSON_AddNullToObject(o, key) != NULL;
}

char *ab_result_line(ab_track_t track, const cJSON *item, const ab_outcome_t *o) {
  cJSON *line = cJSON_CreateObject();
  int ok = line != NULL;
  const char *const *keys = track == AB_CHAT ? CHAT_KEYS : FOUNDATION_KEYS;
  size_t n_keys =
      track == AB_CHAT ? sizeof CHAT_KEYS / sizeof *CHAT_KEYS : sizeof FOUNDATION_KEYS / sizeof *FOUNDATION_KEYS;
  for (size_t k = 0; ok && k < n_keys; k++) ok = add_copy(line, item, keys[k]);
  ok = ok && cJSON_AddStringToObject(line, "response", o->response ? o->response : "");
  ok = ok && add_copy(line, item, "uniq_id");
  ok = ok && (o->error ? cJSON_AddStringToObject(line, "error", o->error) : cJSON_AddNullToObject(line, "error"));
  ok = ok && (o->finish_reason ? cJSON_AddStringToObject(line, "finish_reason", o->finish_reason)
                               : cJSON_AddNullToObject(line, "finish_reason"));
  ok = ok && cJSON_AddNumberToObject(line, "n_prompt_tokens", o->n_prompt_tokens);
  ok = ok && cJSON_AddNumberToObject(line, "n_audio_tokens", o->n_audio_tokens);
  ok = ok && cJSON_AddNumberToObject(line, "n_gen_tokens", o->n_gen_tokens);
  /* rounded so the lines stay short: 1 ms and 0.1 ms are what a reader of latencies needs */
  ok = ok && add_number_or_null(line, "audio_seconds", round(o->audio_seconds * 1000.0) / 1000.0);
  ok = ok && add_number_or_null(line, "latency_ms", round(o->latency_s * 1e4) / 10.0);
  ok = ok && add_number_or_null(line, "first_token_ms", round(o->first_token_s * 1e4) / 10.0);
  char *s = ok ? cJSON_PrintUnformatted(line) : NULL;
  cJSON_Delete(line);
  return s;
}

int ab_result_file_name(ab_track_t track, const char *model, int shard_index, int shard_count, char *out, size_t cap,
                        es_error_t *err) {
  char safe[256];
  size_t n = 0;
  for (const char *p = model; *p && n + 1 < sizeof safe; p++) {
    char c = *p;
    int keep =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    safe[n++] = keep ? c : '_';
  }
  safe[n] = '\0';
  if (!n || !strcmp(safe, ".") || !strcmp(safe, ".."))
    return es_fail(err, ES_EINVAL, "model name '%s' gives no usable file name", model);
  int w = shard_count > 1 ? snprintf(out, cap, "%s_result_%s_shard%dof%d.jsonl", ab_track_dir(track), safe, shard_index,
                                     shard_count)
                          : snprintf(out, cap, "%s_result_%s.jsonl", ab_track_dir(track), safe);
  if (w < 0 || (size_t)w >= cap) return es_fail(err, ES_ETOOBIG, "result file name for '%s' is too long", model);
  return ES_OK;
}

/* ---- reading what a file holds ---- */

typedef struct {
  int64_t id;
  size_t order; /* record index: the last one of an id wins */
  int ok;       /* error absent or null */
} id_rec_t;

static int cmp_rec(const void *a, const void *b) {
  const id_rec_t *x = a, *y = b;
  if (x->id != y->id) return x->id < y->id ? -1 : 1;
  return x->order < y->order ? -1 : x->order > y->order;
}

/* The records' ids, sorted by (id, order). */
static int collect_ids(const char *path, const jsonl_t *j, id_rec_t **out, es_error_t *err) {
  *out = malloc((j->n + 1) * sizeof **out);
  if (!*out) return es_fail(err, ES_ENOMEM, "%s: out of memory for %zu lines", path, j->n);
  for (size_t i = 0; i < j->n; i++) {
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(j->records[i], "uniq_id");
    if (!cJSON_IsNumber(id) || id->valuedouble != floor(id->valuedouble) || fabs(id->valuedouble) > 9e15) {
      free(*out);
      *out = NULL;
      return es_fail(err, ES_EINVAL, "%s:%d: no integer uniq_id (is this an AIR-Bench result file?)", path,
                     j->line_numbers[i]);
    }
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j->records[i], "error");
    (*out)[i] = (id_rec_t){(int64_t)id->valuedouble, i, !e || cJSON_IsNull(e)};
  }
  qsort(*out, j->n, sizeof **out, cmp_rec);
  return ES_OK;
}

/* Reads the whole of fd (from offset 0) into a malloc'd, NUL-terminated buffer. */
static int read_fd(int fd, const char *path, char **data, size_t *len, es_error_t *err) {
  struct stat st;
  *data = NULL;
  *len = 0;
  if (fstat(fd, &st)) return es_fail(err, ES_EIO, "%s: %s", path, strerror(errno));
  if ((unsigned long long)st.st_size > AB_MAX_RESULTS_BYTES)
    return es_fail(err, ES_ETOOBIG, "%s: %lld bytes, over the limit", path, (long long)st.st_size);
  size_t n = (size_t)st.st_size, got = 0;
  char *buf = malloc(n + 1);
  if (!buf) return es_fail(err, ES_ENOMEM, "%s: out of memory for %zu bytes", path, n);
  while (got < n) {
    ssize_t r = pread(fd, buf + got, n - got, (off_t)got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      free(buf);
      return es_fail(err, ES_EIO, "%s: read failed: %s", path, r < 0 ? strerror(errno) : "file shrank");
    }
    got += (size_t)r;
  }
  buf[n] = '\0';
  *data = buf;
  *len = n;
  return ES_OK;
}

void ab_results_close(ab_results_t *r) {
  if (!r) return;
  if (r->f) fclose(r->f); /* closing the descriptor drops the lock */
  free(r->done);
  memset(r, 0, sizeof *r);
}

static int open_locked(const char *path, int flags, es_error_t *err) {
  int fd = open(path, flags | O_CLOEXEC, 0644);
  if (fd < 0) return es_fail(err, ES_EIO, "%s: cannot open: %s", path, strerror(errno));
  if (flock(fd, LOCK_EX | LOCK_NB)) {
    int e = errno;
    close(fd);
    if (e == EWOULDBLOCK) return es_fail(err, ES_EIO, "%s: another run is writing this file", path);
    return es_fail(err, ES_EIO, "%s: cannot lock: %s", path, strerror(e));
  }
  return fd;
}

int ab_results_open(const char *path, ab_results_t *r, es_error_t *err) {
  memset(r, 0, sizeof *r);
  if (snprintf(r->path, sizeof r->path, "%s", path) >= (int)sizeof r->path)
    return es_fail(err, ES_ETOOBIG, "result path is too long");
  int fd = open_locked(path, O_RDWR | O_CREAT, err);
  if (fd < 0) return fd;
  char *data = NULL;
  size_t len = 0;
  jsonl_t j = {0};
  id_rec_t *recs = NULL;
  int rc = read_fd(fd, path, &data, &len, err);
  if (rc) goto fail;
  size_t lead = 0;
  while (lead < len && strchr(" \t\r\n", data[lead])) lead++;
  if (lead < len && data[lead] == '[') {
    rc = es_fail(err, ES_EINVAL, "%s: a JSON array, not the JSONL this command appends to", path);
    goto fail;
  }
  if ((rc = jsonl_parse(path, data, len, &j, err))) goto fail;
  if (len && data[len - 1] != '\n') {
    if (j.truncated_tail) { /* cut the partial line */
      const char *nl = NULL;
      for (size_t k = len; k > 0 && !nl; k--)
        if (data[k - 1] == '\n') nl = data + k - 1;
      off_t keep = nl ? (off_t)(nl - data) + 1 : 0;
      if (ftruncate(fd, keep)) {
        rc = es_fail(err, ES_EIO, "%s: cannot cut the partial last line: %s", path, strerror(errno));
        goto fail;
      }
      r->truncated_tail = 1;
    } else if (pwrite(fd, "\n", 1, (off_t)len) != 1) { /* a whole record that lost only its newline */
      rc = es_fail(err, ES_EIO, "%s: cannot end the last line: %s", path, strerror(errno));
      goto fail;
    }
  }
  if ((rc = collect_ids(path, &j, &recs, err))) goto fail;
  r->n_lines = j.n;
  r->done = malloc((j.n + 1) * sizeof *r->done);
  if (!r->done) {
    rc = es_fail(err, ES_ENOMEM, "%s: out of memory", path);
    goto fail;
  }
  for (size_t i = 0; i < j.n; i++) {
    if (i + 1 < j.n && recs[i + 1].id == recs[i].id) continue; /* not the last line of this id */
    if (recs[i].ok)
      r->done[r->n_done++] = recs[i].id;
    else
      r->n_failed++;
  }
  r->f = fdopen(fd, "a");
  if (!r->f) {
    rc = es_fail(err, ES_EIO, "%s: %s", path, strerror(errno));
    goto fail;
  }
  free(recs);
  jsonl_free(&j);
  free(data);
  return ES_OK;
fail:
  free(recs);
  jsonl_free(&j);
  free(data);
  close(fd);
  free(r->done);
  r->done = NULL;
  return rc;
}

int ab_results_done(const ab_results_t *r, int64_t id) {
  size_t lo = 0, hi = r->n_done;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (r->done[mid] < id)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < r->n_done && r->done[lo] == id;
}

int ab_results_append(ab_results_t *r, const char *line, es_error_t *err) {
  size_t n = strlen(line);
  if (fwrite(line, 1, n, r->f) != n || fputc('\n', r->f) == EOF || fflush(r->f))
    return es_fail(err, ES_EIO, "%s: write failed: %s", r->path, strerror(errno));
  return ES_OK;
}

int ab_results_compact(ab_results_t *r, es_error_t *err) {
  if (fflush(r->f)) return es_fail(err, ES_EIO, "%s: write failed: %s", r->path, strerror(errno));
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", r->path);
  char *data = NULL;
  size_t len = 0;
  jsonl_t j = {0};
  id_rec_t *recs = NULL;
  FILE *out = NULL;
  int rc = read_fd(fileno(r->f), r->path, &data, &len, err);
  if (!rc) rc = jsonl_parse(r->path, data, len, &j, err);
  if (!rc) rc = collect_ids(r->path, &j, &recs, err);
  if (rc) goto done;
  int fd = open_locked(tmp, O_WRONLY | O_CREAT | O_TRUNC, err);
  if (fd < 0) {
    rc = fd;
    goto done;
  }
  out = fdopen(fd, "w");
  if (!out) {
    close(fd);
    rc = es_fail(err, ES_EIO, "%s: %s", tmp, strerror(errno));
    goto done;
  }
  for (size_t i = 0; i < j.n && !rc; i++) {
    if (i + 1 < j.n && recs[i + 1].id == recs[i].id) continue;
    char *s = cJSON_PrintUnformatted(j.records[recs[i].order]);
    if (!s)
      rc = es_fail(err, ES_ENOMEM, "%s: out of memory", tmp);
    else if (fputs(s, out) == EOF || fputc('\n', out) == EOF)
      rc = es_fail(err, ES_EIO, "%s: write failed", tmp);
    cJSON_free(s);
  }
  if (!rc && (fflush(out) || fsync(fileno(out))))
    rc = es_fail(err, ES_EIO, "%s: write failed: %s", tmp, strerror(errno));
  if (!rc && rename(tmp, r->path))
    rc = es_fail(err, ES_EIO, "cannot rename %s over %s: %s", tmp, r->path, strerror(errno));
  if (rc) {
    fclose(out);
    unlink(tmp);
    goto done;
  }
  fclose(r->f); /* the old file's lock goes with it; out (locked) is the file under the name now */
  r->f = out;
  if (fseek(r->f, 0, SEEK_END)) rc = es_fail(err, ES_EIO, "%s: %s", r->path, strerror(errno));
done:
  free(recs);
  jsonl_free(&j);
  free(data);
  return rc;
}
