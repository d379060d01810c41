/* engine: the API every front end uses (CLI, HTTP server, WebSocket): submit a request, cancel it, and
 * receive its tokens through a callback.
 *
 * One engine thread owns the model and its backend; nothing else touches them. Requests enter a bounded
 * queue from any thread (eng_submit) and leave it in order. The scheduler batches continuously: every step
 * carries one row for each decoding sequence plus prefill chunks, over the paged KV cache with prefix
 * reuse and preemption (engine.c says how); a request's results never depend on what it was batched with.
 *
 * A request carries its prompt already expanded (each audio's placeholder span holds N_k × <|AUDIO|>, see
 * prompt.h) and the 16 kHz samples of its audios, whose ownership passes to the engine. The engine
 * computes the log-mel features of each window (long-audio policy), encodes them, prefills the prompt in
 * chunks, then decodes and samples until a finish condition.
 *
 * Callbacks run on the engine thread: they must not block for long and must not call back into the
 * engine except eng_cancel. Every accepted request gets exactly one final event (finish != ENG_FINISH_NONE),
 * after which its id is forgotten.
 *
 * Thread safety: eng_submit, eng_cancel and eng_get_stats may be called from any thread.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "audio_mel.h"
#include "es_error.h"
#include "qwen2audio.h"
#include "sampler.h"
#include "tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct eng eng_t;

typedef enum {
  ENG_FINISH_NONE = 0,  /* not the last event */
  ENG_FINISH_STOP,      /* eos, a stop id or a stop string */
  ENG_FINISH_LENGTH,    /* max_tokens reached */
  ENG_FINISH_CANCELLED, /* eng_cancel or engine shutdown */
  ENG_FINISH_ERROR,     /* the request failed; error names why */
} eng_finish_t;

const char *eng_finish_name(eng_finish_t f); /* "stop", "length", "cancelled", "error" */

typedef struct {
  int prompt_tokens;      /* prompt ids, audio placeholders included */
  int audio_tokens;       /* placeholders among them */
  int completion_tokens;  /* generated ids (a finishing eos or stop id counts) */
  uint64_t seed;          /* the sampling seed used (drawn when the request had none) */
  double queue_s;         /* submit -> the engine took the request */
  double first_token_s;   /* submit (samples in memory) -> first token id on the host, mel included */
  double total_s;         /* submit -> final event */
  double decode_tokens_per_s; /* (completion_tokens - 1) / (final - first token); 0 if < 2 tokens */
} eng_usage_t;

#define ENG_MAX_TOP_LOGPROBS 20

/* Log-probabilities of one generated token (OpenAI logprobs / top_logprobs): the log-softmax of the logits
 * the sampler processed — repetition/presence/frequency penalties and min_tokens masks applied, before
 * temperature, top-k, top-p and min-p. (vLLM's default reports the raw logits' log-softmax; the two agree
 * when no penalty and no min_tokens mask is active, e.g. greedy with repetition_penalty 1.) */
typedef struct {
  float logprob;                         /* of the generated id */
  int n_top;                             /* the request's top_logprobs (fewer when fewer ids are finite) */
  int32_t top_ids[ENG_MAX_TOP_LOGPROBS]; /* most likely first; ties: lower id first */
  float top_logprobs[ENG_MAX_TOP_LOGPROBS];
} eng_logprobs_t;

typedef struct {
  uint64_t id;
  int32_t token;          /* the generated id, or -1 on a final event that carries no token */
  const eng_logprobs_t *logprobs; /* with a token, when the request asked for logprobs; else NULL */
  const char *text;       /* released text (stop strings held back and cut; eos/stop ids emit none) */
  size_t text_len;
  eng_finish_t finish;
  int stop_index;         /* the stop string (>= 0) or stop id (-2) that finished it, else -1 */
  const char *error;      /* ENG_FINISH_ERROR: the message */
  eng_usage_t usage;      /* complete on the final event; prompt/audio counts on every event */
} eng_event_t;

