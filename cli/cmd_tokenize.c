/* cmd_tokenize: `earshot tokenize` (text or a chat file -> ids) and `earshot detokenize` (ids -> text).
 *
 * tokenize --model DIR TEXT     prints the ids of TEXT ("-" reads stdin) as one JSON array.
 * tokenize --model DIR --chat FILE
 *                               renders an OpenAI-style messages file with the Instruct chat template
 *                               (SPEC §5.3) and prints the expanded prompt ids. Audio parts name files
 *                               ({"type":"audio","audio":PATH}, {"type":"audio_url","audio_url":{"url":PATH}}),
 *                               decoded with FFmpeg (or .npy = 16 kHz float32 samples) and cut into windows under
 *                               --long-audio, N per window; relative paths are relative to the chat file. For
 *                               tests without audio, {"type":"audio","audio_tokens":N or [N, ...]} gives N.
 * detokenize --model DIR IDS... prints the text of the ids (as "1 2 3", "1,2,3" or "[1,2,3]").
 *
 * The audio placeholder id comes from the model's config.json (audio_token_index); a directory with only
 * tokenizer files falls back to the tokenizer's "<|AUDIO|>" and says so on stderr.
 * Exit codes: 0 success, 1 failure (a message on stderr), 2 usage error.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "audio_mel.h"
#include "config.h"
#include "es_clock.h"
#include "es_file.h"
#include "model_path.h"
#include "npy.h"
#include "prompt.h"
#include "tokenizer.h"
#ifdef EARSHOT_HAVE_AUDIO_DECODE
#include "audio_decode.h"
#endif

int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);

#define MAX_TEXT_BYTES ((size_t)256 << 20)
#define MAX_WINDOWS 256 /* 2 hours of split audio */

static void tokenize_usage(FILE *out) {
  fprintf(out, "usage: earshot tokenize --model DIR|ORG/NAME (TEXT | - | --chat FILE) [options]\n"
               "\n"
               "  TEXT                     text to encode; - reads it from stdin\n"
               "  --chat FILE              OpenAI-style messages (a JSON array, or an object with \"messages\"),\n"
               "                           rendered with the chat template; audio parts are file paths\n"
               "  --no-generation-prompt   leave out the trailing \"<|im_start|>assistant\\n\"\n"
               "  --long-audio truncate|split   audio over 30 s: the first 30 s (default) or every window\n"
               "  --print-prompt           print the rendered prompt text (before expansion) instead of ids\n"
               "  --bench RUNS             time RUNS encodes of TEXT on one thread and print a JSON summary\n"
               "                           instead of the ids (scripts/bench-tokenizer.sh)\n"
               "\n"
               "Prints the ids as one JSON array.\n");
}

static void detokenize_usage(FILE *out) {
  fprintf(out, "usage: earshot detokenize --model DIR|ORG/NAME [--skip-special] IDS...\n"
               "\n"
               "  IDS                      token ids: \"1 2 3\", \"1,2,3\" or \"[1,2,3]\"\n"
               "  --skip-special           leave out special tokens\n"
               "\n"
               "Prints the decoded text followed by a newline. Ids past the tokenizer's table decode to \"\".\n");
}

static int load_tokenizer(const char *model, char *dir, size_t cap, tok_t **tok) {
  es_error_t err;
  model_path_t mp;
  if (mpath_resolve(model, &mp, &err) != ES_OK || tok_load(mp.dir, tok, &err) != ES_OK) {
    fprintf(stderr, "earshot: %s\n", err.msg);
    return 1;
  }
  snprintf(dir, cap, "%s", mp.dir);
  return 0;
}

/* All of stdin (a pipe is not a regular file, so es_read_file does not take it). */
static int read_stdin(char **out, size_t *len, es_error_t *err) {
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap);
  while (buf) {
    n += fread(buf + n, 1, cap - n, stdin);
    if (n < cap) break;
    if (cap >= MAX_TEXT_BYTES) {
      free(buf);
      return es_fail(err, ES_ETOOBIG, "stdin: more than %zu bytes", MAX_TEXT_BYTES);
    }
    char *nb = realloc(buf, cap * 2);
    if (!nb) free(buf);
    buf = nb;
    cap *= 2;
  }
  if (!buf) return es_fail(err, ES_ENOMEM, "stdin: out of memory");
  if (ferror(stdin)) {
    free(buf);
    return es_fail(err, ES_EIO, "stdin: read error");
  }
  *out = buf;
  *len = n;
  return ES_OK;
}

