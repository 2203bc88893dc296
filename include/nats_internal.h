/* nats_internal.h: what the NATS client's files share (nats_client.c and the files
 * below it: nats_presence.c, nats_publish.c, nats_outcomes.c, nats_options.c,
 * nats_helper.c, nats_events.c, nats_adapter.c): the events nats.c's threads and our
 * helper thread hand to the loop, the messages and outcomes held, the other runs heard,
 * and each file's functions. Private to the NATS client.
 *
 * The thread contract: nats.c's threads (its callbacks, nats_events.c) and the helper
 * thread (nats_helper.c) touch struct nats_client only through the fields under its
 * lock ("Shared with nats.c's threads" in nats_client.h), the event queue
 * (nats_events_post) and the adapter's wishes (nats_adapter.c); everything else is the
 * loop thread's. */
#ifndef HOSTAGENT_NATS_INTERNAL_H
#define HOSTAGENT_NATS_INTERNAL_H

#include "nats_client.h"

#include <cJSON.h>
#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define NATS_CLOSE_WAIT_MS 5000u /* a stop waits this long for the last flush */
#define NATS_FAIL_LOG_GAP_MS 60000u
#define NATS_WARN_GAP_MS 30000u

enum nats_ev_kind {
    EV_MSG,          /* a request */
    EV_PRESENCE,     /* another run's announcement, or the server's "no responders" */
    EV_CONNECT_DONE, /* the helper's connect returned */
    EV_CONNECTED,    /* first connection after a failed start */
    EV_DISCONNECTED,
    EV_RECONNECTED,
    EV_CLOSED,      /* nats.c closed the connection (ours or its own decision) */
    EV_ERROR,       /* an asynchronous error (permissions, slow consumer) */
    EV_FLUSHED,     /* the server answered the PING after flush generation gen */
    EV_PUBACK,      /* JetStream's answer for an outcome */
    EV_HELPER_DONE, /* the helper closed the connection and ended */
};

/* Something a nats.c thread (or the helper) hands to the loop thread. */
struct nats_event {
    struct nats_event *next;
    enum nats_ev_kind kind;
    natsStatus status;
    natsConnection *nc;
    char *subject, *reply, *text; /* text: an error's detail, a PubAck's stream */
    char *data;
    size_t len;
    uint64_t gen;
    bool ok, duplicate;
    bool no_responders; /* EV_PRESENCE: nobody listened to our presence query */
    int err_code;
};

/* Another run of hostagent heard on this agent_id's presence subject
 * (nats_presence.c: one agent per agent_id). */
struct nats_peer {
    struct nats_peer *next;
    char instance[NATS_INSTANCE_LEN + 1];
    char hostname[256];
    long long pid;
    uint64_t started_ms;       /* its start (wall clock, its own) */
    bool serving;              /* it takes the agent_id's requests */
    uint64_t serving_since_ms; /* since when (wall clock), while serving */
    uint64_t heard_ms;         /* its last announcement (monotonic, ours) */
};

/* A message held while the connection is not up (merged like on WebSocket),
 * or published and waiting for the flush that proves the server got it. */
struct nats_out {
    struct nats_out *next;
    char *subject; /* the full NATS subject */
    char *merge_key, *ack_key;
    bool keep;
    uint64_t gen; /* published before this flush request */
    char *body;
    size_t len;
};

/* A move's outcome waiting for JetStream's PubAck. msg_id, its
 * Nats-Msg-Id, is "<agent_id>:<moveId>:<acceptedAtMs>": one per agent and
 * per move (two agents' moves, or two moves of one agent, with one moveId
 * are two outcomes), the same for every re-send of this outcome, also after
 * a restart (the acceptance time is the journal's), so that the stream's
 * duplicate window still drops repeats. No ':' is in a moveId, and the
 * last part is digits: two ids of different agents or moves never match. */
struct nats_outcome {
    struct nats_outcome *next;
    char *move_id, *msg_id, *body, *ack_key;
    uint64_t next_try_ms; /* monotonic */
    unsigned attempt;
};

/* --- nats_presence.c: one agent per agent_id (loop) --- */

/* This run's instance id, host name, start time and inbox (at init). */
void nats_presence_init(struct nats_client *c);
/* Starts the announcements every heartbeat_interval (at the transport's start). */
void nats_presence_start(struct nats_client *c);
/* This run's inbox for the answers to its presence queries (each new connection). */
void nats_presence_subscribe_inbox(struct nats_client *c);
/* This run's announcement: on the presence subject (to NULL) or to a reply
 * subject; query: with this run's inbox for every other run to answer. */
