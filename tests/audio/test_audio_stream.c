/* test_audio_stream: raw audio pushed piece by piece gives exactly the samples audio_decode gives for a WAV file
 * holding the same bytes (FFmpeg's decoders + libswresample, the ffmpeg CLI's output):
 *   - 16-bit PCM at 16 kHz (no resampling), 24 kHz (OpenAI's rate), 22.05, 44.1, 48 and 8 kHz, split at random
 *     byte offsets (odd ones included, so a sample arrives in two pieces), then flushed;
 *   - G.711 mu-law and A-law at 8 kHz (every one of the 256 codes, then a signal), against FFmpeg's pcm_mulaw /
 *     pcm_alaw decoders reading WAV format tags 7 and 6;
 *   - a flush starts a fresh stream: two streams in a row each match their own file;
 *   - the limit: a piece that would pass out->max is refused whole and the stream is usable afterwards;
 *   - bad rates are refused.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audio_decode.h"
#include "audio_stream.h"
#include "test_util.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void) {
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return (uint32_t)(rng >> 11);
}

static void put16(uint8_t *p, unsigned v) {
  p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8);
}
static void put32(uint8_t *p, uint32_t v) {
  put16(p, v & 0xffff), put16(p + 2, v >> 16);
}

/* A mono WAV (format tag 1: PCM 16-bit, 7: mu-law, 6: A-law) around data. */
static uint8_t *wav(int tag, int rate, const uint8_t *data, size_t n, size_t *len) {
  int bits = tag == 1 ? 16 : 8;
  uint8_t *w = malloc(44 + n);
  memcpy(w, "RIFF", 4), put32(w + 4, (uint32_t)(36 + n)), memcpy(w + 8, "WAVEfmt ", 8);
  put32(w + 16, 16), put16(w + 20, (unsigned)tag), put16(w + 22, 1), put32(w + 24, (uint32_t)rate);
  put32(w + 28, (uint32_t)(rate * bits / 8)), put16(w + 32, (unsigned)bits / 8), put16(w + 34, (unsigned)bits);
  memcpy(w + 36, "data", 4), put32(w + 40, (uint32_t)n), memcpy(w + 44, data, n);
  *len = 44 + n;
  return w;
}

/* A test signal: a chirp, a burst of noise and silence, as 16-bit little-endian bytes. */
static uint8_t *signal16(int rate, size_t n_samples) {
  uint8_t *b = malloc(2 * n_samples);
  double ph = 0;
  for (size_t i = 0; i < n_samples; i++) {
    double t = (double)i / rate, f = 200 + 3000 * t;
    ph += 2 * 3.14159265358979 * f / rate;
    double v = i < n_samples / 2 ? 12000 * sin(ph) : i < 3 * n_samples / 4 ? (double)(rnd() % 20001) - 10000 : 0;
    put16(b + 2 * i, (unsigned)(uint16_t)(int16_t)lrint(v));
  }
  return b;
}

/* Pushes data in random pieces (1..max_piece bytes), flushes; the samples land in out. */
static int push_pieces(audio_stream_t *s, const uint8_t *data, size_t n, size_t max_piece, audio_fbuf_t *out) {
  es_error_t e;
  for (size_t i = 0; i < n;) {
    size_t k = 1 + rnd() % max_piece;
    if (k > n - i) k = n - i;
    if (audio_stream_push(s, data + i, k, out, &e)) {
      fprintf(stderr, "push: %s\n", e.msg);
      return -1;
    }
    i += k;
  }
  return audio_stream_flush(s, out, &e);
}

static void check_same(const char *what, int tag, int rate, const uint8_t *data, size_t n, audio_stream_format_t fmt) {
  size_t wl = 0;
  uint8_t *w = wav(tag, rate, data, n, &wl);
  audio_pcm_t ref;
  es_error_t e;
  int rc = audio_decode_memory(w, wl, what, NULL, &ref, &e);
  T_CHECK(rc == 0, "%s: decode: %s", what, e.msg);
  audio_stream_t *s = NULL;
  T_CHECK(audio_stream_open(fmt, rate, &s, &e) == 0, "%s: open: %s", what, e.msg);
  audio_fbuf_t out = {0};
  if (!rc && s) {
    for (int round = 0; round < 2; round++) { /* the second round runs after a flush: a fresh stream */
      out.n = 0;
      T_CHECK(push_pieces(s, data, n, round ? 7 : 5000, &out) == 0, "%s: push", what);
      T_CHECK(out.n == ref.n, "%s round %d: %zu samples, ffmpeg %zu", what, round, out.n, ref.n);
      size_t bad = 0, first = 0;
      for (size_t i = 0; i < out.n && i < ref.n; i++)
        if (out.data[i] != ref.samples[i] && !bad++) first = i;
      T_CHECK(bad == 0, "%s round %d: %zu samples differ, first at %zu (%.9g vs %.9g)", what, round, bad, first,
              out.data[first], ref.samples[first]);
    }
  }
  free(out.data);
  audio_stream_free(s);
  audio_pcm_free(&ref);
  free(w);
}

