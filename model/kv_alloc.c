/* kv_alloc: KV block ids per sequence, reference counts and the prefix cache. See kv_alloc.h. */
#include "kv_alloc.h"

#include <stdlib.h>

#include "backend.h"

struct kv_pool {
  int n_blocks;       /* including block 0 */
  int32_t *free_ids;  /* stack of never-published free block ids */
  int n_free;
  int32_t *refs;      /* [n_blocks] reference counts */
  /* prefix cache */
  uint64_t *hash;     /* [n_blocks] the hash a block is published under */
  uint8_t *published; /* [n_blocks] */
  int32_t *lru_prev, *lru_next; /* [n_blocks] doubly linked list of cached (published, unreferenced) blocks */
  int32_t lru_head, lru_tail;   /* head = least recently released; -1 when empty */
  int n_cached;
  int32_t *table;     /* [n_slots] open addressing (linear probing) hash -> block, -1 empty */
  int n_slots;        /* power of two >= 2 * n_blocks */
};

int kv_blocks_for(int n_tokens) { return n_tokens <= 0 ? 0 : (n_tokens + ES_KV_BLOCK - 1) / ES_KV_BLOCK; }

int kv_pool_init(int n_blocks, kv_pool_t **out, es_error_t *err) {
  *out = NULL;
  if (n_blocks < 2) return es_fail(err, ES_EINVAL, "KV pool: %d blocks (need >= 2; block 0 is scratch)", n_blocks);
  kv_pool_t *p = calloc(1, sizeof *p);
  if (!p) return es_fail(err, ES_ENOMEM, "KV pool: out of memory");
  p->n_blocks = n_blocks;
  p->n_slots = 16;
  while (p->n_slots < 2 * n_blocks) p->n_slots *= 2;
  p->free_ids = malloc(sizeof(int32_t) * (size_t)n_blocks);
  p->refs = calloc((size_t)n_blocks, sizeof(int32_t));
  p->hash = calloc((size_t)n_blocks, sizeof(uint64_t));
  p->published = calloc((size_t)n_blocks, 1);
  p->lru_prev = malloc(sizeof(int32_t) * (size_t)n_blocks);
  p->lru_next = malloc(sizeof(int32_t) * (size_t)n_blocks);
  p->table = malloc(sizeof(int32_t) * (size_t)p->n_slots);
  if (!p->free_ids || !p->refs || !p->hash || !p->published || !p->lru_prev || !p->lru_next || !p->table) {
    kv_pool_free(p);
    return es_fail(err, ES_ENOMEM, "KV pool: out of memory");
  }
  for (int i = 0; i < p->n_slots; i++) p->table[i] = -1;
  p->lru_head = p->lru_tail = -1;
  /* hand out low ids first: the stack holds n-1 .. 1 */
  for (int i = n_blocks - 1; i >= 1; i--) p->free_ids[p->n_free++] = i;
  *out = p;
  return ES_OK;
}

void kv_pool_free(kv_pool_t *p) {
  if (!p) return;
  free(p->free_ids);
  free(p->refs);
  free(p->hash);
  free(p->published);
  free(p->lru_prev);
  free(p->lru_next);
  free(p->table);
  free(p);
}

int kv_pool_free_count(const kv_pool_t *p) { return p->n_free + p->n_cached; }
int kv_pool_cached_count(const kv_pool_t *p) { return p->n_cached; }
int kv_pool_total(const kv_pool_t *p) { return p->n_blocks - 1; }

/* ---- hash table (linear probing, backward-shift deletion) ---- */

static uint32_t slot_of(const kv_pool_t *p, uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return (uint32_t)h & (uint32_t)(p->n_slots - 1);
}

int32_t kv_pool_lookup(const kv_pool_t *p, uint64_t hash) {
  for (uint32_t i = slot_of(p, hash);; i = (i + 1) & (uint32_t)(p->n_slots - 1)) {
    int32_t b = p->table[i];
    if (b < 0) return -1;
    if (p->hash[b] == hash) return b;
  }
}

static void table_remove(kv_pool_t *p, int32_t block) {
  uint32_t mask = (uint32_t)(p->n_slots - 1), i = slot_of(p, p->hash[block]);
  while (p->table[i] != block) i = (i + 1) & mask;
  p->table[i] = -1;
  /* shift back the entries of the cluster that follows, so lookups never stop early */
  for (uint32_t j = (i + 1) & mask; p->table[j] >= 0; j = (j + 1) & mask) {
    int32_t b = p->table[j];
    uint32_t home = slot_of(p, p->hash[b]);
    /* move b to i when i lies cyclically in [home, j) */
    if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
      p->table[i] = b;
      p->table[j] = -1;
      i = j;
    }
  }
}