typedef void (*eng_callback_t)(void *ctx, const eng_event_t *ev);

typedef struct {
  float *samples;   /* 16 kHz mono; ownership passes to the engine at a successful eng_submit (free()) */
  size_t n_samples; /* >= 1 */
} eng_audio_t;

#define ENG_MAX_AUDIOS 32
#define ENG_MAX_STOPS 16

typedef struct {
  const int32_t *prompt_ids; /* expanded prompt (copied at submit) */
  size_t n_prompt;
  eng_audio_t audios[ENG_MAX_AUDIOS]; /* in placeholder-span order */
  size_t n_audios;
  audio_long_policy_t long_audio;
  smp_params_t sampling;
  const char *stop[ENG_MAX_STOPS]; /* stop strings (copied) */
  int n_stop;
  int skip_special;          /* 1: special tokens produce no text (the default for chat) */
  int logprobs;              /* 1: token events carry eng_logprobs_t */
  int top_logprobs;          /* 0..ENG_MAX_TOP_LOGPROBS alternatives per token (needs logprobs) */
  eng_callback_t callback;
  void *callback_ctx;
} eng_request_t;

typedef struct {
  qa_model_t *model;   /* the engine thread becomes its only user */
  const tok_t *tok;    /* detokenizes the stream; NULL: events carry ids only */
  int max_queue;       /* waiting requests accepted before eng_submit refuses (ES_ETOOBIG) */
  int prefill_chunk;   /* rows per prefill step; 0 = the model's max_tokens */
  int mel_threads;     /* threads for log-mel features (>= 1) */
  int max_num_seqs;    /* sequences in one batched step (0 = the model's max_seqs) */
} eng_opts_t;

#define ENG_HIST_BUCKETS 8

typedef struct {
  int running, waiting;              /* sequences in the batch; requests queued (incl. preempted) */
  int max_num_seqs;
  uint64_t submitted, finished, cancelled, failed;
  uint64_t prompt_tokens, generated_tokens;
  int kv_blocks_total, kv_blocks_free; /* free includes blocks kept only for the prefix cache */
  uint64_t preemptions;              /* running sequences sent back to recompute */
  uint64_t prefix_queries, prefix_hits; /* full prompt blocks looked up / found in the prefix cache */
  uint64_t steps;                    /* batched steps run */
  uint64_t decode_batch_hist[ENG_HIST_BUCKETS]; /* decode rows per step: 1, 2, 3-4, 5-8, ..., 65+ */
  int max_decode_batch;
  /* steps whose every row was a decode row (no prefill chunk beside them): how many, the tokens they generated,
   * and their time from the model step to the ids on the host — the steady decode rate, tokens / seconds */
  uint64_t decode_only_steps, decode_only_tokens;
  double decode_only_s;
} eng_stats_t;

/* Starts the engine thread. The model must outlive the engine. */
int eng_start(const eng_opts_t *opts, eng_t **out, es_error_t *err);
/* Cancels everything queued or running (each gets its final event), then joins the thread. NULL: no-op. */
void eng_stop(eng_t *e);

/* Checks the request (clear errors for a malformed prompt, audio that yields no tokens, a placeholder count
 * that differs from the audios' tokens, a context longer than the model allows, bad sampling values) and
 * queues it. On success *id names it and the engine owns the sample buffers; on failure the caller still
 * owns them. ES_ETOOBIG when the queue is full. */
int eng_submit(eng_t *e, const eng_request_t *req, uint64_t *id, es_error_t *err);

/* Cancels a queued or running request; it gets a final ENG_FINISH_CANCELLED event at the next step.
 * Returns 1 if the id was known, 0 otherwise (already finished). */
int eng_cancel(eng_t *e, uint64_t id);

void eng_get_stats(eng_t *e, eng_stats_t *out);

/* Audio tokens an audio of n_samples yields under policy (Σ N over its windows); 0 when too short. */
int eng_audio_tokens(size_t n_samples, audio_long_policy_t policy);

#ifdef __cplusplus
}
#endif
