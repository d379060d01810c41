/* airbench_chat: AIR-Bench Chat scores from the judge's replies in both orders, as cal_score.py computes each
 * order, combined as the AIR-Bench README says (see airbench_score.h).
 * ref: OFA-Sys/AIR-Bench cal_score.py, score_chat.py; ../shared/AIRBENCH.md §2.2, §4.2.
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "airbench_common.h"
#include "airbench_score.h"
#include "jsonl.h"

/* ---- Chat ---- */

/* Python int() of s[a, b) with the '\n's of that span ignored (cal_score.py removed them first): surrounding
 * whitespace, an optional sign, decimal digits with single '_' between digits. Saturates at LONG_MIN/MAX. */
static int py_int(const char *s, size_t a, size_t b, long *out) {
  ab_py_strip(s, &a, &b, 0);
  int neg = 0, prev = 0; /* prev: 0 nothing yet, 1 a digit, 2 an underscore */
  if (a < b && (s[a] == '+' || s[a] == '-')) neg = s[a++] == '-';
  unsigned long v = 0;
  for (; a < b; a++) {
    char c = s[a];
    if (c == '\n') continue;
    if (c >= '0' && c <= '9') {
      v = v > (unsigned long)LONG_MAX / 10 ? (unsigned long)LONG_MAX + 1 : v * 10 + (unsigned long)(c - '0');
      if (v > (unsigned long)LONG_MAX) v = (unsigned long)LONG_MAX + 1;
      prev = 1;
    } else if (c == '_' && prev == 1) {
      prev = 2;
    } else {
      return ES_EINVAL;
    }
  }
  if (prev != 1) return ES_EINVAL;
  if (neg)
    *out = v > (unsigned long)LONG_MAX ? LONG_MIN : -(long)v;
  else
    *out = v > (unsigned long)LONG_MAX ? LONG_MAX : (long)v;
  return ES_OK;
}

int ab_chat_parse_scores(const char *reply, long *first, long *second) {
  if (!reply) return ES_EINVAL;
  size_t a = 0, b = strlen(reply);
  ab_py_strip(reply, &a, &b, 1);
  /* split(' ') of the stripped text: '\n' removal neither adds nor removes spaces */
  const char *sp = a < b ? memchr(reply + a, ' ', b - a) : NULL;
  if (!sp || memchr(sp + 1, ' ', reply + b - (sp + 1))) return ES_EINVAL;
  size_t mid = (size_t)(sp - reply);
  long x, y;
  if (py_int(reply, a, mid, &x) || py_int(reply, mid + 1, b, &y)) return ES_EINVAL;
  if (first) *first = x;
  if (second) *second = y;
  return ES_OK;
}

enum { B_SPEECH, B_SOUND, B_MUSIC, B_SPEECH_SOUND, B_SPEECH_MUSIC, N_BUCKETS };
static const char *const BUCKETS[N_BUCKETS] = {"speech", "sound", "music", "speech_and_sound", "speech_and_music"};
static const char *const BUCKET_DISPLAY[N_BUCKETS] = {"Speech", "Sound", "Music", "speech_and_sound",
                                                      "speech_and_music"};

/* cal_score.py's task_name -> bucket map (AIRBENCH.md §2.2). */
static const struct {
  const char *task_name;
  int bucket;
} CTASKS[] = {
    {"speech_QA", B_SPEECH},
    {"speech_dialogue_QA", B_SPEECH},
    {"sound_QA", B_SOUND},
    {"sound_generation_QA", B_SOUND},
    {"music_QA", B_MUSIC},
    {"music_generation_analysis_QA", B_MUSIC},
    {"speech_and_sound_QA", B_SPEECH_SOUND},
    {"speech_and_music_QA", B_SPEECH_MUSIC},
};
#define N_CTASKS ((int)(sizeof CTASKS / sizeof CTASKS[0]))

enum { ORD_NORMAL, ORD_SWAPPED };
static const char *const ORDER_NAMES[2] = {"normal", "swapped"};

/* One order of one row: counts, and the model's and the reference's score sums (in a corder_t) or means and the
 * win rate (in a cline_t; NAN when undefined). */
