/* test_checkpoint: the loader on the golden checkpoints (written by transformers: both name layouts, shards,
 * bf16/fp16) and on model directories built here, clean and with one corruption each; every failure must
 * name the file and the tensor.
 *
 * The expected tensor list below is written out independently of model/checkpoint.c (from SPEC §1.4), so a
 * wrong list there cannot agree with itself here; the golden checkpoints check both against transformers.
 * usage: test_checkpoint SCRATCH_DIR (model directories are created under it)
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "config.h"
#include "es_file.h"
#include "golden.h"
#include "test_util.h"

/* ---- the tensor list, from SPEC §1.4 ---- */

typedef struct {
  char name[160];
  int ndim;
  int64_t shape[3];
} tt_t;

#define MAX_TT 4096

static void add(tt_t *t, int *n, int ndim, int64_t a, int64_t b, int64_t c, const char *fmt, int layer) {
  snprintf(t[*n].name, sizeof t[*n].name, fmt, layer);
  t[*n].ndim = ndim;
  t[*n].shape[0] = a;
  t[*n].shape[1] = b;
  t[*n].shape[2] = c;
  (*n)++;
}

static int spec_tensors(const model_config_t *c, tt_t *t) {
  int n = 0;
  int64_t d = c->d_model, f = c->encoder_ffn_dim, H = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
  int64_t kv = c->num_key_value_heads * (H / c->num_attention_heads);
  add(t, &n, 3, d, c->num_mel_bins, 3, "audio_tower.conv1.weight", 0);
  add(t, &n, 1, d, 0, 0, "audio_tower.conv1.bias", 0);
  add(t, &n, 3, d, d, 3, "audio_tower.conv2.weight", 0);
  add(t, &n, 1, d, 0, 0, "audio_tower.conv2.bias", 0);
  add(t, &n, 2, c->max_source_positions, d, 0, "audio_tower.embed_positions.weight", 0);
  for (int l = 0; l < c->encoder_layers; l++) {
    const char *lin[] = {"q_proj", "k_proj", "v_proj", "out_proj"};
    for (int i = 0; i < 4; i++) {
      char fmt[128];
      snprintf(fmt, sizeof fmt, "audio_tower.layers.%%d.self_attn.%s.weight", lin[i]);
      add(t, &n, 2, d, d, 0, fmt, l);
      if (i != 1) { /* k_proj: no bias */
        snprintf(fmt, sizeof fmt, "audio_tower.layers.%%d.self_attn.%s.bias", lin[i]);
        add(t, &n, 1, d, 0, 0, fmt, l);
      }
    }
    add(t, &n, 1, d, 0, 0, "audio_tower.layers.%d.self_attn_layer_norm.weight", l);
    add(t, &n, 1, d, 0, 0, "audio_tower.layers.%d.self_attn_layer_norm.bias", l);
    add(t, &n, 2, f, d, 0, "audio_tower.layers.%d.fc1.weight", l);
    add(t, &n, 1, f, 0, 0, "audio_tower.layers.%d.fc1.bias", l);
    add(t, &n, 2, d, f, 0, "audio_tower.layers.%d.fc2.weight", l);
    add(t, &n, 1, d, 0, 0, "audio_tower.layers.%d.fc2.bias", l);
    add(t, &n, 1, d, 0, 0, "audio_tower.layers.%d.final_layer_norm.weight", l);
    add(t, &n, 1, d, 0, 0, "audio_tower.layers.%d.final_layer_norm.bias", l);
  }
  add(t, &n, 1, d, 0, 0, "audio_tower.layer_norm.weight", 0);
  add(t, &n, 1, d, 0, 0, "audio_tower.layer_norm.bias", 0);
  add(t, &n, 2, H, d, 0, "multi_modal_projector.linear.weight", 0);
  add(t, &n, 1, H, 0, 0, "multi_modal_projector.linear.bias", 0);
  add(t, &n, 2, V, H, 0, "language_model.model.embed_tokens.weight", 0);
  for (int l = 0; l < c->num_hidden_layers; l++) {
    add(t, &n, 1, H, 0, 0, "language_model.model.layers.%d.input_layernorm.weight", l);
    add(t, &n, 2, H, H, 0, "language_model.model.layers.%d.self_attn.q_proj.weight", l);
    add(t, &n, 1, H, 0, 0, "language_model.model.layers.%d.self_attn.q_proj.bias", l);
    add(t, &n, 2, kv, H, 0, "language_model.model.layers.%d.self_attn.k_proj.weight", l);
    add(t, &n, 1, kv, 0, 0, "language_model.model.layers.%d.self_attn.k_proj.bias", l);
    add(t, &n, 2, kv, H, 0, "language_model.model.layers.%d.self_attn.v_proj.weight", l);
    add(t, &n, 1, kv, 0, 0, "language_model.model.layers.%d.self_attn.v_proj.bias", l);
    add(t, &n, 2, H, H, 0, "language_model.model.layers.%d.self_attn.o_proj.weight", l);
    add(t, &n, 1, H, 0, 0, "language_model.model.layers.%d.post_attention_layernorm.weight", l);
    add(t, &n, 2, I, H, 0, "language_model.model.layers.%d.mlp.gate_proj.weight", l);
    add(t, &n, 2, I, H, 0, "language_model.model.layers.%d.mlp.up_proj.weight", l);
    add(t, &n, 2, H, I, 0, "language_model.model.layers.%d.mlp.down_proj.weight", l);
  }
  add(t, &n, 1, H, 0, 0, "language_model.model.norm.weight", 0);
  if (!c->tie_word_embeddings) add(t, &n, 2, V, H, 0, "language_model.lm_head.weight", 0);
  return n;
}

