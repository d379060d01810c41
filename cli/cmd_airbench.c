/* cmd_airbench: `earshot airbench run|score` — AIR-Bench batch evaluation in the official data layout and
 * output format, resumable, scored.
 *
 *   run    answers every selected item of the Foundation and/or Chat track (eval/airbench_items.h) through
 *          the engine, many at once (continuous batching), greedy as Qwen's own AIR-Bench run (max 256 new
 *          tokens, at least 1; the checkpoint's repetition penalty applies, as transformers' generate() applies
 *          it with do_sample=False). Each finished answer is appended to the track's result file
 *          (eval/airbench_results.h) at once, so a run stopped at any point — Ctrl-C, a crash, a lost machine —
 *          is resumed by running the same command again: finished items are skipped, items whose run failed
 *          are retried, items that failed on their own input (undecodable audio) are kept unless
 *          --retry-input-errors. Items whose audio is missing are listed and skipped (the official scripts skip
 *          them too). A file written with other settings is never resumed (airbench_results.h).
 *          A manifest (what ran, how, counts, throughput) is written beside each result file; the Foundation
 *          track is scored at the end.
 *   score  Foundation accuracy from a result file (the official parse rule), or the Chat scores from the
 *          judge outputs of both orders (eval/airbench_score.h). earshot calls no judge itself.
 *
 * Threads: the main thread decodes audio, submits and writes the result files; the engine thread calls
 * on_event, which only copies text and hands finished items back under the run's mutex.
 * Exit codes: 0 success (items that fail on their own input — undecodable or too short audio — are recorded with
 * their error and do not count), 1 failure or items whose run failed (a rerun retries them), 2 usage,
 * 130 interrupted.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "airbench_items.h"
#include "airbench_results.h"
#include "airbench_score.h"
#include "audio_decode.h"
#include "es_build_info.h"
#include "es_clock.h"
#include "es_file.h"
#include "model_flags.h"
#include "runtime.h"

int cmd_airbench(int argc, char **argv);

#define AB_MAX_TOKENS_DEFAULT 256 /* Qwen's evaluate_chat.py: max_new_tokens=256, min_new_tokens=1 */
#define AB_MAX_WINDOWS 64
#define AB_MAX_LISTED_MISSING 20

static void usage(FILE *out) {
  fprintf(out, "usage: earshot airbench run --data ROOT --model DIR|ORG/NAME [options]\n"
               "       earshot airbench score --results FILE [--json]\n"
               "       earshot airbench score --judge FILE [--judge-swapped FILE] [--json]\n"
               "\n"
               "run: answers AIR-Bench items from the official layout (ROOT/Foundation/Foundation_meta.json,\n"
               "ROOT/Chat/Chat_meta.json and the audio folders) into <Track>_result_<model>.jsonl files that the\n"
               "official scorers read. Run the same command again to resume: finished items are skipped.\n"
               "  --data ROOT              the AIR-Bench-Dataset folder\n"
               "  --track foundation|chat|all   which track (default all: every track whose meta file exists)\n"
               "  --out DIR                where the result files and manifests go (default .)\n"
               "  --model-name NAME        the name in the result file names (default: the model folder's name)\n"
               "  --task T[,T...]  --dataset D[,D...]   only items with these task_name / dataset_name values\n"
               "  --shard I/N              the I-th of N contiguous slices (0 <= I < N), for several processes;\n"
               "                           its result file is named ..._shard<I>of<N>.jsonl\n"
               "  --limit N                at most N items (after the filters and the shard)\n"
               "  --max-tokens N           new tokens per answer (default 256)\n"
               "  --prompt-format chat|raw chat template with the default system prompt (default) or the base\n"
               "                           model's raw form\n"
               "  --system TEXT            a system prompt instead of the template's default\n"
               "  --concurrency N          items in flight at once (default: the engine's batch + 4)\n"
               "  --no-score               do not score the Foundation track at the end\n"
               "  --retry-input-errors     rerun items that failed on their own input before (undecodable or too\n"
               "                           short audio, a prompt over the context); by default a rerun keeps them\n"
               "score: --results FILE scores a Foundation result file (official rule, per subset / task / category);\n"
               "  --judge FILE (Assistant 1 = reference) and --judge-swapped FILE (Assistant 1 = the model) are the\n"
               "  judge outputs of AIR-Bench's score_chat.py (\"gen\") or cal_score.py's input (\"gpt-score\").\n");
  mf_usage(out, MF_OPEN | MF_SIZING);
}

/* ---- one run over one track ---- */

typedef struct slot slot_t;
struct slot {
  int busy;
  const cJSON *item;
  double audio_seconds;
  tok_text_t text;
  int oom;
  eng_finish_t finish;
  eng_usage_t usage;
  char error[ES_ERROR_MSG_MAX];
  int input_error;   /* failed before the engine, on the item's own input (not retried by a rerun) */
  slot_t *next_done; /* the finished list (run_t.done_head), under run_t.mu */
};

typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  slot_t *done_head; /* finished, not yet written (engine thread pushes, main thread pops) */
} run_sync_t;

typedef struct {
  run_sync_t *sync;
  slot_t *slot;
} slot_ctx_t;

