/* test_gpu_device: the CUDA build finds the GPU and its compiled code runs there.
 * Skips (exit 77) without CUDA compiled in or without a device. */
#include "es_gpu.h"
#include "test_util.h"

int main(void) {
  es_error_t err;
  es_error_clear(&err);
  if (!es_gpu_compiled()) return t_skip("built without CUDA");
  int count = 0;
  char why[128] = "";
  T_CHECK(es_gpu_count(&count, why, sizeof why, &err) == 0, "device query: %s", err.msg);
  if (count == 0) {
    char reason[200];
    snprintf(reason, sizeof reason, "no GPU here (%s)", why);
    return t_skip(reason);
  }
  for (int i = 0; i < count; i++) {
    es_gpu_info_t info;
    T_CHECK(es_gpu_info(i, &info, &err) == 0, "info %d: %s", i, err.msg);
    printf("GPU %d: %s sm_%d%d, %d SMs, %zu MiB\n", i, info.name, info.cc_major, info.cc_minor, info.sm_count,
           info.mem_total_bytes >> 20);
    T_CHECK(info.mem_total_bytes > 0 && info.sm_count > 0, "device %d reports no memory or SMs", i);
    T_CHECK(es_gpu_selftest(i, &err) == 0, "self-test on %d: %s", i, err.msg);
  }
  T_CHECK(es_gpu_info(count, &(es_gpu_info_t){0}, &err) != 0, "an out-of-range device index is an error");
  return t_finish();
}
