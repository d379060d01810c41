/* model_path: --model DIR|org/name -> directory. See model_path.h.
 * ref: huggingface_hub constants.py and file_download.py (models--{org}--{name}/{refs,snapshots}/)
 */
#include "model_path.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Copies src into dst (cap bytes) when it fits; 0 when it does not (dst untouched). */
static int copy_str(char *dst, size_t cap, const char *src) {
  size_t n = strlen(src);
  if (n >= cap) return 0;
  memcpy(dst, src, n + 1);
  return 1;
}

static int is_dir(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

int mpath_hub_cache(char *out, size_t cap, es_error_t *err) {
  const char *v;
  int n;
  if ((v = getenv("HF_HUB_CACHE")) && *v)
    n = snprintf(out, cap, "%s", v);
  else if ((v = getenv("HF_HOME")) && *v)
    n = snprintf(out, cap, "%s/hub", v);
  else if ((v = getenv("XDG_CACHE_HOME")) && *v)
    n = snprintf(out, cap, "%s/huggingface/hub", v);
  else if ((v = getenv("HOME")) && *v)
    n = snprintf(out, cap, "%s/.cache/huggingface/hub", v);
  else
    return es_fail(err, ES_ENOTFOUND,
                   "no Hugging Face cache: none of HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME, HOME is set");
  if (n < 0 || (size_t)n >= cap) return es_fail(err, ES_ETOOBIG, "Hugging Face cache path too long");
  return ES_OK;
}

/* org/name with the characters the Hub allows; no "." or ".." parts, so it cannot climb out of the cache. */
static int is_model_id(const char *s) {
  const char *slash = strchr(s, '/');
  if (!slash || slash == s || !slash[1] || strchr(slash + 1, '/')) return 0;
  if (s[0] == '.' || slash[1] == '.') return 0;
  for (const char *p = s; *p; p++)
    if (!(*p == '/' || *p == '-' || *p == '_' || *p == '.' || (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') ||
          (*p >= 'A' && *p <= 'Z')))
      return 0;
  return 1;
}

static int read_ref(const char *repo_dir, char *out, size_t cap) {
  char path[MPATH_MAX];
  if (snprintf(path, sizeof path, "%s/refs/main", repo_dir) >= (int)sizeof path) return 0;
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  size_t n = fread(out, 1, cap - 1, f);
  fclose(f);
  out[n] = '\0';
  while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == '\r' || out[n - 1] == ' ')) out[--n] = '\0';
  if (n == 0 || strchr(out, '/') || strcmp(out, ".") == 0 || strcmp(out, "..") == 0) return 0;
  return 1;
}

int mpath_resolve(const char *arg, model_path_t *out, es_error_t *err) {
  memset(out, 0, sizeof *out);
  if (!arg || !*arg) return es_fail(err, ES_EINVAL, "--model: empty");
  if (is_dir(arg)) {
    if (!copy_str(out->dir, sizeof out->dir, arg)) return es_fail(err, ES_ETOOBIG, "--model: path too long");
    return ES_OK;
  }
  if (!is_model_id(arg))
    return es_fail(err, ES_ENOTFOUND, "--model %s: not a directory, and not a Hugging Face model id (org/name)", arg);

  char hub[MPATH_MAX];
  int rc = mpath_hub_cache(hub, sizeof hub, err);
  if (rc) return es_error_prefix(err, "--model %s: not a directory, and ", arg);
  const char *slash = strchr(arg, '/');
  int n = snprintf(out->repo_dir, sizeof out->repo_dir, "%s/models--%.*s--%s", hub, (int)(slash - arg), arg, slash + 1);
  if (n < 0 || (size_t)n >= sizeof out->repo_dir) return es_fail(err, ES_ETOOBIG, "--model %s: path too long", arg);
  char snaps[MPATH_MAX + 16];
  snprintf(snaps, sizeof snaps, "%s/snapshots", out->repo_dir);
  if (!is_dir(snaps))
    return es_fail(err, ES_ENOTFOUND,
                   "--model %s: not a directory, and not in the Hugging Face cache (looked for %s; the cache is "
                   "$HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)",
                   arg, snaps);

  char rev[128];
  char cand[MPATH_MAX * 2];
  if (read_ref(out->repo_dir, rev, sizeof rev)) {
    snprintf(cand, sizeof cand, "%s/%s", snaps, rev);
    if (is_dir(cand) && copy_str(out->dir, sizeof out->dir, cand)) {
      copy_str(out->revision, sizeof out->revision, rev);
      out->from_cache = out->via_ref = 1;
      return ES_OK;
    }
  }
  /* No usable refs/main (a snapshot fetched by commit, or a partial download): the newest snapshot. */
  DIR *d = opendir(snaps);
  if (!d) return es_fail(err, ES_EIO, "--model %s: cannot list %s", arg, snaps);
  struct dirent *de;
  struct timespec best = {0, 0};
  int found = 0;
  while ((de = readdir(d))) {
    if (de->d_name[0] == '.' || strlen(de->d_name) >= sizeof out->revision) continue;
    snprintf(cand, sizeof cand, "%s/%s", snaps, de->d_name);
    struct stat st;
    if (stat(cand, &st) != 0 || !S_ISDIR(st.st_mode)) continue;
    int newer = !found || st.st_mtim.tv_sec > best.tv_sec ||
                (st.st_mtim.tv_sec == best.tv_sec && st.st_mtim.tv_nsec > best.tv_nsec) ||
                (st.st_mtim.tv_sec == best.tv_sec && st.st_mtim.tv_nsec == best.tv_nsec &&
                 strcmp(de->d_name, out->revision) > 0); /* ties broken by name, so the choice is stable */
    if (newer && copy_str(out->dir, sizeof out->dir, cand)) {
      best = st.st_mtim;
      copy_str(out->revision, sizeof out->revision, de->d_name); /* fits: checked at the loop's top */
      found = 1;
    }
  }
  closedir(d);
  if (!found)
    return es_fail(err, ES_ENOTFOUND, "--model %s: %s has no snapshot (looked in %s, refs/main %s)", arg, out->repo_dir,
                   snaps, read_ref(out->repo_dir, rev, sizeof rev) ? "names a missing one" : "absent");
  out->from_cache = 1;
  return ES_OK;
}
