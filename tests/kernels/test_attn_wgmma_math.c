/* test_attn_wgmma_math: the shared-memory layout, matrix descriptors and register layouts of the Hopper
 * flash-attention kernel (kernels/cuda/attn_wgmma.cu) checked on the CPU, with the helpers the kernel uses
 * (kernels/cuda/attn_wgmma_math.h, attn_mma_math.h), so that a swizzle, descriptor or fragment mistake fails in
 * CI, where no GPU exists.
 *
 * The hardware is modelled here from the PTX ISA and CUTLASS, independently of the helpers:
 *   - the descriptor's fields (start address, LBO, SBO >> 4 in 14-bit fields at bits 0, 16, 32; swizzle mode in
 *     bits 62–63, 1 = 128-byte) and the canonical 128-byte-swizzled layouts it describes for bf16 — K-major:
 *     element (n, k) of a 16-wide k-step at start + (n / 8)·SBO + (n % 8)·128 + 2k; MN-major (imm-trans-b):
 *     element (k, n) at start + (n / 64)·LBO + 2(n % 64) + (k / 8)·SBO + (k % 8)·128; then address bits [4,6]
 *     ^= bits [7,9] (CUTLASS Swizzle<3,4,3>) on the 1024-byte-aligned tile;
 *   - wgmma m64nNk16 with A in registers: thread 32w + 4g + t holds in register r the bf16 pair (row 16w + g +
 *     8(r & 1), columns 2t + 8(r >> 1), + 1) of A, and in accumulator float i the element (row 16w + g +
 *     8((i % 4) / 2), column 8(i / 4) + 2t + (i & 1)) of D (CUTLASS ALayout_64x16, CLayout_64xN).
 *   - layout: the kernel's tile copy covers every 16-byte chunk of a K/V tile exactly once, inside the tile;
 *     every element each k-step's descriptor makes the tensor cores read is the key and head dim the GEMM needs.
 *   - gemm: S = Q·Kᵀ and O = P·V for a whole warpgroup, with Q fragments loaded as the kernel loads them, P
 *     repacked from S's accumulators as the kernel repacks it, and the kernel's reading of S and O positions;
 *     exact on small integers, D = 64 and 128, tiles of 64 and 128 keys.
 * Not covered (GPU only): the hardware itself (the model above is the PTX ISA's, as the kernel's author read
 * it), the fences and barriers, cp.async, the online softmax (the same helpers as attn_flash.cu, emulated by
 * test_attn_mma_emu).
 */
#include "kernel_test.h"

#include "cuda/attn_mma_math.h"
#include "cuda/attn_wgmma_math.h"

#define MAXD 128
#define MAXBC 128

/* ---- the hardware (PTX ISA / CUTLASS), not from the helpers ------------------------------------------- */

typedef struct {
  uint32_t start, lbo, sbo;
  int mode;
} desc_t;

static desc_t ptx_desc(uint64_t d) {
  desc_t x;
  x.start = (uint32_t)(d & 0x3FFFu) << 4;
  x.lbo = (uint32_t)((d >> 16) & 0x3FFFu) << 4;
  x.sbo = (uint32_t)((d >> 32) & 0x3FFFu) << 4;
  x.mode = (int)(d >> 62);
  return x;
}
static uint32_t ptx_swizzle128(uint32_t addr) {
  return addr ^ (((addr >> 7) & 7u) << 4);
}
/* byte address of B element (n, k), k < 16, of a K-major operand */
static uint32_t ptx_b_kmajor(desc_t d, int n, int k) {
  return ptx_swizzle128(d.start + (uint32_t)(n / 8) * d.sbo + (uint32_t)(n % 8) * 128u + 2u * (uint32_t)k);
}
/* byte address of B element (k, n), k < 16, of an MN-major operand */
static uint32_t ptx_b_mnmajor(desc_t d, int k, int n) {
  return ptx_swizzle128(d.start + (uint32_t)(n / 64) * d.lbo + 2u * (uint32_t)(n % 64) + (uint32_t)(k / 8) * d.sbo +
                        (uint32_t)(k % 8) * 128u);
}
/* A register r (pair e) of thread tid: its (row, col) in the 64 × 16 A */
static void ptx_a(int tid, int r, int e, int *row, int *col) {
  const int w = tid / 32, g = (tid % 32) / 4, t = tid % 4;
  *row = 16 * w + g + 8 * (r & 1);
  *col = 2 * t + 8 * (r >> 1) + e;
}
/* accumulator float i of thread tid: its (row, col) in the 64 × N D */
static void ptx_d(int tid, int i, int *row, int *col) {
  const int w = tid / 32, g = (tid % 32) / 4, t = tid % 4;
  *row = 16 * w + g + 8 * ((i % 4) / 2);
  *col = 8 * (i / 4) + 2 * t + (i & 1);
}

