/* audio_stream: incremental raw PCM / G.711 -> 16 kHz mono float. See audio_stream.h.
 * ref: ITU-T G.711 (segment/quantisation layout); libswresample (swr_alloc_set_opts2, swr_convert with NULL input
 * to drain); audio_decode.c (the same swr settings).
 */
#include "audio_stream.h"

#include <libavutil/channel_layout.h>
#include <libavutil/error.h>
#include <libavutil/samplefmt.h>
#include <libswresample/swresample.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SR_OUT 16000
#define CHUNK_SAMPLES 4096 /* input samples converted per swr call */

struct audio_stream {
  audio_stream_format_t fmt;
  int rate;
  SwrContext *swr; /* NULL at 16 kHz: the conversion is x / 32768 */
  int has_half;    /* PCM16: one byte of a sample is waiting */
  uint8_t half;
  int16_t chunk[CHUNK_SAMPLES];
};

int16_t audio_mulaw_to_s16(uint8_t u) {
  /* mu-law stores the complement of sign, 3 segment bits and 4 mantissa bits; the magnitude is
   * ((mantissa << 3) + 0x84) << segment, less the 0x84 bias */
  unsigned v = (unsigned)(uint8_t)~u;
  int mag = (int)((((v & 0x0fu) << 3) + 0x84u) << ((v & 0x70u) >> 4)) - 0x84;
  return (int16_t)((v & 0x80u) ? -mag : mag);
}

int16_t audio_alaw_to_s16(uint8_t a) {
  /* A-law inverts every even bit; segment 0 is linear, the others add the implicit leading one */
  unsigned v = a ^ 0x55u, seg = (v & 0x70u) >> 4, q = v & 0x0fu;
  int mag = seg ? (int)((2 * q + 33) << (seg + 2)) : (int)((2 * q + 1) << 3);
  return (int16_t)((v & 0x80u) ? mag : -mag);
}

int audio_fbuf_append(audio_fbuf_t *b, const float *x, size_t n, es_error_t *err) {
  if (b->max && (b->n > b->max || n > b->max - b->n))
    return es_fail(err, ES_ETOOBIG, "audio: more than %zu samples (%.1f s at 16 kHz)", b->max, b->max / 16000.0);
  if (b->n + n > b->cap) {
    size_t cap = b->cap ? b->cap : 16384;
    while (cap < b->n + n) cap *= 2;
    float *p = realloc(b->data, cap * sizeof *p);
    if (!p) return es_fail(err, ES_ENOMEM, "audio: out of memory for %zu samples", cap);
    b->data = p;
    b->cap = cap;
  }
  if (n) memcpy(b->data + b->n, x, n * sizeof *x);
  b->n += n;
  return ES_OK;
}

static int swr_setup(audio_stream_t *s, es_error_t *err) {
  swr_free(&s->swr);
  if (s->rate == SR_OUT) return ES_OK;
  AVChannelLayout mono = AV_CHANNEL_LAYOUT_MONO;
  int ret = swr_alloc_set_opts2(&s->swr, &mono, AV_SAMPLE_FMT_FLT, SR_OUT, &mono, AV_SAMPLE_FMT_S16, s->rate, 0, NULL);
  if (ret >= 0) ret = swr_init(s->swr);
  if (ret < 0) {
    char eb[128];
    if (av_strerror(ret, eb, sizeof eb) < 0) snprintf(eb, sizeof eb, "FFmpeg error %d", ret);
    swr_free(&s->swr);
    return es_fail(err, ret == AVERROR(ENOMEM) ? ES_ENOMEM : ES_EINTERNAL, "audio: resampler for %d Hz: %s", s->rate,
                   eb);
  }
  return ES_OK;
}

