/* test_config: config.json / generation_config.json parsing, class defaults and validation.
 * The 7B values and parameter count come from SPEC §1.1-1.4 (the published config and the 16,794,189,824-byte
 * bf16 checkpoint), not from this code's output.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"
#include "es_file.h"
#include "test_util.h"

/* SPEC §1.1: the official Qwen2-Audio-7B(-Instruct) config.json */
static const char *CONFIG_7B =
    "{\"architectures\": [\"Qwen2AudioForConditionalGeneration\"],"
    " \"audio_config\": {\"model_type\": \"qwen2_audio_encoder\", \"num_mel_bins\": 128, \"encoder_layers\": 32,"
    "   \"encoder_attention_heads\": 20, \"encoder_ffn_dim\": 5120, \"d_model\": 1280,"
    "   \"activation_function\": \"gelu\", \"scale_embedding\": false, \"max_source_positions\": 1500},"
    " \"audio_token_index\": 151646, \"ignore_index\": -100, \"model_type\": \"qwen2_audio\","
    " \"text_config\": {\"bos_token_id\": 151643, \"eos_token_id\": 151645, \"intermediate_size\": 11008,"
    "   \"max_position_embeddings\": 8192, \"model_type\": \"qwen2\", \"rope_theta\": 10000,"
    "   \"rms_norm_eps\": 1e-05, \"sliding_window\": 32768, \"torch_dtype\": \"bfloat16\", \"use_mrope\": false,"
    "   \"vocab_size\": 156032},"
    " \"transformers_version\": \"4.38.1\", \"vocab_size\": 156032}";

static int parse(const char *json, const char *gen, model_config_t *c, es_error_t *err) {
  cfg_defaults(c);
  int rc = cfg_parse_config(json, strlen(json), "config.json", c, err);
  if (rc) return rc;
  if (gen && (rc = cfg_parse_generation(gen, strlen(gen), "generation_config.json", c, err))) return rc;
  return cfg_validate(c, "config.json", err);
}

static void test_7b(void) {
  model_config_t c;
  es_error_t err;
  es_error_clear(&err);
  T_REQUIRE(parse(CONFIG_7B, NULL, &c, &err) == 0, "%s", err.msg);
  /* SPEC §1.2: the effective values after class defaults */
  T_CHECK(c.num_mel_bins == 128 && c.d_model == 1280 && c.encoder_layers == 32, "audio dims");
  T_CHECK(c.encoder_attention_heads == 20 && c.encoder_ffn_dim == 5120 && c.max_source_positions == 1500, "audio");
  T_CHECK(strcmp(c.activation, "gelu") == 0 && c.scale_embedding == 0, "activation");
  T_CHECK(c.hidden_size == 4096 && c.num_hidden_layers == 32 && c.num_attention_heads == 32, "text defaults");
  T_CHECK(c.num_key_value_heads == 32, "kv heads default to attention heads: %d", c.num_key_value_heads);
  T_CHECK(c.head_dim == 128, "head dim %d", c.head_dim);
  T_CHECK(c.intermediate_size == 11008 && c.vocab_size == 156032 && c.max_position_embeddings == 8192, "text");
  T_CHECK(c.rms_norm_eps == 1e-5 && c.rope_theta == 10000.0, "eps %g theta %g", c.rms_norm_eps, c.rope_theta);
  T_CHECK(c.tie_word_embeddings == 0 && strcmp(c.hidden_act, "silu") == 0, "untied silu");
  T_CHECK(c.audio_token_index == 151646, "audio token %d", c.audio_token_index);
  T_CHECK(c.bos_token_id == 151643 && c.n_eos == 1 && c.eos_ids[0] == 151645, "bos/eos from text_config");
  T_CHECK(c.pad_token_id == -1, "no pad in config.json");
  T_CHECK(c.has_generation_config == 0 && c.do_sample == 0 && c.temperature == 1.0 && c.top_k == 50, "gen defaults");
  /* SPEC §1.3-1.4: 8,397,094,912 parameters */
  T_CHECK(cfg_param_count(&c) == 8397094912LL, "param count %lld", cfg_param_count(&c));

  const char *gen = "{\"bos_token_id\": 151643, \"eos_token_id\": [151643, 151645], \"pad_token_id\": 151643,"
                    " \"do_sample\": true, \"temperature\": 0.7, \"top_k\": 20, \"top_p\": 0.5,"
                    " \"repetition_penalty\": 1.1, \"max_new_tokens\": 256, \"transformers_version\": \"4.45\"}";
  T_REQUIRE(parse(CONFIG_7B, gen, &c, &err) == 0, "%s", err.msg);
  T_CHECK(c.n_eos == 2 && c.eos_ids[0] == 151643 && c.eos_ids[1] == 151645, "eos list from generation_config");
  T_CHECK(c.pad_token_id == 151643 && c.do_sample == 1 && c.temperature == 0.7 && c.top_k == 20, "sampling");
  T_CHECK(c.top_p == 0.5 && c.repetition_penalty == 1.1 && c.max_new_tokens == 256, "sampling 2");
  T_CHECK(c.has_generation_config == 1, "flag");
}

