/* tok_internal: the tokenizer's private layout, shared by tokenizer.c (encode/decode) and tok_load.c (files).
 * Nothing outside model/tok*.c includes this. Thread safety: see tokenizer.h.
 */
#pragma once

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdint.h>

#include "bpe.h"
#include "tok_hash.h"
#include "tokenizer.h"

/* Code points below this have a precomputed NFC "may change" bit; above it only combining marks may. */
#define TOK_NFC_TABLE_CPS 0x30000

typedef struct {
  char *content; /* exact string, NUL-terminated (content_len excludes it) */
  size_t content_len;
  int32_t id;
  uint8_t special, lstrip, rstrip, single_word, normalized;
} tok_added_t;

/* Leftmost-longest exact matching of a set of added tokens: a hash of the contents, the possible first
 * bytes, and the distinct content lengths longest first (a position is tried only when its byte can start a
 * token, then each length is one hash lookup). */
typedef struct {
  tok_strmap_t map; /* content -> index into tok_t.added */
  uint8_t first[256];
  uint32_t *lens; /* descending */
  size_t n_lens;
} tok_matcher_t;

struct tok {
  bpe_t bpe;
  tok_strmap_t vocab; /* raw bytes -> id, the BPE vocabulary (added tokens not included) */
  int ignore_merges;  /* tokenizers' BPE option: a piece that is itself in the vocabulary is one token */

  int32_t n_ids;     /* one past the largest id with a string */
  uint64_t *id_off;  /* [n_ids] offset of the id's decoded bytes in id_bytes */
  uint32_t *id_len;  /* [n_ids] */
  uint8_t *id_flags; /* [n_ids] TOK_ID_* */
  char *id_bytes;

  tok_added_t *added; /* [n_added] in id order */
  size_t n_added;
  tok_matcher_t match_raw;  /* added tokens with normalized=false: matched on the input text */
  tok_matcher_t match_norm; /* normalized=true: matched on the NFC text between the others */

  int nfc;                 /* the normalizer is NFC (else none) */
  uint8_t *nfc_may_change; /* bitmap over [0, TOK_NFC_TABLE_CPS): 1 = NFC may change text holding this cp */
  pcre2_code *re;          /* the pre-tokenisation pattern, JIT-compiled when the platform allows */
  char *pattern;           /* as given by the files (Oniguruma syntax), for messages */
};

/* The builder tok_load.c fills; tok_build turns it into a tok_t (tokenizer.c). */
typedef struct {
  /* vocabulary: byte-level strings with their ids, back to back in strs */
  char *strs;
  size_t strs_len, strs_cap;
  uint64_t *vocab_off; /* [n_vocab] (offset << 32 | length) */
  int32_t *vocab_id;
  size_t n_vocab, vocab_cap;
  /* merges: pairs of byte-level strings, in rank order */
  uint64_t *merge_left, *merge_right; /* (offset << 32 | length) into strs */
  size_t n_merges, merges_cap;
  tok_added_t *added;
  size_t n_added, added_cap;
  int nfc, ignore_merges;
  char *pattern;      /* Oniguruma-syntax regex; NULL = Qwen2's */
  const char *source; /* file name for messages */
} tok_builder_t;

int tok_builder_add_string(tok_builder_t *b, const char *s, size_t len, uint64_t *ref, es_error_t *err);
int tok_builder_add_vocab(tok_builder_t *b, const char *s, size_t len, int32_t id, es_error_t *err);
int tok_builder_add_merge(tok_builder_t *b, const char *l, size_t ll, const char *r, size_t rl, es_error_t *err);
int tok_builder_add_added(tok_builder_t *b, const tok_added_t *a, es_error_t *err);
void tok_builder_free(tok_builder_t *b);
/* Consumes nothing; b can be freed afterwards. */
int tok_build(const tok_builder_t *b, tok_t **out, es_error_t *err);

/* Qwen2's pre-tokenisation pattern (SPEC §5.1), used when the files do not carry one. */
extern const char TOK_QWEN2_PATTERN[];
