/* test_cuda_graphs: decode steps replayed as CUDA graphs give exactly the logits of the same steps run op by op.
 *
 * On the golden checkpoint tiny-b (head dim 128, the fast bf16 attention), three sequences with prompts of 700,
 * 1100 and 1500 random tokens decode 48 tokens together: every step is padded to the bucket of 4 and, with
 * graphs on, recorded once and replayed. The contexts grow across block boundaries and the decode attention's
 * split plan changes with them (it is read on the device), so a replay that kept the recorded step's lengths,
 * positions or plan would diverge. The same run with graphs off (cuda_backend_set_graphs) must give bit-identical
 * logits at every step; the graph statistics must show that replays happened. A second pass decodes one
 * sequence alone (bucket 1) the same way. Programmatic dependent launch (sm_90: each step kernel may be launched
 * before the one before it ends, and waits for it first) must change nothing either: the graphs run with it (the
 * default), the op-by-op reference without it, and a third run op by op with it must match too — a kernel that
 * read its input before its wait would race and differ.
 * Skips (exit 77) without the CUDA backend or without a GPU.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "es_gpu.h"
#include "gpu_skip.h"
#include "model_harness.h"
#include "test_util.h"
#ifdef ES_HAVE_CUDA_BACKEND
#include "cuda/cuda_hooks.h"
#endif

#define STEPS 48
#define MAX_SEQS 3

#ifdef ES_HAVE_CUDA_BACKEND
/* Prefills n_seqs random prompts, then decodes STEPS tokens of all of them together (greedy), writing every
 * step's logits to out [STEPS][n_seqs][V]. */
static int run(mh_model_t *h, int graphs, int pdl, int n_seqs, const int *prompt_len, float *out, es_error_t *err) {
  const int V = h->cfg.vocab_size, max_blocks = MH_MAX_TOKENS / ES_KV_BLOCK;
  int rc = cuda_backend_set_graphs(h->be, graphs, err);
  if (!rc) rc = cuda_backend_set_pdl(h->be, pdl, err); /* a no-op request before sm_90 */
  if (rc) return rc;
  kv_seq_t seqs[MAX_SEQS];
  memset(seqs, 0, sizeof seqs);
  int32_t next[MAX_SEQS], *ids = malloc(sizeof(int32_t) * MH_MAX_TOKENS);
  float *logits = malloc(sizeof(float) * (size_t)V * MAX_SEQS);
  if (!ids || !logits) return es_fail(err, ES_ENOMEM, "out of memory");
  uint32_t r = 12345;
  for (int s = 0; !rc && s < n_seqs; s++) {
    for (int i = 0; i < prompt_len[s]; i++) {
      r = r * 1664525u + 1013904223u;
      int32_t id = (int32_t)((r >> 8) % (uint32_t)V);
      ids[i] = id == h->cfg.audio_token_index ? 0 : id;
    }
    int want = prompt_len[s] - 1;
    rc = mh_prefill(h, &seqs[s], ids, prompt_len[s], 512, &want, 1, logits, err);
    if (!rc) next[s] = mh_argmax(logits, V);
  }
  int32_t q_start[MAX_SEQS + 1], ctx[MAX_SEQS], pos[MAX_SEQS], slot[MAX_SEQS], arow[MAX_SEQS], lrows[MAX_SEQS];
  int32_t table[MAX_SEQS * (MH_MAX_TOKENS / ES_KV_BLOCK)];
  for (int k = 0; !rc && k < STEPS; k++) {
    memset(table, 0, sizeof table);
    for (int s = 0; !rc && s < n_seqs; s++) {
      int p = prompt_len[s] + k;
      rc = kv_seq_reserve(h->kv, &seqs[s], p + 1, max_blocks, err);
      q_start[s] = s;
      ctx[s] = p + 1;
      pos[s] = p;
      slot[s] = kv_seq_slot(&seqs[s], p);
      arow[s] = -1;
      lrows[s] = s;
      memcpy(table + s * max_blocks, seqs[s].blocks, sizeof(int32_t) * (size_t)seqs[s].n_blocks);
    }
    q_start[n_seqs] = n_seqs;
    es_batch_t b = {.n_seqs = n_seqs, .n_tokens = n_seqs, .q_start = q_start, .ctx_len = ctx, .positions = pos,
                    .slot = slot, .block_table = table, .max_blocks = max_blocks};
    if (!rc) rc = qa_step(h->m, &b, next, arow, lrows, n_seqs, logits, err);
    if (!rc) {
      memcpy(out + (size_t)k * (size_t)n_seqs * (size_t)V, logits, sizeof(float) * (size_t)n_seqs * (size_t)V);
      for (int s = 0; s < n_seqs; s++) next[s] = mh_argmax(logits + (size_t)s * (size_t)V, V);
    }
  }
  for (int s = 0; s < n_seqs; s++) kv_seq_release(h->kv, &seqs[s]);
  free(ids);
  free(logits);
  return rc;
}