static volatile sig_atomic_t g_interrupted;

static void on_signal(int sig) {
  (void)sig;
  g_interrupted = 1;
}

static void on_event(void *ctx, const eng_event_t *ev) {
  slot_ctx_t *c = ctx;
  slot_t *s = c->slot;
  es_error_t err;
  if (ev->text_len && tok_text_append(&s->text, ev->text, ev->text_len, &err)) s->oom = 1;
  if (ev->finish == ENG_FINISH_NONE) return;
  pthread_mutex_lock(&c->sync->mu);
  s->finish = ev->finish;
  s->usage = ev->usage;
  if (ev->error) snprintf(s->error, sizeof s->error, "%s", ev->error);
  s->next_done = c->sync->done_head;
  c->sync->done_head = s;
  pthread_cond_signal(&c->sync->cv);
  pthread_mutex_unlock(&c->sync->mu);
}

typedef struct {
  const char *data_root, *system;
  int raw, max_tokens, concurrency, score, retry_input_errors;
  ab_select_t sel;
  char settings[17]; /* ab_settings_fingerprint of this run */
} run_opts_t;

typedef struct {
  size_t selected, done_before, input_failed_before, to_run, missing, ran, ok, failed, failed_input, unwritten;
  double audio_seconds, wall_s;
  int interrupted;
  cJSON *missing_list; /* the first AB_MAX_LISTED_MISSING missing audio paths */
} run_counts_t;

/* The expanded prompt of one item: question after the audio, in the chat template or the raw form. */
static int build_prompt(rt_t *rt, const run_opts_t *o, ab_track_t track, const cJSON *item, size_t n_samples,
                        tok_ids_t *ids, es_error_t *err) {
  char *question = NULL;
  tok_text_t text = {0};
  int rc = ab_item_question(track, item, &question, err);
  if (rc) return rc;
  if (o->raw) {
    rc = prompt_render_raw(1, question, &text, err);
  } else {
    prompt_part_t parts[2] = {{.type = PROMPT_PART_AUDIO}, {.type = PROMPT_PART_TEXT, .text = question}};
    prompt_message_t msgs[2];
    size_t nm = 0;
    if (o->system) msgs[nm++] = (prompt_message_t){.role = "system", .content = o->system};
    msgs[nm++] = (prompt_message_t){.role = "user", .parts = parts, .n_parts = 2};
    rc = prompt_render_chat(msgs, nm, 1, &text, NULL, err);
  }
  audio_window_t w[AB_MAX_WINDOWS];
  size_t nw = 0;
  int32_t window_tokens[AB_MAX_WINDOWS];
  if (!rc) rc = audio_windows(n_samples, AUDIO_LONG_TRUNCATE, w, AB_MAX_WINDOWS, &nw, err);
  for (size_t j = 0; !rc && j < nw; j++) window_tokens[j] = w[j].audio_tokens;
  prompt_audio_t pa = {.window_tokens = window_tokens, .n_windows = nw};
  if (!rc) rc = prompt_encode(rt->tok, &rt->special, text.data, text.len, &pa, 1, ids, err);
  free(question);
  tok_text_free(&text);
  return rc;
}

/* Writes one finished slot's line (unless an earlier write failed: then the answer is counted as unwritten) and
 * frees the slot. Returns the append's status. */
static int write_slot(const run_opts_t *o, ab_results_t *res, ab_track_t track, slot_t *s, run_counts_t *c,
                      es_error_t *err) {
  const char *error = NULL;
  if (s->finish == ENG_FINISH_ERROR || s->finish == ENG_FINISH_CANCELLED)
    error = s->error[0] ? s->error : eng_finish_name(s->finish);
  else if (s->oom)
    error = "out of memory collecting the answer";
  ab_outcome_t oc = {.response = error ? "" : s->text.data,
                     .error = error,
                     .input_error = s->input_error,
                     .settings = o->settings,
                     .finish_reason = s->finish == ENG_FINISH_NONE ? NULL : eng_finish_name(s->finish),
                     .n_prompt_tokens = s->usage.prompt_tokens,
                     .n_audio_tokens = s->usage.audio_tokens,
                     .n_gen_tokens = s->usage.completion_tokens,
                     .audio_seconds = s->audio_seconds,
                     .latency_s = error ? NAN : s->usage.total_s,
                     .first_token_s = error ? NAN : s->usage.first_token_s};
  int rc = ES_OK;
  c->ran++;
  c->audio_seconds += s->audio_seconds;
  int written = 0;
  if (res->broken) {
    c->unwritten++;
  } else {
    char *line = ab_result_line(track, s->item, &oc);
    rc = line ? ab_results_append(res, line, err) : es_fail(err, ES_ENOMEM, "out of memory for a result line");
    cJSON_free(line);
    if (rc) c->unwritten++;
    written = !rc;
  }
  /* ok / failed / failed_input count lines that are in the file (the manifest's done_in_file adds them up) */
  if (error && written && s->input_error) c->failed_input++;
  if (error && written && !s->input_error) c->failed++;
  if (!error && written) c->ok++;
  if (error)
    fprintf(stderr, "earshot airbench: %s uniq_id %lld: %s%s\n", ab_track_name(track),
            (long long)ab_item_uniq_id(s->item), error, s->input_error ? " (the item's input; not retried)" : "");
  tok_text_free(&s->text);
  memset(s, 0, sizeof *s);
  return rc;
}

