/* cpu_sample: the CPU backend's sampling ops (backend.h, "sampling") and the serial algorithm they run, which is
 * also the specification of the CUDA kernel (kernels/cuda/cuda_sample.cu runs the same passes in parallel).
 *
 * The algorithm for one row (every step uses the helpers of kernels/sample_math.h):
 *   0. suppression: the slot's suppress ids get -inf (when the row says suppress);
 *   1. one pass: NaN -> -inf, the penalties for seen ids, written back; the max and the first id holding it;
 *      the number of finite logits. No finite logit, or a +inf max: error (token -1);
 *   2. greedy (temperature < SMK_GREEDY_EPS): the argmax;
 *   3. top-k (1 <= k < V, at least k finite): the k-th largest logit by an MSB-first radix select on the keys
 *      (smk_key) of the finite logits, 4 passes of 8-bit digits over count histograms; ids with key >= it
 *      are kept (ties at the k-th are kept);
 *   4. top-p (< 1): over the top-k survivors with weights w = smk_weight(l, max, 1/T), the total fixed-point
 *      mass, the target ceil(top_p * total), then a radix select on the weights' bits over MASS histograms
 *      finds the threshold weight W* with mass(w > W*) < target <= mass(w >= W*); of the ids tied at W*, the
 *      lowest ids are kept until the target is reached (smk_ties_kept): the host sampler's nucleus rule;
 *   5. min-p (> 0): keep w >= min_p (w_max = 1);
 *   6. draw: target = floor(u * mass) with u = smk_uniform(seed, step), mass the fixed-point sum of the kept
 *      weights; the first kept id, in ascending id order, whose running mass exceeds it.
 * All sums are integers, so the result does not depend on the order of summation: the CUDA kernel, which
 * sums in parallel, computes the same kept set and the same token bit for bit.
 *
 * Thread safety: cpu_sample_row is a pure function of its arguments (writes only logits, probs, c->w); the
 * ops follow backend.h (the driving thread).
 */
#pragma once

#include <stdint.h>

#include "backend_impl.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The slot state and scratch one row is sampled with. */
typedef struct {
  const uint8_t *seen;      /* (V) 1 = in the prompt or generated; NULL: nothing seen */
  const int32_t *gen_count; /* (V) times generated; NULL: none */
  const int32_t *suppress;  /* (n_suppress) ids set to -inf when the row says suppress */
  int n_suppress;
  float *w; /* (V) fp32 scratch: the weights */
} cpu_sample_ctx_t;

enum { CPU_SAMPLE_OK = 0, CPU_SAMPLE_NO_FINITE = 1, CPU_SAMPLE_POS_INF = 2 };

/* Samples one row of V logits (processed in place as es_op_sample says) with the parameters p (p->slot is not
 * used: c carries the slot's state). *token = the id, or -1 on error; returns CPU_SAMPLE_*, *bad_id = the id
 * holding +inf. probs (V fp32, may be NULL) gets every id's probability (0 for removed ids, 1 at the argmax
 * when greedy). Does not count the token (the op does). */
int cpu_sample_row(const es_sample_row_t *p, float *logits, int V, const cpu_sample_ctx_t *c, float *probs,
                   int32_t *token, int32_t *bad_id);

/* The backend ops (vtable entries of cpu_backend.c). */
int cpu_sampler_init(es_backend_t *be, es_error_t *err);
int cpu_sampler_reset(es_backend_t *be, int slot, const int32_t *ids, int n_ids, const int32_t *gen_ids, int n_gen,
                      const int32_t *suppress_ids, int n_suppress, es_error_t *err);
int cpu_sample_prepare(es_backend_t *be, const es_sample_row_t *rows, int n, es_error_t *err);
int cpu_op_sample(es_backend_t *be, float *logits, int n, int32_t *tokens, es_error_t *err);

#ifdef __cplusplus
}
#endif
