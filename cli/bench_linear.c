/* bench_linear: `earshot bench linear` — the decoder's linear layers of the 7B model at decode sizes on the CUDA
 * backend, every path that can run them, against the copy bandwidth measured in the same run.
 *
 * Shapes (Qwen2-7B, E = 4096, I = 11008, fused projections as the CUDA backend loads them): q|k|v 12288 × 4096,
 * o 4096 × 4096, gate|up 22016 × 4096, down 4096 × 11008, and the logits 156032 × 4096 (fp32 out). Rows M = 1 ..
 * 64 (the decode batch). Paths: bf16 weights through the GEMV with 4, 8 or 16 loads in flight per lane (M <= 4;
 * pipelined as by default, and with 4 loads also not: cuda_backend_set_gemv_pipe)
 * and through cuBLASLt (GEMV off, every M); fp8 weights (per-row scales) through the CUDA-core GEMV with 4, 8 or 16
 * loads in flight (M <= 8), the tensor-core GEMV (M 2 .. 64, cuda_backend_set_fp8_mma) and, past 8 rows with the
 * tensor-core GEMV off, dequantise + cuBLASLt; and gate|up at one row as es_op_linear_silu_mul (bf16 and fp8: the
 * GEMV with SiLU·mul in its epilogue, two weight rows per warp), and every shape at one row through the GEMV with two
 * weight rows per warp sharing each x load. A decode step streams each weight once, so the figure
 * of merit is the weight bytes (plus activations) over the time, against the copy bandwidth (bytes read + written).
 * Each figure is the device time of --repeats calls timed with the op profile's events (backend.h), rotating over
 * enough copies of the weight that together they are several times the L2 cache, so the weights come from memory.
 * Random weights and inputs (never zeros: METHOD.md). A program, not a test (STYLE.md). Exit codes: 0 ok,
 * 1 failure (no CUDA backend, no GPU), 2 usage. Thread safety: single-threaded command.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "bench_random.h"
#include "es_error.h"
#ifdef ES_HAVE_CUDA_BACKEND
#include "cuda/cuda_fp8.h" // CUDA_FP8_MMA_MIN_M, CUDA_FP8_MMA_MAX_M
#include "cuda/cuda_hooks.h"
#endif

int bench_linear(int argc, char **argv);

static void usage(FILE *out) {
  fprintf(out, "usage: earshot bench linear [--repeats N] [--copy-mib N] [--device N] [--json]\n"
               "\n"
               "Times the 7B decoder's linear layers at decode sizes (M = 1 .. 64) on the CUDA backend: bf16 weights\n"
               "through the GEMV (4, 8, 16 loads in flight) and cuBLASLt, fp8 weights through their GEMV, as GB/s\n"
               "against the copy bandwidth measured in the same run. N calls per figure (default 20); the copy\n"
               "bandwidth over N MiB (default 1024).\n");
}

#ifndef ES_HAVE_CUDA_BACKEND

int bench_linear(int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return 0;
    }
  fprintf(stderr, "earshot bench linear: needs the CUDA backend; this build has none (configure with "
                  "-DEARSHOT_CUDA=ON on a machine with the CUDA toolkit)\n");
  return 1;
}

#else

#define MAX_COPIES 16
#define ROTATE_BYTES ((size_t)256 << 20) /* the copies of one weight together: several times an H100/H200 L2 */
#define MAX_M 64

typedef struct {
  const char *name;
  int64_t N, K;
  int logits; /* es_op_logits (fp32 out) instead of es_op_linear */
} shape_t;

static const shape_t SHAPES[] = {
    {"qkv", 12288, 4096, 0},  {"o", 4096, 4096, 0},        {"gate_up", 22016, 4096, 0},
    {"down", 4096, 11008, 0}, {"logits", 156032, 4096, 1},
};

static uint32_t rng = 777u;

/* n random bf16 values in [-amp, amp) */
static uint16_t *host_random(size_t n, float amp) {
  uint16_t *h = malloc(sizeof(uint16_t) * n);
  if (h)
    for (size_t i = 0; i < n; i++) h[i] = bench_rand_bf16(&rng, amp);
  return h;
}

