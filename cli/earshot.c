/* earshot: the one executable, with git-style subcommands.
 *
 * Each subcommand lives in its own file (cli/cmd_NAME.c) and is listed in COMMANDS below once it works;
 * none is listed before it does. Global flags: --help/-h, --version/-V.
 * Exit codes: 0 success, 1 runtime failure (a message on stderr), 2 usage error.
 */
#include <stdio.h>
#include <string.h>

#include "es_build_info.h"
#include "es_gpu.h"

typedef struct {
  const char *name;
  const char *summary;
  int (*run)(int argc, char **argv); /* argv[0] is the subcommand name */
} command_t;

int cmd_inspect(int argc, char **argv);
int cmd_mel(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_run(int argc, char **argv);
#ifdef EARSHOT_HAVE_SERVER
int cmd_serve(int argc, char **argv);
#endif
#ifdef EARSHOT_HAVE_AIRBENCH
int cmd_airbench(int argc, char **argv);
#endif
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);

static const command_t COMMANDS[] = {
    {"inspect", "check a model directory: files, config, tensors, problems", cmd_inspect},
    {"mel", "decode audio and write its log-mel features (one .npy per 30 s window)", cmd_mel},
    {"bench", "benchmarks: earshot bench mel", cmd_bench},
    {"run", "answer one turn about audio files, streamed to stdout (--json for one object)", cmd_run},
#ifdef EARSHOT_HAVE_SERVER
    {"serve", "the OpenAI-compatible HTTP server (chat completions, audio analysis, transcriptions)", cmd_serve},
#endif
#ifdef EARSHOT_HAVE_AIRBENCH
    {"airbench", "AIR-Bench batch evaluation: answer the benchmark (resumable), score the results", cmd_airbench},
#endif
    {"tokenize", "text or a chat file (--chat) -> token ids, as a JSON array", cmd_tokenize},
    {"detokenize", "token ids -> text", cmd_detokenize},
    {NULL, NULL, NULL},
};

static void print_usage(FILE *out) {
  fprintf(out,
          "earshot %s: a Qwen2-Audio inference server\n"
          "\n"
          "usage: earshot [--help] [--version] <command> [<args>]\n"
          "\n",
          ES_VERSION);
  int n = 0;
  for (const command_t *c = COMMANDS; c->name; c++, n++) {
    if (n == 0) fprintf(out, "commands:\n");
    fprintf(out, "  %-12s %s\n", c->name, c->summary);
  }
  if (n == 0) fprintf(out, "No commands are built yet (see README.md, \"Status\").\n");
  fprintf(out, "\n'earshot <command> --help' describes a command.\n");
}

static void print_version(void) {
  printf("earshot %s (git %s)\n", ES_VERSION, ES_GIT_DESCRIBE);
  if (!es_gpu_compiled()) {
    printf("cuda: not compiled in\n");
    return;
  }
  int count = 0;
  char why[128] = "";
  es_error_t err;
  es_error_clear(&err);
  if (es_gpu_count(&count, why, sizeof why, &err) != ES_OK) {
    printf("cuda: compiled for sm_%s; device query failed: %s\n", es_gpu_architectures(), err.msg);
    return;
  }
  printf("cuda: compiled for architectures %s; %d device(s)%s%s\n", es_gpu_architectures(), count,
         count ? "" : ": ", count ? "" : why);
  for (int i = 0; i < count; i++) {
    es_gpu_info_t info;
    if (es_gpu_info(i, &info, &err) == ES_OK)
      printf("  %d: %s, sm_%d%d, %d SMs, %.1f GiB\n", i, info.name, info.cc_major, info.cc_minor, info.sm_count,
             (double)info.mem_total_bytes / (1024.0 * 1024.0 * 1024.0));
    else
      printf("  %d: %s\n", i, err.msg);
  }
}

int main(int argc, char **argv) {
  if (argc < 2) {
    print_usage(stderr);
    return 2;
  }
  const char *arg = argv[1];
  if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0 || strcmp(arg, "help") == 0) {
    print_usage(stdout);
    return 0;
  }
  if (strcmp(arg, "--version") == 0 || strcmp(arg, "-V") == 0) {
    print_version();
    return 0;
  }
  for (const command_t *c = COMMANDS; c->name; c++)
    if (strcmp(arg, c->name) == 0) return c->run(argc - 1, argv + 1);
  fprintf(stderr, "earshot: unknown command or option '%s'\n\n", arg);
  print_usage(stderr);
  return 2;
}
