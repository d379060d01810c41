/* test_airbench_score: AIR-Bench scoring as score_foundation.py and cal_score.py do it (AIRBENCH.md §3.4, §4),
 * on hand-made result and judge files whose every number is worked out by hand in the comments.
 * argv[1]: a scratch folder for those files.
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "airbench_score.h"
#include "es_file.h"
#include "jsonl.h"
#include "test_util.h"

static const char *g_dir = ".";
static es_error_t E;

/* Writes text to <scratch>/name; path receives the full name. */
static int put(const char *name, const char *text, char *path, size_t cap) {
  snprintf(path, cap, "%s/%s", g_dir, name);
  return es_write_file(path, text, strlen(text), &E);
}

/* The text a report function wrote to <scratch>/name (malloc'd; NULL on failure). */
static char *slurp(const char *path) {
  char *data = NULL;
  size_t len;
  return es_read_file(path, 1 << 20, &data, &len, &E) ? NULL : data;
}

static const cJSON *key(const cJSON *o, const char *k) {
  return cJSON_GetObjectItemCaseSensitive(o, k);
}

/* The element of array arr whose string field k is v. */
static const cJSON *find(const cJSON *arr, const char *k, const char *v) {
  const cJSON *e;
  cJSON_ArrayForEach(e, arr) {
    const cJSON *s = key(e, k);
    if (cJSON_IsString(s) && !strcmp(s->valuestring, v)) return e;
  }
  return NULL;
}

/* o[k] is the number want, or null when want is NAN. */
static int num_is(const cJSON *o, const char *k, double want) {
  const cJSON *v = key(o, k);
  if (isnan(want)) return cJSON_IsNull(v);
  return cJSON_IsNumber(v) && fabs(v->valuedouble - want) < 1e-9;
}

static void check_counts(const cJSON *o, const char *what, long items, long parsed, long correct, long fail, long error,
                         long bad, double acc, double strict) {
  T_CHECK(o != NULL, "%s: missing from the report", what);
  if (!o) return;
  T_CHECK(num_is(o, "n_items", items) && num_is(o, "n_parsed", parsed) && num_is(o, "n_correct", correct),
          "%s: items/parsed/correct", what);
  T_CHECK(num_is(o, "n_fail", fail) && num_is(o, "n_error", error) && num_is(o, "n_bad_gt", bad),
          "%s: fail/error/bad_gt", what);
  T_CHECK(num_is(o, "acc_official", acc) && num_is(o, "acc_strict", strict), "%s: accuracies", what);
}

/* ---- the letter rules ---- */

static void test_letter(void) {
  static const struct {
    const char *response;
    int want;
  } cases[] = {
      {"A", 'A'},
      {"D.", 'D'},
      {"E", 0},
      {"a", 0},                                              /* lowercase is not a letter to the rule */
      {"According to the audio, the speaker is male.", 'A'}, /* any leading capital A-D wins (§3.4) */
      {"Based on the audio: C", 'B'},
      {"Definitely not", 'D'},
      {"The answer is B.", 'B'},
      {"The answer is B", 0}, /* p[-2] is ' ' */
      {"B) dog", 'B'},
      /* AIRBENCH.md §3.4 says "(B)" fails; Python's "(B)"[-2] is 'B', so the official rule takes B */
      {"(B)", 'B'},
      {"(B).", 0},
      {"(B) dog", 0},
      {"", 0},
      {"None", 0},
      {"  None \n", 0},
      {"No\nne", 0}, /* "None" once the '\n' is gone */
      {"\nC\n", 'C'},
      {"\t B. cat \r\n", 'B'},
      {"The answer is\nC\n.", 'C'}, /* "The answer isC.": p[-2] is C only because the '\n's are removed */
      {"The answer is C\n\n.", 'C'},
      {"The answer is C\r\n.", 0}, /* '\r' is not removed: p[-2] is '\r' */
      {"The answer is B.\nIt is clear.", 0},
      {"x", 0},  /* len(p) == 1 */
      {"xB", 0}, /* p[-2] is 'x' */
      {"Bx", 'B'},
      {"xBy", 'B'},
      {"\xe7\xad\x94\xe6\xa1\x88\xe6\x98\xaf"
       "B\xe3\x80\x82",
       'B'}, /* "答案是B。": the full stop is one character */
      {"\xe7\xad\x94\xe6\xa1\x88\xef\xbc\x9a"
       "B",
       0}, /* "答案：B": p[-2] is '：' (its last byte is not a letter) */
      {"\xe9\x80\x89"
       "B",
       0},                         /* "选B" */
      {"xB\xc3\xa9", 'B'},         /* "xBé" */
      {"xB\xf0\x9f\x98\x80", 'B'}, /* a 4-byte last code point */
      {"x\xc3\xa9", 0},
      {"The answer is B.\xe3\x80\x80", 'B'}, /* U+3000 is whitespace to Python's strip() */
      {"\xc2\xa0"
       "C",
       'C'}, /* U+00A0 */
      {"\x1c"
       "D",
       'D'},                                 /* \x1c..\x1f are whitespace to Python too */
      {"The answer is A.\xe2\x80\xa8", 'A'}, /* U+2028 */
      {"The answer is A.\xe2\x80\x8b", 0},   /* U+200B (zero width space) is not whitespace to Python */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int got = ab_foundation_letter(cases[i].response);
    T_CHECK(got == cases[i].want, "case %zu \"%s\": got %c (%d), want %c", i, cases[i].response, got ? got : '0', got,
            cases[i].want ? cases[i].want : '0');
  }
  T_CHECK(ab_foundation_letter(NULL) == 0, "NULL");
}

