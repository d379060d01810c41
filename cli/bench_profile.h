/* bench_profile: prints an op profile (backend.h, es_profile_t) as a table — where a step's device time goes.
 * Thread safety: none needed (pure output). */
#pragma once

#include <stdio.h>

#include "backend.h"

/* The profile of `per` repetitions of a step (times and calls divided by per), under a title; bytes over time
 * against copy_bw (bytes read + written per second, 0: not shown). At most max_rows rows, the largest first; the
 * rest summed in one line. */
void bench_profile_print(FILE *out, const char *title, const es_profile_t *p, int per, double copy_bw, int max_rows);
