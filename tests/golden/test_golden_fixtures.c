/* test_golden_fixtures: reads every golden fixture back and checks shapes and metadata.
 *
 * This does not test earshot's model (later tests compare against these values); it checks that the
 * oracle is complete and self-consistent, so that a broken or partial regeneration is caught here:
 * every file exists and parses, array shapes agree with the manifest and with each other, the audio
 * length formulas of SPEC §3.1 hold, greedy ids agree with the recorded logits, and each case meets the
 * seed-rejection rules of tests/golden/README.md.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "es_file.h"
#include "golden.h"
#include "test_util.h"

#define SAMPLES_PER_WINDOW 480000
#define HOP 160

static golden_t G;
static es_error_t E;

/* N = floor(ceil(F/2)/2) as transformers writes it: T1 = (F-1)//2 + 1, N = (T1-2)//2 + 1 (floor division). */
static int64_t tokens_for_frames(int64_t F) {
  if (F <= 0) return 0;
  int64_t t1 = (F - 1) / 2 + 1;
  int64_t x = t1 - 2;
  int64_t q = x >= 0 ? x / 2 : -((-x + 1) / 2);
  return q + 1;
}

static void check_window(const char *audio_id, const cJSON *w, int64_t total_samples, int64_t expect_offset,
                         float *mel, int64_t *tokens_out) {
  int64_t F, N, off, cnt;
  int rc = golden_get_int(w, "frames", &F, &E);
  if (!rc) rc = golden_get_int(w, "audio_tokens", &N, &E);
  if (!rc) rc = golden_get_int(w, "sample_offset", &off, &E);
  if (!rc) rc = golden_get_int(w, "sample_count", &cnt, &E);
  T_REQUIRE(rc == 0, "%s: %s", audio_id, E.msg);
  *tokens_out = N;
  T_CHECK(off == expect_offset, "%s: window offset %lld, expected %lld", audio_id, (long long)off,
          (long long)expect_offset);
  T_CHECK(cnt > 0 && cnt <= SAMPLES_PER_WINDOW && off + cnt <= total_samples, "%s: window [%lld, +%lld) of %lld",
          audio_id, (long long)off, (long long)cnt, (long long)total_samples);
  T_CHECK(F == (cnt + HOP - 1) / HOP, "%s: frames %lld != ceil(%lld/160)", audio_id, (long long)F, (long long)cnt);
  T_CHECK(N == tokens_for_frames(F), "%s: audio_tokens %lld != N(F=%lld) = %lld", audio_id, (long long)N,
          (long long)F, (long long)tokens_for_frames(F));

  rc = golden_read_mel(&G, w, mel, &E);
  T_REQUIRE(rc == 0, "%s: %s", audio_id, E.msg);
  float mx = -INFINITY, mn = INFINITY;
  int finite = 1;
  for (size_t i = 0; i < (size_t)GOLDEN_MEL_BINS * GOLDEN_MEL_FRAMES; i++) {
    if (!isfinite(mel[i])) finite = 0;
    if (mel[i] > mx) mx = mel[i];
    if (mel[i] < mn) mn = mel[i];
  }
  T_CHECK(finite, "%s: non-finite mel values", audio_id);
  /* (x + 4) / 4 of a log10 spectrum clamped to max - 8: the range is at most 2 */
  T_CHECK(mx - mn <= 2.0f + 1e-5f, "%s: mel range %g > 2", audio_id, (double)(mx - mn));
  double pad;
  T_REQUIRE(golden_get_number(w, "pad_value", &pad, &E) == 0, "%s", E.msg);
  double floor_value = fmax(-10.0, 4.0 * mx - 4.0 - 8.0); /* back to log10 units: max(-10, M - 8) */
  T_CHECK(fabs(pad - (floor_value + 4.0) / 4.0) < 1e-5, "%s: pad_value %g, expected (max(-10, M-8)+4)/4 = %g",
          audio_id, pad, (floor_value + 4.0) / 4.0);
}

