// cuda_gemm: Y[M, N] = act(X[M, K] · W[N, K]ᵀ + bias[N]) (+ Y) for es_op_linear, es_op_conv1d and
// es_op_logits. See cuda_gemm.h.
//
// cuBLASLt (API-NOTES §B3): row-major Y = X·Wᵀ is column-major Yᵀ = W·Xᵀ, so m = N, n = M, k = K with
// A = W (K×N column-major, ld K, TRANSA = T), B = X (K×M, ld ldx, TRANSB = N), C = D = Y (N×M, ld ldy).
// Compute CUBLAS_COMPUTE_32F with scale type fp32 in both modes: bf16 inputs use the tensor cores with fp32
// accumulation; fp32 inputs run true fp32 (never _FAST_TF32), so --dtype float32 can be held to the CPU's
// thresholds. The bias is added in the epilogue in fp32, before the one rounding of the output to bf16 —
// as torch's addmm/cublasLt path does for F.linear. GELU is not an epilogue: cuBLASLt's GELU is the tanh
// approximation and transformers rounds the linear output before its exact-erf GELU, so cuda_ops' GELU
// kernel runs on the rounded output. accumulate (the encoder's residual add) is beta = 1 with C = D = Y:
// round(y + x·wᵀ + b), one rounding where transformers rounds twice (round(y + round(x·wᵀ + b))); the
// difference is at most one bf16 ulp per add and only in bf16 mode.
//
// Plans: descriptors, layouts and the heuristic's algorithm are made once per exact problem (M, N, K, strides,
// dtypes, bias, beta, pointer alignment) and cached (CUDA_GEMM_CACHE entries, evicted round-robin); a call
// only sets the bias pointer. Bucketing M (and CUDA-graph-fixed shapes) is part 3. cuBLASLt may pick a
// different algorithm for a different M, so its rows are not guaranteed bit-identical across batch sizes
// (backend.h's batch invariance); the plain kernel's are (its k loop is the same for every row). Deterministic
// mode fixes one algorithm per shape for every M (see "deterministic mode" below).
//
// The plain kernel: 16×16 output tiles through shared memory, fp32 accumulation over k in order, the
// transformers rounding points in its epilogue (round(x·wᵀ + b), round(gelu(.)), round(y + .)). It runs for
// shapes the heuristic has no algorithm for, for act + accumulate together (which cuBLASLt cannot order as
// transformers does), and everywhere under CUDA_GEMM_PLAIN (tests).
//
// Napkin math (H100: ~800 TFLOP/s bf16 measured, ~3 TB/s copy): decode at batch 1 is bound by reading the
// 15.2 GB of decoder weights once per token: ≈ 5 ms/token floor; the 30 s encoder is ≈ 1.9 TFLOP in GEMMs
// (≈ 3 ms at the tensor-core rate); prefill of ~780 rows × 7.6 B params ≈ 12 TFLOP (≈ 15 ms).
#include <string.h>

#include "cuda_common.cuh"
#include "cuda_fp8.h"
#include "cuda_gemv.h"
#include "cuda_gemm.h"
#include "cuda_ops.h"

#define PT 16 // plain kernel tile


// y (M, N) row stride ldy, TO; x (M, K) row stride ldx, TI; w (N, K) contiguous, TI; bias (N) TI or NULL.
// Block (16, 16): threadIdx.x -> n, threadIdx.y -> m; grid (ceil(N/16), ceil(M/16)).
template <typename TI, typename TO>
__global__ void gemm_plain_kernel(TO *y, int64_t ldy, const TI *x, int64_t ldx, const TI *w, const TI *bias,
                                  int64_t M, int64_t N, int64_t K, int act, int accumulate) {
  __shared__ float xs[PT][PT + 1], ws[PT][PT + 1];
  int tx = threadIdx.x, ty = threadIdx.y;
  int64_t m = (int64_t)blockIdx.y * PT + ty, n = (int64_t)blockIdx.x * PT + tx;
  int64_t wn = (int64_t)blockIdx.x * PT + ty; // the w row this thread stages
  float acc = 0.0f;
  for (int64_t k0 = 0; k0 < K; k0 += PT) {
    int64_t k = k0 + tx;
    xs[ty][tx] = (m < M && k < K) ? to_f(x[m * ldx + k]) : 0.0f;
    ws[ty][tx] = (wn < N && k < K) ? to_f(w[wn * K + k]) : 0.0f;
    __syncthreads();
    int kk_end = K - k0 < PT ? (int)(K - k0) : PT;
    for (int kk = 0; kk < kk_end; kk++) acc = fmaf(xs[ty][kk], ws[tx][kk], acc);
    __syncthreads();
  }
  if (m >= M || n >= N) return;
  float v = rnd<TO>(acc + (bias ? to_f(bias[n]) : 0.0f));
  if (act == ES_ACT_GELU) v = rnd<TO>(gelu_erf(v));
  TO *yp = y + m * ldy + n;
  if (accumulate) v = to_f(*yp) + v;
  *yp = from_f<TO>(v);
}