typedef struct {
  es_backend_t *be;
  const shape_t *s;
  es_weight_t w[MAX_COPIES];
  int copies;
  void *x, *y;
  void *act; /* gate|up only: silu(gate) · up, [MAX_M, N / 2] */
  int glu;   /* time es_op_linear_silu_mul (gate|up with SiLU·mul) instead of the linear */
} layer_t;

/* Call r of the layer's op at M rows, on copy r of the weight (rotating). */
static int call_op(layer_t *l, int64_t M, int r, es_error_t *err) {
  const es_weight_t *w = &l->w[r % l->copies];
  if (l->glu) return es_op_linear_silu_mul(l->be, l->act, l->y, l->s->N, l->x, l->s->K, w, M, err);
  return l->s->logits ? es_op_logits(l->be, l->y, l->x, w, M, err)
                      : es_op_linear(l->be, l->y, l->s->N, l->x, l->s->K, w, NULL, M, ES_ACT_NONE, 0, err);
}

/* Device seconds per call of `repeats` calls at M rows, rotating over the copies. */
static int time_calls(layer_t *l, int64_t M, int repeats, double *sec, es_error_t *err) {
  int rc = ES_OK;
  for (int r = 0; r < 2 && !rc; r++) rc = call_op(l, M, r, err); /* warm-up: plans, first launches */
  if (rc || (rc = es_backend_sync(l->be, err)) || (rc = es_backend_profile_start(l->be, repeats, err))) return rc;
  for (int r = 0; r < repeats && !rc; r++) rc = call_op(l, M, r, err);
  es_profile_t p;
  es_error_t stop_err;
  int src = es_backend_profile_stop(l->be, &p, rc ? &stop_err : err);
  if (rc) {
    if (!src) es_profile_free(&p);
    return rc;
  }
  if (src) return src;
  *sec = p.records > 0 ? 1e-3 * p.ops_ms / p.records : 0;
  es_profile_free(&p);
  return ES_OK;
}

typedef struct {
  char shape[24], path[40];
  int64_t M;
  double us, bytes_per_s;
} row_t;

static int layer_open(es_backend_t *be, const shape_t *s, int fp8, layer_t *l, es_error_t *err) {
  memset(l, 0, sizeof *l);
  l->be = be;
  l->s = s;
  size_t n = (size_t)(s->N * s->K), wbytes = n * (fp8 ? 1 : 2);
  l->copies = (int)((ROTATE_BYTES + wbytes - 1) / wbytes);
  if (l->copies > MAX_COPIES) l->copies = MAX_COPIES;
  if (l->copies < 2) l->copies = 2;
  uint16_t *h = host_random(n, 0.05f), *xh = host_random((size_t)(MAX_M * s->K), 1.0f);
  int rc = !h || !xh ? es_fail(err, ES_ENOMEM, "out of host memory for a %lld x %lld weight", (long long)s->N,
                               (long long)s->K)
                     : ES_OK;
  for (int c = 0; c < l->copies && !rc; c++) {
    h[(size_t)c] ^= 1u; /* copies differ a little: nothing can share them */
    rc = fp8 ? es_backend_upload_weight_fp8(be, h, ES_DT_BF16, s->N, s->K, &l->w[c], err)
             : es_backend_upload_weight(be, h, ES_DT_BF16, s->N, s->K, &l->w[c], err);
  }
  size_t ysize = s->logits ? 4 : es_dtype_size(es_backend_act_dtype(be));
  if (!rc && !(rc = es_backend_alloc(be, sizeof(uint16_t) * (size_t)(MAX_M * s->K), &l->x, err)))
    rc = es_backend_write(be, l->x, xh, sizeof(uint16_t) * (size_t)(MAX_M * s->K), err);
  if (!rc) rc = es_backend_alloc(be, ysize * (size_t)(MAX_M * s->N), &l->y, err);
  if (!rc && !strcmp(s->name, "gate_up")) rc = es_backend_alloc(be, ysize * (size_t)(MAX_M * s->N / 2), &l->act, err);
  free(h);
  free(xh);
  return rc;
}

