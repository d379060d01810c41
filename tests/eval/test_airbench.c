/* test_airbench: AIR-Bench items (meta files, checks, selection, audio paths, the official instruction) and
 * result files (official key order, resume after a partial line, failed items run again, one locked writer,
 * the sorted rewrite) on hand-made files in the build folder (argv[1]). */
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "airbench_items.h"
#include "airbench_results.h"
#include "es_file.h"
#include "jsonl.h"
#include "test_util.h"

static char ROOT[4096];

static void write_text(const char *path, const char *text) {
  es_error_t err;
  if (es_write_file(path, text, strlen(text), &err)) fprintf(stderr, "cannot write %s: %s\n", path, err.msg);
}

static void make_dirs(const char *root) {
  char p[4200];
  mkdir(root, 0755);
  snprintf(p, sizeof p, "%s/Foundation", root);
  mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/Chat", root);
  mkdir(p, 0755);
}

static const char FOUNDATION_META[] =
    "[{\"path\": \"1.wav\", \"question\": \"Who?\", \"choice_a\": \"a man\", \"choice_b\": \"a woman\", "
    "\"choice_c\": \"a child\", \"choice_d\": \"a dog\", \"answer_gt\": \"a woman\", \"task_name\": "
    "\"Speaker_Gender_Recognition\", \"dataset_name\": \"meld\", \"uniq_id\": 7},\n"
    " {\"path\": \"2.wav\", \"question\": \"How old?\", \"choice_a\": \"young\", \"choice_b\": \"old\", "
    "\"answer_gt\": \"old\", \"task_name\": \"Speaker_Age_Prediction\", \"dataset_name\": \"common_voice_13.0_en\", "
    "\"uniq_id\": 3},\n"
    " {\"path\": \"3.wav\", \"question\": \"When?\", \"choice_a\": \"[1, 2]\", \"choice_b\": \"[3, 4]\", "
    "\"choice_c\": null, \"choice_d\": \"[5, 6]\", \"answer_gt\": \"[3, 4]\", \"task_name\": \"Audio_Grounding\", "
    "\"dataset_name\": \"AudioGrounding\", \"uniq_id\": 12},\n"
    " {\"path\": \"4.wav\", \"question\": \"Who else?\", \"choice_a\": \"x\", \"choice_b\": \"y\", "
    "\"answer_gt\": \"x\", \"task_name\": \"Speaker_Gender_Recognition\", \"dataset_name\": \"common_voice_13_en\", "
    "\"uniq_id\": 5}]";