template <typename TI, typename TO>
static int gemm_plain(cuda_backend_t *cb, void *y, int64_t ldy, const void *x, int64_t ldx, const void *w,
                      const void *bias, int64_t M, int64_t N, int64_t K, es_act_t act, int accumulate,
                      es_error_t *err) {
  if ((M + PT - 1) / PT > 65535)
    return es_fail(err, ES_EUNSUPPORTED, "%s: plain GEMM with %lld rows (at most %d)", cb->base.name, (long long)M,
                   65535 * PT);
  dim3 grid((unsigned)((N + PT - 1) / PT), (unsigned)((M + PT - 1) / PT)), block(PT, PT);
  gemm_plain_kernel<TI, TO><<<grid, block, 0, cb->stream>>>((TO *)y, ldy, (const TI *)x, ldx, (const TI *)w,
                                                            (const TI *)bias, M, N, K, (int)act, accumulate);
  ES_CUDA_LAUNCHED(err);
  return ES_OK;
}

// ---- cuBLASLt plans ------------------------------------------------------------------------------------

static cudaDataType_t lt_type(es_dtype_t dt) { return dt == ES_DT_BF16 ? CUDA_R_16BF : CUDA_R_32F; }

static int align_of(const void *p) {
  uintptr_t a = (uintptr_t)p;
  int al = 256;
  while (al > 1 && a % (uintptr_t)al) al /= 2;
  return al;
}
static int align_of_bytes(int64_t bytes) { return align_of((const void *)(uintptr_t)bytes); }

static void plan_free(cuda_gemm_plan_t *p) {
  if (!p->used) return;
  if (p->op) cublasLtMatmulDescDestroy(p->op);
  if (p->lw) cublasLtMatrixLayoutDestroy(p->lw);
  if (p->lx) cublasLtMatrixLayoutDestroy(p->lx);
  if (p->ly) cublasLtMatrixLayoutDestroy(p->ly);
  memset(p, 0, sizeof *p);
}

extern "C" void cuda_gemm_free_plans(cuda_backend_t *cb) {
  for (int i = 0; i < CUDA_GEMM_CACHE; i++) plan_free(&cb->plans[i]);
}