int bench_linear(int argc, char **argv) {
  long long repeats = 20, copy_mib = 1024, device = 0;
  int json = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    }
    if (!strcmp(a, "--json")) {
      json = 1;
      continue;
    }
    long long *dst = !strcmp(a, "--repeats")    ? &repeats
                     : !strcmp(a, "--copy-mib") ? &copy_mib
                     : !strcmp(a, "--device")   ? &device
                                                : NULL;
    char *end = NULL;
    if (dst && i + 1 < argc) {
      *dst = strtoll(argv[++i], &end, 10);
      if (*end == '\0' && *dst >= (dst == &device ? 0 : 1) && *dst <= 100000) continue;
      fprintf(stderr, "earshot bench linear: bad value '%s' for %s\n", argv[i], a);
      return 2;
    }
    fprintf(stderr, "earshot bench linear: %s '%s'\n", dst ? "missing value for" : "unknown option", a);
    usage(stderr);
    return 2;
  }
  es_error_t err;
  es_error_clear(&err);
  es_backend_t *be = NULL;
  int rc = 1, n_rows = 0;
  row_t rows[512];
  es_backend_opts_t bo = {
      .compute_dtype = ES_DT_BF16, .device = (int)device, .max_tokens = MAX_M, .max_seqs = 1, .max_blocks = 1};
  double bw = 0;
  if (es_backend_create_cuda(&bo, &be, &err) || cuda_backend_copy_bandwidth(be, (size_t)copy_mib << 20, 10, &bw, &err))
    goto done;
  printf("bench linear: %s; copy bandwidth measured here %.0f GB/s (read + write); %lld calls per figure, weights "
         "rotated over copies >= 256 MiB\n",
         es_backend_name(be), bw / 1e9, repeats);
  static const int64_t Ms[] = {1, 2, 4, 8, 16, 32, 64};
  const int fusions0 = cuda_backend_fusions(be); /* as created (EARSHOT_FUSE); the fused gate|up path forces its own */
  const int rows0 = cuda_backend_gemv_rows(be);  /* as created; each path sets its own (the labels say one or two) */
  static const int loads[] = {4, 8, 16};
  for (int fp8 = 0; fp8 < 2; fp8++)
    for (size_t si = 0; si < sizeof SHAPES / sizeof *SHAPES; si++) {
      const shape_t *s = &SHAPES[si];
      if (fp8 && s->logits) continue; /* the lm_head stays bf16 under --quantization fp8 */
      layer_t l;
      if (layer_open(be, s, fp8, &l, &err)) goto done;
      for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; mi++) {
        const int64_t M = Ms[mi];
        /* paths: GEMV with each loads-in-flight where the GEMV takes M (p 0..2, pipelined as by default), then
         * bf16: cuBLASLt (p 3); fp8: dequantise + cuBLASLt (p 3) past the CUDA-core GEMV's 8 rows, the tensor-core
         * GEMV (p 4) from 2 to 64 in one launch; the GEMV with 4 loads in flight not pipelined (p 5); the tensor-core
         * GEMV in launches of at most 32 rows (p 6, its default) past 32; gate|up at one row as es_op_linear_silu_mul,
         * the GEMV with SiLU·mul in its epilogue (p 7, all else as by default: CUDA_FUSE_GLU); at one row the GEMV
         * with two weight rows per warp (p 8, 4 loads in flight, pipelined) */
        const int gemv_m = fp8 ? 8 : 4;
        for (int p = 0; p < 9; p++) {
          const int is_lt = p == 3, is_mma = p == 4 || p == 6, unpiped = p == 5, glu = p == 7, rows2 = p == 8;
          int skip;
          if (glu)
            skip = !l.act || M != 1;
          else if (rows2)
            skip = M != 1;
          else if (p == 6)
            skip = !fp8 || M <= CUDA_FP8_MMA_DEFAULT_M || M > CUDA_FP8_MMA_MAX_M;
          else if (is_mma)
            skip = !fp8 || M > CUDA_FP8_MMA_MAX_M || M < CUDA_FP8_MMA_MIN_M;
          else if (is_lt)
            skip = fp8 && M <= gemv_m;
          else
            skip = M > gemv_m;
          if (skip) continue;
          int n_loads = loads[0]; /* unpiped: 4 */
          if (is_lt || is_mma || glu || rows2)
            n_loads = 0;
          else if (!unpiped)
            n_loads = loads[p];
          l.glu = glu;
          if (cuda_backend_set_gemv(be,
                                    is_lt ? 0
                                    : glu ? 1
                                          : 2,
                                    &err) ||
              cuda_backend_set_gemv_loads(be, n_loads, &err) || cuda_backend_set_gemv_pipe(be, !unpiped, &err) ||
              cuda_backend_set_gemv_rows(be, rows2 ? 2 : 1, &err) ||
              cuda_backend_set_fusions(be, glu ? CUDA_FUSE_ALL : fusions0, &err) ||
              cuda_backend_set_fp8_mma(be,
                                       p == 6 || glu ? 1
                                       : is_mma      ? 2
                                                     : 0,
                                       &err))
            goto done;
          double sec = 0;
          int64_t glu0, glu1, other;
          cuda_backend_fused_calls(be, &glu0, &other, &other, &other);
          if (time_calls(&l, M, (int)repeats, &sec, &err)) goto done;
          cuda_backend_fused_calls(be, &glu1, &other, &other, &other);
          if (glu && glu1 - glu0 < repeats) { /* a profile record per call only where it ran as one kernel */
            printf("  %-22s M=%-3lld gate|up + SiLU·mul: not fused on this backend, not timed\n", s->name,
                   (long long)M);
            continue;
          }
          row_t *r = &rows[n_rows++];
          snprintf(r->shape, sizeof r->shape, "%s %lldx%lld", s->name, (long long)s->N, (long long)s->K);
          if (glu)
            snprintf(r->path, sizeof r->path, "%s GEMV + SiLU·mul fused", fp8 ? "fp8" : "bf16");
          else if (rows2)
            snprintf(r->path, sizeof r->path, "%s GEMV 2 rows per warp", fp8 ? "fp8" : "bf16");
          else if (is_lt)
            snprintf(r->path, sizeof r->path, fp8 ? "fp8 dequant+cuBLASLt" : "bf16 cuBLASLt");
          else if (p == 6)
            snprintf(r->path, sizeof r->path, "fp8 tensor-core GEMV, 32-row launches");
          else if (is_mma)
            snprintf(r->path, sizeof r->path, "fp8 tensor-core GEMV");
          else if (unpiped)
            snprintf(r->path, sizeof r->path, "%s GEMV loads=4 unpipelined", fp8 ? "fp8" : "bf16");
          else
            snprintf(r->path, sizeof r->path, "%s GEMV loads=%d", fp8 ? "fp8" : "bf16", loads[p]);
          r->M = M;
          r->us = 1e6 * sec;
          double bytes = (double)s->N * s->K * (fp8 ? 1.0 : 2.0) + (fp8 ? 4.0 * s->N : 0) + 2.0 * M * s->K +
                         (s->logits ? 4.0 : 2.0) * M * s->N / (glu ? 2 : 1);
          r->bytes_per_s = sec > 0 ? bytes / sec : 0;
          printf("  %-22s M=%-3lld %-20s %9.2f us %7.0f GB/s = %.2f of copy\n", r->shape, (long long)M, r->path, r->us,
                 r->bytes_per_s / 1e9, bw > 0 ? r->bytes_per_s / bw : 0.0);
          fflush(stdout);
        }
      }
      l.glu = 0;
      if (cuda_backend_set_gemv(be, 1, &err) || cuda_backend_set_gemv_loads(be, 0, &err) ||
          cuda_backend_set_fusions(be, fusions0, &err) || cuda_backend_set_gemv_rows(be, rows0, &err) ||
          cuda_backend_set_gemv_pipe(be, 1, &err) || cuda_backend_set_fp8_mma(be, 1, &err))
        goto done;
      /* the weights stay until the backend goes (no free in backend.h); at most ~0.6 GB per shape */
    }
  if (json) {
    printf("{\"bench\": \"linear\", \"backend\": \"%s\", \"copy_bytes_per_s\": %.0f, \"rows\": [", es_backend_name(be),
           bw);
    for (int i = 0; i < n_rows; i++)
      printf("%s{\"shape\": \"%s\", \"path\": \"%s\", \"M\": %lld, \"us\": %.3f, \"bytes_per_s\": %.0f}", i ? ", " : "",
             rows[i].shape, rows[i].path, (long long)rows[i].M, rows[i].us, rows[i].bytes_per_s);
    printf("]}\n");
  }
  rc = 0;
done:
  if (rc) fprintf(stderr, "earshot bench linear: %s\n", err.msg);
  es_backend_free(be);
  return rc;
}

#endif
