/* test_kv_alloc: block ids, reference counts and the prefix cache under random operations, checked against
 * a plain model of what must hold: no block is held twice by one sequence's fresh reservations, counts add
 * up, published blocks are found until evicted, eviction only takes unreferenced cached blocks, and
 * everything is free when every sequence is released. */
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "kv_alloc.h"
#include "test_util.h"

#define NB 40
#define NS 6

int main(void) {
  kv_pool_t *p;
  es_error_t err;
  if (kv_pool_init(NB, &p, &err) != 0) {
    fprintf(stderr, "%s\n", err.msg);
    return 1;
  }
  T_CHECK(kv_pool_total(p) == NB - 1 && kv_pool_free_count(p) == NB - 1, "fresh pool");
  kv_seq_t seq[NS];
  memset(seq, 0, sizeof seq);
  int refs[NB] = {0};
  uint64_t pub_hash[NB] = {0};
  int published[NB] = {0};
  unsigned s = 7;
  int bad = 0;
  for (int step = 0; step < 20000; step++) {
    int q = (int)((s = s * 1103515245u + 12345u) >> 16) % NS;
    int op = (int)((s = s * 1103515245u + 12345u) >> 16) % 10;
    if (op < 4) { /* grow */
      int want = seq[q].n_blocks * ES_KV_BLOCK + 1 + (int)((s >> 20) % 40);
      int need = kv_seq_blocks_needed(&seq[q], want);
      int free_before = kv_pool_free_count(p);
      int rc = kv_seq_reserve(p, &seq[q], want, 1000, &err);
      if (need > free_before) {
        if (rc != ES_ETOOBIG) bad++;
      } else if (rc != 0) {
        bad++;
      } else {
        for (int i = seq[q].n_blocks - need; i < seq[q].n_blocks; i++) {
          int b = seq[q].blocks[i];
          if (b < 1 || b >= NB || refs[b] != 0) bad++; /* fresh blocks are unreferenced ones */
          if (published[b]) published[b] = 0;          /* an evicted cached block */
          refs[b] = 1;
        }
      }
    } else if (op < 6 && seq[q].n_blocks) { /* publish a held block */
      int b = seq[q].blocks[(s >> 18) % (unsigned)seq[q].n_blocks];
      uint64_t h = ((uint64_t)s << 32) ^ (uint64_t)step;
      if (!published[b] && kv_pool_lookup(p, h) < 0) {
        kv_pool_publish(p, b, h);
        published[b] = 1;
        pub_hash[b] = h;
      }
    } else if (op < 8) { /* share a published block (cached or in use) */
      for (int b = 1; b < NB; b++) {
        if (!published[b]) continue;
        if (kv_pool_lookup(p, pub_hash[b]) != b) bad++;
        if (kv_seq_share(p, &seq[q], b, &err) != 0) bad++;
        refs[b]++;
        break;
      }
    } else { /* release */
      for (int i = 0; i < seq[q].n_blocks; i++) refs[seq[q].blocks[i]]--;
      kv_seq_release(p, &seq[q]);
    }
    /* invariants: free = unreferenced, cached = unreferenced and published */
    int unref = 0, cached = 0;
    for (int b = 1; b < NB; b++) {
      if (refs[b] < 0) bad++;
      if (refs[b] == 0) unref++;
      if (refs[b] == 0 && published[b]) cached++;
      if (published[b] && kv_pool_lookup(p, pub_hash[b]) != b) bad++;
    }
    if (unref != kv_pool_free_count(p) || cached != kv_pool_cached_count(p)) bad++;
  }
  T_CHECK(bad == 0, "%d invariant violations", bad);
  for (int q = 0; q < NS; q++) kv_seq_release(p, &seq[q]);
  T_CHECK(kv_pool_free_count(p) == NB - 1, "all blocks free after release: %d", kv_pool_free_count(p));
  /* slots */
  kv_seq_t a = {0};
  T_CHECK(kv_seq_reserve(p, &a, 40, 1000, &err) == 0, "%s", err.msg);
  T_CHECK(kv_seq_slot(&a, 17) == a.blocks[1] * ES_KV_BLOCK + 1, "slot of position 17");
  T_CHECK(kv_seq_reserve(p, &a, 10000, 8, &err) == ES_ETOOBIG, "max_blocks enforced");
  kv_seq_release(p, &a);
  kv_pool_free(p);
  return t_finish();
}
