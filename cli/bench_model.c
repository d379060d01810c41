/* bench_model: `earshot bench model` — the whole model on one backend: time to first token and the decode step
 * against the weight-streaming limit measured in the same run, with side-by-side comparison runs of the CUDA
 * backend's settings (graphs, GEMV, PDL, flash kernel, fusions, ...). A program, not a test (STYLE.md). Exit
 * codes: 0 ok, 1 failure, 2 usage. Thread safety: single-threaded command.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "audio_mel.h"
#include "backend.h"
#include "bench_profile.h"
#include "bench_stats.h"
#include "checkpoint.h"
#include "config.h"
#include "es_clock.h"
#include "es_error.h"
#include "es_gpu.h"
#include "kv_alloc.h"
#include "model_flags.h"
#include "model_path.h"
#include "qwen2audio.h"
#include "runtime.h"
#ifdef ES_HAVE_CUDA_BACKEND
#include "cuda/cuda_fp8.h"  // CUDA_FP8_MMA_MIN_M, CUDA_FP8_MMA_MAX_M
#include "cuda/cuda_gemv.h" // CUDA_GEMV_MAX_M
#include "cuda/cuda_hooks.h"
#endif

int bench_model(int argc, char **argv);

/* `bench model`'s comparison runs after the timed ones, in this order (bench_model says what each changes). */
typedef enum {
  CMP_EAGER,    /* step graphs off */
  CMP_NOGEMV,   /* cuBLASLt for every GEMM */
  CMP_NOPDL,    /* programmatic dependent launch off */
  CMP_FLASH,    /* the other flash kernel (a warm-up run, then timed ones: time to first token only) */
  CMP_GEMV_ALL, /* the GEMV for every shape it takes */
  CMP_FP8CC,    /* fp8 without the tensor-core GEMV */
  CMP_NOPIPE,   /* the GEMVs not pipelined */
  CMP_LOADS8,   /* the GEMVs with 8 loads in flight */
  CMP_NOGLU,    /* the gate|up GEMV without SiLU·mul in its epilogue (CUDA_FUSE_GLU off) */
  CMP_NOCOMB,   /* the split-KV decode's splits merged by a second kernel (CUDA_FUSE_COMBINE off) */
  CMP_NONORM,   /* the RMSNorms as their own kernel after the GEMV (CUDA_FUSE_NORM off) */
  CMP_NOROPE,   /* RoPE + KV store as their own kernel after the q|k|v GEMV (CUDA_FUSE_ROPE off) */
  CMP_ROWS2,    /* the GEMVs with two weight rows per warp (cuda_backend_set_gemv_rows) */
  CMP_PROFILE,  /* op by op under the profiler */
  CMP_KINDS     /* none: a warm-up or timed run */
} cmp_kind_t;

/* The summary line of each comparison that times decode steps: what it changed, and how its median step compares —
 * "(faster: Nx faster)" where it turned off what `faster` names, else "(Nx the default's)". */
static const struct {
  const char *label, *faster;
} CMP_LINE[CMP_KINDS] = {
    [CMP_EAGER] = {"decode step without graphs", "graphs"},
    [CMP_NOGEMV] = {"decode step, cuBLASLt for every GEMM", "the GEMV"},
    [CMP_NOPDL] = {"decode step, programmatic dependent launch off", "PDL"},
    [CMP_GEMV_ALL] = {"decode step, GEMV for every shape it takes", NULL},
    [CMP_FP8CC] = {"decode step, fp8 without the tensor-core GEMV", "the tensor-core GEMV"},
    [CMP_NOPIPE] = {"decode step, GEMVs not pipelined", "pipelined"},
    [CMP_LOADS8] = {"decode step, GEMVs with 8 loads in flight", NULL},
    [CMP_NOGLU] = {"decode step, gate|up GEMV then SiLU·mul", "fused"},
    [CMP_NOCOMB] = {"decode step, attention combine as a kernel", "merged in the split kernel"},
    [CMP_NONORM] = {"decode step, GEMV then an RMSNorm kernel", "fused"},
    [CMP_NOROPE] = {"decode step, q|k|v GEMV then a RoPE kernel", "fused"},
    [CMP_ROWS2] = {"decode step, GEMVs with two weight rows per warp", NULL},
};

/* The comparison that run `extra` (counted from the first run after the timed ones; < 0: not a comparison) is,
 * given how many runs each kind has; *index: its place among that kind's runs. */
static cmp_kind_t cmp_of_run(const int *runs, int extra, int *index) {
  *index = 0;
  for (int k = 0; k < CMP_KINDS && extra >= 0; k++) {
    if (extra < runs[k]) {
      *index = extra;
      return (cmp_kind_t)k;
    }
    extra -= runs[k];
  }
  return CMP_KINDS;
}

/* ---- model ----------------------------------------------------------------------------------------- */
/* The whole model on one backend: time to first token from 16 kHz samples in memory (log-mel on the host,
 * encoder, one prefill step of every sequence, greedy sampling on the backend, the ids to the host) and the
 * decode step time at batch B, against the weight-streaming limit: the bytes of the decoder weights a decode step must
 * read, over the device's copy bandwidth measured in the same run (read + write bytes; CUDA: cudaMemcpy device to
 * device; CPU: the backend's own row copy). Prompt per sequence: P text tokens around <|audio_bos|> N x <|AUDIO|>
 * <|audio_eos|> (N from the clip length, 750 for 30 s); ids are synthetic (the numbers do not depend on them). */

