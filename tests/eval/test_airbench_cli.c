/* test_airbench_cli: `earshot airbench` end to end on the bundled full-vocabulary checkpoint (tiny-a) and a small
 * AIR-Bench tree in the official layout built from the test recordings: result files in the official format,
 * answers equal to `earshot run` for the same question, missing and undecodable audio, resume after a partial
 * line, a stop by Ctrl-C that loses no finished answer, selection flags, a second writer refused, scoring,
 * usage errors. argv[1] = the earshot binary, argv[2] = a scratch folder. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "es_file.h"
#include "jsonl.h"
#include "test_util.h"

static const char *EARSHOT;
static char DATA[4096], OUT[4096], MODEL[4096];
static const char *AUDIO = ES_SOURCE_DIR "/tests/data/audio";

/* Runs argv (NULL-terminated) with stdout to out_path and stderr to err_path; returns the exit status, 128 + the
 * signal when killed, -1 when it could not run. */
static long g_fsize_limit; /* > 0: the child's RLIMIT_FSIZE, SIGXFSZ ignored (writes then fail with EFBIG) */

static pid_t spawn(char *const argv[], const char *out_path, const char *err_path) {
  pid_t pid = fork();
  if (pid == 0) {
    if (g_fsize_limit > 0) {
      struct rlimit lim;
      getrlimit(RLIMIT_FSIZE, &lim);
      lim.rlim_cur = (rlim_t)g_fsize_limit;
      signal(SIGXFSZ, SIG_IGN);
      setrlimit(RLIMIT_FSIZE, &lim);
    }
    int o = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644), e = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (o < 0 || e < 0) _exit(126);
    dup2(o, 1);
    dup2(e, 2);
    execv(argv[0], argv);
    _exit(127);
  }
  return pid;
}

static int wait_status(pid_t pid) {
  int st;
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR) return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : WIFSIGNALED(st) ? 128 + WTERMSIG(st) : -1;
}

static char STDOUT_PATH[4200], STDERR_PATH[4200];
static char *g_out, *g_err; /* the last run's output (malloc'd) */

static int run_argv(char *const argv[]) {
  int st = wait_status(spawn(argv, STDOUT_PATH, STDERR_PATH));
  size_t n;
  es_error_t err;
  free(g_out);
  free(g_err);
  if (es_read_file(STDOUT_PATH, 1 << 24, &g_out, &n, &err)) g_out = strdup("");
  if (es_read_file(STDERR_PATH, 1 << 24, &g_err, &n, &err)) g_err = strdup("");
  return st;
}

/* `earshot airbench run --data DATA --model tiny-a --device cpu --max-tokens 3 --out OUT` + extra (NULL-ended). */
static int airbench_run(const char *out_dir, const char *const *extra) {
  char *argv[64];
  int n = 0;
  char *base[] = {(char *)EARSHOT, "airbench", "run",          "--data", DATA,    "--model",      MODEL,
                  "--device",      "cpu",      "--max-tokens", "3",      "--out", (char *)out_dir};
  for (size_t k = 0; k < sizeof base / sizeof *base; k++) argv[n++] = base[k];
  for (; extra && *extra && n < 62; extra++) argv[n++] = (char *)*extra;
  argv[n] = NULL;
  return run_argv(argv);
}

static void copy_file(const char *from, const char *to) {
  char *d;
  size_t n;
  es_error_t err;
  if (es_read_file(from, 1 << 26, &d, &n, &err) || es_write_file(to, d, n, &err))
    fprintf(stderr, "copy %s -> %s: %s\n", from, to, err.msg);
  free(d);
}

static void put_audio(const char *track, const char *folder, const char *name, const char *source) {
  char p[4200], from[4200];
  snprintf(p, sizeof p, "%s/%s/%s", DATA, track, folder);
  mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/%s/%s/%s", DATA, track, folder, name);
  snprintf(from, sizeof from, "%s", source);
  copy_file(from, p);
}