/* Writes every finished slot; *popped = how many slots were freed. Returns the first write error. */
static int drain(const run_opts_t *o, run_sync_t *sy, ab_results_t *res, ab_track_t track, run_counts_t *c, int *popped,
                 es_error_t *err) {
  pthread_mutex_lock(&sy->mu);
  slot_t *list = sy->done_head;
  sy->done_head = NULL;
  pthread_mutex_unlock(&sy->mu);
  int rc = ES_OK;
  *popped = 0;
  while (list) {
    slot_t *next = list->next_done;
    es_error_t werr;
    int r = write_slot(o, res, track, list, c, &werr);
    if (r && !rc) {
      rc = r;
      *err = werr;
    }
    list = next;
    (*popped)++;
  }
  return rc;
}

/* After the first failed write: say so once and stop submitting; what is in flight finishes unwritten. */
static void stop_on_write_error(ab_track_t track, const es_error_t *werr, int in_flight, size_t *next, size_t n_todo) {
  fprintf(stderr,
          "earshot airbench: %s: %s\nearshot airbench: stopping: no new items; the %d in flight finish unwritten "
          "(a rerun redoes them)\n",
          ab_track_name(track), werr->msg, in_flight);
  *next = n_todo;
}

/* final: 0 while running, 1 at the end, 2 at the end of an interrupted run. */
static void progress(ab_track_t track, const run_counts_t *c, double t0, int final) {
  double dt = es_now_s() - t0;
  fprintf(stderr, "earshot airbench: %s: %zu of %zu answered (%zu failed), %.2f items/s%s\n", ab_track_name(track),
          c->ran, c->to_run, c->failed, dt > 0 ? (double)c->ran / dt : 0.0,
          final == 2 ? ", stopped"
          : final    ? ", done"
                     : "");
}