static void model_usage(FILE *out) {
  fprintf(out, "usage: earshot bench model (--model DIR | --dummy-weights --config FILE) [options]\n"
               "\n"
               "  --audio-seconds S        clip length, <= 30 (default 30)\n"
               "  --prompt-tokens P        text tokens around the audio (default 32)\n"
               "  --output-tokens N        decode steps per run, eos ignored (default 64)\n"
               "  --batch B                sequences per step (default 1)\n"
               "  --warmup W --repeats R   runs before / timed (default 1 / 3); medians are reported\n"
               "  --copy-mib M             buffer for the copy-bandwidth measurement (default 1024)\n"
               "  --profile                one more run, op by op, every op timed: where the first token's and a\n"
               "                           decode step's time go (tables after the results)\n"
               "  --json                   one JSON object last\n");
  mf_usage(out, MF_OPEN);
}

typedef struct {
  es_backend_t *be;
  qa_model_t *m;
  kv_pool_t *kv;
  mel_ctx_t *mel;
  model_config_t cfg;
  ckpt_t *ck;
} bench_model_t;

/* Copy bandwidth of the backend's memory, bytes read + written per second. */
static int copy_bandwidth(es_backend_t *be, size_t bytes, double *bw, es_error_t *err) {
#ifdef ES_HAVE_CUDA_BACKEND
  if (strncmp(es_backend_name(be), "cuda", 4) == 0) return cuda_backend_copy_bandwidth(be, bytes, 10, bw, err);
#endif
  /* CPU: rows of 1 MiB through es_op_gather_rows (the backend's threaded memcpy) */
  int64_t C = (1 << 20) / 4, M = (int64_t)(bytes / (1 << 20));
  if (M < 1) M = 1;
  void *a, *b, *idx;
  int rc;
  if ((rc = es_backend_alloc(be, (size_t)M << 20, &a, err)) || (rc = es_backend_alloc(be, (size_t)M << 20, &b, err)) ||
      (rc = es_backend_alloc(be, sizeof(int32_t) * (size_t)M, &idx, err)))
    return rc;
  int32_t *h = malloc(sizeof(int32_t) * (size_t)M);
  if (!h) return es_fail(err, ES_ENOMEM, "out of memory");
  for (int64_t i = 0; i < M; i++) h[i] = (int32_t)i;
  rc = es_backend_write(be, idx, h, sizeof(int32_t) * (size_t)M, err);
  free(h);
  double best = 0;
  for (int r = 0; !rc && r < 4; r++) {
    double t0 = es_now_s();
    if ((rc = es_op_gather_rows(be, b, a, idx, M, C, err)) || (rc = es_backend_sync(be, err))) break;
    double t = es_now_s() - t0;
    if (r > 0 && (best == 0 || t < best)) best = t;
  }
  *bw = best > 0 ? 2.0 * (double)((size_t)M << 20) / best : 0;
  return rc;
}

/* Bytes one decode step must read: every decoder weight and the lm_head, in the compute dtype. */
static double decoder_bytes(const model_config_t *c, es_dtype_t dt) {
  double E = c->hidden_size, I = c->intermediate_size, V = c->vocab_size,
         KVW = (double)c->num_key_value_heads * c->head_dim;
  double per_layer = E * E * 2 + 2 * KVW * E + 3 * E * I + E + 2 * KVW + 2 * E;
  return (double)es_dtype_size(dt) * (c->num_hidden_layers * per_layer + E + V * E);
}

/* The next ids of B sequences, greedy, sampled on the backend from the step's device logits (the engine's path:
 * only the ids cross to the host). */
#ifdef ES_HAVE_CUDA_BACKEND
/* The CUDA settings `bench model`'s comparison runs change (one each), as the timed runs had them: each comparison
 * run puts them all back first, so it differs from the timed runs in its one setting only, whatever ran before it. */
typedef struct {
  int graphs, gemv, pdl, fp8_mma, gemv_pipe, gemv_loads, fusions, gemv_rows;
  cuda_flash_t flash;
} timed_settings_t;

static void timed_settings_get(const es_backend_t *be, timed_settings_t *s) {
  s->graphs = es_backend_graphs_supported(be);
  s->gemv = cuda_backend_gemv_mode(be);
  s->pdl = cuda_backend_pdl(be);
  s->fp8_mma = cuda_backend_fp8_mma(be);
  s->flash = cuda_backend_flash(be);
  s->gemv_pipe = cuda_backend_gemv_pipe(be);
  s->gemv_loads = cuda_backend_gemv_loads(be);
  s->fusions = cuda_backend_fusions(be);
  s->gemv_rows = cuda_backend_gemv_rows(be);
}

static int timed_settings_put(es_backend_t *be, const timed_settings_t *s, es_error_t *err) {
  return cuda_backend_set_graphs(be, s->graphs, err) || cuda_backend_set_gemv(be, s->gemv, err) ||
         cuda_backend_set_pdl(be, s->pdl, err) || cuda_backend_set_flash(be, s->flash, err) ||
         cuda_backend_set_fp8_mma(be, s->fp8_mma, err) || cuda_backend_set_gemv_pipe(be, s->gemv_pipe, err) ||
         cuda_backend_set_gemv_loads(be, s->gemv_loads, err) || cuda_backend_set_fusions(be, s->fusions, err) ||
         cuda_backend_set_gemv_rows(be, s->gemv_rows, err);
}
#endif

static int next_ids(es_backend_t *be, float *logits_dev, int B, int64_t step, int32_t *tokens_dev, int32_t *next,
                    es_error_t *err) {
  es_sample_row_t rows[64];
  for (int b = 0; b < B; b++)
    rows[b] =
        (es_sample_row_t){.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f, .step = step, .slot = b};
  int rc;
  if ((rc = es_backend_sample_prepare(be, rows, B, err)) || (rc = es_op_sample(be, logits_dev, B, tokens_dev, err)) ||
      (rc = es_backend_read(be, next, tokens_dev, sizeof(int32_t) * (size_t)B, err)))
    return rc;
  for (int b = 0; b < B; b++)
    if (next[b] < 0) return es_fail(err, ES_EINTERNAL, "sampling sequence %d gave no token", b);
  return ES_OK;
}

