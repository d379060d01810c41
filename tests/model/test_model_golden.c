/* test_model_golden: the forward pass against transformers on every golden checkpoint and case (tests/golden),
 * on either backend:
 *
 *   test_model_golden cpu  float32    the CPU reference backend
 *   test_model_golden cuda float32    the CUDA backend in fp32 (TF32 off)
 *   test_model_golden cuda bfloat16   the CUDA backend in bf16
 *   test_model_golden cpu float32 fp8 / cuda bfloat16 fp8 / cuda float32 fp8
 *                                     the decoder's linear weights in FP8 e4m3 (--quantization fp8)
 *   test_model_golden cpu float32 kvfp8 / cuda bfloat16 kvfp8
 *                                     the KV cache in FP8 e4m3 (--kv-cache-dtype fp8)
 *
 * float32 is held to D2's thresholds: audio embeddings, last-position logits and the teacher-forced top-8
 * logits within relative error 1e-4 (max |Δ| / max |ref|), every greedy token identical, the same top-1 at
 * every teacher-forced step. bfloat16 is held to agreement, not bits: cosine similarity of the last-position
 * logits >= 0.999 in every case, and top-1 agreement >= 95% pooled over all teacher-forced steps (>= 128).
 * The teacher-forced pass prefills prompt + recorded continuation in chunks of 128 rows, so chunked prefill
 * over a cached prefix is exercised. Inputs are the golden features, so this tests the model alone (audio_mel
 * has its own golden test). The cuda runs skip (exit 77) without the CUDA backend or without a GPU.
 *
 * fp8 is held to agreement with transformers' fp32/bf16 reference, at thresholds set from measurements
 * (FP8_* below); in float32 the audio embeddings still meet 1e-4 (the encoder is not quantised).
 */
#include <math.h>
#include <stdio.h>

#include "es_gpu.h"
#include "gpu_skip.h"
#include "model_harness.h"
#include "test_util.h"

#define REL_TOL 1e-4
#define BF16_COSINE 0.999
#define BF16_TOP1 0.95
#define BF16_MIN_STEPS 128
/* fp8 thresholds. Measured on the CPU (float32 + fp8 decoder linears), 2026-11-27: worst last-position cosine
 * 0.984369 (a-analysis-sound), top-1 agreement 217/260 = 0.8346 — the same per case, to 1e-6 in the cosines,
 * as transformers' fp32 forward with torch.float8_e4m3fn per-channel weights (scripts/fp8-golden-sim.py), so
 * the loss is fp8's, not ours. The tiny checkpoints are random models with hidden sizes 8-256 and flat logits,
 * so a 2⁻⁴ relative weight error flips many top-1s; a real 7B model loses far less. Headroom: 0.98 / 0.80.
 * In bf16 the bf16 roundings add what the bf16 thresholds allow (0.001 cosine, 5% top-1), with margin. */
#define FP8_COSINE (DT == ES_DT_F32 ? 0.98 : 0.975)
#define FP8_TOP1 (DT == ES_DT_F32 ? 0.80 : 0.75)
/* fp8 KV cache thresholds, set the same way. Measured on the CPU (float32, --kv-cache-dtype fp8), 2026-11-27:
 * worst last-position cosine 0.996382 (b-two-audios), top-1 agreement 256/260 = 0.9846 — the same per case as
 * transformers' fp32 eager forward with every key and value rounded as the cache stores them
 * (`scripts/fp8-golden-sim.py . kv`). Headroom: 0.995 / 0.95; in bf16 the bf16 thresholds' allowance on top. */
#define KVFP8_COSINE_F32 0.995
#define KVFP8_TOP1_F32 0.95
#define KVFP8_COSINE (DT == ES_DT_F32 ? KVFP8_COSINE_F32 : KVFP8_COSINE_F32 - 0.005)
#define KVFP8_TOP1 (DT == ES_DT_F32 ? KVFP8_TOP1_F32 : KVFP8_TOP1_F32 - 0.05)

static golden_t G;
static es_dtype_t DT;
static int FP8;   /* fp8 decoder linears */
static int KVFP8; /* fp8 KV cache */
static double worst_cosine = 1.0;
static int (*CREATE)(const es_backend_opts_t *, es_backend_t **, es_error_t *);
static int pooled_steps, pooled_top1;

