/* ws: a WebSocket connection over an upgraded libmicrohttpd socket, framed by wslay. See ws.h.
 * ref: RFC 6455 (§4.2.2 accept key, §5.5 control frames, §7.4 close codes, §8.1 UTF-8); wslay's event API
 * (wslay.h: recv/send callbacks report WSLAY_ERR_WOULDBLOCK, wslay_event_want_read/want_write drive poll);
 * API-NOTES §B2 (the upgraded socket is non-blocking; never close it ourselves).
 */
#define _GNU_SOURCE /* MSG_NOSIGNAL, eventfd */
#include "ws.h"

#include <errno.h>
#include <nettle/base64.h>
#include <nettle/sha1.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>
#include <wslay/wslay.h>

#include "b64.h"
#include "es_clock.h"
#include "tokenizer.h"

#define CLOSE_WAIT_S 2.0         /* how long a sent close waits for the peer's */
#define RECV_BUDGET (256u << 10) /* bytes one wslay_event_recv may read before the loop looks around again */

struct ws_conn {
  int fd, wake_fd;
  wslay_event_context_ptr ws;
  ws_opts_t o;
  char *extra; /* bytes read before the upgrade, served to wslay first */
  size_t n_extra, extra_off;
  const ws_handlers_t *h;
  double last_heard, last_ping, close_at;
  int closing, failed;
  int peer_gone;       /* the socket gave EOF or an error */
  size_t recv_budget;  /* bytes the current wslay_event_recv may still read */
  double last_message; /* when the peer last sent a text or binary message */
  atomic_int aborted;  /* ws_conn_abort */
  int close_pending;   /* ws_conn_close waits for the queued messages to go out first */
  uint16_t close_code;
  char close_reason[124];
  double close_asked;
  atomic_int woken;
};

/* ---- wslay callbacks ------------------------------------------------------------------------------------------ */

