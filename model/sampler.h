/* sampler: turns one row of logits into the next token, with the sampling parameters OpenAI and vLLM
 * clients send, and decides when a request finishes because of the token it drew.
 *
 * Pipeline per step, on one fp32 logits row [V] in host memory (the order of transformers' generate(),
 * which is what the model's generation_config was tuned with):
 *   1. repetition penalty   transformers RepetitionPenaltyLogitsProcessor, over every distinct id of
 *                           prompt + generated: l < 0 ? l * p : l / p
 *   2. presence/frequency   OpenAI's rule, counting GENERATED ids only (as vLLM's apply_penalties does):
 *                           l -= presence * (count > 0) + frequency * count
 *   3. min_tokens           eos (unless ignore_eos) and stop ids get -inf while fewer than min_tokens
 *                           tokens were generated (transformers MinNewTokensLengthLogitsProcessor, vLLM
 *                           MinTokensLogitsProcessor)
 *   4. greedy               temperature < SMP_GREEDY_EPS: argmax, the first index on ties; filters ignored
 *   5. temperature          l / T
 *   6. top-k                keep every id whose logit >= the k-th largest (ties at the k-th are kept, as
 *                           in transformers TopKLogitsWarper and vLLM apply_top_k_top_p)
 *   7. top-p                transformers TopPLogitsWarper: the minimal set of most probable ids whose
 *                           probability (renormalised over what top-k kept) sums to >= top_p; ties in
 *                           probability are ranked by lower id first, so the set is deterministic
 *   8. min-p                keep ids with p >= min_p * p_max (transformers MinPLogitsWarper)
 *   9. draw                 inverse CDF over the kept ids with one uniform from the request's stream;
 *                           the walk goes over the kept ids IN ASCENDING ID ORDER (a contract shared with
 *                           the backends' sample ops, kernels/backend.h: the CPU and the GPU then draw the
 *                           same id for the same seed and step, except where their sums of the weights
 *                           round differently right at a boundary)
 *
 * Differences from vLLM (v1 Sampler, documented in vllm/v1/sample/sampler.py), chosen deliberately:
 *   - vLLM applies min-p BEFORE top-k/top-p; we follow transformers (after). The kept set differs only
 *     when top_p < 1 and min_p > 0 are both set: vLLM computes the nucleus over the min-p survivors
 *     (renormalised), which can keep fewer ids. top-k and min-p commute, so those agree.
 *   - vLLM draws with the exponential race argmax(p / q), q ~ Exp(1) per id (V random numbers per step);
 *     we use one uniform and the inverse CDF. Both sample the same distribution; the streams differ, so
 *     a seed reproduces earshot's outputs, not vLLM's (vLLM's do not match transformers' either).
 *   - min_tokens before or after the penalties is the same thing: -inf stays -inf under both.
 *
 * Random stream: Philox4x32-10 (Salmon et al., SC'11; Random123), a counter-based generator: the draw
 * for generated token t is a pure function of (seed, t). Key = the 64-bit seed, counter = {t lo, t hi,
 * SMP_STREAM_TOKEN, 0}; the one implementation is kernels/sample_math.h (smk_philox4x32_10, smk_uniform),
 * used by this file and by the backends' sample ops. Changing this layout, or the id-order walk of step 9,
 * changes every seeded output; treat both as a contract. A
 * request without a seed gets one from getrandom() at smp_init, reported in smp_state_t.seed.
 *
 * Thread safety: an smp_state_t belongs to one request and an smp_workspace_t to one thread (the engine
 * thread); no global state. Sampling a row needs both; different requests may be sampled on different
 * threads with their own workspaces.
 * Allocation: smp_init allocates the penalty table once per request, smp_workspace_init the V-sized
 * scratch once per thread; smp_sample and smp_accept never allocate.
 *
 * The engine draws on the backend instead (es_op_sample, kernels/backend.h "sampling": the same pipeline on the
 * device logits, tested against smp_distribution / smp_sample by tests/kernels/test_sample_math.c); the state
 * here keeps the parameters, the seed, n_generated (the step) and the finish logic (smp_accept).
 *
 * Loop (stop strings live in stop.h, they need the detokenized text):
 *   smp_sample(&st, &ws, logits_row, &tok, &err);   // or the backend's es_op_sample
 *   fin = smp_accept(&st, tok);                      // eos / stop id -> STOP, max_tokens -> LENGTH
 *   if (fin != SMP_FINISH_STOP) {                    // the text of eos / stop ids is not emitted (vLLM)
 *     stop_feed(&sm, piece, n, smp_stop_strings_active(&st), &res, &err);  // emit res.text
 *     if (res.stopped) fin = SMP_FINISH_STOP;        // a stop string beats "length" on the same token
 *   }
 *   if (fin != SMP_FINISH_NONE && !res.stopped) stop_flush(&sm, &res);  // emit held-back text
 *
 * ref: transformers generation/logits_process.py, generation/utils.py (_get_logits_processor order);
 *      vLLM vllm/v1/sample/sampler.py, ops/topk_topp_sampler.py, model_executor/layers/utils.py
 *      (apply_penalties), sampling_params.py (validation); OpenAI API reference, parameter details.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "es_error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SMP_MAX_STOP_IDS 64
#define SMP_MAX_EOS_IDS 8
/* vLLM's _SAMPLING_EPS: a temperature below this samples greedily. */
#define SMP_GREEDY_EPS 1e-5
/* Philox counter word 2: which draw of a step this is. Only token draws exist today. */
#define SMP_STREAM_TOKEN 0u