/* transformers v5 writes rope_parameters instead of rope_theta, and leaves keys at their class defaults. */
static void test_v5_and_defaults(void) {
  model_config_t c;
  es_error_t err;
  es_error_clear(&err);
  const char *v5 =
      "{\"model_type\": \"qwen2_audio\", \"audio_token_index\": 5,"
      " \"audio_config\": {\"d_model\": 16, \"encoder_attention_heads\": 2, \"encoder_ffn_dim\": 32,"
      "   \"encoder_layers\": 2},"
      " \"text_config\": {\"hidden_size\": 8, \"num_attention_heads\": 2, \"num_key_value_heads\": 1,"
      "   \"intermediate_size\": 32, \"num_hidden_layers\": 2, \"vocab_size\": 1024, \"pad_token_id\": null,"
      "   \"eos_token_id\": [1, 2], \"rope_parameters\": {\"rope_theta\": 500000.0, \"rope_type\": \"default\"},"
      "   \"layer_types\": [\"full_attention\", \"full_attention\"], \"dtype\": \"bfloat16\"}}";
  T_REQUIRE(parse(v5, NULL, &c, &err) == 0, "%s", err.msg);
  T_CHECK(c.rope_theta == 500000.0, "rope_parameters.rope_theta read: %g", c.rope_theta);
  T_CHECK(c.num_key_value_heads == 1 && c.head_dim == 4, "gqa kv %d hd %d", c.num_key_value_heads, c.head_dim);
  T_CHECK(c.rms_norm_eps == 1e-6, "Qwen2Config default eps: %g", c.rms_norm_eps);
  T_CHECK(c.max_position_embeddings == 32768, "Qwen2Config default max positions: %d", c.max_position_embeddings);
  T_CHECK(c.num_mel_bins == 128 && c.max_source_positions == 1500, "encoder defaults");
  T_CHECK(c.n_eos == 2 && c.eos_ids[1] == 2 && c.pad_token_id == -1, "eos list in text_config, null pad");

  /* an empty object is the default Qwen2AudioConfig: the 7B shapes with Qwen2Config's own defaults */
  T_REQUIRE(parse("{\"text_config\": {\"eos_token_id\": 151645}}", NULL, &c, &err) == 0, "%s", err.msg);
  T_CHECK(c.intermediate_size == 22016 && c.vocab_size == 151936 && c.audio_token_index == 151646, "class defaults");
}

static void expect_error(const char *json, const char *gen, int code, const char *needle) {
  model_config_t c;
  es_error_t err;
  es_error_clear(&err);
  int rc = parse(json, gen, &c, &err);
  T_CHECK(rc == code, "expected %s for %s, got %d (%s)", es_error_code_name(code), needle, rc, err.msg);
  T_CHECK(strstr(err.msg, needle) != NULL, "message '%s' should mention '%s'", err.msg, needle);
}

#define TXTIN(body)                                                                                                    \
  "\"text_config\": {\"eos_token_id\": 2, \"vocab_size\": 64, \"hidden_size\": 8,"                                     \
  " \"num_attention_heads\": 2" body "}, \"audio_token_index\": 5"
#define TXT(body) "{" TXTIN(body) "}"

