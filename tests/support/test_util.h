/* test_util: the minimal harness every earshot test binary uses.
 *
 * T_CHECK(cond, fmt, ...) counts a pass or prints a failure with file:line and continues;
 * t_finish() prints the closing line "N passed, N failed" and returns the exit code;
 * t_skip(reason) prints "skipped: reason" and returns T_SKIP (ctest counts it as skipped).
 * Header-only; the counters are per test binary.
 */
#pragma once

#include <math.h>
#include <stdarg.h>
#include <stdio.h>

#define T_SKIP 77

static int t_passed, t_failed;

#define T_CHECK(cond, ...)                                                 \
  do {                                                                     \
    if (cond) {                                                            \
      t_passed++;                                                          \
    } else {                                                               \
      t_failed++;                                                          \
      fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);      \
      fprintf(stderr, __VA_ARGS__);                                        \
      fputc('\n', stderr);                                                 \
    }                                                                      \
  } while (0)

/* Stops the current test function when a check fails (for checks later steps depend on). */
#define T_REQUIRE(cond, ...)   \
  do {                         \
    int t_before_ = t_failed;  \
    T_CHECK(cond, __VA_ARGS__); \
    if (t_failed != t_before_) return; \
  } while (0)

static inline int t_finish(void) {
  printf("%d passed, %d failed\n", t_passed, t_failed);
  return t_failed ? 1 : 0;
}

static inline int t_skip(const char *reason) {
  printf("skipped: %s\n", reason);
  return T_SKIP;
}
