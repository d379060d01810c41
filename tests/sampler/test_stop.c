/* test_stop: stop strings over streamed pieces — spanning pieces, a stop at the very start, overlapping
 * prefixes, held-back text released when a match fails, the stop text excluded (or included on
 * request), min_tokens inactivity, validation, and a randomised comparison with a naive search over the
 * whole text that also checks the hold-back invariant after every piece.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "stop.h"
#include "test_util.h"

static es_error_t err;

typedef struct {
  char out[4096];
  size_t len;
  int stopped, stop_index;
} collected_t;

/* Feeds the NULL-terminated pieces; active from piece index `active_from` on. Appends everything released
 * (and the flush when no stop string ended the stream). */
static void run(const char *const *stops, int n, int include, const char *const *pieces, int active_from,
                collected_t *c, size_t *released_after /* per piece, may be NULL */) {
  stop_matcher_t sm;
  memset(c, 0, sizeof *c);
  c->stop_index = -1;
  if (stop_init(&sm, stops, n, include, &err)) {
    fprintf(stderr, "stop_init: %s\n", err.msg);
    c->stopped = -1;
    return;
  }
  stop_result_t r;
  for (int i = 0; pieces[i]; i++) {
    if (stop_feed(&sm, pieces[i], strlen(pieces[i]), i >= active_from, &r, &err)) break;
    memcpy(c->out + c->len, r.text, r.len);
    c->len += r.len;
    if (released_after) released_after[i] = r.len;
    if (r.stopped && !c->stopped) {
      c->stopped = 1;
      c->stop_index = r.stop_index;
    }
  }
  if (!c->stopped) {
    stop_flush(&sm, &r);
    memcpy(c->out + c->len, r.text, r.len);
    c->len += r.len;
  }
  c->out[c->len] = 0;
  stop_free(&sm);
}

#define EXPECT(name, c, text, stopped_, index_)                                                                     \
  T_CHECK(strcmp((c).out, text) == 0 && (c).stopped == (stopped_) && (c).stop_index == (index_),                  \
          "%s: out '%s' stopped %d index %d (want '%s' %d %d)", name, (c).out, (c).stopped, (c).stop_index, text, \
          stopped_, index_)

static void test_basic(void) {
  collected_t c;
  size_t rel[8];
  const char *none[] = {"abc", "def", NULL};
  run(NULL, 0, 0, none, 0, &c, rel);
  EXPECT("no stop strings", c, "abcdef", 0, -1);
  T_CHECK(rel[0] == 3 && rel[1] == 3, "everything released at once");

  const char *stop[] = {"STOP"};
  const char *one[] = {"hello STOP world", NULL};
  run(stop, 1, 0, one, 0, &c, NULL);
  EXPECT("one piece", c, "hello ", 1, 0);

  const char *span[] = {"hel", "lo S", "TO", "P rest", "more", NULL};
  run(stop, 1, 0, span, 0, &c, rel);
  EXPECT("spanning pieces", c, "hello ", 1, 0);
  T_CHECK(rel[0] == 3 && rel[1] == 3 && rel[2] == 0 && rel[3] == 0, "held back: %zu %zu %zu %zu", rel[0], rel[1],
          rel[2], rel[3]);

  const char *start[] = {"STOPxyz", NULL};
  run(stop, 1, 0, start, 0, &c, NULL);
  EXPECT("stop at the very start", c, "", 1, 0);
  const char *start2[] = {"S", "T", "O", "P", NULL};
  run(stop, 1, 0, start2, 0, &c, rel);
  EXPECT("stop at the start, byte by byte", c, "", 1, 0);

  const char *fails[] = {"ST", "ART", " S", NULL};
  run(stop, 1, 0, fails, 0, &c, rel);
  EXPECT("held text released when the match fails; flushed at the end", c, "START S", 0, -1);
  T_CHECK(rel[0] == 0 && rel[1] == 5 && rel[2] == 1, "release counts %zu %zu %zu", rel[0], rel[1], rel[2]);

  run(stop, 1, 1, span, 0, &c, NULL);
  EXPECT("include_stop", c, "hello STOP", 1, 0);
}

