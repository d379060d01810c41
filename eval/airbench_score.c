/* airbench_score: AIR-Bench Foundation accuracy as score_foundation.py computes it, plus the aggregates it
 * leaves to hand work (the Chat scores are in airbench_chat.c). See airbench_score.h.
 * ref: OFA-Sys/AIR-Bench score_foundation.py; ../shared/AIRBENCH.md §2.1, §3.4, §4.1.
 */
#include "airbench_score.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "airbench_common.h"
#include "jsonl.h"

static int is_abcd(char c) {
  return c >= 'A' && c <= 'D';
}

int ab_foundation_letter(const char *response) {
  if (!response) return 0;
  const char *s = response;
  size_t a = 0, b = strlen(s);
  ab_py_strip(s, &a, &b, 1);
  if (a == b) return 0; /* p == "None" needs no test of its own: p[0] is 'N' and p[-2] is 'n' */
  /* The stripped text neither starts nor ends with whitespace, so p[0] = s[a] and p[-1] is its last code
   * point; p[-2] is the code point before that, '\n's skipped. A multi-byte code point is one character. */
  if (is_abcd(s[a])) return s[a];
  size_t j = b - 1; /* the first byte of the last code point */
  while (j > a && ((unsigned char)s[j] & 0xc0) == 0x80 && b - j < 4) j--;
  while (j > a && s[j - 1] == '\n') j--;
  return j > a && is_abcd(s[j - 1]) ? s[j - 1] : 0;
}

int ab_foundation_gt_letter(const cJSON *record) {
  static const char *const keys[4] = {"choice_a", "choice_b", "choice_c", "choice_d"};
  const char *gt = ab_get_str(record, "answer_gt");
  if (!gt) return 0;
  for (int i = 0; i < 4; i++) {
    const char *c = ab_get_str(record, keys[i]);
    if (c && !strcmp(c, gt)) return 'A' + i;
  }
  return 0;
}

/* ---- Foundation ---- */

enum { CAT_SPEECH, CAT_SOUND, CAT_MUSIC, CAT_OTHER, N_CATS };
static const char *const CAT_NAMES[N_CATS] = {"speech", "sound", "music", "other"};

/* The 19 tasks in the leaderboard's order (AIRBENCH.md §2.1): task_name exactly as in the data, typos
 * included; the README's display name (its en dash written '-'). */
static const struct {
  const char *task_name, *display;
  int cat;
} FTASKS[] = {
    {"Speech_Grounding", "Speech grounding", CAT_SPEECH},
    {"Spoken_Language_Identification", "Spoken language identification", CAT_SPEECH},
    {"Speaker_Gender_Recognition", "Speaker gender recognition", CAT_SPEECH},
    {"Speaker_Emotion_Recontion", "Emotion recognition", CAT_SPEECH},
    {"Speaker_Age_Prediction", "Speaker age prediction", CAT_SPEECH},
    {"Speech_Entity_Reconition", "Speech entity recognition", CAT_SPEECH},
    {"Speaker_Intent_Classification", "Intent classification", CAT_SPEECH},
    {"Speaker_Number_Verification", "Speaker number verification", CAT_SPEECH},
    {"Synthesized_Voice_Detection", "Synthesized voice detection", CAT_SPEECH},
    {"Audio_Grounding", "Audio grounding", CAT_SOUND},
    {"vocal_sound_classification", "Vocal sound classification", CAT_SOUND},
    {"Acoustic_Scene_Classification", "Acoustic scene classification", CAT_SOUND},
    {"Sound_AQA", "Sound question answering", CAT_SOUND},
    {"Music_Instruments_Classfication", "Music instruments classification", CAT_MUSIC},
    {"Music_Genre_Recognition", "Music genre classification", CAT_MUSIC},
    {"Music_Midi_Pitch_Analysis", "Music note analysis - pitch", CAT_MUSIC},
    {"Music_Midi_Velocity_Analysis", "Music note analysis - velocity", CAT_MUSIC},
    {"Music_AQA", "Music question answering", CAT_MUSIC},
    {"Music_Mood_Recognition", "Music emotion detection", CAT_MUSIC},
};
#define N_FTASKS ((int)(sizeof FTASKS / sizeof FTASKS[0]))

typedef struct {
  const char *task, *dataset; /* borrowed from the records */
  int tidx;                   /* index in FTASKS; N_FTASKS for a task not among the 19 */
  int letter, gt, is_error;
} frow_t;

typedef struct {
  long items, parsed, correct, fail, error, bad_gt; /* bad_gt records are in no other count */
} fcount_t;

