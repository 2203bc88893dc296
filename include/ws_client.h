/* ws_client.h: the one outbound WebSocket to the manager (libwebsockets on
 * the agent's libuv loop): connect, hello, send queue, receive, backoff. */
#ifndef HOSTAGENT_WS_CLIENT_H
#define HOSTAGENT_WS_CLIENT_H

#include "config.h"
#include "transport.h"

#include <libwebsockets.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct ws_client;

struct ws_msg {
    struct ws_msg *next;
    char *merge_key;  /* intermediate move.progress: the moveId; else NULL */
    bool keep;        /* survives a lost connection (answers, move frames) */
    char *ack_key;    /* kept after writing until a later ping's pong; else NULL */
    uint64_t ping_no; /* written before this ping of ours was sent */
    size_t len;
    unsigned char *buf; /* LWS_PRE bytes of headroom, then len bytes */
};

struct ws_client {
    struct transport base; /* first: the agent holds a struct transport * */
    uv_loop_t *loop;
    const struct config *cfg; /* owner's; may be replaced between connects */

    struct lws_context *ctx;
    struct lws *wsi; /* only between ESTABLISHED and CLOSED */
    void *foreign_loops[1];
    lws_retry_bo_t retry; /* lws keeps a pointer: lives as long as we do */
    unsigned attempt;     /* consecutive failed or short connections */
    unsigned attempt_id;  /* guards against a double failure report */
    bool attempt_reported;
    uint64_t up_since_ms;
    uint64_t last_fail_log_ms;
    unsigned fails_unlogged;

    uv_timer_t backoff_timer;
    uv_getaddrinfo_t gai;
    bool gai_pending;
    char addr[64];
    unsigned addr_turn; /* which resolved address to use: moves on after each failed attempt */
    char host_header[300];

    struct ws_msg *head, *tail;
    size_t queued, queued_bytes; /* messages and payload bytes waiting to be written */
    size_t queued_bytes_peak;    /* since the queue was last empty */
    /* Written, waiting for the pong of a ping sent after them; put back at
     * the head of the queue when the connection is lost. */
    struct ws_msg *unacked_head, *unacked_tail;
    uint64_t pings_sent;
    bool ping_wanted;
    uint64_t close_deadline_ms; /* stop waiting for acks before the close */
    char *hello_msg;

    char *rx;
    size_t rx_len, rx_cap;
    bool rx_overflow;

    bool rx_paused; /* not reading requests while the manager does not read answers */
    bool want_close;
    bool close_sent; /* our close frame is out; waiting for the echo */
    int open_handles;
};

/* Creates the lws context on loop (foreign loop). 0 or negative errno. */
int ws_client_init(struct ws_client *c, uv_loop_t *loop, const struct config *cfg,
                   const struct transport_ops *ops, void *owner);

/* Begins connecting; reconnects forever until ws_client_shutdown(). */
void ws_client_start(struct ws_client *c);

/* Queues one text message (copied). merge_key: an intermediate frame that
 * replaces a not yet written one with the same key. keep: kept across a
 * lost connection and sent after the next hello; otherwise dropped when
 * the connection is not up. */
void ws_client_send(struct ws_client *c, const char *json, size_t len, const char *merge_key,
                    bool keep, const char *ack_key);

/* Flushes what is queued, closes with 1001 "going away", stops reconnecting;
 * ops->state(CONN_CLOSED) when done. */
void ws_client_shutdown(struct ws_client *c);

/* First half of the teardown: destroys the lws context's connections and
 * closes our handles. Run the loop afterwards, then ws_client_free(). */
void ws_client_close(struct ws_client *c);

/* Second half, after uv_run returned: frees the context and the queue. */
void ws_client_free(struct ws_client *c);

/* The connection's state machine: idle -> connecting -> hello -> up; a failed
 * or lost attempt (connecting, hello, up) -> backoff -> connecting; from any
 * state but closed, a stop -> closing -> closed (or closed at once). */
bool ws_client_state_may_follow(enum conn_state from, enum conn_state to);

/* The WebSocket transport's implementation of transport.h. */
extern const struct transport_impl ws_client_impl;

#endif