static int gt_of(const char *json) {
  cJSON *r = cJSON_Parse(json);
  int g = ab_foundation_gt_letter(r);
  cJSON_Delete(r);
  return g;
}

static void test_gt_letter(void) {
  T_CHECK(gt_of("{\"choice_a\": \"cat\", \"choice_b\": \"dog\", \"answer_gt\": \"dog\"}") == 'B', "no C/D keys");
  T_CHECK(gt_of("{\"choice_a\": \"cat\", \"choice_b\": \"dog\", \"choice_c\": null, \"choice_d\": \"fox\","
                " \"answer_gt\": \"fox\"}") == 'D',
          "null C skipped");
  T_CHECK(gt_of("{\"choice_a\": \"cat\", \"choice_b\": \"dog\", \"choice_c\": \"eel\", \"answer_gt\": \"eel\"}") == 'C',
          "C");
  T_CHECK(gt_of("{\"choice_a\": \"cat\", \"choice_b\": \"dog\", \"answer_gt\": \"Dog\"}") == 0, "exact match only");
  T_CHECK(gt_of("{\"choice_a\": \"cat\", \"choice_b\": \"dog\", \"answer_gt\": \"dog \"}") == 0, "no stripping");
  T_CHECK(gt_of("{\"choice_a\": \"cat\", \"choice_b\": \"dog\"}") == 0, "no answer_gt");
  T_CHECK(gt_of("{\"choice_a\": 5, \"choice_b\": \"dog\", \"answer_gt\": 5}") == 0, "answer_gt not a string");
  T_CHECK(gt_of("{\"choice_a\": \"x\", \"choice_b\": \"x\", \"answer_gt\": \"x\"}") == 'A', "first match");
  T_CHECK(gt_of("{\"Choice_a\": \"x\", \"choice_b\": \"x\", \"answer_gt\": \"x\"}") == 'B', "keys case-sensitive");
  /* duplicate keys: Python's json keeps the last value */
  T_CHECK(gt_of("{\"answer_gt\": \"a\", \"answer_gt\": \"b\", \"choice_a\": \"a\", \"choice_b\": \"b\"}") == 'B',
          "last duplicate key wins");
  T_CHECK(ab_foundation_gt_letter(NULL) == 0, "NULL");
  T_CHECK(gt_of("[1, 2]") == 0, "not an object");
}

/* ---- Foundation files ---- */

#define GENDER "\"choice_a\": \"male\", \"choice_b\": \"female\""
#define SGR_CV "\"task_name\": \"Speaker_Gender_Recognition\", \"dataset_name\": \"common_voice_13_en\""
#define SGR_MELD "\"task_name\": \"Speaker_Gender_Recognition\", \"dataset_name\": \"meld\""
#define MAQA                                                                                                           \
  "\"task_name\": \"Music_AQA\", \"dataset_name\": \"music_avqa\", "                                                   \
  "\"choice_a\": \"w\", \"choice_b\": \"x\", \"choice_c\": \"y\", \"choice_d\": \"z\""

/* Speaker_Gender_Recognition (leaderboard row 3) in two subsets, Music_AQA (row 18), a task not among the 19.
 *   SGR/common_voice_13_en: ids 1 (A, right), 2 (parsed A, wrong), 3 (unparsed), 4 (first "A" wrong, then
 *     again "B" right: the last wins) -> items 4, parsed 3, correct 2, fail 1: acc 2/3, strict 2/4.
 *   SGR/meld: 5 (generation error, "") fail + error; 6 right; 7 answer_gt matches no choice -> bad_gt
 *     -> items 2, parsed 1, correct 1, fail 1, error 1, bad_gt 1: acc 1/1, strict 1/2.
 *   task SGR: items 6, parsed 4, correct 3, fail 2, error 1, bad_gt 1: acc 3/4, strict 3/6.
 *   Music_AQA: 8 (C right), two records without uniq_id (both count, right), 12 ("None", fail)
 *     -> items 4, parsed 3, correct 3, fail 1: acc 1, strict 3/4.
 *   My_Task/x (category other): 13 right -> 1, 1, 1: acc 1, strict 1.
 *   overall: items 11, parsed 8, correct 7, fail 3, error 1, bad_gt 1: acc 7/8, strict 7/11.
 *   leaderboard average over the 2 known tasks: acc (3/4 + 1) / 2 = 0.875, strict (1/2 + 3/4) / 2 = 0.625.
 * 13 records (the partial last line dropped), 1 duplicate. */
static const char *FOUNDATION =
    "{\"uniq_id\": 1, " SGR_CV ", " GENDER ", \"answer_gt\": \"male\", \"response\": \"A\", \"error\": null}\n"
    "{\"uniq_id\": 2, " SGR_CV ", " GENDER ", \"answer_gt\": \"female\", \"response\": \"The answer is A.\"}\n"
    "{\"uniq_id\": 3, " SGR_CV ", " GENDER ", \"answer_gt\": \"female\", \"response\": \"I am not sure\"}\n"
    "{\"uniq_id\": 4, " SGR_CV ", " GENDER ", \"answer_gt\": \"female\", \"response\": \"A\"}\n"
    "\n"
    "{\"uniq_id\": 5, " SGR_MELD ", " GENDER ", \"answer_gt\": \"male\", \"response\": \"\","
    " \"error\": \"decode failed\"}\n"
    "{\"uniq_id\": 6, " SGR_MELD ", " GENDER ", \"answer_gt\": \"female\", \"response\": \"B\"}\n"
    "{\"uniq_id\": 7, " SGR_MELD ", " GENDER ", \"answer_gt\": \"neither\", \"response\": \"A\"}\n"
    "{\"uniq_id\": 8, " MAQA ", \"answer_gt\": \"y\", \"response\": \"C\"}\n"
    "{\"uniq_id\": 4, " SGR_CV ", " GENDER ", \"answer_gt\": \"female\", \"response\": \"B\"}\n"
    "{" MAQA ", \"answer_gt\": \"z\", \"response\": \"D\"}\n"
    "{" MAQA ", \"answer_gt\": \"z\", \"response\": \"D\", \"uniq_id\": null}\n"
    "{\"uniq_id\": 12, " MAQA ", \"answer_gt\": \"w\", \"response\": \"None\"}\n"
    "{\"uniq_id\": 13, \"task_name\": \"My_Task\", \"dataset_name\": \"x\", \"choice_a\": \"p\", \"choice_b\": \"q\","
    " \"answer_gt\": \"p\", \"response\": \"A\"}\n"
    "{\"uniq_id\": 14, \"task_name\": \"Music_AQA\", \"resp";

