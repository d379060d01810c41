/* npy: NumPy .npy read/write. See npy.h.
 * ref: numpy/lib/format.py (format description: magic, version, little-endian header length,
 *      a Python dict literal with 'descr', 'fortran_order', 'shape', padded to a multiple of 64 bytes).
 */
#include "npy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "es_file.h"

static const char NPY_MAGIC[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

static const struct {
  npy_dtype_t dtype;
  const char *descr;
  size_t size;
} NPY_DTYPES[] = {
    {NPY_F32, "<f4", 4}, {NPY_F64, "<f8", 8}, {NPY_F16, "<f2", 2},
    {NPY_I16, "<i2", 2}, {NPY_I32, "<i4", 4}, {NPY_I64, "<i8", 8}, {NPY_U8, "|u1", 1},
};
#define NPY_NUM_DTYPES (sizeof NPY_DTYPES / sizeof NPY_DTYPES[0])

size_t npy_dtype_size(npy_dtype_t dtype) {
  for (size_t i = 0; i < NPY_NUM_DTYPES; i++)
    if (NPY_DTYPES[i].dtype == dtype) return NPY_DTYPES[i].size;
  return 0;
}

const char *npy_dtype_name(npy_dtype_t dtype) {
  for (size_t i = 0; i < NPY_NUM_DTYPES; i++)
    if (NPY_DTYPES[i].dtype == dtype) return NPY_DTYPES[i].descr;
  return "?";
}

/* --- a tiny reader for the header's dict literal ------------------------------------------------ */

typedef struct {
  const char *p, *end;
} cursor_t;

static void skip_space(cursor_t *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static int eat(cursor_t *c, char ch) {
  skip_space(c);
  if (c->p < c->end && *c->p == ch) {
    c->p++;
    return 1;
  }
  return 0;
}

/* Reads a quoted string ('x' or "x") into out (cap bytes). */
static int read_string(cursor_t *c, char *out, size_t cap) {
  skip_space(c);
  if (c->p >= c->end || (*c->p != '\'' && *c->p != '"')) return 0;
  char q = *c->p++;
  size_t n = 0;
  while (c->p < c->end && *c->p != q) {
    if (n + 1 >= cap) return 0;
    out[n++] = *c->p++;
  }
  if (c->p >= c->end) return 0;
  c->p++;
  out[n] = '\0';
  return 1;
}

static int read_word(cursor_t *c, const char *word) {
  skip_space(c);
  size_t n = strlen(word);
  if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0) return 0;
  c->p += n;
  return 1;
}

/* Reads a non-negative decimal integer; rejects values past 2^62 so products can be checked. */
static int read_dim(cursor_t *c, int64_t *out) {
  skip_space(c);
  int64_t v = 0;
  int digits = 0;
  while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
    if (v > ((int64_t)1 << 58)) return 0;
    v = v * 10 + (*c->p - '0');
    c->p++;
    digits++;
  }
  if (c->p < c->end && *c->p == 'L') c->p++; /* Python 2 longs */
  *out = v;
  return digits > 0;
}

static int read_shape(cursor_t *c, npy_array_t *a) {
  if (!eat(c, '(')) return 0;
  a->ndim = 0;
  skip_space(c);
  if (eat(c, ')')) return 1;
  for (;;) {
    if (a->ndim == NPY_MAX_DIMS) return 0;
    if (!read_dim(c, &a->shape[a->ndim])) return 0;
    a->ndim++;
    if (eat(c, ')')) return 1;
    if (!eat(c, ',')) return 0;
    if (eat(c, ')')) return 1; /* (n,) */
  }
}

static int parse_header(const char *h, size_t hlen, npy_array_t *a, const char *name, es_error_t *err) {
  cursor_t c = {h, h + hlen};
  int have_descr = 0, have_order = 0, have_shape = 0;
  if (!eat(&c, '{')) return es_fail(err, ES_EINVAL, "%s: npy header is not a dict", name);
  while (!eat(&c, '}')) {
    char key[32];
    if (!read_string(&c, key, sizeof key) || !eat(&c, ':'))
      return es_fail(err, ES_EINVAL, "%s: malformed npy header", name);
    if (strcmp(key, "descr") == 0) {
      char descr[16];
      if (!read_string(&c, descr, sizeof descr)) return es_fail(err, ES_EINVAL, "%s: bad descr", name);
      size_t i = 0;
      for (; i < NPY_NUM_DTYPES; i++) {
        /* '|u1' may also be written '<u1'; single-byte types have no byte order */
        if (strcmp(descr, NPY_DTYPES[i].descr) == 0 ||
            (NPY_DTYPES[i].size == 1 && strcmp(descr + 1, NPY_DTYPES[i].descr + 1) == 0))
          break;
      }
      if (i == NPY_NUM_DTYPES)
        return es_fail(err, ES_EUNSUPPORTED, "%s: unsupported npy dtype '%s'", name, descr);
      a->dtype = NPY_DTYPES[i].dtype;
      have_descr = 1;
    } else if (strcmp(key, "fortran_order") == 0) {
      if (read_word(&c, "True"))
        return es_fail(err, ES_EUNSUPPORTED, "%s: Fortran-order npy arrays are not supported", name);
      if (!read_word(&c, "False")) return es_fail(err, ES_EINVAL, "%s: bad fortran_order", name);
      have_order = 1;
    } else if (strcmp(key, "shape") == 0) {
      if (!read_shape(&c, a)) return es_fail(err, ES_EINVAL, "%s: bad npy shape", name);
      have_shape = 1;
    } else {
      return es_fail(err, ES_EINVAL, "%s: unknown npy header key '%s'", name, key);
    }
    if (!eat(&c, ',')) {
      if (!eat(&c, '}')) return es_fail(err, ES_EINVAL, "%s: malformed npy header", name);
      break;
    }
  }
  if (!have_descr || !have_order || !have_shape)
    return es_fail(err, ES_EINVAL, "%s: npy header lacks descr, fortran_order or shape", name);
  return ES_OK;
}

