/* test_audio_mel: log-mel features, F and N, and the long-audio policy against the golden fixtures.
 *
 * For every audio of tests/golden/fixtures/manifest.json and both policies: the windows audio_windows cuts
 * equal the recorded ones (offset, count, F, N), and mel_compute on the recorded 16 kHz samples gives the
 * transformers features to max |diff| <= 2e-4 over all [128, 3000] values (padding frames included).
 * Every kernel variant this CPU runs (generic, AVX2, AVX-512, forced one by one) gives the same bits on
 * every golden window, and its DFT is within one float ulp (plus a 1e-12 relative floor) of a naive
 * double-precision DFT on random and adversarial frames.
 * Plus the length formulas at their edges (< 1 s, exactly 30 s, > 30 s), policy parsing, bad arguments,
 * and threads computing features at once. Pure C: runs on a bare GPU machine too (no FFmpeg).
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "audio_mel.h"
#include "golden.h"
#include "mel_kernel.h"
#include "test_util.h"

#define MEL_TOL 2e-4f
#define MEL_SIZE ((size_t)MEL_N_MELS * MEL_N_FRAMES)

static golden_t G;
static es_error_t E;
static const mel_isa_t ISAS[] = {MEL_ISA_GENERIC, MEL_ISA_AVX2, MEL_ISA_AVX512};
#define N_ISAS (sizeof ISAS / sizeof ISAS[0])

static float max_abs_diff(const float *a, const float *b, size_t n, size_t *at) {
  float m = 0.0f;
  *at = 0;
  for (size_t i = 0; i < n; i++) {
    float d = a[i] - b[i];
    if (d < 0) d = -d;
    if (d > m || d != d) {
      m = d;
      *at = i;
    }
  }
  return m;
}

/* The features of every other supported kernel variant equal ctx's bit for bit. */
static void check_isas_agree(const float *x, size_t n, const float *ours, float *alt, const char *id) {
  for (size_t i = 0; i < N_ISAS; i++) {
    if (!mel_isa_supported(ISAS[i])) continue;
    mel_ctx_t *c = NULL;
    int rc = mel_ctx_init(&c, 1, &E);
    if (!rc) rc = mel_ctx_set_isa(c, ISAS[i], &E);
    if (!rc) rc = mel_compute(c, x, n, alt, NULL, NULL, &E);
    T_CHECK(rc == 0, "%s/%s: %s", id, mel_isa_name(ISAS[i]), E.msg);
    T_CHECK(rc || memcmp(ours, alt, MEL_SIZE * sizeof(float)) == 0, "%s: kernel %s differs from %s", id,
            mel_isa_name(ISAS[i]), mel_isa_name(mel_ctx_isa(c)));
    mel_ctx_free(&c);
  }
}