typedef struct {
  const char *task, *dataset; /* dataset NULL for a task group */
  int tidx;
  fcount_t c;
} fgroup_t;

typedef struct {
  const char *path;
  size_t n_records, n_dup;
  int truncated;
  fgroup_t *subsets, *tasks;
  size_t n_subsets, n_tasks;
  int task_of[N_FTASKS]; /* index in tasks[], -1 when absent */
  fcount_t cats[N_CATS], overall;
  double avg_official, avg_strict; /* leaderboard average; NAN when no task qualifies */
  int n_avg, n_avg_official;       /* tasks in each mean */
} fscore_t;

static int frow_cmp(const void *pa, const void *pb) {
  const frow_t *a = pa, *b = pb;
  if (a->tidx != b->tidx) return a->tidx - b->tidx;
  int c = strcmp(a->task, b->task);
  return c ? c : strcmp(a->dataset, b->dataset);
}

static int task_cat(int tidx) {
  return tidx < N_FTASKS ? FTASKS[tidx].cat : CAT_OTHER;
}

static void fcount_add(fcount_t *c, const frow_t *r) {
  if (!r->gt) {
    c->bad_gt++;
    return;
  }
  c->items++;
  c->parsed += r->letter != 0;
  c->correct += r->letter != 0 && r->letter == r->gt;
  c->fail += r->letter == 0;
  c->error += r->is_error;
}

static double acc_official(const fcount_t *c) {
  return ab_ratio((double)c->correct, c->parsed);
}
static double acc_strict(const fcount_t *c) {
  return ab_ratio((double)c->correct, c->items);
}

/* Groups the sorted rows into subsets and tasks, sums categories and overall, forms the leaderboard mean. */
static void foundation_group(fscore_t *s, const frow_t *rows, size_t n) {
  for (int t = 0; t < N_FTASKS; t++) s->task_of[t] = -1;
  for (size_t i = 0; i < n; i++) {
    const frow_t *r = &rows[i];
    int new_task = i == 0 || strcmp(r->task, rows[i - 1].task) != 0;
    if (new_task || strcmp(r->dataset, rows[i - 1].dataset) != 0)
      s->subsets[s->n_subsets++] = (fgroup_t){r->task, r->dataset, r->tidx, {0}};
    if (new_task) {
      if (r->tidx < N_FTASKS) s->task_of[r->tidx] = (int)s->n_tasks;
      s->tasks[s->n_tasks++] = (fgroup_t){r->task, NULL, r->tidx, {0}};
    }
    fcount_add(&s->subsets[s->n_subsets - 1].c, r);
    fcount_add(&s->tasks[s->n_tasks - 1].c, r);
    fcount_add(&s->cats[task_cat(r->tidx)], r);
    fcount_add(&s->overall, r);
  }
  double sum_o = 0, sum_s = 0;
  for (size_t t = 0; t < s->n_tasks; t++) {
    const fcount_t *c = &s->tasks[t].c;
    if (s->tasks[t].tidx == N_FTASKS || c->items == 0) continue;
    s->n_avg++;
    sum_s += acc_strict(c);
    if (c->parsed) {
      s->n_avg_official++;
      sum_o += acc_official(c);
    }
  }
  s->avg_official = ab_ratio(sum_o, s->n_avg_official);
  s->avg_strict = ab_ratio(sum_s, s->n_avg);
}

static void fcount_json(cJSON *o, const fcount_t *c, int *oom) {
  ab_jnum(o, "n_items", (double)c->items, oom);
  ab_jnum(o, "n_parsed", (double)c->parsed, oom);
  ab_jnum(o, "n_correct", (double)c->correct, oom);
  ab_jnum(o, "n_fail", (double)c->fail, oom);
  ab_jnum(o, "n_error", (double)c->error, oom);
  ab_jnum(o, "n_bad_gt", (double)c->bad_gt, oom);
  ab_jnum(o, "acc_official", acc_official(c), oom);
  ab_jnum(o, "acc_strict", acc_strict(c), oom);
}

