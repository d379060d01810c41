/* gpu_skip: how every GPU test decides to skip (exit 77, ctest's SKIP_RETURN_CODE) when the build has no CUDA
 * or the machine no usable GPU, with the reason printed. Header-only, for tests. */
#pragma once

#include <stdio.h>

#include "es_gpu.h"
#include "test_util.h"

/* 0 when a usable GPU is here; otherwise prints "skipped: <why>" and returns T_SKIP for main to return. */
static inline int t_need_gpu(void) {
  if (!es_gpu_compiled()) return t_skip("built without CUDA");
  int count = 0;
  char why[128] = "";
  es_error_t err;
  es_error_clear(&err);
  if (es_gpu_count(&count, why, sizeof why, &err) != 0 || count == 0) {
    char reason[200];
    snprintf(reason, sizeof reason, "no GPU here (%.150s)", count == 0 && why[0] ? why : err.msg);
    return t_skip(reason);
  }
  return 0;
}
