/* cpu_pool: a small persistent pthread worker pool with one operation, a parallel-for over tasks.
 *
 * Determinism contract: cpu_pool_run hands out task indices 0..n_tasks-1, each exactly once, to whichever
 * participant asks first (the caller is participant 0). Which thread runs a task varies from run to run;
 * what a task computes must therefore depend only on its index (and on per-thread scratch it fully
 * rewrites), never on the thread id or on the other tasks. Every kernel in kernels/cpu/ splits its output
 * into tasks that way, so results are bit-identical for any thread count.
 *
 * Thread safety: one driving thread at a time (the backend's); cpu_pool_run returns after every task has
 * finished, and its writes are visible to the caller (mutex hand-off).
 */
#pragma once

#include <stdint.h>

#include "es_error.h"

typedef struct cpu_pool cpu_pool_t;

/* fn(ctx, task, tid): runs one task; tid in [0, n_threads) names the participant (for its scratch). */
typedef void (*cpu_pool_fn)(void *ctx, int64_t task, int tid);

/* Starts n_threads - 1 workers (n_threads >= 1; the caller of cpu_pool_run is participant 0). */
int cpu_pool_create(int n_threads, cpu_pool_t **out, es_error_t *err);
/* Stops and joins the workers. NULL is a no-op. */
void cpu_pool_free(cpu_pool_t *pool);
int cpu_pool_threads(const cpu_pool_t *pool);
/* Runs fn for every task in 0..n_tasks-1 and waits for all of them. */
void cpu_pool_run(cpu_pool_t *pool, int64_t n_tasks, cpu_pool_fn fn, void *ctx);