static void test_errors(void) {
  expect_error("{\"text_config\": ", NULL, ES_EINVAL, "not valid JSON");
  expect_error("[1, 2]", NULL, ES_EINVAL, "JSON object");
  expect_error("{\"model_type\": \"llama\"}", NULL, ES_EUNSUPPORTED, "model_type");
  expect_error(TXT(", \"num_hidden_layers\": \"two\""), NULL, ES_EINVAL, "text_config.num_hidden_layers");
  expect_error(TXT(", \"intermediate_size\": 1.5"), NULL, ES_EINVAL, "text_config.intermediate_size");
  expect_error(TXT(", \"num_hidden_layers\": 0"), NULL, ES_EINVAL, "num_hidden_layers must be positive");
  expect_error(TXT(", \"num_key_value_heads\": 3"), NULL, ES_EINVAL, "num_key_value_heads");
  expect_error("{\"text_config\": {\"eos_token_id\": 2, \"vocab_size\": 64, \"hidden_size\": 9,"
               " \"num_attention_heads\": 2}, \"audio_token_index\": 5}",
               NULL, ES_EINVAL, "not divisible");
  expect_error("{\"text_config\": {\"eos_token_id\": 2, \"vocab_size\": 64, \"hidden_size\": 6,"
               " \"num_attention_heads\": 2}, \"audio_token_index\": 5}",
               NULL, ES_EINVAL, "even for RoPE");
  expect_error("{\"audio_config\": {\"d_model\": 30}," TXTIN("") "}", NULL, ES_EINVAL, "encoder_attention_heads");
  expect_error("{\"audio_config\": {\"activation_function\": \"relu\"}," TXTIN("") "}", NULL, ES_EUNSUPPORTED, "relu");
  expect_error(TXT(", \"hidden_act\": \"gelu\""), NULL, ES_EUNSUPPORTED, "hidden_act");
  expect_error(TXT(", \"use_sliding_window\": true"), NULL, ES_EUNSUPPORTED, "use_sliding_window");
  expect_error(TXT(", \"rope_parameters\": {\"rope_type\": \"yarn\", \"factor\": 4}"), NULL, ES_EUNSUPPORTED, "yarn");
  expect_error(TXT(", \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2}"), NULL, ES_EUNSUPPORTED, "rope_scaling");
  expect_error(TXT(", \"rms_norm_eps\": 0"), NULL, ES_EINVAL, "rms_norm_eps");
  expect_error("{\"text_config\": {\"eos_token_id\": 2, \"vocab_size\": 64, \"hidden_size\": 8,"
               " \"num_attention_heads\": 2}, \"audio_token_index\": 64}",
               NULL, ES_EINVAL, "audio_token_index 64");
  expect_error(TXT(", \"bos_token_id\": -5"), NULL, ES_EINVAL, "bos_token_id");
  expect_error(TXT(""), "{\"eos_token_id\": [2, 99]}", ES_EINVAL, "eos_token_id 99");
  expect_error(TXT(""), "{\"eos_token_id\": [2, \"x\"]}", ES_EINVAL, "eos_token_id[1]");
  expect_error(TXT(""), "{\"eos_token_id\": [5]}", ES_EINVAL, "equals audio_token_index");
  expect_error(TXT(""), "{\"top_p\": 0}", ES_EINVAL, "top_p");
  expect_error(TXT(""), "{\"temperature\": -1}", ES_EINVAL, "temperature");
  expect_error(TXT(""), "{\"do_sample\": 1}", ES_EINVAL, "do_sample must be true or false");
  expect_error("{\"text_config\": {\"vocab_size\": 64, \"hidden_size\": 8, \"num_attention_heads\": 2},"
               " \"audio_token_index\": 5}",
               NULL, ES_EINVAL, "no eos_token_id");
  expect_error("{\"vocab_size\": 100," TXTIN("") "}", NULL, ES_EINVAL, "differs from text_config.vocab_size");
  expect_error(TXT(", \"head_dim\": 8"), NULL, ES_EUNSUPPORTED, "head_dim");
}

/* cfg_load on files: the generation_config.json beside config.json is found; a missing file is named. */
static void test_files(const char *tmp) {
  char dir[1024], path[1100], gpath[1100];
  snprintf(dir, sizeof dir, "%s/config-test", tmp);
  T_REQUIRE(mkdir(dir, 0755) == 0 || errno == EEXIST, "mkdir %s", dir);
  snprintf(path, sizeof path, "%s/config.json", dir);
  snprintf(gpath, sizeof gpath, "%s/generation_config.json", dir);
  remove(gpath);
  es_error_t err;
  es_error_clear(&err);
  T_REQUIRE(es_write_file(path, CONFIG_7B, strlen(CONFIG_7B), &err) == 0, "%s", err.msg);
  model_config_t c;
  T_CHECK(cfg_load(path, NULL, &c, &err) == 0 && c.has_generation_config == 0, "%s", err.msg);
  const char *gen = "{\"eos_token_id\": [151643, 151645], \"pad_token_id\": 151643}";
  T_REQUIRE(es_write_file(gpath, gen, strlen(gen), &err) == 0, "%s", err.msg);
  T_CHECK(cfg_load_dir(dir, &c, &err) == 0 && c.has_generation_config == 1 && c.n_eos == 2, "%s", err.msg);
  snprintf(path, sizeof path, "%s/nope.json", dir);
  T_CHECK(cfg_load(path, NULL, &c, &err) == ES_ENOTFOUND && strstr(err.msg, "nope.json"), "%s", err.msg);
}

int main(int argc, char **argv) {
  test_7b();
  test_v5_and_defaults();
  test_errors();
  if (argc > 1) test_files(argv[1]);
  return t_finish();
}
