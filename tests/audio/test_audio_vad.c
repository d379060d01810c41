/* test_audio_vad: the level-based voice-activity detector.
 *   - a synthetic session (quiet noise, a tone, a pause shorter than the silence duration, a tone, quiet): one
 *     start at the first tone's first sample and one stop at the second tone's end, cut after the silence;
 *   - a 20 ms click starts nothing; a tone below the gate (threshold 1) starts nothing;
 *   - the same events whatever pieces the audio arrives in;
 *   - real speech (the espeak recording between two seconds of silence) gives one turn, starting and ending
 *     where ffmpeg's silencedetect puts the speech (within a frame or two).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "audio_decode.h"
#include "audio_vad.h"
#include "test_util.h"

#define SR 16000

static uint64_t rng = 0x243f6a8885a308d3ull;
static double noise(void) {
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return (double)(rng >> 11) / 9007199254740992.0 * 2 - 1;
}

/* Appends ms of a tone at dbfs RMS (or noise at dbfs RMS when hz == 0). */
static size_t add(float *x, size_t at, int ms, double hz, double dbfs) {
  size_t n = (size_t)ms * SR / 1000;
  double rms = pow(10.0, dbfs / 20.0);
  for (size_t i = 0; i < n; i++)
    x[at + i] = (float)(hz > 0 ? rms * sqrt(2.0) * sin(2 * 3.14159265358979 * hz * (double)(at + i) / SR)
                               : rms * sqrt(3.0) * noise());
  return at + n;
}

static size_t run(const float *x, size_t n, double threshold, int silence_ms, size_t max_piece, audio_vad_event_t *ev,
                  size_t max_ev) {
  audio_vad_t v;
  audio_vad_init(&v, &(audio_vad_opts_t){.threshold = threshold, .silence_duration_ms = silence_ms});
  size_t n_ev = 0;
  for (size_t i = 0; i < n;) {
    size_t k = max_piece ? 1 + (size_t)((noise() * 0.5 + 0.5) * (double)max_piece) % max_piece : n;
    if (k > n - i) k = n - i;
    audio_vad_event_t tmp[64];
    size_t got = audio_vad_feed(&v, x + i, k, tmp, 64);
    for (size_t j = 0; j < got && n_ev < max_ev; j++) ev[n_ev++] = tmp[j];
    i += k;
  }
  return n_ev;
}

static int same(const audio_vad_event_t *a, const audio_vad_event_t *b, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (a[i].kind != b[i].kind || a[i].at != b[i].at || a[i].cut_at != b[i].cut_at) return 0;
  return 1;
}

static void test_synthetic(void) {
  float *x = calloc(6 * SR, sizeof *x);
  size_t n = add(x, 0, 1000, 0, -60);
  n = add(x, n, 20, 0, -10); /* a click: two loud frames */
  n = add(x, n, 980, 0, -60);
  size_t tone1 = n;
  n = add(x, n, 1000, 440, -25);
  n = add(x, n, 300, 0, -60); /* a pause inside the turn */
  n = add(x, n, 500, 660, -25);
  size_t end2 = n;
  n = add(x, n, 1000, 0, -60);
  audio_vad_event_t ev[16], ev2[16];
  size_t k = run(x, n, 0.5, 500, 0, ev, 16);
  T_CHECK(k == 2, "%zu events", k);
  if (k == 2) {
    T_CHECK(ev[0].kind == AUDIO_VAD_START && ev[0].at == tone1 && ev[0].cut_at == tone1, "start at %llu (tone %zu)",
            (unsigned long long)ev[0].at, tone1);
    T_CHECK(ev[1].kind == AUDIO_VAD_STOP && ev[1].at == end2 && ev[1].cut_at == end2 + 8000,
            "stop at %llu cut %llu (tone end %zu)", (unsigned long long)ev[1].at, (unsigned long long)ev[1].cut_at,
            end2);
  }
  for (size_t piece = 1; piece < 2000; piece = piece * 3 + 1) {
    size_t k2 = run(x, n, 0.5, 500, piece, ev2, 16);
    T_CHECK(k2 == k && same(ev, ev2, k), "pieces of up to %zu: other events", piece);
  }
  /* a 200 ms silence duration splits the turn at the pause */
  k = run(x, n, 0.5, 200, 0, ev, 16);
  T_CHECK(k == 4 && ev[1].kind == AUDIO_VAD_STOP && ev[1].at == tone1 + SR && ev[2].kind == AUDIO_VAD_START,
          "200 ms: %zu events", k);
  /* threshold 1 (-20 dBFS) does not hear a -25 dBFS tone; threshold 0 (-70 dBFS) hears the -60 dBFS noise */
  T_CHECK(run(x, n, 1.0, 500, 0, ev, 16) == 0, "threshold 1 heard something");
  k = run(x, n, 0.0, 500, 0, ev, 16);
  T_CHECK(k >= 1 && ev[0].at == 0, "threshold 0: %zu events, first at %llu", k, k ? (unsigned long long)ev[0].at : 0);
  T_CHECK(fabs(audio_vad_gate_dbfs(0.5) + 45) < 1e-12 && audio_vad_gate_dbfs(7) == -20 &&
              audio_vad_gate_dbfs(NAN) == -70,
          "gate mapping");
  free(x);
}

static void test_speech(void) {
  audio_pcm_t p;
  es_error_t e;
  T_REQUIRE(audio_decode_file(ES_SOURCE_DIR "/tests/data/audio/speech-espeak-22k.wav", NULL, &p, &e) == 0, "%s", e.msg);
  size_t n = p.n + 4 * SR;
  float *x = calloc(n, sizeof *x);
  memcpy(x + 2 * SR, p.samples, p.n * sizeof *x);
  audio_vad_event_t ev[16];
  size_t k = run(x, n, 0.5, 500, 3200, ev, 16);
  T_CHECK(k == 2, "speech: %zu events", k);
  /* ffmpeg silencedetect (-45 dB, 0.3 s): the recording is speech from its start to 5.417 s */
  if (k == 2) {
    double t0 = (double)ev[0].at / SR - 2, t1 = (double)ev[1].at / SR - 2;
    T_CHECK(t0 >= 0 && t0 < 0.05, "speech starts at %.3f s", t0);
    T_CHECK(fabs(t1 - 5.417) < 0.05, "speech stops at %.3f s", t1);
    T_CHECK(ev[1].cut_at == ev[1].at + 8000, "cut after 500 ms");
  }
  free(x);
  audio_pcm_free(&p);
}

int main(void) {
  audio_decode_global_init(1);
  test_synthetic();
  test_speech();
  return t_finish();
}