// Builds the descriptors of p (key fields already set).
static int desc_build(cuda_gemm_plan_t *p, es_error_t *err) {
  cudaDataType_t ti = lt_type((es_dtype_t)p->in_dt), to = lt_type((es_dtype_t)p->out_dt);
  ES_CUBLAS_TRY(err, cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  ES_CUBLAS_TRY(err, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
  ES_CUBLAS_TRY(err, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
  cublasLtEpilogue_t epi = p->has_bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  ES_CUBLAS_TRY(err, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
  if (p->has_bias)
    ES_CUBLAS_TRY(err, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &ti, sizeof ti));
  ES_CUBLAS_TRY(err, cublasLtMatrixLayoutCreate(&p->lw, ti, (uint64_t)p->K, (uint64_t)p->N, p->K));
  ES_CUBLAS_TRY(err, cublasLtMatrixLayoutCreate(&p->lx, ti, (uint64_t)p->K, (uint64_t)p->M, p->ldx));
  ES_CUBLAS_TRY(err, cublasLtMatrixLayoutCreate(&p->ly, to, (uint64_t)p->N, (uint64_t)p->M, p->ldy));
  return ES_OK;
}

// Asks the heuristic for up to n_req algorithms for p's descriptors (workspace CUDA_LT_WORKSPACE, p's pointer
// alignment); *found = 0 when it has none ("no algorithm" comes back as NOT_SUPPORTED or as zero results).
static int heuristic(cuda_backend_t *cb, const cuda_gemm_plan_t *p, int n_req, cublasLtMatmulHeuristicResult_t *res,
                     int *found, es_error_t *err) {
  *found = 0;
  cublasLtMatmulPreference_t pref = NULL;
  ES_CUBLAS_TRY(err, cublasLtMatmulPreferenceCreate(&pref));
  uint64_t ws = CUDA_LT_WORKSPACE;
  uint32_t al = (uint32_t)p->align;
  cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                           sizeof ws);
  const cublasLtMatmulPreferenceAttributes_t al_attrs[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  for (int i = 0; i < 4 && st == CUBLAS_STATUS_SUCCESS; i++)
    st = cublasLtMatmulPreferenceSetAttribute(pref, al_attrs[i], &al, sizeof al);
  memset(res, 0, sizeof *res * (size_t)n_req);
  int n = 0;
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulAlgoGetHeuristic(cb->lt, p->op, p->lw, p->lx, p->ly, p->ly, pref, n_req, res, &n);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED)
    return es_cublas_fail(err, st, "cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__);
  *found = st == CUBLAS_STATUS_SUCCESS ? n : 0;
  return ES_OK;
}

static int det_plan_algo(cuda_backend_t *cb, cuda_gemm_plan_t *p, es_error_t *err);

// Builds the descriptors of p and picks its algorithm: the heuristic's first for this exact problem, or in
// deterministic mode the shape's one algorithm (det_plan_algo). have_algo = 0: the plain kernel runs it.
static int plan_build(cuda_backend_t *cb, cuda_gemm_plan_t *p, es_error_t *err) {
  p->det_idx = -1;
  int rc = desc_build(p, err);
  if (rc) return rc;
  if (cb->base.opts.deterministic) return det_plan_algo(cb, p, err);
  cublasLtMatmulHeuristicResult_t res;
  int found = 0;
  if ((rc = heuristic(cb, p, 1, &res, &found, err))) return rc;
  p->have_algo = found > 0 && res.state == CUBLAS_STATUS_SUCCESS;
  if (p->have_algo) p->algo = res.algo;
  return ES_OK;
}

// ---- deterministic mode: one algorithm per shape, for every M ----------------------------------------------------
//
// Batch invariance (backend.h) asks that row i of Y = X·Wᵀ come out bit-identical whatever M is. In default
// mode it does not: a plan is cached per exact M and the heuristic may pick a different algorithm (another
// tile shape, hence another order of the k loop, or split-K, whose partial sums are added in another order)
// for M = 1 than for M = 64. Deterministic mode (es_backend_opts_t.deterministic) removes the M dependence:
//   - for each shape — N, K, strides, dtypes, bias, beta, pointer alignment: everything but M — ONE algorithm is
//     chosen, at the shape's first use: the heuristic's best for M = CUDA_DET_REP_M (a constant, so the choice
//     does not depend on the server's sizing either) among the algorithms whose CUBLASLT_ALGO_CONFIG_SPLITK_NUM
//     is 1 (the dot product of each output runs "in one sequence", cublasLt.h's CUBLASLT_REDUCTION_SCHEME_NONE),
//     and that cublasLtMatmulAlgoCheck accepts at every M of det_check_m;
//   - every M then runs that algorithm (the full config: id, tile, stages, split-K 1, swizzle, custom option,
//     cluster shape). With the tile fixed, an output element is computed by one CTA looping over k in the
//     tile's fixed order; M changes only how many CTAs there are and where each sits in the grid, not what one
//     computes (a CTA's k loop reads one row of X and one column of Wᵀ; rows do not interact). With split-K 1
//     no partial sums of other CTAs are added in. What NVIDIA documents (cuBLAS docs, "Results
//     reproducibility": bit-wise identical results from run to run for a given toolkit, architecture and SM
//     count; "GEMM Algorithms Numerical Behavior": the algorithms that "split the computation along the
//     dimension K" sum the splits deterministically — i.e. in an order that depends on the split, which is why
//     split-K is excluded) is run-to-run reproducibility of one call, not invariance across M; invariance across
//     M rests on the argument above and is checked on the GPU by tests/cuda/test_cuda_deterministic.c (every row
//     of M in {1, 2, 3, 7, 16, 64, 300} against the same row alone, memcmp). A kernel that reduces across CTAs
//     behind a split-K of 1 (stream-K) would break it; that test is what would catch it.
//   - a shape for which no such algorithm exists runs the plain kernel at every M (its k loop is in order and
//     the same for every row). If the algorithm is later refused at an M outside det_check_m, the shape moves to
//     the plain kernel from then on and det_switched counts it (the test requires 0): rows computed before and
//     after would differ, which the checks at start-up are there to make unlikely.
// Choice at first use, not at upload: the shape's strides, bias and alignment are only known at the call. Today
// no step is captured as a CUDA graph, so the first use is always an ordinary call; a capture (part 3) must run
// a warm-up step first, which it needs anyway for the per-M plans.

static const int64_t det_check_m[] = {1,    2,    3,    4,    5,    6,     7,     8,     9,     12,   15,  16,
                                      17,   24,   31,   32,   33,   48,    63,    64,    65,    96,   127, 128,
                                      129,  192,  255,  256,  257,  300,   383,   384,   511,   512,  513, 767,
                                      768,  1000, 1023, 1024, 1025, 1500,  2047,  2048,  2049,  3000, 4096,
                                      6000, 8192, 12000, 16384, 24000, 32768, 48000, 65536};

// *ok = 1 when algo is valid for shape d at M rows (cublasLtMatmulAlgoCheck) within the workspace.
static int det_check(cuda_backend_t *cb, const cuda_gemm_plan_t *shape, int64_t M, const cublasLtMatmulAlgo_t *algo,
                     int *ok, es_error_t *err) {
  cuda_gemm_plan_t t = *shape;
  t.M = M;
  t.op = NULL;
  t.lw = t.lx = t.ly = NULL;
  t.used = 1;
  int rc = desc_build(&t, err);
  *ok = 0;
  if (!rc) {
    cublasLtMatmulHeuristicResult_t r;
    memset(&r, 0, sizeof r);
    cublasStatus_t st = cublasLtMatmulAlgoCheck(cb->lt, t.op, t.lw, t.lx, t.ly, t.ly, algo, &r);
    *ok = st == CUBLAS_STATUS_SUCCESS && r.state == CUBLAS_STATUS_SUCCESS && r.workspaceSize <= CUDA_LT_WORKSPACE;
  }
  plan_free(&t);
  return rc;
}

// The shape's entry (chosen now if new); -1 when the table is full (the caller runs the plain kernel).
static int det_shape(cuda_backend_t *cb, const cuda_gemm_plan_t *p, int *idx, es_error_t *err) {
  *idx = -1;
  for (int i = 0; i < cb->n_det_shapes; i++) {
    const cuda_gemm_det_t *d = &cb->det_shapes[i];
    if (d->N == p->N && d->K == p->K && d->ldx == p->ldx && d->ldy == p->ldy && d->in_dt == p->in_dt &&
        d->out_dt == p->out_dt && d->has_bias == p->has_bias && d->beta == p->beta && d->align == p->align) {
      *idx = i;
      return ES_OK;
    }
  }
  if (cb->n_det_shapes == CUDA_DET_SHAPES) return ES_OK;
  cuda_gemm_det_t d;
  memset(&d, 0, sizeof d);
  d.N = p->N, d.K = p->K, d.ldx = p->ldx, d.ldy = p->ldy, d.in_dt = p->in_dt, d.out_dt = p->out_dt;
  d.has_bias = p->has_bias, d.beta = p->beta, d.align = p->align;
  // the heuristic's candidates at the representative M, best first
  cuda_gemm_plan_t rep = *p;
  rep.M = CUDA_DET_REP_M;
  rep.op = NULL;
  rep.lw = rep.lx = rep.ly = NULL;
  rep.used = 1;
  enum { N_REQ = 16 };
  cublasLtMatmulHeuristicResult_t res[N_REQ];
  int found = 0, rc = desc_build(&rep, err);
  if (!rc) rc = heuristic(cb, &rep, N_REQ, res, &found, err);
  plan_free(&rep);
  for (int i = 0; i < found && !rc && !d.have_algo; i++) {
    if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
    int32_t splitk = 0;
    size_t got = 0;
    if (cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof splitk,
                                             &got) != CUBLAS_STATUS_SUCCESS ||
        splitk > 1)
      continue;
    int all = 1;
    for (size_t k = 0; k < sizeof det_check_m / sizeof *det_check_m && all && !rc; k++)
      rc = det_check(cb, p, det_check_m[k], &res[i].algo, &all, err);
    if (!rc && all) {
      d.algo = res[i].algo;
      d.have_algo = 1;
    }
  }
  if (rc) return rc;
  cb->det_shapes[cb->n_det_shapes] = d;
  *idx = cb->n_det_shapes++;
  return ES_OK;
}

// p's algorithm in deterministic mode: its shape's, after checking it at p's M.
static int det_plan_algo(cuda_backend_t *cb, cuda_gemm_plan_t *p, es_error_t *err) {
  p->have_algo = 0;
  int idx = -1, rc = det_shape(cb, p, &idx, err);
  if (rc || idx < 0) return rc;
  p->det_idx = idx;
  cuda_gemm_det_t *d = &cb->det_shapes[idx];
  if (!d->have_algo) return ES_OK;
  int ok = 0;
  if ((rc = det_check(cb, p, p->M, &d->algo, &ok, err))) return rc;
  if (!ok) { // refused at this M: the whole shape goes to the plain kernel from now on
    d->have_algo = 0;
    cb->det_switched++;
    return ES_OK;
  }
  p->algo = d->algo;
  p->have_algo = 1;
  return ES_OK;
}

static int plan_get(cuda_backend_t *cb, const cuda_gemm_plan_t *key, cuda_gemm_plan_t **out, es_error_t *err) {
  int free_slot = -1;
  for (int i = 0; i < CUDA_GEMM_CACHE; i++) {
    cuda_gemm_plan_t *p = &cb->plans[i];
    if (!p->used) {
      if (free_slot < 0) free_slot = i;
      continue;
    }
    if (p->M == key->M && p->N == key->N && p->K == key->K && p->ldx == key->ldx && p->ldy == key->ldy &&
        p->in_dt == key->in_dt && p->out_dt == key->out_dt && p->has_bias == key->has_bias &&
        p->beta == key->beta && p->align == key->align) {
      *out = p;
      return ES_OK;
    }
  }
  if (free_slot < 0) {
    free_slot = cb->next_evict;
    cb->next_evict = (cb->next_evict + 1) % CUDA_GEMM_CACHE;
    plan_free(&cb->plans[free_slot]);
  }
  cuda_gemm_plan_t *p = &cb->plans[free_slot];
  *p = *key;
  p->op = NULL;
  p->lw = p->lx = p->ly = NULL;
  p->used = 1;
  int rc = plan_build(cb, p, err);
  if (rc) {
    plan_free(p);
    return rc;
  }
  *out = p;
  return ES_OK;
}

// The one GEMM entry: y (M×N, ldy, out_dt) = act(x (M×K, ldx) · w (N×K)ᵀ + bias) (+ y); x, w, bias in the
// compute dtype.
static int gemm(cuda_backend_t *cb, void *y, int64_t ldy, es_dtype_t out_dt, const void *x, int64_t ldx,
                const void *w, int64_t N, int64_t K, const void *bias, int64_t M, es_act_t act, int accumulate,
                es_error_t *err) {
  es_dtype_t in_dt = cb->base.act_dtype;
  // decode sizes with bf16 weights: the weight-streaming GEMV (cuda_gemv.h says when it applies)
  if (cuda_gemv_ok(cb, out_dt, x, ldx, w, N, K, M))
    return cuda_gemv(cb, y, ldy, out_dt, x, ldx, w, N, K, bias, M, act, accumulate, err);
  int plain = cb->gemm_path == CUDA_GEMM_PLAIN || (act != ES_ACT_NONE && accumulate);
  if (!plain) {
    size_t ei = es_dtype_size(in_dt), eo = es_dtype_size(out_dt);
    cuda_gemm_plan_t key;
    memset(&key, 0, sizeof key);
    key.M = M, key.N = N, key.K = K, key.ldx = ldx, key.ldy = ldy;
    key.in_dt = (int)in_dt, key.out_dt = (int)out_dt, key.has_bias = bias != NULL, key.beta = accumulate ? 1 : 0;
    int al = align_of(x);
    int cand[6] = {align_of(w), align_of(y), bias ? align_of(bias) : 256, align_of_bytes(ldx * (int64_t)ei),
                   align_of_bytes(ldy * (int64_t)eo), align_of_bytes(K * (int64_t)ei)};
    for (int i = 0; i < 6; i++) al = cand[i] < al ? cand[i] : al;
    key.align = al;
    cuda_gemm_plan_t *p = NULL;
    int rc = plan_get(cb, &key, &p, err);
    if (rc) return rc;
    // deterministic mode: the shape's algorithm, unless the shape has moved to the plain kernel since
    if (p->have_algo && (p->det_idx < 0 || cb->det_shapes[p->det_idx].have_algo)) {
      if (bias)
        ES_CUBLAS_TRY(err, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                          sizeof bias));
      float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
      ES_CUBLAS_TRY(err, cublasLtMatmul(cb->lt, p->op, &alpha, w, p->lw, x, p->lx, &beta, y, p->ly, y, p->ly,
                                        &p->algo, cb->lt_ws, CUDA_LT_WORKSPACE, cb->stream));
      if (act == ES_ACT_GELU) return cuda_gelu_inplace(cb, y, ldy, M, N, err);
      return ES_OK;
    }
  }
  if (in_dt == ES_DT_BF16)
    return out_dt == ES_DT_BF16
               ? gemm_plain<bf16, bf16>(cb, y, ldy, x, ldx, w, bias, M, N, K, act, accumulate, err)
               : gemm_plain<bf16, float>(cb, y, ldy, x, ldx, w, bias, M, N, K, act, accumulate, err);
  return gemm_plain<float, float>(cb, y, ldy, x, ldx, w, bias, M, N, K, act, accumulate, err);
}

static int overlaps(const void *a, size_t na, const void *b, size_t nb) {
  uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
  return x < y + nb && y < x + na;
}

extern "C" int cuda_op_linear(es_backend_t *be, void *y, int64_t ldy, const void *x, int64_t ldx,
                              const es_weight_t *w, const es_weight_t *bias, int64_t M, es_act_t act, int accumulate,
                              es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  int64_t N = w->n0, K = w->n1;
  size_t e = cuda_act_size(cb);
  if (overlaps(x, (size_t)((M - 1) * ldx + K) * e, y, (size_t)((M - 1) * ldy + N) * e))
    return es_fail(err, ES_EINVAL, "linear: y overlaps x (in-place is not supported)");
  if (w->dtype == ES_DT_FP8E4M3) { /* ---- fp8 weights ---- (cuda_fp8.h: GEMV for decode, else dequantise) */
    // Deterministic mode: one path for every M. The GEMVs (tensor cores for 2 to 64 rows, CUDA cores up to 8) and
    // dequantise + GEMM (larger M) sum a row in different orders, so a row computed in a batch of 32 and of 33
    // would differ — what the mode forbids (backend.h). The dequantise path with the shape's one algorithm (or the
    // plain kernel) is M-invariant.
    if (!be->opts.deterministic && cuda_fp8_mma_ok(cb, x, ldx, w, M)) /* tensor cores (cuda_fp8.h) */
      return cuda_fp8_mma(cb, y, ldy, x, ldx, w, bias, M, act, accumulate, err);
    if (M <= CUDA_FP8_GEMV_MAX_M && !be->opts.deterministic)
      return cuda_fp8_gemv(cb, y, ldy, x, ldx, w, bias, M, act, accumulate, err);
    if ((rc = cuda_fp8_dequant(cb, w, err))) return rc;
    return gemm(cb, y, ldy, be->act_dtype, x, ldx, cb->fp8_scratch, N, K, bias ? bias->data : NULL, M, act,
                accumulate, err);
  }
  return gemm(cb, y, ldy, be->act_dtype, x, ldx, w->data, N, K, bias ? bias->data : NULL, M, act, accumulate, err);
}

extern "C" int cuda_op_linear_silu_mul_ok(const es_backend_t *be, const void *x, int64_t ldx, const es_weight_t *w,
                                          int64_t M) {
  const cuda_backend_t *cb = (const cuda_backend_t *)be;
  if (w->dtype == ES_DT_FP8E4M3) return cuda_fp8_glu_ok(cb, x, ldx, w, M);
  return w->dtype == be->act_dtype && cuda_gemv_glu_ok(cb, x, ldx, w->data, w->n0, w->n1, M);
}

extern "C" int cuda_op_linear_silu_mul(es_backend_t *be, void *y, const void *x, int64_t ldx, const es_weight_t *w,
                                       int64_t M, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  const int64_t ldy = w->n0 / 2; // y contiguous (backend.h)
  if (w->dtype == ES_DT_FP8E4M3) return cuda_fp8_glu(cb, y, ldy, x, ldx, w, M, err);
  return cuda_gemv_glu(cb, y, ldy, x, ldx, w->data, w->n0, w->n1, M, err);
}

extern "C" int cuda_op_linear_rms_norm_ok(const es_backend_t *be, const void *y, const void *residual, const void *o,
                                          const void *x, int64_t ldx, const es_weight_t *w,
                                          const es_weight_t *norm_weight, int64_t M) {
  const cuda_backend_t *cb = (const cuda_backend_t *)be;
  if (norm_weight->dtype != be->act_dtype) return 0;
  if (w->dtype == ES_DT_FP8E4M3) return cuda_fp8_norm_ok(cb, y, residual, o, x, ldx, w, norm_weight, M);
  return w->dtype == be->act_dtype &&
         cuda_gemv_norm_ok(cb, y, residual, o, x, ldx, w->data, norm_weight->data, w->n0, w->n1, M);
}

extern "C" int cuda_op_linear_rms_norm(es_backend_t *be, void *y, void *residual, void *o, const void *x, int64_t ldx,
                                       const es_weight_t *w, const es_weight_t *norm_weight, int64_t M, float eps,
                                       es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  if (w->dtype == ES_DT_FP8E4M3) return cuda_fp8_norm(cb, y, residual, o, x, ldx, w, norm_weight, M, eps, err);
  return cuda_gemv_norm(cb, y, residual, o, x, ldx, w->data, norm_weight->data, w->n0, w->n1, M, eps, err);
}

extern "C" int cuda_op_linear_rope_kv_store_ok(const es_backend_t *be, const void *x, int64_t ldx, const es_weight_t *w,
                                               const es_weight_t *bias, int H, int D) {
  const cuda_backend_t *cb = (const cuda_backend_t *)be;
  if ((bias && bias->dtype != be->act_dtype) || D > 512) return 0; // D > 512: the RoPE kernel refuses it too
  if (w->dtype == ES_DT_FP8E4M3) return cuda_fp8_rope_ok(cb, x, ldx, w, be->batch.n_tokens, H, D);
  return w->dtype == be->act_dtype &&
         cuda_gemv_rope_ok(cb, x, ldx, w->data, bias ? bias->data : NULL, w->n0, w->n1, be->batch.n_tokens, H, D);
}

extern "C" int cuda_op_linear_rope_kv_store(es_backend_t *be, int layer, void *qkv, int64_t ldqkv, const void *x,
                                            int64_t ldx, const es_weight_t *w, const es_weight_t *bias, int H, int D,
                                            float theta, es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  (void)ldqkv; // one token: its row of q|k|v only
  const int64_t M = be->batch.n_tokens;
  if (w->dtype == ES_DT_FP8E4M3) return cuda_fp8_rope(cb, layer, qkv, x, ldx, w, bias, M, H, D, theta, err);
  return cuda_gemv_rope(cb, layer, qkv, x, ldx, w->data, bias ? bias->data : NULL, w->n0, w->n1, M, H, D, theta, err);
}

extern "C" int cuda_op_logits(es_backend_t *be, float *logits, const void *x, const es_weight_t *w, int64_t M,
                              es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  int64_t V = w->n0, C = w->n1;
  if (overlaps(x, (size_t)(M * C) * cuda_act_size(cb), logits, (size_t)(M * V) * sizeof(float)))
    return es_fail(err, ES_EINVAL, "logits: output overlaps x");
  return gemm(cb, logits, V, ES_DT_F32, x, C, w->data, V, C, NULL, M, ES_ACT_NONE, 0, err);
}

// ---- conv1d: im2col into the fixed scratch, in row chunks, then the GEMM ----------------------------------

// col (cnt, C_in·kernel): row r = output row r0 + r (b = row / T_out, t = row % T_out), column ci·kernel + j
// holds x[b, t·stride + j − pad, ci] (0 in the padding) — the order of PyTorch's [C_out, C_in, kernel] weight.
template <typename T>
__global__ void im2col_kernel(T *col, const T *x, int64_t r0, int64_t cnt, int64_t T_in, int64_t T_out,
                              int64_t C_in, int kernel, int stride, int pad) {
  int64_t K = C_in * kernel;
  GRID_STRIDE(i, cnt * K) {
    int64_t r = r0 + i / K, c = i % K, ci = c / kernel, b = r / T_out, t = r % T_out;
    int64_t ti = t * stride + (c % kernel) - pad;
    col[i] = (ti >= 0 && ti < T_in) ? x[(b * T_in + ti) * C_in + ci] : from_f<T>(0.0f);
  }
}

template <typename T>
static int im2col(cuda_backend_t *cb, const void *x, int64_t r0, int64_t cnt, int64_t T_in, int64_t T_out,
                  int64_t C_in, int kernel, int stride, int pad, es_error_t *err) {
  im2col_kernel<T><<<cuda_grid_1d(cnt * C_in * kernel), 256, 0, cb->stream>>>((T *)cb->im2col, (const T *)x, r0, cnt,
                                                                             T_in, T_out, C_in, kernel, stride, pad);
  ES_CUDA_LAUNCHED(err);
  return ES_OK;
}

extern "C" int cuda_op_conv1d(es_backend_t *be, void *y, const void *x, const es_weight_t *w, const es_weight_t *bias,
                              int64_t B, int64_t T_in, int64_t C_in, int kernel, int stride, int pad, es_act_t act,
                              es_error_t *err) {
  cuda_backend_t *cb = cuda_be(be);
  int rc = cuda_enter(cb, err);
  if (rc) return rc;
  int64_t T_out = (T_in + 2 * pad - kernel) / stride + 1, N = w->n0, K = w->n1, rows = B * T_out;
  size_t e = cuda_act_size(cb);
  if (overlaps(x, (size_t)(B * T_in * C_in) * e, y, (size_t)(rows * N) * e))
    return es_fail(err, ES_EINVAL, "conv1d: y overlaps x");
  int64_t chunk = (int64_t)(CUDA_IM2COL_BYTES / ((size_t)K * e));
  if (chunk < 1)
    return es_fail(err, ES_EUNSUPPORTED, "conv1d: one im2col row of %lld values exceeds the %u-byte scratch",
                   (long long)K, CUDA_IM2COL_BYTES);
  if (chunk > 16) chunk = chunk / 16 * 16;
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
    int64_t cnt = rows - r0 < chunk ? rows - r0 : chunk;
    rc = CUDA_DISPATCH(cb, im2col, cb, x, r0, cnt, T_in, T_out, C_in, kernel, stride, pad, err);
    if (!rc)
      rc = gemm(cb, (char *)y + (size_t)(r0 * N) * e, N, be->act_dtype, cb->im2col, K, w->data, N, K,
                bias ? bias->data : NULL, cnt, act, 0, err);
    if (rc) return rc;
  }
  return ES_OK;
}