/* d[tid][0 .. N/2) += A · B: A from the 128 threads' registers a[tid][0..3], B (16 × N) read through the
 * descriptor from the tile (K-major, or MN-major when trans). Returns 0 when an A element is held by no thread or
 * two, or B reaches outside the tile. */
static int emu_wgmma(float (*d)[MAXBC / 2 > MAXD / 2 ? MAXBC / 2 : MAXD / 2], const uint32_t (*a)[4], int N,
                     uint64_t bdesc, int trans, const uint16_t *tile, uint32_t tile_bytes) {
  float A[64][16], B[16][MAXBC > MAXD ? MAXBC : MAXD];
  int na[64][16] = {{0}}, ok = 1;
  for (int tid = 0; tid < 128; tid++)
    for (int r = 0; r < 4; r++)
      for (int e = 0; e < 2; e++) {
        int row, col;
        ptx_a(tid, r, e, &row, &col);
        A[row][col] = kt_bf16_value(kt_half(a[tid][r], e));
        na[row][col]++;
      }
  for (int row = 0; row < 64; row++)
    for (int col = 0; col < 16; col++) ok &= na[row][col] == 1;
  const desc_t ds = ptx_desc(bdesc);
  ok &= ds.mode == 1;
  for (int k = 0; k < 16; k++)
    for (int n = 0; n < N; n++) {
      const uint32_t addr = trans ? ptx_b_mnmajor(ds, k, n) : ptx_b_kmajor(ds, n, k);
      if (addr % 2 || addr + 2 > tile_bytes) return 0;
      B[k][n] = kt_bf16_value(tile[addr / 2]);
    }
  for (int tid = 0; tid < 128; tid++)
    for (int i = 0; i < N / 2; i++) {
      int row, col;
      ptx_d(tid, i, &row, &col);
      double acc = d[tid][i];
      for (int k = 0; k < 16; k++) acc += (double)A[row][k] * B[k][col];
      d[tid][i] = (float)acc;
    }
  return ok;
}

/* ---- the kernel's side ------------------------------------------------------------------------------------- */

/* Fills a tile of bc keys × D dims as the kernel's copy does (chunks by attn_fa_chunk, placed by
 * attn_wg_tile_off), from src[key][dim]; NaN where no chunk landed. Returns 0 on a chunk outside the tile,
 * misaligned, or written twice. */
static int kernel_fill(uint16_t *tile, const uint16_t *src, int bc, int D) {
  const int ch = D / 8, bytes = bc * D * 2;
  int *hits = calloc((size_t)(bytes / 16), sizeof(int)), ok = 1;
  for (int i = 0; i < bytes / 2; i++) tile[i] = 0x7fc0;
  for (int c = 0; c < bc * ch; c++) {
    int r, col;
    attn_fa_chunk(c, ch, &r, &col);
    const uint32_t off = attn_wg_tile_off(r, col, bc);
    if (off % 16 || off + 16 > (uint32_t)bytes || hits[off / 16]++) {
      ok = 0;
      continue;
    }
    for (int e = 0; e < 8; e++) tile[off / 2 + (uint32_t)e] = src[r * D + col + e];
  }
  for (int i = 0; i < bytes / 16; i++) ok &= hits[i] == 1;
  free(hits);
  return ok;
}

