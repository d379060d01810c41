/* kernel_test: helpers shared by the backend op tests — a seeded RNG, bf16/fp16 rounding done
 * independently of the backend, NaN poisoning, tolerance checks against double-precision references
 * that print the first mismatches, and backend set-up.
 * Header-only (static functions); include after test_util.h.
 */
#pragma once

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "test_util.h"

static uint64_t kt_seed = 0x9e3779b97f4a7c15ull;

static inline uint64_t kt_next(void) { /* splitmix64 */
  uint64_t z = (kt_seed += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static inline float kt_uniform(float lo, float hi) {
  return lo + (hi - lo) * (float)((kt_next() >> 40) * 0x1p-24);
}
static inline int kt_int(int n) {
  return (int)(kt_next() % (uint64_t)n);
}

static inline void kt_fill(float *x, int64_t n, float lo, float hi) {
  for (int64_t i = 0; i < n; i++) x[i] = kt_uniform(lo, hi);
}

static inline void kt_poison(float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) x[i] = NAN;
}

/* bf16 with round-to-nearest-even (finite inputs). */
static inline uint16_t kt_to_bf16(float f, float *rounded) {
  uint32_t b;
  memcpy(&b, &f, 4);
  b += 0x7fffu + ((b >> 16) & 1u);
  uint16_t h = (uint16_t)(b >> 16);
  uint32_t back = (uint32_t)h << 16;
  memcpy(rounded, &back, 4);
  return h;
}

/* The float a bf16 bit pattern holds (exactly), and f rounded to bf16 as bits. */
static inline float kt_bf16_value(uint16_t h) {
  uint32_t b = (uint32_t)h << 16;
  float f;
  memcpy(&f, &b, 4);
  return f;
}
static inline uint16_t kt_bf16_bits(float f) {
  float r;
  return kt_to_bf16(f, &r);
}

/* Half e (0: the low 16 bits) of a 32-bit register of two 16-bit values, and two halves packed into one (lo in the
 * low bits) — the register view of the mma fragment emulations. */
static inline uint16_t kt_half(uint32_t r, int e) {
  return (uint16_t)(e ? r >> 16 : r & 0xffffu);
}
static inline uint32_t kt_pack2(uint16_t lo, uint16_t hi) {
  return (uint32_t)lo | (uint32_t)hi << 16;
}

/* IEEE half with round-to-nearest-even (|f| < 65504); the rounded value is computed from the fields. */
static inline uint16_t kt_to_f16(float f, float *rounded) {
  uint16_t sign = signbit(f) ? 0x8000 : 0;
  float a = fabsf(f);
  if (a < 0x1p-14f) { /* subnormal, quantum 2^-24; m == 1024 encodes the smallest normal */
    uint32_t m = (uint32_t)lrintf(a * 0x1p24f);
    *rounded = (sign ? -1.0f : 1.0f) * ldexpf((float)m, -24);
    return (uint16_t)(sign | m);
  }
  int e;
  frexpf(a, &e);                                    /* a in [2^(e-1), 2^e) */
  uint32_t m = (uint32_t)lrintf(ldexpf(a, 11 - e)); /* in [1024, 2048] */
  int E = e - 1 + 15;
  if (m == 2048) {
    m = 1024;
    E++;
  }
  *rounded = (sign ? -1.0f : 1.0f) * ldexpf((float)m, E - 15 - 10);
  return (uint16_t)(sign | (uint32_t)E << 10 | (m - 1024));
}

/* A random weight of n values in dtype dt: host holds what is uploaded, val the same values as float. */
typedef struct {
  void *host;
  float *val;
  es_dtype_t dt;
  int64_t n0, n1;
} kt_weight_t;

static inline kt_weight_t kt_weight(es_dtype_t dt, int64_t n0, int64_t n1, float lo, float hi) {
  kt_weight_t w = {NULL, malloc(sizeof(float) * (size_t)(n0 * n1)), dt, n0, n1};
  w.host = malloc(es_dtype_size(dt) * (size_t)(n0 * n1));
  for (int64_t i = 0; i < n0 * n1; i++) {
    float f = kt_uniform(lo, hi);
    if (dt == ES_DT_F32)
      ((float *)w.host)[i] = w.val[i] = f;
    else if (dt == ES_DT_BF16)
      ((uint16_t *)w.host)[i] = kt_to_bf16(f, &w.val[i]);
    else
      ((uint16_t *)w.host)[i] = kt_to_f16(f, &w.val[i]);
  }
  return w;
}

static inline void kt_weight_free(kt_weight_t *w) {
  free(w->host);
  free(w->val);
  w->host = w->val = NULL;
}

static inline es_weight_t kt_upload(es_backend_t *be, const kt_weight_t *w) {
  es_weight_t out = {0};
  es_error_t err;
  int rc = es_backend_upload_weight(be, w->host, w->dt, w->n0, w->n1, &out, &err);
  T_CHECK(rc == 0, "upload: %s", err.msg);
  return out;
}

/* Compares got[n] with ref[n]: |got - ref| <= atol + rtol·|ref| (+ tol[i] when tol != NULL). NaN fails.
 * Prints the first mismatches; returns the number of mismatches and counts one check. */
static inline int kt_close(const char *what, const float *got, const double *ref, const double *tol, int64_t n,
                           double atol, double rtol) {
  int bad = 0;
  double worst = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = fabs((double)got[i] - ref[i]), lim = atol + rtol * fabs(ref[i]) + (tol ? tol[i] : 0.0);
    if (!(d <= lim)) {
      if (bad < 5)
        fprintf(stderr, "  %s [%lld]: got %.9g, ref %.9g (|diff| %.3g > %.3g)\n", what, (long long)i, (double)got[i],
                ref[i], d, lim);
      bad++;
    }
    if (d > worst) worst = d;
  }
  T_CHECK(bad == 0, "%s: %d of %lld values outside tolerance (worst |diff| %.3g)", what, bad, (long long)n, worst);
  return bad;
}

