/* test_attn_mma_emu: the flash-attention kernel (kernels/cuda/attn_flash.cu) emulated warp by warp on the CPU,
 * with the per-lane index helpers the kernel itself uses (kernels/cuda/attn_mma_math.h), so that a fragment
 * layout, ldmatrix address, mask or store mistake fails in CI, where no GPU exists.
 *
 * The hardware is modelled here independently of the helpers, from the PTX ISA's tables: "Matrix Fragments
 * for mma.m16n8k16 with floating point type" (which lane holds which (row, col) of A, B, C/D; groupID =
 * laneid >> 2, threadID_in_group = laneid % 4) and ldmatrix (.x4: lanes 8i..8i+7 address the rows of matrix
 * i; lane l receives (l/4, 2(l%4)..+1), or with .trans (2(l%4)..+1, l/4)). The emulated mma rebuilds A and B
 * from the 32 lanes' registers, checking that every element is held by exactly one lane, and multiplies them.
 *
 *   - qk: S = Q·Kᵀ for one warp's m-tiles and a 64-key K tile in padded shared memory (padding poisoned with
 *     NaN), D = 64 and 128: the Q fragments as the kernel loads them from global memory, the K fragments by
 *     ldmatrix at the kernel's addresses; every S float at the kernel's (row, key) equals the exact product.
 *   - pv: O = P·V with P handed over from S's C fragments as the kernel repacks them and V by ldmatrix.trans;
 *     exact against the plain product at the kernel's output (row, column).
 *   - rows: the shuffle partners (xor ATTN_MMA_ROW_XOR_A, _B) hold exactly the 8 columns of their row.
 *   - chunks: the tile copy covers each 16-byte chunk of a K/V tile exactly once, inside the row.
 *   - tile: the whole kernel (tile copy with zero fill, S, mask, online softmax with emulated shuffles, P in
 *     bf16, P·V, the l reduction and the bf16 store of valid rows only) for encoder blocks (key padding) and
 *     causal prefill over a paged cache through a shuffled block table (positions past the context unmapped),
 *     D = 64 and 128, lengths 1, 5, 63, 64, 65, 127, 128, 129, 200, with a cached prefix; against softmax in
 *     double over the same bf16 inputs. Also: no K/V row at or past the tile's last visible key is read,
 *     padding rows are never written.
 * Not covered (GPU only): timing and races (barrier placement: reviewed by hand), cp.async semantics, the real
 * tensor-core accumulation order.
 */
#include "kernel_test.h"

#include "cuda/attn_mma_math.h"

/* the kernel's configuration (attn_flash.cu: FA_WARPS, FA_BC, FA_PAD, fa_cfg) */
#define EMU_WARPS 4
#define EMU_THREADS (EMU_WARPS * 32)
#define EMU_BC 64
#define EMU_PAD 8
#define EMU_MAXD 128

static int emu_mt(int D) {
  return D == 64 ? 2 : 1;
}

static const uint16_t BF_NAN = 0x7fc0;

/* ---- the hardware, from the PTX ISA's tables (not from attn_mma_math.h) ------------------------------- */

/* a_i, i = 0..7 (register i / 2, low half for even i) */
static void ptx_a(int lane, int i, int *row, int *col) {
  int g = lane >> 2, t = lane % 4;
  *row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
  *col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
}
/* b_i, i = 0..3 */
static void ptx_b(int lane, int i, int *row, int *col) {
  int g = lane >> 2, t = lane % 4;
  *row = t * 2 + (i & 1) + (i >= 2 ? 8 : 0);
  *col = g;
}
/* c_i, i = 0..3 */
static void ptx_c(int lane, int i, int *row, int *col) {
  int g = lane >> 2, t = lane % 4;
  *row = i < 2 ? g : g + 8;
  *col = t * 2 + (i & 1);
}

/* d[lane][0..3] += A·B over the warp's registers a[lane][0..3], b[lane][0..1] (mma.m16n8k16.row.col). */
static int emu_mma(float d[32][4], const uint32_t a[32][4], const uint32_t b[32][2]) {
  float A[16][16], B[16][8];
  int na[16][16] = {{0}}, nb[16][8] = {{0}}, ok = 1;
  for (int lane = 0; lane < 32; lane++) {
    for (int i = 0; i < 8; i++) {
      int r, c;
      ptx_a(lane, i, &r, &c);
      A[r][c] = kt_bf16_value(kt_half(a[lane][i / 2], i % 2));
      na[r][c]++;
    }
    for (int i = 0; i < 4; i++) {
      int r, c;
      ptx_b(lane, i, &r, &c);
      B[r][c] = kt_bf16_value(kt_half(b[lane][i / 2], i % 2));
      nb[r][c]++;
    }
  }
  for (int r = 0; r < 16; r++)
    for (int c = 0; c < 16; c++) ok &= na[r][c] == 1 && (c >= 8 || nb[r][c] == 1);
  for (int lane = 0; lane < 32; lane++)
    for (int i = 0; i < 4; i++) {
      int r, c;
      ptx_c(lane, i, &r, &c);
      double acc = d[lane][i];
      for (int k = 0; k < 16; k++) acc += (double)A[r][k] * B[k][c];
      d[lane][i] = (float)acc;
    }
  return ok;
}

/* ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: addr[lane] the element offset lane hands over. Returns 0
 * on a misaligned or out-of-range address. */
static int emu_ldmatrix_x4(uint32_t r[32][4], const uint16_t *sm, int64_t sm_elems, const int addr[32], int trans) {
  uint16_t M[4][8][8];
  for (int i = 0; i < 4; i++)
    for (int row = 0; row < 8; row++) {
      int a = addr[8 * i + row];
      if (a % 8 != 0 || a < 0 || a + 8 > sm_elems) return 0; /* 16-byte rows, 16-byte aligned */
      for (int c = 0; c < 8; c++) M[i][row][c] = sm[a + c];
    }
  for (int l = 0; l < 32; l++)
    for (int i = 0; i < 4; i++)
      r[l][i] = trans ? kt_pack2(M[i][2 * (l % 4)][l / 4], M[i][2 * (l % 4) + 1][l / 4])
                      : kt_pack2(M[i][l / 4][2 * (l % 4)], M[i][l / 4][2 * (l % 4) + 1]);
  return 1;
}

static float shfl_xor(const float *v, int lane, int mask) {
  return v[lane ^ mask];
}

/* ---- qk and pv: one warp's tensor-core tiles, exact on small integers --------------------------------- */

static void test_qk(int D, int warp) {
  const int MT = emu_mt(D), LDS = D + EMU_PAD, KS = D / 16, NT = EMU_BC / 8, BR = EMU_WARPS * 16 * MT;
  const int ldq = D + 24; /* a row stride that is not D, as a fused QKV output */
  uint16_t *q = malloc(sizeof(uint16_t) * (size_t)(BR * ldq)), *ks = malloc(sizeof(uint16_t) * (size_t)(EMU_BC * LDS));
  for (int i = 0; i < BR * ldq; i++) q[i] = kt_bf16_bits((float)(kt_int(9) - 4));
  for (int j = 0; j < EMU_BC; j++)
    for (int c = 0; c < LDS; c++) ks[j * LDS + c] = c < D ? kt_bf16_bits((float)(kt_int(9) - 4)) : BF_NAN;
  int bad = 0, layout_ok = 1;
  for (int mt = 0; mt < MT; mt++) {
    const int rw = attn_fa_warp_row(warp, mt, MT);
    uint32_t qf[8][32][4];
    for (int kk = 0; kk < KS; kk++)
      for (int lane = 0; lane < 32; lane++)
        for (int reg = 0; reg < 4; reg++) { /* as the kernel: a b32 load at (row, col) of the A layout */
          const uint16_t *p = q + (rw + attn_mma_a_row(lane, reg)) * ldq + kk * 16 + attn_mma_a_col(lane, reg, 0);
          layout_ok &= attn_mma_a_col(lane, reg, 1) == attn_mma_a_col(lane, reg, 0) + 1;
          qf[kk][lane][reg] = kt_pack2(p[0], p[1]);
        }
    for (int nt = 0; nt < NT; nt++) {
      float s[32][4] = {{0}};
      for (int kk = 0; kk < KS; kk += 2) {
        int addr[32];
        uint32_t b[32][4], b01[32][2], b23[32][2];
        for (int lane = 0; lane < 32; lane++) addr[lane] = attn_fa_k_ldsm_off(lane, nt, kk, LDS);
        T_REQUIRE(emu_ldmatrix_x4(b, ks, EMU_BC * LDS, addr, 0), "qk D=%d: K ldmatrix address", D);
        for (int lane = 0; lane < 32; lane++) {
          b01[lane][0] = b[lane][0], b01[lane][1] = b[lane][1];
          b23[lane][0] = b[lane][2], b23[lane][1] = b[lane][3];
        }
        layout_ok &= emu_mma(s, (const uint32_t(*)[4])qf[kk], (const uint32_t(*)[2])b01);
        layout_ok &= emu_mma(s, (const uint32_t(*)[4])qf[kk + 1], (const uint32_t(*)[2])b23);
      }
      for (int lane = 0; lane < 32; lane++)
        for (int i = 0; i < 4; i++) {
          const int r = rw + attn_mma_c_row(lane, i), j = nt * 8 + attn_mma_c_col(lane, i);
          double ref = 0;
          for (int d = 0; d < D; d++) ref += (double)kt_bf16_value(q[r * ldq + d]) * kt_bf16_value(ks[j * LDS + d]);
          if (!(s[lane][i] == (float)ref) && bad++ < 5)
            fprintf(stderr, "qk D=%d warp %d: S[%d][%d] = %g, want %g (lane %d, float %d)\n", D, warp, r, j,
                    (double)s[lane][i], ref, lane, i);
        }
    }
  }
  T_CHECK(layout_ok, "qk D=%d: a fragment element held by no lane or by two", D);
  T_CHECK(bad == 0, "qk D=%d warp %d: %d scores wrong", D, warp, bad);
  free(q);
  free(ks);
}

