/* config: Qwen2-Audio's config.json and generation_config.json, parsed into one struct and validated.
 *
 * Every hyper-parameter and special id the engine uses comes from here, never from a constant: a key that
 * is absent takes the class default transformers fills in (Qwen2AudioEncoderConfig, Qwen2Config,
 * Qwen2AudioConfig, GenerationConfig; SPEC §1.2 and §1.7), and validation rejects what the forward pass
 * cannot run (heads that do not divide the width, odd RoPE head dims, unknown activations, ids outside
 * the vocabulary). Both rope spellings are read: v4's `rope_theta` and v5's `rope_parameters` object.
 *
 * Thread safety: no shared state; a model_config_t is plain data, safe to read from any thread.
 * ref: transformers configuration_qwen2_audio.py, configuration_qwen2.py, generation/configuration_utils.py
 */
#pragma once

#include <stddef.h>

#include "es_error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CFG_MAX_EOS 8
#define CFG_NAME_MAX 32
/* config.json is 853 bytes for the 7B model; anything past this is not a config. */
#define CFG_MAX_FILE_BYTES (4u << 20)

typedef struct {
  /* audio encoder (audio_config, Qwen2AudioEncoderConfig defaults) */
  int num_mel_bins;              /* 128: conv1 input channels */
  int d_model;                   /* 1280 */
  int encoder_layers;            /* 32 */
  int encoder_attention_heads;   /* 20; encoder head dim = d_model / heads */
  int encoder_ffn_dim;           /* 5120 */
  int max_source_positions;      /* 1500: embed_positions rows = frames after conv2 */
  char activation[CFG_NAME_MAX]; /* "gelu" (exact erf) */
  int scale_embedding;           /* 0: embed_scale 1.0; 1 would be sqrt(d_model) */

  /* text decoder (text_config, Qwen2Config defaults) */
  int hidden_size;               /* 4096 */
  int num_hidden_layers;         /* 32 */
  int num_attention_heads;       /* 32 */
  int num_key_value_heads;       /* default num_attention_heads (MHA) */
  int head_dim;                  /* hidden_size / num_attention_heads (128) */
  int intermediate_size;         /* 11008 */
  int vocab_size;                /* 156032: rows of embed_tokens and lm_head */
  int max_position_embeddings;   /* 8192 (not used by default RoPE math) */
  double rms_norm_eps;           /* 1e-5 in the checkpoints, 1e-6 by default */
  double rope_theta;             /* 10000 */
  int tie_word_embeddings;       /* 0: separate lm_head */
  char hidden_act[CFG_NAME_MAX]; /* "silu" */

  /* special ids; -1 when absent */
  int audio_token_index;    /* 151646 <|AUDIO|> */
  int bos_token_id;         /* generation_config, else text_config */
  int pad_token_id;         /* generation_config, else text_config */
  int eos_ids[CFG_MAX_EOS]; /* generation_config's eos_token_id (int or list), else text_config's */
  int n_eos;

  /* generation defaults (generation_config.json; GenerationConfig's when absent) */
  int has_generation_config; /* 1 when generation_config.json was read */
  int do_sample;             /* 0 */
  double temperature;        /* 1.0 */
  int top_k;                 /* 50 */
  double top_p;              /* 1.0 */
  double repetition_penalty; /* 1.0 */
  int max_new_tokens;        /* -1 when absent */
  int max_length;            /* -1 when absent (GenerationConfig's 20 is a generate() default) */
} model_config_t;

/* Fills *cfg with the transformers class defaults (the values config.json overrides). */
void cfg_defaults(model_config_t *cfg);

/* Parses config.json text (len bytes, need not be NUL-terminated) over the current contents of *cfg
 * (normally cfg_defaults). name labels error messages. Does not validate. */
int cfg_parse_config(const char *json, size_t len, const char *name, model_config_t *cfg, es_error_t *err);

/* Parses generation_config.json text over *cfg: eos ids, bos, pad and the sampling defaults. */
int cfg_parse_generation(const char *json, size_t len, const char *name, model_config_t *cfg, es_error_t *err);

/* Checks that the model described by *cfg can be run: positive sizes, heads dividing widths, even RoPE
 * head dims, supported activations, ids inside the vocabulary, sane sampling values. Also derives
 * head_dim. name labels error messages. */
int cfg_validate(model_config_t *cfg, const char *name, es_error_t *err);

/* Reads config_path and, when it exists, generation_config.json in the same directory (or the explicit
 * generation_path when not NULL), then validates. The standalone --config FILE entry point. */
int cfg_load(const char *config_path, const char *generation_path, model_config_t *cfg, es_error_t *err);

/* cfg_load on DIR/config.json and DIR/generation_config.json. */
int cfg_load_dir(const char *dir, model_config_t *cfg, es_error_t *err);

/* Parameter count of the model *cfg describes (audio tower + projector + decoder + lm_head), as stored. */
long long cfg_param_count(const model_config_t *cfg);

#ifdef __cplusplus
}
#endif
