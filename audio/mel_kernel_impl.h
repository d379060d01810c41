/* mel_kernel_impl.h: the kernel body, included by mel_kernel.c once per instruction set (no include guard).
 * Before including, define MK_V (frames per block, one per lane: 2, 4, 8 doubles fill a 16-, 32-, 64-byte
 * vector), MK_SFX (a name suffix) and MK_TARGET (a function attribute selecting the instruction set, or
 * nothing). Written with GCC/Clang vector extensions: every operation is elementwise IEEE arithmetic, the
 * same sequence in every lane and every variant. (Blocks wider than the machine's vectors, e.g. 8 doubles
 * under AVX2, made GCC 12 lower the code badly: 13 ms instead of 2.2 ms per window.)
 *
 * Layout: structure of arrays across frames. A vector holds sample/bin j of MK_V consecutive frames, so
 * the whole DFT is straight-line vector code with no shuffles, and the mel rows come out as MK_V
 * consecutive frames of out[m][...], stored with one vector store.
 */
#define MK_CAT2(a, b) a##_##b
#define MK_CAT(a, b) MK_CAT2(a, b)
#define MK(name) MK_CAT(name, MK_SFX)
#define VF MK(vf)
#define VU MK(vu)
#define VI MK(vi)
#define VD MK(vd)

typedef float VF __attribute__((vector_size(MK_V * 4)));
typedef uint32_t VU __attribute__((vector_size(MK_V * 4)));
typedef int32_t VI __attribute__((vector_size(MK_V * 4)));
typedef double VD __attribute__((vector_size(MK_V * 8)));

/* Stockham autosort, decimation in frequency (natural order in and out). A stage of radix r on length n
 * with stride s (m = n / r): for p < m, q < s, the r inputs x[q + s (p + j m)] go through an r-point DFT
 * and output k is multiplied by e^{-2 pi i p k / n} and stored at y[q + s (r p + k)]. */
static inline MK_TARGET void MK(stage4)(int n, int s, const VD *restrict xr, const VD *restrict xi,
                                         VD *restrict yr, VD *restrict yi, const double *twr, const double *twi) {
  const int m = n / 4;
  for (int p = 0; p < m; p++) {
    const double *wr = twr + 3 * p, *wi = twi + 3 * p;
    for (int q = 0; q < s; q++) {
      const int i0 = q + s * p, i1 = i0 + s * m, i2 = i1 + s * m, i3 = i2 + s * m;
      const VD sr = xr[i0] + xr[i2], si = xi[i0] + xi[i2], ur = xr[i0] - xr[i2], ui = xi[i0] - xi[i2];
      const VD tr = xr[i1] + xr[i3], ti = xi[i1] + xi[i3], vr = xr[i1] - xr[i3], vi = xi[i1] - xi[i3];
      /* A0 = s + t, A2 = s - t, A1 = u - i v, A3 = u + i v */
      const VD a0r = sr + tr, a0i = si + ti, a2r = sr - tr, a2i = si - ti;
      const VD a1r = ur + vi, a1i = ui - vr, a3r = ur - vi, a3i = ui + vr;
      const int o = q + s * 4 * p;
      yr[o] = a0r;
      yi[o] = a0i;
      if (p == 0) {
        yr[o + s] = a1r, yi[o + s] = a1i;
        yr[o + 2 * s] = a2r, yi[o + 2 * s] = a2i;
        yr[o + 3 * s] = a3r, yi[o + 3 * s] = a3i;
      } else {
        yr[o + s] = a1r * wr[0] - a1i * wi[0], yi[o + s] = a1r * wi[0] + a1i * wr[0];
        yr[o + 2 * s] = a2r * wr[1] - a2i * wi[1], yi[o + 2 * s] = a2r * wi[1] + a2i * wr[1];
        yr[o + 3 * s] = a3r * wr[2] - a3i * wi[2], yi[o + 3 * s] = a3r * wi[2] + a3i * wr[2];
      }
    }
  }
}

