/* checkpoint: model directory -> canonical tensor set, checked against the config. See checkpoint.h.
 * ref: SPEC §1.4 (tensor names, shapes, which projections have a bias), §1.5 (the two name layouts)
 */
#include "checkpoint.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "es_file.h"

#define CKPT_PATH_MAX 4096
#define CKPT_NAME_MAX 512
/* The 7B index is 79 kB; an index past this is not one. */
#define CKPT_MAX_INDEX_BYTES (64u << 20)
/* Problems kept verbatim; past this only counted (a directory of the wrong model has thousands). */
#define CKPT_MAX_PROBLEMS 200

typedef struct {
  char *canon;          /* canonical name (owned) */
  const st_tensor_t *t; /* in files[file] */
  int file;
  int used; /* matched by an expected tensor */
} entry_t;

typedef struct {
  char *name;  /* stored tensor name */
  char *shard; /* file name */
} index_entry_t;

struct ckpt {
  char *dir;
  char *index_path; /* NULL: single file */
  int n_files;
  st_file_t *files; /* n_files; a file that failed to open is left zeroed (n_tensors 0) */
  entry_t *entries; /* n_entries, sorted by canon */
  int n_entries;
  char **problems; /* up to CKPT_MAX_PROBLEMS kept */
  int n_problems;  /* all found */
  int n_hub, n_new;
  int tie_word_embeddings;
  uint64_t params, bytes;
  int dtype_counts[3];
};