static void check_audio(mel_ctx_t *ctx, const char *id, const cJSON *audio, float *ours, float *ref) {
  npy_array_t s = {0};
  T_REQUIRE(golden_read_samples(&G, audio, &s, &E) == 0, "%s: %s", id, E.msg);
  const cJSON *windows = cJSON_GetObjectItemCaseSensitive(audio, "windows");
  const char *policies[] = {"truncate", "split"};
  for (int p = 0; p < 2; p++) {
    audio_long_policy_t pol;
    T_CHECK(audio_long_policy_parse(policies[p], &pol, &E) == 0, "%s", E.msg);
    const cJSON *want = cJSON_GetObjectItemCaseSensitive(windows, policies[p]);
    if (!cJSON_IsArray(want)) {
      T_CHECK(0, "%s: windows.%s missing", id, policies[p]);
      continue;
    }
    audio_window_t win[16];
    size_t nw = 0;
    int rc = audio_windows((size_t)s.count, pol, win, 16, &nw, &E);
    T_CHECK(rc == 0, "%s: %s", id, E.msg);
    T_CHECK(nw == (size_t)cJSON_GetArraySize(want), "%s/%s: %zu windows, golden has %d", id, policies[p], nw,
            cJSON_GetArraySize(want));
    for (size_t k = 0; rc == 0 && k < nw && k < (size_t)cJSON_GetArraySize(want); k++) {
      const cJSON *w = cJSON_GetArrayItem(want, (int)k);
      int64_t off = -1, cnt = -1, F = -1, N = -1;
      golden_get_int(w, "sample_offset", &off, &E);
      golden_get_int(w, "sample_count", &cnt, &E);
      golden_get_int(w, "frames", &F, &E);
      golden_get_int(w, "audio_tokens", &N, &E);
      T_CHECK((int64_t)win[k].offset == off && (int64_t)win[k].count == cnt,
              "%s/%s[%zu]: window [%zu,+%zu), golden [%lld,+%lld)", id, policies[p], k, win[k].offset, win[k].count,
              (long long)off, (long long)cnt);
      T_CHECK(win[k].frames == F && win[k].audio_tokens == N, "%s/%s[%zu]: F=%d N=%d, golden F=%lld N=%lld", id,
              policies[p], k, win[k].frames, win[k].audio_tokens, (long long)F, (long long)N);
      if (off < 0 || cnt <= 0 || off + cnt > s.count) continue;
      int f = -1, n = -1;
      rc = mel_compute(ctx, (const float *)s.data + off, (size_t)cnt, ours, &f, &n, &E);
      T_CHECK(rc == 0, "%s: %s", id, E.msg);
      T_CHECK(f == F && n == N, "%s/%s[%zu]: mel_compute F=%d N=%d, golden %lld %lld", id, policies[p], k, f, n,
              (long long)F, (long long)N);
      if (golden_read_mel(&G, w, ref, &E)) {
        T_CHECK(0, "%s: %s", id, E.msg);
        continue;
      }
      size_t at;
      float d = max_abs_diff(ours, ref, MEL_SIZE, &at);
      T_CHECK(d <= MEL_TOL, "%s/%s[%zu]: max |diff| %g at bin %zu frame %zu (ours %g, golden %g)", id, policies[p], k,
              (double)d, at / MEL_N_FRAMES, at % MEL_N_FRAMES, (double)ours[at], (double)ref[at]);
      printf("%-26s %-8s [%zu] F=%4d N=%3d  max|diff| %.3g\n", id, policies[p], k, f, n, (double)d);
      check_isas_agree((const float *)s.data + off, (size_t)cnt, ours, ref, id); /* ref is free again */
    }
  }
  npy_free(&s);
}

static void check_golden(void) {
  int rc = golden_open(&G, ES_SOURCE_DIR, &E);
  T_REQUIRE(rc == 0, "%s", E.msg);
  mel_ctx_t *ctx = NULL;
  float *ours = malloc(MEL_SIZE * sizeof(float)), *ref = malloc(MEL_SIZE * sizeof(float));
  if (mel_ctx_init(&ctx, 1, &E) == 0 && ours && ref) {
    printf("kernel: %s (default); compared with every supported variant\n", mel_isa_name(mel_ctx_isa(ctx)));
    const cJSON *audios = cJSON_GetObjectItemCaseSensitive(G.manifest, "audios"), *a;
    T_CHECK(cJSON_GetArraySize(audios) >= 8, "manifest: expected >= 8 audios");
    cJSON_ArrayForEach(a, audios) check_audio(ctx, a->string, a, ours, ref);
  } else {
    T_CHECK(0, "setup: %s", E.msg);
  }
  mel_ctx_free(&ctx);
  mel_ctx_free(&ctx); /* a second free is a no-op */
  free(ours);
  free(ref);
  golden_close(&G);
}

