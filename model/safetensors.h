/* safetensors: one .safetensors file, memory-mapped read-only, its header parsed and checked.
 *
 * Layout: 8-byte little-endian header length N, N bytes of JSON ({name: {dtype, shape, data_offsets:[b, e]}}
 * plus an optional "__metadata__" object of strings), then the data section; offsets are relative to the
 * data section. The header is untrusted input (fuzzed): every check the reference implementation makes is made
 * here (header length within the file and under ST_MAX_HEADER_BYTES, JSON object, known fields with the right
 * types, byte size == dtype size x product of shape with overflow checks, offsets inside the data section,
 * tensors sorted by offset cover the data section exactly with no overlap or gap, no duplicate names), and
 * nothing outside the buffer is ever read. Only the header is touched at open: the data stays in the page
 * cache until a consumer reads it, so opening a 4 GB shard costs what its header costs.
 *
 * Tensor data pointers point into the mapping: valid until st_close, read-only, and only as aligned as the
 * file makes them (8 + N bytes in; writers pad N to 8, but consumers must not rely on it).
 *
 * Thread safety: an st_file_t is immutable after st_open/st_parse; any number of threads may read it.
 * ref: huggingface/safetensors safetensors/src/tensor.rs (Metadata::validate), docs "safetensors format"
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "es_error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The largest header we accept (the reference's limit is 100 MB; the 7B index's tensors need ~60 kB). */
#define ST_MAX_HEADER_BYTES (100u * 1000u * 1000u)
#define ST_MAX_DIMS 8

typedef enum {
  ST_BF16, /* "BF16" */
  ST_F16,  /* "F16" */
  ST_F32,  /* "F32" */
} st_dtype_t;

typedef struct {
  char *name; /* as stored; owned by the st_file_t */
  st_dtype_t dtype;
  int ndim;                   /* 0..ST_MAX_DIMS; 0 is a scalar */
  int64_t shape[ST_MAX_DIMS]; /* C order */
  uint64_t count;             /* product of shape */
  uint64_t offset;            /* byte offset of the data from the start of the data section */
  uint64_t nbytes;            /* count * st_dtype_size(dtype) */
  const void *data;           /* into the buffer / mapping; read-only; alignment not guaranteed */
} st_tensor_t;

typedef struct {
  char *path;           /* label used in messages (the file path for st_open) */
  void *map;            /* the mapping (st_open) or NULL (st_parse: the caller owns the buffer) */
  size_t map_len;       /* file size in bytes */
  uint64_t header_len;  /* N */
  const uint8_t *data;  /* start of the data section */
  uint64_t data_len;    /* bytes in the data section */
  st_tensor_t *tensors; /* n_tensors entries, sorted by name (st_find bisects) */
  int n_tensors;
  int n_metadata; /* entries in __metadata__ */
} st_file_t;

/* Bytes per element of dtype. */
size_t st_dtype_size(st_dtype_t dtype);
/* "BF16", "F16", "F32". */
const char *st_dtype_name(st_dtype_t dtype);

/* Parses a whole file image held in buf (len bytes; buf must stay valid while f is used). name labels
 * messages. On failure f holds nothing and needs no st_close (st_close is still safe). */
int st_parse(const uint8_t *buf, size_t len, const char *name, st_file_t *f, es_error_t *err);

/* Opens and maps path read-only, then st_parse. Never copies the data section. */
int st_open(const char *path, st_file_t *f, es_error_t *err);

/* Unmaps and frees; safe on a zeroed or failed st_file_t, and twice. */
void st_close(st_file_t *f);

/* The tensor called name, or NULL. */
const st_tensor_t *st_find(const st_file_t *f, const char *name);

#ifdef __cplusplus
}
#endif
