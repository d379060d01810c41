/* backend.h: the one interface the model calls. Every backend (kernels/cpu/, kernels/cuda/) implements it.
 *
 * What a backend is: a device (the host CPU or one GPU) with its own memory, on which the Qwen2-Audio
 * forward pass runs as a fixed sequence of the ops below. The model (model/) owns the sequence; the
 * backend owns the memory and the arithmetic. Nothing here knows about files, tokens or HTTP.
 *
 * Threading: a backend is driven by one thread at a time (the engine thread). Internally a backend may use
 * worker threads (the CPU backend does) or streams (CUDA); every op call returns when its result may be
 * read by the next op call on the same backend. es_backend_sync() waits for everything queued.
 *
 * Memory (STYLE.md, "Allocate up front"):
 *   - weights: uploaded once at load into the weight arena (es_backend_upload_weight). The CPU backend keeps
 *     a weight in its stored dtype (bf16/fp16/fp32) and may alias the caller's memory (the checkpoint mmap)
 *     instead of copying; the CUDA backend converts to its compute dtype on upload.
 *   - activations and scratch: reserved at start-up with es_backend_alloc, sized for the largest batch.
 *     Allocation is refused (ES_EINTERNAL) between es_backend_begin_step and es_backend_end_step.
 *   - KV cache: one pool of blocks (es_backend_kv_init), layout fixed below for every backend.
 *
 * Dtypes: activations and the KV cache use the backend's compute dtype (es_backend_act_dtype): fp32 on the
 * CPU; bf16 (default) or fp32 (--dtype float32) on CUDA. All accumulation is fp32.
 *
 * Matrix conventions: row-major. A linear layer's weight is stored as in PyTorch, W[N, K] (out, in), and
 * computes Y[M, N] = X[M, K] · Wᵀ + b. M is the number of rows (tokens) and may be anything from 1 up to
 * the batch capacity; no op's result for a row may depend on M or on the other rows (batch invariance:
 * one row computed alone equals, bit for bit, the same row in any batch).
 *
 * Pointers passed to ops are device pointers of this backend (from es_backend_alloc / weights / KV), except
 * where a parameter says host.
 *
 * Errors: every call returns 0 or a negative ES_E* code and fills the caller's es_error_t. A failed op
 * leaves its outputs undefined; on CUDA it also marks the backend unhealthy (es_backend_healthy).
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "es_error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  ES_DT_F32 = 0,
  ES_DT_BF16 = 1, /* crosses the C boundary as uint16_t */
  ES_DT_F16 = 2,  /* IEEE half, as uint16_t */
  ES_DT_FP8E4M3 = 3, /* weights only (es_backend_upload_weight_fp8): e4m3fn codes, as uint8_t (fp8_math.h) */
} es_dtype_t;

size_t es_dtype_size(es_dtype_t dt);
const char *es_dtype_name(es_dtype_t dt);

/* ------------------------------------------------------------------------------------------------------
 * The paged KV cache, fixed for every backend.
 *
 * Tokens are stored in blocks of ES_KV_BLOCK = 16 positions. The pool holds n_blocks blocks for each of
 * the L decoder layers; a block id names the same slot in every layer. Layout of the pool:
 *
 *     kv[L][n_blocks][2][H][ES_KV_BLOCK][D]       (2 = K then V; dtype = the backend's compute dtype)
 *
 * so that one (layer, block, K|V, head) is a contiguous [16][D] tile: a warp reading one head of one block
 * reads 16·D contiguous elements (4 KiB at D = 128 in bf16). Block 0 is reserved as the scratch block that
 * padded batch slots write to; allocators hand out ids 1..n_blocks-1.
 *
 * The fp8 KV cache (es_backend_opts_t.kv_fp8): the same layout holds one-byte FP8 e4m3 codes, and a second
 * pool of the same shape without D holds one fp32 scale per (token, head), for K and for V:
 *
 *     scale[L][n_blocks][2][H][ES_KV_BLOCK]
 *
 * A stored row (one token's K or V of one head, as the compute dtype holds it after RoPE) x[0..D) becomes
 * scale = amax|x| / 448, code[d] = e4m3(x[d] / scale) (fp8_math.h, es_fp8_quantize_row) and is read back as
 * decode(code[d]) · scale. Per token and head, so nothing is calibrated and an outlier token or head keeps its
 * own range; 132 bytes per row at D = 128 instead of 256 in bf16 (0.52x of the memory a decode step streams).
 * Attention then sees the quantised keys and values everywhere (prefill of the prefix and of the new chunk
 * alike, decode), so a prefix-cache hit, a chunk boundary or a recomputation after preemption quantises alike
 * (bit-identical results where the backend is batch-invariant: the CPU, CUDA's deterministic mode; by default
 * CUDA's flash prefill rounds decode(code) · scale to bf16 where the decode kernel keeps fp32, as it rounds
 * probabilities a bf16 cache would not).
 * Change only with a measured reason, written here.
 * ------------------------------------------------------------------------------------------------------ */
