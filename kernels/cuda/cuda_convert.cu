// cuda_convert: dtype conversion kernels. See cuda_convert.h.
// Napkin math: memory-bound; the 16.8 GB bf16 checkpoint converted to fp32 moves 50 GB (≈ 17 ms at 3 TB/s),
// negligible next to the PCIe upload (≈ 0.6 s at 25 GB/s).
#include "cuda_common.cuh"
#include "cuda_convert.h"

// (n) src any of float/bf16/half -> (n) dst float or bf16
template <typename D, typename S> __global__ void convert_kernel(D *dst, const S *src, int64_t n) {
  GRID_STRIDE(i, n) dst[i] = from_f<D>(to_f(src[i]));
}

template <typename D> static void launch(D *dst, const void *src, es_dtype_t src_dt, int64_t n, cudaStream_t s) {
  unsigned g = cuda_grid_1d(n);
  if (src_dt == ES_DT_F32)
    convert_kernel<<<g, 256, 0, s>>>(dst, (const float *)src, n);
  else if (src_dt == ES_DT_BF16)
    convert_kernel<<<g, 256, 0, s>>>(dst, (const bf16 *)src, n);
  else
    convert_kernel<<<g, 256, 0, s>>>(dst, (const __half *)src, n);
}

extern "C" int cuda_convert(void *dst, es_dtype_t dst_dt, const void *src, es_dtype_t src_dt, int64_t n,
                            cudaStream_t stream, es_error_t *err) {
  if (n <= 0) return ES_OK;
  if (dst_dt == ES_DT_F32)
    launch((float *)dst, src, src_dt, n, stream);
  else if (dst_dt == ES_DT_BF16)
    launch((bf16 *)dst, src, src_dt, n, stream);
  else
    return es_fail(err, ES_EINTERNAL, "cuda_convert: destination dtype %s", es_dtype_name(dst_dt));
  ES_CUDA_LAUNCHED(err);
  return ES_OK;
}
