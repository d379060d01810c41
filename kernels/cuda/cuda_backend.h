/* cuda_backend: the CUDA backend's state — device, streams, cuBLASLt handle, every device allocation, the
 * staging buffers of the weight upload, the step's batch on the device — shared by the kernels/cuda .cu
 * files. Internal: included only from .cu files (the model sees backend.h; tests see cuda_hooks.h).
 *
 * Ownership: everything here is created by es_backend_create_cuda and released by its destroy. Device memory
 * comes from cudaMalloc at start-up only (es_backend_alloc, weight upload, kv_init, create): ops never
 * allocate, so a step is free of allocations (part 3 captures steps as graphs).
 *
 * Streams: all ops run in order on `stream`; the weight upload copies on copy[0..1] and makes `stream` wait
 * for them. Host-visible results (es_backend_read, read_act, sync) synchronise `stream`.
 *
 * Thread safety: as backend.h, one driving thread at a time; every entry point first makes the backend's
 * device current on the calling thread (the engine thread is not the thread that created the backend).
 */
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "backend_impl.h"
#include "cuda_hooks.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CUDA_GEMM_CACHE 256           /* cached cuBLASLt plans (exact problem shapes) */
#define CUDA_LT_WORKSPACE (32u << 20) /* cuBLASLt workspace: llm.c notes "only Hopper needs 32 MiB" */
#define CUDA_STAGE_BYTES (32u << 20)  /* each of the two pinned/device staging buffers */
#define CUDA_IM2COL_BYTES (64u << 20) /* conv1d im2col scratch; convs run in row chunks that fit */

/* One cached GEMM problem: the cuBLASLt descriptors and the algorithm the heuristic picked for it, or
 * have_algo = 0 when the heuristic found none (the plain kernel runs instead). */
typedef struct {
  int used;
  /* key */
  int64_t M, N, K, ldx, ldy;
  int in_dt, out_dt, has_bias, beta;
  int align; /* the smallest power-of-two alignment (<= 256 bytes) of x, w, y and bias */
  /* value */
  cublasLtMatmulDesc_t op;
  cublasLtMatrixLayout_t lw, lx, ly;
  cublasLtMatmulAlgo_t algo;
  int have_algo;
  int det_idx; /* deterministic mode: index of the shape's entry in det_shapes, -1 when it has none */
} cuda_gemm_plan_t;

/* ---- deterministic mode (issue 9) ---- */
#define CUDA_DET_SHAPES 128 /* GEMM shapes (M excluded) whose one algorithm is fixed; more run the plain kernel */
#define CUDA_DET_REP_M 256  /* the M the heuristic chooses a shape's one algorithm for */

/* Deterministic mode: the one cuBLASLt algorithm of a GEMM shape, used for every M (cuda_gemm.cu), or
 * have_algo = 0: the plain kernel runs that shape at every M. */
typedef struct {
  int64_t N, K, ldx, ldy;
  int in_dt, out_dt, has_bias, beta, align;
  cublasLtMatmulAlgo_t algo;
  int have_algo;
} cuda_gemm_det_t;