static void check_audios(void) {
  const cJSON *audios = cJSON_GetObjectItemCaseSensitive(G.manifest, "audios");
  T_REQUIRE(cJSON_IsObject(audios) && cJSON_GetArraySize(audios) >= 8, "manifest.audios: expected >= 8 audios");
  float *mel = malloc(sizeof(float) * GOLDEN_MEL_BINS * GOLDEN_MEL_FRAMES);
  T_REQUIRE(mel != NULL, "out of memory");
  const cJSON *a;
  int have_short = 0, have_30s = 0, have_long = 0;
  cJSON_ArrayForEach(a, audios) {
    const char *id = a->string, *file;
    T_CHECK(golden_get_string(a, "file", &file, &E) == 0, "%s: %s", id, E.msg);
    char path[1400];
    if (golden_path(&G, file, path, sizeof path, &E) == 0) T_CHECK(es_path_exists(path), "%s: %s missing", id, path);
    npy_array_t s;
    if (golden_read_samples(&G, a, &s, &E) != 0) {
      T_CHECK(0, "%s: %s", id, E.msg);
      continue;
    }
    int64_t L = s.count;
    T_CHECK(L > 0, "%s: no samples", id);
    int finite = 1;
    for (int64_t i = 0; i < L; i++)
      if (!isfinite(((float *)s.data)[i])) finite = 0;
    T_CHECK(finite, "%s: non-finite samples", id);
    npy_free(&s);
    if (L < 16000) have_short = 1;
    if (L == SAMPLES_PER_WINDOW) have_30s = 1;
    if (L > SAMPLES_PER_WINDOW) have_long = 1;

    const cJSON *windows = cJSON_GetObjectItemCaseSensitive(a, "windows");
    const cJSON *tr = cJSON_GetObjectItemCaseSensitive(windows, "truncate");
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(windows, "split");
    T_CHECK(cJSON_IsArray(tr) && cJSON_GetArraySize(tr) == 1, "%s: truncate must have one window", id);
    T_CHECK(cJSON_IsArray(sp) && cJSON_GetArraySize(sp) >= 1, "%s: split must have >= 1 window", id);
    int64_t n;
    if (cJSON_GetArraySize(tr) == 1) {
      check_window(id, cJSON_GetArrayItem(tr, 0), L, 0, mel, &n);
      int64_t cnt;
      if (golden_get_int(cJSON_GetArrayItem(tr, 0), "sample_count", &cnt, &E) == 0)
        T_CHECK(cnt == (L < SAMPLES_PER_WINDOW ? L : SAMPLES_PER_WINDOW), "%s: truncate window covers %lld", id,
                (long long)cnt);
    }
    int64_t expect_windows = (L + SAMPLES_PER_WINDOW - 1) / SAMPLES_PER_WINDOW;
    int64_t last_len = L - (expect_windows - 1) * SAMPLES_PER_WINDOW;
    if (expect_windows > 1 && tokens_for_frames((last_len + HOP - 1) / HOP) == 0) expect_windows--;
    T_CHECK(cJSON_GetArraySize(sp) == expect_windows, "%s: %d split windows, expected %lld", id,
            cJSON_GetArraySize(sp), (long long)expect_windows);
    int k = 0;
    const cJSON *w;
    cJSON_ArrayForEach(w, sp) {
      check_window(id, w, L, (int64_t)k * SAMPLES_PER_WINDOW, mel, &n);
      T_CHECK(n > 0 || expect_windows == 1, "%s: split window %d has no tokens", id, k);
      k++;
    }
  }
  T_CHECK(have_short && have_30s && have_long, "fixture audios must include < 1 s, exactly 30 s and > 30 s");
  free(mel);
}

/* Sum over a case's audios of the tokens of every window of its long-audio policy. */
static int64_t expected_audio_tokens(const cJSON *audio, const char *policy) {
  const cJSON *ws = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(audio, "windows"), policy);
  int64_t total = 0, n;
  const cJSON *w;
  cJSON_ArrayForEach(w, ws) {
    if (golden_get_int(w, "audio_tokens", &n, &E) == 0) total += n;
  }
  return total;
}

static int read_typed(const char *what, const char *rel, npy_dtype_t dtype, int ndim, npy_array_t *a) {
  if (golden_read_npy(&G, rel, a, &E) != 0) {
    T_CHECK(0, "%s: %s", what, E.msg);
    return -1;
  }
  if (a->dtype != dtype || a->ndim != ndim) {
    T_CHECK(0, "%s: %s is %s rank %d, expected %s rank %d", what, rel, npy_dtype_name(a->dtype), a->ndim,
            npy_dtype_name(dtype), ndim);
    npy_free(a);
    return -1;
  }
  return 0;
}