/* SPEC §3.1 worked values and the edges of both policies. */
static void check_lengths(void) {
  T_CHECK(mel_frames(1) == 1 && mel_frames(160) == 1 && mel_frames(161) == 2, "F = ceil(L/160) at small L");
  T_CHECK(mel_frames(16000) == 100 && mel_audio_tokens(100) == 25, "1 s: F=100 N=25");
  T_CHECK(mel_frames(160000) == 1000 && mel_audio_tokens(1000) == 250, "10 s: N=250");
  T_CHECK(mel_frames(480000) == 3000 && mel_audio_tokens(3000) == 750, "30 s: F=3000 N=750");
  T_CHECK(mel_frames(480001) == 3000, "F capped at 3000");
  T_CHECK(mel_audio_tokens(mel_frames(320)) == 0 && mel_audio_tokens(mel_frames(321)) == 1, "N: 320 -> 0, 321 -> 1");
  T_CHECK(mel_audio_tokens(mel_frames(960)) == 1 && mel_audio_tokens(mel_frames(961)) == 2, "N: 960 -> 1, 961 -> 2");
  T_CHECK(mel_audio_tokens(mel_frames(1600)) == 2 && mel_audio_tokens(mel_frames(1601)) == 3, "N: 1600/1601");
  T_CHECK(mel_audio_tokens(0) == 0 && mel_audio_tokens(1) == 0 && mel_audio_tokens(2) == 0, "N(F<=2) = 0");

  struct {
    size_t n;
    audio_long_policy_t p;
    size_t windows;
    size_t last_count;
    int last_F, last_N;
  } cases[] = {
      {8000, AUDIO_LONG_TRUNCATE, 1, 8000, 50, 12}, /* 0.5 s */
      {8000, AUDIO_LONG_SPLIT, 1, 8000, 50, 12},
      {200, AUDIO_LONG_SPLIT, 1, 200, 2, 0}, /* tiny: kept, the same under both policies */
      {200, AUDIO_LONG_TRUNCATE, 1, 200, 2, 0},
      {480000, AUDIO_LONG_TRUNCATE, 1, 480000, 3000, 750}, /* exactly 30 s */
      {480000, AUDIO_LONG_SPLIT, 1, 480000, 3000, 750},
      {1039338, AUDIO_LONG_TRUNCATE, 1, 480000, 3000, 750}, /* 65 s */
      {1039338, AUDIO_LONG_SPLIT, 3, 79338, 496, 124},
      {480320, AUDIO_LONG_SPLIT, 1, 480000, 3000, 750}, /* a 320-sample tail yields N = 0: dropped */
      {480321, AUDIO_LONG_SPLIT, 2, 321, 3, 1},         /* 321 samples: N = 1, kept */
      {960000, AUDIO_LONG_SPLIT, 2, 480000, 3000, 750},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    audio_window_t w[4];
    size_t nw = 0, counted = 0;
    int rc = audio_windows(cases[i].n, cases[i].p, NULL, 0, &counted, &E);
    if (!rc) rc = audio_windows(cases[i].n, cases[i].p, w, 4, &nw, &E);
    T_CHECK(rc == 0 && nw == cases[i].windows && counted == nw, "n=%zu %s: %zu windows (counted %zu), want %zu",
            cases[i].n, audio_long_policy_name(cases[i].p), nw, counted, cases[i].windows);
    if (rc || nw == 0) continue;
    const audio_window_t *l = &w[nw - 1];
    T_CHECK(l->count == cases[i].last_count && l->frames == cases[i].last_F && l->audio_tokens == cases[i].last_N &&
                l->offset == (nw - 1) * (size_t)MEL_WINDOW_SAMPLES,
            "n=%zu %s: last window [%zu,+%zu) F=%d N=%d", cases[i].n, audio_long_policy_name(cases[i].p), l->offset,
            l->count, l->frames, l->audio_tokens);
  }
  audio_window_t one[1];
  size_t nw;
  T_CHECK(audio_windows(1039338, AUDIO_LONG_SPLIT, one, 1, &nw, &E) == ES_ETOOBIG, "cap too small is an error");
  T_CHECK(audio_windows(0, AUDIO_LONG_TRUNCATE, one, 1, &nw, &E) == ES_EINVAL, "no samples is an error");
}

static void check_args(void) {
  audio_long_policy_t p = AUDIO_LONG_SPLIT;
  T_CHECK(audio_long_policy_parse("truncate", &p, &E) == 0 && p == AUDIO_LONG_TRUNCATE, "parse truncate");
  T_CHECK(audio_long_policy_parse("split", &p, &E) == 0 && p == AUDIO_LONG_SPLIT, "parse split");
  T_CHECK(audio_long_policy_parse("chunk", &p, &E) == ES_EINVAL && strstr(E.msg, "'chunk'") &&
              strstr(E.msg, "truncate"),
          "bad policy: %s", E.msg);
  T_CHECK(audio_long_policy_parse(NULL, &p, &E) == ES_EINVAL, "NULL policy");
  T_CHECK(strcmp(audio_long_policy_name(AUDIO_LONG_SPLIT), "split") == 0, "name");

  mel_ctx_t *ctx = NULL;
  T_REQUIRE(mel_ctx_init(&ctx, 1, &E) == 0, "%s", E.msg);
  float *out = malloc(MEL_SIZE * sizeof(float)), *x = calloc(MEL_WINDOW_SAMPLES + 1, sizeof(float));
  if (out && x) {
    T_CHECK(mel_compute(ctx, x, MEL_WINDOW_SAMPLES + 1, out, NULL, NULL, &E) == ES_EINVAL, "too long a window");
    /* silence: every value is log10(1e-10) = -10 -> (-10 + 4) / 4 = -1.5 */
    int f = -1, n = -1;
    T_CHECK(mel_compute(ctx, x, 1000, out, &f, &n, &E) == 0 && f == 7 && n == 2, "silence F=%d N=%d", f, n);
    int all = 1;
    for (size_t i = 0; i < MEL_SIZE; i++) all &= out[i] == -1.5f;
    T_CHECK(all, "silence gives -1.5 everywhere");
    T_CHECK(mel_compute(ctx, NULL, 0, out, &f, &n, &E) == 0 && f == 0 && n == 0, "empty window F=%d N=%d", f, n);
  }
  free(out);
  free(x);
  mel_ctx_free(&ctx);
  mel_ctx_free(NULL);
}

