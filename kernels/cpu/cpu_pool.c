/* cpu_pool: persistent workers and a parallel-for. See cpu_pool.h for the determinism contract.
 *
 * One job at a time: the caller publishes (fn, ctx, n_tasks) under the mutex, bumps the generation and
 * wakes the workers; everybody, the caller included, takes task indices from an atomic counter until they
 * run out; the last worker to finish signals the caller. Shutdown sets stop and joins.
 */
#include "cpu_pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

struct cpu_pool {
  int n_threads; /* participants, caller included */
  int n_started; /* workers actually running (for cleanup after a failed create) */
  pthread_t *workers;
  pthread_mutex_t mu;
  pthread_cond_t cv_start, cv_done;
  /* the current job; written by the caller under mu, read by workers after they see a new gen */
  uint64_t gen;
  int stop;
  int busy; /* workers still inside the current job */
  cpu_pool_fn fn;
  void *ctx;
  int64_t n_tasks;
  atomic_int_fast64_t next; /* next task index to hand out */
};

typedef struct {
  cpu_pool_t *pool;
  int tid;
} worker_arg_t;

static void run_tasks(cpu_pool_t *p, cpu_pool_fn fn, void *ctx, int64_t n_tasks, int tid) {
  for (;;) {
    int64_t t = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
    if (t >= n_tasks) break;
    fn(ctx, t, tid);
  }
}

static void *worker_main(void *arg) {
  worker_arg_t wa = *(worker_arg_t *)arg;
  free(arg);
  cpu_pool_t *p = wa.pool;
  uint64_t seen = 0;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (p->gen == seen && !p->stop) pthread_cond_wait(&p->cv_start, &p->mu);
    if (p->stop) break;
    seen = p->gen;
    cpu_pool_fn fn = p->fn;
    void *ctx = p->ctx;
    int64_t n = p->n_tasks;
    pthread_mutex_unlock(&p->mu);
    run_tasks(p, fn, ctx, n, wa.tid);
    pthread_mutex_lock(&p->mu);
    if (--p->busy == 0) pthread_cond_signal(&p->cv_done);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

int cpu_pool_create(int n_threads, cpu_pool_t **out, es_error_t *err) {
  *out = NULL;
  if (n_threads < 1 || n_threads > 1024) return es_fail(err, ES_EINVAL, "cpu pool: %d threads (1..1024)", n_threads);
  cpu_pool_t *p = calloc(1, sizeof *p);
  if (!p) return es_fail(err, ES_ENOMEM, "cpu pool: out of memory");
  p->n_threads = n_threads;
  atomic_init(&p->next, 0);
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv_start, NULL);
  pthread_cond_init(&p->cv_done, NULL);
  if (n_threads > 1) {
    p->workers = calloc((size_t)n_threads - 1, sizeof *p->workers);
    if (!p->workers) goto fail_nomem;
    for (int i = 0; i < n_threads - 1; i++) {
      worker_arg_t *wa = malloc(sizeof *wa);
      if (!wa) goto fail_nomem;
      wa->pool = p;
      wa->tid = i + 1;
      int rc = pthread_create(&p->workers[i], NULL, worker_main, wa);
      if (rc) {
        free(wa);
        cpu_pool_free(p);
        return es_fail(err, ES_EINTERNAL, "cpu pool: pthread_create failed for worker %d of %d: %s", i + 1,
                       n_threads - 1, strerror(rc));
      }
      p->n_started++;
    }
  }
  *out = p;
  return ES_OK;
fail_nomem:
  cpu_pool_free(p);
  return es_fail(err, ES_ENOMEM, "cpu pool: out of memory starting %d threads", n_threads);
}

void cpu_pool_free(cpu_pool_t *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  p->stop = 1;
  pthread_cond_broadcast(&p->cv_start);
  pthread_mutex_unlock(&p->mu);
  for (int i = 0; i < p->n_started; i++) pthread_join(p->workers[i], NULL);
  pthread_cond_destroy(&p->cv_done);
  pthread_cond_destroy(&p->cv_start);
  pthread_mutex_destroy(&p->mu);
  free(p->workers);
  free(p);
}

int cpu_pool_threads(const cpu_pool_t *p) {
  return p->n_threads;
}

void cpu_pool_run(cpu_pool_t *p, int64_t n_tasks, cpu_pool_fn fn, void *ctx) {
  if (n_tasks <= 0) return;
  if (p->n_started == 0 || n_tasks == 1) {
    for (int64_t t = 0; t < n_tasks; t++) fn(ctx, t, 0);
    return;
  }
  pthread_mutex_lock(&p->mu);
  p->fn = fn;
  p->ctx = ctx;
  p->n_tasks = n_tasks;
  atomic_store_explicit(&p->next, 0, memory_order_relaxed);
  p->busy = p->n_started;
  p->gen++;
  pthread_cond_broadcast(&p->cv_start);
  pthread_mutex_unlock(&p->mu);
  run_tasks(p, fn, ctx, n_tasks, 0);
  pthread_mutex_lock(&p->mu);
  while (p->busy) pthread_cond_wait(&p->cv_done, &p->mu);
  pthread_mutex_unlock(&p->mu);
}