#define ES_KV_BLOCK 16
#define ES_KV_FP8_MAX_D 512 /* the largest head dim of an fp8 KV cache */

/* ------------------------------------------------------------------------------------------------------
 * The batched, variable-length step.
 *
 * A step runs a flattened batch of sequences. Sequence s contributes q_len[s] = q_start[s+1] - q_start[s]
 * new tokens (a prefill chunk, or 1 for decode); they are rows q_start[s] .. q_start[s+1]-1 of every
 * activation matrix. Its context after the step is ctx_len[s] tokens: the new tokens occupy positions
 * ctx_len[s] - q_len[s] .. ctx_len[s] - 1, and everything before them is already in the KV cache. So a
 * full prefill has ctx_len = q_len, chunked prefill over a cached prefix has ctx_len > q_len, and decode
 * has q_len = 1.
 *
 * Token i's K and V are written to cache slot slot[i] = block * ES_KV_BLOCK + offset, where block is the
 * sequence's block_table entry for position / ES_KV_BLOCK. Rows of the decoder attention of a sequence
 * attend to cache positions 0 .. (own position), causally.
 *
 * All arrays here are HOST arrays; es_backend_set_batch copies them to the device once per step (the CUDA
 * backend keeps them in fixed device buffers, so a captured graph reads the new values on replay).
 * ------------------------------------------------------------------------------------------------------ */
typedef struct {
  int32_t n_seqs;             /* sequences in the step, >= 1 */
  int32_t n_tokens;           /* rows in the step = q_start[n_seqs] */
  const int32_t *q_start;     /* [n_seqs + 1] prefix sums of q_len, q_start[0] = 0 */
  const int32_t *ctx_len;     /* [n_seqs] context length including this step's tokens */
  const int32_t *positions;   /* [n_tokens] RoPE position of each row */
  const int32_t *slot;        /* [n_tokens] KV cache slot of each row */
  const int32_t *block_table; /* [n_seqs][max_blocks] block ids; entries past a sequence's length unused */
  int32_t max_blocks;         /* row stride of block_table */
  int32_t n_pad;              /* the last n_pad sequences are padding (a recorded graph's fixed batch size):
                                 one token each, position 0, ctx_len 1, slot 0 and block-table row all 0 (the
                                 scratch block); their outputs are garbage and never read */
} es_batch_t;

