/* es_clock: the monotonic clock every timing in earshot reads (benchmarks, the engine's latency figures,
 * tests' deadlines), in seconds as a double. Header-only; thread-safe (clock_gettime). */
#pragma once

#include <time.h>

static inline double es_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
