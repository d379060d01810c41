/* test_audio_decode: FFmpeg decoding to 16 kHz mono against the golden samples, limits and bad input.
 *
 * Every audio in tests/golden/fixtures/manifest.json decodes, from its path and from memory, to exactly the
 * recorded `ffmpeg -nostdin -i X -ac 1 -ar 16000 -f f32le -` samples (bit for bit); sample counts of the
 * lossy encodings of one recording agree within the codec's known padding; a WebM with a video track gives
 * the Opus samples; WAVs built here check the downmix modes (ffmpeg's matrix vs an average), 8-bit 8 kHz
 * input, and every kind of bad input (empty, truncated, corrupt, non-audio, video-only, unsupported,
 * absurd headers, over the limits) gets its error naming the input. The sanitizer build runs this too.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "audio_decode.h"
#include "es_file.h"
#include "golden.h"
#include "test_util.h"

static golden_t G;
static es_error_t E;

static char *read_repo_file(const char *rel, size_t *len) {
  char path[1400];
  char *buf = NULL;
  snprintf(path, sizeof path, "%s/%s", ES_SOURCE_DIR, rel);
  if (es_read_file(path, (size_t)64 << 20, &buf, len, &E)) {
    T_CHECK(0, "%s", E.msg);
    return NULL;
  }
  return buf;
}

/* First index where a and b differ (bitwise), or -1. */
static long first_diff(const float *a, const float *b, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (memcmp(&a[i], &b[i], sizeof(float)) != 0) return (long)i;
  return -1;
}

static int64_t count_of(const char *id) {
  const cJSON *a = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(G.manifest, "audios"), id);
  const cJSON *s = cJSON_GetObjectItemCaseSensitive(a, "samples");
  int64_t n = -1;
  if (!s || golden_get_int(s, "count", &n, &E)) return -1;
  return n;
}

static void check_fixture(const char *id, const cJSON *audio) {
  const char *file;
  T_REQUIRE(golden_get_string(audio, "file", &file, &E) == 0, "%s: %s", id, E.msg);
  char path[1400];
  T_REQUIRE(golden_path(&G, file, path, sizeof path, &E) == 0, "%s", E.msg);
  npy_array_t ref = {0};
  T_REQUIRE(golden_read_samples(&G, audio, &ref, &E) == 0, "%s: %s", id, E.msg);

  audio_pcm_t pcm;
  int rc = audio_decode_file(path, NULL, &pcm, &E);
  T_CHECK(rc == 0, "%s: %s", id, E.msg);
  if (rc == 0) {
    T_CHECK((int64_t)pcm.n == ref.count, "%s: %zu samples, golden %lld", id, pcm.n, (long long)ref.count);
    long d = (int64_t)pcm.n == ref.count ? first_diff(pcm.samples, ref.data, pcm.n) : -2;
    T_CHECK(d == -1, "%s: samples differ from the golden ones at %ld (ours %.9g, golden %.9g)", id, d,
            d >= 0 ? (double)pcm.samples[d] : 0.0, d >= 0 ? (double)((float *)ref.data)[d] : 0.0);
    printf("%-26s %-8s %-10s %6d Hz %d ch -> %8zu samples, bit-identical: %s\n", id, pcm.container, pcm.codec,
           pcm.source_rate, pcm.source_channels, pcm.n, d == -1 ? "yes" : "NO");
  }

  /* an upload: the same bytes from memory give the same samples */
  size_t len = 0;
  char *buf = read_repo_file(file, &len);
  audio_pcm_t mem;
  if (buf && audio_decode_memory(buf, len, "upload", NULL, &mem, &E) == 0) {
    T_CHECK(rc == 0 && mem.n == pcm.n && memcmp(mem.samples, pcm.samples, pcm.n * sizeof(float)) == 0,
            "%s: memory decode differs from file decode", id);
    audio_pcm_free(&mem);
  } else {
    T_CHECK(0, "%s from memory: %s", id, E.msg);
  }
  free(buf);
  audio_pcm_free(&pcm);
  audio_pcm_free(&pcm); /* a second free is a no-op */
  npy_free(&ref);
}