static void test_overlaps(void) {
  collected_t c;
  size_t rel[8];
  const char *aab[] = {"aab"};
  const char *p1[] = {"a", "a", "a", "b", "c", NULL};
  run(aab, 1, 0, p1, 0, &c, rel);
  EXPECT("aab in aaab", c, "a", 1, 0);
  T_CHECK(rel[0] == 0 && rel[1] == 0 && rel[2] == 1 && rel[3] == 0, "aa held, then one a released: %zu %zu %zu",
          rel[0], rel[1], rel[2]);

  const char *both[] = {"ab", "aab"};
  const char *p2[] = {"xa", "ab", NULL};
  run(both, 2, 0, p2, 0, &c, NULL);
  EXPECT("ab vs aab ending together: the longer wins", c, "x", 1, 1);
  const char *p3[] = {"xab", NULL};
  run(both, 2, 0, p3, 0, &c, NULL);
  EXPECT("ab alone", c, "x", 1, 0);

  const char *first[] = {"cd", "bcdef"};
  const char *p4[] = {"abcdefg", NULL};
  run(first, 2, 0, p4, 0, &c, NULL);
  EXPECT("the stop that ends first wins", c, "ab", 1, 0);

  const char *abab[] = {"abab"};
  const char *p5[] = {"aba", "abab", NULL};
  run(abab, 1, 0, p5, 0, &c, NULL);
  EXPECT("KMP border: abab in abaabab", c, "aba", 1, 0);

  const char *utf[] = {"é!"};
  const char *p6[] = {"caf", "é", "!", NULL};
  run(utf, 1, 0, p6, 0, &c, rel);
  EXPECT("UTF-8 stop", c, "caf", 1, 0);
  const char *p7[] = {"café", " ok", NULL};
  run(utf, 1, 0, p7, 0, &c, rel);
  EXPECT("UTF-8 held then released", c, "café ok", 0, -1);
  T_CHECK(rel[0] == 3, "the held suffix starts at a character boundary: %zu", rel[0]);
}

static void test_inactive(void) {
  collected_t c;
  const char *ab[] = {"ab"};
  const char *p1[] = {"xab", "cab", "z", NULL};
  run(ab, 1, 0, p1, 1, &c, NULL);
  EXPECT("before min_tokens a match is ordinary text", c, "xabc", 1, 0);
  const char *aa[] = {"aa"};
  const char *p2[] = {"a", "a", NULL};
  run(aa, 1, 0, p2, 1, &c, NULL);
  EXPECT("a prefix held while inactive completes once active", c, "", 1, 0);
  const char *p3[] = {"aa", "b", NULL};
  run(aa, 1, 0, p3, 2, &c, NULL);
  EXPECT("inactive throughout", c, "aab", 0, -1);
}

static void test_after_stop_and_growth(void) {
  stop_matcher_t sm;
  const char *stop[] = {"END"};
  T_REQUIRE(stop_init(&sm, stop, 1, 0, &err) == 0, "init");
  stop_result_t r;
  size_t big = 10000;
  char *piece = malloc(big + 4);
  memset(piece, 'x', big);
  memcpy(piece + big, "END", 4);
  T_REQUIRE(stop_feed(&sm, piece, big + 3, 1, &r, &err) == 0, "big piece");
  T_CHECK(r.stopped && r.len == big, "a piece longer than the buffer: %zu", r.len);
  T_CHECK(stop_feed(&sm, "more", 4, 1, &r, &err) == 0 && r.len == 0 && r.stopped, "nothing after a stop");
  stop_flush(&sm, &r);
  T_CHECK(r.len == 0, "flush after a stop releases nothing");
  stop_free(&sm);
  stop_free(&sm); /* freed state is zeroed: a second free is harmless */
  stop_free(NULL);
  free(piece);
}

static void test_validation(void) {
  stop_matcher_t sm;
  const char *empty[] = {"ok", ""};
  T_CHECK(stop_init(&sm, empty, 2, 0, &err) == ES_EINVAL && strstr(err.msg, "stop[1]"), "empty: %s", err.msg);
  char longs[STOP_MAX_BYTES + 2];
  memset(longs, 'a', sizeof longs - 1);
  longs[sizeof longs - 1] = 0;
  const char *toolong[] = {longs};
  T_CHECK(stop_init(&sm, toolong, 1, 0, &err) == ES_ETOOBIG && strstr(err.msg, "bytes"), "too long: %s", err.msg);
  const char *many[STOP_MAX_STRINGS + 1];
  for (int i = 0; i <= STOP_MAX_STRINGS; i++) many[i] = "x";
  T_CHECK(stop_init(&sm, many, STOP_MAX_STRINGS + 1, 0, &err) == ES_ETOOBIG, "too many: %s", err.msg);
  const char *bad[] = {"\xc3"};
  T_CHECK(stop_init(&sm, bad, 1, 0, &err) == ES_EINVAL && strstr(err.msg, "UTF-8"), "truncated UTF-8: %s", err.msg);
  const char *bad2[] = {"\xed\xa0\x80"};
  T_CHECK(stop_init(&sm, bad2, 1, 0, &err) == ES_EINVAL, "surrogate");
  const char *bad3[] = {"\xc0\xaf"};
  T_CHECK(stop_init(&sm, bad3, 1, 0, &err) == ES_EINVAL, "overlong");
  char maxlen[STOP_MAX_BYTES + 1];
  memset(maxlen, 'a', STOP_MAX_BYTES);
  maxlen[STOP_MAX_BYTES] = 0;
  const char *okay[] = {maxlen, "日本"};
  T_CHECK(stop_init(&sm, okay, 2, 0, &err) == 0, "limits are inclusive: %s", err.msg);
  stop_free(&sm);
}