/* Two threads, each with its own context (one of them itself splitting frames over 7 threads: ranges
 * that are not whole SIMD blocks), on different inputs: the results equal single-threaded ones bit for bit. */
typedef struct {
  const float *x;
  size_t n;
  float *out;
  int threads;
  int rc;
} job_t;

static void *run_job(void *arg) {
  job_t *j = arg;
  mel_ctx_t *ctx = NULL;
  es_error_t e;
  j->rc = mel_ctx_init(&ctx, j->threads, &e);
  for (int r = 0; j->rc == 0 && r < 3; r++) j->rc = mel_compute(ctx, j->x, j->n, j->out, NULL, NULL, &e);
  mel_ctx_free(&ctx);
  return NULL;
}

static void check_threads(void) {
  const size_t n = 48000;
  float *x = malloc(2 * n * sizeof(float)), *seq = malloc(2 * MEL_SIZE * sizeof(float)),
        *par = malloc(2 * MEL_SIZE * sizeof(float));
  T_REQUIRE(x && seq && par, "out of memory");
  uint32_t s = 12345;
  for (size_t i = 0; i < 2 * n; i++) {
    s = s * 1664525u + 1013904223u;
    x[i] = (float)((double)(s >> 8) / 16777216.0 - 0.5) * (i < n ? 0.1f : 0.9f);
  }
  job_t jobs[2];
  for (int k = 0; k < 2; k++) {
    jobs[k] = (job_t){x + k * n, n, seq + k * MEL_SIZE, 1, -1};
    run_job(&jobs[k]);
  }
  pthread_t th[2];
  for (int k = 0; k < 2; k++) {
    jobs[k] = (job_t){x + k * n, n, par + k * MEL_SIZE, k == 0 ? 7 : 1, -1};
    T_CHECK(pthread_create(&th[k], NULL, run_job, &jobs[k]) == 0, "pthread_create");
  }
  for (int k = 0; k < 2; k++) pthread_join(th[k], NULL);
  T_CHECK(jobs[0].rc == 0 && jobs[1].rc == 0, "threaded mel_compute failed");
  T_CHECK(memcmp(seq, par, 2 * MEL_SIZE * sizeof(float)) == 0, "threaded results differ from sequential");
  free(x);
  free(seq);
  free(par);
}

/* The kernel's real DFT against a naive one in double (exact twiddles by index reduction mod 400): each
 * bin within one float ulp of the exact value plus 1e-12 of sum |x| (the kernel runs in double and rounds
 * the spectrum once; a float FFT misses this on quiet bins by orders of magnitude). Frames: random, a
 * loud tone with a 1e-6 one beside it, an impulse, a constant, the Nyquist alternation, silence. */
