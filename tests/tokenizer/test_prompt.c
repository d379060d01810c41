/* test_prompt: chat template, raw and ASR prompts, placeholder expansion.
 *
 * Oracles: the transformers test vector of SPEC §5.3 (tests/models/qwen2_audio/test_processor_qwen2_audio.py:
 * two audios of 101 and 73 tokens, id for id), and the golden cases of tests/golden/fixtures/manifest.json that
 * use the real tokenizer (checkpoint tiny-a): each case's messages must render to its prompt_text and encode,
 * with the per-window token counts of its audios, to its prompt_ids.
 */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "es_file.h"
#include "golden.h"
#include "prompt.h"
#include "test_util.h"

#define TOK_DIR ES_SOURCE_DIR "/tests/data/qwen2-audio-tokenizer"

static const char SPEC_TEXT[] =
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nAudio 1: "
    "<|audio_bos|><|AUDIO|><|audio_eos|>\nWhat's that sound?<|im_end|>\n<|im_start|>assistant\nIt is the sound of "
    "glass shattering.<|im_end|>\n<|im_start|>user\nAudio 2: <|audio_bos|><|AUDIO|><|audio_eos|>\nHow about this "
    "one?<|im_end|>\n<|im_start|>assistant\n";

/* The expected ids with the two audio runs written as (-N): 101 and 73 copies of <|AUDIO|>. */
static const int32_t SPEC_IDS[] = {151644, 8948, 198, 2610,  525,  264,  10950,  17847, 13,     151645, 198,
                                   151644, 872,  198, 14755, 220,  16,   25,     220,   151647, -101,   151648,
                                   198,    3838, 594, 429,   5112, 30,   151645, 198,   151644, 77091,  198,
                                   2132,   374,  279, 5112,  315,  8991, 557,    30336, 13,     151645, 198,
                                   151644, 872,  198, 14755, 220,  17,   25,     220,   151647, -73,    151648,
                                   198,    4340, 911, 419,   825,  30,   151645, 198,   151644, 77091,  198};

static void test_spec_vector(const tok_t *t, const prompt_special_t *sp) {
  es_error_t err;
  prompt_part_t u1[] = {{PROMPT_PART_AUDIO, NULL}, {PROMPT_PART_TEXT, "What's that sound?"}};
  prompt_part_t u2[] = {{PROMPT_PART_AUDIO, NULL}, {PROMPT_PART_TEXT, "How about this one?"}};
  prompt_message_t msgs[] = {
      {"user", NULL, u1, 2},
      {"assistant", "It is the sound of glass shattering.", NULL, 0},
      {"user", NULL, u2, 2},
  };
  tok_text_t text = {0};
  size_t n_audios = 0;
  T_REQUIRE(prompt_render_chat(msgs, 3, 1, &text, &n_audios, &err) == ES_OK, "%s", err.msg);
  T_CHECK(strcmp(text.data, SPEC_TEXT) == 0, "rendered:\n%s", text.data);
  T_CHECK(n_audios == 2, "n_audios %zu", n_audios);

  int32_t w1[] = {101}, w2[] = {73};
  prompt_audio_t audios[] = {{w1, 1}, {w2, 1}};
  tok_ids_t ids = {0};
  T_REQUIRE(prompt_encode(t, sp, text.data, text.len, audios, 2, &ids, &err) == ES_OK, "%s", err.msg);
  tok_ids_t want = {0};
  for (size_t i = 0; i < sizeof SPEC_IDS / sizeof *SPEC_IDS; i++) {
    if (SPEC_IDS[i] < 0)
      for (int k = 0; k < -SPEC_IDS[i]; k++) tok_ids_push(&want, 151646, &err);
    else
      tok_ids_push(&want, SPEC_IDS[i], &err);
  }
  size_t i = 0;
  while (i < ids.n && i < want.n && ids.ids[i] == want.ids[i]) i++;
  T_CHECK(ids.n == want.n && i == want.n, "SPEC §5.3 vector: %zu vs %zu ids, first difference at %zu", ids.n, want.n,
          i);
  tok_ids_free(&ids);
  tok_ids_free(&want);
  tok_text_free(&text);
}

