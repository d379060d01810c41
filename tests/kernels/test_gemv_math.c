/* test_gemv_math: the host/device helpers of the bf16 decode GEMV (kernels/cuda/gemv_math.h) on the CPU, so its
 * index arithmetic is checked in CI without a GPU.
 *
 *   - gemv_shape_ok accepts exactly the shapes the kernel handles (M 1..4, N >= 1, K and ldx multiples of 8,
 *     ldx >= K, x and w 16-byte aligned) and refuses the others;
 *   - for random accepted shapes, the launch (gemv_grid blocks of GEMV_WARPS warps, lane j taking chunks j,
 *     j + 32, ...) computes every output row exactly once from every chunk of its weight row exactly once, and
 *     every 16-byte load of w and of x's rows m < M is 16-byte aligned and inside the row it belongs to;
 *   - a warp's weight rows in the one-row, two-row and gate|up modes (GEMV_ROWS_*) cover every row once;
 *   - the xor-shuffle lane reduction (cuda_common.cuh warp_sum) leaves the same bits in every lane, so the lane
 *     that stores row m's result needs no broadcast (emulated on 32 floats).
 */
#include "kernel_test.h"

#include <string.h>

#include "cuda/gemv_math.h"

static void test_shape_ok(void) {
  const uintptr_t a = 4096; /* an aligned address */
  /* where the GEMV is preferred to cuBLASLt (measured in a decode step, gemv_math.h): every linear of one row */
  T_CHECK(gemv_preferred(1, 4096, 4096) && gemv_preferred(1, 156032, 4096) && gemv_preferred(1, 4096, 11008) &&
              gemv_preferred(1, 22016, 4096) && gemv_preferred(1, 12288, 4096),
          "a decoder linear at M = 1 not preferred");
  T_CHECK(!gemv_preferred(2, 4096, 4096) && !gemv_preferred(4, 156032, 4096) && !gemv_preferred(0, 4096, 4096),
          "M != 1 preferred");
  T_CHECK(gemv_shape_ok(1, 1, 8, 8, a, a), "smallest shape refused");
  T_CHECK(gemv_shape_ok(4, 151936, 3584, 3584, a, a + 16), "lm_head shape refused");
  T_CHECK(gemv_shape_ok(3, 5, 24, 32, a, a), "strided ldx (a multiple of 8) refused");
  T_CHECK(!gemv_shape_ok(0, 5, 8, 8, a, a), "M = 0 accepted");
  T_CHECK(!gemv_shape_ok(5, 5, 8, 8, a, a), "M = 5 accepted");
  T_CHECK(!gemv_shape_ok(1, 0, 8, 8, a, a), "N = 0 accepted (a grid of 0 blocks)");
  T_CHECK(!gemv_shape_ok(1, 5, 0, 8, a, a), "K = 0 accepted");
  T_CHECK(!gemv_shape_ok(1, 5, 12, 16, a, a), "K = 12 accepted");
  T_CHECK(!gemv_shape_ok(1, 5, 33, 40, a, a), "K = 33 accepted");
  T_CHECK(!gemv_shape_ok(2, 5, 64, 67, a, a), "ldx = 67 accepted");
  T_CHECK(!gemv_shape_ok(2, 5, 64, 56, a, a), "ldx < K accepted");
  T_CHECK(!gemv_shape_ok(1, 5, 64, 64, a + 8, a), "x at 8 bytes past 16 accepted");
  T_CHECK(!gemv_shape_ok(1, 5, 64, 64, a, a + 2), "w at 2 bytes past 16 accepted");
  T_CHECK(!gemv_shape_ok(1, (int64_t)GEMV_WARPS * 0x80000000LL, 8, 8, a, a), "2^31 blocks accepted");
}

static void test_coverage(void) {
  for (int t = 0; t < 300; t++) {
    const int64_t M = 1 + (int64_t)(kt_next() % GEMV_MAX_M), N = 1 + (int64_t)(kt_next() % 70);
    const int64_t K = GEMV_CHUNK * (1 + (int64_t)(kt_next() % 100)), ldx = K + GEMV_CHUNK * (int64_t)(kt_next() % 3);
    const uintptr_t x = 256 * (1 + (uintptr_t)(kt_next() % 64)) + 16 * (uintptr_t)(kt_next() % 16), w = 1u << 20;
    T_REQUIRE(gemv_shape_ok(M, N, K, ldx, x, w), "shape M=%lld N=%lld K=%lld ldx=%lld refused", (long long)M,
              (long long)N, (long long)K, (long long)ldx);
    const int64_t chunks = K / GEMV_CHUNK, grid = gemv_grid(N);
    T_CHECK(grid * GEMV_WARPS >= N && (grid - 1) * GEMV_WARPS < N, "grid %lld for N %lld", (long long)grid,
            (long long)N);
    int *row_seen = calloc((size_t)N, sizeof(int)), *chunk_seen = calloc((size_t)(N * chunks), sizeof(int));
    int bad = 0;
    for (int64_t b = 0; b < grid; b++)
      for (int wp = 0; wp < GEMV_WARPS; wp++) {
        const int64_t n = gemv_row(b, wp);
        if (n >= N) continue;
        row_seen[n]++;
        for (int lane = 0; lane < 32; lane++)
          for (int64_t c = lane; c < chunks; c += 32) {
            chunk_seen[n * chunks + c]++;
            const int64_t wo = gemv_w_off(n, K, c);
            bad += (w + 2 * (uintptr_t)wo) % 16 != 0 || wo < n * K || wo + GEMV_CHUNK > (n + 1) * K;
            for (int64_t m = 0; m < M; m++) {
              const int64_t xo = gemv_x_off(m, ldx, c);
              bad += (x + 2 * (uintptr_t)xo) % 16 != 0 || xo < m * ldx || xo + GEMV_CHUNK > m * ldx + K;
            }
          }
      }
    for (int64_t n = 0; n < N; n++) bad += row_seen[n] != 1;
    for (int64_t i = 0; i < N * chunks; i++) bad += chunk_seen[i] != 1;
    T_CHECK(bad == 0, "M=%lld N=%lld K=%lld ldx=%lld: %d misplaced rows, chunks or loads", (long long)M, (long long)N,
            (long long)K, (long long)ldx, bad);
    free(row_seen);
    free(chunk_seen);
  }
}