/* Options a backend is created with. */
typedef struct {
  es_dtype_t compute_dtype; /* CPU: ES_DT_F32 only. CUDA: ES_DT_BF16 or ES_DT_F32 */
  int n_threads;            /* CPU: worker threads (0 = number of online cores) */
  int device;               /* CUDA: device index */
  size_t max_tokens;        /* largest n_tokens of any step */
  size_t max_seqs;          /* largest n_seqs of any step */
  size_t max_blocks;        /* largest max_blocks of any step */
  /* ---- deterministic mode (issue 9) ---- */
  int deterministic; /* 1: every op's reduction order is independent of the batch (size and composition), so a
                        row is bit-identical alone or in any batch. The CPU backend always is; CUDA then fixes
                        one GEMM algorithm per weight shape (no split-K) and a fixed decode split size
                        (docs/ARCHITECTURE.md, "Deterministic mode"). 0: CUDA picks per batch, faster. */
  /* ---- fp8 KV cache ---- */
  int kv_fp8; /* 1: the KV cache holds FP8 e4m3 codes and per-(token, head) scales (the paged KV cache, above);
                 CUDA: every attention path reads it (the fast kernels in bf16 at head dim 64/128, the simple kernel
                 otherwise); the wgmma flash kernel is not used with it. 0: the compute dtype */
} es_backend_opts_t;

typedef struct es_backend es_backend_t;

/* A weight on the backend: a vector [n0] or a matrix [n0, n1] (PyTorch layout). */
typedef struct {
  const void *data; /* device pointer */
  es_dtype_t dtype;
  int64_t n0, n1; /* n1 = 1 for vectors */
  const float *scale; /* ES_DT_FP8E4M3: device fp32 [n0], row n's values are decode(code) · scale[n]; else NULL */
} es_weight_t;

/* Activation function applied in an epilogue. */
typedef enum {
  ES_ACT_NONE = 0,
  ES_ACT_GELU = 1, /* exact erf GELU: x * 0.5 * (1 + erf(x / sqrt(2))), as torch's nn.functional.gelu */
} es_act_t;

/* ---- life cycle ---------------------------------------------------------------------------------------- */

/* Creates the CPU backend (always available). */
int es_backend_create_cpu(const es_backend_opts_t *opts, es_backend_t **out, es_error_t *err);
/* Creates the CUDA backend; ES_EUNSUPPORTED when built without CUDA or the device is unusable. */
int es_backend_create_cuda(const es_backend_opts_t *opts, es_backend_t **out, es_error_t *err);
void es_backend_free(es_backend_t *be);

const char *es_backend_name(const es_backend_t *be); /* "cpu", "cuda:0 (NVIDIA H100 ...)" */
es_dtype_t es_backend_act_dtype(const es_backend_t *be);
int es_backend_healthy(const es_backend_t *be); /* 0 after a device fault: the engine stops using it */
/* 1 when uploaded weights may alias the caller's host memory (which must then outlive the backend), as the
 * CPU backend's do; 0 when the backend copies them (CUDA). */
int es_backend_aliases_host(const es_backend_t *be);

/* ---- memory -------------------------------------------------------------------------------------------- */

/* Reserves bytes of device memory for activations or scratch (256-byte aligned), zero-filled.
 * Start-up only: refused inside a step. Freed with the backend. */
int es_backend_alloc(es_backend_t *be, size_t bytes, void **out, es_error_t *err);

/* Uploads a weight from host memory: count = n0 * n1 elements of src_dtype. The CPU backend aliases host
 * memory (which must outlive the backend) when it keeps the dtype; CUDA converts to its compute dtype. */
int es_backend_upload_weight(es_backend_t *be, const void *host, es_dtype_t src_dtype, int64_t n0, int64_t n1,
                             es_weight_t *out, es_error_t *err);

/* ---- fp8 weights ----
 * Uploads a linear layer's weight [n0 = N out, n1 = K in] (host, src_dtype bf16/fp16/fp32) quantised to FP8
 * e4m3 with one fp32 scale per output row (kernels/fp8_math.h: scale[n] = amax|W[n, :]| / 448, codes rounded
 * to nearest even and saturated). The result is owned by the backend (the host memory may be freed after the
 * call) and only es_op_linear accepts it; the quantisation runs on the host, over several threads.
 * ES_EINVAL for a row holding a NaN or an infinity. */
int es_backend_upload_weight_fp8(es_backend_t *be, const void *host, es_dtype_t src_dtype, int64_t n0, int64_t n1,
                                 es_weight_t *out, es_error_t *err);