static void test_foundation(void) {
  char path[1024], out[1024];
  T_REQUIRE(put("foundation.jsonl", FOUNDATION, path, sizeof path) == 0, "%s", E.msg);
  snprintf(out, sizeof out, "%s/foundation.txt", g_dir);
  FILE *f = fopen(out, "w");
  T_REQUIRE(f != NULL, "open %s", out);
  cJSON *rep = NULL;
  int rc = ab_score_foundation(path, f, &rep, &E);
  fclose(f);
  T_REQUIRE(rc == 0 && rep, "score: %s", E.msg);

  T_CHECK(num_is(rep, "n_records", 13) && num_is(rep, "n_duplicates", 1), "records, duplicates");
  T_CHECK(cJSON_IsTrue(key(rep, "truncated_tail")), "the partial last line is reported");
  const cJSON *subsets = key(rep, "subsets"), *tasks = key(rep, "tasks"), *cats = key(rep, "categories");
  T_CHECK(cJSON_GetArraySize(subsets) == 4 && cJSON_GetArraySize(tasks) == 3, "4 subsets, 3 tasks");
  check_counts(find(subsets, "subset", "Speaker_Gender_Recognition_common_voice_13_en"), "SGR cv", 4, 3, 2, 1, 0, 0,
               2.0 / 3, 0.5);
  check_counts(find(subsets, "subset", "Speaker_Gender_Recognition_meld"), "SGR meld", 2, 1, 1, 1, 1, 1, 1.0, 0.5);
  check_counts(find(subsets, "subset", "Music_AQA_music_avqa"), "MAQA", 4, 3, 3, 1, 0, 0, 1.0, 0.75);
  check_counts(find(subsets, "subset", "My_Task_x"), "My_Task_x", 1, 1, 1, 0, 0, 0, 1.0, 1.0);
  /* subsets and tasks in leaderboard order, unknown tasks last */
  const cJSON *first = cJSON_GetArrayItem(subsets, 0), *last = cJSON_GetArrayItem(subsets, 3);
  T_CHECK(first && !strcmp(key(first, "dataset_name")->valuestring, "common_voice_13_en"), "subset order");
  T_CHECK(last && !strcmp(key(last, "task_name")->valuestring, "My_Task"), "unknown task last");
  const cJSON *sgr = find(tasks, "task_name", "Speaker_Gender_Recognition");
  check_counts(sgr, "task SGR", 6, 4, 3, 2, 1, 1, 0.75, 0.5);
  T_CHECK(sgr && !strcmp(key(sgr, "display_name")->valuestring, "Speaker gender recognition") &&
              !strcmp(key(sgr, "category")->valuestring, "speech") && num_is(sgr, "leaderboard_row", 3),
          "SGR names");
  const cJSON *maqa = find(tasks, "task_name", "Music_AQA");
  check_counts(maqa, "task MAQA", 4, 3, 3, 1, 0, 0, 1.0, 0.75);
  T_CHECK(maqa && num_is(maqa, "leaderboard_row", 18), "MAQA row");
  const cJSON *other = find(tasks, "task_name", "My_Task");
  check_counts(other, "task My_Task", 1, 1, 1, 0, 0, 0, 1.0, 1.0);
  T_CHECK(other && cJSON_IsNull(key(other, "display_name")) && num_is(other, "leaderboard_row", NAN) &&
              !strcmp(key(other, "category")->valuestring, "other"),
          "unknown task");
  T_CHECK(cJSON_GetArraySize(cats) == 4, "speech, sound, music, other");
  check_counts(find(cats, "category", "speech"), "speech", 6, 4, 3, 2, 1, 1, 0.75, 0.5);
  check_counts(find(cats, "category", "sound"), "sound", 0, 0, 0, 0, 0, 0, NAN, NAN);
  check_counts(find(cats, "category", "music"), "music", 4, 3, 3, 1, 0, 0, 1.0, 0.75);
  check_counts(find(cats, "category", "other"), "other", 1, 1, 1, 0, 0, 0, 1.0, 1.0);
  check_counts(key(rep, "overall"), "overall", 11, 8, 7, 3, 1, 1, 7.0 / 8, 7.0 / 11);
  const cJSON *avg = key(rep, "leaderboard_average");
  T_CHECK(num_is(avg, "acc_official", 0.875) && num_is(avg, "acc_strict", 0.625), "leaderboard average");
  T_CHECK(num_is(avg, "n_tasks", 2) && num_is(avg, "n_tasks_official", 2) && num_is(avg, "n_tasks_leaderboard", 19),
          "average's task counts");
  cJSON_Delete(rep);

  char *txt = slurp(out);
  T_REQUIRE(txt != NULL, "read %s", out);
  T_CHECK(strstr(txt, "Speaker_Gender_Recognition_meld") && strstr(txt, "My_Task_x"), "subset rows");
  T_CHECK(strstr(txt, "3   Speaker gender recognition") && strstr(txt, "   75.0   50.0\n"), "task row:\n%s", txt);
  T_CHECK(strstr(txt, "19  Music emotion detection") && strstr(txt, "     -      -\n"), "absent task row");
  T_CHECK(strstr(txt, "2 of the 19 tasks present: acc 87.5, strict 62.5"), "average line:\n%s", txt);
  T_CHECK(strstr(txt, "not among the 19"), "other tasks are called out");
  free(txt);

  /* the same records as one JSON array (cal_score.py's format) score the same; text report off */
  const char *arr = "[{\"uniq_id\": 1, " SGR_CV ", " GENDER ", \"answer_gt\": \"male\", \"response\": \"A\"},\n"
                    " {\"uniq_id\": 1, " SGR_CV ", " GENDER ", \"answer_gt\": \"male\", \"response\": \"B\"}]";
  T_REQUIRE(put("foundation-array.json", arr, path, sizeof path) == 0, "%s", E.msg);
  T_REQUIRE(ab_score_foundation(path, NULL, &rep, &E) == 0, "%s", E.msg);
  check_counts(key(rep, "overall"), "array overall", 1, 1, 0, 0, 0, 0, 0.0, 0.0);
  T_CHECK(num_is(rep, "n_duplicates", 1) && cJSON_IsFalse(key(rep, "truncated_tail")), "array file");
  cJSON_Delete(rep);
}

