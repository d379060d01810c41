/* runtime: everything a front end needs to serve a model, opened in one call — the resolved model
 * directory, config, checkpoint, tokenizer, backend (CPU or CUDA), the forward pass and the engine thread.
 * Shared by `earshot run`, `earshot bench` and `earshot serve` so that they size and choose things alike.
 *
 * Thread safety: open/close from one thread; the engine inside is thread-safe (engine.h).
 */
#pragma once

#include "backend.h"
#include "checkpoint.h"
#include "config.h"
#include "engine.h"
#include "es_error.h"
#include "prompt.h"
#include "qwen2audio.h"
#include "tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { RT_DEVICE_AUTO = 0, RT_DEVICE_CPU, RT_DEVICE_CUDA } rt_device_t;

/* ---- fp8 weights ---- how the decoder's linear weights are stored (qwen2audio.h, qa_quant_t) */
typedef enum { RT_QUANT_NONE = 0, RT_QUANT_FP8 = 1 } rt_quant_t;

typedef struct {
  const char *model;         /* directory or Hugging Face cache name; may be NULL with dummy_weights + config */
  const char *config;        /* --config FILE: overrides the model directory's config.json */
  int dummy_weights;         /* random weights from the config (no checkpoint read) */
  rt_device_t device;
  es_dtype_t dtype;          /* CUDA compute dtype (bf16 default); the CPU backend is fp32 */
  int threads;               /* CPU threads (0 = all cores) */
  int max_model_len;         /* context limit in tokens (0 = default: min(8192, max_position_embeddings),
                                lowered on the CPU to what 4 GiB of fp32 KV cache holds) */
  int prefill_chunk;         /* rows per prefill step (0 = 512) */
  int max_audio_batch;       /* windows encoded together (0 = 1 on the CPU, 8 on a GPU) */
  int max_queue;             /* engine queue length (0 = 64) */
  int max_num_seqs;          /* sequences batched in one step (0 = 16 on the CPU, 64 on a GPU) */
  double kv_cache_gb;        /* KV cache size (0 = 4 GiB on the CPU; on a GPU 90% of what is free after the
                                weights and activations) */
  int verbose;               /* 1: say on stderr which device and sizes were chosen */
  /* ---- deterministic mode (issue 9) ---- */
  int deterministic;         /* es_backend_opts_t.deterministic: answers bit-identical alone or in any batch */

  int quantization;          /* rt_quant_t: --quantization fp8|none (default none) */
  int kv_fp8;                /* --kv-cache-dtype fp8: es_backend_opts_t.kv_fp8 (default 0: the compute dtype) */
} rt_opts_t;

typedef struct {
  char dir[4096];            /* resolved model directory ("" with dummy weights and no model) */
  model_config_t cfg;
  ckpt_t *ck;                /* NULL with dummy weights */
  tok_t *tok;                /* NULL when the directory has no tokenizer */
  prompt_special_t special;  /* valid when tok != NULL */
  es_backend_t *be;
  qa_model_t *model;
  eng_t *engine;
  int max_model_len;
  int kv_blocks;             /* KV pool blocks, including the scratch block */
  int max_num_seqs;
  char device_desc[256];     /* what was chosen, for logs and /version */
  int quantization;          /* rt_quant_t in effect */
  int kv_fp8;                /* 1: the KV cache is fp8 e4m3 with per-(token, head) scales */
} rt_t;

int rt_open(const rt_opts_t *opts, rt_t *rt, es_error_t *err);
void rt_close(rt_t *rt);

/* Parses "cpu" / "cuda" / "auto" and "bfloat16" / "float32" (with the short forms "bf16", "fp32"). */
int rt_parse_device(const char *s, rt_device_t *out, es_error_t *err);
int rt_parse_dtype(const char *s, es_dtype_t *out, es_error_t *err);
/* Parses "fp8" / "none" (--quantization). */
int rt_parse_quantization(const char *s, int *out, es_error_t *err);
/* "fp8" / "none". */
const char *rt_quantization_name(int q);
/* Parses --kv-cache-dtype: "auto" (the compute dtype) -> 0, "fp8" or "fp8_e4m3" -> 1 (vLLM's names). */
int rt_parse_kv_cache_dtype(const char *s, int *kv_fp8, es_error_t *err);

/* The checkpoint's generation_config.json sampling defaults as sampler parameters (vLLM's behaviour:
 * the model's generation config provides the defaults a request does not override). */
void rt_default_sampling(const rt_t *rt, smp_params_t *p);

#ifdef __cplusplus
}
#endif