static int run_track(rt_t *rt, const run_opts_t *o, const ab_meta_t *m, ab_results_t *res, run_counts_t *c,
                     es_error_t *err) {
  ab_track_t track = m->track;
  int cap = o->concurrency;
  slot_t *slots = calloc((size_t)cap, sizeof *slots);
  slot_ctx_t *ctxs = calloc((size_t)cap, sizeof *ctxs);
  const cJSON **todo = malloc((m->n_items + 1) * sizeof *todo);
  run_sync_t sy = {.done_head = NULL};
  pthread_mutex_init(&sy.mu, NULL);
  pthread_cond_init(&sy.cv, NULL);
  int rc = ES_OK;
  if (!slots || !ctxs || !todo) {
    rc = es_fail(err, ES_ENOMEM, "out of memory for %d slots", cap);
    goto out;
  }
  /* what is left to do, and whose audio is there */
  size_t n_todo = 0;
  char path[4096];
  for (size_t i = 0; i < m->n_items; i++) {
    const cJSON *it = m->items[i];
    if (ab_results_done(res, ab_item_uniq_id(it))) {
      c->done_before++;
      continue;
    }
    if ((rc = ab_item_audio_path(o->data_root, track, it, path, sizeof path, err))) goto out;
    if (!es_path_exists(path)) {
      if (c->missing++ < AB_MAX_LISTED_MISSING) {
        cJSON *p = cJSON_CreateString(path);
        if (!p || !cJSON_AddItemToArray(c->missing_list, p)) {
          cJSON_Delete(p);
          rc = es_fail(err, ES_ENOMEM, "out of memory listing missing audio");
          goto out;
        }
      }
      continue;
    }
    todo[n_todo++] = it;
  }
  c->to_run = n_todo;
  c->input_failed_before = res->n_input_failed;
  fprintf(stderr, "earshot airbench: %s: %zu items selected, %zu done before, %zu missing audio, %zu to run\n",
          ab_track_name(track), c->selected, c->done_before, c->missing, n_todo);
  if (res->n_input_failed)
    fprintf(stderr,
            "earshot airbench: %s: %zu items of the file failed on their input before and are not retried "
            "(--retry-input-errors retries them)\n",
            ab_track_name(track), res->n_input_failed);

  double t0 = es_now_s(), last_report = t0;
  size_t next = 0;
  int in_flight = 0;
  audio_decode_opts_t dopts;
  audio_decode_opts_default(&dopts);
  while (next < n_todo || in_flight > 0) {
    int popped = 0;
    es_error_t werr;
    int d = drain(o, &sy, res, track, c, &popped, &werr);
    in_flight -= popped;
    if (d && !rc) { /* the result file cannot be written: stop submitting, let the rest finish unwritten */
      rc = d;
      *err = werr;
      stop_on_write_error(track, &werr, in_flight, &next, n_todo);
    }
    if (g_interrupted && next < n_todo) {
      fprintf(stderr,
              "earshot airbench: interrupted: finishing the %d answers in flight (Ctrl-C again to "
              "quit now; a rerun resumes)\n",
              in_flight);
      c->interrupted = 1;
      next = n_todo;
    }
    if (es_now_s() - last_report > 10.0) {
      progress(track, c, t0, 0);
      last_report = es_now_s();
    }
    if (next < n_todo && in_flight < cap) {
      int k = 0;
      while (slots[k].busy) k++;
      slot_t *s = &slots[k];
      const cJSON *it = todo[next];
      es_error_t ierr;
      es_error_clear(&ierr);
      audio_pcm_t pcm = {0};
      tok_ids_t ids = {0};
      s->busy = 1;
      s->item = it;
      /* input = the failure is the item's own (its audio cannot be decoded or is too short, its prompt does not
       * fit): recorded, not retried; anything else (a read error, the tokenizer, the engine) is the run's */
      int input = 0;
      int irc = ab_item_audio_path(o->data_root, track, it, path, sizeof path, &ierr);
      if (!irc) {
        irc = audio_decode_file(path, &dopts, &pcm, &ierr); /* ES_EIO / ES_ENOTFOUND: reading, not the audio */
        input = irc == ES_EINVAL || irc == ES_EUNSUPPORTED || irc == ES_ETOOBIG;
      }
      if (!irc) s->audio_seconds = (double)pcm.n / 16000.0;
      if (!irc && eng_audio_tokens(pcm.n, AUDIO_LONG_TRUNCATE) < 1) {
        irc = es_fail(&ierr, ES_EINVAL, "%s: %zu samples (%.1f ms) give no audio token", path, pcm.n,
                      (double)pcm.n / 16.0);
        input = 1;
      }
      if (!irc) irc = build_prompt(rt, o, track, it, pcm.n, &ids, &ierr);
      eng_request_t req;
      memset(&req, 0, sizeof req);
      if (!irc) {
        req.prompt_ids = ids.ids;
        req.n_prompt = ids.n;
        req.audios[0] = (eng_audio_t){.samples = pcm.samples, .n_samples = pcm.n};
        req.n_audios = 1;
        req.long_audio = AUDIO_LONG_TRUNCATE;
        rt_default_sampling(rt, &req.sampling);
        req.sampling.temperature = 0.0; /* greedy (do_sample=False); the repetition penalty stays */
        req.sampling.top_k = 0;
        req.sampling.top_p = 1.0;
        req.sampling.max_tokens = o->max_tokens;
        if (req.sampling.max_tokens > rt->max_model_len - (int)ids.n)
          req.sampling.max_tokens = rt->max_model_len - (int)ids.n;
        req.sampling.min_tokens = 1;
        if (req.sampling.max_tokens < 1) {
          irc = es_fail(&ierr, ES_ETOOBIG, "the prompt (%zu tokens) fills the context (%d)", ids.n, rt->max_model_len);
          input = 1;
        }
      }
      if (!irc) {
        req.skip_special = 1;
        ctxs[k] = (slot_ctx_t){.sync = &sy, .slot = s};
        req.callback = on_event;
        req.callback_ctx = &ctxs[k];
        uint64_t id;
        irc = eng_submit(rt->engine, &req, &id, &ierr);
        if (irc == ES_ETOOBIG && strstr(ierr.msg, "queue")) { /* full queue: try again when something finishes */
          audio_pcm_free(&pcm);
          tok_ids_free(&ids);
          memset(s, 0, sizeof *s);
          if (in_flight == 0) {
            rc = es_fail(err, ES_EINTERNAL, "the engine refuses work with nothing in flight: %s", ierr.msg);
            break;
          }
          goto wait;
        }
        if (!irc) pcm.samples = NULL; /* the engine owns them now */
        input = irc == ES_ETOOBIG;    /* over a limit of this configuration (context, KV cache, audio tokens) */
      }
      audio_pcm_free(&pcm);
      tok_ids_free(&ids);
      next++;
      if (irc) { /* this item failed before it reached the engine: its line says why */
        s->finish = ENG_FINISH_ERROR;
        s->input_error = input;
        snprintf(s->error, sizeof s->error, "%s", ierr.msg);
        int w = write_slot(o, res, track, s, c, &werr);
        if (w && !rc) {
          rc = w;
          *err = werr;
          stop_on_write_error(track, &werr, in_flight, &next, n_todo);
        }
      } else {
        in_flight++;
      }
      continue;
    }
  wait:
    pthread_mutex_lock(&sy.mu);
    if (!sy.done_head) { /* a timed wait: a Ctrl-C is noticed within 200 ms */
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      ts.tv_nsec += 200 * 1000 * 1000;
      if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
      }
      pthread_cond_timedwait(&sy.cv, &sy.mu, &ts);
    }
    pthread_mutex_unlock(&sy.mu);
  }
  c->wall_s = es_now_s() - t0;
  progress(track, c, t0, c->interrupted || rc ? 2 : 1);
out:
  if (slots)
    for (int k = 0; k < cap; k++) tok_text_free(&slots[k].text);
  free(slots);
  free(ctxs);
  free(todo);
  pthread_mutex_destroy(&sy.mu);
  pthread_cond_destroy(&sy.cv);
  return rc;
}