/* Scores text (written to name) and expects failure rc with every needle in the message. */
static void expect_fail(const char *name, const char *text, int want_rc, const char *needle1, const char *needle2) {
  char path[1024];
  T_REQUIRE(put(name, text, path, sizeof path) == 0, "%s", E.msg);
  cJSON *rep = (cJSON *)&rep; /* poisoned: must come back NULL */
  es_error_clear(&E);
  int rc = ab_score_foundation(path, NULL, &rep, &E);
  T_CHECK(rc == want_rc && rep == NULL, "%s: rc %d, want %d", name, rc, want_rc);
  T_CHECK(strstr(E.msg, path) && strstr(E.msg, needle1) && (!needle2 || strstr(E.msg, needle2)), "%s: message '%s'",
          name, E.msg);
}

static void test_foundation_errors(void) {
  const char *ok = "{\"uniq_id\": 1, " SGR_CV ", " GENDER ", \"answer_gt\": \"male\", \"response\": \"A\"}\n";
  char bad[2048];
  snprintf(bad, sizeof bad, "%s{\"uniq_id\": 2, " SGR_CV ", \"response\": \"A\"\n%s", ok, ok);
  expect_fail("f-malformed.jsonl", bad, ES_EINVAL, ":2:", "not a JSON object");
  snprintf(bad, sizeof bad, "%s\n%s{\"uniq_id\": 3, \"task_name\": \"Music_AQA\", \"response\": \"A\"}\n", ok, ok);
  expect_fail("f-no-dataset.jsonl", bad, ES_EINVAL, ":4:", "dataset_name is missing");
  snprintf(bad, sizeof bad, "%s{" SGR_CV ", \"response\": null}\n", ok);
  expect_fail("f-null-response.jsonl", bad, ES_EINVAL, ":2:", "response is null");
  snprintf(bad, sizeof bad, "%s{\"task_name\": 7, \"dataset_name\": \"x\", \"response\": \"A\"}\n", ok);
  expect_fail("f-number-task.jsonl", bad, ES_EINVAL, ":2:", "task_name is a number");
  snprintf(bad, sizeof bad, "{" SGR_CV ", \"response\": {\"text\": \"A\", \"n\": [1, {}]}}\n");
  expect_fail("f-nested.jsonl", bad, ES_EINVAL, ":1:", "response is an object");
  snprintf(bad, sizeof bad, "%s{\"uniq_id\": [4], " SGR_CV ", \"response\": \"A\"}\n", ok);
  expect_fail("f-bad-id.jsonl", bad, ES_EINVAL, ":2:", "uniq_id is an array");
  snprintf(bad, sizeof bad, "[{" SGR_CV ", \"response\": \"A\"}, {" SGR_CV ", \"response\": 3}]");
  expect_fail("f-bad-array.json", bad, ES_EINVAL, "element 1 of the array", "response is a number");
  expect_fail("f-array-of-numbers.json", "[{}, 5]", ES_EINVAL, "element 1", NULL);
  expect_fail("f-top-number.json", "5\n", ES_EINVAL, ":1:", NULL);

  char path[1024];
  snprintf(path, sizeof path, "%s/no-such-file.jsonl", g_dir);
  cJSON *rep = NULL;
  T_CHECK(ab_score_foundation(path, NULL, &rep, &E) == ES_ENOTFOUND && rep == NULL, "missing file: %s", E.msg);
  T_CHECK(ab_score_foundation(NULL, NULL, &rep, &E) == ES_EINVAL, "NULL path");
}

