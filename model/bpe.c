/* bpe: byte-level BPE merging of one word. See bpe.h. */
#include "bpe.h"

#include <stdlib.h>
#include <string.h>

/* Words up to this many bytes are cached per thread; the cache is emptied when it holds this many words. */
#define BPE_CACHE_MAX_WORD 128
#define BPE_CACHE_MAX_WORDS 65536

/* A candidate merge of the symbols at pos and its right neighbour. It is stale once either symbol has
 * changed, which comparing the two ids detects without another merge-table lookup. */
struct bpe_cand {
  uint64_t key; /* rank << 32 | pos: heap order, leftmost first on equal ranks */
  int32_t left, right, merged;
};

int bpe_add_merge(bpe_t *m, int32_t left, int32_t right, uint32_t rank, int32_t merged, es_error_t *err) {
  uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right, old;
  if (tok_u64map_get(&m->merges, key, &old)) return ES_OK;
  return tok_u64map_put(&m->merges, key, (uint64_t)rank << 32 | (uint32_t)merged, err);
}

void bpe_free(bpe_t *m) {
  if (!m) return;
  tok_u64map_free(&m->merges);
}

void bpe_work_free(bpe_work_t *w) {
  if (!w) return;
  free(w->sym);
  free(w->sym_next);
  free(w->sym_prev);
  free(w->heap);
  free(w->out);
  tok_strmap_free(&w->cache);
  free(w->cache_ids);
  memset(w, 0, sizeof *w);
}

static int work_reserve(bpe_work_t *w, size_t n, es_error_t *err) {
  if (n <= w->cap) return ES_OK;
  size_t cap = w->cap ? w->cap : 64;
  while (cap < n) cap *= 2;
  int32_t *sym = realloc(w->sym, cap * sizeof *sym);
  if (sym) w->sym = sym;
  int32_t *nx = realloc(w->sym_next, cap * sizeof *nx);
  if (nx) w->sym_next = nx;
  int32_t *pv = realloc(w->sym_prev, cap * sizeof *pv);
  if (pv) w->sym_prev = pv;
  struct bpe_cand *heap = realloc(w->heap, 3 * cap * sizeof *heap);
  if (heap) w->heap = heap;
  int32_t *out = realloc(w->out, cap * sizeof *out);
  if (out) w->out = out;
  if (!sym || !nx || !pv || !heap || !out)
    return es_fail(err, ES_ENOMEM, "BPE: out of memory for a word of %zu bytes", n);
  w->cap = cap;
  return ES_OK;
}

static void heap_push(struct bpe_cand *h, size_t *n, struct bpe_cand v) {
  size_t i = (*n)++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (h[p].key <= v.key) break;
    h[i] = h[p];
    i = p;
  }
  h[i] = v;
}

static struct bpe_cand heap_pop(struct bpe_cand *h, size_t *n) {
  struct bpe_cand top = h[0], v = h[--(*n)];
  size_t i = 0, m = *n;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= m) break;
    if (c + 1 < m && h[c + 1].key < h[c].key) c++;
    if (v.key <= h[c].key) break;
    h[i] = h[c];
    i = c;
  }
  if (m) h[i] = v;
  return top;
}

static void push_pair(const bpe_t *m, bpe_work_t *w, size_t *hn, int32_t pos) {
  int32_t nx = w->sym_next[pos];
  if (nx < 0) return;
  int32_t l = w->sym[pos], r = w->sym[nx];
  uint64_t rm;
  if (!tok_u64map_get(&m->merges, (uint64_t)(uint32_t)l << 32 | (uint32_t)r, &rm)) return;
  struct bpe_cand c = {(rm & ~0xFFFFFFFFull) | (uint32_t)pos, l, r, (int32_t)(uint32_t)rm};
  heap_push(w->heap, hn, c);
}

static size_t merge_word(const bpe_t *m, bpe_work_t *w, const uint8_t *word, size_t len) {
  int32_t n = (int32_t)len;
  for (int32_t i = 0; i < n; i++) {
    w->sym[i] = m->byte_ids[word[i]];
    w->sym_prev[i] = i - 1;
    w->sym_next[i] = i + 1 < n ? i + 1 : -1;
  }
  size_t hn = 0;
  for (int32_t i = 0; i + 1 < n; i++) push_pair(m, w, &hn, i);
  while (hn) {
    struct bpe_cand c = heap_pop(w->heap, &hn);
    int32_t pos = (int32_t)(uint32_t)c.key, nx = w->sym_next[pos];
    /* stale: the left symbol was merged away or changed, or its right neighbour did */
    if (w->sym[pos] != c.left || nx < 0 || w->sym[nx] != c.right) continue;
    w->sym[pos] = c.merged;
    w->sym[nx] = -1;
    int32_t nn = w->sym_next[nx];
    w->sym_next[pos] = nn;
    if (nn >= 0) w->sym_prev[nn] = pos;
    if (w->sym_prev[pos] >= 0) push_pair(m, w, &hn, w->sym_prev[pos]);
    push_pair(m, w, &hn, pos);
  }
  size_t k = 0;
  for (int32_t i = 0; i >= 0; i = w->sym_next[i]) w->out[k++] = w->sym[i];
  return k;
}

int bpe_encode_word(const bpe_t *m, bpe_work_t *w, const uint8_t *word, size_t len, const int32_t **ids, size_t *n_ids,
                    es_error_t *err) {
  ES_ASSERT(len >= 1);
  if (len > INT32_MAX) return es_fail(err, ES_ETOOBIG, "BPE: a word of %zu bytes", len);
  int rc = work_reserve(w, len, err);
  if (rc) return rc;
  if (len == 1) {
    w->out[0] = m->byte_ids[word[0]];
    *ids = w->out;
    *n_ids = 1;
    return ES_OK;
  }
  int cacheable = len <= BPE_CACHE_MAX_WORD;
  uint64_t v;
  if (cacheable && tok_strmap_get(&w->cache, word, len, &v)) {
    *ids = w->cache_ids + (v >> 32);
    *n_ids = (size_t)(uint32_t)v;
    return ES_OK;
  }
  size_t k = merge_word(m, w, word, len);
  *ids = w->out;
  *n_ids = k;
  if (!cacheable) return ES_OK;
  if (w->cache.count >= BPE_CACHE_MAX_WORDS) {
    tok_strmap_clear(&w->cache);
    w->cache_len = 0;
  }
  if (w->cache_len + k > w->cache_cap) {
    size_t ncap = w->cache_cap ? w->cache_cap * 2 : 4096;
    while (ncap < w->cache_len + k) ncap *= 2;
    int32_t *nc = realloc(w->cache_ids, ncap * sizeof *nc);
    if (!nc) return ES_OK; /* the cache is an optimisation: skip it rather than fail the encode */
    w->cache_ids = nc;
    w->cache_cap = ncap;
  }
  memcpy(w->cache_ids + w->cache_len, w->out, k * sizeof *w->out);
  es_error_t ignored;
  if (tok_strmap_put(&w->cache, word, len, (uint64_t)w->cache_len << 32 | k, &ignored) == ES_OK) w->cache_len += k;
  return ES_OK;
}