/* Longest suffix of text[0, n) that is a proper prefix of a stop string. */
static size_t naive_hold(const char *text, size_t n, char stops[][8], int ns) {
  size_t best = 0;
  for (int s = 0; s < ns; s++) {
    size_t L = strlen(stops[s]);
    for (size_t h = 1; h < L && h <= n; h++)
      if (memcmp(text + n - h, stops[s], h) == 0 && h > best) best = h;
  }
  return best;
}

static void test_random(void) {
  uint64_t x = 88172645463325252ull;
#define RND(m) ((x ^= x << 13, x ^= x >> 7, x ^= x << 17), (int)(x % (uint64_t)(m)))
  int failures = 0;
  for (int trial = 0; trial < 3000 && failures < 5; trial++) {
    char stops[3][8];
    const char *sp[3];
    int ns = 1 + RND(3);
    for (int s = 0; s < ns; s++) {
      int L = 1 + RND(4);
      for (int i = 0; i < L; i++) stops[s][i] = (char)('a' + RND(3));
      stops[s][L] = 0;
      sp[s] = stops[s];
    }
    char text[64];
    int n = RND(40);
    for (int i = 0; i < n; i++) text[i] = (char)('a' + RND(3));
    text[n] = 0;
    /* expected: the occurrence with the earliest end, the longest on the same end */
    int best_end = -1, best_start = 0, best_s = -1;
    for (int e = 1; e <= n && best_end < 0; e++)
      for (int s = 0; s < ns; s++) {
        int L = (int)strlen(stops[s]);
        if (L <= e && memcmp(text + e - L, stops[s], (size_t)L) == 0 && (best_s < 0 || L > (int)strlen(stops[best_s]))) {
          best_end = e;
          best_start = e - L;
          best_s = s;
        }
      }
    stop_matcher_t sm;
    T_REQUIRE(stop_init(&sm, sp, ns, 0, &err) == 0, "init");
    char out[64];
    size_t olen = 0, fed = 0;
    int stopped = 0, idx = -1, ok = 1;
    while (fed < (size_t)n && !stopped) {
      size_t k = 1 + (size_t)RND(5);
      if (k > (size_t)n - fed) k = (size_t)n - fed;
      stop_result_t r;
      stop_feed(&sm, text + fed, k, 1, &r, &err);
      memcpy(out + olen, r.text, r.len);
      olen += r.len;
      fed += k;
      if (r.stopped) {
        stopped = 1;
        idx = r.stop_index;
      } else if (olen != fed - naive_hold(text, fed, stops, ns) || memcmp(out, text, olen) != 0) {
        ok = 0; /* released = all but the longest suffix that may still start a stop string */
      }
    }
    if (!stopped) {
      stop_result_t r;
      stop_flush(&sm, &r);
      memcpy(out + olen, r.text, r.len);
      olen += r.len;
    }
    stop_free(&sm);
    size_t want_len = best_end < 0 ? (size_t)n : (size_t)best_start;
    if (!ok || stopped != (best_end >= 0) || idx != best_s || olen != want_len || memcmp(out, text, olen) != 0) {
      failures++;
      fprintf(stderr, "random trial %d: text '%s' stops %s|%s|%s: out '%.*s' stopped %d idx %d hold-ok %d\n", trial, text,
              stops[0], ns > 1 ? stops[1] : "", ns > 2 ? stops[2] : "", (int)olen, out, stopped, idx, ok);
    }
  }
  T_CHECK(failures == 0, "randomised streams against the naive search: %d failures", failures);
#undef RND
}

int main(void) {
  test_basic();
  test_overlaps();
  test_inactive();
  test_after_stop_and_growth();
  test_validation();
  test_random();
  return t_finish();
}
