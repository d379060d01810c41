/* audio_mel: Whisper log-mel features and the long-audio window policy. See audio_mel.h.
 *
 * ref: transformers WhisperFeatureExtractor._torch_extract_fbank_features and audio_utils.mel_filter_bank,
 * SPEC-qwen2-audio §2. Numerics: the filter bank is built in double with numpy's operation order, then cast
 * to float (the torch path does the same); the FFT is KissFFT in float32 like torch.stft's float32 pocketfft;
 * the mel projection exploits the filters' sparsity (each triangle spans at most 9 bins, 394 weights in all)
 * and sums in float32 like the reference's GEMM (whose reduction order BLAS chooses); log10 is a
 * vectorisable series within a few float ulps. Measured against the golden features (all fixtures): max
 * |diff| 1.6e-4, where transformers' own float32 result is 1.5e-4 from an exact float64 computation.
 * The max for the (max - 8) clamp runs over every one of the 128 x 3000 values, padding frames included:
 * conv1 of the encoder reads the first padding frame, so padding values must match too (SPEC §3.2).
 *
 * Thread safety: one mel_ctx_t per calling thread (KissFFT configs carry their own scratch); nothing global.
 * A context made for n threads splits the frames of each call into n contiguous ranges and runs them on
 * n - 1 short-lived threads plus the caller; every frame is computed the same way whatever the split, so
 * the output does not depend on n.
 */
#include "audio_mel.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <kissfft/kiss_fftr.h>

#define PAD (MEL_N_FFT / 2) /* center=True: 200 reflected samples on each side */
#define PI_D 3.14159265358979323846

#define MAX_THREADS 64
#define BLOCK 16 /* frames per transposed store */

/* One worker's private state: KissFFT configs hold scratch, so each thread has its own. */
typedef struct {
  kiss_fftr_cfg fft;
  float frame[MEL_N_FFT];        /* windowed samples of the current frame */
  kiss_fft_cpx spec[MEL_N_FREQ]; /* its one-sided spectrum */
  float power[MEL_N_FREQ];       /* |X|^2 */
  /* per call */
  const mel_ctx_t *ctx;
  const float *x;
  size_t n;
  float *out;
  int t0, t1; /* frames [t0, t1) */
  float max;  /* largest log10 value this worker wrote */
} mel_worker_t;