/* Raw byte copies between host memory and device memory of this backend. */
int es_backend_write(es_backend_t *be, void *dst, const void *host_src, size_t bytes, es_error_t *err);
int es_backend_read(es_backend_t *be, void *host_dst, const void *src, size_t bytes, es_error_t *err);

/* Activation copies: count fp32 values on the host <-> count values of the compute dtype on the device
 * (converted with round-to-nearest-even when the compute dtype is narrower). */
int es_backend_write_act(es_backend_t *be, void *dst, const float *host_src, size_t count, es_error_t *err);
int es_backend_read_act(es_backend_t *be, float *host_dst, const void *src, size_t count, es_error_t *err);

int es_backend_sync(es_backend_t *be, es_error_t *err);

/* ---- KV cache ------------------------------------------------------------------------------------------ */

/* Allocates the pool: kv[n_layers][n_blocks][2][n_heads][ES_KV_BLOCK][head_dim] in the compute dtype (fp8: codes
 * and the scale pool, head_dim <= ES_KV_FP8_MAX_D). */
int es_backend_kv_init(es_backend_t *be, int n_layers, int n_blocks, int n_heads, int head_dim, es_error_t *err);
/* Bytes one block takes across all layers (for sizing the pool from a memory budget). */
size_t es_backend_kv_block_bytes(const es_backend_t *be, int n_layers, int n_heads, int head_dim);

/* ---- steps --------------------------------------------------------------------------------------------- */

/* Validates and uploads the step's batch description (see es_batch_t); begins the step. */
int es_backend_begin_step(es_backend_t *be, const es_batch_t *batch, es_error_t *err);
int es_backend_end_step(es_backend_t *be, es_error_t *err);

/* ---- ops ----------------------------------------------------------------------------------------------
 * Shapes use: M rows, K in-features, N out-features, C channels, T time, H heads, D head dim.
 * Unless a parameter says otherwise, activations are contiguous row-major in the compute dtype.
 * ------------------------------------------------------------------------------------------------------ */

/* y[M, N] = act(x[M, K] · w[N, K]ᵀ + bias[N]) (+ y[M, N] when accumulate).
 * bias may be NULL. accumulate adds the result to y (the residual stream), after act. ldx/ldy are the row
 * strides of x and y in elements (>= K and >= N), so a linear can read or write a column slice. */
int es_op_linear(es_backend_t *be, void *y, int64_t ldy, const void *x, int64_t ldx, const es_weight_t *w,
                 const es_weight_t *bias, int64_t M, es_act_t act, int accumulate, es_error_t *err);

/* Conv1d over time with zero padding, then bias and act:
 *   y[b, t, co] = act(bias[co] + Σ_ci Σ_j w[co, ci, j] · x[b, t·stride + j - pad, ci])
 * x: [B, T_in, C_in], y: [B, T_out, C_out] with T_out = (T_in + 2·pad - kernel) / stride + 1,
 * w: [C_out, C_in·kernel] as stored by PyTorch ([C_out, C_in, kernel] flattened). */
int es_op_conv1d(es_backend_t *be, void *y, const void *x, const es_weight_t *w, const es_weight_t *bias, int64_t B,
                 int64_t T_in, int64_t C_in, int kernel, int stride, int pad, es_act_t act, es_error_t *err);

/* y[M, C] = (x - mean) / sqrt(var + eps) · gamma + beta over each row (biased variance). y may alias x. */
int es_op_layer_norm(es_backend_t *be, void *y, const void *x, const es_weight_t *gamma, const es_weight_t *beta,
                     int64_t M, int64_t C, float eps, es_error_t *err);

/* Qwen2 RMSNorm fused with the residual add:
 *   if add != NULL: residual[M, C] += add[M, C]
 *   y[M, C] = weight · round(residual · rsqrt(mean(residual²) + eps))
 * where round() is the rounding to the compute dtype that transformers applies before the weight multiply
 * (SPEC §4: two roundings in bf16; a no-op in fp32). */
int es_op_rms_norm(es_backend_t *be, void *y, void *residual, const void *add, const es_weight_t *weight, int64_t M,
                   int64_t C, float eps, es_error_t *err);