static void check_case(const cJSON *c, const cJSON *checkpoints, const cJSON *audios) {
  const char *name, *ckpt_name, *policy, *format;
  int rc = golden_get_string(c, "name", &name, &E);
  if (!rc) rc = golden_get_string(c, "checkpoint", &ckpt_name, &E);
  if (!rc) rc = golden_get_string(c, "long_audio", &policy, &E);
  if (!rc) rc = golden_get_string(c, "prompt_format", &format, &E);
  T_REQUIRE(rc == 0, "case: %s", E.msg);
  T_CHECK(!strcmp(policy, "truncate") || !strcmp(policy, "split"), "%s: long_audio '%s'", name, policy);
  T_CHECK(!strcmp(format, "chat") || !strcmp(format, "raw") || !strcmp(format, "ids"), "%s: prompt_format '%s'",
          name, format);
  const cJSON *ck = cJSON_GetObjectItemCaseSensitive(checkpoints, ckpt_name);
  T_REQUIRE(ck != NULL, "%s: unknown checkpoint %s", name, ckpt_name);
  int64_t vocab, hidden, audio_id;
  rc = golden_get_int(ck, "vocab_size", &vocab, &E);
  if (!rc) rc = golden_get_int(ck, "hidden_size", &hidden, &E);
  if (!rc) rc = golden_get_int(ck, "audio_token_id", &audio_id, &E);
  T_REQUIRE(rc == 0, "%s: checkpoint %s: %s", name, ckpt_name, E.msg);

  /* audios and their token counts */
  const cJSON *case_audios = cJSON_GetObjectItemCaseSensitive(c, "audios");
  const cJSON *case_tokens = cJSON_GetObjectItemCaseSensitive(c, "audio_tokens");
  T_REQUIRE(cJSON_IsArray(case_audios) && cJSON_IsArray(case_tokens) &&
                cJSON_GetArraySize(case_audios) == cJSON_GetArraySize(case_tokens),
            "%s: audios and audio_tokens must be arrays of one length", name);
  int64_t sum_tokens = 0;
  for (int i = 0; i < cJSON_GetArraySize(case_audios); i++) {
    const cJSON *aid = cJSON_GetArrayItem(case_audios, i);
    const cJSON *audio = cJSON_IsString(aid) ? cJSON_GetObjectItemCaseSensitive(audios, aid->valuestring) : NULL;
    T_REQUIRE(audio != NULL, "%s: audio %d is not a known audio id", name, i);
    int64_t n = (int64_t)cJSON_GetArrayItem(case_tokens, i)->valuedouble;
    T_CHECK(n == expected_audio_tokens(audio, policy), "%s: audio %s has %lld tokens, windows say %lld", name,
            aid->valuestring, (long long)n, (long long)expected_audio_tokens(audio, policy));
    sum_tokens += n;
  }

  npy_array_t ids = {0}, emb = {0}, logits = {0}, greedy = {0}, t8i = {0}, t8l = {0};
  const char *p_ids, *p_emb, *p_logits, *p_greedy, *p_t8i, *p_t8l;
  rc = golden_get_string(c, "prompt_ids", &p_ids, &E);
  if (!rc) rc = golden_get_string(c, "audio_embeds", &p_emb, &E);
  if (!rc) rc = golden_get_string(c, "last_logits", &p_logits, &E);
  if (!rc) rc = golden_get_string(c, "greedy_ids", &p_greedy, &E);
  if (!rc) rc = golden_get_string(c, "top8_ids", &p_t8i, &E);
  if (!rc) rc = golden_get_string(c, "top8_logits", &p_t8l, &E);
  T_REQUIRE(rc == 0, "%s: %s", name, E.msg);
  if (read_typed(name, p_ids, NPY_I32, 1, &ids) || read_typed(name, p_emb, NPY_F32, 2, &emb) ||
      read_typed(name, p_logits, NPY_F32, 1, &logits) || read_typed(name, p_greedy, NPY_I32, 1, &greedy) ||
      read_typed(name, p_t8i, NPY_I32, 2, &t8i) || read_typed(name, p_t8l, NPY_F32, 2, &t8l))
    goto done;

  /* prompt: ids in range, exactly sum N placeholders, each audio span contiguous */
  const int32_t *pid = ids.data;
  int64_t placeholders = 0, bad_ids = 0;
  for (int64_t i = 0; i < ids.count; i++) {
    if (pid[i] < 0 || pid[i] >= vocab) bad_ids++;
    if (pid[i] == audio_id) placeholders++;
  }
  T_CHECK(bad_ids == 0, "%s: %lld prompt ids out of [0, %lld)", name, (long long)bad_ids, (long long)vocab);
  T_CHECK(placeholders == sum_tokens, "%s: %lld placeholders in the prompt, audios have %lld tokens", name,
          (long long)placeholders, (long long)sum_tokens);
  int64_t bos_id, eos_id;
  if (golden_get_int(ck, "audio_bos_id", &bos_id, &E) == 0 && golden_get_int(ck, "audio_eos_id", &eos_id, &E) == 0) {
    /* every span is <|audio_bos|> N x <|AUDIO|> <|audio_eos|>, with the case's N in order */
    int span = 0;
    for (int64_t i = 0; i < ids.count; i++) {
      if (pid[i] != bos_id) continue;
      int64_t j = i + 1;
      while (j < ids.count && pid[j] == audio_id) j++;
      T_CHECK(j < ids.count && pid[j] == eos_id, "%s: audio span %d not closed by audio_eos", name, span);
      if (span < cJSON_GetArraySize(case_tokens))
        T_CHECK(j - i - 1 == (int64_t)cJSON_GetArrayItem(case_tokens, span)->valuedouble,
                "%s: span %d holds %lld placeholders", name, span, (long long)(j - i - 1));
      span++;
    }
    T_CHECK(span == cJSON_GetArraySize(case_tokens), "%s: %d audio spans for %d audios", name, span,
            cJSON_GetArraySize(case_tokens));
  }

  T_CHECK(emb.shape[0] == sum_tokens && emb.shape[1] == hidden, "%s: audio_embeds [%lld, %lld], expected [%lld, %lld]",
          name, (long long)emb.shape[0], (long long)emb.shape[1], (long long)sum_tokens, (long long)hidden);
  T_CHECK(logits.count == vocab, "%s: last_logits has %lld values, vocab %lld", name, (long long)logits.count,
          (long long)vocab);
  int64_t S = greedy.count;
  T_CHECK(S >= 16, "%s: %lld greedy tokens, need >= 16", name, (long long)S);
  int t8_ok = t8i.shape[0] == S && t8i.shape[1] == 8 && t8l.shape[0] == S && t8l.shape[1] == 8;
  T_CHECK(t8_ok, "%s: top8 arrays must be [%lld, 8]", name, (long long)S);
  if (!t8_ok || S < 2) goto done;

  const int32_t *g = greedy.data, *ti = t8i.data;
  const float *tl = t8l.data, *lg = logits.data;
  int sorted = 1, head_matches = 1;
  for (int64_t s = 0; s < S; s++) {
    if (ti[s * 8] != g[s]) head_matches = 0;
    for (int k = 1; k < 8; k++)
      if (!(tl[s * 8 + k - 1] >= tl[s * 8 + k])) sorted = 0;
  }
  T_CHECK(head_matches, "%s: greedy ids differ from the top-1 of their step", name);
  T_CHECK(sorted, "%s: top8 logits are not sorted descending", name);

  /* step 0 is the last prompt position: its top-8 must be the top-8 of last_logits */
  float maxabs = 0.0f;
  int64_t best = 0;
  for (int64_t v = 0; v < logits.count; v++) {
    if (fabsf(lg[v]) > maxabs) maxabs = fabsf(lg[v]);
    if (lg[v] > lg[best]) best = v;
  }
  T_CHECK(best == g[0], "%s: argmax(last_logits) = %lld, greedy[0] = %d", name, (long long)best, g[0]);
  int top_match = 1;
  for (int k = 0; k < 8; k++)
    if (ti[k] < 0 || ti[k] >= vocab || lg[ti[k]] != tl[k]) top_match = 0;
  T_CHECK(top_match, "%s: step-0 top-8 disagree with last_logits", name);
  T_CHECK((tl[0] - tl[1]) >= 1e-3f * maxabs, "%s: step-0 margin %g below 1e-3 * %g", name, (double)(tl[0] - tl[1]),
          (double)maxabs);

  /* the seed-rejection rules of the generator hold */
  double min_margin;
  T_CHECK(golden_get_number(c, "min_rel_margin", &min_margin, &E) == 0 && min_margin >= 1e-3,
          "%s: min_rel_margin %g below 1e-3", name, min_margin);
  int distinct = 0;
  for (int64_t s = 0; s < S; s++) {
    int seen = 0;
    for (int64_t r = 0; r < s; r++)
      if (g[r] == g[s]) seen = 1;
    distinct += !seen;
  }
  T_CHECK(distinct >= 4, "%s: only %d distinct greedy ids", name, distinct);
  const cJSON *eos_ids = cJSON_GetObjectItemCaseSensitive(ck, "eos_token_ids"), *e;
  int eos_hit = 0;
  cJSON_ArrayForEach(e, eos_ids) {
    for (int64_t s = 0; s < S; s++)
      if (g[s] == (int32_t)e->valuedouble) eos_hit = 1;
  }
  T_CHECK(cJSON_IsArray(eos_ids) && cJSON_GetArraySize(eos_ids) > 0, "%s: checkpoint lists no eos ids", name);
  T_CHECK(!eos_hit, "%s: greedy continuation contains an eos id", name);

done:
  npy_free(&ids);
  npy_free(&emb);
  npy_free(&logits);
  npy_free(&greedy);
  npy_free(&t8i);
  npy_free(&t8l);
}

