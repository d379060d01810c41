/* cmd_run: `earshot run` — one conversation turn from the command line, streamed to stdout.
 *
 * Voice-chat mode (no --prompt): the user turn holds only the audio; audio-analysis mode (--prompt): the
 * audio, then the text. --prompt-format raw renders the base model's form instead of the chat template.
 * Audio files are decoded with FFmpeg (in builds that have it); a `.npy` file is taken as 16 kHz float32
 * samples as they are, which is how a bare GPU machine (EARSHOT_DEVICE=ON, no FFmpeg) runs stored audio.
 * The request goes through the engine API like every other front end.
 * Exit codes: 0 success, 1 failure (a message on stderr), 2 usage error.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audio_mel.h"
#include "npy.h"
#include "model_flags.h"
#include "runtime.h"
#ifdef EARSHOT_HAVE_AUDIO_DECODE
#include "audio_decode.h"
#endif

int cmd_run(int argc, char **argv);

#define MAX_INPUT_AUDIO_BYTES (1u << 30)

static void usage(FILE *out) {
  fprintf(out,
          "usage: earshot run --model DIR|ORG/NAME --audio FILE [--audio FILE ...] [options]\n"
          "\n"
          "  --audio FILE             audio file (any format FFmpeg reads; .npy = 16 kHz float32 samples);\n"
          "                           repeat for several audios\n"
          "  --prompt TEXT            instruction after the audio (audio-analysis mode); without it the user\n"
          "                           turn holds only the audio (voice-chat mode)\n"
          "  --system TEXT            system prompt (default: the chat template's)\n"
          "  --prompt-format chat|raw chat template (Instruct, default) or the base model's raw form; --raw\n"
          "  --max-tokens N  --min-tokens N  --temperature T  --top-p P  --top-k K  --min-p P\n"
          "  --repetition-penalty R  --presence-penalty P  --frequency-penalty P  --seed S\n"
          "                           sampling; defaults come from the model's generation_config.json\n"
          "  --stop STR               stop string (repeatable)   --ignore-eos   do not stop at eos\n"
          "  --long-audio truncate|split   audio over 30 s: keep the first 30 s (default) or every window\n"
          "  --json                   print one JSON object (text, token_ids, counts, finish_reason, timings)\n");
  mf_usage(out, MF_OPEN | MF_SIZING);
}

typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done, json;
  eng_finish_t finish;
  int stop_index;
  char error[ES_ERROR_MSG_MAX];
  eng_usage_t usage;
  tok_text_t text;
  tok_ids_t ids;
  int oom;
} run_sink_t;

static void on_event(void *ctx, const eng_event_t *ev) {
  run_sink_t *s = ctx;
  es_error_t err;
  if (ev->token >= 0 && tok_ids_push(&s->ids, ev->token, &err)) s->oom = 1;
  if (ev->text_len) {
    if (tok_text_append(&s->text, ev->text, ev->text_len, &err)) s->oom = 1;
    if (!s->json) {
      fwrite(ev->text, 1, ev->text_len, stdout);
      fflush(stdout);
    }
  }
  if (ev->finish != ENG_FINISH_NONE) {
    pthread_mutex_lock(&s->mu);
    s->finish = ev->finish;
    s->stop_index = ev->stop_index;
    s->usage = ev->usage;
    if (ev->error) snprintf(s->error, sizeof s->error, "%s", ev->error);
    s->done = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
  }
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Loads an audio file as 16 kHz mono float32 samples (malloc'd). */
static int load_audio(const char *path, float **samples, size_t *n, es_error_t *err) {
  *samples = NULL;
  *n = 0;
  if (ends_with(path, ".npy")) {
    npy_array_t a;
    int rc = npy_read(path, MAX_INPUT_AUDIO_BYTES, &a, err);
    if (rc) return rc;
    if (a.dtype != NPY_F32 || a.ndim != 1 || a.count < 1) {
      npy_free(&a);
      return es_fail(err, ES_EINVAL, "%s: expected 16 kHz samples as float32 [n], n >= 1", path);
    }
    *samples = a.data; /* ownership moves to the caller */
    *n = (size_t)a.count;
    return ES_OK;
  }
#ifdef EARSHOT_HAVE_AUDIO_DECODE
  audio_decode_opts_t o;
  audio_decode_opts_default(&o);
  audio_pcm_t pcm;
  int rc = audio_decode_file(path, &o, &pcm, err);
  if (rc) return rc;
  *samples = pcm.samples;
  *n = pcm.n;
  return ES_OK;
#else
  return es_fail(err, ES_EUNSUPPORTED, "%s: this build has no FFmpeg (EARSHOT_DEVICE): pass 16 kHz samples as .npy",
                 path);
#endif
}

