/* tok_hash: open-addressing hash maps for the tokenizer. See tok_hash.h. */
#include "tok_hash.h"

#include <stdlib.h>
#include <string.h>

uint64_t tok_hash_bytes(const void *data, size_t len) {
  /* Multiply-xorshift over 8-byte words: tokens are short, so the per-call cost matters more than the
   * quality on long keys. */
  const unsigned char *s = data;
  uint64_t h = 0x9E3779B97F4A7C15ull ^ ((uint64_t)len * 0xFF51AFD7ED558CCDull);
  while (len >= 8) {
    uint64_t v;
    memcpy(&v, s, 8);
    h = (h ^ v) * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 29;
    s += 8;
    len -= 8;
  }
  uint64_t v = 0;
  if (len) memcpy(&v, s, len);
  h = (h ^ v) * 0x94D049BB133111EBull;
  h ^= h >> 32;
  h *= 0xBF58476D1CE4E5B9ull;
  h ^= h >> 31;
  return h;
}

/* --- string map --------------------------------------------------------------------------- */

static int strmap_grow_slots(tok_strmap_t *m, es_error_t *err) {
  size_t cap = m->cap ? m->cap * 2 : 64;
  tok_strmap_slot_t *slots = calloc(cap, sizeof *slots);
  if (!slots) return es_fail(err, ES_ENOMEM, "tokenizer hash map: out of memory (%zu slots)", cap);
  for (size_t e = 0; e < m->count; e++) {
    const tok_strmap_entry_t *en = &m->entries[e];
    uint64_t h = tok_hash_bytes(m->arena + en->key_off, en->key_len);
    size_t i = (size_t)h & (cap - 1);
    while (slots[i].entry) i = (i + 1) & (cap - 1);
    slots[i].hash = (uint32_t)h;
    slots[i].entry = (uint32_t)(e + 1);
  }
  free(m->slots);
  m->slots = slots;
  m->cap = cap;
  return ES_OK;
}

static size_t strmap_find(const tok_strmap_t *m, const void *key, size_t len, uint64_t h) {
  size_t mask = m->cap - 1, i = (size_t)h & mask;
  for (;;) {
    const tok_strmap_slot_t *s = &m->slots[i];
    if (!s->entry) return i;
    if (s->hash == (uint32_t)h) {
      const tok_strmap_entry_t *en = &m->entries[s->entry - 1];
      if (en->key_len == len && memcmp(m->arena + en->key_off, key, len) == 0) return i;
    }
    i = (i + 1) & mask;
  }
}

int tok_strmap_put(tok_strmap_t *m, const void *key, size_t len, uint64_t value, es_error_t *err) {
  if (len > UINT32_MAX) return es_fail(err, ES_ETOOBIG, "tokenizer hash map: key of %zu bytes", len);
  if ((m->count + 1) * 2 > m->cap) {
    int rc = strmap_grow_slots(m, err);
    if (rc) return rc;
  }
  uint64_t h = tok_hash_bytes(key, len);
  size_t i = strmap_find(m, key, len, h);
  if (m->slots[i].entry) {
    m->entries[m->slots[i].entry - 1].value = value;
    return ES_OK;
  }
  if (m->count == m->entries_cap) {
    size_t ncap = m->entries_cap ? m->entries_cap * 2 : 64;
    tok_strmap_entry_t *ne = realloc(m->entries, ncap * sizeof *ne);
    if (!ne) return es_fail(err, ES_ENOMEM, "tokenizer hash map: out of memory (%zu entries)", ncap);
    m->entries = ne;
    m->entries_cap = ncap;
  }
  if (m->arena_len + len > m->arena_cap) {
    size_t ncap = m->arena_cap ? m->arena_cap * 2 : 1024;
    while (ncap < m->arena_len + len) ncap *= 2;
    char *na = realloc(m->arena, ncap);
    if (!na) return es_fail(err, ES_ENOMEM, "tokenizer hash map: out of memory (%zu key bytes)", ncap);
    m->arena = na;
    m->arena_cap = ncap;
  }
  if (len) memcpy(m->arena + m->arena_len, key, len);
  m->entries[m->count] = (tok_strmap_entry_t){.key_off = m->arena_len, .key_len = (uint32_t)len, .value = value};
  m->arena_len += len;
  m->count++;
  m->slots[i].hash = (uint32_t)h;
  m->slots[i].entry = (uint32_t)m->count;
  return ES_OK;
}

int tok_strmap_get(const tok_strmap_t *m, const void *key, size_t len, uint64_t *value) {
  if (!m->count) return 0;
  size_t i = strmap_find(m, key, len, tok_hash_bytes(key, len));
  if (!m->slots[i].entry) return 0;
  *value = m->entries[m->slots[i].entry - 1].value;
  return 1;
}

void tok_strmap_clear(tok_strmap_t *m) {
  if (m->slots) memset(m->slots, 0, m->cap * sizeof *m->slots);
  m->count = 0;
  m->arena_len = 0;
}

void tok_strmap_free(tok_strmap_t *m) {
  if (!m) return;
  free(m->slots);
  free(m->entries);
  free(m->arena);
  memset(m, 0, sizeof *m);
}

/* --- u64 map ------------------------------------------------------------------------------ */

static int u64map_grow(tok_u64map_t *m, es_error_t *err) {
  size_t cap = m->cap ? m->cap * 2 : 64;
  tok_u64map_slot_t *slots = malloc(cap * sizeof *slots);
  if (!slots) return es_fail(err, ES_ENOMEM, "tokenizer hash map: out of memory (%zu slots)", cap);
  for (size_t i = 0; i < cap; i++) slots[i].key = UINT64_MAX;
  for (size_t j = 0; j < m->cap; j++) {
    if (m->slots[j].key == UINT64_MAX) continue;
    size_t i = (size_t)tok_mix64(m->slots[j].key) & (cap - 1);
    while (slots[i].key != UINT64_MAX) i = (i + 1) & (cap - 1);
    slots[i] = m->slots[j];
  }
  free(m->slots);
  m->slots = slots;
  m->cap = cap;
  return ES_OK;
}

int tok_u64map_put(tok_u64map_t *m, uint64_t key, uint64_t value, es_error_t *err) {
  ES_ASSERT(key != UINT64_MAX);
  if ((m->count + 1) * 2 > m->cap) {
    int rc = u64map_grow(m, err);
    if (rc) return rc;
  }
  size_t mask = m->cap - 1, i = (size_t)tok_mix64(key) & mask;
  while (m->slots[i].key != UINT64_MAX && m->slots[i].key != key) i = (i + 1) & mask;
  if (m->slots[i].key == UINT64_MAX) {
    m->slots[i].key = key;
    m->count++;
  }
  m->slots[i].value = value;
  return ES_OK;
}

void tok_u64map_free(tok_u64map_t *m) {
  if (!m) return;
  free(m->slots);
  memset(m, 0, sizeof *m);
}
