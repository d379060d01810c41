/* bpe: byte-level BPE merging of one pre-tokenised word, in token ids.
 *
 * A word starts as one symbol per byte (the vocabulary id of that byte's GPT-2 code point); then the
 * adjacent pair with the lowest merge rank is merged, leftmost first on equal ranks, until no adjacent pair
 * has a merge. A min-heap of candidate merges keyed (rank, position) makes a word of n bytes O(n log n), so
 * a megabyte of letters with no spaces is not quadratic.
 * ref: HF tokenizers models/bpe/word.rs (Word::merge_all; same heap order and stale-entry rule).
 *
 * Thread safety: a bpe_t is read-only after loading and may be shared; a bpe_work_t (scratch buffers and a
 * word cache) belongs to one thread.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "es_error.h"
#include "tok_hash.h"

typedef struct {
  tok_u64map_t merges;   /* (left id << 32 | right id) -> (rank << 32 | merged id) */
  int32_t byte_ids[256]; /* vocabulary id of each single byte */
} bpe_t;

typedef struct {
  int32_t *sym; /* [cap] symbol id; sym_next/sym_prev link the live symbols */
  int32_t *sym_next, *sym_prev;
  struct bpe_cand *heap; /* [3 * cap] candidate merges, a min-heap on (rank, left position) */
  int32_t *out;          /* [cap] the result of the last word */
  size_t cap;
  tok_strmap_t cache; /* word bytes -> (offset << 32 | count) into cache_ids */
  int32_t *cache_ids;
  size_t cache_len, cache_cap;
} bpe_work_t;

/* Records that left+right merge into merged with the given rank (lower merges first). A repeated pair keeps
 * its first rank, as HF tokenizers does when it builds its merge map from the list in order. */
int bpe_add_merge(bpe_t *m, int32_t left, int32_t right, uint32_t rank, int32_t merged, es_error_t *err);
void bpe_free(bpe_t *m);

/* Merges word (len >= 1 bytes). *ids points into w (valid until the next call on w); *n_ids is its length. */
int bpe_encode_word(const bpe_t *m, bpe_work_t *w, const uint8_t *word, size_t len, const int32_t **ids, size_t *n_ids,
                    es_error_t *err);
void bpe_work_free(bpe_work_t *w);
