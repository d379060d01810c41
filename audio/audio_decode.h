/* audio_decode: any audio file or in-memory upload -> 16 kHz mono float32, with FFmpeg 5.1.
 *
 * ref: API-NOTES §B1. The samples are bit-identical to `ffmpeg -nostdin -i X -ac 1 -ar 16000 -f f32le -`
 * (what Qwen's evaluation and the golden fixtures use): libswresample with its default settings does the
 * rate, format and channel conversion in one step. Its mono downmix is not a plain average (stereo gives
 * (L + R) / sqrt(2), centre and surround channels have their own weights); AUDIO_DOWNMIX_AVERAGE averages
 * the channels instead, as librosa does.
 *
 * Inputs are untrusted. A file is read into memory (at most max_input_bytes) and decoded exactly like an
 * upload, through custom I/O with a seek callback; nothing is written to disk and demuxers that would open
 * further URLs or files (playlists, concat) are refused. Work is bounded: input bytes, decoded duration,
 * bytes served to the demuxer and packets read all have caps, so crafted input cannot make decoding loop or
 * run unbounded. Every failure is an ES_E* code with a message naming the input and the problem.
 *
 * Thread safety: no shared mutable state; concurrent calls on different outputs are safe.
 * audio_decode_global_init sets FFmpeg's process-wide limits and log level once at start-up.
 */
#pragma once

#include <stddef.h>

#include "es_error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define AUDIO_SAMPLE_RATE 16000

typedef enum {
  AUDIO_DOWNMIX_FFMPEG = 0,  /* libswresample's default matrix: bit-identical to the ffmpeg CLI (default) */
  AUDIO_DOWNMIX_AVERAGE = 1, /* mean of the channels (librosa's to_mono), then resampled */
} audio_downmix_t;

typedef struct {
  size_t max_input_bytes; /* larger inputs fail with ES_ETOOBIG; 0 = AUDIO_DEFAULT_MAX_INPUT_BYTES */
  double max_duration_s;  /* decoded audio longer than this fails with ES_ETOOBIG; <= 0 = the default */
  audio_downmix_t downmix;
} audio_decode_opts_t;

#define AUDIO_DEFAULT_MAX_INPUT_BYTES ((size_t)256 << 20) /* 256 MiB */
#define AUDIO_DEFAULT_MAX_DURATION_S 1200.0               /* 20 minutes */

/* The defaults: 256 MiB, 20 minutes, ffmpeg downmix. */
void audio_decode_opts_default(audio_decode_opts_t *opts);

typedef struct {
  float *samples;  /* n floats at 16 kHz, mono; owned (free with audio_pcm_free) */
  size_t n;        /* >= 1 on success */
  int source_rate; /* the decoded stream's sample rate and channel count, for logs */
  int source_channels;
  char codec[32];     /* FFmpeg decoder name, e.g. "mp3float" */
  char container[32]; /* FFmpeg demuxer name, e.g. "ogg" */
  int decode_errors;  /* damaged packets skipped, as the ffmpeg CLI does (more than half fails the decode) */
} audio_pcm_t;

/* Decodes the file at path. opts may be NULL (defaults). On failure *out is zeroed. */
int audio_decode_file(const char *path, const audio_decode_opts_t *opts, audio_pcm_t *out, es_error_t *err);

/* Decodes len bytes at buf (not copied, not modified; must stay valid during the call). name labels error
 * messages ("upload 3", a file name). opts may be NULL. On failure *out is zeroed. */
int audio_decode_memory(const void *buf, size_t len, const char *name, const audio_decode_opts_t *opts,
                        audio_pcm_t *out, es_error_t *err);

/* Frees pcm->samples and zeroes *pcm; NULL and already-freed are no-ops. */
void audio_pcm_free(audio_pcm_t *pcm);

/* Process-wide FFmpeg settings; call once at start-up, before any decoding thread runs (the CLI, the server,
 * the tests and the fuzzer do). Caps any single FFmpeg allocation at AUDIO_FFMPEG_MAX_ALLOC (FFmpeg's own
 * default is 2 GiB: a 337-byte crafted WAV makes its demuxer allocate and zero 1.7 GB, found by the fuzzer)
 * and sets FFmpeg's log level to errors only, or to nothing when quiet. */
#define AUDIO_FFMPEG_MAX_ALLOC ((size_t)64 << 20)
void audio_decode_global_init(int quiet);

#ifdef __cplusplus
}
#endif
