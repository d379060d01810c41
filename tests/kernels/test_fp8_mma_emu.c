/* test_fp8_mma_emu: the tensor-core fp8 GEMV (kernels/cuda/cuda_fp8_mma.cu) emulated block by block on the CPU,
 * with the index and scaling helpers the kernel uses (kernels/cuda/fp8_mma_math.h), so that a fragment, column
 * permutation, split or epilogue-index mistake fails in CI, where no GPU exists.
 *
 * The hardware is modelled from the PTX ISA's table "Matrix Fragments for mma.m16n8k16 with floating point type"
 * (the same for .f16 and .bf16), independently of the helpers: lane 4g + t holds A elements (row g + 8·(r & 1),
 * columns 2t + 8·(r >> 1) + e) in register r, B elements (rows 2t + 8r + e, column g) in register r, C floats
 * (row g + 8·(i >> 1), column 2t + (i & 1)). The emulated mma rebuilds A and B from the 32 lanes, checking that each
 * element is held by exactly one lane.
 *   - step: one super step of one warp — the kernel's loads (16 codes of rows g, g + 8 and 16 activations of row g
 *     at columns 16t ..), its pairing of codes into A registers and of activations into B registers for the 4
 *     mma steps — gives exactly Σ_k w[n][k] · x[m][k] over the 64 columns, for every M up to 8.
 *   - block: the whole kernel for one block (8 warps over every 8th super step, the per-row power-of-two scaling
 *     of x from each warp's largest |x|, the partials scaled back, summed in warp order by the epilogue threads
 *     through fp8m_out) for M = 1, 3, 8, N not a multiple of 16, K of 1 .. 33 super steps, against the exact
 *     sum; for 9, 27 and 64 rows the same per n-tile of 8 rows (which checks the tile count and the tiles'
 *     placement; the kernel's own n-tile indexing is checked on the GPU, test_cuda_fp8).
 *   - scale: fp8m_x_scale_exp puts a row's largest |x| into [2^14, 2^15), and 2^e · 2^−e == 1, over 300 binades
 *     and for 0, subnormals, inf and NaN.
 *   - out: the epilogue's 128 threads cover the 16 × 8 outputs once each, at the lane and float the C table says.
 *   - absmax: the pre-pass's largest |x| over bf16 bit patterns (two per word) equals the largest |x| by value,
 *     including −0, subnormals, inf (and NaN above everything).
 * Not covered (GPU only): the hardware, the f16 rounding of x·2^e (exact here: small integers), timing.
 */
#include <math.h>

#include "kernel_test.h"

#include "cuda/fp8_mma_math.h"
#include "fp8_math.h"

/* ---- the hardware (PTX ISA), not from the helpers ---------------------------------------------------------- */

static void ptx_a(int lane, int r, int e, int *row, int *col) {
  *row = (lane >> 2) + 8 * (r & 1);
  *col = 2 * (lane & 3) + 8 * (r >> 1) + e;
}
static void ptx_b(int lane, int r, int e, int *row, int *col) {
  *row = 2 * (lane & 3) + 8 * r + e;
  *col = lane >> 2;
}
static void ptx_c(int lane, int i, int *row, int *col) {
  *row = (lane >> 2) + 8 * (i >> 1);
  *col = 2 * (lane & 3) + (i & 1);
}

/* a register of two values (low, high), as the emulation carries f16 pairs */
typedef struct {
  double lo, hi;
} pair_t;

/* d[lane][0..3] += A·B from the lanes' a[lane][4], b[lane][2]; 0 when an element is held by no lane or two */
static int emu_mma(double d[32][4], const pair_t a[32][4], const pair_t b[32][2]) {
  double A[16][16], B[16][8];
  int na[16][16] = {{0}}, nb[16][8] = {{0}}, ok = 1;
  for (int lane = 0; lane < 32; lane++)
    for (int e = 0; e < 2; e++) {
      for (int r = 0; r < 4; r++) {
        int row, col;
        ptx_a(lane, r, e, &row, &col);
        A[row][col] = e ? a[lane][r].hi : a[lane][r].lo;
        na[row][col]++;
      }
      for (int r = 0; r < 2; r++) {
        int row, col;
        ptx_b(lane, r, e, &row, &col);
        B[row][col] = e ? b[lane][r].hi : b[lane][r].lo;
        nb[row][col]++;
      }
    }
  for (int r = 0; r < 16; r++)
    for (int c = 0; c < 16; c++) ok &= na[r][c] == 1 && (c >= 8 || nb[r][c] == 1);
  for (int lane = 0; lane < 32; lane++)
    for (int i = 0; i < 4; i++) {
      int row, col;
      ptx_c(lane, i, &row, &col);
      for (int k = 0; k < 16; k++) d[lane][i] += A[row][k] * B[k][col];
    }
  return ok;
}

