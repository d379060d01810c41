/* sample_math: the arithmetic of token sampling, written once for the host sampler (model/sampler.c), the
 * CPU backend's sample op (kernels/cpu/cpu_sample.c) and the CUDA sample kernel (kernels/cuda/cuda_sample.cu),
 * so that all three compute the same bits and CI tests it on the CPU (tests/kernels/test_sample_math.c).
 *
 * Compiled by nvcc every function is __host__ __device__ inline; compiled as C11 it is static inline. Pure
 * functions of their arguments: no state, thread-safe.
 *
 * What lives here:
 *   - Philox4x32-10 and the uniform a request with seed s draws for generated token t (the stream contract of
 *     model/sampler.h: key = s, counter = {t lo, t hi, SMK_STREAM_TOKEN, 0}, 53 bits of words 0 and 1);
 *   - the penalty formula for one logit (transformers' repetition penalty, then OpenAI/vLLM presence and
 *     frequency over generated counts);
 *   - exp(x) for x <= 0 as a fixed sequence of fp32 operations (Cephes' expf), so the host and the device get
 *     the same weight bits (the CUDA file is compiled with --fmad=false and the C files without contraction);
 *   - the monotone float -> uint32 key map (for radix selection on logits) and the fixed-point mass of a weight
 *     (for radix selection on probability mass: integer sums are exact and associative, so a histogram filled
 *     by atomics in any order gives the same answer as a serial loop);
 *   - the digit-selection step of an MSB-first radix select over 256 bins.
 *
 * ref: Salmon et al., "Parallel random numbers: as easy as 1, 2, 3" (SC'11) and Random123 philox.h for the
 *      round function and constants; Cephes expf; transformers RepetitionPenaltyLogitsProcessor; vLLM
 *      apply_penalties; the radix select is the textbook MSB-first one (as in PyTorch's topk kernel).
 */
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define SMK_HD __host__ __device__ inline
#else
#define SMK_HD static inline
#endif

/* Philox counter word 2: which draw of a step this is. Only token draws exist (model/sampler.h contract). */
#define SMK_STREAM_TOKEN 0u

/* A temperature below this samples greedily (vLLM's _SAMPLING_EPS; model/sampler.h SMP_GREEDY_EPS). */
#define SMK_GREEDY_EPS 1e-5

/* Weights below exp(-87) ~ 1.6e-38 (relative to the most probable id) are 0: even all V of them together are
 * far below what an fp32 probability resolves, and it keeps the result a normal float. */
#define SMK_EXP_FLOOR (-87.0f)

/* Fixed-point mass: a weight w in [0, 1] counts as floor(w * 2^SMK_FX_SHIFT). With V <= SMK_MAX_VOCAB the sum
 * of a whole row stays below 2^63. The truncation is below 2^-43 per id (V * 2^-43 < 1.2e-7 of the max
 * weight over a whole row), far under the 1e-5 the probabilities are compared at. */
#define SMK_FX_SHIFT 43
#define SMK_MAX_VOCAB (1 << 20)

/* ---- bit casts ---------------------------------------------------------------------------------------- */

SMK_HD uint32_t smk_f2u(float x) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(x);
#else
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  return u;
#endif
}

SMK_HD float smk_u2f(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
#endif
}

/* ---- the random stream -------------------------------------------------------------------------------- */

