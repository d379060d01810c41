/* runtime: open a model for serving, in one call. See runtime.h. */
#include "runtime.h"

#include <stdio.h>
#include <string.h>

#include "es_file.h"
#include "es_gpu.h"
#include "model_path.h"

int rt_parse_device(const char *s, rt_device_t *out, es_error_t *err) {
  if (!strcmp(s, "auto")) *out = RT_DEVICE_AUTO;
  else if (!strcmp(s, "cpu")) *out = RT_DEVICE_CPU;
  else if (!strcmp(s, "cuda") || !strcmp(s, "gpu")) *out = RT_DEVICE_CUDA;
  else return es_fail(err, ES_EINVAL, "--device '%s': expected cpu, cuda or auto", s);
  return ES_OK;
}

int rt_parse_dtype(const char *s, es_dtype_t *out, es_error_t *err) {
  if (!strcmp(s, "bfloat16") || !strcmp(s, "bf16")) *out = ES_DT_BF16;
  else if (!strcmp(s, "float32") || !strcmp(s, "fp32")) *out = ES_DT_F32;
  else return es_fail(err, ES_EINVAL, "--dtype '%s': expected bfloat16 or float32", s);
  return ES_OK;
}

int rt_parse_quantization(const char *s, int *out, es_error_t *err) {
  if (!strcmp(s, "none")) *out = RT_QUANT_NONE;
  else if (!strcmp(s, "fp8")) *out = RT_QUANT_FP8;
  else return es_fail(err, ES_EINVAL, "--quantization '%s': expected fp8 or none", s);
  return ES_OK;
}

int rt_parse_kv_cache_dtype(const char *s, int *kv_fp8, es_error_t *err) {
  if (!strcmp(s, "auto"))
    *kv_fp8 = 0;
  else if (!strcmp(s, "fp8") || !strcmp(s, "fp8_e4m3"))
    *kv_fp8 = 1;
  else if (!strcmp(s, "fp8_e5m2"))
    return es_fail(err, ES_EINVAL, "--kv-cache-dtype fp8_e5m2: not supported (fp8 is e4m3 with per-token scales)");
  else
    return es_fail(err, ES_EINVAL, "--kv-cache-dtype '%s': expected auto, fp8 or fp8_e4m3", s);
  return ES_OK;
}

const char *rt_quantization_name(int q) {
  return q == RT_QUANT_FP8 ? "fp8" : q == RT_QUANT_NONE ? "none" : "?";
}

void rt_default_sampling(const rt_t *rt, smp_params_t *p) {
  const model_config_t *c = &rt->cfg;
  smp_params_default(p);
  if (c->has_generation_config) {
    p->temperature = c->do_sample ? c->temperature : 0.0;
    p->top_k = c->do_sample ? c->top_k : 0;
    p->top_p = c->do_sample ? c->top_p : 1.0;
    p->repetition_penalty = c->repetition_penalty;
  }
  p->max_tokens = c->max_new_tokens > 0 ? c->max_new_tokens : 256;
}

/* Chooses and creates the backend. */
static int open_backend(const rt_opts_t *o, rt_t *rt, const es_backend_opts_t *bo, es_error_t *err) {
  rt_device_t dev = o->device;
  if (dev == RT_DEVICE_AUTO) {
    int n = 0;
    char why[ES_ERROR_MSG_MAX] = "";
    es_error_t gerr;
    if (es_gpu_compiled() && es_gpu_count(&n, why, sizeof why, &gerr) == ES_OK && n > 0) {
      es_backend_opts_t cuda_opts = *bo;
      cuda_opts.compute_dtype = o->dtype;
      if (es_backend_create_cuda(&cuda_opts, &rt->be, &gerr) == ES_OK) {
        snprintf(rt->device_desc, sizeof rt->device_desc, "%s (auto)", es_backend_name(rt->be));
        return ES_OK;
      }
      snprintf(why, sizeof why, "%s", gerr.msg);
    } else if (!es_gpu_compiled()) {
      snprintf(why, sizeof why, "built without CUDA");
    }
    es_backend_opts_t cpu_opts = *bo;
    cpu_opts.compute_dtype = ES_DT_F32;
    int rc = es_backend_create_cpu(&cpu_opts, &rt->be, err);
    if (rc) return rc;
    snprintf(rt->device_desc, sizeof rt->device_desc, "cpu (auto: no GPU: %.200s)", why[0] ? why : "none found");
    return ES_OK;
  }
  es_backend_opts_t x = *bo;
  if (dev == RT_DEVICE_CUDA) {
    x.compute_dtype = o->dtype;
    int rc = es_backend_create_cuda(&x, &rt->be, err);
    if (rc) return es_error_prefix(err, "--device cuda: ");
  } else {
    x.compute_dtype = ES_DT_F32;
    int rc = es_backend_create_cpu(&x, &rt->be, err);
    if (rc) return rc;
  }
  snprintf(rt->device_desc, sizeof rt->device_desc, "%s", es_backend_name(rt->be));
  return ES_OK;
}

