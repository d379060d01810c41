/* audio_vad: a voice-activity detector for live voice sessions ("server VAD"): where a user's turn starts and
 * where it has ended, from the level of 16 kHz audio, as it arrives.
 *
 * The signal is cut into 10 ms frames (160 samples). A frame is loud when its RMS level is above the gate,
 *   gate_dbfs = -70 + 50 * threshold      (threshold 0..1; OpenAI's default 0.5 gives -45 dBFS),
 * the OpenAI Realtime API's description of server VAD ("detects speech from audio volume; a higher threshold
 * needs louder audio"). Speech starts at the first of AUDIO_VAD_ONSET_FRAMES loud frames in a row (a click is
 * not speech), and stops once silence_duration_ms of quiet frames follow the last loud one. A start is reported
 * at its first loud frame; a stop at the end of the last loud frame, together with the point at which the stop
 * was decided (that frame's end + the silence), which is where a turn's audio is cut.
 * No model, no adaptation: a constant gate, so the same audio always gives the same events, whatever the
 * pieces it arrived in.
 * Thread safety: one detector belongs to one thread.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define AUDIO_VAD_FRAME 160      /* samples per frame: 10 ms at 16 kHz */
#define AUDIO_VAD_ONSET_FRAMES 3 /* loud frames in a row that start speech */

typedef struct {
  double threshold;        /* 0..1 */
  int silence_duration_ms; /* quiet time after speech that ends it (>= 10) */
} audio_vad_opts_t;

typedef enum { AUDIO_VAD_START = 1, AUDIO_VAD_STOP = 2 } audio_vad_kind_t;

typedef struct {
  audio_vad_kind_t kind;
  uint64_t at;     /* START: the first loud frame's first sample; STOP: the end of the last loud frame */
  uint64_t cut_at; /* STOP: where the stop was decided (at + the silence); START: = at */
} audio_vad_event_t;

typedef struct {
  double gate_ms;     /* mean-square gate */
  int silence_frames; /* quiet frames that end speech */
  uint64_t pos;       /* samples seen */
  float frame[AUDIO_VAD_FRAME];
  int n_frame; /* samples of the current frame so far */
  int speaking;
  int loud_run, quiet_run;
  uint64_t run_start;     /* first sample of the current loud run */
  uint64_t last_loud_end; /* end of the last loud frame */
} audio_vad_t;

/* Starts a detector at sample 0. */
void audio_vad_init(audio_vad_t *v, const audio_vad_opts_t *o);
/* Changes the threshold and silence duration from the next frame on, keeping the state (a turn in progress
 * goes on). */
void audio_vad_set(audio_vad_t *v, const audio_vad_opts_t *o);
/* Feeds n samples; writes the events they complete to ev (at most max_ev; a frame yields at most one event, so
 * n / AUDIO_VAD_FRAME + 1 is always enough) and returns how many. */
size_t audio_vad_feed(audio_vad_t *v, const float *x, size_t n, audio_vad_event_t *ev, size_t max_ev);
/* The gate in dBFS for a threshold. */
double audio_vad_gate_dbfs(double threshold);

#ifdef __cplusplus
}
#endif