static void print_ids(const tok_ids_t *ids) {
  fputc('[', stdout);
  for (size_t i = 0; i < ids->n; i++) printf(i ? ",%d" : "%d", (int)ids->ids[i]);
  fputs("]\n", stdout);
}

/* --- chat files ------------------------------------------------------------------------------ */

typedef struct {
  prompt_message_t *msgs;
  prompt_part_t *parts;
  prompt_audio_t *audios;
  int32_t *windows; /* [n_audios * MAX_WINDOWS] */
  size_t n_msgs, n_audios;
} chat_t;

static void chat_free(chat_t *c) {
  free(c->msgs);
  free(c->parts);
  free(c->audios);
  free(c->windows);
  memset(c, 0, sizeof *c);
}

/* The per-window token counts of an audio file under policy. */
static int audio_file_tokens(const char *path, audio_long_policy_t policy, int32_t *out, size_t *n_out,
                             es_error_t *err) {
  size_t n = 0;
  npy_array_t arr = {0};
  size_t pl = strlen(path);
  int rc;
  if (pl > 4 && strcmp(path + pl - 4, ".npy") == 0) {
    if ((rc = npy_read(path, (size_t)1 << 30, &arr, err))) return rc;
    if (arr.dtype != NPY_F32 || arr.ndim != 1 || arr.count < 1) {
      npy_free(&arr);
      return es_fail(err, ES_EINVAL, "%s: expected 1-D float32 samples at 16 kHz", path);
    }
    n = (size_t)arr.count;
  } else {
#ifdef EARSHOT_HAVE_AUDIO_DECODE
    audio_pcm_t pcm;
    if ((rc = audio_decode_file(path, NULL, &pcm, err))) return rc;
    n = pcm.n;
    audio_pcm_free(&pcm);
#else
    return es_fail(err, ES_EUNSUPPORTED, "%s: this build has no audio decoder (FFmpeg); give a .npy file", path);
#endif
  }
  npy_free(&arr);
  audio_window_t w[MAX_WINDOWS];
  size_t nw = 0;
  if ((rc = audio_windows(n, policy, w, MAX_WINDOWS, &nw, err))) return es_error_prefix(err, "%s: ", path);
  for (size_t i = 0; i < nw; i++) out[i] = w[i].audio_tokens;
  *n_out = nw;
  return ES_OK;
}

static int audio_part(const cJSON *part, const char *type, const char *base_dir, audio_long_policy_t policy,
                      int32_t *windows, size_t *n_windows, es_error_t *err) {
  const cJSON *tokens = cJSON_GetObjectItemCaseSensitive(part, "audio_tokens");
  if (tokens) {
    size_t n = 0;
    if (cJSON_IsNumber(tokens)) windows[n++] = (int32_t)tokens->valuedouble;
    for (const cJSON *t = cJSON_IsArray(tokens) ? tokens->child : NULL; t && n < MAX_WINDOWS; t = t->next)
      windows[n++] = cJSON_IsNumber(t) ? (int32_t)t->valuedouble : -1;
    if (n == 0) return es_fail(err, ES_EINVAL, "audio_tokens must be a number or a list of numbers");
    *n_windows = n;
    return ES_OK;
  }
  const cJSON *src = cJSON_GetObjectItemCaseSensitive(part, "audio");
  if (strcmp(type, "audio_url") == 0)
    src = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(part, "audio_url"), "url");
  if (strcmp(type, "input_audio") == 0)
    return es_fail(err, ES_EUNSUPPORTED, "input_audio (inline base64) parts are for the server; give a file path");
  if (!cJSON_IsString(src) || !src->valuestring[0]) return es_fail(err, ES_EINVAL, "an audio part without a path");
  const char *p = src->valuestring;
  if (strncmp(p, "file://", 7) == 0) p += 7;
  char path[4096];
  if (p[0] == '/' || !base_dir[0])
    snprintf(path, sizeof path, "%s", p);
  else if (es_path_join(path, sizeof path, base_dir, p, err))
    return err->code;
  return audio_file_tokens(path, policy, windows, n_windows, err);
}

