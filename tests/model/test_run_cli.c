/* test_run_cli: `earshot run` end to end on the bundled full-vocabulary checkpoint (tiny-a): from the audio
 * file through FFmpeg decoding, our log-mel, the tokenizer and the chat template to the greedy tokens that
 * transformers recorded; plus the errors a user can cause and seeded sampling.
 * argv[1] = the earshot binary. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "golden.h"
#include "npy.h"
#include "test_util.h"

static const char *EARSHOT;
static golden_t G;

/* Runs a command, captures stdout (at most cap bytes) and returns the exit status (-1 if it did not run). */
static int run(const char *cmd, char *out, size_t cap) {
  FILE *p = popen(cmd, "r");
  if (!p) return -1;
  size_t n = fread(out, 1, cap - 1, p);
  out[n] = '\0';
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static const cJSON *find_case(const char *name) {
  const cJSON *c;
  cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(G.manifest, "cases")) {
    if (!strcmp(cJSON_GetObjectItemCaseSensitive(c, "name")->valuestring, name)) return c;
  }
  return NULL;
}

/* `earshot run ... --json` must give exactly the recorded greedy ids of case name. */
static void check_case(const char *name, const char *args) {
  static char out[1 << 20];
  char cmd[4096];
  snprintf(cmd, sizeof cmd,
           "%s run --model %s/tests/golden/checkpoints/tiny-a %s --temperature 0 --repetition-penalty 1 "
           "--max-tokens 20 --ignore-eos --json 2>/dev/null",
           EARSHOT, ES_SOURCE_DIR, args);
  int st = run(cmd, out, sizeof out);
  T_CHECK(st == 0, "%s: exit %d: %s", name, st, cmd);
  cJSON *j = cJSON_Parse(out);
  T_CHECK(j != NULL, "%s: output is not JSON: %.200s", name, out);
  const cJSON *c = find_case(name);
  npy_array_t g = {0};
  es_error_t err;
  if (j && c && golden_read_npy(&G, cJSON_GetObjectItemCaseSensitive(c, "greedy_ids")->valuestring, &g, &err) == 0) {
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(j, "token_ids");
    int same = cJSON_GetArraySize(ids) == (int)g.count;
    for (int i = 0; same && i < (int)g.count; i++)
      same = (int)cJSON_GetArrayItem(ids, i)->valuedouble == ((int32_t *)g.data)[i];
    T_CHECK(same, "%s: token ids differ from transformers' greedy ids", name);
    npy_array_t p = {0};
    golden_read_npy(&G, cJSON_GetObjectItemCaseSensitive(c, "prompt_ids")->valuestring, &p, &err);
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(j, "prompt_tokens");
    T_CHECK(cJSON_IsNumber(pt) && (int64_t)pt->valuedouble == p.count, "%s: prompt_tokens %g, golden prompt has %lld",
            name, cJSON_IsNumber(pt) ? pt->valuedouble : -1.0, (long long)p.count);
    const cJSON *fr = cJSON_GetObjectItemCaseSensitive(j, "finish_reason");
    T_CHECK(cJSON_IsString(fr) && !strcmp(fr->valuestring, "length"), "%s: finish_reason", name);
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(j, "text");
    T_CHECK(cJSON_IsString(text) && strlen(text->valuestring) > 0, "%s: no text", name);
    npy_free(&p);
    npy_free(&g);
  } else {
    T_CHECK(0, "%s: golden case unreadable", name);
  }
  cJSON_Delete(j);
}

/* `earshot SUB ARGS` must fail with a message containing expect_in_stderr. */
static void check_cmd_fails(const char *what, const char *sub, const char *args, const char *expect_in_stderr) {
  char cmd[4096], out[8192];
  snprintf(cmd, sizeof cmd, "%s %s %s 2>&1 >/dev/null", EARSHOT, sub, args);
  int st = run(cmd, out, sizeof out);
  T_CHECK(st != 0 && st != -1, "%s: exit %d, expected a failure", what, st);
  T_CHECK(strstr(out, expect_in_stderr) != NULL, "%s: stderr lacks '%s': %.300s", what, expect_in_stderr, out);
}

static void check_fails(const char *what, const char *args, const char *expect_in_stderr) {
  check_cmd_fails(what, "run", args, expect_in_stderr);
}

/* The model-opening flags are parsed in one place (cli/model_flags.c) for every command: the same
 * messages everywhere, and values checked before anything is loaded. */
