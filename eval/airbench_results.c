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
  /* a failed item: "" for score_foundation.py (it strips the response), null for score_chat.py (it skips null
   * responses; "" would be judged as an empty answer) */
  if (o->error && track == AB_CHAT)
    ok = ok && cJSON_AddNullToObject(line, "response");
  else
    ok = ok && cJSON_AddStringToObject(line, "response", o->response && !o->error ? o->response : "");
  ok = ok && add_copy(line, item, "uniq_id");
  ok = ok && (o->error ? cJSON_AddStringToObject(line, "error", o->error) : cJSON_AddNullToObject(line, "error"));
  ok = ok && (o->error ? cJSON_AddStringToObject(line, "error_kind", o->input_error ? "input" : "run")
                       : cJSON_AddNullToObject(line, "error_kind"));
  ok = ok && (o->finish_reason ? cJSON_AddStringToObject(line, "finish_reason", o->finish_reason)
                               : cJSON_AddNullToObject(line, "finish_reason"));
  ok = ok && cJSON_AddNumberToObject(line, "n_prompt_tokens", o->n_prompt_tokens);
  ok = ok && cJSON_AddNumberToObject(line, "n_audio_tokens", o->n_audio_tokens);
  ok = ok && cJSON_AddNumberToObject(line, "n_gen_tokens", o->n_gen_tokens);
  /* rounded so the lines stay short: 1 ms and 0.1 ms are what a reader of latencies needs */
  ok = ok && add_number_or_null(line, "audio_seconds", round(o->audio_seconds * 1000.0) / 1000.0);
  ok = ok && add_number_or_null(line, "latency_ms", round(o->latency_s * 1e4) / 10.0);
  ok = ok && add_number_or_null(line, "first_token_ms", round(o->first_token_s * 1e4) / 10.0);
  ok = ok &&
       (o->settings ? cJSON_AddStringToObject(line, "settings", o->settings) : cJSON_AddNullToObject(line, "settings"));
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

/* One field of the fingerprint: its bytes, then a separator byte no UTF-8 text holds. */
static uint64_t fnv1a64_add(uint64_t h, const char *s) {
  return ab_fnv1a64(ab_fnv1a64(h, s, strlen(s)), "\xff", 1);
}

void ab_settings_fingerprint(const char *model_name, const char *prompt_format, const char *system, int max_new_tokens,
                             const char *quantization, char out[17]) {
  char tokens[32];
  snprintf(tokens, sizeof tokens, "%d", max_new_tokens);
  uint64_t h = fnv1a64_add(AB_FNV1A64_BASIS, "earshot-airbench-settings-1");
  h = fnv1a64_add(h, model_name ? model_name : "");
  h = fnv1a64_add(h, prompt_format ? prompt_format : "");
  h = fnv1a64_add(h, system ? system : "(default)");
  h = fnv1a64_add(h, tokens);
  h = fnv1a64_add(h, quantization ? quantization : "");
  snprintf(out, 17, "%016llx", (unsigned long long)h);
}

/* ---- reading what a file holds ---- */

typedef struct {
  int64_t id;
  size_t order; /* record index: the last one of an id wins */
  int ok;       /* error absent or null */
  int input;    /* failed, error_kind "input" */
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
    int64_t id;
    if (!ab_record_uniq_id(j->records[i], &id)) {
      free(*out);
      *out = NULL;
      return es_fail(err, ES_EINVAL, "%s:%d: no integer uniq_id (is this an AIR-Bench result file?)", path,
                     j->line_numbers[i]);
    }
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j->records[i], "error");
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(j->records[i], "error_kind");
    int ok = !e || cJSON_IsNull(e);
    (*out)[i] = (id_rec_t){id, i, ok, !ok && cJSON_IsString(kind) && !strcmp(kind->valuestring, "input")};
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
  if (r->path[0] && r->fd >= 0) close(r->fd); /* closing the descriptor drops the lock */
  free(r->done);
  memset(r, 0, sizeof *r);
  r->fd = -1;
}