static void test_pv(int D) {
  const int LDS = D + EMU_PAD, DT = D / 8;
  uint16_t *vs = malloc(sizeof(uint16_t) * (size_t)(EMU_BC * LDS));
  float P[16][EMU_BC];
  for (int j = 0; j < EMU_BC; j++)
    for (int c = 0; c < LDS; c++) vs[j * LDS + c] = c < D ? kt_bf16_bits((float)(kt_int(9) - 4)) : BF_NAN;
  for (int r = 0; r < 16; r++)
    for (int j = 0; j < EMU_BC; j++) P[r][j] = (float)(kt_int(7) - 3);
  /* S's C fragments holding P, as the softmax leaves them */
  float s[EMU_BC / 8][32][4];
  for (int nt = 0; nt < EMU_BC / 8; nt++)
    for (int lane = 0; lane < 32; lane++)
      for (int i = 0; i < 4; i++) s[nt][lane][i] = P[attn_mma_c_row(lane, i)][nt * 8 + attn_mma_c_col(lane, i)];
  float o[16][32][4];
  memset(o, 0, sizeof o);
  int layout_ok = 1, bad = 0;
  for (int kc = 0; kc < EMU_BC / 16; kc++) {
    uint32_t pa[32][4];
    for (int lane = 0; lane < 32; lane++)
      for (int reg = 0; reg < 4; reg++) {
        const float *sc = s[2 * kc + attn_mma_p_ntile(reg)][lane];
        pa[lane][reg] = kt_pack2(kt_bf16_bits(sc[attn_mma_p_elem(reg)]), kt_bf16_bits(sc[attn_mma_p_elem(reg) + 1]));
      }
    for (int dp = 0; dp < D / 16; dp++) {
      int addr[32];
      uint32_t b[32][4], b01[32][2], b23[32][2];
      for (int lane = 0; lane < 32; lane++) addr[lane] = attn_fa_v_ldsm_off(lane, kc, dp, LDS);
      T_REQUIRE(emu_ldmatrix_x4(b, vs, EMU_BC * LDS, addr, 1), "pv D=%d: V ldmatrix address", D);
      for (int lane = 0; lane < 32; lane++) {
        b01[lane][0] = b[lane][0], b01[lane][1] = b[lane][1];
        b23[lane][0] = b[lane][2], b23[lane][1] = b[lane][3];
      }
      layout_ok &= emu_mma(o[2 * dp], (const uint32_t(*)[4])pa, (const uint32_t(*)[2])b01);
      layout_ok &= emu_mma(o[2 * dp + 1], (const uint32_t(*)[4])pa, (const uint32_t(*)[2])b23);
    }
  }
  for (int dt = 0; dt < DT; dt++)
    for (int lane = 0; lane < 32; lane++)
      for (int i = 0; i < 4; i++) {
        const int r = attn_mma_c_row(lane, i), c = dt * 8 + attn_mma_c_col(lane, i);
        double ref = 0;
        for (int j = 0; j < EMU_BC; j++) ref += (double)P[r][j] * kt_bf16_value(vs[j * LDS + c]);
        if (!(o[dt][lane][i] == (float)ref) && bad++ < 5)
          fprintf(stderr, "pv D=%d: O[%d][%d] = %g, want %g\n", D, r, c, (double)o[dt][lane][i], ref);
      }
  T_CHECK(layout_ok, "pv D=%d: a fragment element held by no lane or by two", D);
  T_CHECK(bad == 0, "pv D=%d: %d outputs wrong", D, bad);
  free(vs);
}