int rt_open(const rt_opts_t *o, rt_t *rt, es_error_t *err) {
  memset(rt, 0, sizeof *rt);
  int rc;
  if (o->quantization != RT_QUANT_NONE && o->quantization != RT_QUANT_FP8)
    return es_fail(err, ES_EINVAL, "quantization %d unknown (fp8 or none)", o->quantization);
  if (o->model) {
    model_path_t mp;
    if ((rc = mpath_resolve(o->model, &mp, err))) return rc;
    snprintf(rt->dir, sizeof rt->dir, "%s", mp.dir);
  } else if (!o->dummy_weights || !o->config) {
    return es_fail(err, ES_EINVAL, "--model is required (or --dummy-weights with --config FILE)");
  }
  if (o->config)
    rc = cfg_load(o->config, NULL, &rt->cfg, err);
  else
    rc = cfg_load_dir(rt->dir, &rt->cfg, err);
  if (rc) return rc;
  if (!o->dummy_weights && (rc = ckpt_open(rt->dir, &rt->cfg, 0, &rt->ck, err))) goto fail;
  if (rt->dir[0]) {
    char probe[4200];
    int has_tok = 0;
    if (es_path_join(probe, sizeof probe, rt->dir, "tokenizer.json", err) == 0 && es_path_exists(probe)) has_tok = 1;
    if (es_path_join(probe, sizeof probe, rt->dir, "vocab.json", err) == 0 && es_path_exists(probe)) has_tok = 1;
    if (has_tok) {
      if ((rc = tok_load(rt->dir, &rt->tok, err)) ||
          (rc = prompt_special_init(&rt->special, rt->tok, rt->cfg.audio_token_index, err)))
        goto fail;
    }
  }

  /* sizes: context, batch, KV pool, activations */
  const model_config_t *c = &rt->cfg;
  int is_cpu_guess = o->device == RT_DEVICE_CPU || (o->device == RT_DEVICE_AUTO && !es_gpu_compiled());
  double kv_per_token = 2.0 * c->num_hidden_layers * c->num_key_value_heads *
                        (o->kv_fp8 ? c->head_dim + 4.0 /* codes + a scale per row */
                                   : c->head_dim * (is_cpu_guess ? 4.0 : (double)es_dtype_size(o->dtype)));
  int ctx = o->max_model_len;
  if (ctx <= 0) {
    ctx = c->max_position_embeddings < 8192 ? c->max_position_embeddings : 8192;
    if (is_cpu_guess) {
      double fit = (4.0 * 1024 * 1024 * 1024) / kv_per_token;
      if (fit < ctx) ctx = (int)fit / ES_KV_BLOCK * ES_KV_BLOCK;
      if (ctx < 1024) ctx = 1024;
    }
  }
  if (ctx < 64) {
    rc = es_fail(err, ES_EINVAL, "--max-model-len %d: at least 64 tokens", ctx);
    goto fail;
  }
  rt->max_model_len = ctx;
  int seqs = o->max_num_seqs > 0 ? o->max_num_seqs : (is_cpu_guess ? 16 : 64);
  if (seqs > 256) seqs = 256;
  int chunk = o->prefill_chunk > 0 ? o->prefill_chunk : 512;
  int max_blocks = (ctx + ES_KV_BLOCK - 1) / ES_KV_BLOCK;
  int audio_batch = o->max_audio_batch > 0 ? o->max_audio_batch : (is_cpu_guess ? 1 : 8);
  double kv_gb = o->kv_cache_gb > 0 ? o->kv_cache_gb : 4.0;
  if (!is_cpu_guess && o->kv_cache_gb <= 0) {
    int n = 0;
    es_gpu_info_t gi;
    char why[128];
    es_error_t gerr;
    if (es_gpu_count(&n, why, sizeof why, &gerr) == 0 && n > 0 && es_gpu_info(0, &gi, &gerr) == 0) {
      /* what is free now, less the weights (stored size in the compute dtype) and ~3 GiB of activations */
      double weights = (double)cfg_param_count(c) * (double)es_dtype_size(o->dtype);
      if (o->quantization == RT_QUANT_FP8) /* the decoder linears take 1 byte each (+ a scale per row) */
        weights -= qa_decode_weight_bytes(c, es_dtype_size(o->dtype), QA_QUANT_NONE) -
                   qa_decode_weight_bytes(c, es_dtype_size(o->dtype), QA_QUANT_FP8);
      double avail = (double)gi.mem_free_bytes - weights - 3.0 * 1024 * 1024 * 1024;
      if (avail > 0) kv_gb = 0.9 * avail / (1024.0 * 1024 * 1024);
    }
  }
  long long kv_blocks = (long long)(kv_gb * 1024 * 1024 * 1024 / (kv_per_token * ES_KV_BLOCK));
  if (kv_blocks > 1 << 22) kv_blocks = 1 << 22;
  /* Sized from free GPU memory, a small model would take all of it (tiny-b: 70 GB of blocks on an 80 GB card,
   * and a second process on the card gets nothing): without --kv-cache-gb, at most every sequence at full
   * context twice over (the second half keeps finished requests' prefixes for reuse). */
  const long long useful = 2LL * seqs * max_blocks + 1;
  if (o->kv_cache_gb <= 0 && kv_blocks > useful) kv_blocks = useful;
  if (kv_blocks < max_blocks + 1) {
    if (o->kv_cache_gb > 0) {
      rc = es_fail(err, ES_ETOOBIG, "--kv-cache-gb %.3g holds %lld blocks; one full context of %d tokens needs %d",
                   o->kv_cache_gb, kv_blocks, ctx, max_blocks);
      goto fail;
    }
    kv_blocks = max_blocks + 1;
  }
  es_backend_opts_t bo = {.compute_dtype = o->dtype,
                          .n_threads = o->threads,
                          .max_tokens = (size_t)(chunk + seqs),
                          .max_seqs = (size_t)seqs,
                          .max_blocks = (size_t)max_blocks,
                          .deterministic = o->deterministic,
                          .kv_fp8 = o->kv_fp8};
  if ((rc = open_backend(o, rt, &bo, err))) goto fail;
  qa_model_opts_t mo = {.max_tokens = chunk + seqs, .max_seqs = seqs, .max_logit_rows = seqs,
                        .max_audio_batch = audio_batch,
                        .audio_pool_rows = 2 * (ctx > QA_MAX_WINDOW_TOKENS ? ctx : QA_MAX_WINDOW_TOKENS),
                        .kv_blocks = (int)kv_blocks, .max_blocks_per_seq = max_blocks, .dummy_seed = 1234,
                        .quantization = o->quantization == RT_QUANT_FP8 ? QA_QUANT_FP8 : QA_QUANT_NONE};
  if ((rc = qa_model_open(rt->be, &rt->cfg, rt->ck, &mo, &rt->model, err))) goto fail;
  eng_opts_t eo = {.model = rt->model, .tok = rt->tok, .max_queue = o->max_queue, .prefill_chunk = chunk,
                   .mel_threads = 1, .max_num_seqs = seqs};
  if ((rc = eng_start(&eo, &rt->engine, err))) goto fail;
  rt->kv_blocks = (int)kv_blocks;
  rt->max_num_seqs = seqs;
  rt->quantization = o->quantization;
  rt->kv_fp8 = o->kv_fp8;
  if (o->verbose)
    fprintf(stderr,
            "earshot: %s on %s, context %d tokens, KV cache %d blocks (%.2f GiB %s, %d full contexts), "
            "max %d sequences per step, prefill chunk %d, quantization %s%s%s\n",
            rt->dir[0] ? rt->dir : "(config only)", rt->device_desc, ctx, rt->kv_blocks - 1,
            (double)(rt->kv_blocks - 1) * kv_per_token * ES_KV_BLOCK / (1024.0 * 1024 * 1024),
            o->kv_fp8 ? "fp8 e4m3, per-token scales" : es_dtype_name(es_backend_act_dtype(rt->be)),
            (rt->kv_blocks - 1) / max_blocks, seqs, chunk,
            o->quantization == RT_QUANT_FP8 ? "fp8 (decoder linears, e4m3, per-channel scales)" : "none",
            o->dummy_weights ? ", dummy weights" : "",
            o->deterministic ? ", deterministic (batch-invariant kernels)" : "");
  return ES_OK;
fail:
  rt_close(rt);
  return rc;
}

void rt_close(rt_t *rt) {
  if (!rt) return;
  eng_stop(rt->engine);
  qa_model_close(rt->model);
  es_backend_free(rt->be);
  tok_free(rt->tok);
  ckpt_close(rt->ck);
  memset(rt, 0, sizeof *rt);
}