static inline MK_TARGET void MK(stage2)(int n, int s, const VD *restrict xr, const VD *restrict xi,
                                         VD *restrict yr, VD *restrict yi, const double *twr, const double *twi) {
  const int m = n / 2;
  for (int p = 0; p < m; p++) {
    for (int q = 0; q < s; q++) {
      const int i0 = q + s * p, i1 = i0 + s * m, o = q + s * 2 * p;
      const VD dr = xr[i0] - xr[i1], di = xi[i0] - xi[i1];
      yr[o] = xr[i0] + xr[i1];
      yi[o] = xi[i0] + xi[i1];
      if (p == 0) {
        yr[o + s] = dr, yi[o + s] = di;
      } else {
        yr[o + s] = dr * twr[p] - di * twi[p], yi[o + s] = dr * twi[p] + di * twr[p];
      }
    }
  }
}

static inline MK_TARGET void MK(stage5)(int n, int s, const VD *restrict xr, const VD *restrict xi,
                                         VD *restrict yr, VD *restrict yi, const double *twr, const double *twi) {
  const double c1 = MK_C1, c2 = MK_C2, s1 = MK_S1, s2 = MK_S2;
  const int m = n / 5;
  for (int p = 0; p < m; p++) {
    const double *wr = twr + 4 * p, *wi = twi + 4 * p;
    for (int q = 0; q < s; q++) {
      const int i0 = q + s * p, i1 = i0 + s * m, i2 = i1 + s * m, i3 = i2 + s * m, i4 = i3 + s * m;
      const VD t1r = xr[i1] + xr[i4], t1i = xi[i1] + xi[i4], t3r = xr[i1] - xr[i4], t3i = xi[i1] - xi[i4];
      const VD t2r = xr[i2] + xr[i3], t2i = xi[i2] + xi[i3], t4r = xr[i2] - xr[i3], t4i = xi[i2] - xi[i3];
      const VD a0r = xr[i0], a0i = xi[i0];
      /* A1,4 = b1 -/+ i d1, A2,3 = b2 -/+ i d2 (forward transform, w = e^{-2 pi i / 5}) */
      const VD b1r = a0r + c1 * t1r + c2 * t2r, b1i = a0i + c1 * t1i + c2 * t2i;
      const VD b2r = a0r + c2 * t1r + c1 * t2r, b2i = a0i + c2 * t1i + c1 * t2i;
      const VD d1r = s1 * t3r + s2 * t4r, d1i = s1 * t3i + s2 * t4i;
      const VD d2r = s2 * t3r - s1 * t4r, d2i = s2 * t3i - s1 * t4i;
      const VD a1r = b1r + d1i, a1i = b1i - d1r, a4r = b1r - d1i, a4i = b1i + d1r;
      const VD a2r = b2r + d2i, a2i = b2i - d2r, a3r = b2r - d2i, a3i = b2i + d2r;
      const int o = q + s * 5 * p;
      yr[o] = a0r + t1r + t2r;
      yi[o] = a0i + t1i + t2i;
      if (p == 0) {
        yr[o + s] = a1r, yi[o + s] = a1i;
        yr[o + 2 * s] = a2r, yi[o + 2 * s] = a2i;
        yr[o + 3 * s] = a3r, yi[o + 3 * s] = a3i;
        yr[o + 4 * s] = a4r, yi[o + 4 * s] = a4i;
      } else {
        yr[o + s] = a1r * wr[0] - a1i * wi[0], yi[o + s] = a1r * wi[0] + a1i * wr[0];
        yr[o + 2 * s] = a2r * wr[1] - a2i * wi[1], yi[o + 2 * s] = a2r * wi[1] + a2i * wr[1];
        yr[o + 3 * s] = a3r * wr[2] - a3i * wi[2], yi[o + 3 * s] = a3r * wi[2] + a3i * wr[2];
        yr[o + 4 * s] = a4r * wr[3] - a4i * wi[3], yi[o + 4 * s] = a4r * wi[3] + a4i * wr[3];
      }
    }
  }
}

/* One-sided DFT of MK_V real 400-sample frames. In: z[j] = x[2j] + i x[2j+1] as zr, zi [200]; they end up
 * holding Z, with sr, si [200] as the other Stockham buffer. Out: X[k] as outr, outi [201], which may be
 * sr, si (then 201 entries long): the split reads only zr, zi. Z = FFT_200(z), then with
 * E = (Z[k] + conj Z[200-k]) / 2 and O = (Z[k] - conj Z[200-k]) / 2i: X[k] = E + W^k O and
 * X[200-k] = conj(E - W^k O), W = e^{-2 pi i / 400}. */