/* ---- the manifest beside a result file ---- */

static int write_manifest(const char *result_path, const rt_t *rt, const rt_opts_t *ro, const run_opts_t *o,
                          const ab_meta_t *m, const char *model_name, const run_counts_t *c, const ab_results_t *res,
                          const char *started, es_error_t *err) {
  char path[4200];
  size_t n = strlen(result_path);
  if (n > 6 && !strcmp(result_path + n - 6, ".jsonl")) n -= 6;
  snprintf(path, sizeof path, "%.*s.manifest.json", (int)n, result_path);
  cJSON *j = cJSON_CreateObject();
  cJSON_AddStringToObject(j, "tool", "earshot airbench run");
  cJSON_AddStringToObject(j, "earshot_version", ES_VERSION);
  cJSON_AddStringToObject(j, "earshot_git", ES_GIT_DESCRIBE);
  cJSON_AddStringToObject(j, "track", ab_track_name(m->track));
  cJSON_AddStringToObject(j, "result_file", result_path);
  cJSON *mo = cJSON_AddObjectToObject(j, "model");
  cJSON_AddStringToObject(mo, "name", model_name);
  cJSON_AddStringToObject(mo, "dir", rt->dir);
  cJSON_AddBoolToObject(mo, "dummy_weights", ro->dummy_weights);
  cJSON_AddStringToObject(mo, "device", rt->device_desc);
  cJSON_AddStringToObject(mo, "quantization", rt_quantization_name(rt->quantization));
  cJSON_AddStringToObject(mo, "kv_cache_dtype", rt->kv_fp8 ? "fp8" : "auto");
  cJSON_AddBoolToObject(mo, "deterministic", ro->deterministic);
  cJSON_AddStringToObject(j, "settings", o->settings);
  cJSON *pr = cJSON_AddObjectToObject(j, "prompt");
  cJSON_AddStringToObject(pr, "format", o->raw ? "raw" : "chat");
  if (o->system)
    cJSON_AddStringToObject(pr, "system", o->system);
  else if (!o->raw)
    cJSON_AddStringToObject(pr, "system", "(the chat template's default)");
  cJSON_AddStringToObject(pr, "user_turn",
                          m->track == AB_FOUNDATION ? "the audio, then the official AIR-Bench instruction with the "
                                                      "question and options A-D (absent options as \"None\")"
                                                    : "the audio, then the question");
  cJSON_AddStringToObject(pr, "long_audio", "truncate to the first 30 s (as the Whisper feature extractor)");
  smp_params_t sp;
  rt_default_sampling(rt, &sp);
  cJSON *de = cJSON_AddObjectToObject(j, "decoding");
  cJSON_AddStringToObject(de, "mode", "greedy");
  cJSON_AddNumberToObject(de, "max_new_tokens", o->max_tokens);
  cJSON_AddNumberToObject(de, "min_new_tokens", 1);
  cJSON_AddNumberToObject(de, "repetition_penalty", sp.repetition_penalty);
  cJSON *da = cJSON_AddObjectToObject(j, "data");
  cJSON_AddStringToObject(da, "root", o->data_root);
  cJSON_AddStringToObject(da, "meta_file", m->meta_path);
  char fnv[32];
  snprintf(fnv, sizeof fnv, "%016llx", (unsigned long long)m->meta_fnv1a);
  cJSON_AddStringToObject(da, "meta_fnv1a64", fnv);
  cJSON_AddNumberToObject(da, "items_in_meta", (double)m->n_total);
  if (o->sel.tasks) cJSON_AddStringToObject(da, "tasks", o->sel.tasks);
  if (o->sel.datasets) cJSON_AddStringToObject(da, "datasets", o->sel.datasets);
  if (o->sel.shard_count > 1) {
    char sh[64];
    snprintf(sh, sizeof sh, "%d/%d", o->sel.shard_index, o->sel.shard_count);
    cJSON_AddStringToObject(da, "shard", sh);
  }
  if (o->sel.limit > 0) cJSON_AddNumberToObject(da, "limit", (double)o->sel.limit);
  cJSON *co = cJSON_AddObjectToObject(j, "counts");
  cJSON_AddNumberToObject(co, "selected", (double)c->selected);
  cJSON_AddNumberToObject(co, "done_before_this_run", (double)c->done_before);
  cJSON_AddNumberToObject(co, "missing_audio", (double)c->missing);
  cJSON_AddNumberToObject(co, "ran", (double)c->ran);
  cJSON_AddNumberToObject(co, "answered", (double)c->ok);
  cJSON_AddNumberToObject(co, "failed_run", (double)c->failed);
  cJSON_AddNumberToObject(co, "failed_input", (double)c->failed_input);
  cJSON_AddNumberToObject(co, "failed_input_before_not_retried", (double)c->input_failed_before);
  cJSON_AddNumberToObject(co, "unwritten", (double)c->unwritten);
  /* ids done in the whole file (other selections included): those found at the start plus this run's answers */
  cJSON_AddNumberToObject(co, "done_in_file",
                          (double)(res->n_done + c->ok + (o->retry_input_errors ? 0 : c->failed_input)));
  cJSON_AddItemToObject(j, "missing_audio_first", cJSON_Duplicate(c->missing_list, 1));
  cJSON *ru = cJSON_AddObjectToObject(j, "run");
  cJSON_AddStringToObject(ru, "started_utc", started);
  cJSON_AddNumberToObject(ru, "wall_s", round(c->wall_s * 1000) / 1000);
  cJSON_AddNumberToObject(ru, "items_per_s", c->wall_s > 0 ? round(c->ran / c->wall_s * 1000) / 1000 : 0);
  cJSON_AddNumberToObject(ru, "audio_seconds_per_s",
                          c->wall_s > 0 ? round(c->audio_seconds / c->wall_s * 1000) / 1000 : 0);
  cJSON_AddBoolToObject(ru, "interrupted", c->interrupted);
  char *text = cJSON_Print(j);
  cJSON_Delete(j);
  if (!text) return es_fail(err, ES_ENOMEM, "out of memory for the manifest");
  char tmp[4300];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  int rc = es_write_file(tmp, text, strlen(text), err);
  cJSON_free(text);
  if (!rc && rename(tmp, path)) rc = es_fail(err, ES_EIO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
  return rc;
}

/* ---- earshot airbench run ---- */

/* The model argument's last path component ("Qwen/Qwen2-Audio-7B-Instruct" -> "Qwen2-Audio-7B-Instruct"): the
 * name the user gave, not the resolved cache folder (a snapshot hash). */
static void default_model_name(const rt_opts_t *ro, char *out, size_t cap) {
  const char *d = ro->model ? ro->model : "";
  size_t n = strlen(d);
  while (n > 1 && d[n - 1] == '/') n--;
  size_t start = 0;
  for (size_t i = 0; i + 1 < n; i++)
    if (d[i] == '/') start = i + 1;
  snprintf(out, cap, "%.*s", (int)(n - start), d + start);
  if (!out[0] || !strcmp(out, "/")) snprintf(out, cap, "%s", ro->dummy_weights ? "dummy-weights" : "model");
}

static int airbench_run(int argc, char **argv) {
  rt_opts_t ro = {.device = RT_DEVICE_AUTO, .dtype = ES_DT_BF16, .verbose = 1};
  run_opts_t o = {.max_tokens = AB_MAX_TOKENS_DEFAULT, .score = 1};
  const char *track_arg = "all", *out_dir = ".", *model_name = NULL;
  long long limit = 0, max_tokens = AB_MAX_TOKENS_DEFAULT, concurrency = 0;
  es_error_t err;
  es_error_clear(&err);
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    }
    int mf = mf_parse("airbench run", MF_OPEN | MF_SIZING, argc, argv, &i, &ro);
    if (mf < 0) return 2;
    if (mf > 0) continue;
    static const char *const with_value[] = {"--data",       "--track",         "--out",    "--model-name",
                                             "--task",       "--dataset",       "--shard",  "--limit",
                                             "--max-tokens", "--prompt-format", "--system", "--concurrency"};
    int takes = 0;
    for (size_t k = 0; k < sizeof with_value / sizeof *with_value; k++) takes |= !strcmp(a, with_value[k]);
    if (takes && !v) {
      fprintf(stderr, "earshot airbench run: %s needs a value\n", a);
      return 2;
    }
    if (takes) i++;
    if (!strcmp(a, "--data"))
      o.data_root = v;
    else if (!strcmp(a, "--track"))
      track_arg = v;
    else if (!strcmp(a, "--out"))
      out_dir = v;
    else if (!strcmp(a, "--model-name"))
      model_name = v;
    else if (!strcmp(a, "--task"))
      o.sel.tasks = v;
    else if (!strcmp(a, "--dataset"))
      o.sel.datasets = v;
    else if (!strcmp(a, "--system"))
      o.system = v;
    else if (!strcmp(a, "--shard")) {
      if (ab_parse_shard(v, &o.sel.shard_index, &o.sel.shard_count, &err)) {
        fprintf(stderr, "earshot airbench run: %s\n", err.msg);
        return 2;
      }
    } else if (!strcmp(a, "--limit")) {
      if (mf_int("airbench run", a, v, 1, 1LL << 40, &limit)) return 2;
    } else if (!strcmp(a, "--max-tokens")) {
      if (mf_int("airbench run", a, v, 1, 1 << 20, &max_tokens)) return 2;
    } else if (!strcmp(a, "--concurrency")) {
      if (mf_int("airbench run", a, v, 1, 4096, &concurrency)) return 2;
    } else if (!strcmp(a, "--prompt-format")) {
      if (!strcmp(v, "raw"))
        o.raw = 1;
      else if (strcmp(v, "chat")) {
        fprintf(stderr, "earshot airbench run: --prompt-format '%s': expected chat or raw\n", v);
        return 2;
      }
    } else if (!strcmp(a, "--no-score")) {
      o.score = 0;
    } else if (!strcmp(a, "--retry-input-errors")) {
      o.retry_input_errors = 1;
    } else {
      fprintf(stderr, "earshot airbench run: unknown argument '%s'\n\n", a);
      usage(stderr);
      return 2;
    }
  }
  if (!o.data_root) {
    fprintf(stderr, "earshot airbench run: --data ROOT is required\n\n");
    usage(stderr);
    return 2;
  }
  if (!ro.model && !(ro.dummy_weights && ro.config)) {
    fprintf(stderr, "earshot airbench run: --model is required\n\n");
    usage(stderr);
    return 2;
  }
  int want[2] = {0, 0};
  if (!strcmp(track_arg, "foundation"))
    want[AB_FOUNDATION] = 1;
  else if (!strcmp(track_arg, "chat"))
    want[AB_CHAT] = 1;
  else if (!strcmp(track_arg, "all"))
    want[AB_FOUNDATION] = want[AB_CHAT] = 2; /* 2: only if its meta exists */
  else {
    fprintf(stderr, "earshot airbench run: --track '%s': expected foundation, chat or all\n", track_arg);
    return 2;
  }
  o.sel.limit = (long)limit;
  o.max_tokens = (int)max_tokens;
  struct stat st;
  if (stat(out_dir, &st) || !S_ISDIR(st.st_mode)) {
    fprintf(stderr, "earshot airbench run: --out %s: not a folder\n", out_dir);
    return 2;
  }

  int status = 1, rc = ES_OK, rt_ok = 0;
  ab_meta_t meta[2];
  ab_results_t res[2];
  run_counts_t counts[2];
  memset(meta, 0, sizeof meta);
  memset(res, 0, sizeof res);
  memset(counts, 0, sizeof counts);
  rt_t rt;
  /* the data first: a wrong path or a bad meta file is reported before the model is loaded. With --track all a
   * --task / --dataset value must name something in one of the tracks, and a track it selects nothing of is
   * skipped (Foundation and Chat task names differ). */
  int n_tracks = 0, all = want[AB_FOUNDATION] == 2;
  const ab_meta_t *loaded[2];
  o.sel.unmatched_ok = all;
  for (int t = 0; t < 2; t++) {
    if (!want[t]) continue;
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/%s/%s_meta.json", o.data_root, ab_track_dir(t), ab_track_dir(t));
    if (want[t] == 2 && !es_path_exists(probe)) {
      want[t] = 0;
      continue;
    }
    if ((rc = ab_meta_load(o.data_root, (ab_track_t)t, &o.sel, &meta[t], &err))) goto fail;
    loaded[n_tracks++] = &meta[t];
  }
  if (!n_tracks) {
    rc =
        es_fail(&err, ES_ENOTFOUND, "%s: neither Foundation/Foundation_meta.json nor Chat/Chat_meta.json", o.data_root);
    goto fail;
  }
  if (all && (rc = ab_meta_check_filters(loaded, n_tracks, &o.sel, &err))) goto fail;
  if (all && (o.sel.tasks || o.sel.datasets)) {
    size_t selected = 0;
    for (int t = 0; t < 2; t++) selected += want[t] ? meta[t].n_items : 0;
    if (!selected) {
      rc = es_fail(&err, ES_EINVAL, "the --task / --dataset filters together select no item of any track");
      goto fail;
    }
  }
  for (int t = 0; t < 2; t++) {
    if (!want[t]) continue;
    if (all && meta[t].n_items == 0 && (o.sel.tasks || o.sel.datasets)) {
      fprintf(stderr, "earshot airbench: %s: the --task / --dataset filters select nothing here; skipped\n",
              ab_track_name((ab_track_t)t));
      want[t] = 0;
      continue;
    }
    counts[t].selected = meta[t].n_items;
    if (!(counts[t].missing_list = cJSON_CreateArray())) {
      rc = es_fail(&err, ES_ENOMEM, "out of memory");
      goto fail;
    }
  }
  char default_name[256], paths[2][4600];
  if (!model_name) {
    default_model_name(&ro, default_name, sizeof default_name);
    model_name = default_name;
  }
  char quant[96]; /* what the weights and arithmetic are: quantization, compute dtype, random weights */
  snprintf(quant, sizeof quant, "%s/%s%s%s", rt_quantization_name(ro.quantization), es_dtype_name(ro.dtype),
           ro.kv_fp8 ? "/kv-fp8" : "", ro.dummy_weights ? "/dummy-weights" : "");
  ab_settings_fingerprint(model_name, o.raw ? "raw" : "chat", o.raw ? NULL : o.system, o.max_tokens, quant, o.settings);
  ab_results_opts_t ropts = {.settings = o.settings, .retry_input_errors = o.retry_input_errors};
  /* the result files before the model: a second run on the same files stops here, not after loading */
  for (int t = 0; t < 2; t++) {
    if (!want[t]) continue;
    char name[512];
    if ((rc = ab_result_file_name((ab_track_t)t, model_name, o.sel.shard_index, o.sel.shard_count, name, sizeof name,
                                  &err)) ||
        (rc = es_path_join(paths[t], sizeof paths[t], out_dir, name, &err)) ||
        (rc = ab_results_open(paths[t], &ropts, &res[t], &err)))
      goto fail;
    if (res[t].truncated_tail)
      fprintf(stderr, "earshot airbench: %s: cut a partial last line (a run stopped while writing it)\n", paths[t]);
  }
  if ((rc = rt_open(&ro, &rt, &err))) goto fail;
  rt_ok = 1;
  if (!rt.tok) {
    rc = es_fail(&err, ES_EINVAL, "%s has no tokenizer (tokenizer.json or vocab.json + merges.txt)", rt.dir);
    goto fail;
  }
  o.concurrency = concurrency > 0 ? (int)concurrency : rt.max_num_seqs + 4;
  char started[64];
  time_t now = time(NULL);
  strftime(started, sizeof started, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESETHAND; /* a second Ctrl-C ends the process at once */
  if (sigaction(SIGINT, &sa, NULL) || sigaction(SIGTERM, &sa, NULL)) {
    rc = es_fail(&err, ES_EINTERNAL, "cannot install the Ctrl-C handler: %s", strerror(errno));
    goto fail;
  }

  int any_failed = 0;
  for (int t = 0; t < 2 && !g_interrupted; t++) {
    if (!want[t]) continue;
    const char *path = paths[t];
    int run_rc = run_track(&rt, &o, &meta[t], &res[t], &counts[t], &err);
    es_error_t cerr, merr;
    int c_rc = run_rc ? ES_OK : ab_results_compact(&res[t], &cerr);
    int m_rc = write_manifest(path, &rt, &ro, &o, &meta[t], model_name, &counts[t], &res[t], started, &merr);
    if (run_rc || c_rc || m_rc) {
      rc = run_rc ? run_rc : c_rc ? c_rc : m_rc;
      if (!run_rc) err = c_rc ? cerr : merr;
      if (m_rc && (run_rc || c_rc)) fprintf(stderr, "earshot airbench run: %s\n", merr.msg);
      goto fail;
    }
    any_failed |= counts[t].failed > 0;
    fprintf(stderr, "earshot airbench: %s: %s\n", ab_track_name((ab_track_t)t), path);
    if (t == AB_FOUNDATION && o.score && !g_interrupted) {
      if ((rc = ab_score_foundation(path, stdout, NULL, &err))) goto fail;
    } else if (t == AB_CHAT && !g_interrupted) {
      printf("chat answers: %s\n  judge them with AIR-Bench's score_chat.py in both orders, then:\n"
             "  earshot airbench score --judge NORMAL.jsonl --judge-swapped SWAPPED.jsonl\n",
             path);
    }
    ab_results_close(&res[t]);
  }
  status = g_interrupted ? 130 : any_failed ? 1 : 0;
  if (g_interrupted)
    fprintf(stderr, "earshot airbench: interrupted; run the same command again to resume\n");
  else if (any_failed)
    fprintf(stderr, "earshot airbench: some items failed in the run (see their \"error\"); a rerun retries them\n");
  goto out;
fail:
  fprintf(stderr, "earshot airbench run: %s\n", err.msg);
out:
  for (int t = 0; t < 2; t++) {
    ab_results_close(&res[t]);
    ab_meta_free(&meta[t]);
    cJSON_Delete(counts[t].missing_list);
  }
  if (rt_ok) rt_close(&rt);
  return status;
}