/* Builds prompt messages from a golden case's OpenAI-style messages. */
static int messages_from_json(const cJSON *arr, prompt_message_t *msgs, prompt_part_t *parts, size_t cap,
                              size_t *n_msgs) {
  size_t m = 0, p = 0;
  for (const cJSON *e = arr->child; e; e = e->next, m++) {
    msgs[m] = (prompt_message_t){.role = cJSON_GetObjectItem(e, "role")->valuestring};
    const cJSON *c = cJSON_GetObjectItem(e, "content");
    if (cJSON_IsString(c)) {
      msgs[m].content = c->valuestring;
      continue;
    }
    msgs[m].parts = parts + p;
    for (const cJSON *x = c->child; x; x = x->next) {
      if (p >= cap) return -1;
      const char *type = cJSON_GetObjectItem(x, "type")->valuestring;
      if (strcmp(type, "audio") == 0)
        parts[p++] = (prompt_part_t){PROMPT_PART_AUDIO, NULL};
      else
        parts[p++] = (prompt_part_t){PROMPT_PART_TEXT, cJSON_GetObjectItem(x, "text")->valuestring};
      msgs[m].n_parts++;
    }
  }
  *n_msgs = m;
  return 0;
}

static void test_golden_cases(const tok_t *t, const prompt_special_t *sp, const golden_t *g) {
  es_error_t err;
  const cJSON *cases = cJSON_GetObjectItem(g->manifest, "cases");
  const cJSON *audios_json = cJSON_GetObjectItem(g->manifest, "audios");
  int checked = 0;
  for (const cJSON *c = cases ? cases->child : NULL; c; c = c->next) {
    const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
    const char *fmt = cJSON_GetObjectItem(c, "prompt_format")->valuestring;
    const char *ckpt = cJSON_GetObjectItem(c, "checkpoint")->valuestring;
    if (strcmp(ckpt, "tiny-a") != 0 || strcmp(fmt, "ids") == 0) continue;
    const char *policy = cJSON_GetObjectItem(c, "long_audio")->valuestring;
    const char *want_text = cJSON_GetObjectItem(c, "prompt_text")->valuestring;
    tok_text_t text = {0};
    size_t n_audios = (size_t)cJSON_GetArraySize(cJSON_GetObjectItem(c, "audios"));
    if (strcmp(fmt, "chat") == 0) {
      prompt_message_t msgs[16];
      prompt_part_t parts[64];
      size_t n = 0, counted = 0;
      T_REQUIRE(messages_from_json(cJSON_GetObjectItem(c, "messages"), msgs, parts, 64, &n) == 0, "%s", name);
      T_CHECK(prompt_render_chat(msgs, n, 1, &text, &counted, &err) == ES_OK, "%s: %s", name, err.msg);
      T_CHECK(counted == n_audios, "%s: %zu audio parts, %zu audios", name, counted, n_audios);
    } else {
      /* raw: the task is what follows the audio spans in the reference text */
      const char *task = want_text + strlen("<|audio_bos|><|AUDIO|><|audio_eos|>") * n_audios;
      T_CHECK(prompt_render_raw(n_audios, task, &text, &err) == ES_OK, "%s: %s", name, err.msg);
    }
    T_CHECK(text.data && strcmp(text.data, want_text) == 0, "%s: rendered text differs:\n%s", name, text.data);

    /* per-window token counts of each audio under the case's long-audio policy */
    int32_t windows[16][8];
    prompt_audio_t pa[16];
    size_t k = 0;
    for (const cJSON *a = cJSON_GetObjectItem(c, "audios")->child; a && k < 16; a = a->next, k++) {
      const cJSON *ws =
          cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(audios_json, a->valuestring), "windows"), policy);
      pa[k] = (prompt_audio_t){windows[k], 0};
      for (const cJSON *w = ws ? ws->child : NULL; w && pa[k].n_windows < 8; w = w->next)
        windows[k][pa[k].n_windows++] = (int32_t)cJSON_GetObjectItem(w, "audio_tokens")->valuedouble;
    }
    tok_ids_t ids = {0};
    T_CHECK(prompt_encode(t, sp, text.data, text.len, pa, k, &ids, &err) == ES_OK, "%s: %s", name, err.msg);
    npy_array_t want = {0};
    T_REQUIRE(golden_read_npy(g, cJSON_GetObjectItem(c, "prompt_ids")->valuestring, &want, &err) == ES_OK, "%s",
              err.msg);
    const int32_t *w = want.data;
    size_t i = 0;
    while (i < ids.n && i < (size_t)want.count && ids.ids[i] == w[i]) i++;
    T_CHECK(want.dtype == NPY_I32 && ids.n == (size_t)want.count && i == ids.n,
            "%s: prompt ids differ from transformers (%zu vs %lld ids, first difference at %zu)", name, ids.n,
            (long long)want.count, i);
    npy_free(&want);
    tok_ids_free(&ids);
    tok_text_free(&text);
    checked++;
  }
  T_CHECK(checked >= 5, "only %d golden prompt cases found", checked);
  printf("%d golden prompt cases identical to transformers\n", checked);
}