/* An empty file, or one of blank lines, is a valid report with zero counts and no accuracy. */
static void test_foundation_empty(void) {
  const char *texts[3] = {"", "\n  \n\r\n", "[]"};
  for (int i = 0; i < 3; i++) {
    char path[1024], out[1024];
    T_REQUIRE(put("empty.jsonl", texts[i], path, sizeof path) == 0, "%s", E.msg);
    snprintf(out, sizeof out, "%s/empty.txt", g_dir);
    FILE *f = fopen(out, "w");
    T_REQUIRE(f != NULL, "open");
    cJSON *rep = NULL;
    int rc = ab_score_foundation(path, f, &rep, &E);
    fclose(f);
    T_REQUIRE(rc == 0 && rep, "empty %d: %s", i, E.msg);
    check_counts(key(rep, "overall"), "empty overall", 0, 0, 0, 0, 0, 0, NAN, NAN);
    const cJSON *avg = key(rep, "leaderboard_average");
    T_CHECK(num_is(avg, "acc_official", NAN) && num_is(avg, "acc_strict", NAN) && num_is(avg, "n_tasks", 0), "avg");
    T_CHECK(cJSON_GetArraySize(key(rep, "subsets")) == 0 && cJSON_GetArraySize(key(rep, "categories")) == 3, "rows");
    cJSON_Delete(rep);
    char *txt = slurp(out);
    T_CHECK(txt && strstr(txt, "0 of the 19 tasks present: acc -, strict -"), "text: %s", txt ? txt : "");
    free(txt);
  }
}

/* ---- Chat ---- */