/* ---- golden checkpoints ---- */

static void test_golden(void) {
  golden_t g;
  es_error_t err;
  es_error_clear(&err);
  T_REQUIRE(golden_open(&g, ES_SOURCE_DIR, &err) == 0, "%s", err.msg);
  const cJSON *cks = cJSON_GetObjectItemCaseSensitive(g.manifest, "checkpoints");
  T_CHECK(cJSON_GetArraySize(cks) == 3, "three golden checkpoints, got %d", cJSON_GetArraySize(cks));
  const cJSON *ck;
  static tt_t tt[MAX_TT];
  int layouts_seen[2] = {0, 0}, sharded = 0;
  cJSON_ArrayForEach(ck, cks) {
    const char *name = ck->string, *rel, *layout, *dtype;
    int64_t shards, vocab, hidden, audio_id;
    T_REQUIRE(golden_get_string(ck, "dir", &rel, &err) == 0 && golden_get_string(ck, "layout", &layout, &err) == 0 &&
                  golden_get_string(ck, "dtype", &dtype, &err) == 0 &&
                  golden_get_int(ck, "shards", &shards, &err) == 0 &&
                  golden_get_int(ck, "vocab_size", &vocab, &err) == 0 &&
                  golden_get_int(ck, "hidden_size", &hidden, &err) == 0 &&
                  golden_get_int(ck, "audio_token_id", &audio_id, &err) == 0,
              "%s: %s", name, err.msg);
    char dir[2048];
    T_REQUIRE(golden_path(&g, rel, dir, sizeof dir, &err) == 0, "%s", err.msg);
    model_config_t cfg;
    T_REQUIRE(cfg_load_dir(dir, &cfg, &err) == 0, "%s: %s", name, err.msg);
    T_CHECK(cfg.vocab_size == vocab && cfg.hidden_size == hidden && cfg.audio_token_index == audio_id,
            "%s: config values", name);
    const cJSON *eos = cJSON_GetObjectItemCaseSensitive(ck, "eos_token_ids");
    T_CHECK(cJSON_GetArraySize(eos) == cfg.n_eos, "%s: eos count", name);
    for (int i = 0; i < cfg.n_eos && i < cJSON_GetArraySize(eos); i++)
      T_CHECK(cfg.eos_ids[i] == (int)cJSON_GetArrayItem(eos, i)->valuedouble, "%s: eos %d", name, i);

    ckpt_t *c = NULL;
    int rc = ckpt_open(dir, &cfg, 0, &c, &err);
    T_CHECK(rc == 0, "%s: %s", name, err.msg);
    if (!c) continue;
    int want = spec_tensors(&cfg, tt);
    T_CHECK(ckpt_tensor_count(c) == want, "%s: %d tensors, SPEC list has %d", name, ckpt_tensor_count(c), want);
    for (int i = 0; i < want; i++) {
      ckpt_tensor_t t;
      int found = ckpt_get(c, tt[i].name, &t, &err) == 0;
      T_CHECK(found, "%s: %s", name, err.msg);
      if (!found) continue;
      int same = t.ndim == tt[i].ndim;
      for (int k = 0; same && k < t.ndim; k++) same = t.shape[k] == tt[i].shape[k];
      T_CHECK(same, "%s: %s shape", name, tt[i].name);
    }
    st_dtype_t dt = strcmp(dtype, "bf16") == 0 ? ST_BF16 : strcmp(dtype, "fp16") == 0 ? ST_F16 : ST_F32;
    T_CHECK(ckpt_dtype_count(c, dt) == want, "%s: all %s", name, dtype);
    int is_new = strcmp(layout, "new") == 0;
    layouts_seen[is_new] = 1;
    T_CHECK(ckpt_layout(c) == (is_new ? CKPT_LAYOUT_NEW : CKPT_LAYOUT_HUB), "%s: layout %s", name, layout);
    T_CHECK(ckpt_file_count(c) == shards, "%s: %d files, manifest says %d", name, ckpt_file_count(c), (int)shards);
    T_CHECK((ckpt_index_path(c) != NULL) == (shards > 1), "%s: index iff sharded", name);
    sharded |= shards > 1;
    T_CHECK(ckpt_param_count(c) == (uint64_t)cfg_param_count(&cfg), "%s: %llu parameters, config implies %lld", name,
            (unsigned long long)ckpt_param_count(c), cfg_param_count(&cfg));
    /* the stored name of the lm_head in the new layout */
    ckpt_tensor_t head;
    T_CHECK(ckpt_get(c, "language_model.lm_head.weight", &head, &err) == 0 &&
                strcmp(head.stored_name, is_new ? "lm_head.weight" : "language_model.lm_head.weight") == 0,
            "%s: lm_head stored as %s", name, head.stored_name);
    ckpt_close(c);
  }
  T_CHECK(layouts_seen[0] && layouts_seen[1] && sharded, "golden set covers both layouts and shards");
  golden_close(&g);
}