static inline es_backend_t *kt_backend(int n_threads, size_t max_tokens, size_t max_seqs, size_t max_blocks) {
  es_backend_opts_t o = {.compute_dtype = ES_DT_F32,
                         .n_threads = n_threads,
                         .max_tokens = max_tokens,
                         .max_seqs = max_seqs,
                         .max_blocks = max_blocks};
  es_backend_t *be = NULL;
  es_error_t err;
  int rc = es_backend_create_cpu(&o, &be, &err);
  T_CHECK(rc == 0, "create cpu backend: %s", err.msg);
  return rc ? NULL : be;
}

/* An activation buffer on the backend holding n floats from host (or poisoned when host is NULL). */
static inline void *kt_act(es_backend_t *be, const float *host, int64_t n) {
  void *p = NULL;
  es_error_t err;
  int rc = es_backend_alloc(be, sizeof(float) * (size_t)n, &p, &err);
  T_CHECK(rc == 0, "alloc: %s", err.msg);
  if (rc) return NULL;
  float *tmp = malloc(sizeof(float) * (size_t)n);
  if (host)
    memcpy(tmp, host, sizeof(float) * (size_t)n);
  else
    kt_poison(tmp, n);
  es_backend_write_act(be, p, tmp, (size_t)n, &err);
  free(tmp);
  return p;
}

static inline float *kt_read(es_backend_t *be, const void *dev, int64_t n) {
  float *h = malloc(sizeof(float) * (size_t)n);
  es_error_t err;
  int rc = es_backend_read_act(be, h, dev, (size_t)n, &err);
  T_CHECK(rc == 0, "read_act: %s", err.msg);
  return h;
}

static inline const char *kt_dt(es_dtype_t dt) {
  return es_dtype_name(dt);
}

/* ---- a step's batch description, built from per-sequence lengths ----------------------------------------- */

#define KT_MAX_SEQS 64
#define KT_MAX_TOKENS 512
#define KT_MAX_BLOCKS 64

typedef struct {
  es_batch_t b;
  int32_t q_start[KT_MAX_SEQS + 1], ctx[KT_MAX_SEQS], pos[KT_MAX_TOKENS], slot[KT_MAX_TOKENS];
  int32_t table[KT_MAX_SEQS * KT_MAX_BLOCKS];
} kt_batch_t;