static void problem(ckpt_t *ck, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

static void problem(ckpt_t *ck, const char *fmt, ...) {
  ck->n_problems++;
  if (ck->n_problems > CKPT_MAX_PROBLEMS) return;
  char buf[ES_ERROR_MSG_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  char *s = strdup(buf);
  if (!s) return; /* the count still says it happened */
  ck->problems[ck->n_problems - 1] = s;
}

static int stored_count(const ckpt_t *ck) {
  return ck->n_problems < CKPT_MAX_PROBLEMS ? ck->n_problems : CKPT_MAX_PROBLEMS;
}

static const char *base_name(const char *path) {
  const char *s = strrchr(path, '/');
  return s ? s + 1 : path;
}

static void fmt_shape(char *buf, size_t cap, int ndim, const int64_t *shape) {
  size_t at = 0;
  at += (size_t)snprintf(buf + at, cap - at, "[");
  for (int i = 0; i < ndim && at < cap; i++)
    at += (size_t)snprintf(buf + at, cap - at, "%s%lld", i ? ", " : "", (long long)shape[i]);
  if (at < cap) snprintf(buf + at, cap - at, "]");
}

int ckpt_canonical_name(const char *stored, char *out, size_t cap) {
  static const struct {
    const char *from, *to;
  } NEW_TO_HUB[] = {
      {"model.language_model.", "language_model.model."},
      {"lm_head.", "language_model.lm_head."},
      {"model.audio_tower.", "audio_tower."},
      {"model.multi_modal_projector.", "multi_modal_projector."},
  };
  static const char *HUB_PREFIXES[] = {"audio_tower.", "multi_modal_projector.", "language_model.model.",
                                       "language_model.lm_head."};
  for (size_t i = 0; i < sizeof NEW_TO_HUB / sizeof NEW_TO_HUB[0]; i++) {
    size_t fl = strlen(NEW_TO_HUB[i].from);
    if (strncmp(stored, NEW_TO_HUB[i].from, fl) == 0) {
      int n = snprintf(out, cap, "%s%s", NEW_TO_HUB[i].to, stored + fl);
      return n >= 0 && (size_t)n < cap ? CKPT_LAYOUT_NEW : -1;
    }
  }
  int n = snprintf(out, cap, "%s", stored);
  if (n < 0 || (size_t)n >= cap) return -1;
  for (size_t i = 0; i < sizeof HUB_PREFIXES / sizeof HUB_PREFIXES[0]; i++)
    if (strncmp(stored, HUB_PREFIXES[i], strlen(HUB_PREFIXES[i])) == 0) return CKPT_LAYOUT_HUB;
  return CKPT_LAYOUT_NONE;
}

/* ---- expected tensors (SPEC §1.4) ---- */

typedef void (*expect_fn)(void *ctx, const char *name, int ndim, const int64_t *shape);

static void expect(expect_fn fn, void *ctx, int *count, char *name, int ndim, int64_t a, int64_t b, int64_t c) {
  int64_t shape[3] = {a, b, c};
  fn(ctx, name, ndim, shape);
  (*count)++;
}

int ckpt_expected_tensors(const model_config_t *cfg, expect_fn fn, void *ctx) {
  char n[CKPT_NAME_MAX];
  int count = 0;
  const int64_t d = cfg->d_model, m = cfg->num_mel_bins, f = cfg->encoder_ffn_dim;
  const int64_t H = cfg->hidden_size, I = cfg->intermediate_size, V = cfg->vocab_size;
  const int64_t kv = (int64_t)cfg->num_key_value_heads * (cfg->hidden_size / cfg->num_attention_heads);
#define E1(a, ...) (snprintf(n, sizeof n, __VA_ARGS__), expect(fn, ctx, &count, n, 1, a, 0, 0))
#define E2(a, b, ...) (snprintf(n, sizeof n, __VA_ARGS__), expect(fn, ctx, &count, n, 2, a, b, 0))
#define E3(a, b, c, ...) (snprintf(n, sizeof n, __VA_ARGS__), expect(fn, ctx, &count, n, 3, a, b, c))
  E3(d, m, 3, "audio_tower.conv1.weight");
  E1(d, "audio_tower.conv1.bias");
  E3(d, d, 3, "audio_tower.conv2.weight");
  E1(d, "audio_tower.conv2.bias");
  E2(cfg->max_source_positions, d, "audio_tower.embed_positions.weight");
  for (int l = 0; l < cfg->encoder_layers; l++) {
    const char *p = "audio_tower.layers";
    E2(d, d, "%s.%d.self_attn.q_proj.weight", p, l);
    E1(d, "%s.%d.self_attn.q_proj.bias", p, l);
    E2(d, d, "%s.%d.self_attn.k_proj.weight", p, l); /* no k_proj bias in the Whisper encoder */
    E2(d, d, "%s.%d.self_attn.v_proj.weight", p, l);
    E1(d, "%s.%d.self_attn.v_proj.bias", p, l);
    E2(d, d, "%s.%d.self_attn.out_proj.weight", p, l);
    E1(d, "%s.%d.self_attn.out_proj.bias", p, l);
    E1(d, "%s.%d.self_attn_layer_norm.weight", p, l);
    E1(d, "%s.%d.self_attn_layer_norm.bias", p, l);
    E2(f, d, "%s.%d.fc1.weight", p, l);
    E1(f, "%s.%d.fc1.bias", p, l);
    E2(d, f, "%s.%d.fc2.weight", p, l);
    E1(d, "%s.%d.fc2.bias", p, l);
    E1(d, "%s.%d.final_layer_norm.weight", p, l);
    E1(d, "%s.%d.final_layer_norm.bias", p, l);
  }
  E1(d, "audio_tower.layer_norm.weight");
  E1(d, "audio_tower.layer_norm.bias");
  E2(H, d, "multi_modal_projector.linear.weight");
  E1(H, "multi_modal_projector.linear.bias");
  E2(V, H, "language_model.model.embed_tokens.weight");
  for (int l = 0; l < cfg->num_hidden_layers; l++) {
    const char *p = "language_model.model.layers";
    E1(H, "%s.%d.input_layernorm.weight", p, l);
    E2(H, H, "%s.%d.self_attn.q_proj.weight", p, l);
    E1(H, "%s.%d.self_attn.q_proj.bias", p, l);
    E2(kv, H, "%s.%d.self_attn.k_proj.weight", p, l);
    E1(kv, "%s.%d.self_attn.k_proj.bias", p, l);
    E2(kv, H, "%s.%d.self_attn.v_proj.weight", p, l);
    E1(kv, "%s.%d.self_attn.v_proj.bias", p, l);
    E2(H, H, "%s.%d.self_attn.o_proj.weight", p, l); /* o_proj has no bias */
    E1(H, "%s.%d.post_attention_layernorm.weight", p, l);
    E2(I, H, "%s.%d.mlp.gate_proj.weight", p, l);
    E2(I, H, "%s.%d.mlp.up_proj.weight", p, l);
    E2(H, I, "%s.%d.mlp.down_proj.weight", p, l);
  }
  E1(H, "language_model.model.norm.weight");
  if (!cfg->tie_word_embeddings) E2(V, H, "language_model.lm_head.weight");
#undef E1
#undef E2
#undef E3
  return count;
}

/* ---- lookup ---- */

static int cmp_entry(const void *a, const void *b) {
  return strcmp(((const entry_t *)a)->canon, ((const entry_t *)b)->canon);
}

static entry_t *find_entry(const ckpt_t *ck, const char *canon) {
  int lo = 0, hi = ck->n_entries - 1;
  while (lo <= hi) {
    int mid = lo + (hi - lo) / 2;
    int c = strcmp(ck->entries[mid].canon, canon);
    if (c == 0) return &ck->entries[mid];
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid - 1;
  }
  return NULL;
}

static void fill_view(const ckpt_t *ck, const entry_t *e, ckpt_tensor_t *out) {
  out->name = e->canon;
  out->stored_name = e->t->name;
  out->file = ck->files[e->file].path;
  out->dtype = e->t->dtype;
  out->ndim = e->t->ndim;
  out->shape = e->t->shape;
  out->count = e->t->count;
  out->nbytes = e->t->nbytes;
  out->data = e->t->data;
}

/* The name as this checkpoint spells it, for messages about tensors that are absent. */
static void stored_spelling(const ckpt_t *ck, const char *canon, char *out, size_t cap) {
  static const struct {
    const char *hub, *now;
  } HUB_TO_NEW[] = {
      {"language_model.model.", "model.language_model."},
      {"language_model.lm_head.", "lm_head."},
      {"audio_tower.", "model.audio_tower."},
      {"multi_modal_projector.", "model.multi_modal_projector."},
  };
  if (ck->n_new > ck->n_hub) {
    for (size_t i = 0; i < sizeof HUB_TO_NEW / sizeof HUB_TO_NEW[0]; i++) {
      size_t hl = strlen(HUB_TO_NEW[i].hub);
      if (strncmp(canon, HUB_TO_NEW[i].hub, hl) == 0) {
        snprintf(out, cap, "%s%s", HUB_TO_NEW[i].now, canon + hl);
        return;
      }
    }
  }
  snprintf(out, cap, "%s", canon);
}

/* ---- the config check ---- */

typedef struct {
  ckpt_t *ck;
} check_ctx_t;

static void check_one(void *vctx, const char *name, int ndim, const int64_t *shape) {
  ckpt_t *ck = ((check_ctx_t *)vctx)->ck;
  entry_t *e = find_entry(ck, name);
  char want[128], have[128], spelled[CKPT_NAME_MAX];
  fmt_shape(want, sizeof want, ndim, shape);
  if (!e) {
    stored_spelling(ck, name, spelled, sizeof spelled);
    problem(ck, "%s: missing tensor '%s' (shape %s)", ck->index_path ? ck->index_path : ck->dir, spelled, want);
    return;
  }
  e->used = 1;
  int same = e->t->ndim == ndim;
  for (int i = 0; same && i < ndim; i++) same = e->t->shape[i] == shape[i];
  if (!same) {
    fmt_shape(have, sizeof have, e->t->ndim, e->t->shape);
    problem(ck, "%s: tensor '%s' has shape %s, the config needs %s", ck->files[e->file].path, e->t->name, have, want);
  }
}

static void check_against_config(ckpt_t *ck, const model_config_t *cfg) {
  check_ctx_t ctx = {ck};
  ckpt_expected_tensors(cfg, check_one, &ctx);
  for (int i = 0; i < ck->n_entries; i++) {
    entry_t *e = &ck->entries[i];
    if (e->used) continue;
    /* A tied model may still store lm_head; transformers ignores it, so do we. */
    if (cfg->tie_word_embeddings && strcmp(e->canon, "language_model.lm_head.weight") == 0) continue;
    char have[128];
    fmt_shape(have, sizeof have, e->t->ndim, e->t->shape);
    problem(ck, "%s: unexpected tensor '%s' (shape %s): not part of Qwen2-Audio with this config",
            ck->files[e->file].path, e->t->name, have);
  }
}

/* ---- the index ---- */

static int cmp_index(const void *a, const void *b) {
  return strcmp(((const index_entry_t *)a)->name, ((const index_entry_t *)b)->name);
}

static const index_entry_t *find_index(const index_entry_t *ix, int n, const char *name) {
  index_entry_t key = {(char *)name, NULL};
  return bsearch(&key, ix, (size_t)n, sizeof *ix, cmp_index);
}

static int valid_shard_name(const char *s) {
  return s[0] != '\0' && strchr(s, '/') == NULL && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

/* Reads the index: the sorted (tensor, shard) list and the distinct shard names (sorted). Structural
 * problems with single entries are recorded and the entry skipped; an unreadable index fails. */
static int read_index(ckpt_t *ck, index_entry_t **out_ix, int *out_n, char ***out_shards, int *out_ns,
                      es_error_t *err) {
  char *text = NULL;
  size_t len = 0;
  cJSON *root = NULL;
  index_entry_t *ix = NULL;
  char **shards = NULL;
  int n = 0, ns = 0;
  int rc = es_read_file(ck->index_path, CKPT_MAX_INDEX_BYTES, &text, &len, err);
  if (rc) return rc;
  root = cJSON_ParseWithLength(text, len);
  if (!root || !cJSON_IsObject(root)) {
    rc = es_fail(err, ES_EINVAL, "%s: not a JSON object", ck->index_path);
    goto fail;
  }
  const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
  if (!cJSON_IsObject(wm)) {
    rc = es_fail(err, ES_EINVAL, "%s: no \"weight_map\" object", ck->index_path);
    goto fail;
  }
  int total = cJSON_GetArraySize(wm);
  ix = calloc(total > 0 ? (size_t)total : 1, sizeof *ix);
  shards = calloc(total > 0 ? (size_t)total : 1, sizeof *shards);
  if (!ix || !shards) {
    rc = es_fail(err, ES_ENOMEM, "%s: out of memory", ck->index_path);
    goto fail;
  }
  const cJSON *e;
  cJSON_ArrayForEach(e, wm) {
    if (!cJSON_IsString(e) || !valid_shard_name(e->valuestring)) {
      problem(ck, "%s: weight_map entry '%s' must name a file in the same directory", ck->index_path,
              e->string ? e->string : "");
      continue;
    }
    ix[n].name = strdup(e->string ? e->string : "");
    ix[n].shard = strdup(e->valuestring);
    if (!ix[n].name || !ix[n].shard) {
      free(ix[n].name);
      free(ix[n].shard);
      rc = es_fail(err, ES_ENOMEM, "%s: out of memory", ck->index_path);
      goto fail;
    }
    n++;
    int seen = 0;
    for (int i = 0; i < ns && !seen; i++) seen = strcmp(shards[i], e->valuestring) == 0;
    if (!seen) shards[ns++] = ix[n - 1].shard; /* borrowed from ix; shard lists are short */
  }
  qsort(ix, (size_t)n, sizeof *ix, cmp_index);
  for (int i = 1; i < n; i++)
    if (strcmp(ix[i - 1].name, ix[i].name) == 0)
      problem(ck, "%s: tensor '%s' is listed twice in weight_map", ck->index_path, ix[i].name);
  for (int i = 1; i < ns; i++) /* sort the few shard names: insertion */
    for (int j = i; j > 0 && strcmp(shards[j - 1], shards[j]) > 0; j--) {
      char *t = shards[j];
      shards[j] = shards[j - 1];
      shards[j - 1] = t;
    }
  cJSON_Delete(root);
  free(text);
  *out_ix = ix;
  *out_n = n;
  *out_shards = shards;
  *out_ns = ns;
  return ES_OK;
fail:
  for (int i = 0; i < n; i++) {
    free(ix[i].name);
    free(ix[i].shard);
  }
  free(ix);
  free(shards);
  cJSON_Delete(root);
  free(text);
  return rc;
}

/* ---- open ---- */

static int add_entries(ckpt_t *ck, int fi, const index_entry_t *ix, int n_ix, es_error_t *err) {
  const st_file_t *f = &ck->files[fi];
  for (int i = 0; i < f->n_tensors; i++) {
    const st_tensor_t *t = &f->tensors[i];
    char canon[CKPT_NAME_MAX];
    int layout = ckpt_canonical_name(t->name, canon, sizeof canon);
    if (layout < 0) {
      problem(ck, "%s: tensor name '%.100s...' is too long", f->path, t->name);
      continue;
    }
    if (layout == CKPT_LAYOUT_HUB) ck->n_hub++;
    if (layout == CKPT_LAYOUT_NEW) ck->n_new++;
    if (ck->index_path) {
      const index_entry_t *x = find_index(ix, n_ix, t->name);
      if (!x)
        problem(ck, "%s: tensor '%s' is not listed in %s", f->path, t->name, base_name(ck->index_path));
      else if (strcmp(x->shard, base_name(f->path)) != 0)
        problem(ck, "%s: tensor '%s' is here, but %s says it is in %s", f->path, t->name, base_name(ck->index_path),
                x->shard);
    }
    entry_t *e = &ck->entries[ck->n_entries];
    e->canon = strdup(canon);
    if (!e->canon) return es_fail(err, ES_ENOMEM, "%s: out of memory", f->path);
    e->t = t;
    e->file = fi;
    ck->n_entries++;
    ck->params += t->count;
    ck->bytes += t->nbytes;
    ck->dtype_counts[t->dtype]++;
  }
  return ES_OK;
}

static int open_files(ckpt_t *ck, es_error_t *err) {
  char path[CKPT_PATH_MAX];
  index_entry_t *ix = NULL;
  char **shards = NULL;
  int n_ix = 0, n_shards = 0, rc;

  if ((rc = es_path_join(path, sizeof path, ck->dir, "model.safetensors", err))) return rc;
  /* transformers' order: the single file wins over an index when both exist */
  if (es_path_exists(path)) {
    ck->files = calloc(1, sizeof *ck->files);
    if (!ck->files) return es_fail(err, ES_ENOMEM, "%s: out of memory", ck->dir);
    ck->n_files = 1;
    if ((rc = st_open(path, &ck->files[0], err))) return rc; /* nothing else to look at */
  } else {
    if ((rc = es_path_join(path, sizeof path, ck->dir, "model.safetensors.index.json", err))) return rc;
    if (!es_path_exists(path))
      return es_fail(err, ES_ENOTFOUND, "%s: no model.safetensors or model.safetensors.index.json", ck->dir);
    if (!(ck->index_path = strdup(path))) return es_fail(err, ES_ENOMEM, "%s: out of memory", ck->dir);
    if ((rc = read_index(ck, &ix, &n_ix, &shards, &n_shards, err))) return rc;
    ck->files = calloc(n_shards > 0 ? (size_t)n_shards : 1, sizeof *ck->files);
    if (!ck->files) {
      rc = es_fail(err, ES_ENOMEM, "%s: out of memory", ck->dir);
      goto done;
    }
    ck->n_files = n_shards;
    for (int s = 0; s < n_shards; s++) {
      es_error_t ferr;
      es_error_clear(&ferr);
      if ((rc = es_path_join(path, sizeof path, ck->dir, shards[s], err))) goto done;
      if (!es_path_exists(path)) {
        int listed = 0;
        for (int i = 0; i < n_ix; i++) listed += strcmp(ix[i].shard, shards[s]) == 0;
        problem(ck, "%s: shard %s (%d tensors in the index) does not exist", path, shards[s], listed);
      } else if (st_open(path, &ck->files[s], &ferr) != ES_OK) {
        problem(ck, "%s", ferr.msg);
      }
      if (!ck->files[s].path && !(ck->files[s].path = strdup(path))) {
        rc = es_fail(err, ES_ENOMEM, "%s: out of memory", ck->dir);
        goto done;
      }
    }
  }

  int total = 0;
  for (int i = 0; i < ck->n_files; i++) total += ck->files[i].n_tensors;
  ck->entries = calloc(total > 0 ? (size_t)total : 1, sizeof *ck->entries);
  if (!ck->entries) {
    rc = es_fail(err, ES_ENOMEM, "%s: out of memory", ck->dir);
    goto done;
  }
  for (int i = 0; i < ck->n_files; i++)
    if ((rc = add_entries(ck, i, ix, n_ix, err))) goto done;

  /* index entries whose shard opened but does not hold them */
  for (int i = 0; i < n_ix; i++) {
    for (int s = 0; s < ck->n_files; s++) {
      const st_file_t *f = &ck->files[s];
      if (f->map && strcmp(base_name(f->path), ix[i].shard) == 0 && !st_find(f, ix[i].name))
        problem(ck, "%s: %s lists tensor '%s' here, but the file does not hold it", f->path, base_name(ck->index_path),
                ix[i].name);
    }
  }

  qsort(ck->entries, (size_t)ck->n_entries, sizeof *ck->entries, cmp_entry);
  for (int i = 1; i < ck->n_entries; i++) {
    const entry_t *a = &ck->entries[i - 1], *b = &ck->entries[i];
    if (strcmp(a->canon, b->canon) == 0)
      problem(ck, "%s: tensor '%s' is stored twice: as '%s' in %s and as '%s' in %s", ck->dir, b->canon, a->t->name,
              ck->files[a->file].path, b->t->name, ck->files[b->file].path);
  }
  rc = ES_OK;
done:
  for (int i = 0; i < n_ix; i++) {
    free(ix[i].name);
    free(ix[i].shard);
  }
  free(ix);
  free(shards);
  return rc;
}

int ckpt_open(const char *dir, const model_config_t *cfg, unsigned flags, ckpt_t **out, es_error_t *err) {
  *out = NULL;
  struct stat st;
  if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) return es_fail(err, ES_ENOTFOUND, "%s: not a directory", dir);
  ckpt_t *ck = calloc(1, sizeof *ck);
  if (!ck) return es_fail(err, ES_ENOMEM, "%s: out of memory", dir);
  ck->problems = calloc(CKPT_MAX_PROBLEMS, sizeof *ck->problems);
  ck->dir = strdup(dir);
  if (!ck->problems || !ck->dir) {
    ckpt_close(ck);
    return es_fail(err, ES_ENOMEM, "%s: out of memory", dir);
  }
  int rc = open_files(ck, err);
  if (rc) {
    ckpt_close(ck);
    return rc;
  }
  if (cfg) {
    ck->tie_word_embeddings = cfg->tie_word_embeddings;
    check_against_config(ck, cfg);
  }
  if (ck->n_problems > 0) {
    if (ck->n_problems == 1)
      es_fail(err, ES_EINVAL, "%s", ck->problems[0] ? ck->problems[0] : "(out of memory)");
    else
      es_fail(err, ES_EINVAL, "%s (and %d more problems; `earshot inspect` lists them)",
              ck->problems[0] ? ck->problems[0] : "(out of memory)", ck->n_problems - 1);
    if (flags & CKPT_KEEP_ON_PROBLEMS)
      *out = ck;
    else
      ckpt_close(ck);
    return ES_EINVAL;
  }
  *out = ck;
  return ES_OK;
}

void ckpt_close(ckpt_t *ck) {
  if (!ck) return;
  for (int i = 0; i < ck->n_entries; i++) free(ck->entries[i].canon);
  free(ck->entries);
  for (int i = 0; i < ck->n_files; i++) st_close(&ck->files[i]);
  free(ck->files);
  if (ck->problems)
    for (int i = 0; i < stored_count(ck); i++) free(ck->problems[i]);
  free(ck->problems);
  free(ck->index_path);
  free(ck->dir);
  free(ck);
}

int ckpt_get(const ckpt_t *ck, const char *name, ckpt_tensor_t *out, es_error_t *err) {
  const entry_t *e = find_entry(ck, name);
  if (!e && ck->tie_word_embeddings && strcmp(name, "language_model.lm_head.weight") == 0)
    e = find_entry(ck, "language_model.model.embed_tokens.weight");
  if (!e) return es_fail(err, ES_ENOTFOUND, "%s: no tensor '%s'", ck->dir, name);
  fill_view(ck, e, out);
  return ES_OK;
}

int ckpt_tensor_count(const ckpt_t *ck) {
  return ck->n_entries;
}

void ckpt_tensor_at(const ckpt_t *ck, int i, ckpt_tensor_t *out) {
  ES_ASSERT(i >= 0 && i < ck->n_entries);
  fill_view(ck, &ck->entries[i], out);
}

const char *ckpt_dir(const ckpt_t *ck) {
  return ck->dir;
}
const char *ckpt_index_path(const ckpt_t *ck) {
  return ck->index_path;
}
int ckpt_file_count(const ckpt_t *ck) {
  return ck->n_files;
}
const st_file_t *ckpt_file(const ckpt_t *ck, int i) {
  ES_ASSERT(i >= 0 && i < ck->n_files);
  return &ck->files[i];
}

ckpt_layout_t ckpt_layout(const ckpt_t *ck) {
  if (ck->n_hub && ck->n_new) return CKPT_LAYOUT_MIXED;
  if (ck->n_hub) return CKPT_LAYOUT_HUB;
  if (ck->n_new) return CKPT_LAYOUT_NEW;
  return CKPT_LAYOUT_NONE;
}

const char *ckpt_layout_name(ckpt_layout_t layout) {
  switch (layout) {
  case CKPT_LAYOUT_HUB: return "hub (language_model.model.*, audio_tower.*)";
  case CKPT_LAYOUT_NEW: return "new (model.language_model.*, lm_head.*, model.audio_tower.*)";
  case CKPT_LAYOUT_MIXED: return "mixed (both name layouts)";
  case CKPT_LAYOUT_NONE: return "none (no Qwen2-Audio tensor names)";
  }
  return "?";
}

int ckpt_problem_count(const ckpt_t *ck) {
  return ck->n_problems;
}

const char *ckpt_problem(const ckpt_t *ck, int i) {
  if (i < 0 || i >= stored_count(ck)) return "(not kept)";
  return ck->problems[i] ? ck->problems[i] : "(out of memory)";
}

uint64_t ckpt_param_count(const ckpt_t *ck) {
  return ck->params;
}
uint64_t ckpt_total_bytes(const ckpt_t *ck) {
  return ck->bytes;
}
int ckpt_dtype_count(const ckpt_t *ck, st_dtype_t dtype) {
  return (int)dtype >= 0 && (int)dtype < 3 ? ck->dtype_counts[dtype] : 0;
}