static void test_meta(void) {
  char p[4200];
  es_error_t err;
  make_dirs(ROOT);
  snprintf(p, sizeof p, "%s/Foundation/Foundation_meta.json", ROOT);
  write_text(p, FOUNDATION_META);

  ab_meta_t m;
  T_REQUIRE(ab_meta_load(ROOT, AB_FOUNDATION, NULL, &m, &err) == 0, "load: %s", err.msg);
  T_CHECK(m.n_total == 4 && m.n_items == 4, "all items selected: %zu of %zu", m.n_items, m.n_total);
  T_CHECK(ab_item_uniq_id(m.items[0]) == 7 && ab_item_uniq_id(m.items[3]) == 5, "file order kept");
  uint64_t fnv = m.meta_fnv1a;
  T_CHECK(fnv != 0, "meta checksum");

  /* the official instruction, byte for byte, and Python's None for an absent or null option */
  char *q = NULL;
  T_CHECK(ab_item_question(AB_FOUNDATION, m.items[0], &q, &err) == 0, "question: %s", err.msg);
  const char *want0 = "Choose the most suitable answer from options A, B, C, and D to respond the question in next "
                      "line, you may only choose A or B or C or D.\nWho?\nA. a man\nB. a woman\nC. a child\nD. a dog";
  T_CHECK(q && !strcmp(q, want0), "foundation instruction: [%s]", q ? q : "");
  free(q);
  T_CHECK(ab_item_question(AB_FOUNDATION, m.items[1], &q, &err) == 0 && q &&
              strstr(q, "\nHow old?\nA. young\nB. old\nC. None\nD. None") && q[strlen(q) - 1] == 'e',
          "absent options print None, no trailing newline: [%s]", q ? q : "");
  free(q);
  T_CHECK(ab_item_question(AB_FOUNDATION, m.items[2], &q, &err) == 0 && q && strstr(q, "\nC. None\nD. [5, 6]"),
          "a null option prints None: [%s]", q ? q : "");
  free(q);

  /* audio paths: ROOT/<Track>/<task>_<dataset>/<path>; Audio_Grounding's .wav are .flac */
  char path[4096];
  T_CHECK(ab_item_audio_path(ROOT, AB_FOUNDATION, m.items[0], path, sizeof path, &err) == 0, "path");
  snprintf(p, sizeof p, "%s/Foundation/Speaker_Gender_Recognition_meld/1.wav", ROOT);
  T_CHECK(!strcmp(path, p), "audio path %s", path);
  T_CHECK(ab_item_audio_path(ROOT, AB_FOUNDATION, m.items[2], path, sizeof path, &err) == 0, "path");
  snprintf(p, sizeof p, "%s/Foundation/Audio_Grounding_AudioGrounding/3.flac", ROOT);
  T_CHECK(!strcmp(path, p), "Audio_Grounding path %s", path);
  char small[16];
  T_CHECK(ab_item_audio_path(ROOT, AB_FOUNDATION, m.items[2], small, sizeof small, &err) == ES_ETOOBIG,
          "a path that does not fit is refused");
  ab_meta_free(&m);

  /* selection: filters, then the shard, then the limit */
  ab_select_t sel = {.tasks = "Speaker_Gender_Recognition"};
  T_CHECK(ab_meta_load(ROOT, AB_FOUNDATION, &sel, &m, &err) == 0 && m.n_items == 2 &&
              ab_item_uniq_id(m.items[0]) == 7 && ab_item_uniq_id(m.items[1]) == 5,
          "task filter: %zu", m.n_items);
  ab_meta_free(&m);
  sel = (ab_select_t){.tasks = "Speaker_Age_Prediction,Audio_Grounding", .datasets = "AudioGrounding,x"};
  T_CHECK(ab_meta_load(ROOT, AB_FOUNDATION, &sel, &m, &err) == ES_EINVAL && strstr(err.msg, "--dataset 'x'"),
          "a filter value that names nothing is an error: %s", err.msg);
  sel = (ab_select_t){.tasks = "Speaker_Age_Prediction,Audio_Grounding"};
  T_CHECK(ab_meta_load(ROOT, AB_FOUNDATION, &sel, &m, &err) == 0 && m.n_items == 2, "two tasks");
  ab_meta_free(&m);
  int seen[4] = {0}, total = 0;
  for (int s = 0; s < 3; s++) {
    sel = (ab_select_t){.shard_index = s, .shard_count = 3};
    T_CHECK(ab_meta_load(ROOT, AB_FOUNDATION, &sel, &m, &err) == 0, "shard %d: %s", s, err.msg);
    for (size_t i = 0; i < m.n_items; i++) {
      int64_t id = ab_item_uniq_id(m.items[i]);
      seen[id == 7 ? 0 : id == 3 ? 1 : id == 12 ? 2 : 3]++;
      total++;
    }
    ab_meta_free(&m);
  }
  T_CHECK(total == 4 && seen[0] == 1 && seen[1] == 1 && seen[2] == 1 && seen[3] == 1,
          "three shards cover every item once (%d)", total);
  sel = (ab_select_t){.shard_index = 1, .shard_count = 2, .limit = 1};
  T_CHECK(ab_meta_load(ROOT, AB_FOUNDATION, &sel, &m, &err) == 0 && m.n_items == 1 && ab_item_uniq_id(m.items[0]) == 12,
          "shard 1/2 then limit 1");
  ab_meta_free(&m);

  int si, sc;
  T_CHECK(ab_parse_shard("2/4", &si, &sc, &err) == 0 && si == 2 && sc == 4, "shard parse");
  T_CHECK(ab_parse_shard("4/4", &si, &sc, &err) == ES_EINVAL, "shard index out of range");
  T_CHECK(ab_parse_shard("1/", &si, &sc, &err) == ES_EINVAL && ab_parse_shard("x", &si, &sc, &err) == ES_EINVAL &&
              ab_parse_shard("-1/2", &si, &sc, &err) == ES_EINVAL &&
              ab_parse_shard("1/2x", &si, &sc, &err) == ES_EINVAL,
          "bad shards");

  /* bad meta files name the item and the problem */
  struct {
    const char *text, *expect;
  } bad[] = {
      {"{\"a\": 1}", "not a JSON array"},
      {"[1]", "item 0 is not an object"},
      {"[{\"path\": \"1.wav\", \"question\": \"q\", \"task_name\": \"t\", \"dataset_name\": \"d\"}]", "uniq_id"},
      {"[{\"path\": \"1.wav\", \"question\": \"q\", \"task_name\": \"t\", \"dataset_name\": \"d\", \"uniq_id\": 1.5}]",
       "uniq_id"},
      {"[{\"path\": \"1.wav\", \"question\": \"q\", \"task_name\": \"t\", \"dataset_name\": \"d\", \"uniq_id\": 1, "
       "\"choice_a\": \"x\", \"choice_b\": \"y\"}]",
       "answer_gt"},
      {"[{\"path\": \"1.wav\", \"question\": \"q\", \"task_name\": \"t\", \"dataset_name\": \"d\", \"uniq_id\": 1, "
       "\"choice_a\": \"x\", \"choice_b\": \"y\", \"answer_gt\": \"x\", \"choice_c\": 3}]",
       "choice_c"},
      {"[{\"path\": \"\", \"question\": \"q\", \"task_name\": \"t\", \"dataset_name\": \"d\", \"uniq_id\": 1}]",
       "path is empty"},
      {"[{\"path\": \"1.wav\", \"question\": \"q\", \"task_name\": \"t\", \"dataset_name\": \"d\", \"uniq_id\": 1, "
       "\"choice_a\": \"x\", \"choice_b\": \"y\", \"answer_gt\": \"x\"},"
       " {\"path\": \"2.wav\", \"question\": \"q\", \"task_name\": \"t\", \"dataset_name\": \"d\", \"uniq_id\": 1, "
       "\"choice_a\": \"x\", \"choice_b\": \"y\", \"answer_gt\": \"x\"}]",
       "uniq_id 1 appears more than once"},
      {"[{\"path\": \"1.wav\", \"question\": \"q\"", "not a JSON array"},
  };
  snprintf(p, sizeof p, "%s/Foundation/Foundation_meta.json", ROOT);
  for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
    write_text(p, bad[k].text);
    int rc = ab_meta_load(ROOT, AB_FOUNDATION, NULL, &m, &err);
    T_CHECK(rc == ES_EINVAL && strstr(err.msg, bad[k].expect), "bad meta %zu: rc %d, '%s'", k, rc, err.msg);
  }
  write_text(p, FOUNDATION_META);
  snprintf(p, sizeof p, "%s/Chat/Chat_meta.json", ROOT);
  unlink(p); /* an earlier run's */
  T_CHECK(ab_meta_load(ROOT, AB_CHAT, NULL, &m, &err) == ES_ENOTFOUND, "no Chat meta: %s", err.msg);

  /* chat items need no choices; the question is the question alone */
  snprintf(p, sizeof p, "%s/Chat/Chat_meta.json", ROOT);
  write_text(p, "[{\"meta_info\": \"m\", \"question\": \"What is said?\", \"answer_gt\": \"hi\", \"path\": \"a.wav\", "
                "\"task_name\": \"speech_QA\", \"dataset_name\": \"iemocap\", \"uniq_id\": 0}]");
  T_CHECK(ab_meta_load(ROOT, AB_CHAT, NULL, &m, &err) == 0 && m.n_items == 1, "chat meta: %s", err.msg);
  if (m.n_items == 1) {
    T_CHECK(ab_item_question(AB_CHAT, m.items[0], &q, &err) == 0 && q && !strcmp(q, "What is said?"), "chat question");
    free(q);
  }
  ab_meta_free(&m);
}

