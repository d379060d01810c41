/* attn_fast: the fast attention kernels of the CUDA backend (issue 8) behind C entry points — the
 * flash-attention prefill/encoder kernel (attn_flash.cu) and the split-KV decode kernel with its combine step
 * (attn_decode.cu). cuda_attention.cu decides, call by call, whether they run or the simple reference kernel
 * does (EARSHOT_ATTENTION=simple|fast, cuda_backend_set_attention_path).
 *
 * Scope: compute dtype bf16 only (--dtype float32 keeps the simple kernel), head dims 64 and 128 (Whisper
 * encoder 64, Qwen2-7B decoder 128), a positive scale, and 16-byte-aligned rows (q/k/v/out pointers 16-byte
 * aligned, row strides multiples of 8 elements); anything else runs the simple kernel.
 *
 * Thread safety: the driving thread (backend.h). The launchers enqueue on cb->stream and never allocate: the
 * split-KV scratch is cb->attn_part, allocated with the KV pool (attn_fast_part_bytes).
 */
#pragma once

#include "cuda_backend.h"

/* 1: attn_decode reads its split plan from device memory (so a recorded step graph stays valid when the
 * contexts grow) and sizes its grid for the longest context while recording. */
#define ATTN_DECODE_GRAPH_SAFE 1

#ifdef __cplusplus
extern "C" {
#endif

/* Raises the flash kernels' dynamic shared-memory limits (called once at create); ES_EUNSUPPORTED when the
 * device cannot give a block what the D = 128 kernel needs. */
int attn_fast_init(cuda_backend_t *cb, es_error_t *err);

/* Bytes of split-KV partial results to allocate beside the KV pool of H heads × D dims (0: no fast path for D). */
size_t attn_fast_part_bytes(const es_backend_opts_t *o, int H, int D);

/* 1 when the fast kernels take this call (see Scope above). */
int attn_fast_paged_ok(const cuda_backend_t *cb, const void *out, const void *q, int64_t ldq, int H, int D,
                       float scale);
int attn_fast_dense_ok(const cuda_backend_t *cb, const void *out, const void *q, int64_t ldq, const void *k,
                       int64_t ldk, const void *v, int64_t ldv, int64_t B, int H, int D, float scale);

/* es_op_attention_paged on the fast kernels: sequences with at most ATTN_DECODE_MAX_Q new tokens go to the
 * split-KV decode kernel, the others to the flash prefill kernel. */
int attn_fast_paged(cuda_backend_t *cb, int layer, void *out, const void *q, int64_t ldq, int H, int D, float scale,
                    es_error_t *err);

/* es_op_attention_dense on the flash kernel (valid_len: host array [B]). */
int attn_flash_dense(cuda_backend_t *cb, void *out, const void *q, int64_t ldq, const void *k, int64_t ldk,
                     const void *v, int64_t ldv, int64_t B, int64_t T, int H, int D, float scale,
                     const int32_t *valid_len, es_error_t *err);

/* The flash prefill kernel over the step's sequences with more than min_q new tokens; max_q_tiles = the most
 * query tiles of any of them (from attn_flash_q_tile). */
int attn_flash_prefill(cuda_backend_t *cb, int layer, void *out, const void *q, int64_t ldq, int H, int D, float scale,
                       int min_q, int max_q_tiles, es_error_t *err);
/* Query rows per block of the flash kernel cb->flash selects at head dim D. */
int attn_flash_q_tile(const cuda_backend_t *cb, int D);

/* ---- the wgmma flash kernels (attn_wgmma.cu, sm_90a): the same calls as attn_flash_dense / _prefill ---- */

/* Sets cb->wgmma_ok: 1 on a 9.0 device whose binary carries the sm_90a image and that gives the kernels their
 * shared memory, else 0 (then EARSHOT_FLASH=wgmma fails at create, auto and mma take the mma kernel). Never
 * fails. */
int attn_wgmma_init(cuda_backend_t *cb, es_error_t *err);
/* Query rows per block at head dim D. */
int attn_wgmma_q_tile(int D);
/* sl = scale · log2(e). */
int attn_wgmma_prefill(cuda_backend_t *cb, int layer, void *out, const void *q, int64_t ldq, int H, int D, float sl,
                       int min_q, int max_q_tiles, es_error_t *err);
int attn_wgmma_dense(cuda_backend_t *cb, void *out, const void *q, int64_t ldq, const void *k, int64_t ldk,
                     const void *v, int64_t ldv, int64_t B, int64_t T, int H, int D, float sl, const int32_t *valid_len,
                     es_error_t *err);

/* The split-KV decode kernel over the step's sequences with at most ATTN_DECODE_MAX_Q new tokens (cb->dec_rows
 * of them), then the combine kernel, under the plan cuda_plan_decode made with the step's batch. */
int attn_decode(cuda_backend_t *cb, int layer, void *out, const void *q, int64_t ldq, int H, int D, float scale,
                es_error_t *err);

/* Splits the decode scratch holds for a step of n_seqs sequences (0 or 1: no split). */
int attn_decode_split_cap(const cuda_backend_t *cb, int n_seqs, int H, int D);

/* ---- deterministic mode (issue 9) ---- */

/* Keys per split of the deterministic decode attention for a backend with these options and an H × D pool:
 * attn_det_chunk over the longest context (max_blocks · ES_KV_BLOCK) with the scratch's room for one row. */
int attn_fast_det_chunk(const es_backend_opts_t *o, int H, int D);

/* es_op_attention_paged in deterministic mode: every row of the step through the split-KV kernels in row mode,
 * cb->attn_det_chunk keys per split (attn_decode.cu). */
int attn_decode_det(cuda_backend_t *cb, int layer, void *out, const void *q, int64_t ldq, int H, int D, float scale,
                    es_error_t *err);

#ifdef __cplusplus
}
#endif
