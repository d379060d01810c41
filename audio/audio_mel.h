/* audio_mel: Whisper log-mel features of 16 kHz mono audio, as Qwen2-Audio's processor computes them, and the
 * long-audio window policy.
 *
 * ref: transformers WhisperFeatureExtractor called by Qwen2AudioProcessor (torch path), SPEC-qwen2-audio §2, §3.1.
 * One window is at most 480000 samples (30 s); it is zero-padded to 480000, reflect-padded by 200 on each side,
 * framed with a periodic Hann window (n_fft 400, hop 160), turned into a power spectrum, 128 Slaney mel filters
 * over 0-8000 Hz, log10 with a 1e-10 floor, clamped to (max - 8) with the max over the whole [128, 3000] matrix
 * (padding frames included), then (x + 4) / 4. The last STFT frame is dropped: 3000 frames.
 *
 * Pure C (its own SIMD real DFT, mel_kernel.c); no FFmpeg or FFT library, so it builds on a bare GPU machine.
 *
 * Thread safety: a mel_ctx_t holds per-call worker state and is used by one calling
 * thread at a time; create one per thread. The functions without a context keep no state.
 */
#pragma once

#include <stddef.h>

#include "es_error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MEL_SAMPLE_RATE 16000
#define MEL_WINDOW_SAMPLES 480000 /* 30 s: the processor pads or truncates every audio to this */
#define MEL_N_FFT 400
#define MEL_HOP 160
#define MEL_N_FREQ (MEL_N_FFT / 2 + 1) /* 201 one-sided bins */
#define MEL_N_MELS 128
#define MEL_N_FRAMES 3000 /* 1 + 480000/160 STFT frames, the last one dropped */

/* ---- lengths (SPEC §3.1) ---------------------------------------------------------------------------- */

/* Valid mel frames of a window of n samples: F = ceil(min(n, 480000) / 160), 0..3000. */
int mel_frames(size_t n_samples);

/* Audio tokens the encoder produces for F valid frames: T1 = (F-1)//2 + 1, N = (T1-2)//2 + 1 (Python floor
 * division), i.e. floor(ceil(F/2)/2): 0 for F <= 2 (L <= 320 samples), 25 per second, 750 for F = 3000. */
int mel_audio_tokens(int frames);

/* ---- features --------------------------------------------------------------------------------------- */

typedef struct mel_ctx mel_ctx_t; /* opaque: window, filter bank, FFT config, scratch */

/* Creates a context: the periodic Hann window and the Slaney filter bank (computed in double, as
 * transformers' audio_utils.mel_filter_bank does, then cast to float). n_threads (1..64, < 1 means 1):
 * each mel_compute splits its frames over that many threads (the caller's plus n - 1 started per call);
 * the features are bit-identical for every n. */
int mel_ctx_init(mel_ctx_t **out, int n_threads, es_error_t *err);
int mel_ctx_threads(const mel_ctx_t *ctx);
/* Frees *ctx and sets it to NULL; NULL or *ctx == NULL is a no-op. */
void mel_ctx_free(mel_ctx_t **ctx);

/* Features of one window: samples[0..n) with n <= 480000 (longer input is an error: cut windows with
 * audio_windows first). out is float32 [128, 3000], row-major (mel bin, frame), written entirely.
 * *frames (F) and *audio_tokens (N) are set when not NULL. */
int mel_compute(mel_ctx_t *ctx, const float *samples, size_t n, float *out, int *frames, int *audio_tokens,
                es_error_t *err);

/* ---- long audio ------------------------------------------------------------------------------------- */

/* What to do with audio longer than one 30 s window; one name everywhere (`--long-audio`, the request
 * field `long_audio`). */
typedef enum {
  AUDIO_LONG_TRUNCATE = 0, /* keep the first 30 s, like transformers and vLLM (the default) */
  AUDIO_LONG_SPLIT = 1,    /* consecutive 30 s windows, the last one shorter; they stay one audio item */
} audio_long_policy_t;

/* Parses "truncate" or "split"; anything else is ES_EINVAL naming the value. */
int audio_long_policy_parse(const char *s, audio_long_policy_t *out, es_error_t *err);
const char *audio_long_policy_name(audio_long_policy_t p);

typedef struct {
  size_t offset;    /* first sample of the window in the whole audio */
  size_t count;     /* samples in the window, 1..480000 */
  int frames;       /* F */
  int audio_tokens; /* N */
} audio_window_t;

/* The windows of an audio of n_samples (>= 1) under policy. truncate: one window [0, min(n, 480000)).
 * split: [0, 480000), [480000, 960000), ..., the last one shorter; a final window with N = 0 (<= 320
 * samples) is dropped unless it is the only one (a tiny audio is then the same under both policies).
 * With out == NULL only *n_windows is set; otherwise at most cap windows are written and ES_ETOOBIG
 * is returned when cap is too small. */
int audio_windows(size_t n_samples, audio_long_policy_t policy, audio_window_t *out, size_t cap, size_t *n_windows,
                  es_error_t *err);

#ifdef __cplusplus
}
#endif