int bench_model(int argc, char **argv) {
  rt_opts_t ro = {.device = RT_DEVICE_AUTO, .dtype = ES_DT_BF16};
  long long P_ll = 32, n_out_ll = 64, B_ll = 1, warmup_ll = 1, repeats_ll = 3, copy_mib_ll = 1024;
  int json = 0, profile = 0;
  double seconds = 30.0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      model_usage(stdout);
      return 0;
    }
    int mf = mf_parse("bench model", MF_OPEN, argc, argv, &i, &ro);
    if (mf < 0) return 2;
    if (mf > 0) continue;
    if (!strcmp(a, "--json")) {
      json = 1;
      continue;
    }
    if (!strcmp(a, "--profile")) {
      profile = 1;
      continue;
    }
    const mf_number_t numbers[] = {
        {"--audio-seconds", NULL, &seconds, 0.021, 30.0}, {"--prompt-tokens", &P_ll, NULL, 4, 4096},
        {"--output-tokens", &n_out_ll, NULL, 1, 4096},    {"--batch", &B_ll, NULL, 1, 64},
        {"--warmup", &warmup_ll, NULL, 0, 1000},          {"--repeats", &repeats_ll, NULL, 1, 1000},
        {"--copy-mib", &copy_mib_ll, NULL, 1, 1 << 16}};
    int num = mf_parse_number("bench model", numbers, (int)(sizeof numbers / sizeof *numbers), argc, argv, &i);
    if (num < 0) return 2;
    if (num == 0) {
      fprintf(stderr, "earshot bench model: unknown option '%s'\n", a);
      model_usage(stderr);
      return 2;
    }
  }
  if (!ro.model && !(ro.dummy_weights && ro.config)) {
    fprintf(stderr, "earshot bench model: need --model DIR or --dummy-weights --config FILE\n");
    model_usage(stderr);
    return 2;
  }
  const int P = (int)P_ll, n_out = (int)n_out_ll, B = (int)B_ll, warmup = (int)warmup_ll, repeats = (int)repeats_ll,
            copy_mib = (int)copy_mib_ll;
  es_error_t err;
  es_error_clear(&err);
  bench_model_t bm;
  memset(&bm, 0, sizeof bm);
  rt_device_t dev = ro.device;
  es_dtype_t dt = ro.dtype;
  int rc = 1;
  size_t n_samples = (size_t)(seconds * MEL_SAMPLE_RATE);
  float *x = NULL, *mel = NULL;
  int32_t *ids = NULL, *arow = NULL, *pos = NULL, *slot = NULL, *table = NULL, *lrows = NULL, *q_start = NULL,
          *ctx = NULL;
  double *t_ttft = NULL, *t_step = NULL, *t_cmp = NULL; /* t_cmp: each comparison's decode steps, n_out apiece */
  kv_seq_t *seqs = NULL;
  char dir[4096] = "";
  es_profile_t prof_first = {0}, prof_decode = {0}; /* --profile: the first token, the decode steps */

  /* config and checkpoint */
  if (ro.model) {
    model_path_t mp;
    if (mpath_resolve(ro.model, &mp, &err)) goto done;
    snprintf(dir, sizeof dir, "%s", mp.dir);
  }
  if (ro.config ? cfg_load(ro.config, NULL, &bm.cfg, &err) : cfg_load_dir(dir, &bm.cfg, &err)) goto done;
  if (!ro.dummy_weights && ckpt_open(dir, &bm.cfg, 0, &bm.ck, &err)) goto done;
  const model_config_t *c = &bm.cfg;
  int frames = 0, N = 0;
  if (mel_ctx_init(&bm.mel, 1, &err)) goto done;

  /* the clip: a chirp plus noise, every frame non-silent */
  x = malloc(sizeof(float) * n_samples);
  mel = malloc(sizeof(float) * (size_t)B * MEL_N_MELS * MEL_N_FRAMES);
  if (!x || !mel) {
    es_fail(&err, ES_ENOMEM, "out of memory");
    goto done;
  }
  uint32_t s = 7;
  for (size_t i = 0; i < n_samples; i++) {
    s = s * 1664525u + 1013904223u;
    const double t = (double)i / MEL_SAMPLE_RATE;
    x[i] =
        (float)(0.3 * sin(2 * 3.141592653589793 * (100 + 120 * t) * t) + 0.01 * ((double)(s >> 8) / 16777216.0 - 0.5));
  }
  if (mel_compute(bm.mel, x, n_samples, mel, &frames, &N, &err)) goto done;
  if (N < 1) {
    es_fail(&err, ES_EINVAL, "%.3f s of audio gives no audio token", seconds);
    goto done;
  }
  int T = P + N, ctx_max = T + n_out;
  int max_blocks = (ctx_max + ES_KV_BLOCK - 1) / ES_KV_BLOCK;

  /* backend and model */
  es_backend_opts_t bo = {.compute_dtype = dt,
                          .n_threads = ro.threads,
                          .device = 0,
                          .max_tokens = (size_t)(B * T),
                          .max_seqs = (size_t)B,
                          .max_blocks = (size_t)max_blocks,
                          .deterministic = ro.deterministic,
                          .kv_fp8 = ro.kv_fp8};
  if (dev == RT_DEVICE_AUTO) {
    int n_gpu = 0;
    char why[128] = "";
    es_error_t gerr;
    dev = es_gpu_compiled() && es_gpu_count(&n_gpu, why, sizeof why, &gerr) == 0 && n_gpu > 0 ? RT_DEVICE_CUDA
                                                                                              : RT_DEVICE_CPU;
  }
  if (dev == RT_DEVICE_CPU) bo.compute_dtype = ES_DT_F32;
  if (dev == RT_DEVICE_CUDA ? es_backend_create_cuda(&bo, &bm.be, &err) : es_backend_create_cpu(&bo, &bm.be, &err))
    goto done;
  double bw = 0;
  if (copy_bandwidth(bm.be, (size_t)copy_mib << 20, &bw, &err)) goto done;
  double t_load0 = es_now_s();
  qa_model_opts_t mo = {.max_tokens = B * T,
                        .max_seqs = B,
                        .max_logit_rows = B,
                        .max_audio_batch = B,
                        .audio_pool_rows = B * QA_MAX_WINDOW_TOKENS,
                        .kv_blocks = B * max_blocks + 1,
                        .max_blocks_per_seq = max_blocks,
                        .dummy_seed = 1234,
                        .quantization = ro.quantization == RT_QUANT_FP8 ? QA_QUANT_FP8 : QA_QUANT_NONE};
  int32_t *tokens_dev = NULL; /* the sampled ids of a step, on the device (backend arena, freed with it) */
  if (qa_model_open(bm.be, c, bm.ck, &mo, &bm.m, &err) || kv_pool_init(mo.kv_blocks, &bm.kv, &err) ||
      es_backend_sampler_init(bm.be, B, c->vocab_size, &err) ||
      es_backend_alloc(bm.be, sizeof(int32_t) * 64, (void **)&tokens_dev, &err))
    goto done;
  for (int b = 0; b < B; b++) /* greedy without penalties: the slots' contents do not matter, but are defined */
    if (es_backend_sampler_reset(bm.be, b, NULL, 0, NULL, 0, NULL, 0, &err)) goto done;
  double load_s = es_now_s() - t_load0;
  fprintf(stderr, "earshot bench model: %s, %s weights loaded in %.1f s, quantization %s, KV cache %s\n",
          es_backend_name(bm.be), ro.dummy_weights ? "dummy" : "checkpoint", load_s,
          rt_quantization_name(ro.quantization), ro.kv_fp8 ? "fp8" : "auto");

  /* prompts: P text ids around <|audio_bos|> N x <|AUDIO|> <|audio_eos|>, the same for every sequence */
  int V = c->vocab_size, audio = c->audio_token_index;
  ids = malloc(sizeof(int32_t) * (size_t)(B * T));
  arow = malloc(sizeof(int32_t) * (size_t)(B * T));
  pos = malloc(sizeof(int32_t) * (size_t)(B * T));
  slot = malloc(sizeof(int32_t) * (size_t)(B * T));
  table = calloc((size_t)(B * max_blocks), sizeof(int32_t));
  lrows = malloc(sizeof(int32_t) * (size_t)B);
  q_start = malloc(sizeof(int32_t) * (size_t)(B + 1));
  ctx = malloc(sizeof(int32_t) * (size_t)B);
  seqs = calloc((size_t)B, sizeof(kv_seq_t));
  t_ttft = calloc((size_t)(warmup + repeats), sizeof(double));
  t_step = calloc((size_t)repeats * (size_t)n_out, sizeof(double));
  t_cmp = calloc((size_t)CMP_KINDS * (size_t)n_out, sizeof(double));
  if (!ids || !arow || !pos || !slot || !table || !lrows || !q_start || !ctx || !seqs || !t_ttft || !t_step || !t_cmp) {
    es_fail(&err, ES_ENOMEM, "out of memory");
    goto done;
  }
  int pre = P / 2 - 1;
  int32_t bos = audio + 1 < V ? audio + 1 : 1, eos = audio + 2 < V ? audio + 2 : 2;
  for (int b = 0; b < B; b++)
    for (int i = 0; i < T; i++) {
      int32_t id = (int32_t)((1000 + 7919 * i) % (V > 151000 ? 151000 : V));
      if (id == audio) id = 0;
      int r = b * T + i, a = i - pre - 1;
      ids[r] = i == pre ? bos : (a >= 0 && a < N) ? audio : (a == N) ? eos : id;
      arow[r] = (a >= 0 && a < N) ? b * N + a : -1;
    }

  /* After the timed runs, side by side on the same weights and card: with step graphs, one run with graphs off
   * (what they save); on CUDA in bf16 without fp8, one run with the decode GEMV off (cuBLASLt for every GEMM:
   * what the GEMV gains; graphs as in the timed runs); on a GPU with programmatic dependent launch, one run with
   * it off (what it gains; graphs and GEMV as in the timed runs); on an sm_90a GPU whose timed runs used the
   * device that has both flash kernels, three runs with the one the timed runs did not use (the median time to first
   * token of the last two: the first loads its kernels; all else as in the timed runs); where the GEMV is compared at a
   * batch of 2 to 4, one run with it for every shape it takes (mode 2; at one row the default already has it
   * everywhere); with fp8 weights on the tensor-core GEMV, one run with the CUDA-core fp8 GEMV instead; at batch 1 with
   * the GEMVs pipelined, one run without (EARSHOT_GEMV_PIPE=0); at batch 1 with the GEMVs' default loads in flight, one
   * run with 8; one run with each decode-step fusion off (CUDA_FUSE_GLU, CUDA_FUSE_NORM and CUDA_FUSE_ROPE
   * at batch 1, CUDA_FUSE_COMBINE); at batch 1, one run with two weight rows per warp in the GEMVs
   * (cuda_backend_set_gemv_rows). */
  const int cmp_graphs = es_backend_graphs_supported(bm.be);
  int cmp_gemv = 0;
