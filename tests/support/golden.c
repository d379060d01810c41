/* golden: reads the transformers oracle. See golden.h and tests/golden/README.md. */
#include "golden.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "es_file.h"

#define GOLDEN_MAX_FILE (256u << 20)

int golden_open(golden_t *g, const char *root, es_error_t *err) {
  memset(g, 0, sizeof *g);
  if (snprintf(g->root, sizeof g->root, "%s", root) >= (int)sizeof g->root)
    return es_fail(err, ES_ETOOBIG, "root path too long");
  char path[1200];
  snprintf(path, sizeof path, "%s/tests/golden/fixtures/manifest.json", root);
  char *text;
  size_t len;
  int rc = es_read_file(path, 16u << 20, &text, &len, err);
  if (rc) return rc;
  g->manifest = cJSON_ParseWithLength(text, len);
  free(text);
  if (!g->manifest) return es_fail(err, ES_EINVAL, "%s: not valid JSON", path);
  return ES_OK;
}

void golden_close(golden_t *g) {
  if (!g) return;
  cJSON_Delete(g->manifest);
  g->manifest = NULL;
}

int golden_path(const golden_t *g, const char *rel, char *out, size_t cap, es_error_t *err) {
  return es_path_join(out, cap, g->root, rel, err);
}

int golden_read_npy(const golden_t *g, const char *rel, npy_array_t *out, es_error_t *err) {
  char path[1400];
  int rc = golden_path(g, rel, path, sizeof path, err);
  if (rc) return rc;
  return npy_read(path, GOLDEN_MAX_FILE, out, err);
}

int golden_get_string(const cJSON *obj, const char *key, const char **out, es_error_t *err) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (!cJSON_IsString(v)) return es_fail(err, ES_EINVAL, "manifest: '%s' missing or not a string", key);
  *out = v->valuestring;
  return ES_OK;
}

int golden_get_number(const cJSON *obj, const char *key, double *out, es_error_t *err) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (!cJSON_IsNumber(v)) return es_fail(err, ES_EINVAL, "manifest: '%s' missing or not a number", key);
  *out = v->valuedouble;
  return ES_OK;
}

int golden_get_int(const cJSON *obj, const char *key, int64_t *out, es_error_t *err) {
  double d = 0;
  int rc = golden_get_number(obj, key, &d, err);
  if (rc) return rc;
  if (d != floor(d) || fabs(d) > 9007199254740992.0)
    return es_fail(err, ES_EINVAL, "manifest: '%s' = %g is not an integer", key, d);
  *out = (int64_t)d;
  return ES_OK;
}

int golden_read_samples(const golden_t *g, const cJSON *audio, npy_array_t *out, es_error_t *err) {
  const cJSON *s = cJSON_GetObjectItemCaseSensitive(audio, "samples");
  const char *rel = NULL;
  int64_t count = 0;
  int rc = golden_get_string(s, "npy", &rel, err);
  if (!rc) rc = golden_get_int(s, "count", &count, err);
  if (!rc) rc = golden_read_npy(g, rel, out, err);
  if (rc) return rc;
  const cJSON *scale = cJSON_GetObjectItemCaseSensitive(s, "scale");
  npy_dtype_t want = cJSON_IsNumber(scale) ? NPY_I16 : NPY_F32;
  if (out->dtype != want || out->ndim != 1 || count < 0 || count > out->count) {
    npy_free(out);
    return es_fail(err, ES_EINVAL, "%s: expected %s [>= %lld] samples", rel, npy_dtype_name(want), (long long)count);
  }
  if (want == NPY_I16) {
    /* int16 * scale (2^-15) is exact in float32: the stored form of 16-bit sources */
    float *f = malloc(sizeof(float) * (size_t)(count ? count : 1));
    if (!f) {
      npy_free(out);
      return es_fail(err, ES_ENOMEM, "%s: out of memory", rel);
    }
    const int16_t *q = out->data;
    for (int64_t i = 0; i < count; i++) f[i] = (float)q[i] * (float)scale->valuedouble;
    free(out->data);
    out->data = f;
    out->dtype = NPY_F32;
  }
  out->shape[0] = count;
  out->count = count;
  return ES_OK;
}

int golden_read_mel(const golden_t *g, const cJSON *window, float *out, es_error_t *err) {
  const char *rel = NULL;
  int64_t stored = 0;
  double pad = 0;
  int rc = golden_get_string(window, "mel", &rel, err);
  if (!rc) rc = golden_get_int(window, "stored_frames", &stored, err);
  if (!rc) rc = golden_get_number(window, "pad_value", &pad, err);
  if (rc) return rc;
  npy_array_t a;
  rc = golden_read_npy(g, rel, &a, err);
  if (rc) return rc;
  if (a.dtype != NPY_F32 || a.ndim != 2 || a.shape[0] != GOLDEN_MEL_BINS || a.shape[1] != stored ||
      stored < 0 || stored > GOLDEN_MEL_FRAMES) {
    npy_free(&a);
    return es_fail(err, ES_EINVAL, "%s: expected float32 [128, %lld]", rel, (long long)stored);
  }
  const float *src = a.data;
  for (int b = 0; b < GOLDEN_MEL_BINS; b++) {
    for (int t = 0; t < GOLDEN_MEL_FRAMES; t++)
      out[(size_t)b * GOLDEN_MEL_FRAMES + t] = t < stored ? src[(size_t)b * (size_t)stored + t] : (float)pad;
  }
  npy_free(&a);
  return ES_OK;
}