/* ---- earshot airbench score ---- */

static int airbench_score(int argc, char **argv) {
  const char *results = NULL, *judge = NULL, *judge_swapped = NULL;
  int json = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    const char **dst = !strcmp(a, "--results")         ? &results
                       : !strcmp(a, "--judge")         ? &judge
                       : !strcmp(a, "--judge-swapped") ? &judge_swapped
                                                       : NULL;
    if (dst) {
      if (!v) {
        fprintf(stderr, "earshot airbench score: %s needs a value\n", a);
        return 2;
      }
      *dst = v;
      i++;
    } else if (!strcmp(a, "--json")) {
      json = 1;
    } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    } else {
      fprintf(stderr, "earshot airbench score: unknown argument '%s'\n\n", a);
      usage(stderr);
      return 2;
    }
  }
  if (!!results == !!(judge || judge_swapped)) {
    fprintf(stderr, "earshot airbench score: give --results FILE (Foundation) or --judge / --judge-swapped (Chat)\n");
    return 2;
  }
  es_error_t err;
  es_error_clear(&err);
  cJSON *report = NULL;
  int rc = results ? ab_score_foundation(results, json ? NULL : stdout, json ? &report : NULL, &err)
                   : ab_score_chat(judge, judge_swapped, json ? NULL : stdout, json ? &report : NULL, &err);
  if (rc) {
    fprintf(stderr, "earshot airbench score: %s\n", err.msg);
    return 1;
  }
  if (report) {
    char *s = cJSON_Print(report);
    if (s) printf("%s\n", s);
    cJSON_free(s);
    cJSON_Delete(report);
  }
  return 0;
}

int cmd_airbench(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (!strcmp(argv[1], "run")) return airbench_run(argc - 1, argv + 1);
  if (!strcmp(argv[1], "score")) return airbench_score(argc - 1, argv + 1);
  fprintf(stderr, "earshot airbench: unknown subcommand '%s' (run, score)\n\n", argv[1]);
  usage(stderr);
  return 2;
}