/* ---- the kernel's side (cuda_fp8_mma.cu, transcribed) --------------------------------------------------------- */

/* The 16 codes at p as the kernel's fp8x16_to_f16x2: h[q] = codes 2q (low), 2q + 1 (high), exact values. */
static void codes_to_pairs(const uint8_t *p, pair_t h[8]) {
  for (int q = 0; q < 8; q++) h[q] = (pair_t){es_fp8_decode(p[2 * q]), es_fp8_decode(p[2 * q + 1])};
}

/* One super step j of one warp: c[lane] += the 4 mma steps over columns 64j .. 64j + 63, x rows scaled by xs[g].
 * w: n_rows × K codes (rows past n_rows are zeros, as the kernel's guarded loads), x: M × K. */
static int warp_super_step(double c[32][4], const uint8_t *w, int n_rows, int64_t K, const float *x, int M,
                           const double *xs, int64_t j) {
  static const uint8_t zero16[16] = {0};
  int ok = 1;
  pair_t hlo[32][8], hhi[32][8];
  double xv[32][16];
  for (int lane = 0; lane < 32; lane++) {
    const int g = lane >> 2, t = lane & 3;
    const int64_t off = j * FP8M_KSTEP + 16 * t;
    codes_to_pairs(g < n_rows ? w + (int64_t)g * K + off : zero16, hlo[lane]);
    codes_to_pairs(g + 8 < n_rows ? w + (int64_t)(g + 8) * K + off : zero16, hhi[lane]);
    for (int i = 0; i < 16; i++) xv[lane][i] = g < M ? x[(int64_t)g * K + off + i] : 0.0;
  }
  for (int s = 0; s < 4; s++) {
    pair_t a[32][4], b[32][2];
    for (int lane = 0; lane < 32; lane++) {
      const int g = lane >> 2, t = lane & 3;
      a[lane][0] = hlo[lane][2 * s], a[lane][1] = hhi[lane][2 * s];
      a[lane][2] = hlo[lane][2 * s + 1], a[lane][3] = hhi[lane][2 * s + 1];
      const double sc = g < M ? xs[g] : 1.0;
      b[lane][0] = (pair_t){xv[lane][4 * s] * sc, xv[lane][4 * s + 1] * sc};
      b[lane][1] = (pair_t){xv[lane][4 * s + 2] * sc, xv[lane][4 * s + 3] * sc};
      /* the helper's statement of the same columns */
      for (int h = 0; h < 2; h++)
        for (int e = 0; e < 2; e++) ok &= fp8m_col(s, t, h, e) == 16 * t + 4 * s + 2 * h + e;
    }
    ok &= emu_mma(c, (const pair_t(*)[4])a, (const pair_t(*)[2])b);
  }
  return ok;
}

static double exact(const uint8_t *w, int64_t K, const float *x, int n, int m) {
  double s = 0;
  for (int64_t k = 0; k < K; k++) s += (double)es_fp8_decode(w[(int64_t)n * K + k]) * x[(int64_t)m * K + k];
  return s;
}

/* small fp8 codes (values -8 .. 8 and halves: exact products with small-integer activations) */
static uint8_t small_code(void) {
  static const float v[] = {0, 1, -1, 2, -2, 0.5f, -0.5f, 3, -3, 4, 8, -6, 1.5f};
  return es_fp8_encode(v[kt_int((int)(sizeof v / sizeof *v))]);
}

