/* test_backend_profile: op profiles (backend.h) on the CPU backend — every op call between start and stop is
 * recorded once under its op name and shape, records of one (op, shape) are summed, bytes are the op's
 * (weights + activations read and written), the table is sorted by time, a failed op is not counted, calls past
 * max_records are counted as dropped, and misuse (start twice, stop without start, bad sizes) is refused.
 * The CUDA backend's event marks run in device-check (earshot bench model --profile).
 */
#include "kernel_test.h"

static const es_profile_entry_t *find(const es_profile_t *p, const char *op, const char *shape) {
  for (int i = 0; i < p->n; i++)
    if (!strcmp(p->entries[i].op, op) && !strcmp(p->entries[i].shape, shape)) return &p->entries[i];
  return NULL;
}

int main(void) {
  es_backend_t *be = kt_backend(1, 64, 2, 4);
  if (!be) return t_finish();
  es_error_t err;
  const int64_t M = 3, K = 64, N = 48;
  kt_weight_t w = kt_weight(ES_DT_BF16, N, K, -1, 1), w2 = kt_weight(ES_DT_BF16, K, N, -1, 1),
              g = kt_weight(ES_DT_F32, K, 1, 0.5f, 1.5f);
  es_weight_t wd = kt_upload(be, &w), wd2 = kt_upload(be, &w2), gd = kt_upload(be, &g);
  float *xh = malloc(sizeof(float) * (size_t)(M * K));
  kt_fill(xh, M * K, -1, 1);
  void *x = kt_act(be, xh, M * K), *y = kt_act(be, NULL, M * N), *z = kt_act(be, NULL, M * K),
       *n = kt_act(be, NULL, M * K);

  es_profile_t p;
  T_CHECK(es_backend_profile_stop(be, &p, &err) == ES_EINTERNAL, "stop without start is refused");
  T_CHECK(es_backend_profile_start(be, 0, &err) == ES_EINVAL, "max_records 0 is refused");
  T_CHECK(es_backend_profile_start(be, 100, &err) == 0, "start: %s", err.msg);
  T_CHECK(es_backend_profile_start(be, 100, &err) == ES_EINTERNAL, "a second start is refused");
  for (int i = 0; i < 3; i++) T_CHECK(es_op_linear(be, y, N, x, K, &wd, NULL, M, ES_ACT_NONE, 0, &err) == 0, "linear");
  T_CHECK(es_op_linear(be, z, K, y, N, &wd2, NULL, M, ES_ACT_NONE, 1, &err) == 0, "linear 2: %s", err.msg);
  T_CHECK(es_op_rms_norm(be, n, z, NULL, &gd, M, K, 1e-6f, &err) == 0, "rms_norm: %s", err.msg);
  /* refused by the backend's checks before dispatch: not an op call at all */
  T_CHECK(es_op_linear(be, y, N - 1, x, K, &wd, NULL, M, ES_ACT_NONE, 0, &err) == ES_EINVAL, "bad ldy refused");
  T_CHECK(es_backend_profile_stop(be, &p, &err) == 0, "stop: %s", err.msg);

  T_CHECK(p.records == 5 && p.dropped == 0 && p.n == 3, "records %d dropped %d rows %d (want 5, 0, 3)", p.records,
          p.dropped, p.n);
  const es_profile_entry_t *a = find(&p, "linear", "M=3 N=48 K=64 bfloat16"),
                           *b = find(&p, "linear", "M=3 N=64 K=48 bfloat16 +="), *c = find(&p, "rms_norm", "M=3 C=64");
  T_CHECK(a && b && c, "rows by op and shape: %s %s %s", a ? "ok" : "missing linear",
          b ? "ok" : "missing linear +=", c ? "ok" : "missing rms_norm");
  if (a && b && c) {
    const double act = (double)es_dtype_size(es_backend_act_dtype(be));
    T_CHECK(a->calls == 3 && b->calls == 1 && c->calls == 1, "calls %d %d %d", a->calls, b->calls, c->calls);
    T_CHECK(a->bytes == 3 * ((double)N * K * 2 + act * M * (K + N)), "linear bytes %.0f", a->bytes);
    T_CHECK(b->bytes == (double)N * K * 2 + act * M * (N + 2 * K), "accumulating linear bytes %.0f", b->bytes);
    T_CHECK(c->bytes == act * 2 * M * K, "rms_norm bytes %.0f", c->bytes);
  }
  double sum = 0;
  for (int i = 0; i < p.n; i++) {
    T_CHECK(p.entries[i].ms >= 0 && (i == 0 || p.entries[i - 1].ms >= p.entries[i].ms), "row %d: %.6f ms, order", i,
            p.entries[i].ms);
    sum += p.entries[i].ms;
  }
  T_CHECK(fabs(sum - p.ops_ms) < 1e-9 && p.span_ms >= p.ops_ms - 1e-9, "ops %.6f (rows %.6f), span %.6f", p.ops_ms, sum,
          p.span_ms);
  es_profile_free(&p);

  /* more calls than records: the rest are dropped, the profile still reads */
  T_CHECK(es_backend_profile_start(be, 2, &err) == 0, "start 2: %s", err.msg);
  for (int i = 0; i < 5; i++) T_CHECK(es_op_linear(be, y, N, x, K, &wd, NULL, M, ES_ACT_NONE, 0, &err) == 0, "linear");
  T_CHECK(es_backend_profile_stop(be, &p, &err) == 0, "stop: %s", err.msg);
  T_CHECK(p.records == 2 && p.dropped == 3 && p.n == 1 && p.entries[0].calls == 2, "records %d dropped %d", p.records,
          p.dropped);
  es_profile_free(&p);

  /* an unfinished profile is released with the backend (ASan: no leak) */
  T_CHECK(es_backend_profile_start(be, 8, &err) == 0, "start: %s", err.msg);
  T_CHECK(es_op_linear(be, y, N, x, K, &wd, NULL, M, ES_ACT_NONE, 0, &err) == 0, "linear");
  free(xh);
  kt_weight_free(&w);
  kt_weight_free(&w2);
  kt_weight_free(&g);
  es_backend_free(be);
  return t_finish();
}