static ssize_t on_recv(wslay_event_context_ptr ws, uint8_t *buf, size_t len, int flags, void *user) {
  (void)flags;
  ws_conn_t *c = user;
  if (c->extra_off < c->n_extra) {
    size_t k = c->n_extra - c->extra_off < len ? c->n_extra - c->extra_off : len;
    memcpy(buf, c->extra + c->extra_off, k);
    c->extra_off += k;
    return (ssize_t)k;
  }
  if (c->recv_budget == 0 || atomic_load(&c->aborted)) { /* let the loop check its limits and wakes first */
    wslay_event_set_error(ws, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  if (len > c->recv_budget) len = c->recv_budget;
  ssize_t r;
  do r = recv(c->fd, buf, len, 0);
  while (r < 0 && errno == EINTR);
  if (r > 0) {
    c->recv_budget -= (size_t)r;
    return r;
  }
  if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
    wslay_event_set_error(ws, WSLAY_ERR_WOULDBLOCK);
  } else {
    c->peer_gone = 1;
    wslay_event_set_error(ws, WSLAY_ERR_CALLBACK_FAILURE); /* EOF or a socket error: the peer is gone */
  }
  return -1;
}

static ssize_t on_send(wslay_event_context_ptr ws, const uint8_t *data, size_t len, int flags, void *user) {
  (void)flags;
  ws_conn_t *c = user;
  ssize_t r;
  do r = send(c->fd, data, len, MSG_NOSIGNAL);
  while (r < 0 && errno == EINTR);
  if (r >= 0) return r;
  wslay_event_set_error(ws,
                        errno == EAGAIN || errno == EWOULDBLOCK ? WSLAY_ERR_WOULDBLOCK : WSLAY_ERR_CALLBACK_FAILURE);
  return -1;
}

static void on_msg(wslay_event_context_ptr ws, const struct wslay_event_on_msg_recv_arg *a, void *user) {
  ws_conn_t *c = user;
  c->last_heard = es_now_s();
  if (a->opcode == WSLAY_CONNECTION_CLOSE) { /* wslay answers it; nothing more will be read */
    if (!c->closing) c->close_at = c->last_heard;
    c->closing = 1;
    return;
  }
  if (a->opcode != WSLAY_TEXT_FRAME && a->opcode != WSLAY_BINARY_FRAME) return; /* ping (answered), pong */
  if (c->closing) return;
  if (a->opcode == WSLAY_TEXT_FRAME && !tok_utf8_valid((const char *)a->msg, a->msg_length, NULL)) {
    static const char why[] = "a text message is not valid UTF-8";
    wslay_event_queue_close(ws, WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA, (const uint8_t *)why, sizeof why - 1);
    c->closing = 1;
    c->close_at = es_now_s();
    return;
  }
  c->last_message = c->last_heard;
  if (c->h && c->h->on_message) c->h->on_message(c->h->ctx, c, a->opcode == WSLAY_BINARY_FRAME, a->msg, a->msg_length);
}

/* ---- the connection ------------------------------------------------------------------------------------------- */

int ws_conn_new(int fd, const char *extra_in, size_t n_extra, const ws_opts_t *opts, ws_conn_t **out, es_error_t *err) {
  *out = NULL;
  ws_conn_t *c = calloc(1, sizeof *c);
  if (!c) return es_fail(err, ES_ENOMEM, "websocket: out of memory");
  c->fd = fd;
  c->o = opts ? *opts : (ws_opts_t){0};
  if (!c->o.max_message) c->o.max_message = (size_t)16 << 20;
  if (!c->o.max_queued) c->o.max_queued = (size_t)32 << 20;
  if (c->o.ping_interval_s <= 0) c->o.ping_interval_s = 20;
  if (c->o.idle_timeout_s <= 0) c->o.idle_timeout_s = 900;
  atomic_init(&c->aborted, 0);
  c->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (c->wake_fd < 0) {
    free(c);
    return es_fail(err, ES_EIO, "websocket: eventfd: %s", strerror(errno));
  }
  if (n_extra) {
    c->extra = malloc(n_extra);
    if (!c->extra) {
      ws_conn_free(c);
      return es_fail(err, ES_ENOMEM, "websocket: out of memory");
    }
    memcpy(c->extra, extra_in, n_extra);
    c->n_extra = n_extra;
  }
  static const struct wslay_event_callbacks cb = {
      .recv_callback = on_recv, .send_callback = on_send, .on_msg_recv_callback = on_msg};
  if (wslay_event_context_server_init(&c->ws, &cb, c) != 0) {
    c->ws = NULL;
    ws_conn_free(c);
    return es_fail(err, ES_ENOMEM, "websocket: out of memory");
  }
  wslay_event_config_set_max_recv_msg_length(c->ws, c->o.max_message);
  c->last_heard = c->last_ping = c->last_message = es_now_s();
  *out = c;
  return ES_OK;
}

void ws_conn_free(ws_conn_t *c) {
  if (!c) return;
  if (c->ws) wslay_event_context_free(c->ws);
  if (c->wake_fd >= 0) close(c->wake_fd);
  free(c->extra);
  free(c);
}

int ws_conn_send_text(ws_conn_t *c, const char *text, size_t len) {
  if (c->closing || c->failed) return ES_EIO;
  struct wslay_event_msg m = {.opcode = WSLAY_TEXT_FRAME, .msg = (const uint8_t *)text, .msg_length = len};
  int r = wslay_event_queue_msg(c->ws, &m);
  if (r == WSLAY_ERR_NOMEM) return ES_ENOMEM;
  return r ? ES_EIO : ES_OK;
}

/* Queues the close frame itself. wslay sends control frames before queued messages and drops what is left once
 * a close is out, so it is queued only when the messages before it have gone (or could not, in time). */
static void queue_close(ws_conn_t *c) {
  c->close_pending = 0;
  wslay_event_queue_close(c->ws, c->close_code, (const uint8_t *)c->close_reason, strlen(c->close_reason));
  c->close_at = es_now_s();
}

void ws_conn_close(ws_conn_t *c, uint16_t code, const char *reason) {
  if (c->closing) return;
  c->closing = 1;
  c->close_code = code;
  snprintf(c->close_reason, sizeof c->close_reason, "%.123s", reason ? reason : ""); /* control payload <= 125 */
  c->close_pending = 1;
  c->close_asked = c->close_at = es_now_s();
  if (wslay_event_get_queued_msg_count(c->ws) == 0) queue_close(c);
}

int ws_conn_closing(const ws_conn_t *c) {
  return c->closing || c->failed;
}

void ws_conn_abort(ws_conn_t *c) {
  atomic_store(&c->aborted, 1);
  shutdown(c->fd, SHUT_RDWR); /* the loop's next recv/send fails; the descriptor stays valid (MHD closes it) */
  ws_conn_wake(c);
}

void ws_conn_wake(ws_conn_t *c) {
  atomic_store(&c->woken, 1);
  uint64_t one = 1;
  ssize_t r = write(c->wake_fd, &one, sizeof one); /* EAGAIN: the counter is already non-zero, a wake is pending */
  (void)r;
}

/* The lingering close: our side is done, but a peer may still be sending (a message we refused as too large,
 * frames after our close). Closing a socket with unread bytes makes TCP send a reset, which can destroy our
 * close frame before the peer reads it; so send FIN and read (and drop) what still comes, until the peer
 * closes too or CLOSE_WAIT_S passes. */
static void linger(ws_conn_t *c) {
  if (c->peer_gone || atomic_load(&c->aborted)) return;
  shutdown(c->fd, SHUT_WR);
  char sink[16384];
  for (double end = es_now_s() + CLOSE_WAIT_S; es_now_s() < end;) {
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    int n = poll(&p, 1, 100);
    if (n < 0 && errno != EINTR) return;
    if (n <= 0) continue;
    ssize_t r = recv(c->fd, sink, sizeof sink, 0);
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) return;
  }
}

