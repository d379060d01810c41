/* test_model_golden: the CPU forward pass against transformers on every golden checkpoint and case.
 *
 * For each case: the projected audio embeddings and the last-position logits within relative error 1e-4
 * (max |Δ| / max |ref|); every recorded greedy token identical; and a teacher-forced pass over the recorded
 * continuation (prompt + greedy tokens as one sequence, prefilled in chunks of 128 rows so chunked prefill
 * over a cached prefix is exercised) whose top-8 logits match at every step within the same tolerance.
 * Inputs are the golden features, so this tests the model alone (audio_mel has its own golden test).
 */
#include <math.h>
#include <stdio.h>

#include "model_harness.h"
#include "test_util.h"

#define REL_TOL 1e-4

static golden_t G;

static void run_case(const cJSON *c) {
  es_error_t err;
  es_error_clear(&err);
  const char *name = cJSON_GetObjectItemCaseSensitive(c, "name")->valuestring;
  const char *ck_name = cJSON_GetObjectItemCaseSensitive(c, "checkpoint")->valuestring;
  const cJSON *ckj = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(G.manifest, "checkpoints"),
                                                      ck_name);
  char dir[1400];
  golden_path(&G, cJSON_GetObjectItemCaseSensitive(ckj, "dir")->valuestring, dir, sizeof dir, &err);

  mh_model_t h;
  int rc = mh_open(&h, dir, es_backend_create_cpu, ES_DT_F32, &err);
  T_CHECK(rc == 0, "%s: open %s: %s", name, dir, err.msg);
  if (rc) {
    mh_close(&h);
    return;
  }
  npy_array_t ids = {0}, emb = {0}, last = {0}, greedy = {0}, t8i = {0}, t8l = {0};
  float *got_emb = NULL, *logits = NULL;
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
  T_CHECK(e_emb <= REL_TOL, "%s: audio embeddings rel err %.3g", name, e_emb);

  /* 2. last-position logits, 3. greedy continuation */
  kv_seq_t seq = {0};
  int last_row = T - 1;
  rc = mh_prefill(&h, &seq, ids.data, T, MH_MAX_TOKENS, &last_row, 1, logits, &err);
  T_CHECK(rc == 0, "%s: prefill: %s", name, err.msg);
  if (rc) {
    kv_seq_release(h.kv, &seq);
    goto done;
  }
  double e_last = mh_rel_err(logits, last.data, (size_t)V);
  T_CHECK(e_last <= REL_TOL, "%s: last-position logits rel err %.3g", name, e_last);
  const int32_t *g = greedy.data;
  int mismatch = -1;
  for (int s = 0; s < S && !rc; s++) {
    int next = mh_argmax(logits, V);
    if (next != g[s] && mismatch < 0) mismatch = s;
    if (s + 1 < S) rc = mh_decode(&h, &seq, T + s, g[s], logits, &err);
  }
  T_CHECK(rc == 0, "%s: decode: %s", name, err.msg);
  T_CHECK(mismatch < 0, "%s: greedy token %d differs from transformers", name, mismatch);
  kv_seq_release(h.kv, &seq);

  /* 4. teacher-forced pass, chunked prefill over the cached prefix */
  int32_t *tf = malloc(sizeof(int32_t) * (size_t)(T + S));
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
  T_CHECK(worst <= REL_TOL, "%s: teacher-forced top-8 logits rel err %.3g", name, worst);
  T_CHECK(top1_bad == 0, "%s: %d teacher-forced steps with a different top-1", name, top1_bad);
  kv_seq_release(h.kv, &seq2);
  T_CHECK(kv_pool_free_count(h.kv) == kv_pool_total(h.kv), "%s: KV blocks leaked", name);
  free(tf);
  printf("%-18s T=%4d audio rows %4d  emb %.2e  logits %.2e  teacher-forced %.2e\n", name, T, rows, e_emb, e_last,
         worst);

done:
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
  if (golden_open(&G, ES_SOURCE_DIR, &err) != 0) {
    fprintf(stderr, "%s\n", err.msg);
    return 1;
  }
  const char *only = argc > 1 ? argv[1] : NULL;
  const cJSON *c;
  cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(G.manifest, "cases")) {
    const char *name = cJSON_GetObjectItemCaseSensitive(c, "name")->valuestring;
    if (only && strcmp(only, name) != 0) continue;
    run_case(c);
  }
  golden_close(&G);
  return t_finish();
}
