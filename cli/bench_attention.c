/* bench_attention: `earshot bench attention` — the three uses of attention at the shapes of issue 8, on the CUDA
 * backend, fast kernels against the simple one, each against its floor measured in the same run.
 *
 *   encoder  B = 1, T = 1500, 20 heads × 64, no padding (a 30 s clip; 32 layers): TFLOP/s (4·T²·H·D per layer)
 *            against the bf16 GEMM rate; target: 32 layers in <= 1.5 ms;
 *   prefill  one sequence of 2048 new tokens, causal, 32 heads × 128 (Qwen2-7B), keys read through the paged
 *            cache: TFLOP/s (4·D·H·T(T+1)/2) against the bf16 GEMM rate; target: >= 50% of it;
 *   decode   batch B of one token at context P over the paged cache, 32 heads × 128: GB/s (the K and V bytes of
 *            every visible position, 16 KB each) against the copy bandwidth; target: >= 70% at B >= 8, P >= 2k;
 *            also batch 1 at 8k and at 800 (a decode step after a 30 s clip, which latency bounds).
 * Floors, both measured here, not taken from a datasheet: the device-to-device copy bandwidth (cudaMemcpyAsync,
 * bytes read + written, cuda_backend_copy_bandwidth) and the bf16 GEMM rate of es_op_linear at 8192³ (cuBLASLt,
 * fp32 accumulation). Inputs are random bf16 (not zeros: METHOD.md); the cache is a shuffled block pool larger
 * than L2. Each figure is the mean of --repeats back-to-back calls after a warm-up, timed on the host around a
 * device sync. Encoder and prefill are timed with each flash kernel the device has (mma.sync everywhere, wgmma
 * on sm_90a devices: cuda_backend_set_flash); the faster one is the fast figure, both are printed. A program,
 * not a test (STYLE.md). Exit codes: 0 ok, 1 failure (no CUDA backend, no GPU), 2 usage.
 * Thread safety: single-threaded command.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "bench_random.h"
#include "es_clock.h"
#include "es_error.h"
#include "es_gpu.h"
#include "runtime.h"
#ifdef ES_HAVE_CUDA_BACKEND
#include "cuda/cuda_hooks.h"
#endif

int bench_attention(int argc, char **argv);

static void usage(FILE *out) {
  fprintf(out, "usage: earshot bench attention [--repeats N] [--copy-mib N] [--device N] [--kv-cache-dtype auto|fp8]\n"
               "                               [--json]\n"
               "\n"
               "Times the CUDA backend's attention at the shapes of the 7B model (encoder 1500 x 20 x 64, causal\n"
               "prefill of 2048 tokens x 32 x 128, split-KV decode at batch 1..32 and context 800..8k), fast kernels\n"
               "and the simple reference, against the copy bandwidth and bf16 GEMM rate measured in the same run.\n"
               "N repeats per figure (default 20); the copy bandwidth over N MiB (default 1024). With\n"
               "--kv-cache-dtype fp8 the paged cache holds e4m3 codes and row scales (decode bytes: D + 4 per row).\n");
}

#ifndef ES_HAVE_CUDA_BACKEND

int bench_attention(int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return 0;
    }
  fprintf(stderr, "earshot bench attention: needs the CUDA backend; this build has none (configure with "
                  "-DEARSHOT_CUDA=ON on a machine with the CUDA toolkit)\n");
  return 1;
}

#else

#define H_DEC 32
#define D_DEC 128
#define PREFILL_T 2048
#define MAX_B 32
#define MAX_CTX 8192

static uint32_t rng = 12345u;
static uint16_t rand_bf16(void) { return bench_rand_bf16(&rng, 1.0f); } /* uniform in [-1, 1) */

/* An fp8 KV pool of one layer (backend.h): n_rows · D random e4m3 codes (never the NaN codes), then n_rows scales
 * between 2^-8 and 2^-7 (stored values of magnitude up to ~3.5, as a model's keys and values). */