typedef struct {
  long n, fail, win;
  double model, ref, win_rate;
} cstat_t;

typedef struct {
  const char *path; /* NULL: this order was not given */
  size_t n_records, n_dup;
  int truncated;
  cstat_t t[N_CTASKS]; /* sums */
} corder_t;

typedef struct {
  int have[2]; /* the order's file was given */
  cstat_t o[2];
} cline_t;

static int chat_read(const char *path, int order, corder_t *o, es_error_t *err) {
  jsonl_t j;
  int rc = jsonl_read(path, AB_MAX_FILE_BYTES, &j, err);
  if (rc) return rc;
  o->path = path;
  o->n_records = j.n;
  o->truncated = j.truncated_tail;
  unsigned char *keep = malloc(j.n ? j.n : 1);
  if (!keep) {
    rc = es_fail(err, ES_ENOMEM, "%s: out of memory", path);
    goto out;
  }
  if ((rc = ab_dedupe(&j, path, keep, &o->n_dup, err))) goto out;
  for (size_t i = 0; i < j.n; i++) {
    const cJSON *r = j.records[i];
    const cJSON *tn = ab_get_key(r, "task_name");
    if (!cJSON_IsString(tn)) {
      rc = ab_rec_fail(err, path, &j, i, "task_name is %s%s", ab_type_name(tn), tn ? ", not a string" : "");
      goto out;
    }
    int t = 0;
    while (t < N_CTASKS && strcmp(CTASKS[t].task_name, tn->valuestring)) t++;
    if (t == N_CTASKS) {
      rc = ab_rec_fail(err, path, &j, i, "task_name \"%.80s\" is not an AIR-Bench Chat task", tn->valuestring);
      goto out;
    }
    const cJSON *reply = ab_get_key(r, "gpt-score");
    if (!reply) reply = ab_get_key(r, "gen");
    if (!reply) {
      rc = ab_rec_fail(err, path, &j, i, "no \"gpt-score\" or \"gen\" (the judge's reply)");
      goto out;
    }
    long first, second;
    int ok = cJSON_IsString(reply) && ab_chat_parse_scores(reply->valuestring, &first, &second) == 0;
    /* cal_score.py calls exit(1) on a score above 10, inside a bare `except:` that catches the SystemExit: the
     * reply is counted as a failure, like one that does not parse */
    if (ok && (first > 10 || second > 10)) ok = 0;
    if (!keep[i]) continue;
    cstat_t *c = &o->t[t];
    c->fail += !ok;
    if (!ok) continue;
    long model = order == ORD_NORMAL ? second : first, ref = order == ORD_NORMAL ? first : second;
    c->n++;
    c->model += (double)model;
    c->ref += (double)ref;
    c->win += model > ref;
  }
out:
  free(keep);
  jsonl_free(&j);
  return rc;
}

/* The row of the tasks whose bit is set in mask, their replies pooled. */
static cline_t cline_pool(const corder_t ord[2], unsigned mask) {
  cline_t l;
  memset(&l, 0, sizeof l);
  for (int o = 0; o < 2; o++) {
    cstat_t *x = &l.o[o];
    l.have[o] = ord[o].path != NULL;
    for (int t = 0; t < N_CTASKS; t++) {
      if (!(mask >> t & 1)) continue;
      const cstat_t *s = &ord[o].t[t];
      x->n += s->n, x->fail += s->fail, x->win += s->win, x->model += s->model, x->ref += s->ref;
    }
    x->model = ab_ratio(x->model, x->n), x->ref = ab_ratio(x->ref, x->n), x->win_rate = ab_ratio((double)x->win, x->n);
  }
  return l;
}

/* The unweighted mean of k rows' means (NAN if any is undefined); counts summed. */
static cline_t cline_mean(const cline_t *parts, int k) {
  cline_t l;
  memset(&l, 0, sizeof l);
  for (int o = 0; o < 2; o++) {
    cstat_t *x = &l.o[o];
    l.have[o] = parts[0].have[o];
    for (int i = 0; i < k; i++) {
      const cstat_t *s = &parts[i].o[o];
      x->n += s->n, x->fail += s->fail, x->win += s->win;
      x->model += s->model / k, x->ref += s->ref / k, x->win_rate += s->win_rate / k;
    }
  }
  return l;
}