static void test_chat_parse(void) {
  static const struct {
    const char *reply;
    int ok;
    long first, second;
  } cases[] = {
      {"8 7", 1, 8, 7},
      {"8, 7", 0, 0, 0},
      {"8.5 7", 0, 0, 0},
      {"8  7", 0, 0, 0}, /* split(' ') gives three parts */
      {" 8 7\n", 1, 8, 7},
      {"+8 7", 1, 8, 7},
      {"8 7 6", 0, 0, 0},
      {"", 0, 0, 0},
      {"   \n", 0, 0, 0},
      {"8", 0, 0, 0},
      {"8\n7", 0, 0, 0},  /* "87": one part */
      {"8 \n7", 1, 8, 7}, /* "8 7" */
      {"1\n0 5", 1, 10, 5},
      {"8\t 7", 1, 8, 7}, /* int("8\t") == 8 */
      {"8 \t7", 1, 8, 7},
      {"8\t7", 0, 0, 0},
      {"8 7.", 0, 0, 0},
      {"Scores: 8 7", 0, 0, 0},
      {"-3 7", 1, -3, 7}, /* cal_score.py has no lower bound */
      {"08 007", 1, 8, 7},
      {"1_0 7", 1, 10, 7}, /* Python int() takes single underscores between digits */
      {"1__0 7", 0, 0, 0},
      {"_1 7", 0, 0, 0},
      {"1_ 7", 0, 0, 0},
      {"++8 7", 0, 0, 0},
      {"- 8 7", 0, 0, 0},
      {"8 -", 0, 0, 0},
      {"8\xe3\x80\x80 7", 1, 8, 7}, /* int() strips U+3000 too */
      {"\x1f"
       "8 7",
       1, 8, 7}, /* str.strip() removes \x1f ... */
      {"8 \x1f"
       "7",
       0, 0, 0},                   /* ... int() does not */
      {"\xef\xbc\x98 7", 0, 0, 0}, /* fullwidth 8: Python accepts it, we do not (documented) */
      {"99999999999999999999999 1", 1, LONG_MAX, 1},
      {"-99999999999999999999999 1", 1, LONG_MIN, 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    long a = -100, b = -100;
    int rc = ab_chat_parse_scores(cases[i].reply, &a, &b);
    if (cases[i].ok)
      T_CHECK(rc == 0 && a == cases[i].first && b == cases[i].second, "case %zu \"%s\": rc %d, %ld %ld", i,
              cases[i].reply, rc, a, b);
    else
      T_CHECK(rc == ES_EINVAL && a == -100 && b == -100, "case %zu \"%s\": rc %d", i, cases[i].reply, rc);
  }
  T_CHECK(ab_chat_parse_scores(NULL, NULL, NULL) == ES_EINVAL, "NULL");
  T_CHECK(ab_chat_parse_scores("3 4", NULL, NULL) == 0, "NULL outputs");
}

/* Normal order (first = reference, second = model), cal_score.py's "gpt-score":
 *   speech: speech_QA 8 6, 7 9 (win); speech_dialogue_QA 9 9 (tie), "8, 7" (fail)
 *     -> n 3, fail 1, model (6+9+9)/3 = 8, ref (8+7+9)/3 = 8, win 1/3
 *   sound: 8 5; 6 7 (win) -> model 6, ref 7, win 1/2.   music: 9 4 -> model 4, ref 9, win 0.
 *   speech_and_sound 8 8 -> 8, 8, 0.   speech_and_music 7 6 -> 6, 7, 0.
 * Swapped order (first = model), score_chat.py's "gen", an array with a duplicate uniq_id:
 *   speech: speech_QA id 1 "7 8" then id 1 "9 8" (last wins: win); speech_dialogue_QA 6 9
 *     -> n 2, model 7.5, ref 8.5, win 1/2
 *   sound: 5 8; 8 7 (win) -> 6.5, 7.5, 1/2.   music: one prose reply (fail), 5 9 -> 5, 9, 0.
 *   speech_and_sound 9 8 (win) -> 9, 8, 1.   speech_and_music 5 7 -> 5, 7, 0.
 * Both orders: speech 7.75 (ref 8.25, win (1/3 + 1/2)/2 = 5/12); sound 6.25 (7.25, 1/2); music 4.5 (9, 0);
 *   speech_and_sound 8.5 (8, 1/2); speech_and_music 5.5 (7, 0); Mixed (8.5 + 5.5)/2 = 7;
 *   Average (7.75 + 6.25 + 4.5 + 7)/4 = 6.375 (= mean of the per-order averages 6.25 and 6.5). */
static const char *NORMAL = "{\"task_name\": \"speech_QA\", \"gpt-score\": \"8 6\"}\n"
                            "{\"task_name\": \"speech_QA\", \"gpt-score\": \"7 9\\n\"}\n"
                            "{\"task_name\": \"speech_dialogue_QA\", \"gpt-score\": \"9 9\"}\n"
                            "{\"task_name\": \"speech_dialogue_QA\", \"gpt-score\": \"8, 7\"}\n"
                            "{\"task_name\": \"sound_QA\", \"gpt-score\": \"8 5\"}\n"
                            "{\"task_name\": \"sound_generation_QA\", \"gpt-score\": \"6 7\", \"gen\": \"1 1\"}\n"
                            "{\"task_name\": \"music_QA\", \"gpt-score\": \"9 4\"}\n"
                            "{\"task_name\": \"speech_and_sound_QA\", \"gpt-score\": \"8 8\"}\n"
                            "{\"task_name\": \"speech_and_music_QA\", \"gpt-score\": \"7 6\"}\n";
static const char *SWAPPED = "[{\"uniq_id\": 1, \"task_name\": \"speech_QA\", \"gen\": \"7 8\"},\n"
                             " {\"uniq_id\": 2, \"task_name\": \"speech_dialogue_QA\", \"gen\": \"6 9\"},\n"
                             " {\"uniq_id\": 1, \"task_name\": \"speech_QA\", \"gen\": \"9 8\"},\n"
                             " {\"task_name\": \"sound_QA\", \"gen\": \"5 8\"},\n"
                             " {\"task_name\": \"sound_generation_QA\", \"gen\": \"8 7\"},\n"
                             " {\"task_name\": \"music_QA\", \"gen\": \"I would rate them 5 and 9.\"},\n"
                             " {\"task_name\": \"music_QA\", \"gen\": \"5 9\"},\n"
                             " {\"task_name\": \"speech_and_sound_QA\", \"gen\": \"9 8\"},\n"
                             " {\"task_name\": \"speech_and_music_QA\", \"gen\": \"5 7\"}]\n";

/* o.normal / o.swapped hold n, n_fail, model, reference, win_rate. */
static int order_is(const cJSON *row, const char *order, long n, long fail, double model, double ref, double win) {
  const cJSON *o = key(row, order);
  return o && num_is(o, "n", n) && num_is(o, "n_fail", fail) && num_is(o, "model", model) &&
         num_is(o, "reference", ref) && num_is(o, "win_rate", win);
}

static int both_is(const cJSON *row, double score, double ref, double win) {
  return row && num_is(row, "score", score) && num_is(row, "reference", ref) && num_is(row, "win_rate", win);
}

static void test_chat(void) {
  char np[1024], sp[1024], out[1024];
  T_REQUIRE(put("judge-normal.jsonl", NORMAL, np, sizeof np) == 0, "%s", E.msg);
  T_REQUIRE(put("judge-swapped.json", SWAPPED, sp, sizeof sp) == 0, "%s", E.msg);
  snprintf(out, sizeof out, "%s/chat.txt", g_dir);
  FILE *f = fopen(out, "w");
  T_REQUIRE(f != NULL, "open");
  cJSON *rep = NULL;
  int rc = ab_score_chat(np, sp, f, &rep, &E);
  fclose(f);
  T_REQUIRE(rc == 0 && rep, "%s", E.msg);

  const cJSON *files = key(rep, "files");
  T_CHECK(num_is(key(files, "normal"), "n_records", 9) && num_is(key(files, "normal"), "n_duplicates", 0), "normal");
  T_CHECK(num_is(key(files, "swapped"), "n_records", 9) && num_is(key(files, "swapped"), "n_duplicates", 1), "swap");
  const cJSON *b = key(rep, "buckets");
  T_CHECK(cJSON_GetArraySize(b) == 5 && cJSON_GetArraySize(key(rep, "tasks")) == 8, "5 buckets, 8 tasks");
  const cJSON *speech = find(b, "bucket", "speech"), *sound = find(b, "bucket", "sound");
  const cJSON *music = find(b, "bucket", "music"), *ss = find(b, "bucket", "speech_and_sound");
  const cJSON *sm = find(b, "bucket", "speech_and_music");
  T_CHECK(order_is(speech, "normal", 3, 1, 8, 8, 1.0 / 3) && order_is(speech, "swapped", 2, 0, 7.5, 8.5, 0.5), "sp");
  T_CHECK(both_is(speech, 7.75, 8.25, 5.0 / 12), "speech both");
  T_CHECK(order_is(sound, "normal", 2, 0, 6, 7, 0.5) && order_is(sound, "swapped", 2, 0, 6.5, 7.5, 0.5), "sound");
  T_CHECK(both_is(sound, 6.25, 7.25, 0.5), "sound both");
  T_CHECK(order_is(music, "normal", 1, 0, 4, 9, 0) && order_is(music, "swapped", 1, 1, 5, 9, 0), "music");
  T_CHECK(both_is(music, 4.5, 9, 0), "music both");
  T_CHECK(order_is(ss, "normal", 1, 0, 8, 8, 0) && order_is(ss, "swapped", 1, 0, 9, 8, 1), "speech_and_sound");
  T_CHECK(both_is(ss, 8.5, 8, 0.5), "ss both");
  T_CHECK(order_is(sm, "normal", 1, 0, 6, 7, 0) && order_is(sm, "swapped", 1, 0, 5, 7, 0), "speech_and_music");
  T_CHECK(both_is(sm, 5.5, 7, 0), "sm both");
  const cJSON *mixed = key(rep, "mixed"), *avg = key(rep, "average");
  T_CHECK(order_is(mixed, "normal", 2, 0, 7, 7.5, 0) && order_is(mixed, "swapped", 2, 0, 7, 7.5, 0.5), "mixed");
  T_CHECK(both_is(mixed, 7, 7.5, 0.25), "mixed both");
  /* per-order Average: normal model (8 + 6 + 4 + 7)/4 = 6.25, ref (8 + 7 + 9 + 7.5)/4 = 7.875,
   * win (1/3 + 1/2 + 0 + 0)/4 = 5/24; swapped model (7.5 + 6.5 + 5 + 7)/4 = 6.5, ref (8.5 + 7.5 + 9 + 7.5)/4 =
   * 8.125, win (1/2 + 1/2 + 0 + 1/2)/4 = 3/8 */
  T_CHECK(order_is(avg, "normal", 8, 1, 6.25, 7.875, 5.0 / 24) && order_is(avg, "swapped", 7, 1, 6.5, 8.125, 0.375),
          "average orders");
  T_CHECK(both_is(avg, 6.375, 8.0, (5.0 / 24 + 0.375) / 2), "average");
  const cJSON *t = key(rep, "tasks");
  const cJSON *sqa = find(t, "task_name", "speech_QA"), *mga = find(t, "task_name", "music_generation_analysis_QA");
  T_CHECK(order_is(sqa, "normal", 2, 0, 7.5, 7.5, 0.5) && order_is(sqa, "swapped", 1, 0, 9, 8, 1), "speech_QA");
  T_CHECK(both_is(sqa, 8.25, 7.75, 0.75) && !strcmp(key(sqa, "bucket")->valuestring, "speech"), "speech_QA both");
  /* "gpt-score" is taken over "gen" when a record has both */
  T_CHECK(order_is(find(t, "task_name", "sound_generation_QA"), "normal", 1, 0, 7, 6, 1), "gpt-score first");
  T_CHECK(order_is(mga, "normal", 0, 0, NAN, NAN, NAN) && both_is(mga, NAN, NAN, NAN), "a task with no replies");
  cJSON_Delete(rep);

  char *txt = slurp(out);
  T_REQUIRE(txt != NULL, "read");
  T_CHECK(strstr(txt, "|  6.38  8.00  29.2\n"), "average row:\n%s", txt);
  T_CHECK(strstr(txt, " 7.75  8.25  41.7\n"), "speech row:\n%s", txt);
  free(txt);

  /* one order only: that order's numbers, the other null, no published score */
  T_REQUIRE(ab_score_chat(np, NULL, NULL, &rep, &E) == 0, "%s", E.msg);
  speech = find(key(rep, "buckets"), "bucket", "speech");
  T_CHECK(order_is(speech, "normal", 3, 1, 8, 8, 1.0 / 3) && cJSON_IsNull(key(speech, "swapped")), "normal only");
  T_CHECK(both_is(speech, NAN, NAN, NAN) && cJSON_IsNull(key(key(rep, "files"), "swapped")), "no score");
  T_CHECK(num_is(key(key(rep, "average"), "normal"), "model", 6.25), "average of one order");
  cJSON_Delete(rep);
  T_REQUIRE(ab_score_chat(NULL, sp, NULL, &rep, &E) == 0, "%s", E.msg);
  T_CHECK(order_is(find(key(rep, "buckets"), "bucket", "speech"), "swapped", 2, 0, 7.5, 8.5, 0.5), "swapped only");
  cJSON_Delete(rep);
  T_CHECK(ab_score_chat(NULL, NULL, NULL, &rep, &E) == ES_EINVAL, "no file");
}

static void chat_fail(const char *name, const char *text, const char *needle1, const char *needle2) {
  char path[1024];
  T_REQUIRE(put(name, text, path, sizeof path) == 0, "%s", E.msg);
  cJSON *rep = NULL;
  es_error_clear(&E);
  int rc = ab_score_chat(NULL, path, NULL, &rep, &E);
  T_CHECK(rc == ES_EINVAL && rep == NULL, "%s: rc %d", name, rc);
  T_CHECK(strstr(E.msg, path) && strstr(E.msg, needle1) && (!needle2 || strstr(E.msg, needle2)), "%s: '%s'", name,
          E.msg);
}

static void test_chat_edge(void) {
  const char *ok = "{\"task_name\": \"sound_QA\", \"gpt-score\": \"8 7\"}\n";
  char bad[1024];
  /* a score above 10 is a failed reply, as in cal_score.py (its exit(1) is caught by its bare except) */
  char over[1024], path10[1024];
  snprintf(over, sizeof over, "%s%s{\"task_name\": \"sound_QA\", \"gpt-score\": \"8 11\"}\n", ok, ok);
  T_REQUIRE(put("c-over-10.jsonl", over, path10, sizeof path10) == 0, "%s", E.msg);
  cJSON *r10 = NULL;
  T_CHECK(ab_score_chat(path10, NULL, NULL, &r10, &E) == 0, "over 10: %s", E.msg);
  T_CHECK(order_is(find(key(r10, "buckets"), "bucket", "sound"), "normal", 2, 1, 7.0, 8.0, 0.0),
          "a score above 10 counts as a failure");
  cJSON_Delete(r10);
  snprintf(bad, sizeof bad, "%s{\"task_name\": \"sound_qa\", \"gpt-score\": \"8 7\"}\n", ok);
  chat_fail("c-unknown-task.jsonl", bad, ":2:", "sound_qa");
  snprintf(bad, sizeof bad, "%s{\"task_name\": \"sound_QA\", \"score\": \"8 7\"}\n", ok);
  chat_fail("c-no-reply.jsonl", bad, ":2:", "gpt-score");
  snprintf(bad, sizeof bad, "%s{\"gpt-score\": \"8 7\"}\n", ok);
  chat_fail("c-no-task.jsonl", bad, ":2:", "task_name is missing");
  snprintf(bad, sizeof bad, "%s{\"task_name\": [\"sound_QA\"], \"gpt-score\": \"8 7\"}\n", ok);
  chat_fail("c-array-task.jsonl", bad, ":2:", "task_name is an array");
  snprintf(bad, sizeof bad, "%s{\"task_name\": \"sound_QA\", \"gpt-score\": \"8 7\"\n%s", ok, ok);
  chat_fail("c-malformed.jsonl", bad, ":2:", NULL);

  /* a null or non-string reply is an unparsed one (cal_score.py would crash on it); a partial last line is
   * dropped; records without uniq_id all count */
  char path[1024];
  const char *odd = "{\"task_name\": \"sound_QA\", \"gpt-score\": null}\n"
                    "{\"task_name\": \"sound_QA\", \"gen\": {\"scores\": [8, 7]}}\n"
                    "{\"task_name\": \"sound_QA\", \"gpt-score\": 87}\n"
                    "{\"task_name\": \"sound_QA\", \"gpt-score\": \"10 2\"}\n"
                    "{\"task_name\": \"sound_QA\", \"gpt-score\": \"10 2\"}\n"
                    "{\"task_name\": \"sound_QA\", \"gpt-sc";
  T_REQUIRE(put("c-odd.jsonl", odd, path, sizeof path) == 0, "%s", E.msg);
  cJSON *rep = NULL;
  T_REQUIRE(ab_score_chat(path, NULL, NULL, &rep, &E) == 0, "%s", E.msg);
  const cJSON *sound = find(key(rep, "buckets"), "bucket", "sound");
  T_CHECK(order_is(sound, "normal", 2, 3, 2, 10, 0), "odd replies");
  T_CHECK(cJSON_IsTrue(key(key(key(rep, "files"), "normal"), "truncated_tail")), "partial line");
  cJSON_Delete(rep);

  /* empty files: every mean null, no division by zero */
  T_REQUIRE(put("c-empty.jsonl", "", path, sizeof path) == 0, "%s", E.msg);
  char out[1024];
  snprintf(out, sizeof out, "%s/chat-empty.txt", g_dir);
  FILE *f = fopen(out, "w");
  T_REQUIRE(f != NULL, "open");
  int rc = ab_score_chat(path, path, f, &rep, &E);
  fclose(f);
  T_REQUIRE(rc == 0 && rep, "%s", E.msg);
  T_CHECK(order_is(key(rep, "average"), "normal", 0, 0, NAN, NAN, NAN) && both_is(key(rep, "average"), NAN, NAN, NAN),
          "empty average");
  cJSON_Delete(rep);
  char *txt = slurp(out);
  T_CHECK(txt && strstr(txt, "Average") && strstr(txt, "    -     -     -\n"), "empty text: %s", txt ? txt : "");
  free(txt);
}

/* jsonl.c as the scorers rely on it: line numbers skip blank lines correctly, a partial last line is dropped
 * only at the end, CRLF line ends are fine. */
static void test_jsonl(void) {
  jsonl_t j;
  const char *text = "{\"a\": 1}\r\n\r\n  {\"a\": 2}  \n\n{\"a\": 3}";
  T_REQUIRE(jsonl_parse("mem", text, strlen(text), &j, &E) == 0, "%s", E.msg);
  T_CHECK(j.n == 3 && j.line_numbers[0] == 1 && j.line_numbers[1] == 3 && j.line_numbers[2] == 5, "lines");
  T_CHECK(j.truncated_tail == 0, "complete last line without newline");
  jsonl_free(&j);
  jsonl_free(&j);
  text = "{\"a\": 1}\n{\"a\": \n{\"a\": 3}\n";
  T_CHECK(jsonl_parse("mem", text, strlen(text), &j, &E) == ES_EINVAL && strstr(E.msg, "mem:2:"), "%s", E.msg);
  text = "{\"a\": 1}\n{\"a\": 2} {\"a\": 3}\n";
  T_CHECK(jsonl_parse("mem", text, strlen(text), &j, &E) == ES_EINVAL && strstr(E.msg, "mem:2:"), "two on a line");
  text = "{\"a\": 1}\n[1, 2]\n";
  T_CHECK(jsonl_parse("mem", text, strlen(text), &j, &E) == ES_EINVAL, "an array line");
  text = "  [{\"a\": 1}, {\"b\": 2}]\n";
  T_REQUIRE(jsonl_parse("mem", text, strlen(text), &j, &E) == 0, "%s", E.msg);
  T_CHECK(j.n == 2 && j.line_numbers[1] == 1, "array");
  jsonl_free(&j);
  text = "[{\"a\": 1}, {\"b\": 2}";
  T_CHECK(jsonl_parse("mem", text, strlen(text), &j, &E) == ES_EINVAL, "a truncated array is an error");
}

int main(int argc, char **argv) {
  if (argc > 1) g_dir = argv[1];
  es_error_clear(&E);
  test_letter();
  test_gt_letter();
  test_foundation();
  test_foundation_errors();
  test_foundation_empty();
  test_chat_parse();
  test_chat();
  test_chat_edge();
  test_jsonl();
  return t_finish();
}