typedef struct {
  es_backend_t base; /* first: the es_backend_t * handed out is this struct */
  int device;
  int cc_major, cc_minor, sm_count;
  size_t smem_optin; /* largest dynamic shared memory a block may opt in to */
  cudaStream_t stream;
  cudaStream_t copy[2];
  cudaEvent_t copy_done[2]; /* the last use of stage_host[i] / stage_dev[i] finished */
  cudaEvent_t batch_done;   /* the last batch upload from batch_host finished */

  /* every cudaMalloc'ed block (es_backend_alloc, weights, KV, internal buffers), freed at destroy */
  void **allocs;
  size_t n_allocs, cap_allocs;
  size_t weight_bytes; /* device bytes held by weights */

  void *stage_host[2]; /* pinned, CUDA_STAGE_BYTES each */
  void *stage_dev[2];  /* device, CUDA_STAGE_BYTES each: raw bytes before conversion */
  void *im2col;        /* device, CUDA_IM2COL_BYTES */

  cublasLtHandle_t lt;
  void *lt_ws; /* CUDA_LT_WORKSPACE bytes */
  cuda_gemm_plan_t plans[CUDA_GEMM_CACHE];
  int next_evict;
  cuda_gemm_path_t gemm_path;

  void *kv;        /* (L, n_blocks, 2, H, 16, D) in the compute dtype, or e4m3 codes with an fp8 KV cache */
  float *kv_scale; /* fp8 KV cache: (L, n_blocks, 2, H, 16) row scales, in the same allocation after the codes */

  /* the step's batch on the device (fixed buffers, sized from opts), and its pinned host staging */
  int32_t *d_q_start;     /* [max_seqs + 1] */
  int32_t *d_ctx_len;     /* [max_seqs] */
  int32_t *d_positions;   /* [max_tokens] */
  int32_t *d_slot;        /* [max_tokens] */
  int32_t *d_block_table; /* [max_seqs * max_blocks] */
  int32_t *batch_host;    /* pinned, the same arrays back to back, then the decode chunk */
  int32_t *d_dec_chunk;   /* [1] keys per split of the step's decode attention, planned by cuda_set_batch */
  int dec_chunk;          /* its host copy */
  int dec_splits;         /* the plan's splits of the longest decode context (the grid outside a recording) */
  int64_t dec_rows;       /* the step's rows that take the decode kernel (sequences with <= 4 new tokens) */
  size_t attn_smem_max;   /* dynamic shared memory the attention kernels are allowed (bytes) */

  /* the fast attention kernels (attn_fast.h): which path runs, test hooks, split-KV scratch */
  int attn_path;                              /* cuda_attn_path_t, from EARSHOT_ATTENTION at create */
  int attn_splits;                            /* decode split count forced by a test, 0 = the heuristic */
  int64_t attn_fast_calls, attn_simple_calls; /* attention op calls that ran each path */
  float *attn_part;                           /* device, attn_part_bytes: partial (o, m, l) of split rows */
  int flash;    /* cuda_flash_t: the flash kernel of prefill and encoder attention (EARSHOT_FLASH at create) */
  int wgmma_ok; /* this device runs the wgmma flash kernels (sm_90a image loaded: attn_wgmma_init) */
  int64_t wgmma_launches; /* launches of the wgmma flash kernels, for tests (cuda_backend_wgmma_launches) */
  size_t attn_part_bytes;                     /* allocated with the KV pool (attn_fast_part_bytes) */

  /* step graphs (cuda_graph.cu): the instantiated graph of each key, NULL when none */
  cudaGraphExec_t graphs[ES_GRAPH_MAX_KEYS];
  int graphs_off; /* EARSHOT_CUDA_GRAPHS=0 at create */

  /* ---- deterministic mode (issue 9), when base.opts.deterministic ---- */
  cuda_gemm_det_t det_shapes[CUDA_DET_SHAPES]; /* chosen at a shape's first use, never evicted */
  int n_det_shapes;
  int64_t det_switched; /* shapes moved to the plain kernel after their algorithm failed the check at a new M */
  int attn_det_chunk;   /* keys per decode split (attn_det_chunk), fixed at kv_init */

  /* ---- fp8 weights ---- (cuda_fp8.h) */
  void *fp8_scratch;         /* device, fp8_scratch_elems in the compute dtype: the dequantised weight of the
                                GEMM path; grown at upload to the largest fp8 weight, so no step allocates */
  size_t fp8_scratch_elems;

  /* sampling (cuda_sample.cu), from cuda_sampler_init; S = base.smp_slots, V = base.smp_vocab */
  uint8_t *smp_seen;             /* device (S, V): 1 = in the prompt or generated */
  int32_t *smp_count;            /* device (S, V): times generated; es_op_sample adds the drawn token */
  int32_t *smp_supp;             /* device (S, ES_SAMPLE_MAX_SUPPRESS): suppress ids */
  int32_t *smp_n_supp;           /* device (S) */
  es_sample_row_t *smp_rows;     /* device (S): the last prepare's rows, read by the (graph-capturable) op */
  es_sample_row_t *smp_rows_host; /* pinned (S): staging of smp_rows */
  cudaEvent_t smp_rows_done;     /* the last copy out of smp_rows_host finished */
  uint8_t *smp_seen_host;        /* host (V): sampler_reset builds one slot here */
  int32_t *smp_count_host;       /* host (V) */

  /* ---- step-graph review (h-revB) ---- */
  int gemv_mode;            /* 0 off (EARSHOT_GEMV=0 at create), 1 where measured faster (gemv_preferred), 2 every
                               shape the kernel takes (tests, bench linear): cuda_backend_set_gemv (cuda_gemv.h) */
  const char *graph_unsafe; /* set while recording by an op whose launch a replay could not follow (why, static
                               text); cuda_graph_end then refuses the recording (ES_EUNSUPPORTED: the step runs
                               op by op). Cleared by cuda_graph_begin. */

  /* ---- GEMV review (h-revD) ---- */
  int64_t gemv_calls; /* launches of the decode GEMV (cuda_gemv.cu), for tests: cuda_backend_gemv_calls */
  int gemv_loads;     /* loads in flight per lane of the GEMVs, 0 = each GEMV's default (cuda_gemv.h) */
  int gemv_pipe_off;  /* 1: the GEMVs without software pipelining (cuda_gemv.h: cuda_gemv_pipe) */
  int gemv_rows;      /* weight rows per warp of the GEMVs at one row of x: 1 or 2 (cuda_gemv.h: cuda_gemv_rows) */
  int pdl;            /* launch the per-step kernels with programmatic dependent launch (cuda_common.cuh): sm_90
                         and later, unless EARSHOT_PDL=0 at create or cuda_backend_set_pdl */
  int pdl_ok;         /* the device passed cuda_pdl_probe at create: cuda_backend_set_pdl may turn it on */
  int fp8_mma;        /* fp8 decode linears (2 to 64 rows) on tensor cores (cuda_fp8_mma.cu) where they fit: 1 in
                         launches of up to 32 rows (the default), 2 in one launch, 0 off; EARSHOT_FP8_MMA at create
                         (cuda_backend_set_fp8_mma) */
  int64_t fp8_mma_calls; /* linears run by the tensor-core fp8 GEMV, for tests (cuda_backend_fp8_mma_calls) */

  /* ---- decode-step fusions (cuda_hooks.h: cuda_backend_set_fusions) ---- */
  int fusions;             /* CUDA_FUSE_* mask: EARSHOT_FUSE at create, default CUDA_FUSE_ALL */
  int64_t glu_calls;       /* es_op_linear_silu_mul calls run fused (bf16 and fp8 GEMVs) */
  int64_t combine_fused;   /* split-KV decode launches whose last blocks merged the splits */
  int32_t *attn_arrivals;  /* device [attn_arrivals_n], zero between launches: blocks of a (row, head) done */
  int64_t attn_arrivals_n; /* (row, head) pairs it counts (attn_math.h: attn_arrival_slots) */
  int32_t *norm_arrivals;  /* device [1], zero between launches: blocks of a GEMV with the fused RMSNorm done */
  int64_t norm_calls;      /* es_op_linear_rms_norm calls run fused (bf16 and fp8 GEMVs) */
  int64_t rope_calls;      /* es_op_linear_rope_kv_store calls run fused (bf16 and fp8 GEMVs) */

  /* ---- op profiles (backend.h): timing events on the op stream, between profile_start and _stop ---- */
  cudaEvent_t *prof_ev;
  int prof_n;
} cuda_backend_t;

