/* tok_hash: the two small open-addressing hash maps the tokenizer needs.
 *
 *   tok_strmap_t  byte string -> uint64 value (vocabulary, added tokens, the per-thread BPE word cache);
 *                 keys are copied into an arena the map owns.
 *   tok_u64map_t  uint64 key -> uint64 value (BPE merges keyed by the id pair). UINT64_MAX is not a valid key.
 *
 * Linear probing, power-of-two capacity, load factor at most 1/2, no deletion (only clear). Written for
 * earshot; the layout follows the usual textbook open-addressing table.
 * Thread safety: lookups on a map nobody modifies are safe from any number of threads; inserts and clears
 * need the caller's exclusion.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "es_error.h"

typedef struct {
  uint32_t hash;  /* low 32 bits of the key hash, for a cheap reject */
  uint32_t entry; /* entry index + 1; 0 = empty slot */
} tok_strmap_slot_t;

typedef struct {
  uint64_t key_off; /* into arena */
  uint32_t key_len;
  uint64_t value;
} tok_strmap_entry_t;

typedef struct {
  tok_strmap_slot_t *slots; /* [cap] */
  size_t cap;               /* power of two (0 before the first insert) */
  tok_strmap_entry_t *entries;
  size_t count, entries_cap;
  char *arena; /* key bytes, back to back */
  size_t arena_len, arena_cap;
} tok_strmap_t;

typedef struct {
  uint64_t key; /* UINT64_MAX = empty */
  uint64_t value;
} tok_u64map_slot_t;

typedef struct {
  tok_u64map_slot_t *slots; /* [cap]; key and value side by side: one cache miss per probe */
  size_t cap, count;
} tok_u64map_t;

uint64_t tok_hash_bytes(const void *data, size_t len);

/* Inserts or overwrites key -> value. ES_ENOMEM on allocation failure. */
int tok_strmap_put(tok_strmap_t *m, const void *key, size_t len, uint64_t value, es_error_t *err);
/* 1 and *value when key is present, else 0. */
int tok_strmap_get(const tok_strmap_t *m, const void *key, size_t len, uint64_t *value);
/* Entry i (0 <= i < count): its key bytes. */
static inline const char *tok_strmap_key(const tok_strmap_t *m, size_t i, size_t *len) {
  *len = m->entries[i].key_len;
  return m->arena + m->entries[i].key_off;
}
void tok_strmap_clear(tok_strmap_t *m); /* keeps the memory */
void tok_strmap_free(tok_strmap_t *m);

int tok_u64map_put(tok_u64map_t *m, uint64_t key, uint64_t value, es_error_t *err);

static inline uint64_t tok_mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xFF51AFD7ED558CCDull;
  x ^= x >> 33;
  x *= 0xC4CEB9FE1A85EC53ull;
  x ^= x >> 33;
  return x;
}

/* 1 and *value when key is present, else 0. Inline: BPE calls it for every adjacent pair. */
static inline int tok_u64map_get(const tok_u64map_t *m, uint64_t key, uint64_t *value) {
  if (!m->count) return 0;
  size_t mask = m->cap - 1, i = (size_t)tok_mix64(key) & mask;
  for (;;) {
    const tok_u64map_slot_t *s = &m->slots[i];
    if (s->key == key) {
      *value = s->value;
      return 1;
    }
    if (s->key == UINT64_MAX) return 0;
    i = (i + 1) & mask;
  }
}
void tok_u64map_free(tok_u64map_t *m);
