/* fuzz_audio_stream: libFuzzer target for the live-audio path of a voice session: untrusted bytes converted piece
 * by piece (audio_stream: PCM16 at a fuzzed rate, mu-law, A-law; pieces of fuzzed sizes, flushes between them),
 * then run through the voice-activity detector (audio_vad) with a fuzzed threshold and silence duration.
 * Layout: byte 0 picks the format and rate, byte 1 the piece size, byte 2 the threshold, byte 3 the silence;
 * the rest is audio. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "audio_stream.h"
#include "audio_vad.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 4) return 0;
  static const int RATES[] = {8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 7999, 48001};
  audio_stream_format_t fmt = (audio_stream_format_t)(data[0] % 4); /* 3: an unknown format, refused */
  int rate = RATES[(data[0] >> 2) % (sizeof RATES / sizeof RATES[0])];
  size_t piece = 1 + data[1] * 7u;
  audio_vad_t vad;
  audio_vad_init(&vad, &(audio_vad_opts_t){.threshold = data[2] / 255.0, .silence_duration_ms = data[3] * 4});
  audio_stream_t *s = NULL;
  es_error_t e;
  if (audio_stream_open(fmt, rate, &s, &e)) return 0;
  audio_fbuf_t out = {.max = 16000 * 30};
  audio_vad_event_t ev[64];
  size_t fed = 0;
  for (size_t i = 4; i < size; i += piece) {
    size_t k = size - i < piece ? size - i : piece;
    if (audio_stream_push(s, data + i, k, &out, &e) == ES_OK && (data[i] & 0x0f) == 0) audio_stream_flush(s, &out, &e);
    while (fed < out.n) {
      size_t n = out.n - fed < 60 * AUDIO_VAD_FRAME ? out.n - fed : 60 * AUDIO_VAD_FRAME;
      audio_vad_feed(&vad, out.data + fed, n, ev, 64);
      fed += n;
    }
  }
  audio_stream_flush(s, &out, &e);
  audio_stream_free(s);
  free(out.data);
  return 0;
}