static void check_checkpoints(const cJSON *checkpoints) {
  T_REQUIRE(cJSON_IsObject(checkpoints) && cJSON_GetArraySize(checkpoints) >= 3, "need >= 3 checkpoints");
  int layouts_hub = 0, layouts_new = 0, sharded = 0, full_vocab = 0;
  const cJSON *ck;
  cJSON_ArrayForEach(ck, checkpoints) {
    const char *dir, *layout, *dtype;
    int64_t shards, vocab;
    int rc = golden_get_string(ck, "dir", &dir, &E);
    if (!rc) rc = golden_get_string(ck, "layout", &layout, &E);
    if (!rc) rc = golden_get_string(ck, "dtype", &dtype, &E);
    if (!rc) rc = golden_get_int(ck, "shards", &shards, &E);
    if (!rc) rc = golden_get_int(ck, "vocab_size", &vocab, &E);
    if (rc) {
      T_CHECK(0, "checkpoint %s: %s", ck->string, E.msg);
      continue;
    }
    layouts_hub += !strcmp(layout, "hub");
    layouts_new += !strcmp(layout, "new");
    sharded += shards > 1;
    full_vocab += vocab >= 151649;
    char base[1400], path[1500];
    golden_path(&G, dir, base, sizeof base, &E);
    const char *needed[] = {"config.json", "generation_config.json", "preprocessor_config.json",
                            shards > 1 ? "model.safetensors.index.json" : "model.safetensors"};
    for (size_t i = 0; i < sizeof needed / sizeof needed[0]; i++) {
      es_path_join(path, sizeof path, base, needed[i], &E);
      T_CHECK(es_path_exists(path), "checkpoint %s: %s missing", ck->string, path);
    }
    const cJSON *tok = cJSON_GetObjectItemCaseSensitive(ck, "tokenizer");
    if (cJSON_IsTrue(tok)) {
      const char *tok_files[] = {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"};
      for (size_t i = 0; i < 4; i++) {
        es_path_join(path, sizeof path, base, tok_files[i], &E);
        T_CHECK(es_path_exists(path), "checkpoint %s: %s missing", ck->string, path);
      }
    }
    /* config.json agrees with the manifest */
    char *text;
    size_t len;
    es_path_join(path, sizeof path, base, "config.json", &E);
    if (es_read_file(path, 1u << 20, &text, &len, &E) == 0) {
      cJSON *cfg = cJSON_ParseWithLength(text, len);
      free(text);
      const cJSON *tc = cJSON_GetObjectItemCaseSensitive(cfg, "text_config");
      const cJSON *ac = cJSON_GetObjectItemCaseSensitive(cfg, "audio_config");
      const cJSON *v = cJSON_GetObjectItemCaseSensitive(tc, "vocab_size");
      T_CHECK(cJSON_IsNumber(v) && (int64_t)v->valuedouble == vocab, "checkpoint %s: config vocab_size", ck->string);
      const cJSON *mel = cJSON_GetObjectItemCaseSensitive(ac, "num_mel_bins");
      const cJSON *pos = cJSON_GetObjectItemCaseSensitive(ac, "max_source_positions");
      T_CHECK(cJSON_IsNumber(mel) && mel->valuedouble == 128, "checkpoint %s: num_mel_bins must be 128", ck->string);
      T_CHECK(cJSON_IsNumber(pos) && pos->valuedouble == 1500, "checkpoint %s: max_source_positions must be 1500",
              ck->string);
      cJSON_Delete(cfg);
    } else {
      T_CHECK(0, "checkpoint %s: %s", ck->string, E.msg);
    }
  }
  T_CHECK(layouts_hub >= 1 && layouts_new >= 1, "both tensor-name layouts must be covered");
  T_CHECK(sharded >= 1, "a sharded checkpoint must be present");
  T_CHECK(full_vocab >= 1, "a full-vocabulary checkpoint must be present");
}

static void check_tokenizer_corpus(void) {
  const cJSON *tok = cJSON_GetObjectItemCaseSensitive(G.manifest, "tokenizer");
  const char *rel;
  T_REQUIRE(golden_get_string(tok, "corpus", &rel, &E) == 0, "tokenizer: %s", E.msg);
  char path[1400], *text;
  size_t len;
  golden_path(&G, rel, path, sizeof path, &E);
  T_REQUIRE(es_read_file(path, 16u << 20, &text, &len, &E) == 0, "%s", E.msg);
  cJSON *corpus = cJSON_ParseWithLength(text, len);
  free(text);
  T_REQUIRE(cJSON_IsArray(corpus) && cJSON_GetArraySize(corpus) >= 30, "%s: expected >= 30 lines", rel);
  const cJSON *line;
  int bad = 0;
  cJSON_ArrayForEach(line, corpus) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(line, "text");
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(line, "ids");
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(line, "decoded");
    if (!cJSON_IsString(t) || !cJSON_IsArray(ids) || !cJSON_IsString(dec)) {
      bad++;
      continue;
    }
    const cJSON *id;
    cJSON_ArrayForEach(id, ids) {
      if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= 151649) bad++;
    }
  }
  T_CHECK(bad == 0, "%s: %d malformed entries", rel, bad);
  cJSON_Delete(corpus);
}

