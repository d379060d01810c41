/* airbench_items: AIR-Bench meta files, item selection, audio paths and questions. See airbench_items.h. */
#include "airbench_items.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "es_file.h"

#define AB_MAX_META_BYTES ((size_t)1 << 30) /* the official Foundation meta file is ~10 MB */

const char *ab_track_dir(ab_track_t t) {
  return t == AB_CHAT ? "Chat" : "Foundation";
}
const char *ab_track_name(ab_track_t t) {
  return t == AB_CHAT ? "chat" : "foundation";
}

const char *ab_item_string(const cJSON *item, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(item, key);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

int64_t ab_item_uniq_id(const cJSON *item) {
  return (int64_t)cJSON_GetObjectItemCaseSensitive(item, "uniq_id")->valuedouble;
}

void ab_meta_free(ab_meta_t *m) {
  if (!m) return;
  cJSON_Delete(m->root);
  free(m->items);
  memset(m, 0, sizeof *m);
}

uint64_t ab_fnv1a64(uint64_t h, const void *data, size_t n) {
  const unsigned char *p = data;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

int ab_record_uniq_id(const cJSON *record, int64_t *id) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(record, "uniq_id");
  if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || fabs(v->valuedouble) > 9e15) return 0;
  *id = (int64_t)v->valuedouble;
  return 1;
}

/* 1 when name is one of the comma-separated entries of list (NULL or "" matches everything). */
static int in_list(const char *list, const char *name) {
  if (!list || !*list) return 1;
  size_t n = strlen(name);
  for (const char *p = list; *p;) {
    const char *c = strchr(p, ',');
    size_t len = c ? (size_t)(c - p) : strlen(p);
    if (len == n && !strncmp(p, name, n)) return 1;
    p += len + (c != NULL);
  }
  return 0;
}

/* Every entry of list names something some item of the n meta files has under key. */
static int check_list(const ab_meta_t *const *metas, int n, const char *list, const char *key, const char *flag,
                      es_error_t *err) {
  if (!list || !*list) return ES_OK;
  for (const char *p = list; *p;) {
    const char *c = strchr(p, ',');
    size_t len = c ? (size_t)(c - p) : strlen(p);
    int found = 0;
    for (int m = 0; m < n && !found; m++) {
      const cJSON *it;
      cJSON_ArrayForEach(it, metas[m]->root) {
        const char *v = ab_item_string(it, key);
        if (strlen(v) == len && !strncmp(v, p, len)) {
          found = 1;
          break;
        }
      }
    }
    if (!found) {
      char where[4200] = "";
      for (int m = 0; m < n; m++)
        snprintf(where + strlen(where), sizeof where - strlen(where), "%s%s", m ? " or " : "", metas[m]->meta_path);
      return es_fail(err, ES_EINVAL, "%s '%.*s': no item of %s has that %s", flag, (int)len, p, where, key);
    }
    p += len + (c != NULL);
  }
  return ES_OK;
}

int ab_meta_check_filters(const ab_meta_t *const *metas, int n, const ab_select_t *sel, es_error_t *err) {
  int rc = check_list(metas, n, sel->tasks, "task_name", "--task", err);
  return rc ? rc : check_list(metas, n, sel->datasets, "dataset_name", "--dataset", err);
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

static int check_item(const cJSON *it, size_t index, ab_track_t track, const char *meta, es_error_t *err) {
  if (!cJSON_IsObject(it)) return es_fail(err, ES_EINVAL, "%s: item %zu is not an object", meta, index);
  int64_t id;
  if (!ab_record_uniq_id(it, &id))
    return es_fail(err, ES_EINVAL, "%s: item %zu: uniq_id is not an integer", meta, index);
  static const char *const common[] = {"path", "task_name", "dataset_name", "question"};
  static const char *const foundation[] = {"choice_a", "choice_b", "answer_gt"};
  for (size_t k = 0; k < sizeof common / sizeof *common; k++)
    if (!ab_item_string(it, common[k]))
      return es_fail(err, ES_EINVAL, "%s: item %zu (uniq_id %lld): %s is missing or not a string", meta, index,
                     (long long)id, common[k]);
  if (!*ab_item_string(it, "path"))
    return es_fail(err, ES_EINVAL, "%s: item %zu (uniq_id %lld): path is empty", meta, index, (long long)id);
  if (track != AB_FOUNDATION) return ES_OK;
  for (size_t k = 0; k < sizeof foundation / sizeof *foundation; k++)
    if (!ab_item_string(it, foundation[k]))
      return es_fail(err, ES_EINVAL, "%s: item %zu (uniq_id %lld): %s is missing or not a string", meta, index,
                     (long long)id, foundation[k]);
  static const char *const optional[] = {"choice_c", "choice_d"};
  for (size_t k = 0; k < 2; k++) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(it, optional[k]);
    if (v && !cJSON_IsNull(v) && !cJSON_IsString(v))
      return es_fail(err, ES_EINVAL, "%s: item %zu (uniq_id %lld): %s is neither a string nor null", meta, index,
                     (long long)id, optional[k]);
  }
  return ES_OK;
}

