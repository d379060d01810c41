/* fuzz_audio_decode: libFuzzer target for in-memory decoding (uploads are untrusted).
 *
 * Every input must either decode or fail with an error naming the input; nothing may crash, leak, loop or
 * run unbounded. Small limits keep each run short: 2 MiB of input, 20 s of decoded audio. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "audio_decode.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int quiet;
  if (!quiet) {
    audio_decode_global_init(1);
    quiet = 1;
  }
  audio_decode_opts_t o;
  audio_decode_opts_default(&o);
  o.max_input_bytes = (size_t)2 << 20;
  o.max_duration_s = 20.0;
  o.downmix = size && (data[size - 1] & 1) ? AUDIO_DOWNMIX_AVERAGE : AUDIO_DOWNMIX_FFMPEG;
  audio_pcm_t pcm;
  es_error_t err;
  if (audio_decode_memory(data, size, "<fuzz>", &o, &pcm, &err) == 0) {
    volatile float sink = 0; /* touch every sample so ASan sees a short buffer */
    for (size_t i = 0; i < pcm.n; i++) sink += pcm.samples[i];
    (void)sink;
    audio_pcm_free(&pcm);
  } else if (!strstr(err.msg, "<fuzz>")) {
    __builtin_trap(); /* every error names its input */
  }
  return 0;
}