static void test_layout(int D, int bc) {
  const uint32_t bytes = (uint32_t)(bc * D * 2);
  uint16_t *src = malloc(sizeof(uint16_t) * (size_t)(bc * D)), *tile = malloc(bytes);
  for (int j = 0; j < bc; j++)
    for (int c = 0; c < D; c++) src[j * D + c] = (uint16_t)(j * D + c); /* identifies (key, dim) */
  T_REQUIRE(kernel_fill(tile, src, bc, D), "layout D=%d bc=%d: the tile copy misses or repeats a chunk", D, bc);
  int bad = 0;
  for (int kk = 0; kk < D / 16; kk++) { /* S = Q·Kᵀ: B(k, n) = K[key n][dim 16kk + k] */
    const desc_t ds = ptx_desc(attn_wg_desc(attn_wg_k_start(kk, bc), ATTN_WG_K_LBO, ATTN_WG_K_SBO));
    for (int n = 0; n < bc; n++)
      for (int k = 0; k < 16; k++) {
        const uint32_t a = ptx_b_kmajor(ds, n, k);
        const int want = n * D + 16 * kk + k;
        if ((a >= bytes || tile[a / 2] != want) && bad++ < 5)
          fprintf(stderr, "K D=%d bc=%d kk=%d: (n %d, k %d) reads byte %u\n", D, bc, kk, n, k, a);
      }
  }
  for (int kc = 0; kc < bc / 16; kc++) { /* O = P·V: B(k, n) = V[key 16kc + k][dim n] */
    const desc_t ds = ptx_desc(attn_wg_desc(attn_wg_v_start(kc), attn_wg_v_lbo(bc), ATTN_WG_V_SBO));
    for (int k = 0; k < 16; k++)
      for (int n = 0; n < D; n++) {
        const uint32_t a = ptx_b_mnmajor(ds, k, n);
        const int want = (16 * kc + k) * D + n;
        if ((a >= bytes || tile[a / 2] != want) && bad++ < 5)
          fprintf(stderr, "V D=%d bc=%d kc=%d: (k %d, n %d) reads byte %u\n", D, bc, kc, k, n, a);
      }
  }
  T_CHECK(bad == 0, "layout D=%d bc=%d: %d elements read from the wrong place", D, bc, bad);
  T_CHECK(ptx_desc(attn_wg_desc(0x1fc00u, 16, 1024)).start == 0x1fc00u, "descriptor start address field");
  free(src);
  free(tile);
}

