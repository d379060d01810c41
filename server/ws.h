/* ws: one WebSocket connection (RFC 6455) after the HTTP upgrade, driven by one thread.
 *
 * libmicrohttpd hands over the raw socket after the 101 response (API-NOTES §B2: MHD_create_response_for_upgrade;
 * the socket arrives non-blocking, with any bytes it already read in extra_in). wslay does the framing: masked
 * client frames, fragmented messages reassembled, ping answered with pong, the close handshake, and protocol
 * errors failed with the right close code (1002; 1009 for a message over max_message). This file adds what the
 * server needs around it:
 *   - text messages must be valid UTF-8 (else close 1007, RFC 6455 §8.1; wslay 1.1 checks it too);
 *   - a poll loop over the socket and an eventfd, so that other threads (the engine's callbacks, shutdown) can
 *     wake the loop with ws_conn_wake: the loop thread is the only one that touches the connection;
 *   - a peer that stops reading cannot make the server buffer without end: past max_queued bytes waiting to be
 *     sent, the connection is dropped;
 *   - a peer that sends faster than the session handles cannot keep the loop inside one read: each read pass
 *     is capped (256 KiB), so the limits, the wakes and the outgoing queue are looked at in between;
 *   - a peer that went away silently is found: after ping_interval_s without a frame from it the loop sends a
 *     ping, and after three intervals it gives up; a peer that sends no message for idle_timeout_s is closed
 *     (1000) even if it answers pings;
 *   - ws_conn_close ends the connection in bounded time: the messages queued before it go out first (at most
 *     2 s; wslay would otherwise send the close ahead of them and drop them), then the close frame is sent and
 *     the peer's answer awaited for at most 2 s; then (a lingering close) FIN is sent and whatever the peer still sends
 * is read and dropped for at most 2 s more, so that a peer still sending does not get a TCP reset that destroys the
 * close frame. The socket itself belongs to libmicrohttpd: the caller ends the upgrade with MHD_upgrade_action after
 * ws_conn_run returns; nothing here closes it.
 * Thread safety: everything runs on the loop thread except ws_conn_wake (any thread).
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "es_error.h"

typedef struct ws_conn ws_conn_t;

typedef struct {
  size_t max_message;     /* largest incoming message (bytes, after reassembly); 0 = 16 MiB */
  size_t max_queued;      /* outgoing bytes waiting for a slow peer before it is dropped; 0 = 32 MiB */
  double ping_interval_s; /* 0 = 20 s */
  double idle_timeout_s;  /* no text or binary message for this long: closed; 0 = 900 s */
} ws_opts_t;

typedef struct {
  void *ctx;
  /* A complete message from the peer (text: valid UTF-8, not NUL-terminated). */
  void (*on_message)(void *ctx, ws_conn_t *c, int binary, const uint8_t *data, size_t len);
  /* Another thread called ws_conn_wake (wakes coalesce: one call may stand for several). */
  void (*on_wake)(void *ctx, ws_conn_t *c);
} ws_handlers_t;

/* extra_in: bytes libmicrohttpd read past the HTTP request (copied). */
int ws_conn_new(int fd, const char *extra_in, size_t n_extra, const ws_opts_t *opts, ws_conn_t **out, es_error_t *err);
void ws_conn_free(ws_conn_t *c);

/* Serves the connection until it ends (the close handshake, a protocol error, the peer gone, or a fatal
 * error); calls the handlers on this thread. */
void ws_conn_run(ws_conn_t *c, const ws_handlers_t *h);

/* Queues a text message (copied). Returns ES_OK, or an error when the connection is closing or out of memory
 * (the caller may ignore it: the connection is ending anyway). Loop thread only. */
int ws_conn_send_text(ws_conn_t *c, const char *text, size_t len);
/* Starts the close handshake with this code (1000 normal, 1001 going away, 1008 policy, 1011 error) and a
 * reason (<= 123 bytes); nothing more is sent after it. Loop thread only. */
void ws_conn_close(ws_conn_t *c, uint16_t code, const char *reason);
/* 1 once the connection is closing (ws_conn_close, the peer's close, an error): sending is pointless. */
int ws_conn_closing(const ws_conn_t *c);

/* Wakes the loop thread (its on_wake runs soon). Any thread; never blocks. */
void ws_conn_wake(ws_conn_t *c);
/* Ends the connection at once, from any thread (server shutdown): the socket is shut down, so whatever the loop
 * is doing fails and ws_conn_run returns promptly; no close handshake. */
void ws_conn_abort(ws_conn_t *c);

/* Sec-WebSocket-Accept for a client's Sec-WebSocket-Key (RFC 6455 §4.2.2): base64(SHA-1(key + GUID)); out gets
 * 28 characters and a NUL. Fails (ES_EINVAL) unless key is 24 base64 characters encoding 16 bytes. */
int ws_accept_key(const char *key, char out[29], es_error_t *err);
