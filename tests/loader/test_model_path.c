/* test_model_path: --model resolution on a fake Hugging Face cache tree built in the scratch directory.
 * Layout (huggingface_hub file_download.py): <hub>/models--org--name/{refs/main, snapshots/<rev>/}.
 * usage: test_model_path SCRATCH_DIR
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <utime.h>

#include "es_file.h"
#include "model_path.h"
#include "test_util.h"

static int mk(const char *path) {
  return mkdir(path, 0755) == 0 || errno == EEXIST ? 0 : -1;
}

static int mkdirs(const char *base, const char *rel) {
  char p[2048];
  snprintf(p, sizeof p, "%s/%s", base, rel);
  for (char *s = p + strlen(base) + 1; *s; s++)
    if (*s == '/') {
      *s = '\0';
      if (mk(p)) return -1;
      *s = '/';
    }
  return mk(p);
}

static void set_mtime(const char *base, const char *rel, time_t t) {
  char p[2048];
  snprintf(p, sizeof p, "%s/%s", base, rel);
  struct utimbuf u = {t, t};
  utime(p, &u);
}

static void write_text(const char *base, const char *rel, const char *text) {
  char p[2048];
  es_error_t err;
  snprintf(p, sizeof p, "%s/%s", base, rel);
  if (es_write_file(p, text, strlen(text), &err)) fprintf(stderr, "%s\n", err.msg);
}

static int ends_with(const char *s, const char *tail) {
  size_t a = strlen(s), b = strlen(tail);
  return a >= b && strcmp(s + a - b, tail) == 0;
}

static void test_resolve(const char *tmp) {
  char root[1024], cmd[1200];
  snprintf(root, sizeof root, "%s/fake-hf-home", tmp);
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
  T_REQUIRE(system(cmd) == 0 && mk(root) == 0, "fresh %s", root);
  const char *repo = "hub/models--Qwen--Qwen2-Audio-7B-Instruct";
  T_REQUIRE(mkdirs(root, "hub/models--Qwen--Qwen2-Audio-7B-Instruct/snapshots/aaaa1111") == 0, "tree");
  T_REQUIRE(mkdirs(root, "hub/models--Qwen--Qwen2-Audio-7B-Instruct/snapshots/bbbb2222") == 0, "tree");
  T_REQUIRE(mkdirs(root, "hub/models--Qwen--Qwen2-Audio-7B-Instruct/refs") == 0, "tree");
  T_REQUIRE(mkdirs(root, "hub/models--Qwen--Qwen2-Audio-7B/snapshots/cccc3333") == 0, "tree");
  T_REQUIRE(mkdirs(root, "hub/models--Qwen--Qwen2-Audio-7B/snapshots/dddd4444") == 0, "tree");
  T_REQUIRE(mkdirs(root, "hub/models--org--empty/snapshots") == 0, "tree");
  /* refs/main names the older snapshot: refs/main wins over mtime */
  write_text(root, "hub/models--Qwen--Qwen2-Audio-7B-Instruct/refs/main", "aaaa1111\n");
  set_mtime(root, "hub/models--Qwen--Qwen2-Audio-7B-Instruct/snapshots/aaaa1111", 1000000);
  set_mtime(root, "hub/models--Qwen--Qwen2-Audio-7B-Instruct/snapshots/bbbb2222", 2000000);
  /* no refs: the newest by mtime, though its name sorts first */
  set_mtime(root, "hub/models--Qwen--Qwen2-Audio-7B/snapshots/cccc3333", 3000000);
  set_mtime(root, "hub/models--Qwen--Qwen2-Audio-7B/snapshots/dddd4444", 1000000);

  setenv("HF_HOME", root, 1);
  unsetenv("HF_HUB_CACHE");
  model_path_t mp;
  es_error_t err;
  es_error_clear(&err);
  T_CHECK(mpath_resolve("Qwen/Qwen2-Audio-7B-Instruct", &mp, &err) == 0, "%s", err.msg);
  T_CHECK(mp.from_cache && mp.via_ref && ends_with(mp.dir, "/snapshots/aaaa1111") &&
              strcmp(mp.revision, "aaaa1111") == 0 && strstr(mp.repo_dir, repo),
          "refs/main: %s", mp.dir);
  T_CHECK(mpath_resolve("Qwen/Qwen2-Audio-7B", &mp, &err) == 0, "%s", err.msg);
  T_CHECK(mp.from_cache && !mp.via_ref && ends_with(mp.dir, "/snapshots/cccc3333"), "newest mtime: %s", mp.dir);

  /* refs/main naming a snapshot that is not there: fall back to the newest */
  write_text(root, "hub/models--Qwen--Qwen2-Audio-7B-Instruct/refs/main", "ffff9999");
  T_CHECK(mpath_resolve("Qwen/Qwen2-Audio-7B-Instruct", &mp, &err) == 0 && !mp.via_ref &&
              ends_with(mp.dir, "/snapshots/bbbb2222"),
          "stale ref: %s", mp.dir);

  /* not cached: the message lists where it looked */
  T_CHECK(mpath_resolve("Qwen/Nope", &mp, &err) == ES_ENOTFOUND && strstr(err.msg, "models--Qwen--Nope/snapshots") &&
              strstr(err.msg, root),
          "%s", err.msg);
  T_CHECK(mpath_resolve("org/empty", &mp, &err) == ES_ENOTFOUND && strstr(err.msg, "no snapshot"), "%s", err.msg);
  /* not an id and not a directory; ids cannot climb out of the cache */
  T_CHECK(mpath_resolve("no-such-dir", &mp, &err) == ES_ENOTFOUND && strstr(err.msg, "no-such-dir"), "%s", err.msg);
  T_CHECK(mpath_resolve("../etc", &mp, &err) == ES_ENOTFOUND, "dot-dot: %s", err.msg);
  T_CHECK(mpath_resolve("a/b/c", &mp, &err) == ES_ENOTFOUND, "three parts: %s", err.msg);
  T_CHECK(mpath_resolve("", &mp, &err) == ES_EINVAL, "empty");

  /* HF_HUB_CACHE overrides HF_HOME */
  char hub[1100];
  snprintf(hub, sizeof hub, "%s/hub", root);
  setenv("HF_HOME", "/nonexistent-hf-home", 1);
  setenv("HF_HUB_CACHE", hub, 1);
  T_CHECK(mpath_resolve("Qwen/Qwen2-Audio-7B", &mp, &err) == 0 && ends_with(mp.dir, "/snapshots/cccc3333"), "%s",
          err.msg);
  /* neither set: ~/.cache/huggingface/hub under HOME */
  unsetenv("HF_HUB_CACHE");
  unsetenv("HF_HOME");
  unsetenv("XDG_CACHE_HOME");
  char home[1100];
  snprintf(home, sizeof home, "%s/home", root);
  T_REQUIRE(mkdirs(root, "home/.cache/huggingface/hub/models--x--y/snapshots/r1") == 0, "tree");
  setenv("HOME", home, 1);
  T_CHECK(mpath_resolve("x/y", &mp, &err) == 0 &&
              ends_with(mp.dir, "/.cache/huggingface/hub/models--x--y/snapshots/r1"),
          "%s", err.msg);

  /* a plain directory is used as it is, even when it also looks like an id */
  char plain[1100];
  snprintf(plain, sizeof plain, "%s/hub", root);
  T_CHECK(mpath_resolve(plain, &mp, &err) == 0 && !mp.from_cache && strcmp(mp.dir, plain) == 0, "%s", err.msg);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_model_path SCRATCH_DIR\n");
    return 2;
  }
  test_resolve(argv[1]);
  return t_finish();
}