/* warp_sum: for o = 16, 8, 4, 2, 1 every lane does v += (lane ^ o)'s v, all lanes at once. */
static void test_lane_sum(void) {
  for (int t = 0; t < 1000; t++) {
    float v[32], nv[32];
    kt_fill(v, 32, -1000.0f, 1000.0f);
    if (t % 3 == 0)
      for (int i = 0; i < 32; i++) v[i] = ldexpf(v[i], (int)(kt_next() % 60) - 30); /* wide exponents */
    for (int o = 16; o > 0; o >>= 1) {
      for (int l = 0; l < 32; l++) nv[l] = v[l] + v[l ^ o];
      memcpy(v, nv, sizeof v);
    }
    int same = 1;
    for (int l = 1; l < 32; l++) same &= memcmp(&v[l], &v[0], sizeof(float)) == 0;
    T_CHECK(same, "trial %d: the xor tree left different sums in different lanes", t);
  }
}

/* A warp's weight rows (GEMV_ROWS_ONE / _TWO / _GLU): over the gemv_warps(N) warps, every row 0 .. N - 1 is streamed
 * and stored exactly once; a stored row is never a duplicate; in the GLU mode warp n's rows are n (gate) and n + P
 * (up) of 2P rows. */
static void test_warp_rows(void) {
  int bad = 0, cases = 0;
  for (int mode = GEMV_ROWS_ONE; mode <= GEMV_ROWS_GLU; mode++)
    for (int64_t N = 1; N <= 75; N++) {
      if (mode == GEMV_ROWS_GLU && N % 2) continue; /* [gate; up]: an even number of rows */
      const int64_t P = gemv_warps(N, mode);
      const int R = mode == GEMV_ROWS_ONE ? 1 : 2;
      int *stored = calloc((size_t)N, sizeof(int));
      int ok = P >= 1 && P <= N && (mode == GEMV_ROWS_ONE ? P == N : P == (N + 1) / 2);
      for (int64_t n = 0; n < P; n++)
        for (int r = 0; r < R; r++) {
          const int64_t row = gemv_warp_row(n, r, P, N);
          ok = ok && row >= 0 && row < N;
          if (mode == GEMV_ROWS_GLU) ok = ok && row == n + r * P && gemv_warp_stores(n, r, P, N);
          if (ok && gemv_warp_stores(n, r, P, N)) stored[row]++;
          if (!gemv_warp_stores(n, r, P, N)) ok = ok && r == 1 && row == n; /* the duplicate is row n itself */
        }
      for (int64_t i = 0; i < N && mode != GEMV_ROWS_GLU; i++) ok = ok && stored[i] == 1;
      if (!ok && bad++ < 5) fprintf(stderr, "  warp rows: mode %d N %lld wrong\n", mode, (long long)N);
      cases++;
      free(stored);
    }
  T_CHECK(bad == 0, "warp rows: %d of %d (mode, N) wrong", bad, cases);
}

/* GEMV_ROWS_ROPE: over N / 2 warps every row of the 3 sections is taken exactly once, as the pair (f, f + D/2) of its
 * head, in the section (q, k, v) it belongs to. */
static void test_rope_rows(void) {
  int bad = 0, cases = 0;
  static const int heads[] = {1, 2, 3, 32}, dims[] = {2, 8, 64, 128};
  for (int hi = 0; hi < 4; hi++)
    for (int di = 0; di < 4; di++) {
      const int H = heads[hi], D = dims[di];
      const int64_t HD = (int64_t)H * D, N = 3 * HD;
      int *seen = calloc((size_t)N, sizeof(int));
      int ok = 1;
      for (int64_t n = 0; n < N / 2; n++) {
        int64_t r0, r1;
        int sec, h, f;
        gemv_rope_rows(n, HD, D, &r0, &r1, &sec, &h, &f);
        ok = ok && r0 >= 0 && r1 < N && r1 == r0 + D / 2 && f >= 0 && f < D / 2 && h >= 0 && h < H && sec >= 0 &&
             sec < 3 && r0 == sec * HD + (int64_t)h * D + f;
        if (ok) seen[r0]++, seen[r1]++;
      }
      for (int64_t i = 0; i < N; i++) ok = ok && seen[i] == 1;
      if (!ok && bad++ < 5) fprintf(stderr, "  rope rows: H %d D %d wrong\n", H, D);
      cases++;
      free(seen);
    }
  T_CHECK(bad == 0, "rope rows: %d of %d (H, D) wrong", bad, cases);
}

int main(void) {
  test_shape_ok();
  test_warp_rows();
  test_rope_rows();
  test_coverage();
  test_lane_sum();
  return t_finish();
}