/* root, root/Chat and root/Chat/sound_QA_clotho: a one-task Chat tree for the runs that need their own data. */
static void make_chat_tree(const char *root) {
  char p[4300];
  mkdir(root, 0755);
  snprintf(p, sizeof p, "%s/Chat", root);
  mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/Chat/sound_QA_clotho", root);
  mkdir(p, 0755);
}

static void write_text(const char *path, const char *text) {
  es_error_t err;
  if (es_write_file(path, text, strlen(text), &err)) fprintf(stderr, "%s\n", err.msg);
}

/* The tree: five Foundation items (two subsets of one task, Audio_Grounding's .wav that is a .flac, a missing
 * file, a file FFmpeg cannot decode as audio) and two Chat items. */
static void build_data(void) {
  char p[4200], src[4200];
  mkdir(DATA, 0755);
  snprintf(p, sizeof p, "%s/Foundation", DATA);
  mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/Chat", DATA);
  mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/Foundation/Foundation_meta.json", DATA);
  write_text(
      p, "[{\"path\": \"a.mp3\", \"question\": \"Who is speaking?\", \"choice_a\": \"a man\", \"choice_b\": "
         "\"a woman\", \"choice_c\": \"a child\", \"choice_d\": \"nobody\", \"answer_gt\": \"a woman\", "
         "\"task_name\": \"Speaker_Gender_Recognition\", \"dataset_name\": \"meld\", \"uniq_id\": 10},\n"
         " {\"path\": \"b.oga\", \"question\": \"Male or female?\", \"choice_a\": \"male\", \"choice_b\": \"female\", "
         "\"answer_gt\": \"male\", \"task_name\": \"Speaker_Gender_Recognition\", \"dataset_name\": "
         "\"common_voice_13_en\", \"uniq_id\": 11},\n"
         " {\"path\": \"c.wav\", \"question\": \"When is the word said?\", \"choice_a\": \"[0.1, 0.5]\", \"choice_b\": "
         "\"[1.0, 1.5]\", \"choice_c\": \"[2.0, 2.5]\", \"choice_d\": \"[3.0, 3.5]\", \"answer_gt\": \"[1.0, 1.5]\", "
         "\"task_name\": \"Audio_Grounding\", \"dataset_name\": \"AudioGrounding\", \"uniq_id\": 12},\n"
         " {\"path\": \"gone.wav\", \"question\": \"What plays?\", \"choice_a\": \"piano\", \"choice_b\": \"drums\", "
         "\"answer_gt\": \"piano\", \"task_name\": \"Music_AQA\", \"dataset_name\": \"music_avqa\", \"uniq_id\": 13},\n"
         " {\"path\": \"bad.wav\", \"question\": \"Which sound?\", \"choice_a\": \"cough\", \"choice_b\": \"laugh\", "
         "\"answer_gt\": \"laugh\", \"task_name\": \"vocal_sound_classification\", \"dataset_name\": \"VocalSound\", "
         "\"uniq_id\": 14}]");
  snprintf(src, sizeof src, "%s/speech-espeak.mp3", AUDIO);
  put_audio("Foundation", "Speaker_Gender_Recognition_meld", "a.mp3", src);
  snprintf(src, sizeof src, "%s/bell-44k-stereo.oga", AUDIO);
  put_audio("Foundation", "Speaker_Gender_Recognition_common_voice_13_en", "b.oga", src);
  snprintf(src, sizeof src, "%s/speech-espeak.opus", AUDIO); /* content decides the format, not the name */
  put_audio("Foundation", "Audio_Grounding_AudioGrounding", "c.flac", src);
  snprintf(src, sizeof src, "%s/tests/data/bad/video-only.mp4", ES_SOURCE_DIR);
  put_audio("Foundation", "vocal_sound_classification_VocalSound", "bad.wav", src);
  snprintf(p, sizeof p, "%s/Chat/Chat_meta.json", DATA);
  write_text(p, "[{\"meta_info\": \"{'emotion': 'neutral'}\", \"question\": \"What does the speaker say?\", "
                "\"answer_gt\": \"A greeting.\", \"path\": \"x.wav\", \"task_name\": \"speech_QA\", \"dataset_name\": "
                "\"iemocap\", \"uniq_id\": 0},\n"
                " {\"meta_info\": \"a bell rings\", \"question\": \"What is the sound?\", \"answer_gt\": \"A bell.\", "
                "\"path\": \"y.oga\", \"task_name\": \"sound_QA\", \"dataset_name\": \"clotho\", \"uniq_id\": 1}]");
  snprintf(src, sizeof src, "%s/speech-espeak-22k.wav", AUDIO);
  put_audio("Chat", "speech_QA_iemocap", "x.wav", src);
  snprintf(src, sizeof src, "%s/bell-44k-stereo.oga", AUDIO);
  put_audio("Chat", "sound_QA_clotho", "y.oga", src);
}