static inline cuda_backend_t *cuda_be(es_backend_t *be) {
  return (cuda_backend_t *)be;
}

/* Makes the backend's device current on this thread. */
int cuda_enter(cuda_backend_t *cb, es_error_t *err);

/* Step graphs (cuda_graph.cu): the es_backend_ops_t entries, and the release at destroy. */
int cuda_graphs_supported(const es_backend_t *be);
int cuda_graph_begin(es_backend_t *be, es_error_t *err);
int cuda_graph_end(es_backend_t *be, int key, es_error_t *err);
void cuda_graph_abort(es_backend_t *be);
int cuda_graph_has(const es_backend_t *be, int key);
int cuda_graph_launch(es_backend_t *be, int key, es_error_t *err);
void cuda_graphs_free(cuda_backend_t *cb);
/* At create, on sm_90 and later unless EARSHOT_PDL=0: launches two kernels with programmatic dependent launch on a private stream, directly
 * and inside a captured, instantiated and replayed graph; returns 1 when all of it worked (any error is cleared),
 * so a driver without it, or without it in graphs, or a binary whose kernels lack the wait (no sm_90 code), only
 * loses the speed-up (cuda_graph.cu). */
int cuda_pdl_probe(void);

/* The CUDA backend behind a test or benchmark hook (cuda_hooks.h), or NULL after filling err ("WHAT: NAME is not
 * the CUDA backend") when be is another backend (cuda_graph.cu). */
cuda_backend_t *cuda_hook_backend(es_backend_t *be, const char *what, es_error_t *err);
/* A hook about to change which kernels a step runs: refused while a step graph is being recorded; when changed,
 * the recorded graphs (which hold the old choice's kernels) are dropped and recorded again (cuda_graph.cu). */
int cuda_hook_change(cuda_backend_t *cb, const char *what, int changed, es_error_t *err);

/* Plans the step's decode attention (cb->base.batch: dec_rows, dec_splits, dec_chunk) and sends the chunk to
 * d_dec_chunk (cuda_backend.cu). */
int cuda_plan_decode(cuda_backend_t *cb, es_error_t *err);

/* Bytes of one element of the compute dtype. */
static inline size_t cuda_act_size(const cuda_backend_t *cb) {
  return es_dtype_size(cb->base.act_dtype);
}

#ifdef __cplusplus
}
#endif