static double cosine(const float *a, const float *b, size_t n) {
  double ab = 0, aa = 0, bb = 0;
  for (size_t i = 0; i < n; i++) {
    ab += (double)a[i] * b[i];
    aa += (double)a[i] * a[i];
    bb += (double)b[i] * b[i];
  }
  return aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : 0.0;
}

static void run_case(const cJSON *c) {
  es_error_t err;
  es_error_clear(&err);
  const char *name = cJSON_GetObjectItemCaseSensitive(c, "name")->valuestring;
  const char *ck_name = cJSON_GetObjectItemCaseSensitive(c, "checkpoint")->valuestring;
  const cJSON *ckj =
      cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(G.manifest, "checkpoints"), ck_name);
  char dir[1400];
  golden_path(&G, cJSON_GetObjectItemCaseSensitive(ckj, "dir")->valuestring, dir, sizeof dir, &err);
  int f32 = DT == ES_DT_F32 && !FP8 && !KVFP8; /* held to D2's bit-level thresholds */

  mh_model_t h;
  int rc = mh_open_quant(&h, dir, CREATE, DT, FP8 ? QA_QUANT_FP8 : QA_QUANT_NONE, KVFP8, &err);
  T_CHECK(rc == 0, "%s: open %s: %s", name, dir, err.msg);
  if (rc) {
    mh_close(&h);
    return;
  }
  /* EARSHOT_FUSE_PROJECTIONS=1 (registered that way too): every decoder layer must run stacked projections */
  const char *fuse = getenv("EARSHOT_FUSE_PROJECTIONS");
  if (fuse && !strcmp(fuse, "1"))
    T_CHECK(qa_model_fused_layers(h.m) == h.cfg.num_hidden_layers, "%s: %d of %d layers fused", name,
            qa_model_fused_layers(h.m), h.cfg.num_hidden_layers);
  npy_array_t ids = {0}, emb = {0}, last = {0}, greedy = {0}, t8i = {0}, t8l = {0};
  float *got_emb = NULL, *logits = NULL;
  int32_t *tf = NULL;
  int V = h.cfg.vocab_size, E = h.cfg.hidden_size;
  if (golden_read_npy(&G, cJSON_GetObjectItemCaseSensitive(c, "prompt_ids")->valuestring, &ids, &err) ||
      golden_read_npy(&G, cJSON_GetObjectItemCaseSensitive(c, "audio_embeds")->valuestring, &emb, &err) ||
      golden_read_npy(&G, cJSON_GetObjectItemCaseSensitive(c, "last_logits")->valuestring, &last, &err) ||
      golden_read_npy(&G, cJSON_GetObjectItemCaseSensitive(c, "greedy_ids")->valuestring, &greedy, &err) ||
      golden_read_npy(&G, cJSON_GetObjectItemCaseSensitive(c, "top8_ids")->valuestring, &t8i, &err) ||
      golden_read_npy(&G, cJSON_GetObjectItemCaseSensitive(c, "top8_logits")->valuestring, &t8l, &err)) {
    T_CHECK(0, "%s: %s", name, err.msg);
    goto done;
  }
  int T = (int)ids.count, S = (int)greedy.count;
  logits = malloc(sizeof(float) * (size_t)V * 64);
  got_emb = malloc(sizeof(float) * (size_t)(emb.count ? emb.count : 1));
  if (!logits || !got_emb || T + S > MH_MAX_TOKENS || S > 64) {
    T_CHECK(0, "%s: case too large for the harness", name);
    goto done;
  }

  /* 1. audio embeddings */
  int rows = 0;
  rc = mh_encode_case(&h, &G, c, &rows, &err);
  T_CHECK(rc == 0, "%s: encode: %s", name, err.msg);
  if (rc) goto done;
  T_CHECK(rows == emb.shape[0], "%s: %d audio rows, golden has %lld", name, rows, (long long)emb.shape[0]);
  if (rows != emb.shape[0]) goto done;
  rc = qa_read_audio_rows(h.m, 0, rows, got_emb, &err);
  T_CHECK(rc == 0, "%s: %s", name, err.msg);
  double e_emb = mh_rel_err(got_emb, emb.data, (size_t)rows * (size_t)E);
  double c_emb = cosine(got_emb, emb.data, (size_t)rows * (size_t)E);
  if (DT == ES_DT_F32) T_CHECK(e_emb <= REL_TOL, "%s: audio embeddings rel err %.3g", name, e_emb);

  /* 2. last-position logits, 3. greedy continuation */
  kv_seq_t seq = {0};
  int last_row = T - 1;
  rc = mh_prefill(&h, &seq, ids.data, T, MH_MAX_TOKENS, &last_row, 1, logits, &err);
  T_CHECK(rc == 0, "%s: prefill: %s", name, err.msg);
  if (rc) {
    kv_seq_release(h.kv, &seq);
    goto done;
  }
  double e_last = mh_rel_err(logits, last.data, (size_t)V), c_last = cosine(logits, last.data, (size_t)V);
  if (f32)
    T_CHECK(e_last <= REL_TOL, "%s: last-position logits rel err %.3g", name, e_last);
  else if (FP8)
    T_CHECK(c_last >= FP8_COSINE, "%s: fp8 last-position logits cosine %.6f < %.3f", name, c_last, FP8_COSINE);
  else if (KVFP8)
    T_CHECK(c_last >= KVFP8_COSINE, "%s: fp8 KV cache: last-position logits cosine %.6f < %.4f", name, c_last,
            KVFP8_COSINE);
  else
    T_CHECK(c_last >= BF16_COSINE, "%s: last-position logits cosine %.6f < %.3f", name, c_last, BF16_COSINE);
  if (c_last < worst_cosine) worst_cosine = c_last;
  const int32_t *g = greedy.data;
  int mismatch = -1;
  for (int s = 0; s < S && !rc; s++) {
    int next = mh_argmax(logits, V);
    if (next != g[s] && mismatch < 0) mismatch = s;
    if (s + 1 < S) rc = mh_decode(&h, &seq, T + s, g[s], logits, &err); /* teacher-forced by the golden ids */
  }
  T_CHECK(rc == 0, "%s: decode: %s", name, err.msg);
  if (f32) T_CHECK(mismatch < 0, "%s: greedy token %d differs from transformers", name, mismatch);
  kv_seq_release(h.kv, &seq);

  /* 4. teacher-forced pass, chunked prefill over the cached prefix */
  tf = malloc(sizeof(int32_t) * (size_t)(T + S));
  int want[64];
  if (!tf) goto done;
  memcpy(tf, ids.data, sizeof(int32_t) * (size_t)T);
  memcpy(tf + T, g, sizeof(int32_t) * (size_t)(S - 1));
  for (int s = 0; s < S; s++) want[s] = T - 1 + s;
  kv_seq_t seq2 = {0};
  rc = mh_prefill(&h, &seq2, tf, T + S - 1, 128, want, S, logits, &err);
  T_CHECK(rc == 0, "%s: teacher-forced prefill: %s", name, err.msg);
  double worst = 0;
  int top1_bad = 0;
  for (int s = 0; s < S && !rc; s++) {
    const float *row = logits + (size_t)s * (size_t)V;
    const int32_t *ti = (const int32_t *)t8i.data + s * 8;
    const float *tl = (const float *)t8l.data + s * 8;
    float got8[8];
    for (int k = 0; k < 8; k++) got8[k] = row[ti[k]];
    double e = mh_rel_err(got8, tl, 8);
    if (e > worst) worst = e;
    if (mh_argmax(row, V) != ti[0]) top1_bad++;
  }
  if (!rc) {
    pooled_steps += S;
    pooled_top1 += S - top1_bad;
  }
  if (f32) {
    T_CHECK(worst <= REL_TOL, "%s: teacher-forced top-8 logits rel err %.3g", name, worst);
    T_CHECK(top1_bad == 0, "%s: %d teacher-forced steps with a different top-1", name, top1_bad);
  }
  kv_seq_release(h.kv, &seq2);
  T_CHECK(kv_pool_free_count(h.kv) == kv_pool_total(h.kv), "%s: KV blocks leaked", name);
  printf("%-18s T=%4d audio %4d  emb rel %.2e cos %.6f  last rel %.2e cos %.6f  greedy %s  tf rel %.2e top1 %d/%d\n",
         name, T, rows, e_emb, c_emb, e_last, c_last, mismatch < 0 ? "same" : "differs", worst, S - top1_bad, S);