static void test_gemm(int D, int bc) {
  enum { ACC = MAXBC / 2 > MAXD / 2 ? MAXBC / 2 : MAXD / 2 };
  const int ldq = D + 24, KS = D / 16, NS = bc / 8, NO = D / 8, KC = bc / 16;
  const uint32_t bytes = (uint32_t)(bc * D * 2);
  uint16_t *q = malloc(sizeof(uint16_t) * (size_t)(64 * ldq)), *k = malloc(sizeof(uint16_t) * (size_t)(bc * D)),
           *v = malloc(sizeof(uint16_t) * (size_t)(bc * D)), *kt = malloc(bytes), *vt = malloc(bytes);
  for (int i = 0; i < 64 * ldq; i++) q[i] = kt_bf16_bits((float)(kt_int(9) - 4));
  for (int i = 0; i < bc * D; i++)
    k[i] = kt_bf16_bits((float)(kt_int(9) - 4)), v[i] = kt_bf16_bits((float)(kt_int(9) - 4));
  T_REQUIRE(kernel_fill(kt, k, bc, D) && kernel_fill(vt, v, bc, D), "gemm: tile copy");

  static uint32_t qf[MAXD / 16][128][4], pa[MAXBC / 16][128][4];
  static float s[128][ACC], o[128][ACC];
  int ok = 1, bad = 0;
  for (int tid = 0; tid < 128; tid++) { /* as wg_tile: warp tid / 32 of the warpgroup, rows 16·warp .. */
    const int lane = tid % 32, row_w = 16 * (tid / 32);
    for (int kk = 0; kk < KS; kk++)
      for (int reg = 0; reg < 4; reg++) {
        const uint16_t *p = q + (row_w + attn_mma_a_row(lane, reg)) * ldq + kk * 16 + attn_mma_a_col(lane, reg, 0);
        qf[kk][tid][reg] = kt_pack2(p[0], p[1]);
      }
    for (int i = 0; i < ACC; i++) s[tid][i] = o[tid][i] = 0.0f;
  }
  for (int kk = 0; kk < KS; kk++) {
    uint32_t a[128][4];
    memcpy(a, qf[kk], sizeof a);
    ok &= emu_wgmma(s, (const uint32_t(*)[4])a, bc, attn_wg_desc(attn_wg_k_start(kk, bc), ATTN_WG_K_LBO, ATTN_WG_K_SBO),
                    0, kt, bytes);
  }
  /* S as the kernel reads it: float 4·nt + 2hf + e is (row_w + c_row(lane, 2hf), key 8nt + c_col(lane, 2hf + e)) */
  for (int tid = 0; tid < 128; tid++) {
    const int lane = tid % 32, row_w = 16 * (tid / 32);
    for (int nt = 0; nt < NS; nt++)
      for (int hf = 0; hf < 2; hf++)
        for (int e = 0; e < 2; e++) {
          const int r = row_w + attn_mma_c_row(lane, 2 * hf), j = nt * 8 + attn_mma_c_col(lane, 2 * hf + e);
          double ref = 0;
          for (int d = 0; d < D; d++) ref += (double)kt_bf16_value(q[r * ldq + d]) * kt_bf16_value(k[j * D + d]);
          if (!(s[tid][4 * nt + 2 * hf + e] == (float)ref) && bad++ < 5)
            fprintf(stderr, "gemm D=%d bc=%d: S[%d][%d] = %g, want %g\n", D, bc, r, j,
                    (double)s[tid][4 * nt + 2 * hf + e], ref);
        }
  }
  /* P = small integers in S's places, repacked as the kernel does (k-step kc: n-tiles 2kc + p_ntile(reg)) */
  static float P[64][MAXBC];
  for (int tid = 0; tid < 128; tid++) {
    const int lane = tid % 32, row_w = 16 * (tid / 32);
    for (int nt = 0; nt < NS; nt++)
      for (int i = 0; i < 4; i++) {
        const float p = (float)(kt_int(7) - 3);
        s[tid][4 * nt + i] = p;
        P[row_w + attn_mma_c_row(lane, i)][nt * 8 + attn_mma_c_col(lane, i)] = p;
      }
    for (int kc = 0; kc < KC; kc++)
      for (int reg = 0; reg < 4; reg++) {
        const float *sc = s[tid] + 4 * (2 * kc + attn_mma_p_ntile(reg));
        pa[kc][tid][reg] = kt_pack2(kt_bf16_bits(sc[attn_mma_p_elem(reg)]), kt_bf16_bits(sc[attn_mma_p_elem(reg) + 1]));
      }
  }
  for (int kc = 0; kc < KC; kc++) {
    uint32_t a[128][4];
    memcpy(a, pa[kc], sizeof a);
    ok &= emu_wgmma(o, (const uint32_t(*)[4])a, D, attn_wg_desc(attn_wg_v_start(kc), attn_wg_v_lbo(bc), ATTN_WG_V_SBO),
                    1, vt, bytes);
  }
  /* O as the kernel stores it: float 4·dt + 2hf + e is (row_w + c_row(lane, 2hf), dim 8dt + c_col(lane, 2hf + e)) */
  for (int tid = 0; tid < 128; tid++) {
    const int lane = tid % 32, row_w = 16 * (tid / 32);
    for (int dt = 0; dt < NO; dt++)
      for (int hf = 0; hf < 2; hf++)
        for (int e = 0; e < 2; e++) {
          const int r = row_w + attn_mma_c_row(lane, 2 * hf), c = dt * 8 + attn_mma_c_col(lane, 2 * hf + e);
          double ref = 0;
          for (int j = 0; j < bc; j++) ref += (double)P[r][j] * kt_bf16_value(v[j * D + c]);
          if (!(o[tid][4 * dt + 2 * hf + e] == (float)ref) && bad++ < 5)
            fprintf(stderr, "gemm D=%d bc=%d: O[%d][%d] = %g, want %g\n", D, bc, r, c,
                    (double)o[tid][4 * dt + 2 * hf + e], ref);
        }
  }
  T_CHECK(ok, "gemm D=%d bc=%d: an A element held by no thread or two, a B read outside the tile, or no swizzle", D,
          bc);
  T_CHECK(bad == 0, "gemm D=%d bc=%d: %d results wrong", D, bc, bad);
  free(q);
  free(k);
  free(v);
  free(kt);
  free(vt);
}

int main(void) {
  for (int d = 64; d <= 128; d += 64)
    for (int bc = 64; bc <= 128; bc += 64) {
      test_layout(d, bc);
      test_gemm(d, bc);
    }
  return t_finish();
}
