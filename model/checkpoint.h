/* checkpoint: a Qwen2-Audio model directory's weights, as one set of tensors under canonical names.
 *
 * Opens `model.safetensors`, or `model.safetensors.index.json` and every shard it lists (each shard opened
 * and mapped once), read-only, without copying (safetensors.h). Tensor names are accepted in both layouts
 * (SPEC §1.4-1.5) and looked up by their canonical name, the Hub layout:
 *     Hub (canonical)                  new (transformers >= 4.52-style saves)
 *     audio_tower.*                    model.audio_tower.*
 *     multi_modal_projector.*          model.multi_modal_projector.*
 *     language_model.model.*           model.language_model.*
 *     language_model.lm_head.*         lm_head.*
 * Given a config, every tensor the model needs is checked to exist with the shape the config implies, and
 * every tensor it does not need is reported. All problems are collected (for `earshot inspect`), each naming
 * the file and the tensor; a load with any problem fails.
 *
 * Thread safety: a ckpt_t is immutable after ckpt_open; any number of threads may read it and its tensor
 * data. ckpt_close must not race with readers.
 * ref: transformers modeling_utils (shard index format), SPEC §1.4 (names and shapes)
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "es_error.h"
#include "safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ckpt ckpt_t;

typedef struct {
  const char *name;        /* canonical (Hub layout) */
  const char *stored_name; /* as in the file */
  const char *file;        /* path of the file that holds it */
  st_dtype_t dtype;
  int ndim;
  const int64_t *shape; /* ndim entries, C order */
  uint64_t count;       /* elements */
  uint64_t nbytes;
  const void *data; /* into the read-only mapping; valid until ckpt_close; alignment not guaranteed */
} ckpt_tensor_t;

typedef enum {
  CKPT_LAYOUT_HUB,   /* every name in the Hub layout */
  CKPT_LAYOUT_NEW,   /* every name in the new layout */
  CKPT_LAYOUT_MIXED, /* some of each (allowed; each name is mapped on its own) */
  CKPT_LAYOUT_NONE,  /* no recognised name */
} ckpt_layout_t;

/* Flags for ckpt_open. */
enum {
  /* On problems in the tensors (not on a directory that cannot be read at all), still return the handle in
   * *out so the caller can list them; it must then ckpt_close it. */
  CKPT_KEEP_ON_PROBLEMS = 1u,
};

/* Opens the weights in dir. cfg, when given, must have passed cfg_validate; with cfg NULL only the files and
 * the index are checked, not the tensor names and shapes. Returns 0 when nothing is wrong; otherwise the first problem
 * in *err, with the total count, and *out is NULL unless CKPT_KEEP_ON_PROBLEMS kept it. */
int ckpt_open(const char *dir, const model_config_t *cfg, unsigned flags, ckpt_t **out, es_error_t *err);

/* Unmaps and frees; ckpt_close(NULL) is a no-op. */
void ckpt_close(ckpt_t *ck);

/* The tensor with canonical name name (ES_ENOTFOUND, with a message naming the directory, if absent).
 * With tie_word_embeddings, language_model.lm_head.weight falls back to embed_tokens. */
int ckpt_get(const ckpt_t *ck, const char *name, ckpt_tensor_t *out, es_error_t *err);

/* Number of tensors, and the i-th in canonical-name order. */
int ckpt_tensor_count(const ckpt_t *ck);
void ckpt_tensor_at(const ckpt_t *ck, int i, ckpt_tensor_t *out);

/* The files read: the index (NULL for a single file), and the safetensors files that opened. */
const char *ckpt_dir(const ckpt_t *ck);
const char *ckpt_index_path(const ckpt_t *ck);
int ckpt_file_count(const ckpt_t *ck);
const st_file_t *ckpt_file(const ckpt_t *ck, int i);

ckpt_layout_t ckpt_layout(const ckpt_t *ck);
const char *ckpt_layout_name(ckpt_layout_t layout);

/* Problems found at open (file, index, names, shapes), in the order found; each names a file and a tensor. */
int ckpt_problem_count(const ckpt_t *ck);
const char *ckpt_problem(const ckpt_t *ck, int i);

/* Totals over all tensors: elements, bytes, and the tensor count per dtype (indexed by st_dtype_t). */
uint64_t ckpt_param_count(const ckpt_t *ck);
uint64_t ckpt_total_bytes(const ckpt_t *ck);
int ckpt_dtype_count(const ckpt_t *ck, st_dtype_t dtype);

/* Maps a stored name to the canonical one (out, cap). Returns the layout the name is in (HUB or NEW), or
 * CKPT_LAYOUT_NONE when it is in neither (then out is a copy of the name); -1 when it does not fit. */
int ckpt_canonical_name(const char *stored, char *out, size_t cap);

/* Calls fn once per tensor the model described by cfg needs, with its canonical name and shape, in the
 * module order of SPEC §1.4. Returns the number of tensors. With tie_word_embeddings, lm_head is left out. */
int ckpt_expected_tensors(const model_config_t *cfg,
                          void (*fn)(void *ctx, const char *name, int ndim, const int64_t *shape), void *ctx);

#ifdef __cplusplus
}
#endif