/* The rest of a step's description over caller-owned arrays, once the block tables are filled: sequence s
 * has q_len[s] new tokens and context ctx_len[s], its j-th block in table[s * max_blocks + j]. Fills q_start
 * [n_seqs + 1], ctx [n_seqs], pos and slot [rows] and *b (pointing at them); returns the rows. For tests whose
 * capacities differ from kt_batch_t's. */
static inline int32_t kt_batch_rows(es_batch_t *b, int32_t *q_start, int32_t *ctx, int32_t *pos, int32_t *slot,
                                    const int32_t *table, int max_blocks, int n_seqs, const int32_t *q_len,
                                    const int32_t *ctx_len) {
  int32_t row = 0;
  for (int s = 0; s < n_seqs; s++) {
    q_start[s] = row;
    ctx[s] = ctx_len[s];
    for (int32_t i = 0; i < q_len[s]; i++, row++) {
      int32_t p = ctx_len[s] - q_len[s] + i;
      pos[row] = p;
      slot[row] = table[s * max_blocks + p / ES_KV_BLOCK] * ES_KV_BLOCK + p % ES_KV_BLOCK;
    }
  }
  q_start[n_seqs] = row;
  *b = (es_batch_t){.n_seqs = n_seqs,
                    .n_tokens = row,
                    .q_start = q_start,
                    .ctx_len = ctx,
                    .positions = pos,
                    .slot = slot,
                    .block_table = table,
                    .max_blocks = max_blocks};
  return row;
}

/* Sequence s has q_len[s] new tokens and context ctx_len[s]; tables[s * max_blocks + j] is its j-th block. */
static inline void kt_batch_tables(kt_batch_t *kb, int n_seqs, const int32_t *q_len, const int32_t *ctx_len,
                                   int max_blocks, const int32_t *tables) {
  memset(kb, 0, sizeof *kb);
  memcpy(kb->table, tables, sizeof(int32_t) * (size_t)(n_seqs * max_blocks));
  kt_batch_rows(&kb->b, kb->q_start, kb->ctx, kb->pos, kb->slot, kb->table, max_blocks, n_seqs, q_len, ctx_len);
}

/* As kt_batch_tables, the blocks taken in turn from `order` (a shuffled list of pool ids) from *next. */
static inline void kt_batch(kt_batch_t *kb, int n_seqs, const int32_t *q_len, const int32_t *ctx_len, int max_blocks,
                            const int32_t *order, int *next) {
  static int32_t tables[KT_MAX_SEQS * KT_MAX_BLOCKS];
  memset(tables, 0, sizeof tables);
  for (int s = 0; s < n_seqs; s++)
    for (int j = 0; j < (ctx_len[s] + ES_KV_BLOCK - 1) / ES_KV_BLOCK; j++)
      tables[s * max_blocks + j] = order[(*next)++];
  kt_batch_tables(kb, n_seqs, q_len, ctx_len, max_blocks, tables);
}

/* order[0..n-2] = a random permutation of the block ids 1..n-1 (block 0 is the scratch block). */
static inline void kt_shuffled_blocks(int32_t *order, int n_blocks) {
  for (int i = 0; i < n_blocks - 1; i++) order[i] = i + 1;
  for (int i = n_blocks - 2; i > 0; i--) {
    int j = kt_int(i + 1);
    int32_t t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
}

/* Index of the stored row (cache position `off` of (layer, block, kv, head)) among all rows of the pool layout
 * of backend.h, kv[L][n_blocks][2][H][16][D]: the row's D values start at D times it; in an fp8 KV cache it is
 * also the index of the row's scale. */
static inline size_t kt_kv_row(int n_blocks, int H, int layer, int32_t block, int kv, int h, int off) {
  size_t tile = (((size_t)layer * (size_t)n_blocks + (size_t)block) * 2 + (size_t)kv) * (size_t)H + (size_t)h;
  return tile * ES_KV_BLOCK + (size_t)off;
}

/* Address of that row in an fp32 pool. */
static inline float *kt_kv_at(float *pool, int n_blocks, int H, int D, int layer, int32_t block, int kv, int h,
                              int off) {
  return pool + kt_kv_row(n_blocks, H, layer, block, kv, h, off) * (size_t)D;
}
