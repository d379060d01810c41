/* cmd_bench: `earshot bench <what> [options]` — timing programs (never tests; STYLE.md "Tests and tools").
 *
 * A table of targets, each a function that measures one thing and prints a human line plus, with --json,
 * one JSON object a script can turn into ratios against a reference measured in the same run
 * (scripts/bench-*.sh). Targets: mel (decode + log-mel features of a 30 s clip, here), model (bench_model.c),
 * engine (bench_engine.c), attention (bench_attention.c), linear (bench_linear.c).
 * Exit codes: 0 ok, 1 failure, 2 usage. Thread safety: single-threaded command (a target may start threads).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audio_mel.h"
#include "bench_stats.h"
#include "es_clock.h"
#include "es_error.h"
#ifdef EARSHOT_HAVE_AUDIO_DECODE
#include "audio_decode.h"
#endif

int cmd_bench(int argc, char **argv);
int bench_engine(int argc, char **argv); /* bench_engine.c */
int bench_attention(int argc, char **argv); /* bench_attention.c */
int bench_linear(int argc, char **argv);    /* bench_linear.c */
int bench_model(int argc, char **argv);     /* bench_model.c */

typedef struct {
  const char *name;
  const char *summary;
  int (*run)(int argc, char **argv); /* argv[0] is the target name */
} bench_target_t;

/* ---- mel ------------------------------------------------------------------------------------------- */

static void mel_usage(FILE *out) {
  fprintf(out, "usage: earshot bench mel [FILE] [--repeats N] [--threads N] [--json]\n"
               "\n"
               "Decodes FILE (default: a synthetic 30 s signal, no decode) to 16 kHz mono and computes the\n"
               "features of its first 30 s window; reports the median of N repeats (default 20) of the decode,\n"
               "of the features on 1 thread and on --threads threads (default 2), in milliseconds.\n");
}

