/* npy: NumPy .npy files (format versions 1.0, 2.0 and 3.0), read and write.
 *
 * Used for the golden fixtures (tests/golden/README.md), `earshot mel --out` and stored features for
 * `earshot run/bench` on a bare GPU machine. Only little-endian, C-order arrays of the dtypes below;
 * anything else is a clear error. The parser treats its input as untrusted (it is fuzzed): it never
 * reads outside the buffer and checks that the data size matches the shape exactly.
 *
 * Thread safety: no shared state.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "es_error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  NPY_F32, /* '<f4' */
  NPY_F64, /* '<f8' */
  NPY_F16, /* '<f2' (raw IEEE half bits) */
  NPY_I16, /* '<i2' */
  NPY_I32, /* '<i4' */
  NPY_I64, /* '<i8' */
  NPY_U8,  /* '|u1' */
} npy_dtype_t;

#define NPY_MAX_DIMS 8

typedef struct {
  npy_dtype_t dtype;
  int ndim;                    /* 0..NPY_MAX_DIMS; 0 is a scalar with one element */
  int64_t shape[NPY_MAX_DIMS]; /* C order */
  int64_t count;               /* product of shape */
  void *data;                  /* count elements, owned (malloc'd), aligned for the dtype */
} npy_array_t;

/* Size in bytes of one element of dtype. */
size_t npy_dtype_size(npy_dtype_t dtype);
const char *npy_dtype_name(npy_dtype_t dtype);

/* Parses a whole .npy image held in memory; copies the data into a new buffer owned by *out.
 * name labels error messages (a path or "<buffer>"). */
int npy_parse(const void *buf, size_t len, const char *name, npy_array_t *out, es_error_t *err);

/* Reads a .npy file (at most max_bytes) into *out. */
int npy_read(const char *path, size_t max_bytes, npy_array_t *out, es_error_t *err);

/* Writes an array as a version 1.0 .npy file. */
int npy_write(const char *path, npy_dtype_t dtype, int ndim, const int64_t *shape, const void *data,
              es_error_t *err);

/* Frees out->data and zeroes *a. NULL and already-freed arrays are no-ops. */
void npy_free(npy_array_t *a);

#ifdef __cplusplus
}
#endif