/* ---- synthetic model directories ---- */

static const char *TINY_CONFIG =
    "{\"model_type\": \"qwen2_audio\", \"audio_token_index\": 5,"
    " \"audio_config\": {\"num_mel_bins\": 4, \"d_model\": 8, \"encoder_layers\": 1, \"encoder_attention_heads\": 2,"
    "   \"encoder_ffn_dim\": 16, \"max_source_positions\": 6},"
    " \"text_config\": {\"hidden_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 2,"
    "   \"num_key_value_heads\": 1, \"intermediate_size\": 12, \"vocab_size\": %d, \"eos_token_id\": 4,"
    "   \"rms_norm_eps\": 1e-5, \"tie_word_embeddings\": %s}}";

typedef struct {
  int new_layout;
  const char *dtype;    /* "BF16", "F16", "F32" */
  int shards;           /* 0 or 1: model.safetensors; more: index + shards */
  const char *drop;     /* canonical name left out */
  const char *extra;    /* stored name added, shape [2] */
  const char *reshape;  /* canonical name stored with shape [3] */
  int omit_shard;       /* 1-based shard whose file is not written */
  const char *unlisted; /* canonical name left out of the index */
  int truncate_shard;   /* 1-based shard cut short by 3 bytes */
  int vocab;            /* vocab in config.json (tensors use 16) */
  int tied;
  const char *bad_index_shard; /* a weight_map value written instead of the real shard for "unlisted" */
} opts_t;

static void to_stored(const char *canon, int new_layout, char *out, size_t cap) {
  static const char *MAP[][2] = {{"language_model.model.", "model.language_model."},
                                 {"language_model.lm_head.", "lm_head."},
                                 {"audio_tower.", "model.audio_tower."},
                                 {"multi_modal_projector.", "model.multi_modal_projector."}};
  if (new_layout)
    for (int i = 0; i < 4; i++)
      if (strncmp(canon, MAP[i][0], strlen(MAP[i][0])) == 0) {
        if (snprintf(out, cap, "%s%s", MAP[i][1], canon + strlen(MAP[i][0])) >= (int)cap) out[0] = '\0';
        return;
      }
  if (snprintf(out, cap, "%s", canon) >= (int)cap) out[0] = '\0'; /* never with the names used here */
}