static int bench_mel(int argc, char **argv) {
  const char *file = NULL;
  int repeats = 20, threads = 2, json = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      mel_usage(stdout);
      return 0;
    } else if (strcmp(argv[i], "--repeats") == 0 && i + 1 < argc) {
      repeats = atoi(argv[++i]);
    } else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
      threads = atoi(argv[++i]);
    } else if (strcmp(argv[i], "--json") == 0) {
      json = 1;
    } else if (argv[i][0] == '-') {
      fprintf(stderr, "earshot bench mel: unknown or incomplete option '%s'\n", argv[i]);
      mel_usage(stderr);
      return 2;
    } else if (!file) {
      file = argv[i];
    } else {
      fprintf(stderr, "earshot bench mel: one FILE only\n");
      return 2;
    }
  }
  if (repeats < 1 || repeats > 100000 || threads < 1 || threads > 64) {
    fprintf(stderr, "earshot bench mel: --repeats must be >= 1 and --threads 1..64\n");
    return 2;
  }
  es_error_t err;
  es_error_clear(&err);
  int rc = 1;
  double *t_dec = calloc((size_t)repeats, sizeof(double)), *t_m1 = calloc((size_t)repeats, sizeof(double)),
         *t_mn = calloc((size_t)repeats, sizeof(double));
  float *x = NULL, *feat = malloc(sizeof(float) * MEL_N_MELS * MEL_N_FRAMES);
  size_t n = 0;
  mel_ctx_t *c1 = NULL, *cn = NULL;
  double dec_ms = 0;
  if (!t_dec || !t_m1 || !t_mn || !feat) {
    es_fail(&err, ES_ENOMEM, "out of memory");
    goto done;
  }
  if (file) {
#ifdef EARSHOT_HAVE_AUDIO_DECODE
    audio_decode_global_init(1);
    for (int r = 0; r < repeats; r++) {
      audio_pcm_t pcm;
      const double t0 = es_now_s();
      if (audio_decode_file(file, NULL, &pcm, &err)) goto done;
      t_dec[r] = es_now_s() - t0;
      free(x);
      x = pcm.samples; /* keep the last decode's samples */
      n = pcm.n;
    }
    dec_ms = 1e3 * bench_median(t_dec, repeats);
#else
    es_fail(&err, ES_EUNSUPPORTED, "%s: this build has no audio decoder (EARSHOT_DEVICE=ON)", file);
    goto done;
#endif
  } else {
    n = MEL_WINDOW_SAMPLES; /* a chirp plus noise: every frame is non-silent, like dense speech */
    x = malloc(sizeof(float) * n);
    if (!x) {
      es_fail(&err, ES_ENOMEM, "out of memory");
      goto done;
    }
    uint32_t s = 1;
    for (size_t i = 0; i < n; i++) {
      s = s * 1664525u + 1013904223u;
      const double t = (double)i / MEL_SAMPLE_RATE;
      x[i] = (float)(0.3 * sin(2 * 3.141592653589793 * (100 + 120 * t) * t) +
                     0.01 * ((double)(s >> 8) / 16777216.0 - 0.5));
    }
  }
  const size_t len = n < MEL_WINDOW_SAMPLES ? n : MEL_WINDOW_SAMPLES;
  if (mel_ctx_init(&c1, 1, &err) || mel_ctx_init(&cn, threads, &err)) goto done;
  if (mel_compute(c1, x, len, feat, NULL, NULL, &err)) goto done; /* warm-up: page in the buffers */
  for (int r = 0; r < repeats; r++) {
    double t0 = es_now_s();
    if (mel_compute(c1, x, len, feat, NULL, NULL, &err)) goto done;
    t_m1[r] = es_now_s() - t0;
    t0 = es_now_s();
    if (mel_compute(cn, x, len, feat, NULL, NULL, &err)) goto done;
    t_mn[r] = es_now_s() - t0;
  }
  const double m1 = 1e3 * bench_median(t_m1, repeats), mn = 1e3 * bench_median(t_mn, repeats);
  printf("bench mel: %s, %.2f s of audio, %d repeats (median)\n", file ? file : "synthetic 30 s signal",
         (double)n / MEL_SAMPLE_RATE, repeats);
  if (file) printf("  decode to 16 kHz mono       %8.3f ms\n", dec_ms);
  printf("  features, 1 thread          %8.3f ms\n", m1);
  printf("  features, %2d threads        %8.3f ms\n", threads, mn);
  if (file) printf("  decode + features, 1 thread %8.3f ms\n", dec_ms + m1);
  if (json)
    printf("{\"bench\": \"mel\", \"file\": %s%s%s, \"seconds\": %.3f, \"repeats\": %d, \"decode_ms\": %.4f, "
           "\"mel_ms_1t\": %.4f, \"threads\": %d, \"mel_ms_nt\": %.4f}\n",
           file ? "\"" : "", file ? file : "null", file ? "\"" : "", (double)n / MEL_SAMPLE_RATE, repeats,
           file ? dec_ms : 0.0, m1, threads, mn);
  rc = 0;
done:
  if (rc) fprintf(stderr, "earshot bench mel: %s\n", err.msg);
  mel_ctx_free(&c1);
  mel_ctx_free(&cn);
  free(x);
  free(feat);
  free(t_dec);
  free(t_m1);
  free(t_mn);
  return rc;
}

/* ---- dispatcher ------------------------------------------------------------------------------------ */

static const bench_target_t TARGETS[] = {
    {"mel", "decode + log-mel features of a 30 s clip", bench_mel},
    {"model", "time to first token and decode step vs the weight-streaming limit", bench_model},
    {"engine", "N concurrent requests through the engine: tokens/s, time-to-first-token percentiles", bench_engine},
    {"attention", "CUDA attention (encoder, prefill, decode) vs copy bandwidth and GEMM rate", bench_attention},
    {"linear", "CUDA decode-size linear layers (GEMV, cuBLASLt, fp8) vs copy bandwidth", bench_linear},
    {NULL, NULL, NULL},
};

static void usage(FILE *out) {
  fprintf(out, "usage: earshot bench <what> [options]   ('earshot bench <what> --help' for its options)\n\ntargets:\n");
  for (const bench_target_t *t = TARGETS; t->name; t++) fprintf(out, "  %-8s %s\n", t->name, t->summary);
}

int cmd_bench(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    usage(stdout);
    return 0;
  }
  for (const bench_target_t *t = TARGETS; t->name; t++)
    if (strcmp(argv[1], t->name) == 0) return t->run(argc - 1, argv + 1);
  /* `earshot bench --concurrency N ...` is the engine benchmark */
  if (strcmp(argv[1], "--concurrency") == 0) return bench_engine(argc, argv);
  fprintf(stderr, "earshot bench: unknown target '%s'\n\n", argv[1]);
  usage(stderr);
  return 2;
}
