/* bench_profile: see bench_profile.h. */
#include "bench_profile.h"

void bench_profile_print(FILE *out, const char *title, const es_profile_t *p, int per, double copy_bw, int max_rows) {
  const double d = per > 0 ? per : 1;
  fprintf(out,
          "profile: %s — %.3f ms per step from first op to last, %.3f ms in ops, %.3f ms between them "
          "(launches, host work); %d op calls timed%s\n",
          title, p->span_ms / d, p->ops_ms / d, (p->span_ms - p->ops_ms) / d, p->records,
          p->dropped ? " (some dropped: more than the profile holds)" : "");
  fprintf(out, "  %-16s %-44s %7s %10s %6s %9s %7s\n", "op", "shape", "calls", "ms", "share", "GB/s", "of copy");
  double rest_ms = 0;
  int rest = 0;
  for (int i = 0; i < p->n; i++) {
    const es_profile_entry_t *e = &p->entries[i];
    if (i >= max_rows) {
      rest_ms += e->ms;
      rest++;
      continue;
    }
    char gbs[16] = "-", frac[16] = "-";
    if (e->bytes > 0 && e->ms > 0) {
      double bps = e->bytes / (e->ms * 1e-3);
      snprintf(gbs, sizeof gbs, "%.0f", bps / 1e9);
      if (copy_bw > 0) snprintf(frac, sizeof frac, "%.2f", bps / copy_bw);
    }
    fprintf(out, "  %-16s %-44s %7.1f %10.4f %5.1f%% %9s %7s\n", e->op, e->shape, e->calls / d, e->ms / d,
            p->span_ms > 0 ? 100.0 * e->ms / p->span_ms : 0.0, gbs, frac);
  }
  if (rest)
    fprintf(out, "  (%d more rows) %55s %10.4f %5.1f%%\n", rest, "", rest_ms / d,
            p->span_ms > 0 ? 100.0 * rest_ms / p->span_ms : 0.0);
}