static size_t dtype_size(const char *dt) {
  return strcmp(dt, "F32") == 0 ? 4 : 2;
}

/* Writes one safetensors file holding tensors t[0..n); element j of the tensor stored k-th holds the value
 * (k*7 + j) & 0xff in its first byte, so data can be traced back. */
static int write_st(const char *path, const tt_t *t, int n, const char *dtype, int new_layout, int cut) {
  size_t cap = 64 + (size_t)n * 256, at = 0, off = 0, es = dtype_size(dtype);
  char *hdr = malloc(cap);
  at += (size_t)snprintf(hdr + at, cap - at, "{\"__metadata__\": {\"format\": \"pt\"}");
  for (int i = 0; i < n; i++) {
    uint64_t cnt = 1;
    for (int k = 0; k < t[i].ndim; k++) cnt *= (uint64_t)t[i].shape[k];
    char stored[200];
    to_stored(t[i].name, new_layout, stored, sizeof stored);
    at += (size_t)snprintf(hdr + at, cap - at, ", \"%s\": {\"dtype\": \"%s\", \"shape\": [", stored, dtype);
    for (int k = 0; k < t[i].ndim; k++)
      at += (size_t)snprintf(hdr + at, cap - at, "%s%lld", k ? ", " : "", (long long)t[i].shape[k]);
    at += (size_t)snprintf(hdr + at, cap - at, "], \"data_offsets\": [%zu, %zu]}", off, off + cnt * es);
    off += cnt * es;
  }
  at += (size_t)snprintf(hdr + at, cap - at, "}");
  while (at % 8) hdr[at++] = ' ';
  size_t len = 8 + at + off;
  uint8_t *b = calloc(1, len);
  for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)at >> (8 * i));
  memcpy(b + 8, hdr, at);
  size_t p = 8 + at;
  for (int i = 0; i < n; i++) {
    uint64_t cnt = 1;
    for (int k = 0; k < t[i].ndim; k++) cnt *= (uint64_t)t[i].shape[k];
    for (uint64_t j = 0; j < cnt; j++, p += es) b[p] = (uint8_t)((i * 7 + j) & 0xff);
  }
  es_error_t err;
  int rc = es_write_file(path, b, len - (size_t)cut, &err);
  free(b);
  free(hdr);
  return rc;
}

static void rm_dir(const char *dir) {
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", dir);
}