void ws_conn_run(ws_conn_t *c, const ws_handlers_t *h) {
  c->h = h;
  c->recv_budget = RECV_BUDGET;
  if (c->n_extra && wslay_event_recv(c->ws) != 0) c->failed = 1; /* frames that came with the upgrade request */
  while (!c->failed && !atomic_load(&c->aborted)) {
    if (wslay_event_want_write(c->ws) && wslay_event_send(c->ws) != 0) break;
    int rd = wslay_event_want_read(c->ws), wr = wslay_event_want_write(c->ws);
    if (!rd && !wr) break; /* the close handshake is complete */
    double now = es_now_s();
    if (!c->closing && wslay_event_get_close_sent(c->ws)) { /* wslay failed the connection itself (1002, 1009) */
      c->closing = 1;
      c->close_at = now;
    }
    if (c->close_pending && (wslay_event_get_queued_msg_count(c->ws) == 0 || now - c->close_asked > CLOSE_WAIT_S)) {
      queue_close(c); /* what was sent before the close has gone out (or the peer is too slow to wait for) */
      continue;
    }
    if (c->closing && !c->close_pending && now - c->close_at > CLOSE_WAIT_S) break;
    if (wslay_event_get_queued_msg_length(c->ws) > c->o.max_queued) { /* the peer does not read: dropped */
      c->peer_gone = 1;                                               /* no lingering for it */
      break;
    }
    if (now - c->last_heard > 3 * c->o.ping_interval_s) break;             /* the peer is gone */
    if (!c->closing && now - c->last_message > c->o.idle_timeout_s) {
      ws_conn_close(c, 1000, "idle for too long");
      continue;
    }
    if (!c->closing && now - c->last_heard > c->o.ping_interval_s && now - c->last_ping > c->o.ping_interval_s) {
      struct wslay_event_msg ping = {.opcode = WSLAY_PING, .msg = NULL, .msg_length = 0};
      wslay_event_queue_msg(c->ws, &ping);
      c->last_ping = now;
      continue;
    }
    struct pollfd p[2] = {{.fd = c->fd, .events = (short)((rd ? POLLIN : 0) | (wr ? POLLOUT : 0))},
                          {.fd = c->wake_fd, .events = POLLIN}};
    int timeout_ms = c->closing ? 100 : 1000;
    int n = poll(p, 2, timeout_ms);
    if (n < 0 && errno != EINTR) break;
    if (n <= 0) continue;
    if (p[1].revents & POLLIN) {
      uint64_t v;
      ssize_t r = read(c->wake_fd, &v, sizeof v);
      (void)r;
    }
    if (atomic_exchange(&c->woken, 0) && h->on_wake) h->on_wake(h->ctx, c);
    if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      c->recv_budget = RECV_BUDGET;
      if (wslay_event_recv(c->ws) != 0) break;
    }
    if ((p[0].revents & POLLOUT) && wslay_event_send(c->ws) != 0) break;
  }
  c->failed = 1;
  c->closing = 1;
  linger(c);
}

/* ---- the handshake -------------------------------------------------------------------------------------------- */

int ws_accept_key(const char *key, char out[29], es_error_t *err) {
  static const char GUID[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  unsigned char *raw = NULL;
  size_t n_raw = 0;
  if (!key || strlen(key) != 24 || b64_decode(key, 24, "Sec-WebSocket-Key", &raw, &n_raw, err) || n_raw != 16) {
    free(raw);
    return es_fail(err, ES_EINVAL, "Sec-WebSocket-Key must be 16 bytes in base64 (24 characters)");
  }
  free(raw);
  struct sha1_ctx sha;
  uint8_t digest[SHA1_DIGEST_SIZE];
  sha1_init(&sha);
  sha1_update(&sha, 24, (const uint8_t *)key);
  sha1_update(&sha, sizeof GUID - 1, (const uint8_t *)GUID);
  sha1_digest(&sha, sizeof digest, digest);
  base64_encode_raw(out, sizeof digest, digest); /* 20 bytes -> 28 characters, padded */
  out[28] = '\0';
  return ES_OK;
}