static cJSON *foundation_json(const fscore_t *s) {
  int oom = 0;
  cJSON *root = cJSON_CreateObject();
  if (!root) return NULL;
  ab_jstr(root, "benchmark", "AIR-Bench Foundation", &oom);
  ab_jstr(root, "file", s->path, &oom);
  ab_jnum(root, "n_records", (double)s->n_records, &oom);
  ab_jnum(root, "n_duplicates", (double)s->n_dup, &oom);
  if (!cJSON_AddBoolToObject(root, "truncated_tail", s->truncated)) oom = 1;
  cJSON *subsets = ab_jarr(root, "subsets", &oom);
  for (size_t i = 0; i < s->n_subsets && !oom; i++) {
    const fgroup_t *g = &s->subsets[i];
    cJSON *o = ab_jobj(subsets, NULL, &oom);
    size_t len = strlen(g->task) + strlen(g->dataset) + 2;
    char *name = malloc(len);
    if (name) snprintf(name, len, "%s_%s", g->task, g->dataset);
    ab_jstr(o, "subset", name, &oom);
    oom |= !name;
    free(name);
    ab_jstr(o, "task_name", g->task, &oom);
    ab_jstr(o, "dataset_name", g->dataset, &oom);
    ab_jstr(o, "category", CAT_NAMES[task_cat(g->tidx)], &oom);
    fcount_json(o, &g->c, &oom);
  }
  cJSON *tasks = ab_jarr(root, "tasks", &oom);
  for (size_t i = 0; i < s->n_tasks && !oom; i++) {
    const fgroup_t *g = &s->tasks[i];
    int known = g->tidx < N_FTASKS;
    cJSON *o = ab_jobj(tasks, NULL, &oom);
    ab_jstr(o, "task_name", g->task, &oom);
    ab_jstr(o, "display_name", known ? FTASKS[g->tidx].display : NULL, &oom);
    ab_jstr(o, "category", CAT_NAMES[task_cat(g->tidx)], &oom);
    ab_jnum(o, "leaderboard_row", known ? g->tidx + 1 : NAN, &oom);
    fcount_json(o, &g->c, &oom);
  }
  cJSON *cats = ab_jarr(root, "categories", &oom);
  for (int c = 0; c < N_CATS && !oom; c++) {
    if (c == CAT_OTHER && s->cats[c].items + s->cats[c].bad_gt == 0) continue;
    cJSON *o = ab_jobj(cats, NULL, &oom);
    ab_jstr(o, "category", CAT_NAMES[c], &oom);
    fcount_json(o, &s->cats[c], &oom);
  }
  fcount_json(ab_jobj(root, "overall", &oom), &s->overall, &oom);
  cJSON *avg = ab_jobj(root, "leaderboard_average", &oom);
  ab_jnum(avg, "acc_official", s->avg_official, &oom);
  ab_jnum(avg, "acc_strict", s->avg_strict, &oom);
  ab_jnum(avg, "n_tasks", s->n_avg, &oom);
  ab_jnum(avg, "n_tasks_official", s->n_avg_official, &oom);
  ab_jnum(avg, "n_tasks_leaderboard", N_FTASKS, &oom);
  if (oom) {
    cJSON_Delete(root);
    return NULL;
  }
  return root;
}

static void fcount_text(FILE *f, const fcount_t *c) {
  char a[16], b[16];
  fprintf(f, " %7ld %7ld %7ld %6ld %6ld %6ld %6s %6s\n", c->items, c->parsed, c->correct, c->fail, c->error, c->bad_gt,
          ab_fmt_num(a, sizeof a, "%.1f", 100 * acc_official(c)), ab_fmt_num(b, sizeof b, "%.1f", 100 * acc_strict(c)));
}