SMK_HD void smk_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
  uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
  uint32_t k0 = key[0], k1 = key[1];
  for (int r = 0; r < 10; r++) {
    if (r > 0) { /* the key schedule bumps by the Weyl constants before every round but the first */
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    uint64_t p0 = (uint64_t)0xD2511F53u * c0;
    uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
    uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
    c0 = n0;
    c1 = (uint32_t)p1;
    c2 = n2;
    c3 = (uint32_t)p0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

/* The uniform in [0, 1) (53 bits) a request with this seed draws for generated token step. */
SMK_HD double smk_uniform(uint64_t seed, uint64_t step) {
  uint32_t ctr[4] = {(uint32_t)step, (uint32_t)(step >> 32), SMK_STREAM_TOKEN, 0};
  uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  uint32_t out[4];
  smk_philox4x32_10(ctr, key, out);
  uint64_t bits = (((uint64_t)out[0] << 32) | out[1]) >> 11;
  return (double)bits * (1.0 / 9007199254740992.0); /* 2^-53 */
}

/* ---- one logit ---------------------------------------------------------------------------------------- */

/* NaN counts as -inf everywhere in the sampler (it never compares greater than anything). */
SMK_HD float smk_canon(float l) {
  return l == l ? l : -INFINITY;
}

/* The penalties for one logit l of an id that was seen (in the prompt or generated; unseen ids are not
 * penalised) and generated gen_count times. transformers RepetitionPenaltyLogitsProcessor:
 * torch.where(score < 0, score * p, score / p); then vLLM apply_penalties: logits -= frequency * counts,
 * logits -= presence * (counts > 0). The operations and their order are the host sampler's (sampler.c). */
SMK_HD float smk_penalize(float l, int seen, int32_t gen_count, float rep, float presence, float frequency) {
  if (!seen) return l;
  if (rep != 1.0f) l = l < 0.0f ? l * rep : l / rep;
  if (gen_count > 0) {
    l -= frequency * (float)gen_count;
    l -= presence;
  }
  return l;
}

/* 1/T as the host sampler computes it: in double, rounded once to fp32. */
SMK_HD float smk_inv_temperature(double t) {
  return (float)(1.0 / t);
}

/* exp(x) for x <= 0; 0 below SMK_EXP_FLOOR and for NaN. Cephes' expf (range reduction by ln 2 split in two,
 * degree-6 polynomial; within 1e-7 relative of exp), branch-free so the host loop vectorises. Every operation
 * is a separately rounded fp32 operation: compile without contraction into FMA (C: -std=c11 implies
 * -ffp-contract=off in GCC; CUDA: --fmad=false for the files that call it). */
SMK_HD float smk_exp_neg(float x) {
  float xc = x > SMK_EXP_FLOOR ? x : SMK_EXP_FLOOR;  /* NaN -> floor */
  float k = xc * 1.44269504088896341f + 12582912.0f; /* round to nearest: 1.5 * 2^23 */
  k -= 12582912.0f;
  float r = xc - k * 0.693359375f - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = p * r * r + r + 1.0f;
  int32_t bits = ((int32_t)k + 127) << 23; /* k in [-126, 0]: a normal power of two */
  float res = y * smk_u2f((uint32_t)bits);
  uint32_t rb = smk_f2u(res) & (0u - (uint32_t)(x > SMK_EXP_FLOOR)); /* 0 below the floor and for NaN */
  return smk_u2f(rb);
}

/* The unnormalised tempered probability of a logit l: exp((l - m) / T), 1 at the max m. */
SMK_HD float smk_weight(float l, float m, float inv_t) {
  return smk_exp_neg((l - m) * inv_t);
}

/* ---- keys for radix selection ------------------------------------------------------------------------- */

/* A monotone map float -> uint32: a < b (as floats) <=> key(a) < key(b). -0 maps to the key of +0, because
 * the host sampler compares floats (-0 == +0: a tie). Not for NaN (canonicalise first). */
SMK_HD uint32_t smk_key(float x) {
  uint32_t u = smk_f2u(x);
  if (u == 0x80000000u) u = 0;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* The fixed-point mass of a weight w in [0, 1] (see SMK_FX_SHIFT). w * 2^43 is exact in fp32 (a power-of-two
 * scale of a value <= 1); the conversion truncates. */
SMK_HD uint64_t smk_fx(float w) {
  return (uint64_t)(w * 8796093022208.0f); /* 2^43 */
}

/* The byte of key that pass p (0 = most significant) of an MSB-first radix select histograms, and the mask
 * of the bytes decided by the passes before it. */
SMK_HD uint32_t smk_digit(uint32_t key, int pass) {
  return (key >> (24 - 8 * pass)) & 255u;
}
SMK_HD uint32_t smk_prefix_mask(int pass) {
  return pass == 0 ? 0u : 0xFFFFFFFFu << (32 - 8 * pass);
}

/* One digit of an MSB-first radix select "from the top": hist[b] is the count (or the fixed-point mass) of the
 * candidates whose current digit is b (among those matching the digits already chosen), target >= 1 the
 * amount still wanted from the top of this group. Walks the bins hi-1 down to lo with acc (what the bins
 * above hi already hold) and returns the first bin b at which acc + hist[b] >= target, with *above = the
 * amount in the bins above b (acc before adding hist[b]). Returns -1 (and *above = the final acc) when the
 * bins run out first. The serial select calls it with (255+1, 0, 0); the CUDA kernel lets each lane of a warp
 * own 8 bins and calls it on the one lane whose range holds the boundary, with that lane's acc. */
SMK_HD int smk_select_bins(const uint64_t *hist, int hi, int lo, uint64_t acc, uint64_t target, uint64_t *above) {
  for (int b = hi - 1; b >= lo; b--) {
    if (acc + hist[b] >= target) {
      *above = acc;
      return b;
    }
    acc += hist[b];
  }
  *above = acc;
  return -1;
}

/* ---- the filters and the parallel decomposition ---------------------------------------------------------- */

/* The argmax order: (v2, i2) beats (v, i) when v2 is larger, or equal with the lower id (first index on ties,
 * as the serial `l > m` scan). A total order on (value, id) for non-NaN values (-0 == +0 is a tie), so a
 * reduction in any shape (the CUDA kernel: strided per thread, then warp butterflies) picks the serial id. */
SMK_HD int smk_argmax_better(float v2, int32_t i2, float v, int32_t i) {
  return v2 > v || (v2 == v && i2 < i);
}

/* The contiguous ids [*c0, *c1) that thread t of n_threads owns in the id-ordered steps (top-p's tie cut, the
 * draw): ceil(V / n_threads) ids each, in thread order, so that a scan over the threads is a scan over the ids
 * in ascending order; every id in [0, V) belongs to exactly one thread, threads past the end own nothing. */
SMK_HD void smk_chunk(int V, int n_threads, int t, int *c0, int *c1) {
  const int64_t chunk = ((int64_t)V + n_threads - 1) / n_threads;
  const int64_t a = (int64_t)t * chunk, b = a + chunk;
  *c0 = (int)(a < V ? a : V);
  *c1 = (int)(b < V ? b : V);
}

/* Whether the chunk whose items (count or fixed-point mass) start at start (the exclusive scan of the chunks
 * before it) and sum to amount holds item rank r (0-based): the one chunk that walks its ids to find it. */
SMK_HD int smk_chunk_holds(uint64_t start, uint64_t amount, uint64_t r) {
  return start <= r && r - start < amount;
}

/* Kept by top-k (and finite): kstar is the key of the k-th largest finite logit when top-k is on. */
SMK_HD int smk_kept_topk(float l, int topk_on, uint32_t kstar) {
  return l > -INFINITY && (!topk_on || smk_key(l) >= kstar);
}

/* The outcome of the filters of one row: an id is kept when top-k keeps it, top-p keeps it (weight bits above
 * the threshold W*, or tied at W* with an id <= cut), and min-p keeps it. */
typedef struct {
  int topk_on;
  uint32_t kstar; /* top-k: the key of the k-th largest finite logit */
  int topp_on;
  uint32_t wstar; /* top-p: the bits of the threshold weight W* */
  int64_t cut;    /* top-p: the last id kept among the ties at W* (-1 when top-p is off) */
  int minp_on;
  float min_p;
} smk_filter_t;

/* Kept by every filter: id i with (canonical, penalised) logit l and weight w = smk_weight(l, max, 1/T). */
SMK_HD int smk_kept(const smk_filter_t *f, int64_t i, float l, float w) {
  const uint32_t u = smk_f2u(w);
  return smk_kept_topk(l, f->topk_on, f->kstar) && (!f->topp_on || u > f->wstar || (u == f->wstar && i <= f->cut)) &&
         (!f->minp_on || w >= f->min_p);
}

/* top-p: the fixed-point amount of mass the nucleus must reach: ceil(top_p * total), in [1, total]. The
 * nucleus is the minimal prefix of the ranking (weight descending, id ascending) whose mass is >= it. */
SMK_HD uint64_t smk_top_p_target(float top_p, uint64_t total) {
  double t = (double)top_p * (double)total;
  uint64_t T = (uint64_t)t;
  if ((double)T < t) T++;
  if (T < 1) T = 1;
  if (T > total) T = total;
  return T;
}

/* How many of the ids tied at the nucleus' threshold weight (fixed point w_fx > 0) are kept, lowest ids first:
 * the fewest that bring the mass above the threshold (above < target) to target. */
SMK_HD uint64_t smk_ties_kept(uint64_t target, uint64_t above, uint64_t w_fx) {
  return (target - above + w_fx - 1) / w_fx;
}

/* The inverse-CDF draw's target in fixed point: floor(u * mass), below mass (> 0), so that the walk over the
 * kept ids in id order always ends at the first id whose running mass exceeds it. */
SMK_HD uint64_t smk_draw_target(double u, uint64_t mass) {
  double t = u * (double)mass;
  uint64_t r = t >= (double)mass ? mass - 1 : (uint64_t)t;
  return r < mass ? r : mass - 1;
}