/* Both orders: the published score (the mean of the model's two means), the reference's, the win rate's. */
typedef struct {
  double score, ref, win_rate;
} cboth_t;

static cboth_t both(const cline_t *l) {
  if (!l->have[0] || !l->have[1]) return (cboth_t){NAN, NAN, NAN};
  const cstat_t *a = &l->o[0], *b = &l->o[1];
  return (cboth_t){(a->model + b->model) / 2, (a->ref + b->ref) / 2, (a->win_rate + b->win_rate) / 2};
}

static void cline_json(cJSON *o, const cline_t *l, int *oom) {
  for (int k = 0; k < 2; k++) {
    if (!l->have[k]) {
      ab_jstr(o, ORDER_NAMES[k], NULL, oom);
      continue;
    }
    cJSON *x = ab_jobj(o, ORDER_NAMES[k], oom);
    ab_jnum(x, "n", (double)l->o[k].n, oom);
    ab_jnum(x, "n_fail", (double)l->o[k].fail, oom);
    ab_jnum(x, "n_win", (double)l->o[k].win, oom);
    ab_jnum(x, "model", l->o[k].model, oom);
    ab_jnum(x, "reference", l->o[k].ref, oom);
    ab_jnum(x, "win_rate", l->o[k].win_rate, oom);
  }
  cboth_t b = both(l);
  ab_jnum(o, "score", b.score, oom);
  ab_jnum(o, "reference", b.ref, oom);
  ab_jnum(o, "win_rate", b.win_rate, oom);
}

static void cline_text(FILE *f, const char *name, const cline_t *l) {
  char a[16], b[16], c[16];
  fprintf(f, "%-29s", name);
  for (int k = 0; k < 2; k++) {
    const cstat_t *x = &l->o[k];
    if (l->have[k])
      fprintf(f, " | %5ld %4ld %5s %5s %5s", x->n, x->fail, ab_fmt_num(a, sizeof a, "%.2f", x->model),
              ab_fmt_num(b, sizeof b, "%.2f", x->ref), ab_fmt_num(c, sizeof c, "%.1f", 100 * x->win_rate));
    else
      fprintf(f, " | %28s", "(not given)");
  }
  cboth_t x = both(l);
  fprintf(f, " | %5s %5s %5s\n", ab_fmt_num(a, sizeof a, "%.2f", x.score), ab_fmt_num(b, sizeof b, "%.2f", x.ref),
          ab_fmt_num(c, sizeof c, "%.1f", 100 * x.win_rate));
}

/* The rows of the report: the 8 tasks, the 5 buckets, Mixed, Average. */
typedef struct {
  cline_t tasks[N_CTASKS], buckets[N_BUCKETS], mixed, average;
} creport_t;

static void chat_text(FILE *f, const corder_t ord[2], const creport_t *r) {
  fprintf(f, "AIR-Bench Chat (cal_score.py): judge scores 1-10\n");
  for (int o = 0; o < 2; o++) {
    const char *what = o == ORD_NORMAL ? "normal order (Assistant 1 = reference)" : "swapped order (model first)";
    if (!ord[o].path)
      fprintf(f, "%s: not given\n", what);
    else
      fprintf(f, "%s: %s: %zu records, %zu replaced by a later record with the same uniq_id%s\n", what, ord[o].path,
              ord[o].n_records, ord[o].n_dup, ord[o].truncated ? ", a partial last line dropped" : "");
  }
  fprintf(f, "n = parsed replies, fail = unparsed (excluded), win = %% model above the reference; score = the "
             "mean of the model's\nmeans in the two orders (the leaderboard's number); Mixed = mean of the two "
             "mixed buckets, Average = mean of Speech, Sound, Music, Mixed\n\n");
  fprintf(f, "%-29s | %-28s | %-28s | %s\n", "", "normal (reference first)", "swapped (model first)", "both orders");
  fprintf(f, "%-29s | %5s %4s %5s %5s %5s | %5s %4s %5s %5s %5s | %5s %5s %5s\n", "task / bucket", "n", "fail", "model",
          "ref", "win", "n", "fail", "model", "ref", "win", "score", "ref", "win");
  for (int t = 0; t < N_CTASKS; t++) cline_text(f, CTASKS[t].task_name, &r->tasks[t]);
  fprintf(f, "\n");
  for (int b = 0; b < N_BUCKETS; b++) cline_text(f, BUCKET_DISPLAY[b], &r->buckets[b]);
  cline_text(f, "Mixed", &r->mixed);
  cline_text(f, "Average", &r->average);
}

