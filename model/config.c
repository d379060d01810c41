/* config: config.json + generation_config.json -> model_config_t. See config.h.
 * ref: transformers configuration_qwen2_audio.py (124ddc4e), configuration_qwen2.py (008e5743), SPEC §1.1-1.2, §1.7
 */
#include "config.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "es_file.h"

void cfg_defaults(model_config_t *cfg) {
  memset(cfg, 0, sizeof *cfg);
  /* Qwen2AudioEncoderConfig */
  cfg->num_mel_bins = 128;
  cfg->d_model = 1280;
  cfg->encoder_layers = 32;
  cfg->encoder_attention_heads = 20;
  cfg->encoder_ffn_dim = 5120;
  cfg->max_source_positions = 1500;
  snprintf(cfg->activation, sizeof cfg->activation, "gelu");
  cfg->scale_embedding = 0;
  /* Qwen2Config */
  cfg->hidden_size = 4096;
  cfg->num_hidden_layers = 32;
  cfg->num_attention_heads = 32;
  cfg->num_key_value_heads = -1; /* resolved to num_attention_heads after parsing, as Qwen2Config does */
  cfg->intermediate_size = 22016;
  cfg->vocab_size = 151936;
  cfg->max_position_embeddings = 32768;
  cfg->rms_norm_eps = 1e-6;
  cfg->rope_theta = 10000.0;
  cfg->tie_word_embeddings = 0;
  snprintf(cfg->hidden_act, sizeof cfg->hidden_act, "silu");
  /* Qwen2AudioConfig */
  cfg->audio_token_index = 151646;
  cfg->bos_token_id = -1;
  cfg->pad_token_id = -1;
  cfg->n_eos = 0;
  /* GenerationConfig: the values generate() resolves an unset field to */
  cfg->do_sample = 0;
  cfg->temperature = 1.0;
  cfg->top_k = 50;
  cfg->top_p = 1.0;
  cfg->repetition_penalty = 1.0;
  cfg->max_new_tokens = -1;
  cfg->max_length = -1;
}

/* ---- typed field readers: absent or null keeps the default; a wrong type is an error naming the key ---- */

static int get_int(const cJSON *obj, const char *key, const char *where, const char *name, int *out, es_error_t *err) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (!v || cJSON_IsNull(v)) return ES_OK;
  if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || fabs(v->valuedouble) > 2147483647.0)
    return es_fail(err, ES_EINVAL, "%s: %s%s must be an integer", name, where, key);
  *out = (int)v->valuedouble;
  return ES_OK;
}

static int get_double(const cJSON *obj, const char *key, const char *where, const char *name, double *out,
                      es_error_t *err) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (!v || cJSON_IsNull(v)) return ES_OK;
  if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
    return es_fail(err, ES_EINVAL, "%s: %s%s must be a finite number", name, where, key);
  *out = v->valuedouble;
  return ES_OK;
}

static int get_bool(const cJSON *obj, const char *key, const char *where, const char *name, int *out, es_error_t *err) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (!v || cJSON_IsNull(v)) return ES_OK;
  if (!cJSON_IsBool(v)) return es_fail(err, ES_EINVAL, "%s: %s%s must be true or false", name, where, key);
  *out = cJSON_IsTrue(v) ? 1 : 0;
  return ES_OK;
}

static int get_string(const cJSON *obj, const char *key, const char *where, const char *name, char *out, size_t cap,
                      es_error_t *err) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (!v || cJSON_IsNull(v)) return ES_OK;
  if (!cJSON_IsString(v)) return es_fail(err, ES_EINVAL, "%s: %s%s must be a string", name, where, key);
  if (strlen(v->valuestring) >= cap)
    return es_fail(err, ES_EINVAL, "%s: %s%s is too long: \"%.40s...\"", name, where, key, v->valuestring);
  snprintf(out, cap, "%s", v->valuestring);
  return ES_OK;
}