static inline MK_TARGET void MK(rdft)(const mel_tables_t *tb, VD *zr, VD *zi, VD *sr, VD *si, VD *outr,
                                       VD *outi) {
  /* 200 = 4 * 2 * 5 * 5; the last stage (m = 1) needs no twiddles */
  MK(stage4)(200, 1, zr, zi, sr, si, tb->tw_re + MEL_TW_OFF4, tb->tw_im + MEL_TW_OFF4);
  MK(stage2)(50, 4, sr, si, zr, zi, tb->tw_re + MEL_TW_OFF2, tb->tw_im + MEL_TW_OFF2);
  MK(stage5)(25, 8, zr, zi, sr, si, tb->tw_re + MEL_TW_OFF5, tb->tw_im + MEL_TW_OFF5);
  MK(stage5)(5, 40, sr, si, zr, zi, tb->tw_re, tb->tw_im);
  const VD half = (VD){0} + 0.5;
  outr[0] = zr[0] + zi[0];
  outi[0] = (VD){0};
  outr[MEL_FFT_HALF] = zr[0] - zi[0];
  outi[MEL_FFT_HALF] = (VD){0};
  for (int k = 1; k < MEL_FFT_HALF / 2; k++) {
    const int j = MEL_FFT_HALF - k;
    const VD er = half * (zr[k] + zr[j]), ei = half * (zi[k] - zi[j]);
    const VD or_ = half * (zi[k] + zi[j]), oi = half * (zr[j] - zr[k]);
    const double wr = tb->post_re[k], wi = tb->post_im[k];
    const VD pr = or_ * wr - oi * wi, pi = or_ * wi + oi * wr;
    outr[k] = er + pr;
    outi[k] = ei + pi;
    outr[j] = er - pr;
    outi[j] = pi - ei;
  }
  /* k = 100: W^100 = -i exactly, X[100] = conj Z[100] */
  outr[MEL_FFT_HALF / 2] = zr[MEL_FFT_HALF / 2];
  outi[MEL_FFT_HALF / 2] = -zi[MEL_FFT_HALF / 2];
}

/* log10(max(x, 1e-10)) for x >= +0, lane by lane: see log10_floored in audio_mel.c's history. x = m 2^e with
 * m in [sqrt(1/2), sqrt(2)); ln m = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172, five series terms;
 * within 2e-6 of log10f. The floor is an integer max on the bit pattern (non-negative floats order as
 * their bits). */
static inline MK_TARGET VF MK(log10_floored)(VF x) {
  const VU floor_bits = (VU){0} + MEL_LOG_FLOOR_BITS;
  VU u = (VU)x;
  const VU gt = (VU)(u > floor_bits);
  u = (u & gt) | (floor_bits & ~gt);
  const VU v = u + (0x3f800000u - 0x3f3504f3u); /* shifts the exponent boundary to sqrt(1/2) */
  const VI e = (VI)(v >> 23) - 127;
  const VF m = (VF)((v & 0x007fffffu) + 0x3f3504f3u);
  const VF f = m - 1.0f, s = f / (2.0f + f), z = s * s;
  const VF ln_m = 2.0f * s * (1.0f + z * (1.0f / 3 + z * (1.0f / 5 + z * (1.0f / 7 + z * (1.0f / 9)))));
  const VF ef = __builtin_convertvector(e, VF);
  const VF ln_x = ef * 0.693145752f + (ef * 1.42860677e-06f + ln_m); /* ln 2 split hi + lo */
  return ln_x * 0.434294482f;
}

/* Samples of frames t0 .. t0 + MK_V - 1 (lanes past nb are zero), windowed in double (a float sample
 * times a float window value is exact there) and packed as z = even + i odd. Returns 0 when every sample
 * is zero: the spectrum is then exactly zero and the DFT can be skipped without changing a bit. */
static inline MK_TARGET int MK(load_frames)(const mel_tables_t *tb, const float *x, size_t n, int t0, int nb,
                                             VF *raw, VD *zr, VD *zi) {
  for (int l = 0; l < MK_V; l++) {
    const long start = (long)(t0 + l) * MEL_HOP - MEL_N_FFT / 2; /* first sample in window coordinates */
    if (l >= nb) {
      for (int j = 0; j < MEL_N_FFT; j++) raw[j][l] = 0.0f;
    } else if (start >= 0 && (size_t)(start + MEL_N_FFT) <= n) {
      const float *xs = x + start;
      for (int j = 0; j < MEL_N_FFT; j++) raw[j][l] = xs[j];
    } else {
      for (int j = 0; j < MEL_N_FFT; j++) raw[j][l] = mel_padded_sample(x, n, start + j);
    }
  }
  VU any = (VU){0};
  for (int j = 0; j < MEL_FFT_HALF; j++) {
    const VF a = raw[2 * j], b = raw[2 * j + 1];
    zr[j] = __builtin_convertvector(a, VD) * tb->window[2 * j];
    zi[j] = __builtin_convertvector(b, VD) * tb->window[2 * j + 1];
    any |= ((VU)a | (VU)b) & 0x7fffffffu; /* -0.0 counts as zero */
  }
  uint32_t nonzero = 0;
  for (int l = 0; l < MK_V; l++) nonzero |= any[l];
  return nonzero != 0;
}