#ifdef ES_HAVE_CUDA_BACKEND
  const int gemv_mode = cuda_backend_gemv_mode(bm.be); /* as the timed runs have it (EARSHOT_GEMV=0: 0) */
  cmp_gemv = gemv_mode != 0 && es_backend_act_dtype(bm.be) == ES_DT_BF16 && !ro.deterministic &&
             ro.quantization == RT_QUANT_NONE; /* fp8 linears have their own GEMV */
#endif
  int cmp_pdl = 0; /* on a GPU that has it: one run with programmatic dependent launch off */
#ifdef ES_HAVE_CUDA_BACKEND
  cmp_pdl = cuda_backend_pdl(bm.be);
#endif
  int cmp_flash = 0; /* runs: both flash kernels on the device, the fast attention path */
  const char *flash_name = "none", *flash_alt_name = "none"; /* no flash kernels off CUDA */
#ifdef ES_HAVE_CUDA_BACKEND
  const int is_cuda = strncmp(es_backend_name(bm.be), "cuda", 4) == 0;
  if (is_cuda) {
    flash_name = "mma";
    flash_alt_name = "wgmma";
  }
  cmp_flash = cuda_backend_flash_available(bm.be, CUDA_FLASH_WGMMA) &&
              cuda_backend_attention_path(bm.be) == CUDA_ATTN_FAST && es_backend_act_dtype(bm.be) == ES_DT_BF16 &&
              !ro.kv_fp8; /* over an fp8 KV cache the paged prefill always takes the mma kernel */
  cmp_flash *= 3;
  const cuda_flash_t flash_alt = cuda_backend_flash(bm.be) == CUDA_FLASH_MMA ? CUDA_FLASH_WGMMA : CUDA_FLASH_MMA;
  if (flash_alt == CUDA_FLASH_MMA && is_cuda) {
    flash_name = "wgmma";
    flash_alt_name = "mma";
  }