/* Builds DIR = tmp/name from opts; returns 0 on success. */
static int make_model(const char *tmp, const char *name, const opts_t *o, char *dir, size_t cap) {
  snprintf(dir, cap, "%s/ckpt-%s", tmp, name);
  rm_dir(dir);
  if (mkdir(dir, 0755) != 0) return -1;
  char path[1400], text[4096];
  es_error_t err;
  snprintf(text, sizeof text, TINY_CONFIG, o->vocab ? o->vocab : 16, o->tied ? "true" : "false");
  snprintf(path, sizeof path, "%s/config.json", dir);
  if (es_write_file(path, text, strlen(text), &err)) return -1;
  const char *gen = "{\"eos_token_id\": [3, 4], \"pad_token_id\": 3, \"bos_token_id\": 3}";
  snprintf(path, sizeof path, "%s/generation_config.json", dir);
  if (es_write_file(path, gen, strlen(gen), &err)) return -1;

  model_config_t cfg;
  cfg_defaults(&cfg);
  snprintf(text, sizeof text, TINY_CONFIG, 16, o->tied ? "true" : "false");
  if (cfg_parse_config(text, strlen(text), "tiny", &cfg, &err) || cfg_validate(&cfg, "tiny", &err)) {
    fprintf(stderr, "tiny config: %s\n", err.msg);
    return -1;
  }
  static tt_t all[MAX_TT];
  int n = spec_tensors(&cfg, all), m = 0;
  static tt_t keep[MAX_TT];
  for (int i = 0; i < n; i++) {
    if (o->drop && strcmp(all[i].name, o->drop) == 0) continue;
    keep[m] = all[i];
    if (o->reshape && strcmp(all[i].name, o->reshape) == 0) {
      keep[m].ndim = 1;
      keep[m].shape[0] = 3;
    }
    m++;
  }
  if (o->extra) {
    snprintf(keep[m].name, sizeof keep[m].name, "%s", o->extra);
    keep[m].ndim = 1;
    keep[m].shape[0] = 2;
    m++;
  }
  const char *dt = o->dtype ? o->dtype : "BF16";
  if (o->shards <= 1) {
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    return write_st(path, keep, m, dt, o->new_layout, o->truncate_shard ? 3 : 0);
  }
  /* contiguous runs, as save_pretrained splits */
  char index[65536];
  size_t at = (size_t)snprintf(index, sizeof index, "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {");
  int per = (m + o->shards - 1) / o->shards, first = 1;
  for (int s = 0; s < o->shards; s++) {
    char shard[64];
    snprintf(shard, sizeof shard, "model-%05d-of-%05d.safetensors", s + 1, o->shards);
    int lo = s * per, hi = lo + per < m ? lo + per : m;
    for (int i = lo; i < hi; i++) {
      char stored[200];
      to_stored(keep[i].name, o->new_layout, stored, sizeof stored);
      if (o->unlisted && strcmp(keep[i].name, o->unlisted) == 0) {
        if (!o->bad_index_shard) continue;
        at += (size_t)snprintf(index + at, sizeof index - at, "%s\"%s\": \"%s\"", first ? "" : ", ", stored,
                               o->bad_index_shard);
        first = 0;
        continue;
      }
      at += (size_t)snprintf(index + at, sizeof index - at, "%s\"%s\": \"%s\"", first ? "" : ", ", stored, shard);
      first = 0;
    }
    if (s + 1 == o->omit_shard) continue;
    snprintf(path, sizeof path, "%s/%s", dir, shard);
    if (write_st(path, keep + lo, hi - lo, dt, o->new_layout, s + 1 == o->truncate_shard ? 3 : 0)) return -1;
  }
  at += (size_t)snprintf(index + at, sizeof index - at, "}}");
  snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
  return es_write_file(path, index, at, &err);
}

/* Opens DIR with its own config; returns the ckpt_open status, err filled. Keeps the handle in *out. */
static int open_model(const char *dir, ckpt_t **out, es_error_t *err) {
  model_config_t cfg;
  int rc = cfg_load_dir(dir, &cfg, err);
  if (rc) return rc;
  return ckpt_open(dir, &cfg, CKPT_KEEP_ON_PROBLEMS, out, err);
}

static void test_clean(const char *tmp) {
  static const struct {
    const char *name;
    opts_t o;
    ckpt_layout_t layout;
    st_dtype_t dt;
  } CASES[] = {
      {"hub-bf16", {.dtype = "BF16"}, CKPT_LAYOUT_HUB, ST_BF16},
      {"new-bf16", {.new_layout = 1, .dtype = "BF16"}, CKPT_LAYOUT_NEW, ST_BF16},
      {"hub-f16-3shards", {.dtype = "F16", .shards = 3}, CKPT_LAYOUT_HUB, ST_F16},
      {"new-f32-2shards", {.new_layout = 1, .dtype = "F32", .shards = 2}, CKPT_LAYOUT_NEW, ST_F32},
  };
  for (size_t k = 0; k < sizeof CASES / sizeof CASES[0]; k++) {
    char dir[1100];
    T_REQUIRE(make_model(tmp, CASES[k].name, &CASES[k].o, dir, sizeof dir) == 0, "make %s", CASES[k].name);
    ckpt_t *c = NULL;
    es_error_t err;
    es_error_clear(&err);
    T_CHECK(open_model(dir, &c, &err) == 0, "%s: %s", CASES[k].name, err.msg);
    if (!c) continue;
    T_CHECK(ckpt_problem_count(c) == 0, "%s: problems", CASES[k].name);
    T_CHECK(ckpt_layout(c) == CASES[k].layout, "%s: layout", CASES[k].name);
    T_CHECK(ckpt_file_count(c) == (CASES[k].o.shards > 1 ? CASES[k].o.shards : 1), "%s: files", CASES[k].name);
    T_CHECK(ckpt_dtype_count(c, CASES[k].dt) == ckpt_tensor_count(c), "%s: dtype", CASES[k].name);
    /* tensor 0 in the writer's order is conv1.weight: element j's first byte is j & 0xff */
    ckpt_tensor_t t;
    T_CHECK(ckpt_get(c, "audio_tower.conv1.weight", &t, &err) == 0, "%s", err.msg);
    size_t es = st_dtype_size(t.dtype);
    T_CHECK(t.count == 8 * 4 * 3 && ((const uint8_t *)t.data)[5 * es] == 5, "%s: conv1 data", CASES[k].name);
    T_CHECK(ckpt_get(c, "audio_tower.layers.0.self_attn.k_proj.bias", &t, &err) == ES_ENOTFOUND &&
                strstr(err.msg, "k_proj.bias"),
            "absent tensor: %s", err.msg);
    T_CHECK(ckpt_get(c, "language_model.lm_head.weight", &t, &err) == 0 && t.shape[0] == 16, "lm_head");
    ckpt_close(c);
  }

  /* tied embeddings: no lm_head stored; the lookup falls back to embed_tokens */
  char dir[1100];
  opts_t tied = {.tied = 1};
  T_REQUIRE(make_model(tmp, "tied", &tied, dir, sizeof dir) == 0, "make tied");
  ckpt_t *c = NULL;
  es_error_t err;
  T_CHECK(open_model(dir, &c, &err) == 0, "tied: %s", err.msg);
  ckpt_tensor_t t;
  if (c) {
    T_CHECK(ckpt_get(c, "language_model.lm_head.weight", &t, &err) == 0 &&
                strcmp(t.name, "language_model.model.embed_tokens.weight") == 0,
            "tied lm_head");
    ckpt_close(c);
  }
}

