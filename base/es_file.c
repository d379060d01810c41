/* es_file: whole-file reads with a size cap, and path helpers. See es_file.h. */
#include "es_file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int es_read_file(const char *path, size_t max_bytes, char **out, size_t *len, es_error_t *err) {
  *out = NULL;
  *len = 0;
  FILE *f = fopen(path, "rb");
  if (!f) {
    int code = errno == ENOENT ? ES_ENOTFOUND : ES_EIO;
    return es_fail(err, code, "%s: cannot open: %s", path, strerror(errno));
  }
  struct stat st;
  if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
    fclose(f);
    return es_fail(err, ES_EIO, "%s: not a regular file", path);
  }
  if ((unsigned long long)st.st_size > (unsigned long long)max_bytes) {
    fclose(f);
    return es_fail(err, ES_ETOOBIG, "%s: %lld bytes, over the limit of %zu", path, (long long)st.st_size,
                   max_bytes);
  }
  size_t n = (size_t)st.st_size;
  char *buf = malloc(n + 1);
  if (!buf) {
    fclose(f);
    return es_fail(err, ES_ENOMEM, "%s: cannot allocate %zu bytes", path, n + 1);
  }
  size_t got = fread(buf, 1, n, f);
  int read_error = ferror(f);
  fclose(f);
  if (got != n || read_error) {
    free(buf);
    return es_fail(err, ES_EIO, "%s: short read (%zu of %zu bytes)", path, got, n);
  }
  buf[n] = '\0';
  *out = buf;
  *len = n;
  return ES_OK;
}

int es_write_file(const char *path, const void *data, size_t len, es_error_t *err) {
  FILE *f = fopen(path, "wb");
  if (!f) return es_fail(err, ES_EIO, "%s: cannot create: %s", path, strerror(errno));
  size_t put = fwrite(data, 1, len, f);
  int close_rc = fclose(f);
  if (put != len || close_rc != 0) return es_fail(err, ES_EIO, "%s: write failed", path);
  return ES_OK;
}

int es_path_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

int es_path_join(char *out, size_t cap, const char *dir, const char *name, es_error_t *err) {
  size_t dl = strlen(dir);
  int need_slash = dl > 0 && dir[dl - 1] != '/';
  int n = snprintf(out, cap, "%s%s%s", dir, need_slash ? "/" : "", name);
  if (n < 0 || (size_t)n >= cap) return es_fail(err, ES_ETOOBIG, "path too long: %s/%s", dir, name);
  return ES_OK;
}
