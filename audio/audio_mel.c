/* audio_mel: Whisper log-mel features and the long-audio window policy. See audio_mel.h.
 *
 * ref: transformers WhisperFeatureExtractor._torch_extract_fbank_features and audio_utils.mel_filter_bank,
 * SPEC-qwen2-audio §2. Numerics: the filter bank is built in double with numpy's operation order, then cast
 * to float (the torch path does the same). The per-frame work (mel_kernel.c: window, a SIMD real DFT run
 * in double, power, the sparse mel projection with the float32 weights summed in double, one rounding to
 * float, a vectorised log10 within a few float ulps) is close to an exact float64 computation, so what is
 * left against the golden features is transformers' own float32 error: max |diff| 1.5e-4 over all fixtures
 * (alarm-clock-48k-stereo; 3.7e-5 or less elsewhere), where transformers' float32 result is 1.5e-4 from an
 * exact float64 computation. The float32 KissFFT used before gave 1.6e-4, and a float32 version of the
 * SIMD DFT 2.3e-4 (over the 2e-4 tolerance): quiet bins of loud frames carry float32 FFT noise.
 * The max for the (max - 8) clamp runs over every one of the 128 x 3000 values, padding frames included:
 * conv1 of the encoder reads the first padding frame, so padding values must match too (SPEC §3.2).
 *
 * Thread safety: one mel_ctx_t per calling thread (the per-call worker records live in it; the kernels keep
 * their scratch on their own stacks); nothing global.
 * A context made for n threads splits the frames of each call into n contiguous ranges and runs them on
 * n - 1 short-lived threads plus the caller; every frame is computed the same way whatever the split, so
 * the output does not depend on n.
 */
#include "audio_mel.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "mel_kernel.h"

#define MAX_THREADS 64

/* One worker's range of frames for the current call; the kernel keeps its scratch on its stack. */
typedef struct {
  const mel_ctx_t *ctx;
  const float *x;
  size_t n;
  float *out;
  int t0, t1; /* frames [t0, t1) */
  float max;  /* largest log10 value this worker wrote */
} mel_worker_t;

struct mel_ctx {
  mel_tables_t tables; /* window, twiddles, filter bank; read-only after init */
  mel_isa_t isa;       /* kernel variant, resolved at init (never AUTO) */
  int n_threads;
  mel_worker_t *workers; /* [n_threads] */
};

int mel_frames(size_t n_samples) {
  if (n_samples > MEL_WINDOW_SAMPLES) n_samples = MEL_WINDOW_SAMPLES;
  return (int)((n_samples + MEL_HOP - 1) / MEL_HOP);
}

int mel_audio_tokens(int frames) {
  if (frames <= 0) return 0;
  int t1 = (frames - 1) / 2 + 1;
  return t1 >= 2 ? (t1 - 2) / 2 + 1 : 0; /* (t1-2)//2 + 1 is 0 for t1 = 0, 1 under floor division */
}

/* Slaney mel scale (audio_utils.hertz_to_mel / mel_to_hertz with mel_scale="slaney"). */
static double hz_to_mel(double f) {
  if (f < 1000.0) return 3.0 * f / 200.0;
  return 15.0 + log(f / 1000.0) * (27.0 / log(6.4));
}

static double mel_to_hz(double m) {
  if (m < 15.0) return 200.0 * m / 3.0;
  return 1000.0 * exp((log(6.4) / 27.0) * (m - 15.0));
}

/* numpy.linspace(start, stop, num)[i]: i * ((stop - start) / (num - 1)) + start, the last value exactly stop. */
static double linspace_at(double start, double stop, int num, int i) {
  if (i == num - 1) return stop;
  return (double)i * ((stop - start) / (double)(num - 1)) + start;
}

