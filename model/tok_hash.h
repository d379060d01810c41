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
  uint64_t *keys; /* [cap]; UINT64_MAX = empty */
  uint64_t *values;
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
int tok_u64map_get(const tok_u64map_t *m, uint64_t key, uint64_t *value);
void tok_u64map_free(tok_u64map_t *m);
