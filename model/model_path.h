/* model_path: what `--model` names -> a model directory.
 *
 * Accepted, in this order: an existing directory (used as it is); a Hugging Face model id `org/name`,
 * looked up in the local hub cache as `<hub>/models--org--name/snapshots/<rev>`, where <hub> is
 * $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub,
 * and <rev> is the commit refs/main names when that snapshot exists, else the newest snapshot by mtime.
 * Nothing is downloaded. A failure lists every place it looked.
 *
 * Thread safety: reads the environment (getenv) and the file system; no shared state of its own.
 * ref: huggingface_hub constants.py (HF_HOME, HF_HUB_CACHE), file_download.py (cache layout)
 */
#pragma once

#include <stddef.h>

#include "es_error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MPATH_MAX 4096

typedef struct {
  char dir[MPATH_MAX];      /* the model directory */
  int from_cache;           /* 1 when resolved through the hub cache */
  char repo_dir[MPATH_MAX]; /* from_cache: <hub>/models--org--name */
  char revision[128];       /* from_cache: the snapshot directory's name */
  int via_ref;              /* from_cache: 1 when refs/main chose it, 0 when the newest mtime did */
} model_path_t;

/* Resolves arg (a directory or an `org/name` id) into *out. */
int mpath_resolve(const char *arg, model_path_t *out, es_error_t *err);

/* The hub cache directory the environment selects (see above), into out. */
int mpath_hub_cache(char *out, size_t cap, es_error_t *err);

#ifdef __cplusplus
}
#endif