void nats_presence_send(struct nats_client *c, const char *to, bool query, bool leaving);
/* Connected and not serving: asks who else runs with this agent_id, then serves or not. */
void nats_presence_claim(struct nats_client *c);
/* The presence query's wait ends without a decision (the connection is lost). */
void nats_presence_claim_stop(struct nats_client *c);
/* An EV_PRESENCE: another run's announcement, an answer, or "no responders". */
void nats_presence_on_event(struct nats_client *c, const struct nats_event *e);
/* At a stop: the goodbye to the other runs; true when it went out. */
bool nats_presence_leave(struct nats_client *c, enum conn_state was);
/* nats.c closed the connection: the requests, presence and inbox subscriptions go. */
void nats_presence_forget_connection(struct nats_client *c);
void nats_presence_free_peers(struct nats_client *c);

/* --- nats_publish.c: what goes out on the agent's subjects (loop) --- */

/* The transport's send (takes data): published now when up, else held. */
void nats_publish_send(struct nats_client *c, const char *subject, cJSON *data,
                       const struct transport_send *how);
/* Serving and connected: hello first, then what was held, then the outcomes. */
void nats_publish_go_up(struct nats_client *c);
/* The flush of generation gen came back: the messages published before it arrived. */
void nats_publish_flushed(struct nats_client *c, uint64_t gen);
/* A new connection: what was published but not known to have arrived goes first. */
void nats_publish_requeue_unacked(struct nats_client *c);
void nats_publish_free_all(struct nats_client *c);

/* --- nats_outcomes.c: moves' outcomes stored through JetStream (loop) --- */

/* The transport's outcome: kept (replacing an earlier one of the same
 * Nats-Msg-Id) and published until JetStream stores it. */
void nats_outcomes_put(struct nats_client *c, const char *move_id, uint64_t accepted_ms,
                       const char *answer, const char *ack_key);
/* Publishes the outcomes whose time has come (while up); runs the retry timer. */
void nats_outcomes_try(struct nats_client *c);
/* An EV_PUBACK: stored (acknowledged, forgotten) or not (sent again later). */
void nats_outcomes_on_puback(struct nats_client *c, const struct nats_event *e);
/* The JetStream context, made once on the first connection (with nats_jetstream). */
void nats_outcomes_attach(struct nats_client *c);
void nats_outcomes_free_all(struct nats_client *c);

/* --- nats_options.c: servers, TLS, credentials, callbacks --- */

/* Makes c->opts (the connection's) and c->probe_opts. 0 or -EINVAL (logged). */
int nats_options_make(struct nats_client *c);

/* --- nats_helper.c: the helper thread (connect, flush, close) --- */

/* Starts the thread (logged when it cannot). */
void nats_helper_start(struct nats_client *c);
/* On the loop: asks the helper to connect or to close. */
void nats_helper_task(struct nats_client *c, bool connect, bool close);
/* On the loop: asks for a flush (PING/PONG) after generation gen. */
void nats_helper_request_flush(struct nats_client *c, uint64_t gen);
/* After uv_run returned: closes the connection if need be and joins the thread. */
void nats_helper_stop(struct nats_client *c);

/* --- nats_events.c: what nats.c's threads hand to the loop --- */

struct nats_event *nats_events_new(enum nats_ev_kind kind);
void nats_events_free(struct nats_event *e);
/* From any thread: queues e for the loop and wakes it (dropped once the
 * client is closing its handles). */
void nats_events_post(struct nats_client *c, struct nats_event *e);
/* On the loop: takes the whole queue (in order) and the count of dropped requests. */
struct nats_event *nats_events_take(struct nats_client *c, unsigned *dropped);
void nats_events_free_all(struct nats_client *c);
/* The connection's last error, copied: its text, or `fallback`'s, or that
 * of the status; *status (may be NULL) gets it. Any thread. */
char *nats_events_error_text(natsConnection *nc, natsStatus fallback, natsStatus *status);
/* nats.c's callbacks (closure: the client), on its threads. */
void nats_events_on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure);
void nats_events_on_presence_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg,
                                 void *closure);
void nats_events_on_connected(natsConnection *nc, void *closure);
void nats_events_on_disconnected(natsConnection *nc, void *closure);
void nats_events_on_reconnected(natsConnection *nc, void *closure);
void nats_events_on_closed(natsConnection *nc, void *closure);
void nats_events_on_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure);

/* --- nats_adapter.c: nats.c's socket on our loop --- */

/* nats.c's event-loop callbacks (natsOptions_SetEventLoop; loop is the
 * client itself). attach may come from any thread (the helper connects)
 * and again at each reconnect; detach comes once, when nats.c closes the
 * connection, after which the client holds no pointer to it (ev_nc is NULL)
 * and nothing on the loop hands it back to nats.c (unit_nats_client). */
natsStatus nats_adapter_attach(void **user, void *loop, natsConnection *nc, natsSock sock);
natsStatus nats_adapter_read(void *user, bool add);
natsStatus nats_adapter_write(void *user, bool add);
natsStatus nats_adapter_detach(void *user);
/* On the loop: makes the poll handle match what nats.c wants. */
void nats_adapter_apply(struct nats_client *c);
/* On the loop: stops watching the socket (the poll handle is closed). */
void nats_adapter_forget(struct nats_client *c);

#endif
