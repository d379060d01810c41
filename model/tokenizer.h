/* tokenizer: Qwen2's byte-level BPE tokenizer, loaded from a checkpoint's files.
 *
 * Encode = split out added tokens (exact strings, leftmost-longest, before anything else) -> NFC (utf8proc)
 * on the text between them -> the pre-tokenisation regex (PCRE2, UTF + Unicode properties, JIT) -> byte-level
 * BPE per piece (bpe.h). Decode = each id's bytes (added tokens: their content) concatenated, then UTF-8 with
 * every maximal invalid subsequence replaced by U+FFFD, as Rust's String::from_utf8_lossy does.
 * ref: HF tokenizers (AddedVocabulary, normalizers::NFC, pre_tokenizers::Split + ByteLevel, models::bpe,
 * decoders::ByteLevel) as Qwen2TokenizerFast configures them; SPEC-qwen2-audio.md §5.1.
 *
 * Files: either tokenizer.json (merges as "a b" strings or ["a","b"] pairs, added_tokens, normalizer,
 * pre_tokenizer regex), or vocab.json + merges.txt + tokenizer_config.json (added_tokens_decoder) with an
 * optional added_tokens.json; that layout has no regex or normalizer in it, so it gets Qwen2's (NFC and the
 * §5.1 pattern), as transformers' Qwen2Tokenizer does. Every added token comes from the files; its id is
 * assigned the way tokenizers does (a content that is already a vocabulary entry keeps that entry's id, the
 * others are numbered on from the vocabulary in file order), which equals the id written in any file that
 * tokenizers or transformers produced. Added tokens honour lstrip, rstrip, single_word and normalized.
 *
 * Input text must be valid UTF-8: a Python str (what transformers tokenizes) cannot hold invalid UTF-8, so
 * there is no reference behaviour to copy, and tok_encode rejects it with ES_EINVAL naming the byte offset.
 *
 * Thread safety: a tok_t is immutable after tok_load* returns; any number of threads may encode and decode
 * with it at once. A tok_encoder_t (scratch buffers and a BPE word cache) and a tok_stream_t belong to one
 * thread each.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "es_error.h"

typedef struct tok tok_t;
typedef struct tok_encoder tok_encoder_t;

/* A growable id list; the functions that fill one append to it. Zero-initialise, free with tok_ids_free. */
typedef struct {
  int32_t *ids;
  size_t n, cap;
} tok_ids_t;

/* A growable byte string, always NUL-terminated after a successful call (len excludes the NUL). */
typedef struct {
  char *data;
  size_t len, cap;
} tok_text_t;

enum {
  TOK_ID_PRESENT = 1, /* the id has a string */
  TOK_ID_ADDED = 2,   /* it is an added token (split out before BPE) */
  TOK_ID_SPECIAL = 4, /* an added token marked special (skipped by skip_special decoding) */
};

/* Loads from a checkpoint directory: tokenizer.json when present, else vocab.json + merges.txt
 * (+ tokenizer_config.json, added_tokens.json when present). */
int tok_load(const char *dir, tok_t **out, es_error_t *err);
/* Loads one tokenizer.json. */
int tok_load_tokenizer_json(const char *path, tok_t **out, es_error_t *err);
/* Loads vocab.json + merges.txt; config (tokenizer_config.json) and added (added_tokens.json) may be NULL. */
int tok_load_vocab_merges(const char *vocab_json, const char *merges_txt, const char *config_json,
                          const char *added_tokens_json, tok_t **out, es_error_t *err);
void tok_free(tok_t *t);

/* One more than the largest id with a string. */
int32_t tok_n_ids(const tok_t *t);
/* TOK_ID_* flags of id (0 when it has no string, including ids out of range). */
unsigned tok_id_flags(const tok_t *t, int32_t id);
/* The id of an exact token string: an added token's content, or a vocabulary entry in its byte-level form
 * ("Ġthe"). -1 when there is none. */
int32_t tok_token_id(const tok_t *t, const char *token);
/* The raw bytes an id decodes to (not NUL-terminated); NULL and *len = 0 when the id has no string. */
const char *tok_id_bytes(const tok_t *t, int32_t id, size_t *len);
/* The number of added tokens and the content of added token i (0 <= i < n), in id order. */
size_t tok_n_added(const tok_t *t);
const char *tok_added_content(const tok_t *t, size_t i, int32_t *id);

/* Encodes UTF-8 text, appending ids to out. tok_encode uses a temporary encoder; tok_encoder_encode reuses
 * one (faster for many calls: its word cache persists). */
int tok_encode(const tok_t *t, const char *text, size_t len, tok_ids_t *out, es_error_t *err);
int tok_encoder_new(const tok_t *t, tok_encoder_t **out, es_error_t *err);
int tok_encoder_encode(tok_encoder_t *e, const char *text, size_t len, tok_ids_t *out, es_error_t *err);
void tok_encoder_free(tok_encoder_t *e);

/* Decodes ids into out (replacing its contents). Ids without a string decode to "" (they are rows of the
 * model past the tokenizer's table); negative ids are an error. skip_special drops added tokens marked
 * special. */
int tok_decode(const tok_t *t, const int32_t *ids, size_t n, int skip_special, tok_text_t *out, es_error_t *err);

/* Streaming decode for generation: push ids one at a time; text is appended to out only once it is complete
 * UTF-8, and the text emitted by all pushes plus the final flush equals tok_decode of all the ids. */
typedef struct {
  const tok_t *tok;
  int skip_special;
  unsigned char pending[4]; /* an incomplete but so far valid UTF-8 sequence, held back */
  int n_pending;
} tok_stream_t;

void tok_stream_init(tok_stream_t *s, const tok_t *t, int skip_special);
/* Appends the text completed by id to out (possibly nothing). */
int tok_stream_push(tok_stream_t *s, int32_t id, tok_text_t *out, es_error_t *err);
/* Appends what is left (an incomplete sequence becomes U+FFFD) and resets the stream. */
int tok_stream_flush(tok_stream_t *s, tok_text_t *out, es_error_t *err);

int tok_ids_push(tok_ids_t *v, int32_t id, es_error_t *err);
int tok_ids_append(tok_ids_t *v, const int32_t *ids, size_t n, es_error_t *err);
void tok_ids_free(tok_ids_t *v);
int tok_text_append(tok_text_t *s, const char *data, size_t len, es_error_t *err);
void tok_text_free(tok_text_t *s);

/* Checks that s is valid UTF-8 (no surrogates, no overlongs, <= U+10FFFF). Returns 1, or 0 and the offset
 * of the first bad byte. */
int tok_utf8_valid(const char *s, size_t len, size_t *bad_offset);