static void test_step(void) {
  const int64_t K = 64;
  uint8_t w[16 * 64];
  float x[8 * 64];
  for (int i = 0; i < 16 * 64; i++) w[i] = small_code();
  for (int i = 0; i < 8 * 64; i++) x[i] = (float)(kt_int(9) - 4);
  for (int M = 1; M <= 8; M++) {
    double c[32][4] = {{0}}, xs[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    T_CHECK(warp_super_step(c, w, 16, K, x, M, xs, 0), "step M=%d: a fragment element held by no lane or two", M);
    int bad = 0;
    for (int lane = 0; lane < 32; lane++)
      for (int i = 0; i < 4; i++) {
        int row, col;
        ptx_c(lane, i, &row, &col);
        const double want = col < M ? exact(w, K, x, row, col) : 0.0;
        if (c[lane][i] != want && bad++ < 5)
          fprintf(stderr, "step M=%d: C[%d][%d] = %g, want %g\n", M, row, col, c[lane][i], want);
      }
    T_CHECK(bad == 0, "step M=%d: %d outputs wrong", M, bad);
  }
}

/* The kernel for the block of rows n0 .. n0 + 15 of w (N × K) and one n-tile of up to 8 rows of x (M of them, x
 * pointing at the tile's first row): y[m][n] (row stride ldy) before the scale[n] epilogue. */
static int emu_tile(const uint8_t *w, int64_t N, int64_t K, const float *x, int M, int64_t n0, double *y, int64_t ldy) {
  const int64_t n_ss = K / FP8M_KSTEP;
  const int n_rows = N - n0 < 16 ? (int)(N - n0) : 16;
  double part[FP8M_WARPS][32][4];
  int ok = 1;
  for (int warp = 0; warp < FP8M_WARPS; warp++) {
    /* each row's largest |x| over this warp's super steps, and its scale */
    int ex[8] = {0};
    double xs[8];
    for (int g = 0; g < 8; g++) {
      float amax = 0;
      for (int64_t j = warp; j < n_ss && g < M; j += FP8M_WARPS)
        for (int i = 0; i < 64; i++) amax = fmaxf(amax, fabsf(x[(int64_t)g * K + j * 64 + i]));
      ex[g] = fp8m_x_scale_exp(amax);
      xs[g] = fp8m_pow2(ex[g]);
    }
    double c[32][4] = {{0}};
    for (int64_t j = warp; j < n_ss; j += FP8M_WARPS) ok &= warp_super_step(c, w + n0 * K, n_rows, K, x, M, xs, j);
    for (int lane = 0; lane < 32; lane++) { /* columns 2t, 2t + 1: rows of x 2t, 2t + 1 */
      const int t = lane & 3;
      const double inv0 = fp8m_pow2(-ex[2 * t]), inv1 = fp8m_pow2(-ex[2 * t + 1]);
      part[warp][lane][0] = c[lane][0] * inv0, part[warp][lane][1] = c[lane][1] * inv1;
      part[warp][lane][2] = c[lane][2] * inv0, part[warp][lane][3] = c[lane][3] * inv1;
    }
  }
  for (int tid = 0; tid < FP8M_ROWS * FP8M_MAX_M; tid++) {
    int r, m, src, i;
    fp8m_out(tid, &r, &m, &src, &i);
    if (m >= M || n0 + r >= N) continue;
    double v = 0;
    for (int k = 0; k < FP8M_WARPS; k++) v += part[k][src][i];
    y[(int64_t)m * ldy + n0 + r] = v;
  }
  return ok;
}

/* The kernel's block (rows n0 .. n0 + 15) over all its n-tiles (fp8m_n_tiles(M) of 8 rows of x). */
static int emu_block(const uint8_t *w, int64_t N, int64_t K, const float *x, int M, int64_t n0, double *y) {
  int ok = 1;
  for (int nt = 0; nt < fp8m_n_tiles(M); nt++) {
    const int m_nt = M - 8 * nt < 8 ? M - 8 * nt : 8; /* <= 0: a tile of padding rows, nothing written */
    if (m_nt > 0) ok &= emu_tile(w, N, K, x + (int64_t)8 * nt * K, m_nt, n0, y + (int64_t)8 * nt * N, N);
  }
  return ok;
}

static void test_block(int M, int64_t N, int64_t K, float xmag) {
  uint8_t *w = malloc((size_t)(N * K));
  float *x = malloc(sizeof(float) * (size_t)(M * K));
  double *y = malloc(sizeof(double) * (size_t)(M * N));
  for (int64_t i = 0; i < N * K; i++) w[i] = small_code();
  for (int64_t i = 0; i < M * K; i++) x[i] = xmag * (float)(kt_int(9) - 4); /* xmag a power of two */
  for (int64_t i = 0; i < M * N; i++) y[i] = NAN;
  int ok = 1, bad = 0;
  for (int64_t n0 = 0; n0 < N; n0 += FP8M_ROWS) ok &= emu_block(w, N, K, x, M, n0, y);
  for (int m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) {
      const double want = exact(w, K, x, (int)n, m);
      if (!(y[m * N + n] == want) && bad++ < 5)
        fprintf(stderr, "block M=%d N=%lld K=%lld: y[%d][%lld] = %g, want %g\n", M, (long long)N, (long long)K, m,
                (long long)n, y[m * N + n], want);
    }
  T_CHECK(ok, "block M=%d N=%lld K=%lld: fragment layout", M, (long long)N, (long long)K);
  T_CHECK(bad == 0, "block M=%d N=%lld K=%lld (x scale %g): %d outputs wrong or missing", M, (long long)N, (long long)K,
          (double)xmag, bad);
  free(w);
  free(x);
  free(y);
}

static void test_scale(void) {
  int bad = 0;
  for (int b = -149; b <= 127; b++)
    for (int f = 0; f < 4; f++) {
      const float amax = ldexpf(1.0f + 0.25f * (float)f, b);
      const int e = fp8m_x_scale_exp(amax);
      const double v = (double)amax * ldexp(1.0, e);
      const int normal = fpclassify(amax) == FP_NORMAL;
      const int want_in_range = normal && b + 14 >= -126 && 141 - (b + 127) <= 126; /* not clamped */
      if (e < -126 || e > 126 || (want_in_range && !(v >= 16384.0 && v < 32768.0)) || (!normal && e != 0)) {
        if (bad++ < 5) fprintf(stderr, "scale: amax %g -> e %d (amax·2^e = %g)\n", (double)amax, e, v);
      }
      if ((double)fp8m_pow2(e) * fp8m_pow2(-e) != 1.0 && bad++ < 5) fprintf(stderr, "scale: 2^%d · 2^-%d != 1\n", e, e);
    }
  T_CHECK(fp8m_x_scale_exp(0.0f) == 0, "scale of 0");
  const int ei = fp8m_x_scale_exp(INFINITY), en = fp8m_x_scale_exp(NAN);
  T_CHECK(ei >= -126 && ei <= 126 && en >= -126 && en <= 126, "scale of inf %d, NaN %d: out of range", ei, en);
  T_CHECK(bad == 0, "scale: %d bad exponents", bad);
}

static void test_out(void) {
  int seen[16][8] = {{0}}, bad = 0;
  for (int tid = 0; tid < FP8M_ROWS * FP8M_MAX_M; tid++) {
    int r, m, src, i, row, col;
    fp8m_out(tid, &r, &m, &src, &i);
    ptx_c(src, i, &row, &col);
    if (r < 0 || r >= 16 || m < 0 || m >= 8 || row != r || col != m)
      bad++;
    else
      seen[r][m]++;
  }
  for (int r = 0; r < 16; r++)
    for (int m = 0; m < 8; m++) bad += seen[r][m] != 1;
  T_CHECK(bad == 0, "out: %d outputs missed, repeated or read from the wrong lane", bad);
}

static uint16_t bf16_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return (uint16_t)(u >> 16);
}