static void check_shared_flags(void) {
  check_cmd_fails("run --threads x", "run", "--threads x", "--threads 'x': expected an integer");
  check_cmd_fails("run --device", "run", "--device", "--device needs a value");
  check_cmd_fails("bench model --dtype", "bench model", "--dtype fp8", "--dtype 'fp8': expected bfloat16 or float32");
  check_cmd_fails("bench model --batch 0", "bench model", "--dummy-weights --batch 0", "--batch '0'");
  check_cmd_fails("bench engine --max-num-seqs", "bench engine", "--max-num-seqs 999", "--max-num-seqs '999'");
  check_cmd_fails("bench engine --kv-cache-gb", "bench engine", "--kv-cache-gb -1", "--kv-cache-gb '-1'");
  check_cmd_fails("run --max-model-len", "run", "--max-model-len 10", "--max-model-len '10'");
}

static void check_seeds(const char *dir) {
  static char a[1 << 16], b[1 << 16], c[1 << 16];
  char cmd[4096];
  const char *base = "%s run --model %s/tests/golden/checkpoints/tiny-a --audio %s/tests/data/audio/bell-44k-stereo.oga "
                     "--temperature 1 --top-p 0.9 --max-tokens 12 --ignore-eos --seed %d --json 2>/dev/null";
  snprintf(cmd, sizeof cmd, base, EARSHOT, dir, dir, 7);
  T_CHECK(run(cmd, a, sizeof a) == 0, "seed 7 run");
  T_CHECK(run(cmd, b, sizeof b) == 0, "seed 7 rerun");
  snprintf(cmd, sizeof cmd, base, EARSHOT, dir, dir, 8);
  T_CHECK(run(cmd, c, sizeof c) == 0, "seed 8 run");
  cJSON *ja = cJSON_Parse(a), *jb = cJSON_Parse(b), *jc = cJSON_Parse(c);
  char *ia = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(ja, "token_ids"));
  char *ib = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(jb, "token_ids"));
  char *ic = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(jc, "token_ids"));
  T_CHECK(ia && ib && !strcmp(ia, ib), "the same seed gives different tokens: %s vs %s", ia, ib);
  T_CHECK(ia && ic && strcmp(ia, ic) != 0, "seeds 7 and 8 give the same tokens: %s", ia);
  free(ia);
  free(ib);
  free(ic);
  cJSON_Delete(ja);
  cJSON_Delete(jb);
  cJSON_Delete(jc);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: test_run_cli EARSHOT SCRATCH_DIR\n");
    return 2;
  }
  EARSHOT = argv[1];
  es_error_t err;
  if (golden_open(&G, ES_SOURCE_DIR, &err)) {
    fprintf(stderr, "%s\n", err.msg);
    return 1;
  }
  char args[2048];
  const char *d = ES_SOURCE_DIR "/tests/data/audio";
  snprintf(args, sizeof args, "--audio %s/speech-front-center-48k.wav", d);
  check_case("a-voice-chat", args); /* voice chat: the user turn is the audio only */
  snprintf(args, sizeof args, "--audio %s/alarm-clock-48k-stereo.oga --prompt \"What's that sound?\"", d);
  check_case("a-analysis-sound", args); /* audio analysis: audio, then the instruction */
  snprintf(args, sizeof args, "--audio %s/speech-espeak.opus --raw --prompt \"Generate the caption in English:\"", d);
  check_case("a-raw-base", args);
  snprintf(args, sizeof args, "--audio %s/speech-long-16k.flac --prompt \"Transcribe the speech.\" --long-audio split",
           d);
  check_case("a-long-split", args); /* three 30 s windows in one audio span */

  /* errors a user can cause */
  char scratch[1024];
  snprintf(scratch, sizeof scratch, "%s/short.npy", argv[2]);
  float tiny[100] = {0};
  int64_t n = 100;
  T_CHECK(npy_write(scratch, NPY_F32, 1, &n, tiny, &err) == 0, "%s", err.msg);
  snprintf(args, sizeof args, "--model %s/tests/golden/checkpoints/tiny-a --audio %s", ES_SOURCE_DIR, scratch);
  check_fails("N = 0 audio", args, "too short");
  snprintf(args, sizeof args, "--model %s/no-such-model --audio %s/bell-44k-stereo.oga", ES_SOURCE_DIR, d);
  check_fails("missing model", args, "no-such-model");
  snprintf(args, sizeof args, "--model %s/tests/golden/checkpoints/tiny-b --audio %s/bell-44k-stereo.oga",
           ES_SOURCE_DIR, d);
  check_fails("no tokenizer", args, "no tokenizer");
  snprintf(args, sizeof args, "--model %s/tests/golden/checkpoints/tiny-a --audio %s/no-such.wav", ES_SOURCE_DIR, d);
  check_fails("missing audio", args, "no-such.wav");
  snprintf(args, sizeof args, "--model %s/tests/golden/checkpoints/tiny-a --audio %s/bell-44k-stereo.oga --top-p 2",
           ES_SOURCE_DIR, d);
  check_fails("bad top_p", args, "top_p");
  check_seeds(ES_SOURCE_DIR);
  check_shared_flags();

  golden_close(&G);
  return t_finish();
}