/* A linear followed by the RMSNorm that adds its output to the residual, in one call:
 *   o[M, N] = x[M, K] · w[N, K]ᵀ (no bias);  then es_op_rms_norm(y, residual, o, norm_weight, M, N, eps)
 * with the same bits as those two calls. o is written either way; it must not overlap x, y or the residual.
 * CUDA at one row runs both in one kernel (the linear's last block to finish normalises the row it completes). */
int es_op_linear_rms_norm(es_backend_t *be, void *y, void *residual, void *o, const void *x, int64_t ldx,
                          const es_weight_t *w, const es_weight_t *norm_weight, int64_t M, float eps, es_error_t *err);

/* The q|k|v linear followed by RoPE and the KV store, in one call: qkv[T, ldqkv] = x[T, K] · w[3·H·D, K]ᵀ + bias (w
 * stacks the q, k and v projections; bias may be NULL), T = the step's tokens, then es_op_rope_kv_store(layer, q =
 * qkv, k = qkv + H·D, v = qkv + 2·H·D, each of row stride ldqkv, H, D, theta) — the same bits as those two calls.
 * CUDA at one token runs both in one kernel (each warp of the GEMV rotates one RoPE pair and stores k and v). */
int es_op_linear_rope_kv_store(es_backend_t *be, int layer, void *qkv, int64_t ldqkv, const void *x, int64_t ldx,
                               const es_weight_t *w, const es_weight_t *bias, int H, int D, float theta,
                               es_error_t *err);

/* x[M, C] += rows[T, C] broadcast over each of the B = M / T blocks of T rows (the encoder's stored
 * positional table added to every audio of a batch). */
int es_op_add_rows(es_backend_t *be, void *x, const void *rows, int64_t M, int64_t T, int64_t C, es_error_t *err);

/* Decoder attention input for the current step (es_backend_begin_step):
 * q[n_tokens, H, D], k[n_tokens, H, D] get RoPE (half-split, theta, positions from the batch; the q/k biases
 * are already in them from es_op_linear); then k and v are written to the KV cache of layer at each row's
 * slot. q is rotated in place. ldq/ldk/ldv are row strides in elements (a fused QKV output has 3·H·D). */
int es_op_rope_kv_store(es_backend_t *be, int layer, void *q, int64_t ldq, void *k, int64_t ldk, const void *v,
                        int64_t ldv, int H, int D, float theta, es_error_t *err);

/* Decoder attention over the paged cache for the current step: for each row i of sequence s at position p,
 *   out[i, h, :] = softmax_j(q[i, h, :] · K[s, j, h, :] · scale) · V[s, j, h, :],  j = 0 .. p
 * with K, V read through s's block table from layer's cache. out: [n_tokens, H, D] contiguous.
 * Covers prefill, chunked prefill over a cached prefix, and decode. */
int es_op_attention_paged(es_backend_t *be, int layer, void *out, const void *q, int64_t ldq, int H, int D,
                          float scale, es_error_t *err);

/* Encoder self-attention, bidirectional with key padding, on dense inputs:
 *   out[b, t, h, :] = softmax_{j < valid_len[b]}(q[b, t, h, :] · k[b, j, h, :] · scale) · v[b, j, h, :]
 * q, k, v: [B, T, H, D] with row strides ldq/ldk/ldv (elements per t); out: [B, T, H, D] contiguous.
 * valid_len: HOST array [B], 1 <= valid_len[b] <= T. Rows t >= valid_len[b] are computed too (transformers
 * computes them; they are never used). */
int es_op_attention_dense(es_backend_t *be, void *out, const void *q, int64_t ldq, const void *k, int64_t ldk,
                          const void *v, int64_t ldv, int64_t B, int64_t T, int H, int D, float scale,
                          const int32_t *valid_len, es_error_t *err);

/* y[M, N] = silu(gate[M, N]) · up[M, N]; gate and up have row stride ld (a fused gate|up output has 2N). */
int es_op_silu_mul(es_backend_t *be, void *y, const void *gate, const void *up, int64_t ld, int64_t M, int64_t N,
                   es_error_t *err);

