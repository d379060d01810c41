/* kv_alloc: which KV-cache blocks each sequence uses.
 *
 * The backend owns the KV memory (kernels/backend.h: blocks of ES_KV_BLOCK positions, block 0 reserved as
 * scratch); this module only hands out block ids 1..n_blocks-1 and tracks them. A block has a reference
 * count so that sequences can later share prefix blocks (the batching issue builds prefix reuse on it);
 * a block returns to the free list when its last reference goes.
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
int kv_pool_free_count(const kv_pool_t *pool);  /* blocks on the free list */
int kv_pool_total(const kv_pool_t *pool);       /* usable blocks (n_blocks - 1) */

/* Grows seq to cover n_tokens positions. All or nothing: when the free blocks do not suffice, nothing is
 * taken and ES_ETOOBIG is returned (the caller preempts or waits). max_blocks bounds the table length. */
int kv_seq_reserve(kv_pool_t *pool, kv_seq_t *seq, int n_tokens, int max_blocks, es_error_t *err);

/* Appends a reference to an existing block (prefix sharing). */
int kv_seq_share(kv_pool_t *pool, kv_seq_t *seq, int32_t block, es_error_t *err);

/* Drops every block of seq (each returns to the free list when unreferenced) and frees its table. */
void kv_seq_release(kv_pool_t *pool, kv_seq_t *seq);

/* The cache slot of position pos (block * ES_KV_BLOCK + offset); pos must be covered. */
int32_t kv_seq_slot(const kv_seq_t *seq, int pos);

/* The number of blocks needed for n_tokens positions. */
int kv_blocks_for(int n_tokens);

#ifdef __cplusplus
}
#endif