static void check_dft(void) {
  enum { NF = 13 }; /* not a multiple of any lane count */
  mel_tables_t *tb = malloc(sizeof *tb);
  float *x = malloc(sizeof(float) * NF * MEL_N_FFT), *re = malloc(sizeof(float) * NF * MEL_N_FREQ),
        *im = malloc(sizeof(float) * NF * MEL_N_FREQ), *re0 = malloc(sizeof(float) * NF * MEL_N_FREQ),
        *im0 = malloc(sizeof(float) * NF * MEL_N_FREQ);
  double *ref = malloc(sizeof(double) * NF * MEL_N_FREQ * 2);
  T_REQUIRE(tb && x && re && im && re0 && im0 && ref, "out of memory");
  mel_tables_init_fft(tb);
  uint32_t s = 777;
  for (int f = 0; f < NF; f++) {
    for (int j = 0; j < MEL_N_FFT; j++) {
      s = s * 1664525u + 1013904223u;
      const double u = (double)(s >> 8) / 16777216.0 - 0.5, t = 2.0 * 3.14159265358979323846 * j / MEL_N_FFT;
      float v;
      switch (f) {
      case 1: v = (float)(0.9 * cos(37 * t) + 1e-6 * sin(113 * t)); break;
      case 2: v = j == 123 ? 1.0f : 0.0f; break;
      case 3: v = 0.25f; break;
      case 4: v = (j & 1) ? -1.0f : 1.0f; break;
      case 5: v = 0.0f; break;
      default: v = (float)(u * (f == 6 ? 1e-4 : 1.0)); break;
      }
      x[f * MEL_N_FFT + j] = v;
    }
    for (int k = 0; k < MEL_N_FREQ; k++) {
      double sr = 0, si = 0;
      for (int j = 0; j < MEL_N_FFT; j++) {
        const double a = -2.0 * 3.14159265358979323846 * (double)((j * k) % MEL_N_FFT) / MEL_N_FFT;
        sr += x[f * MEL_N_FFT + j] * cos(a);
        si += x[f * MEL_N_FFT + j] * sin(a);
      }
      ref[2 * (f * MEL_N_FREQ + k)] = sr;
      ref[2 * (f * MEL_N_FREQ + k) + 1] = si;
    }
  }
  int first = 1;
  for (size_t i = 0; i < N_ISAS; i++) {
    if (!mel_isa_supported(ISAS[i])) {
      printf("dft: kernel %s not supported here, skipped\n", mel_isa_name(ISAS[i]));
      continue;
    }
    mel_kernel_rdft(ISAS[i], tb, x, NF, re, im);
    double worst = 0; /* in units of the allowed error */
    for (int f = 0; f < NF; f++) {
      double l1 = 0;
      for (int j = 0; j < MEL_N_FFT; j++) l1 += fabs(x[f * MEL_N_FFT + j]);
      for (int k = 0; k < MEL_N_FREQ; k++) {
        const size_t at = (size_t)f * MEL_N_FREQ + k;
        const double rr = ref[2 * at], ri = ref[2 * at + 1];
        const double er = fabs(re[at] - rr) / (fabs(rr) * 0x1p-23 + 1e-12 * l1 + 1e-30);
        const double ei = fabs(im[at] - ri) / (fabs(ri) * 0x1p-23 + 1e-12 * l1 + 1e-30);
        worst = fmax(worst, fmax(er, ei));
      }
    }
    T_CHECK(worst <= 1.0, "dft %s: error %.3g times the allowed", mel_isa_name(ISAS[i]), worst);
    printf("dft: kernel %-8s worst error %.3f of (1 float ulp + 1e-12 sum|x|)\n", mel_isa_name(ISAS[i]), worst);
    if (first) {
      memcpy(re0, re, sizeof(float) * NF * MEL_N_FREQ);
      memcpy(im0, im, sizeof(float) * NF * MEL_N_FREQ);
      first = 0;
    } else {
      T_CHECK(memcmp(re0, re, sizeof(float) * NF * MEL_N_FREQ) == 0 &&
                  memcmp(im0, im, sizeof(float) * NF * MEL_N_FREQ) == 0,
              "dft: kernel %s differs from generic", mel_isa_name(ISAS[i]));
    }
  }
  /* a variant this build does not know is refused */
  mel_ctx_t *ctx = NULL;
  T_REQUIRE(mel_ctx_init(&ctx, 1, &E) == 0, "%s", E.msg);
  T_CHECK(mel_ctx_set_isa(ctx, (mel_isa_t)99, &E) == ES_EINVAL, "unknown kernel variant accepted");
  T_CHECK(mel_ctx_set_isa(ctx, MEL_ISA_AUTO, &E) == 0 && mel_ctx_isa(ctx) != MEL_ISA_AUTO, "auto resolves");
  mel_ctx_free(&ctx);
  free(tb);
  free(x);
  free(re);
  free(im);
  free(re0);
  free(im0);
  free(ref);
}

int main(void) {
  check_lengths();
  check_args();
  check_threads();
  check_dft();
  check_golden();
  return t_finish();
}
