/* voice: live voice chat over a WebSocket (GET /v1/realtime), speaking the OpenAI Realtime API's event protocol
 * (GA names; SERVING.md §5.1), the subset that fits an audio-in, text-out model.
 *
 * Client events: session.update, input_audio_buffer.append / .commit / .clear, conversation.item.create /
 * .delete, response.create, response.cancel; a binary message is raw audio in the session's input format (an
 * earshot extension, as speaches takes raw PCM). Server events: session.created / .updated, error,
 * input_audio_buffer.speech_started / .speech_stopped / .committed / .cleared, conversation.item.added /
 * .done / .deleted, response.created, response.output_item.added / .done, response.content_part.added / .done,
 * response.output_text.delta / .done, response.done (status, status_details, usage).
 *
 * The session: input audio ("audio/pcm" at 8-48 kHz, default 24 kHz as OpenAI; "audio/pcmu", "audio/pcma") is
 * converted to 16 kHz as it arrives (audio_stream). With turn detection "server_vad" (the default) the level
 * detector (audio_vad) finds where a turn starts and ends; the turn's audio (with prefix_padding_ms before the
 * start) becomes a user item and, with create_response, a response starts; speech starting while a response
 * runs cancels it (interrupt_response). With turn_detection null the client commits the buffer itself. Each
 * response renders the whole conversation (instructions as the system message, then every item: user audio
 * and text, assistant text) through the chat template, exactly as /v1/chat/completions would, and streams the
 * text deltas. When the conversation no longer fits the context, the oldest items are left out of the prompt
 * (truncation "auto"; "disabled" fails the response instead). Sampling: the checkpoint's generation_config,
 * then the session's and the response's fields (temperature, top_p, top_k, min_p, the penalties, seed,
 * min_tokens, ignore_eos: earshot extensions, as in the chat API), max_output_tokens.
 *
 * Threads: voice_session_run runs on the session's own thread (one per WebSocket, started by the server) and
 * owns everything here; the engine thread's callback only appends the released text to a small shared record
 * and wakes the session's loop (ws_conn_wake). The server asks a session to stop through *stop: 1 = finish the
 * response in flight, take no new one, then close with 1001; 2 = cancel it and close now.
 */
#pragma once

#include <stdatomic.h>

#include "engine.h"
#include "metrics.h"
#include "request.h"
#include "ws.h"

typedef struct {
  srv_req_ctx_t ctx; /* the server's request context (rt, model name, prompt format, limits) */
  eng_t *eng;
  met_t *met;
  double max_buffer_s; /* input audio held at once (the buffer, one turn, one created item); <= 0: 300 s */
  int verbose;
} voice_opts_t;

/* Serves one session over c until the peer leaves or the server stops it; returns when nothing of the
 * session is left running (a response still in the engine holds only its own small record). */
void voice_session_run(ws_conn_t *c, const voice_opts_t *o, atomic_int *stop);