static void print_json(const run_sink_t *s, const rt_t *rt) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "text", s->text.data ? s->text.data : "");
  cJSON *ids = cJSON_AddArrayToObject(o, "token_ids");
  for (size_t i = 0; i < s->ids.n; i++) cJSON_AddItemToArray(ids, cJSON_CreateNumber(s->ids.ids[i]));
  cJSON_AddNumberToObject(o, "prompt_tokens", s->usage.prompt_tokens);
  cJSON_AddNumberToObject(o, "audio_tokens", s->usage.audio_tokens);
  cJSON_AddNumberToObject(o, "completion_tokens", s->usage.completion_tokens);
  cJSON_AddStringToObject(o, "finish_reason", eng_finish_name(s->finish));
  char seed[32];
  snprintf(seed, sizeof seed, "%llu", (unsigned long long)s->usage.seed);
  cJSON_AddStringToObject(o, "seed", seed);
  cJSON *t = cJSON_AddObjectToObject(o, "timings");
  cJSON_AddNumberToObject(t, "time_to_first_token_s", s->usage.first_token_s);
  cJSON_AddNumberToObject(t, "decode_tokens_per_s", s->usage.decode_tokens_per_s);
  cJSON_AddNumberToObject(t, "queue_s", s->usage.queue_s);
  cJSON_AddNumberToObject(t, "total_s", s->usage.total_s);
  cJSON_AddStringToObject(o, "device", rt->device_desc);
  char *txt = cJSON_PrintUnformatted(o);
  if (txt) printf("%s\n", txt);
  free(txt);
  cJSON_Delete(o);
}

#define MAX_RUN_AUDIOS 16