/* the lanes a row's max and sum are reduced over hold exactly its 8 columns of an n-tile, each once */
static void test_rows(void) {
  int ok = 1;
  for (int lane = 0; lane < 32; lane++)
    for (int hf = 0; hf < 2; hf++) {
      int seen[8] = {0};
      const int partners[4] = {lane, lane ^ ATTN_MMA_ROW_XOR_A, lane ^ ATTN_MMA_ROW_XOR_B,
                               lane ^ ATTN_MMA_ROW_XOR_A ^ ATTN_MMA_ROW_XOR_B};
      for (int p = 0; p < 4; p++)
        for (int e = 0; e < 2; e++) {
          ok &= attn_mma_c_row(partners[p], 2 * hf + e) == attn_mma_c_row(lane, 2 * hf);
          seen[attn_mma_c_col(partners[p], 2 * hf + e)]++;
        }
      for (int c = 0; c < 8; c++) ok &= seen[c] == 1;
      /* the row the kernel's store and limit use for floats 2hf, 2hf + 1 */
      ok &= attn_mma_c_row(lane, 2 * hf + 1) == attn_mma_c_row(lane, 2 * hf);
      ok &=
          attn_mma_c_col(lane, 2 * hf + 1) == attn_mma_c_col(lane, 2 * hf) + 1 && attn_mma_c_col(lane, 2 * hf) % 2 == 0;
    }
  T_CHECK(ok, "softmax row partners");
}

static void test_chunks(int D) {
  const int CH = D / 8;
  int seen[EMU_BC][EMU_MAXD / 8] = {{0}}, ok = 1;
  T_CHECK((EMU_BC * CH) % EMU_THREADS == 0, "D=%d: chunks divide evenly", D);
  for (int i = 0; i < EMU_BC * CH / EMU_THREADS; i++)
    for (int th = 0; th < EMU_THREADS; th++) {
      int r, col;
      attn_fa_chunk(th + i * EMU_THREADS, CH, &r, &col);
      if (r < 0 || r >= EMU_BC || col < 0 || col + 8 > D || col % 8) {
        ok = 0;
        continue;
      }
      seen[r][col / 8]++;
    }
  for (int r = 0; r < EMU_BC; r++)
    for (int c = 0; c < CH; c++) ok &= seen[r][c] == 1;
  T_CHECK(ok, "D=%d: tile copy chunks", D);
}

/* ---- the whole kernel ------------------------------------------------------------------------------------ */

/* Where keys come from: dense rows, or a paged pool through a block-table row. */
typedef struct {
  const uint16_t *k, *v; /* dense: rows j · ld; paged: the pool (L, n_blocks, 2, H, 16, D) */
  int64_t ld;
  const int32_t *table; /* NULL: dense */
  int64_t layer, n_blocks, H, h, D;
  int64_t pool_elems;
  int n_keys;    /* keys that exist (valid_len or ctx_len): reading a row at or past it is an error */
  int bad_reads; /* K/V rows read at or past the tile's kv_end, or outside the pool */
} emu_src_t;

static const uint16_t *emu_row(emu_src_t *s, int j, int which) {
  if (!s->table) return (which ? s->v : s->k) + (int64_t)j * s->ld;
  int64_t off = attn_kv_pos_offset(s->table, j, s->layer, s->n_blocks, which, s->H, s->h, s->D);
  if (s->table[j / ES_KV_BLOCK] < 0 || off < 0 || off + s->D > s->pool_elems) {
    s->bad_reads++;
    return NULL;
  }
  return s->k + off;
}

/* fa_rows_t */
typedef struct {
  const uint16_t *q;
  uint16_t *out;
  int64_t ldq, ldo;
  int n_rows, lim0, causal;
} emu_rows_t;