static void check_fixtures(void) {
  const cJSON *audios = cJSON_GetObjectItemCaseSensitive(G.manifest, "audios"), *a;
  T_CHECK(cJSON_GetArraySize(audios) >= 8, "manifest: expected >= 8 audios");
  cJSON_ArrayForEach(a, audios) check_fixture(a->string, a);

  /* One recording, several codecs: the sample counts agree within the codec's padding. mp3 (gapless info)
   * and opus (pre-skip) are trimmed exactly; AAC in MP4 keeps up to one frame (1024 samples at 22.05 kHz
   * = 743 samples at 16 kHz) of encoder padding. */
  const int64_t wav = count_of("speech-espeak-22k"), mp3 = count_of("speech-espeak-mp3"),
                opus = count_of("speech-espeak-opus"), m4a = count_of("speech-espeak-m4a");
  T_CHECK(wav > 0 && mp3 == wav && opus == wav, "mp3/opus counts %lld/%lld vs wav %lld", (long long)mp3,
          (long long)opus, (long long)wav);
  T_CHECK(wav > 0 && m4a >= wav && m4a - wav <= 743, "m4a count %lld vs wav %lld", (long long)m4a, (long long)wav);
  T_CHECK(count_of("speech-30s-16k") == 480000, "the 30 s file decodes to 480000 samples");
}

static void check_webm_with_video(void) {
  const cJSON *opus =
      cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(G.manifest, "audios"), "speech-espeak-opus");
  npy_array_t ref = {0};
  T_REQUIRE(golden_read_samples(&G, opus, &ref, &E) == 0, "%s", E.msg);
  audio_pcm_t pcm;
  int rc = audio_decode_file(ES_SOURCE_DIR "/tests/data/formats/speech-espeak-with-video.webm", NULL, &pcm, &E);
  T_CHECK(rc == 0, "webm: %s", E.msg);
  if (rc == 0) {
    T_CHECK((int64_t)pcm.n == ref.count && first_diff(pcm.samples, ref.data, pcm.n) == -1,
            "webm with video: %zu samples, not the golden opus samples (%lld)", pcm.n, (long long)ref.count);
    T_CHECK(strstr(pcm.container, "webm") != NULL, "container %s", pcm.container);
  }
  audio_pcm_free(&pcm);
  npy_free(&ref);
}

/* ---- WAVs built in memory --------------------------------------------------------------------------- */

typedef struct {
  uint8_t *data;
  size_t len;
} bytes_t;

static void put16(uint8_t *p, unsigned v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}
static void put32(uint8_t *p, uint32_t v) {
  put16(p, v & 0xffff);
  put16(p + 2, v >> 16);
}

/* A canonical 44-byte-header WAV: format tag (1 PCM, 3 float), no channel mask. */
static bytes_t wav_build(unsigned tag, unsigned channels, uint32_t rate, unsigned bits, const void *pcm,
                         size_t pcm_bytes) {
  bytes_t b = {malloc(44 + pcm_bytes), 44 + pcm_bytes};
  if (!b.data) return b;
  uint8_t *h = b.data;
  memcpy(h, "RIFF", 4);
  put32(h + 4, (uint32_t)(36 + pcm_bytes));
  memcpy(h + 8, "WAVEfmt ", 8);
  put32(h + 16, 16);
  put16(h + 20, tag);
  put16(h + 22, channels);
  put32(h + 24, rate);
  put32(h + 28, rate * channels * (bits / 8));
  put16(h + 32, channels * (bits / 8));
  put16(h + 34, bits);
  memcpy(h + 36, "data", 4);
  put32(h + 40, (uint32_t)pcm_bytes);
  if (pcm_bytes) memcpy(h + 44, pcm, pcm_bytes);
  return b;
}

/* n samples of a deterministic test tone in [-0.5, 0.5] */
static void tone(float *x, size_t n) {
  for (size_t i = 0; i < n; i++) x[i] = 0.4f * sinf(0.05f * (float)i) + 0.1f * sinf(0.31f * (float)i);
}

