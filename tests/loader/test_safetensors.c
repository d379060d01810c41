/* test_safetensors: the header parser on valid files and on every corruption kind it must refuse.
 * File images are built here from header text, so each case states exactly what is on disk.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "es_file.h"
#include "safetensors.h"
#include "test_util.h"

/* 8-byte little-endian header length (header_len_override when not UINT64_MAX), the header, data_len bytes
 * of data (byte i = i & 0xff). */
static uint8_t *image(const char *header, size_t data_len, uint64_t header_len_override, size_t *len) {
  size_t n = strlen(header);
  *len = 8 + n + data_len;
  uint8_t *b = malloc(*len);
  uint64_t hl = header_len_override != UINT64_MAX ? header_len_override : n;
  for (int i = 0; i < 8; i++) b[i] = (uint8_t)(hl >> (8 * i));
  memcpy(b + 8, header, n);
  for (size_t i = 0; i < data_len; i++) b[8 + n + i] = (uint8_t)i;
  return b;
}

static const char *GOOD = "{\"__metadata__\": {\"format\": \"pt\"},"
                          " \"b.weight\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [12, 28]},"
                          " \"a.weight\": {\"dtype\": \"BF16\", \"shape\": [2, 3], \"data_offsets\": [0, 12]},"
                          " \"c.empty\": {\"dtype\": \"F16\", \"shape\": [0, 5], \"data_offsets\": [28, 28]},"
                          " \"d.scalar\": {\"dtype\": \"F16\", \"shape\": [], \"data_offsets\": [28, 30]}}   ";

static void test_good(void) {
  size_t len;
  uint8_t *b = image(GOOD, 30, UINT64_MAX, &len);
  st_file_t f;
  es_error_t err;
  es_error_clear(&err);
  T_REQUIRE(st_parse(b, len, "good.safetensors", &f, &err) == 0, "%s", err.msg);
  T_CHECK(f.n_tensors == 4 && f.n_metadata == 1, "%d tensors, %d metadata", f.n_tensors, f.n_metadata);
  T_CHECK(f.data_len == 30 && f.header_len == strlen(GOOD), "sections");
  const st_tensor_t *a = st_find(&f, "a.weight"), *bw = st_find(&f, "b.weight"), *s = st_find(&f, "d.scalar");
  T_REQUIRE(a && bw && s && st_find(&f, "c.empty") && !st_find(&f, "nope"), "lookups");
  T_CHECK(a->dtype == ST_BF16 && a->ndim == 2 && a->shape[0] == 2 && a->shape[1] == 3 && a->nbytes == 12, "a");
  T_CHECK(bw->dtype == ST_F32 && bw->count == 4 && bw->offset == 12, "b");
  T_CHECK(s->ndim == 0 && s->count == 1 && s->nbytes == 2, "scalar");
  size_t data0 = 8 + strlen(GOOD);
  T_CHECK((const uint8_t *)bw->data == b + data0 + 12 && ((const uint8_t *)bw->data)[0] == 12, "data pointer");
  st_close(&f);
  st_close(&f); /* twice is safe */
  free(b);
}

static void expect_fail(const char *label, const char *header, size_t data_len, uint64_t hl, int code,
                        const char *needle) {
  size_t len;
  uint8_t *b = image(header, data_len, hl, &len);
  st_file_t f;
  es_error_t err;
  es_error_clear(&err);
  int rc = st_parse(b, len, label, &f, &err);
  T_CHECK(rc == code, "%s: expected %s, got %d (%s)", label, es_error_code_name(code), rc, err.msg);
  T_CHECK(strstr(err.msg, label) != NULL, "%s: message '%s' must name the file", label, err.msg);
  T_CHECK(strstr(err.msg, needle) != NULL, "%s: message '%s' should say '%s'", label, err.msg, needle);
  T_CHECK(f.tensors == NULL && f.path == NULL, "%s: nothing held after failure", label);
  if (rc == 0) st_close(&f);
  free(b);
}

#define ONE(dtype, shape, offs) "{\"w\": {\"dtype\": " dtype ", \"shape\": " shape ", \"data_offsets\": " offs "}}"