static void test_pcm16(void) {
  const int rates[] = {16000, 24000, 22050, 44100, 48000, 8000};
  for (size_t k = 0; k < sizeof rates / sizeof rates[0]; k++) {
    size_t n = (size_t)rates[k] * 3 / 2 + 17; /* 1.5 s and an uneven tail */
    uint8_t *d = signal16(rates[k], n);
    char what[64];
    snprintf(what, sizeof what, "pcm16 %d Hz", rates[k]);
    check_same(what, 1, rates[k], d, 2 * n, AUDIO_STREAM_PCM16);
    free(d);
  }
}

static void test_g711(void) {
  uint8_t codes[256 * 8];
  for (int i = 0; i < 256 * 8; i++) codes[i] = (uint8_t)(i < 256 ? (uint32_t)i : rnd());
  check_same("mu-law", 7, 8000, codes, sizeof codes, AUDIO_STREAM_MULAW);
  check_same("A-law", 6, 8000, codes, sizeof codes, AUDIO_STREAM_ALAW);
  /* the G.711 tables' ends: mu-law 0x00 is -32124, 0x80 is +32124, 0xff is 0; A-law 0xd5 is 8, 0x55 is -8 */
  T_CHECK(audio_mulaw_to_s16(0x00) == -32124 && audio_mulaw_to_s16(0x80) == 32124 && audio_mulaw_to_s16(0xff) == 0,
          "mu-law ends %d %d %d", audio_mulaw_to_s16(0x00), audio_mulaw_to_s16(0x80), audio_mulaw_to_s16(0xff));
  T_CHECK(audio_alaw_to_s16(0xd5) == 8 && audio_alaw_to_s16(0x55) == -8 && audio_alaw_to_s16(0xaa) == 32256,
          "A-law ends %d %d %d", audio_alaw_to_s16(0xd5), audio_alaw_to_s16(0x55), audio_alaw_to_s16(0xaa));
}

static void test_limit(void) {
  es_error_t e;
  audio_stream_t *s = NULL;
  T_REQUIRE(audio_stream_open(AUDIO_STREAM_PCM16, 24000, &s, &e) == 0, "open: %s", e.msg);
  uint8_t *d = signal16(24000, 24000);
  audio_fbuf_t out = {.max = 16000}; /* one second */
  T_CHECK(audio_stream_push(s, d, 24000, &out, &e) == 0, "half a second: %s", e.msg);
  size_t kept = out.n;
  T_CHECK(kept > 7000 && kept <= 8000, "half a second gave %zu samples", kept);
  T_CHECK(audio_stream_push(s, d, 2 * 24000, &out, &e) == ES_ETOOBIG, "a second more is refused");
  T_CHECK(out.n == kept, "a refused piece leaves nothing: %zu -> %zu", kept, out.n);
  T_CHECK(strstr(e.msg, "1.0 s") != NULL, "the message names the limit: %s", e.msg);
  T_CHECK(audio_stream_push(s, d, 12000, &out, &e) == 0, "a quarter second still fits: %s", e.msg);
  T_CHECK(audio_stream_bytes_per_second(s) == 48000, "24 kHz PCM16 is 48000 B/s");
  free(d);
  free(out.data);
  audio_stream_free(s);
}

static void test_bad(void) {
  es_error_t e;
  audio_stream_t *s = (audio_stream_t *)1;
  T_CHECK(audio_stream_open(AUDIO_STREAM_PCM16, 7999, &s, &e) == ES_EINVAL && !s, "7999 Hz refused");
  T_CHECK(strstr(e.msg, "8000..48000") != NULL, "message: %s", e.msg);
  T_CHECK(audio_stream_open(AUDIO_STREAM_PCM16, 96000, &s, &e) == ES_EINVAL, "96 kHz refused");
  T_CHECK(audio_stream_open((audio_stream_format_t)9, 16000, &s, &e) == ES_EINVAL, "unknown format refused");
  T_CHECK(audio_stream_open(AUDIO_STREAM_MULAW, 0, &s, &e) == 0 && audio_stream_bytes_per_second(s) == 8000,
          "G.711 ignores the rate");
  audio_stream_free(s);
}

int main(void) {
  audio_decode_global_init(1);
  test_pcm16();
  test_g711();
  test_limit();
  test_bad();
  return t_finish();
}
