/* cmd_inspect: `earshot inspect --model DIR|org/name` — what a model directory holds and everything wrong with it.
 *
 * Prints the resolved directory and files, a config summary, the tensor count, dtypes, parameters and bytes,
 * then every problem the config and checkpoint checks found (not only the first). Touches only the
 * safetensors headers, so it is instant on the 16.8 GB checkpoint.
 * Exit codes: 0 no problems, 1 problems found, 2 usage error.
 *
 * Thread safety: single-threaded command.
 */
#include <stdio.h>
#include <string.h>

#include "checkpoint.h"
#include "config.h"
#include "es_file.h"
#include "model_path.h"

int cmd_inspect(int argc, char **argv);

static void usage(FILE *out) {
  fprintf(out, "usage: earshot inspect --model DIR|ORG/NAME [--config FILE]\n"
               "\n"
               "  --model    a model directory, or a Hugging Face id found in the local hub cache\n"
               "             ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)\n"
               "  --config   read this config.json instead of the model directory's\n"
               "\n"
               "Exit status: 0 when nothing is wrong, 1 when problems were found, 2 on a usage error.\n");
}

static void print_config(const model_config_t *c) {
  printf("config:\n");
  printf("  audio encoder: %d layers, d_model %d, %d heads (head dim %d), ffn %d, %d mel bins, %d positions, %s%s\n",
         c->encoder_layers, c->d_model, c->encoder_attention_heads, c->d_model / c->encoder_attention_heads,
         c->encoder_ffn_dim, c->num_mel_bins, c->max_source_positions, c->activation,
         c->scale_embedding ? ", scaled embedding" : "");
  printf("  text decoder:  %d layers, hidden %d, %d heads / %d kv heads (head dim %d), ffn %d, vocab %d, %s\n",
         c->num_hidden_layers, c->hidden_size, c->num_attention_heads, c->num_key_value_heads, c->head_dim,
         c->intermediate_size, c->vocab_size, c->hidden_act);
  printf("                 rms_norm_eps %g, rope_theta %g, max positions %d, %s lm_head\n", c->rms_norm_eps,
         c->rope_theta, c->max_position_embeddings, c->tie_word_embeddings ? "tied" : "untied");
  printf("  ids:           audio %d, bos %d, pad %d, eos", c->audio_token_index, c->bos_token_id, c->pad_token_id);
  for (int i = 0; i < c->n_eos; i++) printf("%s%d", i ? ", " : " ", c->eos_ids[i]);
  printf("\n  generation:    %sdo_sample %s, temperature %g, top_k %d, top_p %g, repetition_penalty %g",
         c->has_generation_config ? "" : "(no generation_config.json: defaults) ", c->do_sample ? "true" : "false",
         c->temperature, c->top_k, c->top_p, c->repetition_penalty);
  if (c->max_new_tokens > 0) printf(", max_new_tokens %d", c->max_new_tokens);
  if (c->max_length > 0) printf(", max_length %d", c->max_length);
  printf("\n  parameters the config implies: %lld\n", cfg_param_count(c));
}

int cmd_inspect(int argc, char **argv) {
  const char *model = NULL, *config = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(argv[i], "--model") == 0 && i + 1 < argc) {
      model = argv[++i];
    } else if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
      config = argv[++i];
    } else {
      fprintf(stderr, "earshot inspect: unknown or incomplete argument '%s'\n\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }
  if (!model) {
    fprintf(stderr, "earshot inspect: --model is required\n\n");
    usage(stderr);
    return 2;
  }

  es_error_t err;
  es_error_clear(&err);
  model_path_t mp;
  if (mpath_resolve(model, &mp, &err) != ES_OK) {
    fprintf(stderr, "earshot inspect: %s\n", err.msg);
    return 1;
  }
  printf("model: %s\n", mp.dir);
  if (mp.from_cache)
    printf("  from the Hugging Face cache %s, snapshot %s (%s)\n", mp.repo_dir, mp.revision,
           mp.via_ref ? "refs/main" : "newest; no usable refs/main");

  int n_problems = 0;
  char config_path[MPATH_MAX + 32], gen_path[MPATH_MAX + 32];
  if (config)
    snprintf(config_path, sizeof config_path, "%s", config);
  else
    snprintf(config_path, sizeof config_path, "%s/config.json", mp.dir);
  snprintf(gen_path, sizeof gen_path, "%s/generation_config.json", mp.dir);

  model_config_t cfg;
  int have_cfg = cfg_load(config_path, es_path_exists(gen_path) ? gen_path : NULL, &cfg, &err) == ES_OK;
  char cfg_problem[ES_ERROR_MSG_MAX] = "";
  if (!have_cfg) {
    snprintf(cfg_problem, sizeof cfg_problem, "%s", err.msg);
    n_problems++;
  }

  ckpt_t *ck = NULL;
  es_error_clear(&err);
  int ck_rc = ckpt_open(mp.dir, have_cfg ? &cfg : NULL, CKPT_KEEP_ON_PROBLEMS, &ck, &err);

  printf("files:\n");
  printf("  %s%s\n", config_path, have_cfg || es_path_exists(config_path) ? "" : " (absent)");
  printf("  %s%s\n", gen_path, es_path_exists(gen_path) ? "" : " (absent: generation defaults)");
  if (ck) {
    if (ckpt_index_path(ck)) printf("  %s\n", ckpt_index_path(ck));
    for (int i = 0; i < ckpt_file_count(ck); i++) {
      const st_file_t *f = ckpt_file(ck, i);
      if (f->map)
        printf("  %s: %zu bytes, header %llu bytes, %d tensors\n", f->path, f->map_len,
               (unsigned long long)f->header_len, f->n_tensors);
      else
        printf("  %s: not readable\n", f->path);
    }
  }
  if (have_cfg) print_config(&cfg);

  if (ck) {
    printf("tensors: %d, names %s\n", ckpt_tensor_count(ck), ckpt_layout_name(ckpt_layout(ck)));
    printf("dtypes: ");
    int first = 1;
    for (int d = ST_BF16; d <= ST_F32; d++) {
      int n = ckpt_dtype_count(ck, (st_dtype_t)d);
      if (n) printf("%s%s x %d", first ? "" : ", ", st_dtype_name((st_dtype_t)d), n);
      if (n) first = 0;
    }
    printf("%s\n", first ? "none" : "");
    printf("parameters: %llu (%.3f B), %llu bytes (%.2f GB)\n", (unsigned long long)ckpt_param_count(ck),
           (double)ckpt_param_count(ck) / 1e9, (unsigned long long)ckpt_total_bytes(ck),
           (double)ckpt_total_bytes(ck) / 1e9);
    n_problems += ckpt_problem_count(ck);
  } else if (ck_rc != ES_OK) {
    n_problems++;
  }

  if (n_problems == 0) {
    printf("problems: none\n");
  } else {
    printf("problems: %d\n", n_problems);
    if (cfg_problem[0]) printf("  %s\n", cfg_problem);
    if (ck) {
      int kept = ckpt_problem_count(ck);
      for (int i = 0; i < kept; i++) {
        const char *p = ckpt_problem(ck, i);
        if (strcmp(p, "(not kept)") == 0) {
          printf("  ... and %d more\n", kept - i);
          break;
        }
        printf("  %s\n", p);
      }
    } else if (ck_rc != ES_OK) {
      printf("  %s\n", err.msg);
    }
    if (!have_cfg) printf("  (tensor names and shapes were not checked: no valid config)\n");
  }
  ckpt_close(ck);
  return n_problems ? 1 : 0;
}