static void test_absmax(void) {
  static const float special[] = {0.0f,  -0.0f,    0x1p-130f, -0x1p-133f, 1.0f,
                                  -1.0f, 65504.0f, -3e38f,    INFINITY,   -INFINITY};
  int bad = 0;
  for (int trial = 0; trial < 200; trial++) {
    const int n = 2 * (1 + kt_int(16));
    uint16_t v[34];
    float want = 0.0f;
    for (int i = 0; i < n; i++) {
      float f = trial < 10 ? special[(trial + i) % 10] : ldexpf(kt_uniform(-1, 1), kt_int(60) - 30);
      v[i] = bf16_bits(f);
      uint32_t b = (uint32_t)v[i] << 16;
      memcpy(&f, &b, sizeof f);
      if (fabsf(f) > want) want = fabsf(f);
    }
    uint32_t acc = 0;
    for (int i = 0; i < n; i += 2) acc = fp8m_bf16x2_absmax(acc, (uint32_t)v[i] | (uint32_t)v[i + 1] << 16);
    if (fp8m_bf16x2_amax_value(acc) != want && bad++ < 5)
      fprintf(stderr, "absmax trial %d: %g, want %g\n", trial, (double)fp8m_bf16x2_amax_value(acc), (double)want);
  }
  const uint32_t nan2 = (uint32_t)bf16_bits(NAN) | (uint32_t)bf16_bits(INFINITY) << 16;
  T_CHECK(isnan(fp8m_bf16x2_amax_value(fp8m_bf16x2_absmax(0, nan2))), "absmax: NaN must stay above inf");
  T_CHECK(bad == 0, "absmax: %d wrong", bad);
}