int main(void) {
  es_error_clear(&E);
  if (golden_open(&G, ES_SOURCE_DIR, &E) != 0) {
    fprintf(stderr, "%s\n", E.msg);
    return 1;
  }
  const cJSON *fv = cJSON_GetObjectItemCaseSensitive(G.manifest, "format_version");
  T_CHECK(cJSON_IsNumber(fv) && fv->valuedouble == 1, "format_version must be 1");
  const cJSON *gen = cJSON_GetObjectItemCaseSensitive(G.manifest, "generator");
  T_CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(gen, "transformers")) &&
              cJSON_IsString(cJSON_GetObjectItemCaseSensitive(gen, "torch")),
          "generator versions must be recorded");

  check_audios();
  const cJSON *checkpoints = cJSON_GetObjectItemCaseSensitive(G.manifest, "checkpoints");
  check_checkpoints(checkpoints);
  const cJSON *cases = cJSON_GetObjectItemCaseSensitive(G.manifest, "cases");
  T_CHECK(cJSON_IsArray(cases) && cJSON_GetArraySize(cases) >= 8, "need >= 8 cases");
  const cJSON *c;
  cJSON_ArrayForEach(c, cases) check_case(c, checkpoints, cJSON_GetObjectItemCaseSensitive(G.manifest, "audios"));
  check_tokenizer_corpus();

  golden_close(&G);
  return t_finish();
}