#endif
  double flash_ttft_ms = 0, t_flash[3] = {0, 0, 0};
  int n_step = 0, n_cmp[CMP_KINDS] = {0};
#ifdef ES_HAVE_CUDA_BACKEND
  timed_settings_t timed_cfg; /* taken when the first comparison run begins */
  memset(&timed_cfg, 0, sizeof timed_cfg);
#endif
  int cmp_gemv_all = 0; /* only where a decode step has GEMV-sized linears the default leaves to cuBLASLt */
#ifdef ES_HAVE_CUDA_BACKEND
  cmp_gemv_all = cmp_gemv && gemv_mode != 2 && B >= 2 && B <= CUDA_GEMV_MAX_M;
#endif
  int cmp_fp8 = 0; /* only where the tensor-core fp8 GEMV runs the timed decode steps (bf16, its rows); the
                      comparison: the CUDA-core GEMV up to 8 rows, dequantise + cuBLASLt above */
#ifdef ES_HAVE_CUDA_BACKEND
  const int fp8_mode = cuda_backend_fp8_mma(bm.be); /* as the timed runs have it */
  cmp_fp8 = ro.quantization == RT_QUANT_FP8 && !ro.deterministic && fp8_mode &&
            es_backend_act_dtype(bm.be) == ES_DT_BF16 && B >= CUDA_FP8_MMA_MIN_M && B <= CUDA_FP8_MMA_MAX_M;
#endif
  int cmp_pipe = 0; /* batch 1 (the bf16 and the CUDA-core fp8 GEMVs run its linears), pipelined GEMVs */
#ifdef ES_HAVE_CUDA_BACKEND
  cmp_pipe = is_cuda && B == 1 && !ro.deterministic && cuda_backend_gemv_pipe(bm.be) &&
             es_backend_act_dtype(bm.be) == ES_DT_BF16 && (gemv_mode != 0 || ro.quantization == RT_QUANT_FP8);
#endif
  int cmp_loads8 = 0; /* batch 1, the GEMVs' default loads in flight: one run with 8 (the same bits) */
#ifdef ES_HAVE_CUDA_BACKEND
  cmp_loads8 = is_cuda && B == 1 && !ro.deterministic && cuda_backend_gemv_loads(bm.be) == 0 &&
               es_backend_act_dtype(bm.be) == ES_DT_BF16 && (gemv_mode != 0 || ro.quantization == RT_QUANT_FP8);
#endif
  /* the decode-step fusions (cuda_hooks.h), each on in the timed runs: one run with each off — the gate|up epilogue
   * where it runs (one row), the in-kernel combine where the split-KV decode kernel runs (bf16, fast attention) */
  int cmp_noglu = 0, cmp_nocomb = 0, cmp_nonorm = 0, cmp_norope = 0;
#ifdef ES_HAVE_CUDA_BACKEND
  const int fusions = cuda_backend_fusions(bm.be);
  cmp_noglu = is_cuda && B == 1 && !ro.deterministic && (fusions & CUDA_FUSE_GLU) &&
              (ro.quantization == RT_QUANT_FP8 || (gemv_mode != 0 && es_backend_act_dtype(bm.be) == ES_DT_BF16));
  cmp_nonorm = is_cuda && B == 1 && !ro.deterministic && (fusions & CUDA_FUSE_NORM) &&
               (ro.quantization == RT_QUANT_FP8 || (gemv_mode != 0 && es_backend_act_dtype(bm.be) == ES_DT_BF16));
  cmp_norope = is_cuda && B == 1 && !ro.deterministic && !ro.kv_fp8 && (fusions & CUDA_FUSE_ROPE) &&
               (ro.quantization == RT_QUANT_FP8 || (gemv_mode != 0 && es_backend_act_dtype(bm.be) == ES_DT_BF16));
  cmp_nocomb = is_cuda && (fusions & CUDA_FUSE_COMBINE) && cuda_backend_attention_path(bm.be) == CUDA_ATTN_FAST &&
               es_backend_act_dtype(bm.be) == ES_DT_BF16;
#endif
  int cmp_rows2 = 0; /* batch 1 (the GEMVs run its linears) with one weight row per warp: one run with two */
#ifdef ES_HAVE_CUDA_BACKEND
  cmp_rows2 = is_cuda && B == 1 && !ro.deterministic && cuda_backend_gemv_rows(bm.be) == 1 &&
              es_backend_act_dtype(bm.be) == ES_DT_BF16 && (gemv_mode != 0 || ro.quantization == RT_QUANT_FP8);
