/* qwen2audio: the Qwen2-Audio forward pass, written once against kernels/backend.h.
 *
 * Owns the model's weights on a backend (bound from a checkpoint, or random with --dummy-weights) and its
 * activation buffers, sized at open for the largest step and the largest audio batch. Two entry points:
 *   qa_encode  log-mel windows -> audio embeddings (encoder + avg-pool + LayerNorm + projector), the first
 *              N rows of each window written to a caller-chosen range of the audio-embedding pool;
 *   qa_step    one batched decoder step (prefill chunks and decode tokens of several sequences), with
 *              placeholder rows taken from the audio-embedding pool, returning fp32 logits for chosen rows.
 * The KV cache lives in the backend; which blocks a sequence uses is the caller's business (kv_alloc.h).
 *
 * Thread safety: a qa_model_t is driven by one thread (the engine thread), like its backend.
 * ref: transformers modeling_qwen2_audio.py (Qwen2AudioEncoder, Qwen2AudioForConditionalGeneration) and
 *      modeling_qwen2.py; SPEC §3 (encoder, lengths, merge) and §4 (decoder).
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "checkpoint.h"
#include "config.h"
#include "es_error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QA_MEL_FRAMES 3000  /* frames of one 30 s window */
#define QA_MAX_WINDOW_TOKENS 750 /* audio tokens of a full window */

typedef struct {
  int max_tokens;       /* largest number of rows in one qa_step (prefill chunk + decode rows) */
  int max_seqs;         /* largest number of sequences in one qa_step */
  int max_logit_rows;   /* largest number of logit rows one qa_step returns */
  int max_audio_batch;  /* windows encoded together by one qa_encode */
  int audio_pool_rows;  /* rows of the audio-embedding pool (e.g. several requests' audio) */
  int kv_blocks;        /* blocks in the KV pool, including the scratch block 0 */
  int max_blocks_per_seq; /* block-table row length (max context / 16, rounded up) */
  uint64_t dummy_seed;  /* --dummy-weights: seed of the random weights */
  int decode_buckets;   /* 1: pad pure decode steps to power-of-two buckets even where the backend has no step
                           graphs (tests; with graphs they are always padded; EARSHOT_DECODE_BUCKETS=1 in
                           the environment sets it too). max_blocks_per_seq must then not exceed the
                           backend's max_blocks. */
  int quantization;     /* qa_quant_t: how the decoder's linear weights are stored on the backend */
} qa_model_opts_t;

#define QA_MAX_BUCKET 64 /* the largest padded decode bucket (and recorded graph) */

/* How qa_step ran its steps (graphs: backend.h "step graphs"). */
typedef struct {
  int64_t eager;        /* unpadded steps (prefill, mixed, or more sequences than the largest bucket) */
  int64_t padded_eager; /* padded decode steps run op by op (no graphs, or a bucket's warm-up step) */
  int64_t records;      /* graphs recorded */
  int64_t replays;      /* padded decode steps run as a graph replay */
  int64_t record_failures; /* recordings the backend refused (it then turns graphs off; the step ran op by op) */
} qa_graph_stats_t;

/* ---- fp8 weights ----
 * QA_QUANT_FP8 stores the q/k/v/o/gate/up/down weights of every decoder layer as FP8 e4m3 with per-output-
 * channel scales (es_backend_upload_weight_fp8), computed at load from the checkpoint's (or the dummy) bf16
 * values. Everything else keeps its dtype: the audio encoder and projector run once per audio and are
 * compute-bound (their weights are a small part of what a decode step reads), and the embeddings, the
 * lm_head and the norms are the accuracy-sensitive ends of the network (vLLM's fp8 also leaves lm_head and
 * embeddings unquantised). Decode streams the decoder linears once per step, so they are what halves. */
typedef enum { QA_QUANT_NONE = 0, QA_QUANT_FP8 = 1 } qa_quant_t;