/* The gated MLP's first half in one call: [g | u] = x[M, K] · w[2N, K]ᵀ (w: gate rows 0 .. N − 1, then up rows
 * N .. 2N − 1, as a fused gate|up weight; no bias), then y[M, N] (contiguous, as es_op_silu_mul writes it) =
 * silu(g) · u — the same bits as es_op_linear into gu followed by es_op_silu_mul(y, g, u, ldgu) (g and u rounded to
 * the compute dtype before the product). gu[M, 2N] (row stride ldgu >= 2N) is scratch the backend may leave
 * unwritten: where it can, it applies silu(g) · u in the linear's epilogue and never stores g or u (CUDA at one
 * row: one kernel instead of two); otherwise the two ops run (and are profiled) as themselves. y must not overlap x
 * or gu. */
int es_op_linear_silu_mul(es_backend_t *be, void *y, void *gu, int64_t ldgu, const void *x, int64_t ldx,
                          const es_weight_t *w, int64_t M, es_error_t *err);

/* AvgPool1d(kernel 2, stride 2) over time: y[b, t, c] = (x[b, 2t, c] + x[b, 2t+1, c]) / 2,
 * x: [B, T, C], y: [B, T/2, C] (T even). */
int es_op_avg_pool2(es_backend_t *be, void *y, const void *x, int64_t B, int64_t T, int64_t C, es_error_t *err);

/* y[i, :] = table[ids[i], :] for i < M. table: [V, C] weight; ids: device int32 [M], each in [0, V). */
int es_op_embed(es_backend_t *be, void *y, const es_weight_t *table, const int32_t *ids, int64_t M,
                es_error_t *err);

/* Row gather/scatter on activations with C columns: gather y[i] = x[idx[i]], scatter y[idx[i]] = x[i],
 * for i < M; idx: device int32 [M]. (Audio embeddings go to their placeholder rows by scatter; the last
 * row of each sequence goes to the logits by gather.) */
int es_op_gather_rows(es_backend_t *be, void *y, const void *x, const int32_t *idx, int64_t M, int64_t C,
                      es_error_t *err);
int es_op_scatter_rows(es_backend_t *be, void *y, const void *x, const int32_t *idx, int64_t M, int64_t C,
                       es_error_t *err);

/* logits[M, V] (an fp32 device buffer; es_backend_read brings it to the host) = x[M, C] · w[V, C]ᵀ.
 * Separate from es_op_linear because logits are always fp32, whatever the compute dtype. */
int es_op_logits(es_backend_t *be, float *logits, const void *x, const es_weight_t *w, int64_t M, es_error_t *err);

/* ---- step graphs (CUDA part 3) --------------------------------------------------------------------------
 * A backend that can (CUDA) records the ops of a step into a graph once and replays it on later steps, so a
 * decode step costs one launch instead of hundreds. The model records one graph per decode batch-size bucket
 * (1, 2, 4 ... 64 sequences, padded: see qwen2audio.c) under a small integer key.
 *
 * The contract that makes a replay correct: every op of a recorded step must be called at replay time with
 * the same host-side arguments (pointers, M, shapes) — the model pads the batch to the bucket so they are —
 * and everything that changes between steps (positions, slots, context lengths, block tables, token ids,
 * logit rows) lives in device buffers written BEFORE the replay (es_backend_begin_step's batch arrays,
 * es_backend_write). A backend reports support only when every op it would record reads its lengths on the
 * device and chooses its grids from the host arguments alone.
 *
 * Between es_backend_graph_begin and es_backend_graph_end nothing runs on the device; host transfers,
 * allocation and sync are refused. A failed op while recording must be followed by es_backend_graph_abort.
 * Recording and replay happen inside a step (between begin_step and end_step).
 * EARSHOT_CUDA_GRAPHS=0 in the environment turns graphs off (for bisecting and for measuring their gain).
 * ------------------------------------------------------------------------------------------------------ */