/* eos_token_id is an int or a list of ints in both files. */
static int get_id_list(const cJSON *obj, const char *key, const char *where, const char *name, int *ids, int *n,
                       es_error_t *err) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (!v || cJSON_IsNull(v)) return ES_OK;
  if (cJSON_IsNumber(v)) {
    int rc = get_int(obj, key, where, name, &ids[0], err);
    if (rc == ES_OK) *n = 1;
    return rc;
  }
  if (!cJSON_IsArray(v))
    return es_fail(err, ES_EINVAL, "%s: %s%s must be an integer or a list of integers", name, where, key);
  int count = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, v) {
    if (count == CFG_MAX_EOS)
      return es_fail(err, ES_ETOOBIG, "%s: %s%s lists more than %d ids", name, where, key, CFG_MAX_EOS);
    if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) || fabs(it->valuedouble) > 2147483647.0)
      return es_fail(err, ES_EINVAL, "%s: %s%s[%d] must be an integer", name, where, key, count);
    ids[count++] = (int)it->valuedouble;
  }
  *n = count;
  return ES_OK;
}

static cJSON *parse_object(const char *json, size_t len, const char *name, es_error_t *err) {
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
  if (!root) {
    size_t at = end && end >= json ? (size_t)(end - json) : 0;
    es_fail(err, ES_EINVAL, "%s: not valid JSON (near byte %zu)", name, at);
    return NULL;
  }
  if (!cJSON_IsObject(root)) {
    cJSON_Delete(root);
    es_fail(err, ES_EINVAL, "%s: the top level must be a JSON object", name);
    return NULL;
  }
  return root;
}

#define TRY(call)                                                                                                      \
  do {                                                                                                                 \
    if ((rc = (call)) != ES_OK) goto fail;                                                                             \
  } while (0)