/* One corruption: ckpt_open fails, the handle is dropped without CKPT_KEEP_ON_PROBLEMS, and the message
 * contains every needle (file and tensor). */
static void expect_problem(const char *tmp, const char *name, const opts_t *o, int nproblems, const char *n1,
                           const char *n2) {
  char dir[1100];
  T_REQUIRE(make_model(tmp, name, o, dir, sizeof dir) == 0, "make %s", name);
  model_config_t cfg;
  es_error_t err;
  es_error_clear(&err);
  T_REQUIRE(cfg_load_dir(dir, &cfg, &err) == 0, "%s: %s", name, err.msg);
  ckpt_t *c = (ckpt_t *)&cfg; /* poisoned: must come back NULL */
  int rc = ckpt_open(dir, &cfg, 0, &c, &err);
  T_CHECK(rc != 0 && c == NULL, "%s: must fail (rc %d)", name, rc);
  T_CHECK(strstr(err.msg, n1) != NULL, "%s: message '%s' should contain '%s'", name, err.msg, n1);
  T_CHECK(!n2 || strstr(err.msg, n2) != NULL, "%s: message '%s' should contain '%s'", name, err.msg, n2);
  if (nproblems >= 0) {
    rc = ckpt_open(dir, &cfg, CKPT_KEEP_ON_PROBLEMS, &c, &err);
    T_CHECK(rc != 0 && c != NULL, "%s: kept handle", name);
    if (c) {
      T_CHECK(ckpt_problem_count(c) == nproblems, "%s: %d problems, expected %d (first: %s)", name,
              ckpt_problem_count(c), nproblems, ckpt_problem(c, 0));
      ckpt_close(c);
    }
  }
}

