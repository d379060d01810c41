/* safetensors: header parsing and read-only mapping. See safetensors.h.
 * ref: huggingface/safetensors safetensors/src/tensor.rs (read_metadata, Metadata::validate)
 */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* JSON numbers are doubles; integers above 2^53 are not represented exactly, so they are refused. */
#define ST_MAX_JSON_INT 9007199254740992.0

size_t st_dtype_size(st_dtype_t dtype) {
  switch (dtype) {
  case ST_BF16: return 2;
  case ST_F16: return 2;
  case ST_F32: return 4;
  }
  return 0;
}

const char *st_dtype_name(st_dtype_t dtype) {
  switch (dtype) {
  case ST_BF16: return "BF16";
  case ST_F16: return "F16";
  case ST_F32: return "F32";
  }
  return "?";
}

static int parse_dtype(const char *s, st_dtype_t *out) {
  if (strcmp(s, "BF16") == 0)
    *out = ST_BF16;
  else if (strcmp(s, "F16") == 0)
    *out = ST_F16;
  else if (strcmp(s, "F32") == 0)
    *out = ST_F32;
  else
    return 0;
  return 1;
}

static int json_u64(const cJSON *v, uint64_t *out) {
  if (!cJSON_IsNumber(v)) return 0;
  double d = v->valuedouble;
  if (!(d >= 0.0 && d <= ST_MAX_JSON_INT) || d != floor(d)) return 0;
  *out = (uint64_t)d;
  return 1;
}

static int cmp_by_offset(const void *a, const void *b) {
  const st_tensor_t *x = a, *y = b;
  if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
  if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
  return strcmp(x->name, y->name);
}

static int cmp_by_name(const void *a, const void *b) {
  return strcmp(((const st_tensor_t *)a)->name, ((const st_tensor_t *)b)->name);
}

/* One header entry -> *t (name not yet set). */
static int parse_entry(const cJSON *e, const char *file, const char *tname, uint64_t data_len, st_tensor_t *t,
                       es_error_t *err) {
  if (!cJSON_IsObject(e))
    return es_fail(err, ES_EINVAL, "%s: tensor '%.200s': header entry is not an object", file, tname);
  const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
  const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
  const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
  if (!cJSON_IsString(dt)) return es_fail(err, ES_EINVAL, "%s: tensor '%.200s': no \"dtype\" string", file, tname);
  if (!parse_dtype(dt->valuestring, &t->dtype))
    return es_fail(err, ES_EUNSUPPORTED,
                   "%s: tensor '%.200s': unsupported dtype \"%.20s\" (earshot reads BF16, F16, F32)", file, tname,
                   dt->valuestring);
  if (!cJSON_IsArray(shape)) return es_fail(err, ES_EINVAL, "%s: tensor '%.200s': no \"shape\" list", file, tname);
  int nd = cJSON_GetArraySize(shape);
  if (nd > ST_MAX_DIMS)
    return es_fail(err, ES_EUNSUPPORTED, "%s: tensor '%.200s': %d dimensions (at most %d)", file, tname, nd,
                   ST_MAX_DIMS);
  t->ndim = nd;
  uint64_t count = 1;
  int overflow = 0, i = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, shape) {
    uint64_t dim;
    if (!json_u64(it, &dim))
      return es_fail(err, ES_EINVAL, "%s: tensor '%.200s': shape[%d] is not a non-negative integer", file, tname, i);
    t->shape[i++] = (int64_t)dim;
    if (dim != 0 && count > UINT64_MAX / dim)
      overflow = 1;
    else
      count *= dim;
  }
  size_t es = st_dtype_size(t->dtype);
  if (overflow || count > UINT64_MAX / es)
    return es_fail(err, ES_EINVAL, "%s: tensor '%.200s': shape product overflows", file, tname);
  t->count = count;
  t->nbytes = count * es;
  uint64_t b, e2;
  if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 || !json_u64(cJSON_GetArrayItem(offs, 0), &b) ||
      !json_u64(cJSON_GetArrayItem(offs, 1), &e2))
    return es_fail(err, ES_EINVAL, "%s: tensor '%.200s': \"data_offsets\" must be two non-negative integers", file,
                   tname);
  if (b > e2)
    return es_fail(err, ES_EINVAL, "%s: tensor '%.200s': data_offsets [%llu, %llu] end before they begin", file, tname,
                   (unsigned long long)b, (unsigned long long)e2);
  if (e2 > data_len)
    return es_fail(
        err, ES_EINVAL,
        "%s: tensor '%.200s': data_offsets [%llu, %llu] run past the data section (%llu bytes; truncated file?)", file,
        tname, (unsigned long long)b, (unsigned long long)e2, (unsigned long long)data_len);
  if (e2 - b != t->nbytes)
    return es_fail(err, ES_EINVAL, "%s: tensor '%.200s': data_offsets span %llu bytes but %s x shape needs %llu", file,
                   tname, (unsigned long long)(e2 - b), st_dtype_name(t->dtype), (unsigned long long)t->nbytes);
  t->offset = b;
  return ES_OK;
}