int ab_meta_load(const char *root, ab_track_t track, const ab_select_t *sel, ab_meta_t *out, es_error_t *err) {
  memset(out, 0, sizeof *out);
  out->track = track;
  char dir[4096], name[64];
  snprintf(name, sizeof name, "%s_meta.json", ab_track_dir(track));
  int rc = es_path_join(dir, sizeof dir, root, ab_track_dir(track), err);
  if (!rc) rc = es_path_join(out->meta_path, sizeof out->meta_path, dir, name, err);
  if (rc) return rc;
  char *data = NULL;
  size_t len = 0;
  if ((rc = es_read_file(out->meta_path, AB_MAX_META_BYTES, &data, &len, err))) return rc;
  out->meta_fnv1a = ab_fnv1a64(AB_FNV1A64_BASIS, data, len);
  out->root = cJSON_ParseWithLength(data, len);
  free(data);
  const char *meta = out->meta_path;
  int64_t *ids = NULL;
  if (!out->root || !cJSON_IsArray(out->root)) {
    rc = es_fail(err, ES_EINVAL, "%s: not a JSON array of items", meta);
    goto fail;
  }
  out->n_total = (size_t)cJSON_GetArraySize(out->root);
  ids = malloc((out->n_total + 1) * sizeof *ids);
  out->items = malloc((out->n_total + 1) * sizeof *out->items);
  if (!ids || !out->items) {
    rc = es_fail(err, ES_ENOMEM, "%s: out of memory for %zu items", meta, out->n_total);
    goto fail;
  }
  size_t index = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, out->root) {
    if ((rc = check_item(it, index, track, meta, err))) goto fail;
    ids[index++] = ab_item_uniq_id(it);
  }
  qsort(ids, out->n_total, sizeof *ids, cmp_i64);
  for (size_t i = 1; i < out->n_total; i++)
    if (ids[i] == ids[i - 1]) {
      rc = es_fail(err, ES_EINVAL, "%s: uniq_id %lld appears more than once", meta, (long long)ids[i]);
      goto fail;
    }
  const ab_meta_t *self = out;
  if (sel && !sel->unmatched_ok && (rc = ab_meta_check_filters(&self, 1, sel, err))) goto fail;

  size_t n = 0;
  cJSON_ArrayForEach(it, out->root) {
    if (sel && (!in_list(sel->tasks, ab_item_string(it, "task_name")) ||
                !in_list(sel->datasets, ab_item_string(it, "dataset_name"))))
      continue;
    out->items[n++] = it;
  }
  size_t first = 0, last = n;
  if (sel && sel->shard_count > 1) { /* contiguous slices whose sizes differ by at most one */
    first = n * (size_t)sel->shard_index / (size_t)sel->shard_count;
    last = n * ((size_t)sel->shard_index + 1) / (size_t)sel->shard_count;
  }
  if (sel && sel->limit > 0 && last - first > (size_t)sel->limit) last = first + (size_t)sel->limit;
  memmove(out->items, out->items + first, (last - first) * sizeof *out->items);
  out->n_items = last - first;
  free(ids);
  return ES_OK;
fail:
  free(ids);
  ab_meta_free(out);
  return rc;
}

int ab_item_audio_path(const char *root, ab_track_t track, const cJSON *item, char *out, size_t cap, es_error_t *err) {
  const char *path = ab_item_string(item, "path"), *task = ab_item_string(item, "task_name");
  int n =
      snprintf(out, cap, "%s/%s/%s_%s/%s", root, ab_track_dir(track), task, ab_item_string(item, "dataset_name"), path);
  if (n < 0 || (size_t)n >= cap) return es_fail(err, ES_ETOOBIG, "audio path of %s is too long", path);
  /* the official Inference_Foundation.py replaces the last three characters by "flac": Audio_Grounding's
   * ".wav" names are FLAC files */
  if (track == AB_FOUNDATION && !strcmp(task, "Audio_Grounding") && strlen(path) >= 3) {
    if ((size_t)n + 2 > cap) return es_fail(err, ES_ETOOBIG, "audio path of %s is too long", path);
    memcpy(out + n - 3, "flac", 5);
  }
  return ES_OK;
}

/* A Foundation option as the official script formats it: the string, or "None" for an absent or null one. */
static const char *option_text(const cJSON *item, const char *key) {
  const char *s = ab_item_string(item, key);
  return s ? s : "None";
}

int ab_item_question(ab_track_t track, const cJSON *item, char **out, es_error_t *err) {
  *out = NULL;
  const char *q = ab_item_string(item, "question");
  if (track == AB_CHAT) {
    *out = strdup(q);
    return *out ? ES_OK : es_fail(err, ES_ENOMEM, "out of memory for a question");
  }
  static const char head[] = "Choose the most suitable answer from options A, B, C, and D to respond the question "
                             "in next line, you may only choose A or B or C or D.";
  const char *a = option_text(item, "choice_a"), *b = option_text(item, "choice_b"), *c = option_text(item, "choice_c"),
             *d = option_text(item, "choice_d");
  size_t len = strlen(head) + strlen(q) + strlen(a) + strlen(b) + strlen(c) + strlen(d) + 32;
  char *s = malloc(len);
  if (!s) return es_fail(err, ES_ENOMEM, "out of memory for a question");
  snprintf(s, len, "%s\n%s\nA. %s\nB. %s\nC. %s\nD. %s", head, q, a, b, c, d);
  *out = s;
  return ES_OK;
}

int ab_parse_shard(const char *s, int *index, int *count, es_error_t *err) {
  char *end;
  errno = 0;
  long i = strtol(s, &end, 10);
  if (end == s || *end != '/' || errno) goto bad;
  const char *p = end + 1;
  long n = strtol(p, &end, 10);
  if (end == p || *end || errno || n < 1 || n > 1000000 || i < 0 || i >= n) goto bad;
  *index = (int)i;
  *count = (int)n;
  return ES_OK;
bad:
  return es_fail(err, ES_EINVAL, "--shard '%s': expected I/N with 0 <= I < N (e.g. 0/4 .. 3/4)", s);
}
