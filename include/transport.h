/* transport.h: the one small interface between the agent and the link to
 * its manager(s): the WebSocket client (ws_client.c) or the NATS client
 * (nats_client.c) behind it, made by transport_create(). Everything here
 * runs on the loop thread. */
#ifndef HOSTAGENT_TRANSPORT_H
#define HOSTAGENT_TRANSPORT_H

#include "config.h"

#include <cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

enum conn_state {
    CONN_IDLE = 0,   /* not started */
    CONN_CONNECTING, /* resolving, TCP, TLS, upgrade / CONNECT */
    CONN_HELLO,      /* connected; agent.hello not yet written */
    CONN_UP,         /* hello written: frames flow */
    CONN_DUPLICATE,  /* NATS: connected, but another agent serves this agent_id: this one
                        takes no request and publishes nothing on its subjects (held) */
    CONN_BACKOFF,    /* waiting before the next attempt */
    CONN_CLOSING,    /* shutting down: flushing, then "going away" */
    CONN_CLOSED,     /* shut down for good */
};

struct transport;

/* What the transport asks of its owner (the agent). */
struct transport_ops {
    /* The data object of agent.hello, built at every connect (taken). */
    cJSON *(*hello)(struct transport *t);
    /* One request as a complete frame {"subject","reply","data"} of at most
     * max_message_bytes; validated by the owner as any frame. */
    void (*message)(struct transport *t, const char *buf, size_t len);
    /* Every state change; CONN_CLOSED ends the shutdown. */
    void (*state)(struct transport *t, enum conn_state s);
    /* A message sent (or an outcome given) with an ack_key is known to have
     * arrived: see each transport for what proves it. */
    void (*acked)(struct transport *t, const char *ack_key);
};

/* How one message goes out. */
struct transport_send {
    const char *merge_key; /* intermediate move.progress: the moveId; else NULL */
    bool keep;             /* survives a lost connection (answers, move frames) */
    const char *ack_key;   /* report its delivery through ops->acked; else NULL */
    bool reply;            /* subject is a request's reply subject, not an agent subject */
};

struct transport_impl {
    const char *name;
    void (*start)(struct transport *t);
    /* Takes ownership of data. */
    void (*send)(struct transport *t, const char *subject, cJSON *data,
                 const struct transport_send *how);
    /* A move's outcome (its answer's data object, printed), once it is
     * recorded in the journal; again after a restart until acknowledged.
     * accepted_ms (the journal's startedAtMs, wall clock) tells this move
     * from another of the same moveId (ids are the manager's, and come back
     * once a move leaves the history); the same outcome sent again carries
     * the same value. A transport that stores outcomes durably acknowledges
     * ack_key when they are stored; the others ignore this. */
    void (*outcome)(struct transport *t, const char *move_id, uint64_t accepted_ms,
                    const char *answer, const char *ack_key);
    void (*shutdown)(struct transport *t);
    void (*close)(struct transport *t);
    void (*destroy)(struct transport *t);
};

/* The part every transport shares; embedded first in each client. */
struct transport {
    const struct transport_impl *impl;
    const struct transport_ops *ops;
    void *owner;
    enum conn_state state;
    uint64_t last_pong_wall_ms; /* the far end last answered a ping (0: never) */
};

/* Begins connecting; reconnects forever until transport_shutdown(). */
void transport_start(struct transport *t);
void transport_send(struct transport *t, const char *subject, cJSON *data,
                    const struct transport_send *how);
void transport_outcome(struct transport *t, const char *move_id, uint64_t accepted_ms,
                       const char *answer, const char *ack_key);
/* Flushes what is queued, says goodbye, stops reconnecting;
 * ops->state(CONN_CLOSED) when done. */
void transport_shutdown(struct transport *t);
/* First half of the teardown: closes the handles. Run the loop, then
 * transport_destroy() (after uv_run returned). NULL is allowed for both. */
void transport_close(struct transport *t);
void transport_destroy(struct transport *t);

const char *transport_state_name(enum conn_state s);

/* For the transports: takes state next (nothing when it is the state
 * already), logs the change and tells the owner (ops->state). */
void transport_enter(struct transport *t, enum conn_state next);

/* Backoff before attempt n (0-based): min * 2^n capped at max, minus up to
 * a quarter of jitter, never below min. rnd in [0, 1). */
uint64_t transport_backoff_delay(uint64_t min_ms, uint64_t max_ms, unsigned n, double rnd);

#endif