static cJSON *find_id(const jsonl_t *j, int id) {
  for (size_t i = 0; i < j->n; i++) {
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(j->records[i], "uniq_id");
    if (cJSON_IsNumber(u) && (int)u->valuedouble == id) return j->records[i];
  }
  return NULL;
}

static const char *str(const cJSON *o, const char *k) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

static double num(const cJSON *o, const char *k) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

static int read_results(const char *name, jsonl_t *j) {
  char p[4200];
  es_error_t err;
  snprintf(p, sizeof p, "%s/%s", OUT, name);
  int rc = jsonl_read(p, 1 << 24, j, &err);
  if (rc) fprintf(stderr, "%s\n", err.msg);
  return rc;
}

/* The first run: every track, both result files, the manifest, the score. */
static void test_first_run(void) {
  int st = airbench_run(OUT, NULL);
  T_CHECK(st == 0, "an item whose audio cannot be decoded is recorded, not a failed run: exit %d: %s", st, g_err);
  T_CHECK(strstr(g_err, "foundation: 5 items selected, 0 done before, 1 missing audio, 4 to run") != NULL,
          "the plan is printed: %s", g_err);
  T_CHECK(strstr(g_err, "uniq_id 14") && strstr(g_err, "(the item's input; not retried)"),
          "the failed item is named: %s", g_err);
  T_CHECK(strstr(g_out, "Speaker_Gender_Recognition") != NULL, "the Foundation score is printed: %s", g_out);
  T_CHECK(strstr(g_out, "earshot airbench score --judge") != NULL, "the chat hint is printed");

  jsonl_t j;
  T_REQUIRE(read_results("Foundation_result_tiny-a.jsonl", &j) == 0, "foundation results");
  T_CHECK(j.n == 4, "4 lines (the missing item has none): %zu", j.n);
  int ids_sorted = j.n == 4 && num(j.records[0], "uniq_id") == 10 && num(j.records[3], "uniq_id") == 14;
  T_CHECK(ids_sorted, "sorted by uniq_id");
  const cJSON *a = find_id(&j, 10), *b = find_id(&j, 11), *c = find_id(&j, 12), *bad = find_id(&j, 14);
  T_REQUIRE(a && b && c && bad, "every id present");
  /* official keys first, in order */
  static const char *const keys[] = {"path",      "question",  "choice_a",     "choice_b", "choice_c", "choice_d",
                                     "answer_gt", "task_name", "dataset_name", "response", "uniq_id",  "error"};
  const cJSON *k = a->child;
  int order_ok = 1;
  for (size_t i = 0; i < sizeof keys / sizeof *keys; i++, k = k ? k->next : NULL)
    order_ok &= k && !strcmp(k->string, keys[i]);
  T_CHECK(order_ok, "official key order");
  T_CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(b, "choice_c")), "absent choice_c written as null");
  T_CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(a, "error")) && num(a, "n_gen_tokens") >= 1 &&
              num(a, "n_gen_tokens") <= 3 && str(a, "response"),
          "item 10 answered");
  T_CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(c, "error")) && num(c, "n_audio_tokens") > 0,
          "Audio_Grounding's .wav read as the .flac");
  T_CHECK(str(bad, "error") && str(bad, "response") && !strcmp(str(bad, "response"), "") && str(bad, "error_kind") &&
              !strcmp(str(bad, "error_kind"), "input"),
          "undecodable audio: error, empty response, an input error");
  T_CHECK(str(a, "settings") && strlen(str(a, "settings")) == 16, "the settings fingerprint");
  T_CHECK(num(a, "audio_seconds") > 1 && num(a, "latency_ms") > 0 && str(a, "finish_reason"), "extra fields");

  /* the answer is what `earshot run` gives for the same question (greedy, min 1 token, the checkpoint's penalty) */
  char audio[4200];
  snprintf(audio, sizeof audio, "%s/Foundation/Speaker_Gender_Recognition_meld/a.mp3", DATA);
  char question[1024];
  snprintf(question, sizeof question,
           "Choose the most suitable answer from options A, B, C, and D to respond the question in next line, you "
           "may only choose A or B or C or D.\nWho is speaking?\nA. a man\nB. a woman\nC. a child\nD. nobody");
  char *argv[] = {(char *)EARSHOT, "run",    "--model",       MODEL, "--device", "cpu", "--audio", audio,
                  "--prompt",      question, "--temperature", "0",   "--top-k",  "0",   "--top-p", "1",
                  "--max-tokens",  "3",      "--min-tokens",  "1",   "--json",   NULL};
  T_CHECK(run_argv(argv) == 0, "earshot run: %s", g_err);
  cJSON *r = cJSON_Parse(g_out);
  T_CHECK(r && str(r, "text") && !strcmp(str(r, "text"), str(a, "response")) &&
              num(r, "completion_tokens") == num(a, "n_gen_tokens") &&
              num(r, "prompt_tokens") == num(a, "n_prompt_tokens"),
          "airbench's answer [%s] equals earshot run's [%s]", str(a, "response"), r ? str(r, "text") : "?");
  cJSON_Delete(r);
  jsonl_free(&j);

  T_REQUIRE(read_results("Chat_result_tiny-a.jsonl", &j) == 0, "chat results");
  T_CHECK(j.n == 2 && !strcmp(j.records[0]->child->string, "meta_info") && str(j.records[0], "response") &&
              cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j.records[1], "error")),
          "chat lines");
  jsonl_free(&j);

  char p[4200], *m;
  size_t n;
  es_error_t err;
  snprintf(p, sizeof p, "%s/Foundation_result_tiny-a.manifest.json", OUT);
  T_REQUIRE(es_read_file(p, 1 << 20, &m, &n, &err) == 0, "manifest: %s", err.msg);
  cJSON *man = cJSON_Parse(m);
  free(m);
  const cJSON *co = cJSON_GetObjectItemCaseSensitive(man, "counts");
  T_CHECK(num(co, "selected") == 5 && num(co, "missing_audio") == 1 && num(co, "ran") == 4 &&
              num(co, "answered") == 3 && num(co, "failed_run") == 0 && num(co, "failed_input") == 1 &&
              num(co, "unwritten") == 0 && num(co, "done_in_file") == 4,
          "manifest counts");
  const cJSON *miss = cJSON_GetObjectItemCaseSensitive(man, "missing_audio_first");
  T_CHECK(cJSON_GetArraySize(miss) == 1 && strstr(cJSON_GetArrayItem(miss, 0)->valuestring, "gone.wav"),
          "the missing file is listed");
  T_CHECK(num(cJSON_GetObjectItemCaseSensitive(man, "decoding"), "max_new_tokens") == 3, "decoding recorded");
  cJSON_Delete(man);
}