typedef enum {
  SMP_FINISH_NONE = 0,
  SMP_FINISH_STOP,   /* "stop": eos (unless ignore_eos), a stop id, or (via stop.h) a stop string */
  SMP_FINISH_LENGTH, /* "length": max_tokens generated */
} smp_finish_t;

/* What a request asks for. Defaults (smp_params_default) are vLLM's fallbacks when a field is absent:
 * temperature 1, top_k off, top_p 1, min_p 0, penalties off, max_tokens 16 (the server sets its own). */
typedef struct {
  double temperature;        /* >= 0; < SMP_GREEDY_EPS (0 included) means greedy */
  int top_k;                 /* >= 1 keeps k ids; 0 or -1 disables (vLLM accepts both) */
  double top_p;              /* (0, 1]; 1 disables */
  double min_p;              /* [0, 1]; 0 disables */
  double repetition_penalty; /* > 0; 1 disables */
  double presence_penalty;   /* [-2, 2] (OpenAI's range); 0 disables */
  double frequency_penalty;  /* [-2, 2]; 0 disables */
  int has_seed;              /* 1: use seed; 0: smp_init draws one */
  uint64_t seed;             /* OpenAI's int seed, reinterpreted as 64 bits */
  int max_tokens;            /* >= 1: new tokens at most */
  int min_tokens;            /* [0, max_tokens]: eos / stop ids suppressed and stop strings inactive before */
  int ignore_eos;            /* 1: eos ids neither finish nor are suppressed by min_tokens */
  int stop_ids[SMP_MAX_STOP_IDS]; /* vLLM stop_token_ids: finish with "stop"; each in [0, V) */
  int n_stop_ids;
} smp_params_t;

/* One entry per distinct id of prompt + generated; only kept when a penalty is active. */
typedef struct {
  int32_t id;
  int32_t gen_count; /* times generated; 0 for ids seen only in the prompt */
} smp_count_t;

/* Per-request state. Owned by the request; written only by smp_sample/smp_accept on the engine thread. */
typedef struct {
  smp_params_t p;
  int vocab;                     /* V: the length of every logits row */
  int eos_ids[SMP_MAX_EOS_IDS];  /* the model's eos ids (generation_config) */
  int n_eos;
  uint64_t seed;                 /* the effective seed: the request's, or the one drawn at init */
  int n_generated;               /* tokens accepted so far; the Philox step of the next draw */
  int penalties;                 /* 1 when any penalty is active and the table below is kept */
  smp_count_t *counts;           /* (cap_counts) distinct ids of prompt + generated, insertion order */
  int n_counts, cap_counts;
  int32_t *slots;                /* (n_slots) open-addressing index into counts, -1 empty; n_slots = 2^k */
  int n_slots;
  int last_stop_id;              /* the stop id that finished the request (vLLM stop_reason), else -1 */
  smp_finish_t finish;           /* set by smp_accept once the request is done */
} smp_state_t;

/* Per-thread scratch for one row: V weights and V ids. */
typedef struct {
  int vocab;
  float *w;     /* (V) fp32: the top-k min-heap of logits, then candidate weights exp((l - max) / T) */
  int32_t *ids; /* (V) int32: candidate ids, parallel to w */
  float *dense; /* (V) fp32: the kept weights by id, for the id-order walk after top-k / top-p */
} smp_workspace_t;

void smp_params_default(smp_params_t *p);

/* Checks every field against its documented range; vocab bounds the stop ids. The message names the
 * field and the value, in the words a client can act on. */
int smp_params_validate(const smp_params_t *p, int vocab, es_error_t *err);

/* Validates p, copies it, records the eos ids and the prompt's distinct ids (for the repetition
 * penalty, only when a penalty is active), and fixes the seed. prompt ids must lie in [0, vocab). */
int smp_init(smp_state_t *st, const smp_params_t *p, int vocab, const int *eos_ids, int n_eos,
             const int32_t *prompt_ids, int n_prompt, es_error_t *err);
void smp_free(smp_state_t *st);

int smp_workspace_init(smp_workspace_t *ws, int vocab, es_error_t *err);
void smp_workspace_free(smp_workspace_t *ws);

/* Draws the next token from logits (V fp32, modified in place: the penalties and masks are applied to
 * it). Fails (ES_EINVAL) when the request already finished or no id has a finite logit (NaN counts as
 * -inf). Does not advance the state: smp_accept does. */
int smp_sample(smp_state_t *st, smp_workspace_t *ws, float *logits, int32_t *token, es_error_t *err);

/* The distribution smp_sample draws from: probs (V fp32) gets each id's final probability, 0 for the
 * ids the filters removed (1 at the argmax when greedy). Same in-place effect on logits; for tests and
 * for logprobs of the processed distribution. */
int smp_distribution(smp_state_t *st, smp_workspace_t *ws, float *logits, float *probs, es_error_t *err);

/* Records token as generated: counts for the penalties, n_generated, and the finish reason it causes.
 * Returns st->finish. Stop ids and eos count only once min_tokens tokens exist (vLLM StopChecker). */
smp_finish_t smp_accept(smp_state_t *st, int32_t token);

/* 1 when stop strings may finish the request: min_tokens tokens have been generated. */
static inline int smp_stop_strings_active(const smp_state_t *st) { return st->n_generated >= st->p.min_tokens; }

/* "stop" / "length" / NULL: the OpenAI finish_reason string. */
const char *smp_finish_name(smp_finish_t f);

/* Philox4x32-10: out = the block for counter ctr under key. Exposed for known-answer tests. */
void smp_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

/* The uniform in [0, 1) (53 bits) a request with this seed draws for generated token step. */
double smp_uniform(uint64_t seed, uint64_t step);

#ifdef __cplusplus
}
#endif