/* fp8m_launch_rows: the launches of mode 1 cover M rows exactly, fewest launches, none past `most` rows or under
 * the kernel's 2 rows (M from 2 to 4·most). */
static void test_launch_rows(void) {
  int bad = 0;
  for (int64_t most = 8; most <= 64; most += 8)
    for (int64_t M = 2; M <= 4 * most; M++) {
      const int64_t per = fp8m_launch_rows(M, most);
      int64_t launches = 0, covered = 0, smallest = M;
      for (int64_t m0 = 0; m0 < M; m0 += per) {
        const int64_t rows = M - m0 < per ? M - m0 : per;
        covered += rows;
        launches++;
        if (rows < smallest) smallest = rows;
      }
      if (covered != M || per > most || per < 1 || launches != (M + most - 1) / most || smallest < 2) {
        if (bad++ < 5)
          fprintf(stderr, "  M %lld most %lld: %lld rows per launch, %lld launches, smallest %lld\n", (long long)M,
                  (long long)most, (long long)per, (long long)launches, (long long)smallest);
      }
    }
  T_CHECK(bad == 0, "fp8m_launch_rows: %d bad plans", bad);
  T_CHECK(fp8m_launch_rows(64, 32) == 32 && fp8m_launch_rows(33, 32) == 24 && fp8m_launch_rows(40, 32) == 24 &&
              fp8m_launch_rows(32, 32) == 32 && fp8m_launch_rows(5, 32) == 8,
          "launch rows: 64 -> %lld, 33 -> %lld, 40 -> %lld", (long long)fp8m_launch_rows(64, 32),
          (long long)fp8m_launch_rows(33, 32), (long long)fp8m_launch_rows(40, 32));
}

int main(void) {
  test_launch_rows();
  test_step();
  test_absmax();
  test_scale();
  test_out();
  static const int ms[3] = {1, 3, 8};
  test_block(9, 21, 64 * 5, 1.0f); /* n-tiles: 2 (9 rows), 4 (27), 8 (64) */
  test_block(27, 37, 64 * 3, 1.0f);
  test_block(64, 16, 64 * 9, 1.0f);
  for (int mm = 1; mm <= 64; mm++)
    T_CHECK(fp8m_n_tiles(mm) * 8 >= mm && (mm <= 8 || fp8m_n_tiles(mm) * 4 < mm), "n-tiles for M = %d: %d", mm,
            fp8m_n_tiles(mm));
  T_CHECK(fp8m_n_tiles(65) == 0, "65 rows take no n-tile count");
  static const int64_t ns[3] = {16, 37, 5}, ks[4] = {64, 640, 64 * 21, 64 * 33};
  for (int a = 0; a < 3; a++)
    for (int b = 0; b < 3; b++)
      for (int c = 0; c < 4; c++) test_block(ms[a], ns[b], ks[c], 1.0f);
  test_block(2, 21, 64 * 9, 0x1p-20f); /* tiny and large activations: the scaling must undo itself exactly */
  test_block(2, 21, 64 * 9, 0x1p+40f);
  return t_finish();
}
