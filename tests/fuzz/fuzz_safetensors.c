/* fuzz_safetensors: libFuzzer target for the safetensors header parser (untrusted: --model can name any
 * directory, and a Hub download can be corrupt). The input is a whole file image. */
#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  st_file_t f;
  es_error_t err;
  if (st_parse(data, size, "<fuzz>", &f, &err) == 0) {
    /* touch every claimed byte so ASan sees a tensor reaching past the input */
    volatile uint8_t sink = 0;
    for (int i = 0; i < f.n_tensors; i++) {
      const st_tensor_t *t = &f.tensors[i];
      for (uint64_t j = 0; j < t->nbytes; j++) sink ^= ((const uint8_t *)t->data)[j];
      if (st_find(&f, t->name) != t) __builtin_trap();
    }
    (void)sink;
    st_close(&f);
  }
  return 0;
}
