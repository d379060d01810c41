/* stop: stop strings over the streamed, detokenized text of one request.
 *
 * The engine feeds the text each new token decodes to (a "piece"); the matcher says how many bytes may be
 * sent to the client now and whether a stop string completed. Text that could still be the start of a
 * stop string is held back, so the client never sees part of a stop string; the matched stop string and
 * everything after it are dropped ("the text that matches the stop string is not included in the
 * output", OpenAI; vLLM's default include_stop_str_in_output=false). With include_stop=1 the stop string
 * is released and only what follows it is dropped.
 *
 * Matching: one Knuth-Morris-Pratt automaton per stop string, advanced byte by byte, so a stop string may
 * span any number of pieces and overlapping prefixes ("ab" vs "aab") resolve correctly. The held-back
 * text is exactly the longest suffix of the stream that is a proper prefix of some stop string. When
 * several stop strings complete within one piece, the one that ends first wins; on the same end byte, the
 * longer one (it starts earlier, so less text is released). vLLM instead takes the first stop string in
 * request order found in the newest text; the two differ only when two stop strings complete in the same
 * piece.
 *
 * min_tokens (vLLM StopChecker): while a request has fewer than min_tokens tokens, stop strings do not
 * finish it; the caller passes active = 0 and complete matches are released as ordinary text.
 *
 * Bytes, not characters: stop strings must be valid UTF-8 and so must the pieces; then the held-back
 * suffix starts at a character boundary (it is a prefix of a stop string, which starts with a lead
 * byte), so released text is valid UTF-8 whenever the stream is.
 *
 * Thread safety: a stop_matcher_t belongs to one request; no global state.
 * Allocation: stop_init allocates the automata and a text buffer; stop_feed grows the buffer only when a
 * piece is longer than any seen before (pieces are a token's text, a few bytes).
 */
#pragma once

#include <stddef.h>

#include "es_error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* OpenAI allows 4 stop strings; vLLM sets no limit. These bound the per-byte matching work. */
#define STOP_MAX_STRINGS 16
#define STOP_MAX_BYTES 256

typedef struct {
  int n;               /* number of stop strings */
  char **str;          /* (n) owned copies */
  int *len;            /* (n) byte lengths, 1..STOP_MAX_BYTES */
  int **fail;          /* (n) KMP failure tables, fail[s][q] for q in [0, len[s]] */
  int *state;          /* (n) bytes of stop s matched by the end of the stream so far */
  int include_stop;    /* 1: release the stop string itself */
  char *buf;           /* held-back text, then the piece being fed */
  size_t cap, held;    /* buf capacity; bytes held back */
  size_t consumed;     /* bytes released by the last call, moved out at the next one */
  int stopped;         /* a stop string completed; the matcher is done */
} stop_matcher_t;

typedef struct {
  const char *text; /* bytes released by this call; valid until the next call on the matcher */
  size_t len;
  int stopped;      /* 1: a stop string completed in this call; text ends where it starts */
  int stop_index;   /* which stop string (vLLM's stop_reason), -1 otherwise */
} stop_result_t;

/* Copies n stop strings (n may be 0: everything is released at once). Rejects empty, over-long
 * (> STOP_MAX_BYTES), too many (> STOP_MAX_STRINGS) and non-UTF-8 stop strings, naming the culprit. */
int stop_init(stop_matcher_t *sm, const char *const *stops, int n, int include_stop, es_error_t *err);
void stop_free(stop_matcher_t *sm);

/* Appends piece (len bytes) to the stream. active = 0 while min_tokens is not reached (stop strings
 * then do not finish). Fills *res; after a stop, further calls release nothing. */
int stop_feed(stop_matcher_t *sm, const char *piece, size_t len, int active, stop_result_t *res, es_error_t *err);

/* The request finished for another reason (eos, stop id, length): releases the held-back text. */
void stop_flush(stop_matcher_t *sm, stop_result_t *res);

#ifdef __cplusplus
}
#endif