int cmd_run(int argc, char **argv) {
  rt_opts_t ro = {.device = RT_DEVICE_AUTO, .dtype = ES_DT_BF16, .verbose = 1};
  const char *audio_paths[MAX_RUN_AUDIOS], *prompt = NULL, *system = NULL, *stops[ENG_MAX_STOPS];
  int n_audio_paths = 0, n_stops = 0, json = 0, raw = 0, ignore_eos = 0;
  audio_long_policy_t policy = AUDIO_LONG_TRUNCATE;
  /* sampling overrides: NaN / -1 = not given */
  double temperature = -1, top_p = -1, min_p = -1, rep = -1, presence = 0, frequency = 0;
  long long top_k = -2, max_tokens = -1, min_tokens = 0, seed = 0;
  int has_seed = 0;
  es_error_t err;
  es_error_clear(&err);

  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEXT()                                                              \
  do {                                                                      \
    if (!v) {                                                               \
      fprintf(stderr, "earshot run: %s needs a value\n\n", a);              \
      usage(stderr);                                                        \
      return 2;                                                             \
    }                                                                       \
    i++;                                                                    \
  } while (0)
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    }
    int mf = mf_parse("run", MF_OPEN | MF_SIZING, argc, argv, &i, &ro);
    if (mf < 0) return 2;
    if (mf > 0) continue;
    if (!strcmp(a, "--audio")) {
      NEXT();
      if (n_audio_paths == MAX_RUN_AUDIOS) {
        fprintf(stderr, "earshot run: at most %d --audio\n", MAX_RUN_AUDIOS);
        return 2;
      }
      audio_paths[n_audio_paths++] = v;
    } else if (!strcmp(a, "--prompt")) {
      NEXT();
      prompt = v;
    } else if (!strcmp(a, "--system")) {
      NEXT();
      system = v;
    } else if (!strcmp(a, "--prompt-format")) {
      NEXT();
      if (!strcmp(v, "raw")) raw = 1;
      else if (!strcmp(v, "chat")) raw = 0;
      else {
        fprintf(stderr, "earshot run: --prompt-format '%s': expected chat or raw\n", v);
        return 2;
      }
    } else if (!strcmp(a, "--raw")) {
      raw = 1;
    } else if (!strcmp(a, "--json")) {
      json = 1;
    } else if (!strcmp(a, "--ignore-eos")) {
      ignore_eos = 1;
    } else if (!strcmp(a, "--stop")) {
      NEXT();
      if (n_stops == ENG_MAX_STOPS) {
        fprintf(stderr, "earshot run: at most %d --stop\n", ENG_MAX_STOPS);
        return 2;
      }
      stops[n_stops++] = v;
    } else if (!strcmp(a, "--long-audio")) {
      NEXT();
      if (audio_long_policy_parse(v, &policy, &err)) {
        fprintf(stderr, "earshot run: %s\n", err.msg);
        return 2;
      }
    } else if (!strcmp(a, "--temperature")) {
      NEXT();
      if (mf_double("run", a, v, -HUGE_VAL, HUGE_VAL, &temperature)) return 2;
    } else if (!strcmp(a, "--top-p")) {
      NEXT();
      if (mf_double("run", a, v, -HUGE_VAL, HUGE_VAL, &top_p)) return 2;
    } else if (!strcmp(a, "--min-p")) {
      NEXT();
      if (mf_double("run", a, v, -HUGE_VAL, HUGE_VAL, &min_p)) return 2;
    } else if (!strcmp(a, "--repetition-penalty")) {
      NEXT();
      if (mf_double("run", a, v, -HUGE_VAL, HUGE_VAL, &rep)) return 2;
    } else if (!strcmp(a, "--presence-penalty")) {
      NEXT();
      if (mf_double("run", a, v, -HUGE_VAL, HUGE_VAL, &presence)) return 2;
    } else if (!strcmp(a, "--frequency-penalty")) {
      NEXT();
      if (mf_double("run", a, v, -HUGE_VAL, HUGE_VAL, &frequency)) return 2;
    } else if (!strcmp(a, "--top-k")) {
      NEXT();
      if (mf_int("run", a, v, -1, 1 << 30, &top_k)) return 2;
    } else if (!strcmp(a, "--max-tokens")) {
      NEXT();
      if (mf_int("run", a, v, 1, 1 << 30, &max_tokens)) return 2;
    } else if (!strcmp(a, "--min-tokens")) {
      NEXT();
      if (mf_int("run", a, v, 0, 1 << 30, &min_tokens)) return 2;
    } else if (!strcmp(a, "--seed")) {
      NEXT();
      if (mf_int("run", a, v, -(1LL << 62), 1LL << 62, &seed)) return 2;
      has_seed = 1;
    } else {
      fprintf(stderr, "earshot run: unknown argument '%s'\n\n", a);
      usage(stderr);
      return 2;
    }