int cfg_parse_config(const char *json, size_t len, const char *name, model_config_t *cfg, es_error_t *err) {
  int rc = ES_OK;
  cJSON *root = parse_object(json, len, name, err);
  if (!root) return ES_EINVAL;

  const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
  if (mt && (!cJSON_IsString(mt) || strcmp(mt->valuestring, "qwen2_audio") != 0)) {
    rc = es_fail(err, ES_EUNSUPPORTED, "%s: model_type is %s%s%s, earshot runs \"qwen2_audio\"", name,
                 cJSON_IsString(mt) ? "\"" : "", cJSON_IsString(mt) ? mt->valuestring : "not a string",
                 cJSON_IsString(mt) ? "\"" : "");
    goto fail;
  }

  const cJSON *audio = cJSON_GetObjectItemCaseSensitive(root, "audio_config");
  if (audio && !cJSON_IsNull(audio)) {
    if (!cJSON_IsObject(audio)) {
      rc = es_fail(err, ES_EINVAL, "%s: audio_config must be an object", name);
      goto fail;
    }
    const char *w = "audio_config.";
    TRY(get_int(audio, "num_mel_bins", w, name, &cfg->num_mel_bins, err));
    TRY(get_int(audio, "d_model", w, name, &cfg->d_model, err));
    TRY(get_int(audio, "encoder_layers", w, name, &cfg->encoder_layers, err));
    TRY(get_int(audio, "encoder_attention_heads", w, name, &cfg->encoder_attention_heads, err));
    TRY(get_int(audio, "encoder_ffn_dim", w, name, &cfg->encoder_ffn_dim, err));
    TRY(get_int(audio, "max_source_positions", w, name, &cfg->max_source_positions, err));
    TRY(get_string(audio, "activation_function", w, name, cfg->activation, sizeof cfg->activation, err));
    TRY(get_bool(audio, "scale_embedding", w, name, &cfg->scale_embedding, err));
  }

  const cJSON *text = cJSON_GetObjectItemCaseSensitive(root, "text_config");
  if (text && !cJSON_IsNull(text)) {
    if (!cJSON_IsObject(text)) {
      rc = es_fail(err, ES_EINVAL, "%s: text_config must be an object", name);
      goto fail;
    }
    const char *w = "text_config.";
    const cJSON *tmt = cJSON_GetObjectItemCaseSensitive(text, "model_type");
    if (tmt && (!cJSON_IsString(tmt) || strcmp(tmt->valuestring, "qwen2") != 0)) {
      rc = es_fail(err, ES_EUNSUPPORTED, "%s: text_config.model_type must be \"qwen2\"", name);
      goto fail;
    }
    TRY(get_int(text, "hidden_size", w, name, &cfg->hidden_size, err));
    TRY(get_int(text, "num_hidden_layers", w, name, &cfg->num_hidden_layers, err));
    TRY(get_int(text, "num_attention_heads", w, name, &cfg->num_attention_heads, err));
    TRY(get_int(text, "num_key_value_heads", w, name, &cfg->num_key_value_heads, err));
    TRY(get_int(text, "intermediate_size", w, name, &cfg->intermediate_size, err));
    TRY(get_int(text, "vocab_size", w, name, &cfg->vocab_size, err));
    TRY(get_int(text, "max_position_embeddings", w, name, &cfg->max_position_embeddings, err));
    TRY(get_double(text, "rms_norm_eps", w, name, &cfg->rms_norm_eps, err));
    TRY(get_double(text, "rope_theta", w, name, &cfg->rope_theta, err));
    TRY(get_bool(text, "tie_word_embeddings", w, name, &cfg->tie_word_embeddings, err));
    TRY(get_string(text, "hidden_act", w, name, cfg->hidden_act, sizeof cfg->hidden_act, err));
    TRY(get_int(text, "bos_token_id", w, name, &cfg->bos_token_id, err));
    TRY(get_int(text, "pad_token_id", w, name, &cfg->pad_token_id, err));
    TRY(get_id_list(text, "eos_token_id", w, name, cfg->eos_ids, &cfg->n_eos, err));

    /* transformers v5 writes rope_parameters {rope_type, rope_theta}; only the default (unscaled) RoPE is
     * what Qwen2-Audio uses. v4's rope_scaling likewise must be absent or null. */
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(text, "rope_parameters");
    if (rp && !cJSON_IsNull(rp)) {
      if (!cJSON_IsObject(rp)) {
        rc = es_fail(err, ES_EINVAL, "%s: text_config.rope_parameters must be an object", name);
        goto fail;
      }
      char rope_type[CFG_NAME_MAX] = "default";
      TRY(get_string(rp, "rope_type", "text_config.rope_parameters.", name, rope_type, sizeof rope_type, err));
      if (strcmp(rope_type, "default") != 0) {
        rc = es_fail(err, ES_EUNSUPPORTED,
                     "%s: text_config.rope_parameters.rope_type \"%s\" is not supported "
                     "(only \"default\")",
                     name, rope_type);
        goto fail;
      }
      TRY(get_double(rp, "rope_theta", "text_config.rope_parameters.", name, &cfg->rope_theta, err));
    }
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(text, "rope_scaling");
    if (rs && !cJSON_IsNull(rs)) {
      const cJSON *t = cJSON_IsObject(rs) ? cJSON_GetObjectItemCaseSensitive(rs, "rope_type") : NULL;
      if (!t) t = cJSON_IsObject(rs) ? cJSON_GetObjectItemCaseSensitive(rs, "type") : NULL;
      if (!t || !cJSON_IsString(t) || strcmp(t->valuestring, "default") != 0) {
        rc =
            es_fail(err, ES_EUNSUPPORTED, "%s: text_config.rope_scaling is set; only unscaled RoPE is supported", name);
        goto fail;
      }
    }
    int sliding = 0;
    TRY(get_bool(text, "use_sliding_window", w, name, &sliding, err));
    if (sliding) {
      rc = es_fail(err, ES_EUNSUPPORTED, "%s: text_config.use_sliding_window is true; earshot runs full attention",
                   name);
      goto fail;
    }
    int head_dim = 0;
    TRY(get_int(text, "head_dim", w, name, &head_dim, err));
    if (head_dim && cfg->num_attention_heads > 0 && head_dim * cfg->num_attention_heads != cfg->hidden_size) {
      rc = es_fail(err, ES_EUNSUPPORTED,
                   "%s: text_config.head_dim %d differs from hidden_size/num_attention_heads "
                   "= %d/%d",
                   name, head_dim, cfg->hidden_size, cfg->num_attention_heads);
      goto fail;
    }
  }

  TRY(get_int(root, "audio_token_index", "", name, &cfg->audio_token_index, err));
  /* audio_token_id is the v5 spelling of the same attribute */
  int alias = -1;
  TRY(get_int(root, "audio_token_id", "", name, &alias, err));
  if (alias >= 0 && cJSON_GetObjectItemCaseSensitive(root, "audio_token_index") && alias != cfg->audio_token_index) {
    rc = es_fail(err, ES_EINVAL, "%s: audio_token_id %d and audio_token_index %d disagree", name, alias,
                 cfg->audio_token_index);
    goto fail;
  }
  if (alias >= 0) cfg->audio_token_index = alias;

  /* Old files repeat vocab_size and tie_word_embeddings at the top level; the text model uses text_config's,
   * so a different top-level value means the file is inconsistent. */
  int top_vocab = -1, top_tie = -1;
  TRY(get_int(root, "vocab_size", "", name, &top_vocab, err));
  if (top_vocab >= 0 && top_vocab != cfg->vocab_size) {
    rc = es_fail(err, ES_EINVAL, "%s: vocab_size %d differs from text_config.vocab_size %d", name, top_vocab,
                 cfg->vocab_size);
    goto fail;
  }
  TRY(get_bool(root, "tie_word_embeddings", "", name, &top_tie, err));
  if (top_tie >= 0 && top_tie != cfg->tie_word_embeddings) {
    rc = es_fail(err, ES_EINVAL, "%s: tie_word_embeddings %s differs from text_config.tie_word_embeddings", name,
                 top_tie ? "true" : "false");
    goto fail;
  }
  if (cfg->num_key_value_heads < 0) cfg->num_key_value_heads = cfg->num_attention_heads;

fail:
  cJSON_Delete(root);
  return rc;
}