static void test_corrupt(const char *tmp) {
  opts_t o;
  o = (opts_t){.drop = "audio_tower.layers.0.fc1.bias"};
  expect_problem(tmp, "missing", &o, 1, "missing tensor 'audio_tower.layers.0.fc1.bias'", "ckpt-missing");
  o = (opts_t){.new_layout = 1, .drop = "language_model.model.norm.weight"};
  expect_problem(tmp, "missing-new", &o, 1, "missing tensor 'model.language_model.norm.weight'", NULL);
  o = (opts_t){.extra = "audio_tower.layers.0.self_attn.k_proj.bias"};
  expect_problem(tmp, "extra", &o, 1, "unexpected tensor 'audio_tower.layers.0.self_attn.k_proj.bias'",
                 "ckpt-extra/model.safetensors");
  o = (opts_t){.reshape = "language_model.model.layers.0.mlp.up_proj.weight"};
  expect_problem(tmp, "shape", &o, 1, "'language_model.model.layers.0.mlp.up_proj.weight' has shape [3]", "[12, 8]");
  o = (opts_t){.vocab = 32};
  expect_problem(tmp, "vocab", &o, 2, "has shape [16, 8], the config needs [32, 8]", "ckpt-vocab/model.safetensors");
  o = (opts_t){.shards = 3, .omit_shard = 2};
  expect_problem(tmp, "shard-absent", &o, -1, "model-00002-of-00003.safetensors", "does not exist");
  o = (opts_t){.shards = 3, .unlisted = "audio_tower.conv2.bias"};
  expect_problem(tmp, "unlisted", &o, 1, "'audio_tower.conv2.bias' is not listed", "model-00001-of-00003");
  o = (opts_t){
      .shards = 3, .unlisted = "audio_tower.conv2.bias", .bad_index_shard = "model-00003-of-00003.safetensors"};
  expect_problem(tmp, "wrong-shard", &o, 2, "'audio_tower.conv2.bias' is here, but", "model-00003-of-00003");
  o = (opts_t){.shards = 2, .unlisted = "audio_tower.conv2.bias", .bad_index_shard = "../elsewhere.safetensors"};
  expect_problem(tmp, "escape", &o, 2, "weight_map entry 'audio_tower.conv2.bias' must name a file", NULL);
  o = (opts_t){.shards = 3, .truncate_shard = 3};
  expect_problem(tmp, "shard-truncated", &o, -1, "model-00003-of-00003.safetensors", "truncated");
  o = (opts_t){.truncate_shard = 1};
  expect_problem(tmp, "truncated", &o, -1, "ckpt-truncated/model.safetensors", "truncated");
  o = (opts_t){.extra = "lm_head.weight"};
  expect_problem(tmp, "twice", &o, 2, "'language_model.lm_head.weight' is stored twice", "lm_head.weight");
  /* several problems at once: all reported */
  o = (opts_t){.drop = "audio_tower.conv1.bias", .extra = "foo.bar", .reshape = "audio_tower.layer_norm.bias"};
  expect_problem(tmp, "several", &o, 3, "(and 2 more problems", NULL);

  /* a shard that opens nothing, every other tensor still checked: missing shard + its tensors missing */
  char dir[1100];
  o = (opts_t){.shards = 3, .omit_shard = 1};
  T_REQUIRE(make_model(tmp, "shard-absent2", &o, dir, sizeof dir) == 0, "make");
  ckpt_t *c = NULL;
  es_error_t err;
  T_CHECK(open_model(dir, &c, &err) != 0 && c, "kept");
  if (c) {
    T_CHECK(ckpt_problem_count(c) > 1 && strstr(ckpt_problem(c, 0), "does not exist") &&
                strstr(ckpt_problem(c, 1), "missing tensor 'audio_tower.conv1.weight'"),
            "problems: %s | %s", ckpt_problem(c, 0), ckpt_problem(c, 1));
    T_CHECK(ckpt_file_count(c) == 3 && ckpt_tensor_count(c) > 0, "other shards still read");
    ckpt_close(c);
  }

  /* no weights at all; not a directory */
  char empty[1100];
  snprintf(empty, sizeof empty, "%s/ckpt-empty", tmp);
  rm_dir(empty);
  T_REQUIRE(mkdir(empty, 0755) == 0, "mkdir");
  T_CHECK(ckpt_open(empty, NULL, CKPT_KEEP_ON_PROBLEMS, &c, &err) == ES_ENOTFOUND && !c &&
              strstr(err.msg, "no model.safetensors"),
          "%s", err.msg);
  char file[1200];
  snprintf(file, sizeof file, "%s/file", empty);
  T_REQUIRE(es_write_file(file, "x", 1, &err) == 0, "write");
  T_CHECK(ckpt_open(file, NULL, 0, &c, &err) == ES_ENOTFOUND && !c && strstr(err.msg, "not a directory"), "%s",
          err.msg);
  /* a bad index */
  snprintf(file, sizeof file, "%s/model.safetensors.index.json", empty);
  T_REQUIRE(es_write_file(file, "{\"weight_map\": [1]}", 19, &err) == 0, "write");
  T_CHECK(ckpt_open(empty, NULL, 0, &c, &err) == ES_EINVAL && !c && strstr(err.msg, "weight_map"), "%s", err.msg);
  T_REQUIRE(es_write_file(file, "{\"weight_map\": {", 16, &err) == 0, "write");
  T_CHECK(ckpt_open(empty, NULL, 0, &c, &err) == ES_EINVAL && !c && strstr(err.msg, "index.json"), "%s", err.msg);

  /* no config: files checked, names not */
  o = (opts_t){.extra = "foo.bar"};
  T_REQUIRE(make_model(tmp, "nocfg", &o, dir, sizeof dir) == 0, "make");
  T_CHECK(ckpt_open(dir, NULL, 0, &c, &err) == 0 && c, "%s", err.msg);
  if (c) T_CHECK(ckpt_layout(c) == CKPT_LAYOUT_HUB, "layout ignores unknown names");
  ckpt_close(c);
  ckpt_close(NULL);
}