static void test_template_rules(void) {
  es_error_t err;
  tok_text_t s = {0};
  /* an explicit system message replaces the default one */
  prompt_message_t sys[] = {{"system", "Be brief.", NULL, 0}, {"user", "Hi", NULL, 0}};
  T_CHECK(prompt_render_chat(sys, 2, 0, &s, NULL, &err) == ES_OK &&
              strcmp(s.data, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n") == 0,
          "explicit system: %s", s.data);
  /* text before an audio is glued to "Audio k:"; k counts across turns; several audios in one turn */
  prompt_part_t p1[] = {{PROMPT_PART_TEXT, "Compare:"}, {PROMPT_PART_AUDIO, NULL}, {PROMPT_PART_AUDIO, NULL}};
  prompt_part_t p2[] = {{PROMPT_PART_AUDIO, NULL}};
  prompt_message_t m[] = {{"user", NULL, p1, 3}, {"assistant", "Same.", NULL, 0}, {"user", NULL, p2, 1}};
  size_t na = 0;
  T_CHECK(prompt_render_chat(m, 3, 1, &s, &na, &err) == ES_OK, "%s", err.msg);
  const char *want = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nCompare:Audio 1: "
                     "<|audio_bos|><|AUDIO|><|audio_eos|>\nAudio 2: <|audio_bos|><|AUDIO|><|audio_eos|>\n<|im_end|>\n"
                     "<|im_start|>assistant\nSame.<|im_end|>\n<|im_start|>user\nAudio 3: "
                     "<|audio_bos|><|AUDIO|><|audio_eos|>\n<|im_end|>\n<|im_start|>assistant\n";
  T_CHECK(strcmp(s.data, want) == 0 && na == 3, "multi-audio numbering:\n%s", s.data);

  T_CHECK(prompt_render_raw(1, "Generate the caption in English:", &s, &err) == ES_OK &&
              strcmp(s.data, "<|audio_bos|><|AUDIO|><|audio_eos|>Generate the caption in English:") == 0,
          "raw: %s", s.data);

  /* malformed conversations */
  prompt_message_t bad_role[] = {{"tool", "x", NULL, 0}};
  T_CHECK(prompt_render_chat(bad_role, 1, 1, &s, NULL, &err) == ES_EINVAL && strstr(err.msg, "tool"), "role: %s",
          err.msg);
  prompt_message_t no_role[] = {{NULL, "x", NULL, 0}};
  T_CHECK(prompt_render_chat(no_role, 1, 1, &s, NULL, &err) == ES_EINVAL, "no role");
  prompt_message_t empty[] = {{"user", "Hi", NULL, 0}, {"assistant", "", NULL, 0}};
  T_CHECK(prompt_render_chat(empty, 2, 1, &s, NULL, &err) == ES_EINVAL && strstr(err.msg, "message 1") &&
              strstr(err.msg, "empty"),
          "empty string: %s", err.msg);
  prompt_message_t no_parts[] = {{"user", NULL, NULL, 0}};
  T_CHECK(prompt_render_chat(no_parts, 1, 1, &s, NULL, &err) == ES_EINVAL && strstr(err.msg, "empty"), "no parts: %s",
          err.msg);
  T_CHECK(prompt_render_chat(no_parts, 0, 1, &s, NULL, &err) == ES_EINVAL, "no messages");
  tok_text_free(&s);
}

static void test_expansion(const tok_t *t, const prompt_special_t *sp) {
  es_error_t err;
  tok_ids_t ids = {0};
  /* a split audio: its windows back to back in one span */
  int32_t w[] = {750, 750, 124};
  prompt_audio_t a = {w, 3};
  const char *text = "<|audio_bos|><|AUDIO|><|audio_eos|>x";
  T_REQUIRE(prompt_encode(t, sp, text, strlen(text), &a, 1, &ids, &err) == ES_OK, "%s", err.msg);
  T_CHECK(ids.n == 1624 + 3 && ids.ids[0] == sp->audio_bos_id && ids.ids[1625] == sp->audio_eos_id,
          "split audio span: %zu ids", ids.n);
  int run = 1;
  for (size_t i = 1; i <= 1624; i++) run &= ids.ids[i] == sp->audio_token_id;
  T_CHECK(run, "split audio span holds 1624 placeholders");
  /* a bare placeholder gets bos/eos, as the 4.4x-4.5x processor adds them */
  ids.n = 0;
  int32_t three[] = {3};
  prompt_audio_t b = {three, 1};
  T_CHECK(prompt_encode(t, sp, "<|AUDIO|>", 9, &b, 1, &ids, &err) == ES_OK && ids.n == 5 &&
              ids.ids[0] == sp->audio_bos_id && ids.ids[4] == sp->audio_eos_id,
          "bare placeholder: %zu ids", ids.n);
  /* N = 0 (audio of <= 320 samples): an empty span */
  ids.n = 0;
  int32_t zero[] = {0};
  prompt_audio_t z = {zero, 1};
  T_CHECK(prompt_encode(t, sp, text, strlen(text), &z, 1, &ids, &err) == ES_OK && ids.n == 3, "N = 0: %zu ids", ids.n);
  /* count mismatches: a stray placeholder in user text, or too many audios */
  ids.n = 0;
  const char *two = "<|audio_bos|><|AUDIO|><|audio_eos|> and <|AUDIO|>";
  T_CHECK(prompt_encode(t, sp, two, strlen(two), &a, 1, &ids, &err) == ES_EINVAL && strstr(err.msg, "2 audio") &&
              ids.n == 0,
          "2 placeholders, 1 audio: %s", err.msg);
  prompt_audio_t aa[2] = {a, a};
  T_CHECK(prompt_encode(t, sp, text, strlen(text), aa, 2, &ids, &err) == ES_EINVAL && strstr(err.msg, "1 audio"),
          "1 placeholder, 2 audios: %s", err.msg);
  int32_t neg[] = {-1};
  prompt_audio_t n = {neg, 1};
  T_CHECK(prompt_encode(t, sp, text, strlen(text), &n, 1, &ids, &err) == ES_EINVAL, "negative N");
  tok_ids_free(&ids);
}

/* A tokenizer.json with one more added token, "<|en|>", as the real checkpoint's language tags. */
static int write_with_language_tag(const char *dst, int32_t *tag_id) {
  char *buf = NULL;
  size_t len = 0;
  es_error_t err;
  if (es_read_file(TOK_DIR "/tokenizer.json", 64 << 20, &buf, &len, &err)) return -1;
  cJSON *root = cJSON_Parse(buf);
  free(buf);
  cJSON *added = cJSON_GetObjectItem(root, "added_tokens");
  int32_t max_id = 0;
  for (cJSON *e = added->child; e; e = e->next) {
    int32_t id = (int32_t)cJSON_GetObjectItem(e, "id")->valuedouble;
    if (id > max_id) max_id = id;
  }
  *tag_id = max_id + 1;
  cJSON *tag = cJSON_CreateObject();
  cJSON_AddNumberToObject(tag, "id", *tag_id);
  cJSON_AddStringToObject(tag, "content", "<|en|>");
  cJSON_AddBoolToObject(tag, "special", 1);
  cJSON_AddBoolToObject(tag, "normalized", 0);
  cJSON_AddItemToArray(added, tag);
  char *out = cJSON_PrintUnformatted(root);
  int rc = es_write_file(dst, out, strlen(out), &err);
  free(out);
  cJSON_Delete(root);
  return rc;
}

static void test_asr(const tok_t *plain, const char *build_dir, const prompt_special_t *sp) {
  es_error_t err;
  tok_text_t s = {0};
  int tagged = -1;
  const char *base = "<|audio_bos|><|AUDIO|><|audio_eos|>Detect the language and recognize the speech:";
  T_CHECK(prompt_render_asr(plain, 1, NULL, &s, &tagged, &err) == ES_OK && strcmp(s.data, base) == 0 && !tagged,
          "asr, no language: %s", s.data);
  T_CHECK(prompt_render_asr(plain, 1, "en", &s, &tagged, &err) == ES_OK && strcmp(s.data, base) == 0 && !tagged,
          "asr, a language the tokenizer has no tag for: %s", s.data);
  char path[4096];
  snprintf(path, sizeof path, "%s/tokenizer-with-en.json", build_dir);
  int32_t tag_id = -1;
  T_REQUIRE(write_with_language_tag(path, &tag_id) == 0, "cannot write %s", path);
  tok_t *t = NULL;
  T_REQUIRE(tok_load_tokenizer_json(path, &t, &err) == ES_OK, "%s", err.msg);
  T_CHECK(prompt_render_asr(t, 1, "en", &s, &tagged, &err) == ES_OK && tagged &&
              strncmp(s.data, base, strlen(base)) == 0 && strcmp(s.data + strlen(base), " <|en|>") == 0,
          "asr with a tag: %s", s.data);
  int32_t w[] = {25};
  prompt_audio_t a = {w, 1};
  tok_ids_t ids = {0};
  T_CHECK(prompt_encode(t, sp, s.data, s.len, &a, 1, &ids, &err) == ES_OK && ids.n > 2 &&
              ids.ids[ids.n - 1] == tag_id && ids.ids[ids.n - 2] == 220,
          "the tag is one token after a space");
  T_CHECK(prompt_render_asr(t, 1, "<|en|>", &s, &tagged, &err) == ES_OK && tagged, "asr accepts <|en|>");
  T_CHECK(prompt_render_asr(t, 1, "xx", &s, &tagged, &err) == ES_OK && !tagged && strcmp(s.data, base) == 0,
          "asr, unknown language");
  tok_ids_free(&ids);
  tok_text_free(&s);
  tok_free(t);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_prompt BUILD_DIR\n");
    return 2;
  }
  es_error_t err;
  golden_t g = {0};
  tok_t *t = NULL;
  if (golden_open(&g, ES_SOURCE_DIR, &err) != ES_OK) {
    T_CHECK(0, "%s", err.msg);
    return t_finish();
  }
  T_CHECK(tok_load(TOK_DIR, &t, &err) == ES_OK, "%s", err.msg);
  /* the placeholder id comes from the checkpoint's config (here as the manifest records it) */
  const cJSON *ck = cJSON_GetObjectItem(cJSON_GetObjectItem(g.manifest, "checkpoints"), "tiny-a");
  int64_t audio_id = -1;
  T_CHECK(golden_get_int(ck, "audio_token_id", &audio_id, &err) == ES_OK, "%s", err.msg);
  prompt_special_t sp;
  if (t && prompt_special_init(&sp, t, (int32_t)audio_id, &err) == ES_OK) {
    T_CHECK(sp.audio_bos_id == 151647 && sp.audio_eos_id == 151648 && sp.im_start_id == 151644 &&
                sp.im_end_id == 151645,
            "special ids from the tokenizer");
    prompt_special_t wrong;
    T_CHECK(prompt_special_init(&wrong, t, 151645, &err) == ES_EINVAL, "a config audio id that is not <|AUDIO|>");
    test_spec_vector(t, &sp);
    test_golden_cases(t, &sp, &g);
    test_expansion(t, &sp);
    test_asr(t, argv[1], &sp);
  } else {
    T_CHECK(0, "prompt_special_init: %s", err.msg);
  }
  test_template_rules();
  tok_free(t);
  golden_close(&g);
  return t_finish();
}
