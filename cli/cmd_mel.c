/* cmd_mel: `earshot mel FILE [--long-audio truncate|split] [--out PREFIX]` — the model's input features.
 *
 * Decodes FILE to 16 kHz mono (audio_decode), cuts it into 30 s windows under the long-audio policy and
 * computes each window's float32 [128, 3000] log-mel features (audio_mel), exactly what Qwen2-Audio's
 * processor would give the encoder. Writes PREFIX.K.npy per window K and prints one JSON line per window
 * with its frames (F) and audio tokens (N). Exit codes: 0 ok, 1 failure (message on stderr), 2 usage.
 *
 * Needs FFmpeg: in an EARSHOT_DEVICE build (no FFmpeg) the command explains that and fails.
 * Thread safety: single-threaded command.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audio_mel.h"
#include "es_error.h"
#include "npy.h"
#ifdef EARSHOT_HAVE_AUDIO_DECODE
#include "audio_decode.h"
#endif

int cmd_mel(int argc, char **argv);

static void usage(FILE *out) {
  fprintf(out,
          "usage: earshot mel FILE [--long-audio truncate|split] [--out PREFIX] [--downmix ffmpeg|average]\n"
          "                   [--max-duration SECONDS] [--threads N]\n"
          "\n"
          "Decodes FILE (any format FFmpeg reads) to 16 kHz mono and computes the Whisper log-mel features\n"
          "Qwen2-Audio's encoder takes: float32 [128, 3000] per 30 s window.\n"
          "\n"
          "  --long-audio  truncate (default): keep the first 30 s, like transformers and vLLM;\n"
          "                split: consecutive 30 s windows, the last one shorter (one audio item)\n"
          "  --out         write window K's features to PREFIX.K.npy\n"
          "  --downmix     ffmpeg (default, identical to `ffmpeg -ac 1`) or average (librosa's mean)\n"
          "  --max-duration  refuse longer audio (default %.0f s)\n"
          "  --threads     threads for the features (default 1)\n"
          "\n"
          "Prints one JSON line per window: window, sample_offset, samples, frames (F), audio_tokens (N)\n"
          "and, with --out, file.\n",
          1200.0);
}

int cmd_mel(int argc, char **argv) {
  const char *file = NULL, *prefix = NULL, *policy_s = "truncate", *downmix_s = "ffmpeg";
  double max_duration = 0;
  int threads = 1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(a, "--long-audio") == 0 && i + 1 < argc) {
      policy_s = argv[++i];
    } else if (strcmp(a, "--out") == 0 && i + 1 < argc) {
      prefix = argv[++i];
    } else if (strcmp(a, "--downmix") == 0 && i + 1 < argc) {
      downmix_s = argv[++i];
    } else if (strcmp(a, "--max-duration") == 0 && i + 1 < argc) {
      char *end;
      max_duration = strtod(argv[++i], &end);
      if (*end || !(max_duration > 0)) {
        fprintf(stderr, "earshot mel: --max-duration '%s': expected a positive number of seconds\n", argv[i]);
        return 2;
      }
    } else if (strcmp(a, "--threads") == 0 && i + 1 < argc) {
      threads = atoi(argv[++i]);
      if (threads < 1 || threads > 64) {
        fprintf(stderr, "earshot mel: --threads '%s': expected 1..64\n", argv[i]);
        return 2;
      }
    } else if (a[0] == '-' && a[1]) {
      fprintf(stderr, "earshot mel: unknown or incomplete option '%s'\n\n", a);
      usage(stderr);
      return 2;
    } else if (!file) {
      file = a;
    } else {
      fprintf(stderr, "earshot mel: one FILE only ('%s' is extra)\n", a);
      return 2;
    }
  }
  if (!file) {
    usage(stderr);
    return 2;
  }
  es_error_t err;
  es_error_clear(&err);
  audio_long_policy_t policy;
  if (audio_long_policy_parse(policy_s, &policy, &err)) {
    fprintf(stderr, "earshot mel: --%s\n", err.msg);
    return 2;
  }
  if (strcmp(downmix_s, "ffmpeg") != 0 && strcmp(downmix_s, "average") != 0) {
    fprintf(stderr, "earshot mel: --downmix '%s': expected 'ffmpeg' or 'average'\n", downmix_s);
    return 2;
  }

#ifndef EARSHOT_HAVE_AUDIO_DECODE
  (void)prefix, (void)max_duration, (void)threads;
  fprintf(stderr, "earshot mel: this build has no audio decoder (EARSHOT_DEVICE=ON builds without FFmpeg)\n");
  return 1;
#else
  audio_decode_global_init(1);
  audio_decode_opts_t opts;
  audio_decode_opts_default(&opts);
  if (max_duration > 0) opts.max_duration_s = max_duration;
  opts.downmix = strcmp(downmix_s, "average") == 0 ? AUDIO_DOWNMIX_AVERAGE : AUDIO_DOWNMIX_FFMPEG;

  int rc = 1;
  audio_pcm_t pcm = {0};
  mel_ctx_t *ctx = NULL;
  audio_window_t *win = NULL;
  float *feat = NULL;
  size_t nw = 0;
  if (audio_decode_file(file, &opts, &pcm, &err) || audio_windows(pcm.n, policy, NULL, 0, &nw, &err)) goto fail;
  win = calloc(nw, sizeof *win);
  feat = malloc(sizeof(float) * MEL_N_MELS * MEL_N_FRAMES);
  if (!win || !feat) {
    es_fail(&err, ES_ENOMEM, "out of memory");
    goto fail;
  }
  if (audio_windows(pcm.n, policy, win, nw, &nw, &err) || mel_ctx_init(&ctx, threads, &err)) goto fail;
  for (size_t k = 0; k < nw; k++) {
    if (mel_compute(ctx, pcm.samples + win[k].offset, win[k].count, feat, NULL, NULL, &err)) goto fail;
    char path[4096] = "";
    if (prefix) {
      if ((size_t)snprintf(path, sizeof path, "%s.%zu.npy", prefix, k) >= sizeof path) {
        es_fail(&err, ES_ETOOBIG, "--out prefix too long");
        goto fail;
      }
      const int64_t shape[2] = {MEL_N_MELS, MEL_N_FRAMES};
      if (npy_write(path, NPY_F32, 2, shape, feat, &err)) goto fail;
    }
    printf("{\"window\": %zu, \"long_audio\": \"%s\", \"sample_offset\": %zu, \"samples\": %zu, \"frames\": %d, "
           "\"audio_tokens\": %d",
           k, audio_long_policy_name(policy), win[k].offset, win[k].count, win[k].frames, win[k].audio_tokens);
    if (prefix) {
      printf(", \"file\": \"");
      for (const char *c = path; *c; c++) {
        if ((unsigned char)*c < 0x20)
          printf("\\u%04x", (unsigned char)*c);
        else if (*c == '"' || *c == '\\')
          printf("\\%c", *c);
        else
          putchar(*c);
      }
      putchar('"');
    }
    printf("}\n");
  }
  rc = 0;
fail:
  if (rc) fprintf(stderr, "earshot mel: %s\n", err.msg);
  free(feat);
  free(win);
  mel_ctx_free(&ctx);
  audio_pcm_free(&pcm);
  return rc;
#endif
}