static int parse_chat(const cJSON *root, const char *base_dir, audio_long_policy_t policy, chat_t *c, es_error_t *err) {
  const cJSON *msgs = cJSON_IsArray(root) ? root : cJSON_GetObjectItemCaseSensitive(root, "messages");
  if (!cJSON_IsArray(msgs))
    return es_fail(err, ES_EINVAL, "expected a JSON array of messages (or {\"messages\": [...]})");
  size_t n = (size_t)cJSON_GetArraySize(msgs), n_parts = 0;
  for (const cJSON *m = msgs->child; m; m = m->next) {
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
    n_parts += cJSON_IsArray(content) ? (size_t)cJSON_GetArraySize(content) : 0;
  }
  c->msgs = calloc(n ? n : 1, sizeof *c->msgs);
  c->parts = calloc(n_parts ? n_parts : 1, sizeof *c->parts);
  c->audios = calloc(n_parts ? n_parts : 1, sizeof *c->audios);
  c->windows = calloc((n_parts ? n_parts : 1) * MAX_WINDOWS, sizeof *c->windows);
  if (!c->msgs || !c->parts || !c->audios || !c->windows) return es_fail(err, ES_ENOMEM, "out of memory");
  size_t i = 0, p = 0;
  for (const cJSON *m = msgs->child; m; m = m->next, i++) {
    prompt_message_t *pm = &c->msgs[i];
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role"),
                *content = cJSON_GetObjectItemCaseSensitive(m, "content");
    pm->role = cJSON_IsString(role) ? role->valuestring : NULL;
    if (cJSON_IsString(content)) {
      pm->content = content->valuestring;
      continue;
    }
    if (!cJSON_IsArray(content))
      return es_fail(err, ES_EINVAL, "message %zu: content must be a string or a list of parts", i);
    pm->parts = c->parts + p;
    size_t k = 0;
    for (const cJSON *part = content->child; part; part = part->next, k++) {
      const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
      const char *t = cJSON_IsString(type) ? type->valuestring : "";
      if (strcmp(t, "text") == 0) {
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsString(text)) return es_fail(err, ES_EINVAL, "message %zu, part %zu: text without \"text\"", i, k);
        c->parts[p++] = (prompt_part_t){PROMPT_PART_TEXT, text->valuestring};
      } else if (strcmp(t, "audio") == 0 || strcmp(t, "audio_url") == 0 || strcmp(t, "input_audio") == 0) {
        prompt_audio_t *a = &c->audios[c->n_audios];
        int32_t *w = c->windows + c->n_audios * MAX_WINDOWS;
        size_t nw = 0;
        int rc = audio_part(part, t, base_dir, policy, w, &nw, err);
        if (rc) return es_error_prefix(err, "message %zu, part %zu: ", i, k);
        *a = (prompt_audio_t){w, nw};
        c->n_audios++;
        c->parts[p++] = (prompt_part_t){PROMPT_PART_AUDIO, NULL};
      } else {
        return es_fail(err, ES_EINVAL, "message %zu, part %zu: unknown type \"%s\" (text, audio, audio_url)", i, k, t);
      }
      pm->n_parts++;
    }
  }
  c->n_msgs = n;
  return ES_OK;
}

/* audio_token_index from DIR/config.json; the tokenizer's <|AUDIO|> when there is no config. */
static int audio_token_id(const char *dir, const tok_t *tok, int32_t *id, es_error_t *err) {
  char path[4096];
  int rc = es_path_join(path, sizeof path, dir, "config.json", err);
  if (rc) return rc;
  if (!es_path_exists(path)) {
    *id = tok_token_id(tok, "<|AUDIO|>");
    fprintf(stderr, "earshot: %s has no config.json; using the tokenizer's <|AUDIO|> (id %d) as the audio token\n", dir,
            (int)*id);
    return ES_OK;
  }
  char *buf = NULL;
  size_t len = 0;
  if ((rc = es_read_file(path, CFG_MAX_FILE_BYTES, &buf, &len, err))) return rc;
  model_config_t cfg;
  cfg_defaults(&cfg);
  rc = cfg_parse_config(buf, len, path, &cfg, err);
  free(buf);
  if (rc == ES_OK) *id = cfg.audio_token_index;
  return rc;
}

