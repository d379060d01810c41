/* gpu_none: es_gpu for builds without CUDA. See es_gpu.h. */
#include <stdio.h>

#include "es_gpu.h"

int es_gpu_compiled(void) { return 0; }

const char *es_gpu_architectures(void) { return ""; }

int es_gpu_count(int *count, char *why, size_t why_cap, es_error_t *err) {
  (void)err;
  *count = 0;
  if (why && why_cap) snprintf(why, why_cap, "built without CUDA");
  return ES_OK;
}

int es_gpu_info(int idx, es_gpu_info_t *info, es_error_t *err) {
  (void)info;
  return es_fail(err, ES_EUNSUPPORTED, "GPU %d: earshot was built without CUDA", idx);
}

int es_gpu_selftest(int idx, es_error_t *err) {
  return es_fail(err, ES_EUNSUPPORTED, "GPU %d: earshot was built without CUDA", idx);
}