int st_parse(const uint8_t *buf, size_t len, const char *name, st_file_t *f, es_error_t *err) {
  memset(f, 0, sizeof *f);
  int rc = ES_OK;
  cJSON *root = NULL;
  if (len < 8)
    return es_fail(err, ES_EINVAL, "%s: %zu bytes, too short for a safetensors file (8-byte header length)", name, len);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = (n << 8) | buf[i];
  if (n > ST_MAX_HEADER_BYTES)
    return es_fail(err, ES_ETOOBIG, "%s: header length %llu is over the %u-byte limit (not a safetensors file?)", name,
                   (unsigned long long)n, ST_MAX_HEADER_BYTES);
  if (n > len - 8)
    return es_fail(err, ES_EINVAL, "%s: header length %llu runs past the end of the file (%zu bytes; truncated?)", name,
                   (unsigned long long)n, len);
  if (n < 2)
    return es_fail(err, ES_EINVAL, "%s: header length %llu is too small for a JSON object", name,
                   (unsigned long long)n);

  f->path = strdup(name);
  if (!f->path) return es_fail(err, ES_ENOMEM, "%s: out of memory", name);
  f->header_len = n;
  f->data = buf + 8 + n;
  f->data_len = (uint64_t)len - 8 - n;
  f->map_len = len;

  const char *hdr = (const char *)buf + 8, *end = NULL;
  if (hdr[0] != '{') {
    rc = es_fail(err, ES_EINVAL, "%s: header does not start with '{' (not a safetensors file?)", name);
    goto fail;
  }
  root = cJSON_ParseWithLengthOpts(hdr, (size_t)n, &end, 0);
  if (!root || !cJSON_IsObject(root)) {
    size_t at = end && end >= hdr && end <= hdr + n ? (size_t)(end - hdr) : 0;
    rc = es_fail(err, ES_EINVAL, "%s: header is not a valid JSON object (near header byte %zu)", name, at);
    goto fail;
  }
  /* Writers pad the header with spaces to an 8-byte boundary; anything else after the object is corruption. */
  for (const char *p = end; p < hdr + n; p++) {
    if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
      rc = es_fail(err, ES_EINVAL, "%s: bytes after the header JSON (at header byte %zu)", name, (size_t)(p - hdr));
      goto fail;
    }
  }

  int total = cJSON_GetArraySize(root);
  f->tensors = calloc(total > 0 ? (size_t)total : 1, sizeof *f->tensors);
  if (!f->tensors) {
    rc = es_fail(err, ES_ENOMEM, "%s: out of memory for %d header entries", name, total);
    goto fail;
  }
  const cJSON *e;
  cJSON_ArrayForEach(e, root) {
    const char *key = e->string ? e->string : "";
    if (strcmp(key, "__metadata__") == 0) {
      if (!cJSON_IsObject(e)) {
        rc = es_fail(err, ES_EINVAL, "%s: __metadata__ is not an object", name);
        goto fail;
      }
      const cJSON *m;
      cJSON_ArrayForEach(m, e) {
        if (!cJSON_IsString(m)) {
          rc = es_fail(err, ES_EINVAL, "%s: __metadata__ value '%.200s' is not a string", name,
                       m->string ? m->string : "");
          goto fail;
        }
        f->n_metadata++;
      }
      continue;
    }
    if (key[0] == '\0') {
      rc = es_fail(err, ES_EINVAL, "%s: a tensor with an empty name", name);
      goto fail;
    }
    st_tensor_t *t = &f->tensors[f->n_tensors];
    if ((rc = parse_entry(e, name, key, f->data_len, t, err)) != ES_OK) goto fail;
    t->name = strdup(key);
    if (!t->name) {
      rc = es_fail(err, ES_ENOMEM, "%s: out of memory", name);
      goto fail;
    }
    f->n_tensors++;
  }

  /* Coverage, as the reference validates it: sorted by offset, each tensor starts where the previous one
   * ended, and the last ends at the end of the file. */
  qsort(f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, cmp_by_offset);
  uint64_t at = 0;
  for (int i = 0; i < f->n_tensors; i++) {
    const st_tensor_t *t = &f->tensors[i];
    if (t->offset < at) {
      rc = es_fail(err, ES_EINVAL, "%s: tensor '%.200s' [%llu, %llu) overlaps tensor '%.200s' (ends at %llu)", name,
                   t->name, (unsigned long long)t->offset, (unsigned long long)(t->offset + t->nbytes),
                   f->tensors[i - 1].name, (unsigned long long)at);
      goto fail;
    }
    if (t->offset > at) {
      rc = es_fail(err, ES_EINVAL, "%s: tensor '%.200s' starts at %llu, leaving a gap of %llu unclaimed bytes", name,
                   t->name, (unsigned long long)t->offset, (unsigned long long)(t->offset - at));
      goto fail;
    }
    at = t->offset + t->nbytes;
  }
  if (at != f->data_len) {
    rc = es_fail(err, ES_EINVAL, "%s: tensors cover %llu bytes but the data section has %llu", name,
                 (unsigned long long)at, (unsigned long long)f->data_len);
    goto fail;
  }
  qsort(f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, cmp_by_name);
  for (int i = 0; i < f->n_tensors; i++) {
    if (i > 0 && strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0) {
      rc = es_fail(err, ES_EINVAL, "%s: tensor '%.200s' appears twice in the header", name, f->tensors[i].name);
      goto fail;
    }
    f->tensors[i].data = f->data + f->tensors[i].offset;
  }
  cJSON_Delete(root);
  return ES_OK;