/* Bytes of weights a decode step streams (every decoder linear, the lm_head) on a backend whose compute dtype
 * has act_size bytes, with the decoder linears stored per quantization (fp8: 1 byte + a 4-byte scale per row). */
double qa_decode_weight_bytes(const model_config_t *cfg, size_t act_size, int quantization);

typedef struct qa_model qa_model_t;

/* Binds the weights of ck (checked against cfg by ckpt_open) to the backend, or, with ck == NULL, creates
 * random weights from cfg (--dummy-weights: normal(0, 0.02) matrices, unit norms, small biases). Allocates
 * every activation buffer and the KV pool. cfg is copied. */
int qa_model_open(es_backend_t *be, const model_config_t *cfg, const ckpt_t *ck, const qa_model_opts_t *opts,
                  qa_model_t **out, es_error_t *err);
void qa_model_close(qa_model_t *m);

const model_config_t *qa_model_config(const qa_model_t *m);
es_backend_t *qa_model_backend(const qa_model_t *m);
const qa_model_opts_t *qa_model_opts(const qa_model_t *m);
void qa_model_graph_stats(const qa_model_t *m, qa_graph_stats_t *out);
/* After the backend dropped its recorded graphs because a kernel choice changed (cuda_backend_set_gemv): each
 * bucket's next step runs op by op again first (creating what the recording needs), then records. */
void qa_model_forget_graphs(qa_model_t *m);
/* Decoder layers whose q|k|v and gate|up projections run as one stacked linear each (qwen2audio.c, "fused
 * projections"): all of them on backends that copy weights, none on the CPU unless EARSHOT_FUSE_PROJECTIONS=1. */
int qa_model_fused_layers(const qa_model_t *m);

/* Audio lengths (SPEC §3.1) for a window of F valid frames: T1 = ceil(F/2) positions after conv2, and
 * N = floor(T1/2) audio tokens. */
int qa_audio_tokens_for_frames(int frames);

/* Encodes B windows: mel is host float32 [B][128][3000] (each window's full padded features), frames[b] its
 * valid-frame count F (1..3000). The first N_b rows of window b's projected embeddings are written to the
 * audio-embedding pool at rows dst_row[b] .. dst_row[b] + N_b - 1 (windows of several requests may be
 * encoded together, each to its own rows). B <= max_audio_batch; the rows must lie in the pool.
 * *rows_written = Σ N_b. */
int qa_encode(qa_model_t *m, const float *mel, const int *frames, int B, const int *dst_row, int *rows_written,
              es_error_t *err);

/* Reads rows [row, row + n) of the audio-embedding pool to host memory (fp32 [n, hidden]); for tests. */
int qa_read_audio_rows(qa_model_t *m, int row, int n, float *out, es_error_t *err);

/* One decoder step over batch (see es_batch_t). ids: host int32 [n_tokens] input ids; audio_row: host int32
 * [n_tokens], the audio-pool row that replaces row i's embedding, or -1 for a normal token (a prompt's
 * placeholder rows carry one; a placeholder id without one — a generated <|AUDIO|> — is embedded like any token,
 * as transformers does at decode). logit_rows: host int32 [n_logits] step rows whose logits are wanted (usually the
 * last row of each sequence); logits: host float32 [n_logits, vocab]. */
int qa_step(qa_model_t *m, const es_batch_t *batch, const int32_t *ids, const int32_t *audio_row,
            const int32_t *logit_rows, int n_logits, float *logits, es_error_t *err);

/* qa_step leaving the logits on the device: *logits_dev = the model's fp32 device buffer [n_logits, vocab]
 * (rows in logit_rows order), valid until the next step; the engine samples it there (es_op_sample), which may
 * process it in place. Nothing is synchronised or read back. */
int qa_step_device(qa_model_t *m, const es_batch_t *batch, const int32_t *ids, const int32_t *audio_row,
                   const int32_t *logit_rows, int n_logits, float **logits_dev, es_error_t *err);

#ifdef __cplusplus
}
#endif
