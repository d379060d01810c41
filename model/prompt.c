/* prompt: chat template, raw and ASR prompts, placeholder expansion. See prompt.h. */
#include "prompt.h"

#include <stdio.h>
#include <string.h>

/* The template's literal strings (SPEC §5.3); their ids come from the tokenizer. */
#define IM_START "<|im_start|>"
#define IM_END "<|im_end|>"
#define AUDIO_SPAN "<|audio_bos|><|AUDIO|><|audio_eos|>"
#define DEFAULT_SYSTEM "You are a helpful assistant."
#define ASR_TASK "Detect the language and recognize the speech:"

int prompt_special_init(prompt_special_t *sp, const tok_t *tok, int32_t audio_token_id, es_error_t *err) {
  static const char *const names[] = {"<|audio_bos|>", "<|audio_eos|>", "<|im_start|>", "<|im_end|>"};
  int32_t *slots[] = {&sp->audio_bos_id, &sp->audio_eos_id, &sp->im_start_id, &sp->im_end_id};
  for (int i = 0; i < 4; i++) {
    int32_t id = tok_token_id(tok, names[i]);
    if (id < 0 || !(tok_id_flags(tok, id) & TOK_ID_ADDED))
      return es_fail(err, ES_EINVAL, "tokenizer: no added token %s, which Qwen2-Audio prompts need", names[i]);
    *slots[i] = id;
  }
  int32_t audio = tok_token_id(tok, "<|AUDIO|>");
  if (audio < 0) return es_fail(err, ES_EINVAL, "tokenizer: no added token <|AUDIO|>, which Qwen2-Audio prompts need");
  if (audio != audio_token_id)
    return es_fail(err, ES_EINVAL, "config audio_token_index %d is not the tokenizer's <|AUDIO|> (id %d)",
                   (int)audio_token_id, (int)audio);
  sp->audio_token_id = audio_token_id;
  return ES_OK;
}

static int add(tok_text_t *out, const char *s, es_error_t *err) {
  return tok_text_append(out, s, strlen(s), err);
}