struct mel_ctx {
  float window[MEL_N_FFT]; /* periodic Hann */
  int filt_lo[MEL_N_MELS]; /* filter m is nonzero on bins [filt_lo[m], filt_lo[m] + filt_len[m]) */
  int filt_len[MEL_N_MELS];
  float filt_w[MEL_N_MELS][MEL_N_FREQ]; /* filt_w[m][j] = H[filt_lo[m] + j, m], float32 like the torch path */
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

static void build_filter_bank(mel_ctx_t *c) {
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
  for (int i = 0; i < n_threads; i++) {
    c->workers[i].fft = kiss_fftr_alloc(MEL_N_FFT, 0, NULL, NULL);
    if (!c->workers[i].fft) goto oom;
  }
  /* torch.hann_window(400) is periodic: 0.5 - 0.5 cos(2 pi n / 400) */
  for (int n = 0; n < MEL_N_FFT; n++)
    c->window[n] = (float)(0.5 - 0.5 * cos(2.0 * PI_D * (double)n / (double)MEL_N_FFT));
  build_filter_bank(c);
  *out = c;
  return ES_OK;
oom:
  mel_ctx_free(&c);
  return es_fail(err, ES_ENOMEM, "mel: out of memory for the feature context");
}

void mel_ctx_free(mel_ctx_t **ctx) {
  if (!ctx || !*ctx) return;
  mel_ctx_t *c = *ctx;
  for (int i = 0; c->workers && i < c->n_threads; i++) kiss_fftr_free(c->workers[i].fft);
  free(c->workers);
  free(c);
  *ctx = NULL;
}

int mel_ctx_threads(const mel_ctx_t *ctx) {
  return ctx ? ctx->n_threads : 0;
}

/* Sample i of the zero-padded 480000-sample window, reflect-extended (edge not repeated) for i < 0 and
 * i >= 480000 exactly as torch.stft(center=True, pad_mode="reflect") does on the padded signal. */
static inline float padded_sample(const float *x, size_t n, long i) {
  if (i < 0) i = -i;
  if (i >= MEL_WINDOW_SAMPLES) i = 2L * (MEL_WINDOW_SAMPLES - 1) - i;
  return (size_t)i < n ? x[i] : 0.0f;
}

/* log10(max(x, 1e-10)) for x >= +0 (mel energies are sums of non-negative products), branch-free so the
 * compiler vectorises it: the floor is an integer max on the bit pattern, which orders non-negative floats.
 * Within 2e-6 of log10f
 * (a few float ulps; the features' tolerance against transformers is 2e-4 on log10 / 4). x = m * 2^e with
 * m in [sqrt(1/2), sqrt(2)); ln m = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172, five series terms. */
#define LOG_FLOOR_BITS 0x2edbe6ffu /* 1e-10f */

static inline float log10_floored(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  u = u > LOG_FLOOR_BITS ? u : LOG_FLOOR_BITS;
  const uint32_t v = u + (0x3f800000u - 0x3f3504f3u); /* shifts the exponent boundary to sqrt(1/2) */
  const int e = (int)(v >> 23) - 127;
  const uint32_t um = (v & 0x007fffffu) + 0x3f3504f3u;
  float m;
  memcpy(&m, &um, sizeof m);
  const float f = m - 1.0f, s = f / (2.0f + f), z = s * s;
  const float ln_m = 2.0f * s * (1.0f + z * (1.0f / 3 + z * (1.0f / 5 + z * (1.0f / 7 + z * (1.0f / 9)))));
  const float ef = (float)e;
  const float ln_x = ef * 0.693145752f + (ef * 1.42860677e-06f + ln_m); /* ln 2 split hi + lo */
  return ln_x * 0.434294482f;
}

/* Frames [t0, t1): window, FFT, power, mel, log10 of max(mel, 1e-10) into out[m][t]; tracks the max. */
static void *mel_worker_run(void *arg) {
  mel_worker_t *w = arg;
  const mel_ctx_t *c = w->ctx;
  const float *x = w->x;
  const size_t n = w->n;
  float mx = -INFINITY;
  /* log-mel of up to BLOCK frames, frame-major; stored transposed into out a cache line per row at a time */
  float blk[BLOCK][MEL_N_MELS];
  for (int tb = w->t0; tb < w->t1; tb += BLOCK) {
    const int nb = w->t1 - tb < BLOCK ? w->t1 - tb : BLOCK;
    for (int b = 0; b < nb; b++) {
      const long start = (long)(tb + b) * MEL_HOP - PAD; /* first sample of the frame in window coordinates */
      int nonzero = 0;
      if (start >= 0 && (size_t)(start + MEL_N_FFT) <= n) {
        const float *xs = x + start;
        for (int j = 0; j < MEL_N_FFT; j++) {
          w->frame[j] = c->window[j] * xs[j];
          nonzero |= xs[j] != 0.0f;
        }
      } else {
        for (int j = 0; j < MEL_N_FFT; j++) {
          const float v = padded_sample(x, n, start + j);
          w->frame[j] = c->window[j] * v;
          nonzero |= v != 0.0f;
        }
      }
      float *mel = blk[b];
      if (nonzero) {
        kiss_fftr(w->fft, w->frame, w->spec);
        for (int k = 0; k < MEL_N_FREQ; k++) w->power[k] = w->spec[k].r * w->spec[k].r + w->spec[k].i * w->spec[k].i;
        for (int m = 0; m < MEL_N_MELS; m++) {
          const float *p = w->power + c->filt_lo[m], *fw = c->filt_w[m];
          float acc = 0.0f;
          for (int j = 0; j < c->filt_len[m]; j++) acc += fw[j] * p[j];
          mel[m] = acc;
        }
      } else {
        /* an all-zero frame has an exactly zero spectrum; skipping the FFT changes no bit */
        for (int m = 0; m < MEL_N_MELS; m++) mel[m] = 0.0f;
      }
      for (int m = 0; m < MEL_N_MELS; m++) mel[m] = log10_floored(mel[m]);
      for (int m = 0; m < MEL_N_MELS; m++) mx = mel[m] > mx ? mel[m] : mx; /* apart: keeps the log vectorised */
    }
    for (int m = 0; m < MEL_N_MELS; m++) {
      float *row = w->out + (size_t)m * MEL_N_FRAMES + tb;
      for (int b = 0; b < nb; b++) row[b] = blk[b][m];
    }
  }
  w->max = mx;
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