static void build_filter_bank(mel_tables_t *c) {
  double f_edge[MEL_N_MELS + 2];
  const double mel_lo = hz_to_mel(0.0), mel_hi = hz_to_mel(MEL_SAMPLE_RATE / 2.0);
  for (int i = 0; i < MEL_N_MELS + 2; i++) f_edge[i] = mel_to_hz(linspace_at(mel_lo, mel_hi, MEL_N_MELS + 2, i));
  for (int m = 0; m < MEL_N_MELS; m++) {
    /* _create_triangular_filter_bank: slopes = f_edge - fft_freq; down = -slopes[m] / diff[m];
     * up = slopes[m+2] / diff[m+1]; H = max(0, min(down, up)); then slaney enorm = 2 / (f[m+2] - f[m]). */
    const double d_lo = f_edge[m + 1] - f_edge[m], d_hi = f_edge[m + 2] - f_edge[m + 1];
    const double enorm = 2.0 / (f_edge[m + 2] - f_edge[m]);
    int lo = -1, hi = -1;
    float w[MEL_N_FREQ];
    for (int k = 0; k < MEL_N_FREQ; k++) {
      const double nu = linspace_at(0.0, MEL_SAMPLE_RATE / 2, MEL_N_FREQ, k);
      const double down = -(f_edge[m] - nu) / d_lo, up = (f_edge[m + 2] - nu) / d_hi;
      double h = fmin(down, up);
      if (h < 0.0) h = 0.0;
      w[k] = (float)(h * enorm);
      if (w[k] != 0.0f) {
        if (lo < 0) lo = k;
        hi = k;
      }
    }
    if (lo < 0) lo = hi = 0; /* cannot happen for 128 filters over 201 bins; keeps the loop bounds sane */
    if (hi - lo >= MEL_FILT_MAX) hi = lo + MEL_FILT_MAX - 1; /* cannot happen either (<= 9 bins) */
    c->filt_lo[m] = lo;
    c->filt_len[m] = hi - lo + 1;
    for (int j = 0; j <= hi - lo; j++) c->filt_w[m][j] = w[lo + j];
  }
}

int mel_ctx_init(mel_ctx_t **out, int n_threads, es_error_t *err) {
  *out = NULL;
  if (n_threads < 1) n_threads = 1;
  if (n_threads > MAX_THREADS) n_threads = MAX_THREADS;
  mel_ctx_t *c = calloc(1, sizeof *c);
  if (!c) return es_fail(err, ES_ENOMEM, "mel: out of memory for the feature context");
  c->workers = calloc((size_t)n_threads, sizeof *c->workers);
  if (!c->workers) goto oom;
  c->n_threads = n_threads;
  c->isa = mel_isa_resolve(MEL_ISA_AUTO);
  mel_tables_init_fft(&c->tables);
  build_filter_bank(&c->tables);
  *out = c;
  return ES_OK;
oom:
  mel_ctx_free(&c);
  return es_fail(err, ES_ENOMEM, "mel: out of memory for the feature context");
}

void mel_ctx_free(mel_ctx_t **ctx) {
  if (!ctx || !*ctx) return;
  mel_ctx_t *c = *ctx;
  free(c->workers);
  free(c);
  *ctx = NULL;
}

int mel_ctx_threads(const mel_ctx_t *ctx) {
  return ctx ? ctx->n_threads : 0;
}

int mel_ctx_set_isa(mel_ctx_t *ctx, mel_isa_t isa, es_error_t *err) {
  if (!ctx) return es_fail(err, ES_EINVAL, "mel: null context");
  if (!mel_isa_supported(isa))
    return es_fail(err, ES_EINVAL, "mel: kernel variant '%s' is not supported by this CPU or build", mel_isa_name(isa));
  ctx->isa = mel_isa_resolve(isa);
  return ES_OK;
}

mel_isa_t mel_ctx_isa(const mel_ctx_t *ctx) {
  return ctx->isa;
}

static void *mel_worker_run(void *arg) {
  mel_worker_t *w = arg;
  w->max = mel_kernel_frames(w->ctx->isa, &w->ctx->tables, w->x, w->n, w->t0, w->t1, w->out);
  return NULL;
}