/* Rerun: finished items skipped, the failed one retried; a partial last line is cut and its item rerun. */
static void test_resume(void) {
  jsonl_t before;
  T_REQUIRE(read_results("Foundation_result_tiny-a.jsonl", &before) == 0, "results");
  const char *foundation_only[] = {"--track", "foundation", NULL};
  T_CHECK(airbench_run(OUT, foundation_only) == 0, "the rerun: %s", g_err);
  T_CHECK(strstr(g_err, "4 done before, 1 missing audio, 0 to run") &&
              strstr(g_err, "1 items of the file failed on their input before and are not retried"),
          "nothing to run; the input failure is not retried: %s", g_err);
  const char *retry[] = {"--track", "foundation", "--retry-input-errors", NULL};
  T_CHECK(airbench_run(OUT, retry) == 0 && strstr(g_err, "3 done before, 1 missing audio, 1 to run"),
          "--retry-input-errors runs item 14 again: %s", g_err);
  const char *limited[] = {"--track", "foundation", "--limit", "2", "--concurrency", "1", NULL};
  T_CHECK(airbench_run(OUT, limited) == 0 && strstr(g_err, "2 items selected, 2 done before"),
          "--limit and --concurrency are not settings: %s", g_err);
  const char *other[] = {"--track", "foundation", "--max-tokens", "4", NULL};
  T_CHECK(airbench_run(OUT, other) == 1 && strstr(g_err, "lines were made with other settings"),
          "resuming with other settings is refused: %s", g_err);

  /* drop item 11's line, end the file with half a line, as a killed writer leaves it */
  char p[4200];
  snprintf(p, sizeof p, "%s/Foundation_result_tiny-a.jsonl", OUT);
  FILE *f = fopen(p, "w");
  for (size_t i = 0; i < before.n; i++) {
    if (num(before.records[i], "uniq_id") == 11) continue;
    char *s = cJSON_PrintUnformatted(before.records[i]);
    fprintf(f, "%s\n", s);
    cJSON_free(s);
  }
  fputs("{\"path\": \"b.oga\", \"question\": \"Male or fem", f);
  fclose(f);
  T_CHECK(airbench_run(OUT, foundation_only) == 0, "resume: %s", g_err);
  T_CHECK(strstr(g_err, "cut a partial last line") && strstr(g_err, "3 done before, 1 missing audio, 1 to run"),
          "the partial line is cut, 11 runs again: %s", g_err);
  jsonl_t after;
  T_REQUIRE(read_results("Foundation_result_tiny-a.jsonl", &after) == 0, "results after");
  T_CHECK(after.n == 4, "4 lines again: %zu", after.n);
  const cJSON *b0 = find_id(&before, 11), *b1 = find_id(&after, 11);
  T_CHECK(b0 && b1 && str(b1, "response") && !strcmp(str(b0, "response"), str(b1, "response")),
          "item 11 gives the same answer again");
  jsonl_free(&before);
  jsonl_free(&after);

  /* a second run on the same files is refused before the model loads */
  int fd = open(p, O_RDWR);
  T_CHECK(fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0, "lock the file as a running run would");
  T_CHECK(airbench_run(OUT, foundation_only) != 0 && strstr(g_err, "another run is writing this file"),
          "second writer: %s", g_err);
  close(fd);
}

