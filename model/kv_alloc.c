/* kv_alloc: KV block ids per sequence, with reference counts. See kv_alloc.h. */
#include "kv_alloc.h"

#include <stdlib.h>

#include "backend.h"

struct kv_pool {
  int n_blocks;     /* including block 0 */
  int32_t *free_ids; /* stack of free block ids */
  int n_free;
  int32_t *refs;    /* [n_blocks] reference counts */
};

int kv_blocks_for(int n_tokens) { return n_tokens <= 0 ? 0 : (n_tokens + ES_KV_BLOCK - 1) / ES_KV_BLOCK; }

int kv_pool_init(int n_blocks, kv_pool_t **out, es_error_t *err) {
  *out = NULL;
  if (n_blocks < 2) return es_fail(err, ES_EINVAL, "KV pool: %d blocks (need >= 2; block 0 is scratch)", n_blocks);
  kv_pool_t *p = calloc(1, sizeof *p);
  if (!p) return es_fail(err, ES_ENOMEM, "KV pool: out of memory");
  p->n_blocks = n_blocks;
  p->free_ids = malloc(sizeof(int32_t) * (size_t)n_blocks);
  p->refs = calloc((size_t)n_blocks, sizeof(int32_t));
  if (!p->free_ids || !p->refs) {
    kv_pool_free(p);
    return es_fail(err, ES_ENOMEM, "KV pool: out of memory");
  }
  /* hand out low ids first: the stack holds n-1 .. 1 */
  for (int i = n_blocks - 1; i >= 1; i--) p->free_ids[p->n_free++] = i;
  *out = p;
  return ES_OK;
}

void kv_pool_free(kv_pool_t *p) {
  if (!p) return;
  free(p->free_ids);
  free(p->refs);
  free(p);
}

int kv_pool_free_count(const kv_pool_t *p) { return p->n_free; }
int kv_pool_total(const kv_pool_t *p) { return p->n_blocks - 1; }

static int grow_table(kv_seq_t *seq, int need, es_error_t *err) {
  if (need <= seq->cap) return ES_OK;
  int cap = seq->cap ? seq->cap : 8;
  while (cap < need) cap *= 2;
  int32_t *nb = realloc(seq->blocks, sizeof(int32_t) * (size_t)cap);
  if (!nb) return es_fail(err, ES_ENOMEM, "KV: out of memory for a block table");
  seq->blocks = nb;
  seq->cap = cap;
  return ES_OK;
}

int kv_seq_reserve(kv_pool_t *p, kv_seq_t *seq, int n_tokens, int max_blocks, es_error_t *err) {
  int need = kv_blocks_for(n_tokens);
  if (need <= seq->n_blocks) return ES_OK;
  if (need > max_blocks)
    return es_fail(err, ES_ETOOBIG, "KV: %d positions need %d blocks, a sequence may hold %d", n_tokens, need,
                   max_blocks);
  int more = need - seq->n_blocks;
  if (more > p->n_free)
    return es_fail(err, ES_ETOOBIG, "KV: %d more blocks needed, %d free", more, p->n_free);
  int rc = grow_table(seq, need, err);
  if (rc) return rc;
  for (int i = 0; i < more; i++) {
    int32_t b = p->free_ids[--p->n_free];
    p->refs[b] = 1;
    seq->blocks[seq->n_blocks++] = b;
  }
  return ES_OK;
}

int kv_seq_share(kv_pool_t *p, kv_seq_t *seq, int32_t block, es_error_t *err) {
  if (block < 1 || block >= p->n_blocks || p->refs[block] < 1)
    return es_fail(err, ES_EINTERNAL, "KV: sharing block %d, which is not in use", block);
  int rc = grow_table(seq, seq->n_blocks + 1, err);
  if (rc) return rc;
  p->refs[block]++;
  seq->blocks[seq->n_blocks++] = block;
  return ES_OK;
}

void kv_seq_release(kv_pool_t *p, kv_seq_t *seq) {
  if (!seq) return;
  for (int i = 0; i < seq->n_blocks; i++) {
    int32_t b = seq->blocks[i];
    ES_ASSERT(b >= 1 && b < p->n_blocks && p->refs[b] > 0);
    if (--p->refs[b] == 0) p->free_ids[p->n_free++] = b;
  }
  free(seq->blocks);
  seq->blocks = NULL;
  seq->n_blocks = seq->cap = 0;
}

int32_t kv_seq_slot(const kv_seq_t *seq, int pos) {
  ES_ASSERT(pos >= 0 && pos / ES_KV_BLOCK < seq->n_blocks);
  return seq->blocks[pos / ES_KV_BLOCK] * ES_KV_BLOCK + pos % ES_KV_BLOCK;
}