int mel_compute(mel_ctx_t *ctx, const float *samples, size_t n, float *out, int *frames, int *audio_tokens,
                es_error_t *err) {
  if (!ctx || !out || (n > 0 && !samples)) return es_fail(err, ES_EINVAL, "mel: null argument");
  if (n > MEL_WINDOW_SAMPLES)
    return es_fail(err, ES_EINVAL, "mel: window of %zu samples is longer than %d (cut windows first)", n,
                   MEL_WINDOW_SAMPLES);

  /* Frames split into contiguous ranges, one per worker; worker 0 runs on the calling thread. A thread
   * that cannot be started leaves its range to the caller, so the result never depends on threading. */
  const int nt = ctx->n_threads;
  pthread_t tid[MAX_THREADS];
  int started[MAX_THREADS] = {0};
  for (int i = 0; i < nt; i++) {
    mel_worker_t *w = &ctx->workers[i];
    w->ctx = ctx;
    w->x = samples;
    w->n = n;
    w->out = out;
    w->t0 = (int)((long)MEL_N_FRAMES * i / nt);
    w->t1 = (int)((long)MEL_N_FRAMES * (i + 1) / nt);
    w->max = -INFINITY;
    if (i > 0) started[i] = pthread_create(&tid[i], NULL, mel_worker_run, w) == 0;
  }
  mel_worker_run(&ctx->workers[0]);
  float mx = ctx->workers[0].max;
  for (int i = 1; i < nt; i++) {
    if (started[i])
      pthread_join(tid[i], NULL);
    else
      mel_worker_run(&ctx->workers[i]);
    if (ctx->workers[i].max > mx) mx = ctx->workers[i].max;
  }

  /* max(x, M - 8) with M over all 128 x 3000 values (padding frames included), then (x + 4) / 4 */
  const size_t total = (size_t)MEL_N_MELS * MEL_N_FRAMES;
  const float lo = mx - 8.0f;
  for (size_t i = 0; i < total; i++) out[i] = ((out[i] > lo ? out[i] : lo) + 4.0f) / 4.0f;

  const int f = mel_frames(n);
  if (frames) *frames = f;
  if (audio_tokens) *audio_tokens = mel_audio_tokens(f);
  return ES_OK;
}

int audio_long_policy_parse(const char *s, audio_long_policy_t *out, es_error_t *err) {
  if (s && strcmp(s, "truncate") == 0) {
    *out = AUDIO_LONG_TRUNCATE;
    return ES_OK;
  }
  if (s && strcmp(s, "split") == 0) {
    *out = AUDIO_LONG_SPLIT;
    return ES_OK;
  }
  return es_fail(err, ES_EINVAL, "long-audio policy '%s': expected 'truncate' or 'split'", s ? s : "(null)");
}

const char *audio_long_policy_name(audio_long_policy_t p) {
  return p == AUDIO_LONG_SPLIT ? "split" : "truncate";
}

int audio_windows(size_t n_samples, audio_long_policy_t policy, audio_window_t *out, size_t cap, size_t *n_windows,
                  es_error_t *err) {
  *n_windows = 0;
  if (n_samples == 0) return es_fail(err, ES_EINVAL, "long-audio windows: the audio has no samples");
  if (policy != AUDIO_LONG_TRUNCATE && policy != AUDIO_LONG_SPLIT)
    return es_fail(err, ES_EINVAL, "long-audio windows: unknown policy %d", (int)policy);
  size_t count = 1;
  if (policy == AUDIO_LONG_SPLIT) {
    count = (n_samples + MEL_WINDOW_SAMPLES - 1) / MEL_WINDOW_SAMPLES;
    const size_t last = n_samples - (count - 1) * MEL_WINDOW_SAMPLES;
    if (count > 1 && mel_audio_tokens(mel_frames(last)) == 0) count--; /* a tail that yields no token */
  }
  *n_windows = count;
  if (!out) return ES_OK;
  if (cap < count)
    return es_fail(err, ES_ETOOBIG, "long-audio windows: %zu windows do not fit in %zu slots", count, cap);
  for (size_t k = 0; k < count; k++) {
    const size_t off = k * MEL_WINDOW_SAMPLES, rest = n_samples - off;
    out[k].offset = off;
    out[k].count = rest < MEL_WINDOW_SAMPLES ? rest : MEL_WINDOW_SAMPLES;
    out[k].frames = mel_frames(out[k].count);
    out[k].audio_tokens = mel_audio_tokens(out[k].frames);
  }
  return ES_OK;
}