/* Selection flags and their file names. */
static void test_selection(void) {
  char out2[4200];
  snprintf(out2, sizeof out2, "%s-sel", OUT);
  mkdir(out2, 0755);
  const char *sel[] = {"--track", "foundation", "--task", "Speaker_Gender_Recognition", "--limit", "1", "--model-name",
                       "m1",      "--no-score", NULL};
  T_CHECK(airbench_run(out2, sel) == 0, "task + limit: %s", g_err);
  T_CHECK(strstr(g_err, "1 items selected") && !strstr(g_out, "Speaker_Gender"), "one item, no score printed: %s",
          g_err);
  const char *shard[] = {"--track", "chat", "--shard", "1/2", "--model-name", "m1", NULL};
  T_CHECK(airbench_run(out2, shard) == 0, "shard: %s", g_err);
  char p[4300];
  snprintf(p, sizeof p, "%s/Chat_result_m1_shard1of2.jsonl", out2);
  jsonl_t j;
  es_error_t err;
  T_CHECK(jsonl_read(p, 1 << 20, &j, &err) == 0 && j.n == 1 && num(j.records[0], "uniq_id") == 1,
          "shard 1 of 2 holds the second chat item");
  jsonl_free(&j);
  /* with both tracks (the default), a Foundation task name selects nothing of Chat, which is then skipped */
  const char *both[] = {"--task", "Speaker_Gender_Recognition", "--model-name", "m2", "--no-score", NULL};
  T_CHECK(airbench_run(out2, both) == 0 && strstr(g_err, "chat: the --task / --dataset filters select nothing here"),
          "a task of one track with --track all: %s", g_err);
  char chat_m2[4400];
  snprintf(chat_m2, sizeof chat_m2, "%s/Chat_result_m2.jsonl", out2);
  T_CHECK(!es_path_exists(chat_m2), "the skipped track has no result file");
  const char *crossed[] = {"--task", "Speaker_Gender_Recognition", "--dataset", "clotho", NULL};
  T_CHECK(airbench_run(out2, crossed) == 1 && strstr(g_err, "select no item of any track"),
          "filters that select nothing anywhere: %s", g_err);
  const char *typo[] = {"--task", "Speaker_Gender_Recognitoin", NULL};
  T_CHECK(airbench_run(out2, typo) == 1 && strstr(g_err, "no item of"), "a task name that matches nothing: %s", g_err);
}