static void test_jsonl(void) {
  jsonl_t j;
  es_error_t err;
  const char *ok = "{\"a\": 1}\n\n  {\"a\": 2}  \r\n{\"a\": 3}";
  T_CHECK(jsonl_parse("x", ok, strlen(ok), &j, &err) == 0 && j.n == 3 && !j.truncated_tail && !j.is_array &&
              j.line_numbers[1] == 3,
          "lines, blank lines, CRLF, a last line without newline that parses");
  jsonl_free(&j);
  const char *tail = "{\"a\": 1}\n{\"a\": 2, \"b\": \"unfinis";
  T_CHECK(jsonl_parse("x", tail, strlen(tail), &j, &err) == 0 && j.n == 1 && j.truncated_tail, "partial last line");
  jsonl_free(&j);
  const char *prose = "this is not JSON";
  T_CHECK(jsonl_parse("x", prose, strlen(prose), &j, &err) == ES_EINVAL && strstr(err.msg, "x:1:"),
          "a last line that is not a cut record is an error, not an empty file");
  const char *mid = "{\"a\": 1}\n{\"a\": \n{\"a\": 3}\n";
  T_CHECK(jsonl_parse("x", mid, strlen(mid), &j, &err) == ES_EINVAL && strstr(err.msg, "x:2:"),
          "a bad middle line names its number: %s", err.msg);
  const char *trail = "{\"a\": 1} {\"a\": 2}\n";
  T_CHECK(jsonl_parse("x", trail, strlen(trail), &j, &err) == ES_EINVAL, "two objects on one line");
  const char *notobj = "[1, 2]";
  T_CHECK(jsonl_parse("x", notobj, strlen(notobj), &j, &err) == ES_EINVAL, "an array of non-objects");
  const char *arr = " [{\"a\": 1}, {\"a\": 2}]\n";
  T_CHECK(jsonl_parse("x", arr, strlen(arr), &j, &err) == 0 && j.n == 2 && j.is_array, "an array file");
  jsonl_free(&j);
  T_CHECK(jsonl_parse("x", "", 0, &j, &err) == 0 && j.n == 0, "empty");
  jsonl_free(&j);
}