/* Syncs the folder holding path, so that a rename into it survives a power loss. */
static int sync_dir_of(const char *path, es_error_t *err) {
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (slash == dir)
    dir[1] = '\0';
  else if (slash)
    *slash = '\0';
  else
    snprintf(dir, sizeof dir, ".");
  int fd = open(dir, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return es_fail(err, ES_EIO, "%s: cannot open to sync: %s", dir, strerror(errno));
  /* some file systems cannot sync a folder (EINVAL, ENOTSUP, ENOSYS): the rename stands, nothing to do */
  int rc = fsync(fd) && errno != EINVAL && errno != ENOTSUP && errno != ENOSYS
               ? es_fail(err, ES_EIO, "%s: fsync: %s", dir, strerror(errno))
               : ES_OK;
  close(fd);
  return rc;
}

/* Opens path and takes its lock; the descriptor is then checked to be the file still at path (the previous
 * holder may have renamed a rewrite over it while we waited for nothing: the old file would be locked by us
 * and unreachable), else it tries again. truncate: cut the file to 0 once it is ours. */
static int open_locked(const char *path, int flags, int truncate, es_error_t *err) {
  for (int attempt = 0; attempt < 8; attempt++) {
    int fd = open(path, flags | O_CLOEXEC, 0644);
    if (fd < 0) return es_fail(err, ES_EIO, "%s: cannot open: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB)) {
      int e = errno;
      close(fd);
      if (e == EWOULDBLOCK) return es_fail(err, ES_EIO, "%s: another run is writing this file", path);
      return es_fail(err, ES_EIO, "%s: cannot lock: %s", path, strerror(e));
    }
    struct stat held, named;
    if (fstat(fd, &held) == 0 && stat(path, &named) == 0 && held.st_dev == named.st_dev &&
        held.st_ino == named.st_ino) {
      if (truncate && ftruncate(fd, 0)) {
        int e = errno;
        close(fd);
        return es_fail(err, ES_EIO, "%s: cannot truncate: %s", path, strerror(e));
      }
      return fd;
    }
    close(fd); /* replaced under us: open the file now at the path */
  }
  return es_fail(err, ES_EIO, "%s: the file keeps being replaced by another process", path);
}

/* 1 when data[a, b) holds only NUL bytes (a file tail a lost machine left unwritten). */
static int all_nul(const char *data, size_t a, size_t b) {
  for (size_t i = a; i < b; i++)
    if (data[i]) return 0;
  return a < b;
}

int ab_results_open(const char *path, const ab_results_opts_t *opts, ab_results_t *r, es_error_t *err) {
  memset(r, 0, sizeof *r);
  r->fd = -1;
  if (snprintf(r->path, sizeof r->path, "%s", path) >= (int)sizeof r->path)
    return es_fail(err, ES_ETOOBIG, "result path is too long");
  int fd = open_locked(path, O_RDWR | O_CREAT, 0, err);
  if (fd < 0) return fd;
  char *data = NULL;
  size_t len = 0;
  jsonl_t j = {0};
  id_rec_t *recs = NULL;
  int rc = read_fd(fd, path, &data, &len, err);
  if (rc) goto fail;
  /* a tail of NUL bytes after the last newline: blocks the file system allocated but never got */
  const char *last_nl = NULL;
  for (size_t k = len; k > 0 && !last_nl; k--)
    if (data[k - 1] == '\n') last_nl = data + k - 1;
  size_t tail = last_nl ? (size_t)(last_nl - data) + 1 : 0;
  int nul_tail = all_nul(data, tail, len);
  size_t lead = 0;
  while (lead < len && strchr(" \t\r\n", data[lead])) lead++;
  if (lead < len && data[lead] == '[') {
    rc = es_fail(err, ES_EINVAL, "%s: a JSON array, not the JSONL this command appends to", path);
    goto fail;
  }
  if ((rc = jsonl_parse(path, data, nul_tail ? tail : len, &j, err))) goto fail;
  if (len && data[len - 1] != '\n') {
    if (j.truncated_tail || nul_tail) { /* cut the partial line */
      if (ftruncate(fd, (off_t)tail)) {
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
  if (opts && opts->settings) {
    size_t other = 0;
    const char *example = NULL;
    for (size_t i = 0; i < j.n; i++) {
      const cJSON *st = cJSON_GetObjectItemCaseSensitive(j.records[i], "settings");
      if (cJSON_IsString(st) && strcmp(st->valuestring, opts->settings)) {
        other++;
        example = st->valuestring;
      }
    }
    if (other) {
      rc = es_fail(err, ES_EINVAL,
                   "%s: %zu lines were made with other settings (fingerprint %s, this run %s: the model name, "
                   "prompt format, system prompt, max new tokens or quantization differ); resuming would mix two "
                   "runs in one file: use another --out or --model-name, or the earlier settings",
                   path, other, example, opts->settings);
      goto fail;
    }
  }
  r->n_lines = j.n;
  r->done = malloc((j.n + 1) * sizeof *r->done);
  if (!r->done) {
    rc = es_fail(err, ES_ENOMEM, "%s: out of memory", path);
    goto fail;
  }
  int retry_input = opts && opts->retry_input_errors;
  for (size_t i = 0; i < j.n; i++) {
    if (i + 1 < j.n && recs[i + 1].id == recs[i].id) continue; /* not the last line of this id */
    if (recs[i].ok || (recs[i].input && !retry_input))
      r->done[r->n_done++] = recs[i].id;
    else
      r->n_failed++;
    r->n_input_failed += recs[i].input && !retry_input;
  }
  if (lseek(fd, 0, SEEK_END) < 0) {
    rc = es_fail(err, ES_EIO, "%s: %s", path, strerror(errno));
    goto fail;
  }
  r->fd = fd;
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
  if (r->broken) return es_fail(err, ES_EIO, "%s: an earlier write failed; no more lines are written", r->path);
  size_t n = strlen(line);
  char *buf = malloc(n + 1);
  if (!buf) return es_fail(err, ES_ENOMEM, "%s: out of memory for a line", r->path);
  memcpy(buf, line, n);
  buf[n] = '\n';
  off_t start = lseek(r->fd, 0, SEEK_END);
  size_t done = 0;
  int e = start < 0 ? errno : 0;
  while (!e && done < n + 1) {
    ssize_t w = write(r->fd, buf + done, n + 1 - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0)
      e = w < 0 ? errno : EIO;
    else
      done += (size_t)w;
  }
  if (!e && fdatasync(r->fd)) e = errno;
  free(buf);
  if (!e) return ES_OK;
  r->broken = 1;
  /* undo a partial line so the file stays whole lines (what a later run can read) */
  int cut = start >= 0 && ftruncate(r->fd, start) == 0;
  return es_fail(err, ES_EIO, "%s: write failed: %s%s", r->path, strerror(e),
                 cut ? "" : " (and the partial line could not be removed: the next run cuts it)");
}

int ab_results_compact(ab_results_t *r, es_error_t *err) {
  if (r->broken) return es_fail(err, ES_EIO, "%s: an earlier write failed; not rewritten", r->path);
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", r->path);
  char *data = NULL;
  size_t len = 0;
  jsonl_t j = {0};
  id_rec_t *recs = NULL;
  FILE *out = NULL;
  int rc = read_fd(r->fd, r->path, &data, &len, err);
  if (!rc) rc = jsonl_parse(r->path, data, len, &j, err);
  if (!rc) rc = collect_ids(r->path, &j, &recs, err);
  if (rc) goto done;
  /* opened without O_TRUNC and emptied only once locked: another run's rewrite in progress is never cut */
  int fd = open_locked(tmp, O_RDWR | O_CREAT, 1, err); /* read and write: it is the file afterwards */
  if (fd < 0) {
    rc = fd;
    goto done;
  }
  int out_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0); /* fclose(out) closes its own copy; fd (locked) is kept */
  out = out_fd >= 0 ? fdopen(out_fd, "w") : NULL;
  if (!out) {
    if (out_fd >= 0) close(out_fd);
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
  if (!rc && (fflush(out) || fsync(fd))) rc = es_fail(err, ES_EIO, "%s: write failed: %s", tmp, strerror(errno));
  if (fclose(out) && !rc) rc = es_fail(err, ES_EIO, "%s: write failed: %s", tmp, strerror(errno));
  if (!rc && rename(tmp, r->path))
    rc = es_fail(err, ES_EIO, "cannot rename %s over %s: %s", tmp, r->path, strerror(errno));
  if (rc) {
    unlink(tmp);
    close(fd);
    goto done;
  }
  close(r->fd); /* the old file's lock goes with it; fd (locked) is the file under the name now */
  r->fd = fd;
  if (lseek(r->fd, 0, SEEK_END) < 0) rc = es_fail(err, ES_EIO, "%s: %s", r->path, strerror(errno));
  if (!rc) rc = sync_dir_of(r->path, err);
done:
  free(recs);
  jsonl_free(&j);
  free(data);
  return rc;
}