/* Ctrl-C: the answers in flight finish and are written, the process says so and exits 130; a rerun completes. */
static void test_interrupt(void) {
  char data2[4200], p[4300], src[4200];
  snprintf(data2, sizeof data2, "%s-many", DATA);
  make_chat_tree(data2);
  snprintf(src, sizeof src, "%s/speech-espeak.mp3", AUDIO);
  snprintf(p, sizeof p, "%s/Chat/sound_QA_clotho/s.mp3", data2);
  copy_file(src, p);
  enum { N = 40 };
  char *meta = malloc(N * 256 + 16);
  size_t len = 0;
  len += (size_t)sprintf(meta + len, "[");
  for (int i = 0; i < N; i++)
    len += (size_t)sprintf(meta + len,
                           "%s{\"meta_info\": \"m\", \"question\": \"Question %d?\", \"answer_gt\": \"a\", "
                           "\"path\": \"s.mp3\", \"task_name\": \"sound_QA\", \"dataset_name\": \"clotho\", "
                           "\"uniq_id\": %d}",
                           i ? ",\n" : "", i, i);
  sprintf(meta + len, "]");
  snprintf(p, sizeof p, "%s/Chat/Chat_meta.json", data2);
  write_text(p, meta);
  free(meta);
  char out3[4200];
  snprintf(out3, sizeof out3, "%s-int", OUT);
  mkdir(out3, 0755);
  char results[4400];
  snprintf(results, sizeof results, "%s/Chat_result_tiny-a.jsonl", out3);
  char *argv[] = {(char *)EARSHOT, "airbench",     "run", "--data",        data2, "--model", MODEL, "--device",
                  "cpu",           "--max-tokens", "8",   "--concurrency", "1",   "--out",   out3,  NULL};
  pid_t pid = spawn(argv, STDOUT_PATH, STDERR_PATH);
  /* wait for the first finished answer, then Ctrl-C */
  int lines = 0;
  for (int t = 0; t < 6000 && lines < 1; t++) {
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
    jsonl_t j;
    es_error_t err;
    if (jsonl_read(results, 1 << 24, &j, &err) == 0) {
      lines = (int)j.n;
      jsonl_free(&j);
    }
  }
  kill(pid, SIGINT);
  int st = wait_status(pid);
  size_t n;
  es_error_t err;
  free(g_err);
  if (es_read_file(STDERR_PATH, 1 << 24, &g_err, &n, &err)) g_err = strdup("");
  jsonl_t j;
  int got = jsonl_read(results, 1 << 24, &j, &err) == 0 ? (int)j.n : -1;
  if (got >= 0) jsonl_free(&j);
  T_CHECK(st == 130 || (st == 0 && got == N), "Ctrl-C exits 130 (or the run had already ended): %d: %s", st, g_err);
  if (st == 130) {
    T_CHECK(strstr(g_err, "interrupted; run the same command again to resume") != NULL, "says how to resume");
    T_CHECK(got >= 1 && got < N, "the finished answers are in the file: %d", got);
  }
  /* the rerun completes exactly the rest */
  T_CHECK(run_argv(argv) == 0, "resume after Ctrl-C: %s", g_err);
  char expect[128];
  snprintf(expect, sizeof expect, "%d done before", got);
  T_CHECK(strstr(g_err, expect) != NULL, "resumes after the %d finished: %s", got, g_err);
  T_CHECK(jsonl_read(results, 1 << 24, &j, &err) == 0 && j.n == N, "all %d answers after the resume", N);
  jsonl_free(&j);
}