static int fill_fp8_pool(es_backend_t *be, void *pool, size_t n_rows, int D, es_error_t *err) {
  size_t chunk = (size_t)16 << 20, codes = n_rows * (size_t)D;
  unsigned char *h = malloc(chunk);
  if (!h) return es_fail(err, ES_ENOMEM, "out of memory");
  for (size_t i = 0; i < chunk; i++) {
    unsigned char c = (unsigned char)(bench_lcg(&rng) >> 8);
    h[i] = (c & 0x7f) == 0x7f ? (unsigned char)(c ^ 1u) : c;
  }
  int rc = 0;
  for (size_t off = 0; off < codes && !rc; off += chunk)
    rc = es_backend_write(be, (char *)pool + off, h, codes - off < chunk ? codes - off : chunk, err);
  float *sc = (float *)h;
  for (size_t i = 0; i < chunk / sizeof(float); i++)
    sc[i] = (1.0f + (float)(bench_lcg(&rng) >> 8) / 16777216.0f) / 256.0f;
  for (size_t off = 0; off < n_rows * sizeof(float) && !rc; off += chunk)
    rc = es_backend_write(be, (char *)pool + codes + off, h,
                          n_rows * sizeof(float) - off < chunk ? n_rows * sizeof(float) - off : chunk, err);
  free(h);
  return rc;
}

/* bytes of random bf16 at dst (device), written through a 16 MiB host pattern repeated */
static int fill_random(es_backend_t *be, void *dst, size_t bytes, es_error_t *err) {
  size_t chunk = (size_t)16 << 20;
  uint16_t *h = malloc(chunk);
  if (!h) return es_fail(err, ES_ENOMEM, "out of memory");
  for (size_t i = 0; i < chunk / 2; i++) h[i] = rand_bf16();
  int rc = 0;
  for (size_t off = 0; off < bytes && !rc; off += chunk)
    rc = es_backend_write(be, (char *)dst + off, h, bytes - off < chunk ? bytes - off : chunk, err);
  free(h);
  return rc;
}

static int alloc_random(es_backend_t *be, size_t bytes, void **out, es_error_t *err) {
  int rc = es_backend_alloc(be, bytes, out, err);
  return rc ? rc : fill_random(be, *out, bytes, err);
}

typedef enum { OP_DENSE, OP_PAGED } op_kind_t;

typedef struct {
  es_backend_t *be;
  op_kind_t kind;
  void *out, *q, *k, *v;
  int64_t ld, T;
  int H, D;
  int32_t valid[1];
} op_t;

static int op_run(const op_t *o, es_error_t *err) {
  float scale = 1.0f / sqrtf((float)o->D);
  if (o->kind == OP_DENSE)
    return es_op_attention_dense(o->be, o->out, o->q, o->ld, o->k, o->ld, o->v, o->ld, 1, o->T, o->H, o->D, scale,
                                 o->valid, err);
  return es_op_attention_paged(o->be, 0, o->out, o->q, o->ld, o->H, o->D, scale, err);
}

static cuda_flash_t g_flash_default = CUDA_FLASH_MMA; /* the flash kernel the backend was created with */

/* Mean seconds per call along a path (and flash kernel), after one warm-up call; restores the fast path and the
 * create-time flash kernel. */
static int time_flash(const op_t *o, cuda_attn_path_t path, cuda_flash_t flash, int repeats, double *sec,
                      es_error_t *err) {
  int rc = cuda_backend_set_attention_path(o->be, path, err);
  if (!rc) rc = cuda_backend_set_flash(o->be, flash, err);
  if (!rc) rc = op_run(o, err);
  if (!rc) rc = es_backend_sync(o->be, err);
  double t0 = es_now_s();
  for (int r = 0; r < repeats && !rc; r++) rc = op_run(o, err);
  if (!rc) rc = es_backend_sync(o->be, err);
  *sec = (es_now_s() - t0) / repeats;
  es_error_t e2;
  cuda_backend_set_attention_path(o->be, CUDA_ATTN_FAST, &e2);
  cuda_backend_set_flash(o->be, g_flash_default, &e2);
  return rc;
}