#undef NEXT
  }
  if (!ro.model && !(ro.dummy_weights && ro.config)) {
    fprintf(stderr, "earshot run: --model is required\n\n");
    usage(stderr);
    return 2;
  }
  if (n_audio_paths == 0 && !prompt) {
    fprintf(stderr, "earshot run: give at least one --audio (or a --prompt)\n\n");
    usage(stderr);
    return 2;
  }

  int status = 1, rc;
  rt_t rt;
  eng_request_t req;
  memset(&req, 0, sizeof req);
  tok_text_t text = {0};
  tok_ids_t ids = {0};
  run_sink_t sink = {.json = json};
  pthread_mutex_init(&sink.mu, NULL);
  pthread_cond_init(&sink.cv, NULL);
  int rt_open_ok = 0;

  /* audio first: a bad file is reported before the model is loaded */
  for (int k = 0; k < n_audio_paths; k++) {
    if ((rc = load_audio(audio_paths[k], &req.audios[k].samples, &req.audios[k].n_samples, &err))) goto fail;
    req.n_audios = (size_t)k + 1;
  }
  if ((rc = rt_open(&ro, &rt, &err))) goto fail;
  rt_open_ok = 1;
  if (!rt.tok) {
    rc = es_fail(&err, ES_EINVAL, "%s has no tokenizer (tokenizer.json or vocab.json + merges.txt)", rt.dir);
    goto fail;
  }

  /* the prompt text, then the ids with each audio's placeholder expanded to its windows' tokens */
  if (raw) {
    rc = prompt_render_raw(req.n_audios, prompt, &text, &err);
  } else {
    prompt_part_t parts[MAX_RUN_AUDIOS + 1];
    size_t np = 0;
    for (size_t k = 0; k < req.n_audios; k++) parts[np++] = (prompt_part_t){.type = PROMPT_PART_AUDIO};
    if (prompt) parts[np++] = (prompt_part_t){.type = PROMPT_PART_TEXT, .text = prompt};
    prompt_message_t msgs[2];
    size_t nm = 0;
    if (system) msgs[nm++] = (prompt_message_t){.role = "system", .content = system};
    msgs[nm++] = (prompt_message_t){.role = "user", .parts = parts, .n_parts = np};
    rc = prompt_render_chat(msgs, nm, 1, &text, NULL, &err);
  }
  if (rc) goto fail;
  int32_t window_tokens[MAX_RUN_AUDIOS][64];
  prompt_audio_t pa[MAX_RUN_AUDIOS];
  for (size_t k = 0; k < req.n_audios; k++) {
    audio_window_t w[64];
    size_t nw = 0;
    if ((rc = audio_windows(req.audios[k].n_samples, policy, w, 64, &nw, &err))) goto fail;
    for (size_t j = 0; j < nw; j++) window_tokens[k][j] = w[j].audio_tokens;
    pa[k] = (prompt_audio_t){.window_tokens = window_tokens[k], .n_windows = nw};
  }
  if ((rc = prompt_encode(rt.tok, &rt.special, text.data, text.len, pa, req.n_audios, &ids, &err))) goto fail;

  req.prompt_ids = ids.ids;
  req.n_prompt = ids.n;
  req.long_audio = policy;
  rt_default_sampling(&rt, &req.sampling);
  if (temperature >= 0) req.sampling.temperature = temperature;
  if (top_p >= 0) req.sampling.top_p = top_p;
  if (min_p >= 0) req.sampling.min_p = min_p;
  if (rep >= 0) req.sampling.repetition_penalty = rep;
  if (top_k >= -1) req.sampling.top_k = (int)top_k;
  req.sampling.presence_penalty = presence;
  req.sampling.frequency_penalty = frequency;
  if (max_tokens > 0) req.sampling.max_tokens = (int)max_tokens;
  if (req.sampling.max_tokens > rt.max_model_len - (int)ids.n) req.sampling.max_tokens = rt.max_model_len - (int)ids.n;
  if (req.sampling.max_tokens < 1) {
    rc = es_fail(&err, ES_ETOOBIG, "the prompt (%zu tokens) fills the context (%d)", ids.n, rt.max_model_len);
    goto fail;
  }
  req.sampling.min_tokens = (int)min_tokens;
  req.sampling.ignore_eos = ignore_eos;
  req.sampling.has_seed = has_seed;
  req.sampling.seed = (uint64_t)seed;
  for (int i = 0; i < n_stops; i++) req.stop[i] = stops[i];
  req.n_stop = n_stops;
  req.skip_special = 1;
  req.callback = on_event;
  req.callback_ctx = &sink;
  uint64_t id;
  if ((rc = eng_submit(rt.engine, &req, &id, &err))) goto fail;
  memset(req.audios, 0, sizeof req.audios); /* the engine owns the samples now */
  req.n_audios = 0;

  pthread_mutex_lock(&sink.mu);
  while (!sink.done) pthread_cond_wait(&sink.cv, &sink.mu);
  pthread_mutex_unlock(&sink.mu);
  if (sink.finish == ENG_FINISH_ERROR) {
    fprintf(stderr, "earshot run: %s\n", sink.error);
  } else if (sink.oom) {
    fprintf(stderr, "earshot run: out of memory collecting the output\n");
  } else {
    if (json)
      print_json(&sink, &rt);
    else
      printf("\n");
    status = 0;
  }
  goto out;
fail:
  fprintf(stderr, "earshot run: %s\n", err.msg);
out:
  for (size_t k = 0; k < req.n_audios; k++) free(req.audios[k].samples);
  if (rt_open_ok) rt_close(&rt);
  tok_text_free(&text);
  tok_ids_free(&ids);
  tok_text_free(&sink.text);
  tok_ids_free(&sink.ids);
  pthread_mutex_destroy(&sink.mu);
  pthread_cond_destroy(&sink.cv);
  return status;
}