/* fa_tile<D> for one block: all 4 warps, all 32 lanes each. */
static void emu_fa_tile(int D, const emu_rows_t *t, emu_src_t *src, float sl, uint16_t *smem, int *layout_ok) {
  const int MT = emu_mt(D), LDS = D + EMU_PAD, KS = D / 16, NT = EMU_BC / 8, DT = D / 8, TILE = EMU_BC * LDS;
  const int CH = D / 8;
  uint16_t *ks = smem, *vs = ks + 2 * TILE;
  const int kv_end = attn_fa_kv_end(t->causal, t->lim0, t->n_rows);
  static uint32_t qf[EMU_WARPS][2][8][32][4];
  static float o[EMU_WARPS][2][16][32][4], m[EMU_WARPS][2][2][32], l[EMU_WARPS][2][2][32];
  static int lim[EMU_WARPS][2][2][32];
  for (int w = 0; w < EMU_WARPS; w++)
    for (int mt = 0; mt < MT; mt++) {
      const int rw = attn_fa_warp_row(w, mt, MT);
      for (int lane = 0; lane < 32; lane++) {
        for (int hf = 0; hf < 2; hf++) {
          lim[w][mt][hf][lane] = attn_fa_row_lim(t->causal, t->lim0, t->n_rows, rw + attn_mma_c_row(lane, 2 * hf));
          m[w][mt][hf][lane] = -INFINITY;
          l[w][mt][hf][lane] = 0.0f;
        }
        for (int kk = 0; kk < KS; kk++)
          for (int reg = 0; reg < 4; reg++) {
            const int r = rw + attn_mma_a_row(lane, reg);
            const uint16_t *p = t->q + (int64_t)r * t->ldq + kk * 16 + attn_mma_a_col(lane, reg, 0);
            qf[w][mt][kk][lane][reg] = r < t->n_rows ? kt_pack2(p[0], p[1]) : 0u;
          }
        for (int dt = 0; dt < DT; dt++)
          for (int i = 0; i < 4; i++) o[w][mt][dt][lane][i] = 0.0f;
      }
    }

  const int n_tiles = (kv_end + EMU_BC - 1) / EMU_BC;
  for (int it = 0; it < n_tiles; it++) {
    const int cur = it & 1, j0 = it * EMU_BC;
    uint16_t *kb = ks + cur * TILE, *vb = vs + cur * TILE;
    /* fa_load_tile: the buffer's previous contents poisoned first, so a row the copy misses shows */
    for (int i = 0; i < TILE; i++) kb[i] = vb[i] = BF_NAN;
    for (int i = 0; i < EMU_BC * CH / EMU_THREADS; i++)
      for (int th = 0; th < EMU_THREADS; th++) {
        int r, col;
        attn_fa_chunk(th + i * EMU_THREADS, CH, &r, &col);
        const int j = j0 + r, ok = j < kv_end;
        if (ok && j >= src->n_keys) src->bad_reads++;
        const int js = ok ? j : 0; /* a valid address; nothing read from it when !ok */
        const uint16_t *kr = emu_row(src, js, 0), *vr = emu_row(src, js, 1);
        for (int c = 0; c < 8; c++) {
          kb[r * LDS + col + c] = ok && kr ? kr[col + c] : 0;
          vb[r * LDS + col + c] = ok && vr ? vr[col + c] : 0;
        }
      }
    for (int w = 0; w < EMU_WARPS; w++)
      for (int mt = 0; mt < MT; mt++) {
        static float s[8][32][4];
        memset(s, 0, sizeof s);
        for (int kk = 0; kk < KS; kk += 2)
          for (int nt = 0; nt < NT; nt++) {
            int addr[32];
            uint32_t b[32][4], b01[32][2], b23[32][2];
            for (int lane = 0; lane < 32; lane++) addr[lane] = (int)(kb - smem) + attn_fa_k_ldsm_off(lane, nt, kk, LDS);
            *layout_ok &= emu_ldmatrix_x4(b, smem, 4 * TILE, addr, 0);
            for (int lane = 0; lane < 32; lane++) {
              b01[lane][0] = b[lane][0], b01[lane][1] = b[lane][1];
              b23[lane][0] = b[lane][2], b23[lane][1] = b[lane][3];
            }
            *layout_ok &= emu_mma(s[nt], (const uint32_t(*)[4])qf[w][mt][kk], (const uint32_t(*)[2])b01);
            *layout_ok &= emu_mma(s[nt], (const uint32_t(*)[4])qf[w][mt][kk + 1], (const uint32_t(*)[2])b23);
          }
        const int need_mask = attn_fa_tile_needs_mask(j0, EMU_BC, t->lim0);
        for (int hf = 0; hf < 2; hf++) {
          float mx[32], alpha[32], mu[32];
          for (int lane = 0; lane < 32; lane++) {
            mx[lane] = -INFINITY;
            for (int nt = 0; nt < NT; nt++)
              for (int e = 0; e < 2; e++) {
                float *x = &s[nt][lane][2 * hf + e];
                if (need_mask && j0 + nt * 8 + attn_mma_c_col(lane, 2 * hf + e) >= lim[w][mt][hf][lane]) *x = -INFINITY;
                mx[lane] = fmaxf(mx[lane], *x);
              }
          }
          float t1[32];
          for (int lane = 0; lane < 32; lane++) t1[lane] = fmaxf(mx[lane], shfl_xor(mx, lane, ATTN_MMA_ROW_XOR_A));
          for (int lane = 0; lane < 32; lane++) mx[lane] = fmaxf(t1[lane], shfl_xor(t1, lane, ATTN_MMA_ROW_XOR_B));
          for (int lane = 0; lane < 32; lane++) {
            const float mn = attn_online_max(m[w][mt][hf][lane], mx[lane], sl, &alpha[lane]);
            mu[lane] = attn_safe_max(mn);
            m[w][mt][hf][lane] = mn;
            float ls = l[w][mt][hf][lane] * alpha[lane];
            for (int dt = 0; dt < DT; dt++) {
              o[w][mt][dt][lane][2 * hf] *= alpha[lane];
              o[w][mt][dt][lane][2 * hf + 1] *= alpha[lane];
            }
            for (int nt = 0; nt < NT; nt++)
              for (int e = 0; e < 2; e++) {
                const float p = attn_p(s[nt][lane][2 * hf + e], sl, mu[lane]);
                s[nt][lane][2 * hf + e] = p;
                ls += p;
              }
            l[w][mt][hf][lane] = ls;
          }
        }
        for (int kc = 0; kc < EMU_BC / 16; kc++) {
          uint32_t pa[32][4];
          for (int lane = 0; lane < 32; lane++)
            for (int reg = 0; reg < 4; reg++) {
              const float *sc = s[2 * kc + attn_mma_p_ntile(reg)][lane];
              pa[lane][reg] =
                  kt_pack2(kt_bf16_bits(sc[attn_mma_p_elem(reg)]), kt_bf16_bits(sc[attn_mma_p_elem(reg) + 1]));
            }
          for (int dp = 0; dp < D / 16; dp++) {
            int addr[32];
            uint32_t b[32][4], b01[32][2], b23[32][2];
            for (int lane = 0; lane < 32; lane++) addr[lane] = (int)(vb - smem) + attn_fa_v_ldsm_off(lane, kc, dp, LDS);
            *layout_ok &= emu_ldmatrix_x4(b, smem, 4 * TILE, addr, 1);
            for (int lane = 0; lane < 32; lane++) {
              b01[lane][0] = b[lane][0], b01[lane][1] = b[lane][1];
              b23[lane][0] = b[lane][2], b23[lane][1] = b[lane][3];
            }
            *layout_ok &= emu_mma(o[w][mt][2 * dp], (const uint32_t(*)[4])pa, (const uint32_t(*)[2])b01);
            *layout_ok &= emu_mma(o[w][mt][2 * dp + 1], (const uint32_t(*)[4])pa, (const uint32_t(*)[2])b23);
          }
        }
      }
  }

  for (int w = 0; w < EMU_WARPS; w++)
    for (int mt = 0; mt < MT; mt++)
      for (int hf = 0; hf < 2; hf++) {
        float L[32], L1[32];
        for (int lane = 0; lane < 32; lane++) L[lane] = l[w][mt][hf][lane];
        for (int lane = 0; lane < 32; lane++) L1[lane] = L[lane] + shfl_xor(L, lane, ATTN_MMA_ROW_XOR_A);
        for (int lane = 0; lane < 32; lane++) L[lane] = L1[lane] + shfl_xor(L1, lane, ATTN_MMA_ROW_XOR_B);
        for (int lane = 0; lane < 32; lane++) {
          const float inv = attn_inv_l(L[lane]);
          const int r = attn_fa_warp_row(w, mt, MT) + attn_mma_c_row(lane, 2 * hf);
          if (r >= t->n_rows) continue;
          uint16_t *orow = t->out + (int64_t)r * t->ldo;
          for (int dt = 0; dt < DT; dt++) {
            const int c = dt * 8 + attn_mma_c_col(lane, 2 * hf);
            orow[c] = kt_bf16_bits(o[w][mt][dt][lane][2 * hf] * inv);
            orow[c + 1] = kt_bf16_bits(o[w][mt][dt][lane][2 * hf + 1] * inv);
          }
        }
      }
}