/* A result file that cannot be written (disk full, quota): the run stops submitting, says why, exits 1 without
 * hanging, and leaves only whole lines; a rerun with room completes it. */
static void test_write_failure(void) {
  char data2[4200], out4[4200], results[4400];
  snprintf(data2, sizeof data2, "%s-many", DATA);
  snprintf(out4, sizeof out4, "%s-full", OUT);
  mkdir(out4, 0755);
  snprintf(results, sizeof results, "%s/Chat_result_tiny-a.jsonl", out4);
  char *argv[] = {(char *)EARSHOT, "airbench",     "run", "--data",        data2, "--model", MODEL, "--device",
                  "cpu",           "--max-tokens", "2",   "--concurrency", "2",   "--out",   out4,  NULL};
  g_fsize_limit = 8000; /* room for some lines of ~500 bytes (and the few lines of stderr, a file too) */
  time_t t0 = time(NULL);
  int st = run_argv(argv);
  g_fsize_limit = 0;
  T_CHECK(st == 1 && strstr(g_err, "write failed") && strstr(g_err, "stopping: no new items"),
          "a write failure stops the run: exit %d: %s", st, g_err);
  T_CHECK(time(NULL) - t0 < 60, "and does not hang");
  jsonl_t j;
  es_error_t err;
  int got = -1;
  if (jsonl_read(results, 1 << 24, &j, &err) == 0) {
    got = (int)j.n;
    T_CHECK(!j.truncated_tail && got >= 1 && got < 40, "only whole lines: %d, partial tail %d", got, j.truncated_tail);
    jsonl_free(&j);
  }
  T_CHECK(got >= 1, "the result file is readable: %s", err.msg);
  /* the manifest counts what is in the file, not the answers that could not be written */
  char mp[4400], *m = NULL;
  size_t mn;
  snprintf(mp, sizeof mp, "%s/Chat_result_tiny-a.manifest.json", out4);
  cJSON *man = es_read_file(mp, 1 << 20, &m, &mn, &err) == 0 ? cJSON_Parse(m) : NULL;
  free(m);
  const cJSON *co = cJSON_GetObjectItemCaseSensitive(man, "counts");
  T_CHECK(co && num(co, "answered") + num(co, "failed_run") + num(co, "failed_input") == got &&
              num(co, "done_in_file") == got && num(co, "ran") == got + num(co, "unwritten"),
          "manifest counts after a write failure (%d lines)", got);
  cJSON_Delete(man);
  T_CHECK(run_argv(argv) == 0, "a rerun with room: %s", g_err);
  T_CHECK(jsonl_read(results, 1 << 24, &j, &err) == 0 && j.n == 40, "completes all 40");
  jsonl_free(&j);
}

/* A failure that is not the item's fault (here: its audio path is a folder, a read error) is a run error: exit 1,
 * error_kind "run", and the next run retries it. */
static void test_run_error(void) {
  char data3[4200], out5[4200], p[4400], results[4400];
  snprintf(data3, sizeof data3, "%s-unreadable", DATA);
  snprintf(out5, sizeof out5, "%s-unreadable", OUT);
  make_chat_tree(data3);
  mkdir(out5, 0755);
  snprintf(p, sizeof p, "%s/Chat/sound_QA_clotho/d.wav", data3);
  mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/Chat/Chat_meta.json", data3);
  write_text(p, "[{\"meta_info\": \"m\", \"question\": \"q?\", \"answer_gt\": \"a\", \"path\": \"d.wav\", "
                "\"task_name\": \"sound_QA\", \"dataset_name\": \"clotho\", \"uniq_id\": 5}]");
  char *argv[] = {(char *)EARSHOT, "airbench", "run",          "--data", data3,   "--model", MODEL,
                  "--device",      "cpu",      "--max-tokens", "2",      "--out", out5,      NULL};
  T_CHECK(run_argv(argv) == 1 && strstr(g_err, "some items failed in the run"), "a read error fails the run: %s",
          g_err);
  snprintf(results, sizeof results, "%s/Chat_result_tiny-a.jsonl", out5);
  jsonl_t j;
  es_error_t err;
  T_CHECK(jsonl_read(results, 1 << 20, &j, &err) == 0 && j.n == 1 && str(j.records[0], "error_kind") &&
              !strcmp(str(j.records[0], "error_kind"), "run") &&
              cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j.records[0], "response")),
          "error_kind run, response null on a Chat line");
  jsonl_free(&j);
  T_CHECK(run_argv(argv) == 1 && strstr(g_err, "0 done before, 0 missing audio, 1 to run"), "retried: %s", g_err);
}

