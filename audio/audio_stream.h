/* audio_stream: raw audio arriving in pieces (a live voice session) -> 16 kHz mono float32, incrementally.
 *
 * Formats are the OpenAI Realtime API's input formats: little-endian 16-bit PCM at any rate from 8 to 48 kHz
 * ("audio/pcm"; OpenAI's own rate is 24 kHz) and G.711 at 8 kHz ("audio/pcmu" mu-law, "audio/pcma" A-law).
 * A piece may end anywhere, even inside a sample: the odd byte waits for the next piece.
 *
 * The samples are the ones audio_decode gives for a WAV file holding the same bytes: G.711 expands to 16-bit
 * the way FFmpeg's pcm_mulaw / pcm_alaw decoders do, and libswresample with its default settings converts
 * 16-bit samples at the source rate to float at 16 kHz, exactly as audio_decode and the ffmpeg CLI do (at
 * 16 kHz that is x / 32768 and nothing else). swr's output does not depend on how the input was split, so a
 * stream fed piece by piece gives the same samples as one whole file; audio_stream_flush drains the
 * resampler's delay (the last few samples) when the stream, or a turn of it, ends.
 *
 * Thread safety: one stream belongs to one thread.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "es_error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  AUDIO_STREAM_PCM16 = 0, /* signed 16-bit little-endian, rate given */
  AUDIO_STREAM_MULAW,     /* G.711 mu-law, 8 kHz */
  AUDIO_STREAM_ALAW,      /* G.711 A-law, 8 kHz */
} audio_stream_format_t;

#define AUDIO_STREAM_MIN_RATE 8000
#define AUDIO_STREAM_MAX_RATE 48000

typedef struct audio_stream audio_stream_t;

/* A growable float buffer the converter appends to (the caller owns data; free() it). */
typedef struct {
  float *data;
  size_t n, cap;
  size_t max; /* appending past this many samples fails with ES_ETOOBIG (0 = no limit) */
} audio_fbuf_t;

/* rate: PCM16's sample rate (AUDIO_STREAM_MIN_RATE..MAX_RATE); ignored for G.711 (always 8 kHz). */
int audio_stream_open(audio_stream_format_t fmt, int rate, audio_stream_t **out, es_error_t *err);
void audio_stream_free(audio_stream_t *s);

/* Converts n bytes and appends the 16 kHz samples they complete to out. On ES_ETOOBIG (out->max) nothing of
 * this piece is kept in out and the stream is as before the call. */
int audio_stream_push(audio_stream_t *s, const uint8_t *bytes, size_t n, audio_fbuf_t *out, es_error_t *err);

/* Appends what the resampler still holds and starts the stream afresh (a half sample still waiting is dropped).
 * The stream can be pushed to again. */
int audio_stream_flush(audio_stream_t *s, audio_fbuf_t *out, es_error_t *err);

/* Bytes per second of input (for limits and timestamps): 2 * rate for PCM16, 8000 for G.711. */
int audio_stream_bytes_per_second(const audio_stream_t *s);

/* G.711 expansions to 16-bit linear (ITU-T G.711, as FFmpeg's pcm_mulaw / pcm_alaw decoders do). */
int16_t audio_mulaw_to_s16(uint8_t u);
int16_t audio_alaw_to_s16(uint8_t a);

/* Appends n samples to b (growing it); ES_ETOOBIG past b->max, ES_ENOMEM. */
int audio_fbuf_append(audio_fbuf_t *b, const float *x, size_t n, es_error_t *err);

#ifdef __cplusplus
}
#endif