/* softmax over keys j < n of q·k_j·scale, in double, times v; rows from get(). */
static void ref_row(double *out, double *vmax, int D, const uint16_t *q, emu_src_t *src, int n, double scale) {
  double *s = malloc(sizeof(double) * (size_t)n), m = -INFINITY, sum = 0;
  for (int j = 0; j < n; j++) {
    const uint16_t *k = emu_row(src, j, 0);
    double a = 0;
    for (int d = 0; d < D; d++) a += (double)kt_bf16_value(q[d]) * kt_bf16_value(k[d]);
    s[j] = a * scale;
    if (s[j] > m) m = s[j];
  }
  for (int d = 0; d < D; d++) out[d] = 0;
  *vmax = 0;
  for (int j = 0; j < n; j++) {
    const uint16_t *v = emu_row(src, j, 1);
    double w = exp(s[j] - m);
    sum += w;
    for (int d = 0; d < D; d++) {
      out[d] += w * kt_bf16_value(v[d]);
      if (fabs(kt_bf16_value(v[d])) > *vmax) *vmax = fabs(kt_bf16_value(v[d]));
    }
  }
  for (int d = 0; d < D; d++) out[d] /= sum;
  free(s);
}

static uint16_t smem_buf[4 * EMU_BC * (EMU_MAXD + EMU_PAD)];

/* Checks rows [0, n_rows) of a block's output against the reference and that the rows after them (up to
 * the tile's BR) are untouched (poisoned 0xffff). */