void kv_pool_publish(kv_pool_t *p, int32_t block, uint64_t hash) {
  ES_ASSERT(block >= 1 && block < p->n_blocks && p->refs[block] > 0);
  if (p->published[block] || kv_pool_lookup(p, hash) >= 0) return;
  p->hash[block] = hash;
  p->published[block] = 1;
  uint32_t i = slot_of(p, hash);
  while (p->table[i] >= 0) i = (i + 1) & (uint32_t)(p->n_slots - 1);
  p->table[i] = block;
}

/* ---- LRU of cached blocks ---- */

static void lru_unlink(kv_pool_t *p, int32_t b) {
  int32_t pr = p->lru_prev[b], nx = p->lru_next[b];
  if (pr >= 0) p->lru_next[pr] = nx; else p->lru_head = nx;
  if (nx >= 0) p->lru_prev[nx] = pr; else p->lru_tail = pr;
  p->n_cached--;
}

static void lru_push(kv_pool_t *p, int32_t b) {
  p->lru_prev[b] = p->lru_tail;
  p->lru_next[b] = -1;
  if (p->lru_tail >= 0) p->lru_next[p->lru_tail] = b; else p->lru_head = b;
  p->lru_tail = b;
  p->n_cached++;
}

/* A fresh block: the free list first, then the least recently released cached block. */
static int32_t take_block(kv_pool_t *p) {
  if (p->n_free) return p->free_ids[--p->n_free];
  int32_t b = p->lru_head;
  ES_ASSERT(b >= 0);
  lru_unlink(p, b);
  table_remove(p, b);
  p->published[b] = 0;
  return b;
}

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

int kv_seq_blocks_needed(const kv_seq_t *seq, int n_tokens) {
  int need = kv_blocks_for(n_tokens) - seq->n_blocks;
  return need > 0 ? need : 0;
}

int kv_seq_reserve(kv_pool_t *p, kv_seq_t *seq, int n_tokens, int max_blocks, es_error_t *err) {
  int need = kv_blocks_for(n_tokens);
  if (need <= seq->n_blocks) return ES_OK;
  if (need > max_blocks)
    return es_fail(err, ES_ETOOBIG, "KV: %d positions need %d blocks, a sequence may hold %d", n_tokens, need,
                   max_blocks);
  int more = need - seq->n_blocks;
  if (more > kv_pool_free_count(p))
    return es_fail(err, ES_ETOOBIG, "KV: %d more blocks needed, %d free", more, kv_pool_free_count(p));
  int rc = grow_table(seq, need, err);
  if (rc) return rc;
  for (int i = 0; i < more; i++) {
    int32_t b = take_block(p);
    p->refs[b] = 1;
    seq->blocks[seq->n_blocks++] = b;
  }
  return ES_OK;
}

int kv_seq_share(kv_pool_t *p, kv_seq_t *seq, int32_t block, es_error_t *err) {
  if (block < 1 || block >= p->n_blocks || (p->refs[block] < 1 && !p->published[block]))
    return es_fail(err, ES_EINTERNAL, "KV: sharing block %d, which is neither in use nor cached", block);
  int rc = grow_table(seq, seq->n_blocks + 1, err);
  if (rc) return rc;
  if (p->refs[block] == 0) lru_unlink(p, block); /* a cached block comes back into use */
  p->refs[block]++;
  seq->blocks[seq->n_blocks++] = block;
  return ES_OK;
}

void kv_seq_release(kv_pool_t *p, kv_seq_t *seq) {
  if (!seq) return;
  for (int i = 0; i < seq->n_blocks; i++) {
    int32_t b = seq->blocks[i];
    ES_ASSERT(b >= 1 && b < p->n_blocks && p->refs[b] > 0);
    if (--p->refs[b] == 0) {
      if (p->published[b])
        lru_push(p, b);
      else
        p->free_ids[p->n_free++] = b;
    }
  }
  free(seq->blocks);
  seq->blocks = NULL;
  seq->n_blocks = seq->cap = 0;
}

int32_t kv_seq_slot(const kv_seq_t *seq, int pos) {
  ES_ASSERT(pos >= 0 && pos / ES_KV_BLOCK < seq->n_blocks);
  return seq->blocks[pos / ES_KV_BLOCK] * ES_KV_BLOCK + pos % ES_KV_BLOCK;
}
