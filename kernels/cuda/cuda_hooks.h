/* cuda_hooks: test and benchmark hooks of the CUDA backend (C). Exist only in builds with the CUDA backend
 * (tests compile their use under ES_HAVE_CUDA_BACKEND). The production choices are made at create.
 * Thread safety: as backend.h (the driving thread).
 */
#pragma once

#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Which GEMM runs es_op_linear / conv1d / logits. */
typedef enum {
  CUDA_GEMM_AUTO = 0,  /* cuBLASLt with the heuristic's algorithm; the plain kernel for shapes it has none for */
  CUDA_GEMM_PLAIN = 1, /* always the plain tiled kernel (cuda_gemm.cu) */
} cuda_gemm_path_t;

int cuda_backend_set_gemm_path(es_backend_t *be, cuda_gemm_path_t path, es_error_t *err);

/* Number of cached cuBLASLt plans, and how many of them fell back to the plain kernel (no algorithm). */
void cuda_backend_gemm_stats(const es_backend_t *be, int *plans, int *fallbacks);

/* Which attention kernels run es_op_attention_paged / es_op_attention_dense (the default comes from the
 * environment at create: EARSHOT_ATTENTION=simple|fast, unset = fast). FAST applies where the fast kernels
 * support the call (bf16, head dim 64 or 128, aligned rows: kernels/cuda/attn_fast.h) and falls back to the
 * simple kernel elsewhere. */
typedef enum {
  CUDA_ATTN_FAST = 0,   /* flash prefill / encoder, split-KV decode (attn_flash.cu, attn_decode.cu) */
  CUDA_ATTN_SIMPLE = 1, /* the reference kernel of part 1 (cuda_attention.cu) */
} cuda_attn_path_t;

int cuda_backend_set_attention_path(es_backend_t *be, cuda_attn_path_t path, es_error_t *err);
/* The current attention path (CUDA_ATTN_SIMPLE for another backend). */
cuda_attn_path_t cuda_backend_attention_path(const es_backend_t *be);

/* Which flash-attention kernel runs prefill and encoder attention on the fast path: mma.sync (attn_flash.cu,
 * sm_80 and later) or Hopper's wgmma (attn_wgmma.cu, sm_90a devices only). The default comes from
 * EARSHOT_FLASH=mma|wgmma|auto at create (unset = auto: wgmma where available, else mma; over an fp8 KV cache the
 * paged prefill takes the mma kernel either way). WGMMA where it is not available fails with ES_EUNSUPPORTED. */
typedef enum {
  CUDA_FLASH_MMA = 0,
  CUDA_FLASH_WGMMA = 1,
} cuda_flash_t;

int cuda_backend_set_flash(es_backend_t *be, cuda_flash_t kind, es_error_t *err);
/* The current flash kernel (CUDA_FLASH_MMA for another backend). */
cuda_flash_t cuda_backend_flash(const es_backend_t *be);
/* Launches of the wgmma flash kernels since create (0 for another backend): tests check that they ran. */
int64_t cuda_backend_wgmma_launches(const es_backend_t *be);
/* 1 when this backend's device runs that flash kernel (0 for another backend). */
int cuda_backend_flash_available(const es_backend_t *be, cuda_flash_t kind);

/* Forces the split-KV decode kernel to split the longest context n_splits ways (capped by its scratch);
 * 0 restores the heuristic. For tests. */
int cuda_backend_set_attention_splits(es_backend_t *be, int n_splits, es_error_t *err);

/* How many attention op calls ran the fast kernels and the simple kernel since create. */
void cuda_backend_attention_calls(const es_backend_t *be, int64_t *fast, int64_t *simple);

/* Step graphs on (the default unless EARSHOT_CUDA_GRAPHS=0 at create) or off; recorded graphs are kept and
 * replayed again once turned back on. For benchmarks measuring what graphs save, in one process. */
int cuda_backend_set_graphs(es_backend_t *be, int on, es_error_t *err);

/* Programmatic dependent launch of the per-step kernels (cuda_common.cuh, cuda_launch): on by default on sm_90
 * and later when the create-time probe (cuda_pdl_probe: direct and in a graph) passed, unless EARSHOT_PDL=0 (then
 * not probed, and not available); on = 0 turns it off, 1 back on where the probe passed (recorded graphs are
 * dropped). cuda_backend_pdl says
 * whether it is on (0 for another backend). For `bench model`'s side-by-side measurement and bisecting. */
int cuda_backend_set_pdl(es_backend_t *be, int on, es_error_t *err);
int cuda_backend_pdl(const es_backend_t *be);

/* The decode-size GEMV (cuda_gemv.h): mode 1 (the default unless EARSHOT_GEMV=0 at create) where it was measured
 * faster than cuBLASLt in a decode step (gemv_math.h, gemv_preferred: one row), 0 off (cuBLASLt for every GEMM), 2 for
 * every shape the kernel takes (tests; bench linear). Drops recorded step graphs (they hold the other path's kernels).
 */
int cuda_backend_set_gemv(es_backend_t *be, int mode, es_error_t *err);
/* The current GEMV mode (0 for another backend). */
int cuda_backend_gemv_mode(const es_backend_t *be);
/* fp8 linears at decode sizes (2 to 64 rows) on tensor cores (cuda_fp8_mma.cu): mode 1 (the default;
 * EARSHOT_FP8_MMA=0|1|2 at create) in launches of up to CUDA_FP8_MMA_DEFAULT_M = 32 rows, 2 in one launch, 0 off (the
 * CUDA-core GEMV up to 8 rows, dequantise + cuBLASLt above). cuda_backend_fp8_mma: the current mode (0 for another
 * backend). Drops recorded step graphs. For tests and bench linear / bench model comparisons. */