static int check_block(const char *what, int D, const emu_rows_t *t, emu_src_t *src, float scale, int br_rows_after) {
  int bad = 0;
  double ref[EMU_MAXD], vmax;
  for (int r = 0; r < t->n_rows; r++) {
    const int lim = attn_fa_row_lim(t->causal, t->lim0, t->n_rows, r);
    ref_row(ref, &vmax, D, t->q + (int64_t)r * t->ldq, src, lim, scale);
    for (int d = 0; d < D; d++) {
      const double got = kt_bf16_value(t->out[(int64_t)r * t->ldo + d]);
      /* P rounded to bf16 (2^-9 relative) and the output rounded once: 1/64 of the largest |v| is ~4x that */
      if (!(fabs(got - ref[d]) <= vmax / 64 + 1e-6) && bad++ < 5)
        fprintf(stderr, "%s D=%d: row %d col %d = %g, want %g (lim %d)\n", what, D, r, d, got, ref[d], lim);
    }
  }
  for (int r = t->n_rows; r < t->n_rows + br_rows_after; r++)
    for (int d = 0; d < D; d++)
      if (t->out[(int64_t)r * t->ldo + d] != 0xffff && bad++ < 5)
        fprintf(stderr, "%s D=%d: padding row %d written\n", what, D, r);
  return bad;
}

/* fa_dense_kernel for one batch entry and one head: T rows, valid_len keys, q/k/v (T, ld) with the head's
 * columns at h·D, out (T, H, D). */
static void test_dense(int D, int T, int valid_len) {
  const int H = 3, h = 1, ld = H * D + 8, BR = EMU_WARPS * 16 * emu_mt(D);
  const float scale = 1.0f / sqrtf((float)D), sl = scale * ATTN_LOG2E;
  const int rows_alloc = T + BR; /* padding rows of the last tile: never read, never written */
  uint16_t *q = malloc(sizeof(uint16_t) * (size_t)(rows_alloc * ld)), *k = malloc(sizeof(uint16_t) * (size_t)(T * ld)),
           *v = malloc(sizeof(uint16_t) * (size_t)(T * ld)),
           *out = malloc(sizeof(uint16_t) * (size_t)(rows_alloc * H * D));
  for (int i = 0; i < rows_alloc * ld; i++) q[i] = i < T * ld ? kt_bf16_bits(kt_uniform(-2, 2)) : BF_NAN;
  for (int i = 0; i < T * ld; i++) {
    k[i] = kt_bf16_bits(kt_uniform(-2, 2));
    v[i] = kt_bf16_bits(kt_uniform(-1, 1));
  }
  for (int j = valid_len; j < T; j++) /* padded keys: huge, so a key the mask misses dominates its row */
    for (int d = 0; d < ld; d++) k[j * ld + d] = kt_bf16_bits(100.0f), v[j * ld + d] = kt_bf16_bits(1000.0f);
  memset(out, 0xff, sizeof(uint16_t) * (size_t)(rows_alloc * H * D));
  int layout_ok = 1, bad = 0;
  emu_src_t src = {k + h * D, v + h * D, ld, NULL, 0, 0, 0, 0, D, 0, valid_len, 0};
  for (int r0 = 0; r0 < T; r0 += BR) {
    emu_rows_t t = {q + (int64_t)r0 * ld + h * D,
                    out + ((int64_t)r0 * H + h) * D,
                    ld,
                    (int64_t)H * D,
                    T - r0 < BR ? T - r0 : BR,
                    valid_len,
                    0};
    emu_fa_tile(D, &t, &src, sl, smem_buf, &layout_ok);
    bad += check_block("dense", D, &t, &src, scale, T - r0 < BR ? BR - (T - r0) : 0);
  }
  T_CHECK(layout_ok, "dense D=%d T=%d: ldmatrix address or fragment layout", D, T);
  T_CHECK(src.bad_reads == 0, "dense D=%d T=%d valid %d: %d key rows read past the valid length", D, T, valid_len,
          src.bad_reads);
  T_CHECK(bad == 0, "dense D=%d T=%d valid %d: %d wrong", D, T, valid_len, bad);
  free(q);
  free(k);
  free(v);
  free(out);
}

/* fa_prefill_kernel for one sequence and one head: q_len new tokens at the end of a context of ctx_len keys
 * in a paged pool; the block table maps the blocks of positions < ctx_len (shuffled), the rest are −1. */