static int count_lines(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  int n = 0, c, last = '\n';
  while ((c = fgetc(f)) != EOF) {
    n += c == '\n';
    last = c;
  }
  fclose(f);
  return n + (last != '\n');
}

static void test_results(void) {
  es_error_t err;
  ab_meta_t m;
  T_REQUIRE(ab_meta_load(ROOT, AB_FOUNDATION, NULL, &m, &err) == 0, "load: %s", err.msg);
  char name[256];
  T_CHECK(ab_result_file_name(AB_FOUNDATION, "Qwen2-Audio-7B-Instruct", 0, 1, name, sizeof name, &err) == 0 &&
              !strcmp(name, "Foundation_result_Qwen2-Audio-7B-Instruct.jsonl"),
          "official name: %s", name);
  T_CHECK(ab_result_file_name(AB_CHAT, "my model/v2", 2, 4, name, sizeof name, &err) == 0 &&
              !strcmp(name, "Chat_result_my_model_v2_shard2of4.jsonl"),
          "shard name, unsafe characters replaced: %s", name);
  T_CHECK(ab_result_file_name(AB_CHAT, "..", 0, 1, name, sizeof name, &err) == ES_EINVAL, "'..' refused");

  /* a line: the official keys in the official order, response before uniq_id, then ours */
  ab_outcome_t o = {.response = "B",
                    .finish_reason = "stop",
                    .n_prompt_tokens = 40,
                    .n_audio_tokens = 25,
                    .n_gen_tokens = 2,
                    .audio_seconds = 1.0,
                    .latency_s = 0.25,
                    .first_token_s = 0.125};
  char *line = ab_result_line(AB_FOUNDATION, m.items[1], &o);
  const char *want =
      "{\"path\":\"2.wav\",\"question\":\"How old?\",\"choice_a\":\"young\",\"choice_b\":\"old\","
      "\"choice_c\":null,\"choice_d\":null,\"answer_gt\":\"old\",\"task_name\":\"Speaker_Age_Prediction\","
      "\"dataset_name\":\"common_voice_13.0_en\",\"response\":\"B\",\"uniq_id\":3,\"error\":null,"
      "\"error_kind\":null,\"finish_reason\":\"stop\",\"n_prompt_tokens\":40,\"n_audio_tokens\":25,"
      "\"n_gen_tokens\":2,\"audio_seconds\":1,\"latency_ms\":250,\"first_token_ms\":125,\"settings\":null}";
  T_CHECK(line && !strcmp(line, want), "foundation line:\n%s\n%s", line ? line : "(null)", want);
  cJSON_free(line);

  char path[4200];
  snprintf(path, sizeof path, "%s/Foundation_result_t.jsonl", ROOT);
  unlink(path);
  ab_results_t r;
  T_REQUIRE(ab_results_open(path, NULL, &r, &err) == 0, "open new: %s", err.msg);
  T_CHECK(r.n_done == 0 && r.n_lines == 0, "a new file is empty");
  ab_results_t second;
  T_CHECK(ab_results_open(path, NULL, &second, &err) == ES_EIO && strstr(err.msg, "another run"),
          "a second writer is refused: %s", err.msg);
  ab_outcome_t failed = {.error = "cannot decode", .latency_s = NAN};
  for (int i = 3; i >= 0; i--) { /* ids 5, 12, 3 (failed), 7 in this order */
    line = ab_result_line(AB_FOUNDATION, m.items[i], i == 1 ? &failed : &o);
    T_CHECK(line && ab_results_append(&r, line, &err) == 0, "append %d", i);
    cJSON_free(line);
  }
  ab_results_close(&r);
  /* a run killed mid-line */
  FILE *f = fopen(path, "a");
  fputs("{\"path\": \"9.wav\", \"question\": \"cut h", f);
  fclose(f);
  T_REQUIRE(ab_results_open(path, NULL, &r, &err) == 0, "reopen: %s", err.msg);
  T_CHECK(r.truncated_tail && r.n_lines == 4 && r.n_done == 3 && r.n_failed == 1,
          "resume: %zu lines, %zu done, %zu failed", r.n_lines, r.n_done, r.n_failed);
  T_CHECK(ab_results_done(&r, 5) && ab_results_done(&r, 12) && ab_results_done(&r, 7) && !ab_results_done(&r, 3) &&
              !ab_results_done(&r, 4),
          "done ids");
  T_CHECK(count_lines(path) == 4, "the partial line was cut: %d lines", count_lines(path));
  /* the retry of 3 succeeds: its later line wins */
  line = ab_result_line(AB_FOUNDATION, m.items[1], &o);
  T_CHECK(ab_results_append(&r, line, &err) == 0, "append retry");
  cJSON_free(line);
  T_CHECK(ab_results_compact(&r, &err) == 0, "compact: %s", err.msg);
  /* still locked after the rewrite, and still appendable */
  T_CHECK(ab_results_open(path, NULL, &second, &err) == ES_EIO, "the rewritten file is still locked");
  ab_results_close(&r);
  jsonl_t j;
  T_REQUIRE(jsonl_read(path, 1 << 20, &j, &err) == 0, "read back: %s", err.msg);
  T_CHECK(j.n == 4, "one line per id after the rewrite: %zu", j.n);
  int64_t prev = -1;
  int sorted = 1;
  for (size_t i = 0; i < j.n; i++) {
    int64_t id = (int64_t)cJSON_GetObjectItemCaseSensitive(j.records[i], "uniq_id")->valuedouble;
    sorted &= id > prev;
    prev = id;
  }
  T_CHECK(sorted, "sorted by uniq_id");
  T_CHECK(j.n && cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j.records[0], "error")), "id 3's retry won");
  jsonl_free(&j);
  T_REQUIRE(ab_results_open(path, NULL, &r, &err) == 0, "reopen after rewrite: %s", err.msg);
  T_CHECK(r.n_done == 4 && r.n_failed == 0 && !r.truncated_tail, "all done");
  ab_results_close(&r);

  /* a whole last record that only lost its newline is kept, and the next append starts a new line */
  f = fopen(path, "a");
  fputs("{\"uniq_id\": 99, \"response\": \"A\", \"error\": null}", f);
  fclose(f);
  T_REQUIRE(ab_results_open(path, NULL, &r, &err) == 0, "reopen: %s", err.msg);
  T_CHECK(r.n_done == 5 && ab_results_done(&r, 99) && !r.truncated_tail, "a record without its newline counts");
  T_CHECK(ab_results_append(&r, "{\"uniq_id\": 100, \"error\": null}", &err) == 0, "append");
  ab_results_close(&r);
  T_CHECK(count_lines(path) == 6, "six lines: %d", count_lines(path));

  /* a failed Chat item: response null (score_chat.py skips it); a failed Foundation one: "" */
  cJSON *chat_item = cJSON_Parse("{\"meta_info\": \"m\", \"question\": \"q\", \"answer_gt\": \"a\", \"path\": \"p\", "
                                 "\"task_name\": \"sound_QA\", \"dataset_name\": \"clotho\", \"uniq_id\": 1}");
  ab_outcome_t bad_audio = {.response = "ignored", .error = "cannot decode", .input_error = 1, .settings = "s1"};
  line = ab_result_line(AB_CHAT, chat_item, &bad_audio);
  T_CHECK(line &&
              strstr(line, "\"response\":null,\"uniq_id\":1,\"error\":\"cannot decode\",\"error_kind\":\"input\"") &&
              strstr(line, "\"settings\":\"s1\"}"),
          "chat failure line: %s", line ? line : "");
  cJSON_free(line);
  cJSON_Delete(chat_item);
  line = ab_result_line(AB_FOUNDATION, m.items[0], &bad_audio);
  T_CHECK(line && strstr(line, "\"response\":\"\",\"uniq_id\":7,") && strstr(line, "\"error_kind\":\"input\""),
          "foundation failure line: %s", line ? line : "");

  /* input failures stay done unless retried; run failures run again; other settings refuse the file */
  write_text(path, "");
  ab_results_opts_t s1 = {.settings = "s1"};
  T_REQUIRE(ab_results_open(path, &s1, &r, &err) == 0, "open: %s", err.msg);
  T_CHECK(ab_results_append(&r, line, &err) == 0, "append input failure");
  cJSON_free(line);
  ab_outcome_t run_fail = {.error = "engine failed", .settings = "s1"};
  line = ab_result_line(AB_FOUNDATION, m.items[1], &run_fail);
  T_CHECK(ab_results_append(&r, line, &err) == 0, "append run failure");
  cJSON_free(line);
  ab_results_close(&r);
  T_REQUIRE(ab_results_open(path, &s1, &r, &err) == 0, "reopen: %s", err.msg);
  T_CHECK(ab_results_done(&r, 7) && !ab_results_done(&r, 3) && r.n_input_failed == 1 && r.n_failed == 1,
          "input failure kept, run failure retried");
  ab_results_close(&r);
  ab_results_opts_t retry = {.settings = "s1", .retry_input_errors = 1};
  T_REQUIRE(ab_results_open(path, &retry, &r, &err) == 0, "reopen: %s", err.msg);
  T_CHECK(!ab_results_done(&r, 7) && r.n_failed == 2 && r.n_input_failed == 0, "--retry-input-errors");
  ab_results_close(&r);
  ab_results_opts_t s2 = {.settings = "s2"};
  T_CHECK(ab_results_open(path, &s2, &r, &err) == ES_EINVAL && strstr(err.msg, "2 lines were made with other settings"),
          "other settings refused: %s", err.msg);
  char fa[17], fb[17], fc[17];
  ab_settings_fingerprint("m", "chat", NULL, 256, "none", fa);
  ab_settings_fingerprint("m", "chat", NULL, 255, "none", fb);
  ab_settings_fingerprint("m", "chat", "", 256, "none", fc);
  T_CHECK(strlen(fa) == 16 && strcmp(fa, fb) && strcmp(fa, fc), "fingerprints differ: %s %s %s", fa, fb, fc);

  /* a tail of NUL bytes (a machine lost before the file system wrote the last blocks) is cut like a partial line */
  FILE *nf = fopen(path, "a");
  fwrite("\0\0\0\0\0\0\0\0", 1, 8, nf);
  fclose(nf);
  T_REQUIRE(ab_results_open(path, &s1, &r, &err) == 0, "NUL tail: %s", err.msg);
  T_CHECK(r.truncated_tail && r.n_lines == 2, "NUL tail cut");
  ab_results_close(&r);
  T_CHECK(count_lines(path) == 2, "two whole lines remain");

  /* a failed write leaves only whole lines, and the file takes no more */
  struct rlimit old_lim, lim;
  getrlimit(RLIMIT_FSIZE, &old_lim);
  void (*old_sig)(int) = signal(SIGXFSZ, SIG_IGN);
  struct stat st, st2;
  stat(path, &st);
  T_REQUIRE(ab_results_open(path, &s1, &r, &err) == 0, "open: %s", err.msg);
  lim = old_lim;
  lim.rlim_cur = (rlim_t)st.st_size + 100;
  setrlimit(RLIMIT_FSIZE, &lim);
  line = ab_result_line(AB_FOUNDATION, m.items[2], &o); /* over 100 bytes: cut by the limit */
  int wrc = ab_results_append(&r, line, &err);
  setrlimit(RLIMIT_FSIZE, &old_lim);
  signal(SIGXFSZ, old_sig);
  T_CHECK(wrc == ES_EIO && r.broken && strstr(err.msg, "write failed"), "the write fails: %s", err.msg);
  stat(path, &st2);
  T_CHECK(st2.st_size == st.st_size, "the partial line was removed: %lld -> %lld bytes", (long long)st.st_size,
          (long long)st2.st_size);
  T_CHECK(ab_results_append(&r, line, &err) == ES_EIO && strstr(err.msg, "earlier write failed"), "no more appends");
  T_CHECK(ab_results_compact(&r, &err) == ES_EIO, "no rewrite of a broken file");
  cJSON_free(line);
  ab_results_close(&r);

  /* files that are not ours */
  write_text(path, "[{\"uniq_id\": 1}]");
  T_CHECK(ab_results_open(path, NULL, &r, &err) == ES_EINVAL && strstr(err.msg, "JSON array"), "array file refused");
  write_text(path, "{\"uniq_id\": 1}\n{\"id\": 2}\n");
  T_CHECK(ab_results_open(path, NULL, &r, &err) == ES_EINVAL && strstr(err.msg, ":2:"), "no uniq_id: %s", err.msg);
  ab_meta_free(&m);
}

int main(int argc, char **argv) {
  snprintf(ROOT, sizeof ROOT, "%s/airbench-unit", argc > 1 ? argv[1] : ".");
  test_meta();
  test_jsonl();
  test_results();
  return t_finish();
}