int npy_parse(const void *buf, size_t len, const char *name, npy_array_t *out, es_error_t *err) {
  memset(out, 0, sizeof *out);
  const unsigned char *b = buf;
  if (len < 10 || memcmp(b, NPY_MAGIC, 6) != 0) return es_fail(err, ES_EINVAL, "%s: not an npy file", name);
  unsigned major = b[6];
  size_t hlen, hstart;
  if (major == 1) {
    hlen = (size_t)b[8] | (size_t)b[9] << 8;
    hstart = 10;
  } else if (major == 2 || major == 3) {
    if (len < 12) return es_fail(err, ES_EINVAL, "%s: truncated npy header", name);
    hlen = (size_t)b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24;
    hstart = 12;
  } else {
    return es_fail(err, ES_EUNSUPPORTED, "%s: npy format version %u", name, major);
  }
  if (hlen > len - hstart) return es_fail(err, ES_EINVAL, "%s: truncated npy header", name);

  npy_array_t a = {0};
  int rc = parse_header((const char *)b + hstart, hlen, &a, name, err);
  if (rc) return rc;

  int64_t count = 1;
  for (int i = 0; i < a.ndim; i++) {
    if (a.shape[i] != 0 && count > INT64_MAX / 16 / a.shape[i])
      return es_fail(err, ES_ETOOBIG, "%s: npy shape overflows", name);
    count *= a.shape[i];
  }
  a.count = count;
  size_t esize = npy_dtype_size(a.dtype);
  size_t data_off = hstart + hlen;
  size_t nbytes = (size_t)count * esize;
  if (len - data_off != nbytes)
    return es_fail(err, ES_EINVAL, "%s: npy data is %zu bytes, shape needs %zu", name, len - data_off, nbytes);
  a.data = malloc(nbytes ? nbytes : 1);
  if (!a.data) return es_fail(err, ES_ENOMEM, "%s: cannot allocate %zu bytes", name, nbytes);
  memcpy(a.data, b + data_off, nbytes);
  *out = a;
  return ES_OK;
}

int npy_read(const char *path, size_t max_bytes, npy_array_t *out, es_error_t *err) {
  char *buf;
  size_t len;
  memset(out, 0, sizeof *out);
  int rc = es_read_file(path, max_bytes, &buf, &len, err);
  if (rc) return rc;
  rc = npy_parse(buf, len, path, out, err);
  free(buf);
  return rc;
}

int npy_write(const char *path, npy_dtype_t dtype, int ndim, const int64_t *shape, const void *data,
              es_error_t *err) {
  if (ndim < 0 || ndim > NPY_MAX_DIMS) return es_fail(err, ES_EINVAL, "%s: npy rank %d", path, ndim);
  size_t esize = npy_dtype_size(dtype);
  if (!esize) return es_fail(err, ES_EINVAL, "%s: unknown dtype", path);
  char dict[256];
  int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (", npy_dtype_name(dtype));
  int64_t count = 1;
  for (int i = 0; i < ndim; i++) {
    n += snprintf(dict + n, sizeof dict - (size_t)n, "%lld,%s", (long long)shape[i], i + 1 < ndim ? " " : "");
    count *= shape[i];
  }
  n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
  /* pad with spaces and a final newline so that the data starts at a multiple of 64 */
  size_t hlen = (size_t)n + 1;
  size_t total = 10 + hlen;
  size_t padded = (total + 63) / 64 * 64;
  hlen += padded - total;
  size_t nbytes = (size_t)count * esize;
  unsigned char *img = malloc(padded + nbytes);
  if (!img) return es_fail(err, ES_ENOMEM, "%s: cannot allocate", path);
  memcpy(img, NPY_MAGIC, 6);
  img[6] = 1;
  img[7] = 0;
  img[8] = (unsigned char)(hlen & 0xff);
  img[9] = (unsigned char)(hlen >> 8);
  memset(img + 10, ' ', hlen);
  memcpy(img + 10, dict, (size_t)n);
  img[padded - 1] = '\n';
  if (nbytes) memcpy(img + padded, data, nbytes);
  int rc = es_write_file(path, img, padded + nbytes, err);
  free(img);
  return rc;
}

void npy_free(npy_array_t *a) {
  if (!a) return;
  free(a->data);
  memset(a, 0, sizeof *a);
}
