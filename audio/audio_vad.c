/* audio_vad: level-based voice-activity detection. See audio_vad.h. */
#include "audio_vad.h"

#include <math.h>
#include <string.h>

double audio_vad_gate_dbfs(double threshold) {
  if (!(threshold >= 0)) threshold = 0; /* NaN too */
  if (threshold > 1) threshold = 1;
  return -70.0 + 50.0 * threshold;
}

void audio_vad_set(audio_vad_t *v, const audio_vad_opts_t *o) {
  v->gate_ms = pow(10.0, audio_vad_gate_dbfs(o->threshold) / 10.0);
  int ms = o->silence_duration_ms < 10 ? 10 : o->silence_duration_ms;
  v->silence_frames = (ms + 9) / 10;
}

void audio_vad_init(audio_vad_t *v, const audio_vad_opts_t *o) {
  memset(v, 0, sizeof *v);
  audio_vad_set(v, o);
}

/* One complete frame ending at v->pos; returns 1 and fills *ev when it starts or stops speech. */
static int frame_done(audio_vad_t *v, audio_vad_event_t *ev) {
  double ms = 0;
  for (int i = 0; i < AUDIO_VAD_FRAME; i++) ms += (double)v->frame[i] * v->frame[i];
  ms /= AUDIO_VAD_FRAME;
  int loud = ms > v->gate_ms;
  uint64_t end = v->pos, start = end - AUDIO_VAD_FRAME;
  if (!v->speaking) {
    if (!loud) {
      v->loud_run = 0;
      return 0;
    }
    if (v->loud_run++ == 0) v->run_start = start;
    if (v->loud_run < AUDIO_VAD_ONSET_FRAMES) return 0;
    v->speaking = 1;
    v->quiet_run = 0;
    v->last_loud_end = end;
    *ev = (audio_vad_event_t){.kind = AUDIO_VAD_START, .at = v->run_start, .cut_at = v->run_start};
    return 1;
  }
  if (loud) {
    v->quiet_run = 0;
    v->last_loud_end = end;
    return 0;
  }
  if (++v->quiet_run < v->silence_frames) return 0;
  v->speaking = 0;
  v->loud_run = 0;
  *ev = (audio_vad_event_t){.kind = AUDIO_VAD_STOP, .at = v->last_loud_end, .cut_at = end};
  return 1;
}

size_t audio_vad_feed(audio_vad_t *v, const float *x, size_t n, audio_vad_event_t *ev, size_t max_ev) {
  size_t n_ev = 0;
  for (size_t i = 0; i < n; i++) {
    v->frame[v->n_frame++] = x[i];
    v->pos++;
    if (v->n_frame < AUDIO_VAD_FRAME) continue;
    v->n_frame = 0;
    audio_vad_event_t e;
    if (frame_done(v, &e) && n_ev < max_ev) ev[n_ev++] = e;
  }
  return n_ev;
}
