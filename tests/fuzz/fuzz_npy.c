/* fuzz_npy: libFuzzer target for the .npy parser (untrusted: stored features can come from users). */
#include <stddef.h>
#include <stdint.h>

#include "npy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  npy_array_t a;
  es_error_t err;
  if (npy_parse(data, size, "<fuzz>", &a, &err) == 0) {
    /* touch every byte so ASan sees any size mismatch */
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < (size_t)a.count * npy_dtype_size(a.dtype); i++) sink ^= ((const uint8_t *)a.data)[i];
    (void)sink;
    npy_free(&a);
  }
  return 0;
}
