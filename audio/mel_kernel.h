/* mel_kernel: the per-frame arithmetic of audio_mel (window, real DFT of 400 points, power, sparse mel
 * projection, floored log10), computed for several frames at once, one frame per SIMD lane. Internal to
 * earshot_audio_mel; audio_mel.c owns the contexts and threads, tests/audio/test_audio_mel.c checks the
 * DFT against a double-precision one. See mel_kernel.c for the algorithm and the measurements.
 *
 * Thread safety: the tables are written once by mel_tables_init and then only read; the kernels keep
 * their scratch on the stack, so any number of threads may run them on the same tables.
 */
#pragma once

#include <stddef.h>

#include "audio_mel.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MEL_FFT_HALF (MEL_N_FFT / 2) /* the real 400-point DFT runs as a complex 200-point one */
#define MEL_TW_MAX 256               /* twiddles of all Stockham stages together (used: 195) */
#define MEL_FILT_MAX 16              /* bins of the widest filter (the 128 Slaney filters: <= 9) */

/* Which instruction set runs the kernel. Every variant does the same IEEE operations in the same order
 * (no FMA, -ffp-contract=off), so all of them give bit-identical features. The DFT runs in double: one
 * frame per double lane. */
typedef enum {
  MEL_ISA_AUTO = 0,    /* the widest this CPU supports */
  MEL_ISA_GENERIC = 1, /* 2 frames per 16-byte vector: SSE2 on x86-64, NEON on arm64, scalar elsewhere */
  MEL_ISA_AVX2 = 2,    /* 4 frames per 32-byte vector (x86-64 builds only) */
  MEL_ISA_AVX512 = 3,  /* 8 frames per 64-byte vector (AVX-512F; x86-64 builds only) */
} mel_isa_t;

/* Read-only tables shared by all kernel variants. */
typedef struct {
  float window[MEL_N_FFT];                       /* periodic Hann */
  double tw_re[MEL_TW_MAX], tw_im[MEL_TW_MAX];   /* Stockham stage twiddles e^{-2 pi i p k / n} */
  double post_re[MEL_FFT_HALF / 2 + 1];          /* e^{-2 pi i k / 400}, k = 0..100: real-DFT split */
  double post_im[MEL_FFT_HALF / 2 + 1];
  int filt_lo[MEL_N_MELS];                       /* filter m is nonzero on bins [lo, lo + len) */
  int filt_len[MEL_N_MELS];
  float filt_w[MEL_N_MELS][MEL_FILT_MAX];        /* filt_w[m][j] = H[lo + j, m], float32 like the torch path */
} mel_tables_t;

/* Fills the FFT tables (window, twiddles); the filter bank is filled by audio_mel.c. */
void mel_tables_init_fft(mel_tables_t *tb);

/* 1 if this CPU can run isa (AUTO: always), else 0. */
int mel_isa_supported(mel_isa_t isa);
/* The variant AUTO resolves to here; another isa is returned as is. */
mel_isa_t mel_isa_resolve(mel_isa_t isa);
const char *mel_isa_name(mel_isa_t isa);

/* log10(max(mel, 1e-10)) of frames [t0, t1) of the window x[0..n) (zero-padded to 480000 samples,
 * reflect-extended by 200 at both ends), written to out[m * 3000 + t], m = 0..127. Returns the largest
 * value written (-INFINITY when t0 == t1). isa must be supported and not AUTO. Each frame's values
 * depend only on its samples, not on t0, t1 or isa. */
float mel_kernel_frames(mel_isa_t isa, const mel_tables_t *tb, const float *x, size_t n, int t0, int t1,
                        float *out);

/* For tests: the one-sided DFT X[k] = sum_j frames[f][j] e^{-2 pi i j k / 400}, k = 0..200, of
 * n_frames frames of 400 samples (no window), by the same code the kernel uses. re, im: [n_frames][201]. */
void mel_kernel_rdft(mel_isa_t isa, const mel_tables_t *tb, const float *frames, int n_frames, float *re,
                     float *im);

/* For tests and benchmarks: runs ctx's kernel as isa from now on (AUTO: the default choice). ES_EINVAL
 * when this CPU or build cannot run it. The features do not change (see mel_isa_t). */
int mel_ctx_set_isa(mel_ctx_t *ctx, mel_isa_t isa, es_error_t *err);
mel_isa_t mel_ctx_isa(const mel_ctx_t *ctx);

#ifdef __cplusplus
}
#endif
