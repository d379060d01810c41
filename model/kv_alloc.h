/* kv_alloc: which KV-cache blocks each sequence uses, and the prefix cache.
 *
 * The backend owns the KV memory (kernels/backend.h: blocks of ES_KV_BLOCK positions, block 0 reserved as
 * scratch); this module only hands out block ids 1..n_blocks-1 and tracks them. A block has a reference
 * count, so sequences with the same prefix share blocks (referenced, not copied).
 *
 * Prefix cache: a full block whose KV has been computed can be published under a 64-bit hash that
 * identifies everything up to and including it (the caller chains the hash over token identities; audio
 * placeholders hash the audio's content, since every placeholder has the same id). A later sequence looks
 * its blocks up by the same hashes and shares what it finds. A published block whose last reference goes
 * stays cached: it counts as free and is evicted (least recently released first) only when a fresh block
 * is needed and the free list is empty.
 *
 * Thread safety: a kv_pool_t and its sequences are used by one thread (the engine thread).
 */
#pragma once

#include <stdint.h>

#include "es_error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kv_pool kv_pool_t;

typedef struct {
  int32_t *blocks; /* [n_blocks] block ids in position order (owned) */
  int n_blocks;    /* blocks held */
  int cap;         /* allocated length of blocks */
} kv_seq_t;

/* A pool of block ids 1..n_blocks-1 (block 0 is the backend's scratch block). */
int kv_pool_init(int n_blocks, kv_pool_t **out, es_error_t *err);
void kv_pool_free(kv_pool_t *pool);
int kv_pool_free_count(const kv_pool_t *pool);   /* blocks not referenced: the free list + cached ones */
int kv_pool_cached_count(const kv_pool_t *pool); /* unreferenced blocks kept for the prefix cache */
int kv_pool_total(const kv_pool_t *pool);        /* usable blocks (n_blocks - 1) */

/* Grows seq to cover n_tokens positions with fresh blocks. All or nothing: when the free and evictable
 * blocks do not suffice, nothing is taken and ES_ETOOBIG is returned (the caller preempts or waits).
 * max_blocks bounds the table length. */
int kv_seq_reserve(kv_pool_t *pool, kv_seq_t *seq, int n_tokens, int max_blocks, es_error_t *err);

/* Fresh blocks kv_seq_reserve would need for n_tokens positions. */
int kv_seq_blocks_needed(const kv_seq_t *seq, int n_tokens);

/* The block published under hash, or -1. */
int32_t kv_pool_lookup(const kv_pool_t *pool, uint64_t hash);

/* Appends a reference to a block in use or cached (a prefix-cache hit). */
int kv_seq_share(kv_pool_t *pool, kv_seq_t *seq, int32_t block, es_error_t *err);

/* Publishes block (held by the caller, its KV computed) under hash. A hash already published keeps its
 * first block; a block is published under one hash at most. */
void kv_pool_publish(kv_pool_t *pool, int32_t block, uint64_t hash);

/* Drops every block of seq (each becomes free, or cached when published) and frees its table. */
void kv_seq_release(kv_pool_t *pool, kv_seq_t *seq);

/* The cache slot of position pos (block * ES_KV_BLOCK + offset); pos must be covered. */
int32_t kv_seq_slot(const kv_seq_t *seq, int pos);

/* The number of blocks needed for n_tokens positions. */
int kv_blocks_for(int n_tokens);

#ifdef __cplusplus
}
#endif