fail:
  cJSON_Delete(root);
  st_close(f);
  return rc;
}

int st_open(const char *path, st_file_t *f, es_error_t *err) {
  memset(f, 0, sizeof *f);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return es_fail(err, errno == ENOENT ? ES_ENOTFOUND : ES_EIO, "%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return es_fail(err, ES_EIO, "%s: not a regular file", path);
  }
  size_t len = (size_t)st.st_size;
  if (len < 8) {
    close(fd);
    return es_fail(err, ES_EINVAL, "%s: %zu bytes, too short for a safetensors file (8-byte header length)", path, len);
  }
  /* Read-only shared mapping: pages come from the page cache on first touch and are never copied. */
  void *map = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
  int mmap_errno = errno;
  close(fd);
  if (map == MAP_FAILED)
    return es_fail(err, ES_EIO, "%s: mmap of %zu bytes failed: %s", path, len, strerror(mmap_errno));
  int rc = st_parse(map, len, path, f, err);
  if (rc) {
    munmap(map, len);
    return rc;
  }
  f->map = map;
  return ES_OK;
}

void st_close(st_file_t *f) {
  if (!f) return;
  if (f->tensors)
    for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
  free(f->tensors);
  free(f->path);
  if (f->map) munmap(f->map, f->map_len);
  memset(f, 0, sizeof *f);
}

const st_tensor_t *st_find(const st_file_t *f, const char *name) {
  int lo = 0, hi = f->n_tensors - 1;
  while (lo <= hi) {
    int mid = lo + (hi - lo) / 2;
    int c = strcmp(f->tensors[mid].name, name);
    if (c == 0) return &f->tensors[mid];
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid - 1;
  }
  return NULL;
}