int cuda_backend_set_fp8_mma(es_backend_t *be, int mode, es_error_t *err);
int cuda_backend_fp8_mma(const es_backend_t *be);
/* How many linears the tensor-core fp8 GEMV has run on this backend (0 for another backend). */
int64_t cuda_backend_fp8_mma_calls(const es_backend_t *be);

/* 16-byte weight loads in flight per lane in the bf16 and fp8 GEMVs: 4, 8 or 16, 0 = the defaults
 * (CUDA_GEMV_LOADS_DEFAULT, CUDA_FP8_GEMV_LOADS_DEFAULT). The same bits for every value; `earshot bench linear` times
 * them. */
int cuda_backend_set_gemv_loads(es_backend_t *be, int loads, es_error_t *err);
/* The loads setting (0: each GEMV's default; 0 for another backend). */
int cuda_backend_gemv_loads(const es_backend_t *be);
/* The bf16 and fp8 GEMVs with (1, the default unless EARSHOT_GEMV_PIPE=0 at create) or without (0) the next round
 * of weight loads issued before the current round's arithmetic (cuda_gemv.h: cuda_gemv_pipe); the same bits.
 * Drops recorded step graphs. */
int cuda_backend_set_gemv_pipe(es_backend_t *be, int on, es_error_t *err);
/* 1 when the GEMVs are pipelined (0 for another backend). */
int cuda_backend_gemv_pipe(const es_backend_t *be);
/* Weight rows per warp of the bf16 and fp8 GEMVs at one row of x: 1 (the default unless EARSHOT_GEMV_ROWS=2 at
 * create) or 2 (each x load shared by two rows; cuda_gemv.h: cuda_gemv_rows); the same bits. Drops recorded step
 * graphs. cuda_backend_gemv_rows: the setting (0 for another backend). */
int cuda_backend_set_gemv_rows(es_backend_t *be, int rows, es_error_t *err);
int cuda_backend_gemv_rows(const es_backend_t *be);
/* How many GEMMs the decode GEMV has run on this backend (0 for another backend): tests check that the shapes
 * meant for it reach it. */
int64_t cuda_backend_gemv_calls(const es_backend_t *be);

/* Kernel fusions of the decode step, each on by default (EARSHOT_FUSE at create: a mask of these, e.g. 0 for none):
 * CUDA_FUSE_GLU: es_op_linear_silu_mul at one row in one GEMV whose epilogue applies silu(g) · u (bf16: cuda_gemv.h;
 * fp8: cuda_fp8.h) instead of the GEMV and the SiLU·mul kernel; CUDA_FUSE_COMBINE: the split-KV decode attention's
 * last block of a row merges the row's splits (attn_decode.cu) instead of a second kernel; CUDA_FUSE_NORM:
 * es_op_linear_rms_norm at one row in one GEMV whose last block applies the RMSNorm with the residual add
 * (rms_norm_row.cuh) instead of the GEMV and the RMSNorm kernel; CUDA_FUSE_ROPE: es_op_linear_rope_kv_store at one
 * token in one q|k|v GEMV whose warps each rotate one RoPE pair and store k and v to a cache in the compute dtype
 * (rope_math.cuh) instead of the GEMV and the RoPE + KV store kernel. The same bits either way.
 * cuda_backend_set_fusions drops recorded step graphs; cuda_backend_fusions: the mask (0 for another backend). For
 * tests and `bench model`'s comparison runs. */
enum { CUDA_FUSE_GLU = 1, CUDA_FUSE_COMBINE = 2, CUDA_FUSE_NORM = 4, CUDA_FUSE_ROPE = 8, CUDA_FUSE_ALL = 15 };
int cuda_backend_set_fusions(es_backend_t *be, int mask, es_error_t *err);
int cuda_backend_fusions(const es_backend_t *be);
/* Calls fused by CUDA_FUSE_GLU, launches of the split-KV decode kernel that merged their rows' splits themselves
 * (CUDA_FUSE_COMBINE), calls fused by CUDA_FUSE_NORM and by CUDA_FUSE_ROPE, since create (0 for another backend):
 * tests check that the fusions ran. */
void cuda_backend_fused_calls(const es_backend_t *be, int64_t *glu, int64_t *combine, int64_t *norm, int64_t *rope);

/* The KV pool (es_backend_kv_init), a device pointer in the compute dtype, layout as backend.h; NULL before
 * kv_init. Tests fill it with es_backend_write_act. */
void *cuda_backend_kv_pool(es_backend_t *be);

/* Device-to-device copy bandwidth (cudaMemcpyAsync of `bytes`, `repeats` times after a warm-up, timed with
 * events), counting bytes read plus bytes written, in *bytes_per_s. Allocates and frees its own two buffers
 * (benchmarks only, never inside a step). */
int cuda_backend_copy_bandwidth(es_backend_t *be, size_t bytes, int repeats, double *bytes_per_s, es_error_t *err);

/* ---- deterministic mode (issue 9) ---- */

/* GEMM shapes given their one algorithm so far (es_backend_opts_t.deterministic), how many of them run the
 * plain kernel (no split-K-free algorithm valid at every checked M), and how many shapes moved to the plain
 * kernel after their algorithm was refused at a new M (rows before and after may differ: should stay 0). */
void cuda_backend_det_stats(const es_backend_t *be, int *shapes, int *plain_shapes, int64_t *switched);

/* Keys per split of the deterministic decode attention (0 before es_backend_kv_init or outside the mode). */
int cuda_backend_det_attn_chunk(const es_backend_t *be);

#ifdef __cplusplus
}
#endif
