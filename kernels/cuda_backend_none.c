/* cuda_backend_none: es_backend_create_cuda for builds without the CUDA backend (kernels/CMakeLists.txt
 * compiles this file exactly when kernels/cuda/ provides no backend). */
#include "backend.h"

int es_backend_create_cuda(const es_backend_opts_t *opts, es_backend_t **out, es_error_t *err) {
  (void)opts;
  *out = NULL;
  return es_fail(err, ES_EUNSUPPORTED, "the CUDA backend is not compiled into this build of earshot");
}