static int time_op(const op_t *o, cuda_attn_path_t path, int repeats, double *sec, es_error_t *err) {
  return time_flash(o, path, CUDA_FLASH_MMA, repeats, sec, err);
}

typedef struct {
  char name[16], shape[64];
  double fast_s, simple_s, work, rate, fraction, target;
  double mma_s, wgmma_s; /* the two flash kernels (encoder, prefill; wgmma_s 0: not on this device) */
  const char *kernel;    /* the flash kernel behind fast_s, or NULL (decode) */
  int is_bytes; /* work in bytes (vs the copy bandwidth) or FLOPs (vs the GEMM rate) */
  int met;
} result_t;

/* The fast path with each flash kernel the device has; fast_s = the faster. */
static int time_flashes(const op_t *o, int repeats, result_t *r, es_error_t *err) {
  int rc = time_flash(o, CUDA_ATTN_FAST, CUDA_FLASH_MMA, repeats, &r->mma_s, err);
  r->wgmma_s = 0;
  if (!rc && cuda_backend_flash_available(o->be, CUDA_FLASH_WGMMA))
    rc = time_flash(o, CUDA_ATTN_FAST, CUDA_FLASH_WGMMA, repeats, &r->wgmma_s, err);
  const int wg = r->wgmma_s > 0 && r->wgmma_s < r->mma_s;
  r->fast_s = wg ? r->wgmma_s : r->mma_s;
  r->kernel = wg ? "wgmma" : "mma";
  return rc;
}

static void report(result_t *r, double floor_rate, double per_use) {
  r->rate = r->work / r->fast_s;
  r->fraction = r->rate / floor_rate;
  if (!strcmp(r->name, "encoder"))
    r->met = r->fast_s * per_use <= r->target;
  else
    r->met = r->fraction >= r->target;
  if (r->kernel && r->wgmma_s > 0)
    printf("  %-8s flash kernels: mma %.4f ms, wgmma %.4f ms: %s is faster (%.2fx)\n", r->name, 1e3 * r->mma_s,
           1e3 * r->wgmma_s, r->kernel, r->wgmma_s > r->mma_s ? r->wgmma_s / r->mma_s : r->mma_s / r->wgmma_s);
  else if (r->kernel)
    printf("  %-8s flash kernel mma (wgmma: not on this device)\n", r->name);
  printf("  %-8s %-34s fast %9.4f ms  simple %9.4f ms (%5.1fx)  %8.1f %s = %.2f of the %s", r->name, r->shape,
         1e3 * r->fast_s, 1e3 * r->simple_s, r->simple_s / r->fast_s, r->is_bytes ? r->rate / 1e9 : r->rate / 1e12,
         r->is_bytes ? "GB/s" : "TFLOP/s", r->fraction, r->is_bytes ? "copy bandwidth" : "GEMM rate");
  if (!strcmp(r->name, "encoder"))
    printf("; 32 layers %.3f ms (target <= %.1f ms) %s\n", 1e3 * r->fast_s * per_use, 1e3 * r->target,
           r->met ? "met" : "NOT met");
  else if (r->target > 0)
    printf(" (target >= %.2f) %s\n", r->target, r->met ? "met" : "NOT met");
  else
    printf("\n");
}