done:
  free(tf);
  free(logits);
  free(got_emb);
  npy_free(&ids);
  npy_free(&emb);
  npy_free(&last);
  npy_free(&greedy);
  npy_free(&t8i);
  npy_free(&t8l);
  mh_close(&h);
}

int main(int argc, char **argv) {
  es_error_t err;
  if (argc < 3 || (strcmp(argv[1], "cpu") && strcmp(argv[1], "cuda")) ||
      (strcmp(argv[2], "float32") && strcmp(argv[2], "bfloat16"))) {
    fprintf(stderr, "usage: test_model_golden cpu|cuda float32|bfloat16 [fp8|kvfp8] [CASE]\n");
    return 2;
  }
  int case_arg = 3;
  if (argc > 3 && strcmp(argv[3], "fp8") == 0) { /* the decoder's linears in FP8 e4m3 */
    FP8 = 1;
    case_arg = 4;
  } else if (argc > 3 && strcmp(argv[3], "kvfp8") == 0) { /* the KV cache in FP8 e4m3 */
    KVFP8 = 1;
    case_arg = 4;
  }
  int cuda = strcmp(argv[1], "cuda") == 0;
  DT = strcmp(argv[2], "float32") == 0 ? ES_DT_F32 : ES_DT_BF16;
  if (!cuda && DT != ES_DT_F32) {
    fprintf(stderr, "test_model_golden: the CPU backend computes in float32 only\n");
    return 2;
  }
  CREATE = cuda ? es_backend_create_cuda : es_backend_create_cpu;
  if (cuda) {
    int skip = t_need_gpu();
    if (skip) return skip;
  }
  if (golden_open(&G, ES_SOURCE_DIR, &err) != 0) {
    fprintf(stderr, "%s\n", err.msg);
    return 1;
  }
  const char *only = argc > case_arg ? argv[case_arg] : NULL;
  const cJSON *c;
  cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(G.manifest, "cases")) {
    const char *name = cJSON_GetObjectItemCaseSensitive(c, "name")->valuestring;
    if (only && strcmp(only, name) != 0) continue;
    run_case(c);
  }
  golden_close(&G);
  if (FP8 && !only) {
    double agree = pooled_steps ? (double)pooled_top1 / pooled_steps : 0.0;
    printf("fp8 (%s): worst last-position cosine %.6f, top-1 agreement %d/%d = %.4f over the teacher-forced steps\n",
           es_dtype_name(DT), worst_cosine, pooled_top1, pooled_steps, agree);
    T_CHECK(pooled_steps >= BF16_MIN_STEPS, "only %d teacher-forced steps pooled (need >= %d)", pooled_steps,
            BF16_MIN_STEPS);
    T_CHECK(agree >= FP8_TOP1, "fp8 top-1 agreement %.4f < %.2f", agree, FP8_TOP1);
  } else if (KVFP8 && !only) {
    double agree = pooled_steps ? (double)pooled_top1 / pooled_steps : 0.0;
    printf("fp8 KV cache (%s): worst last-position cosine %.6f, top-1 agreement %d/%d = %.4f over the teacher-forced "
           "steps\n",
           es_dtype_name(DT), worst_cosine, pooled_top1, pooled_steps, agree);
    T_CHECK(pooled_steps >= BF16_MIN_STEPS, "only %d teacher-forced steps pooled (need >= %d)", pooled_steps,
            BF16_MIN_STEPS);
    T_CHECK(agree >= KVFP8_TOP1, "fp8 KV cache: top-1 agreement %.4f < %.2f", agree, KVFP8_TOP1);
  } else if (DT == ES_DT_BF16 && !only) {
    double agree = pooled_steps ? (double)pooled_top1 / pooled_steps : 0.0;
    printf("bf16: top-1 agreement %d/%d = %.4f over the teacher-forced steps\n", pooled_top1, pooled_steps, agree);
    T_CHECK(pooled_steps >= BF16_MIN_STEPS, "only %d teacher-forced steps pooled (need >= %d)", pooled_steps,
            BF16_MIN_STEPS);
    T_CHECK(agree >= BF16_TOP1, "bf16 top-1 agreement %.4f < %.2f", agree, BF16_TOP1);
  }
  return t_finish();
}