static void check_downmix(void) {
  enum { N = 4000 };
  static float x[N], st[N * 2], six[N * 6];
  tone(x, N);
  for (size_t i = 0; i < N; i++) {
    st[2 * i] = st[2 * i + 1] = x[i];
    for (int c = 0; c < 6; c++) six[6 * i + c] = x[i];
  }
  audio_decode_opts_t avg;
  audio_decode_opts_default(&avg);
  avg.downmix = AUDIO_DOWNMIX_AVERAGE;

  /* stereo, L = R = x: libswresample's matrix gives (L + R) / sqrt(2) = sqrt(2) x; the average gives x */
  bytes_t w = wav_build(3, 2, 16000, 32, st, sizeof st);
  audio_pcm_t a = {0}, b = {0};
  T_REQUIRE(w.data, "out of memory");
  int rc = audio_decode_memory(w.data, w.len, "stereo.wav", NULL, &a, &E);
  T_CHECK(rc == 0 && a.n == N, "stereo ffmpeg downmix: %s (%zu)", E.msg, a.n);
  rc |= audio_decode_memory(w.data, w.len, "stereo.wav", &avg, &b, &E);
  T_CHECK(rc == 0 && b.n == N, "stereo average downmix: %s (%zu)", E.msg, b.n);
  if (rc == 0 && a.n == N && b.n == N) {
    double ea = 0, eb = 0;
    for (size_t i = 0; i < N; i++) {
      ea = fmax(ea, fabs(a.samples[i] - sqrt(2.0) * x[i]));
      eb = fmax(eb, fabs(b.samples[i] - x[i]));
    }
    T_CHECK(ea < 1e-6, "ffmpeg stereo downmix is (L+R)/sqrt(2): max err %g", ea);
    T_CHECK(eb < 1e-6, "average stereo downmix is (L+R)/2: max err %g", eb);
  }
  audio_pcm_free(&a);
  audio_pcm_free(&b);
  free(w.data);

  /* 6 channels without a channel mask: guessed as 5.1 like the ffmpeg CLI does; the LFE is left out of
   * the default downmix, so it is not the average, which gives x back */
  w = wav_build(3, 6, 16000, 32, six, sizeof six);
  T_REQUIRE(w.data, "out of memory");
  rc = audio_decode_memory(w.data, w.len, "six.wav", NULL, &a, &E);
  rc |= audio_decode_memory(w.data, w.len, "six.wav", &avg, &b, &E);
  T_CHECK(rc == 0 && a.n == N && b.n == N, "6-channel wav: %s", E.msg);
  if (rc == 0 && a.n == N && b.n == N) {
    double eb = 0, da = 0;
    for (size_t i = 0; i < N; i++) {
      eb = fmax(eb, fabs(b.samples[i] - x[i]));
      da = fmax(da, fabs(a.samples[i] - x[i]));
    }
    T_CHECK(eb < 1e-6, "6-channel average gives x: max err %g", eb);
    T_CHECK(da > 1e-3, "6-channel ffmpeg downmix is not a plain average (max diff %g)", da);
  }
  audio_pcm_free(&a);
  audio_pcm_free(&b);
  free(w.data);

  /* 8-bit unsigned, 8 kHz: one second up-sampled to 16000 samples */
  static uint8_t u8[8000];
  for (size_t i = 0; i < 8000; i++) u8[i] = (uint8_t)(128 + (int)(100 * sinf(0.05f * (float)i)));
  w = wav_build(1, 1, 8000, 8, u8, sizeof u8);
  T_REQUIRE(w.data, "out of memory");
  rc = audio_decode_memory(w.data, w.len, "u8.wav", NULL, &a, &E);
  T_CHECK(rc == 0 && a.n >= 15990 && a.n <= 16010, "8 kHz u8 wav: %s, %zu samples", E.msg, a.n);
  audio_pcm_free(&a);
  free(w.data);
}

/* ---- limits and bad input --------------------------------------------------------------------------- */