int cfg_parse_generation(const char *json, size_t len, const char *name, model_config_t *cfg, es_error_t *err) {
  int rc = ES_OK;
  cJSON *root = parse_object(json, len, name, err);
  if (!root) return ES_EINVAL;
  TRY(get_id_list(root, "eos_token_id", "", name, cfg->eos_ids, &cfg->n_eos, err));
  TRY(get_int(root, "bos_token_id", "", name, &cfg->bos_token_id, err));
  TRY(get_int(root, "pad_token_id", "", name, &cfg->pad_token_id, err));
  TRY(get_bool(root, "do_sample", "", name, &cfg->do_sample, err));
  TRY(get_double(root, "temperature", "", name, &cfg->temperature, err));
  TRY(get_int(root, "top_k", "", name, &cfg->top_k, err));
  TRY(get_double(root, "top_p", "", name, &cfg->top_p, err));
  TRY(get_double(root, "repetition_penalty", "", name, &cfg->repetition_penalty, err));
  TRY(get_int(root, "max_new_tokens", "", name, &cfg->max_new_tokens, err));
  TRY(get_int(root, "max_length", "", name, &cfg->max_length, err));
  cfg->has_generation_config = 1;
fail:
  cJSON_Delete(root);
  return rc;
}

#undef TRY

static int check_positive(int v, const char *field, const char *name, es_error_t *err) {
  if (v <= 0) return es_fail(err, ES_EINVAL, "%s: %s must be positive, got %d", name, field, v);
  return ES_OK;
}

static int check_id(int id, const char *field, int vocab, int optional, const char *name, es_error_t *err) {
  if (optional && id == -1) return ES_OK;
  if (id < 0 || id >= vocab)
    return es_fail(err, ES_EINVAL, "%s: %s %d is outside the vocabulary [0, %d)", name, field, id, vocab);
  return ES_OK;
}