static void foundation_text(FILE *f, const fscore_t *s) {
  static const char *cols = "   items  parsed correct   fail  error bad_gt    acc strict\n";
  fprintf(f, "AIR-Bench Foundation: %s\n", s->path);
  fprintf(f, "%zu records, %zu replaced by a later record with the same uniq_id%s\n", s->n_records, s->n_dup,
          s->truncated ? "; a partial last line was dropped" : "");
  fprintf(f, "acc = correct / parsed (score_foundation.py: an unparsed response leaves the denominator); "
             "strict = correct / items;\nfail = unparsed, error = generation failed (in fail), bad_gt = answer_gt "
             "matches no choice (excluded)\n\n");
  fprintf(f, "%-45s%s", "subset", cols);
  for (size_t i = 0; i < s->n_subsets; i++) {
    const fgroup_t *g = &s->subsets[i];
    int len = (int)(strlen(g->task) + 1 + strlen(g->dataset));
    fprintf(f, "%s_%s%*s", g->task, g->dataset, len < 45 ? 45 - len : 0, "");
    fcount_text(f, &g->c);
  }
  fprintf(f, "\n%-3s %-33s %-7s%s", "#", "task", "cat.", cols);
  for (int t = 0; t < N_FTASKS; t++) {
    fprintf(f, "%-3d %-33s %-7s", t + 1, FTASKS[t].display, CAT_NAMES[FTASKS[t].cat]);
    fcount_t none = {0};
    fcount_text(f, s->task_of[t] >= 0 ? &s->tasks[s->task_of[t]].c : &none);
  }
  for (size_t i = 0; i < s->n_tasks; i++) {
    if (s->tasks[i].tidx < N_FTASKS) continue;
    fprintf(f, "%-3s %-33s %-7s", "-", s->tasks[i].task, "other");
    fcount_text(f, &s->tasks[i].c);
  }
  for (int c = 0; c < N_CATS; c++) {
    if (c == CAT_OTHER && s->cats[c].items + s->cats[c].bad_gt == 0) continue;
    fprintf(f, "%-3s %-41s", "", CAT_NAMES[c]);
    fcount_text(f, &s->cats[c]);
  }
  fprintf(f, "%-3s %-41s", "", "overall");
  fcount_text(f, &s->overall);
  char a[16], b[16];
  fprintf(f,
          "\nleaderboard average (unweighted mean of the task accuracies), %d of the %d tasks present: "
          "acc %s, strict %s\n",
          s->n_avg, N_FTASKS, ab_fmt_num(a, sizeof a, "%.1f", 100 * s->avg_official),
          ab_fmt_num(b, sizeof b, "%.1f", 100 * s->avg_strict));
  if (s->n_avg_official < s->n_avg)
    fprintf(f, "  (acc over %d tasks: a task with no parsed response has no official accuracy)\n", s->n_avg_official);
  if (s->cats[CAT_OTHER].items + s->cats[CAT_OTHER].bad_gt)
    fprintf(f, "  (tasks of category \"other\" are not among the 19 and not in the average)\n");
}

int ab_score_foundation(const char *results_path, FILE *text, cJSON **json, es_error_t *err) {
  if (json) *json = NULL;
  if (!results_path) return es_fail(err, ES_EINVAL, "no Foundation result file given");
  const char *path = results_path;
  jsonl_t j;
  int rc = jsonl_read(path, AB_MAX_FILE_BYTES, &j, err);
  if (rc) return rc;
  fscore_t s = {.path = path, .n_records = j.n, .truncated = j.truncated_tail};
  size_t cap = j.n ? j.n : 1, n = 0;
  unsigned char *keep = malloc(cap);
  frow_t *rows = malloc(cap * sizeof *rows);
  s.subsets = malloc(cap * sizeof *s.subsets);
  s.tasks = malloc(cap * sizeof *s.tasks);
  if (!keep || !rows || !s.subsets || !s.tasks) {
    rc = es_fail(err, ES_ENOMEM, "%s: out of memory", path);
    goto out;
  }
  for (size_t i = 0; i < j.n; i++) {
    static const char *const need[3] = {"task_name", "dataset_name", "response"};
    for (int k = 0; k < 3; k++) {
      const cJSON *v = ab_get_key(j.records[i], need[k]);
      if (!cJSON_IsString(v)) {
        rc = ab_rec_fail(err, path, &j, i, "%s is %s%s", need[k], ab_type_name(v), v ? ", not a string" : "");
        goto out;
      }
    }
  }
  if ((rc = ab_dedupe(&j, path, keep, &s.n_dup, err))) goto out;
  for (size_t i = 0; i < j.n; i++) {
    if (!keep[i]) continue;
    const cJSON *r = j.records[i];
    frow_t *row = &rows[n++];
    row->task = ab_get_str(r, "task_name");
    row->dataset = ab_get_str(r, "dataset_name");
    row->tidx = 0;
    while (row->tidx < N_FTASKS && strcmp(FTASKS[row->tidx].task_name, row->task)) row->tidx++;
    row->letter = ab_foundation_letter(ab_get_str(r, "response"));
    row->gt = ab_foundation_gt_letter(r);
    const cJSON *e = ab_get_key(r, "error");
    row->is_error = e && !cJSON_IsNull(e) && !cJSON_IsFalse(e);
  }
  qsort(rows, n, sizeof *rows, frow_cmp);
  foundation_group(&s, rows, n);
  if (text) {
    foundation_text(text, &s);
    if (fflush(text) || ferror(text)) {
      rc = es_fail(err, ES_EIO, "%s: writing the text report failed", path);
      goto out;
    }
  }
  if (json && !(*json = foundation_json(&s))) rc = es_fail(err, ES_ENOMEM, "%s: out of memory (report)", path);
out:
  free(keep);
  free(rows);
  free(s.subsets);
  free(s.tasks);
  jsonl_free(&j);
  return rc;
}