static void expect_fail(const char *name, const void *buf, size_t len, const audio_decode_opts_t *o, int code,
                        const char *word) {
  audio_pcm_t p;
  memset(&p, 0x5a, sizeof p);
  int rc = audio_decode_memory(buf, len, name, o, &p, &E);
  T_CHECK(rc == code, "%s: rc %d (%s), expected %d: %s", name, rc, es_error_code_name(rc), code, E.msg);
  T_CHECK(strstr(E.msg, name) != NULL && strstr(E.msg, word) != NULL, "%s: message lacks '%s': %s", name, word, E.msg);
  T_CHECK(p.samples == NULL && p.n == 0, "%s: output not cleared on failure", name);
  printf("  %-22s -> %s\n", name, E.msg);
  if (rc == 0) audio_pcm_free(&p);
}

static uint32_t lcg(uint32_t *s) {
  *s = *s * 1664525u + 1013904223u;
  return *s >> 8;
}

static void check_bad(void) {
  size_t wav_len = 0, m4a_len = 0, mp3_len = 0, flac_len = 0, txt_len = 0, png_len = 0, mp4_len = 0;
  char *wav = read_repo_file("tests/data/audio/speech-espeak-22k.wav", &wav_len);
  char *m4a = read_repo_file("tests/data/audio/speech-espeak.m4a", &m4a_len);
  char *mp3 = read_repo_file("tests/data/audio/speech-espeak.mp3", &mp3_len);
  char *flac = read_repo_file("tests/data/audio/speech-30s-16k.flac", &flac_len);
  char *txt = read_repo_file("tests/data/qwen2-audio-tokenizer/merges.txt", &txt_len);
  char *png = read_repo_file("tests/data/bad/image.png", &png_len);
  char *mp4 = read_repo_file("tests/data/bad/video-only.mp4", &mp4_len);
  if (!wav || !m4a || !mp3 || !flac || !txt || !png || !mp4 || wav_len < 20000 || flac_len < 60000 || m4a_len < 20000 ||
      mp3_len < 20000)
    goto done;

  expect_fail("empty", "", 0, NULL, ES_EINVAL, "empty");
  expect_fail("null", NULL, 10, NULL, ES_EINVAL, "null");
  /* the m4a keeps its moov atom at the end: a prefix has no index */
  expect_fail("truncated.m4a", m4a, 20000, NULL, ES_EINVAL, "truncated");
  expect_fail("truncated.wav", wav, 30, NULL, ES_EINVAL, "truncated");
  expect_fail("text.txt", txt, txt_len < 4096 ? txt_len : 4096, NULL, ES_EINVAL, "unknown format");
  expect_fail("image.png", png, png_len, NULL, ES_EINVAL, "no audio stream");
  expect_fail("video-only.mp4", mp4, mp4_len, NULL, ES_EINVAL, "video only");

  uint32_t seed = 7;
  char *bad = malloc(60000);
  T_REQUIRE(bad != NULL, "out of memory");
  /* corrupt: a valid FLAC header (STREAMINFO) followed by garbage instead of frames */
  memcpy(bad, flac, 60000);
  for (size_t i = 200; i < 60000; i++) bad[i] = (char)lcg(&seed);
  expect_fail("corrupt.flac", bad, 60000, NULL, ES_EINVAL, "no audio");
  /* corrupt: an mp3 whose frames after the first kilobyte are garbage */
  memcpy(bad, mp3, 20000);
  for (size_t i = 1000; i < 20000; i++) bad[i] = (char)lcg(&seed);
  expect_fail("corrupt.mp3", bad, 20000, NULL, ES_EINVAL, "corrupt");

  /* damaged but mostly intact: skipped packets, like the ffmpeg CLI; the rest decodes */
  {
    char *dam = malloc(mp3_len);
    T_REQUIRE(dam != NULL, "out of memory");
    memcpy(dam, mp3, mp3_len);
    for (size_t i = 5000; i < mp3_len; i += 50) dam[i] ^= (char)0xff;
    audio_pcm_t p;
    int rc = audio_decode_memory(dam, mp3_len, "damaged.mp3", NULL, &p, &E);
    T_CHECK(rc == 0 && p.decode_errors > 0 && p.n > 70000 && p.n < 100000,
            "damaged.mp3: rc %d, %zu samples, %d bad packets: %s", rc, p.n, p.decode_errors, E.msg);
    audio_pcm_free(&p);
    free(dam);
  }

  /* WAV headers with an unknown codec, absurd rates and channel counts */
  T_REQUIRE(memcmp(wav + 12, "fmt ", 4) == 0, "unexpected wav layout"); /* canonical header: fmt at 12 */
  memcpy(bad, wav, 20000);
  put16((uint8_t *)bad + 20, 0x1234);
  expect_fail("unknown-codec.wav", bad, 20000, NULL, ES_EUNSUPPORTED, "unsupported audio codec");
  memcpy(bad, wav, 20000);
  put32((uint8_t *)bad + 24, 1);
  expect_fail("rate-1hz.wav", bad, 20000, NULL, ES_EUNSUPPORTED, "sample rate");
  memcpy(bad, wav, 20000);
  put32((uint8_t *)bad + 24, 2000000000u);
  expect_fail("rate-2ghz.wav", bad, 20000, NULL, ES_EUNSUPPORTED, "sample rate");
  memcpy(bad, wav, 20000);
  put16((uint8_t *)bad + 22, 200);
  expect_fail("200-channels.wav", bad, 20000, NULL, ES_EUNSUPPORTED, "channels");
  /* found by the fuzzer: a LIST chunk whose size makes FFmpeg's wav demuxer allocate 1.7 GB; with the
   * allocation cap of audio_decode_global_init it is refused quickly */
  {
    size_t bomb_len = 0;
    char *bomb = read_repo_file("tests/data/bad/list-bomb.wav", &bomb_len);
    if (bomb) expect_fail("list-bomb.wav", bomb, bomb_len, NULL, ES_EINVAL, "cannot open");
    free(bomb);
  }
  free(bad);

  /* limits */
  audio_decode_opts_t o;
  audio_decode_opts_default(&o);
  o.max_input_bytes = 1000;
  expect_fail("big.mp3", mp3, mp3_len, &o, ES_ETOOBIG, "input limit");
  audio_decode_opts_default(&o);
  o.max_duration_s = 1.0;
  expect_fail("long.wav", wav, wav_len, &o, ES_ETOOBIG, "limit of 1 s");
  expect_fail("long.mp3", mp3, mp3_len, &o, ES_ETOOBIG, "limit of 1 s");
  expect_fail("long.flac", flac, flac_len, &o, ES_ETOOBIG, "limit of 1 s");
  o.max_duration_s = 5.81; /* the wav is 92939 samples = 5.8087 s: just fits */
  audio_pcm_t p;
  T_CHECK(audio_decode_memory(wav, wav_len, "fits.wav", &o, &p, &E) == 0 && p.n == 92939, "5.81 s limit: %s", E.msg);
  audio_pcm_free(&p);

  T_CHECK(audio_decode_file(ES_SOURCE_DIR "/tests/data/audio/no-such-file.wav", NULL, &p, &E) == ES_ENOTFOUND &&
              strstr(E.msg, "no-such-file.wav"),
          "missing file: %s", E.msg);
  audio_decode_opts_default(&o);
  o.max_input_bytes = 1000;
  T_CHECK(audio_decode_file(ES_SOURCE_DIR "/tests/data/audio/speech-espeak.mp3", &o, &p, &E) == ES_ETOOBIG,
          "file over the byte limit: %s", E.msg);
done:
  free(wav);
  free(m4a);
  free(mp3);
  free(flac);
  free(txt);
  free(png);
  free(mp4);
}

int main(void) {
  audio_decode_global_init(1);
  int rc = golden_open(&G, ES_SOURCE_DIR, &E);
  if (rc) {
    T_CHECK(0, "%s", E.msg);
    return t_finish();
  }
  check_fixtures();
  check_webm_with_video();
  check_downmix();
  check_bad();
  golden_close(&G);
  return t_finish();
}