static void test_paged(int D, int q_len, int ctx_len) {
  const int H = 2, h = 1, L = 2, layer = 1, ldq = H * D * 3, BR = EMU_WARPS * 16 * emu_mt(D);
  const int n_used = (ctx_len + ES_KV_BLOCK - 1) / ES_KV_BLOCK, max_blocks = n_used + 3, n_blocks = n_used + 5;
  const float scale = 1.0f / sqrtf((float)D), sl = scale * ATTN_LOG2E;
  const int64_t pool_elems = (int64_t)L * n_blocks * 2 * H * ES_KV_BLOCK * D;
  uint16_t *pool = malloc(sizeof(uint16_t) * (size_t)pool_elems);
  int32_t *table = malloc(sizeof(int32_t) * (size_t)max_blocks);
  const int rows_alloc = q_len + BR;
  uint16_t *q = malloc(sizeof(uint16_t) * (size_t)(rows_alloc * ldq)),
           *out = malloc(sizeof(uint16_t) * (size_t)(rows_alloc * H * D));
  for (int64_t i = 0; i < pool_elems; i++) pool[i] = BF_NAN; /* an unwritten slot read by mistake shows */
  for (int b = 0; b < max_blocks; b++) table[b] = b < n_used ? 1 + b : -1;
  for (int b = n_used - 1; b > 0; b--) { /* shuffle the used blocks (block 0 stays the scratch block) */
    int o = kt_int(b + 1), tmp = table[b];
    table[b] = table[o];
    table[o] = tmp;
  }
  emu_src_t src = {pool, pool, 0, table, layer, n_blocks, H, h, D, pool_elems, ctx_len, 0};
  for (int j = 0; j < ctx_len; j++)
    for (int which = 0; which < 2; which++) {
      int64_t off = attn_kv_pos_offset(table, j, layer, n_blocks, which, H, h, D);
      for (int d = 0; d < D; d++) pool[off + d] = kt_bf16_bits(which ? kt_uniform(-1, 1) : kt_uniform(-2, 2));
    }
  for (int i = 0; i < rows_alloc * ldq; i++) q[i] = i < q_len * ldq ? kt_bf16_bits(kt_uniform(-2, 2)) : BF_NAN;
  memset(out, 0xff, sizeof(uint16_t) * (size_t)(rows_alloc * H * D));
  int layout_ok = 1, bad = 0;
  const int n_qt = (q_len + BR - 1) / BR;
  for (int bx = 0; bx < n_qt; bx++) {
    const int qt = n_qt - 1 - bx, r0 = qt * BR; /* the kernel's order: the last tile first */
    emu_rows_t t = {q + (int64_t)r0 * ldq + h * D,     out + ((int64_t)r0 * H + h) * D,           ldq, (int64_t)H * D,
                    q_len - r0 < BR ? q_len - r0 : BR, (int)attn_causal_keys(ctx_len, q_len, r0), 1};
    emu_fa_tile(D, &t, &src, sl, smem_buf, &layout_ok);
    bad += check_block("paged", D, &t, &src, scale, q_len - r0 < BR ? BR - (q_len - r0) : 0);
  }
  T_CHECK(layout_ok, "paged D=%d: ldmatrix address or fragment layout", D);
  T_CHECK(src.bad_reads == 0, "paged D=%d q %d ctx %d: %d reads past the context or outside the pool", D, q_len,
          ctx_len, src.bad_reads);
  T_CHECK(bad == 0, "paged D=%d q %d ctx %d: %d wrong", D, q_len, ctx_len, bad);
  free(pool);
  free(table);
  free(q);
  free(out);
}

int main(void) {
  static const int Ds[] = {64, 128};
  test_rows();
  for (int di = 0; di < 2; di++) {
    const int D = Ds[di];
    test_chunks(D);
    for (int w = 0; w < EMU_WARPS; w++) test_qk(D, w);
    test_pv(D);
    static const int Ts[] = {1, 5, 63, 64, 65, 127, 128, 129, 200};
    for (size_t i = 0; i < sizeof Ts / sizeof *Ts; i++) {
      const int T = Ts[i];
      test_dense(D, T, T);
      test_dense(D, T, 1);
      if (T > 2) test_dense(D, T, 1 + kt_int(T - 1));
    }
    test_dense(D, 128, 63); /* the last key of a tile hidden from every row: the tile still needs its mask */
    test_dense(D, 200, 127);
    static const int qs[][2] = {{5, 5},     {6, 70},    {63, 63},   {64, 64},   {65, 65},
                                {127, 127}, {128, 128}, {129, 129}, {129, 300}, {200, 200},
                                {70, 333},  {5, 1000},  {70, 132},  {64, 126}}; /* ctx − q ≡ 62 (mod 64): row 0 sees 64k
                                                                                   + 63 keys */
    for (size_t i = 0; i < sizeof qs / sizeof *qs; i++) test_paged(D, qs[i][0], qs[i][1]);
  }
  return t_finish();
}