int bench_attention(int argc, char **argv) {
  int repeats = 20, copy_mib = 1024, device = 0, json = 0, kv_fp8 = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    int more = i + 1 < argc;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(a, "--repeats") && more)
      repeats = atoi(argv[++i]);
    else if (!strcmp(a, "--copy-mib") && more)
      copy_mib = atoi(argv[++i]);
    else if (!strcmp(a, "--device") && more)
      device = atoi(argv[++i]);
    else if (!strcmp(a, "--json"))
      json = 1;
    else if (!strcmp(a, "--kv-cache-dtype") && more) {
      es_error_t perr;
      if (rt_parse_kv_cache_dtype(argv[++i], &kv_fp8, &perr)) {
        fprintf(stderr, "earshot bench attention: %s\n", perr.msg);
        return 2;
      }
    } else {
      fprintf(stderr, "earshot bench attention: unknown or incomplete option '%s'\n", a);
      usage(stderr);
      return 2;
    }
  }
  if (repeats < 1 || repeats > 10000 || copy_mib < 1 || device < 0) {
    fprintf(stderr, "earshot bench attention: --repeats 1..10000, --copy-mib >= 1, --device >= 0\n");
    return 2;
  }
  es_error_t err;
  es_error_clear(&err);
  int n_gpu = 0, rc = 1;
  char why[128] = "";
  if (es_gpu_count(&n_gpu, why, sizeof why, &err) != 0 || n_gpu == 0) {
    fprintf(stderr, "earshot bench attention: no GPU (%s)\n", n_gpu == 0 && why[0] ? why : err.msg);
    return 1;
  }
  /* decode shapes: the (batch >= 8, context >= 2k), batch 1 at 8k, and batch 1 at the context of a decode
   * step after a 30 s clip (~800 keys: what `bench model` decodes; latency, not bandwidth, bounds it) */
  enum { N_DEC = 5 };
  static const int dec_b[N_DEC] = {1, 8, 8, 32, 1}, dec_ctx[N_DEC] = {8192, 2048, 8192, 2048, 800};
  const int max_blocks = MAX_CTX / ES_KV_BLOCK, n_blocks = 1 + MAX_B * 2048 / ES_KV_BLOCK; /* 4097: the largest case */
  es_backend_opts_t bo = {.compute_dtype = ES_DT_BF16,
                          .device = device,
                          .max_tokens = PREFILL_T,
                          .max_seqs = MAX_B,
                          .max_blocks = (size_t)max_blocks,
                          .kv_fp8 = kv_fp8};
  es_backend_t *be = NULL;
  int32_t *order = malloc(sizeof(int32_t) * (size_t)n_blocks),
          *table = calloc((size_t)MAX_B * max_blocks, sizeof(int32_t)),
          *q_start = malloc(sizeof(int32_t) * (MAX_B + 1)), *ctx = malloc(sizeof(int32_t) * MAX_B),
          *pos = malloc(sizeof(int32_t) * PREFILL_T), *slot = malloc(sizeof(int32_t) * PREFILL_T);
  uint16_t *wh = NULL;
  result_t res[2 + N_DEC];
  int n_res = 0;
  memset(res, 0, sizeof res);
  if (!order || !table || !q_start || !ctx || !pos || !slot) {
    es_fail(&err, ES_ENOMEM, "out of memory");
    goto done;
  }
  if (es_backend_create_cuda(&bo, &be, &err)) goto done;
  g_flash_default = cuda_backend_flash(be);

  /* floors: copy bandwidth, bf16 GEMM rate */
  double bw = 0, gemm = 0;
  if (cuda_backend_copy_bandwidth(be, (size_t)copy_mib << 20, 10, &bw, &err)) goto done;
  {
    const int64_t G = 8192;
    es_weight_t w;
    void *x, *y;
    wh = malloc(sizeof(uint16_t) * (size_t)(G * G));
    if (!wh) {
      es_fail(&err, ES_ENOMEM, "out of memory");
      goto done;
    }
    for (int64_t i = 0; i < G * G; i++) wh[i] = rand_bf16();
    if (es_backend_upload_weight(be, wh, ES_DT_BF16, G, G, &w, &err) ||
        alloc_random(be, (size_t)(G * G) * 2, &x, &err) || es_backend_alloc(be, (size_t)(G * G) * 2, &y, &err))
      goto done;
    free(wh);
    wh = NULL;
    int reps = repeats < 10 ? repeats : 10;
    if (es_op_linear(be, y, G, x, G, &w, NULL, G, ES_ACT_NONE, 0, &err) || es_backend_sync(be, &err)) goto done;
    double t0 = es_now_s();
    for (int r = 0; r < reps; r++)
      if (es_op_linear(be, y, G, x, G, &w, NULL, G, ES_ACT_NONE, 0, &err)) goto done;
    if (es_backend_sync(be, &err)) goto done;
    gemm = 2.0 * (double)G * G * G * reps / (es_now_s() - t0);
  }
  printf("bench attention: %s; floors measured here: copy bandwidth %.0f GB/s (read + write), bf16 GEMM %.0f "
         "TFLOP/s (8192^3, cuBLASLt); %d repeats; KV cache %s\n",
         es_backend_name(be), bw / 1e9, gemm / 1e12, repeats,
         kv_fp8 ? "fp8 (e4m3 codes + a scale per row; prefill on the mma flash kernel only)" : "bf16");

  /* encoder */
  {
    const int64_t T = 1500, H = 20, D = 64, HD = H * D;
    op_t o = {.be = be, .kind = OP_DENSE, .ld = HD, .T = T, .H = (int)H, .D = (int)D, .valid = {(int32_t)T}};
    if (alloc_random(be, (size_t)(T * HD) * 2, &o.q, &err) || alloc_random(be, (size_t)(T * HD) * 2, &o.k, &err) ||
        alloc_random(be, (size_t)(T * HD) * 2, &o.v, &err) || es_backend_alloc(be, (size_t)(T * HD) * 2, &o.out, &err))
      goto done;
    result_t *r = &res[n_res++];
    snprintf(r->name, sizeof r->name, "encoder");
    snprintf(r->shape, sizeof r->shape, "B=1 T=%lld H=%lld D=%lld", (long long)T, (long long)H, (long long)D);
    if (time_flashes(&o, repeats, r, &err) ||
        time_op(&o, CUDA_ATTN_SIMPLE, repeats < 5 ? repeats : 5, &r->simple_s, &err))
      goto done;
    r->work = 4.0 * (double)T * T * H * D;
    r->target = 1.5e-3;
    report(r, gemm, 32);
  }

  /* the paged cache: one layer of n_blocks random blocks; tables from a shuffled pool */
  if (es_backend_kv_init(be, 1, n_blocks, H_DEC, D_DEC, &err) ||
      (kv_fp8 ? fill_fp8_pool(be, cuda_backend_kv_pool(be), (size_t)n_blocks * 2 * H_DEC * ES_KV_BLOCK, D_DEC, &err)
              : fill_random(be, cuda_backend_kv_pool(be),
                            (size_t)n_blocks * es_backend_kv_block_bytes(be, 1, H_DEC, D_DEC), &err)))
    goto done;
  for (int i = 0; i < n_blocks - 1; i++) order[i] = i + 1;
  for (int i = n_blocks - 2; i > 0; i--) {
    int j = (int)(bench_lcg(&rng) % (uint32_t)(i + 1));
    int32_t t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
  void *q = NULL, *out = NULL;
  if (alloc_random(be, (size_t)PREFILL_T * H_DEC * D_DEC * 2, &q, &err) ||
      es_backend_alloc(be, (size_t)PREFILL_T * H_DEC * D_DEC * 2, &out, &err))
    goto done;
  op_t po = {.be = be, .kind = OP_PAGED, .q = q, .out = out, .ld = H_DEC * D_DEC, .H = H_DEC, .D = D_DEC};

  for (int c = -1; c < N_DEC; c++) { /* c = -1: prefill; then the decode shapes */
    int B = c < 0 ? 1 : dec_b[c], P = c < 0 ? PREFILL_T : dec_ctx[c], ql = c < 0 ? PREFILL_T : 1, next = 0;
    q_start[0] = 0;
    for (int s = 0; s < B; s++) {
      for (int j = 0; j < (P + ES_KV_BLOCK - 1) / ES_KV_BLOCK; j++) table[s * max_blocks + j] = order[next++];
      ctx[s] = P;
      q_start[s + 1] = q_start[s] + ql;
      for (int i = 0; i < ql; i++) {
        int p = P - ql + i, row = q_start[s] + i;
        pos[row] = p;
        slot[row] = table[s * max_blocks + p / ES_KV_BLOCK] * ES_KV_BLOCK + p % ES_KV_BLOCK;
      }
    }
    es_batch_t b = {.n_seqs = B,
                    .n_tokens = q_start[B],
                    .q_start = q_start,
                    .ctx_len = ctx,
                    .positions = pos,
                    .slot = slot,
                    .block_table = table,
                    .max_blocks = max_blocks};
    result_t *r = &res[n_res++];
    if (es_backend_begin_step(be, &b, &err)) goto done;
    int trc = c < 0 ? time_flashes(&po, repeats, r, &err) : time_op(&po, CUDA_ATTN_FAST, repeats, &r->fast_s, &err);
    if (!trc) trc = time_op(&po, CUDA_ATTN_SIMPLE, repeats < 5 ? repeats : 5, &r->simple_s, &err);
    es_error_t e2;
    es_backend_end_step(be, &e2);
    if (trc) goto done;
    if (c < 0) {
      snprintf(r->name, sizeof r->name, "prefill");
      snprintf(r->shape, sizeof r->shape, "T=%d causal H=%d D=%d", P, H_DEC, D_DEC);
      r->work = 4.0 * D_DEC * H_DEC * (double)P * (P + 1) / 2;
      r->target = 0.5;
      report(r, gemm, 1);
    } else {
      snprintf(r->name, sizeof r->name, "decode");
      snprintf(r->shape, sizeof r->shape, "B=%d ctx=%d H=%d D=%d", B, P, H_DEC, D_DEC);
      /* K and V of every visible position: bf16 values, or fp8 codes and the row's 4-byte scale */
      r->work = (double)B * P * 2.0 * H_DEC * (kv_fp8 ? D_DEC + 4.0 : D_DEC * 2.0);
      r->is_bytes = 1;
      r->target = B >= 8 && P >= 2048 ? 0.7 : 0; /* the target applies at batch >= 8, context >= 2k */
      report(r, bw, 1);
    }
  }
  if (json) {
    printf("{\"bench\": \"attention\", \"backend\": \"%s\", \"kv_cache_dtype\": \"%s\", \"repeats\": %d, "
           "\"copy_bytes_per_s\": %.0f, \"gemm_flops_per_s\": %.0f, \"cases\": [",
           es_backend_name(be), kv_fp8 ? "fp8" : "auto", repeats, bw, gemm);
    for (int i = 0; i < n_res; i++) {
      const result_t *r = &res[i];
      printf("%s{\"use\": \"%s\", \"shape\": \"%s\", \"fast_ms\": %.5f, \"simple_ms\": %.5f, \"%s\": %.4g, "
             "\"fraction_of_floor\": %.4f, \"floor\": \"%s\", \"target\": %.4g, \"met\": %s",
             i ? ", " : "", r->name, r->shape, 1e3 * r->fast_s, 1e3 * r->simple_s,
             r->is_bytes ? "bytes_per_s" : "flops_per_s", r->rate, r->fraction,
             r->is_bytes ? "copy bandwidth" : "bf16 GEMM rate", r->target, r->met ? "true" : "false");
      if (r->kernel) {
        printf(", \"flash_kernel\": \"%s\", \"mma_ms\": %.5f, \"wgmma_ms\": ", r->kernel, 1e3 * r->mma_s);
        if (r->wgmma_s > 0)
          printf("%.5f", 1e3 * r->wgmma_s);
        else
          printf("null");
      }
      printf("}");
    }
    printf("], \"encoder_32_layers_ms\": %.4f}\n", 1e3 * res[0].fast_s * 32);
  }
  rc = 0;
done:
  if (rc) fprintf(stderr, "earshot bench attention: %s\n", err.msg);
  es_backend_free(be);
  free(wh);
  free(order);
  free(table);
  free(q_start);
  free(ctx);
  free(pos);
  free(slot);
  return rc;
}

#endif