// ---- hooks -----------------------------------------------------------------------------------------------

extern "C" int cuda_backend_set_gemm_path(es_backend_t *be, cuda_gemm_path_t path, es_error_t *err) {
  cuda_backend_t *cb = cuda_hook_backend(be, "GEMM path", err);
  if (!cb) return ES_EINVAL;
  if (path != CUDA_GEMM_AUTO && path != CUDA_GEMM_PLAIN) return es_fail(err, ES_EINVAL, "GEMM path %d", (int)path);
  int rc = cuda_hook_change(cb, "GEMM path", cb->gemm_path != path, err);
  if (rc) return rc;
  cb->gemm_path = path;
  return ES_OK;
}

extern "C" void cuda_backend_gemm_stats(const es_backend_t *be, int *plans, int *fallbacks) {
  const cuda_backend_t *cb = (const cuda_backend_t *)be;
  *plans = *fallbacks = 0;
  for (int i = 0; i < CUDA_GEMM_CACHE; i++)
    if (cb->plans[i].used) {
      (*plans)++;
      if (!cb->plans[i].have_algo) (*fallbacks)++;
    }
}

extern "C" void cuda_backend_det_stats(const es_backend_t *be, int *shapes, int *plain_shapes, int64_t *switched) {
  const cuda_backend_t *cb = (const cuda_backend_t *)be;
  *shapes = cb->n_det_shapes;
  *plain_shapes = 0;
  for (int i = 0; i < cb->n_det_shapes; i++) *plain_shapes += !cb->det_shapes[i].have_algo;
  *switched = cb->det_switched;
}