int audio_stream_open(audio_stream_format_t fmt, int rate, audio_stream_t **out, es_error_t *err) {
  *out = NULL;
  if (fmt != AUDIO_STREAM_PCM16 && fmt != AUDIO_STREAM_MULAW && fmt != AUDIO_STREAM_ALAW)
    return es_fail(err, ES_EINVAL, "audio: unknown stream format %d", (int)fmt);
  if (fmt != AUDIO_STREAM_PCM16) rate = 8000;
  if (rate < AUDIO_STREAM_MIN_RATE || rate > AUDIO_STREAM_MAX_RATE)
    return es_fail(err, ES_EINVAL, "audio: a sample rate of %d Hz (%d..%d supported)", rate, AUDIO_STREAM_MIN_RATE,
                   AUDIO_STREAM_MAX_RATE);
  audio_stream_t *s = calloc(1, sizeof *s);
  if (!s) return es_fail(err, ES_ENOMEM, "audio: out of memory");
  s->fmt = fmt;
  s->rate = rate;
  int rc = swr_setup(s, err);
  if (rc) {
    free(s);
    return rc;
  }
  *out = s;
  return ES_OK;
}

void audio_stream_free(audio_stream_t *s) {
  if (!s) return;
  swr_free(&s->swr);
  free(s);
}

int audio_stream_bytes_per_second(const audio_stream_t *s) {
  return s->fmt == AUDIO_STREAM_PCM16 ? 2 * s->rate : 8000;
}

/* Converts n 16-bit samples and appends them to out. */
static int convert(audio_stream_t *s, const int16_t *x, int n, audio_fbuf_t *out, es_error_t *err) {
  float tmp[CHUNK_SAMPLES * 2 + 256]; /* at most 16000/8000 = 2x the input, plus the resampler's delay */
  if (!s->swr) {
    for (int i = 0; i < n; i++) tmp[i] = (float)x[i] * (1.0f / 32768.0f);
    return audio_fbuf_append(out, tmp, (size_t)n, err);
  }
  const uint8_t *in = (const uint8_t *)x;
  uint8_t *o = (uint8_t *)tmp;
  int cap = (int)(sizeof tmp / sizeof tmp[0]);
  for (;;) {
    int got = swr_convert(s->swr, &o, cap, x ? &in : NULL, x ? n : 0);
    if (got < 0) return es_fail(err, ES_EINTERNAL, "audio: resampling failed (%d)", got);
    int rc = audio_fbuf_append(out, tmp, (size_t)got, err);
    if (rc) return rc;
    if (x || got == 0) return ES_OK; /* with input, tmp held all of the output; a drain asks until empty */
  }
}

int audio_stream_push(audio_stream_t *s, const uint8_t *bytes, size_t n, audio_fbuf_t *out, es_error_t *err) {
  /* the piece's output must fit whole, so that a refused piece leaves nothing behind: an upper bound first */
  size_t in_samples = s->fmt == AUDIO_STREAM_PCM16 ? (n + (size_t)s->has_half) / 2 : n;
  size_t bound = (size_t)((double)in_samples * SR_OUT / s->rate) + 64;
  if (out->max && (out->n > out->max || bound > out->max - out->n))
    return es_fail(err, ES_ETOOBIG, "audio: more than %zu samples (%.1f s at 16 kHz)", out->max, out->max / 16000.0);
  size_t i = 0;
  while (i < n) {
    int k = 0;
    if (s->fmt == AUDIO_STREAM_PCM16) {
      if (s->has_half) {
        s->chunk[k++] = (int16_t)(uint16_t)(s->half | (unsigned)bytes[i++] << 8);
        s->has_half = 0;
      }
      while (k < CHUNK_SAMPLES && i + 1 < n) {
        s->chunk[k++] = (int16_t)(uint16_t)(bytes[i] | (unsigned)bytes[i + 1] << 8);
        i += 2;
      }
      if (i + 1 == n && k < CHUNK_SAMPLES) {
        s->half = bytes[i++];
        s->has_half = 1;
      }
    } else {
      for (; k < CHUNK_SAMPLES && i < n; i++)
        s->chunk[k++] = s->fmt == AUDIO_STREAM_MULAW ? audio_mulaw_to_s16(bytes[i]) : audio_alaw_to_s16(bytes[i]);
    }
    if (k) {
      int rc = convert(s, s->chunk, k, out, err);
      if (rc) return rc;
    }
  }
  return ES_OK;
}

int audio_stream_flush(audio_stream_t *s, audio_fbuf_t *out, es_error_t *err) {
  s->has_half = 0;
  if (!s->swr) return ES_OK;
  int rc = convert(s, NULL, 0, out, err);
  int rc2 = swr_setup(s, err); /* a drained swr is rebuilt, so the next piece starts a fresh stream */
  return rc ? rc : rc2;
}