static void test_corrupt(void) {
  const uint64_t H = UINT64_MAX;
  expect_fail("hl-past-end.st", ONE("\"F32\"", "[2]", "[0, 8]"), 8, 4096, ES_EINVAL, "runs past the end");
  expect_fail("hl-huge.st", ONE("\"F32\"", "[2]", "[0, 8]"), 8, 1ull << 40, ES_ETOOBIG, "limit");
  expect_fail("hl-zero.st", "", 8, H, ES_EINVAL, "too small");
  expect_fail("bad-json.st", "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]", 8, H, ES_EINVAL,
              "not a valid JSON");
  expect_fail("array.st", "[1, 2, 3]", 0, H, ES_EINVAL, "does not start with '{'");
  expect_fail("trailing.st", "{}xyz", 0, H, ES_EINVAL, "after the header JSON");
  expect_fail("dtype.st", ONE("\"I64\"", "[2]", "[0, 16]"), 16, H, ES_EUNSUPPORTED, "unsupported dtype \"I64\"");
  expect_fail("dtype-num.st", ONE("7", "[2]", "[0, 16]"), 16, H, ES_EINVAL, "'w': no \"dtype\"");
  expect_fail("size.st", ONE("\"BF16\"", "[2, 3]", "[0, 10]"), 10, H, ES_EINVAL, "needs 12");
  expect_fail("oob.st", ONE("\"F32\"", "[3]", "[0, 12]"), 8, H, ES_EINVAL, "run past the data section");
  expect_fail("reversed.st", ONE("\"F32\"", "[0]", "[8, 0]"), 8, H, ES_EINVAL, "end before they begin");
  expect_fail("neg-shape.st", ONE("\"F32\"", "[-2]", "[0, 8]"), 8, H, ES_EINVAL, "shape[0]");
  expect_fail("frac-shape.st", ONE("\"F32\"", "[2, 1.5]", "[0, 12]"), 12, H, ES_EINVAL, "shape[1]");
  expect_fail("overflow.st", ONE("\"F32\"", "[4294967296, 4294967296]", "[0, 8]"), 8, H, ES_EINVAL, "overflows");
  expect_fail("dims.st", ONE("\"F32\"", "[1,1,1,1,1,1,1,1,1]", "[0, 4]"), 4, H, ES_EUNSUPPORTED, "dimensions");
  expect_fail("offs.st", ONE("\"F32\"", "[2]", "[0]"), 8, H, ES_EINVAL, "data_offsets");
  expect_fail("offs-big.st", ONE("\"F32\"", "[2]", "[0, 1e300]"), 8, H, ES_EINVAL, "data_offsets");
  expect_fail("no-shape.st", "{\"w\": {\"dtype\": \"F32\", \"data_offsets\": [0, 8]}}", 8, H, ES_EINVAL, "\"shape\"");
  expect_fail("entry.st", "{\"w\": 5}", 0, H, ES_EINVAL, "not an object");
  expect_fail("empty-name.st", "{\"\": {\"dtype\": \"F32\", \"shape\": [], \"data_offsets\": [0, 4]}}", 4, H, ES_EINVAL,
              "empty name");
  expect_fail("meta.st", "{\"__metadata__\": {\"a\": 1}}", 0, H, ES_EINVAL, "__metadata__");
  expect_fail("overlap.st",
              "{\"a\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 12]},"
              " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}}",
              16, H, ES_EINVAL, "'b' [8, 16) overlaps tensor 'a'");
  expect_fail("gap.st",
              "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
              " \"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 12]}}",
              12, H, ES_EINVAL, "gap");
  expect_fail("extra-data.st", ONE("\"F32\"", "[1]", "[0, 4]"), 8, H, ES_EINVAL,
              "cover 4 bytes but the data section has 8");
  expect_fail("duplicate.st",
              "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
              " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
              8, H, ES_EINVAL, "appears twice");

  /* shorter than the length prefix */
  st_file_t f;
  es_error_t err;
  uint8_t tiny[5] = {1, 0, 0, 0, 0};
  T_CHECK(st_parse(tiny, sizeof tiny, "tiny.st", &f, &err) == ES_EINVAL && strstr(err.msg, "too short"), "%s", err.msg);
}

/* st_open: maps a real file; a truncated copy, an empty file and a missing one are refused by name. */
static void test_files(const char *tmp) {
  char path[1024], trunc[1024], empty[1024], missing[1024];
  snprintf(path, sizeof path, "%s/st-good.safetensors", tmp);
  snprintf(trunc, sizeof trunc, "%s/st-truncated.safetensors", tmp);
  snprintf(empty, sizeof empty, "%s/st-empty.safetensors", tmp);
  snprintf(missing, sizeof missing, "%s/st-missing.safetensors", tmp);
  remove(missing);
  size_t len;
  uint8_t *b = image(GOOD, 30, UINT64_MAX, &len);
  es_error_t err;
  es_error_clear(&err);
  T_REQUIRE(es_write_file(path, b, len, &err) == 0, "%s", err.msg);
  T_REQUIRE(es_write_file(trunc, b, len - 5, &err) == 0, "%s", err.msg);
  T_REQUIRE(es_write_file(empty, b, 0, &err) == 0, "%s", err.msg);
  free(b);

  st_file_t f;
  T_REQUIRE(st_open(path, &f, &err) == 0, "%s", err.msg);
  const st_tensor_t *a = st_find(&f, "a.weight");
  T_CHECK(a && f.map && ((const uint8_t *)a->data)[5] == 5, "mapped data");
  st_close(&f);
  T_CHECK(f.map == NULL, "closed");

  T_CHECK(st_open(trunc, &f, &err) == ES_EINVAL && strstr(err.msg, trunc) && strstr(err.msg, "truncated"), "%s",
          err.msg);
  T_CHECK(st_open(empty, &f, &err) == ES_EINVAL && strstr(err.msg, empty), "%s", err.msg);
  T_CHECK(st_open(missing, &f, &err) == ES_ENOTFOUND && strstr(err.msg, missing), "%s", err.msg);
  T_CHECK(st_open(tmp, &f, &err) == ES_EIO, "a directory: %s", err.msg);
}

int main(int argc, char **argv) {
  test_good();
  test_corrupt();
  if (argc < 2) {
    fprintf(stderr, "usage: test_safetensors SCRATCH_DIR\n");
    return 2;
  }
  test_files(argv[1]);
  return t_finish();
}