#define ES_GRAPH_MAX_KEYS 16

/* 1 when the backend records and replays graphs (CUDA, bf16 with the fast attention, not disabled). */
int es_backend_graphs_supported(const es_backend_t *be);
int es_backend_graph_begin(es_backend_t *be, es_error_t *err);
/* Ends the recording and keeps it as graph key (0 <= key < ES_GRAPH_MAX_KEYS), replacing an older one.
 * ES_EUNSUPPORTED: the device refused the recording; graphs are now off for this backend and the caller runs
 * the step op by op (nothing recorded has run). */
int es_backend_graph_end(es_backend_t *be, int key, es_error_t *err);
/* Ends a recording without keeping it (after a failed op); safe to call when not recording. */
void es_backend_graph_abort(es_backend_t *be);
int es_backend_graph_has(const es_backend_t *be, int key);
/* Replays graph key on the device, in order after everything queued before. */
int es_backend_graph_launch(es_backend_t *be, int key, es_error_t *err);

/* ---- sampling (issue 9) ----------------------------------------------------------------------------------
 * The sampler of model/sampler.h run by the backend on the device logits, so that only token ids cross to the
 * host. Same pipeline and semantics as smp_sample (penalties, min_tokens suppression, greedy with the first
 * index on ties, temperature, top-k with ties at the k-th kept, top-p with ties at the threshold ranked by
 * lower id first, min-p, one Philox uniform per (seed, step), inverse CDF over the kept ids in ascending id
 * order). The arithmetic is kernels/sample_math.h, shared by every backend; the mass sums are fixed point
 * (integer, exact), so every backend keeps the same ids and draws the same token, bit for bit; against the
 * host sampler's double sums they can differ only where a sum lands exactly on a boundary.
 *
 * State: n_slots slots, each the penalty state of one running request: gen_count[slot][V] int32 (times
 * generated) and seen[slot][V] uint8 (in the prompt or generated), plus a list of at most
 * ES_SAMPLE_MAX_SUPPRESS ids that get -inf while the row says suppress (min_tokens: eos unless ignore_eos, and
 * the stop ids). Allocated once by es_backend_sampler_init (start-up); es_backend_sampler_reset rewrites one
 * slot when a request (re)starts in it; es_op_sample counts the token it draws in the row's slot.
 *
 * A step: es_backend_sample_prepare(rows) copies the rows' parameters to fixed device buffers (host work,
 * outside any CUDA graph), then es_op_sample(logits, n, tokens) runs on the device only: its launch depends
 * only on n, it reads every parameter from those buffers, never synchronises and never allocates, so it can
 * be captured in a graph and replayed after the next prepare. Row r of the op uses rows[r] of the last prepare
 * and logits row r.
 *
 * Errors: a row whose logits (after the penalties and suppression) have no finite value, or hold +inf, gets
 * token -1 on every backend; the CPU backend also returns ES_EINVAL with a message naming the first such row
 * (the other rows are still sampled); the CUDA backend cannot report it without a host sync, so the caller
 * turns -1 into an error for that request.
 * ------------------------------------------------------------------------------------------------------ */
#define ES_SAMPLE_MAX_SUPPRESS 72 /* SMP_MAX_EOS_IDS + SMP_MAX_STOP_IDS */

typedef struct {
  float temperature;        /* < 1e-5 (SMP_GREEDY_EPS): greedy, the filters are ignored */
  float top_p;              /* (0, 1]; 1 disables */
  float min_p;              /* [0, 1]; 0 disables */
  float repetition_penalty; /* > 0; 1 disables */
  float presence_penalty;   /* finite; 0 disables */
  float frequency_penalty;  /* finite; 0 disables */
  int32_t top_k;            /* >= 1 keeps k ids; 0 or -1 disables (so does k >= V) */
  int32_t suppress;         /* 1: the ids in the slot's suppress list get -inf (min_tokens not reached) */
  uint64_t seed;            /* the request's effective seed (smp_state_t.seed) */
  int64_t step;             /* the Philox step: tokens generated so far */
  int32_t slot;             /* the request's slot, [0, n_slots); distinct within one prepare */
  int32_t want_processed;   /* 1: after the op, the row's removed ids (filters, zero weight; all but the
                             * argmax when greedy) hold -inf, so the finite entries are exactly the support */
} es_sample_row_t;