static int tokenize_chat(const tok_t *tok, const char *dir, const char *chat_path, audio_long_policy_t policy,
                         int add_generation_prompt, int print_prompt) {
  es_error_t err;
  char *buf = NULL, base_dir[4096];
  size_t len = 0;
  cJSON *root = NULL;
  chat_t chat = {0};
  tok_text_t text = {0};
  tok_ids_t ids = {0};
  prompt_special_t sp;
  int32_t audio_id = -1;
  int rc = es_read_file(chat_path, MAX_TEXT_BYTES, &buf, &len, &err);
  if (rc) goto done;
  root = cJSON_ParseWithLength(buf, len);
  if (!root) {
    rc = es_fail(&err, ES_EINVAL, "%s: not valid JSON", chat_path);
    goto done;
  }
  snprintf(base_dir, sizeof base_dir, "%s", chat_path);
  char *slash = strrchr(base_dir, '/');
  if (slash)
    *slash = '\0';
  else
    base_dir[0] = '\0';
  if ((rc = parse_chat(root, base_dir, policy, &chat, &err))) {
    es_error_prefix(&err, "%s: ", chat_path);
    goto done;
  }
  size_t counted = 0;
  if ((rc = prompt_render_chat(chat.msgs, chat.n_msgs, add_generation_prompt, &text, &counted, &err))) {
    es_error_prefix(&err, "%s: ", chat_path);
    goto done;
  }
  if (print_prompt) {
    fwrite(text.data, 1, text.len, stdout);
    goto done;
  }
  if ((rc = audio_token_id(dir, tok, &audio_id, &err)) || (rc = prompt_special_init(&sp, tok, audio_id, &err)) ||
      (rc = prompt_encode(tok, &sp, text.data, text.len, chat.audios, chat.n_audios, &ids, &err)))
    goto done;
  print_ids(&ids);
done:
  if (rc) fprintf(stderr, "earshot: %s\n", err.msg);
  tok_ids_free(&ids);
  tok_text_free(&text);
  chat_free(&chat);
  cJSON_Delete(root);
  free(buf);
  return rc ? 1 : 0;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Median seconds per encode of text, cold (a new encoder, so an empty word cache, per run: what one request
 * sees) and warm (one encoder reused: a long-lived worker thread). */
static int bench_encode(const tok_t *tok, const char *text, size_t len, int runs) {
  es_error_t err;
  double *cold = calloc((size_t)runs, sizeof *cold), *warm = calloc((size_t)runs, sizeof *warm);
  tok_encoder_t *enc = NULL;
  tok_ids_t ids = {0};
  int rc = cold && warm ? tok_encoder_new(tok, &enc, &err) : es_fail(&err, ES_ENOMEM, "out of memory");
  for (int r = 0; r < runs && rc == ES_OK; r++) {
    ids.n = 0;
    double t0 = es_now_s();
    rc = tok_encode(tok, text, len, &ids, &err);
    cold[r] = es_now_s() - t0;
  }
  for (int r = 0; r < runs && rc == ES_OK; r++) {
    ids.n = 0;
    double t0 = es_now_s();
    rc = tok_encoder_encode(enc, text, len, &ids, &err);
    warm[r] = es_now_s() - t0;
  }
  if (rc == ES_OK) {
    qsort(cold, (size_t)runs, sizeof *cold, cmp_double);
    qsort(warm, (size_t)runs, sizeof *warm, cmp_double);
    double c = cold[runs / 2], w = warm[runs / 2];
    printf("{\"bytes\": %zu, \"ids\": %zu, \"runs\": %d, \"cold_s\": %.6f, \"warm_s\": %.6f, "
           "\"cold_mb_s\": %.2f, \"warm_mb_s\": %.2f}\n",
           len, ids.n, runs, c, w, (double)len / c / 1e6, (double)len / w / 1e6);
  } else {
    fprintf(stderr, "earshot: %s\n", err.msg);
  }
  tok_encoder_free(enc);
  tok_ids_free(&ids);
  free(cold);
  free(warm);
  return rc ? 1 : 0;
}

int cmd_tokenize(int argc, char **argv) {
  const char *model = NULL, *chat = NULL, *text = NULL;
  int add_gen = 1, print_prompt = 0, bench_runs = 0;
  audio_long_policy_t policy = AUDIO_LONG_TRUNCATE;
  es_error_t err;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      tokenize_usage(stdout);
      return 0;
    } else if (strcmp(a, "--model") == 0 && i + 1 < argc) {
      model = argv[++i];
    } else if (strcmp(a, "--chat") == 0 && i + 1 < argc) {
      chat = argv[++i];
    } else if (strcmp(a, "--long-audio") == 0 && i + 1 < argc) {
      if (audio_long_policy_parse(argv[++i], &policy, &err) != ES_OK) {
        fprintf(stderr, "earshot tokenize: %s\n", err.msg);
        return 2;
      }
    } else if (strcmp(a, "--no-generation-prompt") == 0) {
      add_gen = 0;
    } else if (strcmp(a, "--print-prompt") == 0) {
      print_prompt = 1;
    } else if (strcmp(a, "--bench") == 0 && i + 1 < argc) {
      bench_runs = atoi(argv[++i]);
      if (bench_runs < 1 || bench_runs > 10000) {
        fprintf(stderr, "earshot tokenize: --bench takes a number of runs (1..10000)\n");
        return 2;
      }
    } else if ((a[0] != '-' || strcmp(a, "-") == 0 || strcmp(a, "--") == 0) && !text) {
      text = strcmp(a, "--") == 0 && i + 1 < argc ? argv[++i] : a;
    } else {
      fprintf(stderr, "earshot tokenize: unexpected argument '%s'\n\n", a);
      tokenize_usage(stderr);
      return 2;
    }
  }
  if (!model || (!chat == !text) || (bench_runs && chat)) {
    tokenize_usage(stderr);
    return 2;
  }
  tok_t *tok = NULL;
  char dir[MPATH_MAX];
  if (load_tokenizer(model, dir, sizeof dir, &tok)) return 1;
  int rc = 0;
  if (chat) {
    rc = tokenize_chat(tok, dir, chat, policy, add_gen, print_prompt);
  } else {
    char *owned = NULL;
    size_t len = strlen(text);
    if (strcmp(text, "-") == 0 && read_stdin(&owned, &len, &err) != ES_OK) {
      fprintf(stderr, "earshot: %s\n", err.msg);
      tok_free(tok);
      return 1;
    }
    tok_ids_t ids = {0};
    if (bench_runs) {
      rc = bench_encode(tok, owned ? owned : text, len, bench_runs);
    } else if (tok_encode(tok, owned ? owned : text, len, &ids, &err) != ES_OK) {
      fprintf(stderr, "earshot: %s\n", err.msg);
      rc = 1;
    } else {
      print_ids(&ids);
    }
    tok_ids_free(&ids);
    free(owned);
  }
  tok_free(tok);
  return rc;
}