typedef struct {
  tt_t t[MAX_TT];
  int n;
} collect_t;

static void collect(void *ctx, const char *name, int ndim, const int64_t *shape) {
  collect_t *c = ctx;
  if (c->n == MAX_TT) return;
  snprintf(c->t[c->n].name, sizeof c->t[c->n].name, "%s", name);
  c->t[c->n].ndim = ndim;
  for (int k = 0; k < ndim; k++) c->t[c->n].shape[k] = shape[k];
  c->n++;
}

static void test_names(void) {
  char out[256];
  T_CHECK(ckpt_canonical_name("model.language_model.layers.3.mlp.up_proj.weight", out, sizeof out) == CKPT_LAYOUT_NEW &&
              strcmp(out, "language_model.model.layers.3.mlp.up_proj.weight") == 0,
          "%s", out);
  T_CHECK(ckpt_canonical_name("lm_head.weight", out, sizeof out) == CKPT_LAYOUT_NEW &&
              strcmp(out, "language_model.lm_head.weight") == 0,
          "%s", out);
  T_CHECK(ckpt_canonical_name("model.audio_tower.conv1.bias", out, sizeof out) == CKPT_LAYOUT_NEW &&
              strcmp(out, "audio_tower.conv1.bias") == 0,
          "%s", out);
  T_CHECK(ckpt_canonical_name("model.multi_modal_projector.linear.bias", out, sizeof out) == CKPT_LAYOUT_NEW &&
              strcmp(out, "multi_modal_projector.linear.bias") == 0,
          "%s", out);
  T_CHECK(ckpt_canonical_name("language_model.model.norm.weight", out, sizeof out) == CKPT_LAYOUT_HUB, "hub");
  T_CHECK(ckpt_canonical_name("model.norm.weight", out, sizeof out) == CKPT_LAYOUT_NONE, "neither");
  T_CHECK(ckpt_canonical_name("lm_head.weight", out, 8) == -1, "too long");

  /* the library's expected list equals the SPEC list written out here, for the 7B config */
  model_config_t cfg;
  cfg_defaults(&cfg);
  cfg.intermediate_size = 11008;
  cfg.vocab_size = 156032;
  cfg.num_key_value_heads = 32;
  static tt_t tt[MAX_TT];
  int n = spec_tensors(&cfg, tt);
  long long params = 0;
  for (int i = 0; i < n; i++) {
    long long p = 1;
    for (int k = 0; k < tt[i].ndim; k++) p *= tt[i].shape[k];
    params += p;
  }
  T_CHECK(params == 8397094912LL, "SPEC §1.4 parameter count: %lld", params);
  static collect_t col;
  int m = ckpt_expected_tensors(&cfg, collect, &col);
  T_CHECK(m == n && col.n == n, "library lists %d tensors, SPEC %d", m, n);
  for (int i = 0; i < n && i < col.n; i++) {
    int same = strcmp(col.t[i].name, tt[i].name) == 0 && col.t[i].ndim == tt[i].ndim;
    for (int k = 0; same && k < tt[i].ndim; k++) same = col.t[i].shape[k] == tt[i].shape[k];
    T_CHECK(same, "entry %d: library %s, SPEC %s", i, col.t[i].name, tt[i].name);
  }
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_checkpoint SCRATCH_DIR\n");
    return 2;
  }
  test_names();
  test_golden();
  test_clean(argv[1]);
  test_corrupt(argv[1]);
  return t_finish();
}