/* The first element where a and b differ (n when none). */
static size_t first_diff(const float *a, const float *b, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (memcmp(&a[i], &b[i], sizeof(float)) != 0) return i;
  return n;
}

static void check(mh_model_t *h, int n_seqs, const int *prompt_len) {
  es_error_t err;
  const size_t n = (size_t)STEPS * (size_t)n_seqs * (size_t)h->cfg.vocab_size;
  float *with = malloc(sizeof(float) * n), *without = malloc(sizeof(float) * n), *eager_pdl = malloc(sizeof(float) * n);
  T_REQUIRE(with && without && eager_pdl, "out of memory");
  qa_graph_stats_t g0, g1;
  qa_model_graph_stats(h->m, &g0);
  T_CHECK(run(h, 1, 1, n_seqs, prompt_len, with, &err) == 0, "%d sequences, graphs on: %s", n_seqs, err.msg);
  qa_model_graph_stats(h->m, &g1);
  T_CHECK(g1.replays - g0.replays >= STEPS - 2, "%d sequences: %lld of %d decode steps replayed a graph", n_seqs,
          (long long)(g1.replays - g0.replays), STEPS);
  T_CHECK(run(h, 0, 0, n_seqs, prompt_len, without, &err) == 0, "%d sequences, graphs and PDL off: %s", n_seqs,
          err.msg);
  T_CHECK(run(h, 0, 1, n_seqs, prompt_len, eager_pdl, &err) == 0, "%d sequences, op by op with PDL: %s", n_seqs,
          err.msg);
  int finite = 1;
  for (size_t i = 0; i < n; i++) finite &= isfinite(with[i]) != 0;
  T_CHECK(finite, "%d sequences: non-finite logits with graphs", n_seqs);
  const size_t per_step = (size_t)n_seqs * (size_t)h->cfg.vocab_size, V = (size_t)h->cfg.vocab_size;
  size_t first = first_diff(with, without, n);
  T_CHECK(first == n, "%d sequences: graph replay differs from op by op at step %zu, sequence %zu: %.9g vs %.9g",
          n_seqs, first / per_step, (first % per_step) / V, first < n ? with[first] : 0.0,
          first < n ? without[first] : 0.0);
  first = first_diff(eager_pdl, without, n);
  T_CHECK(first == n, "%d sequences: op by op with PDL differs from without at step %zu, sequence %zu: %.9g vs %.9g",
          n_seqs, first / per_step, (first % per_step) / V, first < n ? eager_pdl[first] : 0.0,
          first < n ? without[first] : 0.0);
  free(with);
  free(without);
  free(eager_pdl);
  cuda_backend_set_graphs(h->be, 1, &err);
  cuda_backend_set_pdl(h->be, 1, &err);
}
#endif

int main(void) {
  int skip = t_need_gpu();
  if (skip) return skip;
#ifdef ES_HAVE_CUDA_BACKEND
  es_error_t err;
  mh_model_t h;
  int opened = mh_open(&h, ES_SOURCE_DIR "/tests/golden/checkpoints/tiny-b", es_backend_create_cuda, ES_DT_BF16,
                       &err) == 0;
  T_CHECK(opened, "open: %s", err.msg);
  if (opened) {
    T_CHECK(es_backend_graphs_supported(h.be), "the CUDA backend reports no step graphs in bf16 (%s)",
            es_backend_name(h.be));
    static const int three[MAX_SEQS] = {700, 1100, 1500}, one[1] = {1200};
    if (es_backend_graphs_supported(h.be)) {
      check(&h, 3, three);
      check(&h, 1, one);
    }
  }
  mh_close(&h);
#endif
  return t_finish();
}
