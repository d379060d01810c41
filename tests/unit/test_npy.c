/* test_npy: .npy round trips and every malformed-header kind the parser must reject cleanly. */
#include <stdlib.h>
#include <string.h>

#include "npy.h"
#include "test_util.h"

static es_error_t E;

static void test_round_trip(const char *dir) {
  char path[1024];
  snprintf(path, sizeof path, "%s/rt.npy", dir);
  float data[2 * 3 * 5];
  for (int i = 0; i < 30; i++) data[i] = (float)i * 0.5f - 3.0f;
  int64_t shape[3] = {2, 3, 5};
  T_REQUIRE(npy_write(path, NPY_F32, 3, shape, data, &E) == 0, "%s", E.msg);
  npy_array_t a;
  T_REQUIRE(npy_read(path, 1 << 20, &a, &E) == 0, "%s", E.msg);
  T_CHECK(a.dtype == NPY_F32 && a.ndim == 3 && a.shape[0] == 2 && a.shape[1] == 3 && a.shape[2] == 5 && a.count == 30,
          "shape");
  T_CHECK(memcmp(a.data, data, sizeof data) == 0, "data");
  npy_free(&a);
  npy_free(&a); /* freeing twice is a no-op */

  int32_t ids[7] = {1, -2, 3, 151646, 0, 9, 7};
  int64_t n = 7;
  T_REQUIRE(npy_write(path, NPY_I32, 1, &n, ids, &E) == 0, "%s", E.msg);
  T_REQUIRE(npy_read(path, 1 << 20, &a, &E) == 0, "%s", E.msg);
  T_CHECK(a.dtype == NPY_I32 && a.ndim == 1 && a.count == 7 && memcmp(a.data, ids, sizeof ids) == 0, "int32 1-D");
  npy_free(&a);

  T_REQUIRE(npy_write(path, NPY_F32, 0, NULL, data, &E) == 0, "%s", E.msg);
  T_REQUIRE(npy_read(path, 1 << 20, &a, &E) == 0, "%s", E.msg);
  T_CHECK(a.ndim == 0 && a.count == 1 && ((float *)a.data)[0] == data[0], "scalar");
  npy_free(&a);

  int64_t empty_shape[2] = {0, 4};
  T_REQUIRE(npy_write(path, NPY_F32, 2, empty_shape, data, &E) == 0, "%s", E.msg);
  T_REQUIRE(npy_read(path, 1 << 20, &a, &E) == 0, "%s", E.msg);
  T_CHECK(a.ndim == 2 && a.count == 0, "empty array");
  npy_free(&a);
}

/* Builds a v1 .npy image with the given header text and payload size. */
static size_t build(unsigned char *buf, const char *header, size_t payload) {
  size_t hl = strlen(header);
  memcpy(buf, "\x93NUMPY\x01\x00", 8);
  buf[8] = (unsigned char)(hl & 0xff);
  buf[9] = (unsigned char)(hl >> 8);
  memcpy(buf + 10, header, hl);
  memset(buf + 10 + hl, 0, payload);
  return 10 + hl + payload;
}

static void expect_reject(const char *what, const unsigned char *buf, size_t len, int code) {
  npy_array_t a;
  int rc = npy_parse(buf, len, what, &a, &E);
  T_CHECK(rc == code, "%s: rc %d, expected %d (%s)", what, rc, code, E.msg);
  T_CHECK(a.data == NULL, "%s: no data on failure", what);
  T_CHECK(rc == 0 || strstr(E.msg, what) != NULL, "%s: message names the input: %s", what, E.msg);
}

static void test_malformed(void) {
  static unsigned char buf[4096];
  size_t n;
  expect_reject("empty", buf, 0, ES_EINVAL);
  expect_reject("not-npy", (const unsigned char *)"PK\x03\x04 hello world", 16, ES_EINVAL);

  n = build(buf, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }\n", 12);
  npy_array_t a;
  T_CHECK(npy_parse(buf, n, "good", &a, &E) == 0 && a.count == 3, "a valid image parses: %s", E.msg);
  npy_free(&a);
  expect_reject("short-data", buf, n - 1, ES_EINVAL);
  expect_reject("truncated-header", buf, 30, ES_EINVAL);

  n = build(buf, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }\n", 16);
  expect_reject("long-data", buf, n, ES_EINVAL);
  n = build(buf, "{'descr': '>f4', 'fortran_order': False, 'shape': (3,), }\n", 12);
  expect_reject("big-endian", buf, n, ES_EUNSUPPORTED);
  n = build(buf, "{'descr': '<c8', 'fortran_order': False, 'shape': (3,), }\n", 24);
  expect_reject("complex", buf, n, ES_EUNSUPPORTED);
  n = build(buf, "{'descr': '<f4', 'fortran_order': True, 'shape': (3,), }\n", 12);
  expect_reject("fortran", buf, n, ES_EUNSUPPORTED);
  n = build(buf, "{'descr': '<f4', 'shape': (3,), }\n", 12);
  expect_reject("no-order", buf, n, ES_EINVAL);
  n = build(buf, "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }\n", 0);
  expect_reject("huge-dim", buf, n, ES_EINVAL);
  n = build(buf, "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }\n", 0);
  expect_reject("overflow", buf, n, ES_ETOOBIG);
  n = build(buf, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1), }\n", 4);
  expect_reject("rank-9", buf, n, ES_EINVAL);
  n = build(buf, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,, }\n", 12);
  expect_reject("bad-tuple", buf, n, ES_EINVAL);
  n = build(buf, "{'descr': '<f4", 0);
  expect_reject("open-string", buf, n, ES_EINVAL);
  memcpy(buf, "\x93NUMPY\x09\x00", 8);
  expect_reject("version-9", buf, 64, ES_EUNSUPPORTED);
  /* header length pointing past the end */
  n = build(buf, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }\n", 12);
  buf[8] = 0xff;
  buf[9] = 0xff;
  expect_reject("header-past-end", buf, n, ES_EINVAL);
}

static void test_missing_file(void) {
  npy_array_t a;
  int rc = npy_read("/nonexistent/earshot/x.npy", 1 << 20, &a, &E);
  T_CHECK(rc == ES_ENOTFOUND, "missing file: rc %d (%s)", rc, E.msg);
}

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : ".";
  test_round_trip(dir);
  test_malformed();
  test_missing_file();
  return t_finish();
}
