/* model_flags: shared parsing of the model-opening flags. See model_flags.h. */
#include "model_flags.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int mf_int(const char *cmd, const char *flag, const char *v, long long lo, long long hi, long long *out) {
  char *end;
  errno = 0;
  long long x = strtoll(v, &end, 10);
  if (errno || end == v || *end || x < lo || x > hi) {
    fprintf(stderr, "earshot %s: %s '%s': expected an integer in [%lld, %lld]\n", cmd, flag, v, lo, hi);
    return -1;
  }
  *out = x;
  return 0;
}

int mf_double(const char *cmd, const char *flag, const char *v, double lo, double hi, double *out) {
  char *end;
  errno = 0;
  double x = strtod(v, &end);
  if (errno || end == v || *end || !(x >= lo && x <= hi)) {
    fprintf(stderr, "earshot %s: %s '%s': expected a number in [%g, %g]\n", cmd, flag, v, lo, hi);
    return -1;
  }
  *out = x;
  return 0;
}

/* Flags without a value. */
static int parse_switch(int groups, const char *a, rt_opts_t *ro) {
  if ((groups & MF_OPEN) && !strcmp(a, "--dummy-weights")) {
    ro->dummy_weights = 1;
    return 1;
  }
  if ((groups & MF_OPEN) && !strcmp(a, "--deterministic")) {
    ro->deterministic = 1;
    return 1;
  }
  return 0;
}

/* 1 when a is the flag name and its value v is there; *missing = name when it is the flag without a value. */
static int takes(const char *a, const char *name, const char *v, const char **missing) {
  if (strcmp(a, name) != 0) return 0;
  if (!v) *missing = name;
  return v != NULL;
}

/* Flags with a value v (NULL: a was the last argument). Returns 1 taken, 0 not ours, -1 a missing or bad value
 * (printed). */
static int parse_valued(const char *cmd, int groups, const char *a, const char *v, rt_opts_t *ro) {
  const char *missing = NULL;
  es_error_t err;
  long long n;
  double d;
  if (groups & MF_OPEN) {
    if (takes(a, "--model", v, &missing)) {
      ro->model = v;
      return 1;
    }
    if (takes(a, "--config", v, &missing)) {
      ro->config = v;
      return 1;
    }
    if (takes(a, "--device", v, &missing) || takes(a, "--dtype", v, &missing)) {
      int rc = !strcmp(a, "--device") ? rt_parse_device(v, &ro->device, &err) : rt_parse_dtype(v, &ro->dtype, &err);
      if (rc) {
        fprintf(stderr, "earshot %s: %s\n", cmd, err.msg);
        return -1;
      }
      return 1;
    }
    if (takes(a, "--threads", v, &missing)) {
      if (mf_int(cmd, a, v, 0, 1024, &n)) return -1;
      ro->threads = (int)n;
      return 1;
    }
    if (takes(a, "--kv-cache-dtype", v, &missing)) { /* ---- fp8 KV cache ---- */
      if (rt_parse_kv_cache_dtype(v, &ro->kv_fp8, &err)) {
        fprintf(stderr, "earshot %s: %s\n", cmd, err.msg);
        return -1;
      }
      return 1;
    }
    if (takes(a, "--quantization", v, &missing)) { /* ---- fp8 weights ---- */
      if (rt_parse_quantization(v, &ro->quantization, &err)) {
        fprintf(stderr, "earshot %s: %s\n", cmd, err.msg);
        return -1;
      }
      return 1;
    }
  }
  if (groups & MF_SIZING) {
    if (takes(a, "--max-model-len", v, &missing)) {
      if (mf_int(cmd, a, v, 64, 1 << 20, &n)) return -1;
      ro->max_model_len = (int)n;
      return 1;
    }
    if (takes(a, "--max-num-seqs", v, &missing)) {
      if (mf_int(cmd, a, v, 1, 256, &n)) return -1;
      ro->max_num_seqs = (int)n;
      return 1;
    }
    if (takes(a, "--prefill-chunk", v, &missing)) {
      if (mf_int(cmd, a, v, 16, 1 << 16, &n)) return -1;
      ro->prefill_chunk = (int)n;
      return 1;
    }
    if (takes(a, "--max-audio-batch", v, &missing)) {
      if (mf_int(cmd, a, v, 1, 64, &n)) return -1;
      ro->max_audio_batch = (int)n;
      return 1;
    }
    if (takes(a, "--kv-cache-gb", v, &missing)) {
      if (mf_double(cmd, a, v, 0.001, 1 << 20, &d)) return -1;
      ro->kv_cache_gb = d;
      return 1;
    }
  }
  if (missing) {
    fprintf(stderr, "earshot %s: %s needs a value\n", cmd, missing);
    return -1;
  }
  return 0;
}


int mf_parse_number(const char *cmd, const mf_number_t *table, int n, int argc, char **argv, int *i) {
  const char *a = argv[*i];
  for (int k = 0; k < n; k++) {
    const mf_number_t *t = &table[k];
    if (strcmp(a, t->name) != 0) continue;
    if (*i + 1 >= argc) {
      fprintf(stderr, "earshot %s: %s needs a value\n", cmd, a);
      return -1;
    }
    const char *v = argv[++*i];
    int bad = t->ll ? mf_int(cmd, a, v, (long long)t->lo, (long long)t->hi, t->ll)
                    : mf_double(cmd, a, v, t->lo, t->hi, t->d);
    return bad ? -1 : 1;
  }
  return 0;
}

int mf_parse(const char *cmd, int groups, int argc, char **argv, int *i, rt_opts_t *ro) {
  const char *a = argv[*i];
  if (parse_switch(groups, a, ro)) return 1;
  int rc = parse_valued(cmd, groups, a, *i + 1 < argc ? argv[*i + 1] : NULL, ro);
  if (rc == 1) (*i)++;
  return rc;
}

void mf_usage(FILE *out, int groups) {
  if (groups & MF_OPEN)
    fprintf(out, "  --model DIR|ORG/NAME     model directory or Hugging Face cache name\n"
                 "  --dummy-weights --config FILE   random weights from a config.json (benchmarks)\n"
                 "  --device auto|cpu|cuda   (default auto: the GPU when there is one)\n"
                 "  --dtype bfloat16|float32 CUDA compute dtype (default bfloat16; the CPU computes in float32)\n"
                 "  --threads N              CPU threads (default: every core)\n"
                 "  --deterministic          a request's answer is bit-identical alone or in any batch (GPU: fixed\n"
                 "                           GEMM algorithms and attention splits; slower. The CPU always is)\n"
                 "  --quantization fp8|none  fp8: the decoder's linear weights in FP8 e4m3 with per-channel "
                 "scales,\n"
                 "                           computed at load (half the bytes a decode step reads; default none)\n"
                 "  --kv-cache-dtype auto|fp8\n"
                 "                           fp8: keys and values cached in FP8 e4m3 with a scale per token and\n"
                 "                           head (0.52x the KV memory of bf16; default auto: the compute dtype)\n");
  if (groups & MF_SIZING)
    fprintf(out, "  --max-model-len N        context limit in tokens (default min(8192, the model's); lower on "
                 "the CPU)\n"
                 "  --max-num-seqs N         sequences batched in one step (default 16 CPU, 64 GPU)\n"
                 "  --kv-cache-gb G          KV cache size (default 4 on the CPU, 90%% of free GPU memory)\n"
                 "  --prefill-chunk N        prompt rows per step (default 512)\n"
                 "  --max-audio-batch N      30 s windows encoded together (default 1 CPU, 8 GPU)\n");
}