int cfg_validate(model_config_t *cfg, const char *name, es_error_t *err) {
  static const struct {
    const char *field;
    size_t off;
  } sizes[] = {
      {"audio_config.num_mel_bins", offsetof(model_config_t, num_mel_bins)},
      {"audio_config.d_model", offsetof(model_config_t, d_model)},
      {"audio_config.encoder_layers", offsetof(model_config_t, encoder_layers)},
      {"audio_config.encoder_attention_heads", offsetof(model_config_t, encoder_attention_heads)},
      {"audio_config.encoder_ffn_dim", offsetof(model_config_t, encoder_ffn_dim)},
      {"audio_config.max_source_positions", offsetof(model_config_t, max_source_positions)},
      {"text_config.hidden_size", offsetof(model_config_t, hidden_size)},
      {"text_config.num_hidden_layers", offsetof(model_config_t, num_hidden_layers)},
      {"text_config.num_attention_heads", offsetof(model_config_t, num_attention_heads)},
      {"text_config.num_key_value_heads", offsetof(model_config_t, num_key_value_heads)},
      {"text_config.intermediate_size", offsetof(model_config_t, intermediate_size)},
      {"text_config.vocab_size", offsetof(model_config_t, vocab_size)},
      {"text_config.max_position_embeddings", offsetof(model_config_t, max_position_embeddings)},
  };
  int rc;
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    int v;
    memcpy(&v, (const char *)cfg + sizes[i].off, sizeof v);
    if ((rc = check_positive(v, sizes[i].field, name, err))) return rc;
  }
  if (cfg->d_model % cfg->encoder_attention_heads != 0)
    return es_fail(err, ES_EINVAL, "%s: audio_config.d_model %d is not divisible by encoder_attention_heads %d", name,
                   cfg->d_model, cfg->encoder_attention_heads);
  if (cfg->hidden_size % cfg->num_attention_heads != 0)
    return es_fail(err, ES_EINVAL, "%s: text_config.hidden_size %d is not divisible by num_attention_heads %d", name,
                   cfg->hidden_size, cfg->num_attention_heads);
  if (cfg->num_attention_heads % cfg->num_key_value_heads != 0)
    return es_fail(err, ES_EINVAL, "%s: text_config.num_attention_heads %d is not a multiple of num_key_value_heads %d",
                   name, cfg->num_attention_heads, cfg->num_key_value_heads);
  cfg->head_dim = cfg->hidden_size / cfg->num_attention_heads;
  if (cfg->head_dim % 2 != 0)
    return es_fail(err, ES_EINVAL, "%s: decoder head dim %d (hidden_size/num_attention_heads) must be even for RoPE",
                   name, cfg->head_dim);
  /* The avg-pool after the encoder halves the 1500 positions; conv2 (stride 2) makes them from 3000 frames. */
  if (cfg->max_source_positions % 2 != 0)
    return es_fail(err, ES_EINVAL, "%s: audio_config.max_source_positions %d must be even (avg-pool by 2)", name,
                   cfg->max_source_positions);
  if (strcmp(cfg->activation, "gelu") != 0)
    return es_fail(err, ES_EUNSUPPORTED, "%s: audio_config.activation_function \"%s\" is not supported (only \"gelu\")",
                   name, cfg->activation);
  if (strcmp(cfg->hidden_act, "silu") != 0)
    return es_fail(err, ES_EUNSUPPORTED, "%s: text_config.hidden_act \"%s\" is not supported (only \"silu\")", name,
                   cfg->hidden_act);
  if (!(cfg->rms_norm_eps > 0.0 && cfg->rms_norm_eps < 1.0))
    return es_fail(err, ES_EINVAL, "%s: text_config.rms_norm_eps %g must be in (0, 1)", name, cfg->rms_norm_eps);
  if (!(cfg->rope_theta > 0.0))
    return es_fail(err, ES_EINVAL, "%s: rope_theta %g must be positive", name, cfg->rope_theta);
  int V = cfg->vocab_size;
  if ((rc = check_id(cfg->audio_token_index, "audio_token_index", V, 0, name, err))) return rc;
  if ((rc = check_id(cfg->bos_token_id, "bos_token_id", V, 1, name, err))) return rc;
  if ((rc = check_id(cfg->pad_token_id, "pad_token_id", V, 1, name, err))) return rc;
  if (cfg->n_eos == 0)
    return es_fail(err, ES_EINVAL, "%s: no eos_token_id (in generation_config.json or text_config)", name);
  for (int i = 0; i < cfg->n_eos; i++) {
    if ((rc = check_id(cfg->eos_ids[i], "eos_token_id", V, 0, name, err))) return rc;
    if (cfg->eos_ids[i] == cfg->audio_token_index)
      return es_fail(err, ES_EINVAL, "%s: eos_token_id %d equals audio_token_index", name, cfg->eos_ids[i]);
  }
  if (!(cfg->temperature >= 0.0))
    return es_fail(err, ES_EINVAL, "%s: temperature %g must not be negative", name, cfg->temperature);
  if (!(cfg->top_p > 0.0 && cfg->top_p <= 1.0))
    return es_fail(err, ES_EINVAL, "%s: top_p %g must be in (0, 1]", name, cfg->top_p);
  if (cfg->top_k < 0) return es_fail(err, ES_EINVAL, "%s: top_k %d must not be negative", name, cfg->top_k);
  if (!(cfg->repetition_penalty > 0.0))
    return es_fail(err, ES_EINVAL, "%s: repetition_penalty %g must be positive", name, cfg->repetition_penalty);
  if (cfg->max_new_tokens < -1 || cfg->max_new_tokens == 0)
    return es_fail(err, ES_EINVAL, "%s: max_new_tokens %d must be positive", name, cfg->max_new_tokens);
  return ES_OK;
}