/* Appends the ids in s ("1 2 3", "1,2,3", "[1,2,3]") to out. */
static int parse_ids(const char *s, tok_ids_t *out, es_error_t *err) {
  const char *p = s;
  for (;;) {
    while (*p == ' ' || *p == ',' || *p == '[' || *p == ']' || *p == '\n' || *p == '\t') p++;
    if (!*p) return ES_OK;
    char *end = NULL;
    long v = strtol(p, &end, 10);
    if (end == p || v < -2147483647L || v > 2147483647L) return es_fail(err, ES_EINVAL, "not a token id: \"%.20s\"", p);
    int rc = tok_ids_push(out, (int32_t)v, err);
    if (rc) return rc;
    p = end;
  }
}

int cmd_detokenize(int argc, char **argv) {
  const char *model = NULL;
  int skip = 0;
  es_error_t err;
  tok_ids_t ids = {0};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      detokenize_usage(stdout);
      tok_ids_free(&ids);
      return 0;
    } else if (strcmp(a, "--model") == 0 && i + 1 < argc) {
      model = argv[++i];
    } else if (strcmp(a, "--skip-special") == 0) {
      skip = 1;
    } else if (strcmp(a, "--") == 0) {
      continue;
    } else if (parse_ids(a, &ids, &err) != ES_OK) {
      fprintf(stderr, "earshot detokenize: %s\n\n", err.msg);
      detokenize_usage(stderr);
      tok_ids_free(&ids);
      return 2;
    }
  }
  if (!model) {
    detokenize_usage(stderr);
    tok_ids_free(&ids);
    return 2;
  }
  tok_t *tok = NULL;
  char dir[MPATH_MAX];
  if (load_tokenizer(model, dir, sizeof dir, &tok)) {
    tok_ids_free(&ids);
    return 1;
  }
  tok_text_t text = {0};
  int rc = tok_decode(tok, ids.ids, ids.n, skip, &text, &err);
  if (rc)
    fprintf(stderr, "earshot: %s\n", err.msg);
  else {
    fwrite(text.data, 1, text.len, stdout);
    fputc('\n', stdout);
  }
  tok_text_free(&text);
  tok_ids_free(&ids);
  tok_free(tok);
  return rc ? 1 : 0;
}