/* Allocates the sampling state for n_slots requests over a vocabulary of V ids (zeroed). Start-up only (not
 * inside a step). V <= 2^20. A later call (another engine over the same backend) keeps the existing state when
 * it has the same V and at least n_slots slots, and fails with ES_EINTERNAL otherwise. */
int es_backend_sampler_init(es_backend_t *be, int n_slots, int vocab, es_error_t *err);

/* A request (re)starts in slot: the slot's counts are cleared, then ids (the prompt, n_ids) are marked seen,
 * gen_ids (tokens generated before a preemption, n_gen) are marked seen and counted, and suppress_ids become
 * the slot's suppress list (n_suppress <= ES_SAMPLE_MAX_SUPPRESS). Host arrays; every id in [0, V). */
int es_backend_sampler_reset(es_backend_t *be, int slot, const int32_t *ids, int n_ids, const int32_t *gen_ids,
                             int n_gen, const int32_t *suppress_ids, int n_suppress, es_error_t *err);

/* Copies n rows of parameters (host array) to the device, for the next es_op_sample. 1 <= n <= n_slots; the
 * parameters are checked (ranges as smp_params_validate) and the slots must be distinct. */
int es_backend_sample_prepare(es_backend_t *be, const es_sample_row_t *rows, int n, es_error_t *err);

/* Device only: samples n rows of logits [n][V] (device fp32, processed in place: NaN becomes -inf, the
 * penalties and the suppression are applied, and with want_processed the removed ids become -inf) into
 * tokens (device int32 [n]), and counts each drawn token in its row's slot. n must equal the last prepare's. */
int es_op_sample(es_backend_t *be, float *logits, int n, int32_t *tokens, es_error_t *err);

/* ---- op profiles ------------------------------------------------------------------------------------------
 * Where a step's device time goes, op by op (`earshot bench model --profile`). Between es_backend_profile_start
 * and es_backend_profile_stop every es_op_* call and every graph replay is bracketed by two device timestamps
 * (CUDA events on the backend's stream; the host clock on the CPU, whose ops run synchronously) and recorded with
 * a shape label; stop waits for the device and sums the records by (op, shape). The marks add a little time of
 * their own, so profile op by op (graphs off) to see the ops, and time steps without a profile. While a graph is
 * recording nothing is marked (a recorded op is timed by the replays of its graph, as one "graph" record).
 * Not a hot path: start allocates, stop syncs. */
typedef struct {
  char op[24];    /* "linear", "attention_paged", "graph", ... */
  char shape[96]; /* the shape that matters for its cost, e.g. "M=1 N=12288 K=4096 bfloat16" */
  int calls;
  double ms;    /* summed device time between each call's two marks */
  double bytes; /* bytes the calls must move at least (each input read once, each output written once);
                 * 0 where not counted */
} es_profile_entry_t;

typedef struct {
  es_profile_entry_t *entries; /* n, by ms, largest first */
  int n;
  int records;    /* op calls timed */
  int dropped;    /* op calls past max_records, not timed */
  double ops_ms;  /* sum of every record's time */
  double span_ms; /* first mark to last: ops_ms plus the gaps between ops (launch, host work) */
} es_profile_t;

/* Starts timing ops, at most max_records calls (1 .. 2^20). Not inside a recording; not twice. */
int es_backend_profile_start(es_backend_t *be, int max_records, es_error_t *err);
/* Waits for the device, fills *out (free with es_profile_free) and stops. */
int es_backend_profile_stop(es_backend_t *be, es_profile_t *out, es_error_t *err);
void es_profile_free(es_profile_t *p);

#ifdef __cplusplus
}
#endif
