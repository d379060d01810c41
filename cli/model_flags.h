/* model_flags: the command-line flags that choose, open and size a model, parsed in one place for every
 * command that opens one (`earshot run`, `serve`, `bench model`, `bench engine`), so that a flag means the
 * same thing, takes the same values and fails with the same message everywhere.
 *
 * Thread safety: none needed (called from main's thread before anything starts).
 */
#pragma once

#include <stdio.h>

#include "runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Which groups of flags a command accepts. */
enum {
  MF_OPEN = 1,   /* --model --config --dummy-weights --device --dtype --threads --deterministic (and every flag
                    that changes how the weights and kernels run) */
  MF_SIZING = 2, /* --max-model-len --max-num-seqs --kv-cache-gb --prefill-chunk --max-audio-batch */
};

/* Looks at argv[*i]. Returns 1 when it is a flag of the accepted groups (its value consumed: *i is left on
 * the last argument used), 0 when it is not one of them (the caller handles it), and -1 when it is one but
 * its value is missing or invalid; then a message naming the flag and the accepted values has been
 * printed to stderr as "earshot CMD: ...". */
int mf_parse(const char *cmd, int groups, int argc, char **argv, int *i, rt_opts_t *ro);

/* The help lines for the accepted groups, in the style of the commands' usage texts. */
void mf_usage(FILE *out, int groups);

/* A command's own numeric option: --NAME VALUE, an integer (*ll) or a number (*d) in [lo, hi]. */
typedef struct {
  const char *name;
  long long *ll; /* integer options: exactly one of ll, d is set */
  double *d;
  double lo, hi;
} mf_number_t;

/* Looks at argv[*i] for the options of table[0..n), like mf_parse: 1 taken (value parsed, *i on it), 0 not one
 * of them, -1 missing or bad value (printed). */
int mf_parse_number(const char *cmd, const mf_number_t *table, int n, int argc, char **argv, int *i);

/* Strict numeric parsing shared by the commands: the whole string, within [lo, hi]; -1 (after printing
 * "earshot CMD: FLAG 'V': expected ...") otherwise. */
int mf_int(const char *cmd, const char *flag, const char *v, long long lo, long long hi, long long *out);
int mf_double(const char *cmd, const char *flag, const char *v, double lo, double hi, double *out);

#ifdef __cplusplus
}
#endif