#endif
  /* --profile: one last run op by op (graphs off: a replay would be one record), GEMV as in the timed runs */
  const int cmp_runs[CMP_KINDS] = {
      [CMP_EAGER] = cmp_graphs,      [CMP_NOGEMV] = cmp_gemv,   [CMP_NOPDL] = cmp_pdl,   [CMP_FLASH] = cmp_flash,
      [CMP_GEMV_ALL] = cmp_gemv_all, [CMP_FP8CC] = cmp_fp8,     [CMP_NOPIPE] = cmp_pipe, [CMP_LOADS8] = cmp_loads8,
      [CMP_NOGLU] = cmp_noglu,       [CMP_NOCOMB] = cmp_nocomb, [CMP_ROWS2] = cmp_rows2, [CMP_NONORM] = cmp_nonorm,
      [CMP_NOROPE] = cmp_norope,     [CMP_PROFILE] = profile};
  int extra_runs = 0;
  for (int k = 0; k < CMP_KINDS; k++) extra_runs += cmp_runs[k];
  qa_graph_stats_t gs; /* of the warm-up and timed runs (taken before the first extra run) */
  for (int run = 0; run < warmup + repeats + extra_runs; run++) {
    const int extra = run - (warmup + repeats); /* < 0: a warm-up or timed run */
    int flash_i;                                /* which of the other flash kernel's runs */
    const cmp_kind_t cmp = cmp_of_run(cmp_runs, extra, &flash_i);
    const int eager_run = cmp == CMP_EAGER, nogemv_run = cmp == CMP_NOGEMV, nopdl_run = cmp == CMP_NOPDL;
    const int flash_run = cmp == CMP_FLASH, gemv_all_run = cmp == CMP_GEMV_ALL, fp8_run = cmp == CMP_FP8CC;
    const int pipe_run = cmp == CMP_NOPIPE, loads8_run = cmp == CMP_LOADS8, prof_run = cmp == CMP_PROFILE;
    const int noglu_run = cmp == CMP_NOGLU, nocomb_run = cmp == CMP_NOCOMB, rows2_run = cmp == CMP_ROWS2;
    const int nonorm_run = cmp == CMP_NONORM, norope_run = cmp == CMP_NOROPE;
    const int timed = run >= warmup && extra < 0;
    if (extra == 0) qa_model_graph_stats(bm.m, &gs); /* the warm-up and timed runs' steps, not the comparisons' */
#ifdef ES_HAVE_CUDA_BACKEND
    /* a comparison run: every setting back as the timed runs had it, then its one change */
    if (extra == 0 && is_cuda) timed_settings_get(bm.be, &timed_cfg);
    if (extra >= 0 && is_cuda && timed_settings_put(bm.be, &timed_cfg, &err)) goto done;
    if ((eager_run || (prof_run && is_cuda)) && cuda_backend_set_graphs(bm.be, 0, &err)) goto done;
    if (nogemv_run) {
      if (cuda_backend_set_gemv(bm.be, 0, &err)) goto done;
      qa_model_forget_graphs(bm.m); /* the GEMM plans for M = B do not exist yet: warm up before recording */
    }
    if ((nopdl_run && cuda_backend_set_pdl(bm.be, 0, &err)) ||
        (flash_run && cuda_backend_set_flash(bm.be, flash_alt, &err)) ||
        (gemv_all_run && cuda_backend_set_gemv(bm.be, 2, &err)) ||
        (fp8_run && cuda_backend_set_fp8_mma(bm.be, 0, &err)) ||
        (pipe_run && cuda_backend_set_gemv_pipe(bm.be, 0, &err)) ||
        (loads8_run && cuda_backend_set_gemv_loads(bm.be, 8, &err)) ||
        (noglu_run && cuda_backend_set_fusions(bm.be, timed_cfg.fusions & ~CUDA_FUSE_GLU, &err)) ||
        (nocomb_run && cuda_backend_set_fusions(bm.be, timed_cfg.fusions & ~CUDA_FUSE_COMBINE, &err)) ||
        (rows2_run && cuda_backend_set_gemv_rows(bm.be, 2, &err)) ||
        (nonorm_run && cuda_backend_set_fusions(bm.be, timed_cfg.fusions & ~CUDA_FUSE_NORM, &err)) ||
        (norope_run && cuda_backend_set_fusions(bm.be, timed_cfg.fusions & ~CUDA_FUSE_ROPE, &err)))
      goto done;
#endif
    if (prof_run && es_backend_profile_start(bm.be, 4096, &err)) goto done;
    /* time to first token: samples -> features -> encoder -> prefill -> logits -> ids on the host */
    double t0 = es_now_s();
    int fr[64], dst[64], written = 0, bad = 0;
    for (int b = 0; b < B && !bad; b++) {
      bad = mel_compute(bm.mel, x, n_samples, mel + (size_t)b * MEL_N_MELS * MEL_N_FRAMES, &fr[b], NULL, &err);
      dst[b] = b * N; /* sequence b's placeholders read pool rows b·N .. b·N + N − 1 */
    }
    if (bad || qa_encode(bm.m, mel, fr, B, dst, &written, &err)) goto done;
    q_start[0] = 0;
    for (int b = 0; b < B; b++) {
      if (kv_seq_reserve(bm.kv, &seqs[b], ctx_max, max_blocks, &err)) goto done;
      memcpy(table + (size_t)b * max_blocks, seqs[b].blocks, sizeof(int32_t) * (size_t)seqs[b].n_blocks);
      for (int i = 0; i < T; i++) {
        pos[b * T + i] = i;
        slot[b * T + i] = kv_seq_slot(&seqs[b], i);
      }
      q_start[b + 1] = (b + 1) * T;
      ctx[b] = T;
      lrows[b] = b * T + T - 1;
    }
    es_batch_t batch = {.n_seqs = B,
                        .n_tokens = B * T,
                        .q_start = q_start,
                        .ctx_len = ctx,
                        .positions = pos,
                        .slot = slot,
                        .block_table = table,
                        .max_blocks = max_blocks};
    float *ldev = NULL;
    int32_t next[64];
    if (qa_step_device(bm.m, &batch, ids, arow, lrows, B, &ldev, &err) ||
        next_ids(bm.be, ldev, B, 0, tokens_dev, next, &err))
      goto done;
    double ttft = es_now_s() - t0;
    if (extra < 0) t_ttft[run] = ttft;
    if (flash_run) t_flash[flash_i] = ttft;
    if (prof_run && (es_backend_profile_stop(bm.be, &prof_first, &err) ||
                     es_backend_profile_start(bm.be, 1024 + 512 * n_out, &err)))
      goto done;
    /* decode: B sequences, one token each per step, greedy, eos ignored */
    int32_t none[64];
    for (int b = 0; b < B; b++) none[b] = -1;
    for (int k = 0; k < n_out; k++) {
      for (int b = 0; b < B; b++) {
        int p = T + k;
        pos[b] = p;
        slot[b] = kv_seq_slot(&seqs[b], p);
        q_start[b + 1] = b + 1;
        ctx[b] = p + 1;
        lrows[b] = b;
      }
      es_batch_t db = {.n_seqs = B,
                       .n_tokens = B,
                       .q_start = q_start,
                       .ctx_len = ctx,
                       .positions = pos,
                       .slot = slot,
                       .block_table = table,
                       .max_blocks = max_blocks};
      double s0 = es_now_s();
      if (qa_step_device(bm.m, &db, next, none, lrows, B, &ldev, &err) ||
          next_ids(bm.be, ldev, B, k + 1, tokens_dev, next, &err))
        goto done;
      if (timed) t_step[n_step++] = es_now_s() - s0;
      if (cmp != CMP_KINDS && cmp != CMP_FLASH && cmp != CMP_PROFILE) /* one run each: n_out steps */
        t_cmp[(size_t)cmp * (size_t)n_out + (size_t)n_cmp[cmp]++] = es_now_s() - s0;
    }
    if (prof_run && es_backend_profile_stop(bm.be, &prof_decode, &err)) goto done;
    for (int b = 0; b < B; b++) kv_seq_release(bm.kv, &seqs[b]);
    fprintf(stderr, "  run %d%s: time to first token %.1f ms\n", run,
            timed          ? ""
            : eager_run    ? " (graphs off)"
            : nogemv_run   ? " (GEMV off)"
            : nopdl_run    ? " (PDL off)"
            : flash_run    ? (flash_i ? " (the other flash kernel)" : " (the other flash kernel, warm-up)")
            : gemv_all_run ? " (GEMV for every shape)"
            : fp8_run      ? " (fp8 without the tensor-core GEMV)"
            : pipe_run     ? " (GEMVs not pipelined)"
            : loads8_run   ? " (GEMVs with 8 loads in flight)"
            : noglu_run    ? " (gate|up without the SiLU·mul epilogue)"
            : nocomb_run   ? " (decode attention's splits merged by a second kernel)"
            : rows2_run    ? " (GEMVs with two weight rows per warp)"
            : nonorm_run   ? " (RMSNorms as their own kernel)"
            : norope_run   ? " (RoPE + KV store as their own kernel)"
            : prof_run     ? " (profiled, op by op)"
                           : " (warm-up)",
            1e3 * ttft);
  }
  double ttft_ms = 1e3 * bench_median(t_ttft + warmup, repeats), step_ms = 1e3 * bench_median(t_step, n_step);
  if (cmp_flash) flash_ttft_ms = 1e3 * bench_median(t_flash + 1, cmp_flash - 1);
  double mbytes = decoder_bytes(c, es_backend_act_dtype(bm.be));
  if (ro.quantization == RT_QUANT_FP8) { /* the decoder linears stream 1 byte per weight + a scale per row */
    size_t a = es_dtype_size(es_backend_act_dtype(bm.be));
    mbytes += qa_decode_weight_bytes(c, a, QA_QUANT_FP8) - qa_decode_weight_bytes(c, a, QA_QUANT_NONE);
  }
  double limit_ms = bw > 0 ? 1e3 * mbytes / bw : 0;
  printf("bench model: %s, %s, quantization %s, KV cache %s, batch %d, %.1f s audio (%d audio tokens) + %d text "
         "tokens, %d output tokens, %d repeats (median), deterministic %s\n",
         es_backend_name(bm.be), ro.dummy_weights ? "dummy weights" : dir, rt_quantization_name(ro.quantization),
         ro.kv_fp8 ? "fp8" : "auto", B, seconds, N, P, n_out, repeats, ro.deterministic ? "on" : "off");
  printf("  time to first token (samples -> id on host)  %10.2f ms\n", ttft_ms);
  printf("  decode step (batch %d)                       %10.3f ms  (%.1f tokens/s)\n", B, step_ms, B * 1e3 / step_ms);
  printf("  weight-streaming limit                        %10.3f ms  (%.2f GB of decoder weights / %.0f GB/s copy)\n",
         limit_ms, mbytes / 1e9, bw / 1e9);
  printf("  decode at %.1f%% of the weight-streaming limit\n", step_ms > 0 ? 100.0 * limit_ms / step_ms : 0.0);
  if (!extra_runs) qa_model_graph_stats(bm.m, &gs);
  double cmp_ms[CMP_KINDS]; /* each comparison's median decode step (0: not run) */
  for (int k = 0; k < CMP_KINDS; k++)
    cmp_ms[k] = n_cmp[k] ? 1e3 * bench_median(t_cmp + (size_t)k * (size_t)n_out, n_cmp[k]) : 0;
  const double eager_ms = cmp_ms[CMP_EAGER], nogemv_ms = cmp_ms[CMP_NOGEMV], nopdl_ms = cmp_ms[CMP_NOPDL];
  const double gemvall_ms = cmp_ms[CMP_GEMV_ALL], fp8cc_ms = cmp_ms[CMP_FP8CC], nopipe_ms = cmp_ms[CMP_NOPIPE];
  const double loads8_ms = cmp_ms[CMP_LOADS8], noglu_ms = cmp_ms[CMP_NOGLU], nocomb_ms = cmp_ms[CMP_NOCOMB];
  const double rows2_ms = cmp_ms[CMP_ROWS2], nonorm_ms = cmp_ms[CMP_NONORM], norope_ms = cmp_ms[CMP_NOROPE];
  for (int k = 0; k < CMP_KINDS; k++) { /* a line per decode-step comparison that ran, in run order */
    if (!CMP_LINE[k].label || !n_cmp[k]) continue;
    char label[96];
    if (k == CMP_EAGER)
      snprintf(label, sizeof label, "%s (batch %d)", CMP_LINE[k].label, B);
    else
      snprintf(label, sizeof label, "%s", CMP_LINE[k].label);
    const int width = 56 - (int)strlen(label) > 8 ? 56 - (int)strlen(label) : 8; /* the ms column */
    if (CMP_LINE[k].faster)
      printf("  %s%*.3f ms  (%s: %.2fx faster)\n", label, width, cmp_ms[k], CMP_LINE[k].faster, cmp_ms[k] / step_ms);
    else
      printf("  %s%*.3f ms  (%.2fx the default's)\n", label, width, cmp_ms[k], cmp_ms[k] / step_ms);
  }
  if (flash_ttft_ms > 0)
    printf("  time to first token, %-5s flash kernel       %10.2f ms  (median of 2 after a warm-up; %.2fx the %s "
           "kernel's)\n",
           flash_alt_name, flash_ttft_ms, flash_ttft_ms / ttft_ms, flash_name);
  printf("  steps of the timed and warm-up runs: %lld graph replays (%lld recorded, %lld refused), %lld padded op by "
         "op, %lld unpadded%s\n",
         (long long)gs.replays, (long long)gs.records, (long long)gs.record_failures, (long long)gs.padded_eager,
         (long long)gs.eager, cmp_graphs ? "" : " (no step graphs on this backend)");
  if (profile) {
    bench_profile_print(stdout, "first token (encoder, prefill, logits, sampling; mel on the host not included)",
                        &prof_first, 1, bw, 24);
    char title[96];
    snprintf(title, sizeof title, "decode step at batch %d (mean of %d steps, op by op)", B, n_out);
    bench_profile_print(stdout, title, &prof_decode, n_out, bw, 24);
  }
  if (json)
    printf("{\"bench\": \"model\", \"backend\": \"%s\", \"dtype\": \"%s\", \"quantization\": \"%s\", "
           "\"kv_cache_dtype\": \"%s\", \"dummy_weights\": %s, \"batch\": %d, "
           "\"audio_seconds\": %.3f, \"audio_tokens\": %d, \"prompt_tokens\": %d, \"output_tokens\": %d, "
           "\"warmup\": %d, \"repeats\": %d, \"load_s\": %.3f, \"ttft_ms\": %.4f, \"decode_ms_per_step\": %.4f, "
           "\"decode_tokens_per_s\": %.3f, \"decoder_weight_bytes\": %.0f, \"copy_bytes_per_s\": %.0f, "
           "\"limit_ms_per_step\": %.4f, \"fraction_of_limit\": %.4f, \"graph_replays\": %lld, "
           "\"decode_ms_per_step_no_graphs\": %.4f, \"decode_ms_per_step_no_gemv\": %.4f, "
           "\"decode_ms_per_step_no_pdl\": %.4f, \"flash_kernel\": \"%s\", \"flash_kernel_alt\": \"%s\", "
           "\"ttft_ms_flash_alt\": %.4f, \"decode_ms_per_step_gemv_all\": %.4f, "
           "\"decode_ms_per_step_fp8_cuda_cores\": %.4f, \"decode_ms_per_step_no_gemv_pipe\": %.4f, "
           "\"decode_ms_per_step_gemv_loads8\": %.4f, \"decode_ms_per_step_no_glu_fusion\": %.4f, "
           "\"decode_ms_per_step_no_combine_fusion\": %.4f, \"decode_ms_per_step_gemv_rows2\": %.4f, "
           "\"decode_ms_per_step_no_norm_fusion\": %.4f, \"decode_ms_per_step_no_rope_fusion\": %.4f, "
           "\"deterministic\": %s}\n",
           es_backend_name(bm.be), es_dtype_name(es_backend_act_dtype(bm.be)), rt_quantization_name(ro.quantization),
           ro.kv_fp8 ? "fp8" : "auto", ro.dummy_weights ? "true" : "false", B, seconds, N, P, n_out, warmup, repeats,
           load_s, ttft_ms, step_ms, B * 1e3 / step_ms, mbytes, bw, limit_ms, step_ms > 0 ? limit_ms / step_ms : 0.0,
           (long long)gs.replays, eager_ms, nogemv_ms, nopdl_ms, flash_name, cmp_flash ? flash_alt_name : "",
           flash_ttft_ms, gemvall_ms, fp8cc_ms, nopipe_ms, loads8_ms, noglu_ms, nocomb_ms, rows2_ms, nonorm_ms,
           norope_ms, ro.deterministic ? "true" : "false");
  rc = 0;
done:
  if (rc) fprintf(stderr, "earshot bench model: %s\n", err.msg);
  if (seqs && bm.kv)
    for (int b = 0; b < B; b++) kv_seq_release(bm.kv, &seqs[b]);
  free(seqs);
  kv_pool_free(bm.kv);
  qa_model_close(bm.m);
  es_backend_free(bm.be);
  ckpt_close(bm.ck);
  mel_ctx_free(&bm.mel);
  free(x);
  free(mel);
  free(ids);
  free(arow);
  free(pos);
  free(slot);
  free(table);
  free(lrows);
  free(q_start);
  free(ctx);
  free(t_ttft);
  free(t_step);
  free(t_cmp);
  es_profile_free(&prof_first);
  es_profile_free(&prof_decode);
  return rc;
}