int prompt_render_chat(const prompt_message_t *msgs, size_t n, int add_generation_prompt, tok_text_t *out,
                       size_t *n_audios, es_error_t *err) {
  out->len = 0;
  if (n == 0) return es_fail(err, ES_EINVAL, "chat: no messages");
  size_t audio_count = 0;
  int rc = add(out, "", err);
  for (size_t i = 0; i < n && rc == ES_OK; i++) {
    const prompt_message_t *m = &msgs[i];
    const char *role = m->role ? m->role : "(none)";
    if (!m->role || (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant")))
      return es_fail(err, ES_EINVAL, "chat: message %zu has role \"%.40s\" (expected system, user or assistant)", i,
                     role);
    if (m->content ? !m->content[0] : m->n_parts == 0)
      return es_fail(err, ES_EINVAL, "chat: message %zu (%s) has empty content", i, role);
    if (i == 0 && strcmp(role, "system") != 0) rc = add(out, IM_START "system\n" DEFAULT_SYSTEM IM_END "\n", err);
    if (rc == ES_OK) rc = add(out, IM_START, err);
    if (rc == ES_OK) rc = add(out, role, err);
    if (rc == ES_OK) rc = add(out, "\n", err);
    if (m->content) {
      if (rc == ES_OK) rc = add(out, m->content, err);
    } else {
      for (size_t p = 0; p < m->n_parts && rc == ES_OK; p++) {
        const prompt_part_t *part = &m->parts[p];
        if (part->type == PROMPT_PART_AUDIO) {
          char line[64];
          snprintf(line, sizeof line, "Audio %zu: ", ++audio_count);
          rc = add(out, line, err);
          if (rc == ES_OK) rc = add(out, AUDIO_SPAN "\n", err);
        } else if (part->type == PROMPT_PART_TEXT && part->text) {
          rc = add(out, part->text, err);
        } else {
          return es_fail(err, ES_EINVAL, "chat: message %zu (%s), part %zu: neither text nor audio", i, role, p);
        }
      }
    }
    if (rc == ES_OK) rc = add(out, IM_END "\n", err);
  }
  if (rc == ES_OK && add_generation_prompt) rc = add(out, IM_START "assistant\n", err);
  if (rc == ES_OK && n_audios) *n_audios = audio_count;
  return rc;
}

int prompt_render_raw(size_t n_audios, const char *task, tok_text_t *out, es_error_t *err) {
  out->len = 0;
  int rc = add(out, "", err);
  for (size_t i = 0; i < n_audios && rc == ES_OK; i++) rc = add(out, AUDIO_SPAN, err);
  if (rc == ES_OK && task) rc = add(out, task, err);
  return rc;
}

int prompt_render_asr(const tok_t *tok, size_t n_audios, const char *language, tok_text_t *out, int *tagged,
                      es_error_t *err) {
  if (tagged) *tagged = 0;
  int rc = prompt_render_raw(n_audios, ASR_TASK, out, err);
  if (rc || !language || !language[0]) return rc;
  char tag[64];
  size_t ll = strlen(language);
  if (ll > 4 && strncmp(language, "<|", 2) == 0 && strcmp(language + ll - 2, "|>") == 0)
    snprintf(tag, sizeof tag, "%s", language);
  else
    snprintf(tag, sizeof tag, "<|%s|>", language);
  int32_t id = tok_token_id(tok, tag);
  if (id < 0 || !(tok_id_flags(tok, id) & TOK_ID_ADDED)) return ES_OK; /* not a language this checkpoint tags */
  rc = add(out, " ", err);
  if (rc == ES_OK) rc = add(out, tag, err);
  if (rc == ES_OK && tagged) *tagged = 1;
  return rc;
}

int prompt_encode(const tok_t *tok, const prompt_special_t *sp, const char *text, size_t len,
                  const prompt_audio_t *audios, size_t n_audios, tok_ids_t *out, es_error_t *err) {
  tok_ids_t raw = {0};
  int rc = tok_encode(tok, text, len, &raw, err);
  if (rc) return rc;
  size_t n0 = out->n, k = 0;
  for (size_t i = 0; i < raw.n && rc == ES_OK; i++) {
    int32_t id = raw.ids[i];
    if (id != sp->audio_token_id) {
      rc = tok_ids_push(out, id, err);
      continue;
    }
    if (k >= n_audios) {
      k++;
      continue; /* counted, reported below */
    }
    int64_t total = 0;
    for (size_t w = 0; w < audios[k].n_windows; w++) {
      if (audios[k].window_tokens[w] < 0) {
        rc = es_fail(err, ES_EINVAL, "prompt: audio %zu, window %zu has %d tokens", k + 1, w,
                     (int)audios[k].window_tokens[w]);
        break;
      }
      total += audios[k].window_tokens[w];
    }
    if (rc) break;
    if (total > INT32_MAX / 2) {
      rc = es_fail(err, ES_ETOOBIG, "prompt: audio %zu has %lld tokens", k + 1, (long long)total);
      break;
    }
    int has_bos = i > 0 && raw.ids[i - 1] == sp->audio_bos_id;
    int has_eos = i + 1 < raw.n && raw.ids[i + 1] == sp->audio_eos_id;
    int wrap = !has_bos && !has_eos;
    if (wrap) rc = tok_ids_push(out, sp->audio_bos_id, err);
    for (int64_t j = 0; j < total && rc == ES_OK; j++) rc = tok_ids_push(out, sp->audio_token_id, err);
    if (wrap && rc == ES_OK) rc = tok_ids_push(out, sp->audio_eos_id, err);
    k++;
  }
  if (rc == ES_OK && k != n_audios)
    rc = es_fail(err, ES_EINVAL, "prompt: %zu audio placeholder%s in the text but %zu audio%s given", k,
                 k == 1 ? "" : "s", n_audios, n_audios == 1 ? "" : "s");
  if (rc) out->n = n0;
  tok_ids_free(&raw);
  return rc;
}