/* The mel energies of one block in double (float32 filter weights, as the torch path casts them), rounded
 * once to float, then the floored log10 in float. */
static MK_TARGET float MK(mel_frames)(const mel_tables_t *tb, const float *x, size_t n, int t0, int t1,
                                      float *out) {
  /* ~64 KiB of stack at MK_V = 8 */
  VF raw[MEL_N_FFT];
  VD zr[MEL_N_FREQ], zi[MEL_N_FREQ], sr[MEL_N_FREQ], si[MEL_N_FREQ];
  float mx = -INFINITY;
  for (int tb0 = t0; tb0 < t1; tb0 += MK_V) {
    const int nb = t1 - tb0 < MK_V ? t1 - tb0 : MK_V;
    VD *power = zr; /* [201] */
    if (MK(load_frames)(tb, x, n, tb0, nb, raw, zr, zi)) {
      MK(rdft)(tb, zr, zi, sr, si, sr, si); /* X lands in sr, si once zr, zi hold Z: see rdft */
      for (int k = 0; k < MEL_N_FREQ; k++) power[k] = sr[k] * sr[k] + si[k] * si[k];
    } else {
      for (int k = 0; k < MEL_N_FREQ; k++) power[k] = (VD){0};
    }
    VF vmax = (VF){0} - INFINITY;
    for (int m = 0; m < MEL_N_MELS; m++) {
      const VD *p = power + tb->filt_lo[m];
      const float *w = tb->filt_w[m];
      VD acc = (VD){0};
      for (int j = 0; j < tb->filt_len[m]; j++) acc = acc + (double)w[j] * p[j];
      const VF lm = MK(log10_floored)(__builtin_convertvector(acc, VF));
      float *row = out + (size_t)m * MEL_N_FRAMES + tb0;
      if (nb == MK_V) {
        memcpy(row, &lm, sizeof lm);
        const VI gt = lm > vmax;
        vmax = (VF)(((VI)lm & gt) | ((VI)vmax & ~gt));
      } else {
        for (int l = 0; l < nb; l++) {
          row[l] = lm[l];
          mx = lm[l] > mx ? lm[l] : mx;
        }
      }
    }
    for (int l = 0; l < MK_V; l++) mx = vmax[l] > mx ? vmax[l] : mx;
  }
  return mx;
}

static MK_TARGET void MK(rdft_frames)(const mel_tables_t *tb, const float *frames, int n_frames, float *re,
                                      float *im) {
  VD zr[MEL_N_FREQ], zi[MEL_N_FREQ], sr[MEL_N_FREQ], si[MEL_N_FREQ];
  for (int f0 = 0; f0 < n_frames; f0 += MK_V) {
    for (int l = 0; l < MK_V; l++) {
      const float *fr = frames + (size_t)(f0 + l) * MEL_N_FFT;
      for (int j = 0; j < MEL_FFT_HALF; j++) {
        zr[j][l] = f0 + l < n_frames ? fr[2 * j] : 0.0;
        zi[j][l] = f0 + l < n_frames ? fr[2 * j + 1] : 0.0;
      }
    }
    MK(rdft)(tb, zr, zi, sr, si, sr, si);
    for (int l = 0; l < MK_V && f0 + l < n_frames; l++) {
      for (int k = 0; k < MEL_N_FREQ; k++) {
        re[(size_t)(f0 + l) * MEL_N_FREQ + k] = (float)sr[k][l];
        im[(size_t)(f0 + l) * MEL_N_FREQ + k] = (float)si[k][l];
      }
    }
  }
}

#undef VF
#undef VU
#undef VI
#undef VD
#undef MK
#undef MK_CAT
#undef MK_CAT2