static int dir_of(const char *path, char *out, size_t cap) {
  const char *slash = strrchr(path, '/');
  int n = slash ? snprintf(out, cap, "%.*s", (int)(slash - path), path) : snprintf(out, cap, ".");
  if (slash == path) n = snprintf(out, cap, "/");
  return n >= 0 && (size_t)n < cap ? ES_OK : ES_ETOOBIG;
}

int cfg_load(const char *config_path, const char *generation_path, model_config_t *cfg, es_error_t *err) {
  char *text = NULL;
  size_t len = 0;
  char gen_path[4096];
  cfg_defaults(cfg);
  int rc = es_read_file(config_path, CFG_MAX_FILE_BYTES, &text, &len, err);
  if (rc) return rc;
  rc = cfg_parse_config(text, len, config_path, cfg, err);
  free(text);
  text = NULL;
  if (rc) return rc;

  if (generation_path) {
    snprintf(gen_path, sizeof gen_path, "%s", generation_path);
  } else {
    char dir[4096];
    if (dir_of(config_path, dir, sizeof dir) ||
        es_path_join(gen_path, sizeof gen_path, dir, "generation_config.json", err))
      return es_fail(err, ES_ETOOBIG, "%s: path too long", config_path);
  }
  if (generation_path || es_path_exists(gen_path)) {
    rc = es_read_file(gen_path, CFG_MAX_FILE_BYTES, &text, &len, err);
    if (rc) return rc;
    rc = cfg_parse_generation(text, len, gen_path, cfg, err);
    free(text);
    if (rc) return rc;
  }
  return cfg_validate(cfg, config_path, err);
}

int cfg_load_dir(const char *dir, model_config_t *cfg, es_error_t *err) {
  char path[4096];
  int rc = es_path_join(path, sizeof path, dir, "config.json", err);
  if (rc) return rc;
  return cfg_load(path, NULL, cfg, err);
}

long long cfg_param_count(const model_config_t *c) {
  long long d = c->d_model, f = c->encoder_ffn_dim, m = c->num_mel_bins, P = c->max_source_positions;
  long long enc_layer = (d * d + d) /* q */ + d * d /* k, no bias */ + 2 * (d * d + d) /* v, out */ + 2 * d /* ln1 */ +
                        (f * d + f) + (d * f + d) + 2 * d /* ln2 */;
  long long audio = (d * m * 3 + d) + (d * d * 3 + d) + P * d + c->encoder_layers * enc_layer + 2 * d;
  long long H = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
  long long kv = (long long)c->num_key_value_heads * (H / (c->num_attention_heads > 0 ? c->num_attention_heads : 1));
  long long projector = H * d + H;
  long long dec_layer = H /* input ln */ + (H * H + H) + 2 * (kv * H + kv) + H * H /* o, no bias */ + H + 3 * I * H;
  long long lm = V * H + c->num_hidden_layers * dec_layer + H + (c->tie_word_embeddings ? 0 : V * H);
  return audio + projector + lm;
}