static void test_score_and_usage(void) {
  char p[4200];
  snprintf(p, sizeof p, "%s/Foundation_result_tiny-a.jsonl", OUT);
  char *sc[] = {(char *)EARSHOT, "airbench", "score", "--results", p, "--json", NULL};
  T_CHECK(run_argv(sc) == 0, "score: %s", g_err);
  cJSON *r = cJSON_Parse(g_out);
  T_CHECK(r != NULL, "score --json prints JSON: %.200s", g_out);
  cJSON_Delete(r);
  char *none[] = {(char *)EARSHOT, "airbench", "score", NULL};
  T_CHECK(run_argv(none) == 2, "score without input is a usage error");
  char *nodata[] = {(char *)EARSHOT, "airbench", "run", "--model", MODEL, NULL};
  T_CHECK(run_argv(nodata) == 2 && strstr(g_err, "--data ROOT is required"), "run without --data");
  char *badshard[] = {(char *)EARSHOT, "airbench", "run", "--data", DATA, "--model", MODEL, "--shard", "2/2", NULL};
  T_CHECK(run_argv(badshard) == 2 && strstr(g_err, "--shard '2/2'"), "bad shard: %s", g_err);
  char *badtrack[] = {(char *)EARSHOT, "airbench", "run", "--data", DATA, "--model", MODEL, "--track", "x", NULL};
  T_CHECK(run_argv(badtrack) == 2, "bad track");
  char empty[4200];
  snprintf(empty, sizeof empty, "%s-empty", DATA);
  mkdir(empty, 0755);
  char *nometa[] = {(char *)EARSHOT, "airbench", "run", "--data", empty, "--model", MODEL, "--out", OUT, NULL};
  T_CHECK(run_argv(nometa) == 1 && strstr(g_err, "neither Foundation/Foundation_meta.json"), "no meta: %s", g_err);
  char *sub[] = {(char *)EARSHOT, "airbench", "judge", NULL};
  T_CHECK(run_argv(sub) == 2, "unknown subcommand");
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: test_airbench_cli EARSHOT SCRATCH_DIR\n");
    return 2;
  }
  EARSHOT = argv[1];
  snprintf(DATA, sizeof DATA, "%s/airbench-data", argv[2]);
  snprintf(OUT, sizeof OUT, "%s/airbench-out", argv[2]);
  snprintf(MODEL, sizeof MODEL, "%s/tests/golden/checkpoints/tiny-a", ES_SOURCE_DIR);
  snprintf(STDOUT_PATH, sizeof STDOUT_PATH, "%s/airbench-stdout.txt", argv[2]);
  snprintf(STDERR_PATH, sizeof STDERR_PATH, "%s/airbench-stderr.txt", argv[2]);
  static char cmd[16384]; /* the scratch folders of an earlier run */
  int w = snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s' '%s'-* '%s'-*", DATA, OUT, OUT, DATA);
  if (w < 0 || (size_t)w >= sizeof cmd || system(cmd)) return 1;
  build_data();
  mkdir(OUT, 0755);
  test_first_run();
  test_resume();
  test_selection();
  test_interrupt();
  test_write_failure();
  test_run_error();
  test_score_and_usage();
  free(g_out);
  free(g_err);
  return t_finish();
}