static cJSON *chat_json(const corder_t ord[2], const creport_t *r) {
  int oom = 0;
  cJSON *root = cJSON_CreateObject();
  ab_jstr(root, "benchmark", "AIR-Bench Chat", &oom);
  cJSON *files = ab_jobj(root, "files", &oom);
  for (int o = 0; o < 2; o++) {
    if (!ord[o].path) {
      ab_jstr(files, ORDER_NAMES[o], NULL, &oom);
      continue;
    }
    cJSON *x = ab_jobj(files, ORDER_NAMES[o], &oom);
    ab_jstr(x, "path", ord[o].path, &oom);
    ab_jnum(x, "n_records", (double)ord[o].n_records, &oom);
    ab_jnum(x, "n_duplicates", (double)ord[o].n_dup, &oom);
    if (x && !cJSON_AddBoolToObject(x, "truncated_tail", ord[o].truncated)) oom = 1;
  }
  cJSON *arr = ab_jarr(root, "tasks", &oom);
  for (int t = 0; t < N_CTASKS && !oom; t++) {
    cJSON *x = ab_jobj(arr, NULL, &oom);
    ab_jstr(x, "task_name", CTASKS[t].task_name, &oom);
    ab_jstr(x, "bucket", BUCKETS[CTASKS[t].bucket], &oom);
    cline_json(x, &r->tasks[t], &oom);
  }
  arr = ab_jarr(root, "buckets", &oom);
  for (int b = 0; b < N_BUCKETS && !oom; b++) {
    cJSON *x = ab_jobj(arr, NULL, &oom);
    ab_jstr(x, "bucket", BUCKETS[b], &oom);
    cline_json(x, &r->buckets[b], &oom);
  }
  cline_json(ab_jobj(root, "mixed", &oom), &r->mixed, &oom);
  cline_json(ab_jobj(root, "average", &oom), &r->average, &oom);
  if (oom) {
    cJSON_Delete(root);
    return NULL;
  }
  return root;
}

int ab_score_chat(const char *normal_path, const char *swapped_path, FILE *text, cJSON **json, es_error_t *err) {
  if (json) *json = NULL;
  if (!normal_path && !swapped_path) return es_fail(err, ES_EINVAL, "no judge file given (normal or swapped order)");
  corder_t ord[2];
  memset(ord, 0, sizeof ord);
  int rc;
  if (normal_path && (rc = chat_read(normal_path, ORD_NORMAL, &ord[ORD_NORMAL], err))) return rc;
  if (swapped_path && (rc = chat_read(swapped_path, ORD_SWAPPED, &ord[ORD_SWAPPED], err))) return rc;
  creport_t r;
  unsigned bucket_mask[N_BUCKETS] = {0};
  for (int t = 0; t < N_CTASKS; t++) {
    r.tasks[t] = cline_pool(ord, 1u << t);
    bucket_mask[CTASKS[t].bucket] |= 1u << t;
  }
  for (int b = 0; b < N_BUCKETS; b++) r.buckets[b] = cline_pool(ord, bucket_mask[b]);
  r.mixed = cline_mean(&r.buckets[B_SPEECH_SOUND], 2);
  cline_t four[4] = {r.buckets[B_SPEECH], r.buckets[B_SOUND], r.buckets[B_MUSIC], r.mixed};
  r.average = cline_mean(four, 4);
  if (text) {
    chat_text(text, ord, &r);
    if (fflush(text) || ferror(text)) return es_fail(err, ES_EIO, "writing the Chat text report failed");
  }
  if (json && !(*json = chat_json(ord, &r))) return es_fail(err, ES_ENOMEM, "out of memory (Chat report)");
  return ES_OK;
}
