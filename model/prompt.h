/* prompt: the text and ids Qwen2-Audio is prompted with.
 *
 *   prompt_render_chat  the Instruct chat template (SPEC §5.3): the default system prompt when the first message
 *                       is not a system message, "Audio k: <|audio_bos|><|AUDIO|><|audio_eos|>\n" per audio with
 *                       k counted across the whole conversation, text parts verbatim and glued to their
 *                       neighbours, "<|im_end|>\n" after each message, "<|im_start|>assistant\n" on request.
 *   prompt_render_raw   the base model's continuation form (SPEC §5.4): the audio span per audio, then the task.
 *   prompt_render_asr   the transcription prompt: the raw form + "Detect the language and recognize the speech:"
 *                       + " <|xx|>" when a language xx is named and the tokenizer has that tag as an added token;
 *                       otherwise nothing follows the colon (the model then detects the language itself). This
 *                       is the form Qwen2-Audio's own ASR evaluation and third-party code use (SPEC §5.4).
 *   prompt_encode       tokenises a rendered prompt and expands each audio placeholder id into
 *                       <|audio_bos|> + N x <|AUDIO|> + <|audio_eos|> with that audio's own N (the sum over its
 *                       windows when a long audio was split: one span, windows back to back). A placeholder
 *                       already between bos and eos (what the renderers write) keeps them; a bare one gets them
 *                       added, as the transformers 4.4x-4.5x processor does (SPEC §3.5).
 *
 * Text parts are tokenised as part of the rendered prompt, so a special-token string typed in a message becomes
 * that special token, exactly as transformers' apply_chat_template + processor do; a stray "<|AUDIO|>" shows
 * up as an audio count mismatch.
 * Special ids are inputs (prompt_special_t): the audio placeholder id comes from the checkpoint's config,
 * the others from the tokenizer by their strings. Nothing here knows about audio samples: each audio is its
 * list of per-window token counts.
 * ref: transformers Qwen2AudioProcessor (default_chat_template, __call__ expansion); SPEC §3.5, §5.3-§5.4, §6.
 * Thread safety: no state; safe from any thread given a tok_t (itself thread-safe).
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "es_error.h"
#include "tokenizer.h"

typedef struct {
  int32_t audio_token_id; /* config.json audio_token_index: the placeholder that audio embeddings replace */
  int32_t audio_bos_id;   /* tokenizer: "<|audio_bos|>" */
  int32_t audio_eos_id;   /* tokenizer: "<|audio_eos|>" */
  int32_t im_start_id;    /* tokenizer: "<|im_start|>" */
  int32_t im_end_id;      /* tokenizer: "<|im_end|>" */
} prompt_special_t;

/* Fills sp: audio_token_id as given (from the config), the rest looked up in the tokenizer's added tokens.
 * Fails when the tokenizer lacks one of them, or audio_token_id is not the tokenizer's "<|AUDIO|>". */
int prompt_special_init(prompt_special_t *sp, const tok_t *tok, int32_t audio_token_id, es_error_t *err);

typedef enum { PROMPT_PART_TEXT = 0, PROMPT_PART_AUDIO = 1 } prompt_part_type_t;

typedef struct {
  prompt_part_type_t type;
  const char *text; /* PROMPT_PART_TEXT: UTF-8, NUL-terminated */
} prompt_part_t;

typedef struct {
  const char *role;           /* "system", "user" or "assistant" */
  const char *content;        /* string content; NULL when the content is a list of parts */
  const prompt_part_t *parts; /* list content (used when content is NULL) */
  size_t n_parts;
} prompt_message_t;

/* Renders a conversation into out (replacing its contents); *n_audios (may be NULL) gets the number of audio
 * parts. Unknown roles, empty content (an empty string or no parts) and n == 0 are ES_EINVAL errors that name
 * the message. */
int prompt_render_chat(const prompt_message_t *msgs, size_t n, int add_generation_prompt, tok_text_t *out,
                       size_t *n_audios, es_error_t *err);

/* Base model: one audio span per audio, then task (may be NULL or ""). */
int prompt_render_raw(size_t n_audios, const char *task, tok_text_t *out, es_error_t *err);

/* Transcription: prompt_render_raw(n_audios, "Detect the language and recognize the speech:") followed by
 * " <|language|>" when language (e.g. "en"; "<|en|>" is accepted too) is not NULL/"" and tok has that tag.
 * *tagged (may be NULL) says whether the tag was added. */
int prompt_render_asr(const tok_t *tok, size_t n_audios, const char *language, tok_text_t *out, int *tagged,
                      es_error_t *err);

typedef struct {
  const int32_t *window_tokens; /* N of each window, in order (one entry unless the audio was split) */
  size_t n_windows;
} prompt_audio_t;

/* Tokenises text and expands the k-th placeholder with audios[k]; appends to out. Fails with ES_EINVAL when
 * the number of placeholders differs from n_audios or a token count is negative. */
int prompt_encode(const tok_t *tok, const prompt_special_t *sp, const char *text, size_t len,
                  const prompt_audio_t *audios, size_t n_audios, tok_ids_t *out, es_error_t *err);
